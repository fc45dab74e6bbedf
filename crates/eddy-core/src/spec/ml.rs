//! `kind = "adapter"` and `kind = "score"`: the specs of the ML jobs, the
//! calibration adapter and the scoring job. They are optional parts of a
//! [`PipelineSpec`](super::PipelineSpec), not [`JobSpec`](super::JobSpec)s.

use serde::{Deserialize, Serialize};

use super::SpecError;
use crate::duration::Millis;

/// The kinds of the ML jobs (the calibration adapter and the scoring job), as
/// written in specs: [`JobKind::ML`](super::JobKind::ML). Their specs are not
/// [`JobSpec`](super::JobSpec)s (they are optional parts of a
/// [`PipelineSpec`](super::PipelineSpec)); they run inside `eddy replay` and
/// as `eddy run`.
pub const ML_KINDS: [&str; 2] = ["adapter", "score"];

fn d_adapter_channel() -> String {
    "co2".into()
}

fn d_adapter_k() -> usize {
    3
}

fn d_adapter_span() -> Millis {
    Millis(24 * 3_600_000)
}

fn d_outdoor() -> f64 {
    420.0
}

fn d_min_correction() -> f64 {
    4.0
}

/// `kind = "adapter"`: the calibration adapter. It takes, per device, the
/// smoothed level (`ewma`) of each statistics snapshot of `channel`; once it
/// has `span` of them, the mean of the `k` lowest is taken to be outdoor air
/// and, when it is off `outdoor_ppm` by at least `min_correction`, a
/// calibration update shifting the offset by the difference is fed back into
/// the calibration reference data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// Must be `"adapter"`.
    pub kind: String,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Run the adapter in `eddy replay`. Default false (see docs/decisions.md).
    #[serde(default)]
    pub enabled: bool,
    /// The channel whose baseline drifts. Default `"co2"`.
    #[serde(default = "d_adapter_channel")]
    pub channel: String,
    /// How many of the lowest levels make the baseline. Default 3.
    #[serde(default = "d_adapter_k")]
    pub k: usize,
    /// The rolling span of levels. Default `"24h"`.
    #[serde(default = "d_adapter_span")]
    pub span: Millis,
    /// The outdoor-air level the baseline is corrected to. Default 420.
    #[serde(default = "d_outdoor")]
    pub outdoor_ppm: f64,
    /// Smaller corrections are not published. Default 4 (ppm).
    #[serde(default = "d_min_correction")]
    pub min_correction: f64,
}

/// `kind = "score"`: the scoring job. With a model (`eddy replay --model`
/// or `model` here) it scores every on-time reading of the model's channel
/// while no event is active, and writes `forecasts.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// Must be `"score"`.
    pub kind: String,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A forecast model file, watched for changes (`--model` overrides it).
    #[serde(default)]
    pub model: Option<String>,
    /// How often the model file is checked for a change. Default `"200ms"`.
    #[serde(default = "d_poll")]
    pub poll: Millis,
}

fn d_poll() -> Millis {
    Millis(200)
}

impl AdapterSpec {
    /// Checks the values of the spec on its own: `k` at least 1, a span of at
    /// least an hour, a positive `outdoor_ppm`, a `min_correction` of at
    /// least 0 and a channel.
    pub fn check(&self, file: &str) -> Result<(), SpecError> {
        if self.k == 0 {
            return Err(SpecError::key(file, "k", "must be at least 1"));
        }
        if self.span.ms() < 3_600_000 {
            return Err(SpecError::key(file, "span", format!("must be at least 1h, found {}", self.span)));
        }
        if !(self.outdoor_ppm.is_finite() && self.outdoor_ppm > 0.0) {
            return Err(SpecError::key(
                file,
                "outdoor_ppm",
                format!("must be a positive number, found {}", self.outdoor_ppm),
            ));
        }
        if !(self.min_correction.is_finite() && self.min_correction >= 0.0) {
            return Err(SpecError::key(file, "min_correction", "must be a number ≥ 0"));
        }
        if self.channel.is_empty() {
            return Err(SpecError::key(file, "channel", "must not be empty"));
        }
        Ok(())
    }
}

impl ScoreSpec {
    /// Checks the values of the spec on its own: a positive `poll`.
    pub fn check(&self, file: &str) -> Result<(), SpecError> {
        if self.poll.ms() <= 0 {
            return Err(SpecError::key(file, "poll", "must be at least 1ms"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::duration::Millis;
    use crate::spec::PipelineSpec;

    #[test]
    fn adapter_spec_is_checked() {
        let files = vec![("a.toml".to_string(), "kind = \"adapter\"\nenabled = true\nk = 0\n".to_string())];
        let e = PipelineSpec::from_files(&files, true).unwrap_err();
        assert_eq!(e.to_string(), "a.toml: key `k`: must be at least 1");
        let files = vec![("a.toml".to_string(), "kind = \"adapter\"\nenabled = true\nspan = \"12h\"\n".to_string())];
        let p = PipelineSpec::from_files(&files, true).unwrap();
        assert!(p.adapter.enabled);
        assert_eq!(p.adapter.span, Millis(12 * 3_600_000));
    }
}
