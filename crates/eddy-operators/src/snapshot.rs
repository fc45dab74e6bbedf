//! Operator state in checkpoints: what a stateful operator saves, and how a
//! restarted run gives it back.
//!
//! A checkpoint is taken at a time `t` when the dataflow is quiet: the
//! source holds its next line back, every record before `t` has been
//! processed by every operator on every worker, and no record at `t` or
//! later exists yet. So no operator holds a record in flight, and its state
//! is exactly "every input before `t` applied". The runner then asks every
//! operator registered on its worker for that state ([`save_all`]).
//!
//! An operator registers its state, kept behind an `Rc<RefCell<_>>` that its
//! closure shares, with [`register`] when it is built. If the run restores a
//! checkpoint, [`register`] first gives it back the state saved under the same
//! name by every worker of the run that wrote it: keyed state is routed by
//! device, so a worker keeps only the devices it owns now ([`Owner`]), and a
//! checkpoint written at `-w 2` restores at `-w 1` or `-w 4`.
//!
//! The registry is per worker thread: the runner [`install`]s it before the
//! worker builds its dataflow, so that operators need no extra argument.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use eddy_core::ids::DeviceId;
use eddy_core::keys::{KeyGroups, Placement};
use eddy_core::reading::Position;

/// State an operator keeps across a checkpoint.
pub trait Checkpointed: 'static {
    /// The state as saved, decoded.
    type Saved: DeserializeOwned;

    /// The state now (the dataflow is quiet: see the module docs), encoded
    /// with [`encode`] as something that decodes as [`Self::Saved`]
    /// (usually a view that borrows the state, so that a checkpoint does
    /// not copy it first).
    fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error>;

    /// Merges `saved`, the state one worker of the checkpointed run saved,
    /// keeping only what `owner` owns; called once per such worker, on a
    /// state that is new.
    fn restore(&mut self, saved: Self::Saved, owner: &Owner);
}

/// Encodes `value` for [`Checkpointed::save`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, eddy_checkpoint::Error> {
    eddy_checkpoint::encode(value)
}

/// Serializes the entries of a map (or any iterator of pairs) as a sequence
/// of pairs, which decodes as a `Vec<(K, V)>`.
pub struct Pairs<I>(pub std::cell::Cell<Option<I>>);

impl<I> Pairs<I> {
    /// The entries `iter` yields.
    pub fn new(iter: I) -> Pairs<I> {
        Pairs(std::cell::Cell::new(Some(iter)))
    }
}

impl<I, K, V> Serialize for Pairs<I>
where
    I: Iterator<Item = (K, V)>,
    K: Serialize,
    V: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let iter = self.0.take().ok_or_else(|| serde::ser::Error::custom("Pairs serialized twice"))?;
        s.collect_seq(iter)
    }
}

/// Which devices a worker owns: those of its key groups, which every
/// exchange by key sends it (see [`eddy_core::keys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The worker's index.
    pub index: usize,
    /// The number of workers.
    pub peers: usize,
    /// The job's key groups.
    pub groups: KeyGroups,
}

impl Owner {
    /// Worker `index` of `peers`, with the key groups installed on this
    /// thread.
    pub fn new(index: usize, peers: usize) -> Owner {
        Owner { index, peers, groups: eddy_core::keys::installed() }
    }

    /// Where keys go in this worker's run.
    pub fn placement(&self) -> Placement {
        Placement { groups: self.groups, peers: self.peers.max(1) }
    }

    /// True when `device`'s records come to this worker.
    pub fn owns(&self, device: DeviceId) -> bool {
        self.placement().worker(device) as usize == self.index
    }

    /// True when the key with stable hash `hash` is this worker's.
    pub fn owns_hash(&self, hash: u64) -> bool {
        self.placement().worker_of_hash(hash) as usize == self.index
    }
}

/// A checkpoint's saved state, by operator name: the payload each worker of
/// the run that wrote it saved, in worker order.
#[derive(Debug, Default)]
pub struct Restored {
    /// By operator name: (worker, payload), in worker order.
    parts: BTreeMap<String, Vec<(usize, Vec<u8>)>>,
    /// The key groups and worker count of the run that wrote it, when
    /// known: a restoring worker then reads only the parts of the workers
    /// whose key groups overlap its own.
    placement: Option<Placement>,
}

impl Restored {
    /// Saved state of a run whose key groups and worker count were
    /// `placement`.
    pub fn placed(placement: Placement) -> Restored {
        Restored { parts: BTreeMap::new(), placement: Some(placement) }
    }

    /// Whether worker `owner` must read the part saved by worker `from`
    /// (every part, unless the writing run's placement is known and has the
    /// same key groups).
    pub fn reads(&self, owner: &Owner, from: usize) -> bool {
        match self.placement {
            Some(p) if p.groups == owner.groups => owner.placement().overlaps(owner.index, from, p.peers),
            _ => true,
        }
    }

    /// Adds what the next worker saved for operator `name` (the first call
    /// for a name is worker 0's).
    pub fn insert(&mut self, name: &str, payload: Vec<u8>) {
        let parts = self.parts.entry(name.to_string()).or_default();
        let worker = parts.last().map_or(0, |(w, _)| w + 1);
        parts.push((worker, payload));
    }

    /// Adds what worker `worker` saved for operator `name`.
    pub fn insert_from(&mut self, worker: usize, name: &str, payload: Vec<u8>) {
        let parts = self.parts.entry(name.to_string()).or_default();
        let at = parts.partition_point(|(w, _)| *w < worker);
        parts.insert(at, (worker, payload));
    }

    /// The operator names with saved state.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.keys().map(String::as_str)
    }
}

/// A registry problem: a name registered twice, or saved state that does
/// not decode (a checkpoint of an incompatible version of the operator).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Two operators of one worker registered the same name.
    #[error("two operators keep state under the name {0:?}: give the jobs different names")]
    Duplicate(String),
    /// The saved state of `name` did not decode.
    #[error("the saved state of operator {name:?} does not decode: {reason}")]
    Decode {
        /// The operator.
        name: String,
        /// Why.
        reason: String,
    },
    /// The state of `name` could not be encoded.
    #[error("the state of operator {name:?} could not be encoded: {reason}")]
    Encode {
        /// The operator.
        name: String,
        /// Why.
        reason: String,
    },
}

type Saver = Box<dyn Fn() -> Result<Vec<u8>, SnapshotError>>;

struct Registry {
    owner: Owner,
    barrier: Option<Arc<Barrier>>,
    alignment: Option<Rc<Alignment>>,
    restored: Option<Arc<Restored>>,
    savers: Vec<(String, Saver)>,
    errors: Vec<SnapshotError>,
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// Starts this worker's registry: operators built from now on register
/// here, and get their state back from `restored` when given.
pub fn install(owner: Owner, restored: Option<Arc<Restored>>, barrier: Option<Arc<Barrier>>) {
    REGISTRY.with(|r| {
        *r.borrow_mut() =
            Some(Registry { owner, restored, barrier, alignment: None, savers: Vec::new(), errors: Vec::new() })
    });
}

/// Gives this worker's registry (installed first) the [`Alignment`] its
/// sources follow: a run whose cuts are agreed between workers rather than
/// made by one source (the Kafka jobs).
pub fn install_alignment(alignment: Rc<Alignment>) {
    REGISTRY.with(|r| {
        if let Some(reg) = r.borrow_mut().as_mut() {
            reg.alignment = Some(alignment);
        }
    });
}

/// This worker's [`Alignment`], if its run has one.
pub fn alignment() -> Option<Rc<Alignment>> {
    REGISTRY.with(|r| r.borrow().as_ref()?.alignment.clone())
}

/// The time `t` of the cut in progress, if any: an operator that holds a
/// capability below `t - 1` for something it may send later (a timer) moves
/// it up to `t - 1` once its input has passed `t - 1`, so that the cut
/// completes; what it sends later it then sends at `t - 1` or after.
pub fn cut() -> Option<u64> {
    REGISTRY.with(|r| {
        let r = r.borrow();
        let reg = r.as_ref()?;
        if let Some(a) = reg.alignment.as_ref() {
            return a.cut_time();
        }
        let t = reg.barrier.as_ref()?.pending.load(Ordering::SeqCst);
        (t != u64::MAX).then_some(t)
    })
}

/// Ends this worker's registry (at the end of a run).
pub fn uninstall() {
    REGISTRY.with(|r| *r.borrow_mut() = None);
}

/// True when a registry is installed on this thread: a run that takes
/// checkpoints.
pub fn active() -> bool {
    REGISTRY.with(|r| r.borrow().is_some())
}

/// Registers `state` under `name` (unique on the worker), restoring it first
/// from the checkpoint the run started from, if any. Without a registry
/// (a run without checkpoints) it does nothing.
pub fn register<T: Checkpointed>(name: &str, state: &Rc<RefCell<T>>) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let Some(reg) = r.as_mut() else { return };
        if reg.savers.iter().any(|(n, _)| n == name) {
            reg.errors.push(SnapshotError::Duplicate(name.to_string()));
            return;
        }
        if let Some((restored, parts)) = reg.restored.as_ref().and_then(|x| Some((x, x.parts.get(name)?))) {
            let mut s = state.borrow_mut();
            for (from, p) in parts {
                if !restored.reads(&reg.owner, *from) {
                    continue;
                }
                match eddy_checkpoint::decode::<T::Saved>(p) {
                    Ok(saved) => s.restore(saved, &reg.owner),
                    Err(e) => reg.errors.push(SnapshotError::Decode { name: name.to_string(), reason: e.to_string() }),
                }
            }
        }
        let state = Rc::clone(state);
        let owned = name.to_string();
        reg.savers.push((
            name.to_string(),
            Box::new(move || {
                state.borrow().save().map_err(|e| SnapshotError::Encode { name: owned.clone(), reason: e.to_string() })
            }),
        ));
    });
}

/// The problems registering met (restoring state that does not decode, a
/// name twice), taken: the runner fails the run with the first.
pub fn take_errors() -> Vec<SnapshotError> {
    REGISTRY.with(|r| r.borrow_mut().as_mut().map(|reg| std::mem::take(&mut reg.errors)).unwrap_or_default())
}

/// Every registered operator's state, encoded, by name.
pub fn save_all() -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    REGISTRY.with(|r| {
        let r = r.borrow();
        let Some(reg) = r.as_ref() else { return Ok(Vec::new()) };
        reg.savers.iter().map(|(n, save)| Ok((n.clone(), save()?))).collect()
    })
}

/// This worker's [`Owner`], when a registry is installed.
pub fn owner() -> Option<Owner> {
    REGISTRY.with(|r| r.borrow().as_ref().map(|reg| reg.owner))
}

/// The checkpoint barrier of a run, shared by its workers.
///
/// When a checkpoint is due ([`Barrier::due`]) and the source's time moves
/// on to `t` (a multiple of the epoch, at the input position `p`), the source
/// [`cut`](Barrier::cut)s: it holds its capability at `t - 1` rather than
/// `t` and reads nothing more. Every record before `t` then drains through
/// the dataflow, and no record at or after `t - 1` exists (dataflow times are
/// multiples of the epoch, and every operator emits at a time it holds, at
/// or after its input's). Once a worker's probe has passed `t - 1`, its
/// runner saves every operator of the worker ([`save_all`]) and
/// [`deposit`](Barrier::deposit)s the parts; the last worker gets the whole
/// cut, records the outputs' positions, hands it to the writer and
/// [`release`](Barrier::release)s the source, which moves on to `t`.
pub struct Barrier {
    every: Duration,
    peers: usize,
    /// The time of the cut in progress, `u64::MAX` for none: what the
    /// runners look at after every step, without a lock.
    pending: AtomicU64,
    inner: parking_lot::Mutex<BarrierInner>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier").field("every", &self.every).field("peers", &self.peers).finish_non_exhaustive()
    }
}

struct BarrierInner {
    last: Instant,
    cut: Option<Cut>,
}

/// A worker's saved state: (operator name, encoded state) pairs.
pub type Parts = Vec<(String, Vec<u8>)>;

struct Cut {
    time: u64,
    position: Position,
    offset: Option<u64>,
    started: Instant,
    parts: Vec<Option<Parts>>,
}

/// A cut every worker has saved: what a checkpoint is made of.
pub struct Complete {
    /// Every record before this time is in the outputs; the source goes on
    /// at it.
    pub time: u64,
    /// The input position where the source goes on.
    pub position: Position,
    /// The byte offset of that position in the input, if it has one.
    pub offset: Option<u64>,
    /// When the source cut (for the pause it cost).
    pub started: Instant,
    /// Each worker's parts: (operator name, encoded state), in worker order.
    pub parts: Vec<Vec<(String, Vec<u8>)>>,
}

impl Barrier {
    /// A barrier for `peers` workers, cutting at most once every `every`.
    pub fn new(every: Duration, peers: usize) -> Barrier {
        Barrier {
            every,
            peers,
            pending: AtomicU64::new(u64::MAX),
            inner: parking_lot::Mutex::new(BarrierInner { last: Instant::now(), cut: None }),
        }
    }

    /// The source: true when a checkpoint is due (none in progress, and the
    /// interval has passed since the last).
    pub fn due(&self) -> bool {
        let inner = self.inner.lock();
        inner.cut.is_none() && inner.last.elapsed() >= self.every
    }

    /// The source: cuts at time `t`, where input position `position` (at
    /// byte `offset`, if known) begins.
    pub fn cut(&self, t: u64, position: Position, offset: Option<u64>) {
        let mut inner = self.inner.lock();
        inner.cut = Some(Cut { time: t, position, offset, started: Instant::now(), parts: vec![None; self.peers] });
        self.pending.store(t, Ordering::SeqCst);
    }

    /// The source: true while the cut at `t` is not released.
    pub fn holds(&self, t: u64) -> bool {
        self.pending.load(Ordering::SeqCst) == t
    }

    /// A runner: the time of the cut in progress that worker `index` has
    /// not saved for yet.
    pub fn wanted(&self, index: usize) -> Option<u64> {
        let t = self.pending.load(Ordering::SeqCst);
        if t == u64::MAX {
            return None;
        }
        let inner = self.inner.lock();
        let cut = inner.cut.as_ref()?;
        cut.parts.get(index).is_some_and(Option::is_none).then_some(cut.time)
    }

    /// A runner: worker `index`'s parts for the cut in progress. Returns
    /// the whole cut to the worker that deposits last.
    pub fn deposit(&self, index: usize, parts: Vec<(String, Vec<u8>)>) -> Option<Complete> {
        let mut inner = self.inner.lock();
        let cut = inner.cut.as_mut()?;
        cut.parts[index] = Some(parts);
        if cut.parts.iter().any(Option::is_none) {
            return None;
        }
        let cut = inner.cut.take().expect("a cut");
        Some(Complete {
            time: cut.time,
            position: cut.position,
            offset: cut.offset,
            started: cut.started,
            parts: cut.parts.into_iter().map(|p| p.unwrap_or_default()).collect(),
        })
    }

    /// The worker that deposited last: the source goes on. Also called
    /// when a run fails, so that the source does not wait for good.
    pub fn release(&self) {
        let mut inner = self.inner.lock();
        inner.cut = None;
        inner.last = Instant::now();
        self.pending.store(u64::MAX, Ordering::SeqCst);
    }
}

/// A cut agreed between the workers of a run whose sources read in parallel
/// (the Kafka jobs, across threads and processes), as one worker's sources
/// see it. The runner moves it through its phases as the workers agree
/// (over a control dataflow); each source obeys it:
///
/// 1. [`Phase::Freeze`]: the source reads nothing more and
///    [`acknowledge`](Alignment::acknowledge)s with the largest time it has
///    sent at. The largest over every source of every worker is `m`. (A
///    source sends a record only once its time has passed it, so `m` is
///    below every source's time, and the cut below never waits for a time
///    the sources have not reached.)
/// 2. [`Phase::Cut`] at `t`, the first epoch boundary after `m`: the source
///    reads again, sends what comes before `t` and keeps back what comes at
///    or after it, and holds its capability at `t - 1` (no record is ever at
///    `t - 1`: dataflow times are multiples of the epoch). Every record
///    before `t` then drains, and each worker's runner saves its operators
///    once its probe passes `t - 1`.
/// 3. [`Phase::Idle`] again (released once every worker has saved): the
///    source sends what it kept back, and moves on.
#[derive(Debug, Default)]
pub struct Alignment {
    inner: RefCell<AlignInner>,
}

#[derive(Debug, Default)]
struct AlignInner {
    phase: Phase,
    sources: usize,
    acks: usize,
    max_time: u64,
    /// The largest time sources that have ended sent at.
    ended: u64,
}

/// Where a worker is in an agreed cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// No cut in progress.
    #[default]
    Idle,
    /// Cut `k` is being agreed: sources read nothing and say how far they are.
    Freeze(u64),
    /// Cut `k` is at time `t`: sources hold their capabilities at `t - 1`.
    Cut(u64, u64),
}

impl Alignment {
    /// A source of this worker: counted, so that a freeze waits for its
    /// acknowledgement.
    pub fn register_source(&self) {
        self.inner.borrow_mut().sources += 1;
    }

    /// A source of this worker that has ended, having sent at times up to
    /// `sent`: no longer waited for, but a cut still comes after `sent`.
    pub fn unregister_source(&self, sent: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.sources = inner.sources.saturating_sub(1);
        inner.ended = inner.ended.max(sent);
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.inner.borrow().phase
    }

    /// The time of the cut in progress, once it is agreed.
    pub fn cut_time(&self) -> Option<u64> {
        match self.phase() {
            Phase::Cut(_, t) => Some(t),
            _ => None,
        }
    }

    /// The runner: moves to `phase` (a new freeze forgets the last one's
    /// acknowledgements).
    pub fn set(&self, phase: Phase) {
        let mut inner = self.inner.borrow_mut();
        if let Phase::Freeze(_) = phase {
            if inner.phase != phase {
                inner.acks = 0;
                inner.max_time = 0;
            }
        }
        inner.phase = phase;
    }

    /// A source, frozen for cut `k`: it has stopped reading and has sent
    /// nothing after `time`. Once per source and freeze.
    pub fn acknowledge(&self, k: u64, time: u64) {
        let mut inner = self.inner.borrow_mut();
        if inner.phase == Phase::Freeze(k) {
            inner.acks += 1;
            inner.max_time = inner.max_time.max(time);
        }
    }

    /// The runner: once every source of the worker has acknowledged freeze
    /// `k`, the largest time any of them (or a source that has ended) sent
    /// at, and whether any source of the worker is still reading.
    pub fn frozen(&self, k: u64) -> Option<(u64, bool)> {
        let inner = self.inner.borrow();
        (inner.phase == Phase::Freeze(k) && inner.acks >= inner.sources)
            .then_some((inner.max_time.max(inner.ended), inner.sources > 0))
    }
}

/// The time of a cut after every time up to `m`: the first multiple of
/// `epoch` (at least 2) after `m`. Nothing is ever at `t - 1`, and every time
/// up to `m` comes before it.
pub fn cut_after(m: u64, epoch: u64) -> u64 {
    let e = epoch.max(2);
    (m / e).saturating_add(1).saturating_mul(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Default)]
    struct Counts(BTreeMap<DeviceId, u64>);

    #[derive(Deserialize)]
    struct Saved(Vec<(DeviceId, u64)>);

    impl Checkpointed for Counts {
        type Saved = Saved;
        fn save(&self) -> Result<Vec<u8>, eddy_checkpoint::Error> {
            encode(&Pairs::new(self.0.iter()))
        }
        fn restore(&mut self, saved: Saved, owner: &Owner) {
            self.0.extend(saved.0.into_iter().filter(|(d, _)| owner.owns(*d)));
        }
    }

    /// State saved by two workers restores on three, each keeping its own
    /// devices, and nothing is lost or doubled.
    #[test]
    fn state_saved_by_two_workers_is_shared_out_among_three() {
        let devices: Vec<DeviceId> = (0..100).map(|i| DeviceId::intern(&format!("snap-{i}"))).collect();
        let mut restored = Restored::placed(Placement { groups: KeyGroups::DEFAULT, peers: 2 });
        for w in 0..2 {
            install(Owner::new(w, 2), None, None);
            let state = Rc::new(RefCell::new(Counts::default()));
            register("counts", &state);
            let owner = Owner::new(w, 2);
            state.borrow_mut().0.extend(devices.iter().filter(|d| owner.owns(**d)).map(|d| (*d, d.route() % 7)));
            for (name, bytes) in save_all().unwrap() {
                restored.insert(&name, bytes);
            }
        }
        let restored = Arc::new(restored);
        let mut all = BTreeMap::new();
        for w in 0..3 {
            install(Owner::new(w, 3), Some(Arc::clone(&restored)), None);
            let state = Rc::new(RefCell::new(Counts::default()));
            register("counts", &state);
            assert!(take_errors().is_empty());
            for (d, n) in state.borrow().0.iter() {
                assert!(Owner::new(w, 3).owns(*d));
                assert!(all.insert(*d, *n).is_none(), "{d} restored twice");
            }
        }
        assert_eq!(all.len(), devices.len());
        assert!(devices.iter().all(|d| all[d] == d.route() % 7));
        // Each worker read only the parts of the workers whose key groups
        // overlap its own: at -w 4, one part each.
        assert!(restored.reads(&Owner::new(1, 3), 0) && restored.reads(&Owner::new(1, 3), 1));
        assert!(!restored.reads(&Owner::new(0, 3), 1));
        let four: Vec<usize> =
            (0..4).map(|w| (0..2).filter(|f| restored.reads(&Owner::new(w, 4), *f)).count()).collect();
        assert_eq!(four, [1, 1, 1, 1]);
        // Of unknown placement (another number of key groups), every part.
        let other = Owner { groups: KeyGroups::new(128).unwrap(), ..Owner::new(0, 4) };
        assert!(restored.reads(&other, 0) && restored.reads(&other, 1));
        uninstall();
    }

    /// A freeze waits for every source of the worker; the cut comes after
    /// the largest time any sent, at an epoch boundary, so that nothing is
    /// ever at `t - 1`.
    #[test]
    fn an_alignment_waits_for_every_source_and_cuts_after_the_largest_time() {
        let a = Alignment::default();
        a.register_source();
        a.register_source();
        a.set(Phase::Freeze(1));
        a.acknowledge(1, 120);
        assert_eq!(a.frozen(1), None, "one source has not acknowledged");
        a.acknowledge(2, 999); // another freeze's: ignored
        assert_eq!(a.frozen(1), None);
        a.acknowledge(1, 60);
        assert_eq!(a.frozen(1), Some((120, true)));
        let t = cut_after(120, 60);
        assert_eq!(t, 180);
        a.set(Phase::Cut(1, t));
        assert_eq!((a.cut_time(), a.frozen(1)), (Some(180), None));
        a.set(Phase::Idle);
        a.unregister_source(300);
        a.set(Phase::Freeze(2));
        assert_eq!(a.frozen(2), None, "a new freeze forgets the last one's acknowledgements");
        a.acknowledge(2, 0);
        assert_eq!(a.frozen(2), Some((300, true)), "a source that ended still counts");
        a.set(Phase::Idle);
        a.unregister_source(0);
        a.set(Phase::Freeze(3));
        assert_eq!(a.frozen(3), Some((300, false)), "no source reads any more");
        assert_eq!(cut_after(0, 60), 60);
        assert_eq!(cut_after(179, 60), 180);
        assert_eq!(cut_after(5, 1), 6, "an epoch under 2 counts as 2");
    }

    #[test]
    fn a_name_twice_and_state_that_does_not_decode_are_errors() {
        let mut restored = Restored::default();
        restored.insert("counts", vec![0xff, 0xff, 0xff]);
        install(Owner::new(0, 1), Some(Arc::new(restored)), None);
        let a = Rc::new(RefCell::new(Counts::default()));
        register("counts", &a);
        register("counts", &a);
        let errors = take_errors();
        assert!(matches!(errors[0], SnapshotError::Decode { .. }), "{errors:?}");
        assert!(matches!(errors[1], SnapshotError::Duplicate(_)), "{errors:?}");
        uninstall();
        assert!(!active());
    }
}
