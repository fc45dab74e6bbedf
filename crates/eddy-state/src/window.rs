//! Event-time window assignment and per-window aggregates.
//!
//! A [`WindowSpec`] describes tumbling (`slide == size`) or hopping
//! (`slide < size`) windows aligned to the Unix epoch: window starts are the
//! multiples of `slide_ms`, and the window starting at `s` covers the
//! half-open interval `[s, s + size_ms)`. [`WindowSpec::windows_of`] lists
//! the windows a timestamp falls in; a [`WindowAgg`] accumulates the values
//! of one (device, channel, window).

use serde::{Deserialize, Serialize};

/// Size and slide of event-time windows, in ms.
///
/// Windows start at every multiple of `slide_ms` (aligned to the Unix epoch)
/// and last `size_ms`: tumbling when `slide_ms == size_ms`, hopping when
/// `slide_ms < size_ms`. See [`WindowSpec::validate`] for the constraints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// Length of each window, in ms.
    pub size_ms: i64,
    /// Distance between consecutive window starts, in ms.
    pub slide_ms: i64,
}

impl WindowSpec {
    /// Tumbling windows: back to back, each timestamp in exactly one.
    pub fn tumbling(size_ms: i64) -> Self {
        Self { size_ms, slide_ms: size_ms }
    }

    /// Hopping (sliding) windows of `size_ms` starting every `slide_ms`; each
    /// timestamp is in `size_ms / slide_ms` of them.
    pub fn hopping(size_ms: i64, slide_ms: i64) -> Self {
        Self { size_ms, slide_ms }
    }

    /// Checks `size_ms > 0`, `0 < slide_ms <= size_ms` and
    /// `size_ms % slide_ms == 0`; the error says which rule is broken.
    pub fn validate(&self) -> Result<(), String> {
        if self.size_ms <= 0 {
            return Err(format!("window size_ms must be > 0, got {}", self.size_ms));
        }
        if self.slide_ms <= 0 || self.slide_ms > self.size_ms {
            return Err(format!(
                "window slide_ms must satisfy 0 < slide_ms <= size_ms, got slide_ms {} with size_ms {}",
                self.slide_ms, self.size_ms
            ));
        }
        if self.size_ms % self.slide_ms != 0 {
            return Err(format!(
                "window size_ms ({}) must be a multiple of slide_ms ({})",
                self.size_ms, self.slide_ms
            ));
        }
        Ok(())
    }

    /// Start times of every window containing `ts`, ascending: the multiples
    /// `s` of `slide_ms` with `s <= ts < s + size_ms`. `ts` may be any `i64`
    /// (negative timestamps use Euclidean division). Does not allocate.
    ///
    /// For a valid spec this yields exactly `size_ms / slide_ms` starts,
    /// except near `i64::MIN`, where starts below `i64::MIN` are left out.
    /// A spec with `size_ms <= 0` or `slide_ms <= 0` yields nothing; other
    /// invalid specs still follow the definition above.
    pub fn windows_of(&self, ts: i64) -> impl Iterator<Item = i64> {
        let (first, count, slide) = self.start_range(ts);
        (0..count).map(move |i| {
            // In range by construction: first <= start <= ts.
            (first + i128::from(i) * slide) as i64
        })
    }

    /// End (exclusive) of the window starting at `start`: `start + size_ms`,
    /// saturating at `i64::MAX`.
    pub fn end_of(&self, start: i64) -> i64 {
        start.saturating_add(self.size_ms)
    }

    /// First start, number of starts and slide of the windows containing
    /// `ts`, computed in `i128` so that no `i64` input overflows.
    fn start_range(&self, ts: i64) -> (i128, u64, i128) {
        if self.size_ms <= 0 || self.slide_ms <= 0 {
            return (0, 0, 1);
        }
        let (ts, size, slide) = (i128::from(ts), i128::from(self.size_ms), i128::from(self.slide_ms));
        // Largest multiple of slide <= ts.
        let last = ts - ts.rem_euclid(slide);
        // Smallest multiple of slide > ts - size, and >= i64::MIN.
        let after = ts - size;
        let mut first = after - after.rem_euclid(slide) + slide;
        let min = i128::from(i64::MIN);
        if first < min {
            first = min - min.rem_euclid(slide);
            if first < min {
                first += slide;
            }
        }
        let count = if last >= first { u64::try_from((last - first) / slide + 1).unwrap_or(0) } else { 0 };
        (first, count, slide)
    }
}

/// Count, sum, min and max of the values in one window.
///
/// [`WindowAgg::new`] is the empty aggregate, which is also the identity of
/// [`WindowAgg::merge`]: `count == 0`, `sum == 0`, `min == +inf`,
/// `max == -inf`.
///
/// `Serialize` and `Deserialize` save and restore the four fields exactly in
/// a binary codec (such as `postcard`); JSON cannot read back the `±inf` of
/// an empty aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAgg {
    /// Number of values added.
    pub count: u64,
    /// Sum of the values added.
    pub sum: f64,
    /// Smallest value added (`+inf` while empty).
    pub min: f64,
    /// Largest value added (`-inf` while empty).
    pub max: f64,
}

impl WindowAgg {
    /// The empty aggregate.
    pub const fn new() -> Self {
        Self { count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }

    /// Adds one value. Non-finite values (`NaN`, `±inf`) are ignored, as in
    /// [`ChannelStats::update`](crate::ChannelStats::update), so one bad
    /// reading cannot poison the window's sum.
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// `sum / count`; `NaN` for the empty aggregate.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }

    /// Folds `other` into `self`, as if every value added to `other` had
    /// been added to `self`.
    pub fn merge(&mut self, other: &WindowAgg) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

impl Default for WindowAgg {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn starts(spec: WindowSpec, ts: i64) -> Vec<i64> {
        spec.windows_of(ts).collect()
    }

    /// Every multiple `s` of slide with `s <= ts < s + size`, by scanning a
    /// generous range of candidates one slide at a time.
    fn brute_force(spec: WindowSpec, ts: i64) -> Vec<i64> {
        let (ts, size, slide) = (i128::from(ts), i128::from(spec.size_ms), i128::from(spec.slide_ms));
        let mut s = (ts - size).div_euclid(slide) * slide - 2 * slide;
        let mut out = Vec::new();
        while s <= ts + 2 * slide {
            if s <= ts && ts < s + size && s >= i128::from(i64::MIN) {
                out.push(s as i64);
            }
            s += slide;
        }
        out
    }

    #[test]
    fn constructors() {
        assert_eq!(WindowSpec::tumbling(10), WindowSpec { size_ms: 10, slide_ms: 10 });
        assert_eq!(WindowSpec::hopping(10, 5), WindowSpec { size_ms: 10, slide_ms: 5 });
    }

    #[test]
    fn validate_messages() {
        assert_eq!(WindowSpec::tumbling(60_000).validate(), Ok(()));
        assert_eq!(WindowSpec::hopping(60_000, 15_000).validate(), Ok(()));
        let err = |s: WindowSpec| s.validate().err().unwrap_or_default();
        assert!(err(WindowSpec::tumbling(0)).contains("size_ms must be > 0"));
        assert!(err(WindowSpec::hopping(-5, 1)).contains("size_ms must be > 0"));
        assert!(err(WindowSpec::hopping(10, 0)).contains("0 < slide_ms <= size_ms"));
        assert!(err(WindowSpec::hopping(10, -1)).contains("0 < slide_ms <= size_ms"));
        assert!(err(WindowSpec::hopping(10, 20)).contains("0 < slide_ms <= size_ms"));
        assert!(err(WindowSpec::hopping(10, 3)).contains("must be a multiple of slide_ms"));
    }

    #[test]
    fn tumbling_examples() {
        let spec = WindowSpec::tumbling(10);
        assert_eq!(starts(spec, 0), [0]);
        assert_eq!(starts(spec, 9), [0]);
        assert_eq!(starts(spec, 10), [10]);
        assert_eq!(starts(spec, 15), [10]);
        assert_eq!(starts(spec, -1), [-10]);
        assert_eq!(starts(spec, -10), [-10]);
        assert_eq!(starts(spec, -11), [-20]);
    }

    #[test]
    fn hopping_examples() {
        let spec = WindowSpec::hopping(10, 5);
        assert_eq!(starts(spec, 12), [5, 10]);
        assert_eq!(starts(spec, 10), [5, 10]);
        assert_eq!(starts(spec, 9), [0, 5]);
        assert_eq!(starts(spec, -3), [-10, -5]);
        let spec = WindowSpec::hopping(60_000, 15_000);
        let ts = 1_700_000_000_123;
        assert_eq!(starts(spec, ts), [1_699_999_950_000, 1_699_999_965_000, 1_699_999_980_000, 1_699_999_995_000]);
    }

    #[test]
    fn end_of_adds_size_and_saturates() {
        let spec = WindowSpec::hopping(10, 5);
        assert_eq!(spec.end_of(5), 15);
        assert_eq!(spec.end_of(-10), 0);
        assert_eq!(spec.end_of(i64::MAX - 3), i64::MAX);
    }

    #[test]
    fn extreme_timestamps() {
        let spec = WindowSpec::hopping(10, 5);
        // Starts below i64::MIN do not exist.
        // i64::MIN is 2 (mod 5): its windows would start at MIN - 2 and
        // MIN - 7, so it is in none; MIN + 3 is in the one starting there.
        assert_eq!(starts(spec, i64::MIN), Vec::<i64>::new());
        assert_eq!(starts(spec, i64::MIN + 3), [i64::MIN + 3]);
        assert_eq!(starts(spec, i64::MIN + 8), [i64::MIN + 3, i64::MIN + 8]);
        let hi = starts(spec, i64::MAX);
        assert_eq!(hi, brute_force(spec, i64::MAX));
        assert_eq!(hi.len(), 2);
        let huge = WindowSpec::tumbling(i64::MAX);
        // i64::MIN lies in [-2 * MAX, -MAX), whose start is not an i64.
        assert_eq!(starts(huge, i64::MIN), Vec::<i64>::new());
        assert_eq!(starts(huge, i64::MAX), [i64::MAX]);
        assert_eq!(starts(huge, -1), [-i64::MAX]);
    }

    #[test]
    fn invalid_specs_do_not_panic() {
        assert_eq!(starts(WindowSpec::tumbling(0), 5), Vec::<i64>::new());
        assert_eq!(starts(WindowSpec::hopping(10, 0), 5), Vec::<i64>::new());
        assert_eq!(starts(WindowSpec::hopping(-10, 5), 5), Vec::<i64>::new());
        // slide > size leaves gaps: 0 or 1 window.
        let gappy = WindowSpec::hopping(3, 10);
        assert_eq!(starts(gappy, 12), [10]);
        assert_eq!(starts(gappy, 15), Vec::<i64>::new());
    }

    #[test]
    fn agg_empty_and_basic() {
        let a = WindowAgg::new();
        assert_eq!(a, WindowAgg::default());
        assert_eq!(a.count, 0);
        assert_eq!(a.sum, 0.0);
        assert!(a.mean().is_nan());
        let mut a = WindowAgg::new();
        for v in [3.0, -1.0, 4.0, 1.5] {
            a.add(v);
        }
        assert_eq!(a.count, 4);
        assert_eq!(a.sum, 7.5);
        assert_eq!(a.min, -1.0);
        assert_eq!(a.max, 4.0);
        assert_eq!(a.mean(), 1.875);
    }

    #[test]
    fn agg_ignores_non_finite() {
        let mut a = WindowAgg::new();
        a.add(1.0);
        a.add(f64::NAN);
        a.add(f64::INFINITY);
        a.add(f64::NEG_INFINITY);
        assert_eq!(a.count, 1);
        assert_eq!(a.sum, 1.0);
        assert_eq!((a.min, a.max), (1.0, 1.0));
    }

    #[test]
    fn agg_merge_identity() {
        let mut a = WindowAgg::new();
        a.add(2.0);
        a.add(5.0);
        let before = a;
        a.merge(&WindowAgg::new());
        assert_eq!(a, before);
        let mut e = WindowAgg::new();
        e.merge(&before);
        assert_eq!(e, before);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
    }

    fn arb_spec() -> impl Strategy<Value = WindowSpec> {
        (1i64..200, 1i64..12).prop_map(|(slide, k)| WindowSpec::hopping(slide * k, slide))
    }

    fn arb_ts() -> impl Strategy<Value = i64> {
        prop_oneof![
            -10_000i64..10_000,
            1_600_000_000_000i64..1_800_000_000_000,
            any::<i64>(),
            i64::MIN..i64::MIN + 3_000,
            i64::MAX - 3_000..=i64::MAX,
        ]
    }

    proptest! {
        #[test]
        fn assignment_matches_brute_force(spec in arb_spec(), ts in arb_ts()) {
            prop_assert_eq!(spec.validate(), Ok(()));
            let got = starts(spec, ts);
            prop_assert_eq!(&got, &brute_force(spec, ts));
            for &s in &got {
                prop_assert_eq!(s.rem_euclid(spec.slide_ms), 0);
                prop_assert!(s <= ts && i128::from(ts) < i128::from(s) + i128::from(spec.size_ms));
            }
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            // Away from i64::MIN every ts is in exactly size / slide windows.
            if ts > i64::MIN + 4_000 {
                prop_assert_eq!(got.len() as i64, spec.size_ms / spec.slide_ms);
            }
        }

        #[test]
        fn assignment_matches_definition_for_any_positive_spec(
            size in 1i64..300,
            slide in 1i64..300,
            ts in arb_ts(),
        ) {
            let spec = WindowSpec::hopping(size, slide);
            prop_assert_eq!(starts(spec, ts), brute_force(spec, ts));
        }

        #[test]
        fn agg_matches_two_pass(values in proptest::collection::vec(0.0f64..=5000.0, 0..500)) {
            let mut a = WindowAgg::new();
            for &v in &values {
                a.add(v);
            }
            prop_assert_eq!(a.count, values.len() as u64);
            if values.is_empty() {
                prop_assert!(a.mean().is_nan());
                prop_assert_eq!(a, WindowAgg::new());
            } else {
                let sum: f64 = values.iter().sum();
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mean = sum / values.len() as f64;
                prop_assert!(close(a.sum, sum));
                prop_assert!(close(a.mean(), mean));
                prop_assert_eq!(a.min, min);
                prop_assert_eq!(a.max, max);
            }
        }

        #[test]
        fn merge_equals_sequential(
            values in proptest::collection::vec(-5000.0f64..=5000.0, 0..300),
            split in 0usize..300,
        ) {
            let split = split.min(values.len());
            let (mut left, mut right, mut all) = (WindowAgg::new(), WindowAgg::new(), WindowAgg::new());
            for &v in &values[..split] {
                left.add(v);
            }
            for &v in &values[split..] {
                right.add(v);
            }
            for &v in &values {
                all.add(v);
            }
            left.merge(&right);
            prop_assert_eq!(left.count, all.count);
            prop_assert_eq!(left.min, all.min);
            prop_assert_eq!(left.max, all.max);
            let scale: f64 = values.iter().map(|v| v.abs()).sum();
            prop_assert!((left.sum - all.sum).abs() <= 1e-9 * scale.max(1.0));
        }
    }
}
