//! The scoring job: the event forecaster applied per device in the stream.
//!
//! For every on-time reading of the model's channel, while no event of the
//! model's rule is active for the device, it computes the features
//! ([`crate::features`]) and the probability that an event starts within the
//! model's horizon, and emits a [`ForecastRecord`] (`OUT/forecasts.jsonl`).
//!
//! **Hot swap.** The model file is watched: its modification time and length
//! are checked at most every `poll` (wall time). Input is applied epoch by
//! epoch, in time order, once the frontier has passed the epoch (as the
//! statistics job does); a changed file is re-read before an epoch is
//! applied, so every record of an epoch is scored by one model, and the
//! switch happens at an epoch boundary, without a restart. A file that does
//! not parse is reported and the old model kept. A model can also come as a
//! record ([`crate::model::ModelUpdate::from_json`], the Kafka model topic's
//! value): the same swap, applied before the epoch of the record's time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::collections::HashMap as Map;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use eddy_connectors::jsonl::Encode;
use eddy_core::hysteresis::{observe, Active};
use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;

use crate::features::History;
use crate::model::{ForecastModel, ModelFile, ModelUpdate};

/// An early warning: the probability that an event starts within the horizon.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ForecastRecord {
    /// The device.
    pub device_id: DeviceId,
    /// The reading's event time.
    pub ts: i64,
    /// The rule whose event is forecast.
    pub rule_id: String,
    /// Minutes ahead.
    pub horizon_min: u32,
    /// The probability.
    pub probability: f64,
    /// Whether it reaches the model's threshold.
    pub warning: bool,
    /// The model's version.
    pub model_version: String,
    /// The epoch (dataflow time) the reading was scored in.
    pub epoch: u64,
}

impl Encode for ForecastRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            device_id: String,
            ts: i64,
            rule_id: &'a str,
            horizon_min: u32,
            probability: f64,
            warning: bool,
            model_version: &'a str,
            epoch: u64,
        }
        let line = Line {
            device_id: self.device_id.with_name(str::to_string),
            ts: self.ts,
            rule_id: &self.rule_id,
            horizon_min: self.horizon_min,
            probability: self.probability,
            warning: self.warning,
            model_version: &self.model_version,
            epoch: self.epoch,
        };
        serde_json::to_writer(&mut *out, &line).expect("a forecast serialises");
    }
}

/// A model file watched for changes.
pub struct ModelWatch {
    path: PathBuf,
    poll: Duration,
    seen: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
}

impl ModelWatch {
    /// Watches `path`, checking at most every `poll`.
    pub fn new(path: PathBuf, poll: Duration) -> ModelWatch {
        ModelWatch { path, poll, seen: None, checked: None }
    }

    /// The model, if the file changed since the last call (or on the first).
    pub fn changed(&mut self) -> Option<ModelUpdate> {
        if self.checked.is_some_and(|c| c.elapsed() < self.poll) {
            return None;
        }
        self.checked = Some(Instant::now());
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        if self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        match ModelFile::load(&self.path).map_err(|e| e.to_string()).and_then(ModelUpdate::from_file) {
            Ok(m) => {
                tracing::info!(path = %self.path.display(), version = %m.version, "scoring: model loaded");
                Some(m)
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "scoring: keeping the current model: {e}");
                None
            }
        }
    }
}

struct Live {
    version: Arc<str>,
    model: ForecastModel,
    channel: Channel,
}

/// The scoring operator. Its input must be partitioned by device.
pub fn score<'s>(
    enriched: StreamVec<'s, u64, Enriched>,
    watch: ModelWatch,
    name: &str,
) -> StreamVec<'s, u64, ForecastRecord> {
    let models = timely::dataflow::operators::generic::operator::empty(enriched.scope());
    score_with(enriched, models, Some(watch), name)
}

/// The scoring operator with models from a stream too (the Kafka model
/// topic, broadcast to every worker) and, optionally, a watched file. Its
/// enriched input must be partitioned by device; `models` must reach every
/// worker.
///
/// Before an epoch `t` is applied (once both inputs' frontiers have passed
/// it), every model of the stream at a time `≤ t` is installed, in time and
/// then arrival order, and then the file is checked: each epoch is scored by
/// one model, and a model record at time `t` applies from epoch `t` on, on
/// every worker alike.
pub fn score_with<'s>(
    enriched: StreamVec<'s, u64, Enriched>,
    models: StreamVec<'s, u64, ModelUpdate>,
    mut watch: Option<ModelWatch>,
    name: &str,
) -> StreamVec<'s, u64, ForecastRecord> {
    enriched.binary_frontier(models, Pipeline, Pipeline, name, move |_cap, _info| {
        let mut buffered: BTreeMap<u64, (Capability<u64>, Vec<Enriched>)> = BTreeMap::new();
        let mut incoming: BTreeMap<u64, Vec<ModelUpdate>> = BTreeMap::new();
        let mut live: Option<Live> = None;
        let mut devices: Map<DeviceId, (History, Option<Active>)> = Map::new();
        move |(input, frontier), (models, models_frontier), output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                buffered.entry(*cap.time()).or_insert_with(|| (cap, Vec::new())).1.append(data);
            });
            models.for_each(|cap, data| {
                let t = cap.least().copied().unwrap_or(0);
                incoming.entry(t).or_default().append(data);
            });
            let f = frontier.frontier();
            let fm = models_frontier.frontier();
            while let Some(entry) = buffered.first_entry() {
                let t = *entry.key();
                if f.less_equal(&t) || fm.less_equal(&t) {
                    break;
                }
                let (cap, batch) = entry.remove();
                // The epoch boundary: a new model applies from this epoch on.
                let mut install = |m: ModelUpdate| {
                    let channel = Channel::intern(&m.model.rule.channel);
                    if live.as_ref().is_none_or(|l| l.channel != channel) {
                        devices.clear();
                    }
                    live = Some(Live { version: Arc::from(m.version.as_str()), model: m.model, channel });
                };
                while let Some(e) = incoming.first_entry().filter(|e| *e.key() <= t) {
                    for m in e.remove() {
                        tracing::info!(version = %m.version, epoch = t, "scoring: model from the model stream");
                        install(m);
                    }
                }
                if let Some(m) = watch.as_mut().and_then(ModelWatch::changed) {
                    install(m);
                }
                let Some(l) = live.as_ref() else { continue };
                let rule = &l.model.rule;
                let mut out = Vec::new();
                for r in batch.iter().filter(|r| r.on_time()) {
                    let Some(v) = r.value(l.channel) else { continue };
                    let (h, state) = devices.entry(r.device).or_default();
                    h.push(r.ts, v);
                    observe(state, r.ts, v, rule.rise_above, rule.fall_below);
                    if state.is_some() {
                        continue;
                    }
                    let Some(x) = h.features() else { continue };
                    let p = l.model.logistic.probability(&x);
                    out.push(ForecastRecord {
                        device_id: r.device,
                        ts: r.ts,
                        rule_id: rule.rule_id.clone(),
                        horizon_min: l.model.horizon_min,
                        probability: p,
                        warning: p >= l.model.logistic.threshold,
                        model_version: l.version.to_string(),
                        epoch: t,
                    });
                }
                if !out.is_empty() {
                    output.session(&cap).give_iterator(out.into_iter());
                }
            }
        }
    })
}
