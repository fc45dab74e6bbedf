//! The alerts job: threshold rules with hysteresis per (rule, device).
//!
//! Rules live in the rules arrangement (standard rules, `thresholds.csv`,
//! rule updates). Readings wait, in arrival order, until the rules frontier
//! has passed their `ts`, then each is checked against the rules in force
//! for its device as of its `ts`: device-specific rules replace the wildcard
//! rule with the same `rule_id`. Events are emitted as soon as their reading
//! is processed.
//!
//! A rule that changes while its event is active keeps the event; the new
//! thresholds apply from the next reading. A rule that is removed while its
//! event is active ends the event at the device's next reading at or after
//! the event's start, with reason `rule_removed` and the thresholds last
//! applied to the event.

use std::cell::RefCell;
use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use differential_dataflow::operators::arrange::Arranged;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

use eddy_core::hysteresis::{observe, Active, Transition};
use eddy_core::ids::DeviceId;
use eddy_core::reading::Enriched;
use eddy_core::records::{EndReason, EventRecord, EventState};
use eddy_core::reference::{effective_rules, Rule, RuleScope};

use crate::batch::Batch;
use crate::lookup::{as_of, compact_to, histories, max_time, Waiting};
use crate::reference::RulesTrace;
use crate::snapshot::{self, Checkpointed, Owner, Pairs};

/// An active event of one rule on one device, with the rule as last applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Open {
    rule: Rule,
    active: Active,
}

/// Hysteresis state of every (rule, device) on this worker: only active
/// events are stored.
#[derive(Default)]
pub struct AlertState {
    open: HashMap<DeviceId, Vec<Open>>,
}

/// What the alerts keep across a checkpoint: the active events of each
/// device, in the order kept (the order their ends are judged in).
#[derive(Deserialize)]
pub struct SavedAlerts {
    open: Vec<(DeviceId, Vec<Open>)>,
}

impl Checkpointed for AlertState {
    type Saved = SavedAlerts;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        snapshot::encode(&(Pairs::new(self.open.iter()),))
    }

    fn restore(&mut self, saved: SavedAlerts, owner: &Owner) {
        self.open.extend(saved.open.into_iter().filter(|(d, open)| owner.owns(*d) && !open.is_empty()));
    }
}

/// The alerts operator's state: the hysteresis state, and the readings
/// waiting for the rules frontier.
struct AlertsOp<C> {
    state: AlertState,
    stash: Waiting<Enriched, C>,
}

impl<C: Batch<Enriched> + 'static> Checkpointed for AlertsOp<C> {
    type Saved = SavedAlerts;

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        self.state.save()
    }

    fn restore(&mut self, saved: SavedAlerts, owner: &Owner) {
        self.state.restore(saved, owner);
    }
}

/// The readings an alerts operator holds at a cut, waiting for the rules
/// frontier to pass their `ts`, saved under `<name>.waiting`. A reading can
/// be far ahead of its dataflow time (a device whose clock runs fast, within
/// `max_future`), further than the reference data of a live job is let run
/// ahead of its input; at a cut that input stops, so such a reading waits
/// until after the cut. It then no longer holds the output below `t - 1`
/// (see [`Waiting::hold_at_least`]) and goes into the checkpoint; a restored
/// operator holds it again, at the time it was saved at, before any new
/// reading.
struct Held<C> {
    op: Rc<RefCell<AlertsOp<C>>>,
    /// Restored: the time they were held at, and the readings of this
    /// worker's devices, in arrival order.
    restored: Option<(u64, Vec<Enriched>)>,
}

impl<C: Batch<Enriched> + 'static> Checkpointed for Held<C> {
    type Saved = (u64, Vec<Enriched>);

    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
        let op = self.op.borrow();
        let at = op.stash.low(timely::progress::frontier::AntichainRef::new(&[])).unwrap_or(0);
        snapshot::encode(&(at, op.stash.records().collect::<Vec<_>>()))
    }

    fn restore(&mut self, (at, readings): (u64, Vec<Enriched>), owner: &Owner) {
        let (t, held) = self.restored.get_or_insert_with(|| (at, Vec::new()));
        *t = (*t).max(at);
        held.extend(readings.into_iter().filter(|r| owner.owns(r.device)));
    }
}

fn record(rule: &Rule, device: DeviceId, state: EventState, ts: i64, value: Option<f64>, start_ts: i64) -> EventRecord {
    EventRecord {
        event_id: format!("{}:{}:{}", rule.rule_id, device, start_ts),
        rule_id: rule.rule_id.clone(),
        device_id: device,
        channel: rule.channel,
        state,
        ts,
        value,
        rise_above: rule.rise_above.0,
        fall_below: rule.fall_below.0,
        peak: None,
        duration_ms: None,
        reason: None,
    }
}

impl AlertState {
    /// Applies one non-late reading under `rules` (the rules in force for its
    /// device), pushing the events it causes.
    pub fn apply(&mut self, r: &Enriched, rules: &[Rule], out: &mut Vec<EventRecord>) {
        // Most devices have no active event: look their state up once and
        // store it only when an event starts.
        match self.open.get_mut(&r.device) {
            Some(open) => {
                apply_open(open, r, rules, out);
                if open.is_empty() {
                    self.open.remove(&r.device);
                }
            }
            None => {
                let mut open = Vec::new();
                apply_open(&mut open, r, rules, out);
                if !open.is_empty() {
                    self.open.insert(r.device, open);
                }
            }
        }
    }
}

/// [`AlertState::apply`] on the active events of the reading's device.
fn apply_open(open: &mut Vec<Open>, r: &Enriched, rules: &[Rule], out: &mut Vec<EventRecord>) {
    // Events whose rule is gone end now, with the thresholds last applied
    // to them. A reading from before an event's start (out of order) sees
    // the rules as of its own ts, which may predate the rule: it ends nothing.
    let mut i = 0;
    while i < open.len() {
        if r.ts < open[i].active.start_ts || rules.iter().any(|rule| rule.rule_id == open[i].rule.rule_id) {
            i += 1;
            continue;
        }
        let o = open.swap_remove(i);
        let mut e = record(&o.rule, r.device, EventState::End, r.ts, r.value(o.rule.channel), o.active.start_ts);
        e.peak = Some(o.active.peak);
        e.duration_ms = Some(r.ts - o.active.start_ts);
        e.reason = Some(EndReason::RuleRemoved);
        out.push(e);
    }
    for rule in rules {
        let Some(v) = r.value(rule.channel) else { continue };
        let pos = open.iter().position(|o| o.rule.rule_id == rule.rule_id);
        let mut state = pos.map(|p| open[p].active);
        match observe(&mut state, r.ts, v, rule.rise_above.0, rule.fall_below.0) {
            Transition::Start => {
                let active = state.expect("started");
                open.push(Open { rule: rule.clone(), active });
                out.push(record(rule, r.device, EventState::Start, r.ts, Some(v), r.ts));
            }
            Transition::End(ended) => {
                if let Some(p) = pos {
                    open.swap_remove(p);
                }
                let mut e = record(rule, r.device, EventState::End, r.ts, Some(v), ended.start_ts);
                e.peak = Some(ended.peak);
                e.duration_ms = Some(r.ts - ended.start_ts);
                e.reason = Some(EndReason::FellBelow);
                out.push(e);
            }
            Transition::None => {
                if let (Some(p), Some(s)) = (pos, state) {
                    open[p].active = s;
                    if open[p].rule != *rule {
                        open[p].rule = rule.clone();
                    }
                }
            }
        }
    }
}

/// The alerts operator. Its input must be partitioned by device and hold only
/// non-late readings.
pub fn alerts<'s, C: Batch<Enriched>>(
    enriched: Stream<'s, u64, C>,
    rules: Arranged<'s, RulesTrace>,
    name: &str,
) -> StreamVec<'s, u64, EventRecord> {
    let mut trace = rules.trace;
    let name_owned = name.to_string();
    let scope = enriched.scope();
    enriched.binary_frontier(rules.stream, Pipeline, Pipeline, name, move |cap, info| {
        let activator = scope.activator_for(info.address);
        let checkpointing = snapshot::active();
        let op = Rc::new(RefCell::new(AlertsOp::<C> { state: AlertState::default(), stash: Waiting::default() }));
        snapshot::register(&name_owned, &op);
        let held = Rc::new(RefCell::new(Held { op: Rc::clone(&op), restored: None }));
        snapshot::register(&format!("{name_owned}.waiting"), &held);
        if let Some((at, readings)) = held.borrow_mut().restored.take().filter(|(_, r)| !r.is_empty()) {
            op.borrow_mut().stash.push(cap.delayed(&at), C::from_vec(readings));
        }
        drop(cap);
        move |(input, frontier), (rule_batches, rules_frontier), output| {
            let mut op = op.borrow_mut();
            let AlertsOp { state, stash } = &mut *op;
            input.for_each(|cap, data| {
                if let Some(cap) = cap.retain_least(0) {
                    stash.push(cap, std::mem::take(data));
                }
            });
            rule_batches.for_each(|_, _| {});
            // The ready readings, in arrival order per device.
            let rf = rules_frontier.frontier();
            let ready =
                stash.take_ready_by(rf, |r| u64::from(r.device.index()), |r, _t| !rf.less_equal(&(r.ts.max(0) as u64)));
            if !ready.is_empty() {
                let mut keys: Vec<RuleScope> =
                    ready.iter().flat_map(|(_, b)| b.records().iter().map(|r| RuleScope::Device(r.device))).collect();
                keys.push(RuleScope::All);
                keys.sort();
                keys.dedup();
                let hist = histories(&mut trace, &keys);
                let index: HashMap<RuleScope, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
                let wild = &hist[index[&RuleScope::All]];
                let wild_latest = max_time(wild);
                let wild_now = as_of(wild, u64::MAX);
                // The rules of a device without rules of its own: computed once.
                let wild_rules = effective_rules(&[], &wild_now);
                let mut cache: HashMap<DeviceId, (u64, Vec<Rule>)> = HashMap::default();
                let mut out = Vec::new();
                for (cap, batch) in ready {
                    for r in batch.records() {
                        let dev_hist = &hist[index[&RuleScope::Device(r.device)]];
                        let time = r.ts.max(0) as u64;
                        if dev_hist.is_empty() && time >= wild_latest {
                            state.apply(r, &wild_rules, &mut out);
                            continue;
                        }
                        let (latest, now_rules) = cache.entry(r.device).or_insert_with(|| {
                            (
                                max_time(dev_hist).max(wild_latest),
                                effective_rules(&as_of(dev_hist, u64::MAX), &wild_now),
                            )
                        });
                        let rules_then;
                        let rules: &[Rule] = if time >= *latest {
                            now_rules
                        } else {
                            rules_then = effective_rules(&as_of(dev_hist, time), &as_of(wild, time));
                            &rules_then
                        };
                        state.apply(r, rules, &mut out);
                    }
                    if !out.is_empty() {
                        crate::metrics::latency().events(*cap.time(), out.len() as u64);
                        output.session(&cap).give_iterator(out.drain(..));
                    }
                }
            }
            // A checkpoint's cut at `t`: once the input has passed `t - 1`,
            // the readings still waiting hold the output at `t - 1`, no lower
            // (they go into the checkpoint: see `Held`).
            if let Some(t) = snapshot::cut() {
                if !frontier.frontier().less_equal(&t.saturating_sub(2)) {
                    stash.hold_at_least(t.saturating_sub(1));
                }
            }
            // A cut begins between steps, and nothing need wake the
            // operator then: while readings wait, it looks again shortly.
            if checkpointing && stash.records().next().is_some() {
                activator.activate_after(std::time::Duration::from_millis(10));
            }
            let low = stash.low(frontier.frontier());
            if let Some(low) = low {
                let target = rf.iter().copied().min().map_or(low, |r| r.min(low));
                compact_to(&mut trace, target);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use eddy_core::ids::Channel;
    use eddy_core::reading::Values;
    use eddy_core::reference::Num;

    fn reading(device: DeviceId, d: i64, step: i64) -> Enriched {
        let pm = ((step * 7 + d * 3) % 11) as f64 * 5.0;
        let co2 = 700.0 + ((step * 5 + d) % 9) as f64 * 60.0;
        let values: Values = [(Channel::PM25, Some(pm)), (Channel::CO2, Some(co2))].into_iter().collect();
        crate::testkit::enriched(device, step * 60_000, 1, values)
    }

    fn rules(step: i64) -> Vec<Rule> {
        let rule = |id: &str, channel, rise, fall| Rule {
            rule_id: Arc::from(id),
            channel,
            rise_above: Num(rise),
            fall_below: Num(fall),
        };
        let mut rules = vec![rule("pm-high", Channel::PM25, 35.0, 25.0)];
        // The CO2 rule changes its thresholds, then goes.
        match step {
            ..20 => rules.push(rule("co2-high", Channel::CO2, 1000.0, 800.0)),
            20..30 => rules.push(rule("co2-high", Channel::CO2, 1050.0, 760.0)),
            _ => {}
        }
        rules
    }

    /// Applies the readings of `steps` to the state of each device's owner;
    /// returns the events by device, in the order made.
    fn feed(
        states: &mut [AlertState],
        peers: usize,
        devices: &[DeviceId],
        steps: std::ops::Range<i64>,
    ) -> BTreeMap<DeviceId, Vec<EventRecord>> {
        let mut events: BTreeMap<DeviceId, Vec<EventRecord>> = BTreeMap::new();
        for step in steps {
            for (d, device) in devices.iter().enumerate() {
                let index = (0..peers).find(|i| Owner::new(*i, peers).owns(*device)).expect("an owner");
                let mut out = Vec::new();
                states[index].apply(&reading(*device, d as i64, step), &rules(step), &mut out);
                events.entry(*device).or_default().extend(out);
            }
        }
        events
    }

    /// Active events saved by two workers restore on three, each device's
    /// on its owner alone, and the restored states go on making the events
    /// that the original makes: the ends of events started before the
    /// checkpoint, with their start and peak, and with the thresholds last
    /// applied when their rule is gone.
    #[test]
    fn active_events_saved_by_two_workers_are_shared_out_among_three() {
        let devices: Vec<DeviceId> = (0..30).map(|d| DeviceId::intern(&format!("alert-snap-{d}"))).collect();
        let mut whole = [AlertState::default()];
        let mut two = [AlertState::default(), AlertState::default()];
        feed(&mut whole, 1, &devices, 0..25);
        feed(&mut two, 2, &devices, 0..25);
        assert!(whole[0].open.len() > 10, "{} devices with active events", whole[0].open.len());
        let saved: Vec<Vec<u8>> = two.iter().map(|s| s.save().expect("saves")).collect();
        let mut three = [AlertState::default(), AlertState::default(), AlertState::default()];
        for (index, state) in three.iter_mut().enumerate() {
            let owner = Owner::new(index, 3);
            for bytes in &saved {
                state.restore(eddy_checkpoint::decode(bytes).expect("decodes"), &owner);
            }
            assert!(state.open.keys().all(|d| owner.owns(*d)));
        }
        let mut restored: BTreeMap<DeviceId, &Vec<Open>> = BTreeMap::new();
        for state in &three {
            for (d, open) in &state.open {
                assert!(restored.insert(*d, open).is_none(), "{d} restored twice");
            }
        }
        let original: BTreeMap<DeviceId, &Vec<Open>> = whole[0].open.iter().map(|(d, o)| (*d, o)).collect();
        assert_eq!(restored, original);
        let want = feed(&mut whole, 1, &devices, 25..40);
        let got = feed(&mut three, 3, &devices, 25..40);
        assert_eq!(got, want);
        let ends: Vec<&EventRecord> = want.values().flatten().filter(|e| e.state == EventState::End).collect();
        assert!(ends.iter().any(|e| e.ts - e.duration_ms.unwrap_or(0) < 25 * 60_000), "an event from before ends");
        assert!(ends.iter().any(|e| e.reason == Some(EndReason::RuleRemoved) && e.rise_above == 1050.0));
    }
}
