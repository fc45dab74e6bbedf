//! # eddy-operators
//!
//! The timely and differential operators that eddy's jobs are made of. Each
//! module is one step of the pipeline:
//!
//! * [`ingest`]: the source that validates lines and stamps dataflow time;
//! * [`reference`](mod@reference): reference data as differential arrangements;
//! * [`enrich`]: calibration and context, looked up as of each reading's time;
//! * [`stats`], [`windows`], [`alerts`]: the statistics, windows and alerts jobs;
//! * [`sink`]: writing a stream out, committing per epoch;
//! * [`batch`]: batches that every consumer of a stream shares.
//!
//! Every operator handles its input in the order received (never by
//! timestamp), so each device's readings keep their arrival order.
#![deny(missing_docs)]

/// Readings whose per-device state (statistics, enrichment views) an
/// operator reads ahead together, before it updates any of them. A fleet's
/// per-device state is heap blocks that do not stay in cache; read one
/// reading at a time, their cache misses come one after another, read for a
/// group, they overlap (see `docs/decisions.md`).
const TOUCH_AHEAD: usize = 8;

pub mod alerts;
pub mod batch;
pub mod enrich;
pub mod ingest;
pub mod lookup;
pub mod metrics;
pub mod ordered;
pub mod reference;
pub mod sink;
pub mod snapshot;
pub mod stats;
pub mod windows;

/// Readings for the operators' unit tests.
#[cfg(test)]
mod testkit {
    use eddy_core::ids::DeviceId;
    use eddy_core::reading::{Enriched, Position, Values};

    /// An on-time enriched reading of `device` at `ts`, read at line `line`,
    /// with `values` (as received and as calibrated), no context, no junk.
    pub(crate) fn enriched(device: DeviceId, ts: i64, line: u64, values: Values) -> Enriched {
        Enriched {
            device,
            ts,
            pos: Position::line(line),
            late: false,
            future: false,
            raw: values.clone(),
            values,
            calibrated: Default::default(),
            context: None,
            junk: Default::default(),
        }
    }
}
