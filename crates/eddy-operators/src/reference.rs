//! Reference data as differential collections and arrangements.
//!
//! Reference changes (the dataset's CSV files at time 0, then `updates.jsonl`
//! at each update's `ts`) become differential updates, and are arranged:
//!
//! * the per-device arrangement (context and calibration versions), keyed by
//!   [`DeviceId`] and partitioned exactly like the readings, so that each
//!   worker holds the reference data of the devices whose readings it gets;
//! * the rules arrangement, keyed by [`RuleScope`]: device rules partitioned
//!   like the readings, wildcard (`*`) rules broadcast to every worker.
//!
//! Readings never enter an arrangement: the enrich and alerts operators look
//! them up against these traces.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Concat, Exchange as _, Probe as _};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use eddy_core::ids::DeviceId;
pub use eddy_core::reference::RefUpdate;
use eddy_core::reference::{DeviceRef, RefChange, RefRecord, RefState, Rule, RuleScope};

use crate::ingest::SourceProgress;

/// The trace of the per-device reference arrangement.
pub type DeviceTrace = TraceAgent<ValSpine<DeviceId, DeviceRef, u64, isize>>;
/// The trace of the rules arrangement.
pub type RulesTrace = TraceAgent<ValSpine<RuleScope, Rule, u64, isize>>;

type DevUpd = ((DeviceId, DeviceRef), u64, isize);
/// A fed-back change, with capabilities for the devices and the rules outputs.
type Fed = (Capability<u64>, Capability<u64>, RefChange);
type RuleUpd = ((RuleScope, Rule), u64, isize);

/// Dataset updates applied per activation: the base tables of a million
/// devices go out a chunk at a time, each taken in by the arrangements
/// before the next is made, instead of all waiting in the output at once.
const APPLY_CHUNK: usize = 65_536;

/// The reference arrangements of one dataflow.
pub struct Reference<'s> {
    /// Per-device context and calibration.
    pub devices: Arranged<'s, DeviceTrace>,
    /// Rules, keyed by scope.
    pub rules: Arranged<'s, RulesTrace>,
}

/// Builds the reference source and its arrangements.
///
/// `updates` (sorted by `ts`) is given to one worker and empty on the others.
/// The source releases an update once the ingest source on the same worker
/// has read a reading with `ts` at or past it (or has finished), and holds
/// its capability at the next pending update: the frontier of the
/// arrangements is exactly "every change up to here is in".
pub fn reference<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    updates: Vec<RefUpdate>,
    progress: Rc<SourceProgress>,
) -> Reference<'s> {
    reference_with_feedback(scope, name, updates, progress, None)
}

/// [`reference()`], plus reference updates fed back from the dataflow itself
/// (e.g. live updates, or the calibration adapter's through a timely
/// feedback edge), delivered on the worker that holds `updates` (worker 0).
///
/// Each update's `ts` should be at or after the time it arrives at (an
/// earlier one applies from its arrival time). An update is applied in `ts`
/// order with the dataset's updates (after every dataset update with the same
/// or a smaller `ts`) and enters the arrangements at its `ts`, so enrichment
/// applies it from that time on. The arrangements' frontier follows the
/// feedback's: a reading waits until no fed-back change at or before its `ts`
/// can still come, which, for a feedback edge, needs the edge's delay to
/// exceed how far a reading's `ts` can be ahead of its dataflow time (the
/// lateness plus an epoch).
pub fn reference_with_feedback<'s>(
    scope: Scope<'s, u64>,
    name: &str,
    updates: Vec<RefUpdate>,
    progress: Rc<SourceProgress>,
    feedback: Option<StreamVec<'s, u64, RefUpdate>>,
) -> Reference<'s> {
    build(scope, name, updates, progress, feedback.map(|f| (f, Pipeline)))
}

/// [`reference_with_feedback`] for records made on any worker: they are
/// exchanged to worker 0 and converted there (by the source itself, so that
/// no operator of a feedback loop sits idle holding its initial capability).
pub fn reference_with_exchanged_feedback<'s, F>(
    scope: Scope<'s, u64>,
    name: &str,
    updates: Vec<RefUpdate>,
    progress: Rc<SourceProgress>,
    feedback: StreamVec<'s, u64, F>,
) -> Reference<'s>
where
    F: timely::ExchangeData + Clone + Into<RefUpdate>,
{
    build(scope, name, updates, progress, Some((feedback, Exchange::new(|_: &F| 0))))
}

fn build<'s, F, P>(
    scope: Scope<'s, u64>,
    name: &str,
    updates: Vec<RefUpdate>,
    progress: Rc<SourceProgress>,
    feedback: Option<(StreamVec<'s, u64, F>, P)>,
) -> Reference<'s>
where
    F: Clone + Into<RefUpdate> + 'static,
    P: timely::dataflow::channels::pact::ParallelizationContract<u64, Vec<F>>,
{
    let mut builder = OperatorBuilder::new(format!("{name}.source"), scope);
    let info = builder.operator_info();
    let mut fb_in = feedback.map(|(f, pact)| builder.new_input(f, pact));
    let (out_dev, dev) = builder.new_output::<Vec<DevUpd>>();
    let (out_rule, rules) = builder.new_output::<Vec<RuleUpd>>();
    let mut out_dev = OutputBuilder::<u64, CapacityContainerBuilder<Vec<DevUpd>>>::from(out_dev);
    let mut out_rule = OutputBuilder::<u64, CapacityContainerBuilder<Vec<RuleUpd>>>::from(out_rule);
    progress.listen(scope.activator_for(info.address.clone()));
    let progress_probe = Rc::clone(&progress);
    let activator = scope.activator_for(info.address);

    builder.build(move |mut caps| {
        let mut cap_rule = caps.pop();
        let mut cap_dev = caps.pop();
        // Dataset updates not yet applied; the buffer shrinks as they go.
        let mut pending: VecDeque<RefUpdate> = updates.into();
        let mut state = RefState::default();
        let mut out = Vec::new();
        // Fed-back updates by (ts, arrival), each with a capability for both outputs.
        let mut fed: BTreeMap<(i64, u64), Fed> = BTreeMap::new();
        let mut fed_seq = 0u64;
        // Sends the records of one applied change at the capabilities' time.
        macro_rules! emit {
            ($dcap:expr, $rcap:expr, $out:expr, $hd:expr, $hr:expr) => {{
                let (dcap, rcap) = ($dcap, $rcap);
                let t = *dcap.time();
                let mut sd = $hd.session(&dcap);
                let mut sr = $hr.session(&rcap);
                for (rec, diff) in $out.drain(..) {
                    match rec {
                        RefRecord::Device(d, v) => sd.give(((d, v), t, diff)),
                        RefRecord::Rule(s, r) => sr.give(((s, r), t, diff)),
                    }
                }
            }};
        }
        move |_frontiers| {
            if let Some(input) = fb_in.as_mut() {
                input.for_each(|cap, data| {
                    for u in data.drain(..) {
                        let u: RefUpdate = u.into();
                        let t = (u.ts.max(0) as u64).max(cap.least().copied().unwrap_or(0));
                        fed.insert((t as i64, fed_seq), (cap.delayed(&t, 0), cap.delayed(&t, 1), u.change));
                        fed_seq += 1;
                    }
                });
            }
            let limit = if progress.done() { i64::MAX } else { progress.max_ts().unwrap_or(i64::MIN) };
            let mut hd = out_dev.activate();
            let mut hr = out_rule.activate();
            // Dataset and fed-back updates in ts order: a fed-back update goes
            // once every dataset update at or before its ts has.
            let mut applied = 0usize;
            loop {
                let mut progressed = false;
                while let Some(entry) = fed.first_entry() {
                    let ts = entry.key().0;
                    if pending.front().is_some_and(|u| u.ts <= ts) {
                        break;
                    }
                    let (dcap, rcap, change) = entry.remove();
                    state.apply(change, &mut out);
                    emit!(dcap, rcap, out, hd, hr);
                    progressed = true;
                }
                if let (Some(cd), Some(cr)) = (cap_dev.as_ref(), cap_rule.as_ref()) {
                    // The records of every update at one time go out in one
                    // session (per activation): a session per update sends a
                    // container per update (each sized for a full batch), and
                    // a large dataset's reference tables then take gigabytes
                    // while they wait for the arrangement. At most
                    // `APPLY_CHUNK` updates per activation.
                    let mut at: Option<u64> = None;
                    while pending
                        .front()
                        .is_some_and(|u| u.ts <= limit && fed.first_key_value().is_none_or(|(k, _)| u.ts <= k.0))
                    {
                        let Some(u) = pending.pop_front() else { break };
                        let t = u.ts.max(0) as u64;
                        if let Some(prev) = at.filter(|prev| *prev != t) {
                            emit!(cd.delayed(&prev), cr.delayed(&prev), out, hd, hr);
                        }
                        at = Some(t);
                        state.apply(u.change, &mut out);
                        progressed = true;
                        applied += 1;
                        if applied.is_multiple_of(APPLY_CHUNK) {
                            break;
                        }
                    }
                    if let Some(t) = at {
                        emit!(cd.delayed(&t), cr.delayed(&t), out, hd, hr);
                    }
                    if applied.is_multiple_of(APPLY_CHUNK) && applied > 0 {
                        // More may be ready: the rest in the next activation.
                        activator.activate();
                        break;
                    }
                }
                if !progressed {
                    break;
                }
            }
            let (Some(cd), Some(cr)) = (cap_dev.as_mut(), cap_rule.as_mut()) else {
                return;
            };
            if pending.capacity() > 2 * pending.len() + 1024 {
                pending.shrink_to_fit();
            }
            match pending.front() {
                Some(next) => {
                    let t = next.ts.max(0) as u64;
                    cd.downgrade(&t);
                    cr.downgrade(&t);
                }
                None if progress.done() => {
                    cap_dev = None;
                    cap_rule = None;
                }
                None => {
                    // Nothing pending, but more may come on a live input: hold
                    // just past the largest `ts` read (every change up to it is
                    // in), so the arrangements stay current and a reading at
                    // that `ts` can be looked up without waiting for the next.
                    let t = progress.max_ts().map_or(0, |m| m.max(-1) as u64 + 1);
                    cd.downgrade(&t.max(*cd.time()));
                    cr.downgrade(&t.max(*cr.time()));
                }
            }
        }
    });

    // Each device's changes on the worker of its key group.
    let place = eddy_core::keys::Placement::current(scope.peers());
    let devices =
        arrange_core::<_, _, ValBatcher<DeviceId, DeviceRef, u64, isize>, ValSpine<DeviceId, DeviceRef, u64, isize>>(
            dev,
            Exchange::new(move |u: &DevUpd| place.worker((u.0).0)),
            &format!("{name}.devices"),
            ValBatcher::new,
        );

    // Device rules go to their device's worker; wildcard rules to every worker.
    let (device_rules, wildcard_rules) = split_rules(rules);
    let rules = device_rules.exchange(move |u: &RuleUpd| match (u.0).0 {
        RuleScope::Device(d) => place.worker(d),
        RuleScope::All => 0,
    });
    let rules = rules.concat(wildcard_rules.broadcast());
    let rules = arrange_core::<_, _, ValBatcher<RuleScope, Rule, u64, isize>, ValSpine<RuleScope, Rule, u64, isize>>(
        rules,
        Pipeline,
        &format!("{name}.rules"),
        ValBatcher::new,
    );
    // How far the arrangements are complete, on every worker: a source
    // restarted from a checkpoint waits for it (see `SourceProgress::reference_at`).
    let probe = ProbeHandle::new();
    devices.stream.clone().probe_with(&probe);
    rules.stream.clone().probe_with(&probe);
    progress_probe.set_reference_probe(probe);
    Reference { devices, rules }
}

fn split_rules<'s>(rules: StreamVec<'s, u64, RuleUpd>) -> (StreamVec<'s, u64, RuleUpd>, StreamVec<'s, u64, RuleUpd>) {
    use timely::dataflow::operators::vec::Partition;
    let mut parts = rules.partition(2, |u: RuleUpd| (if (u.0).0 == RuleScope::All { 1 } else { 0 }, u));
    let wild = parts.pop().expect("two parts");
    let dev = parts.pop().expect("two parts");
    (dev, wild)
}
