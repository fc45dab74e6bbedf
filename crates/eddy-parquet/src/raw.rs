//! The raw archive: every input record exactly as received.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, RecordBatch, TimestampMillisecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use eddy_core::sink::{BatchSink, SinkError};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::config::{durable_after, BackupConfig};
use crate::error::{Error, Result};
use crate::manifest::committed_files;
use crate::meta::META_FORMAT;
use crate::part::{Core, Encoder, RowKey};
use crate::read::{column, for_each_batch};

/// One input record as received, malformed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    /// Input partition (0 for a file).
    pub partition: u32,
    /// Offset (Kafka) or 1-based line number (file) within the partition.
    pub offset: u64,
    /// Arrival (ingestion) time, epoch ms UTC: it picks the `date=` partition.
    pub arrival_ms: i64,
    /// The record's bytes, without the line terminator.
    pub bytes: Vec<u8>,
}

fn raw_schema() -> SchemaRef {
    Arc::new(
        Schema::new(vec![
            Field::new("src_partition", DataType::UInt32, false),
            Field::new("src_offset", DataType::UInt64, false),
            Field::new("arrival", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            Field::new("bytes", DataType::Binary, false),
        ])
        .with_metadata(HashMap::from([(META_FORMAT.to_string(), "raw/1".to_string())])),
    )
}

/// Arrow builders for one raw archive file.
pub(crate) struct RawEncoder {
    schema: SchemaRef,
    partition: UInt32Builder,
    offset: UInt64Builder,
    arrival: TimestampMillisecondBuilder,
    bytes: BinaryBuilder,
}

impl RawEncoder {
    fn new(schema: SchemaRef) -> RawEncoder {
        RawEncoder {
            schema,
            partition: UInt32Builder::new(),
            offset: UInt64Builder::new(),
            arrival: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            bytes: BinaryBuilder::new(),
        }
    }
}

impl Encoder for RawEncoder {
    type Row = RawRecord;

    fn key(row: &RawRecord) -> RowKey {
        RowKey { ts: row.arrival_ms, partition: row.partition, offset: row.offset }
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn dictionary_columns(&self) -> Vec<ColumnPath> {
        Vec::new()
    }

    fn fits(&mut self, _row: &RawRecord) -> bool {
        true
    }

    fn append(&mut self, row: &RawRecord) {
        self.partition.append_value(row.partition);
        self.offset.append_value(row.offset);
        self.arrival.append_value(row.arrival_ms);
        self.bytes.append_value(&row.bytes);
    }

    fn len(&self) -> usize {
        self.partition.len()
    }

    fn finish_batch(&mut self) -> std::result::Result<RecordBatch, ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.arrival.finish()),
            Arc::new(self.bytes.finish()),
        ];
        RecordBatch::try_new(Arc::clone(&self.schema), cols)
    }
}

/// Writes every input record to the raw archive directory (`OUT/raw`):
/// columns `src_partition` (UInt32), `src_offset` (UInt64), `arrival`
/// (Timestamp(ms, UTC)) and `bytes` (Binary), partitioned by the UTC date of
/// the arrival time, with the same tmp/fsync/rename/manifest publication as
/// the backup (manifest kind `"raw"`, under `raw/_manifest/`).
pub struct RawArchiveWriter {
    core: Core<RawEncoder>,
    schema: SchemaRef,
}

impl RawArchiveWriter {
    /// A writer with id `writer_id` writing under `dir` (`OUT/raw`); see
    /// [`BackupWriter::new`](crate::BackupWriter::new).
    pub fn new(dir: &Path, writer_id: &str, cfg: BackupConfig) -> Result<Self> {
        Ok(RawArchiveWriter { core: Core::new(dir, "raw", writer_id, cfg)?, schema: raw_schema() })
    }

    /// The first error this writer met, if any. After it the writer writes
    /// and publishes nothing more, and returns it again from every call.
    pub fn error(&self) -> Option<&Error> {
        self.core.error().map(|e| &**e)
    }

    /// What the writer writes, as its errors as a sink name it: the
    /// directory and the writer id.
    pub fn output(&self) -> String {
        self.core.output()
    }

    /// The raw archive directory.
    pub fn dir(&self) -> &Path {
        self.core.dir()
    }

    /// The writer id.
    pub fn writer_id(&self) -> &str {
        self.core.writer_id()
    }

    /// The writer's settings.
    pub fn config(&self) -> &BackupConfig {
        self.core.config()
    }

    /// Rows written and not yet published.
    pub fn uncommitted_rows(&self) -> u64 {
        self.core.uncommitted_rows()
    }

    /// [`BatchSink::write`], returning the error: drains `batch`.
    pub fn try_write(&mut self, batch: &mut Vec<RawRecord>) -> Result<()> {
        let r = self.try_write_rows(batch);
        batch.clear();
        r
    }

    /// Writes `rows` (which stay the caller's), returning the error. After
    /// an error (this one or an earlier one) the rest is dropped.
    pub fn try_write_rows(&mut self, rows: &[RawRecord]) -> Result<()> {
        let schema = &self.schema;
        self.core.write_batch(rows, || RawEncoder::new(Arc::clone(schema)))
    }

    /// [`BatchSink::commit`], returning the error and the path of the
    /// manifest entry written (`None` when nothing was due).
    pub fn try_commit(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        self.core.try_commit(upto)
    }

    /// [`Self::try_commit`], publishing whatever is open even if no file is
    /// due yet.
    pub fn try_commit_now(&mut self, upto: Option<u64>) -> Result<Option<PathBuf>> {
        self.core.try_commit_with(upto, true)
    }
}

impl BatchSink<RawRecord> for RawArchiveWriter {
    fn write(&mut self, batch: &mut Vec<RawRecord>) -> Result<(), SinkError> {
        self.try_write(batch).map_err(|e| SinkError::new(self.output(), e))
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        self.try_commit(upto).map_err(|e| SinkError::new(self.output(), e))?;
        Ok(durable_after(true, self.uncommitted_rows(), upto))
    }
}

/// Reads every committed record of a raw archive directory, sorted by
/// `(partition, offset)`.
pub fn read_raw_archive(dir: &Path) -> Result<Vec<RawRecord>> {
    let mut out = Vec::new();
    for path in committed_files(dir)? {
        for_each_batch(&path, |batch| {
            let partition = column(&path, batch, "src_partition")?
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| Error::format(&path, "src_partition is not UInt32"))?;
            let offset = column(&path, batch, "src_offset")?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Error::format(&path, "src_offset is not UInt64"))?;
            let arrival = column(&path, batch, "arrival")?
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| Error::format(&path, "arrival is not Timestamp(ms)"))?;
            let bytes = column(&path, batch, "bytes")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| Error::format(&path, "bytes is not Binary"))?;
            for i in 0..batch.num_rows() {
                out.push(RawRecord {
                    partition: partition.value(i),
                    offset: offset.value(i),
                    arrival_ms: arrival.value(i),
                    bytes: if bytes.is_null(i) { Vec::new() } else { bytes.value(i).to_vec() },
                });
            }
            Ok(())
        })?;
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
