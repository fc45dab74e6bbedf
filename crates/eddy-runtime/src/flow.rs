//! The typed, fluent job API: [`Flow`], a stream of records between two
//! steps of a job, with the verbs of the pipeline.
//!
//! ```text
//! let (readings, dead) = job.ingest();            // source: validated readings, dead letters
//! let reference = job.reference();                // reference data, arranged
//! readings.enrich(&reference)                     // calibration + context, as of ts
//!     .on_time()                                  // drop late readings
//!     .filter(|e| e.value(Channel::PM25).is_some())
//!     .window(WindowSpec::tumbling(900_000))      // event-time windows
//!     .aggregate(|e, emit| …)                     // per key and window
//!     .sink(job.jsonl("pm25_15m"));               // committed per epoch
//! ```
//!
//! Every verb keeps each sender's arrival order (see `eddy_operators::ordered`),
//! and every operator is named `<step>.<verb>`, so logs and profiles read
//! as the job does.
//!
//! A flow carries its records in shared batches (`eddy_operators::batch`):
//! a flow read by several verbs (`flow.clone()`) hands each the same batch,
//! and the verbs that only read records (sinks, statistics, windows, alerts) read
//! them in place, so a record is not copied once per consumer.

use std::cell::RefCell;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::ExchangeData;

use eddy_core::reading::{Enriched, Reading};
use eddy_core::records::{EventRecord, StatsRecord, WindowRecord};
use eddy_core::sink::BatchSink;
use eddy_operators::alerts::alerts;
use eddy_operators::batch::{filter_shared, flat_map_shared, map_shared, share, unshare, SharedStream};
use eddy_operators::enrich::enrich;
use eddy_operators::metrics::Metrics;
use eddy_operators::ordered::exchange_ordered;
use eddy_operators::reference::Reference;
use eddy_operators::sink::{sink, Reporter, Taken};
use eddy_operators::stats::{stats, StatsParams};
use eddy_operators::windows::{window_aggregate, windows, Windowed};
use eddy_state::window::WindowSpec;

/// A stream of `D` records inside a job, at dataflow time `u64` (event-time ms).
pub struct Flow<'s, D> {
    stream: SharedStream<'s, D>,
    step: String,
    /// The on-time part of `stream`, once a verb asked for it: every job
    /// that reads this flow (and its clones) shares one filter.
    on_time: Rc<RefCell<Option<SharedStream<'s, D>>>>,
}

impl<'s, D: Clone + 'static> Clone for Flow<'s, D> {
    fn clone(&self) -> Self {
        Flow { stream: self.stream.clone(), step: self.step.clone(), on_time: Rc::clone(&self.on_time) }
    }
}

/// A sink's committed frontier: its stream carries no data, and advances as
/// the sink commits. The job runner probes it for the commit ledger, and
/// connects the sink's error to the run's.
pub struct Committed<'s> {
    pub(crate) stream: StreamVec<'s, u64, ()>,
    /// How far the sink has taken its input in, durable or not.
    pub(crate) processed: Option<Taken>,
    /// Where the sink operator reports the sink's error.
    pub(crate) report: Reporter,
}

impl<'s> Committed<'s> {
    /// Adds this sink to the runner's probe, and fails the run (`metrics`)
    /// with the sink's error if it has one.
    pub(crate) fn register(self, probe: &ProbeHandle<u64>, metrics: &Arc<Metrics>) {
        self.report.connect(metrics);
        self.stream.probe_with(probe);
    }

    /// The frontier of the sink's input, if it has one: how far the sink has
    /// taken its input in, durable or not.
    pub fn processed(&self) -> Option<&Taken> {
        self.processed.as_ref()
    }
}

impl<'s, D: Clone + 'static> Flow<'s, D> {
    /// Wraps a timely stream; `step` prefixes the names of the operators.
    pub fn new(stream: StreamVec<'s, u64, D>, step: &str) -> Self {
        let stream = share(stream, &format!("{step}.share"));
        Flow { stream, step: step.to_string(), on_time: Rc::default() }
    }

    /// The records as a timely stream of plain batches, for operators of
    /// your own (copied out of batches that other verbs share).
    pub fn into_stream(self) -> StreamVec<'s, u64, D> {
        let name = self.name("unshare");
        unshare(self.stream, &name)
    }

    /// The underlying stream of shared batches, for operators of your own
    /// that only read records (`eddy_operators::batch::Batch`), or only
    /// watch the frontier.
    pub fn into_shared(self) -> SharedStream<'s, D> {
        self.stream
    }

    fn name(&self, verb: &str) -> String {
        format!("{}.{verb}", self.step)
    }

    /// Names the step that the following verbs belong to.
    pub fn step(mut self, step: &str) -> Self {
        self.step = step.to_string();
        self
    }

    /// Transforms every record.
    pub fn map<D2: Clone + 'static>(self, f: impl FnMut(D) -> D2 + 'static) -> Flow<'s, D2> {
        let name = self.name("map");
        Flow { stream: map_shared(self.stream, &name, f), step: self.step, on_time: Rc::default() }
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(self, f: impl FnMut(&D) -> bool + 'static) -> Self {
        let name = self.name("filter");
        Flow { stream: filter_shared(self.stream, &name, f), step: self.step, on_time: Rc::default() }
    }

    /// Maps each record to any number of records.
    pub fn flat_map<I>(self, f: impl FnMut(D) -> I + 'static) -> Flow<'s, I::Item>
    where
        I: IntoIterator,
        I::Item: Clone + 'static,
    {
        let name = self.name("flat_map");
        Flow { stream: flat_map_shared(self.stream, &name, f), step: self.step, on_time: Rc::default() }
    }

    /// Calls `f` on every record, passing it on unchanged.
    pub fn inspect(self, mut f: impl FnMut(&D) + 'static) -> Self {
        self.filter(move |d| {
            f(d);
            true
        })
    }

    /// Routes records so that equal keys meet on one worker: the worker that
    /// owns the key group of `key` (a hash; use a stable one, such as
    /// `DeviceId::route`, across processes). State keyed the same way is
    /// restored on that worker ([`eddy_operators::snapshot::Owner::owns_hash`]).
    pub fn key_by(self, key: impl Fn(&D) -> u64 + 'static) -> Self
    where
        D: ExchangeData,
    {
        let name = self.name("key_by");
        let place = eddy_core::keys::Placement::current(self.stream.scope().peers());
        let plain = unshare(self.stream, &format!("{name}.unshare"));
        let routed = exchange_ordered(plain, &name, move |d: &D| place.worker_of_hash(key(d)));
        Flow { stream: share(routed, &format!("{name}.share")), step: self.step, on_time: Rc::default() }
    }

    /// Groups records into event-time windows; finish with [`WindowedFlow::aggregate`].
    pub fn window(self, spec: WindowSpec) -> WindowedFlow<'s, D> {
        WindowedFlow { flow: self, spec }
    }

    /// Writes the records to `sink`, which commits each time the frontier advances.
    pub fn sink<S: BatchSink<D>>(self, sink_impl: S) -> Committed<'s> {
        let name = self.name("sink");
        let report = Reporter::default();
        let (stream, processed) = sink(self.stream, &name, sink_impl, report.clone());
        Committed { stream, processed: Some(processed), report }
    }
}

/// A flow grouped into windows, waiting for its aggregate.
pub struct WindowedFlow<'s, D> {
    flow: Flow<'s, D>,
    spec: WindowSpec,
}

impl<'s, D: Clone + 'static> WindowedFlow<'s, D> {
    /// count, sum, min and max per key and window. `values` pushes
    /// `(key, ts, value)` for each record. Each key must live on one worker
    /// (use [`Flow::key_by`] first when keys span devices), and the input must
    /// hold no late readings.
    pub fn aggregate<K: Clone + Eq + Hash + 'static>(
        self,
        values: impl FnMut(&D, &mut dyn FnMut(K, i64, f64)) + 'static,
    ) -> Flow<'s, Windowed<K>> {
        let name = self.flow.name("window");
        Flow::new(window_aggregate(self.flow.stream, self.spec, &name, values), &self.flow.step)
    }
}

impl<'s> Flow<'s, Reading> {
    /// Joins calibration and device context as of each reading's `ts`.
    /// `retention_ms`: see `EnrichSpec::reference_retention`.
    pub fn enrich(self, reference: &Reference<'s>, retention_ms: i64) -> Flow<'s, Enriched> {
        let name = self.name("enrich");
        let readings = unshare(self.stream, &format!("{name}.unshare"));
        Flow::new(enrich(readings, reference.devices.clone(), retention_ms, &name), &self.step)
    }

    /// Only the late readings.
    pub fn late(self) -> Self {
        self.filter(|r| r.late)
    }

    /// Only the future readings.
    pub fn future(self) -> Self {
        self.filter(|r| r.future)
    }
}

impl<'s> Flow<'s, Enriched> {
    /// Drops late and future readings: what statistics, windows and alerts consume.
    /// The jobs that read one flow share one filter: the first call builds
    /// it, the others (on the flow or its clones) reuse it.
    pub fn on_time(self) -> Self {
        let built = self.on_time.borrow().clone();
        let stream = match built {
            Some(s) => s,
            None => {
                let name = self.name("on_time");
                let s = filter_shared(self.stream, &name, Enriched::on_time);
                *self.on_time.borrow_mut() = Some(s.clone());
                s
            }
        };
        Flow { stream: stream.clone(), step: self.step, on_time: Rc::new(RefCell::new(Some(stream))) }
    }

    /// Incremental statistics per (device, channel). Input: on-time readings.
    pub fn stats(self, params: StatsParams) -> Flow<'s, StatsRecord> {
        let name = self.name("stats");
        Flow::new(stats(self.stream, params, &name), &self.step)
    }

    /// count/mean/min/max per (device, channel, window). Input: on-time readings.
    pub fn windows(self, spec: WindowSpec) -> Flow<'s, WindowRecord> {
        let name = self.name("windows");
        Flow::new(windows(self.stream, spec, &name), &self.step)
    }

    /// Threshold rules with hysteresis. Input: on-time readings.
    pub fn alerts(self, reference: &Reference<'s>) -> Flow<'s, EventRecord> {
        let name = self.name("alerts");
        Flow::new(alerts(self.stream, reference.rules.clone(), &name), &self.step)
    }
}
