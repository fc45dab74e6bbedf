//! The job component: one shape for every job, and the registry that lists them.
//!
//! A job is a type that implements [`Job`]: its spec (serde, with defaults and
//! a [`check`](Job::check)), its named input and output ports, and its
//! [`build`](Job::build), written in the [`Flow`] API against a
//! [`JobBuilder`]. The same `build` runs in every mode:
//!
//! * **embedded** (`eddy replay`): an input port is the flow another job of
//!   the same dataflow produced, and an output port is `OUT/<port>.jsonl`;
//! * **Kafka** (`eddy run`): an input port is the topic `P.<port>`, read by a
//!   typed source, and an output port is the topic [`Job::topic`] names,
//!   written with the same JSON encoding as the file.
//!
//! A [`Registry`] is one explicit list of kinds. `eddy jobs`, `eddy check`,
//! `eddy replay --jobs`, `eddy run` and the help text read from it, and a
//! user's binary extends it ([`Registry::with`]):
//!
//! ```no_run
//! use eddy_runtime::component::{Job, JobBuilder, Registry};
//! use eddy_core::{Enriched, SpecError};
//! use serde::Deserialize;
//!
//! /// Readings per device, counted as they come.
//! struct Counts;
//!
//! #[derive(Clone, Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct CountsSpec {}
//!
//! impl Job for Counts {
//!     type Spec = CountsSpec;
//!     const KIND: &'static str = "counts";
//!     const ABOUT: &'static str = "Every on-time reading, passed on (an example).";
//!     const INPUTS: &'static [&'static str] = &["enriched"];
//!     const OUTPUTS: &'static [&'static str] = &["counted"];
//!     fn build(_spec: &CountsSpec, job: &mut JobBuilder<'_, '_>) -> eddy_runtime::Result<()> {
//!         let on_time = job.input::<Enriched>("enriched")?.on_time();
//!         job.output("counted", on_time)
//!     }
//! }
//!
//! let registry = Registry::builtin().with::<Counts>();
//! assert!(registry.get("counts").is_some());
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use timely::dataflow::Scope;

use eddy_connectors::jsonl::{Encode, JsonlFile, JsonlSink};
use eddy_core::reading::{DeadLetter, Enriched, RawLine, Reading};
use eddy_core::spec::{kind_of, toml_spec_error, JobKind, PipelineSpec, BUILTIN_JOBS, ML_KINDS};
use eddy_core::Channel;
use eddy_core::SpecError;
use eddy_ml::adapt::{CalibrationBook, CalibrationUpdate};
use eddy_ml::model::ModelUpdate;
use eddy_operators::reference::Reference;
use timely::dataflow::StreamVec;

use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};

/// A job kind: its spec, its ports and how it builds its part of a dataflow.
///
/// Only [`build`](Job::build) and the constants are required; the hooks have
/// defaults. A job reads its inputs with [`JobBuilder::input`] and writes
/// its outputs with [`JobBuilder::output`], and nothing else about the mode
/// it runs in reaches it.
pub trait Job: Send + Sync + 'static {
    /// The job's settings: every key of its spec file but `kind` and `name`.
    /// Give each field a serde default and use `deny_unknown_fields`, so a
    /// file that says only `kind = "…"` is complete and a misspelt key is
    /// an error that names it.
    type Spec: DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static;
    /// The kind, as written in spec files (`kind = "…"`).
    const KIND: &'static str;
    /// One line for `eddy jobs` and the help text.
    const ABOUT: &'static str;
    /// The input ports, by name: `"enriched"` (every enriched reading, late
    /// ones flagged) or `"readings"` (validated readings).
    const INPUTS: &'static [&'static str];
    /// The output ports, by name: each is `OUT/<port>.jsonl` embedded and
    /// the topic [`Job::topic`] over Kafka.
    const OUTPUTS: &'static [&'static str];
    /// The spec the job runs with when no file of its kind is given, for a
    /// job that runs by default; `None` (the default): it runs only when a
    /// spec file names it.
    const DEFAULT_SPEC: Option<&'static str> = None;
    /// Over Kafka, whether the job rebuilds its state from the start of its
    /// input when it restarts (true, the default: a stateful job), or goes
    /// on from its committed offsets (false: a job that keeps no state
    /// between records, such as enrich and backup).
    const REBUILDS: bool = true;

    /// Parses a spec file's text; `file` names it in errors. The default
    /// deserializes [`Job::Spec`] from every key but `kind` and `name`.
    fn parse(text: &str, file: &str) -> Result<Self::Spec, SpecError> {
        parse_settings(text, file)
    }

    /// Checks a parsed spec against the pipeline's (the ingest epoch, say):
    /// an error names the key (`SpecError::at_key`).
    fn check(_spec: &Self::Spec, _pipeline: &PipelineSpec, _file: &str) -> Result<(), SpecError> {
        Ok(())
    }

    /// The Kafka topic (under the pipeline's prefix) of output `port`.
    /// Default: the port's name.
    fn topic(_spec: &Self::Spec, port: &str) -> String {
        port.to_string()
    }

    /// How output `port` is carried: its topic codec, its file. Default:
    /// [`Port::RECORDS`].
    fn port(_port: &str) -> Port {
        Port::RECORDS
    }

    /// Whether `eddy replay` builds the job, given the pipeline's specs (the
    /// backup's `enabled`, say). Default: always.
    fn active(_spec: &Self::Spec, _pipeline: &PipelineSpec) -> bool {
        true
    }

    /// Builds the job's part of the dataflow on one worker.
    fn build(spec: &Self::Spec, job: &mut JobBuilder<'_, '_>) -> Result<()>;
}

/// Deserializes a job's settings from a spec file's text: every key but
/// `kind` and `name`. An unknown key or a bad value is an error naming the
/// file, the key and, where the key can be found, its line.
pub fn parse_settings<S: DeserializeOwned>(text: &str, file: &str) -> Result<S, SpecError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_spec_error(file, e))?;
    table.remove("kind");
    table.remove("name");
    S::deserialize(toml::Value::Table(table)).map_err(|e| {
        let message = e.to_string().trim_end().to_string();
        // toml names the key of an unknown field; find its line in the text.
        let key = message.split('`').nth(1).map(str::to_string);
        let line = key.as_deref().and_then(|k| {
            text.lines().position(|l| {
                l.trim_start().starts_with(k) && l[l.find(k).unwrap_or(0) + k.len()..].trim_start().starts_with('=')
            })
        });
        match (key, line) {
            (Some(k), Some(n)) => SpecError::at_key(file, k, format!("{message} (line {})", n + 1)),
            (Some(k), None) => SpecError::at_key(file, k, message),
            _ => SpecError { file: file.to_string(), key: None, message },
        }
    })
}

/// How an output port is carried in each mode: [`Job::port`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    /// How its records are encoded on a Kafka topic.
    pub codec: Codec,
    /// Which of its records `eddy replay` writes to `OUT/<port>.jsonl`.
    pub file: FileRecords,
    /// True when `eddy run` writes it to the topic [`Job::topic`] names.
    pub topic: bool,
}

impl Port {
    /// A job's result, for people and other systems: `OUT/<port>.jsonl`
    /// embedded, the same JSON lines on its topic over Kafka. The default.
    pub const RECORDS: Port = Port { codec: Codec::Jsonl, file: FileRecords::All, topic: true };
    /// A port between eddy's own jobs: a flow of the dataflow embedded (no
    /// file), serde JSON on its topic over Kafka, read back by the next job.
    pub const STREAM: Port = Port { codec: Codec::Serde, file: FileRecords::Nothing, topic: true };
    /// A flow of the embedded dataflow only: over Kafka the next job reads
    /// it from where it came (`raw`: `P.raw` itself), or the job writes it
    /// itself (the Parquet directories of `backup`).
    pub const LOCAL: Port = Port { codec: Codec::Jsonl, file: FileRecords::Nothing, topic: false };
}

/// How an output port's records are encoded on a Kafka topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The JSON-lines encoding of the embedded output file ([`Encode`]).
    Jsonl,
    /// The record's serde JSON, every field (what eddy's typed sources read):
    /// [`OutputRecord::encode_as`].
    Serde,
}

/// Which of an output port's records `eddy replay` writes to its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRecords {
    /// Every record.
    All,
    /// Only the on-time ones (`enriched.jsonl`): [`OutputRecord::on_time`].
    OnTime,
    /// None: the port has no file.
    Nothing,
}

/// The record types that flow between eddy's jobs in-process, embedded.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// [`Reading`].
    Reading,
    /// [`Enriched`].
    Enriched,
    /// [`RawLine`].
    Raw,
}

/// A port's flow inside the embedded dataflow.
#[doc(hidden)]
#[derive(Clone)]
pub enum PortFlow<'s> {
    /// Validated readings.
    Readings(Flow<'s, Reading>),
    /// Enriched readings.
    Enriched(Flow<'s, Enriched>),
    /// Raw lines.
    Raw(Flow<'s, RawLine>),
}

impl PortFlow<'_> {
    fn record(&self) -> Record {
        match self {
            PortFlow::Readings(_) => Record::Reading,
            PortFlow::Enriched(_) => Record::Enriched,
            PortFlow::Raw(_) => Record::Raw,
        }
    }
}

fn wrong_record(port: &str, wanted: Record, found: Record) -> Error {
    Error::Job(format!("port {port:?} carries {found:?} records, not {wanted:?}"))
}

/// A record type a job can read from an input port: [`Reading`] (the port
/// `readings`), [`Enriched`] (`enriched`) and [`RawLine`] (`raw`).
pub trait InputRecord: Clone + 'static {
    /// Which record it is.
    #[doc(hidden)]
    const RECORD: Record;
    /// The flow, if `flow` carries this record type.
    #[doc(hidden)]
    fn of<'s>(flow: PortFlow<'s>) -> Option<Flow<'s, Self>>;
}

macro_rules! input_record {
    ($($record:ty => $variant:ident, $kind:ident;)*) => {$(
        impl InputRecord for $record {
            const RECORD: Record = Record::$kind;
            fn of<'s>(flow: PortFlow<'s>) -> Option<Flow<'s, Self>> {
                match flow {
                    PortFlow::$variant(f) => Some(f),
                    _ => None,
                }
            }
        }
    )*};
}

input_record! {
    Enriched => Enriched, Enriched;
    Reading => Readings, Reading;
    RawLine => Raw, Raw;
}

/// A record type a job can write to an output port: its JSON encoding
/// (one line of the output file, one topic record's value), and its Kafka
/// key (records of one key stay in one partition, in order).
pub trait OutputRecord: Encode + Clone + 'static {
    /// The record's key on Kafka; `None`: no key.
    fn key(&self) -> Option<Arc<str>>;

    /// The record's value on a topic of codec `codec`. Default: its
    /// [`Encode`] JSON line, whatever the codec.
    fn encode_as(&self, codec: Codec, out: &mut Vec<u8>) {
        let _ = codec;
        self.encode(out);
    }

    /// The records [`FileRecords::OnTime`] keeps. Default: every one.
    fn on_time<'s>(flow: Flow<'s, Self>) -> Flow<'s, Self> {
        flow
    }

    /// The flow as an in-process port, for the record types other jobs read.
    #[doc(hidden)]
    fn in_process<'s>(_flow: &Flow<'s, Self>) -> Option<PortFlow<'s>> {
        None
    }
}

fn serde_line<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, value).expect("records serialise to memory");
}

impl OutputRecord for eddy_core::records::StatsRecord {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device_id.name())
    }
}

impl OutputRecord for eddy_core::records::WindowRecord {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device_id.name())
    }
}

impl OutputRecord for eddy_core::records::EventRecord {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device_id.name())
    }
}

impl OutputRecord for eddy_ml::score::ForecastRecord {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device_id.name())
    }
}

impl OutputRecord for Enriched {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device.name())
    }
    fn encode_as(&self, codec: Codec, out: &mut Vec<u8>) {
        match codec {
            Codec::Jsonl => self.encode(out),
            Codec::Serde => serde_line(self, out),
        }
    }
    fn on_time<'s>(flow: Flow<'s, Self>) -> Flow<'s, Self> {
        flow.on_time()
    }
    fn in_process<'s>(flow: &Flow<'s, Self>) -> Option<PortFlow<'s>> {
        Some(PortFlow::Enriched(flow.clone()))
    }
}

impl OutputRecord for Reading {
    fn key(&self) -> Option<Arc<str>> {
        Some(self.device.name())
    }
    fn encode_as(&self, codec: Codec, out: &mut Vec<u8>) {
        match codec {
            Codec::Jsonl => self.encode(out),
            Codec::Serde => serde_line(self, out),
        }
    }
    fn in_process<'s>(flow: &Flow<'s, Self>) -> Option<PortFlow<'s>> {
        Some(PortFlow::Readings(flow.clone()))
    }
}

impl OutputRecord for RawLine {
    fn key(&self) -> Option<Arc<str>> {
        None
    }
    fn in_process<'s>(flow: &Flow<'s, Self>) -> Option<PortFlow<'s>> {
        Some(PortFlow::Raw(flow.clone()))
    }
}

impl OutputRecord for DeadLetter {
    fn key(&self) -> Option<Arc<str>> {
        None
    }
    fn encode_as(&self, codec: Codec, out: &mut Vec<u8>) {
        match codec {
            Codec::Jsonl => self.encode(out),
            Codec::Serde => serde_line(self, out),
        }
    }
}

/// Where an output port goes in the mode a job runs in.
#[doc(hidden)]
pub enum Target {
    /// Nowhere but to the jobs that read it in-process.
    Nothing,
    /// A JSON-lines file, shared by the process's workers.
    File(Arc<JsonlFile>),
    /// A Kafka topic.
    #[cfg(feature = "kafka")]
    Topic(crate::kafka::TopicTarget),
}

/// The ingest job's source: the lines of a dataset file or of `P.raw`,
/// validated, classified and stamped.
pub struct Lines<'s> {
    /// Valid readings, late and future ones flagged.
    pub readings: Flow<'s, Reading>,
    /// Lines that failed validation.
    pub dead: Flow<'s, DeadLetter>,
    /// Every line as received (empty unless the raw archive is on).
    pub raw: Flow<'s, RawLine>,
}

/// How a mode connects a job's ports and sources: implemented by the
/// embedded pipeline and by the Kafka runner. Each method is what one mode
/// does differently; a job sees only [`JobBuilder`].
#[doc(hidden)]
pub trait Wiring<'s> {
    /// The dataflow scope.
    fn scope(&self) -> Scope<'s, u64>;
    /// Input `port`, of `record`s.
    fn input(&mut self, port: &str, record: Record) -> Result<PortFlow<'s>>;
    /// The raw lines, through the ingest job's validation.
    fn lines(&mut self, name: &str) -> Result<Lines<'s>>;
    /// The reference arrangements.
    fn reference(&mut self) -> Result<Reference<'s>>;
    /// The readings to enrich and the reference, in the calibration
    /// adapter's loop.
    fn calibration_loop(&mut self, readings: Flow<'s, Reading>) -> Result<(Flow<'s, Reading>, Reference<'s>)>;
    /// Closes the calibration loop with the adapter's updates (topic `topic`).
    fn feedback(&mut self, topic: &str, updates: Flow<'s, CalibrationUpdate>) -> Result<()>;
    /// The calibration changes of the reference data of `channel` (the
    /// adapter's baseline).
    fn calibration_book(&self, channel: Channel) -> CalibrationBook;
    /// Models other than the watched file's, paced by `watch`.
    fn models(&mut self, name: &str, watch: &Flow<'s, Enriched>) -> Result<StreamVec<'s, u64, ModelUpdate>>;
    /// Writes `enriched` to the Parquet backup.
    fn backup(&mut self, enriched: Flow<'s, Enriched>) -> Result<()>;
    /// Writes `raw` to the raw archive.
    fn raw_archive(&mut self, raw: Flow<'s, RawLine>) -> Result<()>;
    /// Offers output `port` to the jobs that read it in-process.
    fn offer(&mut self, port: &str, flow: PortFlow<'s>);
    /// Where output `port` (topic `topic`, carried as `carry`) goes.
    fn target(&mut self, port: &str, topic: &str, carry: Port) -> Result<Target>;
    /// Registers a sink's committed frontier.
    fn commit(&mut self, committed: Committed<'s>);
    /// Builds a sink that writes on the worker's own thread (a JSON-lines
    /// file) and registers it, after the other operators: timely schedules a
    /// dataflow's operators in the order they were built, so the sinks that
    /// hand their batches to threads of their own (the Parquet writers) get
    /// each batch first and work beside the worker.
    fn sink_last(&mut self, sink: Box<dyn FnOnce() -> Committed<'s> + 's>);
}

/// What a job's [`build`](Job::build) gets: its inputs, the reference data,
/// and its outputs, in whatever mode it runs.
pub struct JobBuilder<'s, 'w> {
    name: &'w str,
    instance: &'w JobInstance,
    pipeline: &'w PipelineSpec,
    wiring: &'w mut dyn Wiring<'s>,
}

impl<'s, 'w> JobBuilder<'s, 'w> {
    /// A builder for `instance` over `wiring`.
    #[doc(hidden)]
    pub fn new(instance: &'w JobInstance, pipeline: &'w PipelineSpec, wiring: &'w mut dyn Wiring<'s>) -> Self {
        JobBuilder { name: &instance.name, instance, pipeline, wiring }
    }

    /// The job's name (its spec's `name`, or its kind): the prefix of its
    /// operators' names, and its Kafka consumer group.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The dataflow scope, for operators of your own.
    pub fn scope(&self) -> Scope<'s, u64> {
        self.wiring.scope()
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.scope().index()
    }

    /// The pipeline's specs (the ingest job's lateness and epoch, say).
    pub fn pipeline(&self) -> &PipelineSpec {
        self.pipeline
    }

    fn declared(&self, port: &str, ports: &[&str], what: &str) -> Result<()> {
        if ports.contains(&port) {
            return Ok(());
        }
        Err(Error::Job(format!("job {:?} {what} port {port:?}, which it does not declare ({ports:?})", self.name)))
    }

    /// The records of input `port`, a step named after the job.
    pub fn input<D: InputRecord>(&mut self, port: &str) -> Result<Flow<'s, D>> {
        self.declared(port, self.instance.inputs(), "reads")?;
        let flow = self.wiring.input(port, D::RECORD)?;
        let found = flow.record();
        let flow = D::of(flow).ok_or_else(|| wrong_record(port, D::RECORD, found))?;
        Ok(flow.step(self.name))
    }

    /// The raw lines (input port `raw`: the dataset file embedded, `P.raw`
    /// over Kafka), validated, classified and stamped by the ingest rules
    /// of the pipeline's spec: the ingest job's source.
    pub fn lines(&mut self) -> Result<Lines<'s>> {
        self.declared("raw", self.instance.inputs(), "reads")?;
        self.wiring.lines(self.name)
    }

    /// The reference data (devices, calibration, rules) as arrangements
    /// that follow their updates. Call it after [`input`](Self::input):
    /// over Kafka, the job's input paces the live reference updates.
    pub fn reference(&mut self) -> Result<Reference<'s>> {
        self.wiring.reference()
    }

    /// The readings to enrich, and the reference data, inside the
    /// calibration adapter's loop: the readings are re-stamped so that the
    /// adapter's updates, fed back one loop delay (lateness + epoch) later,
    /// reach every reading they apply to (see `docs/ml.md`). Call it instead
    /// of [`reference`](Self::reference), once, when the adapter is on.
    pub fn calibration_loop(&mut self, readings: Flow<'s, Reading>) -> Result<(Flow<'s, Reading>, Reference<'s>)> {
        self.wiring.calibration_loop(readings)
    }

    /// Closes the calibration loop: `updates` (output `port`) reach the
    /// reference data one loop delay later (embedded: a feedback edge; over
    /// Kafka: the topic, with the markers the enrich job waits for).
    pub fn feedback(&mut self, port: &str, updates: Flow<'s, CalibrationUpdate>) -> Result<()> {
        self.declared(port, self.instance.outputs(), "writes")?;
        let topic = self.instance.topic(port);
        self.wiring.feedback(&topic, updates)
    }

    /// The calibration changes of the reference data of `channel`, for
    /// the calibration adapter (over Kafka, those of `P.calibration` that
    /// the adapter did not write itself).
    pub fn calibration_book(&self, channel: Channel) -> CalibrationBook {
        self.wiring.calibration_book(channel)
    }

    /// Models from input port `models` (over Kafka, `P.models`; embedded,
    /// none), paced by `watch`.
    pub fn models(&mut self, watch: &Flow<'s, Enriched>) -> Result<StreamVec<'s, u64, ModelUpdate>> {
        self.declared("models", self.instance.inputs(), "reads")?;
        self.wiring.models(self.name, watch)
    }

    /// Writes `enriched` to the Parquet backup (`OUT/backup/`), exactly once.
    pub fn backup(&mut self, enriched: Flow<'s, Enriched>) -> Result<()> {
        self.wiring.backup(enriched.step(self.name))
    }

    /// Writes `raw` to the raw archive (`OUT/raw/`), exactly once.
    pub fn raw_archive(&mut self, raw: Flow<'s, RawLine>) -> Result<()> {
        self.wiring.raw_archive(raw.step(self.name))
    }

    /// Writes `flow` to output `port`, committed per epoch, as
    /// [`Job::port`] says; other jobs of an embedded pipeline read it too.
    pub fn output<D: OutputRecord>(&mut self, port: &str, flow: Flow<'s, D>) -> Result<()> {
        self.declared(port, self.instance.outputs(), "writes")?;
        if let Some(p) = D::in_process(&flow) {
            self.wiring.offer(port, p);
        }
        let carry = self.instance.port(port);
        let topic = self.instance.topic(port);
        match self.wiring.target(port, &topic, carry)? {
            Target::Nothing => {}
            Target::File(file) => {
                let on_time = carry.file == FileRecords::OnTime;
                self.wiring.sink_last(Box::new(move || {
                    let flow = if on_time { D::on_time(flow) } else { flow };
                    flow.sink(JsonlSink::new(file))
                }));
            }
            #[cfg(feature = "kafka")]
            Target::Topic(t) => {
                let committed = t.sink(flow, carry.codec);
                self.wiring.commit(committed);
            }
        }
        Ok(())
    }
}

/// The erased form of a [`Job`], as the registry holds it.
pub trait DynJob: Send + Sync {
    /// [`Job::KIND`].
    fn kind(&self) -> &'static str;
    /// [`Job::ABOUT`].
    fn about(&self) -> &'static str;
    /// [`Job::INPUTS`].
    fn inputs(&self) -> &'static [&'static str];
    /// [`Job::OUTPUTS`].
    fn outputs(&self) -> &'static [&'static str];
    /// [`Job::DEFAULT_SPEC`].
    fn default_spec(&self) -> Option<&'static str>;
    /// [`Job::parse`] then [`Job::check`].
    fn load(&self, text: &str, file: &str, pipeline: &PipelineSpec) -> Result<Arc<dyn Any + Send + Sync>, SpecError>;
    /// [`Job::topic`].
    fn topic(&self, spec: &(dyn Any + Send + Sync), port: &str) -> String;
    /// [`Job::port`].
    fn port(&self, port: &str) -> Port;
    /// [`Job::active`].
    fn active(&self, spec: &(dyn Any + Send + Sync), pipeline: &PipelineSpec) -> bool;
    /// [`Job::REBUILDS`].
    fn rebuilds(&self) -> bool;
    /// [`Job::build`].
    fn build(&self, spec: &(dyn Any + Send + Sync), job: &mut JobBuilder<'_, '_>) -> Result<()>;
    /// The spec, for `eddy check`.
    fn describe(&self, spec: &(dyn Any + Send + Sync)) -> String;
}

struct Component<J>(std::marker::PhantomData<fn() -> J>);

fn spec_of<J: Job>(spec: &(dyn Any + Send + Sync)) -> &J::Spec {
    spec.downcast_ref::<J::Spec>().expect("a job instance holds its own kind's spec")
}

impl<J: Job> DynJob for Component<J> {
    fn kind(&self) -> &'static str {
        J::KIND
    }
    fn about(&self) -> &'static str {
        J::ABOUT
    }
    fn inputs(&self) -> &'static [&'static str] {
        J::INPUTS
    }
    fn outputs(&self) -> &'static [&'static str] {
        J::OUTPUTS
    }
    fn default_spec(&self) -> Option<&'static str> {
        J::DEFAULT_SPEC
    }
    fn load(&self, text: &str, file: &str, pipeline: &PipelineSpec) -> Result<Arc<dyn Any + Send + Sync>, SpecError> {
        let spec = J::parse(text, file)?;
        J::check(&spec, pipeline, file)?;
        Ok(Arc::new(spec))
    }
    fn topic(&self, spec: &(dyn Any + Send + Sync), port: &str) -> String {
        J::topic(spec_of::<J>(spec), port)
    }
    fn port(&self, port: &str) -> Port {
        J::port(port)
    }
    fn active(&self, spec: &(dyn Any + Send + Sync), pipeline: &PipelineSpec) -> bool {
        J::active(spec_of::<J>(spec), pipeline)
    }
    fn rebuilds(&self) -> bool {
        J::REBUILDS
    }
    fn build(&self, spec: &(dyn Any + Send + Sync), job: &mut JobBuilder<'_, '_>) -> Result<()> {
        J::build(spec_of::<J>(spec), job)
    }
    fn describe(&self, spec: &(dyn Any + Send + Sync)) -> String {
        format!("{:#?}", spec_of::<J>(spec))
    }
}

/// One configured job: a kind, its name and its parsed spec.
#[derive(Clone)]
pub struct JobInstance {
    /// The job's name: its spec's `name`, or its kind.
    pub name: String,
    /// The spec file it came from (`<builtin>/…` for a default).
    pub file: String,
    spec: Arc<dyn Any + Send + Sync>,
    component: Arc<dyn DynJob>,
}

impl fmt::Debug for JobInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, from {}): {}", self.name, self.kind(), self.file, self.component.describe(&*self.spec))
    }
}

impl JobInstance {
    /// The job's spec, as text (for a checkpoint to tell a changed spec).
    pub fn spec_text(&self) -> String {
        format!("{}: {}", self.kind(), self.component.describe(&*self.spec))
    }

    /// The job's kind.
    pub fn kind(&self) -> &'static str {
        self.component.kind()
    }

    /// The input ports.
    pub fn inputs(&self) -> &'static [&'static str] {
        self.component.inputs()
    }

    /// The output ports.
    pub fn outputs(&self) -> &'static [&'static str] {
        self.component.outputs()
    }

    /// The topic (without the prefix) of output `port`.
    pub fn topic(&self, port: &str) -> String {
        self.component.topic(&*self.spec, port)
    }

    /// How output `port` is carried.
    pub fn port(&self, port: &str) -> Port {
        self.component.port(port)
    }

    /// Whether `eddy replay` builds it.
    pub fn active(&self, pipeline: &PipelineSpec) -> bool {
        self.component.active(&*self.spec, pipeline)
    }

    /// Whether it rebuilds its state from the start of its input over Kafka.
    pub fn rebuilds(&self) -> bool {
        self.component.rebuilds()
    }

    /// Builds the job on one worker.
    pub fn build<'s>(&self, pipeline: &PipelineSpec, wiring: &mut dyn Wiring<'s>) -> Result<()> {
        let mut builder = JobBuilder::new(self, pipeline, wiring);
        self.component.build(&*self.spec, &mut builder)
    }
}

/// An entry of the registry: a [`Job`], erased.
pub type Entry = Arc<dyn DynJob>;

/// The job kinds a binary knows, in pipeline order: one explicit list.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

/// Every spec of a pipeline: the core jobs' [`PipelineSpec`] and the
/// configured component jobs, in registry order.
#[derive(Clone, Debug)]
pub struct Jobs {
    /// The core jobs' specs (and the built-in defaults of stats, windows and
    /// alerts, which the calibration adapter and the reference data read).
    pub pipeline: PipelineSpec,
    /// The component jobs that run.
    pub instances: Vec<JobInstance>,
}

impl Jobs {
    /// The instance of `kind`, if it runs.
    pub fn instance(&self, kind: &str) -> Option<&JobInstance> {
        self.instances.iter().find(|i| i.kind() == kind)
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// eddy's built-in jobs: see `crate::builtin::registry`.
    pub fn builtin() -> Registry {
        crate::builtin::registry()
    }

    /// Adds the job `J`. A kind already registered is replaced, in place.
    pub fn with<J: Job>(mut self) -> Registry {
        let entry: Entry = Arc::new(Component::<J>(std::marker::PhantomData));
        match self.entries.iter().position(|e| e.kind() == J::KIND) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
        self
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.kind() == kind)
    }

    /// Every kind's name, comma-separated (for messages).
    pub fn kinds(&self) -> String {
        self.entries.iter().map(|e| e.kind()).collect::<Vec<_>>().join(", ")
    }

    /// The kind a spec file names, checked against the registry.
    pub fn kind_of(&self, text: &str, file: &str) -> Result<&Entry, SpecError> {
        let kind = kind_of(text, file)?;
        self.get(&kind).ok_or_else(|| {
            SpecError::at_key(file, "kind", format!("unknown job kind {kind:?}: expected one of {}", self.kinds()))
        })
    }

    /// Loads spec files `(name, text)`. Core kinds make the
    /// [`PipelineSpec`] (with `defaults`, a core kind no file gives comes
    /// from the built-in specs). A component kind runs when a file names
    /// it, or by default when it has a [`Job::DEFAULT_SPEC`] and `defaults`
    /// is set. Two files of one kind are an error.
    pub fn load(&self, files: &[(String, String)], defaults: bool) -> Result<Jobs, SpecError> {
        let mut core = Vec::new();
        let mut given: Vec<(&str, &String, &String)> = Vec::new();
        for (file, text) in files {
            let c = self.kind_of(text, file)?;
            // The core pipeline's kinds (ingest, enrich, stats, windows,
            // alerts, backup, adapter, score) make the pipeline's spec too,
            // which every job reads (the ingest epoch, say).
            if is_core(c.kind()) {
                core.push((file.clone(), text.clone()));
            } else if let Some((_, other, _)) = given.iter().find(|(k, _, _)| *k == c.kind()) {
                return Err(SpecError::at_key(
                    file,
                    "kind",
                    format!("a second {} job: {other} already defines one", c.kind()),
                ));
            }
            given.push((c.kind(), file, text));
        }
        let pipeline = PipelineSpec::from_files(&core, defaults || core.is_empty())?;
        let mut instances = Vec::new();
        for c in &self.entries {
            let (file, text) = match given.iter().find(|(k, _, _)| *k == c.kind()) {
                Some((_, file, text)) => ((*file).clone(), (*text).to_string()),
                None => match (defaults, c.default_spec()) {
                    (true, Some(text)) => (format!("<builtin>/{}.toml", c.kind()), text.to_string()),
                    _ => continue,
                },
            };
            let spec = c.load(&text, &file, &pipeline)?;
            let name = name_of(&text, &file)?.unwrap_or_else(|| c.kind().to_string());
            instances.push(JobInstance { name, file, spec, component: Arc::clone(c) });
        }
        Ok(Jobs { pipeline, instances })
    }

    /// The built-in defaults: `load(&[], true)`.
    pub fn defaults(&self) -> Jobs {
        self.load(&[], true).expect("the built-in job specs are valid")
    }
}

/// True for the kinds whose specs make the [`PipelineSpec`].
fn is_core(kind: &str) -> bool {
    JobKind::from_name(kind).is_some() || ML_KINDS.contains(&kind)
}

/// A spec file's `name`, if it has one.
fn name_of(text: &str, file: &str) -> Result<Option<String>, SpecError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| toml_spec_error(file, e))?;
    match table.get("name") {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(SpecError::at_key(file, "name", format!("must be a non-empty string, found {other}"))),
    }
}

/// The text of a shipped `jobs/<file>` spec.
pub fn builtin_text(file: &str) -> Option<&'static str> {
    BUILTIN_JOBS.iter().find(|(n, _)| *n == file).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_registry_lists_every_kind_once_in_pipeline_order() {
        let r = Registry::builtin();
        let kinds: Vec<&str> = r.entries().iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            ["ingest", "enrich", "backup", "stats", "windows", "alerts", "sensor-health", "adapter", "score"]
        );
    }

    #[test]
    fn defaults_run_the_default_components_with_their_builtin_specs() {
        let jobs = Registry::builtin().defaults();
        let names: Vec<&str> = jobs.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["ingest", "enrich", "backup", "stats", "windows", "alerts", "sensor-health", "adapter", "score"]
        );
        assert_eq!(jobs.instance("windows").unwrap().topic("windows"), "windows.1h");
    }

    #[test]
    fn an_unknown_kind_names_the_file_and_the_registered_kinds() {
        let files = vec![("jobs/x.toml".to_string(), "kind = \"nope\"\n".to_string())];
        let e = Registry::builtin().load(&files, true).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kind"));
        assert!(e.to_string().starts_with("jobs/x.toml: key `kind`: unknown job kind \"nope\""), "{e}");
        assert!(e.to_string().contains("sensor-health"), "{e}");
    }

    #[test]
    fn a_spec_file_names_its_instance() {
        let files = vec![("s.toml".to_string(), "kind = \"stats\"\nname = \"stats-eu\"\nalpha = 0.5\n".to_string())];
        let jobs = Registry::builtin().load(&files, true).unwrap();
        assert_eq!(jobs.instance("stats").unwrap().name, "stats-eu");
        assert_eq!(jobs.pipeline.stats.alpha, 0.5);
    }

    #[derive(Clone, Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn parse_settings_names_an_unknown_key_and_its_line() {
        let s: Settings = parse_settings("kind = \"x\"\nname = \"y\"\nsize = 3\n", "x.toml").unwrap();
        assert_eq!(s.size, 3);
        let e = parse_settings::<Settings>("kind = \"x\"\n\nsise = 3\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sise"));
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_settings::<Settings>("kind = \"x\"\nsize = \"big\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml: "), "{e}");
    }
}
