//! eddy's built-in jobs, and the registry that lists them.
//!
//! Each job of kind `k` is one module here implementing
//! [`Job`](crate::component::Job), plus one line in [`registry`]. The core
//! jobs (ingest, enrich, backup and the ML jobs) are built by the core
//! pipeline (`crate::replay`, `crate::kafka`) and listed with their ports.

pub mod alerts;
pub mod sensor_health;
pub mod stats;
pub mod windows;

use eddy_core::spec::JobKind;

use crate::component::{CoreJob, Registry};

/// The ingest job.
pub const INGEST: CoreJob = CoreJob {
    kind: JobKind::Ingest,
    about: "Validates raw lines, classifies late and future readings and junk values, stamps event time.",
    inputs: &["raw"],
    outputs: &["readings", "late", "future", "deadletter"],
};

/// The enrich job.
pub const ENRICH: CoreJob = CoreJob {
    kind: JobKind::Enrich,
    about: "Calibrates readings and joins their device context as of event time.",
    inputs: &["readings", "devices", "calibration", "rules"],
    outputs: &["enriched"],
};

/// The backup job.
pub const BACKUP: CoreJob = CoreJob {
    kind: JobKind::Backup,
    about: "Writes every enriched reading to the Parquet backup and every raw line to the raw archive, exactly once.",
    inputs: &["enriched", "raw"],
    outputs: &["backup/", "raw/"],
};

/// The calibration adapter (ML).
pub const ADAPTER: CoreJob = CoreJob {
    kind: JobKind::Adapter,
    about: "Corrects drifting CO2 baselines and feeds calibration updates back into the reference data.",
    inputs: &["enriched"],
    outputs: &["calibration"],
};

/// The scoring job (ML).
pub const SCORE: CoreJob = CoreJob {
    kind: JobKind::Score,
    about: "Scores readings with a forecast model and warns of events before they start.",
    inputs: &["enriched", "models"],
    outputs: &["forecasts"],
};

/// The built-in registry, in pipeline order.
pub fn registry() -> Registry {
    Registry::new()
        .core(INGEST)
        .core(ENRICH)
        .with::<stats::Stats>()
        .with::<windows::Windows>()
        .with::<alerts::Alerts>()
        .with::<sensor_health::SensorHealth>()
        .core(BACKUP)
        .core(ADAPTER)
        .core(SCORE)
}

/// The core spec of `kind` parsed from `text`: stats, windows and alerts
/// keep the specs the core pipeline also reads.
pub(crate) fn core_spec(text: &str, file: &str) -> Result<eddy_core::JobSpec, eddy_core::SpecError> {
    eddy_core::JobSpec::from_toml(text, file)
}
