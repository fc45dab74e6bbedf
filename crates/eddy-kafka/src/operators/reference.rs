//! Reference changes read live from the reference topics
//! ([`live_reference`]), and the adapter's markers that can hold them
//! back ([`AdapterGate`]).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{Scope, StreamVec};

use eddy_operators::ingest::SourceProgress;

use super::BATCH;
use crate::codec::{envelope, Envelope};

/// The adapter markers an enrich job in the calibration adapter's loop has
/// read from `P.calibration`: the adapter writes them at its committed
/// frontier plus the loop's delay, so every update it writes later applies
/// from at least the least of them.
#[derive(Clone, Debug)]
pub struct AdapterGate {
    /// `P.calibration`.
    pub topic: String,
    /// The latest marker per partition.
    pub marks: BTreeMap<i32, u64>,
    /// Partitions of the topic.
    pub partitions: i32,
}

impl AdapterGate {
    /// Takes a record of the reference topics; true if it was an adapter marker.
    pub fn observe<M: Message>(&mut self, m: &M) -> bool {
        if m.topic() != self.topic {
            return false;
        }
        match envelope(m.headers()) {
            Ok(Envelope::Marker(wm)) => {
                let e = self.marks.entry(m.partition()).or_insert(0);
                *e = (*e).max(wm);
                true
            }
            _ => false,
        }
    }

    /// Every update the adapter will still write applies from this time on.
    pub fn value(&self) -> u64 {
        (0..self.partitions).map(|p| self.marks.get(&p).copied().unwrap_or(0)).min().unwrap_or(u64::MAX)
    }
}

/// Reference changes that arrive on the reference topics while the job
/// runs (worker 0 reads them; other workers get `None`). A change applies
/// from its `ts`, or from the source's time if that has passed: the source
/// holds its time at the frontier of `watch` (the job's readings) plus
/// `ahead_ms` (the lateness and an epoch, how far a reading's `ts` can be
/// ahead of its dataflow time), so every reading is looked up only once
/// every change up to its `ts` that has arrived is in. `consumer` comes
/// with the offset each of its partitions was assigned at.
///
/// With a `gate` (an enrich job in the calibration adapter's loop, see "ML
/// over Kafka" in `docs/decisions.md`), the source's time is also held at
/// the least adapter marker read from `P.calibration`, and it ends only once
/// the adapter has ended: every update the adapter writes then applies
/// exactly from its `ts`.
pub fn live_reference<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    consumer: Option<(BaseConsumer, crate::consume::Offsets)>,
    watch: timely::dataflow::ProbeHandle<u64>,
    ahead_ms: u64,
    progress: Rc<SourceProgress>,
    mut gate: Option<AdapterGate>,
) -> StreamVec<'s, u64, eddy_core::reference::RefUpdate> {
    use eddy_core::reference::RefUpdate;
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out, updates) = builder.new_output::<Vec<RefUpdate>>();
    let mut out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<RefUpdate>>>::from(out);
    let activator = scope.activator_for(info.address);
    // The next offset to read of every assigned partition: where it was
    // assigned, then past each record read (a consumer's own position is
    // unknown until it has read a record of the partition).
    let (consumer, mut next) = consumer.map_or((None, BTreeMap::new()), |(c, n)| (Some(c), n));
    builder.build(move |mut caps| {
        let mut cap = caps.pop().filter(|_| consumer.is_some());
        let mut last_check = Instant::now() - Duration::from_secs(1);
        move |_frontiers| {
            let (Some(c), Some(consumer)) = (cap.as_mut(), consumer.as_ref()) else {
                return;
            };
            let mut h = out.activate();
            let mut got = 0;
            // True once a poll comes back empty: nothing fetched is left to
            // read. Only then can the positions be compared with the topics'
            // ends (a position inside a fetched batch can pass the end a
            // broker reports for it: Tansu 0.6 reports the last batch's base
            // offset + 1).
            let mut drained = false;
            while got < BATCH {
                let m = match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consumer error on a reference topic; retrying");
                        break;
                    }
                    None => {
                        drained = true;
                        break;
                    }
                };
                got += 1;
                let key = (m.topic().to_string(), m.partition());
                // Read already (the partition is fetched from before where it
                // was assigned: see RESUME_REWIND).
                if next.get(&key).is_some_and(|n| m.offset() < *n) {
                    continue;
                }
                next.insert(key, m.offset() + 1);
                if gate.as_mut().is_some_and(|g| g.observe(&m)) {
                    continue;
                }
                let Some(bytes) = m.payload() else { continue };
                let parsed = serde_json::from_slice::<serde_json::Value>(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|v| RefUpdate::from_json(&v));
                match parsed {
                    Ok(u) => {
                        let t = (u.ts.max(0) as u64).max(*c.time());
                        h.session(&c.delayed(&t)).give(u);
                    }
                    Err(e) => tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        "skipping a reference record: {e}"
                    ),
                }
            }
            drop(h);
            let held = gate.as_ref().map_or(u64::MAX, |g| g.value());
            match watch.with_frontier(|f| f.iter().copied().min()) {
                // The readings are done (or this probe has not heard of them
                // yet; then the changes read at start are all there is).
                None if held == u64::MAX => {
                    let _ = progress.done();
                    cap = None
                }
                frontier => {
                    // Move on only once every change already in the topics has
                    // been read: a change published before a reading is then
                    // in before that reading is looked up.
                    let t = frontier.map_or(u64::MAX, |f| f.saturating_add(ahead_ms)).min(held);
                    let mut wait = if got > 0 { 0 } else { 20 };
                    if t > *c.time() && drained && last_check.elapsed() >= Duration::from_millis(50) {
                        last_check = Instant::now();
                        if caught_up(consumer, &next) {
                            c.downgrade(&t);
                        } else {
                            wait = 5;
                        }
                    }
                    activator.activate_after(Duration::from_millis(wait));
                }
            }
        }
    });
    updates
}

/// True when `consumer` has read every record its partitions hold now:
/// `next` is the next offset to read of every partition it was assigned.
fn caught_up(consumer: &BaseConsumer, next: &crate::consume::Offsets) -> bool {
    use rdkafka::consumer::Consumer;
    next.iter().all(|((topic, partition), at)| {
        let Ok((low, high)) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(5)) else {
            return false;
        };
        tracing::trace!(topic, partition, at, low, high, "reference position");
        *at >= high
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;
    use crate::codec::{data_headers, marker_headers};

    fn record(topic: &str, partition: i32, headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(None, None, topic.into(), Timestamp::NotAvailable, partition, 0, Some(headers))
    }

    #[test]
    fn the_gate_is_the_least_marker_over_every_partition() {
        let mut gate = AdapterGate { topic: "p.calibration".into(), marks: BTreeMap::new(), partitions: 2 };
        assert_eq!(gate.value(), 0);
        assert!(gate.observe(&record("p.calibration", 0, marker_headers(50))));
        assert_eq!(gate.value(), 0, "partition 1 has no marker yet");
        assert!(gate.observe(&record("p.calibration", 1, marker_headers(30))));
        assert_eq!(gate.value(), 30);
        assert!(gate.observe(&record("p.calibration", 1, marker_headers(20))), "an older marker");
        assert_eq!(gate.value(), 30);
        assert!(!gate.observe(&record("p.calibration", 1, data_headers(90))), "an update");
        assert!(!gate.observe(&record("p.devices", 1, marker_headers(90))), "another topic");
        assert_eq!(gate.value(), 30);
        let none = AdapterGate { topic: "p.calibration".into(), marks: BTreeMap::new(), partitions: 0 };
        assert_eq!(none.value(), u64::MAX);
    }
}
