//! The backup job end to end: independent readers (DuckDB, pyarrow), crash
//! recovery with SIGKILL, reruns, and replay from a backup.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eddy::core::validate::parse_line;
use serde_json::Value;
use support::*;

/// The Python with duckdb and pyarrow that `scripts/test.sh` installs.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDDY_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "no Python with duckdb and pyarrow: run scripts/test.sh, which installs them into .venv");
    venv
}

fn check_backup(out: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_backup.py");
    let o = Command::new(python()).arg(script).arg(out).output().expect("run python");
    assert!(o.status.success(), "check_backup.py failed: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json from check_backup.py")
}

fn gen(dir: &Path, devices: &str, hours: &str) {
    eddy_ok(&["gen", dir.to_str().unwrap(), "--devices", devices, "--hours", hours, "--seed", "11"]);
}

fn date_of(ms: i64) -> String {
    eddy::parquet::date_of_ms(ms)
}

#[test]
fn duckdb_and_pyarrow_read_the_backup_and_raw_archive_as_the_input() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "30", "30"); // crosses a UTC midnight
    let out = root.path().join("out");
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", "2", "-q"]);
    let r = check_backup(&out);

    // The input, read here: every valid line, by date and by device/channel.
    let input = std::fs::read_to_string(data.join("readings.jsonl")).unwrap();
    let mut per_date: BTreeMap<String, u64> = BTreeMap::new();
    let mut sums: HashMap<String, (f64, u64)> = HashMap::new();
    for line in input.lines() {
        if let Ok(p) = parse_line(line.as_bytes()) {
            *per_date.entry(date_of(p.ts)).or_default() += 1;
            for (c, v) in &p.values {
                if let Some(v) = v {
                    let e = sums.entry(format!("{}/{}", p.device, c)).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
            }
        }
    }
    let got: BTreeMap<String, u64> =
        r["rows_per_date"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
    assert_eq!(got, per_date, "rows per date");
    assert!(per_date.len() >= 2, "the dataset should span two dates");
    assert_eq!(r["duplicates"], 0);
    let got_sums = r["sums"].as_object().unwrap();
    assert_eq!(got_sums.len(), sums.len(), "device/channel pairs");
    for (k, (s, n)) in &sums {
        let g = &got_sums[k];
        assert_eq!(g[1].as_u64().unwrap(), *n, "{k} count");
        let gs = g[0].as_f64().unwrap();
        assert!((gs - s).abs() <= 1e-9 * s.abs().max(1.0), "{k}: {gs} vs {s}");
    }
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(r["late"], summary["late"], "late readings are backed up, flagged");
    assert_eq!(r["arrow_rows"], summary["valid"]);
    // Schema and types, as both readers see them.
    let s = &r["duckdb_schema"];
    assert_eq!(s["device_id"], "VARCHAR");
    assert_eq!(s["ts"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(s["pm25"], "DOUBLE");
    assert_eq!(s["raw_pm25"], "DOUBLE");
    assert_eq!(s["late"], "BOOLEAN");
    assert_eq!(s["junk"], "VARCHAR[]");
    assert_eq!(s["site"], "VARCHAR", "device context columns");
    let t = &r["arrow_types"];
    assert_eq!(t["ts"], "timestamp[ms, tz=UTC]");
    assert_eq!(t["co2"], "double");

    // The raw archive holds every line exactly as received, malformed ones included.
    let raw = r["raw"].as_array().unwrap();
    let lines: Vec<&str> = input.lines().collect();
    assert_eq!(raw.len(), lines.len());
    for (i, entry) in raw.iter().enumerate() {
        assert_eq!(entry[0].as_u64().unwrap(), i as u64 + 1);
        assert_eq!(entry[1].as_str().unwrap(), lines[i], "line {}", i + 1);
    }
}

/// Every backed-up row as (device, ts, offset, late), sorted.
fn backup_rows(out: &Path) -> Vec<(String, i64, u64, bool)> {
    let mut rows: Vec<_> = eddy::parquet::read_backup(&out.join("backup"))
        .unwrap()
        .into_iter()
        .map(|r| (r.device_id, r.ts, r.pos.offset, r.late))
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_replay_killed_at_random_points_and_rerun_backs_up_every_reading_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "60", "24");
    // Commit a file every epoch (10 minutes of event time), so kills land between commits.
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("ingest.toml"), "kind = \"ingest\"\nepoch = \"10m\"\n").unwrap();
    std::fs::write(jobs.join("backup.toml"), "kind = \"backup\"\nmax_file_age = \"0s\"\n").unwrap();
    let args = |out: &Path, w: &str| -> Vec<String> {
        [
            "replay",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            jobs.to_str().unwrap(),
            "-w",
            w,
            // Paced: 24 hours of event time in about 3 s, committing as it goes.
            "--speed",
            "28800",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let clean = root.path().join("clean");
    eddy_ok(&args(&clean, "2").iter().map(String::as_str).collect::<Vec<_>>());
    let paced = Duration::from_secs(3);
    let expected = backup_rows(&clean);
    assert!(!expected.is_empty());

    // Kill at random points within the paced run, until ten kills have
    // landed mid-run (bounded, in case a slow machine lets runs finish).
    let crashed = root.path().join("crashed");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    let mut partial = false;
    for i in 0..40 {
        if kills >= 10 {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Alternate worker counts: the resume must not depend on them.
        let w = if i % 2 == 0 { "2" } else { "1" };
        let mut child = eddy().args(args(&crashed, w)).spawn().unwrap();
        let wait = paced.mul_f64(0.05 + (seed % 1000) as f64 / 1000.0 * 0.85);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // Whatever was committed so far is never a duplicate.
        let rows = backup_rows(&crashed);
        let mut dedup = rows.clone();
        dedup.dedup();
        assert_eq!(rows.len(), dedup.len(), "duplicates after run {i}");
        partial |= !rows.is_empty() && rows.len() < expected.len();
    }
    assert!(kills >= 10, "only {kills} runs were killed mid-way");
    assert!(partial, "no kill left a partly committed backup: the resume path was not exercised");
    eddy_ok(&args(&crashed, "2").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(backup_rows(&crashed), expected, "the backup after kills and reruns equals a clean run's");
    // And an independent reader agrees: no duplicates, no partial files.
    let r = check_backup(&crashed);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["arrow_rows"].as_u64().unwrap(), expected.len() as u64);
    let leftovers: Vec<_> =
        walk(&crashed.join("backup")).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn replaying_again_into_the_same_out_never_duplicates_the_backup() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "10", "6");
    let out = root.path().join("out");
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"]);
    let first = backup_rows(&out);
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", "2", "-q"]);
    assert_eq!(backup_rows(&out), first);
    // Another dataset into the same OUT is refused, naming both.
    let other = root.path().join("other");
    gen(&other, "3", "1");
    let o = eddy_err(&["replay", other.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"]);
    assert!(text(&o.stderr).contains("holds the backup of"), "{}", text(&o.stderr));
}

#[test]
fn replaying_a_backup_gives_the_same_windows_and_statistics() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "25", "12");
    let (first, second) = (root.path().join("first"), root.path().join("second"));
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", first.to_str().unwrap(), "-q"]);
    eddy_ok(&[
        "replay",
        first.join("backup").to_str().unwrap(),
        "--reference",
        data.to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
        "-w",
        "2",
        "-q",
    ]);
    // Windows: the same windows with the same counts, minima and maxima; the
    // means agree to 1e-9 (a device's values may be summed in another order).
    let windows = |p: &Path| {
        let mut m: BTreeMap<(String, String, i64), Value> = BTreeMap::new();
        for r in read_jsonl(p) {
            let k = (
                r["device_id"].as_str().unwrap().into(),
                r["channel"].as_str().unwrap().into(),
                r["window_start"].as_i64().unwrap(),
            );
            m.insert(k, r);
        }
        m
    };
    let (wa, wb) = (windows(&first.join("windows.jsonl")), windows(&second.join("windows.jsonl")));
    let missing: Vec<_> = wa.keys().filter(|k| !wb.contains_key(*k)).take(3).collect();
    let extra: Vec<_> = wb.keys().filter(|k| !wa.contains_key(*k)).take(3).collect();
    assert!(missing.is_empty() && extra.is_empty(), "windows differ: missing {missing:?}, extra {extra:?}");
    for (k, x) in &wa {
        let y = &wb[k];
        for f in ["window_end", "count", "min", "max"] {
            assert_eq!(x[f], y[f], "window {k:?} {f}");
        }
        close(&x["mean"], &y["mean"], &format!("window {k:?} mean"));
    }
    assert_eq!(read_jsonl(&first.join("events.jsonl")).len(), read_jsonl(&second.join("events.jsonl")).len(), "events");

    // Final statistics per key. The backup replays each device in event-time
    // order; where the original arrival order was the same, every statistic
    // is equal, and the order-free ones are equal everywhere.
    let finals = |p: &Path| {
        let mut m: BTreeMap<(String, String), Value> = BTreeMap::new();
        for r in read_jsonl(p) {
            m.insert((r["device_id"].as_str().unwrap().into(), r["channel"].as_str().unwrap().into()), r);
        }
        m
    };
    let (a, b) = (finals(&first.join("stats.jsonl")), finals(&second.join("stats.jsonl")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let in_order = devices_in_event_time_order(&data);
    let mut checked_all = 0;
    for (k, x) in &a {
        let y = &b[k];
        for f in ["count", "min", "max"] {
            assert_eq!(x[f], y[f], "{k:?} {f}");
        }
        for f in ["mean", "stddev", "top_k_max_mean", "top_k_min_mean"] {
            close(&x[f], &y[f], &format!("{k:?} {f}"));
        }
        if in_order[&k.0] {
            checked_all += 1;
            assert_eq!(x["ts"], y["ts"], "{k:?}");
            for f in ["ewma", "trend_per_hour"] {
                close(&x[f], &y[f], &format!("{k:?} {f}"));
            }
        }
    }
    assert!(checked_all > a.len() / 2, "too few devices arrived in event-time order to compare ({checked_all})");
}

fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0), "{what}: {x} vs {y}"),
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// For each device: do its non-late readings arrive in event-time order?
fn devices_in_event_time_order(data: &Path) -> HashMap<String, bool> {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut ok: HashMap<String, bool> = HashMap::new();
    let mut max_ts = i64::MIN;
    for line in std::fs::read_to_string(data.join("readings.jsonl")).unwrap().lines() {
        let Ok(p) = parse_line(line.as_bytes()) else { continue };
        let is_late = max_ts != i64::MIN && max_ts - p.ts > 600_000;
        max_ts = max_ts.max(p.ts);
        if is_late {
            continue;
        }
        let d = p.device.to_string();
        let prev = last.insert(d.clone(), p.ts);
        let e = ok.entry(d).or_insert(true);
        if prev.is_some_and(|t| t > p.ts) {
            *e = false;
        }
    }
    ok
}

#[test]
fn the_checkpoint_never_runs_ahead_of_the_raw_archive() {
    // A paced replay commits as it goes; every time we look, the input the
    // checkpoint calls committed is in the raw archive's committed files.
    let d = Data::new();
    let lines: Vec<String> =
        (0..600).map(|i| reading("a", T0 + i * 1_000, &[("pm25", serde_json::json!(1))])).collect();
    d.readings(&lines);
    let jobs = d.root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("backup.toml"), "kind = \"backup\"\nmax_file_age = \"1s\"\n").unwrap();
    let out = d.out();
    let mut child = eddy()
        .args(["replay", d.dir().to_str().unwrap(), "--out", out.to_str().unwrap(), "--jobs", jobs.to_str().unwrap()])
        .args(["--speed", "200", "-q"])
        .spawn()
        .unwrap();
    let mut samples = 0;
    let mut ahead = Vec::new();
    while child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(text) = std::fs::read_to_string(out.join("_checkpoint.json")) else { continue };
        let Ok(cp) = serde_json::from_str::<Value>(&text) else { continue };
        let committed = cp["committed"]["offset"].as_u64().unwrap();
        let archived = eddy::parquet::Manifest::load(&out.join("raw")).ok().and_then(|m| m.max_offset("raw-w0", 0));
        if committed > 1 {
            samples += 1;
            if archived.is_none_or(|a| a + 1 < committed) {
                ahead.push((committed, archived));
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(ahead.is_empty(), "the checkpoint ran ahead of the raw archive: {ahead:?}");
    assert!(samples >= 3, "only {samples} samples of a moving checkpoint");
}
