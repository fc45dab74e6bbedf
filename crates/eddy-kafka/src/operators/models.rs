//! Models read live from a model topic (`P.models`), for the scoring job.

use std::rc::Rc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Position};
use eddy_operators::ingest::SourceProgress;

use crate::codec::{envelope, Envelope};

/// Models from a model topic (worker 0 reads; other workers get `None`):
/// `decode` turns a record's value into a model, or the reason it is not
/// one (it reports either, and gets the record's partition and offset for
/// that). A model is stamped with its `eddy.t`, or the time the source is
/// at (the frontier of `watch`, the scored readings), whichever is later;
/// the scoring operator installs it before the first epoch at or after
/// that time. A record that is not a model goes to the second output with
/// its partition, offset and reason, and the old model stays. `progress`
/// is the readings source's on this worker.
pub fn model_source<'s, M: 'static>(
    scope: Scope<'s, u64>,
    name: &str,
    consumer: Option<BaseConsumer>,
    watch: ProbeHandle<u64>,
    progress: Rc<SourceProgress>,
    decode: impl Fn(&[u8], Position) -> Result<M, String> + 'static,
) -> (StreamVec<'s, u64, M>, StreamVec<'s, u64, DeadLetter>) {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out, models) = builder.new_output::<Vec<M>>();
    let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
    let mut out = OutputBuilder::<u64, CapacityContainerBuilder<Vec<M>>>::from(out);
    let mut out_d = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_d);
    let activator = scope.activator_for(info.address);
    builder.build(move |mut caps| {
        let mut caps2 = match (caps.pop(), caps.pop()) {
            (Some(d), Some(m)) if consumer.is_some() => Some((m, d)),
            _ => None,
        };
        let mut watched = false;
        move |_frontiers| {
            let (Some((cm, cd)), Some(consumer)) = (caps2.as_mut(), consumer.as_ref()) else {
                return;
            };
            let mut h = out.activate();
            let mut hd = out_d.activate();
            for _ in 0..64 {
                let m = match consumer.poll(Duration::ZERO) {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consumer error on the model topic; retrying");
                        break;
                    }
                    None => break,
                };
                let stamp = match envelope(m.headers()) {
                    Ok(Envelope::Marker(_)) => continue,
                    Ok(Envelope::Data(t)) => t.unwrap_or(0),
                    Err(_) => 0,
                };
                let Some(bytes) = m.payload() else { continue };
                let pos = Position { partition: m.partition() as u32, offset: m.offset() as u64 };
                match decode(bytes, pos) {
                    Ok(u) => {
                        let t = stamp.max(*cm.time());
                        h.session(&cm.delayed(&t)).give(u);
                    }
                    Err(reason) => {
                        let line = String::from_utf8_lossy(bytes).into_owned();
                        hd.session(&*cd).give(DeadLetter { pos, line, reason });
                    }
                }
            }
            drop((h, hd));
            match watch.with_frontier(|f| f.iter().copied().min()) {
                // Done, once the probe has heard of the readings (or this
                // worker's readings source has ended).
                None if watched || progress.done() => caps2 = None,
                None => activator.activate_after(Duration::from_millis(20)),
                Some(f) => {
                    watched = true;
                    if f > *cm.time() {
                        cm.downgrade(&f);
                        cd.downgrade(&f);
                    }
                    activator.activate_after(Duration::from_millis(20));
                }
            }
        }
    });
    (models, dead)
}
