//! Byte sizes in specs: `"1MiB"`, `"512KiB"`, `"64B"`, or an integer of bytes.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

/// The units, largest first: binary multiples only, so that `"1MiB"` means
/// one thing.
const UNITS: [(&str, u64); 4] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)];

impl Bytes {
    /// One mebibyte.
    pub const MIB: Bytes = Bytes(1 << 20);

    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The number of bytes as a `usize` (saturating on a 32-bit target).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// Parses `"1MiB"`, `"512KiB"`, `"2GiB"`, `"100B"`, or a bare integer of bytes.
    pub fn parse(text: &str) -> Result<Bytes, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty byte size".into());
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits == 0 {
            return Err(format!(
                "invalid byte size {text:?}: expected a number of bytes, or a number and KiB, MiB or GiB"
            ));
        }
        let n: u64 = t[..digits].parse().map_err(|_| format!("invalid byte size {text:?}: number too large"))?;
        let unit = &t[digits..];
        let mult = match UNITS.iter().find(|(u, _)| *u == unit) {
            Some((_, m)) => *m,
            None if unit.is_empty() => 1,
            None => return Err(format!("invalid byte size {text:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)")),
        };
        n.checked_mul(mult).map(Bytes).ok_or_else(|| format!("invalid byte size {text:?}: too large"))
    }
}

impl fmt::Display for Bytes {
    /// In the largest unit that divides it: `1MiB`, `1536KiB`, `100B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, m) =
            UNITS.iter().find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m)).copied().unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / m)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as \"1MiB\", \"512KiB\", or an integer of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v).map(Bytes).map_err(|_| E::custom(format!("negative byte size {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_prints_the_largest() {
        assert_eq!(Bytes::parse("1MiB").unwrap(), Bytes(1 << 20));
        assert_eq!(Bytes::parse("512KiB").unwrap(), Bytes(512 << 10));
        assert_eq!(Bytes::parse("2GiB").unwrap(), Bytes(2 << 30));
        assert_eq!(Bytes::parse("100B").unwrap(), Bytes(100));
        assert_eq!(Bytes::parse("1048576").unwrap(), Bytes::MIB);
        assert!(Bytes::parse("1MB").unwrap_err().contains("unknown unit \"MB\""));
        assert!(Bytes::parse("1 MiB").is_err());
        assert!(Bytes::parse("MiB").is_err());
        assert!(Bytes::parse("-1").is_err());
        assert!(Bytes::parse("99999999999GiB").unwrap_err().contains("too large"));
        assert_eq!(Bytes(1 << 20).to_string(), "1MiB");
        assert_eq!(Bytes(1536 << 10).to_string(), "1536KiB");
        assert_eq!(Bytes(100).to_string(), "100B");
        assert_eq!(Bytes(0).to_string(), "0B");
    }

    #[test]
    fn reads_strings_and_integers_from_toml() {
        #[derive(Deserialize)]
        struct S {
            a: Bytes,
        }
        assert_eq!(toml::from_str::<S>("a = \"4KiB\"").unwrap().a, Bytes(4096));
        assert_eq!(toml::from_str::<S>("a = 4096").unwrap().a, Bytes(4096));
        let e = toml::from_str::<S>("a = -1").err().unwrap().to_string();
        assert!(e.contains("negative byte size -1"), "{e}");
    }
}
