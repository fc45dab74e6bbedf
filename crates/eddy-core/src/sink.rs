//! The contract between the dataflow's sink operator and an output.

/// Why a sink could not write or commit: which output (a file, a directory,
/// a topic) and the error that stopped it, kept as the cause so that the
/// whole chain reaches the run's error.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {output}")]
pub struct SinkError {
    /// The output, as a person would name it: a path, or `topic NAME`.
    pub output: String,
    /// What failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// `output` failed with `source`.
    pub fn new(output: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SinkError {
        SinkError { output: output.into(), source: source.into() }
    }
}

/// Where a sink writes. The sink operator calls [`BatchSink::write`] with each
/// batch as it arrives, in order, and [`BatchSink::commit`] whenever its
/// input frontier advances: every record at a dataflow time before `upto`
/// (every record at all, for `None`) has then been written, and `commit` must
/// make them durable (flush, fsync, publish) before it returns.
///
/// A method that fails returns a [`SinkError`] naming the output. The sink
/// operator then reports it (the run fails with it as its cause) and calls
/// the sink no more.
pub trait BatchSink<D>: 'static {
    /// Says that the batches that follow (until the next call) hold records
    /// at dataflow time `time`. Default: ignored; a sink that writes each
    /// record's time (a Kafka topic's `eddy.t`) keeps it.
    fn begin(&mut self, _time: u64) {}
    /// Takes a batch of records; the sink may drain it.
    fn write(&mut self, batch: &mut Vec<D>) -> Result<(), SinkError>;
    /// Takes a batch of records that other consumers of the stream share,
    /// so it cannot be drained. By default a copy goes to
    /// [`BatchSink::write`]; a sink that only reads its records (an encoder)
    /// overrides this to read them in place.
    fn write_shared(&mut self, batch: &[D]) -> Result<(), SinkError>
    where
        D: Clone,
    {
        self.write(&mut batch.to_vec())
    }
    /// Takes a shared batch that the sink may keep past this call, e.g. to
    /// hand it to a thread of its own without copying its records. By
    /// default it goes to [`BatchSink::write_shared`].
    fn write_arc(&mut self, batch: &std::sync::Arc<Vec<D>>) -> Result<(), SinkError>
    where
        D: Clone,
    {
        self.write_shared(batch)
    }
    /// Commits what was written so far. `upto` is the new input frontier:
    /// `Some(t)` means times before `t` are complete; `None`, the input is.
    ///
    /// Returns the frontier up to which everything written is now durable
    /// (`None`: all of it). A sink that batches commits (the Parquet backup
    /// publishes files every few seconds) returns less than `upto` until it
    /// publishes; `Some(0)` claims nothing new. The sink operator holds its
    /// output at the largest frontier returned, and the commit ledger only
    /// counts input as committed once every sink's output has passed it.
    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError>;
    /// While [`BatchSink::commit`] returns less than its input frontier, the
    /// sink operator asks again after this long. Default 200 ms (the Parquet
    /// backup publishes every few seconds); a Kafka topic, whose broker
    /// acknowledges within milliseconds, asks sooner.
    fn recommit_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(200)
    }
    /// True for a sink whose every commit at `upto` must hold exactly the
    /// records before `upto`, none after: the sink operator then hands it a
    /// time's records only once its input frontier has passed that time
    /// (holding them until then). A rerun that resumes by dataflow time (the
    /// Kafka backup) needs this. Default false: records are written as they
    /// arrive, and a commit may hold some beyond its frontier.
    fn settled(&self) -> bool {
        false
    }
}
