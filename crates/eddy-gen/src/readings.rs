//! Simulation of the readings and the arrival-ordered writer.
//!
//! Readings are generated one interval slot at a time (every device once per
//! slot) and pushed into a min-heap keyed by arrival time. After slot `k`,
//! every future reading has `ts >= start + (k+1)*interval` and therefore
//! arrives no earlier than that, so everything in the heap that arrives before
//! it can be written. The heap holds about one slot of readings plus the late
//! ones in flight.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::plan::{rng_for, stream, Plan, MINUTE};
use crate::signal::{Device, CO2, HUM, NAMES, NULL, PM25, SLOTS, TEMP, TENTHS, VOC};
use crate::{GenConfig, GenError, GenSummary};

/// Maximum arrival jitter of an on-time reading.
const JITTER_MS: i64 = 30_000;
/// Lines between two progress callbacks.
const PROGRESS_EVERY: u64 = 65_536;

/// A reading waiting in the arrival heap.
#[derive(Clone, Copy, Debug)]
struct Pending {
    arrival: i64,
    seq: u64,
    ts: i64,
    dev: u32,
    late: bool,
    v: [i32; SLOTS],
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed so that `BinaryHeap` pops the earliest arrival first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.arrival.cmp(&self.arrival).then(other.seq.cmp(&self.seq))
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

/// Number of slots `k` in `0..slots` with `lo <= start + k*interval + phase < hi`.
fn readings_in(start: i64, interval: i64, slots: i64, phase: i64, lo: i64, hi: i64) -> i64 {
    let kmin = ceil_div(lo - start - phase, interval).max(0);
    let kmax = ceil_div(hi - start - phase, interval).min(slots);
    (kmax - kmin).max(0)
}

/// Where lines go: a buffered plain or gzip file.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(BufWriter<GzEncoder<File>>),
}

impl Sink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(buf),
            Sink::Gzip(w) => w.write_all(buf),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Gzip(w) => {
                let gz = w.into_inner().map_err(|e| e.into_error())?;
                gz.finish()?.flush()
            }
        }
    }
}

fn push_int(buf: &mut Vec<u8>, v: i64) {
    let mut tmp = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Writes a value stored in tenths with exactly one decimal.
fn push_tenths(buf: &mut Vec<u8>, t: i32) {
    let a = t.unsigned_abs();
    if t < 0 {
        buf.push(b'-');
    }
    push_int(buf, i64::from(a / 10));
    buf.push(b'.');
    buf.push(b'0' + (a % 10) as u8);
}

fn push_value(buf: &mut Vec<u8>, slot: usize, v: i32) {
    if v == NULL {
        buf.extend_from_slice(b"null");
    } else if TENTHS[slot] {
        push_tenths(buf, v);
    } else {
        push_int(buf, i64::from(v));
    }
}

fn value_text(slot: usize, v: i32) -> String {
    let mut b = Vec::new();
    push_value(&mut b, slot, v);
    String::from_utf8(b).expect("ascii")
}

/// Appends a reading object (without newline). `slots` is 5 or 6.
fn push_reading(buf: &mut Vec<u8>, id: &str, ts: i64, v: &[i32; SLOTS], slots: usize) {
    buf.extend_from_slice(b"{\"device_id\":\"");
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(b"\",\"ts\":");
    push_int(buf, ts);
    for (slot, &val) in v.iter().enumerate().take(slots) {
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(NAMES[slot].as_bytes());
        buf.extend_from_slice(b"\":");
        push_value(buf, slot, val);
    }
    buf.push(b'}');
}

/// Appends an object from pre-rendered JSON fields (for malformed lines).
fn push_fields(buf: &mut Vec<u8>, fields: &[(&str, String)]) {
    buf.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'"');
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(b"\":");
        buf.extend_from_slice(v.as_bytes());
    }
    buf.push(b'}');
}

/// ISO 8601 UTC rendering of epoch ms (for the "ts as a string" junk).
fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

/// Appends one malformed line (without newline) derived from a reading.
fn push_malformed(buf: &mut Vec<u8>, rng: &mut ChaCha8Rng, id: &str, ts: i64, v: &[i32; SLOTS], slots: usize) {
    let quoted_id = format!("\"{id}\"");
    let channel_fields = |skip: Option<usize>| -> Vec<(&'static str, String)> {
        (0..slots).filter(|&s| Some(s) != skip).map(|s| (NAMES[s], value_text(s, v[s]))).collect()
    };
    match rng.random_range(0..8u32) {
        // Truncated JSON: always loses at least the closing brace.
        0 => {
            let mut line = Vec::new();
            push_reading(&mut line, id, ts, v, slots);
            let cut = rng.random_range(1..line.len() - 1);
            buf.extend_from_slice(&line[..cut]);
        }
        // Non-JSON text.
        1 => {
            let text = match rng.random_range(0..6u32) {
                0 => format!("{id} {ts} pm25={} co2={}", value_text(PM25, v[PM25]), value_text(CO2, v[CO2])),
                1 => "ERROR sensor bus timeout (i2c-1), retrying".to_string(),
                2 => "<html><head><title>502 Bad Gateway</title></head></html>".to_string(),
                3 => format!("{id};{ts};{};{}", value_text(PM25, v[PM25]), value_text(TEMP, v[TEMP])),
                4 => format!("device_id={id}&ts={ts}&temp={}°C", value_text(TEMP, v[TEMP])),
                _ => "NaN".to_string(),
            };
            buf.extend_from_slice(text.as_bytes());
        }
        // A JSON array instead of an object.
        2 => {
            buf.push(b'[');
            buf.extend_from_slice(quoted_id.as_bytes());
            buf.push(b',');
            push_int(buf, ts);
            for (s, &val) in v.iter().enumerate().take(slots) {
                buf.push(b',');
                push_value(buf, s, val);
            }
            buf.push(b']');
        }
        // Missing device_id.
        3 => {
            let mut f = vec![("ts", ts.to_string())];
            f.extend(channel_fields(None));
            push_fields(buf, &f);
        }
        // Empty, numeric or null device_id.
        4 => {
            let bad = ["\"\"", "42", "null"][rng.random_range(0..3)];
            let mut f = vec![("device_id", bad.to_string()), ("ts", ts.to_string())];
            f.extend(channel_fields(None));
            push_fields(buf, &f);
        }
        // ts as a string (digits or ISO 8601).
        5 => {
            let t = if rng.random_bool(0.5) { format!("\"{ts}\"") } else { format!("\"{}\"", iso8601(ts)) };
            let mut f = vec![("device_id", quoted_id.clone()), ("ts", t)];
            f.extend(channel_fields(None));
            push_fields(buf, &f);
        }
        // A channel value that is a string or a bool.
        _ => {
            let slot = rng.random_range(0..5);
            let bad = if rng.random_bool(0.5) {
                let t = if v[slot] == NULL { "12.5".to_string() } else { value_text(slot, v[slot]) };
                format!("\"{t}\"")
            } else if rng.random_bool(0.5) {
                "true".to_string()
            } else {
                "false".to_string()
            };
            let mut f = vec![("device_id", quoted_id.clone()), ("ts", ts.to_string())];
            for s in 0..slots {
                let val = if s == slot { bad.clone() } else { value_text(s, v[s]) };
                f.push((NAMES[s], val));
            }
            push_fields(buf, &f);
        }
    }
}

/// Replaces one channel with an out-of-range value (stored units: tenths for
/// pm25/temp/hum).
fn corrupt(rng: &mut ChaCha8Rng, v: &mut [i32; SLOTS]) {
    let slot = rng.random_range(0..5);
    let choices: &[i32] = match slot {
        PM25 => &[-50, -10, 50_000, 99_999],
        CO2 => &[-1, -400, 65_535, 100_000],
        VOC => &[-1, -50, 999_999],
        TEMP => &[-600, -999, 1_500, 3_276],
        HUM => &[-50, 1_400, 2_550],
        _ => unreachable!(),
    };
    v[slot] = choices[rng.random_range(0..choices.len())];
}

pub(crate) fn write_readings(
    cfg: &GenConfig,
    plan: &Plan,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<GenSummary, GenError> {
    let interval = cfg.interval_ms;
    let (start, end) = (plan.start, plan.end);
    let slots_total = ceil_div(end - start, interval);
    let reference = cfg.reference_channel;
    let slots = if reference { SLOTS } else { SLOTS - 1 };

    let mut model_rng = rng_for(cfg.seed, stream::DEVICE_MODEL);
    let mut devices: Vec<Device> = (0..plan.ids.len())
        .map(|i| Device::new(&mut model_rng, interval, plan.windows[i], plan.drift[i], plan.truth.get(i).copied()))
        .collect();

    let expected_readings: i64 = devices
        .iter()
        .map(|d| readings_in(start, interval, slots_total, d.phase, d.from.max(start), d.until.min(end)))
        .sum();
    let q = cfg.junk_rate();
    let expected_total = expected_readings as u64 + (expected_readings as f64 * q).round() as u64;

    let file = File::create(path).map_err(GenError::io(path))?;
    let sink = if cfg.gzip {
        Sink::Gzip(BufWriter::with_capacity(1 << 20, GzEncoder::new(file, Compression::new(3))))
    } else {
        Sink::Plain(BufWriter::with_capacity(1 << 20, file))
    };

    let mut out = Emitter {
        plan,
        sink,
        summary: GenSummary { devices: cfg.devices, ..GenSummary::default() },
        line: Vec::with_capacity(256),
        junk_rng: rng_for(cfg.seed, stream::JUNK),
        q,
        slots,
        next_progress: PROGRESS_EVERY,
        expected_total,
        progress,
    };
    let mut sig_rng = rng_for(cfg.seed, stream::SIGNAL);
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut seq: u64 = 0;
    for k in 0..slots_total {
        let slot_start = start + k * interval;
        for (i, d) in devices.iter_mut().enumerate() {
            let ts = slot_start + d.phase;
            if ts < d.from || ts >= d.until || ts >= end {
                continue;
            }
            let v = d.step(&mut sig_rng, ts, start, reference);
            let late = cfg.late > 0.0 && sig_rng.random_bool(cfg.late);
            let delay = if late {
                sig_rng.random_range(15 * MINUTE..=120 * MINUTE)
            } else {
                sig_rng.random_range(0..=JITTER_MS)
            };
            heap.push(Pending { arrival: ts + delay, seq, ts, dev: i as u32, late, v });
            seq += 1;
        }
        let horizon = slot_start + interval;
        while heap.peek().is_some_and(|p| p.arrival < horizon) {
            let p = heap.pop().expect("peeked");
            out.emit(p).map_err(GenError::io(path))?;
        }
    }
    while let Some(p) = heap.pop() {
        out.emit(p).map_err(GenError::io(path))?;
    }
    let Emitter { sink, mut summary, progress, .. } = out;
    sink.finish().map_err(GenError::io(path))?;
    summary.bytes = std::fs::metadata(path).map_err(GenError::io(path))?.len();
    progress(summary.lines, summary.lines);
    Ok(summary)
}

/// Writes readings in the order they are handed over, adding junk.
struct Emitter<'a> {
    plan: &'a Plan,
    sink: Sink,
    summary: GenSummary,
    line: Vec<u8>,
    junk_rng: ChaCha8Rng,
    /// Per-reading probability of a malformed line and of a corrupted value.
    q: f64,
    slots: usize,
    next_progress: u64,
    expected_total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl Emitter<'_> {
    fn emit(&mut self, p: Pending) -> std::io::Result<()> {
        let id = self.plan.ids[p.dev as usize].as_str();
        let mut v = p.v;
        let s = &mut self.summary;
        if self.q > 0.0 && self.junk_rng.random_bool(self.q) {
            self.line.clear();
            push_malformed(&mut self.line, &mut self.junk_rng, id, p.ts, &v, self.slots);
            self.line.push(b'\n');
            self.sink.write_all(&self.line)?;
            s.junk_lines += 1;
            s.lines += 1;
        }
        if self.q > 0.0 && self.junk_rng.random_bool(self.q) {
            corrupt(&mut self.junk_rng, &mut v);
            s.junk_values += 1;
        }
        self.line.clear();
        push_reading(&mut self.line, id, p.ts, &v, self.slots);
        self.line.push(b'\n');
        self.sink.write_all(&self.line)?;
        s.readings += 1;
        s.late += u64::from(p.late);
        s.lines += 1;
        if s.lines >= self.next_progress {
            self.next_progress = s.lines + PROGRESS_EVERY;
            (self.progress)(s.lines, self.expected_total.max(s.lines));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        let mut b = Vec::new();
        push_tenths(&mut b, 123);
        b.push(b' ');
        push_tenths(&mut b, -5);
        b.push(b' ');
        push_tenths(&mut b, 0);
        b.push(b' ');
        push_int(&mut b, -1_767_225_600_000);
        b.push(b' ');
        push_int(&mut b, i64::MIN);
        assert_eq!(String::from_utf8(b).unwrap(), "12.3 -0.5 0.0 -1767225600000 -9223372036854775808");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn slot_counting() {
        // Slots at 10, 110, 210, ... (start 0, interval 100, phase 10).
        assert_eq!(readings_in(0, 100, 10, 10, 0, 1000), 10);
        assert_eq!(readings_in(0, 100, 10, 10, 110, 210), 1);
        assert_eq!(readings_in(0, 100, 10, 10, 111, 211), 1);
        assert_eq!(readings_in(0, 100, 10, 10, 500, 400), 0);
        assert_eq!(readings_in(0, 100, 3, 10, 0, 1000), 3);
    }
}
