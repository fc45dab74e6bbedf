//! The machinery shared by the backup and the raw archive: per-date open
//! part files, rolling, the tmp → fsync → rename → manifest commit, and
//! fail-closed error handling.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::config::{BackupConfig, Codec};
use crate::error::{Error, Result};
use crate::fsutil::{check_writer_id, date_of_day, day_of_ms, ensure_dir, run_id, sync_dir};
use crate::manifest::{write_entry, FileEntry, ManifestEntry, PartitionRange, MANIFEST_DIR};

/// Rows buffered in the Arrow builders before they are handed to the
/// Parquet writer (which builds row groups out of them).
const BATCH_ROWS: usize = 8192;

/// Where a row goes and what the manifest records of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowKey {
    /// Partitioning time (event or arrival time), epoch ms UTC.
    pub ts: i64,
    /// Input partition.
    pub partition: u32,
    /// Input offset.
    pub offset: u64,
}

/// Columnar builders for one file's rows.
pub(crate) trait Encoder {
    /// The record type.
    type Row;
    /// The key of a row.
    fn key(row: &Self::Row) -> RowKey;
    /// The file schema (fixed for the encoder's life).
    fn schema(&self) -> SchemaRef;
    /// Columns to dictionary-encode.
    fn dictionary_columns(&self) -> Vec<ColumnPath>;
    /// Whether the schema has a column for everything in `row`.
    fn fits(&mut self, row: &Self::Row) -> bool;
    /// Appends a row (which fits).
    fn append(&mut self, row: &Self::Row);
    /// Rows in the builders.
    fn len(&self) -> usize;
    /// Takes the builders' rows as a batch (and empties them).
    fn finish_batch(&mut self) -> std::result::Result<RecordBatch, ArrowError>;
}

/// Row count, time range and per-partition offsets of a file.
#[derive(Debug)]
struct Stats {
    rows: u64,
    min_ts: i64,
    max_ts: i64,
    min_offset: u64,
    max_offset: u64,
    partitions: Vec<PartitionRange>,
    last: usize,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            min_offset: u64::MAX,
            max_offset: 0,
            partitions: Vec::new(),
            last: 0,
        }
    }

    fn add(&mut self, k: RowKey) {
        self.rows += 1;
        self.min_ts = self.min_ts.min(k.ts);
        self.max_ts = self.max_ts.max(k.ts);
        self.min_offset = self.min_offset.min(k.offset);
        self.max_offset = self.max_offset.max(k.offset);
        let i = match self.partitions.get(self.last) {
            Some(p) if p.partition == k.partition => self.last,
            _ => match self.partitions.iter().position(|p| p.partition == k.partition) {
                Some(i) => i,
                None => {
                    self.partitions.push(PartitionRange {
                        partition: k.partition,
                        rows: 0,
                        min_offset: u64::MAX,
                        max_offset: 0,
                    });
                    self.partitions.len() - 1
                }
            },
        };
        self.last = i;
        let p = &mut self.partitions[i];
        p.rows += 1;
        p.min_offset = p.min_offset.min(k.offset);
        p.max_offset = p.max_offset.max(k.offset);
    }
}

/// An open part file of one date.
struct OpenPart<E> {
    day: i64,
    enc: E,
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    rel: String,
    stats: Stats,
    last_used: u64,
}

/// A finished, fsynced file waiting for the next publishing commit.
struct Pending {
    tmp: PathBuf,
    date_dir: PathBuf,
    entry: FileEntry,
}

/// Per-date part files of one writer, and their publication.
pub(crate) struct Core<E: Encoder> {
    dir: PathBuf,
    kind: &'static str,
    writer_id: String,
    run: String,
    cfg: BackupConfig,
    compression: Compression,
    open: Vec<OpenPart<E>>,
    pending: Vec<Pending>,
    file_seq: u64,
    commit_seq: u64,
    tick: u64,
    first_open: Option<Instant>,
    failed: Option<Arc<Error>>,
}

impl<E: Encoder> Core<E> {
    /// Checks the arguments and creates `dir` and its manifest directory.
    pub(crate) fn new(dir: &Path, kind: &'static str, writer_id: &str, cfg: BackupConfig) -> Result<Core<E>> {
        check_writer_id(writer_id)?;
        cfg.check()?;
        let compression = match cfg.codec {
            Codec::Zstd => Compression::ZSTD(
                ZstdLevel::try_new(cfg.compression_level)
                    .map_err(|e| Error::Config(format!("zstd compression level {}: {e}", cfg.compression_level)))?,
            ),
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::Snappy => Compression::SNAPPY,
            Codec::None => Compression::UNCOMPRESSED,
        };
        ensure_dir(dir)?;
        ensure_dir(&dir.join(MANIFEST_DIR))?;
        Ok(Core {
            dir: dir.to_path_buf(),
            kind,
            writer_id: writer_id.to_string(),
            run: run_id(),
            cfg,
            compression,
            open: Vec::new(),
            pending: Vec::new(),
            file_seq: 0,
            commit_seq: 0,
            tick: 0,
            first_open: None,
            failed: None,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn writer_id(&self) -> &str {
        &self.writer_id
    }

    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    pub(crate) fn config(&self) -> &BackupConfig {
        &self.cfg
    }

    /// The output, as a failed write names it: the directory and the writer.
    pub(crate) fn output(&self) -> String {
        format!("{} (writer {})", self.dir.display(), self.writer_id)
    }

    /// The first error, if any.
    pub(crate) fn error(&self) -> Option<&Arc<Error>> {
        self.failed.as_ref()
    }

    /// `Err(Failed)` once an error was recorded.
    pub(crate) fn check_ok(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(Error::Failed(Arc::clone(e))),
            None => Ok(()),
        }
    }

    /// Records `r`'s error as the writer's first error, and returns it
    /// shared (as [`Error::Failed`], which displays as the error itself).
    pub(crate) fn record<T>(&mut self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if self.failed.is_none() && !matches!(e, Error::Failed(_)) => {
                tracing::debug!(
                    kind = self.kind,
                    writer = %self.writer_id,
                    error = %e,
                    "parquet writer failed; it writes nothing more"
                );
                let e = Arc::new(e);
                self.failed = Some(Arc::clone(&e));
                Err(Error::Failed(e))
            }
            r => r,
        }
    }

    /// Rows written but not yet published.
    pub(crate) fn uncommitted_rows(&self) -> u64 {
        self.open.iter().map(|p| p.stats.rows).sum::<u64>() + self.pending.iter().map(|p| p.entry.rows).sum::<u64>()
    }

    /// Writes a batch, stopping at the first error, which is recorded: the
    /// shared body of the writers' `try_write_rows`.
    pub(crate) fn write_batch(&mut self, batch: &[E::Row], mut make: impl FnMut() -> E) -> Result<()> {
        self.check_ok()?;
        let mut result = Ok(());
        for row in batch {
            result = self.push(row, &mut make);
            if result.is_err() {
                break;
            }
        }
        self.record(result)
    }

    /// Publishes what is due, recording any error: the shared body of the
    /// writers' `try_commit`.
    pub(crate) fn try_commit(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        self.try_commit_with(upto, false)
    }

    /// [`Self::try_commit`]; with `now`, publishes whatever is open even if
    /// no file is due yet (a checkpoint's cut waits for it).
    pub(crate) fn try_commit_with(&mut self, upto: Option<u64>, now: bool) -> Result<Option<PathBuf>> {
        self.check_ok()?;
        let r = self.commit(upto, now);
        self.record(r)
    }

    /// Appends one row to the open file of its date, opening or rolling
    /// files as needed; `make` builds the encoder of a new file.
    pub(crate) fn push(&mut self, row: &E::Row, make: impl FnOnce() -> E) -> Result<()> {
        let key = E::key(row);
        let day = day_of_ms(key.ts);
        self.tick += 1;
        let idx = match self.open.iter().position(|p| p.day == day) {
            Some(i) if self.open[i].enc.fits(row) => i,
            Some(i) => {
                // The file's schema lacks a column this row needs: roll.
                self.close(i)?;
                self.open_part(day, make())?
            }
            None => self.open_part(day, make())?,
        };
        let part = &mut self.open[idx];
        part.last_used = self.tick;
        part.enc.append(row);
        part.stats.add(key);
        let mut full = part.stats.rows >= self.cfg.max_rows_per_file;
        if part.enc.len() >= BATCH_ROWS.min(self.cfg.row_group_rows) {
            write_buffered(part)?;
            let size = part.writer.bytes_written() + part.writer.in_progress_size();
            full |= size as u64 >= self.cfg.max_bytes_per_file;
        }
        if full {
            self.close(idx)?;
        }
        Ok(())
    }

    /// Opens a new part file for `day` and returns its index in `open`.
    fn open_part(&mut self, day: i64, enc: E) -> Result<usize> {
        if self.open.len() >= self.cfg.max_open_files {
            // Close the least recently used file.
            if let Some(lru) = self.open.iter().enumerate().min_by_key(|(_, p)| p.last_used).map(|(i, _)| i) {
                self.close(lru)?;
            }
        }
        let date_dir_name = format!("date={}", date_of_day(day));
        let date_dir = self.dir.join(&date_dir_name);
        ensure_dir(&date_dir)?;
        let name = format!("part-{}-{:06}-{}.parquet", self.writer_id, self.file_seq, self.run);
        self.file_seq += 1;
        let tmp = date_dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut props = WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_row_count(Some(self.cfg.row_group_rows))
            .set_dictionary_enabled(false)
            .set_created_by(format!("eddy-parquet {}", env!("CARGO_PKG_VERSION")));
        for col in enc.dictionary_columns() {
            props = props.set_column_dictionary_enabled(col, true);
        }
        let writer =
            ArrowWriter::try_new(file, enc.schema(), Some(props.build())).map_err(|e| Error::parquet(&tmp, e))?;
        if self.first_open.is_none() {
            self.first_open = Some(Instant::now());
        }
        self.open.push(OpenPart {
            day,
            enc,
            writer,
            tmp,
            rel: format!("{date_dir_name}/{name}"),
            stats: Stats::new(),
            last_used: self.tick,
        });
        Ok(self.open.len() - 1)
    }

    /// Finishes and fsyncs open file `idx`; it waits in `pending` for the
    /// next publishing commit.
    fn close(&mut self, idx: usize) -> Result<()> {
        let mut part = self.open.swap_remove(idx);
        if part.enc.len() > 0 {
            write_buffered(&mut part)?;
        }
        let tmp = part.tmp;
        let file = part.writer.into_inner().map_err(|e| Error::parquet(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&tmp, e))?.len();
        drop(file);
        let date_dir = tmp.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut partitions = part.stats.partitions;
        partitions.sort_by_key(|p| p.partition);
        self.pending.push(Pending {
            tmp,
            date_dir,
            entry: FileEntry {
                path: part.rel,
                rows: part.stats.rows,
                bytes,
                min_ts: part.stats.min_ts,
                max_ts: part.stats.max_ts,
                min_offset: part.stats.min_offset,
                max_offset: part.stats.max_offset,
                partitions,
            },
        });
        Ok(())
    }

    /// The commit: when something is due (a rolled file, an open file older
    /// than `max_file_age`, or the end of input), closes every open file
    /// and publishes all finished ones under epoch `upto`. Returns the
    /// manifest entry written, if any.
    pub(crate) fn commit(&mut self, upto: Option<u64>, now: bool) -> Result<Option<PathBuf>> {
        if self.open.is_empty() && self.pending.is_empty() {
            return Ok(None);
        }
        let due = now
            || upto.is_none()
            || !self.pending.is_empty()
            || self.first_open.is_some_and(|t| t.elapsed() >= self.cfg.max_file_age);
        if !due {
            return Ok(None);
        }
        while let Some(last) = self.open.len().checked_sub(1) {
            self.close(last)?;
        }
        self.first_open = None;
        self.publish(upto).map(Some)
    }

    /// Renames every pending file to its final name, fsyncs the date
    /// directories, then writes the manifest entry.
    fn publish(&mut self, upto: Option<u64>) -> Result<PathBuf> {
        let mut dirs = BTreeSet::new();
        for p in &self.pending {
            let dest = self.dir.join(&p.entry.path);
            fs::rename(&p.tmp, &dest).map_err(|e| Error::io(&dest, e))?;
            dirs.insert(p.date_dir.clone());
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        let mut entry = ManifestEntry {
            version: crate::manifest::MANIFEST_VERSION,
            kind: self.kind.to_string(),
            writer: self.writer_id.clone(),
            run: self.run.clone(),
            seq: self.commit_seq,
            epoch: upto,
            files: self.pending.drain(..).map(|p| p.entry).collect(),
        };
        entry.files.sort_by(|a, b| a.path.cmp(&b.path));
        let path = write_entry(&self.dir, &entry)?;
        self.commit_seq += 1;
        tracing::debug!(
            kind = self.kind,
            writer = %self.writer_id,
            epoch = ?upto,
            files = entry.files.len(),
            rows = entry.files.iter().map(|f| f.rows).sum::<u64>(),
            "committed parquet files"
        );
        Ok(path)
    }
}

impl<E: Encoder> Drop for Core<E> {
    fn drop(&mut self) {
        let rows = self.uncommitted_rows();
        if rows > 0 && self.failed.is_none() {
            tracing::warn!(
                kind = self.kind,
                writer = %self.writer_id,
                rows,
                "parquet writer dropped with uncommitted rows; they are not in the manifest"
            );
        }
    }
}

/// Hands the builders' rows to the Parquet writer.
fn write_buffered<E: Encoder>(part: &mut OpenPart<E>) -> Result<()> {
    let batch = part.enc.finish_batch().map_err(|e| Error::arrow(&part.tmp, e))?;
    part.writer.write(&batch).map_err(|e| Error::parquet(&part.tmp, e))
}
