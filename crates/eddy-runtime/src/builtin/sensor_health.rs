//! `kind = "sensor-health"`: sensor faults, as start and end events.
//!
//! Two kinds of fault, both per device:
//!
//! * **`junk`**, per (device, channel): over the device's readings whose `ts`
//!   is within `window` of the newest `ts` it has sent (the window's end
//!   included, its start excluded), the share of the channel's non-null
//!   values that are junk (out of the ingest job's valid range). A fault
//!   starts when the share reaches `junk_rise` with at least `min_readings`
//!   non-null values in the window, and ends when it falls to `junk_fall`
//!   or below. Every channel the device has sent is checked after each of
//!   its readings, in channel order; a reading older than the window is not
//!   counted.
//! * **`silent`**: the device's newest `ts` plus `silence` is its deadline.
//!   Once the watermark has passed the deadline while other devices go on
//!   reporting (a reading stamped later than the deadline exists), the
//!   fault starts, with `ts` = the deadline. It ends at the device's next
//!   reading, with that reading's `ts`. When the input ends, deadlines that
//!   no later reading passed start nothing.
//!
//! Input: on-time enriched readings, partitioned by device and in arrival
//! order per device (as every job's input is). Output: `health.jsonl`, topic
//! `P.health`, one line per event:
//! `{"event_id","device_id","channel","kind","state","ts",…}`; see
//! [`HealthEvent`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};

use eddy_connectors::jsonl::Encode;
use eddy_core::duration::Millis;
use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;
use eddy_core::records::EventState;
use eddy_core::spec::PipelineSpec;
use eddy_core::SpecError;
use eddy_operators::batch::Batch;
use eddy_operators::snapshot::{self, Checkpointed, Owner, Pairs};

use crate::component::{Job, JobBuilder, OutputRecord};
use crate::error::Result;
use crate::flow::Flow;

/// The sensor-health job.
pub struct SensorHealth;

fn d_window() -> Millis {
    Millis::HOUR
}
fn d_rise() -> f64 {
    0.5
}
fn d_fall() -> f64 {
    0.1
}
fn d_min() -> u32 {
    6
}
fn d_silence() -> Millis {
    Millis(30 * 60_000)
}

/// The settings of `jobs/sensor-health.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// How far back from a device's newest `ts` its readings count towards
    /// the junk share. Default `"1h"`.
    #[serde(default = "d_window")]
    pub window: Millis,
    /// A junk fault starts when the junk share reaches this. Default 0.5.
    #[serde(default = "d_rise")]
    pub junk_rise: f64,
    /// A junk fault ends when the junk share falls to this or below. Default 0.1.
    #[serde(default = "d_fall")]
    pub junk_fall: f64,
    /// The fewest non-null values of a channel in the window for a junk
    /// fault to start. Default 6.
    #[serde(default = "d_min")]
    pub min_readings: u32,
    /// A device is silent once the watermark passes its newest `ts` plus
    /// this. Default `"30m"`.
    #[serde(default = "d_silence")]
    pub silence: Millis,
}

impl Job for SensorHealth {
    type Spec = HealthSpec;
    const KIND: &'static str = "sensor-health";
    const ABOUT: &'static str =
        "Sensor faults: junk streaks per (device, channel) and silent devices, as start/end events.";
    const INPUTS: &'static [&'static str] = &["enriched"];
    const OUTPUTS: &'static [&'static str] = &["health"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/sensor-health.toml"));

    fn check(s: &HealthSpec, _pipeline: &PipelineSpec, file: &str) -> Result<(), SpecError> {
        if s.window.ms() <= 0 {
            return Err(SpecError::at_key(file, "window", "must be at least 1ms"));
        }
        if s.silence.ms() <= 0 {
            return Err(SpecError::at_key(file, "silence", "must be at least 1ms"));
        }
        if !(s.junk_rise > 0.0 && s.junk_rise <= 1.0) {
            return Err(SpecError::at_key(file, "junk_rise", format!("must be in (0, 1], found {}", s.junk_rise)));
        }
        if !(s.junk_fall >= 0.0 && s.junk_fall < s.junk_rise) {
            return Err(SpecError::at_key(
                file,
                "junk_fall",
                format!("must be at least 0 and below junk_rise ({}), found {}", s.junk_rise, s.junk_fall),
            ));
        }
        if s.min_readings == 0 {
            return Err(SpecError::at_key(file, "min_readings", "must be at least 1"));
        }
        Ok(())
    }

    fn build(spec: &HealthSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let on_time = job.input::<Enriched>("enriched")?.on_time();
        let name = format!("{}.health", job.name());
        let events = health(on_time, spec.clone(), &name);
        job.output("health", Flow::new(events, job.name()))
    }
}

/// The kind of a sensor fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// A channel's values are mostly junk.
    Junk,
    /// The device stopped reporting.
    Silent,
}

/// A sensor fault's start or end: a line of `health.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// `<kind>:<device_id>[:<channel>]:<start ts>`, the same on the start and the end.
    pub event_id: String,
    /// The device.
    pub device_id: DeviceId,
    /// The channel of a `junk` fault; null for `silent`.
    pub channel: Option<Channel>,
    /// `junk` or `silent`.
    pub kind: FaultKind,
    /// `start` or `end`.
    pub state: EventState,
    /// Event time: the reading that started or ended a junk fault, the
    /// deadline that started a silent one, the reading that ended it.
    pub ts: i64,
    /// `junk`: the junk share in the window at `ts`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub share: Option<f64>,
    /// `junk`: the channel's non-null values in the window at `ts`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub readings: Option<u32>,
    /// `silent`: the device's newest `ts` before it fell silent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_ts: Option<i64>,
    /// End only: end `ts` − start `ts`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<i64>,
}

impl Encode for HealthEvent {
    fn encode(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("a health event serialises to memory");
    }
}

impl OutputRecord for HealthEvent {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device_id.name())
    }
}

/// One channel's counts in a device's window, and its open fault.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct ChannelCount {
    channel: Channel,
    values: u32,
    junk: u32,
    /// The `ts` a junk fault started at, while it is open.
    fault: Option<i64>,
}

/// The most channels judged per device: the first 64 it sends (a channel's
/// slot is a bit of [`Entry`]'s masks).
const MAX_CHANNELS: usize = 64;

/// One reading in a device's window: its `ts`, the channel slots it had a
/// non-null value for, and those whose value was junk.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Entry {
    ts: i64,
    values: u64,
    junk: u64,
}

/// A device's readings in the window, oldest first, kept inline in the
/// device's state (a window of an hour at a reading every five minutes is
/// twelve entries): the live entries are `entries[start..]`, so dropping
/// the oldest is a move of `start`, and the dead prefix is cut away only
/// when the inline space runs out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Window {
    entries: SmallVec<[Entry; 16]>,
    start: usize,
}

impl Window {
    fn live(&self) -> &[Entry] {
        &self.entries[self.start..]
    }

    /// Adds `e` after the entries with a `ts` at or before its own. The dead
    /// prefix is cut away when the storage is full or when it is at least
    /// half of it, so a window of any length takes at most twice its size.
    fn insert(&mut self, e: Entry) {
        let len = self.entries.len();
        if self.start > 0 && (len == self.entries.capacity() || self.start * 2 >= len) {
            self.entries.drain(..self.start);
            self.start = 0;
        }
        match self.entries.last() {
            Some(b) if self.start < self.entries.len() && b.ts > e.ts => {
                let at = self.start + self.live().partition_point(|x| x.ts <= e.ts);
                self.entries.insert(at, e);
            }
            _ => self.entries.push(e),
        }
    }

    /// Drops the oldest entry if its `ts` is at or before `floor`.
    fn pop_through(&mut self, floor: i64) -> Option<Entry> {
        let e = *self.entries.get(self.start).filter(|e| e.ts <= floor)?;
        self.start += 1;
        if self.start == self.entries.len() {
            self.entries.clear();
            self.start = 0;
        }
        Some(e)
    }
}

/// A device's health state. The fields every reading touches come first
/// (`repr(C)` keeps them together); the per-channel counts are kept only
/// while there is something to judge (see [`Device::counted`]). A
/// checkpoint saves it whole but for `order`, which follows the channels'
/// process-local indices: it is made again when restored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[repr(C)]
struct Device {
    newest: Option<i64>,
    /// The deadline of an open silent fault.
    silent: Option<i64>,
    /// The deadline the device waits in the operator's queue at, if it does.
    scheduled: Option<i64>,
    /// Junk values in the window, every channel together, and open junk
    /// faults: while both are 0 there is nothing to judge.
    junk: u32,
    open: u32,
    /// True while `channels` holds the window's counts. A clean device (no
    /// junk in its window, no open fault) does not keep them: they are
    /// counted again from the window when junk comes.
    counted: bool,
    /// The channel of each slot (the order first seen).
    ids: SmallVec<[Channel; 8]>,
    /// Readings in the window, in `ts` order (arrival order among equals).
    window: Window,
    /// The counts and open fault of each slot.
    channels: SmallVec<[ChannelCount; 6]>,
    /// The slots in channel order: the order faults are judged in.
    #[serde(skip)]
    order: SmallVec<[u8; 6]>,
}

impl Device {
    /// The slot of `channel`, given one if it has none (`None` past
    /// [`MAX_CHANNELS`]).
    fn slot(&mut self, channel: Channel) -> Option<usize> {
        if let Some(i) = self.ids.iter().position(|c| *c == channel) {
            return Some(i);
        }
        if self.ids.len() == MAX_CHANNELS {
            return None;
        }
        let slot = self.ids.len();
        self.ids.push(channel);
        self.channels.push(ChannelCount { channel, values: 0, junk: 0, fault: None });
        let at = self.order.partition_point(|&o| self.ids[o as usize].index() < channel.index());
        self.order.insert(at, slot as u8);
        Some(slot)
    }

    /// Adds an entry to the window's counts, or removes one.
    fn count(&mut self, e: &Entry, add: bool) {
        let n = e.junk.count_ones();
        if add {
            self.junk += n;
        } else {
            self.junk -= n;
        }
        if self.counted {
            count_channels(&mut self.channels, e, add);
        }
    }

    /// Makes `order` again from `ids` (for a device restored from a
    /// checkpoint): the slots sorted by the channels' indices in this
    /// process, as [`Device::slot`] keeps them.
    fn reorder(&mut self) {
        let ids = &self.ids;
        self.order = (0..ids.len() as u8).collect();
        self.order.sort_unstable_by_key(|&o| ids[o as usize].index());
    }

    /// Makes `channels` hold the window's counts, if it does not.
    fn recount(&mut self) {
        if self.counted {
            return;
        }
        for c in self.channels.iter_mut() {
            c.values = 0;
            c.junk = 0;
        }
        for e in self.window.live() {
            count_channels(&mut self.channels, e, true);
        }
        self.counted = true;
    }
}

/// Adds (or removes) an entry's values to (from) the per-slot counts.
fn count_channels(channels: &mut [ChannelCount], e: &Entry, add: bool) {
    let mut bits = e.values;
    while bits != 0 {
        let slot = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let junk = u32::from(e.junk >> slot & 1 == 1);
        let c = &mut channels[slot];
        if add {
            c.values += 1;
            c.junk += junk;
        } else {
            c.values -= 1;
            c.junk -= junk;
        }
    }
}

/// What became of a device's pending deadline.
#[derive(Clone, Debug, PartialEq)]
pub enum Decided {
    /// The device fell silent at the deadline: the fault's start.
    Silent(HealthEvent),
    /// The device reported since: it waits again, at its new deadline.
    Later(i64),
    /// Nothing is pending for it any more.
    Nothing,
}

/// The health of every device on this worker: the pure state machine of
/// the job, fed one reading at a time.
pub struct Health {
    spec: HealthSpec,
    /// The devices this worker has seen, in the order first seen; `slots`
    /// maps a device's interned index to its place here (`u32::MAX`: none).
    /// A lookup is one read of a small dense array, where a hash map's
    /// probe cost a cache miss of its own on a large fleet.
    devices: Vec<Device>,
    slots: Vec<u32>,
    /// The device of each entry of `devices` (for a checkpoint).
    ids: Vec<DeviceId>,
}

impl Health {
    /// No device seen yet.
    pub fn new(spec: HealthSpec) -> Health {
        Health { spec, devices: Vec::new(), slots: Vec::new(), ids: Vec::new() }
    }

    /// `device`'s state in `devices`, made empty if it has none.
    fn device_mut<'d>(
        devices: &'d mut Vec<Device>,
        slots: &mut Vec<u32>,
        ids: &mut Vec<DeviceId>,
        device: DeviceId,
    ) -> &'d mut Device {
        let i = device.index() as usize;
        if i >= slots.len() {
            slots.resize(i + 1, u32::MAX);
        }
        if slots[i] == u32::MAX {
            slots[i] = devices.len() as u32;
            devices.push(Device::default());
            ids.push(device);
        }
        &mut devices[slots[i] as usize]
    }

    /// Applies one on-time reading stamped with dataflow time `time`,
    /// pushing the events it causes. Returns the device's silence deadline
    /// when the device has to be queued for it (it was not waiting already:
    /// a device waits at one deadline at a time, see [`Health::decide`]).
    ///
    /// A reading stamped later than its device's deadline is itself the
    /// proof that the watermark passed the deadline while others reported:
    /// the silent fault starts (if the deadline's own decision has not come
    /// yet) and ends at this reading, whatever the batching.
    pub fn apply(&mut self, r: &Enriched, time: u64, out: &mut Vec<HealthEvent>) -> Option<i64> {
        let spec = &self.spec;
        let dev = Health::device_mut(&mut self.devices, &mut self.slots, &mut self.ids, r.device);
        if let (None, Some(newest)) = (dev.silent, dev.newest) {
            let deadline = newest.saturating_add(spec.silence.ms());
            if (deadline.max(0) as u64) < time {
                dev.silent = Some(deadline);
                out.push(silent_start(r.device, deadline, newest));
            }
        }
        if let Some(start) = dev.silent.take() {
            out.push(HealthEvent {
                event_id: format!("silent:{}:{start}", r.device),
                device_id: r.device,
                channel: None,
                kind: FaultKind::Silent,
                state: EventState::End,
                ts: r.ts,
                share: None,
                readings: None,
                last_ts: None,
                duration_ms: Some(r.ts - start),
            });
        }
        let newest = dev.newest.map_or(r.ts, |n| n.max(r.ts));
        dev.newest = Some(newest);
        let floor = newest.saturating_sub(spec.window.ms());
        if r.ts > floor {
            let mut e = Entry { ts: r.ts, values: 0, junk: 0 };
            let any_junk = !r.junk.is_empty();
            for (i, (c, v)) in r.raw.iter().enumerate() {
                if v.is_none() {
                    continue;
                }
                // A device usually sends its channels in one order: the
                // reading's i-th channel is then slot i.
                let slot = match dev.ids.get(i) {
                    Some(id) if id == c => i,
                    _ => match dev.slot(*c) {
                        Some(slot) => slot,
                        None => continue,
                    },
                };
                e.values |= 1 << slot;
                if any_junk && r.junk.contains(c) {
                    e.junk |= 1 << slot;
                }
            }
            dev.count(&e, true);
            dev.window.insert(e);
        }
        // Readings no longer within the window of the newest ts.
        while let Some(e) = dev.window.pop_through(floor) {
            dev.count(&e, false);
        }
        if dev.junk == 0 && dev.open == 0 {
            dev.counted = false;
        } else {
            dev.recount();
            let Device { channels, order, open, .. } = dev;
            for &slot in order.iter() {
                let n = &mut channels[slot as usize];
                if n.values == 0 {
                    continue;
                }
                let share = f64::from(n.junk) / f64::from(n.values);
                let state = match n.fault {
                    None if n.values >= spec.min_readings && share >= spec.junk_rise => {
                        n.fault = Some(r.ts);
                        *open += 1;
                        EventState::Start
                    }
                    Some(_) if share <= spec.junk_fall => EventState::End,
                    _ => continue,
                };
                let start = n.fault.expect("set or open");
                if state == EventState::End {
                    n.fault = None;
                    *open -= 1;
                }
                out.push(HealthEvent {
                    event_id: format!("junk:{}:{}:{start}", r.device, n.channel),
                    device_id: r.device,
                    channel: Some(n.channel),
                    kind: FaultKind::Junk,
                    state,
                    ts: r.ts,
                    share: Some(share),
                    readings: Some(n.values),
                    last_ts: None,
                    duration_ms: (state == EventState::End).then_some(r.ts - start),
                });
            }
        }
        let deadline = newest.saturating_add(spec.silence.ms());
        match dev.scheduled {
            Some(_) => None,
            None => {
                dev.scheduled = Some(deadline);
                Some(deadline)
            }
        }
    }

    /// Decides `device`'s wait at `deadline`, once the watermark has passed
    /// it while others reported: the device falls silent if the deadline is
    /// still its own, or waits again at its later one.
    pub fn decide(&mut self, device: DeviceId, deadline: i64) -> Decided {
        let spec = &self.spec;
        let slot = self.slots.get(device.index() as usize).copied().unwrap_or(u32::MAX);
        let Some(dev) = self.devices.as_mut_slice().get_mut(slot as usize) else { return Decided::Nothing };
        dev.scheduled = None;
        let Some(newest) = dev.newest else { return Decided::Nothing };
        if dev.silent.is_some() {
            return Decided::Nothing;
        }
        let current = newest.saturating_add(spec.silence.ms());
        if current > deadline {
            dev.scheduled = Some(current);
            return Decided::Later(current);
        }
        dev.silent = Some(current);
        Decided::Silent(silent_start(device, current, newest))
    }
}

/// The sensor-health operator's state: every device's health, the deadlines
/// not yet decided, and the newest beat.
struct HealthOp {
    health: Health,
    /// Deadlines not yet decided, each with its devices in the order queued.
    pending: BTreeMap<i64, Vec<DeviceId>>,
    newest_beat: Option<u64>,
}

/// What the sensor-health operator keeps across a checkpoint.
#[derive(Deserialize)]
struct SavedHealth {
    devices: Vec<(DeviceId, Device)>,
    pending: Vec<(i64, Vec<DeviceId>)>,
    newest_beat: Option<u64>,
}

impl Checkpointed for HealthOp {
    type Saved = SavedHealth;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        let h = &self.health;
        let devices = Pairs::new(h.ids.iter().zip(h.devices.iter()));
        snapshot::encode(&(devices, Pairs::new(self.pending.iter()), self.newest_beat))
    }

    fn restore(&mut self, saved: SavedHealth, owner: &Owner) {
        let h = &mut self.health;
        for (device, mut state) in saved.devices.into_iter().filter(|(d, _)| owner.owns(*d)) {
            debug_assert!(state.ids.len() == state.channels.len() && state.ids.len() <= MAX_CHANNELS);
            state.reorder();
            *Health::device_mut(&mut h.devices, &mut h.slots, &mut h.ids, device) = state;
        }
        for (deadline, devices) in saved.pending {
            let mine = devices.into_iter().filter(|d| owner.owns(*d));
            self.pending.entry(deadline).or_default().extend(mine);
        }
        self.pending.retain(|_, v| !v.is_empty());
        self.newest_beat = self.newest_beat.max(saved.newest_beat);
    }
}

/// The heartbeats' state on one worker: the newest time it got readings at,
/// and the newest beat it sent.
#[derive(Default)]
struct Beats {
    newest: Option<u64>,
    sent: Option<u64>,
}

impl Checkpointed for Beats {
    type Saved = (Option<u64>, Option<u64>);

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        snapshot::encode(&(self.newest, self.sent))
    }

    fn restore(&mut self, (newest, sent): (Option<u64>, Option<u64>), _owner: &Owner) {
        self.newest = self.newest.max(newest);
        self.sent = self.sent.max(sent);
    }
}

/// The start of `device`'s silent fault at `deadline`, its newest `ts` before.
fn silent_start(device: DeviceId, deadline: i64, newest: i64) -> HealthEvent {
    HealthEvent {
        event_id: format!("silent:{device}:{deadline}"),
        device_id: device,
        channel: None,
        kind: FaultKind::Silent,
        state: EventState::Start,
        ts: deadline,
        share: None,
        readings: None,
        last_ts: Some(newest),
        duration_ms: None,
    }
}

/// The sensor-health operator over a flow of on-time readings.
pub fn health<'s>(on_time: Flow<'s, Enriched>, spec: HealthSpec, name: &str) -> StreamVec<'s, u64, HealthEvent> {
    let readings = on_time.into_shared();
    // Every worker learns the times at which any worker got readings: the
    // "other devices go on reporting" of a silent fault.
    let every = (spec.silence.ms() / 180).max(1) as u64;
    let beats = heartbeats(readings.clone(), every, &format!("{name}.beats")).broadcast();
    operator(readings, beats, spec, name)
}

/// The newest time at which this worker got readings, sent at most once
/// every `every` of dataflow time (and when the input ends): a beat per
/// epoch was a broadcast, and a progress update, per epoch per worker.
/// The beat's capability is held meanwhile, so a deadline is decided (by
/// the newest beat after it) at most `every` later, never differently.
fn heartbeats<'s, C: Batch<Enriched>>(readings: Stream<'s, u64, C>, every: u64, name: &str) -> StreamVec<'s, u64, u64> {
    let name_owned = name.to_string();
    readings.unary_frontier(Pipeline, name, move |cap, _info| {
        let beats = Rc::new(RefCell::new(Beats::default()));
        snapshot::register(&name_owned, &beats);
        // A capability at or below `newest` while it is unsent (a restored
        // beat that was unsent: at it).
        let mut held: Option<Capability<u64>> = match *beats.borrow() {
            Beats { newest: Some(n), sent } if sent.is_none_or(|s| s < n) => {
                let mut cap = cap;
                cap.downgrade(&n);
                Some(cap)
            }
            _ => None,
        };
        move |(input, frontier), output| {
            let mut beats = beats.borrow_mut();
            let Beats { newest, sent } = &mut *beats;
            input.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                if !data.records().is_empty() && newest.is_none_or(|n| t > n) {
                    *newest = Some(t);
                    if held.is_none() {
                        held = Some(cap.delayed(&t, 0));
                    }
                }
            });
            let (Some(n), Some(h)) = (*newest, held.as_ref()) else { return };
            let frontier = frontier.frontier();
            // Send when the beat is `every` past the last one, when the input
            // has moved `every` past it (no newer readings are coming soon),
            // or when the input has ended.
            let due = sent.is_none_or(|s| n >= s.saturating_add(every))
                || !frontier.less_equal(&n.saturating_add(every))
                || frontier.is_empty()
                // A checkpoint's cut: the input has passed `t - 1`.
                || snapshot::cut().is_some_and(|t| !frontier.less_equal(&t.saturating_sub(2)));
            if due {
                output.session(&h.delayed(&n)).give(n);
                *sent = Some(n);
                held = None;
            }
        }
    })
}

fn operator<'s, C: Batch<Enriched>>(
    readings: Stream<'s, u64, C>,
    beats: StreamVec<'s, u64, u64>,
    spec: HealthSpec,
    name: &str,
) -> StreamVec<'s, u64, HealthEvent> {
    let name_owned = name.to_string();
    readings.binary_frontier(beats, Pipeline, Pipeline, name, move |cap, _info| {
        // Deadlines not yet decided: (deadline, device), and a capability
        // at the least of them.
        let op =
            Rc::new(RefCell::new(HealthOp { health: Health::new(spec), pending: BTreeMap::new(), newest_beat: None }));
        snapshot::register(&name_owned, &op);
        // Restored deadlines are held at the least of them, as they were.
        let mut held: Option<Capability<u64>> = op.borrow().pending.first_key_value().map(|(&least, _)| {
            let mut cap = cap;
            cap.downgrade(&(least.max(0) as u64));
            cap
        });
        let mut out = Vec::new();
        move |(input, frontier), (beats, beats_frontier), output| {
            let mut op = op.borrow_mut();
            let HealthOp { health, pending, newest_beat } = &mut *op;
            beats.for_each(|_, data| {
                for t in data.drain(..) {
                    *newest_beat = Some(newest_beat.map_or(t, |n| n.max(t)));
                }
            });
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                for r in data.records() {
                    let Some(deadline) = health.apply(r, time, &mut out) else { continue };
                    pending.entry(deadline).or_default().push(r.device);
                    let at = (deadline.max(0) as u64).max(time);
                    if held.as_ref().is_none_or(|h| at < *h.time()) {
                        held = Some(cap.delayed(&at, 0));
                    }
                }
                if !out.is_empty() {
                    output.session(&cap).give_iterator(out.drain(..));
                }
            });
            // A deadline is decided once no reading at or before it can still
            // come (both frontiers have passed it): it starts a fault when a
            // reading stamped later exists, and nothing once the input ends.
            let (frontier, beats_frontier) = (frontier.frontier(), beats_frontier.frontier());
            let ended = frontier.is_empty() && beats_frontier.is_empty();
            while let Some((&deadline, _)) = pending.first_key_value() {
                let at = deadline.max(0) as u64;
                if frontier.less_equal(&at) || beats_frontier.less_equal(&at) {
                    break;
                }
                let passed = newest_beat.is_some_and(|b| b > at);
                if !passed && !ended {
                    break;
                }
                let devices = pending.pop_first().map(|(_, d)| d).unwrap_or_default();
                if passed {
                    for device in devices {
                        match health.decide(device, deadline) {
                            Decided::Silent(e) => out.push(e),
                            Decided::Later(d) => pending.entry(d).or_default().push(device),
                            Decided::Nothing => {}
                        }
                    }
                    // A capability only for a deadline that starts a fault:
                    // most find their device reported since, and a capability
                    // at each of their (millisecond) times would cost the
                    // progress tracker more than the decisions themselves.
                    if !out.is_empty() {
                        let held = held.as_ref().expect("held at or below the least pending deadline");
                        output.session(&held.delayed(&at.max(*held.time()))).give_iterator(out.drain(..));
                    }
                }
            }
            // At a checkpoint's cut, once both inputs have passed `t - 1`, an
            // undecided deadline no longer holds the output below it (its
            // fault, if it starts one, goes out at `t - 1` or later).
            let floor = snapshot::cut()
                .map(|t| t.saturating_sub(1))
                .filter(|f| {
                    !frontier.less_equal(&(f.saturating_sub(1))) && !beats_frontier.less_equal(&(f.saturating_sub(1)))
                })
                .unwrap_or(0);
            match pending.first_key_value() {
                Some((&next, _)) => {
                    if let Some(h) = held.as_mut() {
                        let to = (next.max(0) as u64).max(floor).max(*h.time());
                        h.downgrade(&to);
                    }
                }
                None => held = None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::reading::{ChannelList, Position, Values};
    use eddy_operators::snapshot::Restored;

    fn reading(device: &str, ts: i64, values: &[(&str, Option<f64>)], junk: &[&str]) -> Enriched {
        let values: Values = values.iter().map(|(c, v)| (Channel::intern(c), *v)).collect();
        Enriched {
            device: DeviceId::intern(device),
            ts,
            pos: Position::line(1),
            late: false,
            future: false,
            values: values.clone(),
            raw: values,
            calibrated: ChannelList::new(),
            context: None,
            junk: junk.iter().map(|c| Channel::intern(c)).collect(),
        }
    }

    /// The inline window against a plain sorted list, over a long run of
    /// mostly in-order readings, some late ones and a moving floor.
    #[test]
    fn the_inline_window_keeps_what_a_sorted_list_keeps() {
        let mut w = Window::default();
        let mut model: Vec<Entry> = Vec::new();
        let mut seed = 7u64;
        let mut newest = 0i64;
        for i in 0..5_000u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let jitter = (seed >> 33) % 10;
            // One reading in ten is up to 40 behind the newest.
            let ts = if jitter == 0 { newest - ((seed >> 40) % 40) as i64 } else { newest + 5 };
            newest = newest.max(ts);
            let e = Entry { ts, values: i, junk: 0 };
            w.insert(e);
            let at = model.partition_point(|x| x.ts <= ts);
            model.insert(at, e);
            let floor = newest - 60;
            let mut popped = Vec::new();
            while let Some(e) = w.pop_through(floor) {
                popped.push(e.values);
            }
            let cut = model.iter().take_while(|e| e.ts <= floor).count();
            let expected: Vec<u64> = model.drain(..cut).map(|e| e.values).collect();
            assert_eq!(popped, expected, "popped at step {i}");
            let live: Vec<(i64, u64)> = w.live().iter().map(|e| (e.ts, e.values)).collect();
            let want: Vec<(i64, u64)> = model.iter().map(|e| (e.ts, e.values)).collect();
            assert_eq!(live, want, "window at step {i}");
        }
    }

    /// A device that reports far more often than the window's inline room
    /// (a reading a second, an hour's window) keeps only about twice its
    /// live readings, however long it runs.
    #[test]
    fn a_long_window_keeps_its_storage_bounded() {
        let mut w = Window::default();
        for ts in 0..100_000i64 {
            w.insert(Entry { ts, values: 1, junk: 0 });
            while w.pop_through(ts - 3_600).is_some() {}
            assert!(w.entries.len() <= 2 * 3_600 + 2, "{} entries at {ts}", w.entries.len());
        }
        assert_eq!(w.live().len(), 3_600);
    }

    fn spec() -> HealthSpec {
        HealthSpec {
            window: Millis::HOUR,
            junk_rise: 0.5,
            junk_fall: 0.1,
            min_readings: 6,
            silence: Millis(30 * 60_000),
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn a_junk_streak_starts_a_fault_at_the_rise_and_ends_it_at_the_fall() {
        let mut h = Health::new(spec());
        let mut out = Vec::new();
        // Five clean readings, then junk: at the 10th value 5/10 are junk.
        for i in 0..10 {
            let junk: &[&str] = if i >= 5 { &["pm25"] } else { &[] };
            h.apply(&reading("d", i * 5 * MIN, &[("pm25", Some(1.0))], junk), 0, &mut out);
        }
        assert_eq!(out.len(), 1, "{out:?}");
        let e = &out[0];
        assert_eq!(
            (e.kind, e.state, e.ts, e.share, e.readings),
            (FaultKind::Junk, EventState::Start, 45 * MIN, Some(0.5), Some(10))
        );
        assert_eq!(e.event_id, format!("junk:d:pm25:{}", 45 * MIN));
        assert_eq!(e.channel, Some(Channel::intern("pm25")));
        // Clean again: the junk leaves the one-hour window as clean values come.
        out.clear();
        let mut t = 50 * MIN;
        while out.is_empty() {
            h.apply(&reading("d", t, &[("pm25", Some(1.0))], &[]), 0, &mut out);
            t += 5 * MIN;
        }
        let e = &out[0];
        assert_eq!((e.state, e.event_id.as_str()), (EventState::End, format!("junk:d:pm25:{}", 45 * MIN).as_str()));
        assert!(e.share.unwrap() <= 0.1, "{e:?}");
        assert_eq!(e.duration_ms, Some(e.ts - 45 * MIN));
    }

    #[test]
    fn too_few_values_start_nothing() {
        let mut h = Health::new(spec());
        let mut out = Vec::new();
        for i in 0..5 {
            h.apply(&reading("d", i * MIN, &[("co2", Some(1.0))], &["co2"]), 0, &mut out);
        }
        assert!(out.is_empty());
        h.apply(&reading("d", 5 * MIN, &[("co2", Some(1.0))], &["co2"]), 0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn null_values_do_not_count_and_old_readings_are_outside_the_window() {
        let mut h = Health::new(spec());
        let mut out = Vec::new();
        for i in 0..6 {
            h.apply(&reading("d", 120 * MIN + i * MIN, &[("pm25", None), ("co2", Some(1.0))], &[]), 0, &mut out);
        }
        // Six junk pm25 values from before the window: not counted.
        for i in 0..6 {
            h.apply(&reading("d", i * MIN, &[("pm25", Some(9e9))], &["pm25"]), 0, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_device_falls_silent_at_its_deadline_and_recovers_at_its_next_reading() {
        let mut h = Health::new(spec());
        let mut out = Vec::new();
        let deadline = h.apply(&reading("d", 10 * MIN, &[("pm25", Some(1.0))], &[]), 0, &mut out).unwrap();
        assert_eq!(deadline, 40 * MIN);
        // Waiting already: a later reading queues nothing; its decision
        // at the old deadline sends the device to wait at the new one.
        assert_eq!(h.apply(&reading("d", 12 * MIN, &[("pm25", Some(1.0))], &[]), 0, &mut out), None);
        assert_eq!(h.decide(DeviceId::intern("d"), deadline), Decided::Later(42 * MIN));
        let deadline = 42 * MIN;
        let Decided::Silent(e) = h.decide(DeviceId::intern("d"), deadline) else { panic!("falls silent") };
        assert_eq!(
            (e.kind, e.state, e.ts, e.last_ts, e.channel),
            (FaultKind::Silent, EventState::Start, deadline, Some(12 * MIN), None)
        );
        assert_eq!(h.decide(DeviceId::intern("d"), deadline), Decided::Nothing, "already silent");
        h.apply(&reading("d", 70 * MIN, &[("pm25", Some(1.0))], &[]), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].state, out[0].ts, out[0].duration_ms), (EventState::End, 70 * MIN, Some(28 * MIN)));
        assert_eq!(out[0].event_id, e.event_id);
    }

    /// Regression: a device that comes back before its deadline's decision
    /// reached the operator lost its whole fault.
    #[test]
    fn a_reading_stamped_past_the_deadline_starts_and_ends_the_fault_itself() {
        let mut h = Health::new(spec());
        let mut out = Vec::new();
        let deadline = h.apply(&reading("d", 10 * MIN, &[("pm25", Some(1.0))], &[]), 0, &mut out).unwrap();
        // Back at 70 min, stamped at 55 min (> the 40 min deadline).
        h.apply(&reading("d", 70 * MIN, &[("pm25", Some(1.0))], &[]), (55 * MIN) as u64, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].state, out[0].ts, out[0].last_ts), (EventState::Start, deadline, Some(10 * MIN)));
        assert_eq!((out[1].state, out[1].ts, out[1].duration_ms), (EventState::End, 70 * MIN, Some(30 * MIN)));
        assert_eq!(out[0].event_id, out[1].event_id);
        // The deadline's own decision, arriving later, starts nothing: the
        // device waits at its new deadline.
        assert_eq!(h.decide(DeviceId::intern("d"), deadline), Decided::Later(100 * MIN));
        // Stamped at the deadline itself: the watermark has not passed it.
        out.clear();
        h.apply(&reading("e", 10 * MIN, &[("pm25", Some(1.0))], &[]), 0, &mut out);
        h.apply(&reading("e", 45 * MIN, &[("pm25", Some(1.0))], &[]), (40 * MIN) as u64, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    /// A reading of device `d` (0..) at epoch `e` of five minutes, or none:
    /// each device goes quiet for 35 minutes every 85, and sends junk PM2.5
    /// for half an hour every hour and five minutes.
    fn fleet_reading(device: DeviceId, d: i64, e: i64) -> Option<Enriched> {
        if (e + 3 * d) % 17 >= 10 {
            return None;
        }
        let ts = e * 5 * MIN + (d * 13_000) % (5 * MIN);
        let junk: &[&str] = if (e + d) % 13 < 6 { &["pm25"] } else { &[] };
        let mut r = reading("x", ts, &[("pm25", Some(1.0)), ("co2", Some(400.0)), ("hum", None)], junk);
        if d % 3 == 0 {
            r.raw.reverse();
        }
        r.device = device;
        Some(r)
    }

    fn fleet() -> Vec<DeviceId> {
        (0..24).map(|d| DeviceId::intern(&format!("health-snap-{d}"))).collect()
    }

    const EPOCHS: i64 = 60;

    /// Runs the heartbeats and the operator on `workers` workers over
    /// [`EPOCHS`] epochs, each worker fed the readings of the devices it
    /// owns. Without `from`, pauses at time `t` once both inputs of the
    /// operator are at `t - 1`, saves the state, and goes on; with `from`,
    /// starts at `t` from it. Returns the events sent after the pause (or
    /// the start), by worker, in the order sent, and the state saved.
    /// The events of `rx` so far, with their times.
    fn events_of(
        rx: &std::sync::mpsc::Receiver<timely::dataflow::operators::capture::Event<u64, Vec<HealthEvent>>>,
    ) -> Vec<(u64, HealthEvent)> {
        use timely::dataflow::operators::capture::Event;
        let mut got = Vec::new();
        for event in rx.try_iter() {
            if let Event::Messages(stamp, data) = event {
                let time = stamp.into_elements().pop().expect("one time");
                got.extend(data.into_iter().map(|r| (time, r)));
            }
        }
        got
    }

    /// A run: the events sent before the pause (none when restoring), those
    /// sent after it, and the state saved at it.
    type Fleet = (Vec<(u64, HealthEvent)>, Vec<(u64, HealthEvent)>, Restored);

    fn run_fleet(workers: usize, t: i64, from: Option<Arc<Restored>>) -> Fleet {
        use timely::dataflow::operators::capture::Capture;
        use timely::dataflow::operators::{Input, Probe};
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let owner = Owner::new(worker.index(), worker.peers());
            let restoring = from.is_some();
            snapshot::install(owner, from.clone(), None);
            let (mut input, probe, rx) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, readings) = scope.new_input::<Vec<Enriched>>();
                let (probe, readings) = readings.probe();
                let beats = heartbeats(readings.clone(), 10_000, "h.beats").broadcast().probe_with(&probe);
                (input, probe, operator(readings, beats, spec(), "h").capture())
            });
            assert!(snapshot::take_errors().is_empty());
            let devices = fleet();
            let mut saved = Vec::new();
            let mut before = Vec::new();
            let first = if restoring { t / (5 * MIN) } else { 0 };
            for e in first..EPOCHS {
                let time = e * 5 * MIN;
                if time == t && !restoring {
                    input.advance_to((t - 1) as u64);
                    worker.step_while(|| probe.less_than(&((t - 1) as u64)));
                    for _ in 0..10 {
                        worker.step();
                    }
                    saved = snapshot::save_all().expect("saves");
                    // What was sent before the pause (this worker's operator
                    // sends only while this worker steps).
                    before = events_of(&rx);
                }
                input.advance_to(time as u64);
                let mine = devices.iter().enumerate().filter(|(_, x)| owner.owns(**x));
                input.send_batch(&mut mine.filter_map(|(d, x)| fleet_reading(*x, d as i64, e)).collect());
                worker.step_while(|| probe.less_than(&(time as u64)));
                for _ in 0..4 {
                    worker.step();
                }
            }
            drop(input);
            while worker.step_or_park(None) {}
            snapshot::uninstall();
            (worker.index(), saved, before, events_of(&rx))
        })
        .expect("timely runs");
        let mut results: Vec<_> = guards.join().into_iter().map(|r| r.expect("a worker")).collect();
        results.sort_by_key(|(i, _, _, _)| *i);
        let mut restored = Restored::default();
        let (mut pre, mut post) = (Vec::new(), Vec::new());
        for (_, saved, before, after) in results {
            for (name, bytes) in saved {
                restored.insert(&name, bytes);
            }
            pre.extend(before);
            post.extend(after);
        }
        (pre, post, restored)
    }

    /// The events, without the dataflow times they were sent at, sorted.
    /// With several workers a beat may come a little later or sooner, so a
    /// silent fault may be decided (and sent) at another time, never
    /// differently; the events themselves are the same.
    fn sorted(events: Vec<(u64, HealthEvent)>) -> Vec<HealthEvent> {
        let mut events: Vec<HealthEvent> = events.into_iter().map(|(_, e)| e).collect();
        events.sort_by(|x, y| (&x.event_id, x.state as u8).cmp(&(&y.event_id, y.state as u8)));
        events
    }

    /// A run restored from a checkpoint sends, from the checkpoint on, what
    /// a run that wrote it sends: on one worker at the same times and in the
    /// same order; whatever the numbers of workers, what the run that saved
    /// sent before the checkpoint and what the restored run sends after it
    /// are together exactly what a clean run sends, none lost and none twice.
    /// A silent fault decided after the checkpoint at a deadline before it
    /// goes out at that deadline, as it did.
    #[test]
    fn a_restored_run_sends_what_a_clean_run_sends() {
        let t = 31 * 5 * MIN;
        let (pre, clean, saved_one) = run_fleet(1, t, None);
        let all = |pre: &[(u64, HealthEvent)], post: &[(u64, HealthEvent)]| sorted([pre, post].concat());
        let whole = all(&pre, &clean);
        let kinds = |k: FaultKind, s: EventState| clean.iter().filter(|(_, e)| e.kind == k && e.state == s).count();
        assert!(kinds(FaultKind::Silent, EventState::Start) > 5 && kinds(FaultKind::Junk, EventState::End) > 5);
        assert!(clean
            .iter()
            .any(|(_, e)| e.kind == FaultKind::Junk && e.state == EventState::End && e.duration_ms > Some(e.ts - t)));
        assert_eq!(saved_one.names().collect::<Vec<_>>(), ["h", "h.beats"]);
        let (none, restored, _) = run_fleet(1, t, Some(Arc::new(saved_one)));
        assert!(none.is_empty());
        assert!(restored == clean, "restored at -w 1 from -w 1");
        let (pre_two, post_two, saved_two) = run_fleet(2, t, None);
        assert!(all(&pre_two, &post_two) == whole, "-w 2 sends what -w 1 sends");
        let saved_two = Arc::new(saved_two);
        for workers in [1, 3] {
            let (_, restored, _) = run_fleet(workers, t, Some(Arc::clone(&saved_two)));
            assert!(all(&pre_two, &restored) == whole, "restored at -w {workers} from -w 2");
        }
    }

    /// The state saved by two workers restores on three: every device's
    /// health and pending deadline on its owner alone, the newest beat on
    /// all, and the restored states go on as the original does.
    #[test]
    fn health_saved_by_two_workers_is_shared_out_among_three() {
        let devices = fleet();
        let fresh = || HealthOp { health: Health::new(spec()), pending: BTreeMap::new(), newest_beat: None };
        // Applies epochs `es` to the state of each device's owner, and
        // decides every deadline before the last epoch; returns the
        // events by device.
        let feed = |ops: &mut [HealthOp], es: std::ops::Range<i64>| {
            let peers = ops.len();
            let owner = |x: DeviceId| (0..peers).find(|i| Owner::new(*i, peers).owns(x)).expect("an owner");
            let mut events: BTreeMap<DeviceId, Vec<HealthEvent>> = BTreeMap::new();
            for e in es {
                let time = (e * 5 * MIN) as u64;
                for (d, x) in devices.iter().enumerate() {
                    let Some(r) = fleet_reading(*x, d as i64, e) else { continue };
                    let op = &mut ops[owner(*x)];
                    let mut out = Vec::new();
                    if let Some(deadline) = op.health.apply(&r, time, &mut out) {
                        op.pending.entry(deadline).or_default().push(*x);
                    }
                    events.entry(*x).or_default().extend(out);
                }
                for op in ops.iter_mut() {
                    op.newest_beat = Some(time);
                    while let Some(entry) = op.pending.first_entry() {
                        if *entry.key() >= time as i64 {
                            break;
                        }
                        let (deadline, due) = entry.remove_entry();
                        for x in due {
                            match op.health.decide(x, deadline) {
                                Decided::Silent(ev) => events.entry(x).or_default().push(ev),
                                Decided::Later(d) => op.pending.entry(d).or_default().push(x),
                                Decided::Nothing => {}
                            }
                        }
                    }
                }
            }
            events
        };
        let mut whole = [fresh()];
        let mut two = [fresh(), fresh()];
        feed(&mut whole, 0..31);
        feed(&mut two, 0..31);
        let saved: Vec<Vec<u8>> = two.iter().map(|op| op.save().expect("saves")).collect();
        let mut three = [fresh(), fresh(), fresh()];
        for (index, op) in three.iter_mut().enumerate() {
            let owner = Owner::new(index, 3);
            for bytes in &saved {
                op.restore(eddy_checkpoint::decode(bytes).expect("decodes"), &owner);
            }
            assert_eq!(op.newest_beat, Some(30 * 5 * MIN as u64));
            assert!(op.health.ids.iter().all(|x| owner.owns(*x)));
            assert!(op.pending.values().flatten().all(|x| owner.owns(*x)));
        }
        // Every device once, on its owner, as it was.
        let state = |ops: &[HealthOp]| {
            let mut devices: Vec<(DeviceId, String)> = Vec::new();
            let mut pending: Vec<(i64, DeviceId)> = Vec::new();
            for op in ops {
                let h = &op.health;
                for (x, dev) in h.ids.iter().zip(&h.devices) {
                    // Found through its slot.
                    assert_eq!(h.ids[h.slots[x.index() as usize] as usize], *x);
                    devices.push((*x, format!("{dev:?}")));
                }
                pending.extend(op.pending.iter().flat_map(|(t, v)| v.iter().map(move |x| (*t, *x))));
            }
            devices.sort();
            pending.sort();
            (devices, pending)
        };
        let (want, got) = (state(&whole), state(&three));
        assert_eq!(got.0.len(), devices.len());
        assert!(!want.1.is_empty());
        assert_eq!(got, want);
        let want = feed(&mut whole, 31..EPOCHS);
        let got = feed(&mut three, 31..EPOCHS);
        assert_eq!(got, want);
        assert!(want
            .values()
            .flatten()
            .any(|e| e.state == EventState::End && e.ts - e.duration_ms.unwrap() < 31 * 5 * MIN));
    }

    #[test]
    fn the_spec_is_checked_by_key() {
        let p = PipelineSpec::builtin();
        let bad = HealthSpec { junk_fall: 0.6, ..spec() };
        let e = SensorHealth::check(&bad, &p, "h.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("junk_fall"));
        let s: HealthSpec = SensorHealth::parse(SensorHealth::DEFAULT_SPEC.unwrap(), "h.toml").unwrap();
        assert_eq!(s, spec());
    }
}
