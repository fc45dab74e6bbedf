//! Reading a replay's output directory and comparing it with the model,
//! with readable diffs (the first mismatching records of each output).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::reference::{Counts, Expected};

/// How many mismatches a diff shows.
const SHOW: usize = 6;

/// The records of a replay's outputs.
#[derive(Clone, Debug, Default)]
pub struct Actual {
    /// deadletter.jsonl
    pub deadletter: Vec<Value>,
    /// late.jsonl
    pub late: Vec<Value>,
    /// future.jsonl
    pub future: Vec<Value>,
    /// enriched.jsonl
    pub enriched: Vec<Value>,
    /// stats.jsonl
    pub stats: Vec<Value>,
    /// windows.jsonl
    pub windows: Vec<Value>,
    /// events.jsonl
    pub events: Vec<Value>,
    /// summary.json
    pub summary: Value,
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {l}", path.display(), i + 1))
        })
        .collect()
}

/// Reads every output of a replay.
pub fn read_outputs(out: &Path) -> Actual {
    let summary = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    Actual {
        deadletter: read_jsonl(&out.join("deadletter.jsonl")),
        late: read_jsonl(&out.join("late.jsonl")),
        future: read_jsonl(&out.join("future.jsonl")),
        enriched: read_jsonl(&out.join("enriched.jsonl")),
        stats: read_jsonl(&out.join("stats.jsonl")),
        windows: read_jsonl(&out.join("windows.jsonl")),
        events: read_jsonl(&out.join("events.jsonl")),
        summary: serde_json::from_str(&summary).expect("summary.json is JSON"),
    }
}

/// `|a − b| <= 1e-9 · max(1, |a|, |b|)`.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * 1f64.max(a.abs()).max(b.abs())
}

/// Field-level differences between an expected and an actual value:
/// integers exactly, other numbers within [`close`], objects by key.
pub fn diff_value(path: &str, e: &Value, a: &Value, out: &mut Vec<String>) {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let ints = |n: &serde_json::Number| n.is_i64() || n.is_u64();
            let same = if ints(x) && ints(y) { x == y } else { close(x.as_f64().unwrap(), y.as_f64().unwrap()) };
            if !same {
                out.push(format!("{path}: expected {x}, actual {y}"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff_value(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: expected {v}, missing")),
                }
            }
            for (k, w) in y {
                if !x.contains_key(k) {
                    out.push(format!("{path}.{k}: unexpected field, actual {w}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff_value(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ => {
            if e != a {
                out.push(format!("{path}: expected {e}, actual {a}"));
            }
        }
    }
}

/// Accumulates mismatches of one comparison and renders them.
pub struct Report {
    title: String,
    lines: Vec<String>,
    count: usize,
}

impl Report {
    /// A report about `title`.
    pub fn new(title: impl Into<String>) -> Report {
        Report { title: title.into(), lines: Vec::new(), count: 0 }
    }

    /// Records one mismatch (only the first few are kept).
    pub fn add(&mut self, text: String) {
        self.count += 1;
        if self.count <= SHOW {
            self.lines.push(text);
        }
    }

    /// Records a mismatch between two records.
    pub fn records(&mut self, what: &str, fields: &[String], e: Option<&Value>, a: Option<&Value>) {
        let mut s = format!("{what}:");
        for f in fields.iter().take(8) {
            let _ = write!(s, "\n      {f}");
        }
        let show = |v: Option<&Value>| v.map_or("(none)".to_string(), |v| v.to_string());
        let _ = write!(s, "\n    expected: {}\n    actual:   {}", show(e), show(a));
        self.add(s);
    }

    /// Ok, or the rendered diff.
    pub fn finish(self) -> Result<(), String> {
        if self.count == 0 {
            return Ok(());
        }
        let mut s = format!("{}: {} mismatch(es)", self.title, self.count);
        for l in &self.lines {
            let _ = write!(s, "\n  - {l}");
        }
        if self.count > SHOW {
            let _ = write!(s, "\n  … and {} more", self.count - SHOW);
        }
        Err(s)
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn group<K: Ord>(vals: &[Value], key: impl Fn(&Value) -> K) -> BTreeMap<K, Vec<&Value>> {
    let mut m: BTreeMap<K, Vec<&Value>> = BTreeMap::new();
    for v in vals {
        m.entry(key(v)).or_default().push(v);
    }
    m
}

/// Compares two grouped sequences element by element.
fn compare_groups<K: Ord + std::fmt::Debug>(
    report: &mut Report,
    exp: &BTreeMap<K, Vec<&Value>>,
    act: &BTreeMap<K, Vec<&Value>>,
    mut cmp: impl FnMut(&Value, &Value, &mut Vec<String>),
) {
    let keys: std::collections::BTreeSet<&K> = exp.keys().chain(act.keys()).collect();
    for k in keys {
        let e = exp.get(k).map_or(&[][..], |v| &v[..]);
        let a = act.get(k).map_or(&[][..], |v| &v[..]);
        for i in 0..e.len().max(a.len()) {
            let (ev, av) = (e.get(i).copied(), a.get(i).copied());
            let mut fields = Vec::new();
            match (ev, av) {
                (Some(x), Some(y)) => cmp(x, y, &mut fields),
                (Some(_), None) => fields.push("missing record".into()),
                (None, Some(_)) => fields.push("unexpected record".into()),
                (None, None) => unreachable!(),
            }
            if !fields.is_empty() {
                report.records(&format!("{k:?} #{i} (expected {}, actual {})", e.len(), a.len()), &fields, ev, av);
                // One mismatch per key: later ones usually follow from it.
                break;
            }
        }
    }
}

/// Compares every output with the model; the error is a readable diff.
pub fn compare(exp: &Expected, act: &Actual) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut push = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    push(compare_summary(&exp.summary, &act.summary));
    push(compare_deadletter(&exp.deadletter, &act.deadletter));
    push(compare_keyed("late.jsonl (by line_no)", &exp.late, &act.late, |v| v["line_no"].as_u64().unwrap_or(0)));
    push(check_field_order("late.jsonl", &exp.late, &act.late, |v| v["line_no"].to_string()));
    push(compare_keyed("future.jsonl (by line_no)", &exp.future, &act.future, |v| v["line_no"].as_u64().unwrap_or(0)));
    push(check_field_order("future.jsonl", &exp.future, &act.future, |v| v["line_no"].to_string()));
    push(check_field_order("enriched.jsonl", &exp.enriched, &act.enriched, |v| {
        format!("{} {}", v["device_id"], v["ts"])
    }));
    push(compare_keyed("enriched.jsonl (per device, in arrival order)", &exp.enriched, &act.enriched, |v| {
        s(v, "device_id")
    }));
    push(compare_stats(&exp.stats, &act.stats));
    push(compare_keyed("windows.jsonl (by device, channel, window_start)", &exp.windows, &act.windows, |v| {
        (s(v, "device_id"), s(v, "channel"), v["window_start"].as_i64())
    }));
    push(compare_events(&exp.events, &act.events));
    push(check_record_counts(act));
    push(check_record_types(act));
    push(check_order(exp, act));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Compares records grouped by `key`, each group in order.
pub fn compare_keyed<K: Ord + std::fmt::Debug>(
    title: &str,
    exp: &[Value],
    act: &[Value],
    key: impl Fn(&Value) -> K,
) -> Result<(), String> {
    let mut r = Report::new(title);
    if exp.len() != act.len() {
        r.add(format!("expected {} records, actual {}", exp.len(), act.len()));
    }
    compare_groups(&mut r, &group(exp, &key), &group(act, &key), |e, a, f| diff_value("", e, a, f));
    r.finish()
}

fn compare_summary(exp: &Counts, act: &Value) -> Result<(), String> {
    let mut r = Report::new("summary.json");
    for (k, v) in [
        ("lines", exp.lines),
        ("valid", exp.valid),
        ("late", exp.late),
        ("future", exp.future),
        ("deadletter", exp.deadletter),
        ("junk", exp.junk),
    ] {
        if act[k].as_u64() != Some(v) {
            r.add(format!("{k}: expected {v}, actual {}", act[k]));
        }
    }
    let jbd: BTreeMap<String, u64> = act["junk_by_device"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    if jbd != exp.junk_by_device {
        r.add(format!("junk_by_device: expected {:?}, actual {:?}", exp.junk_by_device, jbd));
    }
    r.finish()
}

fn compare_deadletter(exp: &[Value], act: &[Value]) -> Result<(), String> {
    let mut r = Report::new("deadletter.jsonl (by line_no)");
    let e = group(exp, |v| v["line_no"].as_u64().unwrap_or(0));
    let a = group(act, |v| v["line_no"].as_u64().unwrap_or(0));
    compare_groups(&mut r, &e, &a, |e, a, f| {
        let reason = a["reason"].as_str().unwrap_or("");
        let code = reason.split(':').next().unwrap_or("");
        if code != e["code"] {
            f.push(format!("reason code: expected {}, actual {code:?}", e["code"]));
        }
        if !reason.starts_with(&format!("{code}: ")) {
            f.push(format!("reason is not `code: detail`: {reason:?}"));
        }
        if a["line"] != e["line"] {
            f.push(format!("line: expected {}, actual {}", e["line"], a["line"]));
        }
    });
    r.finish()
}

fn compare_stats(exp: &[(Value, f64)], act: &[Value]) -> Result<(), String> {
    let mut r = Report::new("stats.jsonl (per (device, channel), in emission order)");
    if exp.len() != act.len() {
        r.add(format!("expected {} records, actual {}", exp.len(), act.len()));
    }
    let key = |v: &Value| (s(v, "device_id"), s(v, "channel"));
    // The trend tolerance scale rides along in the expected record.
    let with_scale: Vec<Value> = exp
        .iter()
        .map(|(v, scale)| {
            let mut v = v.clone();
            v["__scale"] = serde_json::json!(scale);
            v
        })
        .collect();
    compare_groups(&mut r, &group(&with_scale, key), &group(act, key), |e, a, f| {
        let mut e2 = e.clone();
        let mut a2 = a.clone();
        let scale = e2["__scale"].as_f64().unwrap_or(0.0);
        for v in [&mut e2, &mut a2] {
            let m = v.as_object_mut().unwrap();
            m.remove("__scale");
            m.remove("trend_per_hour");
        }
        diff_value("", &e2, &a2, f);
        match (e["trend_per_hour"].as_f64(), a["trend_per_hour"].as_f64()) {
            (Some(x), Some(y)) => {
                let tol = 1e-9 * x.abs().max(1.0) + 1e-9 * scale;
                if (x - y).abs() > tol {
                    f.push(format!(".trend_per_hour: expected {x}, actual {y} (tolerance {tol:e})"));
                }
            }
            (None, None) => {}
            (x, y) => f.push(format!(".trend_per_hour: expected {x:?}, actual {y:?}")),
        }
    });
    r.finish()
}

fn compare_events(exp: &[Value], act: &[Value]) -> Result<(), String> {
    let mut r = Report::new("events.jsonl (per (rule_id, device_id), in order)");
    if exp.len() != act.len() {
        r.add(format!("expected {} records, actual {}", exp.len(), act.len()));
    }
    let key = |v: &Value| (s(v, "rule_id"), s(v, "device_id"));
    compare_groups(&mut r, &group(exp, key), &group(act, key), |e, a, f| diff_value("", e, a, f));
    r.finish()
}

/// The documented order of lines (docs/formats.md, "Determinism and order"):
/// dead letters, late and future readings in line order; a key's windows in the
/// order they closed; a device's events in the order its readings were
/// processed, and on one reading the ends of removed rules first, then the
/// rules in `rule_id` order. (Per-device order of enriched and per-key order
/// of stats are checked by the record comparison.)
fn check_order(exp: &Expected, act: &Actual) -> Result<(), String> {
    let mut r = Report::new("order of lines");
    for (name, lines) in [("deadletter", &act.deadletter), ("late", &act.late), ("future", &act.future)] {
        let nos: Vec<u64> = lines.iter().map(|v| v["line_no"].as_u64().unwrap_or(0)).collect();
        if let Some(w) = nos.windows(2).find(|w| w[0] >= w[1]) {
            r.add(format!("{name}.jsonl is not in line order: line {} before line {}", w[0], w[1]));
        }
    }
    let mut last_end: BTreeMap<(String, String), i64> = BTreeMap::new();
    for v in &act.windows {
        let end = v["window_end"].as_i64().unwrap_or(0);
        if let Some(prev) = last_end.insert((s(v, "device_id"), s(v, "channel")), end) {
            if prev > end {
                r.add(format!("windows.jsonl: a window ending at {end} after one ending at {prev}: {v}"));
            }
        }
    }
    // Per device: (ts, rule_id, state) in order, with each run of
    // rule_removed ends on one reading sorted (their mutual order is not documented).
    let seq = |vals: &[Value]| -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
        for v in vals {
            let removed = v["reason"] == "rule_removed";
            let item = format!("{} {} {}", v["ts"], s(v, "rule_id"), s(v, "state"));
            m.entry(s(v, "device_id")).or_default().push((removed, item));
        }
        m.into_iter()
            .map(|(d, items)| {
                let mut out: Vec<String> = Vec::new();
                let mut run: Vec<String> = Vec::new();
                for (removed, item) in items {
                    if removed {
                        run.push(item);
                        continue;
                    }
                    run.sort();
                    out.append(&mut run);
                    out.push(item);
                }
                run.sort();
                out.append(&mut run);
                (d, out)
            })
            .collect()
    };
    let (e, a) = (seq(&exp.events), seq(&act.events));
    for (d, es) in &e {
        let asq = a.get(d).cloned().unwrap_or_default();
        if let Some(i) = (0..es.len().max(asq.len())).find(|i| es.get(*i) != asq.get(*i)) {
            r.add(format!(
                "events.jsonl of device {d:?}: at #{i} expected `{}`, actual `{}` (ts rule_id state)",
                es.get(i).map_or("(none)", |x| x.as_str()),
                asq.get(i).map_or("(none)", |x| x.as_str())
            ));
        }
    }
    r.finish()
}

/// `summary.records` counts the lines of each output.
fn check_record_counts(act: &Actual) -> Result<(), String> {
    let mut r = Report::new("summary.json records");
    for (name, n) in [
        ("deadletter", act.deadletter.len()),
        ("late", act.late.len()),
        ("future", act.future.len()),
        ("enriched", act.enriched.len()),
        ("stats", act.stats.len()),
        ("windows", act.windows.len()),
        ("events", act.events.len()),
    ] {
        if act.summary["records"][name].as_u64() != Some(n as u64) {
            r.add(format!(
                "records.{name}: {} in the summary, {n} lines in {name}.jsonl",
                act.summary["records"][name]
            ));
        }
    }
    r.finish()
}

/// Every stats, windows and events line reads back as its documented record type.
fn check_record_types(act: &Actual) -> Result<(), String> {
    use eddy::core::records::{EventRecord, StatsRecord, WindowRecord};
    let mut r = Report::new("output lines as their record types");
    for v in &act.stats {
        if let Err(e) = serde_json::from_value::<StatsRecord>(v.clone()) {
            r.add(format!("stats line is not a StatsRecord ({e}): {v}"));
        }
    }
    for v in &act.windows {
        if let Err(e) = serde_json::from_value::<WindowRecord>(v.clone()) {
            r.add(format!("windows line is not a WindowRecord ({e}): {v}"));
        }
    }
    for v in &act.events {
        if let Err(e) = serde_json::from_value::<EventRecord>(v.clone()) {
            r.add(format!("events line is not an EventRecord ({e}): {v}"));
        }
    }
    r.finish()
}

/// True when `serde_json::Map` keeps insertion order (its `preserve_order`
/// feature), so the field order of parsed lines can be checked.
fn maps_keep_order() -> bool {
    let v: Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
    v.as_object().unwrap().keys().next().map(String::as_str) == Some("b")
}

fn key_order(path: &str, e: &Value, a: &Value, out: &mut Vec<String>) {
    if let (Value::Object(x), Value::Object(y)) = (e, a) {
        let kx: Vec<&String> = x.keys().collect();
        let ky: Vec<&String> = y.keys().collect();
        if kx != ky {
            out.push(format!("{path}: field order: expected {kx:?}, actual {ky:?}"));
        }
        for (k, v) in x {
            if let Some(w) = y.get(k) {
                key_order(&format!("{path}.{k}"), v, w, out);
            }
        }
    }
}

/// The documented field order of `enriched.jsonl`, `late.jsonl` and
/// `future.jsonl` lines:
/// `device_id`, `ts`, the channels in the order received, then the fixed
/// fields; `raw` in channel order; `device` in `devices.csv` column order
/// or the update row's field order. Records are paired in sequence (the
/// record comparison checks their content). Skipped when serde_json maps
/// are sorted.
fn check_field_order(title: &str, exp: &[Value], act: &[Value], key: impl Fn(&Value) -> String) -> Result<(), String> {
    let mut r = Report::new(format!("{title} field order"));
    if !maps_keep_order() {
        return r.finish();
    }
    let by_key = |vals: &'_ [Value]| -> BTreeMap<String, Vec<Value>> {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for v in vals {
            m.entry(key(v)).or_default().push(v.clone());
        }
        m
    };
    let (e, a) = (by_key(exp), by_key(act));
    for (k, es) in &e {
        for (x, y) in es.iter().zip(a.get(k).map_or(&[][..], |v| &v[..])) {
            let mut f = Vec::new();
            key_order("", x, y, &mut f);
            if !f.is_empty() {
                r.records(&k.to_string(), &f, Some(x), Some(y));
                break;
            }
        }
    }
    r.finish()
}
