use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::*;

const CHANNELS: [&str; 5] = ["pm25", "co2", "voc", "temp", "hum"];

fn gen(cfg: &GenConfig) -> (tempfile::TempDir, GenSummary) {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(cfg, dir.path(), &mut |_, _| {}).unwrap();
    (dir, summary)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// A reading as the data contract defines it.
#[derive(Debug)]
struct Reading {
    device_id: String,
    ts: i64,
    values: BTreeMap<String, Option<f64>>,
}

/// `Some` if `line` is a valid reading (object, non-empty string device_id,
/// integer ts, channel values number or null), `None` if it is malformed.
fn parse_reading(line: &str) -> Option<Reading> {
    let v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let device_id = obj.get("device_id")?.as_str()?;
    if device_id.is_empty() {
        return None;
    }
    let ts = obj.get("ts")?.as_i64()?;
    let mut values = BTreeMap::new();
    for (k, v) in obj {
        if k == "device_id" || k == "ts" {
            continue;
        }
        let val = match v {
            Value::Null => None,
            Value::Number(n) => Some(n.as_f64()?),
            _ => return None,
        };
        values.insert(k.clone(), val);
    }
    Some(Reading { device_id: device_id.to_string(), ts, values })
}

fn out_of_range(channel: &str, v: f64) -> bool {
    let (lo, hi) = match channel {
        "pm25" | "ref_pm25" => (0.0, 1000.0),
        "co2" | "voc" => (0.0, 10_000.0),
        "temp" => (-40.0, 85.0),
        "hum" => (0.0, 100.0),
        other => panic!("unexpected channel {other}"),
    };
    !(lo..=hi).contains(&v)
}

fn readings(text: &str) -> (Vec<Reading>, usize) {
    let mut good = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        match parse_reading(line) {
            Some(r) => good.push(r),
            None => bad += 1,
        }
    }
    (good, bad)
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn medium() -> GenConfig {
    GenConfig { devices: 200, hours: 24.0, seed: 3, ..GenConfig::default() }
}

#[test]
fn defaults_match_the_contract() {
    let c = GenConfig::default();
    assert_eq!(c.devices, 100);
    assert_eq!(c.hours, 24.0);
    assert_eq!(c.seed, 42);
    assert_eq!(c.late, 0.01);
    assert_eq!(c.junk, 0.005);
    assert_eq!(c.start_ms, 1_767_225_600_000);
    assert_eq!(c.interval_ms, 300_000);
    assert!(c.updates);
    assert!(!c.gzip);
    assert_eq!(c.drift_co2_ppm_per_day, 0.0);
    assert_eq!(c.drift_fraction, 0.2);
    assert!(!c.reference_channel);
    c.validate().unwrap();
}

#[test]
fn validate_names_the_option() {
    let msg = |c: GenConfig| c.validate().unwrap_err().to_string();
    let d = GenConfig::default;
    assert_eq!(msg(GenConfig { late: 1.5, ..d() }), "invalid option: --late must be between 0 and 1, got 1.5");
    assert!(msg(GenConfig { junk: -0.1, ..d() }).contains("--junk"));
    assert!(msg(GenConfig { junk: f64::NAN, ..d() }).contains("--junk"));
    assert!(msg(GenConfig { drift_fraction: 2.0, ..d() }).contains("--drift-fraction"));
    assert!(msg(GenConfig { devices: 0, ..d() }).contains("--devices"));
    assert!(msg(GenConfig { hours: 0.0, ..d() }).contains("--hours"));
    assert!(msg(GenConfig { hours: f64::INFINITY, ..d() }).contains("--hours"));
    assert!(msg(GenConfig { drift_co2_ppm_per_day: f64::NAN, ..d() }).contains("--drift"));
    assert!(msg(GenConfig { interval_ms: 0, ..d() }).contains("interval_ms"));
    assert!(msg(GenConfig { start_ms: -1, ..d() }).contains("--start"));
    // generate refuses too, before touching the disk.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let err = generate(&GenConfig { late: 2.0, ..d() }, &out, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, GenError::Invalid(_)));
    assert!(!out.exists());
}

#[test]
fn deterministic_per_seed() {
    let cfg = GenConfig {
        devices: 30,
        hours: 12.0,
        seed: 9,
        drift_co2_ppm_per_day: 20.0,
        reference_channel: true,
        ..GenConfig::default()
    };
    let (a, sa) = gen(&cfg);
    let (b, sb) = gen(&cfg);
    assert_eq!(sa, sb);
    let names: Vec<_> = std::fs::read_dir(a.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in names {
        let fa = std::fs::read(a.path().join(&name)).unwrap();
        let fb = std::fs::read(b.path().join(&name)).unwrap();
        assert!(fa == fb, "{name:?} differs between runs");
    }
    // Another seed gives other data.
    let (c, _) = gen(&GenConfig { seed: 10, ..cfg });
    assert_ne!(read(a.path(), "readings.jsonl"), read(c.path(), "readings.jsonl"));
}

#[test]
fn readings_follow_the_contract() {
    let cfg = medium();
    let (dir, s) = gen(&cfg);
    let text = read(dir.path(), "readings.jsonl");
    let (good, bad) = readings(&text);

    // Counts agree with the summary.
    assert_eq!(text.lines().count() as u64, s.lines);
    assert_eq!(s.lines, s.readings + s.junk_lines);
    assert_eq!(good.len() as u64, s.readings);
    assert_eq!(bad as u64, s.junk_lines);
    assert_eq!(s.devices, 200);
    assert_eq!(s.bytes, text.len() as u64);
    // 200 devices, 288 readings each, plus the new and unknown devices.
    assert!(s.readings >= 200 * 288, "{}", s.readings);
    assert!(s.readings < 200 * 288 + 288, "{}", s.readings);

    // Junk: ~0.5% of lines, about half malformed, half out-of-range values.
    let junk = (s.junk_lines + s.junk_values) as f64 / s.lines as f64;
    assert!((0.0035..0.0065).contains(&junk), "junk fraction {junk}");
    assert!(s.junk_lines > 50 && s.junk_values > 50, "{s:?}");
    let with_bad_value =
        good.iter().filter(|r| r.values.iter().any(|(k, v)| v.is_some_and(|v| out_of_range(k, v)))).count();
    assert_eq!(with_bad_value as u64, s.junk_values);

    // Every valid reading has exactly the channel fields, numbers or null.
    let mut nulls = 0;
    for r in &good {
        assert!(r.device_id.starts_with("dev-"));
        let keys: Vec<_> = r.values.keys().map(String::as_str).collect();
        let mut expected = CHANNELS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        nulls += r.values.values().filter(|v| v.is_none()).count();
        assert!(r.ts >= cfg.start_ms && r.ts < cfg.start_ms + 24 * 3_600_000);
    }
    let null_frac = nulls as f64 / (good.len() * 5) as f64;
    assert!((0.003..0.007).contains(&null_frac), "nulls {null_frac}");

    // Each device reads every 5 minutes at a fixed phase.
    let mut by_dev: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in &good {
        by_dev.entry(&r.device_id).or_default().push(r.ts);
    }
    for ts in by_dev.values_mut() {
        ts.sort_unstable();
        for w in ts.windows(2) {
            assert_eq!(w[1] - w[0], cfg.interval_ms);
        }
    }
}

#[test]
fn junk_lines_are_all_kinds_of_malformed() {
    let cfg = GenConfig { devices: 40, hours: 6.0, junk: 0.2, ..GenConfig::default() };
    let (dir, s) = gen(&cfg);
    let text = read(dir.path(), "readings.jsonl");
    let junk = (s.junk_lines + s.junk_values) as f64 / s.lines as f64;
    assert!((0.17..0.23).contains(&junk), "junk fraction {junk}");
    let bad: Vec<&str> = text.lines().filter(|l| parse_reading(l).is_none()).collect();
    assert_eq!(bad.len() as u64, s.junk_lines);
    let kinds = |pred: &dyn Fn(&str, Option<&Value>) -> bool| {
        bad.iter().filter(|l| pred(l, serde_json::from_str::<Value>(l).ok().as_ref())).count()
    };
    let not_json = kinds(&|_, v| v.is_none());
    let truncated = kinds(&|l, v| v.is_none() && l.starts_with("{\"device_id\""));
    let arrays = kinds(&|_, v| v.is_some_and(Value::is_array));
    let no_id = kinds(&|_, v| v.is_some_and(|v| v.is_object() && v.get("device_id").is_none()));
    let ts_string = kinds(&|_, v| v.is_some_and(|v| v.get("ts").is_some_and(Value::is_string)));
    let chan_bad = kinds(&|_, v| {
        v.is_some_and(|v| CHANNELS.iter().any(|c| v.get(c).is_some_and(|x| x.is_string() || x.is_boolean())))
    });
    for (name, n) in [
        ("not json", not_json),
        ("truncated", truncated),
        ("arrays", arrays),
        ("missing device_id", no_id),
        ("ts string", ts_string),
        ("bad channel", chan_bad),
    ] {
        assert!(n > 5, "too few {name}: {n} of {}", bad.len());
    }
    assert!(not_json > truncated, "non-JSON text lines exist too");
    // No blank lines.
    assert!(text.lines().all(|l| !l.trim().is_empty()));

    // junk = 0 means clean.
    let (dir, s) = gen(&GenConfig { junk: 0.0, ..cfg });
    assert_eq!((s.junk_lines, s.junk_values), (0, 0));
    let (_, bad) = readings(&read(dir.path(), "readings.jsonl"));
    assert_eq!(bad, 0);
}

#[test]
fn late_readings_and_arrival_order() {
    let cfg = medium();
    let (dir, s) = gen(&cfg);
    let late = s.late as f64 / s.readings as f64;
    assert!((0.007..0.013).contains(&late), "late fraction {late}");

    let (good, _) = readings(&read(dir.path(), "readings.jsonl"));
    // Not sorted by ts ...
    assert!(good.windows(2).any(|w| w[1].ts < w[0].ts));
    // ... but only late readings are more than 30 s (the maximum jitter)
    // behind the newest ts seen so far.
    let mut max_ts = cfg.start_ms;
    let mut behind = 0u64;
    for r in &good {
        if r.ts < max_ts - 30_000 {
            behind += 1;
        }
        max_ts = max_ts.max(r.ts);
    }
    assert!(behind <= s.late && behind as f64 >= s.late as f64 * 0.8, "{behind} vs {}", s.late);

    let (_, s0) = gen(&GenConfig { late: 0.0, ..medium() });
    assert_eq!(s0.late, 0);
}

#[test]
fn pollution_episodes_rise_and_fall() {
    let cfg = GenConfig { junk: 0.0, ..medium() };
    let (dir, _) = gen(&cfg);
    let (mut good, _) = readings(&read(dir.path(), "readings.jsonl"));
    good.sort_by(|a, b| (&a.device_id, a.ts).cmp(&(&b.device_id, b.ts)));
    let mut by_dev: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
    for r in &good {
        by_dev.entry(&r.device_id).or_default().push(r);
    }
    // Count completed episodes: rise above `hi`, then back below `lo`.
    let episodes = |channel: &str, hi: f64, lo: f64| -> usize {
        let mut total = 0;
        for rs in by_dev.values() {
            let mut high = false;
            for r in rs {
                let Some(v) = r.values[channel] else { continue };
                if !high && v > hi {
                    high = true;
                } else if high && v < lo {
                    high = false;
                    total += 1;
                }
            }
        }
        total
    };
    let pm = episodes("pm25", 35.0, 25.0);
    let co2 = episodes("co2", 1000.0, 800.0);
    let voc = episodes("voc", 500.0, 350.0);
    // ~2 pm25 episodes per device and day; co2 daily cycles plus episodes.
    assert!(pm > 200 && pm < 800, "pm25 episodes {pm}");
    assert!(co2 > 100, "co2 episodes {co2}");
    assert!(voc > 10, "voc episodes {voc}");

    // Plausible ranges of clean values.
    let mut max_pm = 0.0f64;
    for r in &good {
        for (k, v) in &r.values {
            if let Some(v) = v {
                assert!(!out_of_range(k, *v), "{k}={v}");
            }
        }
        max_pm = max_pm.max(r.values["pm25"].unwrap_or(0.0));
        if let Some(t) = r.values["temp"] {
            assert!((18.0..26.0).contains(&t), "temp {t}");
        }
        if let Some(h) = r.values["hum"] {
            assert!((25.0..65.0).contains(&h), "hum {h}");
        }
        if let Some(c) = r.values["co2"] {
            assert!(c >= 380.0, "co2 {c}");
        }
    }
    assert!(max_pm > 100.0 && max_pm < 200.0, "max pm25 {max_pm}");
}

#[test]
fn reference_data_files() {
    let cfg = medium();
    let (dir, _) = gen(&cfg);
    let d = dir.path();

    let devices = read(d, "devices.csv");
    assert!(devices.starts_with("device_id,model,site,owner\n"));
    let rows = csv_rows(&devices);
    assert_eq!(rows.len(), 200);
    assert_eq!(rows[0][0], "dev-000001");
    assert_eq!(rows[199][0], "dev-000200");
    for r in &rows {
        assert_eq!(r.len(), 4);
        assert!(r[1].starts_with("AQ-") && r[2].starts_with("site-") && r[3].starts_with("owner-"));
    }
    let registered: BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();

    let cal = read(d, "calibration.csv");
    assert!(cal.starts_with("device_id,channel,gain,offset,valid_from\n"));
    let cal = csv_rows(&cal);
    let calibrated: BTreeSet<&str> = cal.iter().map(|r| r[0].as_str()).collect();
    assert!((70..130).contains(&calibrated.len()), "{}", calibrated.len());
    let versioned: BTreeSet<&str> = cal.iter().filter(|r| !r[4].is_empty()).map(|r| r[0].as_str()).collect();
    assert!((2..25).contains(&versioned.len()), "{}", versioned.len());
    for r in &cal {
        assert!(registered.contains(r[0].as_str()));
        let gain: f64 = r[2].parse().unwrap();
        let offset: f64 = r[3].parse().unwrap();
        assert!((0.8..=1.2).contains(&gain));
        match r[1].as_str() {
            "pm25" => assert!((-5.0..=5.0).contains(&offset)),
            "co2" => assert!((-30.0..=30.0).contains(&offset)),
            other => panic!("channel {other}"),
        }
        if !r[4].is_empty() {
            let t: i64 = r[4].parse().unwrap();
            assert!(t > cfg.start_ms && t < cfg.start_ms + 24 * 3_600_000);
        }
    }

    let th = read(d, "thresholds.csv");
    assert!(th.starts_with("rule_id,device_id,channel,rise_above,fall_below\n"));
    assert!(th.contains("\nvoc-high,*,voc,500,350\n"));
    assert!(th.contains("\npm25-high,*,pm25,35,25\n"));
    let specific = csv_rows(&th).into_iter().filter(|r| r[1] != "*").count();
    assert!(specific >= 2);
}

#[test]
fn updates_new_and_unknown_devices() {
    let cfg = medium();
    let (dir, _) = gen(&cfg);
    let d = dir.path();
    let end = cfg.start_ms + 24 * 3_600_000;
    let updates: Vec<Value> = read(d, "updates.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(updates.len() > 10);
    let ts: Vec<i64> = updates.iter().map(|u| u["ts"].as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "updates sorted by ts");
    assert!(ts.iter().all(|&t| t >= cfg.start_ms && t < end));
    let mut seen = BTreeSet::new();
    for u in &updates {
        let table = u["table"].as_str().unwrap();
        let op = u["op"].as_str().unwrap();
        let row = u["row"].as_object().unwrap();
        let keys: BTreeSet<&str> = row.keys().map(String::as_str).collect();
        let expect: &[&str] = match (table, op) {
            ("devices", "upsert") => &["device_id", "model", "site", "owner"],
            ("devices", "delete") => &["device_id"],
            ("calibration", "upsert") => &["device_id", "channel", "gain", "offset"],
            ("calibration", "delete") if keys.contains("valid_from") => &["device_id", "channel", "valid_from"],
            ("calibration", "delete") => &["device_id", "channel"],
            ("rules", "upsert") => &["rule_id", "device_id", "channel", "rise_above", "fall_below"],
            ("rules", "delete") => &["rule_id", "device_id"],
            other => panic!("unexpected update {other:?}"),
        };
        assert_eq!(keys, expect.iter().copied().collect(), "{u}");
        seen.insert((table, op));
    }
    assert_eq!(seen.len(), 6, "all tables and ops: {seen:?}");
    assert!(read(d, "updates.jsonl").contains(
        r#""table":"rules","op":"upsert","row":{"rule_id":"voc-high","device_id":"*","channel":"voc","rise_above":400,"fall_below":300}}"#
    ));

    let registered: BTreeSet<String> = csv_rows(&read(d, "devices.csv")).into_iter().map(|r| r[0].clone()).collect();
    let added: BTreeMap<&str, i64> = updates
        .iter()
        .filter(|u| u["table"] == "devices" && u["op"] == "upsert")
        .map(|u| (u["row"]["device_id"].as_str().unwrap(), u["ts"].as_i64().unwrap()))
        .collect();
    let (good, _) = readings(&read(d, "readings.jsonl"));
    let mut first_seen: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &good {
        if !registered.contains(&r.device_id) {
            let e = first_seen.entry(&r.device_id).or_insert(r.ts);
            *e = (*e).min(r.ts);
        }
    }
    // dev-000201 is new mid-stream: reports before its registration update.
    let new_first = first_seen["dev-000201"];
    assert!(new_first > cfg.start_ms + 7 * 3_600_000);
    assert!(added["dev-000201"] > new_first);
    // Unknown devices are never registered.
    let unknown: Vec<&&str> = first_seen.keys().filter(|k| !added.contains_key(**k)).collect();
    assert_eq!(unknown.len(), 3, "{unknown:?}");
    let n_unknown = good.iter().filter(|r| unknown.contains(&&r.device_id.as_str())).count();
    assert!((3..=40).contains(&n_unknown), "{n_unknown}");

    // The deleted device stops reporting before its delete.
    let deleted: Vec<(&str, i64)> = updates
        .iter()
        .filter(|u| u["table"] == "devices" && u["op"] == "delete")
        .map(|u| (u["row"]["device_id"].as_str().unwrap(), u["ts"].as_i64().unwrap()))
        .collect();
    assert_eq!(deleted.len(), 1);
    let (gone, at) = deleted[0];
    assert!(good.iter().filter(|r| r.device_id == gone).all(|r| r.ts < at));

    // Without updates: no file, no new device.
    let (dir, s) = gen(&GenConfig { updates: false, ..cfg });
    assert!(!dir.path().join("updates.jsonl").exists());
    let text = read(dir.path(), "readings.jsonl");
    assert!(!text.contains("dev-000201"));
    assert!(text.contains("dev-000202"));
    assert!(s.readings > 0);
}

#[test]
fn gzip_holds_the_same_lines() {
    let cfg = GenConfig { devices: 20, hours: 4.0, ..GenConfig::default() };
    let dir = tempfile::tempdir().unwrap();
    let plain = generate(&cfg, dir.path(), &mut |_, _| {}).unwrap();
    let text = read(dir.path(), "readings.jsonl");
    let gz = generate(&GenConfig { gzip: true, ..cfg }, dir.path(), &mut |_, _| {}).unwrap();
    // The plain file of the earlier run was removed.
    assert!(!dir.path().join("readings.jsonl").exists());
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.path().join("readings.jsonl.gz")).unwrap())
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, text);
    assert_eq!(plain.lines, gz.lines);
    assert!(gz.bytes < plain.bytes / 3);
    let meta: Value = serde_json::from_str(&read(dir.path(), "gen.json")).unwrap();
    assert_eq!(meta["config"]["gzip"], true);
    assert_eq!(meta["summary"]["bytes"], gz.bytes);
}

#[test]
fn reference_channel_and_truth() {
    let cfg = GenConfig { devices: 20, hours: 24.0, junk: 0.0, reference_channel: true, ..GenConfig::default() };
    let (dir, _) = gen(&cfg);
    let truth = read(dir.path(), "truth.csv");
    assert!(truth.starts_with("device_id,channel,gain,offset\n"));
    let truth: BTreeMap<String, (f64, f64)> = csv_rows(&truth)
        .into_iter()
        .map(|r| {
            assert_eq!(r[1], "pm25");
            (r[0].clone(), (r[2].parse().unwrap(), r[3].parse().unwrap()))
        })
        .collect();
    let (good, _) = readings(&read(dir.path(), "readings.jsonl"));
    let mut residuals: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for r in &good {
        let (Some(raw), Some(reference)) = (r.values["pm25"], r.values["ref_pm25"]) else {
            continue;
        };
        let (g, o) = truth[&r.device_id];
        let e = residuals.entry(&r.device_id).or_default();
        e.0 += raw - (g * reference + o);
        e.1 += 1;
    }
    // Fleet, new and unknown devices all have a truth row.
    assert_eq!(residuals.len(), truth.len());
    assert_eq!(truth.len(), 20 + 1 + 3);
    for (dev, (sum, n)) in residuals {
        let mean = sum / n as f64;
        assert!(mean.abs() < 1.0, "{dev}: mean residual {mean}");
    }
}

#[test]
fn co2_drift() {
    let cfg = GenConfig {
        devices: 40,
        hours: 48.0,
        junk: 0.0,
        drift_co2_ppm_per_day: 100.0,
        drift_fraction: 0.5,
        ..GenConfig::default()
    };
    let (dir, _) = gen(&cfg);
    let drifting: BTreeSet<String> = csv_rows(&read(dir.path(), "drift.csv"))
        .into_iter()
        .map(|r| {
            assert_eq!(r[1..], ["co2", "100"]);
            r[0].clone()
        })
        .collect();
    assert_eq!(drifting.len(), 20);
    // Night-time (00:00-04:00 UTC) co2 on day 2 minus day 1.
    let (good, _) = readings(&read(dir.path(), "readings.jsonl"));
    let night = |day: i64| cfg.start_ms + day * 86_400_000..cfg.start_ms + day * 86_400_000 + 4 * 3_600_000;
    let mut diff = [(0.0, 0usize); 2];
    for r in &good {
        let Some(c) = r.values["co2"] else { continue };
        let i = usize::from(drifting.contains(&r.device_id));
        if night(0).contains(&r.ts) {
            diff[i].0 -= c;
            diff[i].1 += 1;
        } else if night(1).contains(&r.ts) {
            diff[i].0 += c;
        }
    }
    let per_device = |(sum, n): (f64, usize)| sum / n as f64;
    let still = per_device(diff[0]);
    let drifted = per_device(diff[1]);
    assert!(still.abs() < 30.0, "non-drifting change {still}");
    assert!((70.0..130.0).contains(&drifted), "drifting change {drifted}");
}

#[test]
fn progress_and_gen_json() {
    let cfg = GenConfig { devices: 300, hours: 24.0, ..GenConfig::default() };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/out");
    let mut calls = Vec::new();
    let s = generate(&cfg, &out, &mut |done, total| calls.push((done, total))).unwrap();
    assert!(calls.len() >= 2);
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(calls.iter().all(|&(d, t)| d <= t));
    assert_eq!(*calls.last().unwrap(), (s.lines, s.lines));
    let (_, first_total) = calls[0];
    assert!((first_total as f64 / s.lines as f64 - 1.0).abs() < 0.01);

    let meta: Value = serde_json::from_str(&read(&out, "gen.json")).unwrap();
    let back: GenConfig = serde_json::from_value(meta["config"].clone()).unwrap();
    assert_eq!(back, cfg);
    let back: GenSummary = serde_json::from_value(meta["summary"].clone()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn tiny_and_odd_configs() {
    for cfg in [
        GenConfig { devices: 1, hours: 0.01, ..GenConfig::default() },
        GenConfig { devices: 1, hours: 1.0, late: 1.0, junk: 1.0, ..GenConfig::default() },
        GenConfig { devices: 3, hours: 2.5, interval_ms: 60_000, start_ms: 0, updates: false, ..GenConfig::default() },
    ] {
        let (dir, s) = gen(&cfg);
        let text = read(dir.path(), "readings.jsonl");
        assert_eq!(text.lines().count() as u64, s.lines);
        let (good, bad) = readings(&text);
        assert_eq!((good.len() as u64, bad as u64), (s.readings, s.junk_lines));
        if cfg.junk == 1.0 {
            assert_eq!(s.junk_values, s.readings);
            assert_eq!(s.late, s.readings);
        }
    }
}
