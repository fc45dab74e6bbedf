//! Order-preserving stream helpers.
//!
//! timely's stock `map` and `filter` group input by timestamp before handing
//! it over, which may reorder messages of equal time. Per-device arrival order
//! matters to statistics and alerts, so eddy's operators read their input with
//! `for_each`, in the order received; so do this exchange and the filter and
//! map of shared batches (`crate::batch`).

use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

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
