//! Event-time windows: a generic windowed aggregate, and the windows job.
//!
//! Values are added as they arrive; a window is emitted once, when the
//! frontier (the watermark) passes its end, or at the end of input. Late
//! readings never reach these operators, and a non-late reading always has
//! `ts` at or past the frontier, so no value arrives for a closed window.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::Enriched;
use eddy_core::records::WindowRecord;
use eddy_state::window::{WindowAgg, WindowSpec};

use crate::ordered::map_ordered;

/// One closed window of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct Windowed<K> {
    /// The key.
    pub key: K,
    /// Window start, epoch ms (inclusive).
    pub start: i64,
    /// Window end, epoch ms (exclusive).
    pub end: i64,
    /// count, sum, min and max of the values.
    pub agg: WindowAgg,
}

/// Aggregates values per (key, window). `extract` is called for each record
/// and pushes `(key, ts, value)` triples. The input must be partitioned so
/// that each key lives on one worker, and must hold no late data.
pub fn window_aggregate<'s, D, K>(
    stream: StreamVec<'s, u64, D>,
    spec: WindowSpec,
    name: &str,
    mut extract: impl FnMut(&D, &mut dyn FnMut(K, i64, f64)) + 'static,
) -> StreamVec<'s, u64, Windowed<K>>
where
    D: 'static,
    K: Clone + Eq + Hash + 'static,
{
    stream.unary_frontier(Pipeline, name, move |cap, _info| {
        let mut held: Option<Capability<u64>> = Some(cap);
        // Open windows by start, each with the aggregates of its keys: a
        // window closes as a whole, so no per-key index of closing times.
        let mut open: BTreeMap<i64, HashMap<K, WindowAgg>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|_cap, data| {
                for d in data.drain(..) {
                    extract(&d, &mut |k: K, ts: i64, v: f64| {
                        for start in spec.windows_of(ts) {
                            open.entry(start).or_default().entry(k.clone()).or_insert_with(WindowAgg::new).add(v);
                        }
                    });
                }
            });
            let low = frontier.frontier().iter().copied().min();
            let Some(h) = held.as_mut() else { return };
            let upto = low.map_or(i64::MAX, |l| l as i64);
            // Each window goes out at its end, which is after the held time
            // (the window was still open), so a rerun stamps it the same
            // however far the frontier jumped.
            while let Some(entry) = open.first_entry() {
                let (start, end) = (*entry.key(), spec.end_of(*entry.key()));
                if end > upto {
                    break;
                }
                let aggs = entry.remove();
                if !aggs.is_empty() {
                    let t = (end.max(0) as u64).max(*h.time());
                    output.session(&h.delayed(&t)).give_iterator(aggs.into_iter().map(|(key, agg)| Windowed {
                        key,
                        start,
                        end,
                        agg,
                    }));
                }
            }
            if let Some(low) = low {
                if low > *h.time() {
                    h.downgrade(&low);
                }
            }
            if low.is_none() {
                held = None;
            }
        }
    })
}

/// The windows job: count, mean, min and max per (device, channel, window)
/// over the usable values. Its input must be partitioned by device and hold
/// only non-late readings.
pub fn windows<'s>(
    enriched: StreamVec<'s, u64, Enriched>,
    spec: WindowSpec,
    name: &str,
) -> StreamVec<'s, u64, WindowRecord> {
    let agg = window_aggregate(enriched, spec, name, |e: &Enriched, emit| {
        for (c, v) in e.usable() {
            emit((e.device, c), e.ts, v);
        }
    });
    map_ordered(agg, &format!("{name}.records"), |w: Windowed<(DeviceId, Channel)>| WindowRecord {
        device_id: w.key.0,
        channel: w.key.1,
        window_start: w.start,
        window_end: w.end,
        count: w.agg.count,
        mean: w.agg.mean(),
        min: w.agg.min,
        max: w.agg.max,
    })
}
