//! Looking up records against an arrangement's trace, as of an event time.
//!
//! The enrich and alerts operators keep readings out of arrangements: they
//! read, for the keys of a batch of readings, the history of updates in the
//! trace, and accumulate it as of each reading's time. This is the
//! "half join" pattern, written against differential's cursor API.

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::ExchangeData;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
use std::marker::PhantomData;

use timely::dataflow::operators::Capability;
use timely::progress::frontier::AntichainRef;

use crate::batch::Batch;

/// Readings waiting, in arrival order, for a reference frontier to pass them,
/// in batches of type `C` (shared batches stay shared unless a batch is
/// split: see [`Batch`]).
pub struct Waiting<D, C = Vec<D>> {
    stash: VecDeque<(Capability<u64>, C)>,
    /// For [`Waiting::take_ready_by`]: the keys with a record waiting among
    /// the first `scanned` batches, all of which were found not ready.
    blocked: FxHashSet<u64>,
    scanned: usize,
    /// The frontier `blocked` was found at.
    frontier: Vec<u64>,
    _records: PhantomData<D>,
}

impl<D, C> Default for Waiting<D, C> {
    fn default() -> Self {
        Waiting {
            stash: VecDeque::new(),
            blocked: FxHashSet::default(),
            scanned: 0,
            frontier: Vec::new(),
            _records: PhantomData,
        }
    }
}

impl<D: Clone + 'static, C: Batch<D>> Waiting<D, C> {
    /// Queues a batch received under `cap`.
    pub fn push(&mut self, cap: Capability<u64>, batch: C) {
        self.stash.push_back((cap, batch));
    }

    /// Takes every record for which `ready(record, time)` holds and no
    /// earlier record with the same `key` is still waiting: arrival order is
    /// kept per key, and a record that is not ready holds back only the
    /// records of its own key (a device far ahead in event time does not
    /// hold back the others). Batches come out with their capabilities.
    ///
    /// `ready` may depend only on `frontier` (the reference frontier): while
    /// it stays where it was at the last call, only the batches pushed since
    /// are looked at.
    pub fn take_ready_by(
        &mut self,
        frontier: AntichainRef<u64>,
        key: impl Fn(&D) -> u64,
        ready: impl Fn(&D, u64) -> bool,
    ) -> Vec<(Capability<u64>, C)> {
        if frontier.iter().ne(self.frontier.iter()) {
            self.frontier = frontier.to_vec();
            self.blocked.clear();
            self.scanned = 0;
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.stash.len());
        for (i, (cap, batch)) in std::mem::take(&mut self.stash).into_iter().enumerate() {
            if i < self.scanned {
                kept.push_back((cap, batch));
                continue;
            }
            let t = *cap.time();
            // The common case: nothing of the batch's keys is held back and
            // every record is ready. The batch leaves whole, without moving
            // its records one by one.
            if self.blocked.is_empty() && batch.records().iter().all(|d| ready(d, t)) {
                if !batch.is_empty() {
                    out.push((cap, batch));
                }
                continue;
            }
            let mut go = Vec::new();
            let mut stay = Vec::new();
            let mut batch = batch;
            for d in batch.take() {
                let k = key(&d);
                if !self.blocked.contains(&k) && ready(&d, t) {
                    go.push(d);
                } else {
                    self.blocked.insert(k);
                    stay.push(d);
                }
            }
            if !go.is_empty() {
                out.push((cap.clone(), C::from_vec(go)));
            }
            if !stay.is_empty() {
                kept.push_back((cap, C::from_vec(stay)));
            }
        }
        self.scanned = kept.len();
        self.stash = kept;
        out
    }

    /// Moves the capability of every waiting batch below `t` up to `t`: at a
    /// checkpoint's cut at `t + 1`, the records waiting no longer hold the
    /// output below `t` (what they make goes out at `t` or later).
    pub fn hold_at_least(&mut self, t: u64) {
        for (cap, _) in self.stash.iter_mut() {
            if *cap.time() < t {
                cap.downgrade(&t);
            }
        }
    }

    /// The waiting records, in arrival order.
    pub fn records(&self) -> impl Iterator<Item = &D> {
        self.stash.iter().flat_map(|(_, b)| b.records().iter())
    }

    /// The least time of a waiting or future record, given the input frontier.
    pub fn low(&self, input: AntichainRef<u64>) -> Option<u64> {
        let waiting = self.stash.iter().map(|(c, _)| *c.time()).min();
        match (input.iter().copied().min(), waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The updates of one key: `(value, time, diff)`.
pub type History<V> = Vec<(V, u64, isize)>;

/// Reads the history of each of `keys` (sorted, distinct) from `trace`.
pub fn histories<K, V>(trace: &mut TraceAgent<ValSpine<K, V, u64, isize>>, keys: &[K]) -> Vec<History<V>>
where
    K: ExchangeData + Ord + Clone,
    V: ExchangeData + Ord + Clone,
{
    let mut out: Vec<History<V>> = keys.iter().map(|_| Vec::new()).collect();
    let mut batches = Vec::new();
    trace.map_spans(|span| {
        if let Some(b) = &span.inner {
            batches.push(b.clone());
        }
    });
    if batches.is_empty() {
        return out;
    }
    let (mut cursor, storage) = cursor_list(batches);
    for (i, key) in keys.iter().enumerate() {
        cursor.seek_key(&storage, key);
        if cursor.get_key(&storage) == Some(key) {
            while let Some(val) = cursor.get_val(&storage) {
                let hist = &mut out[i];
                cursor.map_times(&storage, |t, r| hist.push((val.clone(), *t, *r)));
                cursor.step_val(&storage);
            }
        }
    }
    out
}

/// The values present as of `time`: those whose diffs at times `<= time` sum to
/// more than zero (each once), in value order.
pub fn as_of<V: Ord + Clone>(history: &[(V, u64, isize)], time: u64) -> Vec<V> {
    let mut acc: Vec<(&V, isize)> = history.iter().filter(|(_, t, _)| *t <= time).map(|(v, _, r)| (v, *r)).collect();
    acc.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    let mut i = 0;
    while i < acc.len() {
        let mut sum = 0;
        let v = acc[i].0;
        while i < acc.len() && acc[i].0 == v {
            sum += acc[i].1;
            i += 1;
        }
        if sum > 0 {
            out.push(v.clone());
        }
    }
    out
}

/// The largest time in a history (0 if empty).
pub fn max_time<V>(history: &[(V, u64, isize)]) -> u64 {
    history.iter().map(|(_, t, _)| *t).max().unwrap_or(0)
}

/// Advances a trace's compaction frontiers to `time`, never backwards.
pub fn compact_to<K, V>(trace: &mut TraceAgent<ValSpine<K, V, u64, isize>>, time: u64)
where
    K: ExchangeData + Ord + Clone,
    V: ExchangeData + Ord + Clone,
{
    let current = trace.get_logical_compaction().iter().next().copied();
    if let Some(c) = current {
        if time > c {
            trace.set_logical_compaction(AntichainRef::new(&[time]));
            trace.set_physical_compaction(AntichainRef::new(&[time]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_accumulates_diffs_up_to_the_time() {
        let h = vec![("a", 0, 1), ("a", 10, -1), ("b", 10, 1), ("c", 20, 1)];
        assert_eq!(as_of(&h, 5), vec!["a"]);
        assert_eq!(as_of(&h, 10), vec!["b"]);
        assert_eq!(as_of(&h, 25), vec!["b", "c"]);
        assert_eq!(max_time(&h), 20);
    }

    /// A record waiting for a reference frontier far ahead holds the output
    /// at its own time until a cut moves it up; it still goes out, at the
    /// cut's time, once the reference frontier passes it.
    #[test]
    fn a_cut_moves_the_waiting_records_up_and_they_still_go_out() {
        use std::cell::{Cell, RefCell};
        use std::rc::Rc;
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::Operator;
        use timely::dataflow::operators::{Input, Probe};

        timely::execute_directly(|worker| {
            let cut: Rc<Cell<Option<u64>>> = Rc::default();
            let waiting: Rc<RefCell<Vec<u64>>> = Rc::default();
            let out: Rc<RefCell<Vec<(u64, u64)>>> = Rc::default();
            let (c, w, o) = (Rc::clone(&cut), Rc::clone(&waiting), Rc::clone(&out));
            let (mut data, mut reference, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (data, records) = scope.new_input::<Vec<u64>>();
                let (reference, refs) = scope.new_input::<Vec<u64>>();
                let stream = records.binary_frontier(refs, Pipeline, Pipeline, "waits", move |_cap, _info| {
                    let mut stash: Waiting<u64> = Waiting::default();
                    move |(input, frontier), (refs, ref_frontier), output| {
                        input.for_each(|cap, data| {
                            if let Some(cap) = cap.retain_least(0) {
                                stash.push(cap, std::mem::take(data));
                            }
                        });
                        refs.for_each(|_, _| {});
                        let rf = ref_frontier.frontier();
                        for (cap, mut batch) in stash.take_ready_by(rf, |d| *d, |d, _| !rf.less_equal(d)) {
                            o.borrow_mut().extend(batch.iter().map(|d| (*cap.time(), *d)));
                            output.session(&cap).give_container(&mut batch);
                        }
                        if let Some(t) = c.get() {
                            if !frontier.frontier().less_equal(&(t - 2)) {
                                stash.hold_at_least(t - 1);
                            }
                        }
                        *w.borrow_mut() = stash.records().copied().collect();
                    }
                });
                let probe = stream.probe().0;
                (data, reference, probe)
            });
            data.send(100); // at time 0, ready once the reference passes 100
            reference.advance_to(50);
            data.advance_to(9);
            for _ in 0..10 {
                worker.step();
            }
            assert!(probe.less_equal(&0), "the waiting record holds the output at its time");
            assert_eq!(*waiting.borrow(), [100]);
            // A cut at 10: the input has passed 9, the record moves up to 9
            // (at the operator's next activation).
            cut.set(Some(10));
            reference.advance_to(60);
            for _ in 0..10 {
                worker.step();
            }
            assert!(!probe.less_than(&9) && probe.less_equal(&9), "held at 9 by the record, no lower");
            assert_eq!(*waiting.borrow(), [100], "still waiting, to be saved");
            cut.set(None);
            reference.advance_to(101);
            drop((data, reference));
            worker.step_while(|| !probe.done());
            assert_eq!(*out.borrow(), [(9, 100)]);
        });
    }
}
