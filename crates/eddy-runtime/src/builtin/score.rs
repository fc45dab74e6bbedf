//! `kind = "score"`: the scoring job (ML).

use std::time::Duration;

use eddy_core::reading::Enriched;
use eddy_core::spec::{toml_spec_error, PipelineSpec, ScoreSpec};
use eddy_core::SpecError;
use eddy_ml::score::{score_with, ModelWatch};

use crate::component::{Job, JobBuilder};
use crate::error::Result;
use crate::flow::Flow;

/// The scoring job: on-time enriched readings in, early warnings out, with
/// a forecast model from a watched file and (over Kafka) from `P.models`.
pub struct Score;

impl Job for Score {
    type Spec = ScoreSpec;
    const KIND: &'static str = "score";
    const ABOUT: &'static str = "Scores readings with a forecast model and warns of events before they start.";
    const INPUTS: &'static [&'static str] = &["enriched", "models"];
    const OUTPUTS: &'static [&'static str] = &["forecasts"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/score.toml"));

    fn parse(text: &str, file: &str) -> Result<ScoreSpec, SpecError> {
        let spec: ScoreSpec = toml::from_str(text).map_err(|e| toml_spec_error(file, e))?;
        spec.check(file)?;
        Ok(spec)
    }

    /// Embedded, it runs with a model file (`model`, or `--model`).
    fn active(_spec: &ScoreSpec, pipeline: &PipelineSpec) -> bool {
        pipeline.score.model.is_some()
    }

    fn build(_spec: &ScoreSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let spec = job.pipeline().score.clone();
        let on_time = job.input::<Enriched>("enriched")?.on_time();
        let models = job.models(&on_time)?;
        let file = spec.model.as_ref().map(|p| ModelWatch::new(p.into(), Duration::from_millis(spec.poll.ms() as u64)));
        let forecasts = score_with(on_time.into_stream(), models, file, job.name());
        job.output("forecasts", Flow::new(forecasts, job.name()))
    }
}
