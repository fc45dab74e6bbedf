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
//! * a least-squares trend (value units per hour) whose weights decay
//!   with the values' age in event time.
//!
//! Memory per key is constant: two heaps of [`StatsConfig::top_k`] values
//! (inline in the struct for `top_k <= 5`) and five sums for the trend.
//! [`ChannelStats::update`] costs `O(log top_k)` and allocates nothing for
//! `top_k <= 5`; [`ChannelStats::snapshot`] costs `O(top_k)`.
//!
//! # Trend
//!
//! The trend is the slope `β` of the weighted least-squares line
//! `v ≈ α + β·x` through every value the key has had, where `x` is the
//! value's `ts` in hours and the value's weight is
//! `w = 2^(−(latest − ts) / half_life)`: `latest` is the largest `ts` the key
//! has seen and `half_life` is [`StatsConfig::trend_half_life_ms`]. So
//!
//! ```text
//! β = (S0·Sxv − Sx·Sv) / (S0·Sxx − Sx²),   S0 = Σw, Sx = Σw·x, Sxx = Σw·x², Sv = Σw·v, Sxv = Σw·x·v
//! ```
//!
//! with `x` measured from `latest` (the slope does not depend on the origin,
//! and this one keeps every `x` within the values' own age, so precision
//! holds however long the key lives). When a newer `ts` arrives, `latest`
//! moves on by `Δ`: each sum is multiplied by `2^(−Δ / half_life)` and
//! shifted (`x → x − Δ`: `Sxx → Sxx − 2Δ·Sx + Δ²·S0`, `Sx → Sx − Δ·S0`,
//! `Sxv → Sxv − Δ·Sv`); a value older than `latest` (arriving late) enters
//! with its own, smaller weight. The trend is `None` until two values with
//! different `ts` came, and when the denominator is not positive (every
//! weight but one has decayed to nothing).

//! # Non-finite values
//!
//! `NaN` and `±inf` carry no usable reading and would poison every running
//! statistic for the rest of the key's life, so [`ChannelStats::update`]
//! ignores them entirely: they change no statistic, not even `count` or `ts`.

mod channel;
mod config;
mod device;
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
