//! The directory store's own behaviour: its layout on disk, fallbacks from
//! damaged files, an empty directory among the ids, names and locations. The
//! behaviour every backend shares is checked in `backends.rs`.

use std::fs;
use std::path::Path;

use eddy_checkpoint::{dir_name, Error, Status, Store, HEADER_LEN, MANIFEST_NAME};
use serde_json::json;

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("ckpt").to_str().unwrap()).unwrap();
    (tmp, store)
}

/// Commits checkpoint `id` with one state file `s` holding `payload`.
fn commit(store: &Store, id: u64, payload: &[u8]) {
    let mut p = store.begin(id, id * 10).unwrap();
    p.put("s", payload).unwrap();
    p.commit(json!({ "id": id })).unwrap();
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn ids(store: &Store) -> Vec<u64> {
    store.list().unwrap().iter().map(|l| l.id).collect()
}

#[test]
fn round_trip() {
    let (_tmp, store) = store();
    assert!(store.load_latest().unwrap().is_none());
    assert_eq!(store.next_id().unwrap(), 1);

    let mut p = store.begin(1, 500).unwrap();
    assert_eq!(p.id(), 1);
    let a = p.put("w0.state", b"first payload").unwrap();
    assert_eq!(a.bytes, 13);
    p.put("w1.state", b"").unwrap();
    let meta = json!({"workers": 2, "positions": {"p0": 17}, "spec": "f00d", "ratio": 0.3});
    let written = p.commit(meta.clone()).unwrap();
    assert_eq!(written.id, 1);
    assert_eq!(written.frontier, 500);
    assert_eq!(written.files.len(), 2);
    assert!(written.created_unix_ms > 1_600_000_000_000);

    let dir = Path::new(store.location()).join("00000000000000000001");
    let mut names: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "w0.state", "w1.state"]);
    assert_eq!(fs::metadata(dir.join("w0.state")).unwrap().len(), HEADER_LEN as u64 + 13);

    let loaded = store.load_latest().unwrap().expect("a checkpoint");
    assert_eq!(loaded.manifest, written);
    assert_eq!(loaded.manifest.meta, meta);
    assert!(loaded.skipped.is_empty());
    assert_eq!(loaded.files.len(), 2);
    assert_eq!(loaded.file("w0.state").unwrap(), b"first payload");
    assert_eq!(loaded.file("w1.state").unwrap(), b"");
    assert_eq!(store.load(1).unwrap().files, loaded.files);

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, Status::Complete(ref m) if *m == written));
    assert!(listed[0].bytes_on_disk > 2 * HEADER_LEN as u64 + 13);
    assert_eq!(store.next_id().unwrap(), 2);

    // Reopening, also as a file:// URL, sees the same checkpoint.
    let url = format!("file://{}", store.location());
    let again = Store::open(&url).unwrap();
    assert_eq!(again.location(), store.location());
    assert_eq!(again.load_latest().unwrap().unwrap().manifest, written);
}

/// A store with complete checkpoints 1 and 2, and the path of 2's files.
fn two() -> (tempfile::TempDir, Store, std::path::PathBuf) {
    let (tmp, store) = store();
    commit(&store, 1, b"older state");
    commit(&store, 2, b"newer state");
    let dir = Path::new(store.location()).join(dir_name(2));
    (tmp, store, dir)
}

#[test]
fn flipped_payload_byte_falls_back_with_a_checksum_error() {
    let (_tmp, store, dir) = two();
    flip(&dir.join("s"), HEADER_LEN + 3);
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

#[test]
fn truncated_state_file_falls_back_with_a_truncation_error() {
    let (_tmp, store, dir) = two();
    let path = dir.join("s");
    let full = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 4).unwrap();
    drop(f);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    let (id, err) = &loaded.skipped[0];
    assert_eq!(*id, 2);
    assert!(
        matches!(err, Error::Truncated { id: 2, file, expected, found } if file == "s" && *expected == full && *found == full - 4),
        "{err}"
    );
    assert!(matches!(store.list().unwrap()[1].status, Status::Corrupt(Error::ManifestMismatch { .. })));
}

#[test]
fn flipped_manifest_byte_falls_back() {
    let (_tmp, store, dir) = two();
    let path = dir.join(MANIFEST_NAME);
    let text = fs::read_to_string(&path).unwrap();
    // A digit of the frontier ("frontier": 20): still valid JSON.
    let at = text.find("\"frontier\": 20").unwrap() + "\"frontier\": ".len();
    let mut bytes = text.into_bytes();
    bytes[at] = b'3';
    fs::write(&path, &bytes).unwrap();

    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    let (id, err) = &loaded.skipped[0];
    assert_eq!(*id, 2);
    assert!(matches!(err, Error::ChecksumMismatch { id: 2, file, .. } if file == MANIFEST_NAME), "{err}");
    assert!(matches!(store.list().unwrap()[1].status, Status::Corrupt(Error::ChecksumMismatch { .. })));

    // A byte that breaks the JSON: corrupt too.
    bytes[0] = b'X';
    fs::write(&path, &bytes).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.id, 1);
    assert!(matches!(loaded.skipped[0], (2, Error::ManifestParse { id: 2, .. })));

    // gc never removes it while it is the newest directory, and does once
    // a newer checkpoint is complete.
    assert_eq!(store.gc(1).unwrap(), Vec::<u64>::new());
    commit(&store, 3, b"third");
    assert_eq!(store.gc(1).unwrap(), [1, 2]);
}

#[test]
fn other_damage_is_detected() {
    // A state file replaced by another valid frame: the manifest disagrees.
    let (_tmp, store, dir) = two();
    fs::write(dir.join("s"), eddy_checkpoint::frame(b"NEWER STATE")).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert!(matches!(&loaded.skipped[0].1, Error::ManifestMismatch { id: 2, what: "crc32", .. }));

    let (_tmp, store, dir) = two();
    fs::remove_file(dir.join("s")).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert!(matches!(&loaded.skipped[0].1, Error::MissingFile { id: 2, file, .. } if file == "s"));

    let (_tmp, store, dir) = two();
    flip(&dir.join("s"), 2);
    let loaded = store.load_latest().unwrap().unwrap();
    assert!(matches!(&loaded.skipped[0].1, Error::BadMagic { id: 2, .. }));

    // Every checkpoint damaged: an error, not a silent fresh start.
    flip(&Path::new(store.location()).join(dir_name(1)).join("s"), HEADER_LEN);
    match store.load_latest() {
        Err(Error::AllRejected { rejected, .. }) => {
            assert_eq!(rejected.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 1]);
        }
        other => panic!("expected AllRejected, got {other:?}"),
    }
}

#[test]
fn ids_must_increase() {
    let (_tmp, store) = store();
    commit(&store, 5, b"five");
    assert!(matches!(store.begin(5, 0), Err(Error::IdNotIncreasing { id: 5, newest: 5 })));
    assert!(matches!(store.begin(3, 0), Err(Error::IdNotIncreasing { id: 3, newest: 5 })));
    // An incomplete newer directory counts too.
    drop(store.begin(7, 0).unwrap());
    assert!(matches!(store.begin(6, 0), Err(Error::IdNotIncreasing { id: 6, newest: 7 })));
    assert_eq!(store.next_id().unwrap(), 8);
    commit(&store, 8, b"eight");
    assert_eq!(store.load_latest().unwrap().unwrap().manifest.id, 8);
}

#[test]
fn names_and_locations_are_checked() {
    let (tmp, store) = store();
    let mut p = store.begin(1, 0).unwrap();
    for bad in ["", ".hidden", "a/b", "../x", "manifest.json", "sp ace"] {
        assert!(matches!(p.put(bad, b"x"), Err(Error::InvalidName { .. })), "{bad:?}");
    }
    p.put("ok-1.bin", b"x").unwrap();
    assert!(matches!(p.put("ok-1.bin", b"y"), Err(Error::DuplicateName { id: 1, .. })));
    assert_eq!(p.files().len(), 1);
    p.commit(json!({})).unwrap();
    assert_eq!(store.load(1).unwrap().file("ok-1.bin").unwrap(), b"x");

    let err = Store::open("gs://bucket/checkpoints").unwrap_err();
    assert!(matches!(&err, Error::UnsupportedScheme { scheme, .. } if scheme == "gs"));
    assert!(err.to_string().contains("gs"), "{err}");
    let no_bucket = Store::open("s3:///checkpoints").unwrap_err();
    assert!(matches!(&no_bucket, Error::InvalidLocation { .. }), "{no_bucket}");
    let local_with_options = Store::open_with(tmp.path().to_str().unwrap(), &[("aws_region", "x")]).unwrap_err();
    assert!(matches!(&local_with_options, Error::InvalidLocation { .. }), "{local_with_options}");
    let nested = tmp.path().join("a/b/c");
    Store::open(nested.to_str().unwrap()).unwrap();
    assert!(nested.is_dir());
    // Stray entries in the root are not checkpoints.
    fs::write(Path::new(store.location()).join("README"), "x").unwrap();
    fs::create_dir(Path::new(store.location()).join("123")).unwrap();
    assert_eq!(ids(&store), [1]);
}
