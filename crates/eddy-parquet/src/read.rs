//! Reading a backup back: for checks, and for replay as a reading stream.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMillisecondType};
use arrow::datatypes::{UInt32Type, UInt64Type};
use eddy_core::reading::Position;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::manifest::committed_files;
use crate::meta::{META_CHANNEL, META_CONTEXT, META_RAW};

/// One row of a backup, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupRow {
    /// The device id.
    pub device_id: String,
    /// Event time, epoch ms UTC.
    pub ts: i64,
    /// The values as received (the `raw_` columns), one per channel column
    /// of the file, in column order; `None` where null (absent or null in
    /// the reading).
    pub raw: Vec<(String, Option<f64>)>,
    /// The calibrated values, likewise; `None` also where junk.
    pub values: Vec<(String, Option<f64>)>,
    /// The non-null device context columns, in column order.
    pub context: Vec<(String, String)>,
    /// Whether the reading was late.
    pub late: bool,
    /// Whether the reading was future (false in files without the column,
    /// written before it existed).
    pub future: bool,
    /// Its junk channels.
    pub junk: Vec<String>,
    /// Where it was read from (`src_partition`, `src_offset`).
    pub pos: Position,
}

/// Calls `f` with each record batch of a Parquet file.
pub(crate) fn for_each_batch(path: &Path, mut f: impl FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet(path, e))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| Error::parquet(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::arrow(path, e))?;
        f(&batch)?;
    }
    Ok(())
}

/// The column `name` of `batch`, or a format error.
pub(crate) fn column<'b>(path: &Path, batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::format(path, format!("no column `{name}`")))
}

/// `array` cast to `to` (a no-op when it already is), or a format error.
fn cast_to(path: &Path, name: &str, array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    cast(array, to).map_err(|e| Error::format(path, format!("column `{name}`: {e}")))
}

fn no_nulls(path: &Path, name: &str, array: &ArrayRef) -> Result<()> {
    if array.null_count() > 0 {
        return Err(Error::format(path, format!("column `{name}` has nulls")));
    }
    Ok(())
}

/// What a backup column holds.
enum Role {
    Value(String),
    Raw(String),
    Context(String),
    Other,
}

fn role(field: &arrow::datatypes::Field) -> Role {
    let meta = field.metadata();
    if let Some(c) = meta.get(META_CHANNEL) {
        return Role::Value(c.clone());
    }
    if let Some(c) = meta.get(META_RAW) {
        return Role::Raw(c.clone());
    }
    if let Some(k) = meta.get(META_CONTEXT) {
        return Role::Context(k.clone());
    }
    // A file rewritten by another tool may have lost the field metadata:
    // fall back to the names.
    let name = field.name().as_str();
    if matches!(name, "device_id" | "ts" | "late" | "future" | "junk" | "src_partition" | "src_offset") {
        return Role::Other;
    }
    match field.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => match name.strip_prefix("raw_") {
            Some(c) => Role::Raw(c.to_string()),
            None => Role::Value(name.to_string()),
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Role::Context(name.to_string()),
        _ => Role::Other,
    }
}

/// The Float64 arrays of value or raw columns.
fn floats<'a>(path: &Path, cols: &'a [(String, ArrayRef)]) -> Result<Vec<(&'a str, &'a Float64Array)>> {
    cols.iter()
        .map(|(c, a)| {
            let a = a
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| Error::format(path, format!("column of `{c}` is not Float64")))?;
            Ok((c.as_str(), a))
        })
        .collect()
}

/// Reads one backup data file (whether committed or not).
pub fn read_backup_file(path: &Path) -> Result<Vec<BackupRow>> {
    let mut out = Vec::new();
    for_each_batch(path, |batch| decode_batch(path, batch, &mut out))?;
    Ok(out)
}

fn decode_batch(path: &Path, batch: &RecordBatch, out: &mut Vec<BackupRow>) -> Result<()> {
    let utf8 = DataType::Utf8;
    let device = cast_to(path, "device_id", column(path, batch, "device_id")?, &utf8)?;
    no_nulls(path, "device_id", &device)?;
    let ts = column(path, batch, "ts")?;
    let ts = match ts.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => ts.clone(),
        _ => cast_to(path, "ts", ts, &DataType::Timestamp(TimeUnit::Millisecond, None))?,
    };
    no_nulls(path, "ts", &ts)?;
    let partition = cast_to(path, "src_partition", column(path, batch, "src_partition")?, &DataType::UInt32)?;
    no_nulls(path, "src_partition", &partition)?;
    let offset = cast_to(path, "src_offset", column(path, batch, "src_offset")?, &DataType::UInt64)?;
    no_nulls(path, "src_offset", &offset)?;
    let late = match batch.column_by_name("late") {
        Some(a) => Some(cast_to(path, "late", a, &DataType::Boolean)?),
        None => None,
    };
    let future = batch.column_by_name("future").filter(|a| a.data_type() == &DataType::Boolean);
    let junk = batch.column_by_name("junk");

    let mut values = Vec::new();
    let mut raw = Vec::new();
    let mut context = Vec::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        match role(field) {
            Role::Value(c) => values.push((c, cast_to(path, field.name(), array, &DataType::Float64)?)),
            Role::Raw(c) => raw.push((c, cast_to(path, field.name(), array, &DataType::Float64)?)),
            Role::Context(k) => context.push((k, cast_to(path, field.name(), array, &utf8)?)),
            Role::Other => {}
        }
    }

    let bad = |what: &str| Error::format(path, format!("column `{what}` has an unexpected type"));
    let device = device.as_string_opt::<i32>().ok_or_else(|| bad("device_id"))?;
    let ts = ts.as_primitive_opt::<TimestampMillisecondType>().ok_or_else(|| bad("ts"))?;
    let partition = partition.as_primitive_opt::<UInt32Type>().ok_or_else(|| bad("src_partition"))?;
    let offset = offset.as_primitive_opt::<UInt64Type>().ok_or_else(|| bad("src_offset"))?;
    let late = match &late {
        Some(a) => Some(a.as_boolean_opt().ok_or_else(|| bad("late"))?),
        None => None,
    };
    let future = match future {
        Some(a) => Some(a.as_boolean_opt().ok_or_else(|| bad("future"))?),
        None => None,
    };
    let junk = match junk {
        Some(a) => Some(a.as_list_opt::<i32>().ok_or_else(|| bad("junk"))?),
        None => None,
    };
    let values = floats(path, &values)?;
    let raw = floats(path, &raw)?;
    let context = context
        .iter()
        .map(|(k, a)| {
            let a = a.as_string_opt::<i32>().ok_or_else(|| bad(k))?;
            Ok((k.clone(), a))
        })
        .collect::<Result<Vec<_>>>()?;

    let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let junk = match junk {
            Some(list) if !list.is_null(i) => {
                let items = list.value(i);
                let items = items
                    .as_string_opt::<i32>()
                    .ok_or_else(|| bad("junk"))?
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect();
                items
            }
            _ => Vec::new(),
        };
        out.push(BackupRow {
            device_id: device.value(i).to_string(),
            ts: ts.value(i),
            raw: raw.iter().map(|(c, a)| (c.to_string(), opt(a, i))).collect(),
            values: values.iter().map(|(c, a)| (c.to_string(), opt(a, i))).collect(),
            context: context
                .iter()
                .filter(|(_, a)| !a.is_null(i))
                .map(|(k, a)| (k.clone(), a.value(i).to_string()))
                .collect(),
            late: late.is_some_and(|l| !l.is_null(i) && l.value(i)),
            future: future.is_some_and(|l| !l.is_null(i) && l.value(i)),
            junk,
            pos: Position { partition: partition.value(i), offset: offset.value(i) },
        });
    }
    Ok(())
}

/// Reads every row of the files committed in the manifest of `dir`
/// (`OUT/backup`), file by file in path order. Files that no manifest entry
/// lists (in progress, or left by a crash) are not read; a listed file that
/// is missing is an error.
pub fn read_backup(dir: &Path) -> Result<Vec<BackupRow>> {
    let mut out = Vec::new();
    for path in committed_files(dir)? {
        for_each_batch(&path, |batch| decode_batch(&path, batch, &mut out))?;
    }
    Ok(out)
}

/// Orders rows for replay as a reading stream: by event time, ties by
/// device id, then by input position. Each device's readings are thus in
/// event-time order, and the whole stream is too.
pub fn sort_for_replay(rows: &mut [BackupRow]) {
    rows.sort_by(|a, b| (a.ts, &a.device_id, a.pos).cmp(&(b.ts, &b.device_id, b.pos)));
}

/// Renders a row in the dataset's reading format, with the values **as
/// received** (the `raw_` columns): `{"device_id":"d1","ts":1767225600000,
/// "pm25":12.5,"co2":400.0}`. Null raw values are left out (a backup cannot
/// tell a null from an absent channel), as are the backup's own fields
/// (`late`, `junk`, context): replaying the line recomputes them.
pub fn to_jsonl_line(row: &BackupRow) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(48 + 16 * row.raw.len());
    s.push_str("{\"device_id\":");
    s.push_str(&serde_json::Value::String(row.device_id.clone()).to_string());
    let _ = write!(s, ",\"ts\":{}", row.ts);
    for (c, v) in &row.raw {
        let Some(n) = v.and_then(serde_json::Number::from_f64) else {
            continue;
        };
        s.push(',');
        s.push_str(&serde_json::Value::String(c.clone()).to_string());
        let _ = write!(s, ":{n}");
    }
    s.push('}');
    s
}
