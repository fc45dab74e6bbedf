//! `eddy replay`: the whole pipeline in one process, on a recorded dataset.
//!
//! The jobs (ingest, enrich, stats, windows, alerts) are built into one
//! timely dataflow per worker and wired by in-process topics: each topic is a
//! [`Flow`] from one job to the next. Each job's part is
//! the same code that runs it alone (see `docs/architecture.md`).

use eddy_core::reading::{Enriched, Reading};
use eddy_core::spec::PipelineSpec;
use eddy_operators::reference::Reference;
use eddy_operators::stats::StatsParams;
use eddy_state::window::WindowSpec;
use timely::dataflow::Scope;

use std::time::Duration;

use eddy_core::Channel;
use eddy_ml::adapt::{adapter, restamp, Adapter, AdapterConfig, CalibrationBook, CalibrationUpdate};
use eddy_ml::model::{ModelFile, ModelUpdate};
use eddy_ml::score::{score, ModelWatch};
use timely::dataflow::operators::{ConnectLoop as _, Feedback as _};

use crate::component::{JobInstance, Target, Wiring};
use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};
use crate::job::{run, JobContext};
pub use crate::job::{JobOptions as ReplayOptions, Progress, Summary};

/// The core pipeline's outputs, by name: each is `OUT/<name>.jsonl`. The
/// component jobs add theirs ([`JobInstance::outputs`]).
pub const OUTPUTS: [&str; 4] = ["enriched", "late", "future", "deadletter"];

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

    /// The outputs named in `names`: each one of [`OUTPUTS`], [`FORECASTS`]
    /// or an output of one of `jobs`.
    pub fn only(names: &[String], jobs: &[JobInstance]) -> Result<Outputs> {
        let mut known: Vec<&str> = OUTPUTS.to_vec();
        known.extend(jobs.iter().flat_map(|j| j.outputs().iter().copied()));
        known.push(FORECASTS);
        for n in names {
            if !known.contains(&n.as_str()) {
                return Err(Error::Job(format!(
                    "--outputs: unknown output {n:?}; the outputs are {}",
                    known.join(", ")
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
    crate::builtin::stats::params(&spec.stats)
}

/// The window settings of a pipeline spec.
pub fn window_spec(spec: &PipelineSpec) -> WindowSpec {
    crate::builtin::windows::window_spec(&spec.windows)
}

/// A component job's ports in the embedded pipeline: its inputs are flows of
/// this dataflow, its outputs `OUT/<port>.jsonl`.
struct Embedded<'s, 'c, 'j, 'a> {
    job: &'c mut JobContext<'s, 'a>,
    enriched: &'j Flow<'s, Enriched>,
    readings: &'j Flow<'s, Reading>,
    reference: &'j Reference<'s>,
}

impl<'s> Wiring<'s> for Embedded<'s, '_, '_, '_> {
    fn scope(&self) -> Scope<'s, u64> {
        self.job.scope()
    }
    fn enriched(&mut self) -> Result<Flow<'s, Enriched>> {
        Ok(self.enriched.clone())
    }
    fn readings(&mut self) -> Result<Flow<'s, Reading>> {
        Ok(self.readings.clone())
    }
    fn reference(&mut self) -> Result<Reference<'s>> {
        Ok(Reference { devices: self.reference.devices.clone(), rules: self.reference.rules.clone() })
    }
    fn target(&mut self, port: &str, _topic: &str) -> Result<Target> {
        Ok(Target::File(self.job.jsonl_file(port)?))
    }
    fn commit(&mut self, committed: Committed<'s>) {
        self.job.commit(committed);
    }
}

/// Builds the embedded pipeline on one worker, with every output.
pub fn pipeline(job: &mut JobContext<'_, '_>) -> Result<()> {
    pipeline_with(job, &Outputs::all())
}

/// Builds the embedded pipeline on one worker, writing the JSON-lines
/// outputs in `outputs` (the Parquet backup and raw archive follow the
/// spec). A job whose outputs are all left out is not built.
pub fn pipeline_with(job: &mut JobContext<'_, '_>, outputs: &Outputs) -> Result<()> {
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
    let all_readings = readings.clone();

    // ingest → late, future, deadletter (and the raw archive: every line as received)
    if outputs.wants("late") {
        job.commit(readings.clone().late().sink(job.jsonl("late")?));
    }
    if outputs.wants("future") {
        job.commit(readings.clone().future().sink(job.jsonl("future")?));
    }
    if outputs.wants("deadletter") {
        job.commit(ingest.dead.sink(job.jsonl("deadletter")?));
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
    let on_time = enriched.clone().on_time();
    if outputs.wants("enriched") {
        job.commit(on_time.clone().sink(job.jsonl("enriched")?));
    }

    // The component jobs (stats, windows, alerts, sensor-health, users'
    // jobs) ← enriched, each with its own step name.
    let jobs = job.jobs().to_vec();
    for instance in jobs.iter().filter(|j| j.outputs().iter().any(|o| outputs.wants(o))) {
        let mut wiring =
            Embedded { job: &mut *job, enriched: &enriched, readings: &all_readings, reference: &reference };
        instance.build(&spec, &mut wiring)?;
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
    // scoring ← enriched (on time), with a watched model file
    if let (Some(path), true) = (&spec.score.model, outputs.wants(FORECASTS)) {
        let name = step(&spec.score.name, "score");
        let watch = ModelWatch::new(path.into(), Duration::from_millis(spec.score.poll.ms() as u64));
        let forecasts = score(on_time.into_stream(), watch, &name);
        job.commit(Flow::new(forecasts, &name).sink(job.jsonl("forecasts")?));
    }
    Ok(())
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
            .map_err(|e| Error::Model { path: path.to_path_buf(), reason: e })?;
    }
    Ok(())
}

/// Runs the embedded pipeline over a dataset.
pub fn replay(opts: &ReplayOptions, on_progress: impl FnMut(Progress)) -> Result<Summary> {
    check_model(&opts.spec)?;
    let outputs = match &opts.outputs {
        None => Outputs::all(),
        Some(names) => Outputs::only(names, &opts.jobs)?,
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| eddy_connectors::Error::io(&opts.out, e))?;
    // Create every output up front, so that an empty one exists as a file.
    let summary = run(
        opts,
        move |job| {
            job.build_with(|job| {
                for name in OUTPUTS.into_iter().filter(|n| outputs.wants(n)) {
                    job.jsonl(name)?;
                }
                pipeline_with(job, &outputs)
            })
        },
        on_progress,
    )?;
    Ok(summary)
}
