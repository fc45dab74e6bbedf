//! Checkpoints of an embedded run: taking them, and restarting from one.
//!
//! Every `CheckpointOptions::every` the ingest source cuts at an epoch
//! boundary `t` (`eddy_operators::snapshot::Barrier`). Once each worker's
//! probe has passed `t - 1` its runner saves every stateful operator; the
//! worker that saves last adds what the process holds (the JSON-lines
//! outputs' lengths and records, the run's counters, the interned names)
//! and hands the whole to a writer thread, which writes it to the store
//! (`eddy_checkpoint::Store`) and keeps the newest `keep`. The source goes
//! on as soon as the state is encoded; the writing does not hold it.
//!
//! A run into an `OUT` whose store holds a complete checkpoint restarts from
//! it: the names are interned again in their order, each JSON-lines output
//! is cut back to its recorded length, the input is reopened at the
//! recorded line, and each operator gets its state back when it is built.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use eddy_checkpoint::Store;
use eddy_core::ids::{Channel, DeviceId};
use eddy_core::keys::{KeyGroups, Placement};
use eddy_core::reading::Position;
use eddy_operators::metrics::Metrics;
use eddy_operators::snapshot::{Barrier, Complete, Restored};

use crate::error::{Error, Result};
use crate::runner::{Commits, Next};

/// The checkpoint settings of a run.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// How often (processing time) to take one; `None` takes none.
    pub every: Option<Duration>,
    /// The store: a directory, a `file://` or an `s3://bucket/prefix` URL;
    /// `None` is `OUT/_checkpoints`.
    pub store: Option<String>,
    /// How many complete checkpoints to keep (at least 2).
    pub keep: usize,
    /// The key groups asked for (`--key-groups`); `None`: those of the
    /// checkpoint restored, or the default ([`key_groups`]).
    pub key_groups: Option<KeyGroups>,
}

impl Default for CheckpointOptions {
    /// Every 10 s into `OUT/_checkpoints`, keeping 3.
    fn default() -> Self {
        CheckpointOptions { every: Some(Duration::from_secs(10)), store: None, keep: 3, key_groups: None }
    }
}

impl CheckpointOptions {
    /// No checkpoints.
    pub fn off() -> Self {
        CheckpointOptions { every: None, ..CheckpointOptions::default() }
    }

    /// The store's location for a run into `out`.
    pub fn location(&self, out: &Path) -> String {
        self.store.clone().unwrap_or_else(|| out.join(STORE_DIR).display().to_string())
    }
}

/// The store of `eddy replay`, inside its output directory.
pub const STORE_DIR: &str = "_checkpoints";

/// A JSON-lines output's position in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPosition {
    /// Its length in bytes.
    pub bytes: u64,
    /// The records those bytes hold.
    pub records: u64,
}

/// The run's counters in a checkpoint (what `summary.json` adds up).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Lines read.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Valid readings.
    pub valid: u64,
    /// Late readings.
    pub late: u64,
    /// Future readings.
    pub future: u64,
    /// Dead letters.
    pub deadletter: u64,
    /// On-time readings with junk.
    pub junk: u64,
    /// The same, per device.
    pub junk_by_device: BTreeMap<String, u64>,
}

impl Counters {
    /// `m`'s counters now.
    pub fn of(m: &Metrics) -> Counters {
        Counters {
            lines: Metrics::get(&m.lines),
            bytes: Metrics::get(&m.bytes),
            valid: Metrics::get(&m.valid),
            late: Metrics::get(&m.late),
            future: Metrics::get(&m.future),
            deadletter: Metrics::get(&m.deadletter),
            junk: Metrics::get(&m.junk),
            junk_by_device: m.junk_by_device.lock().iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Sets `m`'s counters to these.
    pub fn restore(&self, m: &Metrics) {
        Metrics::add(&m.lines, self.lines);
        Metrics::add(&m.bytes, self.bytes);
        Metrics::add(&m.valid, self.valid);
        Metrics::add(&m.late, self.late);
        Metrics::add(&m.future, self.future);
        Metrics::add(&m.deadletter, self.deadletter);
        Metrics::add(&m.junk, self.junk);
        m.junk_by_device.lock().extend(self.junk_by_device.iter().map(|(k, v)| (k.clone(), *v)));
    }
}

/// The manifest's `meta` of an `eddy replay` checkpoint: where the input
/// and every output were, and what the run was.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayMeta {
    /// [`ReplayMeta::VERSION`].
    pub version: u32,
    /// The readings file.
    pub input: String,
    /// The position of the next line to read.
    pub position: Position,
    /// Its byte offset in the (decompressed) input, when it has one.
    pub offset: Option<u64>,
    /// The time the source goes on at: every record before it is in the outputs.
    pub time: u64,
    /// Workers of the run that wrote it.
    pub workers: usize,
    /// Each job's spec and the outputs written, as text: a restart with
    /// other specs is refused, naming what differs.
    pub specs: BTreeMap<String, String>,
    /// Each JSON-lines output's position.
    pub outputs: BTreeMap<String, OutputPosition>,
    /// The run's counters.
    pub counters: Counters,
    /// How long the source was held for it, milliseconds.
    pub pause_ms: f64,
    /// The key groups of the run (absent in checkpoints of before key groups).
    #[serde(default)]
    pub key_groups: Option<KeyGroups>,
}

impl ReplayMeta {
    /// The current version.
    pub const VERSION: u32 = 1;
}

/// The state file holding the interned names.
const NAMES: &str = "names";

/// The interned device ids and channels, in index order.
#[derive(Serialize, Deserialize)]
struct Names {
    devices: Vec<String>,
    channels: Vec<String>,
}

/// A checkpoint to restart from, read and checked.
pub struct Restart {
    /// The id in the store.
    pub id: u64,
    /// Its record.
    pub meta: ReplayMeta,
    /// The operators' saved state.
    pub restored: Arc<Restored>,
}

/// Reads the newest complete checkpoint of `store`, if any, and checks that
/// it fits this run (`specs`); interns its names in their order.
pub fn load(store: &Store, specs: &BTreeMap<String, String>, input: &str) -> Result<Option<Restart>> {
    let Some(loaded) = store.load_latest().map_err(checkpoint_error)? else { return Ok(None) };
    for (id, why) in &loaded.skipped {
        tracing::warn!(checkpoint = id, reason = %why, "Skipped a checkpoint that does not verify; using an older one");
    }
    if !loaded.skipped.is_empty() {
        eprintln!(
            "warning: {} newer checkpoint(s) did not verify ({}); restarting from checkpoint {}",
            loaded.skipped.len(),
            loaded.skipped.iter().map(|(id, e)| format!("{id}: {e}")).collect::<Vec<_>>().join("; "),
            loaded.manifest.id
        );
    }
    let id = loaded.manifest.id;
    let meta: ReplayMeta = serde_json::from_value(loaded.manifest.meta.clone()).map_err(|e| {
        Error::Usage(format!("checkpoint {id} in {}: not an eddy replay checkpoint: {e}", store.location()))
    })?;
    if meta.version != ReplayMeta::VERSION {
        return Err(Error::Usage(format!(
            "checkpoint {id}: version {} (this eddy reads {})",
            meta.version,
            ReplayMeta::VERSION
        )));
    }
    if meta.input != input {
        return Err(Error::Usage(format!(
            "{} holds a checkpoint of input {}, not of {input}: use another --out (or delete the store)",
            store.location(),
            meta.input
        )));
    }
    let differ: Vec<String> = specs
        .iter()
        .filter(|(k, v)| meta.specs.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(meta.specs.keys().filter(|k| !specs.contains_key(*k)).cloned())
        .collect();
    if !differ.is_empty() {
        let detail: Vec<String> = differ
            .iter()
            .map(|k| {
                format!(
                    "{k}: was {} now {}",
                    meta.specs.get(k).map_or("absent", String::as_str),
                    specs.get(k).map_or("absent", String::as_str)
                )
            })
            .collect();
        return Err(Error::Usage(format!(
            "checkpoint {id} in {} was taken with other specs ({}); restart with the same specs, or delete the store to start over\n{}",
            store.location(),
            differ.join(", "),
            detail.join("\n")
        )));
    }
    let names: Names = match loaded.file(NAMES) {
        Some(bytes) => eddy_checkpoint::decode(bytes).map_err(checkpoint_error)?,
        None => return Err(Error::Usage(format!("checkpoint {id}: has no {NAMES} file"))),
    };
    for d in &names.devices {
        DeviceId::intern(d);
    }
    for c in &names.channels {
        Channel::intern(c);
    }
    let placement = meta.key_groups.map(|groups| Placement { groups, peers: meta.workers.max(1) });
    Ok(Some(Restart { id, meta, restored: Arc::new(restored_of(&loaded.files, placement)) }))
}

pub(crate) fn checkpoint_error(e: eddy_checkpoint::Error) -> Error {
    Error::Usage(format!("checkpoint: {e}"))
}

/// What the writer thread writes: one checkpoint.
pub(crate) struct ToWrite {
    /// The dataflow time it was taken at.
    pub(crate) time: u64,
    /// Its state files: (name, payload).
    pub(crate) files: Vec<(String, Vec<u8>)>,
    /// The manifest's `meta`.
    pub(crate) meta: serde_json::Value,
}

impl ToWrite {
    /// A cut's files: each worker's parts as `<worker>-<operator>`, after `extra`.
    pub(crate) fn of(
        time: u64,
        extra: Vec<(String, Vec<u8>)>,
        parts: Vec<Vec<(String, Vec<u8>)>>,
        meta: serde_json::Value,
    ) -> ToWrite {
        let mut files = extra;
        for (worker, parts) in parts.into_iter().enumerate() {
            files.extend(parts.into_iter().map(|(name, bytes)| (format!("{worker}-{name}"), bytes)));
        }
        ToWrite { time, files, meta }
    }
}

/// The operators' saved state in a checkpoint's files (`<worker>-<operator>`),
/// written by a run of `placement` (when its key groups are known).
pub(crate) fn restored_of(files: &BTreeMap<String, Vec<u8>>, placement: Option<Placement>) -> Restored {
    let mut restored = placement.map_or_else(Restored::default, Restored::placed);
    for (file, payload) in files {
        let Some((worker, name)) = file.split_once('-') else { continue };
        if let Ok(worker) = worker.parse::<usize>() {
            restored.insert_from(worker, name, payload.clone());
        }
    }
    restored
}

/// The key groups of a run: those of the checkpoint it restores (`saved`,
/// `None` for one taken before key groups were recorded), else `asked`
/// (`--key-groups`), else the default. A job keeps the key groups it first
/// started with, so an `asked` other than the checkpoint's is refused.
/// `workers` (over all processes) must not exceed them.
pub fn key_groups(
    asked: Option<KeyGroups>,
    saved: Option<(u64, Option<KeyGroups>)>,
    location: &str,
    workers: usize,
) -> Result<KeyGroups> {
    let groups = match (asked, saved) {
        (Some(a), Some((id, Some(s)))) if a != s => {
            return Err(Error::Usage(format!(
                "checkpoint {id} in {location} was taken with {s} key groups, and --key-groups asks for {a}: \
                 a job keeps the key groups it was first started with (leave out --key-groups, or delete the store to start over)"
            )))
        }
        (_, Some((_, Some(s)))) => s,
        (Some(a), _) => a,
        (None, _) => KeyGroups::DEFAULT,
    };
    groups.check_workers(workers).map_err(|e| Error::Usage(format!("--key-groups: {e}")))?;
    Ok(groups)
}

/// The writer thread: writes checkpoints to the store in order, keeps the
/// newest `keep`, and reports the first failure.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<ToWrite>>,
    thread: Option<std::thread::JoinHandle<std::result::Result<u64, String>>>,
}

impl Writer {
    pub(crate) fn start(store: Store, keep: usize) -> Result<Writer> {
        let mut next = store.next_id().map_err(checkpoint_error)?;
        let (tx, rx) = mpsc::channel::<ToWrite>();
        let thread = std::thread::Builder::new()
            .name("eddy-checkpoints".into())
            .spawn(move || {
                let mut written = 0;
                for w in rx {
                    let started = std::time::Instant::now();
                    let bytes: usize = w.files.iter().map(|(_, b)| b.len()).sum();
                    let write = || -> eddy_checkpoint::Result<()> {
                        let mut p = store.begin(next, w.time)?;
                        for (name, bytes) in &w.files {
                            p.put(name, bytes)?;
                        }
                        p.commit(w.meta)?;
                        store.gc(keep.max(2))?;
                        Ok(())
                    };
                    write().map_err(|e| e.to_string())?;
                    // benches/checkpoints.sh reads the size and write time here.
                    tracing::debug!(
                        checkpoint = next,
                        time = w.time,
                        bytes,
                        write_ms = started.elapsed().as_secs_f64() * 1e3,
                        "Checkpoint written"
                    );
                    next += 1;
                    written += 1;
                }
                Ok(written)
            })
            .map_err(|e| Error::Usage(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(Writer { tx: Some(tx), thread: Some(thread) })
    }

    pub(crate) fn sender(&self) -> mpsc::Sender<ToWrite> {
        self.tx.clone().expect("running")
    }

    /// Waits for every checkpoint handed over; returns how many were written.
    pub(crate) fn finish(mut self) -> Result<u64> {
        drop(self.tx.take());
        let r = self
            .thread
            .take()
            .expect("running")
            .join()
            .map_err(|_| Error::Usage("the checkpoint writer panicked".into()))?;
        r.map_err(|e| Error::Usage(format!("cannot write a checkpoint: {e}")))
    }
}

/// What the worker that saves last adds to a cut: the process's part of
/// the checkpoint.
pub(crate) trait Finish: Send + Sync {
    /// The outputs' positions, counters and the rest, for the cut `c`.
    fn meta(&self, c: &Complete) -> Result<ReplayMeta>;
}

/// A worker's commits, with its part in checkpoints: after every step, once
/// the probe has passed a cut, it saves the worker's operators; the last
/// worker hands the checkpoint to the writer and lets the source go on.
pub(crate) struct Checkpointing<'a, C> {
    pub(crate) inner: C,
    pub(crate) index: usize,
    pub(crate) barrier: Arc<Barrier>,
    pub(crate) finish: &'a dyn Finish,
    pub(crate) writer: mpsc::Sender<ToWrite>,
    pub(crate) metrics: Arc<Metrics>,
}

impl<C: Commits> Commits for Checkpointing<'_, C> {
    fn committed(&mut self, frontier: u64, done: bool) -> Result<Next> {
        if let Some(t) = self.barrier.wanted(self.index) {
            tracing::trace!(worker = self.index, cut = t, frontier, "Waiting for a cut");
            if self.metrics.failure().is_some() {
                self.barrier.release();
            } else if frontier >= t - 1 {
                let parts = eddy_operators::snapshot::save_all().map_err(|e| Error::Usage(e.to_string()))?;
                if let Some(complete) = self.barrier.deposit(self.index, parts) {
                    let mut meta = self.finish.meta(&complete)?;
                    meta.pause_ms = complete.started.elapsed().as_secs_f64() * 1e3;
                    let names = Names { devices: DeviceId::interned(), channels: Channel::interned() };
                    let names = eddy_checkpoint::encode(&names).map_err(checkpoint_error)?;
                    let meta = serde_json::to_value(&meta).expect("meta serializes");
                    let sent = self.writer.send(ToWrite::of(
                        complete.time,
                        vec![(NAMES.to_string(), names)],
                        complete.parts,
                        meta,
                    ));
                    self.barrier.release();
                    if sent.is_err() {
                        return Err(Error::Usage("the checkpoint writer stopped".into()));
                    }
                }
            }
        }
        self.inner.committed(frontier, done)
    }

    fn finish(&mut self) -> Result<()> {
        self.inner.finish()
    }
}

/// Counters of a run's checkpoints, for the summary.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CheckpointSummary {
    /// Checkpoints written by this run.
    pub written: u64,
    /// The checkpoint the run restarted from, if any.
    pub restored_from: Option<u64>,
}
