//! The record model: readings as they move through the pipeline.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::ids::{Channel, DeviceId};

/// Channel values of one reading, in the order received. `None` is JSON
/// `null`: the channel was not measured (or, after validation, is junk).
pub type Values = SmallVec<[(Channel, Option<f64>); 6]>;

/// A short list of channels (junk channels, calibrated channels).
pub type ChannelList = SmallVec<[Channel; 2]>;

/// Device context columns from `devices.csv` (or a `devices` update), in
/// column order, without `device_id`.
pub type Context = Arc<Vec<(String, String)>>;

/// Where a record came from: a file line, or a Kafka partition and offset.
///
/// For a dataset file, `partition` is 0 and `offset` is the 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Position {
    /// Input partition (0 for a file).
    pub partition: u32,
    /// Line number (files, 1-based) or offset (Kafka) within the partition.
    pub offset: u64,
}

impl Position {
    /// The position of line `line_no` (1-based) of a file.
    pub fn line(line_no: u64) -> Position {
        Position { partition: 0, offset: line_no }
    }
}

/// A reading that passed validation: the output of the ingest job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device that sent it.
    pub device: DeviceId,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    /// Where it was read from.
    pub pos: Position,
    /// Channel values as received.
    pub values: Values,
    /// True when it arrived later than the lateness allows: it is kept for
    /// the late output and the backup, and left out of statistics, windows and alerts.
    pub late: bool,
    /// Channels whose raw value lies outside the channel's valid range.
    pub junk: ChannelList,
}

impl Reading {
    /// True when `channel` is junk in this reading.
    pub fn is_junk(&self, channel: Channel) -> bool {
        self.junk.contains(&channel)
    }
}

/// A validated reading with calibration and device context applied: the
/// output of the enrich job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enriched {
    /// The device that sent it.
    pub device: DeviceId,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    /// Where it was read from.
    pub pos: Position,
    /// Late readings are enriched too (the backup keeps them), but only
    /// non-late ones reach statistics, windows and alerts.
    pub late: bool,
    /// Calibrated values, in the order received. `None` where the value was
    /// null or junk: such a value is excluded from everything downstream.
    pub values: Values,
    /// The values as received (junk ones included). `enriched.jsonl` shows
    /// them only for calibrated channels; the backup keeps them all.
    pub raw: Values,
    /// The channels to which a calibration was applied.
    pub calibrated: ChannelList,
    /// The device context, or `None` for an unknown device.
    pub context: Option<Context>,
    /// Junk channels.
    pub junk: ChannelList,
}

impl Enriched {
    /// The usable (non-null, non-junk, calibrated) values.
    pub fn usable(&self) -> impl Iterator<Item = (Channel, f64)> + '_ {
        self.values.iter().filter_map(|(c, v)| v.map(|v| (*c, v)))
    }

    /// The calibrated value of `channel`, if usable.
    pub fn value(&self, channel: Channel) -> Option<f64> {
        self.values.iter().find(|(c, _)| *c == channel).and_then(|(_, v)| *v)
    }
}

/// An input line that failed validation, with its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it was read from.
    pub pos: Position,
    /// The original text (invalid UTF-8 replaced by U+FFFD).
    pub line: String,
    /// Why it was rejected: a reason code, a colon, and a detail.
    pub reason: String,
}

/// A source of raw input lines, in arrival order: a dataset file, later a
/// Kafka partition. The ingest job reads it.
pub trait LineSource {
    /// Reads the next line (without its line terminator) into `buf`, which
    /// the caller has cleared, and returns its position; `Ok(None)` at the end.
    fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>>;

    /// Bytes consumed so far (for progress reporting).
    fn bytes_read(&self) -> u64;

    /// A description for error messages (a path, a topic).
    fn describe(&self) -> String;
}

/// An input line exactly as received, for the raw archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawLine {
    /// Where it was read from.
    pub pos: Position,
    /// When it was read, wall-clock epoch ms.
    pub arrival_ms: i64,
    /// Its bytes, without the line terminator.
    pub bytes: Vec<u8>,
}
