//! Running a job over a recorded dataset: [`run`] and [`JobContext`].
//!
//! [`run`] starts the timely workers, calls your `build` function once per
//! worker with a [`JobContext`] (sources, reference data, outputs), drives
//! the dataflow to completion, keeps the commit ledger, and returns the
//! run's [`Summary`]. `eddy replay` is one such job (see `replay.rs`); so is
//! `examples/custom_job.rs`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use timely::dataflow::{ProbeHandle, Scope};

use eddy_connectors::dataset::Dataset;
use eddy_connectors::jsonl::{JsonlFile, JsonlSink};
use eddy_core::reading::{DeadLetter, LineSource, RawLine, Reading};
use eddy_core::reference::{RefChange, RefUpdate, Rule, RuleScope};
use eddy_core::spec::PipelineSpec;
use eddy_core::Channel;
use eddy_operators::ingest::{ingest_source, Backpressure, IngestConfig, SourceProgress};
use eddy_operators::metrics::Metrics;
use eddy_operators::reference::{reference, Reference};
use eddy_operators::sink::Taken;
use eddy_operators::snapshot::{self, Barrier, Complete, Owner};
use eddy_parquet::{BackupWriter, RawArchiveWriter};

use crate::backup::{backup_config, ParquetSink, Resume};
use crate::checkpoint::Ledger;
use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};
use crate::runner::{drive, Commits, NoCommits};
use crate::snapshots::{CheckpointOptions, Checkpointing, Finish, OutputPosition, ReplayMeta, Restart, Writer};
use crate::workers::Workers;

/// When paced (`--speed`), the ingest source wakes at most this often.
const PACE_TICK: Duration = Duration::from_micros(500);

/// What to run a job on.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// The core jobs' specs (ingest settings, standard rules, …).
    pub spec: PipelineSpec,
    /// The jobs `eddy replay` builds (those [`active`](crate::component::JobInstance::active)
    /// with the pipeline's spec), in registry order: the built-in defaults
    /// and any job of the registry whose spec was given.
    pub jobs: Vec<crate::component::JobInstance>,
    /// Workers (`-w`).
    pub workers: Workers,
    /// `Some(x)`: replay at x times the recorded event-time pace.
    pub speed: Option<f64>,
    /// Reference data (a dataset directory) for a dataset that has none of
    /// its own, such as a backup.
    pub reference: Option<PathBuf>,
    /// `eddy replay`'s JSON-lines outputs to write (`--outputs`), by name
    /// (an output port with a file: [`crate::replay::files`]); `None`: every one. An
    /// output left out is not written, and a job whose only output it is
    /// (stats, windows, alerts) is not run. The Parquet backup and the raw
    /// archive follow the backup spec.
    pub outputs: Option<Vec<String>>,
    /// Checkpoints: how often, where, how many kept (every 10 s into
    /// `OUT/_checkpoints` by default). A run into an `OUT` whose store holds
    /// one restarts from it.
    pub checkpoints: CheckpointOptions,
}

impl JobOptions {
    /// Options with the defaults: built-in specs and jobs, one worker, full speed.
    pub fn new(dataset: impl Into<PathBuf>, out: impl Into<PathBuf>) -> JobOptions {
        let jobs = crate::component::Registry::builtin().defaults();
        JobOptions::with_jobs(dataset, out, jobs)
    }

    /// Options running `jobs` (see [`Registry::load`](crate::component::Registry::load)).
    pub fn with_jobs(dataset: impl Into<PathBuf>, out: impl Into<PathBuf>, jobs: crate::component::Jobs) -> JobOptions {
        JobOptions {
            dataset: dataset.into(),
            out: out.into(),
            spec: jobs.pipeline,
            jobs: jobs.instances,
            workers: Workers::default(),
            speed: None,
            reference: None,
            outputs: None,
            checkpoints: CheckpointOptions::default(),
        }
    }
}

/// The ingest job's outputs, as flows.
pub struct Ingest<'s> {
    /// Valid readings, late ones flagged.
    pub readings: Flow<'s, Reading>,
    /// Lines that failed validation.
    pub dead: Flow<'s, DeadLetter>,
    /// Every line as received (empty when the backup spec disables the raw archive).
    pub raw: Flow<'s, RawLine>,
}

/// A progress report, sent about ten times a second.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Input bytes read.
    pub bytes: u64,
    /// Input size in bytes.
    pub total_bytes: u64,
    /// Lines read.
    pub lines: u64,
    /// Valid readings.
    pub valid: u64,
    /// Dead letters.
    pub deadletter: u64,
}

/// The summary of a run, written to `OUT/summary.json`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Lines that passed validation (late ones included).
    pub valid: u64,
    /// Valid readings classified late.
    pub late: u64,
    /// Valid readings classified future: too far ahead of the fleet clock.
    pub future: u64,
    /// Lines that failed validation.
    pub deadletter: u64,
    /// On-time valid readings with at least one junk channel.
    pub junk: u64,
    /// Records written to each output; for `backup` and `raw`, the rows
    /// their manifests hold.
    pub records: BTreeMap<String, u64>,
    /// On-time junk readings per device.
    pub junk_by_device: BTreeMap<String, u64>,
    /// Input lines read.
    pub lines: u64,
    /// Input bytes read.
    pub bytes: u64,
    /// Worker threads.
    pub workers: usize,
    /// Wall time of the run, seconds.
    pub wall_time_s: f64,
    /// Input lines per second of wall time.
    pub lines_per_s: f64,
    /// Checkpoints written, and the one the run restarted from.
    pub checkpoints: crate::snapshots::CheckpointSummary,
}

/// Process-wide state shared by the workers of a run.
pub(crate) struct Shared {
    dataset: Dataset,
    resume: Resume,
    /// Every reference change, for [`JobContext::reference_changes`]: kept
    /// only when a job of the pipeline asks for them (the calibration adapter).
    updates: Vec<RefUpdate>,
    /// The same changes, handed to worker 0's reference source (moved, not
    /// cloned: for a large fleet they are hundreds of megabytes).
    handoff: Mutex<Option<Vec<RefUpdate>>>,
    spec: PipelineSpec,
    speed: Option<f64>,
    jobs: Vec<crate::component::JobInstance>,
    out: PathBuf,
    files: Mutex<BTreeMap<String, Arc<JsonlFile>>>,
    metrics: Arc<Metrics>,
    finished: AtomicUsize,
    /// The checkpoint the run restarts from.
    restart: Option<Restart>,
    /// The checkpoint barrier, when the run takes checkpoints.
    barrier: Option<Arc<Barrier>>,
    /// Where checkpoints go, while the run takes them.
    writer: Mutex<Option<std::sync::mpsc::Sender<crate::snapshots::ToWrite>>>,
    /// Each job's spec as text, for the checkpoints.
    specs: BTreeMap<String, String>,
    /// Where keyed records and state go.
    key_groups: eddy_core::keys::KeyGroups,
}

impl Finish for Shared {
    fn meta(&self, c: &Complete) -> Result<ReplayMeta> {
        let mut outputs = BTreeMap::new();
        for (name, f) in self.files.lock().iter() {
            let (bytes, records) = f.position()?;
            outputs.insert(name.clone(), OutputPosition { bytes, records });
        }
        Ok(ReplayMeta {
            version: ReplayMeta::VERSION,
            input: self.dataset.readings.display().to_string(),
            position: c.position,
            offset: c.offset,
            time: c.time,
            workers: c.parts.len(),
            specs: self.specs.clone(),
            outputs,
            counters: crate::snapshots::Counters::of(&self.metrics),
            pause_ms: 0.0,
            key_groups: Some(self.key_groups),
        })
    }
}

impl Shared {
    pub(crate) fn file(&self, name: &str) -> Result<Arc<JsonlFile>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(name) {
            return Ok(Arc::clone(f));
        }
        let f = JsonlFile::create(&self.out.join(format!("{name}.jsonl")))?;
        files.insert(name.to_string(), Arc::clone(&f));
        Ok(f)
    }
}

/// What a job's `build` function gets on each worker.
pub struct JobContext<'s, 'a> {
    scope: Scope<'s, u64>,
    shared: &'a Shared,
    input: Option<Box<dyn LineSource>>,
    updates: Option<Vec<RefUpdate>>,
    progress: Rc<SourceProgress>,
    probe: ProbeHandle<u64>,
    /// The sinks' input frontiers, for the ingest source's backpressure.
    processed: Rc<RefCell<Vec<Taken>>>,
    reference: Option<Reference<'s>>,
}

impl<'s, 'a> JobContext<'s, 'a> {
    /// The dataflow scope, for operators of your own.
    pub fn scope(&self) -> Scope<'s, u64> {
        self.scope
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.scope.index()
    }

    /// The job specs.
    pub fn spec(&self) -> &PipelineSpec {
        &self.shared.spec
    }

    /// The component jobs of the run, in registry order.
    pub fn jobs(&self) -> &[crate::component::JobInstance] {
        &self.shared.jobs
    }

    /// The JSON-lines file `OUT/<name>.jsonl`, shared by the process's workers.
    pub(crate) fn jsonl_file(&self, name: &str) -> Result<Arc<JsonlFile>> {
        self.shared.file(name)
    }

    /// The dataset's readings, through the ingest job: valid readings (late
    /// ones flagged), dead letters, and the raw lines. Call it once.
    pub fn ingest(&mut self) -> Ingest<'s> {
        let spec = &self.shared.spec.ingest;
        let cfg = IngestConfig {
            clock: spec.clock(),
            epoch_ms: spec.epoch.ms(),
            ranges: spec.ranges(),
            speed: self.shared.speed,
            batch_lines: 1024,
            pace_tick: PACE_TICK,
            raw: self.shared.spec.backup.enabled && self.shared.spec.backup.raw_archive,
            max_line: spec.max_line.as_usize(),
            backpressure: Some(Backpressure {
                processed: Rc::clone(&self.processed),
                max_lines: Backpressure::MAX_LINES,
            }),
            barrier: self.shared.barrier.clone(),
        };
        let name = spec.name.clone().unwrap_or_else(|| "ingest".into());
        let streams = ingest_source(
            self.scope,
            &name,
            self.input.take(),
            cfg,
            Rc::clone(&self.progress),
            Arc::clone(&self.shared.metrics),
        );
        Ingest {
            readings: Flow::new(streams.readings, &name),
            dead: Flow::new(streams.dead, &name),
            raw: Flow::new(streams.raw, &name),
        }
    }

    /// A sink writing every reading it gets to the Parquet backup
    /// (`OUT/backup/`), one writer per worker, committed per epoch. Readings
    /// an earlier run into the same OUT already committed are skipped, so a
    /// rerun never duplicates a row.
    pub fn backup(&self) -> ParquetSink<BackupWriter> {
        let s = self.shared;
        let id = crate::backup::WriterName::of_worker(self.scope.index(), self.scope.peers()).to_string();
        let writer = BackupWriter::new(&s.out.join("backup"), &id, backup_config(&s.spec.backup));
        ParquetSink::new(writer, Arc::clone(&s.resume.backup))
    }

    /// A sink writing raw lines to the raw archive (`OUT/raw/`), committed
    /// per epoch; lines an earlier run already archived are skipped.
    pub fn raw_archive(&self) -> ParquetSink<RawArchiveWriter> {
        let s = self.shared;
        let id = format!("raw-w{}", self.scope.index());
        let writer = RawArchiveWriter::new(&s.out.join("raw"), &id, backup_config(&s.spec.backup));
        ParquetSink::new(writer, Arc::clone(&s.resume.raw))
    }

    /// The reference data (devices, calibration, rules), as arrangements
    /// that follow the dataset's updates. Built once, shared by every caller.
    pub fn reference(&mut self) -> Reference<'s> {
        if self.reference.is_none() {
            let updates = self.updates.take().unwrap_or_default();
            self.reference = Some(reference(self.scope, "reference", updates, Rc::clone(&self.progress)));
        }
        let r = self.reference.as_ref().expect("just built");
        Reference { devices: r.devices.clone(), rules: r.rules.clone() }
    }

    /// True once [`reference`](Self::reference) built the reference data.
    pub fn has_reference(&self) -> bool {
        self.reference.is_some()
    }

    /// [`reference`](Self::reference), with changes fed back from the
    /// dataflow on any worker (see `reference_with_exchanged_feedback` in
    /// `eddy_operators::reference`); call it before any `reference()`. Used
    /// by the calibration adapter.
    pub fn reference_with_exchanged_feedback<F>(
        &mut self,
        feedback: timely::dataflow::StreamVec<'s, u64, F>,
    ) -> Reference<'s>
    where
        F: timely::ExchangeData + Clone + Into<RefUpdate>,
    {
        assert!(self.reference.is_none(), "reference_with_exchanged_feedback must build the reference");
        let updates = self.updates.take().unwrap_or_default();
        self.reference = Some(eddy_operators::reference::reference_with_exchanged_feedback(
            self.scope,
            "reference",
            updates,
            Rc::clone(&self.progress),
            feedback,
        ));
        self.reference()
    }

    /// Every reference change of the dataset and the specs, in `ts` order
    /// (the same on every worker). Empty unless the pipeline's calibration
    /// adapter is enabled, the one job that reads them here.
    pub fn reference_changes(&self) -> &[RefUpdate] {
        &self.shared.updates
    }

    /// A sink writing JSON lines to `OUT/<name>.jsonl` (one file, shared by
    /// every worker of this process). An error names the file.
    pub fn jsonl(&self, name: &str) -> Result<JsonlSink> {
        Ok(JsonlSink::new(self.shared.file(name)?))
    }

    /// Runs `build`, and stops the run with its error if it fails: the
    /// workers wind down cleanly and [`run`] returns the error.
    pub fn build_with(&mut self, build: impl FnOnce(&mut Self) -> Result<()>) {
        if let Err(e) = build(self) {
            self.shared.metrics.fail(e);
        }
    }

    /// Registers a sink with the commit ledger. Every sink of a job must be
    /// committed, or the ledger cannot say when its input is durable.
    pub fn commit(&self, committed: Committed<'s>) {
        if let Some(p) = committed.processed() {
            self.processed.borrow_mut().push(p.clone());
        }
        committed.register(&self.probe, &self.shared.metrics);
    }
}

/// The standard rules of the alerts spec, as reference changes at time 0.
pub fn spec_rules(spec: &PipelineSpec) -> Vec<RefUpdate> {
    spec.alerts
        .rules
        .iter()
        .map(|r| RefUpdate {
            ts: 0,
            change: RefChange::UpsertRule(
                RuleScope::parse(&r.device_id),
                Rule {
                    rule_id: Arc::from(r.rule_id.as_str()),
                    channel: Channel::intern(&r.channel),
                    rise_above: eddy_core::reference::Num(r.rise_above),
                    fall_below: eddy_core::reference::Num(r.fall_below),
                },
            ),
        })
        .collect()
}

/// Runs a job over a dataset. `build` is called once per worker to build its
/// dataflow; `on_progress` is called from this thread about ten times a second.
pub fn run<B>(opts: &JobOptions, build: B, mut on_progress: impl FnMut(Progress)) -> Result<Summary>
where
    B: for<'s, 'a> Fn(&mut JobContext<'s, 'a>) + Send + Sync + 'static,
{
    let started = Instant::now();
    let config = opts.workers.to_timely()?;
    if opts.workers.processes > 1 {
        return Err(Error::Workers("a dataset job runs in one process: use -w for more workers".into()));
    }
    if let Some(s) = opts.speed {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Workers(format!("--speed must be a positive number, found {s}")));
        }
    }
    let mut dataset = Dataset::open_with_reference(&opts.dataset, opts.reference.as_deref())?;
    std::fs::create_dir_all(&opts.out).map_err(|e| eddy_connectors::Error::io(&opts.out, e))?;
    let resume =
        if opts.spec.backup.enabled { Resume::prepare(&opts.out, &dataset.readings)? } else { Resume::default() };
    // The spec's rules, then the dataset's base tables and updates. Moved
    // out of the dataset (kept for the whole run) without a copy: the base
    // tables' allocation is reused, the rules spliced in front.
    let mut updates = dataset.take_reference();
    updates.splice(0..0, spec_rules(&opts.spec));
    let kept = if opts.spec.adapter.enabled { updates.clone() } else { Vec::new() };
    let total_bytes = dataset.readings_bytes;
    let metrics = Arc::new(Metrics::default());

    // Checkpoints: restart from the newest complete one, and take more.
    let mut specs: BTreeMap<String, String> =
        opts.jobs.iter().map(|j| (format!("job {}", j.name), j.spec_text())).collect();
    specs.insert("outputs".into(), format!("{:?}", opts.outputs));
    let ckpt = &opts.checkpoints;
    let supported = opts.spec.ingest.epoch.ms() >= 2 && !opts.spec.adapter.enabled && opts.spec.score.model.is_none();
    let location = ckpt.location(&opts.out);
    // A run that takes no checkpoints still restarts from a store that holds some.
    let existing = eddy_checkpoint::is_object_storage(&location)
        || Path::new(location.strip_prefix("file://").unwrap_or(&location)).is_dir();
    let store = match (ckpt.every.is_some() || existing, supported) {
        (true, true) => {
            Some(eddy_checkpoint::Store::open(&location).map_err(|e| Error::Usage(format!("checkpoints: {e}")))?)
        }
        (true, false) => {
            tracing::warn!(
                "Checkpoints are not taken with the calibration adapter, a scoring model or an epoch under 2 ms"
            );
            None
        }
        (false, _) => None,
    };
    let input = dataset.readings.display().to_string();
    let restart = match &store {
        Some(store) => crate::snapshots::load(store, &specs, &input)?,
        None => None,
    };
    let key_groups = crate::snapshots::key_groups(
        ckpt.key_groups,
        restart.as_ref().map(|r| (r.id, r.meta.key_groups)),
        &location,
        opts.workers.total(),
    )?;
    let mut files = BTreeMap::new();
    if let Some(r) = &restart {
        for (name, pos) in &r.meta.outputs {
            let f = JsonlFile::resume(&opts.out.join(format!("{name}.jsonl")), pos.bytes, pos.records)?;
            files.insert(name.clone(), f);
        }
        r.meta.counters.restore(&metrics);
        // Bytes read: up to the line the input is reopened at (what the
        // killed run had read ahead of it is read again), for a plain file.
        if let (Some(offset), false) = (r.meta.offset, input.ends_with(".gz")) {
            metrics.bytes.store(offset, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(checkpoint = r.id, line = r.meta.position.offset, "Restarting from a checkpoint");
    }
    let writer = match store {
        Some(store) => Some(Writer::start(store, ckpt.keep)?),
        None => None,
    };
    let barrier = match (&writer, ckpt.every) {
        (Some(_), Some(every)) => Some(Arc::new(Barrier::new(every, opts.workers.total()))),
        _ => None,
    };
    let restored_from = restart.as_ref().map(|r| r.id);
    let shared = Arc::new(Shared {
        dataset,
        resume,
        updates: kept,
        handoff: Mutex::new(Some(updates)),
        spec: opts.spec.clone(),
        speed: opts.speed,
        jobs: opts.jobs.clone(),
        out: opts.out.clone(),
        files: Mutex::new(files),
        metrics: Arc::clone(&metrics),
        finished: AtomicUsize::new(0),
        restart,
        barrier,
        writer: Mutex::new(writer.as_ref().map(Writer::sender)),
        specs,
        key_groups,
    });
    let workers = opts.workers.total();

    let worker_shared = Arc::clone(&shared);
    let build = Arc::new(build);
    let guards = timely::execute(config, move |worker| {
        run_worker(worker, &worker_shared, &*build);
        worker_shared.finished.fetch_add(1, Ordering::SeqCst);
    })
    .map_err(Error::Timely)?;

    let report = |m: &Metrics| Progress {
        bytes: Metrics::get(&m.bytes),
        total_bytes,
        lines: Metrics::get(&m.lines),
        valid: Metrics::get(&m.valid),
        deadletter: Metrics::get(&m.deadletter),
    };
    while shared.finished.load(Ordering::SeqCst) < opts.workers.threads {
        on_progress(report(&metrics));
        std::thread::sleep(Duration::from_millis(100));
    }
    on_progress(report(&metrics));
    for r in guards.join() {
        r.map_err(Error::Timely)?;
    }
    shared.writer.lock().take();
    let written = match writer {
        Some(w) => w.finish()?,
        None => 0,
    };
    if let Some(e) = metrics.failure() {
        return Err(Error::Worker(e));
    }
    // A complete run has nothing to restart from: its store inside OUT goes.
    if opts.checkpoints.store.is_none() {
        let dir = opts.out.join(crate::snapshots::STORE_DIR);
        if dir.is_dir() {
            std::fs::remove_dir_all(&dir).map_err(|e| eddy_connectors::Error::io(&dir, e))?;
        }
    }
    let mut records = BTreeMap::new();
    for (name, f) in shared.files.lock().iter() {
        f.sync()?;
        records.insert(name.clone(), f.records());
    }
    // The Parquet outputs: rows committed in their manifests (earlier runs into
    // the same OUT included, since a rerun adds only what they lack).
    for name in ["backup", "raw"] {
        let dir = opts.out.join(name);
        if dir.join(eddy_parquet::MANIFEST_DIR).is_dir() {
            let m = eddy_parquet::Manifest::load(&dir)?;
            records.insert(name.to_string(), m.rows());
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let lines = Metrics::get(&metrics.lines);
    let summary = Summary {
        valid: Metrics::get(&metrics.valid),
        late: Metrics::get(&metrics.late),
        future: Metrics::get(&metrics.future),
        deadletter: Metrics::get(&metrics.deadletter),
        junk: Metrics::get(&metrics.junk),
        records,
        junk_by_device: metrics.junk_by_device.lock().iter().map(|(k, v)| (k.clone(), *v)).collect(),
        lines,
        bytes: Metrics::get(&metrics.bytes),
        workers,
        wall_time_s: wall,
        lines_per_s: if wall > 0.0 { lines as f64 / wall } else { 0.0 },
        checkpoints: crate::snapshots::CheckpointSummary { written, restored_from },
    };
    write_json(&opts.out.join("summary.json"), &summary)?;
    // Bench instrumentation (EDDY_BENCH_STAGES / EDDY_BENCH_LATENCY): OUT/bench.json.
    eddy_operators::metrics::write_bench_report(&opts.out, started.elapsed())
        .map_err(|e| eddy_connectors::Error::io(opts.out.join("bench.json"), e))?;
    Ok(summary)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("summary serialises");
    std::fs::write(path, text + "\n").map_err(|e| eddy_connectors::Error::io(path, e).into())
}

fn run_worker<B>(worker: &mut timely::worker::Worker, s: &Shared, build: &B)
where
    B: for<'s, 'a> Fn(&mut JobContext<'s, 'a>),
{
    let index = worker.index();
    eddy_core::keys::install(s.key_groups);
    let progress = Rc::new(SourceProgress::default());
    if s.barrier.is_some() || s.restart.is_some() {
        snapshot::install(
            Owner::new(index, worker.peers()),
            s.restart.as_ref().map(|r| Arc::clone(&r.restored)),
            s.barrier.clone(),
        );
    }
    let input: Option<Box<dyn LineSource>> = if index == 0 {
        let at = s.restart.as_ref().map(|r| (r.meta.position.offset.saturating_sub(1), r.meta.offset.unwrap_or(0)));
        match at.map_or_else(|| s.dataset.lines(), |(lines, offset)| s.dataset.lines_at(lines, offset)) {
            Ok(l) => Some(l),
            Err(e) => {
                s.metrics.fail(e);
                None
            }
        }
    } else {
        None
    };
    let updates = if index == 0 { s.handoff.lock().take().unwrap_or_default() } else { Vec::new() };
    let probe = ProbeHandle::new();
    eddy_operators::metrics::install_stage_timer(worker);
    worker.dataflow::<u64, _, _>(|scope| {
        let mut ctx = JobContext {
            scope,
            shared: s,
            input,
            updates: Some(updates),
            progress: Rc::clone(&progress),
            probe: probe.clone(),
            processed: Rc::default(),
            reference: None,
        };
        build(&mut ctx);
    });
    if let Some(e) = snapshot::take_errors().into_iter().next() {
        s.metrics.fail(e);
    }

    // Worker 0 keeps the commit ledger: the input position up to which every
    // output is durable, written to `_checkpoint.json` about once a second.
    let park = Duration::from_millis(20);
    let commits: Box<dyn Commits> = if index == 0 {
        let input = s.dataset.readings.display().to_string();
        Box::new(Ledger::new(s.out.join("_checkpoint.json"), input, progress, Arc::clone(&s.metrics)))
    } else {
        Box::new(NoCommits)
    };
    let writer = s.writer.lock().clone();
    let result = match (&s.barrier, writer) {
        (Some(barrier), Some(writer)) => {
            let mut c = Checkpointing {
                inner: commits,
                index,
                barrier: Arc::clone(barrier),
                finish: s,
                writer,
                metrics: Arc::clone(&s.metrics),
            };
            drive(worker, &probe, park, &mut c)
        }
        _ => {
            let mut c = commits;
            drive(worker, &probe, park, &mut *c)
        }
    };
    if let Err(e) = result {
        s.metrics.fail(e);
        if let Some(b) = &s.barrier {
            b.release();
        }
    }
    snapshot::uninstall();
}
