//! Reading the backup for training: the committed rows, by device.

use std::collections::BTreeMap;
use std::path::Path;

use eddy_parquet::BackupRow;

use crate::error::{Error, Result};
use crate::model::TrainingData;

/// The committed rows of a backup (the manifest decides what is committed).
pub fn load(dir: &Path) -> Result<Vec<BackupRow>> {
    let rows = eddy_parquet::read_backup(dir).map_err(|source| Error::Backup { dir: dir.to_path_buf(), source })?;
    if rows.is_empty() {
        return Err(Error::Data(format!(
            "{}: the backup has no committed rows (is it a backup directory, OUT/backup?)",
            dir.display()
        )));
    }
    Ok(rows)
}

/// What the rows cover.
pub fn describe(dir: &Path, rows: &[BackupRow]) -> TrainingData {
    let devices: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
    TrainingData {
        backup: dir.display().to_string(),
        from_ts: rows.iter().map(|r| r.ts).min().unwrap_or(0),
        to_ts: rows.iter().map(|r| r.ts).max().unwrap_or(0),
        rows: rows.len() as u64,
        devices: devices.len() as u64,
    }
}

/// The value of `channel` in a list of (channel, value) columns.
pub fn get(cols: &[(String, Option<f64>)], channel: &str) -> Option<f64> {
    cols.iter().find(|(c, _)| c == channel).and_then(|(_, v)| *v)
}

/// Per device, the (ts, calibrated value) of `channel` of the non-late rows,
/// in event-time order (ties by input position).
pub fn series(rows: &[BackupRow], channel: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut by_dev: BTreeMap<String, Vec<(i64, u64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.late && !r.future) {
        if let Some(v) = get(&r.values, channel) {
            by_dev.entry(r.device_id.clone()).or_default().push((r.ts, r.pos.offset, v));
        }
    }
    by_dev
        .into_iter()
        .map(|(d, mut s)| {
            s.sort_by_key(|&(t, o, _)| (t, o));
            (d, s.into_iter().map(|(t, _, v)| (t, v)).collect())
        })
        .collect()
}
