//! `kind = "stats"`: the spec of the incremental statistics job.

use serde::{Deserialize, Serialize};

use super::{d_hour, JobKind, SpecError};
use crate::duration::Millis;

fn d_alpha() -> f64 {
    0.1
}

fn d_top_k() -> usize {
    5
}

/// `kind = "stats"`: incremental statistics per (device, channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSpec {
    /// Must be `"stats"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// EWMA smoothing factor α in (0, 1]. Default 0.1.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// k for `top_k_max_mean` and `top_k_min_mean`. Default 5.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    /// The half-life of `trend_per_hour`'s weights: a value this much older
    /// (in event time) than the key's latest weighs half as much. Default
    /// `"1h"`.
    #[serde(default = "d_hour")]
    pub trend_half_life: Millis,
    /// A snapshot of a key is emitted each time one of its tumbling windows
    /// of this size closes (and once at the end of input). Default `"1h"`.
    #[serde(default = "d_hour")]
    pub snapshot_every: Millis,
}

impl StatsSpec {
    /// Checks the values of the spec on its own: `alpha` in (0, 1], `top_k`
    /// at least 1, a positive trend half-life, and a positive snapshot period.
    pub(super) fn check(&self, file: &str) -> Result<(), SpecError> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(SpecError::key(file, "alpha", format!("must be in (0, 1], found {}", self.alpha)));
        }
        if self.top_k == 0 {
            return Err(SpecError::key(file, "top_k", "must be at least 1"));
        }
        if self.trend_half_life.ms() <= 0 {
            return Err(SpecError::key(file, "trend_half_life", "must be at least 1ms"));
        }
        if self.snapshot_every.ms() <= 0 {
            return Err(SpecError::key(file, "snapshot_every", "must be at least 1ms"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::JobSpec;

    #[test]
    fn minimal_spec_takes_defaults() {
        let s = JobSpec::from_toml("kind = \"stats\"\n", "s.toml").unwrap();
        let JobSpec::Stats(s) = s else { panic!() };
        assert_eq!(s.top_k, 5);
    }

    /// An `alpha` outside (0, 1] is an error naming the file and the key.
    #[test]
    fn alpha_out_of_range_names_file_and_key() {
        let e = JobSpec::from_toml("kind = \"stats\"\nalpha = 2.0\n", "jobs/s.toml").unwrap_err();
        assert_eq!(e.to_string(), "jobs/s.toml: key `alpha`: must be in (0, 1], found 2");
    }
}
