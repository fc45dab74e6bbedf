//! # eddy-kafka
//!
//! eddy's Kafka connector: the client and the timely operators that drive
//! it, so that a Kafka job's runtime only composes them.
//!
//! The client: the topic layout ([`topics`]), the record envelope of eddy's
//! own topics ([`codec`]: a dataflow-time header on every record, watermark
//! markers, end markers), a producer that reports which records the brokers
//! have acknowledged ([`produce`]), consumers ([`consume`]), and
//! `eddy publish` ([`publish`]).
//!
//! The operators ([`operators`]): the raw and typed sources with the offsets
//! they have read and the request to stop, the sink (a topic as a
//! `BatchSink`), and the side inputs read live (reference changes, gated in
//! the calibration adapter's loop; models).
//!
//! This crate depends on `eddy-core` and `eddy-operators`, never on
//! `eddy-runtime`: the runtime (`eddy_runtime::kafka`) wires these operators
//! into jobs, runs the workers and commits. See `docs/kafka.md`.
#![deny(missing_docs)]

pub mod codec;
pub mod config;
pub mod consume;
pub mod error;
pub mod operators;
pub mod produce;
pub mod publish;
pub mod topics;

pub use config::KafkaConfig;
pub use error::{Error, Result};
pub use topics::Topics;

/// The Kafka client eddy uses, for reading records' headers and payloads.
pub use rdkafka;
