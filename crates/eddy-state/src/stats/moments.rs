//! The moments of the trend's `(t, v)` pairs: Welford's running update
//! within one time bucket ([`Bucket`]) and Chan et al.'s merge of buckets
//! ([`Moments`]), with `t` in hours.

/// Milliseconds in one hour, the time unit of the trend.
pub(super) const MS_PER_HOUR: f64 = 3_600_000.0;

/// One time bucket of the trend: Welford moments of `(t, v)` with `t` in
/// hours since `origin_ms`, the first ts that entered the bucket.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    /// Bucket index (`ts.div_euclid(width)`) this slot currently holds.
    pub(super) index: i64,
    /// Origin of `t` for this bucket, epoch ms.
    pub(super) origin_ms: i64,
    pub(super) n: u64,
    pub(super) mean_t: f64,
    pub(super) mean_v: f64,
    pub(super) m2_t: f64,
    pub(super) c_tv: f64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket { index: 0, origin_ms: 0, n: 0, mean_t: 0.0, mean_v: 0.0, m2_t: 0.0, c_tv: 0.0 };

    fn reset(&mut self, index: i64, origin_ms: i64) {
        *self = Bucket { index, origin_ms, ..Bucket::EMPTY };
    }

    /// A bucket holding one value, as a reset then a push make it.
    pub(super) fn first(index: i64, ts: i64, v: f64) -> Bucket {
        let mut b = Bucket::EMPTY;
        b.reset(index, ts);
        b.push(ts, v);
        b
    }

    pub(super) fn push(&mut self, ts: i64, v: f64) {
        let t = hours_between(self.origin_ms, ts);
        self.n += 1;
        let n = self.n as f64;
        let dt = t - self.mean_t;
        self.mean_t += dt / n;
        self.mean_v += (v - self.mean_v) / n;
        self.m2_t += dt * (t - self.mean_t);
        self.c_tv += dt * (v - self.mean_v);
    }
}

/// `(to - from)` in hours, computed without overflow.
pub(super) fn hours_between(from_ms: i64, to_ms: i64) -> f64 {
    // The difference converts to the same f64 from i64 as from i128 (both
    // round the exact integer to nearest); i128 is only needed when it
    // overflows i64, and its conversion is a library call.
    let ms = match to_ms.checked_sub(from_ms) {
        Some(d) => d as f64,
        None => (i128::from(to_ms) - i128::from(from_ms)) as f64,
    };
    ms / MS_PER_HOUR
}

/// Moments of a set of `(t, v)` pairs, the unit of Chan et al.'s merge.
#[derive(Clone, Copy, Debug)]
pub(super) struct Moments {
    pub(super) n: f64,
    pub(super) mean_t: f64,
    pub(super) mean_v: f64,
    pub(super) m2_t: f64,
    pub(super) c_tv: f64,
}

impl Moments {
    /// Merges `other` into `self` (Chan, Golub and LeVeque's pairwise
    /// update, extended to the co-moment).
    pub(super) fn merge(&mut self, other: &Moments) {
        let n = self.n + other.n;
        let d_t = other.mean_t - self.mean_t;
        let d_v = other.mean_v - self.mean_v;
        let w = self.n * other.n / n;
        self.mean_t += d_t * other.n / n;
        self.mean_v += d_v * other.n / n;
        self.m2_t += other.m2_t + d_t * d_t * w;
        self.c_tv += other.c_tv + d_t * d_v * w;
        self.n = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::HOUR;
    use proptest::prelude::*;

    /// The i64 fast path gives the i128 result, bit for bit.
    #[test]
    fn hours_between_matches_the_wide_difference() {
        let wide = |a: i64, b: i64| (i128::from(b) - i128::from(a)) as f64 / MS_PER_HOUR;
        let edges = [i64::MIN, i64::MIN + 1, -HOUR, -1, 0, 1, 7, HOUR, 1_767_225_600_262, i64::MAX - 1, i64::MAX];
        for &a in &edges {
            for &b in &edges {
                assert_eq!(hours_between(a, b).to_bits(), wide(a, b).to_bits(), "{a} {b}");
            }
        }
    }

    proptest! {
        #[test]
        fn hours_between_matches_the_wide_difference_anywhere(a in any::<i64>(), b in any::<i64>()) {
            let wide = (i128::from(b) - i128::from(a)) as f64 / MS_PER_HOUR;
            prop_assert_eq!(hours_between(a, b).to_bits(), wide.to_bits());
        }
    }
}
