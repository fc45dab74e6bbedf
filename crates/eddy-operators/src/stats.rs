//! The statistics job: incremental statistics per (device, channel).
//!
//! Values are applied in each device's arrival order, epoch by epoch as the
//! frontier passes them, and never reloaded: the state per key is one
//! [`ChannelStats`](eddy_state::stats::ChannelStats) of constant size. A key's snapshot is emitted each time
//! one of its tumbling windows (of `snapshot_every`) closes, and once more at
//! the end of input. A snapshot for the window ending at `e` reflects exactly
//! the readings stamped with a dataflow time before `e` (every non-late
//! reading in the window, and the readings that arrived before the watermark
//! passed `e`), so it is the same whatever the number of workers.
//!
//! State is kept per device, not per key: one map entry and one allocation
//! hold the statistics of all its channels (a hash-map entry and its slack
//! per (device, channel) cost more than the statistics themselves with a
//! million devices), a [`DeviceStats`]: a device with few readings keeps
//! just their times and values, inline.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;
use eddy_core::records::StatsRecord;
use eddy_state::stats::{DeviceStats, StatsConfig};

use crate::batch::Batch;
use crate::snapshot::{self, Checkpointed, Owner, Pairs};
use crate::TOUCH_AHEAD;

/// Settings of the statistics operator.
#[derive(Clone, Debug)]
pub struct StatsParams {
    /// The statistics' settings.
    pub config: StatsConfig,
    /// Snapshot period (tumbling windows aligned to the Unix epoch).
    pub snapshot_every_ms: i64,
}

/// The end of the snapshot window holding `ts`.
pub fn snapshot_end(ts: i64, every_ms: i64) -> i64 {
    ts.div_euclid(every_ms) * every_ms + every_ms
}

/// Snapshots sent per activation, at most (whole devices). Every key's
/// window closes at the same instant, so with a large fleet a closing hour
/// holds millions of snapshots; sent in chunks, they do not all wait in
/// memory for the sink at once. (Smaller chunks were measured to raise the
/// tail latency of the alerts on the 10,000-device fleet: see
/// `docs/decisions.md`.)
const CHUNK: usize = 65_536;

/// The statistics of one device's channels; a channel's index in it (its
/// *slot*) is fixed from when the channel is first seen.
type Slots = DeviceStats<Channel>;

/// Snapshots due at a window's end: a device and the slots `32 × word + b`
/// for each bit `b` set in the mask (a reading's channels in one entry).
/// A slot's index never changes while a snapshot of it is due.
type Due = (DeviceId, u32, u32);

/// What [`StatsState::step`] did with the first buffered epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Closed the windows ending at or before it, then applied it.
    Applied,
    /// Closed what fit in the budget; snapshots due before it are left, so
    /// it waits for the next activation.
    Blocked,
    /// No epoch is complete (or none is buffered): nothing done.
    Idle,
}

/// The statistics job's state machine, without timely: the epochs received
/// and not applied yet, the statistics per device, the snapshots due per
/// window end, and the final snapshots still to send at the end of input.
///
/// The operator buffers each epoch with [`StatsState::push`], applies the
/// complete ones with [`StatsState::step`] (which closes the windows that end
/// before each, at most a budget of snapshots per activation), closes the
/// windows its frontier has passed with [`StatsState::close`], holds its
/// capability at [`StatsState::hold`], and at the end of input sends
/// [`StatsState::finish`]'s snapshots. `H` is what is held while an epoch is
/// buffered (the operator's capability for it).
pub struct StatsState<C, H = ()> {
    /// The batches of each epoch not applied yet, as received (shared
    /// batches are kept shared, not copied).
    buffered: BTreeMap<u64, (H, Vec<C>)>,
    state: HashMap<DeviceId, Slots>,
    /// Keys with a snapshot due, by window end; sorted and merged when
    /// their window closes (a plain list costs a third of a set, and an
    /// entry per reading rather than per key a fifth of that).
    pending: BTreeMap<i64, Vec<Due>>,
    /// At the end of input: the devices whose final snapshots are still
    /// to send, sorted descending (sent from the back).
    finals: Option<Vec<DeviceId>>,
    cfg: StatsConfig,
    every: i64,
}

impl<C: Batch<Enriched>, H> StatsState<C, H> {
    /// Nothing received.
    pub fn new(params: StatsParams) -> Self {
        StatsState {
            buffered: BTreeMap::new(),
            state: HashMap::default(),
            pending: BTreeMap::new(),
            finals: None,
            cfg: params.config,
            every: params.snapshot_every_ms,
        }
    }

    /// Buffers a batch of epoch `t`; `hold` is kept with the epoch's first
    /// batch until the epoch is applied.
    pub fn push(&mut self, t: u64, hold: H, batch: C) {
        self.buffered.entry(t).or_insert_with(|| (hold, Vec::new())).1.push(batch);
    }

    /// Takes on the first buffered epoch `t` if it is complete (`low`, the
    /// least time the input may still hold, is past it; `None` once the
    /// input has ended): closes the windows that end at or before `t`,
    /// sending at most `budget` snapshots (whole devices) into `out` with
    /// their window ends and taking them from `budget`, then applies the
    /// epoch unless snapshots due before it are left.
    pub fn step(&mut self, low: Option<u64>, budget: &mut usize, out: &mut Vec<(i64, StatsRecord)>) -> Step {
        let Some((&t, _)) = self.buffered.first_key_value() else {
            return Step::Idle;
        };
        if low.is_some_and(|low| low <= t) {
            return Step::Idle;
        }
        *budget = budget.saturating_sub(self.close(t as i64, *budget, out));
        if self.pending.first_key_value().is_some_and(|(end, _)| *end <= t as i64) {
            // Epoch `t` applies after those snapshots: next time.
            return Step::Blocked;
        }
        let (_hold, batches) = self.buffered.remove(&t).expect("the first epoch");
        self.apply(&batches);
        Step::Applied
    }

    /// Applies one epoch's readings, registering the windows they leave due.
    fn apply(&mut self, batches: &[C]) {
        let (state, pending, cfg, every) = (&mut self.state, &mut self.pending, &self.cfg, self.every);
        let records = batches.iter().flat_map(|b| b.records());
        // Runs `TOUCH_AHEAD` readings ahead of the loop at each touch.
        let mut ahead = records.clone();
        for (n, r) in records.enumerate() {
            if n % TOUCH_AHEAD == 0 {
                // Bring the next readings' state into the cache
                // together (see `TOUCH_AHEAD`).
                for r in ahead.by_ref().take(TOUCH_AHEAD) {
                    if let Some(s) = state.get(&r.device) {
                        std::hint::black_box(s.touch());
                    }
                }
            }
            if r.usable().next().is_none() {
                continue;
            }
            let slots = state.entry(r.device).or_default();
            let end = snapshot_end(r.ts, every);
            // The reading's window, `lo..end`, if it is computed
            // without overflow (then `end` is its end).
            let window = r.ts.div_euclid(every).checked_mul(every).and_then(|lo| Some(lo..lo.checked_add(every)?));
            // Slots 0..32 whose window close this reading registers.
            let mut mask = 0u32;
            slots.update(cfg, r.ts, r.usable(), |i, last_ts| {
                // Register the window's close once per run of values
                // in it: when the slot's previous value (finite or
                // not, as `update` reports it) fell in another window.
                let same_window = match last_ts {
                    // The usual case, told without a division.
                    Some(ts) if window.as_ref().is_some_and(|w| w.contains(&ts)) => true,
                    last_ts => last_ts.map_or(i64::MIN, |ts| snapshot_end(ts, every)) == end,
                };
                if !same_window {
                    let (word, bit) = (i / 32, i % 32);
                    if word == 0 {
                        mask |= 1 << bit;
                    } else {
                        let word = u32::try_from(word).unwrap_or(u32::MAX);
                        pending.entry(end).or_default().push((r.device, word, 1 << bit));
                    }
                }
            });
            if mask != 0 {
                pending.entry(end).or_default().push((r.device, 0, mask));
            }
        }
    }

    /// Snapshots of the windows ending at or before `upto`, each device's
    /// in channel order, into `out` with their window ends, until at least
    /// `limit` of them (whole devices); returns how many.
    pub fn close(&mut self, upto: i64, limit: usize, out: &mut Vec<(i64, StatsRecord)>) -> usize {
        let (pending, state) = (&mut self.pending, &self.state);
        let mut sent = 0;
        let mut due_slots: Vec<(Channel, usize)> = Vec::new();
        while let Some(entry) = pending.first_entry() {
            let end = *entry.key();
            if end > upto || sent >= limit {
                break;
            }
            let mut due = entry.remove();
            due.sort_unstable();
            // One entry per (device, word), its masks merged.
            due.dedup_by(|later, kept| {
                let same = later.0 == kept.0 && later.1 == kept.1;
                if same {
                    kept.2 |= later.2;
                }
                same
            });
            let mut i = 0;
            while i < due.len() && sent < limit {
                let d = due[i].0;
                let slots = state.get(&d);
                due_slots.clear();
                while i < due.len() && due[i].0 == d {
                    let (_, word, mut mask) = due[i];
                    while mask != 0 {
                        let idx = word as usize * 32 + mask.trailing_zeros() as usize;
                        mask &= mask - 1;
                        if let Some(c) = slots.and_then(|s| s.key(idx)) {
                            due_slots.push((c, idx));
                        }
                    }
                    i += 1;
                }
                due_slots.sort_unstable();
                for &(c, idx) in &due_slots {
                    if let Some(stats) = slots.and_then(|s| s.snapshot(idx, &self.cfg)) {
                        out.push((end, StatsRecord { device_id: d, channel: c, stats }));
                    }
                }
                sent += due_slots.len();
            }
            if i < due.len() {
                pending.insert(end, due.split_off(i));
            }
        }
        sent
    }

    /// Where the operator may hold its capability once its input frontier
    /// is at `low` and what fit of the closed windows was sent: `low`, or
    /// the end of the first window still due if that is earlier. True when
    /// such a snapshot is left (it goes out at the next activation).
    ///
    /// Each snapshot goes out at its window's end, which is after the held
    /// time (the window was open), so a rerun stamps it the same however the
    /// frontier moved: the held time never passes an unsent end.
    pub fn hold(&self, low: u64) -> (u64, bool) {
        match self.pending.first_key_value() {
            Some((&end, _)) if end <= low as i64 => (low.min(end.max(0) as u64), true),
            _ => (low, false),
        }
    }

    /// At the end of input (every buffered epoch applied): the snapshots
    /// still due into `due`, then the final state of every key into
    /// `finals`, in key order, at most `chunk` records (whole devices) per
    /// call so that they do not all wait in memory for the sink at once.
    /// True once everything is sent.
    pub fn finish(&mut self, chunk: usize, due: &mut Vec<(i64, StatsRecord)>, finals: &mut Vec<StatsRecord>) -> bool {
        let mut budget = chunk.saturating_sub(self.close(i64::MAX, chunk, due));
        if self.pending.is_empty() && budget > 0 {
            let state = &mut self.state;
            let devices = self.finals.get_or_insert_with(|| {
                let mut devices: Vec<DeviceId> = state.keys().copied().collect();
                // Sorted descending: sent from the back, in key order.
                devices.sort_unstable_by(|a, b| b.cmp(a));
                devices
            });
            while budget > 0 {
                let Some(d) = devices.pop() else { break };
                // Sent, so no longer needed: freed as it goes.
                let Some(slots) = state.remove(&d) else { continue };
                let mut by_channel: Vec<(Channel, usize)> = slots.keys().zip(0..).collect();
                by_channel.sort_unstable();
                for (channel, i) in by_channel {
                    if let Some(stats) = slots.snapshot(i, &self.cfg) {
                        finals.push(StatsRecord { device_id: d, channel, stats });
                    }
                }
                budget = budget.saturating_sub(slots.len());
            }
        }
        self.finals.as_ref().is_some_and(|k| k.is_empty())
    }
}

/// What the statistics keep across a checkpoint: every device's statistics
/// and the snapshots due, by window end. (At a checkpoint no epoch is
/// buffered and no final snapshot is due.)
#[derive(serde::Deserialize)]
pub struct SavedStats {
    devices: Vec<(DeviceId, Slots)>,
    pending: Vec<(i64, Vec<Due>)>,
}

impl<C: Batch<Enriched> + 'static, H: 'static> Checkpointed for StatsState<C, H> {
    type Saved = SavedStats;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        debug_assert!(self.buffered.is_empty() && self.finals.is_none(), "a checkpoint of a busy statistics operator");
        snapshot::encode(&(Pairs::new(self.state.iter()), Pairs::new(self.pending.iter())))
    }

    fn restore(&mut self, saved: SavedStats, owner: &Owner) {
        self.state.extend(saved.devices.into_iter().filter(|(d, _)| owner.owns(*d)));
        for (end, due) in saved.pending {
            let mine = due.into_iter().filter(|(d, _, _)| owner.owns(*d));
            self.pending.entry(end).or_default().extend(mine);
        }
        self.pending.retain(|_, v| !v.is_empty());
    }
}

/// The statistics operator. Its input must be partitioned by device and hold
/// only non-late readings.
pub fn stats<'s, C: Batch<Enriched>>(
    enriched: Stream<'s, u64, C>,
    params: StatsParams,
    name: &str,
) -> StreamVec<'s, u64, StatsRecord> {
    stats_chunked(enriched, params, name, CHUNK)
}

/// [`stats`], sending at most `chunk` snapshots per activation: a timely
/// shell over [`StatsState`].
fn stats_chunked<'s, C: Batch<Enriched>>(
    enriched: Stream<'s, u64, C>,
    params: StatsParams,
    name: &str,
    chunk: usize,
) -> StreamVec<'s, u64, StatsRecord> {
    let scope = enriched.scope();
    let name_owned = name.to_string();
    enriched.unary_frontier(Pipeline, name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut held: Option<Capability<u64>> = Some(cap);
        let machine = Rc::new(RefCell::new(StatsState::<C, Capability<u64>>::new(params)));
        snapshot::register(&name_owned, &machine);
        let mut out = Vec::new();
        let mut finals = Vec::new();

        move |(input, frontier), output| {
            let mut machine = machine.borrow_mut();
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                machine.push(*cap.time(), cap, std::mem::take(data));
            });
            let low = frontier.frontier().iter().copied().min();
            let mut budget = chunk;
            // Whether snapshots that are due wait for the next activation.
            let mut more = false;
            // Apply every complete epoch, in time order, each after the
            // snapshots of the windows that end at or before it.
            loop {
                let step = machine.step(low, &mut budget, &mut out);
                if let Some(h) = held.as_ref() {
                    emit_at_ends(h, output, &mut out);
                }
                match step {
                    Step::Applied => {}
                    Step::Blocked => {
                        more = true;
                        break;
                    }
                    Step::Idle => break,
                }
            }
            match low {
                Some(low) => {
                    if let Some(h) = held.as_mut() {
                        if !more {
                            machine.close(low as i64, budget, &mut out);
                            emit_at_ends(h, output, &mut out);
                        }
                        let (hold, due) = machine.hold(low);
                        more |= due;
                        if hold > *h.time() {
                            h.downgrade(&hold);
                        }
                        if more {
                            activator.activate();
                        }
                    }
                }
                // The input has ended, but epochs are still buffered behind
                // snapshots that did not fit in this activation's chunk
                // (their input came whole, the frontier passed them all at
                // once): apply them first. The final state before them
                // would be wrong, and dropping `held` would strand their
                // capabilities, so the operator would never finish.
                None if more => activator.activate(),
                None => {
                    if let Some(h) = held.as_ref() {
                        let done = machine.finish(chunk, &mut out, &mut finals);
                        emit_at_ends(h, output, &mut out);
                        if !finals.is_empty() {
                            output.session(h).give_iterator(finals.drain(..));
                        }
                        if done {
                            held = None;
                        } else {
                            activator.activate();
                        }
                    }
                }
            }
        }
    })
}

/// Sends snapshots each at its window's end (never before `held`).
fn emit_at_ends(
    held: &Capability<u64>,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        u64,
        timely::container::CapacityContainerBuilder<Vec<StatsRecord>>,
    >,
    out: &mut Vec<(i64, StatsRecord)>,
) {
    let mut i = 0;
    while i < out.len() {
        let end = out[i].0;
        let t = (end.max(0) as u64).max(*held.time());
        let cap = held.delayed(&t);
        let mut session = output.session(&cap);
        while i < out.len() && out[i].0 == end {
            session.give(out[i].1.clone());
            i += 1;
        }
    }
    out.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million devices × 5 channels: 224 bytes a young device in one
    /// allocation (jemalloc's 224-byte class), where five 64-byte slots took
    /// the 320-byte class; the map keeps a 16-byte fat pointer a device.
    #[test]
    fn a_young_device_of_five_channels_takes_224_bytes() {
        assert_eq!(std::mem::size_of::<Slots>(), 16);
        let cfg = StatsConfig::default();
        let mut slots = Slots::default();
        let channels = [Channel::PM25, Channel::CO2, Channel::VOC, Channel::TEMP, Channel::HUM];
        for r in 0..4 {
            slots.update(&cfg, r * 300_000, channels.iter().map(|c| (*c, 1.0)), |_, _| {});
            assert_eq!(slots.allocated_bytes(), 224);
        }
        assert_eq!(slots.key(2), Some(Channel::VOC));
    }

    use smallvec::smallvec;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::{Input, Probe};

    const MIN: i64 = 60_000;

    fn reading(device: DeviceId, ts: i64, line: u64, v: f64) -> Enriched {
        let values: eddy_core::reading::Values = smallvec![(Channel::PM25, Some(v)), (Channel::CO2, Some(400.0 + v))];
        crate::testkit::enriched(device, ts, line, values)
    }

    fn params() -> StatsParams {
        StatsParams { config: StatsConfig::default(), snapshot_every_ms: 60 * MIN }
    }

    /// (window end, device, channel, count) of each snapshot.
    fn summary(out: &[(i64, StatsRecord)]) -> Vec<(i64, DeviceId, Channel, u64)> {
        out.iter().map(|(end, r)| (*end, r.device_id, r.channel, r.stats.count)).collect()
    }

    #[test]
    fn an_empty_input_is_finished_at_once() {
        let mut m: StatsState<Vec<Enriched>> = StatsState::new(params());
        let (mut out, mut budget) = (Vec::new(), usize::MAX);
        assert_eq!(m.step(Some(0), &mut budget, &mut out), Step::Idle);
        assert_eq!(m.step(None, &mut budget, &mut out), Step::Idle);
        assert_eq!(m.hold(5), (5, false));
        let mut finals = Vec::new();
        assert!(m.finish(4, &mut out, &mut finals));
        assert!(out.is_empty() && finals.is_empty());
    }

    #[test]
    fn an_epoch_waits_until_the_frontier_has_passed_it() {
        let d = DeviceId::intern("machine-wait");
        let mut m: StatsState<Vec<Enriched>> = StatsState::new(params());
        m.push(10 * MIN as u64, (), vec![reading(d, 10 * MIN, 1, 1.0)]);
        let mut out = Vec::new();
        let mut budget = usize::MAX;
        assert_eq!(m.step(Some(10 * MIN as u64), &mut budget, &mut out), Step::Idle, "the epoch may still grow");
        assert_eq!(m.step(Some(10 * MIN as u64 + 1), &mut budget, &mut out), Step::Applied);
        assert_eq!(m.step(Some(10 * MIN as u64 + 1), &mut budget, &mut out), Step::Idle);
        assert!(out.is_empty(), "its window is open");
        // Its window closes once the frontier passes its end.
        assert_eq!(m.close(59 * MIN, usize::MAX, &mut out), 0);
        assert_eq!(m.close(60 * MIN, usize::MAX, &mut out), 2);
        assert_eq!(summary(&out), [(60 * MIN, d, Channel::PM25, 1), (60 * MIN, d, Channel::CO2, 1)]);
    }

    /// Epochs are applied in time order, not in the order they arrived, and
    /// the windows that end before an epoch close before it is applied.
    #[test]
    fn epochs_apply_in_time_order() {
        let d = DeviceId::intern("machine-order");
        let mut m: StatsState<Vec<Enriched>> = StatsState::new(params());
        m.push(70 * MIN as u64, (), vec![reading(d, 70 * MIN, 2, 2.0)]);
        m.push(10 * MIN as u64, (), vec![reading(d, 10 * MIN, 1, 1.0)]);
        m.push(70 * MIN as u64, (), vec![reading(d, 75 * MIN, 3, 3.0)]);
        let (mut out, mut budget) = (Vec::new(), usize::MAX);
        assert_eq!(m.step(None, &mut budget, &mut out), Step::Applied);
        assert!(out.is_empty());
        assert_eq!(m.step(None, &mut budget, &mut out), Step::Applied);
        // The first hour closed before the second epoch was applied: its
        // snapshots hold the first reading alone.
        assert_eq!(summary(&out), [(60 * MIN, d, Channel::PM25, 1), (60 * MIN, d, Channel::CO2, 1)]);
        assert_eq!(budget, usize::MAX - 2);
        assert_eq!(m.step(None, &mut budget, &mut out), Step::Idle);
        out.clear();
        let mut finals = Vec::new();
        assert!(m.finish(usize::MAX, &mut out, &mut finals));
        assert_eq!(summary(&out), [(120 * MIN, d, Channel::PM25, 3), (120 * MIN, d, Channel::CO2, 3)]);
        let counts: Vec<(Channel, u64)> = finals.iter().map(|r| (r.channel, r.stats.count)).collect();
        assert_eq!(counts, [(Channel::PM25, 3), (Channel::CO2, 3)]);
    }

    /// Snapshots that do not fit in the budget hold back the epoch after
    /// them and the capability, at the first window end still due.
    #[test]
    fn an_epoch_waits_behind_snapshots_that_did_not_fit() {
        let devices: Vec<DeviceId> = (0..3).map(|i| DeviceId::intern(&format!("machine-fit-{i}"))).collect();
        let mut m: StatsState<Vec<Enriched>> = StatsState::new(params());
        m.push(0, (), devices.iter().map(|d| reading(*d, 10 * MIN, 1, 1.0)).collect());
        m.push(60 * MIN as u64, (), devices.iter().map(|d| reading(*d, 60 * MIN, 2, 2.0)).collect());
        let mut out = Vec::new();
        let low = Some(61 * MIN as u64);
        assert_eq!(m.step(low, &mut 2, &mut out), Step::Applied);
        let mut budget = 2;
        assert_eq!(m.step(low, &mut budget, &mut out), Step::Blocked);
        // Whole devices: one device's two channels.
        assert_eq!((out.len(), budget), (2, 0));
        assert_eq!(m.hold(61 * MIN as u64), (60 * MIN as u64, true));
        // The next activations send the rest, then apply the epoch.
        assert_eq!(m.step(low, &mut 2, &mut out), Step::Blocked);
        assert_eq!(m.step(low, &mut 2, &mut out), Step::Applied);
        assert_eq!(out.len(), 6);
        assert!(out.iter().all(|(end, r)| *end == 60 * MIN && r.stats.count == 1));
        assert_eq!(m.hold(61 * MIN as u64), (61 * MIN as u64, false));
    }

    /// The input ends with epochs buffered: they are applied, in chunks,
    /// before the final state goes out, in chunks of whole devices, and the
    /// state is done only once every device's final state is out.
    #[test]
    fn the_end_of_input_with_epochs_buffered_applies_them_first() {
        let devices: Vec<DeviceId> = (0..3).map(|i| DeviceId::intern(&format!("machine-end-{i}"))).collect();
        let mut m: StatsState<Vec<Enriched>> = StatsState::new(params());
        for hour in 0..3 {
            let t = hour * 60 * MIN;
            m.push(t as u64, (), devices.iter().map(|d| reading(*d, t + MIN, hour as u64, 1.0)).collect());
        }
        let mut out = Vec::new();
        let mut activations = 0;
        // As the operator: apply what fits, until every epoch is applied.
        loop {
            activations += 1;
            let mut budget = 2;
            let step = loop {
                match m.step(None, &mut budget, &mut out) {
                    Step::Applied => {}
                    step => break step,
                }
            };
            if step == Step::Idle {
                break;
            }
        }
        assert_eq!(activations, 6, "two hours closed a device at a time, each hour's last with the epoch after it");
        assert_eq!(out.len(), 2 * 3 * 2);
        let mut finals = Vec::new();
        let mut calls = 0;
        loop {
            calls += 1;
            if m.finish(2, &mut out, &mut finals) {
                break;
            }
        }
        // The last hour's snapshots, a device a call, then the finals.
        assert_eq!(calls, 6);
        assert_eq!(out.len(), 3 * 3 * 2);
        assert_eq!(finals.len(), 3 * 2);
        assert!(finals.iter().all(|r| r.stats.count == 3));
        let order: Vec<DeviceId> = finals.iter().map(|r| r.device_id).step_by(2).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "the finals go out in key order");
    }

    /// Runs the operator, sending at most `chunk` snapshots per activation,
    /// over 7 devices reporting every 10 minutes for 3 hours (an epoch per
    /// 10 minutes); returns every (time, snapshot) by time, device and channel.
    fn run(chunk: usize) -> Vec<(u64, String)> {
        run_with(chunk, 7, 3, true)
    }

    /// [`run`] over `devices` devices for `hours` hours. With `paced` false,
    /// every epoch is sent and the input closed before the operator first
    /// runs, so its frontier jumps from the first epoch to the end of input
    /// at once (as a Kafka job's can when it reads an input topic written
    /// whole). Panics if the operator does not finish.
    fn run_with(chunk: usize, devices: usize, hours: i64, paced: bool) -> Vec<(u64, String)> {
        let params = StatsParams {
            config: StatsConfig { alpha: 0.1, top_k: 3, trend_half_life_ms: 60 * MIN },
            snapshot_every_ms: 60 * MIN,
        };
        let rx = timely::execute_directly(move |worker| {
            let (mut input, probe, rx) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<Enriched>>();
                let (probe, out) = stats_chunked(stream, params, "stats", chunk).probe();
                (input, probe, out.capture())
            });
            let devices: Vec<DeviceId> = (0..devices).map(|d| DeviceId::intern(&format!("chunk-dev-{d}"))).collect();
            let mut line = 0;
            for epoch in 0..hours * 6 {
                let t = epoch * 10 * MIN;
                input.advance_to(t as u64);
                for (i, d) in devices.iter().enumerate() {
                    line += 1;
                    input.send(reading(*d, t + i as i64 * 1_000, line, (epoch * 7 + i as i64) as f64 % 13.0));
                }
                if paced {
                    worker.step_while(|| probe.less_than(&(t as u64)));
                }
            }
            drop(input);
            // Bounded: an operator that stops making progress must fail the
            // test, not hang it.
            for _ in 0..100_000 {
                if probe.done() {
                    break;
                }
                worker.step();
            }
            assert!(probe.done(), "the operator stalled (chunk {chunk}, {} devices, paced {paced})", devices.len());
            rx
        });
        let mut got: Vec<(u64, StatsRecord)> = Vec::new();
        for event in rx.try_iter() {
            if let Event::Messages(stamp, data) = event {
                let mut times = stamp.into_elements();
                assert_eq!(times.len(), 1, "one time per message");
                let t = times.pop().expect("one time");
                got.extend(data.into_iter().map(|r| (t, r)));
            }
        }
        got.sort_by_key(|(t, r)| (*t, r.device_id, r.channel));
        got.into_iter().map(|(t, r)| (t, format!("{r:?}"))).collect()
    }

    /// Runs the operator over `readings`, each sent at its own `ts` as its
    /// time; returns every (time, snapshot).
    fn run_readings(readings: Vec<Enriched>) -> Vec<(u64, StatsRecord)> {
        let params = StatsParams { config: StatsConfig::default(), snapshot_every_ms: 60 * MIN };
        let rx = timely::execute_directly(move |worker| {
            let (mut input, probe, rx) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<Enriched>>();
                let (probe, out) = stats(stream, params, "stats").probe();
                (input, probe, out.capture())
            });
            for r in readings {
                input.advance_to(r.ts as u64);
                input.send(r);
                worker.step_while(|| probe.less_than(input.time()));
            }
            drop(input);
            worker.step_while(|| !probe.done());
            rx
        });
        let mut got = Vec::new();
        for event in rx.try_iter() {
            if let Event::Messages(stamp, data) = event {
                let t = stamp.into_elements().pop().expect("one time");
                got.extend(data.into_iter().map(|r| (t, r)));
            }
        }
        got.sort_by_key(|(t, r)| (*t, r.channel));
        got
    }

    /// A non-finite value changes no statistic but, as a value given to its
    /// channel, still registers a snapshot of its window (as it always did:
    /// the snapshots must not change).
    #[test]
    fn a_non_finite_value_registers_its_window() {
        let d = DeviceId::intern("nan-dev");
        let mut readings = vec![reading(d, 10 * MIN, 1, 1.0), reading(d, 70 * MIN, 2, 0.0)];
        readings[1].values = smallvec![(Channel::PM25, Some(f64::NAN))];
        let got = run_readings(readings);
        let summary: Vec<(u64, Channel, u64, i64)> =
            got.iter().map(|(t, r)| (*t, r.channel, r.stats.count, r.stats.ts)).collect();
        let (hour, last_input) = (60 * MIN as u64, 70 * MIN as u64);
        assert_eq!(
            summary,
            [
                (hour, Channel::PM25, 1, 10 * MIN),
                (hour, Channel::CO2, 1, 10 * MIN),
                // The final state, at the end of input.
                (last_input, Channel::PM25, 1, 10 * MIN),
                (last_input, Channel::CO2, 1, 10 * MIN),
                // Registered by the NaN alone.
                (2 * hour, Channel::PM25, 1, 10 * MIN),
            ]
        );
    }

    /// Snapshots due at an hour's end go out a device at a time, the epoch
    /// after them waits until they are out, and every snapshot keeps its
    /// time and values: the same records at the same times as in one go.
    #[test]
    fn chunked_closes_send_the_same_snapshots_at_the_same_times() {
        let whole = run(usize::MAX);
        // 3 hourly closes and the final state, 7 devices x 2 channels each.
        assert_eq!(whole.len(), 4 * 7 * 2);
        let ends: Vec<u64> = whole.iter().map(|(t, _)| *t).collect();
        assert!(ends.contains(&(60 * MIN as u64)) && ends.contains(&(120 * MIN as u64)), "{ends:?}");
        for chunk in [1, 3, 5] {
            assert_eq!(run(chunk), whole, "chunk {chunk}");
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// The input ends while epochs are still buffered behind snapshots that
    /// did not fit in one chunk: the operator applies every epoch before it
    /// sends the final state and drops its capability. It used to send the
    /// final state of a partial history at once, and, once every final was
    /// out, drop its capability with the buffered epochs' capabilities still
    /// held: with one device it never finished (the Kafka stats job of a
    /// device reading hourly for three years stopped for good after its first
    /// chunk of 2^16 snapshots, 65,564 records of replay's 131,405).
    #[test]
    fn an_input_that_ends_at_once_is_applied_whole_in_chunks() {
        let records = |v: &[(u64, String)]| sorted(v.iter().map(|(_, r)| r.clone()).collect());
        for (devices, hours) in [(1, 8), (7, 3)] {
            let whole = run_with(usize::MAX, devices, hours, false);
            // The same snapshots as when the input comes epoch by epoch (the
            // final state goes out at the held time, here the first epoch's).
            assert_eq!(records(&whole), records(&run_with(usize::MAX, devices, hours, true)), "{devices} devices");
            for chunk in [1, 3, 5, 14] {
                assert_eq!(run_with(chunk, devices, hours, false), whole, "chunk {chunk}, {devices} devices");
            }
        }
    }
}
