//! Output records of the statistics, windows and alerts jobs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use eddy_state::stats::StatsSnapshot;

use crate::ids::{Channel, DeviceId};

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
