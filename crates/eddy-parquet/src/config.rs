//! What the backup and the raw archive writers share: their configuration
//! ([`BackupConfig`], [`Codec`]) and what a commit reports as durable
//! ([`durable_after`]).

use std::time::Duration;

use crate::error::{Error, Result};

/// The compression codec of a Parquet file's columns: the job spec's
/// `compression` (one type, so the spec and the writer cannot disagree).
pub use eddy_core::spec::Compression as Codec;

/// File sizes, row groups, durability and compression of a [`BackupWriter`](crate::BackupWriter)
/// (and of a [`RawArchiveWriter`](crate::RawArchiveWriter)).
#[derive(Clone, Debug, PartialEq)]
pub struct BackupConfig {
    /// A file is rolled (closed, and a new one opened) once it has this many rows.
    pub max_rows_per_file: u64,
    /// … or once its written plus buffered size reaches this many bytes
    /// (checked every few thousand rows, so a file may overshoot a little).
    pub max_bytes_per_file: u64,
    /// Rows per Parquet row group (at most).
    pub row_group_rows: usize,
    /// A commit closes and publishes the open files once the oldest has
    /// been open this long (wall clock). `Duration::ZERO`: at every commit.
    pub max_file_age: Duration,
    /// The compression codec of every column.
    pub codec: Codec,
    /// zstd level, 1 to 22 (read only with [`Codec::Zstd`]).
    pub compression_level: i32,
    /// At most this many files open at once (one per date); opening one
    /// more closes the least recently used.
    pub max_open_files: usize,
}

impl Default for BackupConfig {
    /// 1,000,000 rows or 512 MiB per file, 131,072-row row groups, 5 s,
    /// Snappy, 8 open files.
    fn default() -> Self {
        BackupConfig {
            max_rows_per_file: 1_000_000,
            max_bytes_per_file: 512 << 20,
            row_group_rows: 128 * 1024,
            max_file_age: Duration::from_secs(5),
            codec: Codec::Snappy,
            compression_level: 1,
            max_open_files: 8,
        }
    }
}

impl BackupConfig {
    pub(crate) fn check(&self) -> Result<()> {
        if self.max_rows_per_file == 0 {
            return Err(Error::Config("max_rows_per_file must be at least 1".into()));
        }
        if self.max_bytes_per_file == 0 {
            return Err(Error::Config("max_bytes_per_file must be at least 1".into()));
        }
        if self.row_group_rows == 0 {
            return Err(Error::Config("row_group_rows must be at least 1".into()));
        }
        if self.max_open_files == 0 {
            return Err(Error::Config("max_open_files must be at least 1".into()));
        }
        // Checked whatever the codec, as the job spec checks it.
        if !(1..=22).contains(&self.compression_level) {
            return Err(Error::Config(format!(
                "compression_level must be between 1 and 22, found {}",
                self.compression_level
            )));
        }
        Ok(())
    }
}

/// What a writer's [`BatchSink::commit`](eddy_core::sink::BatchSink::commit) reports as durable after a commit:
/// `upto` once everything written is published, `Some(0)` (no new claim)
/// while rows wait for the next publication. A failed writer (`ok` false)
/// reports `upto` too, so that it does not hold the dataflow open; its
/// error is returned to whoever drives it.
pub fn durable_after(ok: bool, uncommitted_rows: u64, upto: Option<u64>) -> Option<u64> {
    if !ok || uncommitted_rows == 0 {
        upto
    } else {
        Some(0)
    }
}
