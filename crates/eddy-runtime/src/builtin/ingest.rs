//! `kind = "ingest"`: validation, classification and event time.

use eddy_core::spec::{IngestSpec, JobSpec};
use eddy_core::SpecError;

use crate::component::{Job, JobBuilder, Port};
use crate::error::Result;

/// The ingest job: raw lines in (the dataset file embedded, `P.raw` over
/// Kafka); valid readings, the late and future ones, and dead letters out.
/// Its rules (ranges, lateness, the fleet clock, the epoch) are the
/// pipeline's: every job reads the epoch.
pub struct Ingest;

impl Job for Ingest {
    type Spec = IngestSpec;
    const KIND: &'static str = "ingest";
    const ABOUT: &'static str =
        "Validates raw lines, classifies late and future readings and junk values, stamps event time.";
    const INPUTS: &'static [&'static str] = &["raw"];
    const OUTPUTS: &'static [&'static str] = &["readings", "late", "future", "deadletter", "raw"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/ingest.toml"));

    fn parse(text: &str, file: &str) -> Result<IngestSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Ingest(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected ingest, found {}", other.kind().name()))),
        }
    }

    fn port(port: &str) -> Port {
        match port {
            // Every reading, late and future ones flagged: for enrich.
            "readings" => Port::STREAM,
            // Kept in full, with the source position, on `P.deadletter`.
            "deadletter" => Port { codec: crate::component::Codec::Serde, ..Port::RECORDS },
            // Every line as received, for the raw archive (over Kafka the
            // backup job reads `P.raw` itself).
            "raw" => Port::LOCAL,
            _ => Port::RECORDS,
        }
    }

    fn build(_spec: &IngestSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let lines = job.lines()?;
        job.output("late", lines.readings.clone().late())?;
        job.output("future", lines.readings.clone().future())?;
        job.output("deadletter", lines.dead)?;
        job.output("raw", lines.raw)?;
        job.output("readings", lines.readings)
    }
}
