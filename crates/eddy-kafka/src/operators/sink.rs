//! Writing to Kafka: a topic as a [`BatchSink`] ([`KafkaSink`]), and the
//! filter that keeps an earlier run's committed records from being written
//! again by a sink that cannot tell ([`suppress`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use eddy_operators::sink::{BatchSink, SinkError};

use crate::codec::data_headers;
use crate::produce::Producer;

/// Appends a record's value to a buffer.
pub type ValueFn<D> = Box<dyn Fn(&D, &mut Vec<u8>)>;
/// A record's key.
pub type KeyFn<D> = Box<dyn Fn(&D) -> Option<Arc<str>>>;

/// How a sink writes one record to Kafka.
pub struct Encoder<D> {
    /// Appends the record's value.
    pub value: ValueFn<D>,
    /// The record's key (its `device_id`), if it has one.
    pub key: KeyFn<D>,
}

/// A Kafka topic as a [`BatchSink`]: each record with its dataflow time in
/// `eddy.t`, records below `suppress_below` (committed by an earlier run)
/// left out. `commit` reports a frontier durable once the brokers have
/// acknowledged every record sent before the frontier was reached; the
/// producer is shared by the job's sinks on this worker.
pub struct KafkaSink<D> {
    producer: Rc<RefCell<Producer>>,
    topic: String,
    encoder: Encoder<D>,
    suppress_below: u64,
    /// The time of the batches being written.
    time: u64,
    buf: Vec<u8>,
    /// (frontier, sequence number): once every record sent before the
    /// sequence number is acknowledged, the frontier is durable.
    waiting: VecDeque<(Option<u64>, u64)>,
    /// What is durable: `Some(t)`, times before `t`; `None`, everything.
    durable: Option<u64>,
}

impl<D> KafkaSink<D> {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A sink writing to `topic` through `producer`.
    pub fn new(
        producer: Rc<RefCell<Producer>>,
        topic: String,
        encoder: Encoder<D>,
        suppress_below: u64,
    ) -> KafkaSink<D> {
        KafkaSink {
            producer,
            topic,
            encoder,
            suppress_below,
            time: 0,
            buf: Vec::with_capacity(512),
            waiting: VecDeque::new(),
            durable: Some(0),
        }
    }

    fn send(&mut self, batch: &[D]) -> Result<(), SinkError> {
        let t = self.time;
        if t < self.suppress_below {
            tracing::debug!(topic = %self.topic, t, records = batch.len(), "not written again: below the resumed frontier");
            return Ok(());
        }
        let mut producer = self.producer.borrow_mut();
        for d in batch {
            self.buf.clear();
            (self.encoder.value)(d, &mut self.buf);
            let key = (self.encoder.key)(d);
            producer.send(&self.topic, None, key.as_deref().map(str::as_bytes), Some(&self.buf), data_headers(t));
        }
        self.check(&producer)
    }

    /// The producer's error, if it has one, as this sink's. The producer
    /// is shared by the worker's sinks, so the error names the topic of the
    /// record that failed, which may be another sink's.
    fn check(&self, producer: &Producer) -> Result<(), SinkError> {
        match producer.error() {
            Some(e) => Err(SinkError::new(format!("topic {}", e.topic), e.source.clone())),
            None => Ok(()),
        }
    }
}

impl<D: 'static> BatchSink<D> for KafkaSink<D> {
    fn begin(&mut self, time: u64) {
        self.time = time;
    }

    fn write(&mut self, batch: &mut Vec<D>) -> Result<(), SinkError> {
        let r = self.send(batch);
        batch.clear();
        r
    }

    fn write_shared(&mut self, batch: &[D]) -> Result<(), SinkError>
    where
        D: Clone,
    {
        self.send(batch)
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        let mut producer = self.producer.borrow_mut();
        if self.waiting.back().is_none_or(|(f, _)| *f != upto) {
            self.waiting.push_back((upto, producer.next_seq()));
        }
        producer.poll();
        self.check(&producer)?;
        let acked = producer.acked_below();
        while let Some((f, _)) = self.waiting.front().filter(|(_, seq)| *seq <= acked).copied() {
            self.waiting.pop_front();
            self.durable = f;
        }
        Ok(self.durable)
    }

    fn recommit_after(&self) -> Duration {
        Duration::from_millis(5)
    }
}

/// Drops records below the frontier an earlier run already committed,
/// before a sink that cannot tell (the Parquet backup): `below(record)` is
/// that frontier for the record (it depends on which writer had its device).
pub fn suppress<'s, D: 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    below: impl Fn(&D) -> u64 + 'static,
) -> StreamVec<'s, u64, D> {
    stream.unary(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let Some(t) = cap.least().copied() else { return };
                output.session(&cap).give_iterator(data.drain(..).filter(|d| t >= below(d)));
            });
        }
    })
}
