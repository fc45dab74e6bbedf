//! A plain, sequential reference model of the whole embedded pipeline.
//!
//! Everything here is computed from the dataset files and the documented
//! semantics alone: no timely, and none of eddy's validation, reference-data
//! or statistics code. Records are built as `serde_json::Value`s shaped like
//! the lines of the output files, so the comparison is on what a user sees.
//!
//! The semantics, as documented (see `crates/eddy-core/src/validate.rs`,
//! `reference.rs`, `records.rs`, `crates/eddy-operators/src/*.rs` and
//! `crates/eddy-state/src/stats.rs`):
//!
//! * lines are validated in order; the first broken rule names the reason;
//! * event time (see [`ingest`]): a fleet clock `Q`, the `quorum`-th largest
//!   of the devices' latest `ts` once `2·quorum − 1` devices are seen (after a
//!   warm-up that holds the first readings);
//!   a reading more than `max_future` ahead of `Q` is **future** (set aside,
//!   it moves nothing); otherwise it is late when the largest `ts` `M` among
//!   earlier accepted readings exceeds its `ts` by more than the lateness;
//!   a line's dataflow time `t` is `M` minus the lateness, floored to the
//!   epoch (0 while there is no `M`);
//! * a channel value outside its inclusive range is junk (null downstream);
//! * reference data (spec rules, CSV tables at time 0, updates at their `ts`)
//!   is looked up as of each reading's `ts`;
//! * statistics, windows and alerts see the usable values of on-time
//!   readings (neither late nor future), in arrival order.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{json, Map, Value};

/// Largest valid `ts`: 2^53 − 1.
pub const MAX_TS: i64 = (1i64 << 53) - 1;

/// Field names that cannot be channels (the documented list).
pub const RESERVED: [&str; 9] = ["device_id", "ts", "raw", "device", "junk", "late", "future", "line_no", "calibrated"];

/// `valid_from` of a calibration version that is valid since forever.
pub const FOREVER: i64 = i64::MIN;

/// A threshold rule as written in a spec, `thresholds.csv` or an update.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleRow {
    /// The rule's id.
    pub rule_id: String,
    /// `"*"` or a device id.
    pub device_id: String,
    /// The watched channel.
    pub channel: String,
    /// Start above this.
    pub rise_above: f64,
    /// End below this.
    pub fall_below: f64,
}

/// The pipeline settings the model needs (the job specs, in plain numbers).
#[derive(Clone, Debug)]
pub struct Config {
    /// ingest.lateness
    pub lateness_ms: i64,
    /// ingest.max_future: how far ahead of the fleet clock a reading may be.
    pub max_future_ms: i64,
    /// ingest.quorum: the fleet clock is the quorum-th largest latest `ts`, from 2·quorum − 1 devices on.
    pub quorum: usize,
    /// ingest.warmup: at most this many readings are held before the fleet clock starts.
    pub warmup: usize,
    /// ingest.epoch
    pub epoch_ms: i64,
    /// Effective ranges: channel -> (min, max), inclusive; missing bounds infinite.
    pub ranges: BTreeMap<String, (f64, f64)>,
    /// enrich.reference_retention
    pub retention_ms: i64,
    /// stats.alpha
    pub alpha: f64,
    /// stats.top_k
    pub top_k: usize,
    /// stats.trend_half_life
    pub trend_half_life_ms: i64,
    /// stats.snapshot_every
    pub snapshot_every_ms: i64,
    /// windows.size
    pub window_size_ms: i64,
    /// windows.slide (= size for tumbling windows)
    pub window_slide_ms: i64,
    /// alerts.rules: the standard rules.
    pub rules: Vec<RuleRow>,
}

impl Config {
    /// The documented defaults (the shipped `jobs/*.toml`).
    pub fn documented_defaults() -> Config {
        let ranges = [
            ("pm25", 0.0, 1000.0),
            ("co2", 0.0, 10000.0),
            ("voc", 0.0, 100000.0),
            ("temp", -40.0, 85.0),
            ("hum", 0.0, 100.0),
        ]
        .into_iter()
        .map(|(c, lo, hi)| (c.to_string(), (lo, hi)))
        .collect();
        Config {
            lateness_ms: 600_000,
            max_future_ms: 3_600_000,
            quorum: 3,
            warmup: 100,
            epoch_ms: 1_000,
            ranges,
            retention_ms: 6 * 3_600_000,
            alpha: 0.1,
            top_k: 5,
            trend_half_life_ms: 3_600_000,
            snapshot_every_ms: 3_600_000,
            window_size_ms: 3_600_000,
            window_slide_ms: 3_600_000,
            rules: vec![
                RuleRow {
                    rule_id: "pm25-high".into(),
                    device_id: "*".into(),
                    channel: "pm25".into(),
                    rise_above: 35.0,
                    fall_below: 25.0,
                },
                RuleRow {
                    rule_id: "co2-high".into(),
                    device_id: "*".into(),
                    channel: "co2".into(),
                    rise_above: 1000.0,
                    fall_below: 800.0,
                },
            ],
        }
    }
}

/// The files of a dataset directory.
#[derive(Clone, Debug, Default)]
pub struct DatasetFiles {
    /// `readings.jsonl`, raw bytes.
    pub readings: Vec<u8>,
    /// `devices.csv`
    pub devices_csv: Option<String>,
    /// `calibration.csv`
    pub calibration_csv: Option<String>,
    /// `thresholds.csv`
    pub thresholds_csv: Option<String>,
    /// `updates.jsonl`
    pub updates_jsonl: Option<String>,
}

impl DatasetFiles {
    /// Writes the files into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("readings.jsonl"), &self.readings)?;
        for (name, text) in [
            ("devices.csv", &self.devices_csv),
            ("calibration.csv", &self.calibration_csv),
            ("thresholds.csv", &self.thresholds_csv),
            ("updates.jsonl", &self.updates_jsonl),
        ] {
            if let Some(t) = text {
                std::fs::write(dir.join(name), t)?;
            }
        }
        Ok(())
    }

    /// Reads the files of a (plain, not gzipped) dataset directory.
    pub fn read(dir: &std::path::Path) -> std::io::Result<DatasetFiles> {
        let opt = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        Ok(DatasetFiles {
            readings: std::fs::read(dir.join("readings.jsonl"))?,
            devices_csv: opt("devices.csv"),
            calibration_csv: opt("calibration.csv"),
            thresholds_csv: opt("thresholds.csv"),
            updates_jsonl: opt("updates.jsonl"),
        })
    }
}

/// What the model expects in the output directory.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// `deadletter.jsonl` records, by line number.
    pub deadletter: Vec<Value>,
    /// `late.jsonl` records, by line number.
    pub late: Vec<Value>,
    /// `future.jsonl` records (encoded like `late.jsonl`), by line number.
    pub future: Vec<Value>,
    /// `enriched.jsonl` records, in arrival order.
    pub enriched: Vec<Value>,
    /// `stats.jsonl` records: per key in emission order, with the trend
    /// tolerance scale (value range / time range of the retained points).
    pub stats: Vec<(Value, f64)>,
    /// `windows.jsonl` records.
    pub windows: Vec<Value>,
    /// `events.jsonl` records, per device in arrival order.
    pub events: Vec<Value>,
    /// Counters of `summary.json`.
    pub summary: Counts,
}

/// The counters of `summary.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Input lines.
    pub lines: u64,
    /// Valid readings (late and future included).
    pub valid: u64,
    /// Late readings.
    pub late: u64,
    /// Future readings (not late, not junk).
    pub future: u64,
    /// Dead letters.
    pub deadletter: u64,
    /// On-time readings with a junk channel.
    pub junk: u64,
    /// The same, per device.
    pub junk_by_device: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// A valid reading, with everything the later stages need.
#[derive(Clone, Debug)]
pub struct Reading {
    /// 1-based line number.
    pub line_no: u64,
    /// Dataflow time of the line.
    pub t: i64,
    /// The device.
    pub device: String,
    /// Event time.
    pub ts: i64,
    /// Channel values in field order.
    pub values: Vec<(String, Option<f64>)>,
    /// Late?
    pub late: bool,
    /// Future (too far ahead of the fleet clock)? Never also late.
    pub future: bool,
    /// Junk channels, in field order.
    pub junk: Vec<String>,
}

/// An object's fields in document order (serde_json's `Map` sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The parsed content of a valid line.
pub struct ParsedLine {
    /// device_id
    pub device: String,
    /// ts
    pub ts: i64,
    /// channels in field order
    pub values: Vec<(String, Option<f64>)>,
}

/// Validates one line (without its `\n`): the parsed reading, or the reason code.
pub fn classify(line: &[u8]) -> Result<ParsedLine, &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Err("invalid_utf8");
    };
    if text.trim().is_empty() {
        return Err("empty_line");
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Err("invalid_json");
    };
    if !v.is_object() {
        return Err("not_an_object");
    }
    let fields = serde_json::from_str::<Ordered>(text).expect("a JSON object parses as ordered fields").0;
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    // Precedence: device_id, then ts, then the first bad channel field.
    let device = match get("device_id") {
        None => return Err("missing_device_id"),
        // At most 128 bytes of UTF-8 (formats.md 2.1).
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s.clone(),
        Some(_) => return Err("invalid_device_id"),
    };
    let ts = match get("ts") {
        None => return Err("missing_ts"),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if (0..=MAX_TS).contains(&i) => i,
            (None, Some(u)) if u <= MAX_TS as u64 => u as i64,
            _ => return Err("invalid_ts"),
        },
        Some(_) => return Err("invalid_ts"),
    };
    // Row 7, the first broken field in the line wins: a repeated field
    // (device_id and ts included), a reserved name, a value that is not a
    // number or null. (`get` above used the first device_id and ts.)
    let mut values: Vec<(String, Option<f64>)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, v) in &fields {
        let first = seen.insert(k.as_str());
        if k == "device_id" || k == "ts" {
            if !first {
                return Err("duplicate_field");
            }
            continue;
        }
        if RESERVED.contains(&k.as_str()) {
            return Err("reserved_field");
        }
        let x = match v {
            Value::Number(n) => Some(n.as_f64().expect("finite")),
            Value::Null => None,
            _ => return Err("invalid_value"),
        };
        if !first {
            return Err("duplicate_field");
        }
        values.push((k.clone(), x));
    }
    Ok(ParsedLine { device, ts, values })
}

/// Splits a file into lines like a line reader: on `\n`, the last line may
/// lack its terminator, and nothing follows a final `\n`.
pub fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fn is_junk(cfg: &Config, channel: &str, v: f64) -> bool {
    match cfg.ranges.get(channel) {
        Some(&(lo, hi)) => !(lo <= v && v <= hi),
        None => false,
    }
}

/// The event-time state of one input (one readings file), as the rule in
/// `docs/formats.md` 2.2 defines it:
///
/// * `n`: the devices seen (any valid reading);
/// * `latest[d]`: the `ts` of the most recent valid reading of device `d`
///   that was not late (during the warm-up, of every held reading);
/// * the fleet clock `Q`: `None` while fewer than `2·quorum − 1` devices have
///   been seen (and always with a quorum of 1); then the largest
///   `quorum`-th largest `latest` value so far;
/// * `M`: the largest `ts` among accepted readings (neither late nor future).
///
/// During the warm-up each valid reading updates `latest` and is held. The
/// warm-up ends right after the reading that makes `n >= 2·quorum − 1`, or
/// that makes the held count reach `warmup`, or at the end of the input; the
/// held readings are then classified in arrival order, each with the
/// dataflow time of the watermark before it (never before the releasing
/// line's). Afterwards a reading is classified against the clock as it is,
/// then, unless late, updates `latest` and the clock.
struct EventClock<'c> {
    cfg: &'c Config,
    seen: std::collections::BTreeSet<String>,
    latest: BTreeMap<String, i64>,
    q: Option<i64>,
    m: Option<i64>,
    /// Indexes of held readings; `None` once the warm-up is over.
    held: Option<Vec<usize>>,
}

impl<'c> EventClock<'c> {
    fn new(cfg: &'c Config) -> Self {
        EventClock { cfg, seen: Default::default(), latest: BTreeMap::new(), q: None, m: None, held: Some(Vec::new()) }
    }

    /// The dataflow time of the next line: the watermark `M − lateness`
    /// floored to the epoch, 0 while there is none (or it is negative).
    fn time(&self) -> i64 {
        match self.m {
            Some(m) if m - self.cfg.lateness_ms > 0 => {
                (m - self.cfg.lateness_ms) / self.cfg.epoch_ms * self.cfg.epoch_ms
            }
            _ => 0,
        }
    }

    fn full(&self) -> bool {
        self.seen.len() + 1 >= 2 * self.cfg.quorum
    }

    /// Moves `Q` to the `quorum`-th largest `latest` value, if later.
    fn tick(&mut self) {
        let k = self.cfg.quorum;
        if k < 2 || !self.full() {
            return;
        }
        let mut v: Vec<i64> = self.latest.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&kth) = v.get(k - 1) {
            self.q = Some(self.q.map_or(kth, |q| q.max(kth)));
        }
    }

    /// The future and lateness rules, against the clock as it is.
    fn classify(&mut self, r: &mut Reading) {
        r.future = self.q.is_some_and(|q| r.ts > q.saturating_add(self.cfg.max_future_ms));
        r.late = !r.future && self.m.is_some_and(|m| m - r.ts > self.cfg.lateness_ms);
        if !r.future && !r.late {
            self.m = Some(self.m.map_or(r.ts, |m| m.max(r.ts)));
        }
    }

    /// Ends the warm-up: starts the clock and classifies the held readings;
    /// `t` is the time of the line that ends it.
    fn end_warmup(&mut self, out: &mut [Reading], t: i64) {
        let Some(held) = self.held.take() else {
            return;
        };
        self.tick();
        for i in held {
            out[i].t = self.time().max(t);
            self.classify(&mut out[i]);
        }
    }

    /// A valid reading, pushed onto `out` (classified now, or later if held).
    fn push(&mut self, mut r: Reading, out: &mut Vec<Reading>) {
        self.seen.insert(r.device.clone());
        match &mut self.held {
            Some(held) => {
                held.push(out.len());
                let held = held.len();
                self.latest.insert(r.device.clone(), r.ts);
                let t = r.t;
                out.push(r);
                if self.full() || held >= self.cfg.warmup {
                    self.end_warmup(out, t);
                }
            }
            None => {
                self.classify(&mut r);
                if !r.late {
                    self.latest.insert(r.device.clone(), r.ts);
                    self.tick();
                }
                out.push(r);
            }
        }
    }
}

/// Dead letters and readings (late and future ones included), in arrival order.
pub fn ingest(cfg: &Config, readings: &[u8]) -> (Vec<Value>, Vec<Reading>, u64) {
    let mut dead = Vec::new();
    let mut out = Vec::new();
    let mut clock = EventClock::new(cfg);
    let lines = split_lines(readings);
    for (i, line) in lines.iter().enumerate() {
        let line_no = i as u64 + 1;
        let t = clock.time();
        match classify(line) {
            Err(code) => dead.push(json!({
                "line_no": line_no,
                "line": String::from_utf8_lossy(line),
                "code": code,
            })),
            Ok(p) => {
                let junk = p
                    .values
                    .iter()
                    .filter(|(c, v)| v.is_some_and(|v| is_junk(cfg, c, v)))
                    .map(|(c, _)| c.clone())
                    .collect();
                let r = Reading {
                    line_no,
                    t,
                    device: p.device,
                    ts: p.ts,
                    values: p.values,
                    late: false,
                    future: false,
                    junk,
                };
                clock.push(r, &mut out);
            }
        }
    }
    // End of input while warming up: the held readings at the current time.
    let t = clock.time();
    clock.end_warmup(&mut out, t);
    (dead, out, lines.len() as u64)
}

// ---------------------------------------------------------------------------
// Reference data
// ---------------------------------------------------------------------------

/// A rule in the reference state.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The watched channel.
    pub channel: String,
    /// Start above.
    pub rise_above: f64,
    /// End below.
    pub fall_below: f64,
}

/// The reference tables at one moment.
#[derive(Clone, Debug, Default)]
pub struct RefState {
    /// device -> context columns.
    pub devices: BTreeMap<String, Map<String, Value>>,
    /// (device, channel, valid_from) -> (gain, offset).
    pub calibration: BTreeMap<(String, String, i64), (f64, f64)>,
    /// (scope, rule_id) -> rule; scope is `"*"` or a device.
    pub rules: BTreeMap<(String, String), Rule>,
}

/// One change to the reference tables.
#[derive(Clone, Debug)]
pub enum Change {
    /// Insert or replace a device's context.
    UpsertDevice(String, Map<String, Value>),
    /// Remove a device's context.
    DeleteDevice(String),
    /// Insert or replace (device, channel, valid_from).
    UpsertCalibration(String, String, i64, f64, f64),
    /// Remove one version or (None) all versions.
    DeleteCalibration(String, String, Option<i64>),
    /// Insert or replace (scope, rule_id).
    UpsertRule(String, String, Rule),
    /// Remove (scope, rule_id).
    DeleteRule(String, String),
}

impl RefState {
    /// Applies a change.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::UpsertDevice(d, ctx) => {
                self.devices.insert(d.clone(), ctx.clone());
            }
            Change::DeleteDevice(d) => {
                self.devices.remove(d);
            }
            Change::UpsertCalibration(d, ch, vf, g, o) => {
                self.calibration.insert((d.clone(), ch.clone(), *vf), (*g, *o));
            }
            Change::DeleteCalibration(d, ch, vf) => {
                self.calibration.retain(|(d2, c2, v2), _| !(d2 == d && c2 == ch && vf.is_none_or(|v| v == *v2)));
            }
            Change::UpsertRule(scope, id, r) => {
                self.rules.insert((scope.clone(), id.clone()), r.clone());
            }
            Change::DeleteRule(scope, id) => {
                self.rules.remove(&(scope.clone(), id.clone()));
            }
        }
    }

    /// The calibration (gain, offset) of `channel` for a reading at `ts`:
    /// the version with the largest `valid_from <= ts`.
    pub fn calibration_for(&self, device: &str, channel: &str, ts: i64) -> Option<(f64, f64)> {
        self.calibration
            .iter()
            .filter(|((d, c, vf), _)| d == device && c == channel && *vf <= ts)
            .max_by_key(|((_, _, vf), _)| *vf)
            .map(|(_, v)| *v)
    }

    /// The rules in force for a device, by rule_id: device-specific rules
    /// replace the wildcard rule of the same id.
    pub fn effective_rules(&self, device: &str) -> BTreeMap<String, Rule> {
        let mut out = BTreeMap::new();
        for ((scope, id), r) in &self.rules {
            if scope == "*" {
                out.insert(id.clone(), r.clone());
            }
        }
        for ((scope, id), r) in &self.rules {
            if scope == device {
                out.insert(id.clone(), r.clone());
            }
        }
        out
    }
}

/// Minimal RFC 4180 CSV: header row, fields trimmed, quotes honoured.
pub fn parse_csv(text: &str) -> Vec<Vec<(String, String)>> {
    let mut records: Vec<Vec<String>> = Vec::new();
    let mut field = String::new();
    let mut record: Vec<String> = Vec::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(ch) = chars.next() {
        any = true;
        if in_quotes {
            if ch == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(ch);
            }
            continue;
        }
        match ch {
            '"' => in_quotes = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            c => field.push(c),
        }
    }
    if any {
        record.push(field);
        records.push(record);
    }
    records.retain(|r| !(r.len() == 1 && r[0].trim().is_empty()));
    let mut it = records.into_iter();
    let Some(header) = it.next() else {
        return Vec::new();
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    it.map(|r| header.iter().cloned().zip(r.iter().map(|v| v.trim().to_string())).collect()).collect()
}

fn num_of(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("number"),
        Value::String(s) => s.trim().parse().expect("numeric string"),
        other => panic!("not a number: {other}"),
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        other => panic!("not a string: {other}"),
    }
}

fn opt_ts_of(v: Option<&Value>) -> Option<i64> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().parse().expect("integer string")),
        Some(Value::Number(n)) => Some(n.as_i64().expect("integer")),
        Some(other) => panic!("bad valid_from {other}"),
    }
}

/// Every reference change with its time, in application order.
pub fn reference_changes(cfg: &Config, files: &DatasetFiles) -> Vec<(i64, Change)> {
    let mut out = Vec::new();
    for r in &cfg.rules {
        out.push((
            0,
            Change::UpsertRule(
                r.device_id.clone(),
                r.rule_id.clone(),
                Rule { channel: r.channel.clone(), rise_above: r.rise_above, fall_below: r.fall_below },
            ),
        ));
    }
    if let Some(text) = &files.devices_csv {
        for row in parse_csv(text) {
            let device = row.iter().find(|(k, _)| k == "device_id").unwrap().1.clone();
            let ctx: Map<String, Value> = row
                .iter()
                .filter(|(k, _)| k != "device_id")
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            out.push((0, Change::UpsertDevice(device, ctx)));
        }
    }
    if let Some(text) = &files.calibration_csv {
        for row in parse_csv(text) {
            let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let vf = match get("valid_from") {
                None => FOREVER,
                Some(s) if s.is_empty() => FOREVER,
                Some(s) => s.parse().unwrap(),
            };
            out.push((
                0,
                Change::UpsertCalibration(
                    get("device_id").unwrap(),
                    get("channel").unwrap(),
                    vf,
                    get("gain").unwrap().parse().unwrap(),
                    get("offset").unwrap().parse().unwrap(),
                ),
            ));
        }
    }
    if let Some(text) = &files.thresholds_csv {
        for row in parse_csv(text) {
            let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            out.push((
                0,
                Change::UpsertRule(
                    get("device_id").unwrap(),
                    get("rule_id").unwrap(),
                    Rule {
                        channel: get("channel").unwrap(),
                        rise_above: get("rise_above").unwrap().parse().unwrap(),
                        fall_below: get("fall_below").unwrap().parse().unwrap(),
                    },
                ),
            ));
        }
    }
    let mut updates = Vec::new();
    if let Some(text) = &files.updates_jsonl {
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).expect("update line");
            let ts = v["ts"].as_i64().expect("update ts");
            let row = v["row"].as_object().expect("update row");
            let delete = v["op"] == "delete";
            let change = match v["table"].as_str().unwrap() {
                "devices" => {
                    let d = str_of(&row["device_id"]);
                    if delete {
                        Change::DeleteDevice(d)
                    } else {
                        // The row's fields in file order (whatever serde_json's map order).
                        #[derive(serde::Deserialize)]
                        struct RowOnly {
                            row: Ordered,
                        }
                        let ordered = serde_json::from_str::<RowOnly>(line).expect("update row").row.0;
                        let ctx = ordered
                            .iter()
                            .filter(|(k, _)| k != "device_id")
                            .map(|(k, v)| {
                                let s = match v {
                                    Value::String(s) => s.clone(),
                                    Value::Null => String::new(),
                                    other => other.to_string(),
                                };
                                (k.clone(), Value::String(s))
                            })
                            .collect();
                        Change::UpsertDevice(d, ctx)
                    }
                }
                "calibration" => {
                    let d = str_of(&row["device_id"]);
                    let c = str_of(&row["channel"]);
                    let vf = opt_ts_of(row.get("valid_from"));
                    if delete {
                        Change::DeleteCalibration(d, c, vf)
                    } else {
                        Change::UpsertCalibration(d, c, vf.unwrap_or(ts), num_of(&row["gain"]), num_of(&row["offset"]))
                    }
                }
                "rules" => {
                    let id = str_of(&row["rule_id"]);
                    let scope = match row.get("device_id") {
                        None | Some(Value::Null) => "*".to_string(),
                        Some(v) => str_of(v),
                    };
                    if delete {
                        Change::DeleteRule(scope, id)
                    } else {
                        Change::UpsertRule(
                            scope,
                            id,
                            Rule {
                                channel: str_of(&row["channel"]),
                                rise_above: num_of(&row["rise_above"]),
                                fall_below: num_of(&row["fall_below"]),
                            },
                        )
                    }
                }
                other => panic!("table {other}"),
            };
            updates.push((ts, change));
        }
    }
    // Stable: equal times keep file order.
    updates.sort_by_key(|(ts, _)| *ts);
    out.extend(updates);
    out
}

/// The reference state after every change up to each change time.
pub struct Timeline {
    states: Vec<(i64, RefState)>,
}

impl Timeline {
    /// Builds the timeline from changes in application order.
    pub fn new(changes: &[(i64, Change)]) -> Timeline {
        let mut states: Vec<(i64, RefState)> = Vec::new();
        let mut state = RefState::default();
        let mut i = 0;
        while i < changes.len() {
            let ts = changes[i].0;
            while i < changes.len() && changes[i].0 == ts {
                state.apply(&changes[i].1);
                i += 1;
            }
            states.push((ts, state.clone()));
        }
        Timeline { states }
    }

    /// The state after applying every change with `ts <= at`.
    pub fn at(&self, at: i64) -> RefState {
        let n = self.states.partition_point(|(ts, _)| *ts <= at);
        if n == 0 {
            RefState::default()
        } else {
            self.states[n - 1].1.clone()
        }
    }

    /// Like [`Timeline::at`], by reference.
    pub fn at_ref(&self, at: i64) -> Option<&RefState> {
        let n = self.states.partition_point(|(ts, _)| *ts <= at);
        (n > 0).then(|| &self.states[n - 1].1)
    }
}

// ---------------------------------------------------------------------------
// Statistics (two-pass)
// ---------------------------------------------------------------------------

/// The documented statistics of a sequence of `(ts, value)` in arrival order,
/// plus the trend tolerance scale.
pub fn stats_of(cfg: &Config, vals: &[(i64, f64)]) -> (Map<String, Value>, f64) {
    let n = vals.len();
    assert!(n > 0);
    let xs: Vec<f64> = vals.iter().map(|p| p.1).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let stddev = (n >= 2).then(|| {
        let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut ewma = xs[0];
    for x in &xs[1..] {
        ewma = cfg.alpha * x + (1.0 - cfg.alpha) * ewma;
    }
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    let k = cfg.top_k.min(n);
    let top_max = sorted[n - k..].iter().sum::<f64>() / k as f64;
    let top_min = sorted[..k].iter().sum::<f64>() / k as f64;
    let (trend, scale) = match trend_of(cfg, vals) {
        Some((s, scale)) => (json!(s), scale),
        None => (Value::Null, 0.0),
    };
    let mut m = Map::new();
    m.insert("count".into(), json!(n as u64));
    m.insert("mean".into(), json!(mean));
    m.insert("min".into(), json!(min));
    m.insert("max".into(), json!(max));
    m.insert("stddev".into(), stddev.map_or(Value::Null, |s| json!(s)));
    m.insert("ewma".into(), json!(ewma));
    m.insert("top_k_max_mean".into(), json!(top_max));
    m.insert("top_k_min_mean".into(), json!(top_min));
    m.insert("trend_per_hour".into(), trend);
    m.insert("ts".into(), json!(vals[n - 1].0));
    (m, scale)
}

/// The trend (value units per hour), as `formats.md` defines it, in two
/// passes: the weighted least-squares slope of value against `ts` over every
/// value, each weighted `2^(−(latest − ts) / half_life)` where `latest` is the
/// largest `ts`. `None` when every `ts` is the same, or the weighted spread
/// of the times is not positive. Returns (slope, value range / weighted sd
/// of the times, in hours), the second for the tolerance.
pub fn trend_of(cfg: &Config, vals: &[(i64, f64)]) -> Option<(f64, f64)> {
    let latest = vals.iter().map(|p| p.0).max()?;
    if vals.iter().all(|p| p.0 == vals[0].0) {
        return None;
    }
    let h = cfg.trend_half_life_ms.max(1) as f64;
    let w: Vec<f64> = vals.iter().map(|p| (-((latest - p.0) as f64) * std::f64::consts::LN_2 / h).exp()).collect();
    let x: Vec<f64> = vals.iter().map(|p| (p.0 - latest) as f64 / 3_600_000.0).collect();
    let sw: f64 = w.iter().sum();
    let mx = w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>() / sw;
    let mv = w.iter().zip(vals).map(|(w, p)| w * p.1).sum::<f64>() / sw;
    let sxx: f64 = w.iter().zip(&x).map(|(w, x)| w * (x - mx) * (x - mx)).sum();
    let sxy: f64 = w.iter().zip(&x).zip(vals).map(|((w, x), p)| w * (x - mx) * (p.1 - mv)).sum();
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let vmin = vals.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let vmax = vals.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    Some((sxy / sxx, (vmax - vmin) / (sxx / sw).sqrt()))
}

/// The window starts containing `ts`: multiples `s` of slide with `s <= ts < s + size`.
pub fn window_starts(cfg: &Config, ts: i64) -> Vec<i64> {
    let last = ts.div_euclid(cfg.window_slide_ms) * cfg.window_slide_ms;
    let mut out = Vec::new();
    let mut s = last;
    while s > ts - cfg.window_size_ms {
        out.push(s);
        s -= cfg.window_slide_ms;
    }
    out.reverse();
    out
}

// ---------------------------------------------------------------------------
// The whole pipeline
// ---------------------------------------------------------------------------

/// An enriched on-time reading, kept for the downstream stages.
struct OnTime {
    t: i64,
    device: String,
    ts: i64,
    /// Usable calibrated values, in field order.
    usable: Vec<(String, f64)>,
}

/// A usable value with its dataflow time and `ts`: `(t, ts, value)`.
type TimedValue = (i64, i64, f64);

/// Runs the model.
pub fn run(cfg: &Config, files: &DatasetFiles) -> Expected {
    let (dead, readings, lines) = ingest(cfg, &files.readings);
    let changes = reference_changes(cfg, files);
    let timeline = Timeline::new(&changes);
    let mut exp = Expected::default();
    exp.summary.lines = lines;
    exp.summary.deadletter = dead.len() as u64;
    exp.summary.valid = readings.len() as u64;
    exp.deadletter = dead;

    let mut on_time = Vec::new();
    for r in &readings {
        if r.late || r.future {
            // Late and future readings are set aside, in the same encoding.
            let mut m = Map::new();
            m.insert("device_id".into(), json!(r.device));
            m.insert("ts".into(), json!(r.ts));
            for (c, v) in &r.values {
                m.insert(c.clone(), v.map_or(Value::Null, |v| json!(v)));
            }
            m.insert("line_no".into(), json!(r.line_no));
            m.insert("junk".into(), json!(r.junk));
            if r.future {
                exp.summary.future += 1;
                exp.future.push(Value::Object(m));
            } else {
                exp.summary.late += 1;
                exp.late.push(Value::Object(m));
            }
            continue;
        }
        if !r.junk.is_empty() {
            exp.summary.junk += 1;
            *exp.summary.junk_by_device.entry(r.device.clone()).or_default() += 1;
        }
        // Non-late: the lookup time is the reading's ts (ts >= t).
        let lookup = r.ts.max((r.t - cfg.retention_ms).max(0));
        let state = timeline.at(lookup);
        let mut m = Map::new();
        let mut raw = Map::new();
        let mut usable = Vec::new();
        m.insert("device_id".into(), json!(r.device));
        m.insert("ts".into(), json!(r.ts));
        for (c, v) in &r.values {
            let out = match v {
                None => None,
                Some(_) if r.junk.contains(c) => None,
                Some(x) => match state.calibration_for(&r.device, c, r.ts) {
                    Some((g, o)) => {
                        raw.insert(c.clone(), json!(x));
                        Some(g * x + o)
                    }
                    None => Some(*x),
                },
            };
            if let Some(x) = out {
                usable.push((c.clone(), x));
            }
            m.insert(c.clone(), out.map_or(Value::Null, |x| json!(x)));
        }
        m.insert("raw".into(), Value::Object(raw));
        m.insert("device".into(), state.devices.get(&r.device).map_or(Value::Null, |c| Value::Object(c.clone())));
        m.insert("junk".into(), json!(r.junk));
        exp.enriched.push(Value::Object(m));
        on_time.push(OnTime { t: r.t, device: r.device.clone(), ts: r.ts, usable });
    }

    // Statistics: per key, values (t, ts, v) in arrival order.
    let mut keys: BTreeMap<(String, String), Vec<TimedValue>> = BTreeMap::new();
    for r in &on_time {
        for (c, v) in &r.usable {
            keys.entry((r.device.clone(), c.clone())).or_default().push((r.t, r.ts, *v));
        }
    }
    let every = cfg.snapshot_every_ms;
    for ((d, c), vals) in &keys {
        let ends: BTreeSet<i64> = vals.iter().map(|v| v.1.div_euclid(every) * every + every).collect();
        let mut snaps: Vec<Vec<(i64, f64)>> =
            ends.iter().map(|e| vals.iter().filter(|v| v.0 < *e).map(|v| (v.1, v.2)).collect()).collect();
        snaps.push(vals.iter().map(|v| (v.1, v.2)).collect());
        for s in snaps {
            let (mut m, scale) = stats_of(cfg, &s);
            m.insert("device_id".into(), json!(d));
            m.insert("channel".into(), json!(c));
            exp.stats.push((Value::Object(m), scale));
        }
    }

    // Windows.
    let mut wins: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for r in &on_time {
        for (c, v) in &r.usable {
            for s in window_starts(cfg, r.ts) {
                wins.entry((r.device.clone(), c.clone(), s)).or_default().push(*v);
            }
        }
    }
    for ((d, c, s), vs) in wins {
        let n = vs.len();
        exp.windows.push(json!({
            "device_id": d,
            "channel": c,
            "window_start": s,
            "window_end": s + cfg.window_size_ms,
            "count": n as u64,
            "mean": vs.iter().sum::<f64>() / n as f64,
            "min": vs.iter().copied().fold(f64::INFINITY, f64::min),
            "max": vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }));
    }

    exp.events = alerts(&timeline, &on_time);
    exp
}

#[derive(Clone, Debug)]
struct Open {
    start_ts: i64,
    peak: f64,
    /// The rule as last applied to the event.
    rule: Rule,
}

#[allow(clippy::too_many_arguments)] // one per field of the record
fn event(
    id: &str,
    device: &str,
    channel: &str,
    state: &str,
    ts: i64,
    value: Option<f64>,
    thresholds: Option<(f64, f64)>,
    start_ts: i64,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("event_id".into(), json!(format!("{id}:{device}:{start_ts}")));
    m.insert("rule_id".into(), json!(id));
    m.insert("device_id".into(), json!(device));
    m.insert("channel".into(), json!(channel));
    m.insert("state".into(), json!(state));
    m.insert("ts".into(), json!(ts));
    m.insert("value".into(), value.map_or(Value::Null, |v| json!(v)));
    let (r, f) = thresholds.map_or((Value::Null, Value::Null), |(r, f)| (json!(r), json!(f)));
    m.insert("rise_above".into(), r);
    m.insert("fall_below".into(), f);
    m
}

/// Alerts. Per (rule, device), in arrival order, over the on-time readings:
/// hysteresis on the rules in force as of each reading's ts. An active event
/// remembers the rule version last applied to it (at its start, or at the
/// last reading that kept it active); a `rule_removed` end carries that
/// version's channel and thresholds (`alerts.rs`: "the thresholds last in force").
fn alerts(timeline: &Timeline, on_time: &[OnTime]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut open: BTreeMap<(String, String), Open> = BTreeMap::new();
    for r in on_time {
        let rules = timeline.at_ref(r.ts).map(|s| s.effective_rules(&r.device)).unwrap_or_default();
        let value = |c: &str| r.usable.iter().find(|(n, _)| n == c).map(|(_, v)| *v);
        // Events whose rule is no longer in force end now (a reading from
        // before the event's start, arriving out of order, ends nothing).
        let gone: Vec<String> = open
            .iter()
            .filter(|((d, id), o)| d == &r.device && !rules.contains_key(id) && r.ts >= o.start_ts)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in gone {
            let o = open.remove(&(r.device.clone(), id.clone())).unwrap();
            let th = Some((o.rule.rise_above, o.rule.fall_below));
            let ch = &o.rule.channel;
            let mut e = event(&id, &r.device, ch, "end", r.ts, value(ch), th, o.start_ts);
            e.insert("peak".into(), json!(o.peak));
            e.insert("duration_ms".into(), json!(r.ts - o.start_ts));
            e.insert("reason".into(), json!("rule_removed"));
            out.push(Value::Object(e));
        }
        for (id, rule) in &rules {
            let Some(v) = value(&rule.channel) else {
                continue;
            };
            let key = (r.device.clone(), id.clone());
            let th = Some((rule.rise_above, rule.fall_below));
            match open.get_mut(&key) {
                None => {
                    if v > rule.rise_above {
                        open.insert(key, Open { start_ts: r.ts, peak: v, rule: rule.clone() });
                        out.push(Value::Object(event(id, &r.device, &rule.channel, "start", r.ts, Some(v), th, r.ts)));
                    }
                }
                Some(o) => {
                    if v < rule.fall_below {
                        let o = open.remove(&key).unwrap();
                        let mut e = event(id, &r.device, &rule.channel, "end", r.ts, Some(v), th, o.start_ts);
                        e.insert("peak".into(), json!(o.peak));
                        e.insert("duration_ms".into(), json!(r.ts - o.start_ts));
                        e.insert("reason".into(), json!("fell_below"));
                        out.push(Value::Object(e));
                    } else {
                        if v > o.peak {
                            o.peak = v;
                        }
                        o.rule = rule.clone();
                    }
                }
            }
        }
    }
    out
}
