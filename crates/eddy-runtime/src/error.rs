//! Errors of the runtime, by domain: each variant says what failed and
//! carries its cause, which the CLI prints as a chain.

use std::path::PathBuf;

/// Why a run could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job spec is invalid.
    #[error(transparent)]
    Spec(#[from] eddy_core::SpecError),
    /// A dataset or output problem.
    #[error(transparent)]
    Connector(#[from] eddy_connectors::Error),
    /// The Parquet backup or raw archive (files, manifest).
    #[error(transparent)]
    Parquet(#[from] eddy_parquet::Error),
    /// The brokers, a topic or a consumer.
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] eddy_kafka::Error),
    /// The worker configuration is invalid (bad `-w/-n/-p/-h`, `--speed`).
    #[error("worker configuration: {0}")]
    Workers(String),
    /// A job's build asked for something its declaration does not allow
    /// (an undeclared port, say).
    #[error("job: {0}")]
    Job(String),
    /// An option a job needs is missing or does not fit it.
    #[error("{0}")]
    Usage(String),
    /// An output directory holds the outputs of another input.
    #[error("{out} holds the backup of {before}, not of {this}: use another --out", out = .out.display())]
    OtherInput {
        /// The output directory.
        out: PathBuf,
        /// The input its backup came from.
        before: String,
        /// This run's input.
        this: String,
    },
    /// A model file cannot be used.
    #[error("model {}: {reason}", .path.display())]
    Model {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Timely could not start or join its workers (its errors are text).
    #[error("timely: {0}")]
    Timely(String),
    /// A worker failed while running: the first failure an operator or a
    /// sink reported, as it reported it (its causes follow it in the chain).
    #[error("the run failed")]
    Worker(#[source] eddy_operators::metrics::Failure),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
