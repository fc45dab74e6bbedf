//! # eddy-state
//!
//! The per-key state machines of eddy's dataflow operators, as plain data
//! structures: no I/O, no timely, no allocation on the hot path.
//!
//! The operators in `eddy-operators` partition the sensor stream by key and
//! keep one state value per key:
//!
//! * one [`ChannelStats`] per (device, channel): running count, mean, min,
//!   max, sample standard deviation, EWMA, top-k means and a rolling
//!   least-squares trend (see [`stats`]), the channels of a device held
//!   together in one [`DeviceStats`], which keeps a young device's values
//!   until it has a few readings and computes the same statistics from them;
//! * one [`WindowAgg`] per (device, channel, window), where the windows a
//!   reading belongs to come from a [`WindowSpec`] (see [`window`]).
//!
//! Test reference models use the same types, so an operator and its model
//! agree by construction on what a statistic means.
//!
//! Everything here is sized to run at about a million updates per second:
//! every update is `O(1)` (`O(log top_k)` for [`ChannelStats`]) and never
//! allocates, and memory per key is fixed when the key's state is created.
//! Updates arrive in arrival order, which is not event-time order; each type
//! documents how it treats disorder and late values. Non-finite values
//! (`NaN`, `±inf`) are ignored by every `update`/`add`.

#![deny(missing_docs)]

pub mod stats;
pub mod window;

pub use stats::{ChannelStats, DeviceStats, StatsConfig, StatsSnapshot};
pub use window::{WindowAgg, WindowSpec};
