//! Batches that every consumer of a stream shares.
//!
//! timely's tee gives each consumer of a stream its own copy of every
//! container. A `Vec<Enriched>` read by the enriched output, the statistics,
//! the windows and the alerts was copied record by record for three of them,
//! and each copy dropped again, although none of them changes a record. A
//! [`Shared`] batch is an `Arc<Vec<D>>`: the tee copies a pointer, and each
//! consumer reads the records in place ([`Batch::records`]) or takes them
//! ([`Batch::take`]), which moves them when it holds the only reference and
//! copies them only otherwise.
//!
//! The batch is an `Arc`, not an `Rc`, so that a sink handing records to a
//! thread of its own (the Parquet backup's writer) can hand over the batch
//! itself ([`Batch::arc`]) instead of a copy of every record. The count is
//! touched once per batch of thousands of records, so the atomic costs
//! nothing measurable.
//!
//! Operators that read a stream are generic over [`Batch`], so they take a
//! plain `Vec` stream as well as a shared one. A stream is [`unshare`]d
//! before an exchange: timely serializes only plain containers.

use std::sync::Arc;

use timely::container::{CapacityContainerBuilder, NoopBuilder};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

/// A batch of records that the consumers of a stream share.
pub type Shared<D> = Arc<Vec<D>>;

/// A stream of [`Shared`] batches at dataflow time `u64`.
pub type SharedStream<'s, D> = Stream<'s, u64, Shared<D>>;

/// A container of `D` records that an operator can read in place or take.
pub trait Batch<D>: timely::Container + Clone {
    /// The records, in order.
    fn records(&self) -> &[D];
    /// The records, if no other consumer shares them.
    fn get_mut(&mut self) -> Option<&mut Vec<D>>;
    /// Takes the records: moved when no other consumer shares them, copied
    /// otherwise. Leaves the batch empty (or, when shared, as it was).
    fn take(&mut self) -> Vec<D>;
    /// A batch of `records`.
    fn from_vec(records: Vec<D>) -> Self;
    /// The shared batch itself, for a consumer that keeps the records past
    /// its call (on another thread): `None` for a plain `Vec`.
    fn arc(&self) -> Option<&Arc<Vec<D>>>;
}

impl<D: Clone + 'static> Batch<D> for Vec<D> {
    fn records(&self) -> &[D] {
        self
    }

    fn get_mut(&mut self) -> Option<&mut Vec<D>> {
        Some(self)
    }

    fn take(&mut self) -> Vec<D> {
        std::mem::take(self)
    }

    fn from_vec(records: Vec<D>) -> Self {
        records
    }

    fn arc(&self) -> Option<&Arc<Vec<D>>> {
        None
    }
}

impl<D: Clone + 'static> Batch<D> for Shared<D> {
    fn records(&self) -> &[D] {
        self
    }

    fn get_mut(&mut self) -> Option<&mut Vec<D>> {
        Arc::get_mut(self)
    }

    fn take(&mut self) -> Vec<D> {
        match Arc::get_mut(self) {
            Some(v) => std::mem::take(v),
            None => self.to_vec(),
        }
    }

    fn from_vec(records: Vec<D>) -> Self {
        Arc::new(records)
    }

    fn arc(&self) -> Option<&Arc<Vec<D>>> {
        Some(self)
    }
}

/// A unary operator whose output is shared batches, given whole.
fn shared_unary<'s, C, D, L>(stream: Stream<'s, u64, C>, name: &str, mut logic: L) -> SharedStream<'s, D>
where
    C: timely::Container,
    D: 'static,
    L: FnMut(&mut C) -> Vec<D> + 'static,
{
    stream.unary::<NoopBuilder<Shared<D>>, _, _, _>(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let out = logic(data);
                if !out.is_empty() {
                    output.session_with_builder(&cap).give_container(&mut Arc::new(out));
                }
            });
        }
    })
}

/// Wraps each batch of `stream` for sharing, in order; the records are not
/// copied.
pub fn share<'s, D: Clone + 'static>(stream: StreamVec<'s, u64, D>, name: &str) -> SharedStream<'s, D> {
    shared_unary(stream, name, |data: &mut Vec<D>| std::mem::take(data))
}

/// The records of `stream` in plain batches, in order: moved out of batches
/// that no other consumer shares, copied out of the others.
pub fn unshare<'s, D: Clone + 'static, C: Batch<D>>(stream: Stream<'s, u64, C>, name: &str) -> StreamVec<'s, u64, D> {
    stream.unary::<CapacityContainerBuilder<Vec<D>>, _, _, _>(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let mut records = data.take();
                if !records.is_empty() {
                    output.session(&cap).give_container(&mut records);
                }
            });
        }
    })
}

/// Keeps the records for which `pred` holds, in order, calling `pred` once
/// per record. A batch that keeps every record goes on as it is (the usual
/// case: nothing is copied); otherwise the kept records move out of an
/// unshared batch, or are copied out of a shared one.
pub fn filter_shared<'s, D: Clone + 'static>(
    stream: SharedStream<'s, D>,
    name: &str,
    mut pred: impl FnMut(&D) -> bool + 'static,
) -> SharedStream<'s, D> {
    let mut keep: Vec<bool> = Vec::new();
    stream.unary::<NoopBuilder<Shared<D>>, _, _, _>(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                keep.clear();
                keep.extend(data.iter().map(&mut pred));
                if keep.iter().all(|k| *k) {
                    if !data.is_empty() {
                        output.session_with_builder(&cap).give_container(data);
                    }
                    return;
                }
                let kept: Vec<D> = match Arc::get_mut(data) {
                    Some(v) => {
                        let mut flags = keep.iter();
                        v.retain(|_| flags.next().copied().unwrap_or(false));
                        std::mem::take(v)
                    }
                    None => data.iter().zip(&keep).filter(|(_, k)| **k).map(|(d, _)| d.clone()).collect(),
                };
                if !kept.is_empty() {
                    output.session_with_builder(&cap).give_container(&mut Arc::new(kept));
                }
            });
        }
    })
}

/// Maps every record, in order (taking the records: see [`Batch::take`]).
pub fn map_shared<'s, D: Clone + 'static, D2: 'static>(
    stream: SharedStream<'s, D>,
    name: &str,
    mut f: impl FnMut(D) -> D2 + 'static,
) -> SharedStream<'s, D2> {
    shared_unary(stream, name, move |data: &mut Shared<D>| data.take().into_iter().map(&mut f).collect())
}

/// Maps each record to any number of records, in order.
pub fn flat_map_shared<'s, D: Clone + 'static, I>(
    stream: SharedStream<'s, D>,
    name: &str,
    mut f: impl FnMut(D) -> I + 'static,
) -> SharedStream<'s, I::Item>
where
    I: IntoIterator,
    I::Item: 'static,
{
    shared_unary(stream, name, move |data: &mut Shared<D>| data.take().into_iter().flat_map(&mut f).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, ToStream};

    /// Every record of `data` through `build`, with the records each of two
    /// consumers of the shared stream saw.
    fn run<D: Clone + Send + Sync + 'static, O: Clone + Send + 'static>(
        data: Vec<D>,
        build: impl FnOnce(SharedStream<'_, D>) -> SharedStream<'_, O> + Send + Sync + 'static,
    ) -> Vec<O> {
        let out = timely::example(move |scope| {
            let shared = share(data.to_stream(scope), "share");
            unshare(build(shared), "unshare").capture()
        });
        in_order(out)
    }

    /// Every record captured, in the order sent (`Extract` would sort them).
    fn in_order<O>(rx: std::sync::mpsc::Receiver<Event<u64, Vec<O>>>) -> Vec<O> {
        rx.try_iter()
            .flat_map(|e| match e {
                Event::Messages(_, records) => records,
                Event::Progress(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn share_then_unshare_keeps_every_record_in_order() {
        let got = run((0..1000).collect::<Vec<u32>>(), |s| s);
        assert_eq!(got, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn filter_calls_pred_once_per_record_and_keeps_order() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let got = run((0..100).collect::<Vec<u32>>(), move |s| {
            filter_shared(s, "odd", move |x| {
                c.fetch_add(1, Ordering::Relaxed);
                x % 2 == 1
            })
        });
        assert_eq!(got, (0..100).filter(|x| x % 2 == 1).collect::<Vec<u32>>());
        assert_eq!(calls.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn consumers_of_a_shared_stream_each_see_every_record() {
        // Two filters and a map over one shared stream: a record one
        // consumer drops or moves is still there for the others.
        let out = timely::example(|scope| {
            let shared = share((0..50u32).to_stream(scope), "share");
            let evens = unshare(filter_shared(shared.clone(), "evens", |x| x % 2 == 0), "u1").capture();
            let all = unshare(shared.clone(), "u2").capture();
            let doubled = unshare(map_shared(shared, "double", |x| x * 2), "u3").capture();
            (evens, all, doubled)
        });
        assert_eq!(in_order(out.0), (0..50).filter(|x| x % 2 == 0).collect::<Vec<u32>>());
        assert_eq!(in_order(out.1), (0..50).collect::<Vec<u32>>());
        assert_eq!(in_order(out.2), (0..50).map(|x| x * 2).collect::<Vec<u32>>());
    }

    #[test]
    fn take_moves_an_unshared_batch_and_copies_a_shared_one() {
        let mut only: Shared<String> = Arc::new(vec!["a".to_string()]);
        let ptr = only[0].as_ptr();
        let taken = only.take();
        assert_eq!(taken[0].as_ptr(), ptr, "moved, not copied");
        assert!(only.is_empty());

        let mut one: Shared<String> = Arc::new(vec!["b".to_string()]);
        let other = Arc::clone(&one);
        let taken = one.take();
        assert_ne!(taken[0].as_ptr(), other[0].as_ptr(), "copied");
        assert_eq!(other.len(), 1, "the other consumer keeps its records");
    }
}
