//! Writing a stream out, committing per epoch.
//!
//! The sink operator hands batches to a [`BatchSink`] as they arrive and calls
//! [`BatchSink::commit`] each time its input frontier advances. Its output
//! stream carries no data: it holds a capability at the last committed
//! frontier, so a probe on it (on every worker) tells the runtime which
//! epochs every sink has made durable. That is what the commit ledger uses
//! to advance a source's committed position.

use std::cell::Cell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};
use timely::progress::Antichain;

use crate::batch::Batch;
pub use eddy_core::sink::BatchSink;

/// How far a sink has taken its input in, durable or not: the least time of
/// its input frontier, as of the sink's last activation (`u64::MAX` once the
/// input is complete). The ingest source reads it to bound what is in flight.
#[derive(Clone, Debug, Default)]
pub struct Taken(Rc<Cell<u64>>);

impl Taken {
    /// True once the sink has taken in every record at time `t`.
    pub fn passed(&self, t: u64) -> bool {
        self.0.get() > t
    }
}

/// Attaches `sink` to `stream`. The returned stream's frontier is the sink's
/// committed frontier; the [`Taken`] follows its input frontier.
///
/// A batch that no other consumer shares goes to [`BatchSink::write`]; a
/// shared one to [`BatchSink::write_arc`] (which by default reads it in
/// place through [`BatchSink::write_shared`]).
pub fn sink<'s, D: Clone + 'static, C: Batch<D>, S: BatchSink<D>>(
    stream: Stream<'s, u64, C>,
    name: &str,
    mut sink: S,
) -> (StreamVec<'s, u64, ()>, Taken) {
    let scope = stream.scope();
    let taken = Taken::default();
    let seen = taken.clone();
    let out = stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, move |cap, info| {
        let mut held = Some(cap);
        let mut last = Antichain::from_elem(0u64);
        let mut pending = false;
        let activator = scope.activator_for(info.address);
        move |(input, frontier), _output| {
            input.for_each(|cap, data| {
                if let Some(&t) = cap.least() {
                    sink.begin(t);
                }
                match data.get_mut() {
                    Some(records) => sink.write(records),
                    None => match data.arc() {
                        Some(batch) => sink.write_arc(batch),
                        None => sink.write_shared(data.records()),
                    },
                }
            });
            let f = frontier.frontier();
            seen.0.set(f.iter().copied().min().unwrap_or(u64::MAX));
            if f != last.borrow() || pending {
                let durable = sink.commit(f.iter().copied().min());
                last = f.to_owned();
                // Hold the output at what is durable, which may lag the input.
                match (durable, held.as_mut()) {
                    (Some(t), Some(h)) => h.downgrade(&t.max(*h.time())),
                    (None, _) => held = None,
                    _ => {}
                }
                // A sink that lags its input is asked again at the next
                // activation; ask for one after a short while.
                pending = held.as_ref().is_some_and(|h| f.iter().any(|t| t > h.time()) || f.is_empty());
                if pending {
                    activator.activate_after(sink.recommit_after());
                }
            }
        }
    });
    (out, taken)
}
