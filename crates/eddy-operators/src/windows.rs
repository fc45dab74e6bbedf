//! The windows job: count, mean, min and max per (device, channel, window).
//!
//! Values are added as they arrive; a window is emitted once, when the
//! frontier (the watermark) passes its end, or at the end of input. Late
//! readings never reach this operator, and a non-late reading always has
//! `ts` at or past the frontier, so no value arrives for a closed window.

use std::collections::{BTreeMap, HashMap};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;
use eddy_core::records::WindowRecord;
use eddy_state::window::{WindowAgg, WindowSpec};

type Key = (DeviceId, Channel, i64);

/// The windows operator. Its input must be partitioned by device and hold
/// only non-late readings.
pub fn windows<'s>(
    enriched: StreamVec<'s, u64, Enriched>,
    spec: WindowSpec,
    name: &str,
) -> StreamVec<'s, u64, WindowRecord> {
    enriched.unary_frontier(Pipeline, name, move |cap, _info| {
        let mut held: Option<Capability<u64>> = Some(cap);
        let mut aggs: HashMap<Key, WindowAgg> = HashMap::new();
        let mut closing: BTreeMap<i64, Vec<Key>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|_cap, data| {
                for r in data.drain(..) {
                    for (c, v) in r.usable() {
                        for start in spec.windows_of(r.ts) {
                            aggs.entry((r.device, c, start))
                                .or_insert_with(|| {
                                    closing
                                        .entry(spec.end_of(start))
                                        .or_default()
                                        .push((r.device, c, start));
                                    WindowAgg::new()
                                })
                                .add(v);
                        }
                    }
                }
            });
            let low = frontier.frontier().iter().copied().min();
            let Some(h) = held.as_mut() else { return };
            let upto = match low {
                Some(low) => {
                    if low > *h.time() {
                        h.downgrade(&low);
                    }
                    low as i64
                }
                None => i64::MAX,
            };
            let mut out = Vec::new();
            while let Some(entry) = closing.first_entry() {
                if *entry.key() > upto {
                    break;
                }
                let end = *entry.key();
                for key in entry.remove() {
                    if let Some(a) = aggs.remove(&key) {
                        out.push(WindowRecord {
                            device_id: key.0,
                            channel: key.1,
                            window_start: key.2,
                            window_end: end,
                            count: a.count,
                            mean: a.mean(),
                            min: a.min,
                            max: a.max,
                        });
                    }
                }
            }
            if !out.is_empty() {
                output.session(h).give_iterator(out.drain(..));
            }
            if low.is_none() {
                held = None;
            }
        }
    })
}
