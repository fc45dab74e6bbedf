//! The contract between the dataflow's sink operator and an output.

/// Where a sink writes. The sink operator calls [`BatchSink::write`] with each
/// batch as it arrives, in order, and [`BatchSink::commit`] whenever its
/// input frontier advances: every record at a dataflow time before `upto`
/// (every record at all, for `None`) has then been written, and `commit` must
/// make them durable (flush, fsync, publish) before it returns.
pub trait BatchSink<D>: 'static {
    /// Takes a batch of records; the sink may drain it.
    fn write(&mut self, batch: &mut Vec<D>);
    /// Makes everything written so far durable. `upto` is the new frontier:
    /// `Some(t)` means times before `t` are complete; `None`, the input is.
    fn commit(&mut self, upto: Option<u64>);
}
