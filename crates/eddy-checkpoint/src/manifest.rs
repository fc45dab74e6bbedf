//! The manifest of a checkpoint, `manifest.json`, and its checksum.

use std::collections::BTreeSet;

use serde::de::Error as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frame::{crc32, FORMAT_VERSION};

/// The name of the manifest file in a checkpoint directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The longest state file name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// What a committed checkpoint holds: written last, as `manifest.json`, so
/// that a checkpoint with a manifest is complete.
///
/// On disk the JSON object also has a `"checksum"` field: the CRC-32 of the
/// compact `serde_json` serialization of this struct (fields in declaration
/// order, `meta` as parsed). Reading recomputes it, so a changed byte
/// anywhere in the file is detected (or the file fails to parse).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format version, [`FORMAT_VERSION`].
    pub version: u32,
    /// The checkpoint's id, strictly increasing within a store.
    pub id: u64,
    /// The dataflow time the checkpoint was taken at.
    pub frontier: u64,
    /// When the checkpoint was committed, in milliseconds since the Unix
    /// epoch.
    pub created_unix_ms: i64,
    /// Every state file of the checkpoint, in the order they were written.
    pub files: Vec<FileEntry>,
    /// The runtime's own record (positions, worker counts, spec
    /// fingerprint): opaque to this crate.
    pub meta: serde_json::Value,
}

/// One state file of a checkpoint, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The file name in the checkpoint directory.
    pub name: String,
    /// The payload's length in bytes (the file is
    /// [`HEADER_LEN`](crate::HEADER_LEN) bytes longer).
    pub bytes: u64,
    /// The payload's CRC-32.
    pub crc32: u32,
}

/// The manifest as written: its fields, then the checksum.
#[derive(Serialize)]
struct Sealed<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    checksum: u32,
}

impl Manifest {
    /// The checksum stored with this manifest: the CRC-32 of its compact
    /// JSON serialization.
    pub fn checksum(&self) -> Result<u32> {
        let bytes = serde_json::to_vec(self).map_err(|source| Error::ManifestEncode { id: self.id, source })?;
        Ok(crc32(&bytes))
    }

    /// The state file named `name`, if the checkpoint has one.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    /// The contents of `manifest.json` for this manifest: pretty JSON with
    /// the checksum field.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let sealed = Sealed { manifest: self, checksum: self.checksum()? };
        let mut out =
            serde_json::to_vec_pretty(&sealed).map_err(|source| Error::ManifestEncode { id: self.id, source })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses and verifies the contents of the `manifest.json` of
    /// checkpoint `id` (read from `location`, a path or an object's URL,
    /// which is named in errors): the format version, the checksum, the id,
    /// and the file names.
    pub fn from_json(bytes: &[u8], id: u64, location: &str) -> Result<Manifest> {
        let parse_err = |source| Error::ManifestParse { id, location: location.into(), source };
        let custom = |msg: String| parse_err(serde_json::Error::custom(msg));
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(parse_err)?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(custom("not a JSON object".into()));
        };
        // The version first: another version may be laid out differently.
        match map.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::UnsupportedVersion {
                    id,
                    file: MANIFEST_NAME.into(),
                    expected: FORMAT_VERSION,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                })
            }
            None => return Err(custom("missing or invalid field `version`".into())),
        }
        let recorded = map
            .remove("checksum")
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| custom("missing or invalid field `checksum`".into()))?;
        let manifest = Manifest::deserialize(serde_json::Value::Object(map)).map_err(parse_err)?;
        let actual = manifest.checksum()?;
        if actual != recorded {
            return Err(Error::ChecksumMismatch { id, file: MANIFEST_NAME.into(), expected: recorded, found: actual });
        }
        if manifest.id != id {
            return Err(Error::ManifestMismatch {
                id,
                file: MANIFEST_NAME.into(),
                what: "id",
                expected: id,
                found: manifest.id,
            });
        }
        let mut seen = BTreeSet::new();
        for f in &manifest.files {
            if let Err(e) = validate_name(&f.name) {
                return Err(custom(format!("listed state file: {e}")));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(custom(format!("state file {:?} listed twice", f.name)));
            }
        }
        Ok(manifest)
    }
}

/// Checks a state file name: 1 to [`MAX_NAME_LEN`] characters of
/// `[A-Za-z0-9._-]`, not starting with `.`, and not `manifest.json`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 200 bytes"
    } else if name.starts_with('.') {
        "starts with '.'"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        "only [A-Za-z0-9._-] allowed"
    } else if name == MANIFEST_NAME {
        "reserved for the manifest"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.into(), reason })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            id: 7,
            frontier: 1_000,
            created_unix_ms: 1_767_225_600_000,
            files: vec![
                FileEntry { name: "w0.state".into(), bytes: 12, crc32: 0xdead_beef },
                FileEntry { name: "w1.state".into(), bytes: 0, crc32: 0 },
            ],
            meta: json!({"workers": 2, "ratio": 0.1, "positions": {"p0": 17, "p1": -3}, "spec": "abc"}),
        }
    }

    #[test]
    fn names_are_checked() {
        for ok in ["a", "w0.state", "A-b_c.1", "manifest.json.bak", "x".repeat(200).as_str()] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", "manifest.json", &"x".repeat(201)] {
            assert!(matches!(validate_name(bad), Err(Error::InvalidName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn json_round_trip() {
        let m = sample();
        let json = m.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"checksum\""), "{text}");
        assert_eq!(Manifest::from_json(&json, 7, "m").unwrap(), m);
        assert_eq!(m.file("w1.state").unwrap().bytes, 0);
        assert!(m.file("nope").is_none());
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let json = sample().to_json().unwrap();
        for i in 0..json.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = json.clone();
                bad[i] ^= flip;
                let r = Manifest::from_json(&bad, 7, "m");
                match r {
                    Err(e) => assert!(e.is_corruption(), "byte {i}: {e}"),
                    Ok(m) => panic!("flip {flip:#04x} at byte {i} ({:?}) not detected: {m:?}", json[i] as char),
                }
            }
        }
    }

    #[test]
    fn wrong_id_version_checksum() {
        let m = sample();
        let json = m.to_json().unwrap();
        assert!(matches!(
            Manifest::from_json(&json, 8, "m"),
            Err(Error::ManifestMismatch { id: 8, what: "id", expected: 8, found: 7, .. })
        ));
        let mut v2 = m.clone();
        v2.version = 2;
        assert!(matches!(
            Manifest::from_json(&v2.to_json().unwrap(), 7, "m"),
            Err(Error::UnsupportedVersion { expected: 1, found: 2, .. })
        ));
        let mut edited: serde_json::Value = serde_json::from_slice(&json).unwrap();
        edited["frontier"] = json!(999);
        let edited = serde_json::to_vec(&edited).unwrap();
        assert!(matches!(Manifest::from_json(&edited, 7, "m"), Err(Error::ChecksumMismatch { .. })));
        assert!(matches!(Manifest::from_json(b"", 7, "m"), Err(Error::ManifestParse { .. })));
        assert!(matches!(Manifest::from_json(b"[1]", 7, "m"), Err(Error::ManifestParse { .. })));

        let mut bad_name = m;
        bad_name.files[0].name = "../escape".into();
        let r = Manifest::from_json(&bad_name.to_json().unwrap(), 7, "m");
        assert!(matches!(r, Err(Error::ManifestParse { .. })), "{r:?}");
    }
}
