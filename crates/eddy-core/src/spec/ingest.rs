//! `kind = "ingest"`: the spec of the job that validates raw lines, with the
//! default valid ranges of the standard channels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{d_true, JobKind, SpecError};
use crate::clock::ClockConfig;
use crate::duration::Millis;
use crate::size::Bytes;
use crate::validate::Ranges;

/// A channel's valid range; a missing bound is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Smallest valid raw value (inclusive).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest valid raw value (inclusive).
    #[serde(default)]
    pub max: Option<f64>,
}

/// The default valid ranges: pm25 `[0,1000]`, co2 `[0,10000]`, voc `[0,100000]`,
/// temp `[−40,85]`, hum `[0,100]`.
pub fn default_ranges() -> BTreeMap<String, RangeSpec> {
    [("pm25", 0.0, 1000.0), ("co2", 0.0, 10000.0), ("voc", 0.0, 100000.0), ("temp", -40.0, 85.0), ("hum", 0.0, 100.0)]
        .into_iter()
        .map(|(c, lo, hi)| (c.to_string(), RangeSpec { min: Some(lo), max: Some(hi) }))
        .collect()
}

fn d_lateness() -> Millis {
    Millis(10 * 60_000)
}

fn d_max_future() -> Millis {
    Millis(ClockConfig::MAX_FUTURE_MS)
}

fn d_quorum() -> usize {
    ClockConfig::QUORUM
}

fn d_warmup() -> usize {
    ClockConfig::WARMUP
}

fn d_epoch() -> Millis {
    Millis::SECOND
}

fn d_max_line() -> Bytes {
    Bytes::MIB
}

/// `kind = "ingest"`: validation and routing of raw lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Must be `"ingest"`.
    pub kind: JobKind,
    /// The job's name: the prefix of its operators' names in logs and
    /// profiles (defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// How far below the largest `ts` among accepted readings a reading may
    /// be before it is late. Default `"10m"`.
    #[serde(default = "d_lateness")]
    pub lateness: Millis,
    /// How far ahead of the fleet clock a reading may be before it is set
    /// aside as future (see `docs/formats.md`, "Event time"). Default `"1h"`.
    #[serde(default = "d_max_future")]
    pub max_future: Millis,
    /// The fleet clock is the `quorum`-th largest of the devices' latest
    /// `ts`: it tolerates `quorum − 1` devices whose clocks run ahead. 1
    /// turns the future rule off. Default 3.
    #[serde(default = "d_quorum")]
    pub quorum: usize,
    /// Readings held, at most, while the fleet clock warms up (until
    /// `2·quorum − 1` devices are seen). Default 100.
    #[serde(default = "d_warmup")]
    pub warmup: usize,
    /// The length of an epoch of event time: the granularity at which the
    /// watermark advances the dataflow's frontier and sinks commit. It must
    /// divide the window size and slide and the statistics snapshot period.
    /// Default `"1s"`.
    #[serde(default = "d_epoch")]
    pub epoch: Millis,
    /// The longest line read, in bytes without its terminator: a longer
    /// line (or Kafka record) is a `line_too_long` dead letter, read on to
    /// its end without ever being held whole. Default `"1MiB"`.
    #[serde(default = "d_max_line")]
    pub max_line: Bytes,
    /// Start from the default ranges (pm25 `[0,1000]`, co2 `[0,10000]`,
    /// voc `[0,100000]`, temp `[−40,85]`, hum `[0,100]`). Default true.
    #[serde(default = "d_true")]
    pub default_ranges: bool,
    /// Valid ranges by channel, `{ min = …, max = … }`; they replace the
    /// default for that channel. Channels without a range are unbounded.
    #[serde(default)]
    pub ranges: BTreeMap<String, RangeSpec>,
}

impl IngestSpec {
    /// The effective ranges: the defaults (if enabled) overridden by `ranges`.
    pub fn effective_ranges(&self) -> BTreeMap<String, RangeSpec> {
        let mut r = if self.default_ranges { default_ranges() } else { BTreeMap::new() };
        r.extend(self.ranges.iter().map(|(k, v)| (k.clone(), *v)));
        r
    }

    /// The event-time rules' settings.
    pub fn clock(&self) -> ClockConfig {
        ClockConfig {
            lateness_ms: self.lateness.ms(),
            max_future_ms: self.max_future.ms(),
            quorum: self.quorum,
            warmup: self.warmup,
        }
    }

    /// The junk rule as a lookup table.
    pub fn ranges(&self) -> Ranges {
        let eff = self.effective_ranges();
        Ranges::new(eff.iter().map(|(c, r)| (c.as_str(), r.min, r.max)))
    }

    /// Checks the values of the spec on its own: a positive epoch,
    /// `max_future` and `max_line`, a quorum of at least 1, and ranges whose
    /// bounds are numbers with `min <= max`.
    pub(super) fn check(&self, file: &str) -> Result<(), SpecError> {
        if self.epoch.ms() <= 0 {
            return Err(SpecError::key(file, "epoch", "must be at least 1ms"));
        }
        if self.max_future.ms() <= 0 {
            return Err(SpecError::key(file, "max_future", "must be at least 1ms"));
        }
        if self.quorum == 0 {
            return Err(SpecError::key(file, "quorum", "must be at least 1"));
        }
        if self.max_line.bytes() == 0 {
            return Err(SpecError::key(file, "max_line", "must be at least 1 byte"));
        }
        for (c, r) in &self.ranges {
            if let (Some(lo), Some(hi)) = (r.min, r.max) {
                if lo > hi {
                    return Err(SpecError::key(
                        file,
                        format!("ranges.{c}"),
                        format!("min ({lo}) is greater than max ({hi})"),
                    ));
                }
            }
            if r.min.is_some_and(f64::is_nan) || r.max.is_some_and(f64::is_nan) {
                return Err(SpecError::key(file, format!("ranges.{c}"), "bounds must be numbers, not NaN"));
            }
        }
        Ok(())
    }
}
