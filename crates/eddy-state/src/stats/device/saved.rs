//! `Serialize` and `Deserialize` for [`DeviceStats`], through a plain
//! mirror of its timeline and slots (the representation itself, a block of
//! unsized slots behind a fat pointer, is not something serde can derive).
//!
//! The saved form is every field of the timeline and of each slot, in slot
//! order, floats as they are: restoring it rebuilds the same representation
//! (inline for up to eight slots, spilled past that, as
//! [`DeviceRepr::from_parts`] builds it for [`DeviceStats::update`]), so the
//! restored device behaves as the original under further updates, bit for
//! bit, and serializes to the same bytes.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DeviceRepr, DeviceStats, Slot, Timeline, YOUNG_VALUES};
use crate::stats::ChannelStats;

/// A device as saved: its timeline, and its slots in slot order (`S`: the
/// borrowed [`SlotsRef`] when saving, a `Vec` of [`SavedSlot`] when
/// restoring; both have the same format, a sequence of slots).
#[derive(Serialize, Deserialize)]
#[serde(rename = "DeviceStats")]
struct SavedDevice<S> {
    timeline: SavedTimeline,
    slots: S,
}

/// Every field of a [`Timeline`], entries past `len` included (they are
/// never read, but keeping them keeps the saved bytes the same).
#[derive(Serialize, Deserialize)]
#[serde(rename = "Timeline")]
struct SavedTimeline {
    ts0: i64,
    dts: [i32; YOUNG_VALUES - 1],
    len: u8,
}

/// A [`Slot`] as saved (`K` the key, `C` the full slot's statistics: both
/// borrowed when saving, owned when restoring).
#[derive(Serialize, Deserialize)]
#[serde(rename = "Slot")]
enum SavedSlot<K, C> {
    /// [`Slot::Young`], all of its values (those of unset mask bits too).
    Young { key: K, mask: u8, values: [f64; YOUNG_VALUES] },
    /// [`Slot::Full`].
    Full { key: K, last_ts: i64, stats: C },
}

/// The slots of a device, saved as a sequence of [`SavedSlot`] without
/// copying them.
struct SlotsRef<'a, K>(&'a [Slot<K>]);

impl<K: Serialize> Serialize for SlotsRef<'_, K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|slot| match slot {
            Slot::Young { key, mask, values } => SavedSlot::Young { key, mask: *mask, values: *values },
            Slot::Full { key, last_ts, stats } => SavedSlot::Full { key, last_ts: *last_ts, stats: &**stats },
        }))
    }
}

/// Saves the timeline and every slot, in slot order, exactly (see the
/// [type docs](DeviceStats)).
impl<K: Serialize> Serialize for DeviceStats<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (timeline, slots): (&Timeline, &[Slot<K>]) = match &self.repr {
            DeviceRepr::Inline(b) => (&b.timeline, &b.slots),
            DeviceRepr::Spilled(b) => (&b.timeline, &b.slots),
        };
        let Timeline { ts0, dts, len } = *timeline;
        SavedDevice { timeline: SavedTimeline { ts0, dts, len }, slots: SlotsRef(slots) }.serialize(serializer)
    }
}

/// Restores a device saved by its `Serialize`, in the same representation
/// and with the same slot indices. Input that no device could have saved is
/// an error, not a device that panics later: a timeline of more than
/// [`YOUNG_VALUES`] entries or with an entry time outside `i64`, a young
/// slot with values past the timeline's end, two slots with the same key.
impl<'de, K> Deserialize<'de> for DeviceStats<K>
where
    K: Deserialize<'de> + Copy + PartialEq,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let saved = SavedDevice::<Vec<SavedSlot<K, Box<ChannelStats>>>>::deserialize(deserializer)?;
        let SavedTimeline { ts0, dts, len } = saved.timeline;
        let n = usize::from(len);
        if n > YOUNG_VALUES {
            return Err(D::Error::custom(format_args!("device timeline has {n} entries, more than {YOUNG_VALUES}")));
        }
        // `Timeline::push` only takes entries whose time is an `i64`.
        if let Some(j) = (0..n.saturating_sub(1)).find(|&j| ts0.checked_add(i64::from(dts[j])).is_none()) {
            return Err(D::Error::custom(format_args!(
                "device timeline entry {} is out of range: {ts0} + {}",
                j + 1,
                dts[j]
            )));
        }
        let timeline = Timeline { ts0, dts, len };
        let mut slots: Vec<Slot<K>> = Vec::with_capacity(saved.slots.len());
        for (i, slot) in saved.slots.into_iter().enumerate() {
            let slot = match slot {
                SavedSlot::Young { key, mask, values } => {
                    if u32::from(mask) >> n != 0 {
                        return Err(D::Error::custom(format_args!(
                            "young slot {i} has values (mask {mask:#010b}) past the timeline's {n} entries"
                        )));
                    }
                    Slot::Young { key, mask, values }
                }
                SavedSlot::Full { key, last_ts, stats } => Slot::Full { key, last_ts, stats },
            };
            // Quadratic, as finding a key in `update` is linear.
            if let Some(j) = slots.iter().position(|s| s.key() == slot.key()) {
                return Err(D::Error::custom(format_args!("slots {j} and {i} have the same key")));
            }
            slots.push(slot);
        }
        Ok(Self { repr: DeviceRepr::from_parts(timeline, slots) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::T0;
    use crate::stats::StatsConfig;

    fn round_trip<K>(d: &DeviceStats<K>) -> DeviceStats<K>
    where
        K: Serialize + for<'de> Deserialize<'de> + Copy + PartialEq,
    {
        let bytes = postcard::to_stdvec(d).unwrap_or_default();
        match postcard::from_bytes(&bytes) {
            Ok(back) => back,
            Err(e) => panic!("{e}"),
        }
    }

    /// The restored device has the original's representation, inline or
    /// spilled, and its allocation size.
    #[test]
    fn restores_the_same_representation() {
        let c = StatsConfig::default();
        for channels in [0u32, 1, 5, 8, 9, 20] {
            let mut d = DeviceStats::<u32>::new();
            for r in 0..3 {
                d.update(&c, T0 + r, (0..channels).map(|k| (k, f64::from(k))), |_, _| {});
            }
            let back = round_trip(&d);
            assert_eq!(
                matches!(back.repr, DeviceRepr::Inline(_)),
                matches!(d.repr, DeviceRepr::Inline(_)),
                "{channels} channels"
            );
            assert_eq!(matches!(back.repr, DeviceRepr::Inline(_)), channels <= 8);
            assert_eq!(back.allocated_bytes(), d.allocated_bytes());
            assert_eq!(back.parts().0.len, d.parts().0.len);
        }
    }

    /// A device whose timeline holds stale entries (past `len`, or with no
    /// young values left) keeps them.
    #[test]
    fn keeps_every_timeline_field() {
        let c = StatsConfig::default();
        let mut d = DeviceStats::<u32>::new();
        d.update(&c, T0, [(0, 1.0)].into_iter(), |_, _| {});
        d.update(&c, T0 + 7, [(0, 2.0)].into_iter(), |_, _| {});
        // Two values in one reading: slot 0 is full, the timeline stays.
        d.update(&c, T0 + 9, [(0, 3.0), (0, 4.0)].into_iter(), |_, _| {});
        assert!(!d.parts().1[0].is_young());
        let back = round_trip(&d);
        let (a, b) = (d.parts().0, back.parts().0);
        assert_eq!((a.ts0, a.dts, a.len), (b.ts0, b.dts, b.len));
        assert_eq!((b.ts0, b.len), (T0, 3));
    }

    fn saved(timeline: (i64, [i32; 3], u8), slots: Vec<SavedSlot<u32, ChannelStats>>) -> Vec<u8> {
        let (ts0, dts, len) = timeline;
        postcard::to_stdvec(&SavedDevice { timeline: SavedTimeline { ts0, dts, len }, slots }).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<DeviceStats<u32>, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("{e:?}"))
    }

    /// Input no device could have saved is an error.
    #[test]
    fn rejects_impossible_devices() {
        let young = |key, mask| SavedSlot::Young { key, mask, values: [1.0; YOUNG_VALUES] };
        let full = |key| SavedSlot::Full { key, last_ts: T0, stats: ChannelStats::new(&StatsConfig::default()) };
        assert!(restore(&saved((T0, [1, 2, 0], 3), vec![young(0, 0b111), full(1)])).is_ok());
        assert!(restore(&saved((T0, [0; 3], 0), vec![young(0, 0)])).is_ok());
        for bad in [
            saved((T0, [0; 3], 5), vec![]),
            saved((T0, [0; 3], u8::MAX), vec![]),
            saved((T0, [1, 2, 0], 3), vec![young(0, 0b1000)]),
            saved((T0, [0; 3], 0), vec![young(0, 0b1)]),
            saved((T0, [0; 3], 4), vec![young(0, 0b1_0000)]),
            saved((i64::MAX, [1, 0, 0], 2), vec![young(0, 0b11)]),
            saved((i64::MIN, [0, -1, 0], 3), vec![]),
            saved((T0, [0; 3], 0), vec![full(3), young(3, 0)]),
            saved((T0, [0; 3], 0), vec![full(1), full(2), full(1)]),
        ] {
            assert!(restore(&bad).is_err(), "{bad:?}");
        }
        // Top-k heaps with an odd number of slots.
        let mut bytes = saved((T0, [0; 3], 0), vec![full(1)]);
        let k10 = postcard::to_stdvec(&[0.0f64; 10]).unwrap_or_default();
        let k9 = postcard::to_stdvec(&[0.0f64; 9][..]).unwrap_or_default();
        let at = bytes.windows(k10.len()).position(|w| w == k10.as_slice()).unwrap_or(bytes.len());
        assert!(at < bytes.len());
        bytes.splice(at..at + k10.len(), k9);
        assert!(restore(&bytes).is_err());
    }
}
