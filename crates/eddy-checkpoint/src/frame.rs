//! The state file frame (magic, version, length, CRC-32) and the payload
//! codec (postcard).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"EDDYCKPT";

/// The version of the state file frame and of the manifest this crate
/// writes, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The length of a state file's header: magic (8 bytes), format version
/// (`u32` LE), payload length (`u64` LE), payload CRC-32 (`u32` LE).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Why [`unframe`] refused some bytes. [`FrameError::in_file`] adds the
/// checkpoint and file for an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes do not start with [`MAGIC`].
    #[error("bad magic: expected \"EDDYCKPT\", found \"{}\"", found.escape_ascii())]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The frame is of another format version.
    #[error("unsupported format version: expected {expected}, found {found}")]
    UnsupportedVersion {
        /// [`FORMAT_VERSION`].
        expected: u32,
        /// The version in the header.
        found: u32,
    },
    /// Fewer bytes than the header (or the header's length field) implies.
    #[error("truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// The length implied (saturating at `u64::MAX`).
        expected: u64,
        /// The length found.
        found: u64,
    },
    /// More bytes than the header's length field implies.
    #[error("trailing bytes: expected {expected} bytes, found {found}")]
    TrailingBytes {
        /// The length implied.
        expected: u64,
        /// The length found.
        found: u64,
    },
    /// The payload's CRC-32 is not the one in the header.
    #[error("checksum mismatch: expected {expected:#010x}, found {found:#010x}")]
    ChecksumMismatch {
        /// The CRC-32 in the header.
        expected: u32,
        /// The CRC-32 of the payload read.
        found: u32,
    },
}

impl FrameError {
    /// This error as an [`Error`] naming checkpoint `id` and its file `file`.
    pub fn in_file(self, id: u64, file: impl Into<String>) -> Error {
        let file = file.into();
        match self {
            FrameError::BadMagic { found } => Error::BadMagic { id, file, found },
            FrameError::UnsupportedVersion { expected, found } => {
                Error::UnsupportedVersion { id, file, expected, found }
            }
            FrameError::Truncated { expected, found } => Error::Truncated { id, file, expected, found },
            FrameError::TrailingBytes { expected, found } => Error::TrailingBytes { id, file, expected, found },
            FrameError::ChecksumMismatch { expected, found } => Error::ChecksumMismatch { id, file, expected, found },
        }
    }
}

/// The CRC-32 (IEEE, as `crc32fast` computes it) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The header [`frame`] puts before `payload`.
pub(crate) fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[20..24].copy_from_slice(&crc32(payload).to_le_bytes());
    h
}

/// `payload` framed as a state file: header, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of a framed state file, after checking, in this order, the
/// magic, the format version, the length and the checksum.
pub fn unframe(bytes: &[u8]) -> Result<&[u8], FrameError> {
    let found = bytes.len() as u64;
    let truncated = |expected: u64| FrameError::Truncated { expected, found };
    let Some(magic) = bytes.get(..8) else {
        return Err(truncated(HEADER_LEN as u64));
    };
    if magic != MAGIC {
        let mut m = [0u8; 8];
        m.copy_from_slice(magic);
        return Err(FrameError::BadMagic { found: m });
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion { expected: FORMAT_VERSION, found: version });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = len.saturating_add(HEADER_LEN as u64);
    if found < expected {
        return Err(truncated(expected));
    }
    if found > expected {
        return Err(FrameError::TrailingBytes { expected, found });
    }
    let recorded = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER_LEN..];
    let actual = crc32(payload);
    if actual != recorded {
        return Err(FrameError::ChecksumMismatch { expected: recorded, found: actual });
    }
    Ok(payload)
}

/// `value` encoded with postcard: the usual payload of a state file.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|source| Error::Encode { type_name: std::any::type_name::<T>(), source })
}

/// A value decoded from postcard bytes written by [`encode`]. Bytes left
/// over after the value are an error too ([`Error::DecodeTrailing`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let type_name = std::any::type_name::<T>();
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|source| Error::Decode { type_name, source })?;
    if !rest.is_empty() {
        return Err(Error::DecodeTrailing { type_name, extra: rest.len() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        name: String,
        counts: BTreeMap<String, (u64, f64)>,
        tags: Vec<Option<i32>>,
    }

    fn sample() -> State {
        let mut counts = BTreeMap::new();
        counts.insert("s-1".to_string(), (3, 1.5));
        counts.insert("s-2".to_string(), (u64::MAX, -0.25));
        State { name: "w0".into(), counts, tags: vec![Some(-7), None] }
    }

    #[test]
    fn encode_decode_round_trip() {
        let s = sample();
        let bytes = encode(&s).unwrap();
        let back: State = decode(&bytes).unwrap();
        assert_eq!(back, s);
        let empty: BTreeMap<u64, String> = decode(&encode(&BTreeMap::<u64, String>::new()).unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn decode_garbage_is_an_error() {
        // A string whose length prefix runs past the end, then invalid UTF-8.
        assert!(matches!(decode::<State>(&[0xff, 0xff, 0xff, 0x0f]), Err(Error::Decode { .. })));
        assert!(matches!(decode::<State>(&[2, 0xc3, 0x28, 0]), Err(Error::Decode { .. })));
        assert!(matches!(decode::<State>(&[]), Err(Error::Decode { .. })));
        // A huge sequence length must not allocate it up front.
        assert!(decode::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // A valid value followed by more bytes.
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes), Err(Error::DecodeTrailing { extra: 1, .. })));
        let err = decode::<State>(&[1, 2, 3]).unwrap_err();
        assert!(err.to_string().contains("State"), "{err}");
    }

    #[test]
    fn frame_round_trip_and_each_check() {
        let payload = b"hello checkpoint";
        let framed = frame(payload);
        assert_eq!(framed.len(), HEADER_LEN + payload.len());
        assert_eq!(&framed[..8], b"EDDYCKPT");
        assert_eq!(unframe(&framed).unwrap(), payload);
        assert_eq!(unframe(&frame(b"")).unwrap(), b"");

        let mut bad = framed.clone();
        bad[0] = b'X';
        assert_eq!(unframe(&bad), Err(FrameError::BadMagic { found: *b"XDDYCKPT" }));

        let mut bad = framed.clone();
        bad[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(unframe(&bad), Err(FrameError::UnsupportedVersion { expected: 1, found: 2 }));

        let full = framed.len() as u64;
        assert_eq!(
            unframe(&framed[..framed.len() - 1]),
            Err(FrameError::Truncated { expected: full, found: full - 1 })
        );
        assert_eq!(unframe(&framed[..10]), Err(FrameError::Truncated { expected: HEADER_LEN as u64, found: 10 }));
        assert_eq!(unframe(&framed[..3]), Err(FrameError::Truncated { expected: HEADER_LEN as u64, found: 3 }));

        let mut long = framed.clone();
        long.push(0);
        assert_eq!(unframe(&long), Err(FrameError::TrailingBytes { expected: full, found: full + 1 }));

        let mut bad = framed.clone();
        *bad.last_mut().unwrap() ^= 0x01;
        assert!(matches!(unframe(&bad), Err(FrameError::ChecksumMismatch { .. })));

        let err = FrameError::ChecksumMismatch { expected: 1, found: 2 }.in_file(7, "counts");
        assert!(matches!(err, Error::ChecksumMismatch { id: 7, ref file, expected: 1, found: 2 } if file == "counts"));
        assert!(err.is_corruption());
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut framed = frame(&payload);
            let i = pos.index(framed.len());
            framed[i] ^= flip;
            let result = unframe(&framed);
            prop_assert!(result.is_err(), "flip {flip:#04x} at byte {i} not detected: {result:?}");
        }

        #[test]
        fn any_truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..100), cut in any::<prop::sample::Index>()) {
            let framed = frame(&payload);
            let n = cut.index(framed.len());
            prop_assert!(unframe(&framed[..n]).is_err());
        }
    }
}
