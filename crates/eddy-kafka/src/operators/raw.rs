//! The ingest job's source over `P.raw`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Scope;

use eddy_core::clock::{ClockConfig, EventClock};
use eddy_core::reading::{bound, Kept, Position, Reading};
use eddy_core::validate::Ranges;
use eddy_operators::ingest::{
    wall_clock_ms, Classified, IngestStreams, Line, Next, RawIngest, RawOutputs, RawSource, SourceProgress,
};
use eddy_operators::metrics::Metrics;

use super::input::AsRecord;
use super::{Input, Record, Stop, Unsettled, BATCH};
use crate::codec::Envelope;

/// Settings of the raw source.
#[derive(Clone, Debug)]
pub struct RawConfig {
    /// The event-time rules (`IngestSpec::clock`), kept per partition.
    pub clock: ClockConfig,
    /// See `IngestSpec::epoch`.
    pub epoch_ms: i64,
    /// The junk rule.
    pub ranges: Ranges,
    /// A partition without records for this long stops holding the watermark back.
    pub idle_timeout: Duration,
    /// See `IngestSpec::max_line`: a longer record is a `line_too_long`
    /// dead letter, and only its first bytes are copied.
    pub max_line: usize,
}

/// How long a source that polled nothing waits before it polls again.
const IDLE_POLL: Duration = Duration::from_millis(20);

struct RawPartition {
    clock: EventClock,
    last_seen: Instant,
    ended: bool,
}

/// The partitions of `P.raw` a source reads: each one's lateness rule,
/// when it was last seen and whether it has ended; and the bytes read.
struct Partitions {
    parts: BTreeMap<i32, RawPartition>,
    idle_timeout: Duration,
    bytes: u64,
    max_line: usize,
}

impl Partitions {
    /// Takes a record received `now`: a data record of an assigned partition
    /// goes to `buf` (only its first bytes when it is longer than
    /// `max_line`), and what it is is returned. A marker settles at once
    /// (and the end marker ends its partition).
    fn take(&mut self, m: Record<'_>, now: Instant, unsettled: &mut Unsettled, buf: &mut Vec<u8>) -> Option<Next> {
        let Record { partition, offset, envelope, payload } = m;
        let part = self.parts.get_mut(&partition)?;
        part.last_seen = now;
        if let Ok(Envelope::Marker(wm)) = envelope {
            if wm == u64::MAX {
                part.ended = true;
            }
            unsettled.skip(partition, offset);
            return None;
        }
        self.bytes += payload.len() as u64;
        let (keep, kept) = bound(payload, self.max_line);
        buf.extend_from_slice(&payload[..keep]);
        let pos = Position { partition: partition as u32, offset: offset as u64 };
        Some(match kept {
            Kept::Whole => Next::Line(pos),
            Kept::Prefix { len } => Next::TooLong { pos, len, max: self.max_line as u64 },
        })
    }

    /// The least watermark over live partitions; `None` while one of them
    /// has no reading yet (or every one is idle or ended). A partition whose
    /// clock holds readings for its warm-up is never idle: the source's time
    /// must not pass them before they go out.
    fn watermark(&self, now: Instant) -> Option<i64> {
        let mut wm: Option<i64> = None;
        let mut any = false;
        for p in self.parts.values() {
            let idle = now.duration_since(p.last_seen) > self.idle_timeout && !p.clock.holding();
            if p.ended || idle {
                continue;
            }
            any = true;
            match p.clock.watermark() {
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
}

/// The records of `P.raw` as a [`RawSource`]: polled with `poll`, at most
/// `limit` of them, all received `now`; what is read is recorded in
/// `unsettled`, for the offsets to commit.
struct Records<'a, F> {
    poll: F,
    parts: &'a mut Partitions,
    unsettled: &'a mut Unsettled,
    now: Instant,
    polled: usize,
    limit: usize,
}

impl<F, M> RawSource for Records<'_, F>
where
    F: FnMut() -> Option<M>,
    M: AsRecord,
{
    fn next_raw(&mut self, buf: &mut Vec<u8>) -> Next {
        while self.polled < self.limit {
            let Some(m) = (self.poll)() else {
                // Nothing fetched: poll again at once after a batch, shortly otherwise.
                return Next::Wait(if self.polled > 0 { Duration::ZERO } else { IDLE_POLL });
            };
            self.polled += 1;
            if let Some(next) = m.with_record(|r| self.parts.take(r, self.now, self.unsettled, buf)) {
                return next;
            }
        }
        Next::Wait(Duration::ZERO)
    }

    fn watermark(&self) -> Option<i64> {
        self.parts.watermark(self.now)
    }

    fn clock(&mut self, pos: Position) -> &mut EventClock {
        &mut self.parts.parts.get_mut(&(pos.partition as i32)).expect("a line of an assigned partition").clock
    }

    fn stamped(&mut self, pos: Position, t: u64) {
        self.unsettled.read(pos.partition as i32, pos.offset as i64, t);
    }

    fn bytes_read(&self) -> u64 {
        self.parts.bytes
    }

    fn describe(&self) -> String {
        "the raw topic".into()
    }
}

/// A batch of records being read: see [`RawState::read`].
pub struct Batch<'a, F> {
    records: Records<'a, F>,
    ingest: &'a mut RawIngest,
    line: &'a mut Vec<u8>,
}

impl<F, M> Batch<'_, F>
where
    F: FnMut() -> Option<M>,
    M: AsRecord,
{
    /// The next record, ingested; `arrival_ms` is the wall-clock time its raw
    /// line is stamped with. [`Line::Wait`] once the batch is over; never
    /// the end (the end markers end the source, see [`RawState::done`]).
    pub fn next(&mut self, arrival_ms: i64) -> Line {
        self.ingest.next(&mut self.records, self.line, arrival_ms)
    }
}

/// The raw source's decisions, without timely or a consumer: the lateness
/// rule per partition, which partitions are idle or ended, the job's
/// watermark over the live ones, and the records as a [`RawSource`] for the
/// ingest rule the file ingest shares ([`RawIngest`]: each record's times
/// and classification; see [`raw_source`]).
pub struct RawState {
    parts: Partitions,
    ingest: RawIngest,
    line: Vec<u8>,
}

impl RawState {
    /// A source over `partitions` that has read nothing, at time 0; each
    /// partition counts as seen at `started`.
    pub fn new(partitions: &[i32], cfg: &RawConfig, started: Instant) -> RawState {
        let parts = partitions
            .iter()
            .map(|p| (*p, RawPartition { clock: EventClock::new(cfg.clock), last_seen: started, ended: false }))
            .collect();
        RawState {
            parts: Partitions { parts, idle_timeout: cfg.idle_timeout, bytes: 0, max_line: cfg.max_line },
            ingest: RawIngest::new(cfg.ranges.clone(), cfg.epoch_ms, true),
            line: Vec::with_capacity(1024),
        }
    }

    /// Reads the records `poll` gives, at most `limit` of them, received
    /// `now`; records what was read in `unsettled`.
    pub fn read<'a, F, M>(
        &'a mut self,
        poll: F,
        now: Instant,
        unsettled: &'a mut Unsettled,
        limit: usize,
    ) -> Batch<'a, F>
    where
        F: FnMut() -> Option<M>,
        M: AsRecord,
    {
        Batch {
            records: Records { poll, parts: &mut self.parts, unsettled, now, polled: 0, limit },
            ingest: &mut self.ingest,
            line: &mut self.line,
        }
    }

    /// The readings held by the clocks of partitions that have ended,
    /// classified, each with its time (never before the source's).
    pub fn release_ended(&mut self) -> Vec<(u64, Reading)> {
        let mut out = Vec::new();
        for p in self.parts.parts.values_mut().filter(|p| p.ended && p.clock.holding()) {
            out.extend(self.ingest.finish(&mut p.clock));
        }
        out
    }

    /// True once every partition has ended.
    pub fn done(&self) -> bool {
        self.parts.parts.values().all(|p| p.ended)
    }

    /// After a batch: the job's watermark `now`, as an epoch, if it is later
    /// than the source's time (which moves to it).
    pub fn advance(&mut self, now: Instant) -> Option<u64> {
        self.ingest.advance(self.parts.watermark(now))
    }

    /// The largest `ts` of a reading so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.ingest.max_ts()
    }

    /// Adds what was classified and the bytes read since the last report to
    /// `metrics`.
    pub fn report(&mut self, metrics: &Metrics) {
        self.ingest.report(metrics, self.parts.bytes);
    }
}

/// The outputs of the raw source: those of the file ingest.
pub type RawStreams<'s> = IngestStreams<'s>;

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
    let (RawOutputs { mut out_r, mut out_d, mut out_raw }, streams) = RawOutputs::new(&mut builder);
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
            let arrival_ms = wall_clock_ms();
            let mut unsettled = input.unsettled.borrow_mut();
            let mut batch = state.read(|| input.next(), now, &mut unsettled, BATCH);
            let wait = loop {
                match batch.next(arrival_ms) {
                    Line::Read { t, raw, record, reading_time, .. } => {
                        if t > *cr.time() {
                            cr.downgrade(&t);
                            cd.downgrade(&t);
                            craw.downgrade(&t);
                        }
                        if let Some(raw) = raw {
                            hraw.session(&*craw).give(raw);
                        }
                        match record {
                            Classified::Reading(r) => hr.session(&cr.delayed(&reading_time)).give(r),
                            Classified::Dead(d) => hd.session(&*cd).give(d),
                            Classified::Held => {}
                            Classified::Released(rs) => {
                                for (t, r) in rs {
                                    hr.session(&cr.delayed(&t.max(reading_time))).give(r);
                                }
                            }
                        }
                    }
                    Line::Wait(d) => break d,
                    // The records neither end nor fail: a consumer error is
                    // retried by the client, and the end markers end the source.
                    Line::End | Line::Failed(_) => break Duration::ZERO,
                }
            };
            drop(unsettled);
            for (t, r) in state.release_ended() {
                hr.session(&cr.delayed(&t)).give(r);
            }
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
            if wait.is_zero() {
                activator.activate();
            } else {
                activator.activate_after(wait);
            }
        }
    });
    streams
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::reading::RawLine;

    /// What [`RawState`] made of one record.
    // Matched at once, never stored.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug)]
    enum RawRecord {
        /// Nothing to send: a marker, or a record of a partition not assigned.
        Skip,
        /// A data record, with its times.
        Read { t: u64, raw: RawLine, record: Classified, reading_time: u64 },
    }

    impl RawState {
        /// Takes one record received `now`, as the operator does.
        fn record(&mut self, m: Record<'_>, now: Instant, arrival_ms: i64, unsettled: &mut Unsettled) -> RawRecord {
            let mut m = Some(m);
            match self.read(move || m.take(), now, unsettled, 1).next(arrival_ms) {
                Line::Read { t, raw: Some(raw), record, reading_time, .. } => {
                    RawRecord::Read { t, raw, record, reading_time }
                }
                _ => RawRecord::Skip,
            }
        }
    }

    fn config() -> RawConfig {
        RawConfig {
            clock: ClockConfig { quorum: 1, warmup: 0, ..ClockConfig::new(1_000) },
            epoch_ms: 1_000,
            ranges: Ranges::default(),
            idle_timeout: Duration::from_secs(10),
            max_line: 1 << 20,
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

    /// A record longer than `max_line` is a `line_too_long` dead letter and
    /// raw line holding its prefix; the next record is read normally.
    #[test]
    fn a_record_longer_than_max_line_is_a_dead_letter_with_its_prefix() {
        let now = Instant::now();
        let cfg = RawConfig { max_line: 100, ..config() };
        let (mut s, mut u) = (RawState::new(&[0], &cfg, now), Unsettled::default());
        read(&mut s, 0, 0, &at(10_000), now, &mut u);
        let long = format!(r#"{{"device_id":"d","ts":10500,"x":"{}"}}"#, "é".repeat(3000)).into_bytes();
        let rec = Record { partition: 0, offset: 1, envelope: Ok(Envelope::Data(None)), payload: &long };
        let RawRecord::Read { raw, record: Classified::Dead(d), .. } = s.record(rec, now, 0, &mut u) else {
            panic!("a dead letter")
        };
        assert_eq!(d.pos, Position { partition: 0, offset: 1 });
        let reason = format!(
            "line_too_long: the line is {} bytes long, more than the limit of 100 bytes (max_line)",
            long.len()
        );
        assert_eq!(d.reason, reason);
        // 100 bytes would cut an 'é' in two.
        assert_eq!(d.line.len(), 99);
        assert_eq!(raw.bytes, long[..99]);
        read(&mut s, 0, 2, &at(11_000), now, &mut u);
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.deadletter].map(Metrics::get), [3, 2, 1]);
    }
}
