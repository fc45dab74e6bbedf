//! Durations in specs: `"10m"`, `"1h30m"`, `"500ms"`, or an integer of milliseconds.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of event time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    /// One second.
    pub const SECOND: Millis = Millis(1_000);
    /// One minute.
    pub const MINUTE: Millis = Millis(60_000);
    /// One hour.
    pub const HOUR: Millis = Millis(3_600_000);

    /// The number of milliseconds.
    pub fn ms(self) -> i64 {
        self.0
    }

    /// Parses `"90s"`, `"10m"`, `"1h30m"`, `"250ms"`, `"1d"`, or a bare integer of milliseconds.
    pub fn parse(text: &str) -> Result<Millis, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        if let Ok(ms) = t.parse::<i64>() {
            return if ms < 0 { Err(format!("negative duration {ms}")) } else { Ok(Millis(ms)) };
        }
        let mut total: i64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("invalid duration {text:?}: expected a number at {rest:?}"));
            }
            let n: i64 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(format!("invalid duration {text:?}: a unit (ms, s, m, h, d) must follow {n}")),
                u => return Err(format!("invalid duration {text:?}: unknown unit {u:?} (use ms, s, m, h or d)")),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit)
                .and_then(|x| total.checked_add(x))
                .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        }
        Ok(Millis(total))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms != 0 && ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms != 0 && ms % 1_000 == 0 {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"10m\", \"1h\", \"500ms\", or an integer of milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                if v < 0 {
                    Err(E::custom(format!("negative duration {v}")))
                } else {
                    Ok(Millis(v))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                i64::try_from(v).map(Millis).map_err(|_| E::custom("duration too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(Millis::parse("10m").unwrap(), Millis(600_000));
        assert_eq!(Millis::parse("1h30m").unwrap(), Millis(5_400_000));
        assert_eq!(Millis::parse("250ms").unwrap(), Millis(250));
        assert_eq!(Millis::parse("42").unwrap(), Millis(42));
        assert_eq!(Millis::parse("1d").unwrap(), Millis(86_400_000));
        assert!(Millis::parse("10").is_ok());
        assert!(Millis::parse("10x").unwrap_err().contains("unknown unit"));
        assert!(Millis::parse("h").is_err());
        assert!(Millis::parse("-5").is_err());
        assert_eq!(Millis(3_600_000).to_string(), "1h");
    }
}
