//! eddy's built-in jobs, and the registry that lists them.
//!
//! Each job of kind `k` is one module here implementing
//! [`Job`](crate::component::Job), plus one line in [`registry`].

pub mod adapter;
pub mod alerts;
pub mod backup;
pub mod enrich;
pub mod ingest;
pub mod score;
pub mod sensor_health;
pub mod stats;
pub mod windows;

use crate::component::Registry;

/// The built-in registry, in pipeline order: the order an embedded
/// pipeline builds them in (a job's inputs come before it).
pub fn registry() -> Registry {
    Registry::new()
        .with::<ingest::Ingest>()
        .with::<enrich::Enrich>()
        .with::<backup::Backup>()
        .with::<stats::Stats>()
        .with::<windows::Windows>()
        .with::<alerts::Alerts>()
        .with::<sensor_health::SensorHealth>()
        .with::<adapter::Adapter>()
        .with::<score::Score>()
}

/// The core spec of `kind` parsed from `text`: stats, windows and alerts
/// keep the specs the core pipeline also reads.
pub(crate) fn core_spec(text: &str, file: &str) -> Result<eddy_core::JobSpec, eddy_core::SpecError> {
    eddy_core::JobSpec::from_toml(text, file)
}
