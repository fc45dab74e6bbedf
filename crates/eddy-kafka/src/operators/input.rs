//! What the sources share with the worker loop that commits for them: a
//! worker's consumer and the offsets it has read ([`Input`], [`Unsettled`]),
//! how far back a resumed partition is fetched ([`RESUME_REWIND`]), and the
//! request to stop ([`Stop`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};

use crate::codec::{envelope, Envelope};

/// What a source has read and not yet seen committed: per partition, runs
/// of `(first offset, dataflow time)` in offset order. Once a job's outputs
/// are durable up to frontier `f`, every leading run with a time below `f`
/// is done, and the partition's committable offset is the first offset of
/// the first run left (or the next offset to read).
#[derive(Default)]
pub struct Unsettled {
    runs: BTreeMap<i32, VecDeque<(i64, u64)>>,
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Unsettled {
    pub(crate) fn read(&mut self, partition: i32, offset: i64, t: u64) {
        let runs = self.runs.entry(partition).or_default();
        if runs.back().is_none_or(|(_, last)| *last != t) {
            runs.push_back((offset, t));
        }
        self.next.insert(partition, offset + 1);
    }

    /// Starts `partition` at `offset`: the next to read until a record is.
    pub fn start(&mut self, partition: i32, offset: i64) {
        self.next.entry(partition).or_insert(offset);
    }

    /// Where each partition must be read again from to get every record at
    /// time `t` or later that has been read: the first offset of the first
    /// run at or after `t`, or the next offset to read. Records after it that
    /// come before `t` must then be skipped (see `TypedState::start_at`).
    pub fn resume_at(&self, t: u64) -> BTreeMap<i32, i64> {
        let empty = VecDeque::new();
        self.next
            .iter()
            .map(|(p, next)| {
                let runs = self.runs.get(p).unwrap_or(&empty);
                (*p, runs.iter().find(|(_, rt)| *rt >= t).map_or(*next, |(o, _)| *o))
            })
            .collect()
    }

    /// Markers and records that produce nothing settle at once.
    pub(crate) fn skip(&mut self, partition: i32, offset: i64) {
        let runs = self.runs.entry(partition).or_default();
        if runs.is_empty() {
            self.next.insert(partition, offset + 1);
        } else {
            self.read(partition, offset, 0);
        }
    }

    /// The offsets to commit now that everything below `frontier` is
    /// durable: only partitions whose committable offset moved.
    pub fn settle(&mut self, frontier: u64) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (p, next) in &self.next {
            let runs = self.runs.entry(*p).or_default();
            // A run is settled when its time is below the frontier and so is
            // every run before it (offset order).
            while runs.front().is_some_and(|(_, t)| *t < frontier) {
                runs.pop_front();
            }
            let at = runs.front().map_or(*next, |(o, _)| *o);
            if self.committed.get(p) != Some(&at) {
                self.committed.insert(*p, at);
                out.insert(*p, at);
            }
        }
        out
    }
}

/// A record as a source takes it: where it was read, its envelope and its
/// payload.
#[derive(Debug)]
pub struct Record<'a> {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its envelope headers, read.
    pub envelope: Result<Envelope, String>,
    /// Its payload (empty if none).
    pub payload: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record of a message from the consumer.
    pub(crate) fn of(m: &'a BorrowedMessage<'_>) -> Record<'a> {
        Record {
            partition: m.partition(),
            offset: m.offset(),
            envelope: envelope(m.headers()),
            payload: m.payload().unwrap_or_default(),
        }
    }
}

/// What a [`Record`] is read from: a message from the consumer, or a record
/// itself.
pub trait AsRecord {
    /// Calls `f` with the record.
    fn with_record<R>(self, f: impl FnOnce(Record<'_>) -> R) -> R;
}

impl AsRecord for BorrowedMessage<'_> {
    fn with_record<R>(self, f: impl FnOnce(Record<'_>) -> R) -> R {
        f(Record::of(&self))
    }
}

impl AsRecord for Record<'_> {
    fn with_record<R>(self, f: impl FnOnce(Record<'_>) -> R) -> R {
        f(self)
    }
}

/// A worker's consumer and what it has read.
pub struct Input {
    /// The consumer (manually assigned partitions).
    pub consumer: Rc<BaseConsumer>,
    /// The topic.
    pub topic: String,
    /// The partitions assigned to this worker.
    pub partitions: Vec<i32>,
    /// Offsets read and not yet committed.
    pub unsettled: Rc<RefCell<Unsettled>>,
    /// Per partition, the committed offset the job resumes from: records
    /// below it (fetched again, see [`RESUME_REWIND`]) are skipped.
    pub floor: Rc<BTreeMap<i32, i64>>,
}

/// How far before its committed offset a resumed partition is fetched from.
///
/// Tansu 0.6 answers a fetch from an offset inside a record batch with the
/// batches that start after it, so the rest of that batch would be skipped
/// (records lost). A batch holds at most `batch.num.messages` records
/// (10,000 in librdkafka, eddy's producers set it explicitly), so fetching
/// from this many offsets earlier always starts at or before the batch that
/// holds the committed offset; the records below it are skipped.
pub const RESUME_REWIND: i64 = 10_000;

/// A request to stop (SIGTERM), shared by the sources of a process. A source
/// that sees it stops reading but keeps its capability, and records the time
/// it stopped at: once every output below the least such time is durable,
/// the job checkpoints there and exits. Nothing is emitted that a run to the
/// end would not emit (an operator never sees its input end).
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Set to stop.
    pub requested: Arc<AtomicBool>,
    /// The least time at which a source stopped (`u64::MAX` until one does).
    pub at: Arc<AtomicU64>,
    /// Sources reading in this process, and how many of them have stopped.
    sources: Arc<(AtomicU64, AtomicU64)>,
}

impl Stop {
    /// Not requested.
    pub fn new(requested: Arc<AtomicBool>) -> Stop {
        Stop { requested, at: Arc::new(AtomicU64::new(u64::MAX)), sources: Arc::default() }
    }

    pub(crate) fn register(&self) {
        self.sources.0.fetch_add(1, Ordering::SeqCst);
    }

    /// True when stopping; the first time, records `time`.
    pub(crate) fn check(&self, time: u64, noted: &mut bool) -> bool {
        if !self.requested.load(Ordering::Relaxed) {
            return false;
        }
        if !*noted {
            *noted = true;
            self.at.fetch_min(time, Ordering::SeqCst);
            self.sources.1.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// True once a stop was requested and every source has stopped.
    pub fn all_stopped(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
            && self.sources.1.load(Ordering::SeqCst) >= self.sources.0.load(Ordering::SeqCst)
    }

    /// The frontier below which a stopped process's input was read whole.
    pub fn limit(&self) -> u64 {
        self.at.load(Ordering::SeqCst)
    }
}

impl Input {
    /// The next record already fetched, if any. A consumer error (a broker
    /// gone, say) is logged and ends the batch; the client retries.
    pub(crate) fn next(&self) -> Option<BorrowedMessage<'_>> {
        loop {
            match self.consumer.poll(Duration::ZERO)? {
                Ok(m) if before_resume(&self.floor, m.partition(), m.offset()) => continue,
                Ok(m) => return Some(m),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error; retrying");
                    return None;
                }
            }
        }
    }
}

/// True for a record below its partition's resume position (`floor`): fetched
/// again (see [`RESUME_REWIND`]), but read and committed before.
fn before_resume(floor: &BTreeMap<i32, i64>, partition: i32, offset: i64) -> bool {
    floor.get(&partition).is_some_and(|f| offset < *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_settles_up_to_its_first_run_not_yet_durable() {
        let mut u = Unsettled::default();
        u.read(0, 10, 5);
        u.read(0, 11, 5);
        u.read(0, 12, 7);
        u.skip(1, 3);
        // Partition 1 held only a marker: settled at once.
        assert_eq!(u.settle(0), BTreeMap::from([(0, 10), (1, 4)]));
        // Nothing moved: nothing to commit again.
        assert_eq!(u.settle(5), BTreeMap::new());
        assert_eq!(u.settle(6), BTreeMap::from([(0, 12)]));
        assert_eq!(u.settle(u64::MAX), BTreeMap::from([(0, 13)]));
    }

    #[test]
    fn a_cut_resumes_each_partition_at_its_first_record_at_or_after_the_cut() {
        let mut u = Unsettled::default();
        u.start(2, 40);
        u.read(0, 10, 5);
        u.read(0, 11, 9);
        u.read(0, 12, 7);
        u.skip(0, 13);
        u.read(1, 3, 5);
        assert_eq!(u.resume_at(8), BTreeMap::from([(0, 11), (1, 4), (2, 40)]));
        assert_eq!(u.resume_at(6), BTreeMap::from([(0, 11), (1, 4), (2, 40)]));
        assert_eq!(u.resume_at(5), BTreeMap::from([(0, 10), (1, 3), (2, 40)]));
        // Settling does not move a run at or after the cut.
        u.settle(7);
        assert_eq!(u.resume_at(8), BTreeMap::from([(0, 11), (1, 4), (2, 40)]));
    }

    #[test]
    fn a_resumed_partition_skips_the_records_below_its_committed_offset() {
        let floor = BTreeMap::from([(0, 100), (2, 0)]);
        assert!(before_resume(&floor, 0, 99));
        assert!(!before_resume(&floor, 0, 100), "the committed offset is the next to read");
        assert!(!before_resume(&floor, 1, 0), "a partition without a committed offset is read whole");
        assert!(!before_resume(&floor, 2, 0));
    }

    #[test]
    fn a_stop_records_the_least_time_a_source_stopped_at() {
        let stop = Stop::new(Arc::default());
        stop.register();
        stop.register();
        let (mut a, mut b) = (false, false);
        assert!(!stop.check(9, &mut a));
        stop.requested.store(true, Ordering::Relaxed);
        assert!(stop.check(9, &mut a));
        assert!(!stop.all_stopped());
        assert!(stop.check(4, &mut b));
        assert!(stop.check(1, &mut b), "noted once");
        assert!(stop.all_stopped());
        assert_eq!(stop.limit(), 4);
    }
}
