//! `kind = "adapter"`: the calibration adapter (ML), in a loop.

use eddy_core::reading::Enriched;
use eddy_core::spec::{toml_spec_error, AdapterSpec, PipelineSpec};
use eddy_core::{Channel, SpecError};
use eddy_ml::adapt::{adapter, Adapter as AdapterOp, AdapterConfig};

use crate::component::{Job, JobBuilder, Port};
use crate::error::Result;

/// The calibration adapter: enriched readings in; per device, a
/// calibration update whenever its CO2 baseline drifts, fed back into the
/// reference data that enrich reads (see `docs/ml.md`).
pub struct Adapter;

impl Job for Adapter {
    type Spec = AdapterSpec;
    const KIND: &'static str = "adapter";
    const ABOUT: &'static str =
        "Corrects drifting CO2 baselines and feeds calibration updates back into the reference data.";
    const INPUTS: &'static [&'static str] = &["enriched"];
    const OUTPUTS: &'static [&'static str] = &["calibration"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/adapter.toml"));

    fn parse(text: &str, file: &str) -> Result<AdapterSpec, SpecError> {
        let spec: AdapterSpec = toml::from_str(text).map_err(|e| toml_spec_error(file, e))?;
        spec.check(file)?;
        Ok(spec)
    }

    /// A reference topic over Kafka, a feedback edge embedded.
    fn port(_port: &str) -> Port {
        Port::STREAM
    }

    fn active(_spec: &AdapterSpec, pipeline: &PipelineSpec) -> bool {
        pipeline.adapter.enabled
    }

    fn build(_spec: &AdapterSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let spec = job.pipeline().clone();
        let cfg = config(&spec);
        let book = job.calibration_book(cfg.channel);
        let params = super::stats::params(&spec.stats);
        let enriched = job.input::<Enriched>("enriched")?;
        let updates = adapter(
            enriched.into_stream(),
            AdapterOp::new(cfg, book),
            params.config,
            params.snapshot_every_ms,
            job.name(),
        );
        let updates = crate::flow::Flow::new(updates, job.name());
        job.feedback("calibration", updates)
    }
}

/// The loop's delay: lateness plus an epoch. An update the adapter makes
/// at dataflow time `t` applies to readings from `t` + the delay on.
pub fn loop_delay(spec: &PipelineSpec) -> i64 {
    spec.ingest.lateness.ms() + spec.ingest.epoch.ms()
}

/// The adapter's settings, with its loop's delay.
pub fn config(spec: &PipelineSpec) -> AdapterConfig {
    let a = &spec.adapter;
    AdapterConfig {
        channel: Channel::intern(&a.channel),
        k: a.k,
        span_ms: a.span.ms(),
        outdoor: a.outdoor_ppm,
        min_correction: a.min_correction,
        delay_ms: loop_delay(spec),
    }
}
