//! # eddy-kafka
//!
//! Kafka for eddy's jobs: the topic layout ([`topics`]), the record envelope
//! of eddy's own topics ([`codec`]: a dataflow-time header on every record,
//! watermark markers, end markers), a producer that reports which records the
//! brokers have acknowledged ([`produce`]), consumers ([`consume`]), and
//! `eddy publish` ([`publish`]).
//!
//! The timely operators that drive these live in `eddy-runtime` (`kafka.rs`);
//! this crate knows Kafka, not dataflows. See `docs/kafka.md`.
#![deny(missing_docs)]

pub mod codec;
pub mod config;
pub mod consume;
pub mod error;
pub mod produce;
pub mod publish;
pub mod topics;

pub use config::KafkaConfig;
pub use error::{Error, Result};
pub use topics::Topics;

/// The Kafka client eddy uses, for reading records' headers and payloads.
pub use rdkafka;
