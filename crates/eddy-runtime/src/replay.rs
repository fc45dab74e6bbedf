//! `eddy replay`: the whole pipeline in one process, on a recorded dataset.
//!
//! The jobs (ingest, enrich, stats, windows, alerts) are built into one
//! timely dataflow per worker and wired by in-process topics: each topic is a
//! timely stream between two jobs. The same job builders run each job on its
//! own over Kafka topics (see `docs/architecture.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use eddy_connectors::dataset::Dataset;
use eddy_connectors::jsonl::{JsonlFile, JsonlSink};
use eddy_core::reading::{LineSource, Position};
use eddy_core::reference::{RefChange, RefUpdate};
use eddy_core::spec::PipelineSpec;
use eddy_core::Channel;
use eddy_operators::detect::detect;
use eddy_operators::enrich::enrich;
use eddy_operators::ingest::{ingest_source, IngestConfig, SourceProgress};
use eddy_operators::metrics::Metrics;
use eddy_operators::ordered::filter_ordered;
use eddy_operators::reference::reference;
use eddy_operators::sink::sink;
use eddy_operators::stats::{stats, StatsParams};
use eddy_operators::windows::windows;
use eddy_state::stats::StatsConfig;
use eddy_state::window::WindowSpec;

use crate::checkpoint::Ledger;
use crate::error::{Error, Result};
use crate::workers::Workers;

/// The outputs of a replay, by name: each is `OUT/<name>.jsonl`.
pub const OUTPUTS: [&str; 6] = [
    "enriched",
    "late",
    "deadletter",
    "stats",
    "windows",
    "events",
];

/// What to replay and how.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// The job specs.
    pub spec: PipelineSpec,
    /// Workers (`-w`).
    pub workers: Workers,
    /// `Some(x)`: replay at x times the recorded event-time pace.
    pub speed: Option<f64>,
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
    /// Lines that failed validation.
    pub deadletter: u64,
    /// Non-late valid readings with at least one junk channel.
    pub junk: u64,
    /// Records written to each output.
    pub records: BTreeMap<String, u64>,
    /// Non-late junk readings per device.
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
}

struct Shared {
    dataset: Dataset,
    updates: Vec<RefUpdate>,
    spec: PipelineSpec,
    speed: Option<f64>,
    files: BTreeMap<&'static str, Arc<JsonlFile>>,
    metrics: Arc<Metrics>,
    checkpoint: PathBuf,
    finished: AtomicUsize,
}

/// The standard rules of the alerts spec, as reference changes at time 0.
fn spec_rules(spec: &PipelineSpec) -> Vec<RefUpdate> {
    spec.alerts
        .rules
        .iter()
        .map(|r| RefUpdate {
            ts: 0,
            change: RefChange::UpsertRule(
                eddy_core::reference::RuleScope::parse(&r.device_id),
                eddy_core::reference::Rule {
                    rule_id: Arc::from(r.rule_id.as_str()),
                    channel: Channel::intern(&r.channel),
                    rise_above: eddy_core::reference::Num(r.rise_above),
                    fall_below: eddy_core::reference::Num(r.fall_below),
                },
            ),
        })
        .collect()
}

/// Runs the embedded pipeline over a dataset. `on_progress` is called from
/// this thread about ten times a second while the workers run.
pub fn replay(opts: &ReplayOptions, mut on_progress: impl FnMut(Progress)) -> Result<Summary> {
    let started = Instant::now();
    let config = opts.workers.to_timely()?;
    if opts.workers.processes > 1 {
        return Err(Error::Workers(
            "replay runs in one process: use -w for more workers (clusters are for `eddy run`)"
                .into(),
        ));
    }
    if let Some(s) = opts.speed {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Workers(format!(
                "--speed must be a positive number, found {s}"
            )));
        }
    }
    let dataset = Dataset::open(&opts.dataset)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| eddy_connectors::Error::io(&opts.out, e))?;
    let mut files = BTreeMap::new();
    for name in OUTPUTS {
        files.insert(
            name,
            JsonlFile::create(&opts.out.join(format!("{name}.jsonl")))?,
        );
    }
    let mut updates = spec_rules(&opts.spec);
    updates.extend(dataset.base.iter().cloned());
    updates.extend(dataset.updates.iter().cloned());
    let total_bytes = dataset.readings_bytes;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        dataset,
        updates,
        spec: opts.spec.clone(),
        speed: opts.speed,
        files,
        metrics: Arc::clone(&metrics),
        checkpoint: opts.out.join("_checkpoint.json"),
        finished: AtomicUsize::new(0),
    });
    let workers = opts.workers.total();

    let worker_shared = Arc::clone(&shared);
    let guards = timely::execute(config, move |worker| {
        let s = &worker_shared;
        run_worker(worker, s);
        s.finished.fetch_add(1, Ordering::SeqCst);
    })
    .map_err(Error::Run)?;

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
        r.map_err(Error::Run)?;
    }
    if let Some(e) = metrics.error.lock().clone() {
        return Err(Error::Run(e));
    }
    let mut records = BTreeMap::new();
    for (name, f) in &shared.files {
        f.sync()?;
        if let Some(e) = f.error() {
            return Err(Error::Run(e));
        }
        records.insert(name.to_string(), f.records());
    }
    let wall = started.elapsed().as_secs_f64();
    let lines = Metrics::get(&metrics.lines);
    let summary = Summary {
        valid: Metrics::get(&metrics.valid),
        late: Metrics::get(&metrics.late),
        deadletter: Metrics::get(&metrics.deadletter),
        junk: Metrics::get(&metrics.junk),
        records,
        junk_by_device: metrics
            .junk_by_device
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        lines,
        bytes: Metrics::get(&metrics.bytes),
        workers,
        wall_time_s: wall,
        lines_per_s: if wall > 0.0 { lines as f64 / wall } else { 0.0 },
    };
    write_json(&opts.out.join("summary.json"), &summary)?;
    Ok(summary)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("summary serialises");
    std::fs::write(path, text + "\n").map_err(|e| eddy_connectors::Error::io(path, e).into())
}

fn run_worker(worker: &mut timely::worker::Worker, s: &Shared) {
    let index = worker.index();
    let progress = Rc::new(SourceProgress::default());
    let input: Option<Box<dyn LineSource>> = if index == 0 {
        match s.dataset.lines() {
            Ok(l) => Some(Box::new(l)),
            Err(e) => {
                s.metrics.fail(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let spec = &s.spec;
    let ingest_cfg = IngestConfig {
        lateness_ms: spec.ingest.lateness.ms(),
        epoch_ms: spec.ingest.epoch.ms(),
        ranges: spec.ingest.ranges(),
        speed: s.speed,
        batch_lines: 1024,
    };
    let stats_params = StatsParams {
        config: StatsConfig {
            alpha: spec.stats.alpha,
            top_k: spec.stats.top_k,
            trend_span_ms: spec.stats.trend_span.ms(),
            trend_buckets: spec.stats.trend_buckets,
        },
        snapshot_every_ms: spec.stats.snapshot_every.ms(),
    };
    let window_spec = WindowSpec::hopping(spec.windows.size.ms(), spec.windows.slide().ms());
    let retention = spec.enrich.reference_retention.ms();
    let updates = if index == 0 {
        s.updates.clone()
    } else {
        Vec::new()
    };
    let probe = ProbeHandle::new();
    let file = |name: &str| JsonlSink::new(Arc::clone(&s.files[name]));

    worker.dataflow::<u64, _, _>(|scope| {
        let ingest = ingest_source(
            scope,
            "ingest",
            input,
            ingest_cfg,
            Rc::clone(&progress),
            Arc::clone(&s.metrics),
        );
        let refs = reference(scope, "reference", updates, Rc::clone(&progress));
        let enriched = enrich(ingest.readings.clone(), refs.devices, retention, "enrich");
        let late = filter_ordered(ingest.readings, "ingest.late", |r| r.late);
        let on_time = filter_ordered(enriched, "enrich.on_time", |e| !e.late);
        let stats = stats(on_time.clone(), stats_params, "stats");
        let windows = windows(on_time.clone(), window_spec, "windows");
        let events = detect(on_time.clone(), refs.rules, "alerts");

        sink(on_time, "enriched.sink", file("enriched")).probe_with(&probe);
        sink(late, "late.sink", file("late")).probe_with(&probe);
        sink(ingest.dead, "deadletter.sink", file("deadletter")).probe_with(&probe);
        sink(stats, "stats.sink", file("stats")).probe_with(&probe);
        sink(windows, "windows.sink", file("windows")).probe_with(&probe);
        sink(events, "events.sink", file("events")).probe_with(&probe);
    });

    // Worker 0 keeps the commit ledger: the input position up to which every
    // output is durable, written to `_checkpoint.json` about once a second.
    let mut ledger = (index == 0).then(|| {
        Ledger::new(
            s.checkpoint.clone(),
            s.dataset.readings.display().to_string(),
        )
    });
    let mut last_write = Instant::now();
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(l) = ledger.as_mut() {
            l.advance(&progress, &probe);
            if last_write.elapsed() > Duration::from_secs(1) {
                l.write(false);
                last_write = Instant::now();
            }
        }
    }
    if let Some(l) = ledger.as_mut() {
        l.finish(Position::line(Metrics::get(&s.metrics.lines) + 1));
        l.write(true);
    }
}
