//! The ingest job as a source operator: reads raw lines, validates them,
//! classifies late readings and junk values, and stamps each record with its
//! dataflow time.
//!
//! **Time.** Dataflow time is event time in epoch milliseconds. A record is
//! stamped with the watermark at its arrival (the largest `ts` among earlier
//! valid readings minus the lateness), rounded down to a whole epoch. Every
//! non-late reading has `ts >=` that watermark, so the frontier of the
//! stream is a watermark: once it passes `t`, no reading with `ts < t` will
//! arrive, except late ones, which are flagged and kept out of the
//! time-driven jobs.
//!
//! **Order.** One worker reads a given input, in arrival order, and every
//! downstream operator handles its input in the order received, so each
//! device's readings keep their arrival order through the dataflow.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{OutputBuilder, OutputBuilderSession};
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::Activator;

use eddy_core::clock::{Admitted, ClockConfig, EventClock};
use eddy_core::reading::{DeadLetter, Kept, LineSource, Position, RawLine, Reading};
use eddy_core::validate::{parse_line, Parsed, Ranges, Rejection};

use crate::metrics::{latency, Metrics};
use crate::sink::Taken;
use crate::snapshot::{self, Checkpointed, Owner};

/// The ingest job's rule for one line, shared by every source of raw lines
/// (a dataset file, the Kafka raw topic): validation, the event-time rules
/// (an [`EventClock`]) and the junk rule, with the counts the run reports. Pure: [`RawIngest`]
/// stamps the lines' times, and the sources only read them.
#[derive(Clone, Debug)]
pub struct Validator {
    ranges: Ranges,
    epoch_ms: i64,
    counts: Counts,
}

/// What a [`Validator`] has classified since its counts were last taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Lines.
    pub lines: u64,
    /// Valid readings, late ones included.
    pub valid: u64,
    /// Late readings.
    pub late: u64,
    /// Future readings.
    pub future: u64,
    /// Dead letters.
    pub dead: u64,
    /// Non-late readings with at least one junk value.
    pub junk: u64,
    /// The same, per device.
    pub junk_by_device: Vec<(eddy_core::ids::DeviceId, u64)>,
}

/// One classified line.
#[derive(Clone, Debug)]
pub enum Classified {
    /// A valid reading, on time, late or future, with its junk channels.
    Reading(Reading),
    /// A line that failed validation.
    Dead(DeadLetter),
    /// A valid reading, held while the event clock warms up.
    Held,
    /// A valid reading that ended the event clock's warm-up: every reading
    /// held, this one last, classified, in arrival order, each with its time
    /// (the watermark before it, as if it had not been held; never earlier
    /// than the line's).
    Released(Vec<(u64, Reading)>),
}

impl Validator {
    /// A validator with the junk rule `ranges`, stamping readings released
    /// by a clock in epochs of `epoch_ms`.
    pub fn new(ranges: Ranges, epoch_ms: i64) -> Validator {
        Validator { ranges, epoch_ms, counts: Counts::default() }
    }

    /// Classifies the line at `pos` (`bytes`, parsed as `parsed`) with the
    /// event-time rules of `clock`: a reading below `floor` (a source's time
    /// that has passed it; `i64::MIN` for none) is late as well.
    pub fn classify(
        &mut self,
        parsed: Result<Parsed, Rejection>,
        bytes: &[u8],
        pos: Position,
        clock: &mut EventClock,
        floor: i64,
    ) -> Classified {
        self.counts.lines += 1;
        match parsed {
            Ok(p) => {
                self.counts.valid += 1;
                let junk = self.ranges.junk_of(&p.values);
                let r = Reading { device: p.device, ts: p.ts, pos, values: p.values, late: false, future: false, junk };
                match clock.admit(r, floor) {
                    Admitted::One(r) => {
                        self.count(&r);
                        Classified::Reading(r)
                    }
                    Admitted::Held => Classified::Held,
                    Admitted::Released(mut rs) if rs.len() == 1 => {
                        let (_, r) = rs.pop().expect("one reading");
                        self.count(&r);
                        Classified::Reading(r)
                    }
                    Admitted::Released(rs) => Classified::Released(self.stamp(rs, floor)),
                }
            }
            Err(reason) => {
                self.counts.dead += 1;
                Classified::Dead(DeadLetter {
                    pos,
                    line: String::from_utf8_lossy(bytes).into_owned(),
                    reason: reason.reason(),
                })
            }
        }
    }

    /// The input has ended: the readings `clock` still holds, classified
    /// (below `floor`: late), with their times.
    pub fn finish(&mut self, clock: &mut EventClock, floor: i64) -> Vec<(u64, Reading)> {
        let rs = clock.finish(floor);
        self.stamp(rs, floor)
    }

    /// Counts released readings and gives each the time it would have had
    /// without the warm-up: the watermark before it, as an epoch, but no
    /// earlier than `floor` (the time they go out at).
    fn stamp(&mut self, rs: Vec<(Option<i64>, Reading)>, floor: i64) -> Vec<(u64, Reading)> {
        let floor = floor.max(0) as u64;
        rs.into_iter()
            .map(|(wm, r)| {
                self.count(&r);
                (time_of(wm, self.epoch_ms).max(floor), r)
            })
            .collect()
    }

    /// Counts a classified reading: late, future, or on time with junk.
    fn count(&mut self, r: &Reading) {
        if r.late {
            self.counts.late += 1;
        } else if r.future {
            self.counts.future += 1;
        } else if !r.junk.is_empty() {
            self.counts.junk += 1;
            match self.counts.junk_by_device.iter_mut().find(|(d, _)| *d == r.device) {
                Some((_, n)) => *n += 1,
                None => self.counts.junk_by_device.push((r.device, 1)),
            }
        }
    }

    /// Adds the counts so far to `metrics`, and starts counting from zero.
    pub fn report(&mut self, metrics: &Metrics) {
        let c = std::mem::take(&mut self.counts);
        Metrics::add(&metrics.lines, c.lines);
        Metrics::add(&metrics.valid, c.valid);
        Metrics::add(&metrics.late, c.late);
        Metrics::add(&metrics.future, c.future);
        Metrics::add(&metrics.deadletter, c.dead);
        Metrics::add(&metrics.junk, c.junk);
        if !c.junk_by_device.is_empty() {
            let mut by_device = metrics.junk_by_device.lock();
            for (d, n) in c.junk_by_device {
                *by_device.entry(d.name().to_string()).or_default() += n;
            }
        }
    }
}

/// The input could not be read: which input, where, and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{input}: read error after {after}")]
pub struct ReadError {
    /// The input, as its source describes it.
    pub input: String,
    /// The last position read.
    pub after: u64,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Settings of the ingest source.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// The event-time rules (`IngestSpec::clock`).
    pub clock: ClockConfig,
    /// See `IngestSpec::epoch`.
    pub epoch_ms: i64,
    /// The junk rule.
    pub ranges: Ranges,
    /// Replay pace: `Some(60.0)` replays at 60× the recorded event-time pace;
    /// `None` goes as fast as possible.
    pub speed: Option<f64>,
    /// Lines read per activation.
    pub batch_lines: usize,
    /// When paced, the source reads every line that is due and then sleeps
    /// until the next one is, but at least this long: waking for every line
    /// (10 µs apart at 100,000 lines/s) would send each few lines through
    /// the dataflow on their own. A line is read at most this late.
    pub pace_tick: Duration,
    /// Also emit every line as received (for the raw archive).
    pub raw: bool,
    /// See `IngestSpec::max_line`: a longer line is a `line_too_long` dead
    /// letter, and only its first bytes are read into memory.
    pub max_line: usize,
    /// Bounds the lines read ahead of what the job's sinks have taken in
    /// (unpaced runs only); `None` reads as fast as the input allows.
    pub backpressure: Option<Backpressure>,
    /// Checkpoints: the run's barrier, which the source cuts at when one is
    /// due (see [`snapshot::Barrier`]); `None` takes none.
    pub barrier: Option<Arc<snapshot::Barrier>>,
}

/// How far an unpaced source may read ahead of the dataflow.
///
/// The source counts the lines it stamped with each time. Lines stamped with
/// a time every sink has taken in (`processed`) have reached every sink;
/// the others are in flight, queued in channels or held by operators. Before
/// each batch the source checks that fewer than `max_lines` of the lines
/// stamped before its current time are in flight, and otherwise waits. Lines
/// at the current time do not count: no sink can pass a time the source
/// still holds, so counting them could stop the source for good.
///
/// Without it, a fast source on one worker fills the channels to the other
/// workers with readings for as long as they are slower than it.
#[derive(Clone, Debug)]
pub struct Backpressure {
    /// How far each sink has taken its input in (not its durable frontier,
    /// which lags by a file's age). Filled as the job's sinks are built.
    pub processed: Rc<RefCell<Vec<Taken>>>,
    /// Lines in flight before the source waits.
    pub max_lines: u64,
}

impl Backpressure {
    /// Lines in flight before the source waits, by default: about half a
    /// second of the 10,000-device fleet at full speed on two workers.
    pub const MAX_LINES: u64 = 1 << 17;

    /// True while a line stamped `t` has not reached every sink.
    fn in_flight(&self, t: u64) -> bool {
        self.processed.borrow().iter().any(|p| !p.passed(t))
    }
}

/// The lines a source has stamped and not yet seen reach every sink, for
/// [`Backpressure`]: the lines stamped with each earlier time, oldest
/// first, while some sink has not passed it; their sum; and the lines at
/// the current time (which never count).
#[derive(Debug, Default)]
pub struct Flight {
    times: VecDeque<(u64, u64)>,
    total: u64,
    now: u64,
}

impl Flight {
    /// One more line at the current time.
    pub fn line(&mut self) {
        self.now += 1;
    }

    /// Moves the lines stamped with `t`, a time the source is leaving, to
    /// the lines in flight.
    pub fn leave(&mut self, t: u64) {
        if self.now > 0 {
            self.times.push_back((t, self.now));
            self.total += self.now;
            self.now = 0;
        }
    }

    /// The lines in flight, once those of the oldest times that no longer
    /// are (`in_flight(t)` false) are let go.
    pub fn settle(&mut self, in_flight: impl Fn(u64) -> bool) -> u64 {
        while let Some(&(t, n)) = self.times.front() {
            if in_flight(t) {
                break;
            }
            self.times.pop_front();
            self.total -= n;
        }
        self.total
    }
}

/// How often a source held back by [`Backpressure`] looks at the sinks again.
const BACKPRESSURE_POLL: Duration = Duration::from_micros(500);

/// What a worker's ingest source tells other operators on the same worker:
/// how far it has read, when it is done, and which epoch began where.
#[derive(Default)]
pub struct SourceProgress {
    max_ts: Cell<Option<i64>>,
    done: Cell<bool>,
    listeners: RefCell<Vec<Activator>>,
    /// `(t, p)`: every record made of an input line before position `p`
    /// has a time `< t` (a reading released by the event clock begins an
    /// epoch at its own line).
    /// Once every sink has committed all times `< t`, the input before `p` is committed.
    pub epochs: RefCell<VecDeque<(u64, Position)>>,
    /// The frontier of the reference arrangements: a source restarted from
    /// a checkpoint reads on only once every change up to its largest `ts` is
    /// in them, so that enrich sees the reference frontier where it was.
    reference: RefCell<Option<timely::dataflow::ProbeHandle<u64>>>,
}

impl SourceProgress {
    /// The largest `ts` read so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts.get()
    }

    /// True once the input is exhausted (or absent on this worker).
    pub fn done(&self) -> bool {
        self.done.get()
    }

    /// Asks to be activated whenever the source makes progress.
    pub fn listen(&self, activator: Activator) {
        self.listeners.borrow_mut().push(activator);
    }

    /// Records the largest `ts` read so far, for a source other than
    /// [`ingest_source`] (a Kafka source), and wakes the listeners.
    pub fn set_max_ts(&self, ts: Option<i64>) {
        self.max_ts.set(ts);
        self.notify();
    }

    /// How far the reference arrangements are complete, on every worker
    /// (`None`: no reference data on this worker; `u64::MAX` once complete).
    pub fn reference_at(&self) -> Option<u64> {
        self.reference.borrow().as_ref().map(|p| p.with_frontier(|f| f.iter().copied().min().unwrap_or(u64::MAX)))
    }

    /// The reference data: `probe` watches its arrangements.
    pub fn set_reference_probe(&self, probe: timely::dataflow::ProbeHandle<u64>) {
        *self.reference.borrow_mut() = Some(probe);
    }

    /// Marks the input as exhausted, for a source other than [`ingest_source`].
    pub fn set_done(&self) {
        self.done.set(true);
        self.notify();
    }

    fn notify(&self) {
        for a in self.listeners.borrow().iter() {
            a.activate();
        }
    }
}

/// The ingest job's outputs.
pub struct IngestStreams<'s> {
    /// Valid readings, late ones included (flagged).
    pub readings: StreamVec<'s, u64, Reading>,
    /// Rejected lines.
    pub dead: StreamVec<'s, u64, DeadLetter>,
    /// Every line as received (empty unless `IngestConfig::raw`).
    pub raw: StreamVec<'s, u64, RawLine>,
}

/// The dataflow time of a record that arrives when the watermark is `wm`.
pub fn time_of(wm: Option<i64>, epoch_ms: i64) -> u64 {
    match wm {
        Some(w) if w > 0 => ((w / epoch_ms) * epoch_ms) as u64,
        _ => 0,
    }
}

/// Where raw lines come from: a dataset file, or the records of the Kafka
/// raw topic. A source reads its lines and keeps the event clock of each
/// (one clock for a file, one per partition for a topic); [`RawIngest`]
/// does the rest, the same for every source.
pub trait RawSource {
    /// Reads the next raw line into `buf` (empty on entry) and tells where it
    /// was read, or why there is none now.
    fn next_raw(&mut self, buf: &mut Vec<u8>) -> Next;

    /// The source's watermark now: the least over its live partitions;
    /// `None` while one of them has no reading yet.
    fn watermark(&self) -> Option<i64>;

    /// The event clock of the line read at `pos`.
    fn clock(&mut self, pos: Position) -> &mut EventClock;

    /// The line at `pos` goes out at time `t`: what the source's positions
    /// for checkpoints are made of.
    fn stamped(&mut self, pos: Position, t: u64);

    /// The bytes read so far.
    fn bytes_read(&self) -> u64;

    /// The input, for error messages.
    fn describe(&self) -> String;
}

/// What [`RawSource::next_raw`] read.
#[derive(Debug)]
pub enum Next {
    /// A line, read at this position.
    Line(Position),
    /// A line longer than the source's limit, read at this position: only
    /// its first bytes are in the buffer (see [`Kept::Prefix`]). It is a
    /// `line_too_long` dead letter.
    TooLong {
        /// Where it was read.
        pos: Position,
        /// Its length in bytes, without its terminator.
        len: u64,
        /// The limit it broke, in bytes.
        max: u64,
    },
    /// Nothing to read now; look again after this long.
    Wait(Duration),
    /// The input is exhausted.
    End,
    /// The input failed; nothing more is read from it.
    Failed(std::io::Error),
}

/// The ingest job's rule for a raw line, whatever its [`RawSource`]: it
/// stamps the line with the source's watermark before it (as an epoch, never
/// earlier than the lines before), validates and classifies it with the
/// [`Validator`] (a reading below that time is late), keeps it as a raw line
/// if asked, and gives a reading the time of its own partition's watermark
/// (never below the line's). With one partition, both times are the same.
#[derive(Debug)]
pub struct RawIngest {
    validator: Validator,
    epoch_ms: i64,
    raw: bool,
    /// The time lines are stamped with now.
    time: u64,
    max_ts: Option<i64>,
    /// The bytes the source had read at the last report.
    reported_bytes: u64,
}

impl RawIngest {
    /// At time 0, with nothing read; keeps raw lines if `raw`.
    pub fn new(ranges: Ranges, epoch_ms: i64, raw: bool) -> RawIngest {
        RawIngest {
            validator: Validator::new(ranges, epoch_ms),
            epoch_ms,
            raw,
            time: 0,
            max_ts: None,
            reported_bytes: 0,
        }
    }

    /// Reads the next line of `src` and ingests it (see [`Self::line`]).
    /// `arrival_ms` is the wall-clock time its raw line is stamped with.
    pub fn next<S: RawSource + ?Sized>(&mut self, src: &mut S, buf: &mut Vec<u8>, arrival_ms: i64) -> Line {
        buf.clear();
        match src.next_raw(buf) {
            Next::Line(pos) => self.line(src, buf, parse_line(buf), pos, arrival_ms),
            Next::TooLong { pos, len, max } => {
                self.line(src, buf, Err(Rejection::LineTooLong { len, max }), pos, arrival_ms)
            }
            Next::Wait(d) => Line::Wait(d),
            Next::End => Line::End,
            Next::Failed(e) => Line::Failed(e),
        }
    }

    /// Ingests `bytes`, read by `src` at `pos` and parsed as `parsed`.
    pub fn line<S: RawSource + ?Sized>(
        &mut self,
        src: &mut S,
        bytes: &[u8],
        parsed: Result<Parsed, Rejection>,
        pos: Position,
        arrival_ms: i64,
    ) -> Line {
        // The line's time is the source's watermark before it.
        let t = time_of(src.watermark(), self.epoch_ms).max(self.time);
        let new_epoch = t > self.time;
        self.time = t;
        src.stamped(pos, t);
        let clock = src.clock(pos);
        // The reading's own time: its partition's watermark before it, as an
        // epoch (never below the line's). Stamped with the source's
        // watermark alone, a reading of a partition read far ahead of the
        // others would carry a time far below its `ts`, and hold back every
        // job downstream that waits for reference data as of its `ts`
        // (enrich, alerts).
        let reading_time = time_of(clock.watermark(), self.epoch_ms).max(t);
        let raw = self.raw.then(|| RawLine { pos, arrival_ms, bytes: bytes.to_vec() });
        let record = self.validator.classify(parsed, bytes, pos, clock, t as i64);
        match &record {
            Classified::Reading(r) => self.saw(r),
            Classified::Released(rs) => rs.iter().for_each(|(_, r)| self.saw(r)),
            Classified::Dead(_) | Classified::Held => {}
        }
        Line::Read { t, new_epoch, pos, raw, record, reading_time }
    }

    /// An input (or a partition of a topic) has ended: the readings its
    /// `clock` still holds, classified, each with its time (never before
    /// [`Self::time`]).
    pub fn finish(&mut self, clock: &mut EventClock) -> Vec<(u64, Reading)> {
        let rs = self.validator.finish(clock, self.time as i64);
        rs.iter().for_each(|(_, r)| self.saw(r));
        rs
    }

    fn saw(&mut self, r: &Reading) {
        if !r.future {
            self.max_ts = self.max_ts.max(Some(r.ts));
        }
    }

    /// After a batch: the time the source's watermark `wm` has reached, if
    /// it is later than the lines' so far (which moves to it), so that the
    /// frontier advances even if no more lines arrive for a while.
    pub fn advance(&mut self, wm: Option<i64>) -> Option<u64> {
        let t = time_of(wm, self.epoch_ms);
        (t > self.time).then(|| {
            self.time = t;
            t
        })
    }

    /// The time lines are stamped with now.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Stamps the lines from now on no earlier than `t`: a source of one
    /// input moves on to the time of the readings its clock released, so that
    /// each epoch's lines (see [`SourceProgress::epochs`]) still come before
    /// every reading of a later epoch.
    pub fn raise_to(&mut self, t: u64) {
        self.time = self.time.max(t);
    }

    /// The largest `ts` of a reading that is not future so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// Adds what was classified since the last report, and the bytes read
    /// since (the source has read `bytes_read` in all), to `metrics`.
    pub fn report(&mut self, metrics: &Metrics, bytes_read: u64) {
        self.validator.report(metrics);
        Metrics::add(&metrics.bytes, bytes_read - self.reported_bytes);
        self.reported_bytes = bytes_read;
    }
}

/// What a raw-line source read: see [`RawIngest`].
// Returned once a line and matched at once, never stored: boxing the line
// would cost an allocation a line.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Line {
    /// A line, stamped with dataflow time `t`.
    Read {
        /// The line's time: the source's watermark before it, as an epoch;
        /// the time of its raw line and of a dead letter.
        t: u64,
        /// True when `t` is later than the time of the lines before: an
        /// epoch begins at `pos`, and what was stamped before goes out first.
        new_epoch: bool,
        /// Where the line was read.
        pos: Position,
        /// The line as received, when raw lines are kept.
        raw: Option<RawLine>,
        /// The line, classified.
        record: Classified,
        /// A reading's own time: its partition's watermark before it, as an
        /// epoch, never below `t` (`t` itself for a source of one partition).
        reading_time: u64,
    },
    /// Nothing to read now (paced: the next line is not due yet, and is
    /// kept); look again after this long.
    Wait(Duration),
    /// The input is exhausted.
    End,
    /// The input failed; nothing more is read from it.
    Failed(std::io::Error),
}

/// A dataset file as a [`RawSource`]: its lines, one event clock, and the
/// position after the last line stamped.
struct FileLines {
    src: Box<dyn LineSource>,
    clock: EventClock,
    next_pos: Position,
    max_line: usize,
}

impl RawSource for FileLines {
    fn next_raw(&mut self, buf: &mut Vec<u8>) -> Next {
        match self.src.next_line_within(buf, self.max_line) {
            Ok(Some((pos, Kept::Whole))) => Next::Line(pos),
            Ok(Some((pos, Kept::Prefix { len }))) => Next::TooLong { pos, len, max: self.max_line as u64 },
            Ok(None) => Next::End,
            Err(e) => Next::Failed(e),
        }
    }

    fn watermark(&self) -> Option<i64> {
        self.clock.watermark()
    }

    fn clock(&mut self, _pos: Position) -> &mut EventClock {
        &mut self.clock
    }

    fn stamped(&mut self, pos: Position, _t: u64) {
        self.next_pos = Position { partition: pos.partition, offset: pos.offset + 1 };
    }

    fn bytes_read(&self) -> u64 {
        self.src.bytes_read()
    }

    fn describe(&self) -> String {
        self.src.describe()
    }
}

/// The ingest job's file source, without timely: reads lines from a
/// [`LineSource`] (as a [`RawSource`]), paces them, ingests each with
/// [`RawIngest`], and counts the lines in flight for [`Backpressure`].
///
/// [`ingest_source`] is a timely shell over it: it sends what
/// [`IngestState::next`] reads at the time it says, moves its capabilities
/// to each new epoch (and to [`IngestState::advance`]'s time after a
/// batch), and records where each epoch began.
pub struct IngestState {
    file: FileLines,
    ingest: RawIngest,
    speed: Option<f64>,
    pace_tick: Duration,
    line: Vec<u8>,
    /// A line read before it was due (paced): the next one returned.
    held: Option<(Position, Vec<u8>)>,
    /// Pacing: when the first line was read, and its `ts`.
    pace: Option<(Instant, i64)>,
    /// The bound on lines in flight and those lines (unpaced runs only).
    backpressure: Option<(Backpressure, Flight)>,
}

impl IngestState {
    /// A source over `src`, at time 0, that has read nothing.
    pub fn new(src: Box<dyn LineSource>, cfg: &IngestConfig) -> IngestState {
        IngestState {
            file: FileLines {
                src,
                clock: EventClock::new(cfg.clock),
                next_pos: Position::line(1),
                max_line: cfg.max_line,
            },
            ingest: RawIngest::new(cfg.ranges.clone(), cfg.epoch_ms, cfg.raw),
            speed: cfg.speed,
            pace_tick: cfg.pace_tick,
            line: Vec::with_capacity(1024),
            held: None,
            pace: None,
            backpressure: cfg.backpressure.clone().filter(|_| cfg.speed.is_none()).map(|bp| (bp, Flight::default())),
        }
    }

    /// True while as many lines as the [`Backpressure`] bound allows are
    /// in flight: nothing is to be read now.
    pub fn backpressured(&mut self) -> bool {
        match &mut self.backpressure {
            Some((bp, flight)) => flight.settle(|t| bp.in_flight(t)) >= bp.max_lines,
            None => false,
        }
    }

    /// Reads the next line (the one held back by pacing, if any). `now`
    /// tells the time for pacing; `arrival_ms` is the wall-clock time the
    /// raw line is stamped with.
    pub fn next(&mut self, now: impl Fn() -> Instant, arrival_ms: i64) -> Line {
        let (pos, is_held, too_long) = match self.held.take() {
            Some((pos, bytes)) => {
                self.line = bytes;
                (pos, true, None)
            }
            None => {
                self.line.clear();
                match self.file.next_raw(&mut self.line) {
                    Next::Line(pos) => (pos, false, None),
                    Next::TooLong { pos, len, max } => (pos, false, Some(Rejection::LineTooLong { len, max })),
                    Next::Wait(d) => return Line::Wait(d),
                    Next::End => return Line::End,
                    Next::Failed(e) => return Line::Failed(e),
                }
            }
        };
        let parsed = match too_long {
            Some(r) => Err(r),
            None => parse_line(&self.line),
        };
        if let (Ok(p), Some(speed), false) = (&parsed, self.speed, is_held) {
            let (origin, first_ts) = *self.pace.get_or_insert((now(), p.ts));
            let due = origin + Duration::from_secs_f64(((p.ts - first_ts).max(0) as f64 / 1000.0) / speed);
            let now = now();
            if due > now {
                self.held = Some((pos, std::mem::take(&mut self.line)));
                return Line::Wait((due - now).max(self.pace_tick));
            }
        }
        let before = self.ingest.time();
        let read = self.ingest.line(&mut self.file, &self.line, parsed, pos, arrival_ms);
        if let Line::Read { record: Classified::Released(rs), .. } = &read {
            if let Some(&(last, _)) = rs.last() {
                self.ingest.raise_to(last);
            }
        }
        if let (Some((_, flight)), Line::Read { new_epoch, .. }) = (&mut self.backpressure, &read) {
            if *new_epoch {
                flight.leave(before);
            }
            flight.line();
        }
        read
    }

    /// The input has ended: the readings still held for the event clock's
    /// warm-up, classified, each with its time (never before [`Self::time`]).
    pub fn finish(&mut self) -> Vec<(u64, Reading)> {
        self.ingest.finish(&mut self.file.clock)
    }

    /// After a batch: the time the watermark has reached, if it is later
    /// than the lines' so far, so that the frontier advances even if no
    /// more lines arrive for a while. The epoch begins at [`Self::next_pos`].
    pub fn advance(&mut self) -> Option<u64> {
        let before = self.ingest.time();
        let t = self.ingest.advance(self.file.watermark())?;
        if let Some((_, flight)) = &mut self.backpressure {
            flight.leave(before);
        }
        Some(t)
    }

    /// The time lines are stamped with now.
    pub fn time(&self) -> u64 {
        self.ingest.time()
    }

    /// The position after the last line read.
    pub fn next_pos(&self) -> Position {
        self.file.next_pos
    }

    /// The input, for error messages.
    pub fn describe(&self) -> String {
        self.file.describe()
    }

    /// The byte offset of the next line in the input, if it has one.
    pub fn offset(&self) -> Option<u64> {
        self.file.src.offset()
    }

    /// The largest `ts` read so far.
    pub fn max_ts(&self) -> Option<i64> {
        self.ingest.max_ts()
    }

    /// Adds what was classified and the bytes read since the last report to
    /// `metrics`.
    pub fn report(&mut self, metrics: &Metrics) {
        self.ingest.report(metrics, self.file.bytes_read());
    }
}

/// What the file source keeps across a checkpoint: the time it goes on at,
/// the position of the next line, its event clock, and a line read but not
/// yet due (paced). The input itself is reopened at that line by the run.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SavedSource {
    time: u64,
    next_pos: Position,
    clock: EventClock,
    max_ts: Option<i64>,
    held: Option<(Position, Vec<u8>)>,
}

impl Checkpointed for IngestState {
    type Saved = SavedSource;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        #[derive(serde::Serialize)]
        struct View<'a> {
            time: u64,
            next_pos: Position,
            clock: &'a EventClock,
            max_ts: Option<i64>,
            held: &'a Option<(Position, Vec<u8>)>,
        }
        snapshot::encode(&View {
            time: self.ingest.time,
            next_pos: self.file.next_pos,
            clock: &self.file.clock,
            max_ts: self.ingest.max_ts,
            held: &self.held,
        })
    }

    /// Only one worker reads a file, so only one part is ever saved.
    fn restore(&mut self, saved: SavedSource, _owner: &Owner) {
        self.ingest.time = saved.time;
        self.ingest.max_ts = saved.max_ts;
        self.file.next_pos = saved.next_pos;
        self.file.clock = saved.clock;
        self.held = saved.held;
    }
}

/// How often a source held at a checkpoint's cut looks whether it may go on.
const BARRIER_POLL: Duration = Duration::from_micros(200);

/// Builds the ingest source, a timely shell over [`IngestState`]. `input`
/// is `Some` on the worker that reads the input and `None` on the others.
pub fn ingest_source<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Box<dyn LineSource>>,
    cfg: IngestConfig,
    progress: Rc<SourceProgress>,
    metrics: Arc<Metrics>,
) -> IngestStreams<'s> {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let reg_name = name.to_owned();
    let info = builder.operator_info();
    let (RawOutputs { mut out_r, mut out_d, mut out_raw }, streams) = RawOutputs::new(&mut builder);
    let activator = scope.activator_for(info.address);
    let lat = latency();
    lat.set_peers(scope.peers());

    builder.build(move |mut caps| {
        let mut cap_raw = caps.pop();
        let mut cap_d = caps.pop();
        let mut cap_r = caps.pop();
        let source = input.map(|src| Rc::new(RefCell::new(IngestState::new(src, &cfg))));
        // A restarted run goes on at the checkpoint's time and position.
        if let (Some(src), Some(cr), Some(cd), Some(craw)) = (&source, &mut cap_r, &mut cap_d, &mut cap_raw) {
            snapshot::register(&reg_name, src);
            let src = src.borrow();
            let t = src.time();
            if t > 0 {
                cr.downgrade(&t);
                cd.downgrade(&t);
                craw.downgrade(&t);
                progress.epochs.borrow_mut().push_back((t, src.next_pos()));
                progress.max_ts.set(src.max_ts());
            }
        }
        let mut source = source;
        // The time of a cut the source holds at (see `snapshot::Barrier`).
        let mut cut_at: Option<u64> = None;
        // Restarted: what the reference source must have released before a
        // line is read (every change up to the largest `ts` read).
        let mut reference_due: Option<u64> = source
            .as_ref()
            .filter(|s| s.borrow().time() > 0)
            .and_then(|s| s.borrow().max_ts())
            .map(|m| m.max(-1) as u64 + 1);
        let mut buf_r: Vec<Reading> = Vec::new();
        let mut buf_d: Vec<DeadLetter> = Vec::new();
        let mut buf_raw: Vec<RawLine> = Vec::new();
        // Bench latency marks: the epoch being counted and its readings so far.
        let (mut lat_t, mut lat_n) = (u64::MAX, 0u64);

        move |_frontiers| {
            let (Some(cr), Some(cd), Some(craw)) = (cap_r.as_mut(), cap_d.as_mut(), cap_raw.as_mut()) else {
                return;
            };
            let Some(src) = source.as_ref() else {
                cap_r = None;
                cap_d = None;
                cap_raw = None;
                progress.done.set(true);
                progress.notify();
                return;
            };
            let mut src = src.borrow_mut();
            if let Some(due) = reference_due {
                if progress.reference_at().is_some_and(|at| at < due) && metrics.failure().is_none() {
                    activator.activate_after(BARRIER_POLL);
                    return;
                }
                reference_due = None;
            }
            if let Some(t) = cut_at {
                if cfg.barrier.as_ref().is_some_and(|b| b.holds(t)) && metrics.failure().is_none() {
                    activator.activate_after(BARRIER_POLL);
                    return;
                }
                cr.downgrade(&t);
                cd.downgrade(&t);
                craw.downgrade(&t);
                cut_at = None;
            }
            if src.backpressured() {
                // The sinks' frontiers move as other operators run; look again shortly.
                activator.activate_after(BACKPRESSURE_POLL);
                return;
            }
            let mut handle_r = out_r.activate();
            let mut handle_d = out_d.activate();
            let mut handle_raw = out_raw.activate();
            let arrival_ms = wall_clock_ms();
            let mut finished = false;
            let mut wait: Option<Duration> = None;

            for _ in 0..cfg.batch_lines {
                match src.next(Instant::now, arrival_ms) {
                    Line::Read { t, new_epoch, pos, raw, record, .. } => {
                        if new_epoch {
                            flush(&mut handle_r, cr, &mut buf_r);
                            flush(&mut handle_d, cd, &mut buf_d);
                            flush(&mut handle_raw, craw, &mut buf_raw);
                            cr.downgrade(&t);
                            cd.downgrade(&t);
                            craw.downgrade(&t);
                            progress.epochs.borrow_mut().push_back((t, pos));
                        }
                        if lat.on() && t != lat_t {
                            if lat_t != u64::MAX {
                                lat.ingested(lat_t, lat_n);
                            }
                            lat.ingested(t, 0);
                            (lat_t, lat_n) = (t, 0);
                        }
                        if let Some(raw) = raw {
                            buf_raw.push(raw);
                        }
                        match record {
                            Classified::Reading(r) => {
                                lat_n += 1;
                                buf_r.push(r);
                            }
                            Classified::Dead(d) => buf_d.push(d),
                            Classified::Held => {}
                            Classified::Released(rs) => {
                                // Each released reading's time begins an epoch at
                                // its line (the checkpoint must not pass a line
                                // whose reading is not durable), and the source
                                // moves on to the last of them.
                                lat_n += rs.len() as u64;
                                flush(&mut handle_d, cd, &mut buf_d);
                                flush(&mut handle_raw, craw, &mut buf_raw);
                                let mut last = *cr.time();
                                for (t, r) in &rs {
                                    if *t > last {
                                        progress.epochs.borrow_mut().push_back((*t, r.pos));
                                        last = *t;
                                    }
                                }
                                release(&mut handle_r, cr, &mut buf_r, rs);
                                cr.downgrade(&last);
                                cd.downgrade(&last);
                                craw.downgrade(&last);
                            }
                        }
                    }
                    Line::Wait(d) => {
                        wait = Some(d);
                        break;
                    }
                    Line::End => {
                        release(&mut handle_r, cr, &mut buf_r, src.finish());
                        finished = true;
                        break;
                    }
                    Line::Failed(e) => {
                        release(&mut handle_r, cr, &mut buf_r, src.finish());
                        metrics.fail(ReadError { input: src.describe(), after: src.next_pos().offset, source: e });
                        finished = true;
                        break;
                    }
                }
            }
            flush(&mut handle_r, cr, &mut buf_r);
            flush(&mut handle_d, cd, &mut buf_d);
            flush(&mut handle_raw, craw, &mut buf_raw);
            progress.max_ts.set(src.max_ts());
            if lat_n > 0 {
                lat.ingested(lat_t, lat_n);
                lat_n = 0;
            }
            src.report(&metrics);

            if finished {
                drop(handle_r);
                drop(handle_d);
                drop(handle_raw);
                drop(src);
                cap_r = None;
                cap_d = None;
                cap_raw = None;
                source = None;
                progress.done.set(true);
            } else {
                if let Some(t) = src.advance() {
                    // A checkpoint cuts here when one is due: the source holds
                    // at `t - 1` until every worker has saved its state.
                    let barrier = cfg.barrier.as_ref().filter(|b| t > *cr.time() + 1 && b.due());
                    let at = if barrier.is_some() { t - 1 } else { t };
                    cr.downgrade(&at);
                    cd.downgrade(&at);
                    craw.downgrade(&at);
                    progress.epochs.borrow_mut().push_back((t, src.next_pos()));
                    if let Some(b) = barrier {
                        b.cut(t, src.next_pos(), src.offset());
                        cut_at = Some(t);
                        wait = Some(BARRIER_POLL);
                    }
                }
                match wait {
                    Some(d) => activator.activate_after(d),
                    None => activator.activate(),
                }
            }
            progress.notify();
        }
    });

    streams
}

/// The outputs of a raw-line source's operator: readings, dead letters and
/// raw lines, as [`IngestStreams`] carries them on.
pub struct RawOutputs {
    /// Readings.
    pub out_r: OutputBuilder<u64, CapacityContainerBuilder<Vec<Reading>>>,
    /// Dead letters.
    pub out_d: OutputBuilder<u64, CapacityContainerBuilder<Vec<DeadLetter>>>,
    /// Raw lines.
    pub out_raw: OutputBuilder<u64, CapacityContainerBuilder<Vec<RawLine>>>,
}

impl RawOutputs {
    /// Adds the three outputs to `builder`, in this order (their
    /// capabilities come in the same order).
    pub fn new<'s>(builder: &mut OperatorBuilder<'s, u64>) -> (RawOutputs, IngestStreams<'s>) {
        let (out_r, readings) = builder.new_output::<Vec<Reading>>();
        let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
        let (out_raw, raw) = builder.new_output::<Vec<RawLine>>();
        let outputs = RawOutputs {
            out_r: OutputBuilder::from(out_r),
            out_d: OutputBuilder::from(out_d),
            out_raw: OutputBuilder::from(out_raw),
        };
        (outputs, IngestStreams { readings, dead, raw })
    }
}

/// The wall-clock time in epoch milliseconds, which a raw line is stamped
/// with as its arrival (0 if the clock is before 1970).
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn flush<D: 'static>(
    handle: &mut OutputBuilderSession<'_, u64, CapacityContainerBuilder<Vec<D>>>,
    cap: &Capability<u64>,
    buf: &mut Vec<D>,
) {
    if !buf.is_empty() {
        handle.session(cap).give_iterator(buf.drain(..));
    }
}

/// Sends readings released by an event clock, each at its own time, after
/// what `buf` holds (at `cap`'s time): a device's readings keep their order.
pub fn release(
    handle: &mut OutputBuilderSession<'_, u64, CapacityContainerBuilder<Vec<Reading>>>,
    cap: &Capability<u64>,
    buf: &mut Vec<Reading>,
    released: Vec<(u64, Reading)>,
) {
    flush(handle, cap, buf);
    let mut released = released.into_iter().peekable();
    while let Some((t, r)) = released.next() {
        let at = cap.delayed(&t);
        let mut session = handle.session(&at);
        session.give(r);
        while let Some((_, r)) = released.next_if(|(next, _)| *next == t) {
            session.give(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_validator_counts_every_line_once_and_junk_only_on_time() {
        let ranges = Ranges::new([("pm25", Some(0.0), Some(1000.0))]);
        let mut v = Validator::new(ranges, 1_000);
        let mut late = EventClock::new(no_warmup(600_000));
        let lines: [&[u8]; 5] = [
            br#"{"device_id":"a","ts":3600000,"pm25":5000}"#, // junk
            br#"{"device_id":"a","ts":3600001,"pm25":5}"#,
            br#"{"device_id":"b","ts":0,"pm25":5000}"#, // late (and junk: not counted as junk)
            br#"not json"#,
            br#"{"device_id":"c","ts":3700000,"pm25":1}"#,
        ];
        let mut kinds = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            match v.classify(parse_line(l), l, Position::line(i as u64 + 1), &mut late, i64::MIN) {
                Classified::Reading(r) => kinds.push(if r.late {
                    "late"
                } else if r.junk.is_empty() {
                    "ok"
                } else {
                    "junk"
                }),
                Classified::Dead(d) => {
                    assert_eq!(d.pos, Position::line(4));
                    kinds.push("dead")
                }
                other => panic!("no warm-up: {other:?}"),
            }
        }
        assert_eq!(kinds, ["junk", "ok", "late", "dead", "ok"]);
        // A source's floor makes a reading below it late.
        let l = br#"{"device_id":"d","ts":3650000,"pm25":1}"#;
        let Classified::Reading(r) = v.classify(parse_line(l), l, Position::line(6), &mut late, 3_690_000) else {
            panic!("valid")
        };
        assert!(r.late);
        let m = Metrics::default();
        v.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.late, &m.deadletter, &m.junk].map(Metrics::get), [6, 5, 2, 1, 1]);
        assert_eq!(m.junk_by_device.lock().get("a"), Some(&1));
        v.report(&m);
        assert_eq!(Metrics::get(&m.lines), 6, "counts are taken once");
    }

    /// The event-time rules without the fleet clock's warm-up or the future
    /// rule: the lateness alone.
    fn no_warmup(lateness_ms: i64) -> ClockConfig {
        ClockConfig { quorum: 1, warmup: 0, ..ClockConfig::new(lateness_ms) }
    }

    /// Lines from a list, then the end or, with `fail`, an error.
    struct List {
        lines: VecDeque<Vec<u8>>,
        n: u64,
        bytes: u64,
        fail: bool,
    }

    impl List {
        fn boxed(lines: &[String], fail: bool) -> Box<dyn LineSource> {
            Box::new(List { lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(), n: 0, bytes: 0, fail })
        }
    }

    impl LineSource for List {
        fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>> {
            match self.lines.pop_front() {
                Some(l) => {
                    self.bytes += l.len() as u64 + 1;
                    buf.extend_from_slice(&l);
                    self.n += 1;
                    Ok(Some(Position::line(self.n)))
                }
                None if self.fail => Err(std::io::Error::other("gone")),
                None => Ok(None),
            }
        }
        fn bytes_read(&self) -> u64 {
            self.bytes
        }
        fn describe(&self) -> String {
            "a list".into()
        }
    }

    fn config() -> IngestConfig {
        IngestConfig {
            clock: no_warmup(1_000),
            epoch_ms: 1_000,
            ranges: Ranges::default(),
            speed: None,
            batch_lines: 64,
            pace_tick: Duration::from_millis(1),
            raw: false,
            max_line: 1 << 20,
            backpressure: None,
            barrier: None,
        }
    }

    fn at(ts: i64) -> String {
        format!(r#"{{"device_id":"ingest-machine","ts":{ts},"pm25":1}}"#)
    }

    /// (time, new epoch, line number, what) of a read line.
    fn read(s: &mut IngestState) -> (u64, bool, Position, &'static str) {
        match s.next(Instant::now, 0) {
            Line::Read { t, new_epoch, pos, record, .. } => {
                let what = match record {
                    Classified::Reading(r) if r.late => "late",
                    Classified::Reading(_) => "ok",
                    Classified::Dead(_) => "dead",
                    Classified::Held | Classified::Released(_) => "clock",
                };
                (t, new_epoch, pos, what)
            }
            other => panic!("a line, not {other:?}"),
        }
    }

    #[test]
    fn an_empty_input_ends_at_once() {
        let mut s = IngestState::new(List::boxed(&[], false), &config());
        assert!(matches!(s.next(Instant::now, 0), Line::End));
        assert_eq!(s.advance(), None);
        assert_eq!((s.time(), s.max_ts(), s.next_pos()), (0, None, Position::line(1)));
        let m = Metrics::default();
        s.report(&m);
        assert_eq!(Metrics::get(&m.lines), 0);
    }

    /// Each line is stamped with the watermark before it, as an epoch; a
    /// new epoch begins at the first line stamped later; an out-of-order
    /// line beyond the lateness is late, and it and a dead letter are
    /// stamped like any other line.
    #[test]
    fn each_line_is_stamped_with_the_watermark_before_it() {
        let lines = [at(5_000), at(5_500), at(6_200), at(3_000), "not json".to_string(), at(6_300)];
        let mut s = IngestState::new(List::boxed(&lines, false), &config());
        let got: Vec<_> = (0..lines.len()).map(|_| read(&mut s)).collect();
        let line = Position::line;
        assert_eq!(
            got,
            [
                (0, false, line(1), "ok"),
                (4_000, true, line(2), "ok"),
                (4_000, false, line(3), "ok"),
                (5_000, true, line(4), "late"),
                (5_000, false, line(5), "dead"),
                (5_000, false, line(6), "ok"),
            ]
        );
        assert!(matches!(s.next(Instant::now, 0), Line::End));
        // The watermark after the last line is in the current epoch.
        assert_eq!(s.advance(), None);
        assert_eq!((s.max_ts(), s.next_pos()), (Some(6_300), line(7)));
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.late, &m.deadletter].map(Metrics::get), [6, 5, 1, 1]);
        assert_eq!(Metrics::get(&m.bytes), lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>());
    }

    /// A line longer than `max_line` is a dead letter with its prefix (its
    /// raw line too), counted as one line at its own position; the next
    /// line is read normally.
    #[test]
    fn a_line_longer_than_max_line_is_a_dead_letter_with_its_prefix() {
        let long = format!(r#"{{"device_id":"d","ts":5200,"pm25":1,"x":"{}"}}"#, "y".repeat(5000));
        let lines = [at(5_000), long.clone(), at(5_500)];
        let cfg = IngestConfig { max_line: 200, raw: true, ..config() };
        let mut s = IngestState::new(List::boxed(&lines, false), &cfg);
        assert_eq!(read(&mut s), (0, false, Position::line(1), "ok"));
        let Line::Read { pos, raw, record: Classified::Dead(d), .. } = s.next(Instant::now, 0) else {
            panic!("a dead letter")
        };
        assert_eq!((pos, d.pos), (Position::line(2), Position::line(2)));
        assert_eq!(
            d.reason,
            format!(
                "line_too_long: the line is {} bytes long, more than the limit of 200 bytes (max_line)",
                long.len()
            )
        );
        assert_eq!(d.line, long[..200]);
        assert_eq!(raw.unwrap().bytes, long.as_bytes()[..200]);
        assert_eq!(read(&mut s), (4_000, false, Position::line(3), "ok"));
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.deadletter].map(Metrics::get), [3, 2, 1]);
    }

    /// The event clock's warm-up: readings are held (their lines still
    /// stamped, dead letters and raw lines going out at once) until enough
    /// devices are seen; then they come out classified, a rogue first line
    /// as future. What is still held at the end of the input comes out with
    /// [`IngestState::finish`].
    #[test]
    fn the_warm_up_holds_readings_and_releases_them_classified() {
        let dev = |d: &str, ts: i64| format!(r#"{{"device_id":"{d}","ts":{ts},"pm25":1}}"#);
        const T: i64 = 1_767_225_600_000;
        let lines = [
            dev("warm-rogue", 4_102_444_800_000),
            dev("warm-a", T),
            "not json".to_string(),
            dev("warm-b", T + 1_000),
            dev("warm-a", T + 2_000),
        ];
        let cfg = IngestConfig { clock: ClockConfig { quorum: 2, ..ClockConfig::new(60_000) }, ..config() };
        let mut s = IngestState::new(List::boxed(&lines, false), &cfg);
        let mut got = Vec::new();
        loop {
            match s.next(Instant::now, 0) {
                Line::Read { t, record, .. } => got.push(match record {
                    Classified::Held => (t, vec!["held"]),
                    Classified::Dead(_) => (t, vec!["dead"]),
                    Classified::Reading(r) => (t, vec![if r.future { "future" } else { "ok" }]),
                    Classified::Released(rs) => {
                        // Each at the watermark before it: none before the
                        // rogue (future) and the first on-time one.
                        let times: Vec<u64> = rs.iter().map(|(rt, _)| *rt).collect();
                        assert_eq!(times, [0, 0, (T - 60_000) as u64]);
                        (t, rs.iter().map(|(_, r)| if r.future { "future" } else { "ok" }).collect())
                    }
                }),
                Line::End => break,
                other => panic!("{other:?}"),
            }
        }
        // Three devices (2 * quorum - 1) end the warm-up, at line 4.
        assert_eq!(
            got,
            [
                (0, vec!["held"]),
                (0, vec!["held"]),
                (0, vec!["dead"]),
                (0, vec!["future", "ok", "ok"]),
                ((T + 1_000 - 60_000) as u64, vec!["ok"]),
            ]
        );
        assert!(s.finish().is_empty());
        assert_eq!(s.max_ts(), Some(T + 2_000), "a future reading is not the largest ts");
        let m = Metrics::default();
        s.report(&m);
        assert_eq!([&m.lines, &m.valid, &m.future, &m.late, &m.deadletter].map(Metrics::get), [5, 4, 1, 0, 1]);

        // Fewer devices than the warm-up waits for: the end releases them.
        // With two devices there is no telling which clock is wrong: the
        // future rule waits for three, and the lateness rule alone applies.
        let mut s = IngestState::new(List::boxed(&lines[..2], false), &cfg);
        assert!(matches!(s.next(Instant::now, 0), Line::Read { record: Classified::Held, .. }));
        assert!(matches!(s.next(Instant::now, 0), Line::Read { record: Classified::Held, .. }));
        assert!(matches!(s.next(Instant::now, 0), Line::End));
        let rs = s.finish();
        assert_eq!(rs.iter().map(|(_, r)| (r.future, r.late)).collect::<Vec<_>>(), [(false, false), (false, true)]);
        // Each with the time it would have had unheld: the second after the first's watermark.
        assert_eq!(rs.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [0, 4_102_444_740_000]);
    }

    #[test]
    fn the_time_advances_to_the_watermark_after_a_batch() {
        let mut s = IngestState::new(List::boxed(&[at(5_000), at(9_000)], false), &config());
        assert_eq!(read(&mut s).0, 0);
        assert_eq!(s.advance(), Some(4_000), "the watermark after the line");
        assert_eq!((s.time(), s.next_pos()), (4_000, Position::line(2)));
        assert_eq!(s.advance(), None);
        assert_eq!(read(&mut s), (4_000, false, Position::line(2), "ok"));
        assert_eq!(s.advance(), Some(8_000));
    }

    #[test]
    fn a_read_error_fails_the_input_after_the_lines_read() {
        let mut s = IngestState::new(List::boxed(&[at(5_000)], true), &config());
        read(&mut s);
        let Line::Failed(e) = s.next(Instant::now, 0) else { panic!("failed") };
        assert_eq!(e.to_string(), "gone");
        assert_eq!((s.describe(), s.next_pos()), ("a list".to_string(), Position::line(2)));
    }

    /// Paced, a line that is not due yet is held, at least a tick, and
    /// returned by the next call, without reading on.
    #[test]
    fn pacing_holds_a_line_until_it_is_due() {
        let cfg = IngestConfig { speed: Some(2.0), raw: true, ..config() };
        let mut s = IngestState::new(List::boxed(&[at(10_000), at(10_001), at(14_000)], false), &cfg);
        let start = Instant::now();
        let now = Cell::new(start);
        assert!(matches!(s.next(|| now.get(), 7), Line::Read { .. }));
        // Due half a millisecond after the first: the tick.
        assert!(matches!(s.next(|| now.get(), 7), Line::Wait(d) if d == Duration::from_millis(1)));
        assert!(matches!(s.next(|| now.get(), 7), Line::Read { pos, .. } if pos == Position::line(2)));
        // 4 s of event time at twice the pace: due 2 s after the first.
        assert!(matches!(s.next(|| now.get(), 7), Line::Wait(d) if d == Duration::from_secs(2)));
        now.set(start + Duration::from_secs(2));
        let Line::Read { pos, raw, .. } = s.next(|| now.get(), 7) else { panic!("due") };
        assert_eq!(pos, Position::line(3));
        assert_eq!(raw, Some(RawLine { pos, arrival_ms: 7, bytes: at(14_000).into_bytes() }));
        assert!(matches!(s.next(|| now.get(), 7), Line::End));
    }

    #[test]
    fn lines_at_the_current_time_are_never_in_flight() {
        let mut f = Flight::default();
        f.line();
        f.line();
        assert_eq!(f.settle(|_| true), 0);
        f.leave(0);
        f.line();
        f.leave(5);
        f.leave(6);
        assert_eq!(f.settle(|_| true), 3);
        assert_eq!(f.settle(|t| t > 0), 1, "every sink passed time 0");
        assert_eq!(f.settle(|_| false), 0);
    }

    #[test]
    fn backpressure_stops_reading_past_the_bound_unless_paced() {
        // A sink that has taken nothing in: every earlier time is in flight.
        let processed = Rc::new(RefCell::new(vec![Taken::default()]));
        let bp = Backpressure { processed, max_lines: 2 };
        let lines = [at(5_000), at(5_100), at(5_200), at(7_000)];
        let mut s =
            IngestState::new(List::boxed(&lines, false), &IngestConfig { backpressure: Some(bp.clone()), ..config() });
        for _ in 0..lines.len() {
            assert!(!s.backpressured());
            read(&mut s);
        }
        // Time 0 holds a line, time 4,000 three, and the source is at 6,000.
        assert_eq!(s.advance(), Some(6_000));
        assert!(s.backpressured());
        let cfg = IngestConfig { backpressure: Some(bp), speed: Some(1e9), ..config() };
        let mut s = IngestState::new(List::boxed(&lines, false), &cfg);
        // A clock that moves on a second each time it is read: every line is due.
        let clock = Cell::new(Instant::now());
        let tick = || {
            clock.set(clock.get() + Duration::from_secs(1));
            clock.get()
        };
        for _ in 0..lines.len() {
            assert!(matches!(s.next(tick, 0), Line::Read { .. }));
        }
        s.advance();
        assert!(!s.backpressured(), "a paced source is not bounded");
    }

    use timely::dataflow::operators::Exchange;

    use crate::sink::{sink, BatchSink, Reporter, SinkError};

    /// Lines 100 ms of event time apart, from `dev-0`.
    struct Lines {
        next: u64,
        end: u64,
    }

    impl LineSource for Lines {
        fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>> {
            if self.next == self.end {
                return Ok(None);
            }
            let ts = 1_767_225_600_000 + self.next as i64 * 100;
            buf.extend_from_slice(format!("{{\"device_id\":\"dev-0\",\"ts\":{ts},\"pm25\":{}}}", self.next).as_bytes());
            self.next += 1;
            Ok(Some(Position::line(self.next)))
        }
        fn bytes_read(&self) -> u64 {
            0
        }
        fn describe(&self) -> String {
            "test lines".into()
        }
    }

    /// A sink that takes 1 ms a batch and records what it got.
    struct Slow {
        metrics: Arc<Metrics>,
        consumed: Arc<AtomicU64>,
        most: Arc<AtomicU64>,
        got: Arc<parking_lot::Mutex<Vec<f64>>>,
    }

    impl BatchSink<Reading> for Slow {
        fn write(&mut self, batch: &mut Vec<Reading>) -> Result<(), SinkError> {
            std::thread::sleep(Duration::from_millis(1));
            let read = Metrics::get(&self.metrics.lines);
            let done = self.consumed.fetch_add(batch.len() as u64, Ordering::SeqCst);
            self.most.fetch_max(read.saturating_sub(done), Ordering::SeqCst);
            self.got.lock().extend(batch.drain(..).map(|r| r.values[0].1.unwrap_or(f64::NAN)));
            Ok(())
        }
        fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
            Ok(upto)
        }
    }

    /// Runs 10,000 lines from worker 0 to a consumer on worker 1 that takes
    /// 1 ms a batch; returns the most lines read but not yet consumed, and
    /// the values consumed in order.
    fn run(backpressure: Option<u64>) -> (u64, Vec<f64>) {
        const LINES: u64 = 10_000;
        let metrics = Arc::new(Metrics::default());
        let consumed = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (m, c, mo, g) = (Arc::clone(&metrics), Arc::clone(&consumed), Arc::clone(&most), Arc::clone(&got));
        timely::execute(timely::Config::process(2), move |worker| {
            let (metrics, consumed, most, got) = (Arc::clone(&m), Arc::clone(&c), Arc::clone(&mo), Arc::clone(&g));
            let processed = Rc::new(RefCell::new(Vec::new()));
            let cfg = IngestConfig {
                clock: no_warmup(0),
                epoch_ms: 1000,
                ranges: Ranges::default(),
                speed: None,
                batch_lines: 64,
                pace_tick: Duration::from_millis(1),
                raw: false,
                max_line: 1 << 20,
                backpressure: backpressure
                    .map(|max_lines| Backpressure { processed: Rc::clone(&processed), max_lines }),
                barrier: None,
            };
            let input: Option<Box<dyn LineSource>> =
                (worker.index() == 0).then(|| Box::new(Lines { next: 0, end: LINES }) as Box<dyn LineSource>);
            worker.dataflow::<u64, _, _>(|scope| {
                let s = ingest_source(scope, "ingest", input, cfg, Rc::default(), Arc::clone(&metrics));
                let slow = Slow { metrics: Arc::clone(&metrics), consumed, most, got };
                let (_, taken) = sink(s.readings.exchange(|_| 1), "slow", slow, Reporter::to(&metrics));
                processed.borrow_mut().push(taken);
            });
        })
        .expect("timely runs");
        let most = most.load(Ordering::SeqCst);
        let got = std::mem::take(&mut *got.lock());
        (most, got)
    }

    #[test]
    fn backpressure_bounds_the_lines_in_flight_and_loses_none() {
        let expected: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let (held, got) = run(Some(256));
        assert_eq!(got, expected);
        // At most: the bound, a batch read after the last check, and the
        // epoch being read (10 lines).
        assert!(held <= 256 + 64 + 10 + 64, "{held} lines in flight with a bound of 256");
        // Without it the source reads far ahead of the slow consumer.
        let (free, got) = run(None);
        assert_eq!(got, expected);
        assert!(free > 1_000, "only {free} lines in flight without backpressure");
    }
}
