//! The topic layout: every topic of a pipeline shares a prefix (`--prefix`,
//! default `eddy`).
//!
//! | topic | written by | records | key |
//! |-------|-----------|---------|-----|
//! | `P.raw` | `eddy publish`, devices | raw frames as received (any bytes) | `device_id` when readable |
//! | `P.readings` | ingest | valid readings, late and future ones flagged | `device_id` |
//! | `P.late` | ingest | late readings (as `late.jsonl`) | `device_id` |
//! | `P.future` | ingest | future readings (as `future.jsonl`) | `device_id` |
//! | `P.deadletter` | ingest | rejected frames with partition, offset, reason | none |
//! | `P.enriched` | enrich | calibrated readings with context | `device_id` |
//! | `P.stats` | stats | statistics snapshots (as `stats.jsonl`) | `device_id` |
//! | `P.windows.<size>` | windows | window aggregates (as `windows.jsonl`) | `device_id` |
//! | `P.events` | alerts | alert events (as `events.jsonl`) | `device_id` |
//! | `P.devices`, `P.calibration`, `P.rules` | `eddy publish`, operators | reference rows, compacted; null value deletes | primary key |
//! | `P.checkpoints` | every job | each job's committed frontier, compacted | job group |
//! | `P.forecasts` | score | early warnings (as `forecasts.jsonl`) | `device_id` |
//! | `P.models` | `eddy train --brokers`, any producer | a model file's JSON text | the model's version |

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// The topic names of one pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// The common prefix.
    pub prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new("eddy")
    }
}

impl Topics {
    /// Topics named `<prefix>.<name>`.
    pub fn new(prefix: impl Into<String>) -> Topics {
        Topics { prefix: prefix.into() }
    }

    /// `<prefix>.<name>`.
    pub fn name(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Raw frames, the ingest job's input.
    pub fn raw(&self) -> String {
        self.name("raw")
    }
    /// Validated readings.
    pub fn readings(&self) -> String {
        self.name("readings")
    }
    /// Late readings.
    pub fn late(&self) -> String {
        self.name("late")
    }
    /// Future readings.
    pub fn future(&self) -> String {
        self.name("future")
    }
    /// Rejected frames.
    pub fn deadletter(&self) -> String {
        self.name("deadletter")
    }
    /// Enriched readings.
    pub fn enriched(&self) -> String {
        self.name("enriched")
    }
    /// Statistics snapshots.
    pub fn stats(&self) -> String {
        self.name("stats")
    }
    /// Window aggregates of one window size, e.g. `windows.1h`.
    pub fn windows(&self, size: &str) -> String {
        self.name(&format!("windows.{size}"))
    }
    /// Alert events.
    pub fn events(&self) -> String {
        self.name("events")
    }
    /// Device reference rows.
    pub fn devices(&self) -> String {
        self.name("devices")
    }
    /// Calibration reference rows.
    pub fn calibration(&self) -> String {
        self.name("calibration")
    }
    /// Rule reference rows.
    pub fn rules(&self) -> String {
        self.name("rules")
    }
    /// Jobs' committed frontiers.
    pub fn checkpoints(&self) -> String {
        self.name("checkpoints")
    }
    /// Early warnings of the scoring job.
    pub fn forecasts(&self) -> String {
        self.name("forecasts")
    }
    /// Models for the scoring job (a model file's JSON text per record).
    pub fn models(&self) -> String {
        self.name("models")
    }
    /// The three reference topics.
    pub fn reference(&self) -> [String; 3] {
        [self.devices(), self.calibration(), self.rules()]
    }
}

/// A topic to create if missing.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Log compaction (reference topics, checkpoints).
    pub compacted: bool,
}

impl TopicSpec {
    /// A plain topic.
    pub fn new(name: impl Into<String>, partitions: i32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, compacted: false }
    }
    /// A compacted topic.
    pub fn compacted(name: impl Into<String>, partitions: i32) -> TopicSpec {
        TopicSpec { name: name.into(), partitions, compacted: true }
    }
}

/// Creates the topics that do not exist yet (an existing topic is left as
/// it is): compacted ones with `cleanup.policy=compact`, the others with
/// `cleanup.policy=delete` and `retention.ms` from [`KafkaConfig::retention`].
/// The brokers must be reachable.
pub fn ensure(cfg: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        cfg.client().create().map_err(|e| Error::kafka("creating an admin client", e))?;
    let retention = cfg.retention.as_millis().to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let n = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
            if t.compacted {
                n.set("cleanup.policy", "compact")
            } else {
                n.set("cleanup.policy", "delete").set("retention.ms", &retention)
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        futures_executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| Error::kafka("creating topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// The configuration of `topic` as the brokers report it (`retention.ms`,
/// `cleanup.policy`, …).
pub fn config_of(cfg: &KafkaConfig, topic: &str) -> Result<std::collections::BTreeMap<String, String>> {
    use rdkafka::admin::{OwnedResourceSpecifier, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> =
        cfg.client().create().map_err(|e| Error::kafka("creating an admin client", e))?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts))
        .map_err(|e| Error::kafka(format!("describing {topic}"), e))?;
    let mut out = std::collections::BTreeMap::new();
    for r in results {
        let r = r.map_err(|code| Error::Other(format!("kafka: describing {topic}: {code}")))?;
        if r.specifier == OwnedResourceSpecifier::Topic(topic.to_string()) {
            out.extend(r.entries.into_iter().filter_map(|e| Some((e.name, e.value?))));
        }
    }
    Ok(out)
}

/// The number of partitions of `topic`, from the brokers' metadata.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
    let n = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if n == 0 {
        return Err(Error::Other(format!("kafka: topic {topic} does not exist")));
    }
    Ok(n as i32)
}
