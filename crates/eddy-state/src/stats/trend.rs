//! [`Trend`]: the rolling least-squares trend over event-time buckets (see
//! the [module docs](super) for its definition).

use smallvec::SmallVec;

use super::moments::{hours_between, Bucket, Moments};
use super::StatsConfig;

/// A bucket that holds a single value: its `ts` (which is also the bucket's
/// origin) and the value. Most buckets of a sensor that reads every few
/// minutes hold one value, so they are stored in 16 bytes rather than as a
/// full [`Bucket`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Point {
    pub(super) ts: i64,
    v: f64,
}

/// Rolling least-squares trend over event-time buckets.
///
/// Only the buckets inside the span that hold values are stored (at most
/// `trend_buckets`, usually far fewer: a sensor reading every 5 minutes fills
/// 12 one-minute buckets of an hour), so a key's state is proportional to its
/// values in the span rather than to the span's resolution. A bucket with one
/// value is a [`Point`]; it becomes a [`Bucket`] when a second value arrives.
/// The slope merges the buckets in the order of their ring slot
/// (`index mod trend_buckets`), the order the first version (a dense ring of
/// every slot) merged them in, so the floating-point result is the same, bit
/// for bit.
#[derive(Clone, Debug)]
pub(super) struct Trend {
    /// Bucket width in ms, at least 1.
    width_ms: i64,
    /// Largest bucket index seen.
    head: Option<i64>,
    /// Number of buckets in the span (`trend_buckets`).
    span: usize,
    /// Buckets with one value inside the span (and perhaps a few that have
    /// just left it), in index order. The first [`INLINE_POINTS`] are kept in
    /// the struct: reading them costs no second cache miss per update.
    pub(super) points: SmallVec<[Point; INLINE_POINTS]>,
    /// Buckets with two or more values, likewise; no index is in both.
    pub(super) buckets: Vec<Bucket>,
}

/// Points kept inline in a [`Trend`]: an hour of a sensor that reads about
/// every five minutes (12 or 13 one-minute buckets of the default span),
/// with room to spare. 15 makes a [`ChannelStats`](super::ChannelStats) 448 bytes, which is one
/// of jemalloc's size classes (the 12 needed make it 400, which takes 448 all
/// the same).
const INLINE_POINTS: usize = 15;

/// How much to grow a sequence of `len` elements and room for `capacity`
/// before adding one more: nothing while there is room, else by at most what
/// a span of `span` buckets can still hold, so that storage stays bounded.
fn bounded_growth(len: usize, capacity: usize, span: usize) -> usize {
    if len < capacity {
        return 0;
    }
    let room = span.saturating_sub(len).max(1);
    len.max(4).min(room)
}

impl Trend {
    pub(super) fn new(cfg: &StatsConfig) -> Self {
        Self {
            width_ms: cfg.bucket_width_ms(),
            head: None,
            span: cfg.trend_buckets,
            points: SmallVec::new(),
            buckets: Vec::new(),
        }
    }

    /// Number of buckets in the span, as `i64` (at least 1 when called).
    fn span(&self) -> i64 {
        i64::try_from(self.span).unwrap_or(i64::MAX)
    }

    /// Oldest bucket index inside the span ending at `head`.
    fn oldest(&self, head: i64) -> i64 {
        head.saturating_sub(self.span() - 1)
    }

    fn index_of(&self, p: &Point) -> i64 {
        p.ts.div_euclid(self.width_ms)
    }

    /// The first ms of bucket `index`: `ts.div_euclid(width) < index` if and
    /// only if `ts < start(index)`. The points are kept in `ts` order, so
    /// searches among them compare times with it instead of dividing each
    /// (a 64-bit division is tens of cycles, and a search does several).
    fn start(&self, index: i64) -> i128 {
        i128::from(index) * i128::from(self.width_ms)
    }

    /// Drops the buckets older than `oldest`: they can never count again
    /// (the head never moves back).
    fn evict(&mut self, oldest: i64) {
        let start = self.start(oldest);
        let gone = self.points.partition_point(|p| i128::from(p.ts) < start);
        self.points.drain(..gone);
        let gone = self.buckets.partition_point(|b| b.index < oldest);
        self.buckets.drain(..gone);
    }

    pub(super) fn push(&mut self, ts: i64, v: f64) {
        if self.span == 0 {
            return;
        }
        let b = ts.div_euclid(self.width_ms);
        let head = match self.head {
            Some(h) if h >= b => h,
            _ => {
                self.head = Some(b);
                b
            }
        };
        let oldest = self.oldest(head);
        if b < oldest {
            return;
        }
        // The newest bucket is the usual target.
        let found = match self.buckets.last() {
            Some(last) if last.index == b => Ok(self.buckets.len() - 1),
            Some(last) if last.index < b => Err(self.buckets.len()),
            _ => self.buckets.binary_search_by_key(&b, |x| x.index),
        };
        if let Ok(i) = found {
            return self.buckets[i].push(ts, v);
        }
        // The point in bucket `b`, or where it would go: the points hold one
        // bucket each, in order.
        let (start, end) = (self.start(b), self.start(b) + i128::from(self.width_ms));
        let at = match self.points.last() {
            Some(last) if i128::from(last.ts) < start => Err(self.points.len()),
            _ => {
                let i = self.points.partition_point(|p| i128::from(p.ts) < start);
                match self.points.get(i) {
                    Some(p) if i128::from(p.ts) < end => Ok(i),
                    _ => Err(i),
                }
            }
        };
        match at {
            Ok(i) => {
                // A second value: the point becomes a full bucket, built as
                // the first value and then this one.
                let p = self.points.remove(i);
                let mut full = Bucket::first(b, p.ts, p.v);
                full.push(ts, v);
                self.evict(oldest);
                let i = self.buckets.partition_point(|x| x.index < b);
                self.buckets.reserve_exact(bounded_growth(self.buckets.len(), self.buckets.capacity(), self.span));
                self.buckets.insert(i, full);
            }
            Err(_) => {
                self.evict(oldest);
                let i = self.points.partition_point(|p| i128::from(p.ts) < start);
                self.points.reserve_exact(bounded_growth(self.points.len(), self.points.capacity(), self.span));
                self.points.insert(i, Point { ts, v });
            }
        }
    }

    /// Calls `f` with the stored buckets whose index is in `lo..=hi`, in
    /// index order (points as one-value buckets).
    fn for_each_in(&self, lo: i64, hi: i64, f: &mut impl FnMut(&Bucket)) {
        let mut points = self.points.iter().filter(|p| (lo..=hi).contains(&self.index_of(p))).peekable();
        let mut buckets = self.buckets.iter().filter(|b| (lo..=hi).contains(&b.index)).peekable();
        loop {
            let take_point = match (points.peek(), buckets.peek()) {
                (Some(p), Some(b)) => self.index_of(p) < b.index,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            if take_point {
                let p = points.next().copied().expect("peeked");
                f(&Bucket::first(self.index_of(&p), p.ts, p.v));
            } else {
                f(buckets.next().expect("peeked"));
            }
        }
    }

    /// Slope in value units per hour, or `None` (see [`StatsSnapshot`](super::StatsSnapshot)).
    pub(super) fn slope_per_hour(&self) -> Option<f64> {
        let head = self.head?;
        let oldest = self.oldest(head);
        let span = self.span();
        // Ring-slot order: from the live index whose slot is 0 (the largest
        // multiple of the span at or below the head, if it is inside the
        // span) up to the head, then from the oldest live index up to it.
        let wrap = head.saturating_sub(head.rem_euclid(span)).max(oldest);
        let mut acc: Option<(i64, Moments)> = None;
        let mut merge = |b: &Bucket| match &mut acc {
            // Common origin: the first live bucket's own origin, a retained ts.
            None => {
                let m = Moments { n: b.n as f64, mean_t: b.mean_t, mean_v: b.mean_v, m2_t: b.m2_t, c_tv: b.c_tv };
                acc = Some((b.origin_ms, m));
            }
            Some((origin, m)) => m.merge(&Moments {
                n: b.n as f64,
                mean_t: b.mean_t + hours_between(*origin, b.origin_ms),
                mean_v: b.mean_v,
                m2_t: b.m2_t,
                c_tv: b.c_tv,
            }),
        };
        self.for_each_in(wrap, head, &mut merge);
        if wrap > oldest {
            self.for_each_in(oldest, wrap - 1, &mut merge);
        }
        let (_, acc) = acc?;
        (acc.n >= 2.0 && acc.m2_t > 0.0).then(|| acc.c_tv / acc.m2_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::{cfg, close, run, HOUR, T0};
    use crate::stats::ChannelStats;
    use proptest::prelude::*;

    #[test]
    fn exact_linear_trend() {
        let c = StatsConfig::default();
        // v = 10 + 3 * hours, one value every 30 s over 50 minutes, shuffled.
        let mut ev: Vec<(i64, f64)> = (0..100)
            .map(|i| {
                let ts = T0 + i * 30_000;
                (ts, 10.0 + 3.0 * (i * 30_000) as f64 / 3_600_000.0)
            })
            .collect();
        ev.swap(3, 70);
        ev.swap(10, 50);
        let snap = run(&c, &ev).snapshot();
        let slope = snap.trend_per_hour.unwrap_or(f64::NAN);
        assert!((slope - 3.0).abs() < 1e-9, "{slope}");
    }

    #[test]
    fn late_value_counts_but_not_in_trend() {
        let c = cfg(0.1, 5, HOUR, 60);
        let mut ev = vec![(T0 + 2 * HOUR, 0.0), (T0 + 2 * HOUR + 60_000, 1.0)];
        let base = run(&c, &ev).snapshot();
        // Two points one minute apart, rising by 1: 60 per hour.
        assert!(close(base.trend_per_hour.unwrap_or(f64::NAN), 60.0));
        // A value two hours late is outside the span when it arrives.
        ev.push((T0, 1_000.0));
        let snap = run(&c, &ev).snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.max, 1_000.0);
        assert_eq!(snap.trend_per_hour, base.trend_per_hour);
    }

    #[test]
    fn value_in_oldest_bucket_is_kept() {
        let c = cfg(0.1, 5, 60_000, 60); // 1 s buckets, 60 s span.
        let head_ts = T0 + 100_000;
        // Bucket head - 59 is the oldest live one; head - 60 is out.
        let ev = [(head_ts, 0.0), (head_ts - 59_000, 5.0), (head_ts - 60_000, 1_000.0)];
        let snap = run(&c, &ev).snapshot();
        let expected = (0.0 - 5.0) / (59_000.0 / 3_600_000.0);
        assert!(close(snap.trend_per_hour.unwrap_or(f64::NAN), expected));
    }

    #[test]
    fn head_advance_evicts_old_buckets() {
        let c = cfg(0.1, 5, HOUR, 60);
        let mut ev: Vec<(i64, f64)> = (0..10).map(|i| (T0 + i * 60_000, i as f64)).collect();
        assert!(run(&c, &ev).snapshot().trend_per_hour.is_some());
        // Jump far ahead: every earlier bucket is evicted, one value left.
        ev.push((T0 + 10 * HOUR, 3.0));
        let s = run(&c, &ev);
        assert_eq!(s.snapshot().trend_per_hour, None);
        // A second value one minute later gives a two-point slope.
        let mut s = s;
        s.update(&c, T0 + 10 * HOUR + 60_000, 4.0);
        assert!(close(s.snapshot().trend_per_hour.unwrap_or(f64::NAN), 60.0));
    }

    #[test]
    fn same_timestamp_has_no_trend() {
        let c = StatsConfig::default();
        let snap = run(&c, &[(T0, 1.0), (T0, 2.0), (T0, 9.0)]).snapshot();
        assert_eq!(snap.trend_per_hour, None);
        assert!(snap.stddev.is_some());
    }

    #[test]
    fn zero_buckets_means_no_trend() {
        let c = cfg(0.1, 5, HOUR, 0);
        let snap = run(&c, &[(T0, 1.0), (T0 + 1_000, 2.0)]).snapshot();
        assert_eq!(snap.trend_per_hour, None);
        assert_eq!(snap.count, 2);
    }

    #[test]
    fn negative_and_extreme_timestamps_do_not_panic() {
        let c = cfg(0.1, 2, HOUR, 4);
        let s =
            run(&c, &[(-1, 1.0), (-HOUR - 1, 2.0), (i64::MAX, 3.0), (i64::MIN, 4.0), (i64::MAX - 1, 5.0), (0, 6.0)]);
        let snap = s.snapshot();
        assert_eq!(snap.count, 6);
        assert_eq!(snap.ts, 0);
        // Only the two values near i64::MAX are in the span; 1 ms apart.
        let slope = snap.trend_per_hour.unwrap_or(f64::NAN);
        assert!(close(slope, -2.0 * 3_600_000.0), "{slope}");

        // Buckets of i64::MAX / 2 ms: the two live buckets' origins are
        // ~4.6e18 ms apart, which must not overflow.
        let huge = cfg(0.1, 2, i64::MAX, 2);
        let w = i64::MAX / 2;
        let s = run(&huge, &[(i64::MIN, 1.0), (i64::MAX, 2.0), (w + 1, 3.0)]);
        assert!(s.snapshot().trend_per_hour.is_some_and(f64::is_finite));
    }

    #[test]
    fn pre_epoch_buckets_use_euclidean_division() {
        // 1 s buckets, 2 s span: -1 ms is in bucket -1, -1001 ms in bucket -2.
        let c = cfg(0.1, 2, 2_000, 2);
        let snap = run(&c, &[(1, 0.0), (-1_001, 1.0), (-1, 5.0)]).snapshot();
        // Head is bucket 0, so bucket -2 was late: only (1, 0) and (-1, 5).
        let expected = (0.0 - 5.0) / (2.0 / 3_600_000.0);
        assert!(close(snap.trend_per_hour.unwrap_or(f64::NAN), expected));
    }

    proptest! {
        /// `Trend::start` orders times exactly as their bucket indices do,
        /// at the ends of the range too.
        #[test]
        fn bucket_start_compares_like_the_division(
            ts in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -10_000i64..10_000],
            width in prop_oneof![1i64..100_000, Just(1), Just(i64::MAX)],
            index in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -10i64..10],
        ) {
            let t = Trend { width_ms: width, head: None, span: 1, points: SmallVec::new(), buckets: Vec::new() };
            prop_assert_eq!(i128::from(ts) < t.start(index), ts.div_euclid(width) < index);
            let own = ts.div_euclid(width);
            prop_assert!(t.start(own) <= i128::from(ts) && i128::from(ts) < t.start(own) + i128::from(width));
        }
    }

    #[test]
    fn a_five_minute_sensor_keeps_its_trend_inline() {
        assert_eq!(std::mem::size_of::<ChannelStats>(), 448);
        let c = StatsConfig::default();
        let mut s = ChannelStats::new(&c);
        // A day of readings 5 minutes apart, each up to 20 s early or late.
        for i in 0..288i64 {
            s.update(&c, T0 + i * 300_000 + (i * 7_919) % 40_000 - 20_000, 1.0);
            assert!((12..=13).contains(&s.trend.points.len()) || i < 12);
            assert!(!s.trend.points.spilled(), "reading {i}");
        }
        assert!(s.trend.buckets.is_empty());
    }

    #[test]
    fn single_value_buckets_are_points() {
        let c = StatsConfig::default();
        // One value a minute apart: one value per bucket.
        let mut s = run(&c, &[(T0, 1.0), (T0 + 60_000, 2.0), (T0 + 120_000, 3.0)]);
        assert_eq!((s.trend.points.len(), s.trend.buckets.len()), (3, 0));
        // A second value in the middle bucket makes it a full bucket.
        s.update(&c, T0 + 61_000, 5.0);
        assert_eq!((s.trend.points.len(), s.trend.buckets.len()), (2, 1));
        assert_eq!(s.trend.buckets[0].n, 2);
    }
}
