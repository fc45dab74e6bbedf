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

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

// The report of a `ChannelStats` is a plain record, defined in `eddy-core`
// with the other output records.
pub use eddy_core::records::StatsSnapshot;

/// Milliseconds in one hour, the time unit of the trend.
const MS_PER_HOUR: f64 = 3_600_000.0;

/// Configuration shared by every [`ChannelStats`] of an operator.
///
/// Fields missing from a serialized config take their [`Default`] values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsConfig {
    /// EWMA smoothing factor in `(0, 1]`: the weight of the newest value.
    /// Default `0.1`.
    pub alpha: f64,
    /// How many largest and smallest values feed
    /// [`StatsSnapshot::top_k_max_mean`] and
    /// [`StatsSnapshot::top_k_min_mean`]. Default `5`.
    pub top_k: usize,
    /// Event-time length of the rolling trend span, in ms. Default
    /// `3_600_000` (one hour).
    pub trend_span_ms: i64,
    /// Number of buckets the trend span is divided into. Default `60`.
    pub trend_buckets: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { alpha: 0.1, top_k: 5, trend_span_ms: 3_600_000, trend_buckets: 60 }
    }
}

impl StatsConfig {
    /// Checks the configuration: `alpha` finite and in `(0, 1]`,
    /// `top_k >= 1`, `trend_span_ms >= 1` and `trend_buckets >= 1`.
    ///
    /// [`ChannelStats`] never panics on an invalid configuration, but its
    /// results are then degenerate: `top_k == 0` gives `NaN` top-k means,
    /// `trend_buckets == 0` gives no trend, a non-positive span gives 1 ms
    /// buckets, and an `alpha` outside `(0, 1]` gives a meaningless EWMA.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("stats alpha must be in (0, 1], got {}", self.alpha));
        }
        if self.top_k == 0 {
            return Err("stats top_k must be at least 1, got 0".to_string());
        }
        if self.trend_span_ms < 1 {
            return Err(format!("stats trend_span_ms must be at least 1, got {}", self.trend_span_ms));
        }
        if self.trend_buckets == 0 {
            return Err("stats trend_buckets must be at least 1, got 0".to_string());
        }
        Ok(())
    }

    /// Width of one trend bucket in ms: `trend_span_ms / trend_buckets`, at
    /// least 1 (also when `trend_buckets == 0`).
    fn bucket_width_ms(&self) -> i64 {
        let buckets = i64::try_from(self.trend_buckets).unwrap_or(i64::MAX);
        if buckets == 0 {
            1
        } else {
            (self.trend_span_ms / buckets).max(1)
        }
    }
}

/// Running statistics for one (device, channel) key.
///
/// Create one with [`ChannelStats::new`] when a key is first seen, feed it
/// with [`ChannelStats::update`], and read it with
/// [`ChannelStats::snapshot`]. See the [module docs](self) for the exact
/// definitions.
#[derive(Clone, Debug)]
pub struct ChannelStats {
    /// Number of (finite) values applied.
    count: u64,
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
    top: TopK,
    /// Rolling least-squares trend.
    trend: Trend,
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
            trend: Trend::new(cfg),
        }
    }

    /// Applies one value observed at event time `ts` (epoch ms). Values are
    /// applied in arrival order, which is NOT time order.
    ///
    /// `cfg` must be the configuration this key was created with; only its
    /// `alpha` is read here (sizes and bucket width were fixed by
    /// [`ChannelStats::new`]). Non-finite values are ignored. Allocates only
    /// while the trend's buckets grow towards their bound.
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
        self.trend.push(ts, value);
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

/// Readings a [`DeviceStats`] keeps as plain values before it builds a
/// [`ChannelStats`] for each channel.
pub const YOUNG_VALUES: usize = 4;

/// The statistics of every channel of one device, in one allocation.
///
/// Each channel (a key `K`, stored with its statistics) has a *slot*, at a
/// fixed index from when the key is first seen (indices never change, so an
/// owner may refer to a slot by its index). A slot is either *young* or
/// *full*:
///
/// * The channels of a device report together, at one `ts` per reading, so
///   the young slots share one *timeline* of the device's latest
///   [`YOUNG_VALUES`] readings (the first `ts`, then each other one as its
///   difference from the first in `i32` milliseconds, about ±24 days). A
///   young slot keeps, for each reading of the timeline, whether it gave the
///   channel a value (a bit mask) and the value: 40 bytes a slot, and 24
///   bytes of timeline a device, so the five standard channels take 224
///   bytes in one allocation (jemalloc's 224-byte class; one allocation of
///   five 64-byte slots, each with its own timestamps, took 320).
/// * A reading that would need a fifth timeline entry, or whose `ts` is too
///   far from the first, first makes every young slot that holds values
///   *full*: a boxed [`ChannelStats`] built by applying the slot's values in
///   their order. The timeline then starts again, for the channels that are
///   still young (new ones). A slot that gets two values in one reading is
///   made full on the spot.
///
/// A snapshot of a young slot applies its values to a fresh
/// [`ChannelStats`] in the same way, so every statistic is the one
/// [`ChannelStats`] computes, bit for bit (tested): the same operations on
/// the same values in the same order. With a million devices, every device
/// of a short run, and every device when it first appears, is young; a
/// channel with more values costs what [`ChannelStats`] costs.
///
/// Non-finite values are kept in a young slot like any other (they take a
/// timeline entry) and ignored when the values are applied, as
/// [`ChannelStats::update`] ignores them; they count for
/// [`DeviceStats::last_ts`], which is the time of the latest value *given*
/// to a slot, whatever it was.
///
/// # Example
///
/// ```
/// use eddy_state::{DeviceStats, StatsConfig};
///
/// let cfg = StatsConfig::default();
/// let mut device: DeviceStats<&str> = DeviceStats::new();
/// device.update(&cfg, 1_000, [("pm25", 4.0), ("co2", 410.0)].into_iter(), |_, _| {});
/// device.update(&cfg, 2_000, [("co2", 420.0)].into_iter(), |_, _| {});
/// assert_eq!(device.key(1), Some("co2"));
/// assert_eq!(device.snapshot(1, &cfg).map(|s| s.mean), Some(415.0));
/// assert_eq!(device.last_ts(0), Some(1_000));
/// ```
#[derive(Debug)]
pub struct DeviceStats<K> {
    repr: DeviceRepr<K>,
}

/// A device's timeline and slots: one allocation of both for up to eight
/// slots (the timeline as a header before the slots, behind a fat pointer,
/// so the owner's map entry is as small as with a `Box<[Slot]>`); the
/// slots of a device with more channels in a second allocation.
#[derive(Debug)]
enum DeviceRepr<K> {
    Inline(Box<Block<[Slot<K>]>>),
    Spilled(Box<Block<Box<[Slot<K>]>>>),
}

/// The timeline and the slots (`S`: `[Slot; N]` when built, then `[Slot]`).
#[derive(Debug)]
struct Block<S: ?Sized> {
    timeline: Timeline,
    slots: S,
}

/// The times of a device's young readings, in arrival order: entry `i` at
/// `ts0 + dts[i - 1]` (at `ts0` for `i == 0`), for `i < len`.
#[derive(Clone, Copy, Debug)]
struct Timeline {
    ts0: i64,
    dts: [i32; YOUNG_VALUES - 1],
    len: u8,
}

impl Timeline {
    const EMPTY: Timeline = Timeline { ts0: 0, dts: [0; YOUNG_VALUES - 1], len: 0 };

    /// The time of entry `i` (`i < len`).
    fn ts(&self, i: usize) -> i64 {
        match i.checked_sub(1) {
            None => self.ts0,
            Some(j) => self.ts0 + i64::from(self.dts[j]),
        }
    }

    /// Appends an entry at `ts` and returns its index; `None` when the
    /// timeline is full or `ts` is too far from the first entry.
    fn push(&mut self, ts: i64) -> Option<usize> {
        let n = usize::from(self.len);
        if n == 0 {
            *self = Timeline { ts0: ts, len: 1, ..Timeline::EMPTY };
            return Some(0);
        }
        if n == YOUNG_VALUES {
            return None;
        }
        // `ts - ts0` in range, without overflow.
        self.dts[n - 1] = i32::try_from(i128::from(ts) - i128::from(self.ts0)).ok()?;
        self.len += 1;
        Some(n)
    }
}

/// One channel's statistics, with its key.
#[derive(Debug)]
enum Slot<K> {
    /// `values[i]` is the value of timeline entry `i`, for each bit `i` set
    /// in `mask` (the entries are in arrival order, so the highest bit is
    /// the latest value).
    Young { key: K, mask: u8, values: [f64; YOUNG_VALUES] },
    /// Every value applied to a [`ChannelStats`]; `last_ts` is the time of
    /// the latest value given, finite or not.
    Full { key: K, last_ts: i64, stats: Box<ChannelStats> },
}

impl<K: Copy> Slot<K> {
    fn young(key: K) -> Self {
        Slot::Young { key, mask: 0, values: [0.0; YOUNG_VALUES] }
    }

    fn key(&self) -> K {
        match self {
            Slot::Young { key, .. } | Slot::Full { key, .. } => *key,
        }
    }

    fn is_young(&self) -> bool {
        matches!(self, Slot::Young { .. })
    }

    /// True for a young slot that holds values (on `timeline`).
    fn holds_young_values(&self) -> bool {
        matches!(self, Slot::Young { mask, .. } if *mask != 0)
    }

    /// The time of the latest value given to the slot, if any.
    fn last_ts(&self, timeline: &Timeline) -> Option<i64> {
        match self {
            Slot::Young { mask, .. } => {
                let latest = u8::BITS.checked_sub(1 + mask.leading_zeros())?;
                Some(timeline.ts(latest as usize))
            }
            Slot::Full { last_ts, .. } => Some(*last_ts),
        }
    }

    /// A young slot's times and values, in arrival order.
    fn young_values<'a>(
        mask: u8,
        values: &'a [f64; YOUNG_VALUES],
        timeline: &'a Timeline,
    ) -> impl Iterator<Item = (i64, f64)> + 'a {
        (0..YOUNG_VALUES).filter(move |i| mask & (1 << i) != 0).map(move |i| (timeline.ts(i), values[i]))
    }

    /// Makes a young slot full, applying its values in order. (A young slot
    /// without values gets empty statistics and `last_ts == i64::MIN`,
    /// which its caller then sets.)
    fn promote(&mut self, cfg: &StatsConfig, timeline: &Timeline) {
        if let Slot::Young { key, mask, values } = *self {
            let last_ts = self.last_ts(timeline).unwrap_or(i64::MIN);
            let stats = Box::new(replay(cfg, Self::young_values(mask, &values, timeline)));
            *self = Slot::Full { key, last_ts, stats };
        }
    }

    fn snapshot(&self, cfg: &StatsConfig, timeline: &Timeline) -> StatsSnapshot {
        match self {
            Slot::Young { mask, values, .. } => replay(cfg, Self::young_values(*mask, values, timeline)).snapshot(),
            Slot::Full { stats, .. } => stats.snapshot(),
        }
    }
}

impl<K> DeviceRepr<K> {
    /// `slots` with `timeline`, in one allocation if there are at most eight
    /// of them (enough for the five standard channels and a few more; each
    /// count up to that is a separate small code path).
    fn from_parts(timeline: Timeline, slots: Vec<Slot<K>>) -> Self {
        // A `Block<[Slot]>` can only be made (without `unsafe`) from a
        // `Block<[Slot; N]>` with `N` known at compile time: one arm per `N`.
        macro_rules! inline {
            ($($n:literal)*) => {
                match slots.len() {
                    $($n => match <[Slot<K>; $n]>::try_from(slots) {
                        Ok(slots) => return DeviceRepr::Inline(Box::new(Block { timeline, slots })),
                        Err(slots) => slots,
                    },)*
                    _ => slots,
                }
            };
        }
        let slots = inline!(0 1 2 3 4 5 6 7 8);
        DeviceRepr::Spilled(Box::new(Block { timeline, slots: slots.into_boxed_slice() }))
    }
}

impl<K: Copy + PartialEq> Default for DeviceStats<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + PartialEq> DeviceStats<K> {
    /// A device without channels (its timeline alone: one 24-byte
    /// allocation, replaced when the first values come).
    pub fn new() -> Self {
        Self { repr: DeviceRepr::from_parts(Timeline::EMPTY, Vec::new()) }
    }

    fn parts(&self) -> (&Timeline, &[Slot<K>]) {
        match &self.repr {
            DeviceRepr::Inline(b) => (&b.timeline, &b.slots),
            DeviceRepr::Spilled(b) => (&b.timeline, &b.slots),
        }
    }

    fn parts_mut(&mut self) -> (&mut Timeline, &mut [Slot<K>]) {
        match &mut self.repr {
            DeviceRepr::Inline(b) => (&mut b.timeline, &mut b.slots),
            DeviceRepr::Spilled(b) => (&mut b.timeline, &mut b.slots),
        }
    }

    /// Number of channels (slots).
    pub fn len(&self) -> usize {
        self.parts().1.len()
    }

    /// True before the first value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of slot `i`.
    pub fn key(&self, i: usize) -> Option<K> {
        self.parts().1.get(i).map(Slot::key)
    }

    /// The keys, by slot index.
    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.parts().1.iter().map(Slot::key)
    }

    /// The time of the latest value given to slot `i` (finite or not: see
    /// the [type docs](DeviceStats)); `None` for a slot without values or
    /// no such slot.
    pub fn last_ts(&self, i: usize) -> Option<i64> {
        let (timeline, slots) = self.parts();
        slots.get(i)?.last_ts(timeline)
    }

    /// [`ChannelStats::snapshot`] of slot `i`; `cfg` must be the one given
    /// to every [`DeviceStats::update`].
    pub fn snapshot(&self, i: usize, cfg: &StatsConfig) -> Option<StatsSnapshot> {
        let (timeline, slots) = self.parts();
        Some(slots.get(i)?.snapshot(cfg, timeline))
    }

    /// Bytes allocated for the timeline and slots (not counting the full
    /// slots' [`ChannelStats`]).
    pub fn allocated_bytes(&self) -> usize {
        match &self.repr {
            DeviceRepr::Inline(b) => std::mem::size_of_val::<Block<[Slot<K>]>>(b),
            DeviceRepr::Spilled(b) => {
                std::mem::size_of_val::<Block<Box<[Slot<K>]>>>(b) + std::mem::size_of_val::<[Slot<K>]>(&b.slots)
            }
        }
    }

    /// Applies one reading: each `(key, value)` of `values`, in order, at
    /// event time `ts`, as [`ChannelStats::update`] does to that key's
    /// statistics. A key seen for the first time gets the next slot index.
    /// Calls `each(i, last)` for each value, after applying it, with the
    /// index `i` of its slot and the time of the latest value given to that
    /// slot before it (`None` for the first).
    ///
    /// `cfg` must be the same at every call. Allocates when the reading
    /// brings new keys and when slots become full (see the
    /// [type docs](DeviceStats)), then as [`ChannelStats::update`] does.
    pub fn update<I>(&mut self, cfg: &StatsConfig, ts: i64, values: I, mut each: impl FnMut(usize, Option<i64>))
    where
        I: Iterator<Item = (K, f64)> + Clone,
    {
        // One pass over the reading tells whether it brings new keys and
        // whether it gives a young slot a value (so a usual reading is
        // scanned twice in all, with the loop below).
        let (_, slots) = self.parts();
        let (mut missing, mut gives_young) = (false, false);
        for (k, _) in values.clone() {
            match slots.iter().find(|s| s.key() == k) {
                None => missing = true,
                Some(s) => gives_young |= s.is_young(),
            }
        }
        if missing {
            self.add_keys(values.clone());
            gives_young = true;
        }
        let (timeline, slots) = self.parts_mut();
        let slot_of = |slots: &[Slot<K>], k: K| slots.iter().position(|s| s.key() == k);
        // The reading's timeline entry, if it gives a young slot a value.
        let mut entry = None;
        if gives_young {
            if !slots.iter().any(Slot::holds_young_values) {
                *timeline = Timeline::EMPTY;
            }
            entry = timeline.push(ts);
            if entry.is_none() {
                for s in slots.iter_mut().filter(|s| s.holds_young_values()) {
                    s.promote(cfg, timeline);
                }
                // Only new keys are still young.
                *timeline = Timeline::EMPTY;
                if values.clone().any(|(k, _)| slot_of(slots, k).is_some_and(|i| slots[i].is_young())) {
                    entry = timeline.push(ts);
                }
            }
        }
        for (k, v) in values {
            // Every key has a slot (added above).
            let Some(i) = slot_of(slots, k) else { continue };
            let slot = &mut slots[i];
            let last = slot.last_ts(timeline);
            match (&mut *slot, entry) {
                (Slot::Young { mask, values, .. }, Some(e)) if *mask & (1 << e) == 0 => {
                    values[e] = v;
                    *mask |= 1 << e;
                }
                _ => {
                    // A full slot, or a young one given a second value in
                    // this reading.
                    if slot.is_young() {
                        slot.promote(cfg, timeline);
                    }
                    if let Slot::Full { last_ts, stats, .. } = slot {
                        stats.update(cfg, ts, v);
                        *last_ts = ts;
                    }
                }
            }
            each(i, last);
        }
    }

    /// Reads a word of the cache lines that the next [`DeviceStats::update`]
    /// reads first: the slots, and for each full slot its statistics, its
    /// top-k heaps and its trend's first, middle and newest points. The result means
    /// nothing; it exists so that the reads happen. A caller with many
    /// devices to update touches several before updating them, so that their
    /// cache misses overlap instead of coming one after another.
    pub fn touch(&self) -> u64 {
        let (_, slots) = self.parts();
        let mut sum = 0u64;
        for slot in slots {
            if let Slot::Full { stats, .. } = slot {
                sum = sum.wrapping_add(stats.count);
                sum = sum.wrapping_add(stats.top.slots.first().map_or(0, |v| v.to_bits()));
                // The points the eviction's binary search and the insertion read.
                let points = &stats.trend.points;
                for i in [0, points.len() / 2, points.len().saturating_sub(1)] {
                    sum = sum.wrapping_add(points.get(i).map_or(0, |p| p.ts as u64));
                }
            }
        }
        sum
    }

    /// Adds a young slot for each key of `values` that has none, in one
    /// reallocation.
    fn add_keys(&mut self, values: impl Iterator<Item = (K, f64)> + Clone) {
        let (timeline, slots) = self.parts_mut();
        let missing = values.clone().filter(|(k, _)| !slots.iter().any(|s| s.key() == *k)).count();
        if missing == 0 {
            return;
        }
        let timeline = *timeline;
        let mut all = Vec::with_capacity(slots.len() + missing);
        for s in slots.iter_mut() {
            let key = s.key();
            all.push(std::mem::replace(s, Slot::young(key)));
        }
        for (k, _) in values {
            if !all.iter().any(|s| s.key() == k) {
                all.push(Slot::young(k));
            }
        }
        self.repr = DeviceRepr::from_parts(timeline, all);
    }
}

/// A [`ChannelStats`] for `cfg` with `values` applied in order.
fn replay(cfg: &StatsConfig, values: impl Iterator<Item = (i64, f64)>) -> ChannelStats {
    let mut s = ChannelStats::new(cfg);
    for (ts, v) in values {
        s.update(cfg, ts, v);
    }
    s
}

/// Inline room for the two top-k heaps: both of the default `k = 5` fit
/// without an allocation.
const TOP_INLINE: usize = 10;

/// The `k` largest and `k` smallest values seen, as two binary heaps laid
/// out in one buffer of `2k` slots (inline for `k <= 5`): `[largest |
/// smallest]`. Each heap holds `min(count, k)` values, since both take every
/// value until full.
///
/// The heaps are kept exactly as `std::collections::BinaryHeap` keeps them
/// (same sift-up on push, same sift-down after replacing the top), so their
/// slots, and therefore the order in which the means sum them, are the same
/// bit for bit as with the two `BinaryHeap`s this replaced (tested).
#[derive(Clone, Debug)]
struct TopK {
    slots: SmallVec<[f64; TOP_INLINE]>,
}

/// Heap order of the `largest` heap: a min-heap, so its top is the smallest
/// of the `k` largest (`BinaryHeap<Reverse<_>>` under `total_cmp`).
fn largest_order(a: f64, b: f64) -> Ordering {
    b.total_cmp(&a)
}

/// Heap order of the `smallest` heap: a max-heap under `total_cmp`.
fn smallest_order(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}

/// `BinaryHeap::push`'s sift-up of the element at `pos` (the heap's top is
/// the greatest element under `order`).
fn sift_up(data: &mut [f64], mut pos: usize, order: fn(f64, f64) -> Ordering) {
    let elem = data[pos];
    while pos > 0 {
        let parent = (pos - 1) / 2;
        if order(elem, data[parent]) != Ordering::Greater {
            break;
        }
        data[pos] = data[parent];
        pos = parent;
    }
    data[pos] = elem;
}

/// `BinaryHeap`'s `sift_down_range(0, data.len())`, run when a `PeekMut`
/// that replaced the top is dropped.
fn sift_down(data: &mut [f64], order: fn(f64, f64) -> Ordering) {
    let end = data.len();
    let elem = data[0];
    let mut pos = 0;
    let mut child = 1;
    while child <= end.saturating_sub(2) {
        if order(data[child], data[child + 1]) != Ordering::Greater {
            child += 1;
        }
        if order(elem, data[child]) != Ordering::Less {
            data[pos] = elem;
            return;
        }
        data[pos] = data[child];
        pos = child;
        child = 2 * pos + 1;
    }
    if end.checked_sub(1) == Some(child) && order(elem, data[child]) == Ordering::Less {
        data[pos] = data[child];
        pos = child;
    }
    data[pos] = elem;
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { slots: SmallVec::from_elem(0.0, 2 * k) }
    }

    fn k(&self) -> usize {
        self.slots.len() / 2
    }

    /// Adds `v` to both heaps, which hold `seen` values each (capped at `k`).
    fn push(&mut self, v: f64, seen: u64) {
        let k = self.k();
        if k == 0 {
            return;
        }
        let (largest, smallest) = self.slots.split_at_mut(k);
        let len = usize::try_from(seen).map_or(k, |n| n.min(k));
        if len < k {
            largest[len] = v;
            sift_up(&mut largest[..=len], len, largest_order);
            smallest[len] = v;
            sift_up(&mut smallest[..=len], len, smallest_order);
            return;
        }
        if v > largest[0] {
            largest[0] = v;
            sift_down(largest, largest_order);
        }
        if v < smallest[0] {
            smallest[0] = v;
            sift_down(smallest, smallest_order);
        }
    }

    /// The used slots of both heaps, for `count` values seen.
    fn heaps(&self, count: u64) -> (&[f64], &[f64]) {
        let k = self.k();
        let len = usize::try_from(count).map_or(k, |n| n.min(k));
        (&self.slots[..len], &self.slots[k..k + len])
    }

    fn largest_mean(&self, count: u64) -> f64 {
        let largest = self.heaps(count).0;
        let sum: f64 = largest.iter().sum();
        sum / largest.len() as f64
    }

    fn smallest_mean(&self, count: u64) -> f64 {
        let smallest = self.heaps(count).1;
        let sum: f64 = smallest.iter().sum();
        sum / smallest.len() as f64
    }
}

/// One time bucket of the trend: Welford moments of `(t, v)` with `t` in
/// hours since `origin_ms`, the first ts that entered the bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Bucket index (`ts.div_euclid(width)`) this slot currently holds.
    index: i64,
    /// Origin of `t` for this bucket, epoch ms.
    origin_ms: i64,
    n: u64,
    mean_t: f64,
    mean_v: f64,
    m2_t: f64,
    c_tv: f64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket { index: 0, origin_ms: 0, n: 0, mean_t: 0.0, mean_v: 0.0, m2_t: 0.0, c_tv: 0.0 };

    fn reset(&mut self, index: i64, origin_ms: i64) {
        *self = Bucket { index, origin_ms, ..Bucket::EMPTY };
    }

    /// A bucket holding one value, as a reset then a push make it.
    fn first(index: i64, ts: i64, v: f64) -> Bucket {
        let mut b = Bucket::EMPTY;
        b.reset(index, ts);
        b.push(ts, v);
        b
    }

    fn push(&mut self, ts: i64, v: f64) {
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
fn hours_between(from_ms: i64, to_ms: i64) -> f64 {
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
struct Moments {
    n: f64,
    mean_t: f64,
    mean_v: f64,
    m2_t: f64,
    c_tv: f64,
}

impl Moments {
    /// Merges `other` into `self` (Chan, Golub and LeVeque's pairwise
    /// update, extended to the co-moment).
    fn merge(&mut self, other: &Moments) {
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

/// A bucket that holds a single value: its `ts` (which is also the bucket's
/// origin) and the value. Most buckets of a sensor that reads every few
/// minutes hold one value, so they are stored in 16 bytes rather than as a
/// full [`Bucket`].
#[derive(Clone, Copy, Debug)]
struct Point {
    ts: i64,
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
struct Trend {
    /// Bucket width in ms, at least 1.
    width_ms: i64,
    /// Largest bucket index seen.
    head: Option<i64>,
    /// Number of buckets in the span (`trend_buckets`).
    span: usize,
    /// Buckets with one value inside the span (and perhaps a few that have
    /// just left it), in index order. The first [`INLINE_POINTS`] are kept in
    /// the struct: reading them costs no second cache miss per update.
    points: SmallVec<[Point; INLINE_POINTS]>,
    /// Buckets with two or more values, likewise; no index is in both.
    buckets: Vec<Bucket>,
}

/// Points kept inline in a [`Trend`]: an hour of a sensor that reads about
/// every five minutes (12 or 13 one-minute buckets of the default span),
/// with room to spare. 15 makes a [`ChannelStats`] 448 bytes, which is one
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
    fn new(cfg: &StatsConfig) -> Self {
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

    fn push(&mut self, ts: i64, v: f64) {
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

    /// Slope in value units per hour, or `None` (see [`StatsSnapshot`]).
    fn slope_per_hour(&self) -> Option<f64> {
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
    use proptest::prelude::*;

    /// `|a - b| <= 1e-9 * max(1, |a|, |b|)`, with `NaN == NaN`.
    fn close(a: f64, b: f64) -> bool {
        if a.is_nan() || b.is_nan() {
            return a.is_nan() && b.is_nan();
        }
        (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
    }

    fn cfg(alpha: f64, top_k: usize, span: i64, buckets: usize) -> StatsConfig {
        StatsConfig { alpha, top_k, trend_span_ms: span, trend_buckets: buckets }
    }

    fn run(cfg: &StatsConfig, events: &[(i64, f64)]) -> ChannelStats {
        let mut s = ChannelStats::new(cfg);
        for &(ts, v) in events {
            s.update(cfg, ts, v);
        }
        s
    }

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn default_config() {
        let c = StatsConfig::default();
        assert_eq!(c.alpha, 0.1);
        assert_eq!(c.top_k, 5);
        assert_eq!(c.trend_span_ms, 3_600_000);
        assert_eq!(c.trend_buckets, 60);
        assert_eq!(c.bucket_width_ms(), 60_000);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = StatsConfig::default();
        for bad in [
            StatsConfig { alpha: 0.0, ..ok.clone() },
            StatsConfig { alpha: 1.5, ..ok.clone() },
            StatsConfig { alpha: f64::NAN, ..ok.clone() },
            StatsConfig { top_k: 0, ..ok.clone() },
            StatsConfig { trend_span_ms: 0, ..ok.clone() },
            StatsConfig { trend_buckets: 0, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(StatsConfig { alpha: 1.0, ..ok }.validate().is_ok());
    }

    #[test]
    fn bucket_width_is_at_least_one() {
        assert_eq!(cfg(0.1, 1, 10, 60).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, -5, 3).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, 100, 0).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, 100, 7).bucket_width_ms(), 14);
    }

    #[test]
    fn config_serde_fills_defaults() -> Result<(), serde_json::Error> {
        let c: StatsConfig = serde_json::from_str("{}")?;
        assert_eq!(c, StatsConfig::default());
        let c: StatsConfig = serde_json::from_str(r#"{"alpha": 0.25, "top_k": 3}"#)?;
        assert_eq!(c.alpha, 0.25);
        assert_eq!(c.top_k, 3);
        assert_eq!(c.trend_buckets, 60);
        Ok(())
    }

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
        let c = cfg(0.5, 5, HOUR, 60);
        // Arrival order 10, 20, 0 although ts are reversed.
        let snap = run(&c, &[(T0 + 2, 10.0), (T0 + 1, 20.0), (T0, 0.0)]).snapshot();
        // 10 -> 0.5*20 + 0.5*10 = 15 -> 0.5*0 + 0.5*15 = 7.5
        assert_eq!(snap.ewma, 7.5);
        // ts is the last applied, not the largest.
        assert_eq!(snap.ts, T0);
    }

    #[test]
    fn top_k_means() {
        let c = cfg(0.1, 3, HOUR, 60);
        let s = run(&c, &[(T0, 5.0), (T0, 1.0)]);
        // Fewer than k: mean of all.
        assert_eq!(s.snapshot().top_k_max_mean, 3.0);
        assert_eq!(s.snapshot().top_k_min_mean, 3.0);
        let vals = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 8.0];
        let ev: Vec<_> = vals.iter().map(|&v| (T0, v)).collect();
        let snap = run(&c, &ev).snapshot();
        assert!(close(snap.top_k_max_mean, (9.0 + 8.0 + 8.0) / 3.0));
        assert!(close(snap.top_k_min_mean, (1.0 + 2.0 + 3.0) / 3.0));
    }

    #[test]
    fn top_k_zero_is_nan_not_panic() {
        let c = cfg(0.1, 0, HOUR, 60);
        let snap = run(&c, &[(T0, 1.0), (T0, 2.0)]).snapshot();
        assert!(snap.top_k_max_mean.is_nan() && snap.top_k_min_mean.is_nan());
        assert_eq!(snap.count, 2);
    }

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

    #[test]
    fn updates_never_grow_storage() {
        let c = cfg(0.1, 4, 60_000, 6);
        let mut s = ChannelStats::new(&c);
        assert!(!s.top.slots.spilled(), "k = 4 keeps the heaps inline");
        let trend_len = |s: &ChannelStats| s.trend.points.len() + s.trend.buckets.len();
        for i in 0..10_000i64 {
            s.update(&c, T0 + (i * 7_919) % 500_000, (i % 97) as f64);
            let p = &s.trend.points;
            assert!(!p.spilled() || p.capacity() <= 8, "trend storage is bounded by trend_buckets");
            assert!(s.trend.buckets.capacity() <= 8, "trend storage is bounded by trend_buckets");
            assert!(trend_len(&s) <= 6);
        }
        assert!(!s.top.slots.spilled());
        assert_eq!(s.top.slots.len(), 8);
        assert_eq!(s.top.heaps(s.count()).0.len(), 4);
        assert!(trend_len(&s) <= 6);
        // Moving on in time keeps storage at the buckets in the span.
        for i in 0..1_000i64 {
            s.update(&c, T0 + 10_000_000 + i * 60_000, 1.0);
        }
        assert!(trend_len(&s) <= 6);
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

    /// The two heaps as `std::collections::BinaryHeap` keeps them, fed the
    /// same way the first version of `TopK` fed them.
    fn std_heaps(k: usize, values: &[f64]) -> (Vec<f64>, Vec<f64>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        #[derive(Clone, Copy, PartialEq)]
        struct Total(f64);
        impl Eq for Total {}
        impl PartialOrd for Total {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Total {
            fn cmp(&self, other: &Self) -> Ordering {
                self.0.total_cmp(&other.0)
            }
        }
        let mut largest: BinaryHeap<Reverse<Total>> = BinaryHeap::with_capacity(k);
        let mut smallest: BinaryHeap<Total> = BinaryHeap::with_capacity(k);
        for &v in values {
            if largest.len() < k {
                largest.push(Reverse(Total(v)));
            } else if let Some(mut top) = largest.peek_mut() {
                if v > top.0 .0 {
                    *top = Reverse(Total(v));
                }
            }
            if smallest.len() < k {
                smallest.push(Total(v));
            } else if let Some(mut top) = smallest.peek_mut() {
                if v < top.0 {
                    *top = Total(v);
                }
            }
        }
        (
            largest.into_vec().into_iter().map(|r| r.0 .0).collect(),
            smallest.into_vec().into_iter().map(|t| t.0).collect(),
        )
    }

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

    proptest! {
        #[test]
        fn top_k_slots_match_std_binary_heap(
            k in 1usize..12,
            values in proptest::collection::vec(prop_oneof![-3.0f64..3.0, Just(0.0), Just(-0.0), Just(1.0)], 0..200),
        ) {
            let c = cfg(0.1, k, HOUR, 60);
            let s = run(&c, &values.iter().map(|&v| (T0, v)).collect::<Vec<_>>());
            let (largest, smallest) = s.top.heaps(s.count());
            let (std_largest, std_smallest) = std_heaps(k, &values);
            let bits = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(largest), bits(&std_largest));
            prop_assert_eq!(bits(smallest), bits(&std_smallest));
        }
    }

    /// Every field of a snapshot, floats as bits.
    fn snapshot_bits(s: &StatsSnapshot) -> (u64, [u64; 7], Option<u64>, Option<u64>, i64) {
        (
            s.count,
            [s.mean, s.min, s.max, s.ewma, s.top_k_max_mean, s.top_k_min_mean, 0.0].map(f64::to_bits),
            s.stddev.map(f64::to_bits),
            s.trend_per_hour.map(f64::to_bits),
            s.ts,
        )
    }

    /// The five standard channels of a young device fit jemalloc's 224-byte
    /// class in one allocation (five slots of 64 bytes, each with its own
    /// timestamps, took the 320-byte class), and the owner's map keeps a
    /// 16-byte fat pointer, as it did for a `Box<[Slot]>`.
    #[test]
    fn a_young_device_of_five_channels_takes_224_bytes() {
        assert_eq!(std::mem::size_of::<Timeline>(), 24);
        assert_eq!(std::mem::size_of::<Block<[Slot<u16>; 0]>>(), 24);
        assert_eq!(std::mem::size_of::<Slot<u16>>(), 40);
        assert_eq!(std::mem::size_of::<DeviceStats<u16>>(), 16);
        let c = StatsConfig::default();
        let mut d = DeviceStats::<u16>::new();
        assert_eq!(d.allocated_bytes(), 24);
        for r in 0..YOUNG_VALUES as i64 {
            d.update(&c, T0 + r * 300_000, (0..5u16).map(|k| (k, f64::from(k))), |_, _| {});
            assert_eq!(d.allocated_bytes(), 24 + 5 * 40);
            assert!(d.parts().1.iter().all(Slot::is_young));
        }
        // A fifth reading: every slot is full, the allocation the same size.
        d.update(&c, T0 + 5 * 300_000, (0..5u16).map(|k| (k, 1.0)), |_, _| {});
        assert!(d.parts().1.iter().all(|s| !s.is_young()));
        assert_eq!(d.allocated_bytes(), 224);
    }

    #[test]
    fn device_stats_spill_past_eight_channels() {
        let c = StatsConfig::default();
        let mut d = DeviceStats::<u16>::new();
        d.update(&c, T0, (0..8u16).map(|k| (k, 1.0)), |_, _| {});
        assert!(matches!(d.repr, DeviceRepr::Inline(_)));
        assert_eq!(d.allocated_bytes(), 24 + 8 * 40);
        d.update(&c, T0 + 1, [(8u16, 2.0), (3, 3.0)].into_iter(), |_, _| {});
        assert!(matches!(d.repr, DeviceRepr::Spilled(_)));
        assert_eq!(d.allocated_bytes(), 40 + 9 * 40);
        assert_eq!(d.keys().collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        assert_eq!(d.snapshot(3, &c).map(|s| (s.count, s.mean)), Some((2, 2.0)));
        assert_eq!(d.snapshot(8, &c).map(|s| (s.count, s.ts)), Some((1, T0 + 1)));
        assert_eq!(d.snapshot(9, &c), None);
    }

    /// When the timeline cannot take a reading (a fifth one, or a `ts` more
    /// than ±24 days from the first), the young slots with values become
    /// full and the timeline starts again for the others.
    #[test]
    fn device_timeline_restarts_after_promotion() {
        let c = StatsConfig::default();
        for far in [T0 + i64::from(i32::MAX) + 1, T0 + i64::from(i32::MIN) - 1, i64::MIN, i64::MAX] {
            let mut d = DeviceStats::<u16>::new();
            d.update(&c, T0, [(0, 1.0)].into_iter(), |_, _| {});
            d.update(&c, T0 + i64::from(i32::MAX), [(0, 2.0)].into_iter(), |_, _| {});
            d.update(&c, T0 + i64::from(i32::MIN), [(0, 3.0)].into_iter(), |_, _| {});
            assert!(d.parts().1[0].is_young());
            let mut last = Vec::new();
            // Key 1 is new: young, on a timeline that starts at `far`.
            d.update(&c, far, [(0, 4.0), (1, 5.0)].into_iter(), |i, l| last.push((i, l)));
            assert_eq!(last, [(0, Some(T0 + i64::from(i32::MIN))), (1, None)]);
            assert!(!d.parts().1[0].is_young());
            assert!(d.parts().1[1].is_young());
            assert_eq!(d.parts().0.ts0, far);
            assert_eq!(d.last_ts(0), Some(far));
            assert_eq!(d.last_ts(1), Some(far));
            let mut full = ChannelStats::new(&c);
            for (ts, v) in [(T0, 1.0), (T0 + i64::from(i32::MAX), 2.0), (T0 + i64::from(i32::MIN), 3.0), (far, 4.0)] {
                full.update(&c, ts, v);
            }
            assert_eq!(d.snapshot(0, &c).as_ref().map(snapshot_bits), Some(snapshot_bits(&full.snapshot())));
        }
        // Full slots only: no timeline entries are taken, and a new channel
        // starts a fresh one.
        let mut d = DeviceStats::<u16>::new();
        for r in 0..=YOUNG_VALUES as i64 {
            d.update(&c, T0 + r, [(0, 1.0)].into_iter(), |_, _| {});
        }
        assert_eq!(d.parts().0.len, 0);
        d.update(&c, T0 + 10, [(0, 1.0)].into_iter(), |_, _| {});
        assert_eq!(d.parts().0.len, 0);
        d.update(&c, T0 + 20, [(0, 1.0), (1, 2.0)].into_iter(), |_, _| {});
        assert_eq!((d.parts().0.len, d.parts().0.ts0), (1, T0 + 20));
    }

    /// A value of a reading: mostly finite, sometimes not.
    fn arb_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            12 => 0.0f64..5000.0,
            1 => Just(-0.0),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ]
    }

    /// A device's readings: event times from a clock with small steps,
    /// disorder, jumps around the ±`i32` ms limit of a timeline, jumps of
    /// weeks and times anywhere; values of a random subset of the five
    /// standard channels (the others null), or of any of 12 channels with
    /// repeats.
    fn arb_readings() -> impl Strategy<Value = Vec<(i64, Vec<(u16, f64)>)>> {
        let limit = i64::from(i32::MAX);
        let time = prop_oneof![
            8 => (0i64..600_000).prop_map(|d| (false, d)),
            3 => (-7_200_000i64..0).prop_map(|d| (false, d)),
            1 => prop_oneof![limit - 2..limit + 3, -limit - 3..-limit + 2].prop_map(|d| (false, d)),
            1 => (-40 * 24 * HOUR..40 * 24 * HOUR).prop_map(|d| (false, d)),
            1 => any::<i64>().prop_map(|t| (true, t)),
        ];
        let standard = (0u32..32, proptest::array::uniform5(arb_value()))
            .prop_map(|(mask, v)| (0..5u16).filter(|k| mask & (1 << k) != 0).map(|k| (k, v[usize::from(k)])).collect());
        let any_keys = proptest::collection::vec((0u16..12, arb_value()), 0..10);
        let values = prop_oneof![6 => standard, 1 => any_keys];
        (1_600_000_000_000i64..1_800_000_000_000, proptest::collection::vec((time, values), 1..30)).prop_map(
            |(start, readings)| {
                let mut clock = start;
                readings
                    .into_iter()
                    .map(|((absolute, t), values)| {
                        let ts = if absolute {
                            t
                        } else if t >= 0 {
                            clock = clock.saturating_add(t);
                            clock
                        } else {
                            clock.saturating_add(t)
                        };
                        (ts, values)
                    })
                    .collect()
            },
        )
    }

    proptest! {
        /// Every slot of a [`DeviceStats`] reports, after every reading, what
        /// one [`ChannelStats`] per key fed the same values reports, bit for
        /// bit; slots keep their first-seen order, and `update` reports each
        /// slot's previous value time.
        #[test]
        fn device_stats_match_channel_stats_bit_for_bit(cfg in arb_cfg(), readings in arb_readings()) {
            let mut device = DeviceStats::<u16>::new();
            // Per key, in first-seen order: its statistics and the time of
            // the latest value given.
            let mut model: Vec<(u16, ChannelStats, Option<i64>)> = Vec::new();
            for (ts, values) in &readings {
                let mut got = Vec::new();
                device.update(&cfg, *ts, values.iter().copied(), |i, last| got.push((i, last)));
                let mut want = Vec::new();
                for &(k, v) in values {
                    let i = match model.iter().position(|m| m.0 == k) {
                        Some(i) => i,
                        None => {
                            model.push((k, ChannelStats::new(&cfg), None));
                            model.len() - 1
                        }
                    };
                    let m = &mut model[i];
                    want.push((i, m.2));
                    m.1.update(&cfg, *ts, v);
                    m.2 = Some(*ts);
                }
                prop_assert_eq!(got, want);
                prop_assert_eq!(device.len(), model.len());
                for (i, (k, stats, last)) in model.iter().enumerate() {
                    prop_assert_eq!(device.key(i), Some(*k));
                    prop_assert_eq!(device.last_ts(i), *last);
                    let snap = device.snapshot(i, &cfg).map(|s| snapshot_bits(&s));
                    prop_assert_eq!(snap, Some(snapshot_bits(&stats.snapshot())), "key {} after ts {}", k, ts);
                }
            }
        }
    }

    // ---- Reference model and property tests --------------------------------

    /// Two-pass reference over the retained values.
    struct Reference {
        values: Vec<f64>,
        /// `(ts, v, bucket)` of values that were in the span on arrival.
        trend: Vec<(i64, f64, i64)>,
        head: Option<i64>,
        ewma: f64,
        last_ts: i64,
    }

    impl Reference {
        fn run(cfg: &StatsConfig, events: &[(i64, f64)]) -> Self {
            let w = cfg.bucket_width_ms();
            let span = cfg.trend_buckets as i64;
            let mut r =
                Reference { values: Vec::new(), trend: Vec::new(), head: None, ewma: f64::NAN, last_ts: i64::MIN };
            for &(ts, v) in events {
                r.ewma = if r.values.is_empty() { v } else { cfg.alpha * v + (1.0 - cfg.alpha) * r.ewma };
                r.values.push(v);
                r.last_ts = ts;
                let b = ts.div_euclid(w);
                let head = r.head.map_or(b, |h| h.max(b));
                r.head = Some(head);
                // In the span iff b >= head - span + 1.
                if span > 0 && b > head - span {
                    r.trend.push((ts, v, b));
                }
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

        /// Retained trend points at the end, as `(hours, value)` relative
        /// to the smallest retained ts.
        fn trend_points(&self, cfg: &StatsConfig) -> Vec<(f64, f64)> {
            let Some(head) = self.head else {
                return Vec::new();
            };
            let oldest = head - cfg.trend_buckets as i64 + 1;
            let live: Vec<_> = self.trend.iter().filter(|p| p.2 >= oldest).collect();
            let t0 = live.iter().map(|p| p.0).min().unwrap_or(0);
            live.iter().map(|p| ((p.0 - t0) as f64 / 3_600_000.0, p.1)).collect()
        }

        /// Two-pass least-squares slope, with the tolerance scale
        /// `value range / time range` (see `assert_matches`).
        fn slope(&self, cfg: &StatsConfig) -> Option<(f64, f64)> {
            let pts = self.trend_points(cfg);
            let n = pts.len() as f64;
            let (tmin, tmax) =
                pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
            if pts.len() < 2 || tmin == tmax {
                return None;
            }
            let (vmin, vmax) =
                pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
            let mt = pts.iter().map(|p| p.0).sum::<f64>() / n;
            let mv = pts.iter().map(|p| p.1).sum::<f64>() / n;
            let sxy: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
            let sxx: f64 = pts.iter().map(|p| (p.0 - mt) * (p.0 - mt)).sum();
            Some((sxy / sxx, (vmax - vmin) / (tmax - tmin)))
        }
    }

    /// Compares every statistic with the two-pass reference.
    ///
    /// Tolerances: `close` (1e-9 relative to `max(1, |a|, |b|)`) for mean,
    /// stddev, ewma and the top-k means; min, max, count and ts exactly.
    /// For the trend, `1e-9 * max(1, |slope|) + 1e-9 * vrange / trange`
    /// where `vrange / trange` is the retained value range over the retained
    /// time range in hours. The absolute term is needed because a slope
    /// near zero is ill-conditioned: rounding in the co-moment (ours *and*
    /// the reference's) is of order `eps * n * vrange * trange`, and dividing
    /// by `M2_t` (at least `trange^2 / 2`) leaves an error of order
    /// `eps * n * vrange / trange` that no relative bound on the slope can
    /// absorb when the true slope is tiny.
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

    fn arb_cfg() -> impl Strategy<Value = StatsConfig> {
        (
            0.01f64..=1.0,
            1usize..8,
            prop_oneof![Just(3_600_000i64), 1_000i64..20_000_000],
            prop_oneof![Just(60usize), 1usize..100],
        )
            .prop_map(|(alpha, top_k, span, buckets)| cfg(alpha, top_k, span, buckets))
    }

    /// Event times around 1.7e12 ms: a clock advancing by random steps
    /// (sometimes zero, sometimes hours, which evicts everything), each
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
