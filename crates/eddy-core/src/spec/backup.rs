//! `kind = "backup"`: the spec of the Parquet backup and raw archive job.

use serde::{Deserialize, Serialize};

use super::{d_true, JobKind, SpecError};
use crate::duration::Millis;

fn d_file_age() -> Millis {
    Millis(5_000)
}

fn d_rows_per_file() -> u64 {
    1_000_000
}

fn d_row_group() -> usize {
    131_072
}

fn d_level() -> i32 {
    1
}

/// The compression codec of the backup's and raw archive's Parquet files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at `compression_level`: the smallest files, the most CPU.
    Zstd,
    /// LZ4 (Parquet's `LZ4_RAW`).
    Lz4,
    /// Snappy (the default, as in Spark, DuckDB and pyarrow): on the fleet,
    /// 10% fewer instructions for the whole replay than zstd, for files
    /// 1.6 times as large.
    #[default]
    Snappy,
    /// No compression.
    None,
}

/// `kind = "backup"`: the near-real-time Parquet backup of every valid
/// reading, and the raw archive of every input line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// Must be `"backup"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Write the backup (`OUT/backup/`). Default true.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Also archive every input line as received (`OUT/raw/`). Default true.
    #[serde(default = "d_true")]
    pub raw_archive: bool,
    /// A file open longer than this is closed and committed at the next
    /// epoch: the bound on how long a reading waits to be durable. Default `"5s"`.
    #[serde(default = "d_file_age")]
    pub max_file_age: Millis,
    /// Roll a file after this many rows. Default 1,000,000.
    #[serde(default = "d_rows_per_file")]
    pub max_rows_per_file: u64,
    /// Rows per Parquet row group. Default 131,072.
    #[serde(default = "d_row_group")]
    pub row_group_rows: usize,
    /// The files' compression codec: `"snappy"` (default), `"zstd"`,
    /// `"lz4"` or `"none"` (`docs/decisions.md` compares them).
    #[serde(default)]
    pub compression: Compression,
    /// zstd level, 1..=22 (only read with `compression = "zstd"`). Default 1:
    /// on the fleet it spends 2% fewer instructions than 3 for files of the
    /// same size (`docs/decisions.md`).
    #[serde(default = "d_level")]
    pub compression_level: i32,
}

impl BackupSpec {
    /// Checks the values of the spec on its own: at least one row per file and
    /// per row group, and a zstd level from 1 to 22.
    pub(super) fn check(&self, file: &str) -> Result<(), SpecError> {
        if self.max_rows_per_file == 0 {
            return Err(SpecError::key(file, "max_rows_per_file", "must be at least 1"));
        }
        if self.row_group_rows == 0 {
            return Err(SpecError::key(file, "row_group_rows", "must be at least 1"));
        }
        if !(1..=22).contains(&self.compression_level) {
            return Err(SpecError::key(
                file,
                "compression_level",
                format!("must be between 1 and 22, found {}", self.compression_level),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{JobSpec, PipelineSpec};

    #[test]
    fn backup_compression_defaults_to_snappy_and_names_the_choices() {
        let JobSpec::Backup(b) = JobSpec::from_toml("kind = \"backup\"\n", "b.toml").unwrap() else { panic!() };
        assert_eq!((b.compression, b.compression_level), (Compression::Snappy, 1));
        let JobSpec::Backup(b) =
            JobSpec::from_toml("kind = \"backup\"\ncompression = \"zstd\"\ncompression_level = 9\n", "b.toml").unwrap()
        else {
            panic!()
        };
        assert_eq!((b.compression, b.compression_level), (Compression::Zstd, 9));
        let e = JobSpec::from_toml("kind = \"backup\"\ncompression = \"gzip\"\n", "jobs/b.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("jobs/b.toml: ") && msg.contains("line 2"), "{msg}");
        assert!(msg.contains("unknown variant `gzip`, expected one of `zstd`, `lz4`, `snappy`, `none`"), "{msg}");
        // The shipped spec says what the default is.
        assert_eq!(PipelineSpec::builtin().backup.compression, Compression::Snappy);
    }
}
