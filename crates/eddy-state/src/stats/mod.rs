//! Incremental statistics for one (device, channel) key.
//!
//! [`ChannelStats`] takes values one at a time, in arrival order (which is
//! *not* event-time order), and keeps enough state to report a
//! [`StatsSnapshot`] at any moment:
//!
//! * count, cumulative mean, min, max;
//! * sample standard deviation (Welford's algorithm);
//! * an exponentially weighted moving average (EWMA) in arrival order;
//! * the mean of the `k` largest and of the `k` smallest values seen;
//! * a least-squares trend (value units per hour) over a rolling event-time
//!   span, kept as time buckets.
//!
//! Memory per key is bounded: two heaps of [`StatsConfig::top_k`] values
//! (inline in the struct for `top_k <= 5`), and at most
//! [`StatsConfig::trend_buckets`] trend buckets, of which only those holding
//! values inside the span are stored (a sensor reading every 5 minutes keeps
//! 12 of the default 60), a bucket holding one value in 16 bytes, the
//! first 15 of them inside the [`ChannelStats`] itself.
//! [`ChannelStats::update`] costs `O(log top_k + live buckets)` and allocates
//! only while the buckets in use grow towards that bound;
//! [`ChannelStats::snapshot`] costs `O(top_k + live buckets)`.
//!
//! # Trend
//!
//! The bucket width is `w = max(trend_span_ms / trend_buckets, 1)` ms and a
//! value at event time `ts` falls in bucket `b = ts.div_euclid(w)`. `head` is
//! the largest bucket index seen so far for the key; the rolling span is the
//! buckets `head - trend_buckets + 1 ..= head`. A value whose bucket is older
//! than the span when it arrives is left out of the trend (it still counts
//! for every other statistic), and buckets that fall out of the span when
//! `head` advances are dropped (lazily: when a new bucket is added, and
//! [`ChannelStats::snapshot`] skips buckets outside the span).
//!
//! Each bucket keeps `n`, the means of `t` and `v`, `M2_t` (the sum of squared
//! deviations of `t`) and `C_tv` (the co-moment), updated with Welford-style
//! updates. `t` is measured in hours relative to the *first ts that entered
//! the bucket* (a per-bucket origin rather than a per-key one): every live
//! origin is itself a retained timestamp, so every magnitude the arithmetic
//! sees is bounded by the time range of the retained values, however long the
//! key has lived and however wide the buckets are. At snapshot time the live
//! buckets are shifted to a common origin (the exact integer difference of
//! the origins, converted to hours) and merged with Chan et al.'s parallel
//! formulas; the trend is `C_tv / M2_t` of the merge, `None` when fewer than
//! two values are retained or when `M2_t == 0` (all retained values share
//! one timestamp).
//!
//! # Non-finite values
//!
//! `NaN` and `±inf` carry no usable reading and would poison every running
//! statistic for the rest of the key's life, so [`ChannelStats::update`]
//! ignores them entirely: they change no statistic, not even `count` or `ts`.

mod channel;
mod config;
mod device;
mod moments;
mod topk;
mod trend;

#[cfg(test)]
mod testing;

pub use channel::ChannelStats;
pub use config::StatsConfig;
pub use device::{DeviceStats, YOUNG_VALUES};
// The report of a `ChannelStats` is a plain record, defined in `eddy-core`
// with the other output records.
pub use eddy_core::records::StatsSnapshot;
