//! [`ChannelStats`]: the running statistics of one (device, channel) key.
//! Count, mean, min and max, Welford's sum of squares for the standard
//! deviation and the EWMA are kept here; the top-k heaps and the trend are
//! [`TopK`] and [`Trend`].

use serde::{Deserialize, Serialize};

use super::topk::TopK;
use super::trend::Trend;
use super::{StatsConfig, StatsSnapshot};

/// Running statistics for one (device, channel) key.
///
/// Create one with [`ChannelStats::new`] when a key is first seen, feed it
/// with [`ChannelStats::update`], and read it with
/// [`ChannelStats::snapshot`]. See the [module docs](super) for the exact
/// definitions.
///
/// # Serialization
///
/// `Serialize` and `Deserialize` save and restore every field exactly, so a
/// restored value behaves as the original under further updates, bit for
/// bit, given the same [`StatsConfig`] (the top-k size is part of the
/// state; `alpha` and the half-life are not). Use a binary codec (such as
/// `postcard`) that keeps `f64`s as bits: JSON writes the `±inf` of an empty
/// key's min and max as `null` and cannot read them back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Number of (finite) values applied.
    pub(super) count: u64,
    /// Cumulative moving average.
    mean: f64,
    /// Welford's sum of squared deviations from the mean.
    m2: f64,
    /// Smallest value seen (`+inf` while empty).
    min: f64,
    /// Largest value seen (`-inf` while empty).
    max: f64,
    /// EWMA in arrival order.
    ewma: f64,
    /// Event time of the last value applied.
    last_ts: i64,
    /// The `k` largest and `k` smallest values.
    pub(super) top: TopK,
    /// Decayed least-squares trend.
    pub(super) trend: Trend,
}

impl ChannelStats {
    /// Creates empty statistics for `cfg`. Allocates nothing for
    /// `top_k <= 5` (the default); otherwise the two top-k heaps, once.
    pub fn new(cfg: &StatsConfig) -> Self {
        Self {
            count: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ewma: 0.0,
            last_ts: i64::MIN,
            top: TopK::new(cfg.top_k),
            trend: Trend::default(),
        }
    }

    /// Applies one value observed at event time `ts` (epoch ms). Values are
    /// applied in arrival order, which is NOT time order.
    ///
    /// `cfg` must be the configuration this key was created with; its
    /// `alpha` and `trend_half_life_ms` are read here (`top_k` was fixed by
    /// [`ChannelStats::new`]). Non-finite values are ignored. Never allocates.
    pub fn update(&mut self, cfg: &StatsConfig, ts: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.count += 1;
        let n = self.count as f64;
        let delta = value - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.ewma = if self.count == 1 { value } else { cfg.alpha * value + (1.0 - cfg.alpha) * self.ewma };
        self.last_ts = ts;
        self.top.push(value, self.count - 1);
        self.trend.push(cfg, ts, value);
    }

    /// Number of values applied so far (non-finite values are not counted).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reports every statistic as of now.
    ///
    /// Before the first value: `count` is 0, `mean`, `min`, `max`, `ewma`
    /// and the top-k means are `NaN`, `stddev` and `trend_per_hour` are
    /// `None`, and `ts` is `i64::MIN`.
    pub fn snapshot(&self) -> StatsSnapshot {
        let empty = self.count == 0;
        let or_nan = |x: f64| if empty { f64::NAN } else { x };
        let stddev = (self.count >= 2).then(|| {
            let var = self.m2 / (self.count - 1) as f64;
            var.max(0.0).sqrt()
        });
        StatsSnapshot {
            count: self.count,
            mean: or_nan(self.mean),
            min: or_nan(self.min),
            max: or_nan(self.max),
            stddev,
            ewma: or_nan(self.ewma),
            top_k_max_mean: self.top.largest_mean(self.count),
            top_k_min_mean: self.top.smallest_mean(self.count),
            trend_per_hour: self.trend.slope_per_hour(),
            ts: self.last_ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::{arb_cfg, cfg, close, run, HOUR, T0};
    use proptest::prelude::*;

    #[test]
    fn snapshot_serde_round_trip() -> Result<(), serde_json::Error> {
        let c = StatsConfig::default();
        let snap = run(&c, &[(T0, 1.0), (T0 + 60_000, 2.5)]).snapshot();
        let back: StatsSnapshot = serde_json::from_str(&serde_json::to_string(&snap)?)?;
        assert_eq!(back, snap);
        Ok(())
    }

    #[test]
    fn empty_snapshot() {
        let s = ChannelStats::new(&StatsConfig::default());
        let snap = s.snapshot();
        assert_eq!(s.count(), 0);
        assert_eq!(snap.count, 0);
        assert!(snap.mean.is_nan() && snap.min.is_nan() && snap.max.is_nan());
        assert!(snap.ewma.is_nan());
        assert!(snap.top_k_max_mean.is_nan() && snap.top_k_min_mean.is_nan());
        assert_eq!(snap.stddev, None);
        assert_eq!(snap.trend_per_hour, None);
        assert_eq!(snap.ts, i64::MIN);
    }

    #[test]
    fn single_value() {
        let c = StatsConfig::default();
        let s = run(&c, &[(T0, 42.5)]);
        let snap = s.snapshot();
        assert_eq!(snap.count, 1);
        assert_eq!(snap.mean, 42.5);
        assert_eq!(snap.min, 42.5);
        assert_eq!(snap.max, 42.5);
        assert_eq!(snap.ewma, 42.5);
        assert_eq!(snap.top_k_max_mean, 42.5);
        assert_eq!(snap.top_k_min_mean, 42.5);
        assert_eq!(snap.stddev, None);
        assert_eq!(snap.trend_per_hour, None);
        assert_eq!(snap.ts, T0);
    }

    #[test]
    fn known_mean_and_stddev() {
        let c = StatsConfig::default();
        let vals = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let ev: Vec<_> = vals.iter().map(|&v| (T0, v)).collect();
        let snap = run(&c, &ev).snapshot();
        assert_eq!(snap.count, 8);
        assert!(close(snap.mean, 5.0));
        // Sum of squared deviations is 32; sample variance 32 / 7.
        assert!(close(snap.stddev.unwrap_or(f64::NAN), (32.0f64 / 7.0).sqrt()));
        assert_eq!(snap.min, 2.0);
        assert_eq!(snap.max, 9.0);
    }

    #[test]
    fn ewma_follows_arrival_order() {
        let c = cfg(0.5, 5, HOUR);
        // Arrival order 10, 20, 0 although ts are reversed.
        let snap = run(&c, &[(T0 + 2, 10.0), (T0 + 1, 20.0), (T0, 0.0)]).snapshot();
        // 10 -> 0.5*20 + 0.5*10 = 15 -> 0.5*0 + 0.5*15 = 7.5
        assert_eq!(snap.ewma, 7.5);
        // ts is the last applied, not the largest.
        assert_eq!(snap.ts, T0);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let c = StatsConfig::default();
        let snap = run(
            &c,
            &[(T0, 1.0), (T0 + 1, f64::NAN), (T0 + 2, f64::INFINITY), (T0 + 3, f64::NEG_INFINITY), (T0 + 60_000, 2.0)],
        )
        .snapshot();
        assert_eq!(snap.count, 2);
        assert_eq!(snap.ts, T0 + 60_000);
        assert_eq!(snap.max, 2.0);
        assert!(snap.mean.is_finite() && snap.ewma.is_finite());
        assert!(close(snap.trend_per_hour.unwrap_or(f64::NAN), 60.0));
    }

    #[test]
    fn updates_never_grow_storage() {
        let c = cfg(0.1, 4, 60_000);
        let mut s = ChannelStats::new(&c);
        assert!(!s.top.slots.spilled(), "k = 4 keeps the heaps inline");
        for i in 0..10_000i64 {
            s.update(&c, T0 + (i * 7_919) % 500_000, (i % 97) as f64);
        }
        assert!(!s.top.slots.spilled());
        assert_eq!(s.top.slots.len(), 8);
        assert_eq!(s.top.heaps(s.count()).0.len(), 4);
        // The trend is five sums and its origin, in the struct itself.
        assert_eq!(std::mem::size_of::<ChannelStats>(), 208);
    }

    // ---- Reference model and property tests --------------------------------

    /// Two-pass reference over every value.
    struct Reference {
        values: Vec<f64>,
        /// `(ts, v)` of every value, for the trend.
        trend: Vec<(i64, f64)>,
        ewma: f64,
        last_ts: i64,
    }

    impl Reference {
        fn run(cfg: &StatsConfig, events: &[(i64, f64)]) -> Self {
            let mut r = Reference { values: Vec::new(), trend: Vec::new(), ewma: f64::NAN, last_ts: i64::MIN };
            for &(ts, v) in events {
                r.ewma = if r.values.is_empty() { v } else { cfg.alpha * v + (1.0 - cfg.alpha) * r.ewma };
                r.values.push(v);
                r.last_ts = ts;
                r.trend.push((ts, v));
            }
            r
        }

        fn mean(&self) -> f64 {
            self.values.iter().sum::<f64>() / self.values.len() as f64
        }

        fn stddev(&self) -> Option<f64> {
            let n = self.values.len();
            (n >= 2).then(|| {
                let m = self.mean();
                let ss: f64 = self.values.iter().map(|v| (v - m) * (v - m)).sum();
                (ss / (n - 1) as f64).sqrt()
            })
        }

        fn top_means(&self, k: usize) -> (f64, f64) {
            let mut sorted = self.values.clone();
            sorted.sort_by(f64::total_cmp);
            let k = k.min(sorted.len());
            let lo = &sorted[..k];
            let hi = &sorted[sorted.len() - k..];
            (hi.iter().sum::<f64>() / k as f64, lo.iter().sum::<f64>() / k as f64)
        }

        /// Two-pass weighted least-squares slope: each value weighted by
        /// `2^(−age / half-life)`, its age taken from the largest `ts`;
        /// with the tolerance scale `value range / weighted sd of t`, in
        /// hours (see `assert_matches`).
        fn slope(&self, cfg: &StatsConfig) -> Option<(f64, f64)> {
            let pts = &self.trend;
            let latest = pts.iter().map(|p| p.0).max()?;
            if pts.iter().all(|p| p.0 == pts[0].0) {
                return None;
            }
            let h = cfg.trend_half_life_ms.max(1) as f64;
            let w: Vec<f64> = pts.iter().map(|p| super::super::trend::decay((latest - p.0) as f64, h)).collect();
            let x: Vec<f64> = pts.iter().map(|p| (p.0 - latest) as f64 / 3_600_000.0).collect();
            let sw: f64 = w.iter().sum();
            let mx = w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>() / sw;
            let mv = w.iter().zip(pts).map(|(w, p)| w * p.1).sum::<f64>() / sw;
            let sxx: f64 = w.iter().zip(&x).map(|(w, x)| w * (x - mx) * (x - mx)).sum();
            let sxy: f64 = w.iter().zip(&x).zip(pts).map(|((w, x), p)| w * (x - mx) * (p.1 - mv)).sum();
            if sxx.is_nan() || sxx <= 0.0 {
                return None;
            }
            let (vmin, vmax) =
                pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
            Some((sxy / sxx, (vmax - vmin) / (sxx / sw).sqrt()))
        }
    }

    /// Compares every statistic with the two-pass reference.
    ///
    /// Tolerances: `close` (1e-9 relative to `max(1, |a|, |b|)`) for mean,
    /// stddev, ewma and the top-k means; min, max, count and ts exactly.
    /// For the trend, `1e-9 * max(1, |slope|) + 1e-9 * vrange / sd_t`,
    /// where `sd_t` is the weighted standard deviation of the values' times
    /// in hours. The absolute term is needed because a slope near zero is
    /// ill-conditioned: rounding in the weighted co-moment (ours *and* the
    /// reference's) is of order `eps * n * vrange * sd_t` per unit weight, and
    /// dividing by the weighted `M2_t` (`sd_t^2` per unit weight) leaves an
    /// error of order `eps * n * vrange / sd_t` that no relative bound on
    /// the slope can absorb when the true slope is tiny.
    fn assert_matches(cfg: &StatsConfig, events: &[(i64, f64)]) -> Result<(), TestCaseError> {
        let snap = run(cfg, events).snapshot();
        let r = Reference::run(cfg, events);
        prop_assert_eq!(snap.count, r.values.len() as u64);
        prop_assert_eq!(snap.ts, r.last_ts);
        let min = r.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert_eq!(snap.min, min);
        prop_assert_eq!(snap.max, max);
        prop_assert!(close(snap.mean, r.mean()), "mean {} vs {}", snap.mean, r.mean());
        match (snap.stddev, r.stddev()) {
            (Some(a), Some(b)) => prop_assert!(close(a, b), "stddev {} vs {}", a, b),
            (a, b) => prop_assert_eq!(a, b),
        }
        prop_assert!(close(snap.ewma, r.ewma), "ewma {} vs {}", snap.ewma, r.ewma);
        let (hi, lo) = r.top_means(cfg.top_k);
        prop_assert!(close(snap.top_k_max_mean, hi), "top max {} vs {}", snap.top_k_max_mean, hi);
        prop_assert!(close(snap.top_k_min_mean, lo), "top min {} vs {}", snap.top_k_min_mean, lo);
        match (snap.trend_per_hour, r.slope(cfg)) {
            (Some(a), Some((b, scale))) => {
                let tol = 1e-9 * b.abs().max(1.0) + 1e-9 * scale;
                prop_assert!((a - b).abs() <= tol, "trend {} vs {} (tol {})", a, b, tol);
            }
            (None, None) => {}
            (a, b) => prop_assert!(false, "trend {:?} vs {:?}", a, b),
        }
        Ok(())
    }

    /// Event times around 1.7e12 ms: a clock advancing by random steps
    /// (sometimes zero, sometimes hours, many half-lives), each
    /// value displaced by random disorder (mostly seconds, sometimes hours
    /// late). `slope` adds a linear component so trends are not all ~0.
    fn arb_events() -> impl Strategy<Value = Vec<(i64, f64)>> {
        let step = prop_oneof![
            6 => 0i64..120_000,
            2 => Just(0i64),
            1 => 0i64..10_800_000,
        ];
        let disorder = prop_oneof![
            6 => -10_000i64..10_000,
            2 => Just(0i64),
            1 => -7_200_000i64..0,
        ];
        (
            1_600_000_000_000i64..1_800_000_000_000,
            prop_oneof![Just(0.0f64), -500.0f64..500.0],
            proptest::collection::vec((step, disorder, 0.0f64..=5000.0), 1..400),
        )
            .prop_map(|(start, slope, steps)| {
                let mut clock = start;
                steps
                    .into_iter()
                    .map(|(step, dis, noise)| {
                        clock += step;
                        let ts = clock + dis;
                        let hours = (ts - start) as f64 / 3_600_000.0;
                        let v = if slope == 0.0 {
                            noise
                        } else {
                            (2500.0 + slope * hours + 0.1 * (noise - 2500.0)).clamp(0.0, 5000.0)
                        };
                        (ts, v)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn matches_two_pass_reference(cfg in arb_cfg(), events in arb_events()) {
            assert_matches(&cfg, &events)?;
        }

        #[test]
        fn matches_reference_with_tight_clusters(
            cfg in arb_cfg(),
            start in 1_600_000_000_000i64..1_800_000_000_000,
            pts in proptest::collection::vec((0i64..50, 0.0f64..=5000.0), 2..200),
        ) {
            // Values crowded into a few ms: the ill-conditioned case.
            let events: Vec<_> = pts.into_iter().map(|(d, v)| (start + d, v)).collect();
            assert_matches(&cfg, &events)?;
        }

        #[test]
        fn snapshot_invariants(cfg in arb_cfg(), events in arb_events()) {
            // Means are rounded sums: allow 1e-9 relative to the 5000 range.
            let eps = 5e-6;
            let snap = run(&cfg, &events).snapshot();
            prop_assert!(snap.min <= snap.mean + eps && snap.mean <= snap.max + eps);
            prop_assert!(snap.min <= snap.top_k_min_mean + eps);
            prop_assert!(snap.top_k_min_mean <= snap.top_k_max_mean + eps);
            prop_assert!(snap.top_k_max_mean <= snap.max + eps);
            prop_assert!(snap.min <= snap.ewma + eps && snap.ewma <= snap.max + eps);
            prop_assert!(snap.stddev.is_none_or(|s| s >= 0.0 && s.is_finite()));
        }
    }
}
