//! The source over eddy's own topics (`P.readings`, `P.enriched`, a
//! component's ports): records keep the dataflow time they were stamped with.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use serde::de::DeserializeOwned;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Enriched, Position, Reading};
use eddy_operators::ingest::SourceProgress;
use eddy_operators::metrics::Metrics;

use super::{Input, Stop, BATCH};
use crate::codec::{envelope, Envelope};

/// A record of an eddy topic that the typed source can read: it has an
/// identity for dropping the duplicates a restarted producer may write, and
/// an event time.
pub trait Stamped: DeserializeOwned + Clone + 'static {
    /// The record's identity (its raw input position).
    fn id(&self) -> Position;
    /// Its event time.
    fn ts(&self) -> i64;
}

impl Stamped for Reading {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

impl Stamped for Enriched {
    fn id(&self) -> Position {
        self.pos
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

#[derive(Default)]
struct TypedPartition {
    wm: u64,
    /// Identities seen at each time not yet below the watermark.
    seen: BTreeMap<u64, HashSet<Position>>,
}

/// A source over one of eddy's own topics (`P.readings`, `P.enriched`):
/// each record keeps the dataflow time its producer stamped it with
/// (`eddy.t`), each partition's watermark is the largest marker seen in it,
/// and the source's frontier is the least watermark of its partitions. A
/// restarted producer's copies are dropped: a record below its partition's
/// watermark (the marker promised every such record came before it), and a
/// record already seen at the same time. A record that cannot be decoded goes to the second output
/// with its partition, offset and reason.
pub fn typed_source<'s, D: Stamped>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Input>,
    progress: Rc<SourceProgress>,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> (StreamVec<'s, u64, D>, StreamVec<'s, u64, DeadLetter>) {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out, data) = builder.new_output::<Vec<D>>();
    let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
    let mut out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<D>>>::from(out);
    let mut out_d = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_d);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut caps| {
        let mut caps2: Option<[Capability<u64>; 2]> = match (caps.pop(), caps.pop()) {
            (Some(b), Some(a)) if input.as_ref().is_some_and(|i| !i.partitions.is_empty()) => Some([a, b]),
            _ => None,
        };
        if caps2.is_none() {
            progress.set_done();
        } else {
            stop.register();
        }
        let mut stopped = false;
        let mut parts: BTreeMap<i32, TypedPartition> = input
            .as_ref()
            .map(|i| i.partitions.iter().map(|p| (*p, TypedPartition::default())).collect())
            .unwrap_or_default();
        let mut max_ts: Option<i64> = None;

        move |_frontiers| {
            let (Some(input), Some([cap, cap_d])) = (input.as_ref(), caps2.as_mut()) else {
                return;
            };
            if stop.check(*cap.time(), &mut stopped) {
                return;
            }
            let mut h = out.activate();
            let mut hd = out_d.activate();
            let (mut n_in, mut n_dead, mut n_bytes) = (0u64, 0u64, 0u64);
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            while got < BATCH {
                let Some(m) = input.next() else { break };
                got += 1;
                let (p, offset) = (m.partition(), m.offset());
                let Some(part) = parts.get_mut(&p) else { continue };
                let pos = Position { partition: p as u32, offset: offset as u64 };
                let dead = |reason: String, bytes: &[u8]| DeadLetter {
                    pos,
                    line: String::from_utf8_lossy(bytes).into_owned(),
                    reason,
                };
                let bytes = m.payload().unwrap_or_default();
                n_bytes += bytes.len() as u64;
                let stamp = match envelope(m.headers()) {
                    Ok(Envelope::Marker(wm)) => {
                        if wm > part.wm {
                            part.wm = wm;
                            part.seen.retain(|t, _| *t >= wm);
                        }
                        unsettled.skip(p, offset);
                        continue;
                    }
                    // Below the watermark: by the marker's promise, a copy of a
                    // record already read, written again by a restarted producer.
                    Ok(Envelope::Data(Some(t))) if t < part.wm => {
                        tracing::debug!(partition = p, offset, t, wm = part.wm, "dropping a copy below the watermark");
                        unsettled.skip(p, offset);
                        continue;
                    }
                    Ok(Envelope::Data(t)) => t,
                    Err(reason) => {
                        n_dead += 1;
                        unsettled.read(p, offset, *cap_d.time());
                        hd.session(&*cap_d).give(dead(format!("bad_envelope: {reason}"), bytes));
                        continue;
                    }
                };
                // A record without a time (written by a client other than
                // eddy) counts as arriving now.
                let t = stamp.unwrap_or(*cap.time()).max(*cap.time()).max(part.wm);
                match serde_json::from_slice::<D>(bytes) {
                    Ok(d) => {
                        if !part.seen.entry(t).or_default().insert(d.id()) {
                            tracing::debug!(partition = p, offset, t, "dropping a copy already read");
                            unsettled.skip(p, offset);
                            continue;
                        }
                        n_in += 1;
                        max_ts = max_ts.max(Some(d.ts()));
                        unsettled.read(p, offset, t);
                        h.session(&cap.delayed(&t)).give(d);
                    }
                    Err(e) => {
                        n_dead += 1;
                        unsettled.read(p, offset, *cap_d.time());
                        hd.session(&*cap_d).give(dead(format!("undecodable: {e}"), bytes));
                    }
                }
            }
            drop(unsettled);
            Metrics::add(&metrics.lines, n_in + n_dead);
            Metrics::add(&metrics.valid, n_in);
            Metrics::add(&metrics.deadletter, n_dead);
            Metrics::add(&metrics.bytes, n_bytes);
            progress.set_max_ts(max_ts);

            let wm = parts.values().map(|p| p.wm).min().unwrap_or(u64::MAX);
            if wm == u64::MAX {
                drop((h, hd));
                caps2 = None;
                progress.set_done();
                return;
            }
            if wm > *cap.time() {
                cap.downgrade(&wm);
                cap_d.downgrade(&wm);
            }
            if got > 0 {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    (data, dead)
}
