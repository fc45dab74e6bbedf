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
use eddy_core::keys::Placement;
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

/// The reference time reading `r`, at dataflow time `t`, is looked up at:
/// [`lookup_time`], or `t` itself for a future reading (its `ts` is not to
/// be trusted, and the reference data as of it may never be known).
pub fn lookup_time_of(r: &Reading, t: u64, retention_ms: i64) -> u64 {
    if r.future {
        t
    } else {
        lookup_time(r.ts, t, retention_ms)
    }
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
        future: r.future,
        values,
        raw: r.values,
        calibrated,
        context: view.context.clone(),
        junk: r.junk,
    }
}

/// Readings per output container, at most. A container holds only on-time
/// or only late and future readings: the backup reads every reading and the other jobs
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
struct ViewCache {
    map: HashMap<DeviceId, (u64, DeviceView)>,
    max: usize,
}

impl ViewCache {
    const MAX: usize = 1 << 16;
}

/// The enrich job's decisions, without timely: when a reading is ready for
/// its lookup, the cache of device views, the lookups themselves, the output
/// containers, and how far the reference trace may be compacted.
///
/// The trace is read through a `histories` function the operator passes in
/// (for sorted, distinct devices, each one's history: [`histories`] on the
/// trace), so the lookups can be tested on plain histories.
pub struct Enricher {
    retention_ms: i64,
    views: ViewCache,
}

impl Enricher {
    /// An enricher that keeps `retention_ms` of reference history behind
    /// its readings (see [`lookup_time`]).
    pub fn new(retention_ms: i64) -> Enricher {
        Enricher::with_cache(retention_ms, ViewCache::MAX)
    }

    fn with_cache(retention_ms: i64, max: usize) -> Enricher {
        Enricher { retention_ms, views: ViewCache { map: HashMap::default(), max } }
    }

    /// True when reading `r`, at dataflow time `t`, can be looked up: the
    /// reference frontier (its least time `reference_low`, `None` once the
    /// reference input has ended) has passed its lookup time.
    pub fn ready(&self, r: &Reading, t: u64, reference_low: Option<u64>) -> bool {
        reference_low.is_none_or(|low| low > lookup_time_of(r, t, self.retention_ms))
    }

    /// A reference batch updates `device`: its view is read again.
    pub fn updated(&mut self, device: &DeviceId) {
        self.views.map.remove(device);
    }

    /// Before the ready readings are enriched: reads the views of their
    /// `devices` that are not cached, through `histories`. Past the cache's
    /// bound it starts over, with the views of these devices alone.
    pub fn prepare(
        &mut self,
        devices: impl Iterator<Item = DeviceId> + Clone,
        histories: impl FnOnce(&[DeviceId]) -> Vec<History<DeviceRef>>,
    ) {
        let map = &mut self.views.map;
        let mut keys: Vec<DeviceId> = devices.clone().filter(|d| !map.contains_key(d)).collect();
        keys.sort();
        keys.dedup();
        if map.len() + keys.len() > self.views.max {
            map.clear();
            keys = devices.collect();
            keys.sort();
            keys.dedup();
        }
        for (k, h) in keys.iter().zip(histories(&keys)) {
            map.insert(*k, (max_time(&h), DeviceView::of(&h, u64::MAX)));
        }
    }

    /// Enriches `batch`, at dataflow time `t`, in order; each reading's
    /// device must have been [`Enricher::prepare`]d. A reading older than
    /// its device's last update is looked up in its device's history
    /// (through `histories`). The readings go to `give` in containers of at
    /// most `OUT_BATCH`, each only on-time or only late.
    pub fn enrich(
        &self,
        t: u64,
        batch: Vec<Reading>,
        mut histories: impl FnMut(&[DeviceId]) -> Vec<History<DeviceRef>>,
        mut give: impl FnMut(&mut Vec<Enriched>),
    ) {
        let views = &self.views.map;
        let mut left = batch.len();
        let mut run: Vec<Enriched> = Vec::new();
        let mut push = |e: Enriched| {
            if run.len() == OUT_BATCH || run.last().is_some_and(|l| l.on_time() != e.on_time()) {
                give(&mut std::mem::take(&mut run));
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
                // Bring the next readings' views into the cache together
                // (see `TOUCH_AHEAD`).
                for r in batch.as_slice().iter().take(TOUCH_AHEAD) {
                    if let Some((_, view)) = views.get(&r.device) {
                        std::hint::black_box(view.touch());
                    }
                }
            }
            let Some(r) = batch.next() else { break };
            let time = lookup_time_of(&r, t, self.retention_ms);
            let (latest, view) = &views[&r.device];
            if time >= *latest {
                push(enrich_reading(r, view));
            } else {
                // Older than the device's last update: its history, as of `time`.
                let hist = histories(&[r.device]);
                let view = hist.first().map(|h| DeviceView::of(h, time)).unwrap_or_default();
                push(enrich_reading(r, &view));
            }
        }
        if !run.is_empty() {
            give(&mut run);
        }
    }

    /// How far the reference trace may be compacted: the history no waiting
    /// or future reading can ask for, given the least time of one (`low`)
    /// and the reference frontier's least time; `None` when no reading can
    /// come any more.
    pub fn compaction(&self, low: Option<u64>, reference_low: Option<u64>) -> Option<u64> {
        let low = low?;
        let mut target = (low as i64).saturating_sub(self.retention_ms).max(0) as u64;
        if let Some(r) = reference_low {
            target = target.min(r);
        }
        Some(target)
    }
}

/// The enrich operator: see the module docs. A timely shell over
/// [`Enricher`]; readings wait in a [`Waiting`] stash.
pub fn enrich<'s>(
    readings: StreamVec<'s, u64, Reading>,
    reference: Arranged<'s, DeviceTrace>,
    retention_ms: i64,
    name: &str,
) -> StreamVec<'s, u64, Enriched> {
    let mut trace = reference.trace;
    // To the worker of the reading's key group, where the reference
    // arrangement holds its device.
    let place = Placement::current(readings.scope().peers());
    readings.binary_frontier(
        reference.stream,
        Exchange::new(move |r: &Reading| place.worker(r.device)),
        Pipeline,
        name,
        move |_cap, _info| {
            let mut stash: Waiting<Reading> = Waiting::default();
            let mut enricher = Enricher::new(retention_ms);
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
                            enricher.updated(key);
                            cursor.step_key(batch);
                        }
                    }
                });

                // The ready readings, in arrival order per device.
                let rf = ref_frontier.frontier();
                let ref_low = rf.iter().copied().min();
                let ready =
                    stash.take_ready_by(rf, |r| u64::from(r.device.index()), |r, t| enricher.ready(r, t, ref_low));

                if !ready.is_empty() {
                    let devices = ready.iter().flat_map(|(_, b)| b.iter().map(|r| r.device));
                    enricher.prepare(devices, |keys| histories(&mut trace, keys));
                    for (cap, batch) in ready {
                        let mut session = output.session(&cap);
                        enricher.enrich(
                            *cap.time(),
                            batch,
                            |keys| histories(&mut trace, keys),
                            |c| session.give_container(c),
                        );
                    }
                }

                // Let the trace forget history no pending or future reading can ask for.
                if let Some(target) = enricher.compaction(stash.low(frontier.frontier()), ref_low) {
                    compact_to(&mut trace, target);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::ids::Channel;
    use eddy_core::reading::Position;
    use eddy_core::reference::Num;
    use smallvec::smallvec;
    use std::cell::RefCell;

    fn reading(device: DeviceId, ts: i64, v: f64, late: bool) -> Reading {
        Reading {
            device,
            ts,
            pos: Position::line(ts as u64),
            values: smallvec![(Channel::PM25, Some(v))],
            late,
            future: false,
            junk: Default::default(),
        }
    }

    fn gain(g: f64) -> DeviceRef {
        DeviceRef::Calibration(Calibration { channel: Channel::PM25, valid_from: 0, gain: Num(g), offset: Num(0.0) })
    }

    /// Histories by device, and every lookup made in them.
    struct Trace {
        histories: HashMap<DeviceId, History<DeviceRef>>,
        calls: RefCell<Vec<Vec<DeviceId>>>,
    }

    impl Trace {
        fn new(histories: impl IntoIterator<Item = (DeviceId, History<DeviceRef>)>) -> Trace {
            Trace { histories: histories.into_iter().collect(), calls: RefCell::default() }
        }

        fn lookup(&self, keys: &[DeviceId]) -> Vec<History<DeviceRef>> {
            self.calls.borrow_mut().push(keys.to_vec());
            keys.iter().map(|k| self.histories.get(k).cloned().unwrap_or_default()).collect()
        }

        fn calls(&self) -> Vec<Vec<DeviceId>> {
            std::mem::take(&mut *self.calls.borrow_mut())
        }
    }

    fn enrich_all(e: &Enricher, trace: &Trace, t: u64, batch: Vec<Reading>) -> Vec<Vec<Enriched>> {
        let mut out = Vec::new();
        e.enrich(t, batch, |k| trace.lookup(k), |c| out.push(std::mem::take(c)));
        out
    }

    #[test]
    fn a_reading_is_ready_once_the_reference_frontier_passes_its_lookup_time() {
        let e = Enricher::new(1_000);
        let r = reading(DeviceId::intern("enrich-ready"), 100_000, 1.0, false);
        assert!(!e.ready(&r, 0, Some(100_000)));
        assert!(e.ready(&r, 0, Some(100_001)));
        assert!(e.ready(&r, 0, None), "the reference input has ended");
        // Far behind its dataflow time: looked up no earlier than the
        // retained history.
        assert!(!e.ready(&r, 200_000, Some(199_000)));
        assert!(e.ready(&r, 200_000, Some(199_001)));
    }

    #[test]
    fn a_view_is_read_once_and_again_after_an_update_of_its_device() {
        let (a, b) = (DeviceId::intern("enrich-cache-a"), DeviceId::intern("enrich-cache-b"));
        let trace = Trace::new([(a, vec![(gain(2.0), 0, 1)])]);
        let mut e = Enricher::new(1_000);
        e.prepare([b, a, b].into_iter(), |k| trace.lookup(k));
        let mut sorted = vec![a, b];
        sorted.sort();
        assert_eq!(trace.calls(), [sorted], "each device once, sorted");
        e.prepare([a, b].into_iter(), |k| trace.lookup(k));
        assert_eq!(trace.calls(), [Vec::<DeviceId>::new()], "cached");
        e.updated(&a);
        e.prepare([a, b].into_iter(), |k| trace.lookup(k));
        assert_eq!(trace.calls(), [vec![a]]);
        let out = enrich_all(&e, &trace, 0, vec![reading(a, 10, 5.0, false), reading(b, 10, 5.0, false)]);
        let values: Vec<Option<f64>> = out.concat().iter().map(|r| r.values[0].1).collect();
        assert_eq!(values, [Some(10.0), Some(5.0)]);
        assert!(trace.calls().is_empty(), "no reading is older than its device's last update");
    }

    #[test]
    fn the_cache_starts_over_past_its_bound() {
        let ids: Vec<DeviceId> = (0..3).map(|i| DeviceId::intern(&format!("enrich-bound-{i}"))).collect();
        let trace = Trace::new([]);
        let mut e = Enricher::with_cache(1_000, 2);
        e.prepare(ids[..2].iter().copied(), |k| trace.lookup(k));
        e.prepare(ids[2..].iter().copied(), |k| trace.lookup(k));
        e.prepare(ids[..1].iter().copied(), |k| trace.lookup(k));
        assert_eq!(trace.calls()[1..], [vec![ids[2]], vec![ids[0]]]);
        // A round of more devices than the bound is still looked up whole.
        e.prepare(ids.iter().copied(), |k| trace.lookup(k));
        assert_eq!(trace.calls(), [ids]);
    }

    /// A reading older than its device's last reference update sees the
    /// history as of its `ts`, the others the view as of the end.
    #[test]
    fn a_reading_older_than_its_devices_last_update_sees_the_history_then() {
        let d = DeviceId::intern("enrich-history");
        let trace = Trace::new([(d, vec![(gain(2.0), 0, 1), (gain(2.0), 5_000, -1), (gain(3.0), 5_000, 1)])]);
        let mut e = Enricher::new(60_000);
        e.prepare([d].into_iter(), |k| trace.lookup(k));
        trace.calls();
        let batch = vec![reading(d, 6_000, 1.0, false), reading(d, 1_000, 1.0, false), reading(d, 5_000, 1.0, false)];
        let out = enrich_all(&e, &trace, 0, batch);
        let values: Vec<Option<f64>> = out.concat().iter().map(|r| r.values[0].1).collect();
        assert_eq!(values, [Some(3.0), Some(2.0), Some(3.0)]);
        assert_eq!(trace.calls(), [vec![d]]);
    }

    #[test]
    fn containers_hold_only_on_time_or_only_late_readings_and_at_most_a_batch() {
        let d = DeviceId::intern("enrich-containers");
        let trace = Trace::new([]);
        let mut e = Enricher::new(1_000);
        e.prepare([d].into_iter(), |k| trace.lookup(k));
        let late = [false, false, false, true, false, false];
        let batch = late.iter().enumerate().map(|(i, l)| reading(d, i as i64, 1.0, *l)).collect();
        let sizes: Vec<(usize, bool)> = enrich_all(&e, &trace, 0, batch).iter().map(|c| (c.len(), c[0].late)).collect();
        assert_eq!(sizes, [(3, false), (1, true), (2, false)]);
        let batch = (0..OUT_BATCH as i64 + 6).map(|i| reading(d, i, 1.0, false)).collect();
        let sizes: Vec<usize> = enrich_all(&e, &trace, 0, batch).iter().map(Vec::len).collect();
        assert_eq!(sizes, [OUT_BATCH, 6]);
        assert!(enrich_all(&e, &trace, 0, Vec::new()).is_empty(), "no container for no readings");
    }

    #[test]
    fn the_trace_compacts_behind_the_readings_by_the_retention() {
        let e = Enricher::new(1_000);
        assert_eq!(e.compaction(None, Some(5)), None, "no reading can come");
        assert_eq!(e.compaction(Some(10_000), None), Some(9_000));
        assert_eq!(e.compaction(Some(10_000), Some(5_000)), Some(5_000));
        assert_eq!(e.compaction(Some(500), Some(5_000)), Some(0));
    }
}
