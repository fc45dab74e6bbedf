//! Connection settings shared by every client of a job.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::{Error, Result};

/// Where the brokers are, and the client settings eddy uses.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]` (`--brokers`).
    pub brokers: String,
    /// How long to wait for the brokers at start before giving up.
    pub connect_timeout: Duration,
    /// `retention.ms` of the topics of records eddy creates (not the
    /// compacted ones, which keep each key's latest record):
    /// [`KafkaConfig::DEFAULT_RETENTION`] unless set (`--retention`).
    pub retention: Duration,
}

impl KafkaConfig {
    /// Seven days: long enough for a stateful job that restarts from its
    /// last checkpoint (taken every few seconds) to find every record after
    /// it, and the brokers' usual default, set explicitly so that a broker
    /// configured otherwise does not silently shorten it.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Settings for `brokers`, with a 10 s connect timeout and the default
    /// retention.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            connect_timeout: Duration::from_secs(10),
            retention: KafkaConfig::DEFAULT_RETENTION,
        }
    }

    /// The base client configuration: servers, and reconnect backoff (a
    /// broker that drops is retried, 100 ms doubling up to 5 s).
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000")
            .set("log_level", "3");
        c
    }

    /// Checks that the brokers answer, within [`KafkaConfig::connect_timeout`].
    pub fn check_reachable(&self) -> Result<()> {
        let consumer: BaseConsumer = self
            .client()
            .set("socket.connection.setup.timeout.ms", "5000")
            .create()
            .map_err(|e| Error::kafka("creating a client", e))?;
        consumer.fetch_metadata(None, self.connect_timeout).map(|_| ()).map_err(|e| Error::Unreachable {
            brokers: self.brokers.clone(),
            waited: self.connect_timeout,
            reason: e.to_string(),
        })
    }
}
