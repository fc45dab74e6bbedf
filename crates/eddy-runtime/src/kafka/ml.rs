//! The ML jobs over Kafka: the calibration adapter's feedback loop
//! through `P.calibration`, and the scoring job with models from a file or
//! from `P.models` (see `docs/ml.md` and `docs/kafka.md`).
//!
//! **The loop.** In `eddy replay` the adapter's updates reach the reference
//! data through a timely feedback edge delayed by `D` = lateness + epoch,
//! after the readings were re-stamped ([`restamp`]) so that every reading has
//! `ts < time + D`. Over Kafka the edge is the topic `P.calibration`:
//!
//! * the adapter job writes each update there (the JSON of `eddy publish`,
//!   keyed by the primary key, with `eddy.t`), and markers at its committed
//!   frontier plus `D` (keyed [`GATE_KEY`], since the topic is compacted):
//!   every update it writes later applies from at least that time;
//! * an enrich job whose pipeline has the adapter enabled re-stamps its
//!   readings as replay does and holds its live reference frontier at the
//!   least adapter marker read ([`AdapterGate`]), so a reading is looked up
//!   only once every update that applies to it is in, each at its own `ts`;
//! * the enrich job's markers on `P.enriched` are the least time of a
//!   reading it can still write ([`LoopTracker`]), not its frontier: that
//!   frontier follows the gate, and a marker following it would make the
//!   loop creep forward one `D` per round trip from time 0, where timely's
//!   progress tracking jumps to the readings' times at once.
//!
//! So the chain computes what `eddy replay` computes with the adapter on; a
//! round trip (enrich → adapter → enrich) moves the loop forward by about
//! one epoch of event time, so pipelines with the adapter want long epochs.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Enriched, Position, Reading};
use eddy_core::reference::{RefUpdate, Table};
use eddy_core::spec::PipelineSpec;
use eddy_kafka::codec::{envelope, Envelope, TIME};
use eddy_kafka::consume::{self, read_to_end};
use eddy_kafka::operators::{live_reference, Encoder};
use eddy_kafka::topics::TopicSpec;
use eddy_ml::adapt::{restamp, CalibrationUpdate};
use eddy_ml::model::{ModelFile, ModelUpdate};
use eddy_operators::reference::{reference_with_feedback, Reference};

use super::{dead_encoder, kafka_err, Ctx, RunOptions};
use crate::error::{Error, Result};
use crate::flow::{Committed, Flow};

/// The gate of the live reference data in the loop, at its old path.
pub use eddy_kafka::operators::AdapterGate;

/// The key of the adapter's markers in `P.calibration` (a compacted topic
/// keeps the latest per key: the latest marker).
pub const GATE_KEY: &str = "eddy.wm.adapter";

/// The loop's delay: lateness plus an epoch (as in `eddy replay`).
pub fn loop_delay(spec: &PipelineSpec) -> u64 {
    (spec.ingest.lateness.ms() + spec.ingest.epoch.ms()).max(0) as u64
}

/// What the ML jobs read before the workers start, shared by them.
#[derive(Default)]
pub struct MlShared {
    /// Enrich with the adapter: the adapter markers already in `P.calibration`,
    /// per partition (read before the reference topics, so that every update
    /// before them is among the updates read at start).
    pub gate_marks: BTreeMap<i32, u64>,
    /// Partitions of `P.calibration`.
    pub gate_partitions: i32,
    /// Enrich with the adapter: the readings in flight, for its markers.
    pub tracker: Arc<LoopTracker>,
    /// The adapter: the calibration changes of the reference data (those
    /// `eddy publish` wrote; its own, which carry `eddy.t`, left out).
    pub dataset_calibration: Vec<RefUpdate>,
}

/// True when the job runs in the adapter's loop: the enrich job of a
/// pipeline whose adapter is on.
pub fn enrich_in_loop(opts: &RunOptions) -> bool {
    opts.kind() == "enrich" && opts.spec.adapter.enabled
}

/// Reads what the ML jobs need at start; checks the scoring job's first model.
pub fn prepare(opts: &RunOptions) -> Result<MlShared> {
    let mut ml = MlShared::default();
    let calibration = opts.topics.calibration();
    if enrich_in_loop(opts) {
        for m in read_to_end(&opts.kafka, &calibration, Duration::from_secs(60)).map_err(kafka_err)? {
            if let Ok(Envelope::Marker(wm)) = envelope(m.headers()) {
                let e = ml.gate_marks.entry(m.partition()).or_insert(0);
                *e = (*e).max(wm);
            }
        }
        let c = consume::consumer(&opts.kafka, &format!("{}.gate", opts.group())).map_err(kafka_err)?;
        ml.gate_partitions = consume::partitions(&c, &calibration, opts.kafka.connect_timeout).map_err(kafka_err)?;
    }
    if opts.kind() == "adapter" {
        for m in read_to_end(&opts.kafka, &calibration, Duration::from_secs(60)).map_err(kafka_err)? {
            let own = m.headers().is_some_and(|h| h.iter().any(|h| h.key == TIME));
            let Some(p) = m.payload().filter(|_| !own) else { continue };
            match serde_json::from_slice::<serde_json::Value>(p)
                .map_err(|e| e.to_string())
                .and_then(|v| RefUpdate::from_json(&v))
            {
                Ok(u) => ml.dataset_calibration.push(u),
                Err(e) => tracing::warn!(offset = m.offset(), "skipping a calibration record: {e}"),
            }
        }
        ml.dataset_calibration.sort_by_key(|u| u.ts);
    }
    if opts.kind() == "score" {
        crate::replay::check_model(&opts.spec)?;
    }
    Ok(ml)
}

/// A marker for one output topic that is not the job's frontier: the run
/// loop writes `value(frontier)` there (with `key`), whenever it changes.
pub struct TopicMark {
    /// The topic.
    pub topic: String,
    /// The markers' key (for compacted topics).
    pub key: Option<&'static str>,
    /// The marker, given the job's committed frontier.
    pub value: Box<dyn Fn(u64) -> u64>,
    /// Written once before the job's first step too, with frontier 0.
    pub at_start: bool,
}

/// Readings of an enrich job in the loop that are not yet durable in
/// `P.enriched`, by dataflow time (shared by the job's workers).
#[derive(Default)]
pub struct LoopTracker {
    /// Re-stamped readings not yet out of enrich, and enriched readings not
    /// yet known to be acknowledged (one lock: a reading moves from one to
    /// the other at once).
    counts: Mutex<(BTreeMap<u64, i64>, BTreeMap<u64, i64>)>,
}

impl LoopTracker {
    fn add(map: &mut BTreeMap<u64, i64>, t: u64, n: i64) {
        let e = map.entry(t).or_insert(0);
        *e += n;
        if *e == 0 {
            map.remove(&t);
        }
    }

    /// The least time of a reading the job can still write to `P.enriched`:
    /// `arriving` is the frontier of the re-stamped readings (read first),
    /// `acked` the frontier below which the sink has every record acknowledged.
    pub fn marker(&self, arriving: u64, acked: u64) -> u64 {
        let mut counts = self.counts.lock();
        let (pending, written) = &mut *counts;
        while written.first_key_value().is_some_and(|(t, _)| *t < acked) {
            written.pop_first();
        }
        let first = |m: &BTreeMap<u64, i64>| m.first_key_value().map_or(u64::MAX, |(t, _)| *t);
        arriving.min(first(pending)).min(first(written))
    }
}

fn frontier_of(probe: &ProbeHandle<u64>) -> u64 {
    probe.with_frontier(|f| f.iter().copied().min().unwrap_or(u64::MAX))
}

/// Counts records into (`into`) or out of the loop, passing them on.
fn count<'s, D: Clone + 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    tracker: Arc<LoopTracker>,
    into: bool,
) -> StreamVec<'s, u64, D> {
    stream.unary(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else { return };
                let n = data.len() as i64;
                let mut counts = tracker.counts.lock();
                if into {
                    LoopTracker::add(&mut counts.0, t, n);
                } else {
                    LoopTracker::add(&mut counts.0, t, -n);
                    LoopTracker::add(&mut counts.1, t, n);
                }
                drop(counts);
                output.session(&cap).give_iterator(data.drain(..));
            });
        }
    })
}

/// Passes records on in time order: a time's records, sorted by `key`, once
/// the input frontier has passed it. Enrich looks readings up in arrival order (a
/// reading not yet ready holds back those behind it); over Kafka a batch of
/// later readings can arrive before earlier ones (partitions are read side
/// by side), and in the loop the earliest readings must go first, or the
/// adapter's markers, which wait for them, never move. Replay reads in
/// time order anyway; results do not depend on this order.
fn in_time_order<'s, D: Clone + 'static, K: Ord>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    key: impl Fn(&D) -> K + 'static,
) -> StreamVec<'s, u64, D> {
    stream.unary_frontier(Pipeline, name, move |_cap, _info| {
        let mut held: BTreeMap<u64, (timely::dataflow::operators::Capability<u64>, Vec<D>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                held.entry(*cap.time()).or_insert_with(|| (cap, Vec::new())).1.append(data);
            });
            let f = frontier.frontier();
            while let Some(entry) = held.first_entry() {
                if f.less_equal(entry.key()) {
                    break;
                }
                let (cap, mut data) = entry.remove();
                data.sort_by_key(|d| key(d));
                output.session(&cap).give_iterator(data.into_iter());
            }
        }
    })
}

/// The calibration loop's output side over Kafka: the readings in flight
/// between the loop's input and the acknowledged output records.
#[derive(Clone)]
pub struct LoopOut {
    tracker: Arc<LoopTracker>,
    /// The frontier of the re-stamped readings.
    arriving: ProbeHandle<u64>,
}

impl LoopOut {
    /// Counts `flow`'s records out of the loop into `sink`; returns the
    /// sink's committed frontier.
    pub(super) fn sink<'s, D: Clone + 'static, S: eddy_core::sink::BatchSink<D>>(
        &self,
        flow: Flow<'s, D>,
        step: &str,
        sink: S,
    ) -> Committed<'s> {
        let counted = count(flow.into_stream(), "loop.out", Arc::clone(&self.tracker), false);
        Flow::new(counted, step).sink(sink)
    }

    /// The markers of `topic`: the least time of a reading the job can
    /// still write there, given `acked`, the sink's committed frontier.
    pub(super) fn mark(&self, topic: String, acked: ProbeHandle<u64>) -> TopicMark {
        let (tracker, arriving) = (Arc::clone(&self.tracker), self.arriving.clone());
        TopicMark {
            topic,
            key: None,
            at_start: false,
            value: Box::new(move |frontier| {
                // The arriving frontier first: a reading counted after it was
                // read is then at or above it.
                let arriving = frontier_of(&arriving);
                tracker.marker(arriving, frontier_of(&acked)).max(frontier)
            }),
        }
    }
}

/// The enrich job in the adapter's loop: its readings re-stamped, and the
/// reference held at the adapter's markers; the job's outputs then carry
/// markers from the readings in flight ([`LoopOut`]).
pub(super) fn calibration_loop<'s>(
    ctx: &mut Ctx<'s>,
    readings: Flow<'s, Reading>,
) -> Result<(Flow<'s, Reading>, Reference<'s>)> {
    let opts = ctx.opts().clone();
    let (t, spec) = (&opts.topics, &opts.spec);
    // The reference: what the topics held at start, then live changes, held
    // at the adapter's markers.
    let leader = ctx.scope.index() == 0;
    let updates = if leader { ctx.shared.updates.clone() } else { Vec::new() };
    let consumer = if leader { Some(ctx.reference_consumer()?) } else { None };
    let (watch, _) = readings.clone().into_shared().probe();
    let gate = AdapterGate {
        topic: t.calibration(),
        marks: ctx.shared.ml.gate_marks.clone(),
        partitions: ctx.shared.ml.gate_partitions,
    };
    let delay = loop_delay(spec);
    let live =
        live_reference(ctx.scope, "reference.live", consumer, watch, delay, Rc::clone(&ctx.progress), Some(gate));
    let reference: Reference<'_> =
        reference_with_feedback(ctx.scope, "reference", updates, Rc::clone(&ctx.progress), Some(live));

    let tracker = Arc::clone(&ctx.shared.ml.tracker);
    let name = spec.adapter.name.clone().unwrap_or_else(|| "adapter".into());
    // Routed as enrich routes them, so that the time order set below holds
    // at enrich's input on every worker.
    let place = eddy_core::keys::Placement::current(ctx.scope.peers());
    let routed = timely::dataflow::operators::Exchange::exchange(readings.into_stream(), move |r: &Reading| {
        place.worker(r.device)
    });
    let restamped = restamp(routed, spec.ingest.lateness.ms(), spec.ingest.epoch.ms(), &name);
    let restamped = count(restamped, "loop.in", Arc::clone(&tracker), true);
    let (arriving, restamped) = restamped.probe();
    // Within a time, in input order (the raw position), as replay reads them.
    let restamped = in_time_order(restamped, "loop.order", |r: &Reading| (r.pos.partition, r.pos.offset));
    ctx.in_loop = Some(LoopOut { tracker, arriving });
    Ok((Flow::new(restamped, &name), reference))
}

/// The calibration adapter's updates into `P.calibration` (`topic`), with
/// markers at its committed frontier plus the loop's delay.
pub(super) fn feedback<'s>(ctx: &mut Ctx<'s>, topic: &str, updates: Flow<'s, CalibrationUpdate>) -> Result<()> {
    let opts = ctx.opts().clone();
    let delay = loop_delay(&opts.spec);
    let encoder = Encoder::<CalibrationUpdate> {
        value: Box::new(|u: &CalibrationUpdate, out: &mut Vec<u8>| {
            let (_, _, v) = RefUpdate::from(u.clone()).to_json();
            serde_json::to_writer(&mut *out, &v).expect("JSON serialises to memory");
        }),
        key: Box::new(|u: &CalibrationUpdate| {
            let (table, key, _) = RefUpdate::from(u.clone()).to_json();
            debug_assert_eq!(table, Table::Calibration);
            Some(Arc::from(key.as_str()))
        }),
    };
    let topic = opts.topics.name(topic);
    ctx.sink(updates, topic.clone(), encoder);
    ctx.topic_marks.borrow_mut().push(TopicMark {
        topic,
        key: Some(GATE_KEY),
        at_start: true,
        value: Box::new(move |frontier| frontier.saturating_add(delay)),
    });
    Ok(())
}

/// The scoring job's models from `P.models` (read by worker 0, broadcast to
/// every worker), paced by `watch`; records that are not models go to
/// `P.deadletter`.
pub(super) fn models<'s>(
    ctx: &mut Ctx<'s>,
    name: &str,
    watch: &Flow<'s, Enriched>,
) -> Result<StreamVec<'s, u64, ModelUpdate>> {
    let opts = ctx.opts().clone();
    let leader = ctx.scope.index() == 0;
    let consumer = if leader { Some(models_consumer(&opts)?) } else { None };
    let (watch, _) = watch.clone().into_shared().probe();
    let (models, model_dead) =
        model_source(ctx.scope, &format!("{name}.models"), consumer, watch, Rc::clone(&ctx.progress));
    ctx.sink(Flow::new(model_dead, name), opts.topics.deadletter(), dead_encoder());
    Ok(models.broadcast())
}

fn models_consumer(opts: &RunOptions) -> Result<BaseConsumer> {
    let topic = opts.topics.models();
    let consumer = consume::consumer(&opts.kafka, &format!("{}.models", opts.group())).map_err(kafka_err)?;
    let n = consume::partitions(&consumer, &topic, opts.kafka.connect_timeout).map_err(kafka_err)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).map_err(|e| super::assigning(&topic, e))?;
    }
    consumer.assign(&tpl).map_err(|e| super::assigning(&topic, e))?;
    Ok(consumer)
}

/// Models from `P.models` (worker 0 reads; other workers get `None`): each
/// record's value is a model file's JSON text, decoded here for
/// [`operators::model_source`](eddy_kafka::operators::model_source), which
/// stamps and paces them (see there). A record that is not a forecast model
/// goes to the second output with its partition, offset and reason, and the
/// old model stays.
pub fn model_source<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    consumer: Option<BaseConsumer>,
    watch: ProbeHandle<u64>,
    progress: Rc<eddy_operators::ingest::SourceProgress>,
) -> (StreamVec<'s, u64, ModelUpdate>, StreamVec<'s, u64, DeadLetter>) {
    eddy_kafka::operators::model_source(scope, name, consumer, watch, progress, decode_model)
}

/// A record of `P.models` as a model, or the reason it is not one (logged).
fn decode_model(bytes: &[u8], pos: Position) -> std::result::Result<ModelUpdate, String> {
    let parsed = match std::str::from_utf8(bytes) {
        Err(e) => Err(format!("undecodable: not UTF-8 text: {e}")),
        Ok(text) => ModelUpdate::from_json(text).map_err(|e| {
            if e.starts_with("not JSON") {
                format!("undecodable: {e}")
            } else {
                format!("bad_model: {e}")
            }
        }),
    };
    match &parsed {
        Ok(u) => tracing::info!(version = %u.version, offset = pos.offset, "scoring: model record read"),
        Err(reason) => {
            tracing::warn!(
                partition = pos.partition,
                offset = pos.offset,
                "scoring: keeping the current model: {reason}"
            )
        }
    }
    parsed
}

/// Publishes a model file's JSON text to `P.models`, keyed by its version
/// (`eddy train --brokers`).
pub fn publish_model(cfg: &eddy_kafka::KafkaConfig, topics: &eddy_kafka::Topics, path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| eddy_connectors::Error::io(path, e))?;
    let m = ModelFile::parse(&text).map_err(|e| Error::Model { path: path.to_path_buf(), reason: e.to_string() })?;
    eddy_kafka::topics::ensure(cfg, &[TopicSpec::new(topics.models(), 1)]).map_err(kafka_err)?;
    let mut producer = eddy_kafka::produce::Producer::new(cfg).map_err(kafka_err)?;
    producer.send(&topics.models(), None, Some(m.version.as_bytes()), Some(text.as_bytes()), Default::default());
    while !producer.flush(Duration::from_secs(1)) {
        tracing::info!("waiting for the brokers to acknowledge the model");
    }
    match producer.error() {
        Some(e) => Err(super::produced(e)),
        None => Ok(()),
    }
}
