//! JSON-lines outputs: one file per output, shared by the workers of a
//! process. Each worker encodes into its own buffer and appends whole lines
//! under a lock, so lines never interleave; the order of lines from different
//! workers is not defined.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use eddy_core::ids::Channel;
use eddy_core::reading::{DeadLetter, Enriched, RawLine, Reading, Values};
use eddy_core::records::{EventRecord, StatsRecord, WindowRecord};
use eddy_core::sink::{BatchSink, SinkError};

use crate::error::{Error, Result};

/// One output file.
pub struct JsonlFile {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    records: AtomicU64,
}

impl JsonlFile {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<Arc<JsonlFile>> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Arc::new(JsonlFile {
            path: path.to_path_buf(),
            writer: Mutex::new(BufWriter::with_capacity(1 << 20, file)),
            records: AtomicU64::new(0),
        }))
    }

    /// Opens `path` to go on after its first `bytes` bytes, which hold
    /// `records` records: the file is cut back to that length (what a
    /// killed run wrote after its last checkpoint goes) and appended to.
    pub fn resume(path: &Path, bytes: u64, records: u64) -> Result<Arc<JsonlFile>> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < bytes {
            return Err(Error::io(
                path,
                std::io::Error::other(format!("is {len} bytes, shorter than the {bytes} its checkpoint recorded")),
            ));
        }
        file.set_len(bytes).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::Start(bytes)).map_err(|e| Error::io(path, e))?;
        Ok(Arc::new(JsonlFile {
            path: path.to_path_buf(),
            writer: Mutex::new(BufWriter::with_capacity(1 << 20, file)),
            records: AtomicU64::new(records),
        }))
    }

    /// Flushes what was appended and returns the file's length and its
    /// records: its position, for a checkpoint.
    pub fn position(&self) -> Result<(u64, u64)> {
        use std::io::Seek;
        let mut w = self.writer.lock();
        w.flush().map_err(|e| Error::io(&self.path, e))?;
        let len = w.get_mut().stream_position().map_err(|e| Error::io(&self.path, e))?;
        Ok((len, self.records()))
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines (and flushes, if asked), returning the error
    /// that names the file.
    fn append(&self, bytes: &[u8], records: u64, flush: bool) -> Result<(), SinkError> {
        let mut w = self.writer.lock();
        w.write_all(bytes)
            .and_then(|_| if flush { w.flush() } else { Ok(()) })
            .map_err(|e| SinkError::new(self.path.display().to_string(), e))?;
        self.records.fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer.lock();
        w.flush().map_err(|e| Error::io(&self.path, e))?;
        w.get_ref().sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// How a record becomes one JSON line (without the newline).
pub trait Encode {
    /// Appends the record's JSON to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A worker's sink into a shared [`JsonlFile`].
pub struct JsonlSink {
    file: Arc<JsonlFile>,
    buf: Vec<u8>,
    pending: u64,
}

impl JsonlSink {
    /// A sink appending to `file`.
    pub fn new(file: Arc<JsonlFile>) -> JsonlSink {
        JsonlSink { file, buf: Vec::with_capacity(1 << 16), pending: 0 }
    }

    fn encode_all<D: Encode>(&mut self, batch: &[D]) -> Result<(), SinkError> {
        for d in batch {
            d.encode(&mut self.buf);
            self.buf.push(b'\n');
            self.pending += 1;
        }
        if self.buf.len() >= 1 << 20 {
            self.drain(false)?;
        }
        Ok(())
    }

    fn drain(&mut self, flush: bool) -> Result<(), SinkError> {
        if !self.buf.is_empty() || flush {
            let r = self.file.append(&self.buf, self.pending, flush);
            self.buf.clear();
            self.pending = 0;
            r?;
        }
        Ok(())
    }
}

impl<D: Encode + 'static> BatchSink<D> for JsonlSink {
    fn write(&mut self, batch: &mut Vec<D>) -> Result<(), SinkError> {
        let r = self.encode_all(batch);
        batch.clear();
        r
    }

    fn write_shared(&mut self, batch: &[D]) -> Result<(), SinkError>
    where
        D: Clone,
    {
        self.encode_all(batch)
    }

    fn commit(&mut self, upto: Option<u64>) -> Result<Option<u64>, SinkError> {
        self.drain(true)?;
        Ok(upto)
    }
}

fn json<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and every type here serialises.
    serde_json::to_writer(out, v).expect("serialising to memory");
}

/// A JSON string, as serde_json writes it: names and context values rarely
/// need escaping, so the common case is a copy between quotes.
fn json_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json(s, out);
    }
}

/// A channel's name as a JSON string. Channel names never change once
/// interned, so each thread keeps them encoded: a reading writes five or
/// more, and looking each name up and checking it for characters to escape
/// cost more than copying it.
fn channel_str(c: Channel, out: &mut Vec<u8>) {
    thread_local! {
        static ENCODED: RefCell<Vec<Option<Box<[u8]>>>> = const { RefCell::new(Vec::new()) };
    }
    ENCODED.with(|encoded| {
        let mut encoded = encoded.borrow_mut();
        let i = usize::from(c.index());
        if i >= encoded.len() {
            encoded.resize(i + 1, None);
        }
        let name = encoded[i].get_or_insert_with(|| {
            let mut buf = Vec::new();
            c.with_name(|n| json_str(n, &mut buf));
            buf.into_boxed_slice()
        });
        out.extend_from_slice(name);
    });
}

fn values(vals: &Values, out: &mut Vec<u8>) {
    for (c, v) in vals {
        out.push(b',');
        channel_str(*c, out);
        out.push(b':');
        json(v, out);
    }
}

impl Encode for Enriched {
    /// `{"device_id","ts", <channel>: calibrated value or null…, "raw":{…}, "device":{…}|null, "junk":[…]}`
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"device_id\":");
        self.device.with_name(|n| json_str(n, out));
        out.extend_from_slice(b",\"ts\":");
        json(&self.ts, out);
        values(&self.values, out);
        out.extend_from_slice(b",\"raw\":{");
        let mut first = true;
        for (c, v) in self.raw.iter().filter(|(c, _)| self.calibrated.contains(c)) {
            if !first {
                out.push(b',');
            }
            first = false;
            channel_str(*c, out);
            out.push(b':');
            json(v, out);
        }
        out.extend_from_slice(b"},\"device\":");
        match &self.context {
            None => out.extend_from_slice(b"null"),
            Some(ctx) => {
                out.push(b'{');
                for (i, (k, v)) in ctx.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_str(k, out);
                    out.push(b':');
                    json_str(v, out);
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"junk\":");
        json(&self.junk[..], out);
        out.push(b'}');
    }
}

impl Encode for Reading {
    /// A late reading: `{"device_id","ts", <channel>: raw value…, "line_no", "junk":[…]}`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"device_id\":");
        self.device.with_name(|n| json_str(n, out));
        out.extend_from_slice(b",\"ts\":");
        json(&self.ts, out);
        values(&self.values, out);
        out.extend_from_slice(b",\"line_no\":");
        json(&self.pos.offset, out);
        out.extend_from_slice(b",\"junk\":");
        json(&self.junk[..], out);
        out.push(b'}');
    }
}

impl Encode for DeadLetter {
    /// `{"line_no","line","reason"}`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"line_no\":");
        json(&self.pos.offset, out);
        out.extend_from_slice(b",\"line\":");
        json(&self.line, out);
        out.extend_from_slice(b",\"reason\":");
        json(&self.reason, out);
        out.push(b'}');
    }
}

impl Encode for RawLine {
    /// `{"partition","offset","arrival_ms","line"}`, the line's bytes as
    /// text (invalid UTF-8 replaced).
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"partition\":");
        json(&self.pos.partition, out);
        out.extend_from_slice(b",\"offset\":");
        json(&self.pos.offset, out);
        out.extend_from_slice(b",\"arrival_ms\":");
        json(&self.arrival_ms, out);
        out.extend_from_slice(b",\"line\":");
        json_str(&String::from_utf8_lossy(&self.bytes), out);
        out.push(b'}');
    }
}

// The three record types below are written field by field, in the order and
// with the leaf encodings serde's derive would use (the tests compare), but
// without serde's struct and `flatten` machinery, which cost more than the
// numbers themselves.

/// `,"name":` then the value.
fn field<T: Serialize + ?Sized>(name: &[u8], v: &T, out: &mut Vec<u8>) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
    json(v, out);
}

impl Encode for StatsRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        let s = &self.stats;
        out.extend_from_slice(b"{\"device_id\":");
        self.device_id.with_name(|n| json_str(n, out));
        out.extend_from_slice(b",\"channel\":");
        channel_str(self.channel, out);
        field(b"count", &s.count, out);
        field(b"mean", &s.mean, out);
        field(b"min", &s.min, out);
        field(b"max", &s.max, out);
        field(b"stddev", &s.stddev, out);
        field(b"ewma", &s.ewma, out);
        field(b"top_k_max_mean", &s.top_k_max_mean, out);
        field(b"top_k_min_mean", &s.top_k_min_mean, out);
        field(b"trend_per_hour", &s.trend_per_hour, out);
        field(b"ts", &s.ts, out);
        out.push(b'}');
    }
}

impl Encode for WindowRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"device_id\":");
        self.device_id.with_name(|n| json_str(n, out));
        out.extend_from_slice(b",\"channel\":");
        channel_str(self.channel, out);
        field(b"window_start", &self.window_start, out);
        field(b"window_end", &self.window_end, out);
        field(b"count", &self.count, out);
        field(b"mean", &self.mean, out);
        field(b"min", &self.min, out);
        field(b"max", &self.max, out);
        out.push(b'}');
    }
}

impl Encode for EventRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event_id\":");
        json(&self.event_id, out);
        field(b"rule_id", &*self.rule_id, out);
        out.extend_from_slice(b",\"device_id\":");
        self.device_id.with_name(|n| json_str(n, out));
        out.extend_from_slice(b",\"channel\":");
        channel_str(self.channel, out);
        field(b"state", &self.state, out);
        field(b"ts", &self.ts, out);
        field(b"value", &self.value, out);
        field(b"rise_above", &self.rise_above, out);
        field(b"fall_below", &self.fall_below, out);
        if let Some(p) = &self.peak {
            field(b"peak", p, out);
        }
        if let Some(d) = &self.duration_ms {
            field(b"duration_ms", d, out);
        }
        if let Some(r) = &self.reason {
            field(b"reason", r, out);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::ids::{Channel, DeviceId};
    use eddy_core::reading::Position;
    use std::sync::Arc as StdArc;

    fn encoded<T: Encode>(r: &T) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_str_writes_what_serde_writes() {
        let mut cases: Vec<String> = ["", "dev-000001", "site \"7\"", "a\\b", "tab\there", "\u{7f}", "é€😀", "line\n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        cases.extend((0u8..0x80).map(|b| format!("x{}y", b as char)));
        for s in cases {
            let mut fast = Vec::new();
            json_str(&s, &mut fast);
            assert_eq!(String::from_utf8(fast).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn hand_written_encoders_write_what_serde_writes() {
        use eddy_core::records::StatsSnapshot;
        use eddy_core::records::{EndReason, EventState};
        let d = DeviceId::intern("dev-\"x\"");
        let stats = StatsRecord {
            device_id: d,
            channel: Channel::intern("ref_pm25"),
            stats: StatsSnapshot {
                count: 3,
                mean: 1.0 / 3.0,
                min: -0.0,
                max: 1e300,
                stddev: None,
                ewma: f64::NAN,
                top_k_max_mean: 12.5,
                top_k_min_mean: 1e-7,
                trend_per_hour: Some(-2.25),
                ts: 1_767_225_600_000,
            },
        };
        assert_eq!(encoded(&stats), serde_json::to_string(&stats).unwrap());
        let w = WindowRecord {
            device_id: d,
            channel: Channel::CO2,
            window_start: 0,
            window_end: 3_600_000,
            count: 12,
            mean: 845.5,
            min: 420.0,
            max: f64::INFINITY,
        };
        assert_eq!(encoded(&w), serde_json::to_string(&w).unwrap());
        let mut e = EventRecord {
            event_id: "pm25-high:dev-\"x\":5".into(),
            rule_id: StdArc::from("pm25-high"),
            device_id: d,
            channel: Channel::PM25,
            state: EventState::Start,
            ts: 5,
            value: Some(40.0),
            rise_above: 35.0,
            fall_below: 25.0,
            peak: None,
            duration_ms: None,
            reason: None,
        };
        assert_eq!(encoded(&e), serde_json::to_string(&e).unwrap());
        e.state = EventState::End;
        e.value = None;
        e.peak = Some(99.5);
        e.duration_ms = Some(-3);
        e.reason = Some(EndReason::RuleRemoved);
        assert_eq!(encoded(&e), serde_json::to_string(&e).unwrap());
    }

    #[test]
    fn channel_names_from_the_per_thread_cache_are_escaped_as_serde_escapes_them() {
        let w = |channel| WindowRecord {
            device_id: DeviceId::intern("dev-1"),
            channel,
            window_start: 0,
            window_end: 3_600_000,
            count: 1,
            mean: 1.0,
            min: 1.0,
            max: 1.0,
        };
        for name in ["pm25", "odd \"name\"", "tab\there", "é"] {
            let r = w(Channel::intern(name));
            // The first encoding fills the cache, the second reads it.
            assert_eq!(encoded(&r), serde_json::to_string(&r).unwrap(), "{name:?}");
            assert_eq!(encoded(&r), serde_json::to_string(&r).unwrap(), "{name:?}");
        }
    }

    #[test]
    fn enriched_line_matches_the_contract() {
        let e = Enriched {
            device: DeviceId::intern("d\"1"),
            ts: 5,
            pos: Position::line(3),
            late: false,
            future: false,
            values: [(Channel::PM25, Some(11.0)), (Channel::CO2, None), (Channel::HUM, None)].into_iter().collect(),
            raw: [(Channel::PM25, Some(10.0)), (Channel::CO2, None), (Channel::HUM, Some(140.0))].into_iter().collect(),
            calibrated: [Channel::PM25].into_iter().collect(),
            context: Some(StdArc::new(eddy_core::reading::ContextRow::new([("site", "s1")]))),
            junk: [Channel::HUM].into_iter().collect(),
        };
        let mut out = Vec::new();
        e.encode(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"device_id":"d\"1","ts":5,"pm25":11.0,"co2":null,"hum":null,"raw":{"pm25":10.0},"device":{"site":"s1"},"junk":["hum"]})
        );
    }
}
