//! Helpers shared by the statistics tests.

use proptest::prelude::*;

use super::{ChannelStats, StatsConfig};

/// `|a - b| <= 1e-9 * max(1, |a|, |b|)`, with `NaN == NaN`.
pub(super) fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
}

/// A configuration with these values.
pub(super) fn cfg(alpha: f64, top_k: usize, half_life: i64) -> StatsConfig {
    StatsConfig { alpha, top_k, trend_half_life_ms: half_life }
}

/// A [`ChannelStats`] with `events` applied in order.
pub(super) fn run(cfg: &StatsConfig, events: &[(i64, f64)]) -> ChannelStats {
    let mut s = ChannelStats::new(cfg);
    for &(ts, v) in events {
        s.update(cfg, ts, v);
    }
    s
}

/// An event time in 2023, epoch ms.
pub(super) const T0: i64 = 1_700_000_000_000;
/// One hour in ms.
pub(super) const HOUR: i64 = 3_600_000;

/// A valid configuration: the default half-life, or another.
pub(super) fn arb_cfg() -> impl Strategy<Value = StatsConfig> {
    (0.01f64..=1.0, 1usize..8, prop_oneof![Just(3_600_000i64), 60_000i64..20_000_000])
        .prop_map(|(alpha, top_k, half_life)| cfg(alpha, top_k, half_life))
}
