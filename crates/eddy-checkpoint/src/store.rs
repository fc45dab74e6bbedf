//! The store: one directory, or one key prefix, per checkpoint under a root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::frame::{header, unframe, FORMAT_VERSION, HEADER_LEN};
use crate::manifest::{validate_name, FileEntry, Manifest, MANIFEST_NAME};
use crate::object::ObjectBackend;

/// The temporary name `manifest.json` is written under before the rename
/// (local stores).
const MANIFEST_TMP: &str = ".manifest.json.tmp";

/// A checkpoint store: a local directory, or a prefix in an S3 bucket. See
/// the [crate documentation](crate) for the layout, which is the same for
/// both.
///
/// One process writes a store at a time ([`begin`](Store::begin) and
/// [`gc`](Store::gc)); any number may read it. Clones share the same
/// store (and, for object storage, the same client and I/O thread).
#[derive(Debug, Clone)]
pub struct Store {
    /// The root directory's path, or `s3://bucket/prefix`.
    location: String,
    backend: Backend,
}

/// Where a store's checkpoints are.
#[derive(Debug, Clone)]
enum Backend {
    /// A local directory.
    Local(PathBuf),
    /// A prefix in an S3 bucket.
    Object(Arc<ObjectBackend>),
}

/// The state of one checkpoint, as [`Store::list`] sees it.
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

/// One checkpoint of a store.
#[derive(Debug)]
pub struct Listed {
    /// The checkpoint id.
    pub id: u64,
    /// Whether it is complete.
    pub status: Status,
    /// The total size of its files (or objects).
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
    /// newest first, each with the reason. Incomplete ones (no manifest)
    /// are not rejections and are not listed. Empty for [`Store::load`].
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
/// incomplete checkpoint, which loading ignores and [`Store::gc`] (or a
/// [`Store::begin`] of the same id) removes.
#[derive(Debug)]
pub struct Pending {
    store: Store,
    location: String,
    id: u64,
    frontier: u64,
    files: Vec<FileEntry>,
    names: BTreeSet<String>,
}

/// One checkpoint as found by a scan: its id, and the name and size of
/// each of its files (or objects).
struct Scanned {
    id: u64,
    files: BTreeMap<String, u64>,
}

impl Scanned {
    fn has_manifest(&self) -> bool {
        self.files.contains_key(MANIFEST_NAME)
    }
}

/// The directory name (or key segment) of checkpoint `id`: 20 digits,
/// zero-padded.
pub fn dir_name(id: u64) -> String {
    format!("{id:020}")
}

/// The id named by a checkpoint directory name, if it is one.
pub(crate) fn parse_dir_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Whether `location` names a store on object storage (`s3://…`). Such a
/// store has no directory to look for: whether it holds checkpoints is
/// known only by listing it.
pub fn is_object_storage(location: &str) -> bool {
    matches!(parse_location(location), Ok(Parsed::S3(_)))
}

/// A store location, parsed.
#[derive(Debug, PartialEq)]
enum Parsed<'a> {
    /// A local directory: a path or a `file://` URL.
    Local(PathBuf),
    /// `s3://` and what follows it.
    S3(&'a str),
}

/// Parses a store location: a path, a `file://` URL or an `s3://` URL.
fn parse_location(location: &str) -> Result<Parsed<'_>> {
    let invalid = |reason| Error::InvalidLocation { location: location.into(), reason };
    if location.is_empty() {
        return Err(invalid("empty location"));
    }
    if let Some((scheme, rest)) = location.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            if scheme.eq_ignore_ascii_case("s3") {
                return Ok(Parsed::S3(rest));
            }
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
            return Ok(Parsed::Local(PathBuf::from(path)));
        }
    }
    Ok(Parsed::Local(PathBuf::from(location)))
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

/// Milliseconds since the Unix epoch, now.
fn now_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The files directly in `dir` and their sizes (entries that are not
/// regular files, and ones that vanish meanwhile, are left out).
fn local_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        match entry.metadata() {
            Ok(m) if m.is_file() => {
                files.insert(name, m.len());
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&entry.path(), e)),
        }
    }
    Ok(files)
}

impl Store {
    /// Opens a store at `location`:
    ///
    /// - a plain path or a `file://` URL (`file:///abs/dir`): a local
    ///   directory, created if missing;
    /// - `s3://bucket` or `s3://bucket/prefix`: objects under `prefix/` in
    ///   an S3 bucket (which must exist), the client configured from the
    ///   `AWS_*` environment variables (see the [crate
    ///   documentation](crate#object-storage)). Opening sends no request:
    ///   a missing bucket or a wrong endpoint is reported by the first call
    ///   that reads or writes.
    ///
    /// Any other scheme is [`Error::UnsupportedScheme`].
    pub fn open(location: &str) -> Result<Store> {
        Store::open_with(location, &[])
    }

    /// [`open`](Store::open), with client options for an `s3://` store
    /// that override the environment: object_store's configuration keys
    /// (`aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_region`, `aws_allow_http`, …). A local store takes none
    /// ([`Error::InvalidLocation`] if any is given).
    pub fn open_with(location: &str, options: &[(&str, &str)]) -> Result<Store> {
        match parse_location(location)? {
            Parsed::Local(root) => {
                if !options.is_empty() {
                    return Err(Error::InvalidLocation {
                        location: location.into(),
                        reason: "client options apply to s3:// stores only",
                    });
                }
                fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
                if !root.is_dir() {
                    return Err(Error::io(&root, std::io::Error::new(ErrorKind::NotADirectory, "not a directory")));
                }
                tracing::debug!(root = %root.display(), "checkpoint store opened");
                Ok(Store { location: root.display().to_string(), backend: Backend::Local(root) })
            }
            Parsed::S3(rest) => {
                let backend = ObjectBackend::open(location, rest, options)?;
                Ok(Store { location: backend.url().to_string(), backend: Backend::Object(Arc::new(backend)) })
            }
        }
    }

    /// Where the store is, for messages: the root directory's path, or
    /// `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Where checkpoint `id` is (whether or not it exists), for messages:
    /// its directory's path, or the URL of its key prefix (ending in `/`).
    pub fn checkpoint_location(&self, id: u64) -> String {
        self.describe(id, None)
    }

    /// Where file `name` of checkpoint `id` is (or the checkpoint itself,
    /// for `None`): a path, or an object's URL.
    fn describe(&self, id: u64, name: Option<&str>) -> String {
        match &self.backend {
            Backend::Local(root) => {
                let dir = root.join(dir_name(id));
                name.map_or(dir.clone(), |n| dir.join(n)).display().to_string()
            }
            Backend::Object(o) => o.describe(id, name),
        }
    }

    /// Every checkpoint's id and files, oldest first.
    fn scan(&self) -> Result<Vec<Scanned>> {
        match &self.backend {
            Backend::Local(root) => {
                let entries = fs::read_dir(root).map_err(|e| Error::io(root, e))?;
                let mut found = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io(root, e))?;
                    let Some(id) = entry.file_name().to_str().and_then(parse_dir_name) else { continue };
                    let is_dir = entry.file_type().map_err(|e| Error::io(&entry.path(), e))?.is_dir();
                    if is_dir {
                        found.push(Scanned { id, files: local_files(&entry.path())? });
                    }
                }
                found.sort_unstable_by_key(|s| s.id);
                Ok(found)
            }
            Backend::Object(o) => Ok(o.scan()?.into_iter().map(|(id, files)| Scanned { id, files }).collect()),
        }
    }

    /// The bytes of file `name` of checkpoint `id`; `None` if there is no
    /// such file.
    fn read(&self, id: u64, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Local(root) => {
                let path = root.join(dir_name(id)).join(name);
                match fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(&path, e)),
                }
            }
            Backend::Object(o) => o.read(id, name),
        }
    }

    /// Reads and verifies the manifest of checkpoint `id`;
    /// [`Error::Incomplete`] when there is none.
    fn read_manifest(&self, id: u64) -> Result<Manifest> {
        let Some(bytes) = self.read(id, MANIFEST_NAME)? else {
            return Err(Error::Incomplete { id, location: self.describe(id, None) });
        };
        Manifest::from_json(&bytes, id, &self.describe(id, Some(MANIFEST_NAME)))
    }

    /// The cheap status of checkpoint `c`: its manifest, and the presence
    /// and sizes of its state files as scanned.
    fn status(&self, c: &Scanned) -> Status {
        let id = c.id;
        if !c.has_manifest() {
            return Status::Incomplete;
        }
        let manifest = match self.read_manifest(id) {
            Ok(m) => m,
            Err(Error::Incomplete { .. }) => return Status::Incomplete,
            Err(e) => return Status::Corrupt(e),
        };
        for f in &manifest.files {
            let Some(&size) = c.files.get(&f.name) else {
                return Status::Corrupt(Error::MissingFile {
                    id,
                    file: f.name.clone(),
                    location: self.describe(id, Some(&f.name)),
                });
            };
            let expected = f.bytes.saturating_add(HEADER_LEN as u64);
            if size != expected {
                return Status::Corrupt(Error::ManifestMismatch {
                    id,
                    file: f.name.clone(),
                    what: "file size",
                    expected,
                    found: size,
                });
            }
        }
        Status::Complete(manifest)
    }

    /// The id to use next: 1 + the largest id present (complete or not),
    /// or 1 in an empty store.
    pub fn next_id(&self) -> Result<u64> {
        match self.scan()?.last() {
            Some(c) => c.id.checked_add(1).ok_or(Error::IdExhausted),
            None => Ok(1),
        }
    }

    /// Starts checkpoint `id`, taken at dataflow time `frontier`. `id` must
    /// be greater than every id in the store ([`Error::IdNotIncreasing`]
    /// otherwise), except that a leftover incomplete checkpoint of the same
    /// id (a crash while writing it) is removed and written anew.
    ///
    /// A local store creates the checkpoint's directory here; on object
    /// storage a checkpoint exists from its first state file on.
    pub fn begin(&self, id: u64, frontier: u64) -> Result<Pending> {
        if let Some(newest) = self.scan()?.pop() {
            let leftover = newest.id == id && !newest.has_manifest();
            if newest.id > id || (newest.id == id && !leftover) {
                return Err(Error::IdNotIncreasing { id, newest: newest.id });
            }
            if leftover {
                tracing::info!(id, at = %self.describe(id, None), "removing an incomplete checkpoint before rewriting it");
                self.remove(&newest)?;
            }
        }
        if let Backend::Local(root) = &self.backend {
            let dir = root.join(dir_name(id));
            fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            sync_dir(root)?;
        }
        tracing::debug!(id, frontier, "checkpoint begun");
        Ok(Pending {
            store: self.clone(),
            location: self.describe(id, None),
            id,
            frontier,
            files: Vec::new(),
            names: BTreeSet::new(),
        })
    }

    /// Every checkpoint, oldest first, with its [`Status`]. Reads each
    /// manifest but not the state files (it checks only that they exist
    /// with the right size), so it is cheap.
    pub fn list(&self) -> Result<Vec<Listed>> {
        Ok(self
            .scan()?
            .iter()
            .map(|c| Listed { id: c.id, status: self.status(c), bytes_on_disk: c.files.values().sum() })
            .collect())
    }

    /// Reads and verifies checkpoint `id`: its manifest, then every state
    /// file in full.
    fn load_checkpoint(&self, id: u64) -> Result<Loaded> {
        let manifest = self.read_manifest(id)?;
        let names: Vec<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
        let contents = match &self.backend {
            Backend::Local(_) => names.iter().map(|n| self.read(id, n)).collect::<Result<Vec<_>>>()?,
            // One request after another would wait for each round trip.
            Backend::Object(o) => o.read_all(id, &names)?,
        };
        let mut files = BTreeMap::new();
        for (entry, bytes) in manifest.files.iter().zip(contents) {
            let Some(mut bytes) = bytes else {
                return Err(Error::MissingFile {
                    id,
                    file: entry.name.clone(),
                    location: self.describe(id, Some(&entry.name)),
                });
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
    /// there is no such checkpoint, [`Error::Incomplete`] when it has no
    /// manifest.
    pub fn load(&self, id: u64) -> Result<Loaded> {
        if !self.scan()?.iter().any(|c| c.id == id) {
            return Err(Error::NotFound { id, store: self.location.clone() });
        }
        self.load_checkpoint(id)
    }

    /// The newest checkpoint whose manifest and every state file verify
    /// (read in full and checksum-checked), with the newer ones rejected
    /// and why in [`Loaded::skipped`] (each also logged with
    /// `tracing::warn!`). Incomplete checkpoints are passed over.
    ///
    /// `Ok(None)` when the store has no committed checkpoint at all. When it
    /// has some but every one is rejected, the error is
    /// [`Error::AllRejected`]: starting afresh is then the caller's call.
    pub fn load_latest(&self) -> Result<Option<Loaded>> {
        let mut skipped = Vec::new();
        for c in self.scan()?.into_iter().rev() {
            if !c.has_manifest() {
                tracing::debug!(id = c.id, "ignoring incomplete checkpoint (no manifest)");
                continue;
            }
            match self.load_checkpoint(c.id) {
                Ok(mut loaded) => {
                    loaded.skipped = skipped;
                    tracing::info!(
                        id = c.id,
                        frontier = loaded.manifest.frontier,
                        skipped = loaded.skipped.len(),
                        "loaded checkpoint"
                    );
                    return Ok(Some(loaded));
                }
                Err(Error::Incomplete { .. }) => {
                    tracing::debug!(id = c.id, "ignoring incomplete checkpoint (no manifest)");
                }
                Err(e) if e.is_corruption() => {
                    tracing::warn!(id = c.id, error = %e, "checkpoint rejected, falling back to an older one");
                    skipped.push((c.id, e));
                }
                // The store cannot be read (I/O, a request that failed): not
                // a reason to fall back to an older checkpoint.
                Err(e) => return Err(e),
            }
        }
        if skipped.is_empty() {
            Ok(None)
        } else {
            Err(Error::AllRejected { store: self.location.clone(), rejected: skipped })
        }
    }

    /// Deletes checkpoint `c`: the manifest first, so that a crash midway
    /// leaves an incomplete checkpoint rather than a corrupt one.
    fn remove(&self, c: &Scanned) -> Result<()> {
        match &self.backend {
            Backend::Local(root) => {
                let dir = root.join(dir_name(c.id));
                let manifest = dir.join(MANIFEST_NAME);
                match fs::remove_file(&manifest) {
                    Ok(()) => sync_dir(&dir)?,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&manifest, e)),
                }
                fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
            }
            Backend::Object(o) => {
                let manifest = c.has_manifest().then(|| MANIFEST_NAME.to_string());
                let rest = c.files.keys().filter(|n| *n != MANIFEST_NAME).cloned();
                o.delete(c.id, manifest.into_iter().chain(rest).collect())
            }
        }
    }

    /// Keeps the newest `keep` complete checkpoints (`keep >= 1`), and
    /// deletes the older complete ones and every incomplete or corrupt one
    /// older than the newest complete one. A checkpoint newer than the
    /// newest complete one is never deleted: it may be being written.
    /// "Complete" is [`list`](Store::list)'s cheap check; state file
    /// checksums are not read, so keep at least 2 to have a fallback from
    /// a damaged newest checkpoint. Returns the removed ids, oldest first.
    pub fn gc(&self, keep: usize) -> Result<Vec<u64>> {
        if keep == 0 {
            return Err(Error::InvalidKeep { keep });
        }
        let scanned = self.scan()?;
        let statuses: Vec<Status> = scanned.iter().map(|c| self.status(c)).collect();
        let complete: Vec<u64> = scanned
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| matches!(s, Status::Complete(_)))
            .map(|(c, _)| c.id)
            .collect();
        let Some(&newest_complete) = complete.last() else {
            return Ok(Vec::new());
        };
        let oldest_kept = complete[complete.len().saturating_sub(keep)];
        let mut removed = Vec::new();
        for (c, status) in scanned.iter().zip(&statuses) {
            let remove = match status {
                Status::Complete(_) => c.id < oldest_kept,
                Status::Incomplete | Status::Corrupt(_) => c.id < newest_complete,
            };
            if remove {
                self.remove(c)?;
                match status {
                    Status::Corrupt(e) => tracing::info!(id = c.id, reason = %e, "gc: removed corrupt checkpoint"),
                    Status::Incomplete => tracing::info!(id = c.id, "gc: removed incomplete checkpoint"),
                    Status::Complete(_) => tracing::debug!(id = c.id, "gc: removed checkpoint"),
                }
                removed.push(c.id);
            }
        }
        if let (Backend::Local(root), false) = (&self.backend, removed.is_empty()) {
            sync_dir(root)?;
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

    /// Where the checkpoint is written, for messages: its directory's
    /// path, or the URL of its key prefix.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The state files written so far.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Writes state file `name` holding `payload` (framed: header, then
    /// payload): to a local file, fsynced; or as one object, in one PUT.
    /// [`Error::InvalidName`] or [`Error::DuplicateName`] for a refused
    /// name.
    pub fn put(&mut self, name: &str, payload: &[u8]) -> Result<FileEntry> {
        validate_name(name)?;
        if self.names.contains(name) {
            return Err(Error::DuplicateName { id: self.id, name: name.into() });
        }
        let head = header(payload);
        match &self.store.backend {
            Backend::Local(root) => write_synced(&root.join(dir_name(self.id)).join(name), &[&head, payload])?,
            Backend::Object(o) => o.write(self.id, name, [&head[..], payload].concat())?,
        }
        let crc32 = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes"));
        let entry = FileEntry { name: name.into(), bytes: payload.len() as u64, crc32 };
        self.names.insert(name.into());
        self.files.push(entry.clone());
        Ok(entry)
    }

    /// Writes `manifest.json` with `meta` atomically: on a local store to a
    /// temporary name, fsync, rename, fsync the directory; on object
    /// storage in one PUT, after every state file's PUT has succeeded. The
    /// checkpoint is complete from then on. Returns the manifest written.
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
        match &self.store.backend {
            Backend::Local(root) => {
                let dir = root.join(dir_name(self.id));
                // The state files' directory entries are durable before the manifest.
                sync_dir(&dir)?;
                let tmp = dir.join(MANIFEST_TMP);
                write_synced(&tmp, &[&json])?;
                let path = dir.join(MANIFEST_NAME);
                fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
                sync_dir(&dir)?;
            }
            Backend::Object(o) => o.write(self.id, MANIFEST_NAME, json)?,
        }
        tracing::info!(id = self.id, frontier = self.frontier, files = manifest.files.len(), "checkpoint committed");
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(location: &str) -> PathBuf {
        match parse_location(location).unwrap() {
            Parsed::Local(p) => p,
            other => panic!("{location}: {other:?}"),
        }
    }

    #[test]
    fn locations() {
        assert_eq!(local("/tmp/x"), PathBuf::from("/tmp/x"));
        assert_eq!(local("rel/dir"), PathBuf::from("rel/dir"));
        assert_eq!(local("file:///tmp/x"), PathBuf::from("/tmp/x"));
        assert_eq!(local("FILE:///tmp/x"), PathBuf::from("/tmp/x"));
        assert_eq!(local("file://localhost/tmp/x"), PathBuf::from("/tmp/x"));
        assert_eq!(parse_location("s3://bucket/ckpt").unwrap(), Parsed::S3("bucket/ckpt"));
        assert_eq!(parse_location("S3://bucket").unwrap(), Parsed::S3("bucket"));
        assert!(matches!(
            parse_location("gs://b"),
            Err(Error::UnsupportedScheme { ref scheme, .. }) if scheme == "gs"
        ));
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
