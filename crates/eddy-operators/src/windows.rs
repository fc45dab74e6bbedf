//! Event-time windows: a generic windowed aggregate, and the windows job.
//!
//! Values are added as they arrive; a window is emitted once, when the
//! frontier (the watermark) passes its end, or at the end of input. Late
//! readings never reach these operators, and a non-late reading always has
//! `ts` at or past the frontier, so no value arrives for a closed window.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
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
use crate::snapshot::{self, Checkpointed, Owner, Pairs};

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

/// A [`ChannelAgg`] as saved in a checkpoint: the channel and its
/// [`WindowAgg`]'s fields, exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct SavedAgg {
    channel: Channel,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl SavedAgg {
    fn of(a: &ChannelAgg) -> SavedAgg {
        let WindowAgg { count, sum, min, max } = a.get();
        SavedAgg { channel: a.channel, count, sum, min, max }
    }
}

impl Serialize for ChannelAgg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedAgg::of(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ChannelAgg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let SavedAgg { channel, count, sum, min, max } = SavedAgg::deserialize(d)?;
        if count > MAX_COUNT {
            return Err(serde::de::Error::custom("a window count past 2^48 - 1"));
        }
        let mut a = ChannelAgg::new(channel);
        a.set(&WindowAgg { count, sum, min, max });
        Ok(a)
    }
}

/// A window being sent, a chunk per activation.
struct Closing {
    start: i64,
    end: i64,
    /// The time its records go out at.
    time: u64,
    aggs: HashMap<DeviceId, DeviceAggs>,
    /// Devices still to send, sorted descending: sent from the back, in
    /// device order (not the map's, so that a run restored from a
    /// checkpoint sends them as a clean run does).
    devices: Vec<DeviceId>,
}

/// The state of the windows operator: its open windows by start, each with
/// the aggregates of its devices, and the window being sent.
#[derive(Default)]
struct WindowsState {
    open: BTreeMap<i64, HashMap<DeviceId, DeviceAggs>>,
    closing: Option<Closing>,
}

/// What the windows operator keeps across a checkpoint: the open windows by
/// start, each with its devices' aggregates (at a checkpoint no window is
/// being sent).
#[derive(Deserialize)]
struct SavedWindows {
    open: Vec<(i64, Vec<(DeviceId, DeviceAggs)>)>,
}

impl Checkpointed for WindowsState {
    type Saved = SavedWindows;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        debug_assert!(self.closing.is_none(), "a checkpoint of a windows operator sending a window");
        let windows = self.open.iter().map(|(start, aggs)| (start, Pairs::new(aggs.iter())));
        snapshot::encode(&(Pairs::new(windows),))
    }

    fn restore(&mut self, saved: SavedWindows, owner: &Owner) {
        for (start, devices) in saved.open {
            let mine = devices.into_iter().filter(|(d, _)| owner.owns(*d));
            self.open.entry(start).or_default().extend(mine);
        }
        self.open.retain(|_, aggs| !aggs.is_empty());
    }
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
    let name_owned = name.to_string();
    enriched.unary_frontier(Pipeline, name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut held: Option<Capability<u64>> = Some(cap);
        let state = Rc::new(RefCell::new(WindowsState::default()));
        snapshot::register(&name_owned, &state);
        move |(input, frontier), output| {
            let mut state = state.borrow_mut();
            let WindowsState { open, closing } = &mut *state;
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
                    let mut devices: Vec<DeviceId> = aggs.keys().copied().collect();
                    devices.sort_unstable_by(|a, b| b.cmp(a));
                    // Each window goes out at its end, which is after the
                    // held time (the window was still open), so a rerun
                    // stamps it the same however far the frontier jumped.
                    let time = (end.max(0) as u64).max(*h.time());
                    *closing = Some(Closing { start, end, time, aggs, devices });
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
                    *closing = None;
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
    use std::sync::Arc;

    use eddy_core::reading::Values;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::{Input, Probe};

    use crate::snapshot::Restored;

    const MIN: i64 = 60_000;
    const EPOCHS: i64 = 24;

    /// A reading of device `d` (0..) at `ts`: the odd devices send their
    /// channels in another order, and some values are odd ones.
    fn reading(device: DeviceId, d: usize, ts: i64) -> Enriched {
        let v = ((ts / MIN) as f64 * 0.37 + d as f64 * 1.3) % 17.0 - 4.0;
        let mut values: Values =
            [(Channel::PM25, Some(v)), (Channel::CO2, Some(400.0 + v / 3.0))].into_iter().collect();
        if d % 2 == 1 {
            values.reverse();
        }
        if d.is_multiple_of(5) && (ts / MIN) % 3 == 0 {
            values.push((Channel::VOC, Some(v * 1e-3)));
        }
        crate::testkit::enriched(device, ts, 1, values)
    }

    fn devices() -> Vec<DeviceId> {
        (0..40).map(|d| DeviceId::intern(&format!("win-snap-{d}"))).collect()
    }

    /// Runs the windows operator on `workers` workers over [`EPOCHS`]
    /// epochs of ten minutes, each worker fed the readings of the devices
    /// it owns. With `save_at`, stops at that time `t` once the frontier is
    /// at `t - 1` and returns what the workers saved; with `from`, starts at
    /// that time from the saved state. Returns the records by time, in the
    /// order sent (by worker), and the saved state.
    fn run(
        workers: usize,
        save_at: Option<i64>,
        from: Option<(i64, Arc<Restored>)>,
    ) -> (Vec<(u64, WindowRecord)>, Restored) {
        let spec = WindowSpec::hopping(30 * MIN, 10 * MIN);
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let owner = Owner::new(worker.index(), worker.peers());
            snapshot::install(owner, from.as_ref().map(|(_, r)| Arc::clone(r)), None);
            let (mut input, probe, rx) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<Enriched>>();
                let (probe, out) = windows(stream, spec, "win").probe();
                (input, probe, out.capture())
            });
            assert!(snapshot::take_errors().is_empty());
            let devices = devices();
            let mut saved = Vec::new();
            for epoch in from.as_ref().map_or(0, |(t, _)| t / (10 * MIN))..EPOCHS {
                let t = epoch * 10 * MIN;
                if save_at == Some(t) {
                    input.advance_to((t - 1) as u64);
                    worker.step_while(|| probe.less_than(&((t - 1) as u64)));
                    saved = snapshot::save_all().expect("saves");
                    break;
                }
                input.advance_to(t as u64);
                for (d, device) in devices.iter().enumerate().filter(|(_, x)| owner.owns(**x)) {
                    // Readings ahead of the frontier, some in the next epoch.
                    input.send(reading(*device, d, t + (d as i64 * 37 * 1_000) % (12 * MIN)));
                }
                worker.step_while(|| probe.less_than(&(t as u64)));
            }
            drop(input);
            worker.step_while(|| !probe.done());
            snapshot::uninstall();
            (worker.index(), saved, rx)
        })
        .expect("timely runs");
        let mut results: Vec<_> = guards.join().into_iter().map(|r| r.expect("a worker")).collect();
        results.sort_by_key(|(i, _, _)| *i);
        let mut got = Vec::new();
        let mut restored = Restored::default();
        for (_, saved, rx) in results {
            for (name, bytes) in saved {
                restored.insert(&name, bytes);
            }
            for event in rx.try_iter() {
                if let Event::Messages(stamp, data) = event {
                    let t = stamp.into_elements().pop().expect("one time");
                    got.extend(data.into_iter().map(|r| (t, r)));
                }
            }
        }
        (got, restored)
    }

    /// A run restored from a checkpoint sends, from the checkpoint on, what
    /// a clean run sends, in the same order on one worker, whatever the
    /// number of workers that wrote the checkpoint; a closing window sends
    /// its devices in device order.
    #[test]
    fn a_restored_run_sends_what_a_clean_run_sends() {
        let (clean, _) = run(1, None, None);
        assert!(clean.len() > 1_000, "{} records", clean.len());
        // Each window's records go out in device order.
        for w in clean.windows(2) {
            let (a, b) = (&w[0].1, &w[1].1);
            if (a.window_start, a.window_end) == (b.window_start, b.window_end) {
                assert!(a.device_id <= b.device_id, "{a:?} before {b:?}");
            }
        }
        let t = 13 * 10 * MIN;
        let after: Vec<(u64, WindowRecord)> = clean.iter().filter(|(time, _)| *time >= t as u64).cloned().collect();
        assert!(after.len() > 100 && after.len() < clean.len());
        for writers in [1, 2] {
            let (_, saved) = run(writers, Some(t), None);
            assert_eq!(saved.names().collect::<Vec<_>>(), ["win"]);
            let saved = Arc::new(saved);
            let (restored, _) = run(1, None, Some((t, Arc::clone(&saved))));
            assert!(restored == after, "restored at -w 1 from -w {writers}");
            let (mut restored, _) = run(3, None, Some((t, saved)));
            let mut want = after.clone();
            let key = |(t, r): &(u64, WindowRecord)| (*t, r.window_start, r.device_id, r.channel);
            restored.sort_by_key(key);
            want.sort_by_key(key);
            assert!(restored == want, "restored at -w 3 from -w {writers}");
        }
    }

    /// The state saved by two workers restores on three, every device's
    /// aggregates, bit for bit, on its owner alone.
    #[test]
    fn open_windows_saved_by_two_workers_are_shared_out_among_three() {
        let devices = devices();
        let mut whole: BTreeMap<i64, Vec<(DeviceId, Vec<SavedAgg>)>> = BTreeMap::new();
        let mut parts: Vec<WindowsState> = (0..2).map(|_| WindowsState::default()).collect();
        for start in [0, 10 * MIN, 20 * MIN] {
            for (d, device) in devices.iter().enumerate().filter(|(d, _)| !(d + start as usize).is_multiple_of(3)) {
                let mut aggs = DeviceAggs::default();
                let r = reading(*device, d, start + d as i64);
                add_channels(&mut aggs, &r);
                for (i, (c, v)) in r.usable().enumerate() {
                    aggs[i].add(v);
                    aggs[i].add(if d % 4 == 0 { f64::NAN } else { -v / 7.0 });
                    assert_eq!(aggs[i].channel, c);
                }
                aggs[0].set(&WindowAgg { count: MAX_COUNT, ..aggs[0].get() });
                let saved = aggs.iter().map(SavedAgg::of).collect();
                whole.entry(start).or_default().push((*device, saved));
                let w = (0..2).find(|w| Owner::new(*w, 2).owns(*device)).expect("an owner");
                parts[w].open.entry(start).or_default().insert(*device, aggs);
            }
        }
        let saved: Vec<Vec<u8>> = parts.iter().map(|p| p.save().expect("saves")).collect();
        let mut got: BTreeMap<i64, Vec<(DeviceId, Vec<SavedAgg>)>> = BTreeMap::new();
        for index in 0..3 {
            let owner = Owner::new(index, 3);
            let mut state = WindowsState::default();
            for bytes in &saved {
                state.restore(eddy_checkpoint::decode(bytes).expect("decodes"), &owner);
            }
            assert!(state.closing.is_none());
            for (start, aggs) in state.open {
                assert!(!aggs.is_empty());
                for (device, aggs) in aggs {
                    assert!(owner.owns(device), "{device} restored on worker {index}");
                    got.entry(start).or_default().push((device, aggs.iter().map(SavedAgg::of).collect()));
                }
            }
        }
        for v in whole.values_mut().chain(got.values_mut()) {
            v.sort_by_key(|(d, _)| *d);
        }
        let bits = |m: &BTreeMap<i64, Vec<(DeviceId, Vec<SavedAgg>)>>| -> Vec<(i64, DeviceId, Channel, u64, [u64; 3])> {
            m.iter()
                .flat_map(|(s, v)| {
                    v.iter().flat_map(move |(d, aggs)| {
                        aggs.iter().map(move |a| (*s, *d, a.channel, a.count, [a.sum, a.min, a.max].map(f64::to_bits)))
                    })
                })
                .collect()
        };
        assert_eq!(bits(&got), bits(&whole));
        assert!(whole.values().all(|v| v.len() > 10));
    }

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
