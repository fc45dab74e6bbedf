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

use rustc_hash::FxHashMap as HashMap;

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

/// An active event of one rule on one device, with the rule as last applied.
#[derive(Clone, Debug)]
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
    enriched.binary_frontier(rules.stream, Pipeline, Pipeline, name, move |_cap, _info| {
        let mut stash: Waiting<Enriched, C> = Waiting::default();
        let mut state = AlertState::default();
        move |(input, frontier), (rule_batches, rules_frontier), output| {
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
            let low = stash.low(frontier.frontier());
            if let Some(low) = low {
                let target = rf.iter().copied().min().map_or(low, |r| r.min(low));
                compact_to(&mut trace, target);
            }
        }
    })
}
