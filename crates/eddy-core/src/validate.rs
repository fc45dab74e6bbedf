//! Validation rules of the ingest job: parsing, lateness, junk.
//!
//! These are pure functions over one line (parsing, junk) or over the
//! sequence of lines in arrival order (lateness); the ingest job and the test
//! reference models both call them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use crate::ids::{Channel, DeviceId};
use crate::reading::{ChannelList, Values};

/// Field names that cannot be channels: they are the reading's own fields,
/// or fields of the enriched output.
pub const RESERVED_FIELDS: [&str; 9] =
    ["device_id", "ts", "raw", "device", "junk", "late", "future", "line_no", "calibrated"];

/// Largest accepted `ts`: 2^53 − 1, the largest integer every JSON reader keeps exact.
pub const MAX_TS: i64 = (1 << 53) - 1;

/// Longest accepted `device_id`, in bytes of UTF-8. Every device id is
/// interned for the whole run (and keyed on by every job), so a hostile line
/// must not be able to make one of any size.
pub const MAX_DEVICE_ID: usize = 128;

/// Why a line was rejected. [`Rejection::reason`] renders it for the dead-letter output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not UTF-8.
    InvalidUtf8,
    /// Empty or blank line.
    Empty,
    /// Not valid JSON (the parser's message).
    InvalidJson(String),
    /// Valid JSON, but not an object.
    NotAnObject(&'static str),
    /// No `device_id` field.
    MissingDeviceId,
    /// `device_id` is not a non-empty string.
    InvalidDeviceId(String),
    /// `device_id` is longer than [`MAX_DEVICE_ID`] bytes: its length.
    DeviceIdTooLong(usize),
    /// No `ts` field.
    MissingTs,
    /// `ts` is not an integer in range.
    InvalidTs(String),
    /// A channel value that is neither a number nor null.
    InvalidValue {
        /// The field.
        channel: String,
        /// What it was.
        found: &'static str,
    },
    /// A field name that is reserved (see [`RESERVED_FIELDS`]).
    ReservedField(String),
    /// The same field twice.
    DuplicateField(String),
    /// The line is longer than the ingest's `max_line`; it was not parsed
    /// (nor ever held whole in memory).
    LineTooLong {
        /// Its length in bytes, without its line terminator.
        len: u64,
        /// The limit, in bytes.
        max: u64,
    },
}

impl Rejection {
    /// The stable code of the reason (the part before the colon).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidUtf8 => "invalid_utf8",
            Rejection::Empty => "empty_line",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::NotAnObject(_) => "not_an_object",
            Rejection::MissingDeviceId => "missing_device_id",
            Rejection::InvalidDeviceId(_) | Rejection::DeviceIdTooLong(_) => "invalid_device_id",
            Rejection::MissingTs => "missing_ts",
            Rejection::InvalidTs(_) => "invalid_ts",
            Rejection::InvalidValue { .. } => "invalid_value",
            Rejection::ReservedField(_) => "reserved_field",
            Rejection::DuplicateField(_) => "duplicate_field",
            Rejection::LineTooLong { .. } => "line_too_long",
        }
    }

    /// `code: detail`, as written to the dead-letter output.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code();
        match self {
            Rejection::InvalidUtf8 => write!(f, "{code}: the line is not valid UTF-8"),
            Rejection::Empty => write!(f, "{code}: the line is empty"),
            Rejection::InvalidJson(e) => write!(f, "{code}: {e}"),
            Rejection::NotAnObject(kind) => write!(f, "{code}: expected a JSON object, found {kind}"),
            Rejection::MissingDeviceId => write!(f, "{code}: field `device_id` is missing"),
            Rejection::InvalidDeviceId(d) => {
                write!(f, "{code}: field `device_id` must be a non-empty string, found {d}")
            }
            Rejection::DeviceIdTooLong(len) => {
                write!(f, "{code}: field `device_id` is longer than {MAX_DEVICE_ID} bytes ({len} bytes)")
            }
            Rejection::MissingTs => write!(f, "{code}: field `ts` is missing"),
            Rejection::InvalidTs(d) => write!(
                f,
                "{code}: field `ts` must be an integer number of epoch milliseconds in 0..={MAX_TS}, found {d}"
            ),
            Rejection::InvalidValue { channel, found } => {
                write!(f, "{code}: field `{channel}` must be a number or null, found {found}")
            }
            Rejection::ReservedField(name) => {
                write!(f, "{code}: field `{name}` is reserved and cannot be a channel")
            }
            Rejection::DuplicateField(name) => write!(f, "{code}: field `{name}` appears twice"),
            Rejection::LineTooLong { len, max } => {
                write!(f, "{code}: the line is {len} bytes long, more than the limit of {max} bytes (max_line)")
            }
        }
    }
}

/// A line that parsed as a reading (before the lateness and junk rules).
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The device.
    pub device: DeviceId,
    /// Event time, epoch ms.
    pub ts: i64,
    /// Channel values as received.
    pub values: Values,
}

/// A JSON value, reduced to what validation needs to know.
enum Field<'a> {
    Int(i64),
    UInt(u64),
    Float(f64),
    Null,
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl Field<'_> {
    fn kind(&self) -> String {
        match self {
            Field::Int(i) => format!("the number {i}"),
            Field::UInt(u) => format!("the number {u}"),
            Field::Float(x) => format!("the number {x}"),
            Field::Null => "null".into(),
            Field::Str(s) => format!("the string {:?}", truncate(s, 40)),
            Field::Other(k) => (*k).into(),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Other("a boolean"))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Field::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an object"))
    }
}

struct FieldSeed;
impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

/// The outcome of walking the top-level value: an object's fields, or the
/// kind of a non-object.
enum Top<'a> {
    Object(Result<Parsed, Rejection>),
    NotObject(&'static str, std::marker::PhantomData<&'a ()>),
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a boolean", Default::default()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number", Default::default()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number", Default::default()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number", Default::default()))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a string", Default::default()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Top::NotObject("null", Default::default()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::NotObject("an array", Default::default()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut device: Option<Result<DeviceId, Rejection>> = None;
        let mut ts: Option<Result<i64, Rejection>> = None;
        let mut values = Values::new();
        // The first rule broken wins, but the whole object is still read so
        // that a syntax error later in the line is reported as such.
        let mut first_error: Option<Rejection> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let field = map.next_value_seed(FieldSeed)?;
            match &*key {
                "device_id" => {
                    if device.is_some() {
                        first_error.get_or_insert(Rejection::DuplicateField(key.into_owned()));
                        continue;
                    }
                    device = Some(match field {
                        Field::Str(s) if s.len() > MAX_DEVICE_ID => Err(Rejection::DeviceIdTooLong(s.len())),
                        Field::Str(s) if !s.is_empty() => Ok(DeviceId::intern(&s)),
                        other => Err(Rejection::InvalidDeviceId(other.kind())),
                    });
                }
                "ts" => {
                    if ts.is_some() {
                        first_error.get_or_insert(Rejection::DuplicateField(key.into_owned()));
                        continue;
                    }
                    ts = Some(match field {
                        Field::Int(i) if (0..=MAX_TS).contains(&i) => Ok(i),
                        Field::UInt(u) if u <= MAX_TS as u64 => Ok(u as i64),
                        other => Err(Rejection::InvalidTs(other.kind())),
                    });
                }
                // After the first bad channel, later channels are not looked at
                // (device_id and ts still are: they take precedence).
                _ if first_error.is_some() => {}
                name => {
                    if RESERVED_FIELDS.contains(&name) {
                        first_error = Some(Rejection::ReservedField(name.to_string()));
                        continue;
                    }
                    let value = match field {
                        Field::Int(i) => Some(i as f64),
                        Field::UInt(u) => Some(u as f64),
                        Field::Float(x) => Some(x),
                        Field::Null => None,
                        other => {
                            first_error = Some(Rejection::InvalidValue {
                                channel: name.to_string(),
                                found: match other {
                                    Field::Str(_) => "a string",
                                    Field::Other(k) => k,
                                    _ => "a value",
                                },
                            });
                            continue;
                        }
                    };
                    let channel = Channel::intern(name);
                    if values.iter().any(|(c, _)| *c == channel) {
                        first_error = Some(Rejection::DuplicateField(name.to_string()));
                        continue;
                    }
                    values.push((channel, value));
                }
            }
        }
        let result = (|| {
            // Order of precedence: device_id, then ts, then the channel rules.
            let device = device.ok_or(Rejection::MissingDeviceId)??;
            let ts = ts.ok_or(Rejection::MissingTs)??;
            if let Some(e) = first_error {
                return Err(e);
            }
            Ok(Parsed { device, ts, values })
        })();
        Ok(Top::Object(result))
    }
}

/// Parses one input line into a reading, or says why it is rejected.
///
/// A trailing `\r` is ignored. Rules, in order: the line must be UTF-8 and
/// not blank; it must be a JSON object; `device_id` must be a non-empty string
/// of at most [`MAX_DEVICE_ID`] bytes;
/// `ts` must be an integer in `0..=MAX_TS`; every other field is a channel whose
/// value must be a number or null, whose name is not reserved, and which
/// appears once.
pub fn parse_line(line: &[u8]) -> Result<Parsed, Rejection> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(p) = parse_fast(line) {
        return Ok(p);
    }
    parse_full(line)
}

/// Powers of ten exactly representable in an f64, as serde_json uses them.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The fast path of [`parse_line`]: a valid reading written compactly
/// (`{"device_id":"…","ts":…,"<channel>":<number or null>,…}`, no
/// whitespace, no escapes, plain ASCII field names, numbers of at most 18
/// digits and exponents of at most 22), decoded without allocating.
///
/// It returns `None` for anything else, valid or not, and [`parse_full`]
/// decides; so it only has to be right on what it accepts. Numbers are
/// computed with the same operations as serde_json's (`significand as f64`
/// times or divided by an exact power of ten), so they are bit-identical.
fn parse_fast(line: &[u8]) -> Option<Parsed> {
    let mut i = 0;
    let n = line.len();
    let mut device: Option<DeviceId> = None;
    let mut ts: Option<i64> = None;
    let mut values = Values::new();
    if line.first() != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        // "key":
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let k0 = i + 1;
        let mut k1 = k0;
        while k1 < n && matches!(line[k1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') {
            k1 += 1;
        }
        if k1 == k0 || line.get(k1) != Some(&b'"') || line.get(k1 + 1) != Some(&b':') {
            return None;
        }
        // Plain ASCII, checked above.
        let key = std::str::from_utf8(&line[k0..k1]).ok()?;
        i = k1 + 2;
        match key {
            "device_id" => {
                if device.is_some() || line.get(i) != Some(&b'"') {
                    return None;
                }
                let v0 = i + 1;
                let mut v1 = v0;
                while v1 < n && line[v1] != b'"' {
                    if line[v1] == b'\\' || line[v1] < 0x20 {
                        return None;
                    }
                    v1 += 1;
                }
                // Too long: the full parser says why.
                if v1 == v0 || v1 >= n || v1 - v0 > MAX_DEVICE_ID {
                    return None;
                }
                device = Some(DeviceId::intern(std::str::from_utf8(&line[v0..v1]).ok()?));
                i = v1 + 1;
            }
            "ts" => {
                if ts.is_some() {
                    return None;
                }
                let (v, len) = plain_uint(&line[i..])?;
                if v > MAX_TS as u64 {
                    return None;
                }
                ts = Some(v as i64);
                i += len;
            }
            name => {
                if RESERVED_FIELDS.contains(&name) {
                    return None;
                }
                let channel = Channel::intern(name);
                if values.iter().any(|(c, _)| *c == channel) {
                    return None;
                }
                let (value, len) = number_or_null(&line[i..])?;
                values.push((channel, value));
                i += len;
            }
        }
        match line.get(i) {
            Some(b',') => i += 1,
            Some(b'}') if i + 1 == n => break,
            _ => return None,
        }
    }
    Some(Parsed { device: device?, ts: ts?, values })
}

/// Digits only, no leading zero (unless the number is 0), at most 18 of them.
fn plain_uint(s: &[u8]) -> Option<(u64, usize)> {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 18 || (s[0] == b'0' && len > 1) {
        return None;
    }
    Some((s[..len].iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')), len))
}

/// `null`, or a JSON number the fast path can decode exactly as serde_json does.
fn number_or_null(s: &[u8]) -> Option<(Option<f64>, usize)> {
    if s.starts_with(b"null") {
        return Some((None, 4));
    }
    let mut i = 0;
    let negative = s.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let (int, len) = plain_uint(&s[i..])?;
    i += len;
    let mut significand = int;
    let mut digits = len;
    let mut exponent: i32 = 0;
    let mut float = false;
    if s.get(i) == Some(&b'.') {
        float = true;
        i += 1;
        let frac = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        digits += frac;
        if digits > 18 {
            return None;
        }
        for d in &s[i..i + frac] {
            significand = significand * 10 + u64::from(d - b'0');
        }
        exponent -= frac as i32;
        i += frac;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        float = true;
        i += 1;
        let neg_exp = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let len = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 3 {
            return None;
        }
        let e: i32 = s[i..i + len].iter().fold(0i32, |a, d| a * 10 + i32::from(d - b'0'));
        exponent += if neg_exp { -e } else { e };
        i += len;
    }
    let value = if float {
        let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
        let f = significand as f64;
        let f = if exponent >= 0 { f * pow } else { f / pow };
        if negative {
            -f
        } else {
            f
        }
    } else if negative {
        // serde_json: a negative integer is an i64 (or -0.0 for "-0"); as f64 it is this.
        -(significand as f64)
    } else {
        significand as f64
    };
    Some((Some(value), i))
}

/// The general parser: every rule, every rejection reason.
fn parse_full(line: &[u8]) -> Result<Parsed, Rejection> {
    let text = std::str::from_utf8(line).map_err(|_| Rejection::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(Rejection::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de.deserialize_any(TopVisitor).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    de.end().map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    match top {
        Top::Object(r) => r,
        Top::NotObject(kind, _) => Err(Rejection::NotAnObject(kind)),
    }
}

/// Valid ranges per channel; a value outside its channel's range is junk.
#[derive(Clone, Debug, Default)]
pub struct Ranges {
    /// Indexed by [`Channel::index`]; `None` is unbounded.
    by_channel: Vec<Option<(f64, f64)>>,
}

impl Ranges {
    /// Ranges from (channel name, min, max) triples; a missing bound is infinite.
    pub fn new<'a>(ranges: impl IntoIterator<Item = (&'a str, Option<f64>, Option<f64>)>) -> Self {
        let mut r = Ranges::default();
        for (name, min, max) in ranges {
            let c = Channel::intern(name).index() as usize;
            if r.by_channel.len() <= c {
                r.by_channel.resize(c + 1, None);
            }
            r.by_channel[c] = Some((min.unwrap_or(f64::NEG_INFINITY), max.unwrap_or(f64::INFINITY)));
        }
        r
    }

    /// The range of `channel`, if bounded.
    pub fn get(&self, channel: Channel) -> Option<(f64, f64)> {
        self.by_channel.get(channel.index() as usize).copied().flatten()
    }

    /// True when `value` is junk for `channel`.
    pub fn is_junk(&self, channel: Channel, value: f64) -> bool {
        match self.get(channel) {
            Some((lo, hi)) => !(lo..=hi).contains(&value),
            None => false,
        }
    }

    /// The junk channels of a reading's values.
    pub fn junk_of(&self, values: &Values) -> ChannelList {
        values
            .iter()
            .filter_map(|(c, v)| match v {
                Some(v) if self.is_junk(*c, *v) => Some(*c),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> &'static str {
        parse_line(line.as_bytes()).unwrap_err().code()
    }

    #[test]
    fn parses_a_reading() {
        let p = parse_line(br#"{"device_id":"d1","ts":1700000000000,"pm25":12.5,"co2":null,"x":3}"#).unwrap();
        assert_eq!(&*p.device.name(), "d1");
        assert_eq!(p.ts, 1_700_000_000_000);
        assert_eq!(p.values.len(), 3);
        assert_eq!(p.values[0], (Channel::PM25, Some(12.5)));
        assert_eq!(p.values[1], (Channel::CO2, None));
        assert_eq!(p.values[2], (Channel::intern("x"), Some(3.0)));
    }

    #[test]
    fn every_rejection_has_its_code() {
        assert_eq!(parse_line(b"\xff\xfe").unwrap_err().code(), "invalid_utf8");
        assert_eq!(code("   "), "empty_line");
        assert_eq!(code(r#"{"device_id":"d1","ts":1"#), "invalid_json");
        assert_eq!(code(r#"{"device_id":"d1","ts":1} x"#), "invalid_json");
        assert_eq!(code("[1,2]"), "not_an_object");
        assert_eq!(code("42"), "not_an_object");
        assert_eq!(code(r#"{"ts":1}"#), "missing_device_id");
        assert_eq!(code(r#"{"device_id":"","ts":1}"#), "invalid_device_id");
        assert_eq!(code(r#"{"device_id":7,"ts":1}"#), "invalid_device_id");
        assert_eq!(code(r#"{"device_id":"d"}"#), "missing_ts");
        assert_eq!(code(r#"{"device_id":"d","ts":"1"}"#), "invalid_ts");
        assert_eq!(code(r#"{"device_id":"d","ts":1.5}"#), "invalid_ts");
        assert_eq!(code(r#"{"device_id":"d","ts":-1}"#), "invalid_ts");
        assert_eq!(code(r#"{"device_id":"d","ts":1,"pm25":"3"}"#), "invalid_value");
        assert_eq!(code(r#"{"device_id":"d","ts":1,"pm25":true}"#), "invalid_value");
        assert_eq!(code(r#"{"device_id":"d","ts":1,"pm25":[1]}"#), "invalid_value");
        assert_eq!(code(r#"{"device_id":"d","ts":1,"junk":1}"#), "reserved_field");
        assert_eq!(code(r#"{"device_id":"d","ts":1,"pm25":1,"pm25":2}"#), "duplicate_field");
        assert_eq!(code(&format!(r#"{{"device_id":"{}","ts":1}}"#, "d".repeat(129))), "invalid_device_id");
        assert_eq!(Rejection::LineTooLong { len: 2, max: 1 }.code(), "line_too_long");
    }

    /// A `device_id` of up to 128 bytes is valid, a longer one is not, in
    /// both parsers, whatever else the line holds; the length is counted in
    /// bytes of the decoded string (an escape counts as what it stands for).
    #[test]
    fn a_device_id_longer_than_128_bytes_is_invalid_in_both_parsers() {
        let line = |id: &str| format!(r#"{{"device_id":"{id}","ts":1767225600000,"pm25":1.5}}"#);
        let ok = "d".repeat(MAX_DEVICE_ID);
        let p = parse_line(line(&ok).as_bytes()).unwrap();
        assert_eq!(p.device.name().len(), 128);
        assert!(parse_fast(line(&ok).as_bytes()).is_some(), "128 bytes take the fast path");
        // 64 two-byte characters: 128 bytes.
        assert!(parse_line(line(&"é".repeat(64)).as_bytes()).is_ok());
        // An escape decodes to one byte: 128 bytes once decoded.
        assert!(parse_line(line(&format!("\\u0041{}", "d".repeat(127))).as_bytes()).is_ok());
        let too_long = [
            ("d".repeat(129), 129),
            ("é".repeat(65), 130),
            (format!("{}é", "d".repeat(127)), 129),
            (format!("\\u00e9{}", "d".repeat(127)), 129),
        ];
        for (id, len) in too_long {
            let l = line(&id);
            assert!(parse_fast(l.as_bytes()).is_none(), "{l}");
            let r = parse_full(l.as_bytes()).unwrap_err();
            assert_eq!(r, parse_line(l.as_bytes()).unwrap_err());
            assert_eq!(r, Rejection::DeviceIdTooLong(len), "{l}");
            assert_eq!(r.code(), "invalid_device_id");
        }
        let r = parse_line(line(&"x".repeat(5000)).as_bytes()).unwrap_err();
        assert_eq!(r.reason(), "invalid_device_id: field `device_id` is longer than 128 bytes (5000 bytes)");
        // device_id is checked before ts, as for any bad device_id.
        assert_eq!(code(&format!(r#"{{"ts":"x","device_id":"{}"}}"#, "d".repeat(200))), "invalid_device_id");
    }

    #[test]
    fn device_id_and_ts_rules_take_precedence_over_channel_rules() {
        // Regression: a bad channel before device_id used to hide device_id.
        assert_eq!(code(r#"{"pm25":"x","device_id":"d1","ts":1}"#), "invalid_value");
        assert_eq!(code(r#"{"pm25":"x","ts":1}"#), "missing_device_id");
        assert_eq!(code(r#"{"pm25":"x","device_id":"d1"}"#), "missing_ts");
        assert_eq!(code(r#"{"junk":1,"device_id":"d1","ts":"x"}"#), "invalid_ts");
        assert_eq!(code(r#"{"device_id":"d1","device_id":"d2","ts":1}"#), "duplicate_field");
    }

    #[test]
    fn reasons_name_the_field() {
        let r = parse_line(br#"{"device_id":"d","ts":1,"co2":"high"}"#).unwrap_err();
        assert_eq!(r.reason(), "invalid_value: field `co2` must be a number or null, found a string");
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_parser() {
        let lines = [
            r#"{"device_id":"dev-000042","ts":1767225637412,"pm25":12.3,"co2":845,"voc":123,"temp":21.4,"hum":45.2}"#,
            r#"{"device_id":"d","ts":0,"pm25":-0,"co2":-0.0,"voc":-5,"temp":-60.25,"hum":140}"#,
            r#"{"ts":5,"device_id":"dé","x_1":1e3,"y":1.5E-3,"z":2e+2,"w":null,"v":0.1,"u":123456789012345678}"#,
            r#"{"device_id":"d","ts":1,"pm25":0.30000000000000004,"co2":1e22,"voc":1e-22,"temp":9007199254740993}"#,
            r#"{"device_id":"d","ts":9007199254740991}"#,
            r#"{"device_id":"d","ts":9007199254740992}"#,
            r#"{"device_id":"d","ts":01}"#,
            r#"{"device_id":"d","ts":1,"pm25":01.5}"#,
            r#"{"device_id":"d","ts":1,"pm25":1.}"#,
            r#"{"device_id":"d","ts":1,"pm25":.5}"#,
            r#"{"device_id":"d","ts":1,"pm25":1e400}"#,
            r#"{"device_id":"d","ts":1,"pm25":1234567890123456789012}"#,
            r#"{"device_id":"d","ts":1,"pm25":1,"pm25":2}"#,
            r#"{"device_id":"d","ts":1,"junk":1}"#,
            r#"{"device_id":"","ts":1}"#,
            r#"{"device_id":"a"b","ts":1}"#,
            r#"{"device_id":"d","ts":1,"pm25":nul}"#,
            r#"{"device_id":"d","ts":1,"pm25":null }"#,
            r#"{"device_id":"d","ts":1} "#,
            r#"{"device_id":"d","ts":1}x"#,
            r#"{"device_id":"d","ts":1,}"#,
            r#"{"device_id":"d","ts":-1}"#,
            r#"{"device_id":"d","ts":1.0}"#,
            r#"{"device_id":"d","pm25":1}"#,
            r#"{"ts":1,"pm25":1}"#,
            r#"{}"#,
            r#"{"device_id":"d","ts":1,"":1}"#,
            r#"{"device_id":"d","ts":1,"pm25":true}"#,
        ];
        for l in lines {
            let full = parse_full(l.as_bytes());
            if let Some(fast) = parse_fast(l.as_bytes()) {
                let full = full.unwrap_or_else(|e| panic!("fast path accepted {l}, full parser: {e}"));
                assert_eq!(fast.device, full.device, "{l}");
                assert_eq!(fast.ts, full.ts, "{l}");
                assert_eq!(fast.values.len(), full.values.len(), "{l}");
                for (a, b) in fast.values.iter().zip(full.values.iter()) {
                    assert_eq!(a.0, b.0, "{l}");
                    assert_eq!(a.1.map(f64::to_bits), b.1.map(f64::to_bits), "{l}");
                }
            }
        }
        assert!(parse_fast(lines[0].as_bytes()).is_some(), "the common shape takes the fast path");
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_on_random_numbers(
            int in 0u64..100_000_000, frac in 0u64..1_000_000, fd in 0usize..7, neg: bool,
            exp in proptest::option::of(-30i32..30), ts in 0u64..(1u64 << 54),
        ) {
            let mut num = format!("{}{int}", if neg { "-" } else { "" });
            if fd > 0 {
                num.push_str(&format!(".{:0width$}", frac % 10u64.pow(fd as u32), width = fd));
            }
            if let Some(e) = exp {
                num.push_str(&format!("e{e}"));
            }
            let l = format!(r#"{{"device_id":"d","ts":{ts},"pm25":{num},"co2":null}}"#);
            let full = parse_full(l.as_bytes());
            match parse_fast(l.as_bytes()) {
                Some(fast) => {
                    let full = full.expect("the full parser accepts what the fast path accepts");
                    proptest::prop_assert_eq!(fast.ts, full.ts);
                    proptest::prop_assert_eq!(fast.values[0].1.map(f64::to_bits), full.values[0].1.map(f64::to_bits), "{}", l);
                }
                None => proptest::prop_assert!(full.is_err() || ts > MAX_TS as u64 || exp.is_some_and(|e| e.abs() > 16) || fd + 9 > 18),
            }
        }
    }

    #[test]
    fn junk_is_outside_the_inclusive_range() {
        let r = Ranges::new([("pm25", Some(0.0), Some(1000.0)), ("temp", Some(-40.0), None)]);
        assert!(!r.is_junk(Channel::PM25, 0.0));
        assert!(!r.is_junk(Channel::PM25, 1000.0));
        assert!(r.is_junk(Channel::PM25, 1000.1));
        assert!(r.is_junk(Channel::TEMP, -41.0));
        assert!(!r.is_junk(Channel::TEMP, 1e9));
        assert!(!r.is_junk(Channel::intern("other"), -1e9));
    }
}
