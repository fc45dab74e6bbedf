//! The timely operators of a Kafka job: the raw source (the ingest job's
//! validation over Kafka partitions), the typed source (eddy's own topics,
//! stamped), and the sink.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use serde::de::DeserializeOwned;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Enriched, Position, RawLine, Reading};
use eddy_core::validate::{parse_line, LateTracker, Ranges};
use eddy_kafka::codec::{data_headers, envelope, Envelope};
use eddy_kafka::produce::Producer;
use eddy_operators::ingest::{time_of, Classified, SourceProgress, Validator};
use eddy_operators::metrics::Metrics;
use eddy_operators::sink::BatchSink;

/// Messages read per activation.
const BATCH: usize = 4096;

/// What a source has read and not yet seen committed: per partition, runs
/// of `(first offset, dataflow time)` in offset order. Once a job's outputs
/// are durable up to frontier `f`, every leading run with a time below `f`
/// is done, and the partition's committable offset is the first offset of
/// the first run left (or the next offset to read).
#[derive(Default)]
pub struct Unsettled {
    runs: BTreeMap<i32, VecDeque<(i64, u64)>>,
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Unsettled {
    fn read(&mut self, partition: i32, offset: i64, t: u64) {
        let runs = self.runs.entry(partition).or_default();
        if runs.back().is_none_or(|(_, last)| *last != t) {
            runs.push_back((offset, t));
        }
        self.next.insert(partition, offset + 1);
    }

    /// Markers and records that produce nothing settle at once.
    fn skip(&mut self, partition: i32, offset: i64) {
        let runs = self.runs.entry(partition).or_default();
        if runs.is_empty() {
            self.next.insert(partition, offset + 1);
        } else {
            self.read(partition, offset, 0);
        }
    }

    /// The offsets to commit now that everything below `frontier` is
    /// durable: only partitions whose committable offset moved.
    pub fn settle(&mut self, frontier: u64) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (p, next) in &self.next {
            let runs = self.runs.entry(*p).or_default();
            // A run is settled when its time is below the frontier and so is
            // every run before it (offset order).
            while runs.front().is_some_and(|(_, t)| *t < frontier) {
                runs.pop_front();
            }
            let at = runs.front().map_or(*next, |(o, _)| *o);
            if self.committed.get(p) != Some(&at) {
                self.committed.insert(*p, at);
                out.insert(*p, at);
            }
        }
        out
    }
}

/// A worker's consumer and what it has read.
pub struct Input {
    /// The consumer (manually assigned partitions).
    pub consumer: Rc<BaseConsumer>,
    /// The topic.
    pub topic: String,
    /// The partitions assigned to this worker.
    pub partitions: Vec<i32>,
    /// Offsets read and not yet committed.
    pub unsettled: Rc<RefCell<Unsettled>>,
    /// Per partition, the committed offset the job resumes from: records
    /// below it (fetched again, see [`RESUME_REWIND`]) are skipped.
    pub floor: Rc<BTreeMap<i32, i64>>,
}

/// How far before its committed offset a resumed partition is fetched from.
///
/// Tansu 0.6 answers a fetch from an offset inside a record batch with the
/// batches that start after it, so the rest of that batch would be skipped
/// (records lost). A batch holds at most `batch.num.messages` records
/// (10,000 in librdkafka, eddy's producers set it explicitly), so fetching
/// from this many offsets earlier always starts at or before the batch that
/// holds the committed offset; the records below it are skipped.
pub const RESUME_REWIND: i64 = 10_000;

/// A request to stop (SIGTERM), shared by the sources of a process. A source
/// that sees it stops reading but keeps its capability, and records the time
/// it stopped at: once every output below the least such time is durable,
/// the job checkpoints there and exits. Nothing is emitted that a run to the
/// end would not emit (an operator never sees its input end).
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Set to stop.
    pub requested: Arc<AtomicBool>,
    /// The least time at which a source stopped (`u64::MAX` until one does).
    pub at: Arc<AtomicU64>,
    /// Sources reading in this process, and how many of them have stopped.
    sources: Arc<(AtomicU64, AtomicU64)>,
}

impl Stop {
    /// Not requested.
    pub fn new(requested: Arc<AtomicBool>) -> Stop {
        Stop { requested, at: Arc::new(AtomicU64::new(u64::MAX)), sources: Arc::default() }
    }

    fn register(&self) {
        self.sources.0.fetch_add(1, Ordering::SeqCst);
    }

    /// True when stopping; the first time, records `time`.
    fn check(&self, time: u64, noted: &mut bool) -> bool {
        if !self.requested.load(Ordering::Relaxed) {
            return false;
        }
        if !*noted {
            *noted = true;
            self.at.fetch_min(time, Ordering::SeqCst);
            self.sources.1.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// True once a stop was requested and every source has stopped.
    pub fn all_stopped(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
            && self.sources.1.load(Ordering::SeqCst) >= self.sources.0.load(Ordering::SeqCst)
    }

    /// The frontier below which a stopped process's input was read whole.
    pub fn limit(&self) -> u64 {
        self.at.load(Ordering::SeqCst)
    }
}

impl Input {
    /// The next record already fetched, if any. A consumer error (a broker
    /// gone, say) is logged and ends the batch; the client retries.
    fn next(&self) -> Option<rdkafka::message::BorrowedMessage<'_>> {
        loop {
            match self.consumer.poll(Duration::ZERO)? {
                Ok(m) if self.floor.get(&m.partition()).is_some_and(|f| m.offset() < *f) => continue,
                Ok(m) => return Some(m),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error; retrying");
                    return None;
                }
            }
        }
    }
}

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
        let started = Instant::now();
        let mut parts: BTreeMap<i32, RawPartition> = input
            .as_ref()
            .map(|i| {
                i.partitions
                    .iter()
                    .map(|p| {
                        (*p, RawPartition { late: LateTracker::new(cfg.lateness_ms), last_seen: started, ended: false })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut max_ts: Option<i64> = None;
        let mut validator = Validator::new(cfg.ranges.clone());

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
            let mut n_bytes = 0u64;
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            while got < BATCH {
                let Some(m) = input.next() else { break };
                got += 1;
                let (p, offset) = (m.partition(), m.offset());
                let Some(part) = parts.get_mut(&p) else { continue };
                part.last_seen = now;
                if let Ok(Envelope::Marker(wm)) = envelope(m.headers()) {
                    if wm == u64::MAX {
                        part.ended = true;
                    }
                    unsettled.skip(p, offset);
                    continue;
                }
                let bytes = m.payload().unwrap_or_default();
                let pos = Position { partition: p as u32, offset: offset as u64 };
                // The record's time is the job's watermark before it.
                let t = time_of(job_watermark(&parts, now, cfg.idle_timeout), cfg.epoch_ms).max(*cr.time());
                if t > *cr.time() {
                    cr.downgrade(&t);
                    cd.downgrade(&t);
                    craw.downgrade(&t);
                }
                unsettled.read(p, offset, t);
                n_bytes += bytes.len() as u64;
                hraw.session(&*craw).give(RawLine { pos, arrival_ms, bytes: bytes.to_vec() });
                let part = parts.get_mut(&p).expect("checked above");
                // The reading's own time: its partition's watermark before
                // it, as an epoch (never below the job's). Stamped with the
                // job's watermark alone, a reading of a partition read far
                // ahead of the others would carry a time far below its `ts`,
                // and hold back every job downstream that waits for
                // reference data as of its `ts` (enrich, alerts).
                let tr = time_of(part.late.watermark(), cfg.epoch_ms).max(t);
                match validator.classify(parse_line(bytes), bytes, pos, &mut part.late, t as i64) {
                    Classified::Reading(r) => {
                        max_ts = max_ts.max(Some(r.ts));
                        hr.session(&cr.delayed(&tr)).give(r);
                    }
                    Classified::Dead(d) => hd.session(&*cd).give(d),
                }
            }
            drop(unsettled);
            validator.report(&metrics);
            Metrics::add(&metrics.bytes, n_bytes);
            progress.set_max_ts(max_ts);

            if parts.values().all(|p| p.ended) {
                drop((hr, hd, hraw));
                caps3 = None;
                progress.set_done();
                return;
            }
            let t = time_of(job_watermark(&parts, now, cfg.idle_timeout), cfg.epoch_ms);
            if t > *cr.time() {
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

/// The least watermark over live partitions; `None` while one of them has
/// no reading yet (or every one is idle or ended).
fn job_watermark(parts: &BTreeMap<i32, RawPartition>, now: Instant, idle: Duration) -> Option<i64> {
    let mut wm: Option<i64> = None;
    let mut any = false;
    for p in parts.values() {
        if p.ended || now.duration_since(p.last_seen) > idle {
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

/// A record of an eddy topic that the typed source can read: it has an
/// identity for dropping the duplicates a restarted producer may write, and
/// an event time.
pub trait Stamped: DeserializeOwned + Clone + 'static {
    /// The record's identity (its raw input position).
    fn id(&self) -> Position;
    /// Its event time.
    fn ts(&self) -> i64;
}

impl Stamped for Reading {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

impl Stamped for Enriched {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

#[derive(Default)]
struct TypedPartition {
    wm: u64,
    /// Identities seen at each time not yet below the watermark.
    seen: BTreeMap<u64, HashSet<Position>>,
}

/// A source over one of eddy's own topics (`P.readings`, `P.enriched`):
/// each record keeps the dataflow time its producer stamped it with
/// (`eddy.t`), each partition's watermark is the largest marker seen in it,
/// and the source's frontier is the least watermark of its partitions. A
/// restarted producer's copies are dropped: a record below its partition's
/// watermark (the marker promised every such record came before it), and a
/// record already seen at the same time. A record that cannot be decoded goes to the second output
/// with its partition, offset and reason.
pub fn typed_source<'s, D: Stamped>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Input>,
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
        if caps2.is_none() {
            progress.set_done();
        } else {
            stop.register();
        }
        let mut stopped = false;
        let mut parts: BTreeMap<i32, TypedPartition> = input
            .as_ref()
            .map(|i| i.partitions.iter().map(|p| (*p, TypedPartition::default())).collect())
            .unwrap_or_default();
        let mut max_ts: Option<i64> = None;

        move |_frontiers| {
            let (Some(input), Some([cap, cap_d])) = (input.as_ref(), caps2.as_mut()) else {
                return;
            };
            if stop.check(*cap.time(), &mut stopped) {
                return;
            }
            let mut h = out.activate();
            let mut hd = out_d.activate();
            let (mut n_in, mut n_dead, mut n_bytes) = (0u64, 0u64, 0u64);
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            while got < BATCH {
                let Some(m) = input.next() else { break };
                got += 1;
                let (p, offset) = (m.partition(), m.offset());
                let Some(part) = parts.get_mut(&p) else { continue };
                let pos = Position { partition: p as u32, offset: offset as u64 };
                let dead = |reason: String, bytes: &[u8]| DeadLetter {
                    pos,
                    line: String::from_utf8_lossy(bytes).into_owned(),
                    reason,
                };
                let bytes = m.payload().unwrap_or_default();
                n_bytes += bytes.len() as u64;
                let stamp = match envelope(m.headers()) {
                    Ok(Envelope::Marker(wm)) => {
                        if wm > part.wm {
                            part.wm = wm;
                            part.seen.retain(|t, _| *t >= wm);
                        }
                        unsettled.skip(p, offset);
                        continue;
                    }
                    // Below the watermark: by the marker's promise, a copy of a
                    // record already read, written again by a restarted producer.
                    Ok(Envelope::Data(Some(t))) if t < part.wm => {
                        tracing::debug!(partition = p, offset, t, wm = part.wm, "dropping a copy below the watermark");
                        unsettled.skip(p, offset);
                        continue;
                    }
                    Ok(Envelope::Data(t)) => t,
                    Err(reason) => {
                        n_dead += 1;
                        unsettled.read(p, offset, *cap_d.time());
                        hd.session(&*cap_d).give(dead(format!("bad_envelope: {reason}"), bytes));
                        continue;
                    }
                };
                // A record without a time (written by a client other than
                // eddy) counts as arriving now.
                let t = stamp.unwrap_or(*cap.time()).max(*cap.time()).max(part.wm);
                match serde_json::from_slice::<D>(bytes) {
                    Ok(d) => {
                        if !part.seen.entry(t).or_default().insert(d.id()) {
                            tracing::debug!(partition = p, offset, t, "dropping a copy already read");
                            unsettled.skip(p, offset);
                            continue;
                        }
                        n_in += 1;
                        max_ts = max_ts.max(Some(d.ts()));
                        unsettled.read(p, offset, t);
                        h.session(&cap.delayed(&t)).give(d);
                    }
                    Err(e) => {
                        n_dead += 1;
                        unsettled.read(p, offset, *cap_d.time());
                        hd.session(&*cap_d).give(dead(format!("undecodable: {e}"), bytes));
                    }
                }
            }
            drop(unsettled);
            Metrics::add(&metrics.lines, n_in + n_dead);
            Metrics::add(&metrics.valid, n_in);
            Metrics::add(&metrics.deadletter, n_dead);
            Metrics::add(&metrics.bytes, n_bytes);
            progress.set_max_ts(max_ts);

            let wm = parts.values().map(|p| p.wm).min().unwrap_or(u64::MAX);
            if wm == u64::MAX {
                drop((h, hd));
                caps2 = None;
                progress.set_done();
                return;
            }
            if wm > *cap.time() {
                cap.downgrade(&wm);
                cap_d.downgrade(&wm);
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

/// How a sink writes one record to Kafka.
pub struct Encoder<D> {
    /// Appends the record's value.
    pub value: Box<dyn Fn(&D, &mut Vec<u8>)>,
    /// The record's key (its `device_id`), if it has one.
    pub key: Box<dyn Fn(&D) -> Option<Arc<str>>>,
}

/// A Kafka topic as a [`BatchSink`]: each record with its dataflow time in
/// `eddy.t`, records below `suppress_below` (committed by an earlier run)
/// left out. `commit` reports a frontier durable once the brokers have
/// acknowledged every record sent before the frontier was reached; the
/// producer is shared by the job's sinks on this worker.
pub struct KafkaSink<D> {
    producer: Rc<RefCell<Producer>>,
    topic: String,
    encoder: Encoder<D>,
    suppress_below: u64,
    metrics: Arc<Metrics>,
    /// The time of the batches being written.
    time: u64,
    buf: Vec<u8>,
    /// (frontier, sequence number): once every record sent before the
    /// sequence number is acknowledged, the frontier is durable.
    waiting: VecDeque<(Option<u64>, u64)>,
    /// What is durable: `Some(t)`, times before `t`; `None`, everything.
    durable: Option<u64>,
}

impl<D> KafkaSink<D> {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A sink writing to `topic` through `producer`.
    pub fn new(
        producer: Rc<RefCell<Producer>>,
        topic: String,
        encoder: Encoder<D>,
        suppress_below: u64,
        metrics: Arc<Metrics>,
    ) -> KafkaSink<D> {
        KafkaSink {
            producer,
            topic,
            encoder,
            suppress_below,
            metrics,
            time: 0,
            buf: Vec::with_capacity(512),
            waiting: VecDeque::new(),
            durable: Some(0),
        }
    }

    fn send(&mut self, batch: &[D]) {
        let t = self.time;
        if t < self.suppress_below {
            tracing::debug!(topic = %self.topic, t, records = batch.len(), "not written again: below the resumed frontier");
            return;
        }
        let mut producer = self.producer.borrow_mut();
        for d in batch {
            self.buf.clear();
            (self.encoder.value)(d, &mut self.buf);
            let key = (self.encoder.key)(d);
            producer.send(&self.topic, None, key.as_deref().map(str::as_bytes), Some(&self.buf), data_headers(t));
        }
    }
}

impl<D: 'static> BatchSink<D> for KafkaSink<D> {
    fn begin(&mut self, time: u64) {
        self.time = time;
    }

    fn write(&mut self, batch: &mut Vec<D>) {
        self.send(batch);
        batch.clear();
    }

    fn write_shared(&mut self, batch: &[D])
    where
        D: Clone,
    {
        self.send(batch);
    }

    fn commit(&mut self, upto: Option<u64>) -> Option<u64> {
        let mut producer = self.producer.borrow_mut();
        if self.waiting.back().is_none_or(|(f, _)| *f != upto) {
            self.waiting.push_back((upto, producer.next_seq()));
        }
        producer.poll();
        if let Some(e) = producer.error() {
            self.metrics.fail(format!("{}: {e}", self.topic));
        }
        let acked = producer.acked_below();
        while let Some((f, _)) = self.waiting.front().filter(|(_, seq)| *seq <= acked).copied() {
            self.waiting.pop_front();
            self.durable = f;
        }
        self.durable
    }

    fn recommit_after(&self) -> Duration {
        Duration::from_millis(5)
    }
}

/// Drops records below the frontier an earlier run already committed,
/// before a sink that cannot tell (the Parquet backup): `below(record)` is
/// that frontier for the record (it depends on which writer had its device).
pub fn suppress<'s, D: 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    below: impl Fn(&D) -> u64 + 'static,
) -> StreamVec<'s, u64, D> {
    stream.unary(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else { return };
                output.session(&cap).give_iterator(data.drain(..).filter(|d| t >= below(d)));
            });
        }
    })
}

/// Reference changes that arrive on the reference topics while the job
/// runs (worker 0 reads them; other workers get `None`). A change applies
/// from its `ts`, or from the source's time if that has passed: the source
/// holds its time at the frontier of `watch` (the job's readings) plus
/// `ahead_ms` (the lateness and an epoch, how far a reading's `ts` can be
/// ahead of its dataflow time), so every reading is looked up only once
/// every change up to its `ts` that has arrived is in. `consumer` comes
/// with the offset each of its partitions was assigned at.
///
/// With a `gate` (an enrich job in the calibration adapter's loop, see
/// `kafka::ml`), the source's time is also held at the least adapter marker
/// read from `P.calibration`, and it ends only once the adapter has ended:
/// every update the adapter writes then applies exactly from its `ts`.
pub fn live_reference<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    consumer: Option<(BaseConsumer, BTreeMap<(String, i32), i64>)>,
    watch: timely::dataflow::ProbeHandle<u64>,
    ahead_ms: u64,
    progress: Rc<SourceProgress>,
    mut gate: Option<super::ml::AdapterGate>,
) -> StreamVec<'s, u64, eddy_core::reference::RefUpdate> {
    use eddy_core::reference::RefUpdate;
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out, updates) = builder.new_output::<Vec<RefUpdate>>();
    let mut out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<RefUpdate>>>::from(out);
    let activator = scope.activator_for(info.address);
    // The next offset to read of every assigned partition: where it was
    // assigned, then past each record read (a consumer's own position is
    // unknown until it has read a record of the partition).
    let (consumer, mut next) = consumer.map_or((None, BTreeMap::new()), |(c, n)| (Some(c), n));
    builder.build(move |mut caps| {
        let mut cap = caps.pop().filter(|_| consumer.is_some());
        let mut last_check = Instant::now() - Duration::from_secs(1);
        move |_frontiers| {
            let (Some(c), Some(consumer)) = (cap.as_mut(), consumer.as_ref()) else {
                return;
            };
            let mut h = out.activate();
            let mut got = 0;
            // True once a poll comes back empty: nothing fetched is left to
            // read. Only then can the positions be compared with the topics'
            // ends (a position inside a fetched batch can pass the end a
            // broker reports for it: Tansu 0.6 reports the last batch's base
            // offset + 1).
            let mut drained = false;
            while got < BATCH {
                let m = match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consumer error on a reference topic; retrying");
                        break;
                    }
                    None => {
                        drained = true;
                        break;
                    }
                };
                got += 1;
                let key = (m.topic().to_string(), m.partition());
                // Read already (the partition is fetched from before where it
                // was assigned: see RESUME_REWIND).
                if next.get(&key).is_some_and(|n| m.offset() < *n) {
                    continue;
                }
                next.insert(key, m.offset() + 1);
                if gate.as_mut().is_some_and(|g| g.observe(&m)) {
                    continue;
                }
                let Some(bytes) = m.payload() else { continue };
                let parsed = serde_json::from_slice::<serde_json::Value>(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|v| RefUpdate::from_json(&v));
                match parsed {
                    Ok(u) => {
                        let t = (u.ts.max(0) as u64).max(*c.time());
                        h.session(&c.delayed(&t)).give(u);
                    }
                    Err(e) => tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "skipping a reference record: {e}"
                    ),
                }
            }
            drop(h);
            let held = gate.as_ref().map_or(u64::MAX, |g| g.value());
            match watch.with_frontier(|f| f.iter().copied().min()) {
                // The readings are done (or this probe has not heard of them
                // yet; then the changes read at start are all there is).
                None if held == u64::MAX => {
                    let _ = progress.done();
                    cap = None
                }
                frontier => {
                    // Move on only once every change already in the topics has
                    // been read: a change published before a reading is then
                    // in before that reading is looked up.
                    let t = frontier.map_or(u64::MAX, |f| f.saturating_add(ahead_ms)).min(held);
                    let mut wait = if got > 0 { 0 } else { 20 };
                    if t > *c.time() && drained && last_check.elapsed() >= Duration::from_millis(50) {
                        last_check = Instant::now();
                        if caught_up(consumer, &next) {
                            c.downgrade(&t);
                        } else {
                            wait = 5;
                        }
                    }
                    activator.activate_after(Duration::from_millis(wait));
                }
            }
        }
    });
    updates
}

/// True when `consumer` has read every record its partitions hold now:
/// `next` is the next offset to read of every partition it was assigned.
fn caught_up(consumer: &BaseConsumer, next: &BTreeMap<(String, i32), i64>) -> bool {
    use rdkafka::consumer::Consumer;
    next.iter().all(|((topic, partition), at)| {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(5)) else {
            return false;
        };
        tracing::trace!(topic, partition, at, low, high, "reference position");
        *at >= high
    })
}
