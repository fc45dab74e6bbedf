//! Order-preserving stream helpers.
//!
//! timely's stock `map` and `filter` group input by timestamp before handing
//! it over, which may reorder messages of equal time. Per-device arrival order
//! matters to statistics and alerts, so eddy's operators read their input with
//! `for_each`, in the order received; these helpers do the same.

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Keeps the records for which `pred` holds, in order.
pub fn filter_ordered<'s, D: Clone + 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    mut pred: impl FnMut(&D) -> bool + 'static,
) -> StreamVec<'s, u64, D> {
    stream.unary(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            // The kept records leave in the batch they came in (`retain`
            // moves only those after a dropped one): every batch goes out
            // as a whole container, so batches never interleave.
            input.for_each(|cap, data| {
                data.retain(|d| pred(d));
                if !data.is_empty() {
                    output.session(&cap).give_container(data);
                }
            });
        }
    })
}

/// Maps every record, in order.
pub fn map_ordered<'s, D: 'static, D2: Clone + 'static>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    mut f: impl FnMut(D) -> D2 + 'static,
) -> StreamVec<'s, u64, D2> {
    stream.unary(Pipeline, name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                output.session(&cap).give_iterator(data.drain(..).map(&mut f));
            });
        }
    })
}

/// Routes each record to the worker `key(record) % peers`, keeping the
/// order of the records from each sender.
pub fn exchange_ordered<'s, D: timely::ExchangeData + Clone>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    key: impl Fn(&D) -> u64 + 'static,
) -> StreamVec<'s, u64, D> {
    use timely::dataflow::channels::pact::Exchange;
    stream.unary(Exchange::new(move |d: &D| key(d)), name, move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                if !data.is_empty() {
                    output.session(&cap).give_container(data);
                }
            });
        }
    })
}
