//! `eddy replay`: the whole pipeline in one process, on a recorded dataset.
//!
//! The jobs (ingest, enrich, stats, windows, alerts) are built into one
//! timely dataflow per worker and wired by in-process topics: each topic is a
//! [`Flow`](crate::flow::Flow) from one job to the next. Each job's part is
//! the same code that runs it alone (see `docs/architecture.md`).

use eddy_core::spec::PipelineSpec;
use eddy_operators::stats::StatsParams;
use eddy_state::stats::StatsConfig;
use eddy_state::window::WindowSpec;

use std::time::Duration;

use eddy_core::Channel;
use eddy_ml::adapt::{adapter, restamp, Adapter, AdapterConfig, CalibrationBook, CalibrationUpdate};
use eddy_ml::model::{ModelFile, ModelUpdate};
use eddy_ml::score::{score, ModelWatch};
use timely::dataflow::operators::{ConnectLoop as _, Feedback as _};

use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::job::{run, JobContext};
pub use crate::job::{JobOptions as ReplayOptions, Progress, Summary};

/// The outputs of a replay, by name: each is `OUT/<name>.jsonl`.
pub const OUTPUTS: [&str; 6] = ["enriched", "late", "deadletter", "stats", "windows", "events"];

/// The scoring job's output (`OUT/forecasts.jsonl`), written when a model is given.
pub const FORECASTS: &str = "forecasts";

/// Which JSON-lines outputs a replay writes (`--outputs`).
#[derive(Clone, Debug)]
pub struct Outputs(Option<Vec<String>>);

impl Outputs {
    /// Every output.
    pub fn all() -> Outputs {
        Outputs(None)
    }

    /// The outputs named in `names` (each one of [`OUTPUTS`] or [`FORECASTS`]).
    pub fn only(names: &[String]) -> Result<Outputs> {
        for n in names {
            if !OUTPUTS.contains(&n.as_str()) && n != FORECASTS {
                return Err(Error::Run(format!(
                    "--outputs: unknown output {n:?}; the outputs are {} and {FORECASTS}",
                    OUTPUTS.join(", ")
                )));
            }
        }
        Ok(Outputs(Some(names.to_vec())))
    }

    /// True when `name` is written.
    pub fn wants(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|n| n.iter().any(|x| x == name))
    }
}

/// The statistics settings of a pipeline spec.
pub fn stats_params(spec: &PipelineSpec) -> StatsParams {
    StatsParams {
        config: StatsConfig {
            alpha: spec.stats.alpha,
            top_k: spec.stats.top_k,
            trend_span_ms: spec.stats.trend_span.ms(),
            trend_buckets: spec.stats.trend_buckets,
        },
        snapshot_every_ms: spec.stats.snapshot_every.ms(),
    }
}

/// The window settings of a pipeline spec.
pub fn window_spec(spec: &PipelineSpec) -> WindowSpec {
    WindowSpec::hopping(spec.windows.size.ms(), spec.windows.slide().ms())
}

/// Builds the embedded pipeline on one worker, with every output.
pub fn pipeline(job: &mut JobContext<'_, '_>) {
    pipeline_with(job, &Outputs::all());
}

/// Builds the embedded pipeline on one worker, writing the JSON-lines
/// outputs in `outputs` (the Parquet backup and raw archive follow the
/// spec). A job whose one output is left out is not built.
pub fn pipeline_with(job: &mut JobContext<'_, '_>, outputs: &Outputs) {
    let spec = job.spec().clone();
    let step = |name: &Option<String>, kind: &str| name.clone().unwrap_or_else(|| kind.to_string());
    let ingest = job.ingest();
    // The calibration adapter feeds calibration updates back into the
    // reference data: a feedback edge into the reference source, delayed by
    // the lateness plus an epoch (see `reference_with_feedback`).
    let loop_delay = spec.ingest.lateness.ms() + spec.ingest.epoch.ms();
    let adapter_loop = spec.adapter.enabled.then(|| job.scope().feedback::<Vec<CalibrationUpdate>>(loop_delay as u64));
    let (reference, adapter_loop) = match adapter_loop {
        Some((handle, fed)) => (job.reference_with_exchanged_feedback(fed), Some(handle)),
        None => (job.reference(), None),
    };
    let readings = ingest.readings;

    // ingest → late, deadletter (and the raw archive: every line as received)
    if outputs.wants("late") {
        job.commit(readings.clone().late().sink(job.jsonl("late")));
    }
    if outputs.wants("deadletter") {
        job.commit(ingest.dead.sink(job.jsonl("deadletter")));
    }

    // enrich → enriched (late readings are enriched too, for the backup)
    let to_enrich = match adapter_loop {
        // In the loop, every reading's time must be within a loop delay of its ts.
        Some(_) => {
            let name = step(&spec.adapter.name, "adapter");
            let stream = restamp(readings.into_stream(), spec.ingest.lateness.ms(), spec.ingest.epoch.ms(), &name);
            Flow::new(stream, &name)
        }
        None => readings,
    };
    let enriched =
        to_enrich.step(&step(&spec.enrich.name, "enrich")).enrich(&reference, spec.enrich.reference_retention.ms());
    if spec.backup.enabled {
        let backup = step(&spec.backup.name, "backup");
        job.commit(enriched.clone().step(&backup).sink(job.backup()));
        if spec.backup.raw_archive {
            job.commit(ingest.raw.step(&backup).sink(job.raw_archive()));
        }
    }
    let adapter_input = adapter_loop.is_some().then(|| enriched.clone());
    let on_time = enriched.on_time();
    if outputs.wants("enriched") {
        job.commit(on_time.clone().sink(job.jsonl("enriched")));
    }

    // stats, windows, alerts ← enriched (on time)
    if outputs.wants("stats") {
        let stats = on_time.clone().step(&step(&spec.stats.name, "stats")).stats(stats_params(&spec));
        job.commit(stats.sink(job.jsonl("stats")));
    }
    if let (Some(handle), Some(input)) = (adapter_loop, adapter_input) {
        let a = &spec.adapter;
        let cfg = adapter_config(&spec, loop_delay);
        let book = CalibrationBook::new(job.reference_changes(), cfg.channel);
        let params = stats_params(&spec);
        let updates = adapter(
            input.into_stream(),
            Adapter::new(cfg, book),
            params.config,
            params.snapshot_every_ms,
            &step(&a.name, "adapter"),
        );
        updates.connect_loop(handle);
    }
    if outputs.wants("windows") {
        let windows = on_time.clone().step(&step(&spec.windows.name, "windows")).windows(window_spec(&spec));
        job.commit(windows.sink(job.jsonl("windows")));
    }
    // scoring ← enriched (on time), with a watched model file
    if let (Some(path), true) = (&spec.score.model, outputs.wants(FORECASTS)) {
        let name = step(&spec.score.name, "score");
        let watch = ModelWatch::new(path.into(), Duration::from_millis(spec.score.poll.ms() as u64));
        let forecasts = score(on_time.clone().into_stream(), watch, &name);
        job.commit(Flow::new(forecasts, &name).sink(job.jsonl("forecasts")));
    }
    if outputs.wants("events") {
        let events = on_time.step(&step(&spec.alerts.name, "alerts")).detect(&reference);
        job.commit(events.sink(job.jsonl("events")));
    }
}

/// The calibration adapter's settings, with its loop's delay.
pub(crate) fn adapter_config(spec: &PipelineSpec, delay_ms: i64) -> AdapterConfig {
    let a = &spec.adapter;
    AdapterConfig {
        channel: Channel::intern(&a.channel),
        k: a.k,
        span_ms: a.span.ms(),
        outdoor: a.outdoor_ppm,
        min_correction: a.min_correction,
        delay_ms,
    }
}

/// The scoring job's first model must load (later versions are checked as
/// they come): an error names the file and why.
pub(crate) fn check_model(spec: &PipelineSpec) -> Result<()> {
    if let Some(path) = &spec.score.model {
        let path = std::path::Path::new(path);
        ModelFile::load(path)
            .map_err(|e| e.to_string())
            .and_then(ModelUpdate::from_file)
            .map_err(|e| Error::Run(format!("scoring model {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Runs the embedded pipeline over a dataset.
pub fn replay(opts: &ReplayOptions, on_progress: impl FnMut(Progress)) -> Result<Summary> {
    check_model(&opts.spec)?;
    let outputs = match &opts.outputs {
        None => Outputs::all(),
        Some(names) => Outputs::only(names)?,
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| eddy_connectors::Error::io(&opts.out, e))?;
    // Create every output up front, so that an empty one exists as a file.
    let summary = run(
        opts,
        move |job| {
            for name in OUTPUTS.into_iter().filter(|n| outputs.wants(n)) {
                let _ = job.jsonl(name);
            }
            pipeline_with(job, &outputs)
        },
        on_progress,
    )?;
    Ok(summary)
}
