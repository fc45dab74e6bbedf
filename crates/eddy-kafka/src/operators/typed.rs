//! The source over eddy's own topics (`P.readings`, `P.enriched`, a
//! component's ports): records keep the dataflow time they were stamped with.

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Enriched, Position, Reading};
use eddy_operators::ingest::SourceProgress;
use eddy_operators::metrics::Metrics;
use eddy_operators::snapshot::{self, Phase};

use super::{Input, Record, Stop, Unsettled, BATCH};
use crate::codec::Envelope;

/// At most this many records a source holds back (while a cut waits).
const HOLD_AT_MOST: usize = 200_000;

/// A record of an eddy topic that the typed source can read: it has an
/// identity for dropping the duplicates a restarted producer may write, and
/// an event time.
pub trait Stamped: DeserializeOwned + Clone + 'static {
    /// The record's identity (its raw input position).
    fn id(&self) -> Position;
    /// Its event time.
    fn ts(&self) -> i64;
    /// Where its device's state lives: `DeviceId::route`.
    fn route(&self) -> u64;
}

impl Stamped for Reading {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
    fn route(&self) -> u64 {
        self.device.route()
    }
}

impl Stamped for Enriched {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
    fn route(&self) -> u64 {
        self.device.route()
    }
}

#[derive(Default)]
struct TypedPartition {
    wm: u64,
    /// Identities seen at each time not yet below the watermark.
    seen: BTreeMap<u64, HashSet<Position>>,
}

/// What [`TypedState::record`] made of a record.
#[derive(Debug)]
pub enum TypedRecord<D> {
    /// Nothing to send: a marker, a copy already read, or a record of a
    /// partition not assigned.
    Skip,
    /// A record, at the time it goes out with.
    Data(u64, D),
    /// A record that cannot be read, at the source's time.
    Dead(DeadLetter),
}

/// The typed source's decisions, without timely or a consumer: each
/// partition's watermark (its largest marker), the identities seen at each
/// time not yet below it, each record's time, and which records are copies
/// a restarted producer wrote again (see [`typed_source`]).
pub struct TypedState<D> {
    parts: BTreeMap<i32, TypedPartition>,
    max_ts: Option<i64>,
    /// The source's time: the least watermark of its partitions, as far as
    /// the source has moved to it.
    time: u64,
    /// Records read, dead letters and bytes since the last report.
    counts: (u64, u64, u64),
    _records: PhantomData<D>,
}

impl<D: Stamped> TypedState<D> {
    /// A source over `partitions` that has read nothing, at time 0.
    pub fn new(partitions: &[i32]) -> TypedState<D> {
        TypedState {
            parts: partitions.iter().map(|p| (*p, TypedPartition::default())).collect(),
            max_ts: None,
            time: 0,
            counts: (0, 0, 0),
            _records: PhantomData,
        }
    }

    /// Takes a record; records what was read in `unsettled`.
    pub fn record(&mut self, m: Record<'_>, unsettled: &mut Unsettled) -> TypedRecord<D> {
        let Record { partition: p, offset, envelope, payload } = m;
        let now = self.time;
        let Some(part) = self.parts.get_mut(&p) else { return TypedRecord::Skip };
        let pos = Position { partition: p as u32, offset: offset as u64 };
        let dead = |reason: String| DeadLetter { pos, line: String::from_utf8_lossy(payload).into_owned(), reason };
        self.counts.2 += payload.len() as u64;
        let stamp = match envelope {
            Ok(Envelope::Marker(wm)) => {
                if wm > part.wm {
                    part.wm = wm;
                    part.seen.retain(|t, _| *t >= wm);
                }
                unsettled.skip(p, offset);
                return TypedRecord::Skip;
            }
            // Below the watermark: by the marker's promise, a copy of a
            // record already read, written again by a restarted producer.
            Ok(Envelope::Data(Some(t))) if t < part.wm => {
                tracing::debug!(partition = p, offset, t, wm = part.wm, "dropping a copy below the watermark");
                unsettled.skip(p, offset);
                return TypedRecord::Skip;
            }
            Ok(Envelope::Data(t)) => t,
            Err(reason) => {
                self.counts.1 += 1;
                unsettled.read(p, offset, now);
                return TypedRecord::Dead(dead(format!("bad_envelope: {reason}")));
            }
        };
        // A record without a time (written by a client other than eddy)
        // counts as arriving now.
        let t = stamp.unwrap_or(now).max(now).max(part.wm);
        match serde_json::from_slice::<D>(payload) {
            Ok(d) => {
                if !part.seen.entry(t).or_default().insert(d.id()) {
                    tracing::debug!(partition = p, offset, t, "dropping a copy already read");
                    unsettled.skip(p, offset);
                    return TypedRecord::Skip;
                }
                self.counts.0 += 1;
                self.max_ts = self.max_ts.max(Some(d.ts()));
                unsettled.read(p, offset, t);
                TypedRecord::Data(t, d)
            }
            Err(e) => {
                self.counts.1 += 1;
                unsettled.read(p, offset, now);
                TypedRecord::Dead(dead(format!("undecodable: {e}")))
            }
        }
    }

    /// True once every partition has ended (its watermark is the end).
    pub fn done(&self) -> bool {
        self.watermark() == u64::MAX
    }

    /// The least watermark of the partitions.
    fn watermark(&self) -> u64 {
        self.parts.values().map(|p| p.wm).min().unwrap_or(u64::MAX)
    }

    /// After a batch: the least watermark of the partitions, if it is later
    /// than the source's time (which moves to it).
    pub fn advance(&mut self) -> Option<u64> {
        let wm = self.watermark();
        (wm > self.time).then(|| {
            self.time = wm;
            wm
        })
    }

    /// The source's time: the least watermark of its partitions, as far as
    /// [`advance`](TypedState::advance) has moved it.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Starts every partition at watermark `t`: a source restarted from a
    /// checkpoint taken at `t` drops every record before it (their effect
    /// is in the restored state), as copies below the watermark.
    pub fn start_at(&mut self, t: u64) {
        for p in self.parts.values_mut() {
            p.wm = p.wm.max(t);
        }
    }

    /// The largest `ts` of a record so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// Adds the records, dead letters and bytes read since the last report
    /// to `metrics`.
    pub fn report(&mut self, metrics: &Metrics) {
        let (n_in, n_dead, n_bytes) = std::mem::take(&mut self.counts);
        Metrics::add(&metrics.lines, n_in + n_dead);
        Metrics::add(&metrics.valid, n_in);
        Metrics::add(&metrics.deadletter, n_dead);
        Metrics::add(&metrics.bytes, n_bytes);
    }
}

/// A source over one of eddy's own topics (`P.readings`, `P.enriched`):
/// each record keeps the dataflow time its producer stamped it with
/// (`eddy.t`), each partition's watermark is the largest marker seen in it,
/// and the source's frontier is the least watermark of its partitions. A
/// restarted producer's copies are dropped: a record below its partition's
/// watermark (the marker promised every such record came before it), and a
/// record already seen at the same time. A record that cannot be decoded goes to the second output
/// with its partition, offset and reason.
///
/// A source restarted from a checkpoint taken at `start` starts there
/// (`TypedState::start_at`). When the worker has an
/// [`Alignment`](snapshot::Alignment) (a job that takes checkpoints), a
/// record goes out only once the source's time has passed it, and the
/// source follows the cuts: frozen, it reads nothing; at a cut at `t` it
/// holds back what comes at or after `t` and holds its capabilities at
/// `t - 1` until the cut is released. Holding records until their time is
/// complete costs downstream jobs one marker interval of latency; in return
/// a cut needs no time the source has not reached, and completes on a
/// stream that has gone quiet.
#[allow(clippy::too_many_arguments)]
pub fn typed_source<'s, D: Stamped>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Input>,
    start: u64,
    progress: Rc<SourceProgress>,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> (StreamVec<'s, u64, D>, StreamVec<'s, u64, DeadLetter>) {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out, data) = builder.new_output::<Vec<D>>();
    let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
    let mut out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<D>>>::from(out);
    let mut out_d = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_d);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut caps| {
        let mut caps2: Option<[Capability<u64>; 2]> = match (caps.pop(), caps.pop()) {
            (Some(b), Some(a)) if input.as_ref().is_some_and(|i| !i.partitions.is_empty()) => Some([a, b]),
            _ => None,
        };
        let align = if caps2.is_some() { snapshot::alignment() } else { None };
        if caps2.is_none() {
            progress.set_done();
        } else {
            stop.register();
            if let Some(a) = &align {
                a.register_source();
            }
        }
        let mut stopped = false;
        let mut state: TypedState<D> =
            TypedState::new(input.as_ref().map(|i| i.partitions.as_slice()).unwrap_or_default());
        state.start_at(start);
        // The largest time sent at (a restored source has, in effect, sent
        // everything before its start), the freeze last acknowledged, and
        // the records held back: with an alignment, a record goes out only
        // once the source's time has passed it (and it is before the cut in
        // progress), so that a cut never waits for times it has not reached.
        let mut sent = start.saturating_sub(1);
        let mut acked = None;
        let mut held: Vec<(u64, D)> = Vec::new();

        move |_frontiers| {
            let (Some(input), Some([cap, cap_d])) = (input.as_ref(), caps2.as_mut()) else {
                return;
            };
            if stop.check(*cap.time(), &mut stopped) {
                return;
            }
            let phase = align.as_ref().map_or(Phase::Idle, |a| a.phase());
            let cut = match phase {
                Phase::Freeze(k) => {
                    if acked != Some(k) {
                        acked = Some(k);
                        let a = align.as_ref().expect("a phase other than idle comes from an alignment");
                        a.acknowledge(k, sent);
                    }
                    activator.activate_after(Duration::from_millis(2));
                    return;
                }
                Phase::Cut(_, t) => Some(t),
                Phase::Idle => None,
            };
            let mut h = out.activate();
            let mut hd = out_d.activate();
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            // A cut that waits long holds at most this much back.
            let room = if held.len() < HOLD_AT_MOST { BATCH } else { 0 };
            while got < room {
                let Some(m) = input.next() else { break };
                got += 1;
                match state.record(Record::of(&m), &mut unsettled) {
                    TypedRecord::Skip => {}
                    TypedRecord::Data(t, d) if align.is_some() => held.push((t, d)),
                    TypedRecord::Data(t, d) => h.session(&cap.delayed(&t)).give(d),
                    TypedRecord::Dead(d) => hd.session(&*cap_d).give(d),
                }
            }
            drop(unsettled);
            state.report(&metrics);
            progress.set_max_ts(state.max_ts());
            state.advance();
            if !held.is_empty() {
                // The capabilities are not moved yet: every held time is at
                // or after them.
                let limit = cut.map_or(state.time(), |c| state.time().min(c));
                let (go, stay): (Vec<_>, Vec<_>) = held.drain(..).partition(|(t, _)| *t < limit);
                held = stay;
                for (t, d) in go {
                    sent = sent.max(t);
                    h.session(&cap.delayed(&t)).give(d);
                }
            }

            if state.done() && cut.is_none() && held.is_empty() {
                drop((h, hd));
                caps2 = None;
                progress.set_done();
                if let Some(a) = &align {
                    a.unregister_source(sent);
                }
                return;
            }
            // During a cut the capabilities stop at `t - 1`.
            let to = cut.map_or(state.time(), |c| state.time().min(c - 1));
            if to > *cap.time() {
                cap.downgrade(&to);
                cap_d.downgrade(&to);
            }
            if got > 0 {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    (data, dead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::ids::{Channel, DeviceId};

    fn reading(offset: u64) -> Reading {
        Reading {
            device: DeviceId::intern("typed-machine"),
            ts: offset as i64 * 1_000,
            pos: Position { partition: 0, offset },
            values: [(Channel::PM25, Some(1.0))].into_iter().collect(),
            late: false,
            future: false,
            junk: Default::default(),
        }
    }

    fn data(s: &mut TypedState<Reading>, offset: i64, t: Option<u64>, r: &Reading, u: &mut Unsettled) -> Option<u64> {
        let payload = serde_json::to_vec(r).expect("encodes");
        match s.record(Record { partition: 0, offset, envelope: Ok(Envelope::Data(t)), payload: &payload }, u) {
            TypedRecord::Data(t, d) => {
                assert_eq!(&d, r);
                Some(t)
            }
            TypedRecord::Skip => None,
            TypedRecord::Dead(d) => panic!("dead: {d:?}"),
        }
    }

    fn marker(s: &mut TypedState<Reading>, p: i32, offset: i64, wm: u64, u: &mut Unsettled) {
        let m = Record { partition: p, offset, envelope: Ok(Envelope::Marker(wm)), payload: b"" };
        assert!(matches!(s.record(m, u), TypedRecord::Skip));
    }

    /// Each record keeps its time (never below the source's); a restarted
    /// producer's copies are dropped: one already read at the same time, and
    /// one below its partition's watermark. Both settle at once.
    #[test]
    fn a_record_keeps_its_time_and_copies_are_dropped() {
        let (mut s, mut u) = (TypedState::<Reading>::new(&[0]), Unsettled::default());
        assert_eq!(data(&mut s, 0, Some(5), &reading(1), &mut u), Some(5));
        assert_eq!(data(&mut s, 1, Some(5), &reading(1), &mut u), None, "already read at 5");
        assert_eq!(data(&mut s, 2, Some(6), &reading(1), &mut u), Some(6), "another time: another record");
        marker(&mut s, 0, 3, 7, &mut u);
        assert_eq!(s.advance(), Some(7));
        assert_eq!(data(&mut s, 4, Some(6), &reading(2), &mut u), None, "below the watermark");
        // Without a time: now.
        assert_eq!(data(&mut s, 5, None, &reading(3), &mut u), Some(7));
        assert_eq!(s.max_ts(), Some(3_000));
        assert_eq!(u.settle(7), BTreeMap::from([(0, 5)]));
        assert_eq!(u.settle(8), BTreeMap::from([(0, 6)]));
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.deadletter].map(Metrics::get), [3, 3, 0]);
    }

    #[test]
    fn an_unreadable_record_is_a_dead_letter_at_the_sources_time() {
        let (mut s, mut u) = (TypedState::<Reading>::new(&[0]), Unsettled::default());
        marker(&mut s, 0, 0, 4, &mut u);
        s.advance();
        let m = Record { partition: 0, offset: 1, envelope: Err("bad eddy.t".into()), payload: b"{}" };
        let TypedRecord::Dead(d) = s.record(m, &mut u) else { panic!("dead") };
        assert_eq!((d.reason.as_str(), d.line.as_str()), ("bad_envelope: bad eddy.t", "{}"));
        let m = Record { partition: 0, offset: 2, envelope: Ok(Envelope::Data(Some(9))), payload: b"nope" };
        let TypedRecord::Dead(d) = s.record(m, &mut u) else { panic!("dead") };
        assert!(d.reason.starts_with("undecodable: "), "{}", d.reason);
        assert_eq!(d.pos, Position { partition: 0, offset: 2 });
        // Dead letters are read at the source's time.
        assert_eq!(u.settle(4), BTreeMap::from([(0, 1)]));
        assert_eq!(u.settle(5), BTreeMap::from([(0, 3)]));
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.deadletter, &m.bytes].map(Metrics::get), [2, 0, 2, 6]);
    }

    #[test]
    fn the_source_moves_with_its_least_partition_and_ends_with_the_last() {
        let (mut s, mut u) = (TypedState::<Reading>::new(&[0, 1]), Unsettled::default());
        marker(&mut s, 0, 0, u64::MAX, &mut u);
        assert_eq!((s.advance(), s.done()), (None, false));
        marker(&mut s, 1, 0, 3, &mut u);
        assert_eq!(s.advance(), Some(3));
        // A partition not assigned to this source is not read.
        marker(&mut s, 2, 0, u64::MAX, &mut u);
        assert!(!s.done());
        marker(&mut s, 1, 1, u64::MAX, &mut u);
        assert!(s.done());
    }
}
