//! The store: one directory per checkpoint under a root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::frame::{header, unframe, FORMAT_VERSION, HEADER_LEN};
use crate::manifest::{validate_name, FileEntry, Manifest, MANIFEST_NAME};

/// The temporary name `manifest.json` is written under before the rename.
const MANIFEST_TMP: &str = ".manifest.json.tmp";

/// A checkpoint store rooted at a local directory. See the [crate
/// documentation](crate) for the layout.
///
/// One process writes a store at a time ([`begin`](Store::begin) and
/// [`gc`](Store::gc)); any number may read it.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The state of one checkpoint directory, as [`Store::list`] sees it.
#[derive(Debug)]
pub enum Status {
    /// The manifest verifies and every state file it lists is present with
    /// the right size (their checksums are not read: [`Store::load`] does).
    Complete(Manifest),
    /// No `manifest.json`: the checkpoint was never committed (a crash
    /// while writing it), or is being written.
    Incomplete,
    /// The manifest is unreadable or fails its checksum, or a state file is
    /// missing or of the wrong size.
    Corrupt(Error),
}

/// One checkpoint directory of a store.
#[derive(Debug)]
pub struct Listed {
    /// The checkpoint id.
    pub id: u64,
    /// Whether it is complete.
    pub status: Status,
    /// The total size of the files in its directory.
    pub bytes_on_disk: u64,
}

/// A checkpoint read back and verified.
#[derive(Debug)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// The payload of each state file, by name, checksum-verified.
    pub files: BTreeMap<String, Vec<u8>>,
    /// For [`Store::load_latest`]: the newer checkpoints that were rejected,
    /// newest first, each with the reason. Incomplete directories (no
    /// manifest) are not rejections and are not listed. Empty for
    /// [`Store::load`].
    pub skipped: Vec<(u64, Error)>,
}

impl Loaded {
    /// The payload of state file `name`, if the checkpoint has one.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }
}

/// A checkpoint being written: [`put`](Pending::put) its state files, then
/// [`commit`](Pending::commit). Dropped without a commit, it leaves an
/// incomplete directory, which loading ignores and [`Store::gc`] (or a
/// [`Store::begin`] of the same id) removes.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    id: u64,
    frontier: u64,
    files: Vec<FileEntry>,
    names: BTreeSet<String>,
}

/// The directory name of checkpoint `id`: 20 digits, zero-padded.
pub fn dir_name(id: u64) -> String {
    format!("{id:020}")
}

/// The id named by a checkpoint directory name, if it is one.
fn parse_dir_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// The local directory of a store location: a path or a `file://` URL.
fn parse_location(location: &str) -> Result<PathBuf> {
    let invalid = |reason| Error::InvalidLocation { location: location.into(), reason };
    if location.is_empty() {
        return Err(invalid("empty location"));
    }
    if let Some((scheme, rest)) = location.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            if !scheme.eq_ignore_ascii_case("file") {
                return Err(Error::UnsupportedScheme { location: location.into(), scheme: scheme.into() });
            }
            let path = match rest.strip_prefix("localhost") {
                Some(p) if p.starts_with('/') => p,
                _ => rest,
            };
            if !path.starts_with('/') {
                return Err(invalid("a file:// URL needs an absolute path (file:///dir)"));
            }
            return Ok(PathBuf::from(path));
        }
    }
    Ok(PathBuf::from(location))
}

/// Fsyncs a directory, so that creations, renames and removals in it are
/// durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` and fsyncs it.
fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    for part in parts {
        f.write_all(part).map_err(|e| Error::io(path, e))?;
    }
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Whether `path` exists (without following a symlink at its end).
fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The total size of the files directly in `dir` (0 when unreadable).
fn bytes_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

impl Store {
    /// Opens (creating the directory if missing) a store at `location`: a
    /// plain path or a `file://` URL (`file:///abs/dir`). Any other scheme
    /// (`s3://`, …) is [`Error::UnsupportedScheme`]: object storage will come
    /// behind the same API.
    pub fn open(location: &str) -> Result<Store> {
        let root = parse_location(location)?;
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        if !root.is_dir() {
            return Err(Error::io(&root, std::io::Error::new(ErrorKind::NotADirectory, "not a directory")));
        }
        tracing::debug!(root = %root.display(), "checkpoint store opened");
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn location(&self) -> &Path {
        &self.root
    }

    /// The directory of checkpoint `id` (whether or not it exists).
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.root.join(dir_name(id))
    }

    /// Every checkpoint directory's id and path, oldest first.
    fn scan(&self) -> Result<Vec<(u64, PathBuf)>> {
        let entries = fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_dir_name) else { continue };
            let is_dir = entry.file_type().map_err(|e| Error::io(&entry.path(), e))?.is_dir();
            if is_dir {
                dirs.push((id, entry.path()));
            }
        }
        dirs.sort_unstable_by_key(|(id, _)| *id);
        Ok(dirs)
    }

    /// Reads and verifies the manifest of checkpoint `id` in `dir`;
    /// [`Error::Incomplete`] when there is none.
    fn read_manifest(id: u64, dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::Incomplete { id, path: dir.to_path_buf() });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        Manifest::from_json(&bytes, id, &path)
    }

    /// The cheap status of checkpoint `id` in `dir`: its manifest, and the
    /// presence and sizes of its state files.
    fn status(id: u64, dir: &Path) -> Status {
        let manifest = match Self::read_manifest(id, dir) {
            Ok(m) => m,
            Err(Error::Incomplete { .. }) => return Status::Incomplete,
            Err(e) => return Status::Corrupt(e),
        };
        for f in &manifest.files {
            let path = dir.join(&f.name);
            match fs::metadata(&path) {
                Ok(m) => {
                    let expected = f.bytes.saturating_add(HEADER_LEN as u64);
                    if m.len() != expected {
                        return Status::Corrupt(Error::ManifestMismatch {
                            id,
                            file: f.name.clone(),
                            what: "file size",
                            expected,
                            found: m.len(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Status::Corrupt(Error::MissingFile { id, file: f.name.clone(), path });
                }
                Err(e) => return Status::Corrupt(Error::io(&path, e)),
            }
        }
        Status::Complete(manifest)
    }

    /// The id to use next: 1 + the largest id present (complete or not),
    /// or 1 in an empty store.
    pub fn next_id(&self) -> Result<u64> {
        match self.scan()?.last() {
            Some((id, _)) => id.checked_add(1).ok_or(Error::IdExhausted),
            None => Ok(1),
        }
    }

    /// Starts checkpoint `id`, taken at dataflow time `frontier`. `id` must
    /// be greater than every id in the store ([`Error::IdNotIncreasing`]
    /// otherwise), except that a leftover incomplete directory of the same
    /// id (a crash while writing it) is removed and written anew.
    pub fn begin(&self, id: u64, frontier: u64) -> Result<Pending> {
        let dir = self.checkpoint_dir(id);
        if let Some((newest, newest_dir)) = self.scan()?.pop() {
            let leftover = newest == id && !exists(&newest_dir.join(MANIFEST_NAME))?;
            if newest > id || (newest == id && !leftover) {
                return Err(Error::IdNotIncreasing { id, newest });
            }
            if leftover {
                tracing::info!(id, dir = %dir.display(), "removing an incomplete checkpoint before rewriting it");
                fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
        }
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&self.root)?;
        tracing::debug!(id, frontier, "checkpoint begun");
        Ok(Pending { dir, id, frontier, files: Vec::new(), names: BTreeSet::new() })
    }

    /// Every checkpoint directory, oldest first, with its [`Status`]. Reads
    /// each manifest but not the state files (it checks only that they
    /// exist with the right size), so it is cheap.
    pub fn list(&self) -> Result<Vec<Listed>> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|(id, dir)| Listed { id, status: Self::status(id, &dir), bytes_on_disk: bytes_on_disk(&dir) })
            .collect())
    }

    /// Reads and verifies checkpoint `id` in `dir`: its manifest, then every
    /// state file in full.
    fn load_dir(id: u64, dir: &Path) -> Result<Loaded> {
        let manifest = Self::read_manifest(id, dir)?;
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let path = dir.join(&entry.name);
            let mut bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(Error::MissingFile { id, file: entry.name.clone(), path });
                }
                Err(e) => return Err(Error::io(&path, e)),
            };
            let payload_len = unframe(&bytes).map_err(|e| e.in_file(id, &entry.name))?.len() as u64;
            let mismatch =
                |what, expected, found| Error::ManifestMismatch { id, file: entry.name.clone(), what, expected, found };
            if payload_len != entry.bytes {
                return Err(mismatch("bytes", entry.bytes, payload_len));
            }
            // `unframe` checked the payload against the header's CRC-32.
            let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
            if crc != entry.crc32 {
                return Err(mismatch("crc32", u64::from(entry.crc32), u64::from(crc)));
            }
            bytes.drain(..HEADER_LEN);
            files.insert(entry.name.clone(), bytes);
        }
        Ok(Loaded { manifest, files, skipped: Vec::new() })
    }

    /// Reads and verifies checkpoint `id`: its manifest and every state
    /// file, read in full and checksum-checked. [`Error::NotFound`] when
    /// there is no such directory, [`Error::Incomplete`] when it has no
    /// manifest.
    pub fn load(&self, id: u64) -> Result<Loaded> {
        let dir = self.checkpoint_dir(id);
        if !exists(&dir)? {
            return Err(Error::NotFound { id, root: self.root.clone() });
        }
        Self::load_dir(id, &dir)
    }

    /// The newest checkpoint whose manifest and every state file verify
    /// (read in full and checksum-checked), with the newer ones rejected
    /// and why in [`Loaded::skipped`] (each also logged with
    /// `tracing::warn!`). Incomplete directories are passed over.
    ///
    /// `Ok(None)` when the store has no committed checkpoint at all. When it
    /// has some but every one is rejected, the error is
    /// [`Error::AllRejected`]: starting afresh is then the caller's call.
    pub fn load_latest(&self) -> Result<Option<Loaded>> {
        let mut skipped = Vec::new();
        for (id, dir) in self.scan()?.into_iter().rev() {
            match Self::load_dir(id, &dir) {
                Ok(mut loaded) => {
                    loaded.skipped = skipped;
                    tracing::info!(
                        id,
                        frontier = loaded.manifest.frontier,
                        skipped = loaded.skipped.len(),
                        "loaded checkpoint"
                    );
                    return Ok(Some(loaded));
                }
                Err(Error::Incomplete { .. }) => {
                    tracing::debug!(id, "ignoring incomplete checkpoint (no manifest)");
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "checkpoint rejected, falling back to an older one");
                    skipped.push((id, e));
                }
            }
        }
        if skipped.is_empty() {
            Ok(None)
        } else {
            Err(Error::AllRejected { root: self.root.clone(), rejected: skipped })
        }
    }

    /// Deletes checkpoint `id`'s directory: the manifest first, so that a
    /// crash midway leaves an incomplete checkpoint rather than a corrupt
    /// one.
    fn remove(&self, id: u64) -> Result<()> {
        let dir = self.checkpoint_dir(id);
        let manifest = dir.join(MANIFEST_NAME);
        match fs::remove_file(&manifest) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&manifest, e)),
        }
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
    }

    /// Keeps the newest `keep` complete checkpoints (`keep >= 1`), and
    /// deletes the older complete ones and every incomplete or corrupt one
    /// older than the newest complete one. A directory newer than the newest
    /// complete checkpoint is never deleted: it may be being written.
    /// "Complete" is [`list`](Store::list)'s cheap check; state file
    /// checksums are not read, so keep at least 2 to have a fallback from
    /// a damaged newest checkpoint. Returns the removed ids, oldest first.
    pub fn gc(&self, keep: usize) -> Result<Vec<u64>> {
        if keep == 0 {
            return Err(Error::InvalidKeep { keep });
        }
        let listed = self.list()?;
        let complete: Vec<u64> =
            listed.iter().filter(|l| matches!(l.status, Status::Complete(_))).map(|l| l.id).collect();
        let Some(&newest_complete) = complete.last() else {
            return Ok(Vec::new());
        };
        let oldest_kept = complete[complete.len().saturating_sub(keep)];
        let mut removed = Vec::new();
        for l in &listed {
            let remove = match l.status {
                Status::Complete(_) => l.id < oldest_kept,
                Status::Incomplete | Status::Corrupt(_) => l.id < newest_complete,
            };
            if remove {
                self.remove(l.id)?;
                match &l.status {
                    Status::Corrupt(e) => tracing::info!(id = l.id, reason = %e, "gc: removed corrupt checkpoint"),
                    Status::Incomplete => tracing::info!(id = l.id, "gc: removed incomplete checkpoint"),
                    Status::Complete(_) => tracing::debug!(id = l.id, "gc: removed checkpoint"),
                }
                removed.push(l.id);
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.root)?;
        }
        Ok(removed)
    }
}

impl Pending {
    /// The checkpoint's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The dataflow time the checkpoint is taken at.
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state files written so far.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Writes state file `name` holding `payload` (framed: header, then
    /// payload) and fsyncs it. [`Error::InvalidName`] or
    /// [`Error::DuplicateName`] for a refused name.
    pub fn put(&mut self, name: &str, payload: &[u8]) -> Result<FileEntry> {
        validate_name(name)?;
        if self.names.contains(name) {
            return Err(Error::DuplicateName { id: self.id, name: name.into() });
        }
        let head = header(payload);
        write_synced(&self.dir.join(name), &[&head, payload])?;
        let crc32 = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes"));
        let entry = FileEntry { name: name.into(), bytes: payload.len() as u64, crc32 };
        self.names.insert(name.into());
        self.files.push(entry.clone());
        Ok(entry)
    }

    /// Writes `manifest.json` with `meta` atomically (to a temporary name,
    /// fsync, rename, fsync the directory): the checkpoint is complete from
    /// then on. Returns the manifest written.
    pub fn commit(self, meta: serde_json::Value) -> Result<Manifest> {
        let manifest = Manifest {
            version: FORMAT_VERSION,
            id: self.id,
            frontier: self.frontier,
            created_unix_ms: now_unix_ms(),
            files: self.files,
            meta,
        };
        let json = manifest.to_json()?;
        // The state files' directory entries are durable before the manifest.
        sync_dir(&self.dir)?;
        let tmp = self.dir.join(MANIFEST_TMP);
        write_synced(&tmp, &[&json])?;
        let path = self.dir.join(MANIFEST_NAME);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir)?;
        tracing::info!(id = self.id, frontier = self.frontier, files = manifest.files.len(), "checkpoint committed");
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(parse_location("/tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(parse_location("rel/dir").unwrap(), PathBuf::from("rel/dir"));
        assert_eq!(parse_location("file:///tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(parse_location("FILE:///tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(parse_location("file://localhost/tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert!(matches!(
            parse_location("s3://bucket/ckpt"),
            Err(Error::UnsupportedScheme { ref scheme, .. }) if scheme == "s3"
        ));
        assert!(matches!(parse_location("gs://b"), Err(Error::UnsupportedScheme { .. })));
        assert!(matches!(parse_location("file://host/x"), Err(Error::InvalidLocation { .. })));
        assert!(matches!(parse_location(""), Err(Error::InvalidLocation { .. })));
    }

    #[test]
    fn dir_names() {
        assert_eq!(dir_name(7), "00000000000000000007");
        assert_eq!(parse_dir_name("00000000000000000007"), Some(7));
        assert_eq!(parse_dir_name(&dir_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_dir_name("0000000000000000007"), None);
        assert_eq!(parse_dir_name("99999999999999999999"), None);
        assert_eq!(parse_dir_name("0000000000000000000x"), None);
    }
}
