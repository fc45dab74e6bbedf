//! Checkpoints of a Kafka job: cuts agreed between all its workers, on every
//! process, over a small control dataflow.
//!
//! A Kafka job's workers read their partitions in parallel, so no single
//! source can choose where to cut. Worker 0 (the leader) runs the protocol;
//! every message goes over the control dataflow (an input on every worker,
//! exchanged to the message's destination), so it works the same across
//! threads and processes:
//!
//! 1. `Freeze(k)` to every worker: each worker's sources stop reading and
//!    report the largest time they have sent at
//!    ([`Alignment`]); each worker
//!    answers `Frozen(k, m)`.
//! 2. `Cut(k, t)`, `t` the first epoch boundary after the largest `m`: the
//!    sources read again, keep back what comes at or after `t`, and hold
//!    their capabilities at `t - 1`. Once a worker's probe passes `t - 1`
//!    (every record before `t` processed by every operator and durable in
//!    every output), it saves its operators and sends them with, for each
//!    of its partitions, the offset of the first record at or after `t`
//!    (`Saved`).
//! 3. With every worker's part, the leader hands the checkpoint to the
//!    writer thread and sends `Release(k)`: the sources send what they kept
//!    back and go on.
//!
//! A restarted job loads the newest complete checkpoint, gives every
//! operator its devices' state back (at any number of workers and
//! processes), reads each partition from its recorded offset and drops the
//! records before `t` (their effect is in the state).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{Exchange, Input, Inspect};
use timely::dataflow::InputHandle;

use eddy_checkpoint::Store;
use eddy_kafka::operators::Input as KafkaInput;
use eddy_operators::metrics::Metrics;
use eddy_operators::snapshot::{self, cut_after, Alignment, Phase, Restored};

use crate::error::{Error, Result};
use crate::runner::{Commits, Next};
use crate::snapshots::{checkpoint_error, restored_of, ToWrite};

/// A control message, with the worker it goes to.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Ctl {
    /// Leader → all: stop reading and report.
    Freeze(u64),
    /// Worker → leader: its sources are frozen; the largest time they sent
    /// at, and whether any of them still reads (has not ended).
    Frozen { k: u64, worker: usize, time: u64, live: bool },
    /// Leader → all: cut at this time.
    Cut(u64, u64),
    /// Worker → leader: its operators' state at the cut, and its partitions'
    /// offsets.
    Saved { k: u64, worker: usize, parts: Vec<(String, Vec<u8>)>, offsets: Vec<(String, i32, i64)> },
    /// Leader → all: go on.
    Release(u64),
}

/// The manifest's `meta` of a Kafka job's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobMeta {
    /// [`JobMeta::VERSION`].
    pub version: u32,
    /// The job's group (`<prefix>.<name>`).
    pub job: String,
    /// The job's spec, as text: a restart with another is refused.
    pub spec: String,
    /// Every record before this dataflow time is in the state, and every
    /// output before it is durable.
    pub time: u64,
    /// Workers (over every process) of the run that wrote it.
    pub workers: usize,
    /// Per input topic and partition, the offset to read from: every record
    /// at or after `time` is at or after it.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// From the freeze to the release, milliseconds.
    pub pause_ms: f64,
    /// The key groups of the run (absent in checkpoints of before key groups).
    #[serde(default)]
    pub key_groups: Option<eddy_core::keys::KeyGroups>,
}

impl JobMeta {
    /// The current version.
    pub const VERSION: u32 = 1;
}

/// A checkpoint a Kafka job restarts from.
pub struct JobRestart {
    /// Its id in the store.
    pub id: u64,
    /// Its record.
    pub meta: JobMeta,
    /// The operators' state.
    pub restored: Arc<Restored>,
}

/// Loads the newest complete checkpoint of `store`, checking that it is
/// the job's (`group`) and was taken with the same spec.
pub fn load(store: &Store, group: &str, spec: &str) -> Result<Option<JobRestart>> {
    let Some(loaded) = store.load_latest().map_err(checkpoint_error)? else { return Ok(None) };
    for (id, why) in &loaded.skipped {
        eprintln!("warning: checkpoint {id} does not verify ({why}); using checkpoint {}", loaded.manifest.id);
    }
    let id = loaded.manifest.id;
    let at = store.location();
    let meta: JobMeta = serde_json::from_value(loaded.manifest.meta.clone())
        .map_err(|e| Error::Usage(format!("checkpoint {id} in {at}: not a Kafka job's checkpoint: {e}")))?;
    if meta.version != JobMeta::VERSION {
        return Err(Error::Usage(format!(
            "checkpoint {id} in {at}: version {} (this eddy reads {})",
            meta.version,
            JobMeta::VERSION
        )));
    }
    if meta.job != group {
        return Err(Error::Usage(format!(
            "{at} holds checkpoints of job {}, not of {group}: give each job its own --store",
            meta.job
        )));
    }
    if meta.spec != spec {
        return Err(Error::Usage(format!(
            "checkpoint {id} in {at} was taken with another spec of {group}; restart with the same spec, or delete the store to rebuild the state from the input\nwas: {}\nnow: {spec}",
            meta.spec
        )));
    }
    let placement = meta.key_groups.map(|groups| eddy_core::keys::Placement { groups, peers: meta.workers.max(1) });
    Ok(Some(JobRestart { id, meta, restored: Arc::new(restored_of(&loaded.files, placement)) }))
}

/// A worker's end of the control dataflow.
pub(crate) struct Control {
    input: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<(u64, Ctl)>>>,
    mailbox: Rc<RefCell<Vec<Ctl>>>,
    round: u64,
    sent: bool,
}

impl Control {
    /// Builds the control dataflow on `worker`.
    pub(crate) fn build(worker: &mut timely::worker::Worker) -> Control {
        let mailbox: Rc<RefCell<Vec<Ctl>>> = Rc::default();
        let boxed = Rc::clone(&mailbox);
        let input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, stream) = scope.new_input::<Vec<(u64, Ctl)>>();
            stream.exchange(|(to, _)| *to).inspect(move |(_, m)| boxed.borrow_mut().push(m.clone()));
            input
        });
        Control { input, mailbox, round: 0, sent: false }
    }

    fn send(&mut self, to: usize, m: Ctl) {
        self.input.send((to as u64, m));
        self.sent = true;
    }

    /// Sends what was given: closes the input's round.
    fn flush(&mut self) {
        if std::mem::take(&mut self.sent) {
            self.round += 1;
            self.input.advance_to(self.round);
        }
    }

    fn take(&self) -> Vec<Ctl> {
        std::mem::take(&mut *self.mailbox.borrow_mut())
    }
}

/// What the leader needs to write checkpoints.
pub(crate) struct LeaderSetup {
    pub(crate) every: Duration,
    pub(crate) epoch: u64,
    pub(crate) writer: mpsc::Sender<ToWrite>,
    pub(crate) job: String,
    pub(crate) spec: String,
}

/// A worker's part of a cut: its operators' state, and its partitions' offsets.
type Part = (Vec<(String, Vec<u8>)>, Vec<(String, i32, i64)>);

struct Round {
    k: u64,
    started: Instant,
    frozen: Vec<Option<(u64, bool)>>,
    cut: Option<u64>,
    saved: Vec<Option<Part>>,
}

struct Leader {
    setup: LeaderSetup,
    last: Instant,
    /// The time of the last checkpoint written.
    written: Option<u64>,
    next_k: u64,
    round: Option<Round>,
}

/// A worker's commits, with its part in the job's checkpoints.
pub(crate) struct Aligned<C> {
    pub(crate) inner: C,
    index: usize,
    peers: usize,
    align: Rc<Alignment>,
    control: Control,
    /// The worker's inputs, for their offsets at a cut.
    inputs: Vec<(String, Rc<RefCell<eddy_kafka::operators::Unsettled>>)>,
    leader: Option<Leader>,
    reported: Option<u64>,
    saved: Option<u64>,
    metrics: Arc<Metrics>,
}

impl<C: Commits> Aligned<C> {
    pub(crate) fn new(
        inner: C,
        worker: &timely::worker::Worker,
        control: Control,
        align: Rc<Alignment>,
        inputs: &[KafkaInput],
        leader: Option<LeaderSetup>,
        metrics: Arc<Metrics>,
    ) -> Aligned<C> {
        Aligned {
            inner,
            index: worker.index(),
            peers: worker.peers(),
            align,
            control,
            inputs: inputs.iter().map(|i| (i.topic.clone(), Rc::clone(&i.unsettled))).collect(),
            leader: leader.map(|setup| Leader { setup, last: Instant::now(), written: None, next_k: 1, round: None }),
            reported: None,
            saved: None,
            metrics,
        }
    }

    fn broadcast(&mut self, m: Ctl) {
        for w in 0..self.peers {
            self.control.send(w, m.clone());
        }
    }

    /// The leader's part, after this worker's messages were read.
    fn lead(&mut self, frontier: u64, done: bool, messages: Vec<Ctl>) -> Result<()> {
        let peers = self.peers;
        let Some(leader) = self.leader.as_mut() else { return Ok(()) };
        let mut out = Vec::new();
        for m in messages {
            let Some(round) = leader.round.as_mut() else { continue };
            match m {
                Ctl::Frozen { k, worker, time, live } if k == round.k => round.frozen[worker] = Some((time, live)),
                Ctl::Saved { k, worker, parts, offsets } if k == round.k => {
                    round.saved[worker] = Some((parts, offsets))
                }
                _ => {}
            }
        }
        let stopping = self.metrics.failure().is_some();
        match leader.round.as_mut() {
            // Not before the job's frontier has left 0: the first readings of
            // a stream are stamped at time 0 whatever their `ts`, and a job that
            // waits for reference data as of a reading's `ts` (alerts) lets
            // the reference frontier run only so far ahead of its input's; a
            // cut held near 0 would hold it below those readings for good.
            None if !done
                && !stopping
                && frontier > 0
                && frontier < u64::MAX
                && leader.last.elapsed() >= leader.setup.every =>
            {
                let k = leader.next_k;
                leader.next_k += 1;
                leader.round = Some(Round {
                    k,
                    started: Instant::now(),
                    frozen: vec![None; peers],
                    cut: None,
                    saved: (0..peers).map(|_| None).collect(),
                });
                tracing::debug!(k, "checkpoint: freezing the sources");
                out.push(Ctl::Freeze(k));
            }
            Some(round) if stopping => {
                out.push(Ctl::Release(round.k));
                leader.round = None;
            }
            Some(round) if round.cut.is_none() && round.frozen.iter().all(Option::is_some) => {
                let m = round.frozen.iter().flatten().map(|(m, _)| *m).max().unwrap_or(0);
                let live = round.frozen.iter().flatten().any(|(_, live)| *live);
                tracing::trace!(k = round.k, frozen = ?round.frozen, "checkpoint: every source is frozen");
                let t = cut_after(m, leader.setup.epoch);
                if !live || t >= u64::MAX - 1 || leader.written == Some(t) {
                    // Every source has ended (the job is finishing: its
                    // operators are sending what the end of input makes), or
                    // nothing was sent since the last checkpoint: nothing to save.
                    out.push(Ctl::Release(round.k));
                    leader.round = None;
                    leader.last = Instant::now();
                } else {
                    tracing::debug!(k = round.k, t, "checkpoint: cutting");
                    round.cut = Some(t);
                    out.push(Ctl::Cut(round.k, t));
                }
            }
            Some(round) if round.saved.iter().all(Option::is_some) => {
                let t = round.cut.expect("saved after the cut");
                let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
                let mut parts = Vec::with_capacity(peers);
                for s in round.saved.drain(..) {
                    let (p, o) = s.expect("checked");
                    for (topic, partition, offset) in o {
                        offsets.entry(topic).or_default().insert(partition, offset);
                    }
                    parts.push(p);
                }
                let meta = JobMeta {
                    version: JobMeta::VERSION,
                    job: leader.setup.job.clone(),
                    spec: leader.setup.spec.clone(),
                    time: t,
                    workers: peers,
                    offsets,
                    pause_ms: round.started.elapsed().as_secs_f64() * 1e3,
                    // The leader's worker thread has the run's installed.
                    key_groups: Some(eddy_core::keys::installed()),
                };
                let meta = serde_json::to_value(&meta).expect("meta serializes");
                if leader.setup.writer.send(ToWrite::of(t, Vec::new(), parts, meta)).is_err() {
                    return Err(Error::Usage("the checkpoint writer stopped".into()));
                }
                out.push(Ctl::Release(round.k));
                leader.written = Some(t);
                leader.round = None;
                leader.last = Instant::now();
            }
            _ => {}
        }
        for m in out {
            self.broadcast(m);
        }
        Ok(())
    }
}

impl<C: Commits> Commits for Aligned<C> {
    fn committed(&mut self, frontier: u64, done: bool) -> Result<Next> {
        let mut for_leader = Vec::new();
        for m in self.control.take() {
            match m {
                Ctl::Freeze(k) => self.align.set(Phase::Freeze(k)),
                Ctl::Cut(k, t) => self.align.set(Phase::Cut(k, t)),
                Ctl::Release(_) => self.align.set(Phase::Idle),
                m => for_leader.push(m),
            }
        }
        match self.align.phase() {
            Phase::Freeze(k) if self.reported != Some(k) => {
                if let Some((time, live)) = self.align.frozen(k) {
                    self.reported = Some(k);
                    self.control.send(0, Ctl::Frozen { k, worker: self.index, time, live });
                }
            }
            Phase::Cut(k, t) if self.saved != Some(k) && frontier >= t - 1 && self.metrics.failure().is_none() => {
                self.saved = Some(k);
                let parts = snapshot::save_all().map_err(|e| Error::Usage(e.to_string()))?;
                let mut offsets = Vec::new();
                for (topic, unsettled) in &self.inputs {
                    for (p, o) in unsettled.borrow().resume_at(t) {
                        offsets.push((topic.clone(), p, o));
                    }
                }
                tracing::trace!(worker = self.index, k, t, "checkpoint: saved");
                self.control.send(0, Ctl::Saved { k, worker: self.index, parts, offsets });
            }
            Phase::Cut(k, t) if self.saved != Some(k) => {
                tracing::trace!(worker = self.index, k, t, frontier, "checkpoint: waiting for the cut to drain");
            }
            _ => {}
        }
        self.lead(frontier, done, for_leader)?;
        self.control.flush();
        self.inner.committed(frontier, done)
    }

    fn finish(&mut self) -> Result<()> {
        self.inner.finish()
    }
}
