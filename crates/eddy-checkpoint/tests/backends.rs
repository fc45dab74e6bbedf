//! The same store behaviour, checked on a local directory (`local::*`) and
//! on S3-compatible object storage (`s3::*`, against the server of
//! `support/s3.rs`, which must be running): round trips, incomplete
//! checkpoints ignored, damaged ones skipped for the one before, gc, ids.

mod support {
    pub mod s3;
}

use std::fs;
use std::path::PathBuf;

use eddy_checkpoint::{dir_name, Error, Status, Store, HEADER_LEN, MANIFEST_NAME};
use object_store::aws::AmazonS3;
use serde_json::json;
use support::s3::{self as s3_server, S3};

/// A store, and a way to reach its files behind its back.
trait Fixture {
    fn store(&self) -> &Store;
    /// Opens the same store again.
    fn reopen(&self) -> Store;
    /// The names of checkpoint `id`'s files, sorted.
    fn names(&self, id: u64) -> Vec<String>;
    fn read(&self, id: u64, name: &str) -> Vec<u8>;
    fn write(&self, id: u64, name: &str, bytes: Vec<u8>);
    fn remove(&self, id: u64, name: &str);

    fn flip(&self, id: u64, name: &str, at: usize) {
        let mut bytes = self.read(id, name);
        bytes[at] ^= 0x40;
        self.write(id, name, bytes);
    }
}

struct Local {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: Store,
}

impl Local {
    fn new() -> Local {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ckpt");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        Local { _tmp: tmp, root, store }
    }
}

impl Fixture for Local {
    fn store(&self) -> &Store {
        &self.store
    }
    fn reopen(&self) -> Store {
        Store::open(&format!("file://{}", self.root.display())).unwrap()
    }
    fn names(&self, id: u64) -> Vec<String> {
        let dir = self.root.join(dir_name(id));
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }
    fn read(&self, id: u64, name: &str) -> Vec<u8> {
        fs::read(self.root.join(dir_name(id)).join(name)).unwrap()
    }
    fn write(&self, id: u64, name: &str, bytes: Vec<u8>) {
        fs::write(self.root.join(dir_name(id)).join(name), bytes).unwrap()
    }
    fn remove(&self, id: u64, name: &str) {
        fs::remove_file(self.root.join(dir_name(id)).join(name)).unwrap()
    }
}

struct Remote {
    s3: S3,
    url: String,
    prefix: String,
    client: AmazonS3,
    store: Store,
}

impl Remote {
    /// A store under a prefix of a new bucket.
    fn new(test: &str) -> Remote {
        let s3 = S3::server();
        let bucket = s3.bucket(test);
        let prefix = "jobs/ckpt".to_string();
        let url = format!("s3://{bucket}/{prefix}");
        let store = Store::open_with(&url, &s3.options()).unwrap();
        let client = s3.client(&bucket);
        Remote { url, prefix, client, store, s3 }
    }

    fn key(&self, id: u64, name: &str) -> String {
        format!("{}/{}/{name}", self.prefix, dir_name(id))
    }
}

impl Fixture for Remote {
    fn store(&self) -> &Store {
        &self.store
    }
    fn reopen(&self) -> Store {
        Store::open_with(&format!("{}/", self.url), &self.s3.options()).unwrap()
    }
    fn names(&self, id: u64) -> Vec<String> {
        let dir = format!("{}/{}/", self.prefix, dir_name(id));
        s3_server::keys(&self.client).iter().filter_map(|k| k.strip_prefix(&dir).map(str::to_string)).collect()
    }
    fn read(&self, id: u64, name: &str) -> Vec<u8> {
        s3_server::get(&self.client, &self.key(id, name))
    }
    fn write(&self, id: u64, name: &str, bytes: Vec<u8>) {
        s3_server::put(&self.client, &self.key(id, name), bytes)
    }
    fn remove(&self, id: u64, name: &str) {
        s3_server::delete(&self.client, &self.key(id, name))
    }
}

/// Commits checkpoint `id` with one state file `s` holding `payload`.
fn commit(store: &Store, id: u64, payload: &[u8]) {
    let mut p = store.begin(id, id * 10).unwrap();
    p.put("s", payload).unwrap();
    p.commit(json!({ "id": id })).unwrap();
}

fn ids(store: &Store) -> Vec<u64> {
    store.list().unwrap().iter().map(|l| l.id).collect()
}

fn round_trip(f: &dyn Fixture) {
    let store = f.store();
    assert!(store.load_latest().unwrap().is_none());
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.next_id().unwrap(), 1);

    let mut p = store.begin(1, 500).unwrap();
    assert_eq!(p.location(), store.checkpoint_location(1));
    assert!(p.location().contains(&dir_name(1)), "{}", p.location());
    let a = p.put("w0.state", b"first payload").unwrap();
    assert_eq!(a.bytes, 13);
    p.put("w1.state", b"").unwrap();
    let meta = json!({"workers": 2, "positions": {"p0": 17}, "spec": "f00d", "ratio": 0.3});
    let written = p.commit(meta.clone()).unwrap();
    assert_eq!((written.id, written.frontier, written.files.len()), (1, 500, 2));
    assert!(written.created_unix_ms > 1_600_000_000_000);

    assert_eq!(f.names(1), ["manifest.json", "w0.state", "w1.state"]);
    assert_eq!(f.read(1, "w0.state").len(), HEADER_LEN + 13);

    let loaded = store.load_latest().unwrap().expect("a checkpoint");
    assert_eq!(loaded.manifest, written);
    assert_eq!(loaded.manifest.meta, meta);
    assert!(loaded.skipped.is_empty());
    assert_eq!(loaded.file("w0.state").unwrap(), b"first payload");
    assert_eq!(loaded.file("w1.state").unwrap(), b"");
    assert_eq!(store.load(1).unwrap().files, loaded.files);

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, Status::Complete(ref m) if *m == written));
    let manifest_len = f.read(1, MANIFEST_NAME).len() as u64;
    assert_eq!(listed[0].bytes_on_disk, 2 * HEADER_LEN as u64 + 13 + manifest_len);
    assert_eq!(store.next_id().unwrap(), 2);

    let again = f.reopen();
    assert_eq!(again.location(), store.location());
    assert_eq!(again.load_latest().unwrap().unwrap().manifest, written);
}

fn incomplete_checkpoints_are_ignored_and_gced_only_when_older(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 1, b"one");
    // Checkpoint 2 crashes before its manifest.
    let mut p = store.begin(2, 20).unwrap();
    p.put("s", b"two").unwrap();
    drop(p);

    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    assert!(loaded.skipped.is_empty());
    assert!(matches!(store.list().unwrap()[1].status, Status::Incomplete));
    assert!(matches!(store.load(2), Err(Error::Incomplete { id: 2, .. })));
    assert!(matches!(store.load(9), Err(Error::NotFound { id: 9, .. })));
    assert_eq!(store.next_id().unwrap(), 3);

    // Newer than the newest complete checkpoint: kept.
    assert_eq!(store.gc(1).unwrap(), Vec::<u64>::new());
    assert_eq!(ids(store), [1, 2]);

    // Older than the newest complete checkpoint: removed.
    commit(store, 3, b"three");
    assert_eq!(store.gc(5).unwrap(), [2]);
    assert_eq!(ids(store), [1, 3]);
    assert_eq!(store.gc(1).unwrap(), [1]);
    assert_eq!(ids(store), [3]);
    assert!(f.names(2).is_empty() && f.names(1).is_empty());
    assert_eq!(f.names(3), ["manifest.json", "s"]);
}

fn begin_replaces_a_leftover_incomplete_checkpoint_of_the_same_id(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 1, b"one");
    let mut p = store.begin(2, 20).unwrap();
    p.put("old", b"stale").unwrap();
    drop(p);
    let mut p = store.begin(2, 21).unwrap();
    p.put("s", b"fresh").unwrap();
    p.commit(json!(null)).unwrap();
    assert_eq!(f.names(2), ["manifest.json", "s"]);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!((loaded.manifest.id, loaded.manifest.frontier), (2, 21));
    assert_eq!(loaded.file("s").unwrap(), b"fresh");
}

fn a_flipped_payload_byte_falls_back_to_the_checkpoint_before(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 1, b"older state");
    commit(store, 2, b"newer state");
    f.flip(2, "s", HEADER_LEN + 3);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    assert_eq!(loaded.file("s").unwrap(), b"older state");
    assert_eq!(loaded.skipped.len(), 1);
    let (id, err) = &loaded.skipped[0];
    assert_eq!(*id, 2);
    assert!(matches!(err, Error::ChecksumMismatch { id: 2, file, .. } if file == "s"), "{err}");
    assert!(err.is_corruption());
    // The cheap listing does not read payloads: still complete by size.
    assert!(matches!(store.list().unwrap()[1].status, Status::Complete(_)));
    assert!(matches!(store.load(2), Err(Error::ChecksumMismatch { id: 2, .. })));
}

fn truncated_missing_and_rewritten_objects_fall_back(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 1, b"older state");
    commit(store, 2, b"newer state");

    // Truncated: a size mismatch for the listing, truncation for loading.
    let full = f.read(2, "s");
    f.write(2, "s", full[..full.len() - 4].to_vec());
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    let (id, err) = &loaded.skipped[0];
    assert_eq!(*id, 2);
    assert!(
        matches!(err, Error::Truncated { id: 2, file, found, .. } if file == "s" && *found == full.len() as u64 - 4)
    );
    assert!(matches!(store.list().unwrap()[1].status, Status::Corrupt(Error::ManifestMismatch { .. })));

    // Another valid frame: the manifest disagrees.
    f.write(2, "s", eddy_checkpoint::frame(b"NEWER STATE"));
    let loaded = store.load_latest().unwrap().unwrap();
    assert!(matches!(&loaded.skipped[0].1, Error::ManifestMismatch { id: 2, what: "crc32", .. }));

    // Missing.
    f.remove(2, "s");
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    let err = &loaded.skipped[0].1;
    assert!(matches!(err, Error::MissingFile { id: 2, file, .. } if file == "s"), "{err}");
    assert!(err.to_string().contains(&format!("{}/s", dir_name(2))), "names where: {err}");
    assert!(matches!(store.list().unwrap()[1].status, Status::Corrupt(Error::MissingFile { .. })));
}

fn a_flipped_manifest_byte_falls_back_and_gc_removes_it_once_older(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 1, b"older state");
    commit(store, 2, b"newer state");
    let text = String::from_utf8(f.read(2, MANIFEST_NAME)).unwrap();
    // A digit of the frontier ("frontier": 20): still valid JSON.
    let at = text.find("\"frontier\": 20").unwrap() + "\"frontier\": ".len();
    let mut bytes = text.into_bytes();
    bytes[at] = b'3';
    f.write(2, MANIFEST_NAME, bytes.clone());
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    assert!(matches!(&loaded.skipped[0], (2, Error::ChecksumMismatch { id: 2, file, .. }) if file == MANIFEST_NAME));
    assert!(matches!(store.list().unwrap()[1].status, Status::Corrupt(Error::ChecksumMismatch { .. })));

    // A byte that breaks the JSON: corrupt too, and the error says where.
    bytes[0] = b'X';
    f.write(2, MANIFEST_NAME, bytes);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    let err = &loaded.skipped[0].1;
    assert!(matches!(err, Error::ManifestParse { id: 2, .. }), "{err}");
    assert!(err.to_string().contains(&format!("{}/{MANIFEST_NAME}", dir_name(2))), "{err}");

    // gc never removes it while it is the newest, and does once a newer
    // checkpoint is complete.
    assert_eq!(store.gc(1).unwrap(), Vec::<u64>::new());
    commit(store, 3, b"third");
    assert_eq!(store.gc(1).unwrap(), [1, 2]);
    assert!(f.names(2).is_empty());

    // Every checkpoint damaged: an error, not a silent fresh start.
    commit(store, 4, b"fourth");
    f.flip(4, "s", HEADER_LEN);
    f.flip(3, "s", HEADER_LEN);
    match store.load_latest() {
        Err(Error::AllRejected { rejected, store: at }) => {
            assert_eq!(rejected.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [4, 3]);
            assert_eq!(at, store.location());
        }
        other => panic!("expected AllRejected, got {other:?}"),
    }
}

fn gc_keeps_the_newest(f: &dyn Fixture) {
    let store = f.store();
    for id in 1..=5 {
        commit(store, id, format!("state {id}").as_bytes());
    }
    assert!(matches!(store.gc(0), Err(Error::InvalidKeep { keep: 0 })));
    assert_eq!(store.gc(3).unwrap(), [1, 2]);
    assert_eq!(ids(store), [3, 4, 5]);
    assert!(f.names(1).is_empty() && f.names(2).is_empty());
    assert_eq!(store.gc(3).unwrap(), Vec::<u64>::new());
    assert_eq!(store.load_latest().unwrap().unwrap().file("s").unwrap(), b"state 5");
    assert_eq!(store.load(3).unwrap().file("s").unwrap(), b"state 3");
}

fn ids_must_increase(f: &dyn Fixture) {
    let store = f.store();
    commit(store, 5, b"five");
    assert!(matches!(store.begin(5, 0), Err(Error::IdNotIncreasing { id: 5, newest: 5 })));
    assert!(matches!(store.begin(3, 0), Err(Error::IdNotIncreasing { id: 3, newest: 5 })));
    // An incomplete newer checkpoint counts too.
    let mut p = store.begin(7, 0).unwrap();
    p.put("s", b"partial").unwrap();
    drop(p);
    assert!(matches!(store.begin(6, 0), Err(Error::IdNotIncreasing { id: 6, newest: 7 })));
    assert_eq!(store.next_id().unwrap(), 8);
    commit(store, 8, b"eight");
    assert_eq!(store.load_latest().unwrap().unwrap().manifest.id, 8);
}

/// Each check as `local::<check>` and `s3::<check>`.
macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $check() { super::$check(&super::Local::new()) })*
        }
        mod s3 {
            $(#[test] fn $check() { super::$check(&super::Remote::new(stringify!($check))) })*
        }
    };
}

on_both!(
    round_trip,
    incomplete_checkpoints_are_ignored_and_gced_only_when_older,
    begin_replaces_a_leftover_incomplete_checkpoint_of_the_same_id,
    a_flipped_payload_byte_falls_back_to_the_checkpoint_before,
    truncated_missing_and_rewritten_objects_fall_back,
    a_flipped_manifest_byte_falls_back_and_gc_removes_it_once_older,
    gc_keeps_the_newest,
    ids_must_increase,
);
