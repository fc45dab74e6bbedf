//! [`DeviceStats`]: the statistics of every channel of one device, with the
//! values of its young channels kept as plain values until they have a few.

use super::{ChannelStats, StatsConfig, StatsSnapshot};

mod saved;

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
/// # Serialization
///
/// `Serialize` (for `K: Serialize`) saves the timeline and every slot, in
/// slot order, as they are; `Deserialize` (for `K: Deserialize + Copy +
/// PartialEq`) restores them in the same representation, with the same slot
/// indices, and rejects input that no device could have saved. The
/// restored device behaves as the original under further updates with the
/// same [`StatsConfig`], bit for bit, and serializes to the same bytes. Use
/// a binary codec (such as `postcard`) that keeps `f64`s as bits: JSON
/// cannot read back non-finite values.
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
    /// top-k heaps. The result means
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::{arb_cfg, HOUR, T0};
    use proptest::prelude::*;

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
}
