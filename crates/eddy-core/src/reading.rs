//! The record model: readings as they move through the pipeline.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::ids::{Channel, DeviceId};

/// Channel values of one reading, in the order received. `None` is JSON
/// `null`: the channel was not measured (or, after validation, is junk).
pub type Values = SmallVec<[(Channel, Option<f64>); 6]>;

/// A short list of channels (junk channels, calibrated channels).
pub type ChannelList = SmallVec<[Channel; 2]>;

/// Device context columns from `devices.csv` (or a `devices` update), in
/// column order, without `device_id`. One is kept per device for the whole
/// run (in the reference source's tables and the devices arrangement) and
/// shared by every reading enriched with it.
pub type Context = Arc<ContextRow>;

/// The names of a row's context columns, shared by the rows that have the
/// same names (every row of one `devices.csv`).
type ColumnNames = Arc<[String]>;

/// One device's context columns: `(name, value)` pairs in column order.
///
/// The names are shared with the other rows that have the same ones, and the
/// values are stored back to back in one string, so a row costs two
/// allocations (this struct, in its [`Context`], and the values) instead of
/// one per name and value and one for the list: with a million devices of
/// three columns, about 100 bytes a device instead of about 280.
///
/// It compares, orders, hashes and serialises as the list of pairs it holds
/// (`[["site","s1"],…]` in JSON).
#[derive(Clone)]
pub struct ContextRow {
    names: ColumnNames,
    /// The values, back to back.
    values: Box<str>,
    /// The end of each value in `values` but the last (which ends with it).
    ends: Ends,
}

/// The ends of a row's values but the last: inline for up to three columns,
/// so that a [`ContextRow`] takes 48 bytes (its `Arc` 64).
#[derive(Clone)]
enum Ends {
    Inline([u32; 2]),
    Heap(Box<[u32]>),
}

impl ContextRow {
    /// A row of `(name, value)` pairs, in order.
    ///
    /// # Panics
    ///
    /// If the values take more than 4 GiB together.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> ContextRow {
        let pairs: SmallVec<[(K, V); 4]> = pairs.into_iter().collect();
        let names = shared_names(pairs.iter().map(|(k, _)| k.as_ref()));
        let mut values = String::with_capacity(pairs.iter().map(|(_, v)| v.as_ref().len()).sum());
        let mut ends: SmallVec<[u32; 2]> = SmallVec::new();
        for (i, (_, v)) in pairs.iter().enumerate() {
            values.push_str(v.as_ref());
            if i + 1 < pairs.len() {
                ends.push(u32::try_from(values.len()).expect("context values exceed 4 GiB"));
            }
        }
        let ends = match ends.len() {
            0..=2 => Ends::Inline([ends.first().copied().unwrap_or(0), ends.get(1).copied().unwrap_or(0)]),
            _ => Ends::Heap(ends.into_vec().into_boxed_slice()),
        };
        ContextRow { names, values: values.into_boxed_str(), ends }
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The end of value `i` (`i` < `len`) in `values`.
    fn end(&self, i: usize) -> usize {
        if i + 1 == self.len() {
            return self.values.len();
        }
        match &self.ends {
            Ends::Inline(e) => e[i] as usize,
            Ends::Heap(e) => e[i] as usize,
        }
    }

    /// The `i`-th column: its name and value.
    pub fn get(&self, i: usize) -> Option<(&String, &str)> {
        let name = self.names.get(i)?;
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        Some((name, &self.values[start..self.end(i)]))
    }

    /// The value of the column named `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
    }

    /// The columns in order: `(name, value)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &str)> + '_ {
        (0..self.len()).map(move |i| self.get(i).expect("index in range"))
    }

    /// True when `other` has the same column names in the same order. Rows
    /// built on one thread share their names, so this is usually one pointer
    /// comparison rather than a string comparison per column.
    pub fn same_names(&self, other: &ContextRow) -> bool {
        Arc::ptr_eq(&self.names, &other.names) || self.names[..] == other.names[..]
    }

    /// The columns as owned pairs.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
    }
}

/// The names `names`, as the [`ColumnNames`] of the previous row made on
/// this thread when they are the same (a table's rows all are), so that
/// every row of a table shares one copy.
fn shared_names<'a>(names: impl Iterator<Item = &'a str> + Clone) -> ColumnNames {
    thread_local! {
        static LAST: std::cell::RefCell<Option<ColumnNames>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(n) = last.as_ref().filter(|n| n.iter().map(String::as_str).eq(names.clone())) {
            return Arc::clone(n);
        }
        let n: ColumnNames = names.map(String::from).collect();
        *last = Some(Arc::clone(&n));
        n
    })
}

impl PartialEq for ContextRow {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ContextRow {}

impl PartialOrd for ContextRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ContextRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl std::hash::Hash for ContextRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl std::fmt::Debug for ContextRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for ContextRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for ContextRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ContextRow::new(Vec::<(String, String)>::deserialize(deserializer)?))
    }
}

/// Where a record came from: a file line, or a Kafka partition and offset.
///
/// For a dataset file, `partition` is 0 and `offset` is the 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Position {
    /// Input partition (0 for a file).
    pub partition: u32,
    /// Line number (files, 1-based) or offset (Kafka) within the partition.
    pub offset: u64,
}

impl Position {
    /// The position of line `line_no` (1-based) of a file.
    pub fn line(line_no: u64) -> Position {
        Position { partition: 0, offset: line_no }
    }
}

/// A reading that passed validation: the output of the ingest job.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device that sent it.
    pub device: DeviceId,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    /// Where it was read from.
    pub pos: Position,
    /// Channel values as received.
    pub values: Values,
    /// True when it arrived later than the lateness allows: it is kept for
    /// the late output and the backup, and left out of statistics, windows and alerts.
    pub late: bool,
    /// True when its `ts` is further ahead of the fleet clock than
    /// `max_future` allows (see [`crate::clock`]): it is kept for the future
    /// output and the backup, and left out of everything else. Never both
    /// late and future.
    #[serde(default)]
    pub future: bool,
    /// Channels whose raw value lies outside the channel's valid range.
    pub junk: ChannelList,
}

// Readings are cloned once per consumer of a stream (timely's tee). A
// derived `Clone` copies each `SmallVec` element by element, through
// `collect`; its elements are `Copy`, so `from_slice` copies them at once.
impl Clone for Reading {
    fn clone(&self) -> Self {
        Reading {
            device: self.device,
            ts: self.ts,
            pos: self.pos,
            values: Values::from_slice(&self.values),
            late: self.late,
            future: self.future,
            junk: ChannelList::from_slice(&self.junk),
        }
    }
}

impl Reading {
    /// Neither late nor future: it reaches statistics, windows and alerts.
    pub fn on_time(&self) -> bool {
        !self.late && !self.future
    }

    /// True when `channel` is junk in this reading.
    pub fn is_junk(&self, channel: Channel) -> bool {
        self.junk.contains(&channel)
    }
}

/// A validated reading with calibration and device context applied: the
/// output of the enrich job.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Enriched {
    /// The device that sent it.
    pub device: DeviceId,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    /// Where it was read from.
    pub pos: Position,
    /// Late readings are enriched too (the backup keeps them), but only
    /// non-late ones reach statistics, windows and alerts.
    pub late: bool,
    /// Future readings are enriched too, as of their dataflow time (the
    /// backup keeps them), and reach nothing else.
    #[serde(default)]
    pub future: bool,
    /// Calibrated values, in the order received. `None` where the value was
    /// null or junk: such a value is excluded from everything downstream.
    pub values: Values,
    /// The values as received (junk ones included). `enriched.jsonl` shows
    /// them only for calibrated channels; the backup keeps them all.
    pub raw: Values,
    /// The channels to which a calibration was applied.
    pub calibrated: ChannelList,
    /// The device context, or `None` for an unknown device.
    pub context: Option<Context>,
    /// Junk channels.
    pub junk: ChannelList,
}

impl Clone for Enriched {
    /// As for [`Reading`]: the value lists are copied at once.
    fn clone(&self) -> Self {
        Enriched {
            device: self.device,
            ts: self.ts,
            pos: self.pos,
            late: self.late,
            future: self.future,
            values: Values::from_slice(&self.values),
            raw: Values::from_slice(&self.raw),
            calibrated: ChannelList::from_slice(&self.calibrated),
            context: self.context.clone(),
            junk: ChannelList::from_slice(&self.junk),
        }
    }
}

impl Enriched {
    /// Neither late nor future.
    pub fn on_time(&self) -> bool {
        !self.late && !self.future
    }

    /// The usable (non-null, non-junk, calibrated) values.
    pub fn usable(&self) -> impl Iterator<Item = (Channel, f64)> + Clone + '_ {
        self.values.iter().filter_map(|(c, v)| v.map(|v| (*c, v)))
    }

    /// The calibrated value of `channel`, if usable.
    pub fn value(&self, channel: Channel) -> Option<f64> {
        self.values.iter().find(|(c, _)| *c == channel).and_then(|(_, v)| *v)
    }
}

/// An input line that failed validation, with its reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it was read from.
    pub pos: Position,
    /// The original text (invalid UTF-8 replaced by U+FFFD).
    pub line: String,
    /// Why it was rejected: a reason code, a colon, and a detail.
    pub reason: String,
}

/// A source of raw input lines, in arrival order: a dataset file, later a
/// Kafka partition. The ingest job reads it.
pub trait LineSource {
    /// Reads the next line (without its line terminator) into `buf`, which
    /// the caller has cleared, and returns its position; `Ok(None)` at the end.
    fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Position>>;

    /// [`Self::next_line`] for a line of at most `max` bytes (without its
    /// terminator, `\n` or `\r\n`): a longer one is read to its end but
    /// only its first bytes are kept in `buf` ([`Kept::Prefix`]), and the
    /// next call reads the next line.
    ///
    /// The default reads the whole line and cuts it, which suits sources
    /// that hold their lines in memory anyway; a source that streams its
    /// lines (a file) overrides it so that a long line is never held whole
    /// ([`read_line_within`]).
    fn next_line_within(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<(Position, Kept)>> {
        let Some(pos) = self.next_line(buf)? else { return Ok(None) };
        let (keep, kept) = bound(buf, max);
        buf.truncate(keep);
        Ok(Some((pos, kept)))
    }

    /// Bytes consumed so far (for progress reporting).
    fn bytes_read(&self) -> u64;

    /// The byte offset of the next line in the source's text (decompressed),
    /// where a checkpoint's restart reopens it; `None` for a source that
    /// cannot be reopened at an offset.
    fn offset(&self) -> Option<u64> {
        None
    }

    /// A description for error messages (a path, a topic).
    fn describe(&self) -> String;
}

/// An input line exactly as received, for the raw archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawLine {
    /// Where it was read from.
    pub pos: Position,
    /// When it was read, wall-clock epoch ms.
    pub arrival_ms: i64,
    /// Its bytes, without the line terminator. For a line longer than the
    /// ingest's `max_line` (a `line_too_long` dead letter), only its first
    /// bytes ([`Kept::Prefix`]): the rest was never held.
    pub bytes: Vec<u8>,
}

/// How many bytes of a line longer than the limit are kept: for its dead
/// letter and its raw archive row (fewer when the limit itself is lower).
pub const LINE_PREFIX: usize = 1024;

/// What a bounded read ([`LineSource::next_line_within`]) kept of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// The whole line: it is within the limit.
    Whole,
    /// The line is longer than the limit: only its first bytes are kept (at
    /// most [`LINE_PREFIX`], and at most the limit, cut before a UTF-8
    /// character that would not fit).
    Prefix {
        /// The line's length in bytes, without its terminator (`\n` or `\r\n`).
        len: u64,
    },
}

/// The length of `line` for the limit: without a trailing `\r` (the
/// first half of a `\r\n` terminator).
fn content_len(len: u64, ends_with_cr: bool) -> u64 {
    len - u64::from(ends_with_cr)
}

/// The first bytes of a line kept when it is too long: `n` bytes of
/// `line`, or fewer so as not to cut a UTF-8 character (when `line` is
/// UTF-8 there).
fn prefix_len(line: &[u8], n: usize) -> usize {
    if line.len() <= n {
        return line.len();
    }
    let mut cut = n;
    // Back over at most three continuation bytes to the start of the character.
    while cut > 0 && n - cut < 3 && line[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if line[cut] & 0xC0 == 0x80 {
        n
    } else {
        cut
    }
}

/// For a line held whole (a Kafka record, a line in memory): how many of
/// its bytes to keep under the limit `max`, and what that is.
pub fn bound(line: &[u8], max: usize) -> (usize, Kept) {
    let len = content_len(line.len() as u64, line.last() == Some(&b'\r'));
    if len > max as u64 {
        (prefix_len(line, LINE_PREFIX.min(max)), Kept::Prefix { len })
    } else {
        (line.len(), Kept::Whole)
    }
}

/// Reads a line from `r` into `buf` (appending; without its `\n`), as
/// `read_until(b'\n', buf)` does, but never holds more than `max + 1` bytes
/// of it: a line longer than `max` bytes (without its terminator, `\n` or
/// `\r\n`) is read on to its end without being kept, and only its first
/// bytes are left in `buf` ([`Kept::Prefix`]). `Ok(None)` at the end of `r`.
pub fn read_line_within<R: std::io::BufRead + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Kept>> {
    let start = buf.len();
    // The line so far: its length, whether it ends with `\r`, whether
    // anything was read at all, and whether it is already past the limit.
    let (mut len, mut ends_with_cr, mut any, mut over) = (0u64, false, false, false);
    // One byte more than the limit: the `\r` of a `\r\n` terminator.
    let room = max.saturating_add(1);
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if let Some(&last) = part.last() {
            ends_with_cr = last == b'\r';
        }
        len += part.len() as u64;
        if !over {
            let free = room - (buf.len() - start);
            if part.len() <= free {
                buf.extend_from_slice(part);
            } else {
                buf.extend_from_slice(&part[..free]);
                over = true;
            }
        }
        let used = part.len() + usize::from(newline);
        r.consume(used);
        if newline {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    let len = content_len(len, ends_with_cr);
    if len > max as u64 {
        let keep = prefix_len(&buf[start..], LINE_PREFIX.min(max));
        buf.truncate(start + keep);
        return Ok(Some(Kept::Prefix { len }));
    }
    Ok(Some(Kept::Whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_row_holds_its_pairs_in_order() {
        let row = ContextRow::new([("model", "AQ-1"), ("site", ""), ("owner", "o-7")]);
        assert_eq!(row.len(), 3);
        assert_eq!(row.to_pairs(), pairs(&[("model", "AQ-1"), ("site", ""), ("owner", "o-7")]));
        assert_eq!(row.get(1).map(|(k, v)| (k.as_str(), v)), Some(("site", "")));
        assert_eq!(row.get(3), None);
        assert_eq!(row.value("owner"), Some("o-7"));
        assert_eq!(row.value("floor"), None);
        assert!(ContextRow::new(Vec::<(String, String)>::new()).is_empty());
    }

    #[test]
    fn same_names_compares_names_in_order_not_values() {
        let a = ContextRow::new([("model", "AQ-1"), ("site", "s1")]);
        let b = ContextRow::new([("model", "AQ-2"), ("site", "s9")]);
        assert!(a.same_names(&b));
        // The same names built on another thread are another allocation.
        let c = std::thread::spawn(|| ContextRow::new([("model", "X"), ("site", "")])).join().unwrap();
        assert!(a.same_names(&c) && c.same_names(&a));
        assert!(!a.same_names(&ContextRow::new([("site", "s1"), ("model", "AQ-1")])));
        assert!(!a.same_names(&ContextRow::new([("model", "AQ-1")])));
        assert!(!a.same_names(&ContextRow::new([("model", "AQ-1"), ("site", "s1"), ("room", "r")])));
    }

    #[test]
    fn rows_of_any_width_hold_their_pairs() {
        // A row's Arc is 64 bytes with up to three columns (one per device).
        assert_eq!(std::mem::size_of::<ContextRow>(), 48);
        for n in 0..6 {
            let p: Vec<(String, String)> = (0..n).map(|i| (format!("k{i}"), "v".repeat(i))).collect();
            let row = ContextRow::new(p.clone());
            assert_eq!(row.len(), n);
            assert_eq!(row.to_pairs(), p);
            assert_eq!(row.get(n), None);
        }
    }

    #[test]
    fn rows_with_the_same_names_share_them() {
        let a = ContextRow::new([("model", "AQ-1"), ("site", "s1")]);
        let b = ContextRow::new([("model", "AQ-2"), ("site", "s2")]);
        assert!(Arc::ptr_eq(&a.names, &b.names));
        let c = ContextRow::new([("model", "AQ-2"), ("floor", "2")]);
        assert!(!Arc::ptr_eq(&a.names, &c.names));
        assert_eq!(c.to_pairs(), pairs(&[("model", "AQ-2"), ("floor", "2")]));
    }

    #[test]
    fn serialises_as_the_list_of_pairs() {
        let p = pairs(&[("site", "s\"1"), ("model", "AQ-1")]);
        let row = ContextRow::new(p.clone());
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, serde_json::to_string(&p).unwrap());
        let back: ContextRow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, row);
        assert_eq!(format!("{row:?}"), format!("{p:?}"));
    }

    proptest! {
        /// Equality, order and hash are those of the list of pairs, which
        /// the devices arrangement sorts and consolidates by.
        #[test]
        fn compares_as_the_list_of_pairs(
            a in proptest::collection::vec(("[a-c]{0,2}", "[a-c]{0,2}"), 0..4),
            b in proptest::collection::vec(("[a-c]{0,2}", "[a-c]{0,2}"), 0..4),
        ) {
            let (ra, rb) = (ContextRow::new(a.clone()), ContextRow::new(b.clone()));
            prop_assert_eq!(ra.to_pairs(), a.clone());
            prop_assert_eq!(ra == rb, a == b);
            prop_assert_eq!(ra.cmp(&rb), a.cmp(&b));
            let hash = |x: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                x(&mut h);
                std::hash::Hasher::finish(&h)
            };
            use std::hash::Hash;
            prop_assert_eq!(hash(&|h| ra.hash(h)), hash(&|h| a.hash(h)));
        }
    }

    /// What a bounded read must give: the line as `read_until` reads it, cut by [`bound`].
    fn reference_lines(input: &[u8], max: usize) -> Vec<(Vec<u8>, Kept)> {
        let mut r = input;
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            if std::io::BufRead::read_until(&mut r, b'\n', &mut buf).unwrap() == 0 {
                return out;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let (keep, kept) = bound(&buf, max);
            buf.truncate(keep);
            out.push((buf, kept));
        }
    }

    fn bounded_lines(input: &[u8], max: usize, capacity: usize) -> Vec<(Vec<u8>, Kept)> {
        let mut r = std::io::BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(kept) = read_line_within(&mut r, &mut buf, max).unwrap() {
            out.push((std::mem::take(&mut buf), kept));
        }
        out
    }

    #[test]
    fn a_line_longer_than_the_limit_keeps_its_prefix_and_the_next_is_read() {
        let long = "x".repeat(3000);
        let input = format!("short\n{long}\r\n0123456789\r\n01234567890\n\nlast");
        let got = bounded_lines(input.as_bytes(), 10, 64);
        let want: Vec<(Vec<u8>, Kept)> = vec![
            (b"short".to_vec(), Kept::Whole),
            (b"xxxxxxxxxx".to_vec(), Kept::Prefix { len: 3000 }),
            // Exactly the limit, and its `\r`: whole.
            (b"0123456789\r".to_vec(), Kept::Whole),
            (b"0123456789".to_vec(), Kept::Prefix { len: 11 }),
            (b"".to_vec(), Kept::Whole),
            (b"last".to_vec(), Kept::Whole),
        ];
        assert_eq!(got, want);
        // With a larger limit, the prefix is LINE_PREFIX bytes.
        let got = bounded_lines(input.as_bytes(), 2048, 100);
        assert_eq!(got[1], (vec![b'x'; LINE_PREFIX], Kept::Prefix { len: 3000 }));
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn the_prefix_is_not_cut_inside_a_character() {
        // 'é' is two bytes: 1023 bytes of 'x' then 'é' would cut it in two.
        let line = format!("{}é{}", "x".repeat(1023), "y".repeat(5000));
        let (keep, kept) = bound(line.as_bytes(), 2000);
        assert_eq!((keep, kept), (1023, Kept::Prefix { len: line.len() as u64 }));
        // Invalid UTF-8 is cut where it falls.
        let bad = vec![0x80u8; 3000];
        assert_eq!(bound(&bad, 2000).0, LINE_PREFIX);
        // Four-byte characters.
        let emoji = "😀".repeat(600);
        let keep = bound(emoji.as_bytes(), 2000).0;
        assert_eq!(keep, 1024);
        assert!(std::str::from_utf8(&emoji.as_bytes()[..keep]).is_ok());
        let odd = format!("x{emoji}");
        let keep = bound(odd.as_bytes(), 2000).0;
        assert_eq!(keep, 1021);
        assert!(std::str::from_utf8(&odd.as_bytes()[..keep]).is_ok());
    }

    /// A line of 64 MiB under a 1 MiB limit: the buffer never grows past
    /// about the limit, and the line after it is read whole.
    #[test]
    fn a_huge_line_is_never_held_whole() {
        use std::io::Read;
        let huge = std::io::repeat(b'x').take(64 << 20);
        let input = huge.chain(&b"\n{\"device_id\":\"d\",\"ts\":1}\n"[..]);
        let mut r = std::io::BufReader::with_capacity(1 << 16, input);
        let mut buf = Vec::new();
        assert_eq!(read_line_within(&mut r, &mut buf, 1 << 20).unwrap(), Some(Kept::Prefix { len: 64 << 20 }));
        assert_eq!(buf.len(), LINE_PREFIX);
        assert!(buf.capacity() <= 3 << 20, "the buffer grew to {} bytes", buf.capacity());
        buf.clear();
        assert_eq!(read_line_within(&mut r, &mut buf, 1 << 20).unwrap(), Some(Kept::Whole));
        assert_eq!(buf, br#"{"device_id":"d","ts":1}"#);
        buf.clear();
        assert_eq!(read_line_within(&mut r, &mut buf, 1 << 20).unwrap(), None);
    }

    proptest! {
        /// Whatever the lines, the limit and the reader's buffer, a bounded
        /// read gives what reading whole lines and cutting them gives.
        #[test]
        fn bounded_reads_agree_with_whole_lines(
            input in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', 0xC3, 0xA9]), 0..200),
            max in 0usize..30,
            capacity in 1usize..16,
        ) {
            prop_assert_eq!(bounded_lines(&input, max, capacity), reference_lines(&input, max));
        }
    }

    /// The hand-written clones copy every field, with value lists inline
    /// and spilled to the heap (more than six channels).
    #[test]
    fn clones_equal_their_originals() {
        for n in [0usize, 1, 5, 6, 7, 12] {
            let values: Values =
                (0..n).map(|i| (Channel::intern(&format!("c{i}")), (i % 3 != 0).then_some(i as f64))).collect();
            let junk: ChannelList = (0..n.min(3)).map(|i| Channel::intern(&format!("c{i}"))).collect();
            let r = Reading {
                device: DeviceId::intern("dev-clone"),
                ts: 17,
                pos: Position { partition: 2, offset: 9 },
                values: values.clone(),
                late: n % 2 == 0,
                future: n % 3 == 0,
                junk: junk.clone(),
            };
            assert_eq!(r.clone(), r);
            let e = Enriched {
                device: r.device,
                ts: r.ts,
                pos: r.pos,
                late: !r.late,
                future: !r.future,
                raw: values.iter().rev().copied().collect(),
                values,
                calibrated: junk.iter().rev().copied().collect(),
                context: Some(std::sync::Arc::new(ContextRow::new([("site", "s-1")]))),
                junk,
            };
            assert_eq!(e.clone(), e);
        }
    }
}
