//! A producer that knows which of its records the brokers have acknowledged.
//!
//! Every record gets a sequence number. Delivery reports arrive when the
//! producer is polled; [`Producer::acked_below`] is the first sequence number
//! not yet acknowledged, so a sink can tell exactly when everything it wrote
//! before some point is durable, without blocking on a flush per epoch.
//!
//! The producer is idempotent with `acks=all`, and never gives up on a
//! record (`message.timeout.ms=0`): a broker that drops is retried with
//! backoff, in order, until it returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// A record the brokers would not take: its topic, and the client's error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("producing to {topic}")]
pub struct ProduceError {
    /// The record's topic.
    pub topic: String,
    /// The client's error.
    #[source]
    pub source: KafkaError,
}

/// Collects delivery reports.
#[derive(Default)]
pub struct Reports {
    done: Mutex<Vec<(u64, Option<ProduceError>)>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let err = result.as_ref().err().map(|(e, m)| ProduceError { topic: m.topic().to_string(), source: e.clone() });
        self.done.lock().push((seq as u64, err));
    }
}

/// An idempotent producer with acknowledgement tracking.
pub struct Producer {
    inner: BaseProducer<Reports>,
    next: u64,
    pending: BTreeSet<u64>,
    error: Option<ProduceError>,
}

impl Producer {
    /// A producer for `cfg`'s brokers.
    pub fn new(cfg: &KafkaConfig) -> Result<Producer> {
        let inner: BaseProducer<Reports> = producer_config(cfg)
            .create_with_context(Reports::default())
            .map_err(|e| Error::kafka("creating a producer", e))?;
        Ok(Producer { inner, next: 0, pending: BTreeSet::new(), error: None })
    }

    /// Sends one record (to `partition`, or by key hash when `None`). Blocks,
    /// polling, while the local queue is full.
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> u64 {
        let seq = self.next;
        self.next += 1;
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, seq as usize).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        loop {
            match self.inner.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    self.inner.poll(Duration::from_millis(10));
                    self.collect();
                }
                Err((e, _)) => {
                    self.error.get_or_insert(ProduceError { topic: topic.to_string(), source: e });
                    return seq;
                }
            }
        }
        self.pending.insert(seq);
        seq
    }

    /// Serves delivery reports without waiting.
    pub fn poll(&mut self) {
        self.inner.poll(Duration::ZERO);
        self.collect();
    }

    fn collect(&mut self) {
        for (seq, err) in self.inner.context().done.lock().drain(..) {
            self.pending.remove(&seq);
            if let Some(e) = err {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Every record with a sequence number below this is acknowledged.
    pub fn acked_below(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next)
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Polls until every record sent is acknowledged, or `timeout` passes;
    /// true when all are.
    pub fn flush(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            self.inner.poll(Duration::from_millis(5));
            self.collect();
            if self.pending.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    /// The first delivery error, if any: a record that cannot be delivered
    /// (a fatal producer error; transient broker errors are retried).
    pub fn error(&self) -> Option<&ProduceError> {
        self.error.as_ref()
    }

    /// The number of partitions of `topic`.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<i32> {
        crate::topics::partition_count(self.inner.client(), topic, timeout)
    }
}

fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = cfg.client();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "5000")
        .set("linger.ms", "5")
        // The most records a batch holds: a resumed consumer fetches this far
        // back (see `operators::RESUME_REWIND`).
        .set("batch.num.messages", "10000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    c
}
