//! The backup writer: enriched readings to date-partitioned Parquet files.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use eddy_core::ids::Channel;
use eddy_core::reading::{Context, Enriched};
use eddy_core::sink::{BatchSink, SinkError};
use parquet::schema::types::ColumnPath;

use crate::config::{durable_after, BackupConfig};
use crate::error::{Error, Result};
use crate::meta::{META_CHANNEL, META_CONTEXT, META_FORMAT, META_RAW};
use crate::part::{Core, Encoder, RowKey};

/// Column names that channels and context keys cannot take.
const FIXED_COLUMNS: [&str; 7] = ["device_id", "ts", "late", "future", "junk", "src_partition", "src_offset"];

/// The columns of a backup file: its channels and context keys.
#[derive(Debug)]
pub(crate) struct Layout {
    channels: Vec<Channel>,
    context: Vec<String>,
    /// Position in `channels`, by `Channel::index()`; `NONE` if absent.
    channel_slot: Vec<u32>,
    context_slot: HashMap<String, u32>,
    schema: SchemaRef,
    dictionary: Vec<ColumnPath>,
}

const NONE: u32 = u32::MAX;

/// A name not in `taken` (which then holds it): `first`, else `second`,
/// else `second_2`, `second_3`, ….
fn unique_name(taken: &mut HashSet<String>, first: String, second: String) -> String {
    let name = if !taken.contains(&first) {
        first
    } else if !taken.contains(&second) {
        second
    } else {
        (2u32..).map(|i| format!("{second}_{i}")).find(|n| !taken.contains(n)).unwrap_or(second)
    };
    taken.insert(name.clone());
    name
}

fn tagged(name: String, dt: DataType, key: &str, value: &str) -> Field {
    Field::new(name, dt, true).with_metadata(HashMap::from([(key.to_string(), value.to_string())]))
}

impl Layout {
    fn new(channels: Vec<Channel>, context: Vec<String>) -> Layout {
        let names: Vec<String> = channels.iter().map(|c| c.name().to_string()).collect();
        let mut taken: HashSet<String> = FIXED_COLUMNS.iter().map(|s| s.to_string()).collect();
        // Raw names first, so that `raw_pm25` is always pm25's raw value.
        let raw_names: Vec<String> =
            names.iter().map(|n| unique_name(&mut taken, format!("raw_{n}"), format!("raw_{n}"))).collect();
        let value_names: Vec<String> =
            names.iter().map(|n| unique_name(&mut taken, n.clone(), format!("value_{n}"))).collect();
        let ctx_names: Vec<String> =
            context.iter().map(|k| unique_name(&mut taken, k.clone(), format!("ctx_{k}"))).collect();

        let mut fields = vec![Field::new("device_id", DataType::Utf8, false), Field::new("ts", ts_type(), false)];
        for (n, col) in names.iter().zip(&value_names) {
            fields.push(tagged(col.clone(), DataType::Float64, META_CHANNEL, n));
        }
        for (n, col) in names.iter().zip(&raw_names) {
            fields.push(tagged(col.clone(), DataType::Float64, META_RAW, n));
        }
        for (k, col) in context.iter().zip(&ctx_names) {
            fields.push(tagged(col.clone(), DataType::Utf8, META_CONTEXT, k));
        }
        fields.push(Field::new("late", DataType::Boolean, false));
        fields.push(Field::new("future", DataType::Boolean, false));
        fields.push(Field::new("junk", junk_type(), false));
        fields.push(Field::new("src_partition", DataType::UInt32, false));
        fields.push(Field::new("src_offset", DataType::UInt64, false));
        let schema =
            Schema::new(fields).with_metadata(HashMap::from([(META_FORMAT.to_string(), "backup/2".to_string())]));

        let max_idx = channels.iter().map(|c| usize::from(c.index()) + 1).max().unwrap_or(0);
        let mut channel_slot = vec![NONE; max_idx];
        for (i, c) in channels.iter().enumerate() {
            channel_slot[usize::from(c.index())] = i as u32;
        }
        let context_slot = context.iter().enumerate().map(|(i, k)| (k.clone(), i as u32)).collect();
        let mut dictionary = vec![ColumnPath::from("device_id")];
        dictionary.extend(ctx_names.iter().map(|n| ColumnPath::from(n.as_str())));
        dictionary.push(ColumnPath::from(vec!["junk".to_string(), "list".to_string(), "item".to_string()]));
        Layout { channels, context, channel_slot, context_slot, schema: Arc::new(schema), dictionary }
    }

    fn slot(&self, c: Channel) -> Option<usize> {
        match self.channel_slot.get(usize::from(c.index())) {
            Some(&s) if s != NONE => Some(s as usize),
            _ => None,
        }
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn junk_item() -> Field {
    Field::new_list_field(DataType::Utf8, false)
}

fn junk_type() -> DataType {
    DataType::List(Arc::new(junk_item()))
}

/// Every channel and context key this writer has seen; gives the layout of
/// new files.
struct Tracker {
    seen: Vec<bool>,
    extra: BTreeMap<String, Channel>,
    context: BTreeSet<String>,
    last_ctx: Option<Context>,
    layout: Arc<Layout>,
}

impl Tracker {
    fn new() -> Tracker {
        let standard = vec![Channel::PM25, Channel::CO2, Channel::VOC, Channel::TEMP, Channel::HUM];
        let mut seen = Vec::new();
        for c in &standard {
            mark(&mut seen, *c);
        }
        Tracker {
            seen,
            extra: BTreeMap::new(),
            context: BTreeSet::new(),
            last_ctx: None,
            layout: Arc::new(Layout::new(standard, Vec::new())),
        }
    }

    /// Adds the columns of `batch`; rebuilds the layout if any is new.
    fn observe(&mut self, batch: &[Enriched]) {
        let mut changed = false;
        for r in batch {
            for (c, _) in r.values.iter().chain(r.raw.iter()) {
                if mark(&mut self.seen, *c) {
                    self.extra.insert(c.name().to_string(), *c);
                    changed = true;
                }
            }
            if let Some(ctx) = &r.context {
                if self.last_ctx.as_ref().is_some_and(|l| same_keys(l, ctx)) {
                    continue;
                }
                for (k, _) in ctx.iter() {
                    if !self.context.contains(k) {
                        self.context.insert(k.clone());
                        changed = true;
                    }
                }
                self.last_ctx = Some(Arc::clone(ctx));
            }
        }
        if changed {
            let mut channels = self.layout.channels[..5].to_vec();
            channels.extend(self.extra.values().copied());
            let context = self.context.iter().cloned().collect();
            self.layout = Arc::new(Layout::new(channels, context));
        }
    }
}

/// True when `a` and `b` have the same keys in the same order: all a
/// context's columns and their places depend on. Every device of a fleet
/// usually has the same columns, so this spares a lookup per key and row.
fn same_keys(a: &Context, b: &Context) -> bool {
    Arc::ptr_eq(a, b) || a.same_names(b)
}

/// Marks `c` seen; true if it was not.
fn mark(seen: &mut Vec<bool>, c: Channel) -> bool {
    let i = usize::from(c.index());
    if i >= seen.len() {
        seen.resize(i + 1, false);
    }
    !std::mem::replace(&mut seen[i], true)
}

/// Arrow builders for one backup file.
pub(crate) struct BackupEncoder {
    layout: Arc<Layout>,
    device: StringBuilder,
    ts: TimestampMillisecondBuilder,
    values: Vec<Float64Builder>,
    raw: Vec<Float64Builder>,
    context: Vec<StringBuilder>,
    late: BooleanBuilder,
    future: BooleanBuilder,
    junk: ListBuilder<StringBuilder>,
    partition: UInt32Builder,
    offset: UInt64Builder,
    scratch: Vec<Option<f64>>,
    last_ctx: Option<Context>,
    last_ctx_fits: bool,
    /// For each context column, the index of its key in `last_ctx`.
    ctx_map: Vec<u32>,
}

impl BackupEncoder {
    fn new(layout: Arc<Layout>) -> BackupEncoder {
        let n = layout.channels.len();
        let m = layout.context.len();
        BackupEncoder {
            device: StringBuilder::new(),
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            values: (0..n).map(|_| Float64Builder::new()).collect(),
            raw: (0..n).map(|_| Float64Builder::new()).collect(),
            context: (0..m).map(|_| StringBuilder::new()).collect(),
            late: BooleanBuilder::new(),
            future: BooleanBuilder::new(),
            junk: ListBuilder::new(StringBuilder::new()).with_field(junk_item()),
            partition: UInt32Builder::new(),
            offset: UInt64Builder::new(),
            scratch: vec![None; n],
            last_ctx: None,
            last_ctx_fits: false,
            ctx_map: vec![NONE; m],
            layout,
        }
    }

    /// Maps `ctx`'s keys to context columns (cached per `Arc`); false if a
    /// key has no column.
    fn map_context(&mut self, ctx: &Context) -> bool {
        if self.last_ctx.as_ref().is_some_and(|l| same_keys(l, ctx)) {
            return self.last_ctx_fits;
        }
        self.ctx_map.fill(NONE);
        let mut fits = true;
        for (i, (k, _)) in ctx.iter().enumerate() {
            match self.layout.context_slot.get(k.as_str()) {
                Some(&s) => self.ctx_map[s as usize] = i as u32,
                None => fits = false,
            }
        }
        self.last_ctx = Some(Arc::clone(ctx));
        self.last_ctx_fits = fits;
        fits
    }
}

impl Encoder for BackupEncoder {
    type Row = Enriched;

    fn key(row: &Enriched) -> RowKey {
        RowKey { ts: row.ts, partition: row.pos.partition, offset: row.pos.offset }
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.layout.schema)
    }

    fn dictionary_columns(&self) -> Vec<ColumnPath> {
        self.layout.dictionary.clone()
    }

    fn fits(&mut self, row: &Enriched) -> bool {
        let channels_fit = row.values.iter().chain(row.raw.iter()).all(|(c, _)| self.layout.slot(*c).is_some());
        channels_fit
            && match &row.context {
                Some(ctx) => self.map_context(ctx),
                None => true,
            }
    }

    fn append(&mut self, row: &Enriched) {
        row.device.with_name(|n| self.device.append_value(n));
        self.ts.append_value(row.ts);
        for (values, builders) in [(&row.values, &mut self.values), (&row.raw, &mut self.raw)] {
            self.scratch.fill(None);
            for (c, v) in values.iter() {
                if let Some(s) = self.layout.slot(*c) {
                    self.scratch[s] = *v;
                }
            }
            for (b, v) in builders.iter_mut().zip(&self.scratch) {
                b.append_option(*v);
            }
        }
        match &row.context {
            Some(ctx) => {
                self.map_context(ctx);
                for (b, &i) in self.context.iter_mut().zip(&self.ctx_map) {
                    match ctx.get(i as usize) {
                        Some((_, v)) if i != NONE => b.append_value(v),
                        _ => b.append_null(),
                    }
                }
            }
            None => {
                for b in &mut self.context {
                    b.append_null();
                }
            }
        }
        self.late.append_value(row.late);
        self.future.append_value(row.future);
        for c in row.junk.iter() {
            c.with_name(|n| self.junk.values().append_value(n));
        }
        self.junk.append(true);
        self.partition.append_value(row.pos.partition);
        self.offset.append_value(row.pos.offset);
    }

    fn len(&self) -> usize {
        self.late.len()
    }

    fn finish_batch(&mut self) -> std::result::Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.layout.schema.fields().len());
        cols.push(Arc::new(self.device.finish()));
        cols.push(Arc::new(self.ts.finish()));
        for b in self.values.iter_mut().chain(self.raw.iter_mut()) {
            cols.push(Arc::new(b.finish()));
        }
        for b in &mut self.context {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.late.finish()));
        cols.push(Arc::new(self.future.finish()));
        cols.push(Arc::new(self.junk.finish()));
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
        RecordBatch::try_new(Arc::clone(&self.layout.schema), cols)
    }
}

/// Writes enriched readings to the backup directory: Parquet files
/// partitioned by the UTC date of the event time, published through the
/// manifest (see the crate documentation). One per worker; drive it as a
/// [`BatchSink`].
pub struct BackupWriter {
    core: Core<BackupEncoder>,
    tracker: Tracker,
}

impl BackupWriter {
    /// A writer with id `writer_id` (e.g. `w3` for worker 3; `[A-Za-z0-9._-]`,
    /// unique among the writers sharing `dir`) writing under `dir`
    /// (`OUT/backup`), which it creates if needed.
    pub fn new(dir: &Path, writer_id: &str, cfg: BackupConfig) -> Result<Self> {
        Ok(BackupWriter { core: Core::new(dir, "backup", writer_id, cfg)?, tracker: Tracker::new() })
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

    /// The backup directory.
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

    /// The random run id in this writer's file names.
    pub fn run_id(&self) -> &str {
        self.core.run()
    }

    /// Rows written and not yet published.
    pub fn uncommitted_rows(&self) -> u64 {
        self.core.uncommitted_rows()
    }

    /// [`BatchSink::write`], returning the error: drains `batch` into the
    /// open files. After an error (this one or an earlier one) the rest of
    /// the batch is dropped.
    pub fn try_write(&mut self, batch: &mut Vec<Enriched>) -> Result<()> {
        let r = self.try_write_rows(batch);
        batch.clear();
        r
    }

    /// Writes `rows` (which stay the caller's: a batch shared with other
    /// consumers), returning the error; after an error (this one or an
    /// earlier one) the rest is dropped.
    pub fn try_write_rows(&mut self, rows: &[Enriched]) -> Result<()> {
        if self.core.check_ok().is_ok() {
            self.tracker.observe(rows);
        }
        let layout = &self.tracker.layout;
        self.core.write_batch(rows, || BackupEncoder::new(Arc::clone(layout)))
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

impl BatchSink<Enriched> for BackupWriter {
    fn write(&mut self, batch: &mut Vec<Enriched>) -> Result<(), SinkError> {
        self.try_write(batch).map_err(|e| SinkError::new(self.output(), e))
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        self.try_commit(upto).map_err(|e| SinkError::new(self.output(), e))?;
        Ok(durable_after(true, self.uncommitted_rows(), upto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_orders_and_names_columns() {
        let zeta = Channel::intern("zeta");
        let alpha = Channel::intern("alpha");
        let late = Channel::intern("src_offset");
        let mut channels = vec![Channel::PM25, Channel::CO2, Channel::VOC, Channel::TEMP, Channel::HUM];
        channels.extend([alpha, late, zeta]);
        let layout = Layout::new(channels, vec!["pm25".into(), "site".into()]);
        let names: Vec<&str> = layout.schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "device_id",
                "ts",
                "pm25",
                "co2",
                "voc",
                "temp",
                "hum",
                "alpha",
                "value_src_offset",
                "zeta",
                "raw_pm25",
                "raw_co2",
                "raw_voc",
                "raw_temp",
                "raw_hum",
                "raw_alpha",
                "raw_src_offset",
                "raw_zeta",
                "ctx_pm25",
                "site",
                "late",
                "future",
                "junk",
                "src_partition",
                "src_offset"
            ]
        );
        assert_eq!(layout.slot(zeta), Some(7));
        assert_eq!(layout.slot(Channel::intern("nope")), None);
    }

    #[test]
    fn config_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bad = |f: fn(&mut BackupConfig)| {
            let mut c = BackupConfig::default();
            f(&mut c);
            BackupWriter::new(dir.path(), "w0", c).is_err()
        };
        assert!(bad(|c| c.max_rows_per_file = 0));
        assert!(bad(|c| c.row_group_rows = 0));
        assert!(bad(|c| c.compression_level = 99));
        assert!(bad(|c| c.max_open_files = 0));
        assert!(BackupWriter::new(dir.path(), "w/0", BackupConfig::default()).is_err());
        assert!(BackupWriter::new(dir.path(), "w0", BackupConfig::default()).is_ok());
    }
}
