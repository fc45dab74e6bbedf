//! The ingest job's source over `P.raw`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Position, RawLine, Reading};
use eddy_core::validate::{parse_line, LateTracker, Ranges};
use eddy_operators::ingest::{time_of, Classified, SourceProgress, Validator};
use eddy_operators::metrics::Metrics;

use super::{Input, Record, Stop, Unsettled, BATCH};
use crate::codec::Envelope;

/// Settings of the raw source.
#[derive(Clone, Debug)]
pub struct RawConfig {
    /// See `IngestSpec::lateness`.
    pub lateness_ms: i64,
    /// See `IngestSpec::epoch`.
    pub epoch_ms: i64,
    /// The junk rule.
    pub ranges: Ranges,
    /// A partition without records for this long stops holding the watermark back.
    pub idle_timeout: Duration,
}

struct RawPartition {
    late: LateTracker,
    last_seen: Instant,
    ended: bool,
}

/// What [`RawState::record`] made of a record.
// Returned once a record and matched at once, never stored: boxing it would
// cost an allocation a record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RawRecord {
    /// Nothing to send: a marker, or a record of a partition not assigned.
    Skip,
    /// A data record.
    Read {
        /// The source's time before it (the job's watermark, as an epoch):
        /// the time of the raw line and of a dead letter. Never earlier than
        /// the time before.
        t: u64,
        /// The record as received.
        raw: RawLine,
        /// The record, classified.
        record: Classified,
        /// A reading's own time: its partition's watermark before it, as an
        /// epoch, never below `t`.
        reading_time: u64,
    },
}

/// The raw source's decisions, without timely or a consumer: the lateness
/// rule per partition, which partitions are idle or ended, the job's
/// watermark over the live ones, and each record's times and
/// classification (see [`raw_source`]).
pub struct RawState {
    parts: BTreeMap<i32, RawPartition>,
    validator: Validator,
    max_ts: Option<i64>,
    bytes: u64,
    epoch_ms: i64,
    idle_timeout: Duration,
    /// The source's time: no record is stamped earlier.
    time: u64,
}

impl RawState {
    /// A source over `partitions` that has read nothing, at time 0; each
    /// partition counts as seen at `started`.
    pub fn new(partitions: &[i32], cfg: &RawConfig, started: Instant) -> RawState {
        let parts = partitions
            .iter()
            .map(|p| (*p, RawPartition { late: LateTracker::new(cfg.lateness_ms), last_seen: started, ended: false }))
            .collect();
        RawState {
            parts,
            validator: Validator::new(cfg.ranges.clone()),
            max_ts: None,
            bytes: 0,
            epoch_ms: cfg.epoch_ms,
            idle_timeout: cfg.idle_timeout,
            time: 0,
        }
    }

    /// Takes a record received `now`; records what was read in
    /// `unsettled`. `arrival_ms` is the wall-clock time its raw line is
    /// stamped with.
    pub fn record(&mut self, m: Record<'_>, now: Instant, arrival_ms: i64, unsettled: &mut Unsettled) -> RawRecord {
        let Record { partition, offset, envelope, payload } = m;
        let Some(part) = self.parts.get_mut(&partition) else { return RawRecord::Skip };
        part.last_seen = now;
        if let Ok(Envelope::Marker(wm)) = envelope {
            if wm == u64::MAX {
                part.ended = true;
            }
            unsettled.skip(partition, offset);
            return RawRecord::Skip;
        }
        let pos = Position { partition: partition as u32, offset: offset as u64 };
        // The record's time is the job's watermark before it.
        let t = time_of(self.watermark(now), self.epoch_ms).max(self.time);
        self.time = t;
        unsettled.read(partition, offset, t);
        self.bytes += payload.len() as u64;
        let raw = RawLine { pos, arrival_ms, bytes: payload.to_vec() };
        let part = self.parts.get_mut(&partition).expect("checked above");
        // The reading's own time: its partition's watermark before it, as an
        // epoch (never below the job's). Stamped with the job's watermark
        // alone, a reading of a partition read far ahead of the others would
        // carry a time far below its `ts`, and hold back every job
        // downstream that waits for reference data as of its `ts` (enrich,
        // alerts).
        let reading_time = time_of(part.late.watermark(), self.epoch_ms).max(t);
        let record = self.validator.classify(parse_line(payload), payload, pos, &mut part.late, t as i64);
        if let Classified::Reading(r) = &record {
            self.max_ts = self.max_ts.max(Some(r.ts));
        }
        RawRecord::Read { t, raw, record, reading_time }
    }

    /// The least watermark over live partitions; `None` while one of them
    /// has no reading yet (or every one is idle or ended).
    fn watermark(&self, now: Instant) -> Option<i64> {
        let mut wm: Option<i64> = None;
        let mut any = false;
        for p in self.parts.values() {
            if p.ended || now.duration_since(p.last_seen) > self.idle_timeout {
                continue;
            }
            any = true;
            match p.late.watermark() {
                Some(w) => wm = Some(wm.map_or(w, |m: i64| m.min(w))),
                None => return None,
            }
        }
        if any {
            wm
        } else {
            None
        }
    }

    /// True once every partition has ended.
    pub fn done(&self) -> bool {
        self.parts.values().all(|p| p.ended)
    }

    /// After a batch: the job's watermark `now`, as an epoch, if it is later
    /// than the source's time (which moves to it).
    pub fn advance(&mut self, now: Instant) -> Option<u64> {
        let t = time_of(self.watermark(now), self.epoch_ms);
        (t > self.time).then(|| {
            self.time = t;
            t
        })
    }

    /// The largest `ts` of a reading so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// Adds what was classified and the bytes read since the last report to
    /// `metrics`.
    pub fn report(&mut self, metrics: &Metrics) {
        self.validator.report(metrics);
        Metrics::add(&metrics.bytes, std::mem::take(&mut self.bytes));
    }
}

/// The outputs of the raw source.
pub struct RawStreams<'s> {
    /// Valid readings, late ones flagged.
    pub readings: StreamVec<'s, u64, Reading>,
    /// Rejected records, with partition and offset.
    pub dead: StreamVec<'s, u64, DeadLetter>,
    /// Every record as received.
    pub raw: StreamVec<'s, u64, RawLine>,
}

/// The ingest job's source over `P.raw`: validates each record as the file
/// ingest does, with the lateness rule kept **per partition**. The job's
/// watermark is the least watermark over its live partitions (a partition
/// idle for `idle_timeout` does not count), rounded down to an epoch: the
/// source's frontier. A reading is stamped with the larger of that and its
/// own partition's watermark before it (as an epoch), so its time stays
/// within the lateness and an epoch of its `ts`. A reading below its
/// partition's watermark, or below the job's (possible only after its
/// partition was idle), is late. With one partition this is exactly the
/// file ingest.
pub fn raw_source<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Input>,
    cfg: RawConfig,
    progress: Rc<SourceProgress>,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> RawStreams<'s> {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out_r, readings) = builder.new_output::<Vec<Reading>>();
    let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
    let (out_raw, raw) = builder.new_output::<Vec<RawLine>>();
    let mut out_r = OutputBuilder::<u64, CapacityContainerBuilder<Vec<Reading>>>::from(out_r);
    let mut out_d = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_d);
    let mut out_raw = OutputBuilder::<u64, CapacityContainerBuilder<Vec<RawLine>>>::from(out_raw);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut caps| {
        let mut caps3: Option<[Capability<u64>; 3]> = match (caps.pop(), caps.pop(), caps.pop()) {
            (Some(c), Some(b), Some(a)) if input.is_some() => Some([a, b, c]),
            _ => None,
        };
        if caps3.is_none() {
            progress.set_done();
        } else {
            stop.register();
        }
        let mut stopped = false;
        let partitions = input.as_ref().map(|i| i.partitions.as_slice()).unwrap_or_default();
        let mut state = RawState::new(partitions, &cfg, Instant::now());

        move |_frontiers| {
            let (Some(input), Some([cr, cd, craw])) = (input.as_ref(), caps3.as_mut()) else {
                return;
            };
            if stop.check(*cr.time(), &mut stopped) {
                return;
            }
            let mut hr = out_r.activate();
            let mut hd = out_d.activate();
            let mut hraw = out_raw.activate();
            let now = Instant::now();
            let arrival_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            while got < BATCH {
                let Some(m) = input.next() else { break };
                got += 1;
                let RawRecord::Read { t, raw, record, reading_time } =
                    state.record(Record::of(&m), now, arrival_ms, &mut unsettled)
                else {
                    continue;
                };
                if t > *cr.time() {
                    cr.downgrade(&t);
                    cd.downgrade(&t);
                    craw.downgrade(&t);
                }
                hraw.session(&*craw).give(raw);
                match record {
                    Classified::Reading(r) => hr.session(&cr.delayed(&reading_time)).give(r),
                    Classified::Dead(d) => hd.session(&*cd).give(d),
                }
            }
            drop(unsettled);
            state.report(&metrics);
            progress.set_max_ts(state.max_ts());

            if state.done() {
                drop((hr, hd, hraw));
                caps3 = None;
                progress.set_done();
                return;
            }
            if let Some(t) = state.advance(now) {
                cr.downgrade(&t);
                cd.downgrade(&t);
                craw.downgrade(&t);
            }
            if got > 0 {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    RawStreams { readings, dead, raw }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RawConfig {
        RawConfig {
            lateness_ms: 1_000,
            epoch_ms: 1_000,
            ranges: Ranges::default(),
            idle_timeout: Duration::from_secs(10),
        }
    }

    fn at(ts: i64) -> Vec<u8> {
        format!(r#"{{"device_id":"raw-machine","ts":{ts},"pm25":1}}"#).into_bytes()
    }

    /// (source time, reading time, late) of a record that holds a reading.
    fn read(
        s: &mut RawState,
        p: i32,
        offset: i64,
        payload: &[u8],
        now: Instant,
        u: &mut Unsettled,
    ) -> (u64, u64, bool) {
        match s.record(Record { partition: p, offset, envelope: Ok(Envelope::Data(None)), payload }, now, 0, u) {
            RawRecord::Read { t, raw, record: Classified::Reading(r), reading_time } => {
                assert_eq!(raw.bytes, payload);
                (t, reading_time, r.late)
            }
            other => panic!("a reading, not {other:?}"),
        }
    }

    /// A partition without readings holds the job's watermark back until it
    /// has been idle for the timeout; a reading of a partition read ahead
    /// goes out at its partition's watermark; a partition that comes back
    /// after being idle reads its readings below the job's time as late.
    #[test]
    fn a_partition_without_readings_holds_the_watermark_back_until_idle() {
        let start = Instant::now();
        let (mut s, mut u) = (RawState::new(&[0, 1], &config(), start), Unsettled::default());
        assert_eq!(read(&mut s, 0, 0, &at(10_000), start, &mut u), (0, 0, false));
        let soon = start + Duration::from_secs(5);
        assert_eq!(read(&mut s, 0, 1, &at(20_000), soon, &mut u), (0, 9_000, false));
        assert_eq!(s.advance(soon), None, "partition 1 has no reading yet");
        let later = start + Duration::from_secs(11);
        assert_eq!(s.advance(later), Some(19_000), "partition 1 is idle");
        assert_eq!(s.advance(later), None);
        assert_eq!(read(&mut s, 1, 0, &at(5_000), later, &mut u), (19_000, 19_000, true));
        // Partition 1 is live again, without a watermark.
        assert_eq!(s.advance(later), None);
        assert_eq!(s.max_ts(), Some(20_000));
        assert_eq!(u.settle(1), BTreeMap::from([(0, 2), (1, 0)]));
        assert_eq!(u.settle(u64::MAX), BTreeMap::from([(1, 1)]));
    }

    #[test]
    fn markers_settle_at_once_and_the_end_of_every_partition_ends_the_source() {
        let now = Instant::now();
        let (mut s, mut u) = (RawState::new(&[0, 1], &config(), now), Unsettled::default());
        let mut marker = |s: &mut RawState, p, offset, wm| {
            let m = Record { partition: p, offset, envelope: Ok(Envelope::Marker(wm)), payload: b"" };
            let r = s.record(m, now, 0, &mut u);
            assert!(matches!(r, RawRecord::Skip));
        };
        marker(&mut s, 0, 0, u64::MAX);
        assert!(!s.done());
        marker(&mut s, 1, 0, 5);
        assert!(!s.done(), "not the end");
        // A partition not assigned to this source is not read.
        marker(&mut s, 7, 0, u64::MAX);
        marker(&mut s, 1, 1, u64::MAX);
        assert!(s.done());
        assert_eq!(u.settle(0), BTreeMap::from([(0, 1), (1, 2)]));
    }

    #[test]
    fn an_invalid_record_is_a_dead_letter_at_the_sources_time() {
        let now = Instant::now();
        let (mut s, mut u) = (RawState::new(&[0], &config(), now), Unsettled::default());
        read(&mut s, 0, 0, &at(10_000), now, &mut u);
        read(&mut s, 0, 1, &at(12_000), now, &mut u);
        // An unreadable envelope is read as data.
        let RawRecord::Read { t, record: Classified::Dead(d), .. } =
            s.record(Record { partition: 0, offset: 2, envelope: Err("bad".into()), payload: b"nope" }, now, 0, &mut u)
        else {
            panic!("a dead letter")
        };
        assert_eq!((t, d.pos, d.line.as_str()), (11_000, Position { partition: 0, offset: 2 }, "nope"));
        let m = Metrics::default();
        s.report(&m);
        let bytes = (at(10_000).len() + at(12_000).len() + 4) as u64;
        assert_eq!([&m.lines, &m.valid, &m.deadletter, &m.bytes].map(Metrics::get), [3, 2, 1, bytes]);
    }
}
