//! The enrich job: calibration and device context, as of each reading's time.
//!
//! Readings arrive partitioned by device (the same routing as the reference
//! arrangement) and wait, in arrival order per device, until the
//! arrangement's frontier has passed their lookup time, so that every reference change that applies
//! to them is in. Then a batch of readings is looked up against the trace:
//! each reading sees the reference data as of its `ts` (clamped to the
//! retained history; see [`lookup_time`]).

use rustc_hash::FxHashMap as HashMap;

use differential_dataflow::operators::arrange::Arranged;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use eddy_core::ids::DeviceId;
use eddy_core::reading::{ChannelList, Context, Enriched, Reading, Values};
use eddy_core::reference::{calibration_as_of, Calibration, DeviceRef};

use differential_dataflow::trace::cursor::{Cursor, Navigable};

use crate::lookup::{as_of, compact_to, histories, max_time, History, Waiting};
use crate::reference::DeviceTrace;
use crate::TOUCH_AHEAD;

/// The reference time a reading is looked up at: its `ts`, but no earlier than
/// `retention_ms` before its dataflow time `t` (the reference history older
/// than that is compacted away). Both are fixed by the input, so the result
/// does not depend on scheduling or the number of workers.
pub fn lookup_time(ts: i64, t: u64, retention_ms: i64) -> u64 {
    let floor = (t as i64).saturating_sub(retention_ms).max(0);
    ts.max(floor) as u64
}

/// The reference data of one device as of a time.
#[derive(Default)]
pub struct DeviceView {
    /// The context, if the device is known.
    pub context: Option<Context>,
    /// The calibration versions present.
    pub calibrations: Vec<Calibration>,
}

impl DeviceView {
    /// Reads the first word of the calibrations and of the context, which
    /// [`enrich_reading`] reads first. The result means nothing.
    fn touch(&self) -> i64 {
        let cal = self.calibrations.first().map_or(0, |c| c.valid_from);
        cal.wrapping_add(self.context.as_ref().map_or(0, |c| c.len() as i64))
    }

    /// The view of `history` as of `time`.
    pub fn of(history: &History<DeviceRef>, time: u64) -> DeviceView {
        let mut view = DeviceView::default();
        for v in as_of(history, time) {
            match v {
                DeviceRef::Context(c) => view.context = Some(c),
                DeviceRef::Calibration(c) => view.calibrations.push(c),
            }
        }
        view
    }
}

/// Applies validation results, calibration and context to a reading.
pub fn enrich_reading(r: Reading, view: &DeviceView) -> Enriched {
    let mut values = Values::new();
    let mut calibrated = ChannelList::new();
    for (c, v) in r.values.iter() {
        let out = match v {
            None => None,
            Some(_) if r.junk.contains(c) => None,
            Some(x) => match calibration_as_of(&view.calibrations, *c, r.ts) {
                Some(cal) => {
                    calibrated.push(*c);
                    Some(cal.apply(*x))
                }
                None => Some(*x),
            },
        };
        values.push((*c, out));
    }
    Enriched {
        device: r.device,
        ts: r.ts,
        pos: r.pos,
        late: r.late,
        values,
        raw: r.values,
        calibrated,
        context: view.context.clone(),
        junk: r.junk,
    }
}

/// Readings per output container, at most. A container holds only on-time
/// or only late readings: the backup reads every reading and the other jobs
/// only the on-time ones, so `on_time` then passes a shared batch on whole
/// or drops it, and never copies records out of a batch that the backup's
/// writer thread still holds.
const OUT_BATCH: usize = 1024;

/// Each device's view as of the end of its reference history, with the
/// history's last time, kept between activations so that a device's history
/// is read from the trace only when it changes. An entry is dropped when a
/// reference batch holds an update of its device, which reaches the operator
/// in the same activation as the trace does, before any lookup. Compaction
/// does not change the view as of any time a reading can ask for. The cache
/// holds at most `MAX` devices per worker; past that it starts over.
#[derive(Default)]
struct ViewCache {
    map: HashMap<DeviceId, (u64, DeviceView)>,
}

impl ViewCache {
    const MAX: usize = 1 << 16;
}

/// The enrich operator: see the module docs.
pub fn enrich<'s>(
    readings: StreamVec<'s, u64, Reading>,
    reference: Arranged<'s, DeviceTrace>,
    retention_ms: i64,
    name: &str,
) -> StreamVec<'s, u64, Enriched> {
    let mut trace = reference.trace;
    readings.binary_frontier(
        reference.stream,
        Exchange::new(|r: &Reading| r.device.route()),
        Pipeline,
        name,
        move |_cap, _info| {
            let mut stash: Waiting<Reading> = Waiting::default();
            // The view of each device as of the end of its history, kept
            // between activations: see `ViewCache`.
            let mut views = ViewCache::default();
            move |(input, frontier), (refs, ref_frontier), output| {
                input.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(0) {
                        stash.push(cap, std::mem::take(data));
                    }
                });
                // A device with a new reference update is looked up again.
                refs.for_each(|_, batches| {
                    for batch in batches.iter().filter_map(|span| span.inner.as_ref()) {
                        let mut cursor = batch.cursor();
                        while let Some(key) = cursor.get_key(batch) {
                            views.map.remove(key);
                            cursor.step_key(batch);
                        }
                    }
                });

                // The ready readings, in arrival order per device.
                let rf = ref_frontier.frontier();
                let ready = stash.take_ready_by(
                    rf,
                    |r| u64::from(r.device.index()),
                    |r, t| !rf.less_equal(&lookup_time(r.ts, t, retention_ms)),
                );

                if !ready.is_empty() {
                    let mut keys: Vec<DeviceId> = ready
                        .iter()
                        .flat_map(|(_, b)| b.iter().map(|r| r.device))
                        .filter(|d| !views.map.contains_key(d))
                        .collect();
                    keys.sort();
                    keys.dedup();
                    if views.map.len() + keys.len() > ViewCache::MAX {
                        views.map.clear();
                        keys = ready.iter().flat_map(|(_, b)| b.iter().map(|r| r.device)).collect();
                        keys.sort();
                        keys.dedup();
                    }
                    for (k, h) in keys.iter().zip(histories(&mut trace, &keys)) {
                        views.map.insert(*k, (max_time(&h), DeviceView::of(&h, u64::MAX)));
                    }
                    for (cap, batch) in ready {
                        let t = *cap.time();
                        let mut session = output.session(&cap);
                        // Each container holds only on-time or only late
                        // readings (see `OUT_BATCH`).
                        let mut left = batch.len();
                        let mut run: Vec<Enriched> = Vec::new();
                        let mut give = |e: Enriched| {
                            if run.len() == OUT_BATCH || run.last().is_some_and(|l| l.late != e.late) {
                                session.give_container(&mut std::mem::take(&mut run));
                            }
                            if run.capacity() == 0 {
                                run.reserve_exact(left.min(OUT_BATCH));
                            }
                            run.push(e);
                            left -= 1;
                        };
                        let mut batch = batch.into_iter();
                        for n in 0.. {
                            if n % TOUCH_AHEAD == 0 {
                                // Bring the next readings' views into the
                                // cache together (see `TOUCH_AHEAD`).
                                for r in batch.as_slice().iter().take(TOUCH_AHEAD) {
                                    if let Some((_, view)) = views.map.get(&r.device) {
                                        std::hint::black_box(view.touch());
                                    }
                                }
                            }
                            let Some(r) = batch.next() else { break };
                            let time = lookup_time(r.ts, t, retention_ms);
                            let (latest, view) = &views.map[&r.device];
                            if time >= *latest {
                                give(enrich_reading(r, view));
                            } else {
                                // Older than the device's last update: its history, as of `time`.
                                let hist = histories(&mut trace, &[r.device]);
                                let view = hist.first().map(|h| DeviceView::of(h, time)).unwrap_or_default();
                                give(enrich_reading(r, &view));
                            }
                        }
                        if !run.is_empty() {
                            session.give_container(&mut run);
                        }
                    }
                }

                // Let the trace forget history no pending or future reading can ask for.
                let low = stash.low(frontier.frontier());
                if let Some(low) = low {
                    let mut target = (low as i64).saturating_sub(retention_ms).max(0) as u64;
                    if let Some(r) = rf.iter().copied().min() {
                        target = target.min(r);
                    }
                    compact_to(&mut trace, target);
                }
            }
        },
    )
}
