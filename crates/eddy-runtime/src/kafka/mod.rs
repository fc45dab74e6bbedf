//! `eddy run`: one job of the pipeline as its own process or cluster,
//! connected to the others by Kafka topics (see `docs/kafka.md`).
//!
//! **Where things live.** The Kafka client and the timely operators that
//! drive it (the raw and typed sources, the sink, the live reference and
//! model sources, the request to stop) are the connector's, in
//! [`eddy_kafka::operators`] (re-exported here as [`operators`]). This
//! module only composes them: what to run ([`RunOptions`]), [`run_job`] and
//! its workers, the commit protocol of the worker loop (`KafkaCommits`:
//! consumer offsets, markers, checkpoints), and the [`Wiring`] of jobs over
//! topics: typed sources for input ports, a [`KafkaSink`] per output port,
//! the Parquet writers of the backup job, and the calibration loop's and
//! the models' topics ([`ml`]).
//!
//! **Time.** The ingest job stamps each record with the watermark of `P.raw`
//! (per partition, see [`operators::raw_source`]); every other job keeps the
//! time each record was stamped with (`eddy.t`), and takes its frontier
//! from the markers its producer writes once its outputs are acknowledged.
//! So a chain of jobs computes exactly what `eddy replay` computes in one
//! process.
//!
//! **Commits.** A probe over every sink of the job gives the frontier below
//! which all outputs are acknowledged (or committed to Parquet). Worker 0
//! then writes the job's checkpoint (`P.checkpoints`, keyed by the job's
//! group) and markers into each output topic, and every worker commits the
//! consumer-group offsets of its partitions up to the first record not yet
//! durable: never earlier.
//!
//! **Restart.** A restarted job reads its checkpoint and drops every output
//! below the committed frontier, so only records of the epochs that were not
//! committed can appear twice. Jobs whose state spans all of history
//! (ingest's lateness, statistics, windows, alerts) rebuild it by reading
//! their input again from the beginning; enrich and backup resume from the
//! committed offsets.

pub mod align;
pub mod ml;

/// The operators this module composes, at their old path.
pub use eddy_kafka::operators;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Enriched, RawLine, Reading};
use eddy_core::reference::RefUpdate;
use eddy_core::spec::PipelineSpec;
use eddy_core::Channel;
use eddy_kafka::codec::marker_headers;
use eddy_kafka::consume::{self, read_to_end};
use eddy_kafka::produce::Producer;
use eddy_kafka::topics::{ensure, TopicSpec};
use eddy_kafka::{KafkaConfig, Topics};
use eddy_ml::adapt::{CalibrationBook, CalibrationUpdate};
use eddy_ml::model::ModelUpdate;
use eddy_operators::ingest::SourceProgress;
use eddy_operators::metrics::Metrics;
use eddy_operators::reference::{reference_with_feedback, Reference};
use eddy_operators::snapshot;
use eddy_parquet::{BackupWriter, Manifest, RawArchiveWriter};

use crate::backup::{backup_config, ParquetSink, Resume, WriterName};
use crate::component::{Codec, JobInstance, Lines, OutputRecord, Port, PortFlow, Record, Target, Wiring};
use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};
use crate::job::spec_rules;
use crate::runner::{drive_until, Commits, Next};
use crate::snapshots::{CheckpointOptions, CheckpointSummary};
use crate::workers::Workers;
use eddy_kafka::operators::{
    live_reference, raw_source, suppress, typed_source, Encoder, Input, KafkaSink, RawConfig, RawStreams, Stamped,
    Stop, Unsettled, RESUME_REWIND,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Which job: an instance of a registered kind.
    pub job: JobInstance,
    /// The job specs (the job's own file over the built-in defaults).
    pub spec: PipelineSpec,
    /// The brokers.
    pub kafka: KafkaConfig,
    /// The pipeline's topics.
    pub topics: Topics,
    /// Workers (`-w`, `-n`, `-p`, `-h`).
    pub workers: Workers,
    /// The backup job's output directory.
    pub out: Option<PathBuf>,
    /// Partitions of the topics this job creates.
    pub partitions: i32,
    /// A partition of `P.raw` without records for this long stops holding
    /// the ingest job's watermark back.
    pub idle_timeout: Duration,
    /// How often, at most, the job writes markers and its checkpoint.
    pub marker_every: Duration,
    /// Set it (from a SIGTERM handler) to stop the job cleanly: it stops
    /// reading, makes what it read durable, checkpoints, and returns.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Checkpoints of the job's state (stateful jobs that read eddy's own
    /// topics): how often, where (default: [`default_store`]), how many kept.
    pub checkpoints: CheckpointOptions,
}

/// Where a Kafka job keeps its checkpoints unless told (`--store`):
/// `$EDDY_STATE_DIR/<group>`, by default `eddy-state/<group>` in the
/// working directory.
pub fn default_store(group: &str) -> String {
    let root = std::env::var_os("EDDY_STATE_DIR").map_or_else(|| PathBuf::from("eddy-state"), PathBuf::from);
    root.join(group).display().to_string()
}

impl RunOptions {
    /// Options with the defaults: one worker, 4 partitions, 10 s idle timeout.
    pub fn new(job: JobInstance, spec: PipelineSpec, brokers: &str) -> RunOptions {
        RunOptions {
            job,
            spec,
            kafka: KafkaConfig::new(brokers),
            topics: Topics::default(),
            workers: Workers::default(),
            out: None,
            partitions: 4,
            idle_timeout: Duration::from_secs(10),
            marker_every: Duration::from_millis(100),
            stop: Arc::default(),
            checkpoints: CheckpointOptions::default(),
        }
    }

    /// True when the job's state can be checkpointed: a job that rebuilds
    /// state, whose sources are eddy's own topics (not `P.raw` or the
    /// models), outside the calibration loop, with an epoch of at least
    /// 2 ms (a cut holds at `t - 1`, which must never be a record's time).
    pub fn checkpointable(&self) -> bool {
        self.job.rebuilds()
            && !self.job.inputs().iter().any(|p| matches!(*p, "raw" | "models"))
            && !self.spec.adapter.enabled
            && self.spec.ingest.epoch.ms() >= 2
    }

    /// The job's checkpoint store.
    pub fn store_location(&self) -> String {
        self.checkpoints.store.clone().unwrap_or_else(|| default_store(&self.group()))
    }

    /// The job's kind.
    pub fn kind(&self) -> &'static str {
        self.job.kind()
    }

    /// The job's name: its spec's `name`, or its kind.
    pub fn job_name(&self) -> String {
        self.job.name.clone()
    }

    /// The consumer group (and checkpoint key): `<prefix>.<job name>`.
    pub fn group(&self) -> String {
        self.topics.name(&self.job_name())
    }

    /// The window size as it appears in the windows topic name (`1h`, `15m`).
    pub fn window_label(&self) -> String {
        self.spec.windows.size.to_string()
    }

    /// The job's input ports that are topics of records (not the reference
    /// topics, which every job that reads reference data reads whole).
    fn input_ports(&self) -> Vec<&'static str> {
        self.job.inputs().iter().copied().filter(|p| !REFERENCE_PORTS.contains(p)).collect()
    }

    /// The topic of the job's first input port, whose partitions its
    /// workers share.
    fn input_topic(&self) -> String {
        self.topics.name(self.input_ports().first().copied().unwrap_or("enriched"))
    }

    /// The topics the job writes: its output ports' (those carried on a
    /// topic) and `P.deadletter`, for the records its sources cannot decode.
    fn output_topics(&self) -> Vec<String> {
        let t = &self.topics;
        let mut out: Vec<String> = Vec::new();
        for p in self.job.outputs().iter().filter(|p| self.job.port(p).topic) {
            let topic = t.name(&self.job.topic(p));
            if !out.contains(&topic) {
                out.push(topic);
            }
        }
        if !out.contains(&t.deadletter()) {
            out.push(t.deadletter());
        }
        out
    }

    /// Stateful jobs rebuild their state from the start of their input.
    fn rewinds(&self) -> bool {
        self.job.rebuilds()
    }

    /// True when the job reads the reference data.
    fn reads_reference(&self) -> bool {
        self.job.inputs().iter().any(|p| REFERENCE_PORTS.contains(p))
    }
}

/// The input ports that name the reference data (each a compacted topic).
const REFERENCE_PORTS: [&str; 3] = ["devices", "calibration", "rules"];

/// Partitions of an input topic the job creates when it does not exist:
/// `P.raw` and `P.models` are read in order, from one partition.
fn input_partitions(port: &str, default: i32) -> i32 {
    match port {
        "raw" | "models" => 1,
        _ => default,
    }
}

/// A job's record in `P.checkpoints`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobCheckpoint {
    /// Format version (1).
    pub version: u32,
    /// The job's group.
    pub job: String,
    /// Every output record below this dataflow time is durable.
    pub frontier: u64,
    /// True once the job's input has ended and every output is durable.
    pub complete: bool,
}

/// What a run did, printed by `eddy run`.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// The job's group.
    pub job: String,
    /// Records read (lines for ingest).
    pub records_in: u64,
    /// Valid readings (ingest) or decoded records.
    pub valid: u64,
    /// Records sent to the dead-letter topic.
    pub deadletter: u64,
    /// Ingest: non-late readings with at least one junk value.
    pub junk: u64,
    /// The frontier this run started from (committed by an earlier run).
    pub resumed_from: u64,
    /// Checkpoints of the job's state written by this run, and the one it
    /// restarted from.
    pub checkpoints: CheckpointSummary,
    /// Wall time, seconds.
    pub wall_time_s: f64,
}

/// Progress of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunProgress {
    /// Records read.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
}

struct Shared {
    opts: RunOptions,
    /// The checkpoint the job restarted from.
    restart: Option<align::JobRestart>,
    /// Where the leader hands checkpoints (`None`: the job takes none).
    writer: Option<parking_lot::Mutex<std::sync::mpsc::Sender<crate::snapshots::ToWrite>>>,
    ml: ml::MlShared,
    resume_from: u64,
    updates: Vec<RefUpdate>,
    ref_offsets: consume::Offsets,
    partitions: i32,
    backup_floor: BTreeMap<(u64, Option<u32>), Vec<u64>>,
    /// Where keyed records and state go.
    key_groups: eddy_core::keys::KeyGroups,
    raw_resume: Option<Resume>,
    metrics: Arc<Metrics>,
    finished: AtomicUsize,
    stop: Stop,
}

/// Reads the job's last checkpoint from `P.checkpoints`.
pub fn read_checkpoint(cfg: &KafkaConfig, topics: &Topics, group: &str) -> Result<Option<JobCheckpoint>> {
    let msgs = read_to_end(cfg, &topics.checkpoints(), Duration::from_secs(30)).map_err(kafka_err)?;
    Ok(msgs
        .iter()
        .filter(|m| m.key() == Some(group.as_bytes()))
        .filter_map(|m| m.payload().and_then(|p| serde_json::from_slice::<JobCheckpoint>(p).ok()))
        .next_back())
}

/// A consumer could not be assigned its partitions of `what`.
fn assigning(what: &str, source: rdkafka::error::KafkaError) -> Error {
    Error::Kafka(eddy_kafka::Error::Kafka { context: format!("assigning {what}"), source })
}

/// The producer failed to deliver to `topic` (librdkafka's message).
fn produced(e: &eddy_kafka::produce::ProduceError) -> Error {
    Error::Kafka(e.clone().into())
}

fn kafka_err(e: eddy_kafka::Error) -> Error {
    Error::Kafka(e)
}

/// Reads the reference topics to their current end, as updates in `ts` order,
/// with the offset to go on from in each partition that had records.
/// A record without a value (a tombstone) is skipped: a delete must say from
/// when it applies, as `{"op":"delete",…}`.
pub fn read_reference(cfg: &KafkaConfig, topics: &Topics) -> Result<(Vec<RefUpdate>, consume::Offsets)> {
    let mut out = Vec::new();
    let mut next = BTreeMap::new();
    for topic in topics.reference() {
        for m in read_to_end(cfg, &topic, Duration::from_secs(60)).map_err(kafka_err)? {
            next.insert((topic.clone(), m.partition()), m.offset() + 1);
            let Some(p) = m.payload() else { continue };
            let parsed = serde_json::from_slice::<serde_json::Value>(p)
                .map_err(|e| e.to_string())
                .and_then(|v| RefUpdate::from_json(&v));
            match parsed {
                Ok(u) => out.push(u),
                Err(e) => tracing::warn!(
                    topic,
                    partition = m.partition(),
                    offset = m.offset(),
                    "skipping a reference record: {e}"
                ),
            }
        }
    }
    out.sort_by_key(|u| u.ts);
    Ok((out, next))
}

/// Runs one job until its input ends (an `end` marker in every partition),
/// or forever on a live stream.
pub fn run_job(opts: &RunOptions, mut on_progress: impl FnMut(RunProgress)) -> Result<RunSummary> {
    let started = Instant::now();
    let config = opts.workers.to_timely()?;
    opts.kafka.check_reachable().map_err(kafka_err)?;
    let group = opts.group();

    // Topics: the input and outputs exist before anyone reads or writes them.
    let reference = opts.topics.reference();
    let mut specs: Vec<TopicSpec> = opts
        .input_ports()
        .into_iter()
        .map(|p| TopicSpec::new(opts.topics.name(p), input_partitions(p, opts.partitions)))
        .filter(|t| !reference.contains(&t.name))
        .collect();
    specs.push(TopicSpec::compacted(opts.topics.checkpoints(), 1));
    specs.extend(
        opts.output_topics().into_iter().filter(|t| !reference.contains(t)).map(|t| TopicSpec::new(t, opts.partitions)),
    );
    specs.extend(reference.into_iter().map(|t| TopicSpec::compacted(t, 1)));
    ensure(&opts.kafka, &specs).map_err(kafka_err)?;

    let checkpoint = read_checkpoint(&opts.kafka, &opts.topics, &group)?;
    if let Some(c) = checkpoint.as_ref().filter(|c| c.complete) {
        // Its input ended and every output is durable: nothing is left to do.
        println!("{group}: complete (its input ended and every output is committed)");
        return Ok(RunSummary {
            job: group,
            records_in: 0,
            valid: 0,
            deadletter: 0,
            junk: 0,
            resumed_from: c.frontier,
            checkpoints: CheckpointSummary::default(),
            wall_time_s: started.elapsed().as_secs_f64(),
        });
    }
    let resume_from = checkpoint.as_ref().map_or(0, |c| c.frontier);
    if resume_from > 0 {
        tracing::info!(job = %group, frontier = resume_from, "resuming: outputs below the committed frontier are not written again");
        println!("{group}: resumed from frontier {resume_from} (outputs below it were committed by an earlier run)");
    }
    // The job's state: the newest checkpoint, and a writer for new ones.
    let (restart, writer) = if opts.checkpointable() {
        let location = opts.store_location();
        let existing = eddy_checkpoint::is_object_storage(&location)
            || std::path::Path::new(location.strip_prefix("file://").unwrap_or(&location)).is_dir();
        let store = if opts.checkpoints.every.is_some() || existing {
            Some(eddy_checkpoint::Store::open(&location).map_err(crate::snapshots::checkpoint_error)?)
        } else {
            None
        };
        let restart = match &store {
            Some(s) => align::load(s, &group, &opts.job.spec_text())?,
            None => None,
        };
        if let Some(r) = &restart {
            tracing::info!(job = %group, checkpoint = r.id, time = r.meta.time, "restoring the job's state");
            println!(
                "{group}: restored checkpoint {} (time {}): reading each partition from its offset there",
                r.id, r.meta.time
            );
        }
        let writer = match (store, opts.checkpoints.every) {
            (Some(s), Some(_)) => Some(crate::snapshots::Writer::start(s, opts.checkpoints.keep)?),
            _ => None,
        };
        (restart, writer)
    } else {
        (None, None)
    };
    // Every process of the job must come to the same key groups: those of
    // its checkpoint, or the same --key-groups.
    let key_groups = crate::snapshots::key_groups(
        opts.checkpoints.key_groups,
        restart.as_ref().map(|r| (r.id, r.meta.key_groups)),
        &opts.store_location(),
        opts.workers.total(),
    )?;
    // Before the reference topics are read (the adapter's markers read here
    // must come after updates read there).
    let ml = ml::prepare(opts)?;
    let (updates, ref_offsets) = if opts.reads_reference() {
        let mut u = spec_rules(&opts.spec);
        let (read, next) = read_reference(&opts.kafka, &opts.topics)?;
        u.extend(read);
        u.sort_by_key(|u| u.ts);
        (u, next)
    } else {
        (Vec::new(), BTreeMap::new())
    };
    let probe_consumer = consume::consumer(&opts.kafka, &group).map_err(kafka_err)?;
    let partitions =
        consume::partitions(&probe_consumer, &opts.input_topic(), opts.kafka.connect_timeout).map_err(kafka_err)?;
    drop(probe_consumer);

    // The Parquet outputs (the backup job's): what earlier runs committed.
    let (backup_floor, raw_resume) = match &opts.out {
        Some(out) => {
            std::fs::create_dir_all(out).map_err(|e| eddy_connectors::Error::io(out, e))?;
            let identity = PathBuf::from(format!("kafka:{}", opts.topics.enriched()));
            let resume = Resume::prepare(out, &identity)?;
            (backup_floors(&out.join("backup"))?, Some(resume))
        }
        None => (BTreeMap::new(), None),
    };

    let metrics = Arc::new(Metrics::default());
    let restored_from = restart.as_ref().map(|r| r.id);
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        restart,
        writer: writer.as_ref().map(|w| parking_lot::Mutex::new(w.sender())),
        ml,
        resume_from,
        updates,
        ref_offsets,
        partitions,
        backup_floor,
        key_groups,
        raw_resume,
        metrics: Arc::clone(&metrics),
        finished: AtomicUsize::new(0),
        stop: Stop::new(Arc::clone(&opts.stop)),
    });
    let worker_shared = Arc::clone(&shared);
    let guards = timely::execute(config, move |worker| {
        if let Err(e) = run_worker(worker, &worker_shared) {
            worker_shared.metrics.fail(e);
        }
        worker_shared.finished.fetch_add(1, Ordering::SeqCst);
    })
    .map_err(Error::Timely)?;
    while shared.finished.load(Ordering::SeqCst) < opts.workers.threads {
        on_progress(RunProgress { records: Metrics::get(&metrics.lines), bytes: Metrics::get(&metrics.bytes) });
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in guards.join() {
        r.map_err(Error::Timely)?;
    }
    drop(shared);
    let written = match writer {
        Some(w) => w.finish()?,
        None => 0,
    };
    if let Some(e) = metrics.failure() {
        return Err(Error::Worker(e));
    }
    // A job whose input ended has nothing to restart from (its record in
    // P.checkpoints says it is complete): its default store goes.
    let ended = !opts.stop.load(Ordering::SeqCst);
    if ended && opts.checkpointable() && opts.checkpoints.store.is_none() {
        let location = opts.store_location();
        if let Err(e) = std::fs::remove_dir_all(&location) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(store = %location, error = %e, "could not remove the checkpoints of a job that completed");
            }
        }
    }
    Ok(RunSummary {
        job: group,
        records_in: Metrics::get(&metrics.lines),
        valid: Metrics::get(&metrics.valid),
        deadletter: Metrics::get(&metrics.deadletter),
        junk: Metrics::get(&metrics.junk),
        resumed_from: resume_from,
        checkpoints: CheckpointSummary { written, restored_from },
        wall_time_s: started.elapsed().as_secs_f64(),
    })
}

/// For each earlier run (worker count and key groups), each backup
/// writer's committed frontier.
fn backup_floors(dir: &std::path::Path) -> Result<BTreeMap<(u64, Option<u32>), Vec<u64>>> {
    let mut out: BTreeMap<(u64, Option<u32>), Vec<u64>> = BTreeMap::new();
    if !dir.join(eddy_parquet::MANIFEST_DIR).is_dir() {
        return Ok(out);
    }
    eddy_parquet::cleanup_uncommitted(dir)?;
    let manifest = Manifest::load(dir)?;
    for entry in &manifest.entries {
        let Some(w) = WriterName::parse(&entry.writer) else { continue };
        let v = out.entry(w.run()).or_insert_with(|| vec![0; w.peers as usize]);
        if w.index < v.len() {
            v[w.index] = v[w.index].max(entry.epoch.unwrap_or(u64::MAX));
        }
    }
    Ok(out)
}

/// Where a consumer that reads a partition from its start is assigned: the
/// offset 0 itself (a partition whose log starts later is reset to its
/// start by `auto.offset.reset=earliest`). Assigned at `Offset::Beginning`,
/// librdkafka first asks the broker for the start offset, and a consumer of
/// a reference topic that was being written at that moment sometimes never
/// read a record of it (seen with Tansu 0.6).
const FIRST_OFFSET: i64 = 0;

/// A worker's part of a job.
struct Ctx<'s> {
    scope: Scope<'s, u64>,
    shared: Arc<Shared>,
    producer: Rc<RefCell<Producer>>,
    probe: ProbeHandle<u64>,
    inputs: Vec<Input>,
    progress: Rc<SourceProgress>,
    /// Markers of output topics that are not the job's frontier (ML jobs).
    topic_marks: Rc<RefCell<Vec<ml::TopicMark>>>,
    /// Inside the calibration loop: the readings in flight, for the markers
    /// of the job's outputs.
    in_loop: Option<ml::LoopOut>,
    /// A probe of the job's input, which paces its live reference data.
    watch: Option<ProbeHandle<u64>>,
}

impl<'s> Ctx<'s> {
    fn opts(&self) -> &RunOptions {
        &self.shared.opts
    }

    /// A consumer for `topic`, assigned this worker's share of its partitions.
    fn input(&mut self, topic: &str, partitions: i32, rewind: bool) -> Result<Option<Input>> {
        let (index, peers) = (self.scope.index(), self.scope.peers());
        let mine: Vec<i32> = (0..partitions).filter(|p| *p as usize % peers == index).collect();
        if mine.is_empty() {
            return Ok(None);
        }
        let consumer = consume::consumer(&self.opts().kafka, &self.opts().group()).map_err(kafka_err)?;
        // A job restored from a checkpoint reads from its offsets; a job that
        // rebuilds its state without one, from the beginning; any other,
        // from its committed offsets.
        let restart = self.shared.restart.as_ref().map(|r| r.meta.offsets.get(topic).cloned().unwrap_or_default());
        let committed = match restart {
            Some(at) => mine.iter().map(|p| (*p, at.get(p).copied())).collect(),
            None if rewind => BTreeMap::new(),
            None => consume::committed(&consumer, topic, &mine).map_err(kafka_err)?,
        };
        let mut tpl = TopicPartitionList::new();
        let mut floor = BTreeMap::new();
        for p in &mine {
            let at = match committed.get(p).copied().flatten() {
                Some(c) => {
                    floor.insert(*p, c);
                    Offset::Offset((c - RESUME_REWIND).max(0))
                }
                // Offset 0, not `Offset::Beginning`: see `FIRST_OFFSET`.
                None => Offset::Offset(FIRST_OFFSET),
            };
            tpl.add_partition_offset(topic, *p, at).map_err(|e| assigning(topic, e))?;
        }
        let mut unsettled = Unsettled::default();
        for p in &mine {
            unsettled.start(*p, floor.get(p).copied().unwrap_or(FIRST_OFFSET));
        }
        let floor = Rc::new(floor);
        consumer.assign(&tpl).map_err(|e| assigning(topic, e))?;
        tracing::info!(topic, ?committed, "reading from the committed offsets (or the beginning)");
        let input = Input {
            consumer: Rc::new(consumer),
            topic: topic.to_string(),
            partitions: mine,
            unsettled: Rc::new(RefCell::new(unsettled)),
            floor: Rc::clone(&floor),
        };
        self.inputs.push(Input {
            consumer: Rc::clone(&input.consumer),
            topic: input.topic.clone(),
            partitions: input.partitions.clone(),
            unsettled: Rc::clone(&input.unsettled),
            floor,
        });
        Ok(Some(input))
    }

    fn typed<D: Stamped + timely::ExchangeData>(&mut self, topic: &str) -> Result<(Flow<'s, D>, Flow<'s, DeadLetter>)> {
        let rewind = self.opts().rewinds();
        let input = self.input(topic, self.shared.partitions, rewind)?;
        let start = self.shared.restart.as_ref().map_or(0, |r| r.meta.time);
        let (data, dead) = typed_source::<D>(
            self.scope,
            topic,
            input,
            start,
            Rc::clone(&self.progress),
            Arc::clone(&self.shared.metrics),
            self.shared.stop.clone(),
        );
        // A job whose state is checkpointed keeps each device's state on the
        // worker of its key group (`snapshot::Owner`), as `eddy replay`
        // does, not on the worker that reads its partition: so a checkpoint
        // restores at any number of workers and processes.
        let data = if self.shared.writer.is_some() || self.shared.restart.is_some() {
            use timely::dataflow::operators::Exchange;
            let place = eddy_core::keys::Placement::current(self.scope.peers());
            data.exchange(move |d: &D| place.worker_of_hash(d.route()))
        } else {
            data
        };
        Ok((Flow::new(data, "source"), Flow::new(dead, "source")))
    }

    fn raw(&mut self) -> Result<RawStreams<'s>> {
        let raw_topic = self.opts().topics.raw();
        let partitions = {
            let c = consume::consumer(&self.opts().kafka, &self.opts().group()).map_err(kafka_err)?;
            consume::partitions(&c, &raw_topic, self.opts().kafka.connect_timeout).map_err(kafka_err)?
        };
        let input = self.input(&raw_topic, partitions, true)?;
        let spec = &self.opts().spec.ingest;
        let cfg = RawConfig {
            clock: spec.clock(),
            epoch_ms: spec.epoch.ms(),
            ranges: spec.ranges(),
            idle_timeout: self.opts().idle_timeout,
            max_line: spec.max_line.as_usize(),
        };
        Ok(raw_source(
            self.scope,
            &self.opts().job_name(),
            input,
            cfg,
            Rc::clone(&self.progress),
            Arc::clone(&self.shared.metrics),
            self.shared.stop.clone(),
        ))
    }

    fn sink<D: Clone + 'static>(&self, flow: Flow<'s, D>, topic: String, encoder: Encoder<D>) {
        let sink = self.topic_sink(topic, encoder);
        flow.step(&format!("sink.{}", sink.topic())).sink(sink).register(&self.probe, &self.shared.metrics);
    }

    /// A sink writing to `topic` with the job's producer.
    fn topic_sink<D>(&self, topic: String, encoder: Encoder<D>) -> KafkaSink<D> {
        KafkaSink::new(Rc::clone(&self.producer), topic, encoder, self.shared.resume_from)
    }

    /// The reference arrangements: what the reference topics held at start,
    /// then every change that arrives while the job runs (read by worker 0),
    /// paced by `probe`, of the job's input.
    fn reference_watching(&self, probe: ProbeHandle<u64>) -> Result<Reference<'s>> {
        let leader = self.scope.index() == 0;
        let updates = if leader { self.shared.updates.clone() } else { Vec::new() };
        let consumer = if leader { Some(self.reference_consumer()?) } else { None };
        let spec = &self.opts().spec.ingest;
        let ahead = (spec.lateness.ms() + spec.epoch.ms()).max(0) as u64;
        let live =
            live_reference(self.scope, "reference.live", consumer, probe, ahead, Rc::clone(&self.progress), None);
        Ok(reference_with_feedback(self.scope, "reference", updates, Rc::clone(&self.progress), Some(live)))
    }

    /// The live reference consumer, and the offset each of its partitions
    /// was assigned at.
    fn reference_consumer(&self) -> Result<(rdkafka::consumer::BaseConsumer, consume::Offsets)> {
        let opts = self.opts();
        let consumer = consume::consumer(&opts.kafka, &format!("{}.reference", opts.group())).map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for topic in opts.topics.reference() {
            let n = consume::partitions(&consumer, &topic, opts.kafka.connect_timeout).map_err(kafka_err)?;
            for p in 0..n {
                // Past what was read at start; fetched from a little before
                // it (the records below it are skipped: see RESUME_REWIND).
                let at = self.shared.ref_offsets.get(&(topic.clone(), p)).copied().unwrap_or(FIRST_OFFSET);
                next.insert((topic.clone(), p), at);
                tpl.add_partition_offset(&topic, p, Offset::Offset((at - RESUME_REWIND).max(FIRST_OFFSET)))
                    .map_err(|e| assigning(&topic, e))?;
            }
        }
        consumer.assign(&tpl).map_err(|e| assigning("the reference topics", e))?;
        tracing::debug!(?next, "reading reference changes live from");
        Ok((consumer, next))
    }
}

/// Encodes with serde (eddy's own topics, read back by the next job).
fn as_serde<D: Serialize + 'static>(key: fn(&D) -> Option<Arc<str>>) -> Encoder<D> {
    Encoder {
        value: Box::new(|d: &D, out: &mut Vec<u8>| {
            serde_json::to_writer(&mut *out, d).expect("records serialise to memory");
        }),
        key: Box::new(key),
    }
}

fn dead_encoder() -> Encoder<DeadLetter> {
    as_serde(|_| None)
}

/// Where an output port goes over Kafka: a topic, written by a
/// [`KafkaSink`] with the port's codec and the record's key.
pub struct TopicTarget {
    producer: Rc<RefCell<Producer>>,
    topic: String,
    resume_from: u64,
    /// Inside the calibration loop: the records are counted out of the loop,
    /// and the topic's markers follow the readings in flight.
    in_loop: Option<(ml::LoopOut, Rc<RefCell<Vec<ml::TopicMark>>>)>,
}

impl TopicTarget {
    /// Writes `flow` to the topic, encoded with `codec`.
    pub(crate) fn sink<'s, D: OutputRecord>(self, flow: Flow<'s, D>, codec: Codec) -> Committed<'s> {
        let encoder =
            Encoder { value: Box::new(move |d: &D, out: &mut Vec<u8>| d.encode_as(codec, out)), key: Box::new(D::key) };
        let step = format!("sink.{}", self.topic);
        let Some((in_loop, marks)) = self.in_loop else {
            let sink = KafkaSink::new(self.producer, self.topic, encoder, self.resume_from);
            return flow.step(&step).sink(sink);
        };
        let topic = self.topic.clone();
        let sink = KafkaSink::new(self.producer, self.topic, encoder, self.resume_from);
        let acked = in_loop.sink(flow, &step, sink);
        let (probe, stream) = acked.stream.probe();
        marks.borrow_mut().push(in_loop.mark(topic, probe));
        Committed { stream, processed: None, report: acked.report }
    }
}

/// A job's ports over Kafka: input ports are typed sources of `P.<port>`
/// (their undecodable records go to `P.deadletter`), output ports are
/// topics.
impl<'s> Wiring<'s> for Ctx<'s> {
    fn scope(&self) -> Scope<'s, u64> {
        self.scope
    }

    fn input(&mut self, port: &str, record: Record) -> Result<PortFlow<'s>> {
        let topic = self.opts().topics.name(port);
        let flow = match record {
            Record::Raw => {
                let s = self.raw()?;
                return Ok(PortFlow::Raw(Flow::new(s.raw, &self.opts().job_name())));
            }
            Record::Reading => {
                let (flow, dead) = self.typed::<Reading>(&topic)?;
                self.sink(dead, self.opts().topics.deadletter(), dead_encoder());
                PortFlow::Readings(flow)
            }
            Record::Enriched => {
                let (flow, dead) = self.typed::<Enriched>(&topic)?;
                self.sink(dead, self.opts().topics.deadletter(), dead_encoder());
                PortFlow::Enriched(flow)
            }
        };
        let watch = match &flow {
            PortFlow::Readings(f) => f.clone().into_shared().probe().0,
            PortFlow::Enriched(f) => f.clone().into_shared().probe().0,
            PortFlow::Raw(_) => unreachable!("returned above"),
        };
        self.watch = Some(watch);
        Ok(flow)
    }

    fn lines(&mut self, name: &str) -> Result<Lines<'s>> {
        let s = self.raw()?;
        Ok(Lines { readings: Flow::new(s.readings, name), dead: Flow::new(s.dead, name), raw: Flow::new(s.raw, name) })
    }

    fn reference(&mut self) -> Result<Reference<'s>> {
        let watch = self
            .watch
            .clone()
            .ok_or_else(|| Error::Job("over Kafka, a job reads its input before its reference data".into()))?;
        self.reference_watching(watch)
    }

    fn calibration_loop(&mut self, readings: Flow<'s, Reading>) -> Result<(Flow<'s, Reading>, Reference<'s>)> {
        ml::calibration_loop(self, readings)
    }

    fn feedback(&mut self, topic: &str, updates: Flow<'s, CalibrationUpdate>) -> Result<()> {
        ml::feedback(self, topic, updates)
    }

    fn calibration_book(&self, channel: Channel) -> CalibrationBook {
        CalibrationBook::new(&self.shared.ml.dataset_calibration, channel)
    }

    fn models(&mut self, name: &str, watch: &Flow<'s, Enriched>) -> Result<StreamVec<'s, u64, ModelUpdate>> {
        ml::models(self, name, watch)
    }

    /// Rows below the frontier that the writer which had their device
    /// committed are in the backup already: they are dropped. Each device's
    /// rows go to the writer its route gives.
    fn backup(&mut self, enriched: Flow<'s, Enriched>) -> Result<()> {
        let out = self.parquet_dir()?;
        let (index, peers) = (self.scope.index(), self.scope.peers());
        let floors = self.shared.backup_floor.clone();
        // Writer `w{i}of{p}g{n}` holds the devices of worker `i`'s key groups
        // (as in `eddy replay`), not those of the partitions worker `i`
        // reads: the floor a restarted job looks up for a device is then its
        // writer's.
        let name = WriterName::of_worker(index, peers);
        let routed = {
            use timely::dataflow::operators::Exchange;
            let place = eddy_core::keys::Placement::current(peers);
            enriched.into_stream().exchange(move |e: &Enriched| place.worker(e.device))
        };
        // Each run's writer of a device wrote its rows from the floor it
        // was given up to its last commit, so the backup holds a device's
        // rows below the largest frontier any of them committed.
        let kept = suppress(routed, "backup.resume", move |e: &Enriched| {
            floors
                .iter()
                .map(|(&(peers, groups), f)| {
                    f.get(WriterName { peers, groups, index: 0 }.writer_of(e.device)).copied().unwrap_or(0)
                })
                .max()
                .unwrap_or(0)
        });
        let writer = BackupWriter::new(&out.join("backup"), &name.to_string(), backup_config(&self.opts().spec.backup));
        let sink = ParquetSink::new(writer, Default::default()).settled();
        Flow::new(kept, &self.opts().job_name()).sink(sink).register(&self.probe, &self.shared.metrics);
        Ok(())
    }

    fn raw_archive(&mut self, raw: Flow<'s, RawLine>) -> Result<()> {
        let out = self.parquet_dir()?;
        let index = self.scope.index();
        let resume = self.shared.raw_resume.as_ref().map(|r| Arc::clone(&r.raw)).unwrap_or_default();
        let writer =
            RawArchiveWriter::new(&out.join("raw"), &format!("raw-w{index}"), backup_config(&self.opts().spec.backup));
        raw.sink(ParquetSink::new(writer, resume)).register(&self.probe, &self.shared.metrics);
        Ok(())
    }

    fn offer(&mut self, _port: &str, _flow: PortFlow<'s>) {}

    fn target(&mut self, _port: &str, topic: &str, carry: Port) -> Result<Target> {
        if !carry.topic {
            return Ok(Target::Nothing);
        }
        Ok(Target::Topic(TopicTarget {
            producer: Rc::clone(&self.producer),
            topic: self.opts().topics.name(topic),
            resume_from: self.shared.resume_from,
            in_loop: self.in_loop.clone().map(|l| (l, Rc::clone(&self.topic_marks))),
        }))
    }

    fn commit(&mut self, committed: Committed<'s>) {
        committed.register(&self.probe, &self.shared.metrics);
    }

    fn sink_last(&mut self, sink: Box<dyn FnOnce() -> Committed<'s> + 's>) {
        self.commit(sink());
    }
}

impl Ctx<'_> {
    /// Where a job that writes Parquet writes it (`--out`).
    fn parquet_dir(&self) -> Result<PathBuf> {
        self.opts()
            .out
            .clone()
            .ok_or_else(|| Error::Usage(format!("the {} job writes Parquet: give it --out DIR", self.opts().kind())))
    }
}

/// Checks that every process of the job places keys alike: a process
/// started with another `--key-groups` would send each reading to another
/// worker than the one holding its device's reference data and state. Every
/// worker hears every worker's key groups, so each fails alike.
fn agree_on_key_groups(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<()> {
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    if shared.opts.workers.processes <= 1 {
        return Ok(());
    }
    let mine = shared.key_groups.get();
    let heard: Rc<RefCell<Vec<(usize, u32)>>> = Rc::default();
    let into = Rc::clone(&heard);
    let (mut input, probe) = worker.dataflow::<u64, _, _>(move |scope| {
        let (input, stream) = scope.new_input::<Vec<(usize, u32)>>();
        let (probe, _) = stream.broadcast().inspect(move |x: &(usize, u32)| into.borrow_mut().push(*x)).probe();
        (input, probe)
    });
    input.send((worker.index(), mine));
    drop(input);
    worker.step_while(|| !probe.done());
    let heard = heard.borrow();
    match heard.iter().find(|(_, g)| *g != mine) {
        Some((other, theirs)) => Err(Error::Usage(format!(
            "worker {other} of this job has {theirs} key groups and worker {} has {mine}: \
             start every process of a job with the same --key-groups",
            worker.index()
        ))),
        None => Ok(()),
    }
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Arc<Shared>) -> Result<()> {
    let opts = &shared.opts;
    eddy_core::keys::install(shared.key_groups);
    agree_on_key_groups(worker, shared)?;
    let producer = Rc::new(RefCell::new(Producer::new(&opts.kafka).map_err(kafka_err)?));
    let probe = ProbeHandle::new();
    let progress = Rc::new(SourceProgress::default());
    // A job that takes or restores checkpoints: its operators register
    // their state, and its sources follow the agreed cuts.
    let checkpointing = shared.writer.is_some() || shared.restart.is_some();
    let alignment = Rc::new(snapshot::Alignment::default());
    if checkpointing {
        let owner = snapshot::Owner::new(worker.index(), worker.peers());
        snapshot::install(owner, shared.restart.as_ref().map(|r| Arc::clone(&r.restored)), None);
        if shared.writer.is_some() {
            snapshot::install_alignment(Rc::clone(&alignment));
        }
    }
    let main = worker.next_dataflow_index();
    let mut built: Result<(Vec<Input>, Vec<ml::TopicMark>)> = Ok(Default::default());
    worker.dataflow::<u64, _, _>(|scope| {
        let mut ctx = Ctx {
            scope,
            shared: Arc::clone(shared),
            producer: Rc::clone(&producer),
            probe: probe.clone(),
            inputs: Vec::new(),
            progress: Rc::clone(&progress),
            topic_marks: Rc::default(),
            in_loop: None,
            watch: None,
        };
        let opts = ctx.opts().clone();
        built = opts.job.build(&opts.spec, &mut ctx).map(|_| (ctx.inputs, ctx.topic_marks.take()));
    });
    let built = built.and_then(|b| match snapshot::take_errors().into_iter().next() {
        Some(e) => Err(Error::Usage(format!("restoring checkpoint: {e}"))),
        None => Ok(b),
    });
    let (inputs, topic_marks) = match built {
        Ok(i) => i,
        Err(e) => {
            // Keep stepping so the other workers can finish; report the error.
            shared.metrics.fail(e);
            Default::default()
        }
    };

    // Worker 0 writes the job's checkpoint and the markers; every worker
    // commits the offsets of its partitions.
    let leader = worker.index() == 0;
    let mut marks = if leader { Some(Marks::new(opts, shared)?) } else { None };
    // The adapter's first markers (its frontier + the loop delay) go out at
    // once: the enrich job in its loop waits for them.
    let topic_values: Vec<u64> = topic_marks.iter().map(|m| if m.at_start { (m.value)(0) } else { 0 }).collect();
    if let Some(m) = marks.as_mut().filter(|_| topic_values.iter().any(|v| *v > 0)) {
        m.mark_topics(&topic_marks, &topic_values)?;
    }
    let aligned_inputs: Vec<Input> = inputs
        .iter()
        .map(|i| Input {
            consumer: Rc::clone(&i.consumer),
            topic: i.topic.clone(),
            partitions: i.partitions.clone(),
            unsettled: Rc::clone(&i.unsettled),
            floor: Rc::clone(&i.floor),
        })
        .collect();
    let commits = KafkaCommits {
        shared: Arc::clone(shared),
        producer: Rc::clone(&producer),
        inputs,
        marks,
        topic_marks,
        topic_values,
        last_frontier: 0,
        last_mark: Instant::now(),
    };
    let mut commits: Box<dyn Commits> = match &shared.writer {
        Some(writer) => {
            let control = align::Control::build(worker);
            let leader = (worker.index() == 0).then(|| align::LeaderSetup {
                every: opts.checkpoints.every.unwrap_or(Duration::MAX),
                epoch: opts.spec.ingest.epoch.ms().max(2) as u64,
                writer: writer.lock().clone(),
                job: opts.group(),
                spec: opts.job.spec_text(),
            });
            Box::new(align::Aligned::new(
                commits,
                worker,
                control,
                alignment,
                &aligned_inputs,
                leader,
                Arc::clone(&shared.metrics),
            ))
        }
        None => Box::new(commits),
    };
    let driven = drive_until(worker, &probe, Duration::from_millis(10), &mut commits, Some(main));
    snapshot::uninstall();
    driven?;
    // A stopped job's dataflow never completes (its sources keep their
    // capabilities): drop it, or timely would wait for it.
    for id in worker.installed_dataflows() {
        worker.drop_dataflow(id);
    }
    while !producer.borrow_mut().flush(Duration::from_secs(1)) {
        tracing::info!("waiting for the brokers to acknowledge the last records");
    }
    Ok(())
}

/// The Kafka jobs' commit protocol: once every output below a frontier is
/// acknowledged, every worker commits its partitions' consumer offsets up
/// to the first record not yet durable, and worker 0 writes the job's
/// checkpoint and a watermark marker into every partition of its outputs
/// (at most every `marker_every`). A requested stop ends the run once every
/// output below the least time a source stopped at is durable.
struct KafkaCommits {
    shared: Arc<Shared>,
    producer: Rc<RefCell<Producer>>,
    inputs: Vec<Input>,
    /// Worker 0's markers and checkpoints.
    marks: Option<Marks>,
    /// Markers of output topics that are not the job's frontier (ML jobs),
    /// and the values last written.
    topic_marks: Vec<ml::TopicMark>,
    topic_values: Vec<u64>,
    last_frontier: u64,
    last_mark: Instant,
}

impl Commits for KafkaCommits {
    fn committed(&mut self, frontier: u64, done: bool) -> Result<Next> {
        let opts = &self.shared.opts;
        let stop = &self.shared.stop;
        self.producer.borrow_mut().poll();
        let (mut frontier, mut done) = (frontier, done);
        // A failed run commits nothing more: a failed sink no longer holds
        // its output back (so that the dataflow can wind down), so the
        // frontier no longer says what is durable. Its sources are asked to
        // stop, so that the run ends with the error.
        let failed = self.shared.metrics.failure().is_some();
        if failed {
            stop.requested.store(true, Ordering::Relaxed);
        }
        // Stopping: once every source has stopped and every output below the
        // least stop time is durable, checkpoint there and leave.
        if stop.all_stopped() {
            let limit = stop.limit();
            if limit == u64::MAX {
                // This process read nothing: nothing to checkpoint.
                return Ok(Next::Stop);
            }
            if frontier >= limit {
                frontier = limit;
                done = true;
            }
        }
        let due = self.last_mark.elapsed() >= opts.marker_every || done;
        // An empty frontier means "complete" only once the dataflow is done:
        // before its first steps a probe has not heard of any capability yet.
        let trusted = frontier < u64::MAX || done;
        let values: Vec<u64> =
            if trusted { self.topic_marks.iter().map(|m| (m.value)(frontier)).collect() } else { Vec::new() };
        let moved = values.iter().zip(&self.topic_values).any(|(v, last)| v > last);
        if (frontier > self.last_frontier || moved) && due && trusted && !failed {
            self.last_frontier = self.last_frontier.max(frontier);
            if moved {
                for (last, v) in self.topic_values.iter_mut().zip(&values) {
                    *last = (*last).max(*v);
                }
            }
            self.last_mark = Instant::now();
            for input in &self.inputs {
                let offsets = input.unsettled.borrow_mut().settle(frontier);
                tracing::debug!(topic = %input.topic, frontier, ?offsets, "committing");
                if let Err(e) = consume::commit(&input.consumer, &input.topic, &offsets) {
                    tracing::warn!("{e}; retrying at the next commit");
                }
            }
            if let Some(m) = self.marks.as_mut() {
                let own: Vec<&str> = self.topic_marks.iter().map(|t| t.topic.as_str()).collect();
                let plain: Vec<String> =
                    opts.output_topics().into_iter().filter(|t| !own.contains(&t.as_str())).collect();
                m.mark(self.last_frontier, &plain)?;
                m.mark_topics(&self.topic_marks, &self.topic_values)?;
            }
        }
        Ok(if done { Next::Stop } else { Next::Run })
    }

    fn finish(&mut self) -> Result<()> {
        match self.marks.as_mut() {
            Some(m) => m.finish(),
            None => Ok(()),
        }
    }
}

/// The leader's markers and checkpoints.
struct Marks {
    producer: Producer,
    checkpoints: String,
    group: String,
    partitions: BTreeMap<String, i32>,
}

impl Marks {
    fn new(opts: &RunOptions, _shared: &Shared) -> Result<Marks> {
        let producer = Producer::new(&opts.kafka).map_err(kafka_err)?;
        let mut partitions = BTreeMap::new();
        for t in opts.output_topics() {
            let n = producer.partitions(&t, opts.kafka.connect_timeout).map_err(kafka_err)?;
            partitions.insert(t, n);
        }
        Ok(Marks { producer, checkpoints: opts.topics.checkpoints(), group: opts.group(), partitions })
    }

    fn mark(&mut self, frontier: u64, outputs: &[String]) -> Result<()> {
        for topic in outputs {
            for p in 0..self.partitions[topic] {
                self.producer.send(topic, Some(p), None, None, marker_headers(frontier));
            }
        }
        let cp = JobCheckpoint { version: 1, job: self.group.clone(), frontier, complete: frontier == u64::MAX };
        let value = serde_json::to_vec(&cp).expect("checkpoint serialises");
        self.producer.send(&self.checkpoints, None, Some(self.group.as_bytes()), Some(&value), Default::default());
        self.producer.poll();
        match self.producer.error() {
            Some(e) => Err(produced(e)),
            None => Ok(()),
        }
    }

    /// Markers of the topics whose markers are not the job's frontier.
    fn mark_topics(&mut self, topics: &[ml::TopicMark], values: &[u64]) -> Result<()> {
        for (t, v) in topics.iter().zip(values) {
            for p in 0..self.partitions[&t.topic] {
                self.producer.send(&t.topic, Some(p), t.key.map(str::as_bytes), None, marker_headers(*v));
            }
        }
        self.producer.poll();
        match self.producer.error() {
            Some(e) => Err(produced(e)),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<()> {
        while !self.producer.flush(Duration::from_secs(1)) {
            tracing::info!("waiting for the brokers to acknowledge the checkpoint");
        }
        Ok(())
    }
}
