//! Errors of the Kafka connectors.

use std::time::Duration;

use rdkafka::error::KafkaError;

/// A Kafka connector error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The brokers did not answer at start.
    #[error("cannot reach Kafka at {brokers} within {}s: {reason} (is the broker running? see docs/kafka.md)", .waited.as_secs())]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long we tried.
        waited: Duration,
        /// What the client said.
        reason: String,
    },
    /// A Kafka client call failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// A record could not be produced.
    #[error(transparent)]
    Produce(#[from] crate::produce::ProduceError),
    /// A topic could not be created.
    #[error("kafka: cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps a client error with what we were doing.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Error {
        Error::Kafka { context: context.into(), source }
    }
}

/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
