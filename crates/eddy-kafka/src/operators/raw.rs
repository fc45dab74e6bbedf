//! The ingest job's source over `P.raw`.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use eddy_core::reading::{DeadLetter, Position, RawLine, Reading};
use eddy_core::validate::{parse_line, LateTracker, Ranges};
use eddy_operators::ingest::{time_of, Classified, SourceProgress, Validator};
use eddy_operators::metrics::Metrics;

use super::{Input, Stop, BATCH};
use crate::codec::{envelope, Envelope};

/// Settings of the raw source.
#[derive(Clone, Debug)]
pub struct RawConfig {
    /// See `IngestSpec::lateness`.
    pub lateness_ms: i64,
    /// See `IngestSpec::epoch`.
    pub epoch_ms: i64,
    /// The junk rule.
    pub ranges: Ranges,
    /// A partition without records for this long stops holding the watermark back.
    pub idle_timeout: Duration,
}

struct RawPartition {
    late: LateTracker,
    last_seen: Instant,
    ended: bool,
}

/// The outputs of the raw source.
pub struct RawStreams<'s> {
    /// Valid readings, late ones flagged.
    pub readings: StreamVec<'s, u64, Reading>,
    /// Rejected records, with partition and offset.
    pub dead: StreamVec<'s, u64, DeadLetter>,
    /// Every record as received.
    pub raw: StreamVec<'s, u64, RawLine>,
}

/// The ingest job's source over `P.raw`: validates each record as the file
/// ingest does, with the lateness rule kept **per partition**. The job's
/// watermark is the least watermark over its live partitions (a partition
/// idle for `idle_timeout` does not count), rounded down to an epoch: the
/// source's frontier. A reading is stamped with the larger of that and its
/// own partition's watermark before it (as an epoch), so its time stays
/// within the lateness and an epoch of its `ts`. A reading below its
/// partition's watermark, or below the job's (possible only after its
/// partition was idle), is late. With one partition this is exactly the
/// file ingest.
pub fn raw_source<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    input: Option<Input>,
    cfg: RawConfig,
    progress: Rc<SourceProgress>,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> RawStreams<'s> {
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (out_r, readings) = builder.new_output::<Vec<Reading>>();
    let (out_d, dead) = builder.new_output::<Vec<DeadLetter>>();
    let (out_raw, raw) = builder.new_output::<Vec<RawLine>>();
    let mut out_r = OutputBuilder::<u64, CapacityContainerBuilder<Vec<Reading>>>::from(out_r);
    let mut out_d = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DeadLetter>>>::from(out_d);
    let mut out_raw = OutputBuilder::<u64, CapacityContainerBuilder<Vec<RawLine>>>::from(out_raw);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut caps| {
        let mut caps3: Option<[Capability<u64>; 3]> = match (caps.pop(), caps.pop(), caps.pop()) {
            (Some(c), Some(b), Some(a)) if input.is_some() => Some([a, b, c]),
            _ => None,
        };
        if caps3.is_none() {
            progress.set_done();
        } else {
            stop.register();
        }
        let mut stopped = false;
        let started = Instant::now();
        let mut parts: BTreeMap<i32, RawPartition> = input
            .as_ref()
            .map(|i| {
                i.partitions
                    .iter()
                    .map(|p| {
                        (*p, RawPartition { late: LateTracker::new(cfg.lateness_ms), last_seen: started, ended: false })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut max_ts: Option<i64> = None;
        let mut validator = Validator::new(cfg.ranges.clone());

        move |_frontiers| {
            let (Some(input), Some([cr, cd, craw])) = (input.as_ref(), caps3.as_mut()) else {
                return;
            };
            if stop.check(*cr.time(), &mut stopped) {
                return;
            }
            let mut hr = out_r.activate();
            let mut hd = out_d.activate();
            let mut hraw = out_raw.activate();
            let now = Instant::now();
            let arrival_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            let mut n_bytes = 0u64;
            let mut got = 0;
            let mut unsettled = input.unsettled.borrow_mut();
            while got < BATCH {
                let Some(m) = input.next() else { break };
                got += 1;
                let (p, offset) = (m.partition(), m.offset());
                let Some(part) = parts.get_mut(&p) else { continue };
                part.last_seen = now;
                if let Ok(Envelope::Marker(wm)) = envelope(m.headers()) {
                    if wm == u64::MAX {
                        part.ended = true;
                    }
                    unsettled.skip(p, offset);
                    continue;
                }
                let bytes = m.payload().unwrap_or_default();
                let pos = Position { partition: p as u32, offset: offset as u64 };
                // The record's time is the job's watermark before it.
                let t = time_of(job_watermark(&parts, now, cfg.idle_timeout), cfg.epoch_ms).max(*cr.time());
                if t > *cr.time() {
                    cr.downgrade(&t);
                    cd.downgrade(&t);
                    craw.downgrade(&t);
                }
                unsettled.read(p, offset, t);
                n_bytes += bytes.len() as u64;
                hraw.session(&*craw).give(RawLine { pos, arrival_ms, bytes: bytes.to_vec() });
                let part = parts.get_mut(&p).expect("checked above");
                // The reading's own time: its partition's watermark before
                // it, as an epoch (never below the job's). Stamped with the
                // job's watermark alone, a reading of a partition read far
                // ahead of the others would carry a time far below its `ts`,
                // and hold back every job downstream that waits for
                // reference data as of its `ts` (enrich, alerts).
                let tr = time_of(part.late.watermark(), cfg.epoch_ms).max(t);
                match validator.classify(parse_line(bytes), bytes, pos, &mut part.late, t as i64) {
                    Classified::Reading(r) => {
                        max_ts = max_ts.max(Some(r.ts));
                        hr.session(&cr.delayed(&tr)).give(r);
                    }
                    Classified::Dead(d) => hd.session(&*cd).give(d),
                }
            }
            drop(unsettled);
            validator.report(&metrics);
            Metrics::add(&metrics.bytes, n_bytes);
            progress.set_max_ts(max_ts);

            if parts.values().all(|p| p.ended) {
                drop((hr, hd, hraw));
                caps3 = None;
                progress.set_done();
                return;
            }
            let t = time_of(job_watermark(&parts, now, cfg.idle_timeout), cfg.epoch_ms);
            if t > *cr.time() {
                cr.downgrade(&t);
                cd.downgrade(&t);
                craw.downgrade(&t);
            }
            if got > 0 {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    RawStreams { readings, dead, raw }
}

/// The least watermark over live partitions; `None` while one of them has
/// no reading yet (or every one is idle or ended).
fn job_watermark(parts: &BTreeMap<i32, RawPartition>, now: Instant, idle: Duration) -> Option<i64> {
    let mut wm: Option<i64> = None;
    let mut any = false;
    for p in parts.values() {
        if p.ended || now.duration_since(p.last_seen) > idle {
            continue;
        }
        any = true;
        match p.late.watermark() {
            Some(w) => wm = Some(wm.map_or(w, |m: i64| m.min(w))),
            None => return None,
        }
    }
    if any {
        wm
    } else {
        None
    }
}
