//! `eddy replay`: the whole pipeline in one process, on a recorded dataset.
//!
//! Every job of the registry that runs is built into one timely dataflow
//! per worker, in registry order, and wired by in-process ports: each port
//! is a [`Flow`] from one job to the next. Each job's `build` is the same
//! code that runs it alone over Kafka (see `docs/architecture.md`).

use std::collections::BTreeMap;

use timely::dataflow::operators::feedback::Handle;
use timely::dataflow::operators::{ConnectLoop as _, Feedback as _};
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{Enriched, RawLine, Reading};
use eddy_core::spec::PipelineSpec;
use eddy_core::Channel;
use eddy_ml::adapt::{restamp, CalibrationBook, CalibrationUpdate};
use eddy_ml::model::{ModelFile, ModelUpdate};
use eddy_operators::reference::Reference;
use eddy_operators::stats::StatsParams;
use eddy_state::window::WindowSpec;

use crate::component::{FileRecords, JobInstance, Lines, Port, PortFlow, Record, Target, Wiring};
use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};
use crate::job::{run, JobContext};
pub use crate::job::{JobOptions as ReplayOptions, Progress, Summary};

/// Which JSON-lines outputs a replay writes (`--outputs`).
#[derive(Clone, Debug)]
pub struct Outputs(Option<Vec<String>>);

impl Outputs {
    /// Every output.
    pub fn all() -> Outputs {
        Outputs(None)
    }

    /// The outputs named in `names`: each an output port of one of `jobs`
    /// that has a file (`enriched`, `late`, `stats`, …).
    pub fn only(names: &[String], jobs: &[JobInstance]) -> Result<Outputs> {
        let known = files(jobs);
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

/// The output ports of `jobs` that `eddy replay` writes to files, in order.
pub fn files(jobs: &[JobInstance]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for j in jobs {
        for p in j.outputs() {
            if j.port(p).file != FileRecords::Nothing && !out.contains(p) {
                out.push(*p);
            }
        }
    }
    out
}

/// The statistics settings of a pipeline spec.
pub fn stats_params(spec: &PipelineSpec) -> StatsParams {
    crate::builtin::stats::params(&spec.stats)
}

/// The window settings of a pipeline spec.
pub fn window_spec(spec: &PipelineSpec) -> WindowSpec {
    crate::builtin::windows::window_spec(&spec.windows)
}

/// The jobs' ports in the embedded pipeline: an output is a flow of this
/// dataflow, which the jobs built after it read, and `OUT/<port>.jsonl`
/// when it has a file and `--outputs` wants it.
struct Embedded<'s, 'c, 'a> {
    job: &'c mut JobContext<'s, 'a>,
    outputs: &'c Outputs,
    ports: BTreeMap<String, PortFlow<'s>>,
    /// The calibration loop's feedback edge, from enrich to the adapter.
    feedback: Option<Handle<'s, u64, Vec<CalibrationUpdate>>>,
    /// The JSON-lines sinks, built after every job (see [`Wiring::sink_last`]).
    last: Vec<Box<dyn FnOnce() -> Committed<'s> + 's>>,
}

impl<'s> Wiring<'s> for Embedded<'s, '_, '_> {
    fn scope(&self) -> Scope<'s, u64> {
        self.job.scope()
    }

    fn input(&mut self, port: &str, _record: Record) -> Result<PortFlow<'s>> {
        self.ports.get(port).cloned().ok_or_else(|| {
            Error::Job(format!(
                "no job built before this one writes port {port:?} (the ports so far: {})",
                self.ports.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    fn lines(&mut self, _name: &str) -> Result<Lines<'s>> {
        let ingest = self.job.ingest();
        Ok(Lines { readings: ingest.readings, dead: ingest.dead, raw: ingest.raw })
    }

    fn reference(&mut self) -> Result<Reference<'s>> {
        Ok(self.job.reference())
    }

    /// A feedback edge into the reference source, delayed by the loop's
    /// delay; the readings re-stamped so that each one's time is within a
    /// delay of its `ts` (see `eddy_ml::adapt::restamp`).
    fn calibration_loop(&mut self, readings: Flow<'s, Reading>) -> Result<(Flow<'s, Reading>, Reference<'s>)> {
        if self.job.has_reference() {
            return Err(Error::Job("the calibration loop must be the first job to read the reference data".into()));
        }
        let spec = self.job.spec().clone();
        let delay = crate::builtin::adapter::loop_delay(&spec);
        let (handle, fed) = self.job.scope().feedback::<Vec<CalibrationUpdate>>(delay as u64);
        self.feedback = Some(handle);
        let reference = self.job.reference_with_exchanged_feedback(fed);
        let name = spec.adapter.name.clone().unwrap_or_else(|| "adapter".into());
        let stream = restamp(readings.into_stream(), spec.ingest.lateness.ms(), spec.ingest.epoch.ms(), &name);
        Ok((Flow::new(stream, &name), reference))
    }

    fn feedback(&mut self, _topic: &str, updates: Flow<'s, CalibrationUpdate>) -> Result<()> {
        let handle = self.feedback.take().ok_or_else(|| {
            Error::Job("the calibration adapter's updates have no loop: enrich did not build one".into())
        })?;
        updates.into_stream().connect_loop(handle);
        Ok(())
    }

    fn calibration_book(&self, channel: Channel) -> CalibrationBook {
        CalibrationBook::new(self.job.reference_changes(), channel)
    }

    fn models(&mut self, _name: &str, _watch: &Flow<'s, Enriched>) -> Result<StreamVec<'s, u64, ModelUpdate>> {
        Ok(timely::dataflow::operators::generic::operator::empty(self.job.scope()))
    }

    fn backup(&mut self, enriched: Flow<'s, Enriched>) -> Result<()> {
        let sink = self.job.backup();
        self.job.commit(enriched.sink(sink));
        Ok(())
    }

    fn raw_archive(&mut self, raw: Flow<'s, RawLine>) -> Result<()> {
        let sink = self.job.raw_archive();
        self.job.commit(raw.sink(sink));
        Ok(())
    }

    fn offer(&mut self, port: &str, flow: PortFlow<'s>) {
        self.ports.insert(port.to_string(), flow);
    }

    fn target(&mut self, port: &str, _topic: &str, carry: Port) -> Result<Target> {
        if carry.file == FileRecords::Nothing || !self.outputs.wants(port) {
            return Ok(Target::Nothing);
        }
        Ok(Target::File(self.job.jsonl_file(port)?))
    }

    fn commit(&mut self, committed: Committed<'s>) {
        self.job.commit(committed);
    }

    fn sink_last(&mut self, sink: Box<dyn FnOnce() -> Committed<'s> + 's>) {
        self.last.push(sink);
    }
}

/// Builds the embedded pipeline on one worker, with every output.
pub fn pipeline(job: &mut JobContext<'_, '_>) -> Result<()> {
    pipeline_with(job, &Outputs::all())
}

/// Builds the embedded pipeline on one worker: every active job of the run
/// (see [`JobOptions::jobs`](crate::job::JobOptions::jobs)), in registry
/// order, writing the JSON-lines outputs in `outputs`. A job is not built
/// when every output it has is a file left out that no other job reads.
pub fn pipeline_with(job: &mut JobContext<'_, '_>, outputs: &Outputs) -> Result<()> {
    let spec = job.spec().clone();
    let jobs = job.jobs().to_vec();
    let read = |p: &str| jobs.iter().any(|j| j.inputs().contains(&p));
    let mut wiring = Embedded { job, outputs, ports: BTreeMap::new(), feedback: None, last: Vec::new() };
    for instance in &jobs {
        let needed = instance
            .outputs()
            .iter()
            .any(|p| instance.port(p).file == FileRecords::Nothing || outputs.wants(p) || read(p));
        if instance.active(&spec) && needed {
            instance.build(&spec, &mut wiring)?;
        }
    }
    if wiring.feedback.is_some() {
        return Err(Error::Job("the calibration loop is open: no adapter job fed it back".into()));
    }
    for sink in std::mem::take(&mut wiring.last) {
        wiring.job.commit(sink());
    }
    Ok(())
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
    let summary = run(opts, move |job| job.build_with(|job| pipeline_with(job, &outputs)), on_progress)?;
    Ok(summary)
}
