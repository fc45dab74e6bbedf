//! [`Trend`]: the slope of an exponentially time-decayed least-squares fit
//! (see the [module docs](super) for its definition).

use std::f64::consts::LN_2;

use serde::{Deserialize, Serialize};

use super::StatsConfig;

/// Milliseconds in one hour, the time unit of the trend.
const MS_PER_HOUR: f64 = 3_600_000.0;

/// The weight a value `age_ms` older than the key's latest `ts` has:
/// `2^(−age / half_life)`.
pub(super) fn decay(age_ms: f64, half_life_ms: f64) -> f64 {
    (-age_ms * LN_2 / half_life_ms).exp()
}

/// Five decayed sums of the values' `(x, v)`, `x` being the value's `ts`
/// minus the key's latest `ts`, in hours, and each value weighted by
/// [`decay`] of its age: `Σw`, `Σw·x`, `Σw·x²`, `Σw·v` and `Σw·x·v`, `v`
/// taken relative to the key's first value (the slope does not change, and
/// its rounding error then scales with how far the values spread, not with
/// their size: a constant series has a slope of exactly 0). When a
/// newer `ts` arrives, every sum is decayed and shifted to the new origin
/// (`x → x − Δ`), so `x` stays relative to the latest `ts` and the sums stay
/// bounded however long the key lives: state is O(1) per key.
///
/// Serialized as every field, `f64`s exactly (in a binary codec).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Trend {
    /// The key's latest `ts` (the origin of `x`), once a value came.
    latest: i64,
    /// The key's first value, the origin of `v`.
    v0: f64,
    /// A value came.
    seen: bool,
    /// Two values with different `ts` came (a `ts` other than the latest
    /// came: the latest is one of them).
    distinct: bool,
    s0: f64,
    s1: f64,
    s2: f64,
    sv: f64,
    sxv: f64,
}

impl Trend {
    fn add(&mut self, x: f64, v: f64, w: f64) {
        self.s0 += w;
        self.s1 += w * x;
        self.s2 += w * x * x;
        self.sv += w * v;
        self.sxv += w * x * v;
    }

    pub(super) fn push(&mut self, cfg: &StatsConfig, ts: i64, v: f64) {
        if !self.seen {
            (self.seen, self.latest, self.v0) = (true, ts, v);
            return self.add(0.0, 0.0, 1.0);
        }
        self.distinct |= ts != self.latest;
        let v = v - self.v0;
        let half_life = cfg.trend_half_life_ms.max(1) as f64;
        // i128: two extreme timestamps differ by more than an i64 holds.
        let age = (i128::from(self.latest) - i128::from(ts)) as f64;
        if age >= 0.0 {
            return self.add(-age / MS_PER_HOUR, v, decay(age, half_life));
        }
        // A newer ts: decay every sum by the time it moves on, and shift x.
        let (d, dx) = (decay(-age, half_life), -age / MS_PER_HOUR);
        self.s2 = d * (self.s2 + dx * (dx * self.s0 - 2.0 * self.s1));
        self.s1 = d * (self.s1 - dx * self.s0);
        self.sxv = d * (self.sxv - dx * self.sv);
        self.s0 *= d;
        self.sv *= d;
        self.latest = ts;
        self.add(0.0, v, 1.0);
    }

    /// Slope in value units per hour, or `None` (see [`StatsSnapshot`](super::StatsSnapshot)).
    pub(super) fn slope_per_hour(&self) -> Option<f64> {
        if !self.distinct {
            return None;
        }
        let den = self.s0 * self.s2 - self.s1 * self.s1;
        if den.is_nan() || den <= 0.0 {
            return None;
        }
        Some((self.s0 * self.sxv - self.s1 * self.sv) / den).filter(|s| s.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::{cfg, close, run, HOUR, T0};

    /// The values taken relative to the first: a constant series has a
    /// slope of exactly 0, however large its value and however close its
    /// times (the model test found -1.7e-9 per hour for two readings of 755
    /// 463 ms apart when the sums held the values themselves).
    #[test]
    fn a_constant_series_has_a_slope_of_exactly_zero() {
        let c = StatsConfig::default();
        for (v, gap) in [(755.0, 463), (1e9, 1), (-3.25e6, 17), (0.1, 86_400_000)] {
            let mut t = Trend::default();
            for i in 0..5 {
                t.push(&c, T0 + i * gap, v);
            }
            t.push(&c, T0 + gap / 2, v);
            assert_eq!(t.slope_per_hour(), Some(0.0), "{v} every {gap} ms");
        }
    }

    #[test]
    fn exact_linear_trend() {
        let c = StatsConfig::default();
        // v = 10 + 3 * hours, one value every 30 s over 50 minutes, shuffled:
        // any weighting fits a line exactly.
        let mut events: Vec<(i64, f64)> =
            (0..100).map(|i| (T0 + i * 30_000, 10.0 + 3.0 * (i * 30_000) as f64 / HOUR as f64)).collect();
        events.reverse();
        events.swap(3, 40);
        let slope = run(&c, &events).snapshot().trend_per_hour.unwrap_or(f64::NAN);
        assert!(close(slope, 3.0), "{slope}");
    }

    #[test]
    fn two_values_give_their_slope() {
        let c = StatsConfig::default();
        let slope = run(&c, &[(T0, 1.0), (T0 + HOUR / 2, 2.0)]).snapshot().trend_per_hour;
        assert!(close(slope.unwrap_or(f64::NAN), 2.0), "{slope:?}");
    }

    #[test]
    fn old_values_weigh_less_by_their_half_life() {
        // Slope 1/h for two hours, then flat for ten half-lives (30 min):
        // the fit follows the recent, flat values.
        let c = cfg(0.1, 5, HOUR / 2);
        let mut events: Vec<(i64, f64)> = (0..=24).map(|i| (T0 + i * 300_000, i as f64 / 12.0)).collect();
        events.extend((1..=60).map(|i| (T0 + 2 * HOUR + i * 300_000, 2.0)));
        let slope = run(&c, &events).snapshot().trend_per_hour.unwrap_or(f64::NAN);
        assert!(slope.abs() < 0.02, "{slope}");
        // With a long half-life the early rise still shows.
        let slope = run(&cfg(0.1, 5, 100 * HOUR), &events).snapshot().trend_per_hour.unwrap_or(f64::NAN);
        assert!(slope > 0.15, "{slope}");
    }

    #[test]
    fn same_timestamp_has_no_trend() {
        let c = StatsConfig::default();
        let snap = run(&c, &[(T0, 1.0), (T0, 5.0), (T0, 3.0)]).snapshot();
        assert_eq!(snap.trend_per_hour, None);
        assert_eq!(run(&c, &[(T0, 1.0)]).snapshot().trend_per_hour, None);
    }

    #[test]
    fn a_late_value_counts_with_its_decayed_weight() {
        let c = StatsConfig::default();
        let in_order = run(&c, &[(T0, 0.0), (T0 + HOUR, 1.0), (T0 + 2 * HOUR, 4.0)]).snapshot();
        let late = run(&c, &[(T0 + HOUR, 1.0), (T0 + 2 * HOUR, 4.0), (T0, 0.0)]).snapshot();
        let (a, b) = (in_order.trend_per_hour.unwrap_or(f64::NAN), late.trend_per_hour.unwrap_or(f64::NAN));
        assert!(close(a, b), "{a} vs {b}");
    }

    #[test]
    fn negative_and_extreme_timestamps_do_not_panic() {
        let c = StatsConfig::default();
        for events in [
            vec![(i64::MIN, 1.0), (i64::MAX, 2.0), (0, 3.0)],
            vec![(i64::MAX, 1.0), (i64::MIN, 2.0)],
            vec![(-5 * HOUR, 1.0), (-HOUR, 2.0), (-3 * HOUR, 0.5)],
        ] {
            let snap = run(&c, &events).snapshot();
            assert!(snap.trend_per_hour.is_none_or(f64::is_finite), "{events:?}: {snap:?}");
        }
    }

    #[test]
    fn the_state_is_a_few_words() {
        assert!(std::mem::size_of::<Trend>() <= 64, "{}", std::mem::size_of::<Trend>());
    }
}
