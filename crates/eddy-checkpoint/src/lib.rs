//! eddy's checkpoint store: where checkpoints live, in a local directory or
//! on S3-compatible object storage.
//!
//! # Where it sits
//!
//! The runtime takes a checkpoint by asking each stateful operator for its
//! state at some dataflow time, serializing it, and handing the bytes here:
//! [`Store::begin`] a checkpoint, [`Pending::put`] one state file per piece
//! of state, then [`Pending::commit`] with the runtime's own record (input
//! positions, worker counts, a fingerprint of the job spec) as opaque JSON.
//! On restart, [`Store::load_latest`] returns the newest checkpoint that
//! verifies, and [`Store::gc`] trims old ones. This crate knows nothing about
//! dataflow: it stores bytes and a manifest. [`encode`] and [`decode`] are
//! the usual way to turn state into payloads (postcard).
//!
//! # Layout on disk
//!
//! ```text
//! ROOT/
//!   00000000000000000006/        one directory per checkpoint id (20 digits)
//!     w0.counts                  state files, names chosen by the caller
//!     w1.counts
//!     manifest.json              written last: the commit point
//!   00000000000000000007/        no manifest.json: incomplete (a crash while
//!     w0.counts                  writing it), ignored by loading, removed by gc
//! ```
//!
//! State files are written and fsynced first; then `manifest.json` is
//! written to a temporary name, fsynced, renamed and its directory fsynced.
//! A checkpoint is therefore complete exactly when its `manifest.json`
//! exists.
//!
//! # Object storage
//!
//! [`Store::open`]`("s3://bucket/prefix")` (the prefix is optional) keeps
//! the same layout as objects in an S3-compatible bucket, through
//! `object_store`'s `AmazonS3`: state file `NAME` of checkpoint `ID` is the
//! object `prefix/<ID, 20 digits>/NAME`. Each state file is one PUT, and
//! `manifest.json` is PUT only after all of them succeeded; a PUT is atomic,
//! so here too a checkpoint is complete exactly when its manifest object
//! exists. Objects under the prefix of another form are not the store's.
//! The bucket must exist.
//!
//! The client is configured by `AmazonS3Builder::from_env` (object_store
//! 0.14): every `AWS_*` variable that names one of its configuration keys,
//! notably `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` (the same key: set one),
//! `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` (else `AWS_DEFAULT_REGION`, else
//! `us-east-1`), `AWS_ALLOW_HTTP=true` for an `http://` endpoint and
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` (the endpoint must then include the
//! bucket). [`Store::open_with`] takes options
//! that win over the environment. A failed request is retried up to 5
//! times within 60 s, then reported as [`Error::Object`], with the store's
//! URL, the object key and the reason.
//!
//! The API stays synchronous: an object store's requests run on a
//! current-thread tokio runtime on a thread the store owns
//! (`eddy-checkpoint-io`), and the caller waits on a channel. No caller
//! needs a runtime, calling from inside one does not panic (it blocks that
//! thread while waiting), and the runtime is dropped on its own thread when
//! the last clone of the store goes.
//!
//! ## State file format, version 1
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `EDDYCKPT` |
//! | 4 | format version, `u32` little-endian ([`FORMAT_VERSION`]) |
//! | 8 | payload length, `u64` LE |
//! | 4 | CRC-32 of the payload, `u32` LE |
//! | n | payload |
//!
//! Reading checks each field and reports a distinct [`Error`] for each
//! failure (bad magic, version, truncation or trailing bytes, checksum).
//!
//! ## Manifest
//!
//! `manifest.json` is pretty JSON of a [`Manifest`] plus a `"checksum"`
//! field (see [`Manifest`]), so a damaged manifest is detected as well. A
//! checkpoint whose manifest or any state file fails verification is
//! skipped by [`Store::load_latest`], which falls back to the previous one
//! (an I/O or request failure is returned instead: it says nothing about
//! the checkpoint).
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use eddy_checkpoint::{decode, encode, Store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let store = Store::open(tmp.path().to_str().unwrap())?;
//!
//! // Take a checkpoint at dataflow time 42.
//! let counts: BTreeMap<String, u64> = [("sensor-1".to_string(), 3)].into();
//! let mut pending = store.begin(store.next_id()?, 42)?;
//! pending.put("w0.counts", &encode(&counts)?)?;
//! pending.commit(serde_json::json!({ "workers": 1 }))?;
//!
//! // After a restart: the newest checkpoint that verifies.
//! let loaded = store.load_latest()?.expect("one checkpoint");
//! assert_eq!(loaded.manifest.id, 1);
//! assert_eq!(loaded.manifest.frontier, 42);
//! let back: BTreeMap<String, u64> = decode(loaded.file("w0.counts").unwrap())?;
//! assert_eq!(back, counts);
//!
//! // Keep the newest three complete checkpoints.
//! assert!(store.gc(3)?.is_empty());
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod error;
mod frame;
mod manifest;
mod object;
mod store;

pub use error::{Error, Result};
pub use frame::{crc32, decode, encode, frame, unframe, FrameError, FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use manifest::{validate_name, FileEntry, Manifest, MANIFEST_NAME, MAX_NAME_LEN};
pub use store::{dir_name, is_object_storage, Listed, Loaded, Pending, Status, Store};
