//! The backup job's sinks: the Parquet backup and the raw archive, and how a
//! rerun into the same output directory resumes them without duplicates.
//!
//! Each worker writes its own files and commits them per epoch in the
//! manifest (see `eddy-parquet`). A writer's committed rows are always a
//! prefix, in input order, of the rows it was given, and the rows a writer
//! gets are fixed by the device routing (key groups and worker count, in
//! its name: `WriterName`). So on a rerun,
//! after deleting everything uncommitted, a reading is already backed up
//! exactly when its position is at or below the largest committed position
//! of the writer that had its device, for any earlier worker count. Those
//! readings are skipped; every other reading is written. The JSON-lines
//! outputs, by contrast, are cut back to a checkpoint's lengths (see `snapshots`), or recomputed
//! from the start.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use eddy_core::ids::DeviceId;
use eddy_core::reading::{Enriched, RawLine};
use eddy_core::sink::{BatchSink, SinkError};
use eddy_core::spec::BackupSpec;
use eddy_parquet::{Background, BackupConfig, BackupWriter, Manifest, RawArchiveWriter, RawRecord, Writer};

use crate::error::{Error, Result};

/// The backup settings of a spec, for the writers.
pub fn backup_config(spec: &BackupSpec) -> BackupConfig {
    BackupConfig {
        max_rows_per_file: spec.max_rows_per_file,
        row_group_rows: spec.row_group_rows,
        max_file_age: std::time::Duration::from_millis(spec.max_file_age.ms().max(0) as u64),
        codec: spec.compression,
        compression_level: spec.compression_level,
        ..BackupConfig::default()
    }
}

/// The name of a backup writer: `w{i}of{p}g{n}`, worker `i` of `p` with `n`
/// key groups, which holds the devices of worker `i`'s key groups. (Written
/// before key groups, `w{i}of{p}` held the devices whose route is `i`
/// modulo `p`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WriterName {
    /// The worker count.
    pub peers: u64,
    /// The key groups (`None`: a writer of before key groups).
    pub groups: Option<u32>,
    /// The worker.
    pub index: usize,
}

impl WriterName {
    /// Worker `index` of `peers`, with the key groups installed on this thread.
    pub fn of_worker(index: usize, peers: usize) -> WriterName {
        WriterName { peers: peers as u64, groups: Some(eddy_core::keys::installed().get()), index }
    }

    /// Parses a writer name; `None` for another kind of name.
    pub fn parse(name: &str) -> Option<WriterName> {
        let (i, rest) = name.strip_prefix('w')?.split_once("of")?;
        let (p, g) = match rest.split_once('g') {
            Some((p, g)) => (p, Some(g.parse().ok()?)),
            None => (rest, None),
        };
        Some(WriterName { peers: p.parse().ok()?, groups: g, index: i.parse().ok()? })
    }

    /// The writer, among this one's run, that holds `device`.
    pub fn writer_of(&self, device: DeviceId) -> usize {
        match self.groups.and_then(|g| eddy_core::keys::KeyGroups::new(g).ok()) {
            Some(groups) => {
                eddy_core::keys::Placement { groups, peers: self.peers.max(1) as usize }.worker(device) as usize
            }
            None => (device.route() % self.peers.max(1)) as usize,
        }
    }

    /// The run this writer was part of: (worker count, key groups).
    pub fn run(&self) -> (u64, Option<u32>) {
        (self.peers, self.groups)
    }
}

impl std::fmt::Display for WriterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}of{}", self.index, self.peers)?;
        match self.groups {
            Some(g) => write!(f, "g{g}"),
            None => Ok(()),
        }
    }
}

/// What earlier runs committed, by writer.
#[derive(Debug, Default)]
pub struct Committed {
    /// Backup writers ([`WriterName`]): for each earlier run's worker count
    /// and key groups, the largest committed position of each writer (file
    /// partition 0).
    by_run: BTreeMap<(u64, Option<u32>), Vec<Option<u64>>>,
    /// Raw archive writers: the largest committed position of any.
    max_any: Option<u64>,
}

impl Committed {
    fn load(dir: &Path) -> Result<Committed> {
        let mut c = Committed::default();
        if !dir.join(eddy_parquet::MANIFEST_DIR).is_dir() {
            return Ok(c);
        }
        let removed = eddy_parquet::cleanup_uncommitted(dir)?;
        if !removed.is_empty() {
            tracing::info!(dir = %dir.display(), files = removed.len(), "Removed uncommitted files of an earlier run");
        }
        let manifest = Manifest::load(dir)?;
        for ((writer, partition), max) in manifest.max_offsets() {
            if partition != 0 {
                continue;
            }
            c.max_any = c.max_any.max(Some(max));
            if let Some(w) = WriterName::parse(&writer) {
                let v = c.by_run.entry(w.run()).or_insert_with(|| vec![None; w.peers as usize]);
                if w.index < v.len() {
                    v[w.index] = v[w.index].max(Some(max));
                }
            }
        }
        Ok(c)
    }

    fn has_reading(&self, e: &Enriched) -> bool {
        self.by_run.iter().any(|(&(peers, groups), maxes)| {
            let i = WriterName { peers, groups, index: 0 }.writer_of(e.device);
            maxes.get(i).copied().flatten().is_some_and(|m| e.pos.offset <= m)
        })
    }

    fn has_line(&self, r: &RawLine) -> bool {
        self.max_any.is_some_and(|m| r.pos.offset <= m)
    }
}

/// What the backup and the raw archive of earlier runs hold.
#[derive(Debug, Default)]
pub struct Resume {
    /// The backup's.
    pub backup: Arc<Committed>,
    /// The raw archive's.
    pub raw: Arc<Committed>,
}

impl Resume {
    /// Cleans up after an interrupted run into `out` and reads what it
    /// committed. Refuses an `out` whose backup is of another input.
    pub fn prepare(out: &Path, input: &Path) -> Result<Resume> {
        let backup = out.join("backup");
        std::fs::create_dir_all(&backup).map_err(|e| eddy_connectors::Error::io(&backup, e))?;
        let marker = backup.join("_input.json");
        let this = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf()).display().to_string();
        match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let before = v["input"].as_str().unwrap_or_default();
                if before != this {
                    return Err(Error::OtherInput { out: out.to_path_buf(), before: before.to_string(), this });
                }
            }
            Err(_) => {
                let text = serde_json::json!({ "version": 1, "input": this }).to_string();
                std::fs::write(&marker, text).map_err(|e| eddy_connectors::Error::io(&marker, e))?;
            }
        }
        Ok(Resume { backup: Arc::new(Committed::load(&backup)?), raw: Arc::new(Committed::load(&out.join("raw"))?) })
    }
}

/// A Parquet writer as a sink: skips what earlier runs committed, runs the
/// writer on a thread of its own ([`Background`]: encoding, compression and
/// the fsyncs of a commit never block the worker), and returns the writer's
/// error, naming the directory and the writer, from the first call after it
/// failed (a writer that could not be created, from the first call at all).
pub struct ParquetSink<W: Writer> {
    writer: Option<Background<W>>,
    /// What the writer writes, for its errors.
    output: String,
    /// The error that kept the writer from starting, until it is returned.
    failed: Option<eddy_parquet::Error>,
    committed: Arc<Committed>,
    raw: Vec<RawRecord>,
    /// The bench latency slot of a backup (not raw archive) sink.
    latency_slot: Option<usize>,
    /// Whether each commit holds exactly the rows before its frontier
    /// ([`BatchSink::settled`]).
    settled: bool,
}

impl<W: Writer> ParquetSink<W> {
    pub(crate) fn new(writer: eddy_parquet::Result<W>, committed: Arc<Committed>) -> Self {
        let output = writer.as_ref().map(|w| w.output()).unwrap_or_default();
        let (writer, failed) = match writer.and_then(|w| {
            let name = format!("eddy-{}", w.writer_id());
            Background::spawn(w, &name)
        }) {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e)),
        };
        let latency_slot = if std::any::TypeId::of::<W>() == std::any::TypeId::of::<BackupWriter>() {
            eddy_operators::metrics::latency().register_backup()
        } else {
            None
        };
        ParquetSink { writer, output, failed, committed, raw: Vec::new(), latency_slot, settled: false }
    }

    /// Makes each commit hold exactly the rows at dataflow times before its
    /// frontier, so that a rerun can resume by dataflow time (the Kafka
    /// backup's).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn settled(mut self) -> Self {
        self.settled = true;
        self
    }

    /// The writer, or the error that kept it from starting.
    fn writer(&mut self) -> Result<&mut Background<W>, SinkError> {
        match self.writer {
            Some(ref mut w) => Ok(w),
            None => {
                let e = self.failed.take().unwrap_or(eddy_parquet::Error::Stopped);
                Err(self.error(e))
            }
        }
    }

    fn error(&self, e: eddy_parquet::Error) -> SinkError {
        // A writer that could not be created names its directory itself.
        let output = if self.output.is_empty() { "the Parquet output".to_string() } else { self.output.clone() };
        SinkError::new(output, e)
    }

    /// Asks for a commit, returning the frontier through which the writes
    /// are durable: `upto` once nothing is left unpublished, `Some(0)` (no
    /// new claim) while rows wait for the next publication.
    fn publish(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        // At a checkpoint's cut the frontier stops at `t - 1` until every
        // sink has made it durable: publish what is open without waiting for
        // a file to be due.
        let cut = eddy_operators::snapshot::cut().is_some();
        let w = self.writer()?;
        let r = if cut { w.commit_now(upto) } else { w.commit(upto) };
        r.map_err(|e| self.error(e))
    }

    fn write_rows(&mut self, rows: &mut Vec<W::Row>) -> Result<(), SinkError> {
        let r = match self.writer() {
            Ok(w) => w.write(rows),
            Err(e) => {
                rows.clear();
                return Err(e);
            }
        };
        rows.clear();
        r.map_err(|e| self.error(e))
    }
}

impl BatchSink<Enriched> for ParquetSink<BackupWriter> {
    fn write(&mut self, batch: &mut Vec<Enriched>) -> Result<(), SinkError> {
        let committed = Arc::clone(&self.committed);
        batch.retain(|e| !committed.has_reading(e));
        self.write_rows(batch)
    }

    fn write_shared(&mut self, batch: &[Enriched]) -> Result<(), SinkError> {
        // The rows go to the writer's thread, so they are copied; only
        // those the backup does not hold yet.
        let committed = Arc::clone(&self.committed);
        let mut rows: Vec<Enriched> = batch.iter().filter(|e| !committed.has_reading(e)).cloned().collect();
        self.write_rows(&mut rows)
    }

    fn write_arc(&mut self, batch: &Arc<Vec<Enriched>>) -> Result<(), SinkError> {
        // The usual case, a batch the backup holds none of, goes to the
        // writer's thread as it is: no record is copied.
        if batch.iter().any(|e| self.committed.has_reading(e)) {
            return self.write_shared(batch);
        }
        let r = self.writer()?.write_shared(Arc::clone(batch));
        r.map_err(|e| self.error(e))
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        let durable = self.publish(upto)?;
        eddy_operators::metrics::latency().durable(self.latency_slot, durable);
        Ok(durable)
    }

    fn settled(&self) -> bool {
        self.settled
    }
}

impl BatchSink<RawLine> for ParquetSink<RawArchiveWriter> {
    fn write(&mut self, batch: &mut Vec<RawLine>) -> Result<(), SinkError> {
        let committed = Arc::clone(&self.committed);
        let mut raw = std::mem::take(&mut self.raw);
        raw.extend(batch.drain(..).filter(|r| !committed.has_line(r)).map(|r| RawRecord {
            partition: r.pos.partition,
            offset: r.pos.offset,
            arrival_ms: r.arrival_ms,
            bytes: r.bytes,
        }));
        let r = self.write_rows(&mut raw);
        self.raw = raw;
        r
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        self.publish(upto)
    }
}
