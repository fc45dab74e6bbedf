//! Consumers: a job's consumer (manual assignment, offsets committed by the
//! job itself), and reading a whole topic to its current end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// The next offset to read, by (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

/// A consumer in group `group` that never commits on its own: the job
/// commits offsets once its outputs are durable.
pub fn consumer(cfg: &KafkaConfig, group: &str) -> Result<BaseConsumer> {
    cfg.client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(|e| Error::kafka("creating a consumer", e))
}

/// The number of partitions of `topic`.
pub fn partitions(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<i32> {
    crate::topics::partition_count(consumer.client(), topic, timeout)
}

/// The offsets group `group` committed for `topic`'s `partitions`
/// (`None` where it committed none).
pub fn committed(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, Option<i64>>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("reading committed offsets of {topic}"), e))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            let off = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), off)
        })
        .collect())
}

/// Commits `offsets` (partition → next offset to read) of `topic`, without waiting.
pub fn commit(consumer: &BaseConsumer, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|e| Error::kafka(format!("committing offsets of {topic}"), e))?;
    }
    consumer.commit(&tpl, CommitMode::Async).map_err(|e| Error::kafka(format!("committing offsets of {topic}"), e))
}

/// Every record of `topic` from the beginning up to its end at the time of
/// the call, partition by partition in offset order.
pub fn read_to_end(cfg: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = cfg
        .client()
        .set("group.id", format!("eddy-read-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| Error::kafka("creating a consumer", e))?;
    let n = partitions(&consumer, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..n {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| Error::kafka(format!("reading the end offsets of {topic}"), e))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(|e| Error::kafka(format!("assigning {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Other(format!("kafka: reading {topic} to its end took longer than {timeout:?}")));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
                    ends.remove(&p);
                }
                out.push(m.detach());
            }
            Some(Err(e)) => return Err(Error::kafka(format!("reading {topic}"), e)),
            None => {}
        }
    }
    // Some brokers (Tansu 0.6) report a partition's end as the last batch's
    // first offset plus one: the rest of that batch came in the same fetch,
    // so take whatever is already here (briefly: a live topic never ends).
    let drain_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain_until {
        match consumer.poll(Duration::from_millis(50)) {
            Some(r) => out.push(r.map_err(|e| Error::kafka(format!("reading {topic}"), e))?.detach()),
            None => break,
        }
    }
    Ok(out)
}
