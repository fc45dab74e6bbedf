//! The `sensor-health` job (`health.jsonl`, docs/jobs.md "sensor-health",
//! docs/formats.md §3.6a) through the public API, against a plain sequential
//! model of its documented semantics written here, independently of the
//! job's own state machine:
//!
//! * the readings and their dataflow times (stamps) come from the ingest
//!   model of `tests/model/reference.rs`; only on-time readings count;
//! * `junk`, per (device, channel): after each on-time reading of a device,
//!   the window is recomputed from scratch by scanning every earlier on-time
//!   reading of the device (`ts > newest − window`); for each channel the
//!   device has sent with a non-null value, the share of junk values among
//!   its non-null values in the window starts a fault (share ≥ 0.5 with at
//!   least 6 values) or ends it (share ≤ 0.1); a channel without values in
//!   the window is not judged;
//! * `silent`, per device: its deadline is its newest `ts` + 30m. Before a
//!   reading stamped later than a deadline is applied (the frontier has then
//!   passed the deadline and a reading stamped later exists), every device
//!   whose current deadline it is and that is not silent yet falls silent at
//!   the deadline; the fault ends at the device's next on-time reading.
//!   When the input ends, nothing more starts.
//!
//! Tests:
//!
//! * `junk_streaks_start_and_end_faults_per_device_and_channel`;
//! * `silent_devices_start_at_the_deadline_and_end_at_their_next_reading`;
//! * `health_matches_sequential_model_on_random_datasets_at_1_and_2_workers`
//!   (proptest, 32 cases);
//! * `clean_generated_fleet_reports_only_the_devices_the_generator_takes_offline`.
//!
//! Records are compared as JSON values (floats within 1e-12), sorted; a
//! mismatch prints the dataset lines and both record lists.

#[allow(dead_code)]
#[path = "model/reference.rs"]
mod reference;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use eddy::gen::{generate, GenConfig};
use eddy::runtime::component::Registry;
use eddy::runtime::replay::{replay, ReplayOptions};
use eddy::runtime::workers::Workers;
use eddy::testing::Bench;

use reference::Config;

const MIN: i64 = 60_000;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// The sensor-health settings, in plain numbers (the shipped defaults).
#[derive(Clone, Copy, Debug)]
struct HealthSettings {
    window_ms: i64,
    junk_rise: f64,
    junk_fall: f64,
    min_readings: usize,
    silence_ms: i64,
}

impl HealthSettings {
    /// `jobs/sensor-health.toml`.
    fn documented_defaults() -> HealthSettings {
        HealthSettings { window_ms: 60 * MIN, junk_rise: 0.5, junk_fall: 0.1, min_readings: 6, silence_ms: 30 * MIN }
    }
}

/// A device's state in the model: every on-time reading it has sent (the
/// window is recomputed from them each time), its open faults.
#[derive(Default)]
struct ModelDevice {
    /// (ts, channel values, junk channels) of each on-time reading, in arrival order.
    readings: Vec<(i64, Vec<(String, Option<f64>)>, Vec<String>)>,
    newest: i64,
    /// channel -> start ts of its open junk fault.
    junk_open: BTreeMap<String, i64>,
    /// The start ts (deadline) of the open silent fault.
    silent: Option<i64>,
}

/// The `health.jsonl` records the documented semantics give for the
/// readings file `readings` (in emission order).
fn model_health(cfg: &Config, h: &HealthSettings, readings: &[u8]) -> Vec<Value> {
    let (_dead, all, _lines) = reference::ingest(cfg, readings);
    let mut devices: BTreeMap<String, ModelDevice> = BTreeMap::new();
    let mut out = Vec::new();
    for r in all.iter().filter(|r| !r.late) {
        // Deadlines this reading's stamp passes: all readings stamped at or
        // before them have been applied, and a reading stamped later exists.
        for (name, d) in devices.iter_mut() {
            let deadline = d.newest + h.silence_ms;
            if d.silent.is_none() && deadline < r.t {
                d.silent = Some(deadline);
                out.push(json!({
                    "event_id": format!("silent:{name}:{deadline}"),
                    "device_id": name,
                    "channel": null,
                    "kind": "silent",
                    "state": "start",
                    "ts": deadline,
                    "last_ts": d.newest,
                }));
            }
        }
        let first = !devices.contains_key(&r.device);
        let d = devices.entry(r.device.clone()).or_default();
        if let Some(start) = d.silent.take() {
            out.push(json!({
                "event_id": format!("silent:{}:{start}", r.device),
                "device_id": r.device,
                "channel": null,
                "kind": "silent",
                "state": "end",
                "ts": r.ts,
                "duration_ms": r.ts - start,
            }));
        }
        d.newest = if first { r.ts } else { d.newest.max(r.ts) };
        d.readings.push((r.ts, r.values.clone(), r.junk.clone()));
        // The window, by scanning every reading the device has sent.
        let floor = d.newest - h.window_ms;
        let channels: BTreeSet<String> = d
            .readings
            .iter()
            .flat_map(|(_, vs, _)| vs.iter().filter(|(_, v)| v.is_some()).map(|(c, _)| c.clone()))
            .collect();
        for c in channels {
            let mut values = 0usize;
            let mut junk = 0usize;
            for (ts, vs, js) in &d.readings {
                if *ts <= floor {
                    continue;
                }
                if vs.iter().any(|(k, v)| *k == c && v.is_some()) {
                    values += 1;
                    junk += usize::from(js.contains(&c));
                }
            }
            if values == 0 {
                continue;
            }
            let share = junk as f64 / values as f64;
            match d.junk_open.get(&c).copied() {
                None if values >= h.min_readings && share >= h.junk_rise => {
                    d.junk_open.insert(c.clone(), r.ts);
                    out.push(json!({
                        "event_id": format!("junk:{}:{c}:{}", r.device, r.ts),
                        "device_id": r.device,
                        "channel": c,
                        "kind": "junk",
                        "state": "start",
                        "ts": r.ts,
                        "share": share,
                        "readings": values,
                    }));
                }
                Some(start) if share <= h.junk_fall => {
                    d.junk_open.remove(&c);
                    out.push(json!({
                        "event_id": format!("junk:{}:{c}:{start}", r.device),
                        "device_id": r.device,
                        "channel": c,
                        "kind": "junk",
                        "state": "end",
                        "ts": r.ts,
                        "share": share,
                        "readings": values,
                        "duration_ms": r.ts - start,
                    }));
                }
                _ => {}
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Running the job and comparing
// ---------------------------------------------------------------------------

/// A reading line; `None` writes a null value.
fn line(device: &str, ts: i64, values: &[(&str, Option<f64>)]) -> String {
    let mut m = Map::new();
    m.insert("device_id".into(), json!(device));
    m.insert("ts".into(), json!(ts));
    for (c, v) in values {
        m.insert((*c).to_string(), json!(v));
    }
    Value::Object(m).to_string()
}

/// The readings file the bench writes for `lines`.
fn file_of(lines: &[String]) -> Vec<u8> {
    let mut text = lines.join("\n");
    text.push('\n');
    text.into_bytes()
}

fn bench(lines: &[String]) -> Bench {
    lines.iter().fold(Bench::new(Registry::builtin()), |b, l| b.line(l.clone())).only(&["health"])
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("health.jsonl: {e}: {l}"))).collect()
}

/// The job's records at 1, 2 and 4 workers (asserted equal).
fn run_everywhere(lines: &[String]) -> Vec<Value> {
    parse(bench(lines).run_everywhere().lines("health"))
}

fn sort_key(v: &Value) -> (String, String, i64, String) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let ts = v.get("ts").and_then(Value::as_i64).unwrap_or(i64::MIN);
    let mut rest = v.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("share");
    }
    (s("event_id"), s("state"), ts, rest.to_string())
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(sort_key);
    v
}

/// Equal JSON values, numbers that are not both integers within 1e-12.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
                return i == j;
            }
            if let (Some(i), Some(j)) = (x.as_u64(), y.as_u64()) {
                return i == j;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(i), Some(j)) => (i - j).abs() <= 1e-12,
                _ => false,
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        _ => a == b,
    }
}

fn show(records: &[Value]) -> String {
    if records.is_empty() {
        return "  (none)\n".into();
    }
    records.iter().map(|r| format!("  {r}\n")).collect()
}

/// Compares the job's records with the model's, both sorted; the error
/// names the first difference and prints the dataset and both lists.
fn compare(expected: &[Value], actual: &[Value], lines: &[String], what: &str) -> Result<(), String> {
    let e = sorted(expected.to_vec());
    let a = sorted(actual.to_vec());
    let first = (0..e.len().max(a.len())).find(|&i| match (e.get(i), a.get(i)) {
        (Some(x), Some(y)) => !same(x, y),
        _ => true,
    });
    let Some(i) = first else { return Ok(()) };
    let cut = 400;
    let data: String = lines.iter().take(cut).map(|l| format!("  {l}\n")).collect();
    let more = if lines.len() > cut { format!("  … {} more lines\n", lines.len() - cut) } else { String::new() };
    Err(format!(
        "{what}: health.jsonl differs from the model ({} expected, {} actual records); first difference at sorted record {}:\n  expected: {}\n  actual:   {}\n--- readings.jsonl ({} lines)\n{data}{more}--- expected (model)\n{}--- actual (job)\n{}",
        e.len(),
        a.len(),
        i + 1,
        e.get(i).map_or("<none>".into(), Value::to_string),
        a.get(i).map_or("<none>".into(), Value::to_string),
        lines.len(),
        show(&e),
        show(&a),
    ))
}

fn assert_matches_model(lines: &[String], actual: &[Value]) -> Vec<Value> {
    let expected =
        model_health(&Config::documented_defaults(), &HealthSettings::documented_defaults(), &file_of(lines));
    if let Err(e) = compare(&expected, actual, lines, "-w 1, 2 and 4") {
        panic!("{e}");
    }
    expected
}

/// The one record of `kind`/`state` for `device` (and `channel`), asserting there is exactly one.
fn one<'a>(records: &'a [Value], device: &str, channel: Option<&str>, kind: &str, state: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["device_id"] == device
                && r["kind"] == kind
                && r["state"] == state
                && channel.is_none_or(|c| r["channel"] == c)
        })
        .collect();
    assert_eq!(found.len(), 1, "{device} {channel:?} {kind} {state}: {found:?}\nall:\n{}", show(records));
    found[0]
}

fn count(records: &[Value], device: &str) -> usize {
    records.iter().filter(|r| r["device_id"] == device).count()
}

// ---------------------------------------------------------------------------
// 1. Junk streaks
// ---------------------------------------------------------------------------

/// Injected junk streaks: long enough ones start a fault that clean values
/// end; short ones, sparse ones (null values do not count) and values of
/// unbounded channels start nothing; several channels of one device fault
/// independently.
#[test]
fn junk_streaks_start_and_end_faults_per_device_and_channel() {
    let mut lines = Vec::new();
    // Every device reads every 5 minutes for 4 hours, in ts order.
    for i in 0..48i64 {
        let ts = T0 + i * 5 * MIN;
        // dev-a: pm25 junk for readings 6..=17 (one hour); co2 clean; temp
        // null every third reading.
        let pm25 = if (6..=17).contains(&i) { 5000.0 } else { 12.0 + i as f64 / 10.0 };
        let temp = if i % 3 == 0 { None } else { Some(21.5) };
        lines.push(line("dev-a", ts, &[("pm25", Some(pm25)), ("co2", Some(600.0)), ("temp", temp)]));
        // dev-b: five junk co2 values in a row: fewer than half of its window.
        let co2 = if (20..25).contains(&i) { 20000.0 } else { 650.0 };
        lines.push(line("dev-b", ts, &[("pm25", Some(8.0)), ("co2", Some(co2))]));
        // dev-c: pm25 null except five junk values: the share is 1 but there
        // are fewer than min_readings values in the window.
        let pm25 = if (10..15).contains(&i) { Some(-3.0) } else { None };
        lines.push(line("dev-c", ts, &[("pm25", pm25), ("co2", Some(700.0))]));
        // dev-d: mixed channels. hum junk (150) for 16..=30, temp junk (-60)
        // for 20..=27, pm25 junk every other reading from 30 on (the share
        // stays near 0.5: starts, never falls to 0.1), and an unbounded
        // channel with huge values throughout.
        let hum = if (16..=30).contains(&i) { 150.0 } else { 45.0 };
        let temp = if (20..=27).contains(&i) { -60.0 } else { 22.0 };
        let pm25 = if i >= 30 && i % 2 == 0 { 1e6 } else { 10.0 };
        lines.push(line(
            "dev-d",
            ts,
            &[("pm25", Some(pm25)), ("hum", Some(hum)), ("temp", Some(temp)), ("noise", Some(1e12))],
        ));
        // dev-e: a streak of junk, then junk every fourth reading: the share
        // stays above junk_fall, so the fault never ends.
        let co2 = if (4..=15).contains(&i) || (i > 15 && i % 4 == 0) { 70000.0 } else { 500.0 };
        lines.push(line("dev-e", ts, &[("co2", Some(co2))]));
    }

    let actual = run_everywhere(&lines);
    let expected = assert_matches_model(&lines, &actual);

    // The model is checked by hand on dev-a: at reading 11 the window holds
    // readings 0..=11, six of them junk; at reading 28 it holds 17..=28, one junk.
    let start = one(&actual, "dev-a", Some("pm25"), "junk", "start");
    let s = T0 + 55 * MIN;
    assert!(
        same(
            start,
            &json!({"event_id": format!("junk:dev-a:pm25:{s}"), "device_id": "dev-a", "channel": "pm25",
                    "kind": "junk", "state": "start", "ts": s, "share": 0.5, "readings": 12})
        ),
        "{start}"
    );
    let end = one(&actual, "dev-a", Some("pm25"), "junk", "end");
    let e = T0 + 140 * MIN;
    assert!(
        same(
            end,
            &json!({"event_id": format!("junk:dev-a:pm25:{s}"), "device_id": "dev-a", "channel": "pm25",
                    "kind": "junk", "state": "end", "ts": e, "share": 1.0 / 12.0, "readings": 12,
                    "duration_ms": e - s})
        ),
        "{end}"
    );
    assert_eq!(count(&actual, "dev-a"), 2, "only pm25 of dev-a faults:\n{}", show(&actual));
    assert_eq!(count(&actual, "dev-b"), 0, "a short streak starts nothing:\n{}", show(&actual));
    assert_eq!(count(&actual, "dev-c"), 0, "too few non-null values start nothing:\n{}", show(&actual));
    // dev-d: hum and temp start and end, pm25 starts only, noise never.
    for c in ["hum", "temp"] {
        one(&actual, "dev-d", Some(c), "junk", "start");
        one(&actual, "dev-d", Some(c), "junk", "end");
    }
    one(&actual, "dev-d", Some("pm25"), "junk", "start");
    assert_eq!(count(&actual, "dev-d"), 5, "{}", show(&actual));
    one(&actual, "dev-e", Some("co2"), "junk", "start");
    assert_eq!(count(&actual, "dev-e"), 1, "the fault of dev-e stays open:\n{}", show(&actual));
    assert!(!actual.iter().any(|r| r["kind"] == "silent"), "every device reports to the end:\n{}", show(&actual));
    assert_eq!(expected.len(), actual.len());
}

// ---------------------------------------------------------------------------
// 2. Silent devices
// ---------------------------------------------------------------------------

/// Silent devices: one that stops for an hour while others go on reporting
/// (start at its deadline, end at its next reading); ones that stop near
/// the end of the input (no reading stamped past the deadline: no start,
/// even when the last stamp equals the deadline); one that stops early
/// enough and never comes back (a start without an end); one that is silent
/// across a long gap with readings out of order within the lateness.
#[test]
fn silent_devices_start_at_the_deadline_and_end_at_their_next_reading() {
    // (arrival, ts order key, line)
    let mut at: Vec<(i64, usize, String)> = Vec::new();
    let mut push = |arrival: i64, l: String| {
        let n = at.len();
        at.push((arrival, n, l));
    };
    let end = T0 + 180 * MIN;
    for i in 0..=36i64 {
        let ts = T0 + i * 5 * MIN;
        // dev-a..c report to the end; their last readings are at `end`.
        for d in ["dev-a", "dev-b", "dev-c"] {
            push(ts, line(d, ts, &[("pm25", Some(10.0)), ("co2", Some(500.0))]));
        }
        // dev-s1: until +30m, then again from +120m.
        if ts <= T0 + 30 * MIN || ts >= T0 + 120 * MIN {
            push(ts, line("dev-s1", ts, &[("pm25", Some(11.0))]));
        }
        // dev-s2: its last reading 10 minutes before the end.
        if ts <= end - 10 * MIN {
            push(ts, line("dev-s2", ts, &[("pm25", Some(12.0))]));
        }
        // dev-s3: last at +140m, deadline +170m = the last stamp (end − lateness).
        if ts <= T0 + 140 * MIN {
            push(ts, line("dev-s3", ts, &[("co2", Some(450.0))]));
        }
        // dev-s4: last at +135m, deadline +165m: passed, never comes back.
        if ts <= T0 + 135 * MIN {
            push(ts, line("dev-s4", ts, &[("co2", Some(455.0))]));
        }
    }
    // dev-o: +40m, then +35m arriving after it (out of order, on time), a
    // gap, then +105m arriving before +100m, then every 5 minutes to the end.
    let back = [(0, 0), (20, 20), (40, 40), (35, 41), (105, 106), (100, 107)];
    for (ts, arrival) in back.into_iter().chain((110..=180).step_by(5).map(|m| (m, m))) {
        push(T0 + arrival * MIN + 1, line("dev-o", T0 + ts * MIN, &[("hum", Some(40.0)), ("temp", Some(20.0))]));
    }
    at.sort();
    let lines: Vec<String> = at.into_iter().map(|(_, _, l)| l).collect();

    let actual = run_everywhere(&lines);
    assert_matches_model(&lines, &actual);

    let silent = |device: &str, state: &str| one(&actual, device, None, "silent", state).clone();
    let d = T0 + 60 * MIN;
    let id = format!("silent:dev-s1:{d}");
    assert!(
        same(
            &silent("dev-s1", "start"),
            &json!({"event_id": id, "device_id": "dev-s1", "channel": null, "kind": "silent",
                    "state": "start", "ts": d, "last_ts": T0 + 30 * MIN})
        ),
        "{}",
        show(&actual)
    );
    assert!(
        same(
            &silent("dev-s1", "end"),
            &json!({"event_id": id, "device_id": "dev-s1", "channel": null, "kind": "silent",
                    "state": "end", "ts": T0 + 120 * MIN, "duration_ms": 60 * MIN})
        ),
        "{}",
        show(&actual)
    );
    assert_eq!(count(&actual, "dev-s1"), 2, "{}", show(&actual));
    assert_eq!(count(&actual, "dev-s2"), 0, "stopped at the end: {}", show(&actual));
    assert_eq!(count(&actual, "dev-s3"), 0, "the last stamp only reaches the deadline: {}", show(&actual));
    let s4 = T0 + 165 * MIN;
    assert!(
        same(
            &silent("dev-s4", "start"),
            &json!({"event_id": format!("silent:dev-s4:{s4}"), "device_id": "dev-s4", "channel": null,
                    "kind": "silent", "state": "start", "ts": s4, "last_ts": T0 + 135 * MIN})
        ),
        "{}",
        show(&actual)
    );
    assert_eq!(count(&actual, "dev-s4"), 1, "{}", show(&actual));
    // dev-o: the newest ts is +40m (the later +35m does not move it back).
    let o = T0 + 70 * MIN;
    let id = format!("silent:dev-o:{o}");
    assert!(
        same(
            &silent("dev-o", "start"),
            &json!({"event_id": id, "device_id": "dev-o", "channel": null, "kind": "silent",
                    "state": "start", "ts": o, "last_ts": T0 + 40 * MIN})
        ),
        "{}",
        show(&actual)
    );
    assert!(
        same(
            &silent("dev-o", "end"),
            &json!({"event_id": id, "device_id": "dev-o", "channel": null, "kind": "silent",
                    "state": "end", "ts": T0 + 105 * MIN, "duration_ms": 35 * MIN})
        ),
        "{}",
        show(&actual)
    );
    assert_eq!(count(&actual, "dev-o"), 2, "{}", show(&actual));
    for d in ["dev-a", "dev-b", "dev-c"] {
        assert_eq!(count(&actual, d), 0, "{}", show(&actual));
    }
}

// ---------------------------------------------------------------------------
// 3. Random datasets
// ---------------------------------------------------------------------------

/// One step of a random dataset: the clock advances, then a device reads
/// (unless it is muted).
#[derive(Clone, Debug)]
struct Step {
    device: usize,
    advance: i64,
    mute: i64,
    pm25: u8,
    co2: u8,
    extra: u8,
    toggle: u8,
    jitter: i64,
    delay: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..4usize,
        prop_oneof![40 => 0i64..=60_000, 1 => 20 * MIN..=70 * MIN],
        prop_oneof![30 => Just(0i64), 1 => 25 * MIN..=90 * MIN],
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![2 => Just(0i64), 1 => 0i64..=540_000],
        prop_oneof![30 => Just(0i64), 1 => 15 * MIN..=60 * MIN],
    )
        .prop_map(|(device, advance, mute, pm25, co2, extra, toggle, jitter, delay)| Step {
            device,
            advance,
            mute,
            pm25,
            co2,
            extra,
            toggle,
            jitter,
            delay,
        })
}

/// The lines of a random dataset, in arrival order: readings of up to four
/// devices on a shared clock, junk streaks (a device's pm25 flips between
/// mostly clean and mostly junk), scattered junk co2 and temp values, null
/// and missing values, an unbounded channel, devices muted for a while,
/// arrival jitter below the lateness (disorder, on time), some readings
/// delayed by 15–60 minutes (mostly late), a few malformed lines.
fn render(steps: &[Step]) -> Vec<String> {
    let mut clock = T0;
    let mut muted_until = [i64::MIN; 4];
    let mut junk_mode = [false; 4];
    let mut out: Vec<(i64, usize, String)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        clock += s.advance;
        let d = s.device;
        if s.toggle < 14 {
            junk_mode[d] = !junk_mode[d];
        }
        if s.toggle == 255 {
            out.push((clock, i, format!("{{\"device_id\":\"dev-{d}\",\"ts\":")));
        }
        if clock < muted_until[d] {
            continue;
        }
        if s.mute > 0 {
            muted_until[d] = clock + s.mute;
        }
        let mut values: Vec<(&str, Option<f64>)> = Vec::new();
        match s.pm25 {
            0..=12 => values.push(("pm25", None)),
            13..=25 => {}
            p => {
                let junk = if junk_mode[d] { p % 8 != 0 } else { p >= 250 };
                let v = if !junk {
                    f64::from(p) / 10.0
                } else if p % 2 == 0 {
                    5000.0
                } else {
                    -0.5
                };
                values.push(("pm25", Some(v)));
            }
        }
        match s.co2 {
            0..=59 => {}
            60..=69 => values.push(("co2", None)),
            70..=79 => values.push(("co2", Some(20000.0))),
            c => values.push(("co2", Some(400.0 + f64::from(c)))),
        }
        match s.extra {
            0..=159 => {}
            160..=199 => values.push(("noise", Some(f64::from(s.extra) * 1e9))),
            200..=214 => values.push(("temp", Some(-60.0))),
            t => values.push(("temp", Some(f64::from(t) / 10.0))),
        }
        out.push((clock + s.jitter + s.delay, i, line(&format!("dev-{d}"), clock, &values)));
    }
    out.sort();
    out.into_iter().map(|(_, _, l)| l).collect()
}

/// Event kinds seen over the random cases, so that the report shows what
/// the generator exercised.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    lines: usize,
    late: usize,
    junk_start: usize,
    junk_end: usize,
    silent_start: usize,
    silent_end: usize,
}

/// The job's records on random datasets equal the model's, at 1 and at 2 workers.
#[test]
fn health_matches_sequential_model_on_random_datasets_at_1_and_2_workers() {
    let cfg = Config::documented_defaults();
    let h = HealthSettings::documented_defaults();
    let coverage = std::cell::RefCell::new(Coverage::default());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 32,
        max_shrink_iters: 100,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 20..=300), |steps| {
        let lines = render(&steps);
        let expected = model_health(&cfg, &h, &file_of(&lines));
        let b = bench(&lines);
        for w in [1, 2] {
            let actual = parse(b.run(w).lines("health"));
            compare(&expected, &actual, &lines, &format!("-w {w}")).map_err(TestCaseError::fail)?;
        }
        let mut c = coverage.borrow_mut();
        c.cases += 1;
        c.lines += lines.len();
        c.late += reference::ingest(&cfg, &file_of(&lines)).1.iter().filter(|r| r.late).count();
        for r in &expected {
            match (r["kind"].as_str(), r["state"].as_str()) {
                (Some("junk"), Some("start")) => c.junk_start += 1,
                (Some("junk"), Some("end")) => c.junk_end += 1,
                (Some("silent"), Some("start")) => c.silent_start += 1,
                _ => c.silent_end += 1,
            }
        }
        Ok(())
    });
    let c = coverage.into_inner();
    eprintln!("sensor-health random datasets: {c:?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(c.cases, 32, "every case ran");
    // The generator exercises every kind of event.
    assert!(c.late > 0 && c.junk_start > 0 && c.junk_end > 0 && c.silent_start > 0 && c.silent_end > 0, "{c:?}");
}

// ---------------------------------------------------------------------------
// 4. A clean generated fleet
// ---------------------------------------------------------------------------

/// `eddy gen --junk 0`: no junk fault anywhere. The generator does take
/// devices offline on purpose (three unknown devices report for 15–60
/// minutes, and with updates one fleet device is decommissioned and stops
/// reporting); exactly those fall silent, at their model deadlines, and
/// none comes back.
#[test]
fn clean_generated_fleet_reports_only_the_devices_the_generator_takes_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("fleet");
    let gen = GenConfig { devices: 20, hours: 6.0, junk: 0.0, seed: 11, ..GenConfig::default() };
    generate(&gen, &ds, &mut |_, _| {}).expect("generating the fleet");
    let text = std::fs::read(ds.join("readings.jsonl")).unwrap();
    let lines: Vec<String> = String::from_utf8(text.clone()).unwrap().lines().map(String::from).collect();
    let expected = model_health(&Config::documented_defaults(), &HealthSettings::documented_defaults(), &text);

    // The devices the generator takes offline: the unknown ones (numbered
    // after the new device) and the one deleted from the registry.
    let mut offline: BTreeSet<String> = (22..=24).map(|n| format!("dev-{n:06}")).collect();
    let updates = std::fs::read_to_string(ds.join("updates.jsonl")).unwrap();
    let retired: Vec<String> = updates
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|u| u["table"] == "devices" && u["op"] == "delete")
        .map(|u| u["row"]["device_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(retired.len(), 1, "one decommissioned device: {retired:?}");
    offline.extend(retired);

    assert!(expected.iter().all(|r| r["kind"] == "silent" && r["state"] == "start"), "{}", show(&expected));
    let silent: BTreeSet<String> = expected.iter().map(|r| r["device_id"].as_str().unwrap().to_string()).collect();
    // With seed 11 every one of them stops more than 40 minutes before the
    // end, so each falls silent (a device stopping later would not).
    assert_eq!(silent, offline, "the devices falling silent are those the generator takes offline");
    assert_eq!(silent.len(), expected.len(), "one start per device: {}", show(&expected));

    let mut first: Option<Vec<String>> = None;
    for w in [1, 2, 4] {
        let out = tmp.path().join(format!("out-w{w}"));
        let opts = ReplayOptions {
            workers: Workers::threads(w),
            outputs: Some(vec!["health".to_string()]),
            ..ReplayOptions::new(&ds, &out)
        };
        replay(&opts, |_| {}).unwrap_or_else(|e| panic!("replay at -w {w}: {e}"));
        let mut got: Vec<String> = read_lines(&out.join("health.jsonl"));
        got.sort();
        if let Err(e) = compare(&expected, &parse(&got), &lines, &format!("-w {w}")) {
            panic!("{e}");
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "-w 1 and -w {w}"),
        }
    }
    eprintln!("clean fleet: {} lines, silent devices {silent:?} of offline {offline:?}", lines.len());
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(String::from)
        .collect()
}
