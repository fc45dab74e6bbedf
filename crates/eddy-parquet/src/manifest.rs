//! The manifest: which data files are committed.
//!
//! See the crate documentation for the format.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// The manifest directory's name inside a backup or raw archive directory.
pub const MANIFEST_DIR: &str = "_manifest";

/// The manifest format version this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// One commit of one writer: the files it published, in one JSON file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Format version: [`MANIFEST_VERSION`].
    pub version: u32,
    /// `"backup"` or `"raw"`.
    #[serde(default)]
    pub kind: String,
    /// The writer id (one per worker).
    pub writer: String,
    /// The writer's run id (random, drawn when the writer was created).
    #[serde(default)]
    pub run: String,
    /// The commit's sequence number within the run.
    #[serde(default)]
    pub seq: u64,
    /// The frontier of the commit (`upto`): every record at a dataflow time
    /// before it had been written. `None`: the input had ended.
    pub epoch: Option<u64>,
    /// The files published by this commit.
    pub files: Vec<FileEntry>,
}

/// A committed data file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The path relative to the backup (or raw archive) directory, with `/`
    /// separators: `date=YYYY-MM-DD/part-….parquet`.
    pub path: String,
    /// Number of rows.
    pub rows: u64,
    /// Size of the file in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Smallest event time (backup) or arrival time (raw), epoch ms UTC.
    pub min_ts: i64,
    /// Largest event time (backup) or arrival time (raw), epoch ms UTC.
    pub max_ts: i64,
    /// Smallest `src_offset` (over all input partitions).
    pub min_offset: u64,
    /// Largest `src_offset` (over all input partitions).
    pub max_offset: u64,
    /// Per input partition: rows and offset range.
    #[serde(default)]
    pub partitions: Vec<PartitionRange>,
}

/// The rows of one input partition in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    /// The input partition (`src_partition`).
    pub partition: u32,
    /// Rows from it.
    pub rows: u64,
    /// Smallest `src_offset` of those rows.
    pub min_offset: u64,
    /// Largest `src_offset` of those rows.
    pub max_offset: u64,
}

/// All committed manifest entries of a backup or raw archive directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    dir: PathBuf,
    /// The entries, in file name order (by epoch, then writer).
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads every committed entry under `dir/_manifest/`. A missing
    /// manifest directory means nothing is committed. Temporary files
    /// (names starting with `.`) are ignored; an unreadable entry or one of
    /// another version is an error.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let mdir = dir.join(MANIFEST_DIR);
        let mut names = Vec::new();
        match fs::read_dir(&mdir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|err| Error::io(&mdir, err))?;
                    let name = e.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with('.') || !name.ends_with(".json") {
                        continue;
                    }
                    names.push(name.to_string());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&mdir, e)),
        }
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let path = mdir.join(&name);
            let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let entry: ManifestEntry = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Manifest { path: path.clone(), detail: e.to_string() })?;
            if entry.version != MANIFEST_VERSION {
                return Err(Error::Manifest {
                    path,
                    detail: format!("version {} is not supported (expected {MANIFEST_VERSION})", entry.version),
                });
            }
            for f in &entry.files {
                if !is_safe_relative(&f.path) {
                    return Err(Error::Manifest {
                        path,
                        detail: format!("file path {:?} is not a relative data file path", f.path),
                    });
                }
            }
            entries.push(entry);
        }
        Ok(Manifest { dir: dir.to_path_buf(), entries })
    }

    /// The directory this manifest describes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every committed file, in manifest order (each once).
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> + '_ {
        let mut seen = BTreeSet::new();
        self.entries.iter().flat_map(|e| e.files.iter()).filter(move |f| seen.insert(f.path.as_str()))
    }

    /// The full paths of every committed file, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let set: BTreeSet<&str> = self.files().map(|f| f.path.as_str()).collect();
        set.into_iter().map(|p| self.dir.join(p)).collect()
    }

    /// Total committed rows.
    pub fn rows(&self) -> u64 {
        self.files().map(|f| f.rows).sum()
    }

    /// The largest committed `src_offset` of input `partition` written by
    /// `writer`, if it committed any row of that partition.
    pub fn max_offset(&self, writer: &str, partition: u32) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.writer == writer)
            .flat_map(|e| e.files.iter())
            .flat_map(|f| f.partitions.iter())
            .filter(|p| p.partition == partition)
            .map(|p| p.max_offset)
            .max()
    }

    /// The largest committed `src_offset` per `(writer, partition)`.
    pub fn max_offsets(&self) -> BTreeMap<(String, u32), u64> {
        let mut out: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for e in &self.entries {
            for p in e.files.iter().flat_map(|f| f.partitions.iter()) {
                let slot = out.entry((e.writer.clone(), p.partition)).or_insert(0);
                *slot = (*slot).max(p.max_offset);
            }
        }
        out
    }

    /// The largest committed epoch of `writer` (`Some(None)` once it
    /// committed the end of input; `None` if it committed nothing).
    pub fn last_epoch(&self, writer: &str) -> Option<Option<u64>> {
        self.entries.iter().filter(|e| e.writer == writer).map(|e| e.epoch).max_by_key(|ep| ep.unwrap_or(u64::MAX))
    }
}

/// A manifest path must stay inside the directory: relative, `/`-separated,
/// no `..`, and a Parquet file.
fn is_safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.ends_with(".parquet")
}

/// The full paths of the committed data files under `dir`, sorted: what a
/// reader may read.
pub fn committed_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(Manifest::load(dir)?.paths())
}

/// Deletes what a crashed or killed writer left behind under `dir`:
/// temporary files (`.….tmp`), in the data directories and the manifest
/// directory, and `part-*.parquet` files that no manifest entry lists.
/// Returns the deleted paths. Run it on restart, before any writer starts:
/// it would delete a live writer's files in progress.
pub fn cleanup_uncommitted(dir: &Path) -> Result<Vec<PathBuf>> {
    let manifest = Manifest::load(dir)?;
    let committed: BTreeSet<&str> = manifest.files().map(|f| f.path.as_str()).collect();
    let mut removed = Vec::new();
    let mut dirs = vec![(dir.to_path_buf(), String::new())];
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|err| Error::io(dir, err))?;
                let is_dir = e.file_type().map_err(|err| Error::io(&e.path(), err))?;
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if is_dir.is_dir() && (name.starts_with("date=") || name == MANIFEST_DIR) {
                    dirs.push((e.path(), format!("{name}/")));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir, e)),
    }
    for (d, prefix) in dirs {
        let rd = fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for e in rd {
            let e = e.map_err(|err| Error::io(&d, err))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let is_file = e.file_type().map_err(|err| Error::io(&e.path(), err))?.is_file();
            if !is_file {
                continue;
            }
            let tmp = name.starts_with('.') && name.ends_with(".tmp");
            let orphan = name.starts_with("part-")
                && name.ends_with(".parquet")
                && !committed.contains(format!("{prefix}{name}").as_str());
            if tmp || orphan {
                let path = e.path();
                fs::remove_file(&path).map_err(|err| Error::io(&path, err))?;
                tracing::info!(path = %path.display(), "removed uncommitted file");
                removed.push(path);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Writes one manifest entry atomically and returns its path.
pub(crate) fn write_entry(dir: &Path, entry: &ManifestEntry) -> Result<PathBuf> {
    let mdir = dir.join(MANIFEST_DIR);
    let epoch = entry.epoch.unwrap_or(u64::MAX);
    let name = format!("{epoch:020}-{}-{}-{:06}.json", entry.writer, entry.run, entry.seq);
    let bytes =
        serde_json::to_vec(entry).map_err(|e| Error::Manifest { path: mdir.join(&name), detail: e.to_string() })?;
    write_atomic(&mdir, &name, &bytes)?;
    Ok(mdir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, partition: u32, min: u64, max: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            rows: max - min + 1,
            bytes: 10,
            min_ts: 0,
            max_ts: 1,
            min_offset: min,
            max_offset: max,
            partitions: vec![PartitionRange { partition, rows: max - min + 1, min_offset: min, max_offset: max }],
        }
    }

    fn entry(writer: &str, seq: u64, epoch: Option<u64>, files: Vec<FileEntry>) -> ManifestEntry {
        ManifestEntry {
            version: MANIFEST_VERSION,
            kind: "backup".into(),
            writer: writer.into(),
            run: "r".into(),
            seq,
            epoch,
            files,
        }
    }

    #[test]
    fn entries_round_trip_and_sort_by_epoch() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(MANIFEST_DIR)).unwrap();
        let a = entry("w0", 0, Some(10), vec![file("date=2026-01-01/part-a.parquet", 0, 1, 5)]);
        let b = entry("w1", 0, Some(2), vec![file("date=2026-01-01/part-b.parquet", 1, 3, 9)]);
        let c = entry("w0", 1, None, vec![file("date=2026-01-02/part-c.parquet", 0, 6, 7)]);
        for e in [&a, &b, &c] {
            write_entry(dir.path(), e).unwrap();
        }
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.entries, vec![b, a, c]);
        assert_eq!(m.rows(), 5 + 7 + 2);
        assert_eq!(m.max_offset("w0", 0), Some(7));
        assert_eq!(m.max_offset("w1", 1), Some(9));
        assert_eq!(m.max_offset("w1", 0), None);
        assert_eq!(m.max_offsets().len(), 2);
        assert_eq!(m.last_epoch("w0"), Some(None));
        assert_eq!(m.last_epoch("w1"), Some(Some(2)));
        assert_eq!(m.last_epoch("w9"), None);
        assert_eq!(
            committed_files(dir.path()).unwrap(),
            vec![
                dir.path().join("date=2026-01-01/part-a.parquet"),
                dir.path().join("date=2026-01-01/part-b.parquet"),
                dir.path().join("date=2026-01-02/part-c.parquet"),
            ]
        );
    }

    #[test]
    fn missing_manifest_is_empty_and_bad_entries_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Manifest::load(dir.path()).unwrap().entries.is_empty());
        let mdir = dir.path().join(MANIFEST_DIR);
        fs::create_dir_all(&mdir).unwrap();
        fs::write(mdir.join(".x.json.tmp"), b"garbage").unwrap();
        assert!(Manifest::load(dir.path()).unwrap().entries.is_empty());
        fs::write(mdir.join("1.json"), b"{\"version\":2,\"writer\":\"w\",\"epoch\":1,\"files\":[]}").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("1.json") && err.contains("version 2"), "{err}");
        fs::write(
            mdir.join("1.json"),
            b"{\"version\":1,\"writer\":\"w\",\"epoch\":1,\"files\":[{\"path\":\"../x.parquet\",\"rows\":1,\"min_ts\":0,\"max_ts\":0,\"min_offset\":0,\"max_offset\":0}]}",
        )
        .unwrap();
        assert!(Manifest::load(dir.path()).is_err());
        fs::write(mdir.join("1.json"), b"{").unwrap();
        assert!(Manifest::load(dir.path()).is_err());
    }

    #[test]
    fn safe_paths() {
        assert!(is_safe_relative("date=2026-01-01/part-x.parquet"));
        assert!(is_safe_relative("part-x.parquet"));
        assert!(!is_safe_relative("/etc/x.parquet"));
        assert!(!is_safe_relative("date=x/../../x.parquet"));
        assert!(!is_safe_relative("date=x//x.parquet"));
        assert!(!is_safe_relative("date=x/x.json"));
    }
}
