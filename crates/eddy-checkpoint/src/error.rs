//! The crate's error type.

use std::path::{Path, PathBuf};

use object_store::path::Path as Key;

/// What went wrong, and on which store, checkpoint or file.
///
/// The variants that describe a damaged checkpoint ([`BadMagic`],
/// [`UnsupportedVersion`], [`Truncated`], [`TrailingBytes`],
/// [`ChecksumMismatch`], [`ManifestMismatch`], [`MissingFile`],
/// [`ManifestParse`]) name the checkpoint id and the file (a state file or
/// `manifest.json`); [`Error::is_corruption`] tells them apart from the
/// others.
///
/// [`BadMagic`]: Error::BadMagic
/// [`UnsupportedVersion`]: Error::UnsupportedVersion
/// [`Truncated`]: Error::Truncated
/// [`TrailingBytes`]: Error::TrailingBytes
/// [`ChecksumMismatch`]: Error::ChecksumMismatch
/// [`ManifestMismatch`]: Error::ManifestMismatch
/// [`MissingFile`]: Error::MissingFile
/// [`ManifestParse`]: Error::ManifestParse
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A request to object storage failed: the bucket is missing, the
    /// endpoint refuses connections, the credentials are refused, … (after
    /// the client's retries).
    #[error("{store}: {op} {key:?} failed: {reason}")]
    Object {
        /// The store's URL, `s3://bucket/prefix`.
        store: String,
        /// What was asked: `"list"`, `"get"`, `"put"`, `"delete"`.
        op: &'static str,
        /// The object's key in the bucket (for a listing, the prefix).
        key: String,
        /// The cause in a few words, with the innermost error's message
        /// (e.g. "connection refused").
        reason: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The object storage client could not be configured from the `AWS_*`
    /// environment variables and options (an option unknown or invalid, a
    /// secret key without an access key, …).
    #[error("{location}: cannot configure the object storage client: {source}")]
    ObjectConfig {
        /// The store's URL.
        location: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store location is a URL of a scheme this crate cannot store to
    /// (only plain paths, `file://` and `s3://` URLs are supported).
    #[error("checkpoint store {location:?}: unsupported scheme {scheme:?} (only a path, a file:// or an s3:// URL)")]
    UnsupportedScheme {
        /// The location as given.
        location: String,
        /// Its scheme, e.g. `s3`.
        scheme: String,
    },
    /// The store location is unusable (e.g. empty, or an `s3://` URL
    /// without a bucket).
    #[error("checkpoint store {location:?}: {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A state file name is not allowed.
    #[error("invalid state file name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A state file name was used twice in one checkpoint.
    #[error("checkpoint {id}: state file {name:?} written twice")]
    DuplicateName {
        /// The checkpoint.
        id: u64,
        /// The repeated name.
        name: String,
    },
    /// [`Store::begin`](crate::Store::begin) was given an id that is not
    /// greater than every checkpoint id in the store.
    #[error("checkpoint {id}: ids must increase, but the store already holds checkpoint {newest}")]
    IdNotIncreasing {
        /// The id asked for.
        id: u64,
        /// The largest id in the store.
        newest: u64,
    },
    /// The store holds checkpoint `u64::MAX`: there is no next id.
    #[error("checkpoint ids exhausted: the store holds checkpoint {}", u64::MAX)]
    IdExhausted,
    /// [`Store::gc`](crate::Store::gc) was asked to keep no checkpoint.
    #[error("gc: keep must be at least 1, got {keep}")]
    InvalidKeep {
        /// The value given.
        keep: usize,
    },
    /// There is no checkpoint of this id (no directory, or no object under
    /// its prefix).
    #[error("checkpoint {id}: not found in {store}")]
    NotFound {
        /// The checkpoint asked for.
        id: u64,
        /// The store's [location](crate::Store::location).
        store: String,
    },
    /// The checkpoint has no `manifest.json`: it was never committed (or is
    /// being written).
    #[error("checkpoint {id}: incomplete, {location} has no manifest.json")]
    Incomplete {
        /// The checkpoint.
        id: u64,
        /// Its directory, or the URL of its prefix.
        location: String,
    },
    /// [`Store::load_latest`](crate::Store::load_latest) found committed
    /// checkpoints but rejected every one.
    #[error("{store}: no usable checkpoint, all {} rejected; newest: {}", rejected.len(), describe_newest(rejected))]
    AllRejected {
        /// The store's [location](crate::Store::location).
        store: String,
        /// Each rejected checkpoint, newest first, with the reason.
        rejected: Vec<(u64, Error)>,
    },
    /// A state file does not start with the magic bytes `EDDYCKPT`.
    #[error("checkpoint {id}, file {file:?}: bad magic: expected \"EDDYCKPT\", found \"{}\"", found.escape_ascii())]
    BadMagic {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// A state file or manifest is of a format version this crate does not
    /// read.
    #[error("checkpoint {id}, file {file:?}: unsupported format version: expected {expected}, found {found}")]
    UnsupportedVersion {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// The version this crate reads ([`FORMAT_VERSION`](crate::FORMAT_VERSION)).
        expected: u32,
        /// The version in the file.
        found: u32,
    },
    /// A state file is shorter than its header says.
    #[error("checkpoint {id}, file {file:?}: truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// The file length the header implies (or the header length, when
        /// even the header is cut).
        expected: u64,
        /// The actual file length.
        found: u64,
    },
    /// A state file is longer than its header says.
    #[error("checkpoint {id}, file {file:?}: trailing bytes: expected {expected} bytes, found {found}")]
    TrailingBytes {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// The file length the header implies.
        expected: u64,
        /// The actual file length.
        found: u64,
    },
    /// The CRC-32 of a state file's payload, or of a manifest, is not the
    /// one recorded.
    #[error("checkpoint {id}, file {file:?}: checksum mismatch: expected {expected:#010x}, found {found:#010x}")]
    ChecksumMismatch {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// The recorded CRC-32.
        expected: u32,
        /// The CRC-32 of the bytes read.
        found: u32,
    },
    /// A state file, or the manifest, disagrees with what the manifest or
    /// the directory says (size, CRC-32, checkpoint id).
    #[error("checkpoint {id}, file {file:?}: {what} mismatch: expected {expected}, found {found}")]
    ManifestMismatch {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// What differs: `"id"`, `"bytes"`, `"file size"`, `"crc32"`.
        what: &'static str,
        /// What the manifest (or directory name) says.
        expected: u64,
        /// What was found.
        found: u64,
    },
    /// A state file listed in the manifest is missing.
    #[error("checkpoint {id}, file {file:?}: listed in the manifest but missing ({location})")]
    MissingFile {
        /// The checkpoint.
        id: u64,
        /// The file.
        file: String,
        /// Where it was expected: a path, or an object's URL.
        location: String,
    },
    /// `manifest.json` is not a valid manifest (not JSON, a field missing or
    /// of the wrong type).
    #[error("checkpoint {id}: {location}: unreadable manifest: {source}")]
    ManifestParse {
        /// The checkpoint.
        id: u64,
        /// The manifest: a path, or an object's URL.
        location: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest could not be serialized.
    #[error("checkpoint {id}: cannot serialize the manifest: {source}")]
    ManifestEncode {
        /// The checkpoint.
        id: u64,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// [`encode`](crate::encode) failed.
    #[error("cannot encode a {type_name}: {source}")]
    Encode {
        /// The Rust type being encoded.
        type_name: &'static str,
        /// The underlying error.
        #[source]
        source: postcard::Error,
    },
    /// [`decode`](crate::decode) failed: the bytes are not a valid encoding
    /// of the type.
    #[error("cannot decode a {type_name}: {source}")]
    Decode {
        /// The Rust type being decoded.
        type_name: &'static str,
        /// The underlying error.
        #[source]
        source: postcard::Error,
    },
    /// [`decode`](crate::decode) read a whole value but bytes were left
    /// over (the payload is of another type).
    #[error("cannot decode a {type_name}: {extra} trailing bytes after the value")]
    DecodeTrailing {
        /// The Rust type being decoded.
        type_name: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
}

/// The first of `rejected`, for [`Error::AllRejected`]'s message.
fn describe_newest(rejected: &[(u64, Error)]) -> String {
    match rejected.first() {
        Some((_, e)) => e.to_string(),
        None => "none".into(),
    }
}

/// What went wrong with an object storage request, in a few words: the kind
/// of failure when the client tells it, then the innermost cause's message
/// (the client's own message wraps it in retry details).
fn object_reason(op: &str, e: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match e {
        E::NotFound { .. } if op == "list" => "not found (no such bucket?)",
        E::NotFound { .. } => "not found",
        E::PermissionDenied { .. } => "access denied",
        E::Unauthenticated { .. } => "not authenticated (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        _ => "",
    };
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let mut cause = inner.to_string();
    // S3 answers with an XML error document; its code says it best.
    if let Some(code) = xml_field(&cause, "Code") {
        let message = xml_field(&cause, "Message").unwrap_or_default();
        cause = if message.is_empty() { code.to_string() } else { format!("{code}: {message}") };
    }
    match (kind.is_empty(), cause.is_empty()) {
        (true, _) => cause,
        (false, true) => kind.to_string(),
        (false, false) => format!("{kind}: {cause}"),
    }
}

/// The text of the first `<field>…</field>` in `text`.
fn xml_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    let start = text.find(&format!("<{field}>"))? + field.len() + 2;
    let len = text[start..].find(&format!("</{field}>"))?;
    Some(&text[start..start + len])
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn object(store: &str, op: &'static str, key: &Key, source: object_store::Error) -> Error {
        let reason = object_reason(op, &source);
        Error::Object { store: store.into(), op, key: key.to_string(), reason, source: Box::new(source) }
    }

    /// Whether this error means a checkpoint is damaged (a bad frame,
    /// checksum, manifest, or a missing state file), as opposed to an
    /// operational failure (I/O, a refused argument).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::BadMagic { .. }
                | Error::UnsupportedVersion { .. }
                | Error::Truncated { .. }
                | Error::TrailingBytes { .. }
                | Error::ChecksumMismatch { .. }
                | Error::ManifestMismatch { .. }
                | Error::MissingFile { .. }
                | Error::ManifestParse { .. }
        )
    }
}
