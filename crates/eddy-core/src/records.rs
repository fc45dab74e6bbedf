//! Output records of the statistics, windows and alerts jobs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{Channel, DeviceId};

/// A point-in-time report of the running statistics of one (device,
/// channel) key, as `eddy_state::stats::ChannelStats::snapshot` computes it
/// (the `eddy_state::stats` module docs define each statistic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Number of values applied.
    pub count: u64,
    /// Cumulative moving average of all values (`mean += (v - mean) / n`).
    pub mean: f64,
    /// Smallest value seen.
    pub min: f64,
    /// Largest value seen.
    pub max: f64,
    /// Sample (`n - 1`) standard deviation by Welford's algorithm; `None`
    /// while `count < 2`.
    pub stddev: Option<f64>,
    /// EWMA in arrival order: the first value initialises it, then
    /// `ewma = alpha * v + (1 - alpha) * ewma`.
    pub ewma: f64,
    /// Mean of the `k` largest values seen (of all values if fewer than `k`).
    pub top_k_max_mean: f64,
    /// Mean of the `k` smallest values seen (of all values if fewer than `k`).
    pub top_k_min_mean: f64,
    /// Least-squares slope of value against event time, in value units per
    /// hour, over the rolling span (see the `eddy_state::stats` module
    /// docs); `None` when fewer than two values are retained or they share
    /// one timestamp.
    pub trend_per_hour: Option<f64>,
    /// Event time of the last value applied, in arrival order (not the
    /// largest ts seen).
    pub ts: i64,
}

/// A statistics snapshot of one (device, channel): a line of `stats.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    /// The device.
    pub device_id: DeviceId,
    /// The channel.
    pub channel: Channel,
    /// The statistics, and `ts` of the last reading applied.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// One window aggregate: a line of `windows.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// The device.
    pub device_id: DeviceId,
    /// The channel.
    pub channel: Channel,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Number of values.
    pub count: u64,
    /// Mean of the values.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

/// Whether an alert event starts or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// The value rose above `rise_above` while the rule was inactive.
    Start,
    /// The value fell below `fall_below` (or the rule was removed) while active.
    End,
}

/// Why an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A value fell below `fall_below`.
    FellBelow,
    /// The rule was deleted while the event was active; the event ends at
    /// the device's next reading.
    RuleRemoved,
}

/// An alert event: a line of `events.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `<rule_id>:<device_id>:<start ts>`, the same on the start and the end.
    pub event_id: String,
    /// The rule.
    pub rule_id: Arc<str>,
    /// The device.
    pub device_id: DeviceId,
    /// The watched channel.
    pub channel: Channel,
    /// Start or end.
    pub state: EventState,
    /// Event time of the reading that caused it.
    pub ts: i64,
    /// That reading's calibrated value (null when a removed rule ends an
    /// event at a reading without the channel).
    pub value: Option<f64>,
    /// The rule's thresholds in force at that reading.
    pub rise_above: f64,
    /// See `rise_above`.
    pub fall_below: f64,
    /// End only: the largest value seen during the event.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peak: Option<f64>,
    /// End only: end ts − start ts (negative when the end reading's event time
    /// precedes the start's, which out-of-order arrival allows).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<i64>,
    /// End only: why it ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<EndReason>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a statistics snapshot, in `stats.jsonl` order, and
    /// flattened into a [`StatsRecord`].
    #[test]
    fn stats_snapshot_wire_form() -> Result<(), serde_json::Error> {
        let snap = StatsSnapshot {
            count: 2,
            mean: 1.75,
            min: 1.0,
            max: 2.5,
            stddev: None,
            ewma: 1.15,
            top_k_max_mean: 1.75,
            top_k_min_mean: 1.75,
            trend_per_hour: Some(90.0),
            ts: 1_700_000_060_000,
        };
        let json = serde_json::to_string(&snap)?;
        assert_eq!(
            json,
            r#"{"count":2,"mean":1.75,"min":1.0,"max":2.5,"stddev":null,"ewma":1.15,"top_k_max_mean":1.75,"top_k_min_mean":1.75,"trend_per_hour":90.0,"ts":1700000060000}"#
        );
        assert_eq!(serde_json::from_str::<StatsSnapshot>(&json)?, snap);
        let record =
            StatsRecord { device_id: DeviceId::intern("dev-1"), channel: Channel::intern("pm25"), stats: snap };
        let line = serde_json::to_string(&record)?;
        assert_eq!(line, format!(r#"{{"device_id":"dev-1","channel":"pm25",{}"#, &json[1..]));
        assert_eq!(serde_json::from_str::<StatsRecord>(&line)?, record);
        Ok(())
    }
}
