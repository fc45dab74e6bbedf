//! `kind = "backup"`: the Parquet backup and the raw archive.

use eddy_core::reading::{Enriched, RawLine};
use eddy_core::spec::{BackupSpec, JobSpec, PipelineSpec};
use eddy_core::SpecError;

use crate::component::{Job, JobBuilder, Port};
use crate::error::Result;

/// The backup job: every enriched reading (late ones included) into the
/// Parquet backup, and every raw line into the raw archive, each committed
/// per epoch, exactly once across restarts (see `docs/backup.md`).
pub struct Backup;

impl Job for Backup {
    type Spec = BackupSpec;
    const KIND: &'static str = "backup";
    const ABOUT: &'static str =
        "Writes every enriched reading to the Parquet backup and every raw line to the raw archive, exactly once.";
    const INPUTS: &'static [&'static str] = &["enriched", "raw"];
    const OUTPUTS: &'static [&'static str] = &["backup/", "raw/"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/backup.toml"));
    const REBUILDS: bool = false;

    fn parse(text: &str, file: &str) -> Result<BackupSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Backup(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected backup, found {}", other.kind().name()))),
        }
    }

    /// Its outputs are directories it writes itself.
    fn port(_port: &str) -> Port {
        Port::LOCAL
    }

    fn active(_spec: &BackupSpec, pipeline: &PipelineSpec) -> bool {
        pipeline.backup.enabled
    }

    fn build(_spec: &BackupSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let enriched = job.input::<Enriched>("enriched")?;
        job.backup(enriched)?;
        if job.pipeline().backup.raw_archive {
            let raw = job.input::<RawLine>("raw")?;
            job.raw_archive(raw)?;
        }
        Ok(())
    }
}
