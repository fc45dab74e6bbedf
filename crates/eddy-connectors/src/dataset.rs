//! A recorded dataset directory: readings plus reference data.
//!
//! See `docs/formats.md` for the contract. Reference files are small and are
//! read whole when the dataset is opened; any error in them stops the run
//! with the file, the line, the field and the reason. Readings are streamed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use eddy_core::reading::{LineSource, Position};
use eddy_core::reference::{RefChange, RefUpdate, Row, Table, FOREVER};

use crate::error::{Error, Result};
use crate::lines::FileLines;

/// Where a dataset's readings come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Readings {
    /// `readings.jsonl` or `readings.jsonl.gz`.
    File(PathBuf),
    /// A Parquet backup made by eddy (`OUT/backup`): its committed, non-late
    /// readings, each device's in event-time order, as raw values.
    Backup(PathBuf),
}

/// An opened dataset.
#[derive(Debug)]
pub struct Dataset {
    /// The directory.
    pub dir: PathBuf,
    /// The readings: a file, or a backup.
    pub source: Readings,
    /// The readings' path (the file, or the backup directory).
    pub readings: PathBuf,
    /// Size of the readings file in bytes.
    pub readings_bytes: u64,
    /// The base reference tables (`devices.csv`, `calibration.csv`,
    /// `thresholds.csv`) as changes at time 0, in that order.
    pub base: Vec<RefUpdate>,
    /// `updates.jsonl`, sorted by `ts` (stable: equal times keep file order).
    pub updates: Vec<RefUpdate>,
}

impl Dataset {
    /// Opens `dir`, reading its reference files. `dir` may also be a backup
    /// made by eddy (a directory with `_manifest/`, or an output directory
    /// holding `backup/`); its reference data then comes from `reference`
    /// (a dataset directory), if given.
    pub fn open_with_reference(dir: &Path, reference: Option<&Path>) -> Result<Dataset> {
        let backup =
            [dir.to_path_buf(), dir.join("backup")].into_iter().find(|d| d.join(eddy_parquet::MANIFEST_DIR).is_dir());
        let Some(backup) = backup else {
            let mut d = Dataset::open(dir)?;
            if let Some(r) = reference {
                let r = Dataset::open(r)?;
                d.base = r.base;
                d.updates = r.updates;
            }
            return Ok(d);
        };
        let (base, updates) = match reference {
            Some(r) => {
                let r = Dataset::open(r)?;
                (r.base, r.updates)
            }
            None => (Vec::new(), Vec::new()),
        };
        // Validate the manifest now, so a broken backup fails before the run starts.
        eddy_parquet::Manifest::load(&backup).map_err(|e| Error::Parse {
            path: backup.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        // The size of the replayed lines is not known before they are read.
        let readings_bytes = 0;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            source: Readings::Backup(backup.clone()),
            readings: backup,
            readings_bytes,
            base,
            updates,
        })
    }

    /// Opens `dir`, reading its reference files.
    pub fn open(dir: &Path) -> Result<Dataset> {
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                hint: " (expected a dataset directory holding readings.jsonl; make one with `eddy gen DIR`)".into(),
            });
        }
        let readings =
            ["readings.jsonl", "readings.jsonl.gz"].iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(
                || Error::NotFound {
                    path: dir.join("readings.jsonl"),
                    hint: " (a dataset needs readings.jsonl or readings.jsonl.gz)".into(),
                },
            )?;
        let readings_bytes = std::fs::metadata(&readings).map_err(|e| Error::io(&readings, e))?.len();
        let mut base = Vec::new();
        for (file, table, required) in [
            ("devices.csv", Table::Devices, &["device_id"][..]),
            ("calibration.csv", Table::Calibration, &["device_id", "channel", "gain", "offset"][..]),
            ("thresholds.csv", Table::Rules, &["rule_id", "device_id", "channel", "rise_above", "fall_below"][..]),
        ] {
            let path = dir.join(file);
            if path.is_file() {
                base.extend(read_csv_table(&path, table, required)?);
            }
        }
        let path = dir.join("updates.jsonl");
        let updates = if path.is_file() { read_updates(&path)? } else { Vec::new() };
        Ok(Dataset {
            dir: dir.to_path_buf(),
            source: Readings::File(readings.clone()),
            readings,
            readings_bytes,
            base,
            updates,
        })
    }

    /// Takes the reference changes out of the dataset: the base tables, then
    /// the updates, in one list (the base tables' own allocation, so nothing
    /// is copied). Both lists are left empty with their memory freed: the
    /// base tables of a million devices take over 100 MB, and a `Vec` that
    /// was appended elsewhere keeps its capacity for as long as the dataset
    /// lives, which is the whole run.
    pub fn take_reference(&mut self) -> Vec<RefUpdate> {
        let mut all = std::mem::take(&mut self.base);
        all.append(&mut self.updates);
        self.updates = Vec::new();
        all
    }

    /// Opens the readings for reading.
    pub fn lines(&self) -> Result<Box<dyn LineSource>> {
        self.lines_at(0, 0)
    }

    /// Opens the readings after their first `lines` lines, which end at byte
    /// `offset` of the (decompressed) file (a backup's rows are skipped by
    /// count): where a checkpoint's restart goes on.
    pub fn lines_at(&self, lines: u64, offset: u64) -> Result<Box<dyn LineSource>> {
        match &self.source {
            Readings::File(p) => Ok(Box::new(FileLines::open_at(p, lines, offset)?)),
            Readings::Backup(dir) => {
                let mut b = BackupLines::open(dir)?;
                let mut buf = Vec::new();
                for _ in 0..lines {
                    buf.clear();
                    if b.next_line(&mut buf).map_err(|e| Error::io(dir, e))?.is_none() {
                        break;
                    }
                }
                Ok(Box::new(b))
            }
        }
    }
}

/// The readings of a backup as dataset lines: the committed, non-late rows,
/// ordered by event time (so each device's are in event-time order), with
/// their values as received. Late rows are left out: in event-time order
/// they would not be late, and would enter statistics the original run kept
/// them out of.
pub struct BackupLines {
    dir: PathBuf,
    lines: std::vec::IntoIter<String>,
    line_no: u64,
    bytes: u64,
}

impl BackupLines {
    /// Reads the committed rows of the backup at `dir`.
    pub fn open(dir: &Path) -> Result<BackupLines> {
        let mut rows = eddy_parquet::read_backup(dir).map_err(|e| Error::Parse {
            path: dir.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        rows.retain(|r| !r.late);
        eddy_parquet::sort_for_replay(&mut rows);
        let lines: Vec<String> = rows.iter().map(eddy_parquet::to_jsonl_line).collect();
        Ok(BackupLines { dir: dir.to_path_buf(), lines: lines.into_iter(), line_no: 0, bytes: 0 })
    }
}

impl LineSource for BackupLines {
    fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>> {
        match self.lines.next() {
            Some(l) => {
                buf.extend_from_slice(l.as_bytes());
                self.line_no += 1;
                self.bytes += l.len() as u64 + 1;
                Ok(Some(Position::line(self.line_no)))
            }
            None => Ok(None),
        }
    }

    fn bytes_read(&self) -> u64 {
        self.bytes
    }

    fn describe(&self) -> String {
        format!("backup {}", self.dir.display())
    }
}

/// Reads a reference table from CSV (with a header row) as changes at time 0.
pub fn read_csv_table(path: &Path, table: Table, required: &[&str]) -> Result<Vec<RefUpdate>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| Error::Parse { path: path.to_path_buf(), line: 1, message: e.to_string() })?;
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::Parse { path: path.to_path_buf(), line: 1, message: e.to_string() })?
        .iter()
        .map(|h| h.to_string())
        .collect();
    for r in required {
        if !headers.iter().any(|h| h == r) {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line: 1,
                message: format!("missing column `{r}` in the header (found: {})", headers.join(",")),
            });
        }
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            Error::Parse { path: path.to_path_buf(), line, message: e.to_string() }
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let row: Row = headers.iter().cloned().zip(rec.iter().map(|v| Value::String(v.to_string()))).collect();
        let change = RefChange::from_row(table, false, &row, FOREVER).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        out.push(RefUpdate { ts: 0, change });
    }
    Ok(out)
}

/// Reads `updates.jsonl`: `{"ts":…, "table":…, "op":"upsert"|"delete", "row":{…}}` per line.
pub fn read_updates(path: &Path) -> Result<Vec<RefUpdate>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| Error::Parse { path: path.to_path_buf(), line: line_no, message };
        let v: Value = serde_json::from_str(&line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        out.push(RefUpdate::from_json(&v).map_err(err)?);
    }
    out.sort_by_key(|u| u.ts);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readings.jsonl"), "").unwrap();
        std::fs::write(
            dir.path().join("calibration.csv"),
            "device_id,channel,gain,offset\nd1,pm25,1.0,0\nd2,pm25,abc,0\n",
        )
        .unwrap();
        let e = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("calibration.csv:3: field `gain`: must be a number, found \"abc\""), "{e}");

        std::fs::write(dir.path().join("calibration.csv"), "device_id,channel,gain\n").unwrap();
        let e = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("calibration.csv:1: missing column `offset`"), "{e}");

        std::fs::remove_file(dir.path().join("calibration.csv")).unwrap();
        std::fs::write(dir.path().join("updates.jsonl"), "{\"ts\":5,\"table\":\"rules\",\"op\":\"upsert\",\"row\":{\"rule_id\":\"r\",\"channel\":\"voc\",\"rise_above\":5,\"fall_below\":\"x\"}}\n").unwrap();
        let e = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("updates.jsonl:1: row.field `fall_below`: must be a number, found \"x\""), "{e}");
    }

    #[test]
    fn take_reference_gives_base_then_updates_and_frees_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readings.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("devices.csv"), "device_id,site\nd1,s1\nd2,s2\n").unwrap();
        std::fs::write(
            dir.path().join("updates.jsonl"),
            "{\"ts\":20,\"table\":\"devices\",\"op\":\"delete\",\"row\":{\"device_id\":\"d1\"}}\n",
        )
        .unwrap();
        let mut d = Dataset::open(dir.path()).unwrap();
        let all = d.take_reference();
        let ts: Vec<i64> = all.iter().map(|u| u.ts).collect();
        assert_eq!(ts, vec![0, 0, 20]);
        assert!(matches!(all[2].change, RefChange::DeleteDevice(_)), "{:?}", all[2]);
        // Nothing is left behind in the dataset, which lives for the whole run.
        assert_eq!((d.base.capacity(), d.updates.capacity()), (0, 0));
    }

    #[test]
    fn missing_dataset_is_a_clear_error() {
        let e = Dataset::open(Path::new("/nonexistent/eddy")).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn updates_are_sorted_and_default_valid_from_to_their_ts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readings.jsonl"), "").unwrap();
        std::fs::write(
            dir.path().join("updates.jsonl"),
            "{\"ts\":20,\"table\":\"devices\",\"op\":\"delete\",\"row\":{\"device_id\":\"a\"}}\n\
             {\"ts\":10,\"table\":\"calibration\",\"op\":\"upsert\",\"row\":{\"device_id\":\"a\",\"channel\":\"pm25\",\"gain\":2,\"offset\":1}}\n",
        )
        .unwrap();
        let d = Dataset::open(dir.path()).unwrap();
        assert_eq!(d.updates.iter().map(|u| u.ts).collect::<Vec<_>>(), vec![10, 20]);
        match &d.updates[0].change {
            RefChange::UpsertCalibration(_, c) => assert_eq!(c.valid_from, 10),
            other => panic!("{other:?}"),
        }
    }
}
