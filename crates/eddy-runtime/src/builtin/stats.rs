//! `kind = "stats"`: incremental statistics per (device, channel).

use eddy_core::reading::Enriched;
use eddy_core::spec::{JobSpec, StatsSpec};
use eddy_core::SpecError;
use eddy_operators::stats::StatsParams;
use eddy_state::stats::StatsConfig;

use crate::component::{Job, JobBuilder};
use crate::error::Result;

/// The statistics job: on-time enriched readings in, a snapshot per
/// (device, channel) each time its `snapshot_every` window closes out.
pub struct Stats;

impl Job for Stats {
    type Spec = StatsSpec;
    const KIND: &'static str = "stats";
    const ABOUT: &'static str = "Incremental statistics per (device, channel): moments, EWMA, top-k, trend.";
    const INPUTS: &'static [&'static str] = &["enriched"];
    const OUTPUTS: &'static [&'static str] = &["stats"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/stats.toml"));

    fn parse(text: &str, file: &str) -> Result<StatsSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Stats(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected stats, found {}", other.kind().name()))),
        }
    }

    /// Builds from the pipeline's stats spec, which the calibration adapter
    /// reads too (the instance's spec is the same file).
    fn build(_spec: &StatsSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let params = params(&job.pipeline().stats);
        let stats = job.input::<Enriched>("enriched")?.on_time().stats(params);
        job.output("stats", stats)
    }
}

/// The operator's settings from the spec.
pub fn params(spec: &StatsSpec) -> StatsParams {
    StatsParams {
        config: StatsConfig { alpha: spec.alpha, top_k: spec.top_k, trend_half_life_ms: spec.trend_half_life.ms() },
        snapshot_every_ms: spec.snapshot_every.ms(),
    }
}
