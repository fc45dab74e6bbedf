//! Errors of the runtime.

/// Why a run could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job spec is invalid.
    #[error(transparent)]
    Spec(#[from] eddy_core::SpecError),
    /// A dataset or output problem.
    #[error(transparent)]
    Connector(#[from] eddy_connectors::Error),
    /// The worker configuration is invalid (bad `-w/-n/-p/-h`).
    #[error("worker configuration: {0}")]
    Workers(String),
    /// A job's build asked for something its declaration does not allow
    /// (an undeclared port, say).
    #[error("job: {0}")]
    Job(String),
    /// A worker failed while running.
    #[error("the run failed: {0}")]
    Run(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
