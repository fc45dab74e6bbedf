//! `kind = "enrich"`: the spec of the job that joins calibration and device
//! context.

use serde::{Deserialize, Serialize};

use super::{JobKind, SpecError};
use crate::duration::Millis;

fn d_retention() -> Millis {
    Millis(6 * 3_600_000)
}

/// `kind = "enrich"`: calibration and device context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichSpec {
    /// Must be `"enrich"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// How much reference-data history (event time, behind the watermark)
    /// the arrangements keep distinct, for late readings. A late reading
    /// older than this sees the reference data as of the oldest retained
    /// time. Default `"6h"`.
    #[serde(default = "d_retention")]
    pub reference_retention: Millis,
}

impl EnrichSpec {
    /// Checks the values of the spec on its own: every value is valid.
    pub(super) fn check(&self, _file: &str) -> Result<(), SpecError> {
        Ok(())
    }
}
