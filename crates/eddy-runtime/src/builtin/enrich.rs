//! `kind = "enrich"`: calibration and device context as of event time.

use eddy_core::reading::Reading;
use eddy_core::spec::{EnrichSpec, JobSpec};
use eddy_core::SpecError;

use crate::component::{FileRecords, Job, JobBuilder, Port};
use crate::error::Result;

/// The enrich job: validated readings and the reference data (devices,
/// calibration, as differential arrangements) in; every reading calibrated
/// and joined with its device's context as of its `ts` out, late ones
/// flagged (for the backup). `enriched.jsonl` holds the on-time ones.
pub struct Enrich;

impl Job for Enrich {
    type Spec = EnrichSpec;
    const KIND: &'static str = "enrich";
    const ABOUT: &'static str = "Calibrates readings and joins their device context as of event time.";
    const INPUTS: &'static [&'static str] = &["readings", "devices", "calibration", "rules"];
    const OUTPUTS: &'static [&'static str] = &["enriched"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/enrich.toml"));
    const REBUILDS: bool = false;

    fn parse(text: &str, file: &str) -> Result<EnrichSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Enrich(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected enrich, found {}", other.kind().name()))),
        }
    }

    fn port(_port: &str) -> Port {
        Port { file: FileRecords::OnTime, ..Port::STREAM }
    }

    fn build(_spec: &EnrichSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let retention = job.pipeline().enrich.reference_retention.ms();
        let readings = job.input::<Reading>("readings")?;
        let (readings, reference) = if job.pipeline().adapter.enabled {
            job.calibration_loop(readings)?
        } else {
            let reference = job.reference()?;
            (readings, reference)
        };
        let enriched = readings.step(job.name()).enrich(&reference, retention);
        job.output("enriched", enriched)
    }
}
