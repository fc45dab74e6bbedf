//! Event-time windows: a generic windowed aggregate, and the windows job.
//!
//! Values are added as they arrive; a window is emitted once, when the
//! frontier (the watermark) passes its end, or at the end of input. Late
//! readings never reach these operators, and a non-late reading always has
//! `ts` at or past the frontier, so no value arrives for a closed window.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;
use eddy_core::records::WindowRecord;
use eddy_state::window::{WindowAgg, WindowSpec};

use crate::batch::Batch;

/// One closed window of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct Windowed<K> {
    /// The key.
    pub key: K,
    /// Window start, epoch ms (inclusive).
    pub start: i64,
    /// Window end, epoch ms (exclusive).
    pub end: i64,
    /// count, sum, min and max of the values.
    pub agg: WindowAgg,
}

/// Aggregates values per (key, window). `extract` is called for each record
/// and pushes `(key, ts, value)` triples. The input must be partitioned so
/// that each key lives on one worker, and must hold no late data.
pub fn window_aggregate<'s, D, C, K>(
    stream: Stream<'s, u64, C>,
    spec: WindowSpec,
    name: &str,
    mut extract: impl FnMut(&D, &mut dyn FnMut(K, i64, f64)) + 'static,
) -> StreamVec<'s, u64, Windowed<K>>
where
    D: Clone + 'static,
    C: Batch<D>,
    K: Clone + Eq + Hash + 'static,
{
    stream.unary_frontier(Pipeline, name, move |cap, _info| {
        let mut held: Option<Capability<u64>> = Some(cap);
        // Open windows by start, each with the aggregates of its keys: a
        // window closes as a whole, so no per-key index of closing times.
        let mut open: BTreeMap<i64, HashMap<K, WindowAgg>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|_cap, data| {
                for d in data.records() {
                    extract(d, &mut |k: K, ts: i64, v: f64| {
                        for start in spec.windows_of(ts) {
                            open.entry(start).or_default().entry(k.clone()).or_default().add(v);
                        }
                    });
                }
            });
            let low = frontier.frontier().iter().copied().min();
            let Some(h) = held.as_mut() else { return };
            let upto = low.map_or(i64::MAX, |l| l as i64);
            // Each window goes out at its end, which is after the held time
            // (the window was still open), so a rerun stamps it the same
            // however far the frontier jumped.
            while let Some(entry) = open.first_entry() {
                let (start, end) = (*entry.key(), spec.end_of(*entry.key()));
                if end > upto {
                    break;
                }
                let aggs = entry.remove();
                if !aggs.is_empty() {
                    let t = (end.max(0) as u64).max(*h.time());
                    output.session(&h.delayed(&t)).give_iterator(aggs.into_iter().map(|(key, agg)| Windowed {
                        key,
                        start,
                        end,
                        agg,
                    }));
                }
            }
            if let Some(low) = low {
                if low > *h.time() {
                    h.downgrade(&low);
                }
            }
            if low.is_none() {
                held = None;
            }
        }
    })
}

/// Records sent per activation when windows close: a window of every
/// device closing at once leaves in chunks, each written by the sink before
/// the next is made, rather than all at once.
const CLOSE_CHUNK: usize = 65_536;

/// The aggregates of one device in one window, one per channel, in one
/// allocation of exactly the device's channels.
type DeviceAggs = Box<[ChannelAgg]>;

/// Counts a [`ChannelAgg`] holds: far more values than one key can get in
/// one window (at a million values a second, nine years' worth).
const MAX_COUNT: u64 = (1 << 48) - 1;

/// One channel's [`WindowAgg`], with the channel in what would be padding
/// and the count in 48 bits: 32 bytes instead of the 40 of a
/// `(Channel, WindowAgg)`, for every (device, channel) of an open window.
#[derive(Clone, Copy, Debug)]
struct ChannelAgg {
    channel: Channel,
    count_hi: u16,
    count_lo: u32,
    sum: f64,
    min: f64,
    max: f64,
}

impl ChannelAgg {
    fn new(channel: Channel) -> ChannelAgg {
        let mut a = ChannelAgg { channel, count_hi: 0, count_lo: 0, sum: 0.0, min: 0.0, max: 0.0 };
        a.set(&WindowAgg::new());
        a
    }

    fn get(&self) -> WindowAgg {
        let count = (u64::from(self.count_hi) << 32) | u64::from(self.count_lo);
        WindowAgg { count, sum: self.sum, min: self.min, max: self.max }
    }

    fn set(&mut self, agg: &WindowAgg) {
        assert!(agg.count <= MAX_COUNT, "more than 2^48 - 1 values of one key in one window");
        self.count_hi = (agg.count >> 32) as u16;
        self.count_lo = agg.count as u32;
        (self.sum, self.min, self.max) = (agg.sum, agg.min, agg.max);
    }

    /// [`WindowAgg::add`], by that very code.
    fn add(&mut self, v: f64) {
        let mut agg = self.get();
        agg.add(v);
        self.set(&agg);
    }
}

/// A window being sent, a chunk per activation.
struct Closing {
    start: i64,
    end: i64,
    /// The time its records go out at.
    time: u64,
    aggs: HashMap<DeviceId, DeviceAggs>,
    /// Devices still to send.
    devices: Vec<DeviceId>,
}

/// Adds an aggregate to `aggs` for each usable channel of `e` that has
/// none, in one reallocation.
fn add_channels(aggs: &mut DeviceAggs, e: &Enriched) {
    let missing = e.usable().filter(|(c, _)| !aggs.iter().any(|a| a.channel == *c)).count();
    if missing == 0 {
        return;
    }
    let mut v = std::mem::take(aggs).into_vec();
    v.reserve_exact(missing);
    for (c, _) in e.usable() {
        if !v.iter().any(|a| a.channel == c) {
            v.push(ChannelAgg::new(c));
        }
    }
    *aggs = v.into_boxed_slice();
}

/// The windows job: count, mean, min and max per (device, channel, window)
/// over the usable values. Its input must be partitioned by device and hold
/// only non-late readings.
///
/// It computes what [`window_aggregate`] computes with the key (device,
/// channel), with less memory per key: the open windows hold one map entry
/// per device (its channels' aggregates in one allocation) rather than one
/// per (device, channel), and a closing window is sent at most
/// `CLOSE_CHUNK` records per activation, its memory freed as it goes.
pub fn windows<'s, C: Batch<Enriched>>(
    enriched: Stream<'s, u64, C>,
    spec: WindowSpec,
    name: &str,
) -> StreamVec<'s, u64, WindowRecord> {
    let scope = enriched.scope();
    enriched.unary_frontier(Pipeline, name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut held: Option<Capability<u64>> = Some(cap);
        // Open windows by start, each with the aggregates of its devices.
        let mut open: BTreeMap<i64, HashMap<DeviceId, DeviceAggs>> = BTreeMap::new();
        let mut closing: Option<Closing> = None;
        move |(input, frontier), output| {
            input.for_each(|_cap, data| {
                for e in data.records() {
                    if e.usable().next().is_none() {
                        continue;
                    }
                    for start in spec.windows_of(e.ts) {
                        let aggs = open.entry(start).or_default().entry(e.device).or_default();
                        add_channels(aggs, e);
                        for (c, v) in e.usable() {
                            if let Some(a) = aggs.iter_mut().find(|a| a.channel == c) {
                                a.add(v);
                            }
                        }
                    }
                }
            });
            let low = frontier.frontier().iter().copied().min();
            let Some(h) = held.as_mut() else { return };
            let upto = low.map_or(i64::MAX, |l| l as i64);
            let mut budget = CLOSE_CHUNK;
            loop {
                if closing.is_none() {
                    let Some(entry) = open.first_entry() else { break };
                    let (start, end) = (*entry.key(), spec.end_of(*entry.key()));
                    if end > upto {
                        break;
                    }
                    let aggs = entry.remove();
                    let devices = aggs.keys().copied().collect();
                    // Each window goes out at its end, which is after the
                    // held time (the window was still open), so a rerun
                    // stamps it the same however far the frontier jumped.
                    let time = (end.max(0) as u64).max(*h.time());
                    closing = Some(Closing { start, end, time, aggs, devices });
                }
                let Some(c) = closing.as_mut() else { break };
                if budget == 0 {
                    break;
                }
                let cap = h.delayed(&c.time);
                let mut session = output.session(&cap);
                while budget > 0 {
                    let Some(d) = c.devices.pop() else { break };
                    let Some(aggs) = c.aggs.remove(&d) else { continue };
                    session.give_iterator(aggs.iter().map(|a| {
                        let agg = a.get();
                        WindowRecord {
                            device_id: d,
                            channel: a.channel,
                            window_start: c.start,
                            window_end: c.end,
                            count: agg.count,
                            mean: agg.mean(),
                            min: agg.min,
                            max: agg.max,
                        }
                    }));
                    budget = budget.saturating_sub(aggs.len());
                }
                if c.devices.is_empty() {
                    closing = None;
                }
            }
            // Hold the time of a window still being sent.
            let hold = match (low, closing.as_ref()) {
                (Some(l), Some(c)) => Some(l.min(c.time)),
                (Some(l), None) => Some(l),
                (None, Some(c)) => Some(c.time),
                (None, None) => None,
            };
            if closing.is_some() {
                activator.activate();
            }
            match hold {
                Some(t) if t > *h.time() => h.downgrade(&t),
                Some(_) => {}
                None => held = None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_aggregate_is_a_window_agg_in_32_bytes() {
        assert_eq!(std::mem::size_of::<ChannelAgg>(), 32);
        let mut a = ChannelAgg::new(Channel::CO2);
        let mut want = WindowAgg::new();
        assert_eq!(a.get(), want);
        for v in [412.5, f64::NAN, -3.25, 1e300, f64::INFINITY, 0.1] {
            a.add(v);
            want.add(v);
            assert_eq!(a.get(), want);
        }
        assert_eq!(a.channel, Channel::CO2);
        // Counts past 32 bits, up to the 48 kept.
        for count in [u64::from(u32::MAX), u64::from(u32::MAX) + 1, MAX_COUNT] {
            a.set(&WindowAgg { count, ..want });
            assert_eq!(a.get().count, count);
        }
    }

    #[test]
    #[should_panic(expected = "2^48")]
    fn a_count_past_48_bits_is_refused() {
        let mut a = ChannelAgg::new(Channel::CO2);
        a.set(&WindowAgg { count: MAX_COUNT + 1, ..WindowAgg::new() });
    }
}
