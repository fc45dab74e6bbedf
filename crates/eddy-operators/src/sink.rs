//! Writing a stream out, committing per epoch.
//!
//! The sink operator hands batches to a [`BatchSink`] as they arrive and calls
//! [`BatchSink::commit`] each time its input frontier advances. Its output
//! stream carries no data: it holds a capability at the last committed
//! frontier, so a probe on it (on every worker) tells the runtime which
//! epochs every sink has made durable. That is what the commit ledger uses
//! to advance a source's committed position.
//!
//! A sink that fails (its `write` or `commit` returns a [`SinkError`]) is
//! called no more: the operator hands the error to its [`Reporter`], which
//! fails the run with it, discards the rest of its input and releases its
//! output, so that the dataflow still winds down and the run ends with the
//! error rather than waiting for a commit that cannot come.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};
use timely::progress::Antichain;

use crate::batch::Batch;
use crate::metrics::Metrics;
pub use eddy_core::sink::{BatchSink, SinkError};

/// How far a sink has taken its input in, durable or not: the least time of
/// its input frontier, as of the sink's last activation (`u64::MAX` once the
/// input is complete). The ingest source reads it to bound what is in flight.
#[derive(Clone, Debug, Default)]
pub struct Taken(Rc<Cell<u64>>);

impl Taken {
    /// True once the sink has taken in every record at time `t`.
    pub fn passed(&self, t: u64) -> bool {
        self.0.get() > t
    }
}

/// Where a sink operator reports its sink's error: the run's [`Metrics`]
/// (whose first failure fails the run), once connected. The runtime connects
/// it when the sink is committed, before the dataflow runs; an error met
/// while it is not connected waits here until it is.
#[derive(Clone, Default)]
pub struct Reporter(Rc<RefCell<Reporting>>);

#[derive(Default)]
struct Reporting {
    metrics: Option<Arc<Metrics>>,
    waiting: Option<SinkError>,
}

impl Reporter {
    /// A reporter connected to `metrics`.
    pub fn to(metrics: &Arc<Metrics>) -> Reporter {
        let r = Reporter::default();
        r.connect(metrics);
        r
    }

    /// Reports to `metrics` from now on, and hands over an error met before.
    pub fn connect(&self, metrics: &Arc<Metrics>) {
        let mut r = self.0.borrow_mut();
        if let Some(e) = r.waiting.take() {
            metrics.fail(e);
        }
        r.metrics = Some(Arc::clone(metrics));
    }

    fn report(&self, error: SinkError) {
        let mut r = self.0.borrow_mut();
        match &r.metrics {
            Some(m) => m.fail(error),
            None => {
                r.waiting.get_or_insert(error);
            }
        }
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0.borrow();
        f.debug_struct("Reporter").field("connected", &r.metrics.is_some()).field("waiting", &r.waiting).finish()
    }
}

/// Attaches `sink` to `stream`; its error goes to `report`. The returned stream's frontier is the sink's
/// committed frontier; the [`Taken`] follows its input frontier.
///
/// A batch that no other consumer shares goes to [`BatchSink::write`]; a
/// shared one to [`BatchSink::write_arc`] (which by default reads it in
/// place through [`BatchSink::write_shared`]).
pub fn sink<'s, D: Clone + 'static, C: Batch<D>, S: BatchSink<D>>(
    stream: Stream<'s, u64, C>,
    name: &str,
    mut sink: S,
    report: Reporter,
) -> (StreamVec<'s, u64, ()>, Taken) {
    let scope = stream.scope();
    let taken = Taken::default();
    let seen = taken.clone();
    let out = stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, move |cap, info| {
        let mut held = Some(cap);
        let mut last = Antichain::from_elem(0u64);
        let mut pending = false;
        let activator = scope.activator_for(info.address);
        let mut failed = false;
        // A settled sink's records, by time, until the frontier passes it.
        let settled = sink.settled();
        let mut waiting: BTreeMap<u64, Vec<C>> = BTreeMap::new();
        move |(input, frontier), _output| {
            input.for_each(|cap, data| {
                if failed {
                    return;
                }
                let t = cap.least().copied();
                if settled {
                    let batch = std::mem::replace(data, C::from_vec(Vec::new()));
                    waiting.entry(t.unwrap_or(0)).or_default().push(batch);
                    return;
                }
                if let Some(t) = t {
                    sink.begin(t);
                }
                if let Err(e) = write(&mut sink, data) {
                    report.report(e);
                    failed = true;
                }
            });
            let f = frontier.frontier();
            let least = f.iter().copied().min();
            seen.0.set(least.unwrap_or(u64::MAX));
            // The times the frontier has passed, in order.
            while !failed && waiting.first_key_value().is_some_and(|(t, _)| least.is_none_or(|l| *t < l)) {
                let (t, batches) = waiting.pop_first().expect("checked");
                sink.begin(t);
                for mut batch in batches {
                    if let Err(e) = write(&mut sink, &mut batch) {
                        report.report(e);
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // The run has failed: hold nothing open.
                held = None;
                pending = false;
                waiting.clear();
                return;
            }
            if f != last.borrow() || pending {
                let durable = match sink.commit(f.iter().copied().min()) {
                    Ok(d) => d,
                    Err(e) => {
                        report.report(e);
                        failed = true;
                        held = None;
                        pending = false;
                        return;
                    }
                };
                last = f.to_owned();
                // Hold the output at what is durable, which may lag the input.
                match (durable, held.as_mut()) {
                    (Some(t), Some(h)) => h.downgrade(&t.max(*h.time())),
                    (None, _) => held = None,
                    _ => {}
                }
                // A sink that lags its input is asked again at the next
                // activation; ask for one after a short while.
                pending = held.as_ref().is_some_and(|h| f.iter().any(|t| t > h.time()) || f.is_empty());
                if pending {
                    activator.activate_after(sink.recommit_after());
                }
            }
        }
    });
    (out, taken)
}

/// Hands `data` to `sink`: drained when no other consumer shares it.
fn write<D: Clone + 'static, C: Batch<D>, S: BatchSink<D>>(sink: &mut S, data: &mut C) -> Result<(), SinkError> {
    match data.get_mut() {
        Some(records) => sink.write(records),
        None => match data.arc() {
            Some(batch) => sink.write_arc(batch),
            None => sink.write_shared(data.records()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    use timely::dataflow::operators::{Input, Probe};

    /// Fails its write at time 2 (as a full disk would), counting its calls.
    struct FullAtTwo {
        time: u64,
        calls: Arc<AtomicU64>,
    }

    impl BatchSink<u64> for FullAtTwo {
        fn begin(&mut self, time: u64) {
            self.time = time;
        }
        fn write(&mut self, batch: &mut Vec<u64>) -> Result<(), SinkError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            batch.clear();
            if self.time == 2 {
                return Err(SinkError::new("out/stats.jsonl", std::io::Error::from_raw_os_error(28)));
            }
            Ok(())
        }
        fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(upto)
        }
    }

    #[test]
    fn a_failed_sink_fails_the_run_with_its_error_and_holds_nothing_open() {
        let metrics = Arc::new(Metrics::default());
        let calls = Arc::new(AtomicU64::new(0));
        let (m, c) = (Arc::clone(&metrics), Arc::clone(&calls));
        let calls_after = timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u64>>();
                let (out, _) = sink(stream, "sink", FullAtTwo { time: 0, calls: c.clone() }, Reporter::to(&m));
                (input, out.probe().0)
            });
            let mut calls_at_failure = None;
            for t in 0..6u64 {
                input.advance_to(t);
                input.send(t);
                worker.step_while(|| probe.less_than(&t));
                if calls_at_failure.is_none() && m.failure().is_some() {
                    calls_at_failure = Some(c.load(Ordering::SeqCst));
                }
            }
            drop(input);
            // Bounded: a failed sink that held its output would hang the run.
            for _ in 0..10_000 {
                if probe.done() {
                    break;
                }
                worker.step();
            }
            assert!(probe.done(), "the failed sink holds the dataflow open");
            c.load(Ordering::SeqCst) - calls_at_failure.expect("the sink failed")
        });
        assert_eq!(calls_after, 0, "the sink is called no more after it failed");
        let failure = metrics.failure().expect("the run failed");
        assert_eq!(failure.to_string(), "cannot write out/stats.jsonl");
        let cause = failure.source().expect("a cause").to_string();
        assert!(cause.contains("No space left on device"), "{cause}");
    }

    /// Keeps what it was given since its last commit, and each commit's
    /// records with the commit's frontier.
    struct Recording {
        settled: bool,
        open: Vec<u64>,
        commits: Rc<RefCell<Vec<(Option<u64>, Vec<u64>)>>>,
    }

    impl BatchSink<u64> for Recording {
        fn write(&mut self, batch: &mut Vec<u64>) -> Result<(), SinkError> {
            self.open.append(batch);
            Ok(())
        }
        fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
            self.commits.borrow_mut().push((upto, std::mem::take(&mut self.open)));
            Ok(upto)
        }
        fn settled(&self) -> bool {
            self.settled
        }
    }

    /// Each commit of the sink's records, with its frontier, when records
    /// at time `t` (valued `t`) arrive while the frontier is still at `t`.
    fn commits(settled: bool) -> Vec<(Option<u64>, Vec<u64>)> {
        timely::execute_directly(move |worker| {
            let commits = Rc::new(RefCell::new(Vec::new()));
            let recording = Recording { settled, open: Vec::new(), commits: Rc::clone(&commits) };
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u64>>();
                let (out, _) = sink(stream, "sink", recording, Reporter::default());
                (input, out.probe().0)
            });
            for t in 1..6u64 {
                input.advance_to(t);
                input.send(t);
                input.send(t);
                // The records arrive with the frontier still at `t`.
                input.flush();
                worker.step_while(|| probe.less_than(&t));
            }
            drop(input);
            worker.step_while(|| !probe.done());
            let c = commits.borrow().clone();
            c
        })
    }

    #[test]
    fn a_settled_sink_commits_exactly_the_records_before_each_frontier() {
        let settled = commits(true);
        let mut all: Vec<u64> = Vec::new();
        for (upto, records) in &settled {
            assert!(records.iter().all(|r| upto.is_none_or(|u| *r < u)), "a commit at {upto:?} holds {records:?}");
            all.extend(records);
        }
        assert_eq!(all, [1u64, 1, 2, 2, 3, 3, 4, 4, 5, 5], "every record once, in time order");
        // The premise: an unsettled sink commits records beyond the frontier.
        let unsettled = commits(false);
        assert!(unsettled.iter().any(|(upto, r)| r.iter().any(|r| upto.is_some_and(|u| *r >= u))), "{unsettled:?}");
    }

    #[test]
    fn an_error_met_before_the_reporter_is_connected_is_handed_over() {
        let report = Reporter::default();
        report.report(SinkError::new("topic t", std::io::Error::other("first")));
        report.report(SinkError::new("topic t", std::io::Error::other("second")));
        let metrics = Arc::new(Metrics::default());
        report.connect(&metrics);
        let failure = metrics.failure().expect("handed over");
        assert_eq!(failure.source().unwrap().to_string(), "first");
    }
}
