//! The machine-learning features: training on the backup (`eddy train`), the
//! calibration adapter and the scoring job in `eddy replay`. Everything
//! through the CLI, on small generated datasets.
#![cfg(feature = "ml")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{eddy_err, eddy_ok, read_json, text};

/// Generates a dataset and replays it; returns (root, dataset, out).
fn replayed(gen: &[&str], replay: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let ds = root.path().join("ds");
    let out = root.path().join("out");
    let mut args = vec!["gen", ds.to_str().unwrap()];
    args.extend_from_slice(gen);
    eddy_ok(&args);
    let mut args = vec!["replay", ds.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"];
    args.extend_from_slice(replay);
    eddy_ok(&args);
    (root, ds, out)
}

fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect()).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn calibration_recovers_the_generated_gain_and_offset() {
    let (root, ds, out) =
        replayed(&["--devices", "12", "--hours", "72", "--seed", "3", "--reference-channel", "--late", "0"], &[]);
    let model = root.path().join("models/cal.json");
    let stdout = eddy_ok(&[
        "train",
        "--backup",
        out.join("backup").to_str().unwrap(),
        "--task",
        "calibration",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(stdout.contains("RMSE against the reference"), "{stdout}");
    let m = read_json(&model);
    assert_eq!(m["format"], "eddy-model");
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["task"], "calibration");
    assert!(m["data"]["rows"].as_u64().unwrap() > 1000);
    assert!(m["data"]["from_ts"].as_i64().unwrap() < m["data"]["to_ts"].as_i64().unwrap());
    let eval = read_json(&root.path().join("models/cal.eval.json"));
    assert!(f(&eval["rmse_after"]) < f(&eval["rmse_before"]) / 2.0, "{eval}");

    let truth: BTreeMap<String, (f64, f64)> = csv_rows(&ds.join("truth.csv"))
        .into_iter()
        .map(|r| (r["device_id"].clone(), (r["gain"].parse().unwrap(), r["offset"].parse().unwrap())))
        .collect();
    let devices = m["devices"].as_array().unwrap();
    assert!(devices.len() >= 10, "most of the 12 devices are fitted: {}", devices.len());
    let mut worst = (0.0f64, 0.0f64);
    for d in devices {
        let (g, o) = truth[d["device_id"].as_str().unwrap()];
        let dg = (f(&d["sensor_gain"]) - g).abs() / g;
        // An offset near 0 has no meaningful relative error: measure it against
        // the level the calibration works at (5% of the mean reference value)
        // when that is larger than the offset itself.
        let scale = o.abs().max(f(&d["reference_mean"]));
        let d_o = (f(&d["sensor_offset"]) - o).abs() / scale;
        assert!(dg <= 0.05, "{}: gain {} vs true {g}", d["device_id"], d["sensor_gain"]);
        assert!(d_o <= 0.05, "{}: offset {} vs true {o} (scale {scale})", d["device_id"], d["sensor_offset"]);
        // The eddy calibration undoes the sensor's response.
        assert!((f(&d["gain"]) * f(&d["sensor_gain"]) - 1.0).abs() < 1e-9);
        assert!(f(&d["rmse_after"]) < f(&d["rmse_before"]) || f(&d["rmse_before"]) < 2.0, "{d}");
        worst = (worst.0.max(dg), worst.1.max(d_o));
    }
    eprintln!("worst relative errors: gain {:.4}, offset {:.4}", worst.0, worst.1);
}

#[test]
fn calibration_needs_a_reference_channel() {
    let (root, _ds, out) = replayed(&["--devices", "3", "--hours", "2", "--seed", "1"], &[]);
    let model = root.path().join("cal.json");
    let e = eddy_err(&[
        "train",
        "--backup",
        out.to_str().unwrap(),
        "--task",
        "calibration",
        "--out",
        model.to_str().unwrap(),
    ]);
    let msg = text(&e.stderr);
    assert!(msg.contains("reference channel `ref_pm25`"), "{msg}");
    assert!(!model.exists());
}

/// Trains a forecaster on `out`'s backup; returns the model's JSON and its evaluation.
fn train_forecast(out: &Path, model: &Path, version: &str, extra: &[&str]) -> (Value, Value, String) {
    let mut args = vec![
        "train",
        "--backup",
        out.to_str().unwrap(),
        "--task",
        "forecast",
        "--out",
        model.to_str().unwrap(),
        "--version",
        version,
    ];
    args.extend_from_slice(extra);
    let stdout = eddy_ok(&args);
    (read_json(model), read_json(&eddy_eval_path(model)), stdout)
}

fn eddy_eval_path(model: &Path) -> PathBuf {
    let stem = model.file_stem().unwrap().to_str().unwrap();
    model.with_file_name(format!("{stem}.eval.json"))
}

#[test]
fn forecaster_beats_persistence_on_the_time_split_test_set() {
    let (root, _ds, out) = replayed(&["--devices", "20", "--hours", "72", "--seed", "3"], &[]);
    let model = root.path().join("fc.json");
    let (m, e, stdout) = train_forecast(&out, &model, "fc-1", &[]);
    assert!(stdout.contains("persistence"), "{stdout}");
    assert_eq!(m["task"], "forecast");
    assert_eq!(m["version"], "fc-1");
    assert_eq!(m["horizon_min"], 30);
    assert_eq!(m["rule"]["rise_above"], 35.0);
    assert_eq!(m["rule"]["fall_below"], 25.0);
    assert_eq!(m["features"].as_array().unwrap().len(), m["logistic"]["weights"].as_array().unwrap().len());
    // Time split: every training sample's label window ends before the test set starts.
    let split = e["split_ts"].as_i64().unwrap();
    assert!(split > m["data"]["from_ts"].as_i64().unwrap() && split < m["data"]["to_ts"].as_i64().unwrap());
    assert!(e["test"]["positives"].as_u64().unwrap() > 20, "{e}");
    let (model_f1, base_f1) = (f(&e["model"]["f1"]), f(&e["persistence"]["f1"]));
    eprintln!(
        "F1 {model_f1:.3} vs persistence {base_f1:.3}; AUC {:.3} vs {:.3}",
        f(&e["model"]["roc_auc"]),
        f(&e["persistence"]["roc_auc"])
    );
    assert!(model_f1 > base_f1, "model F1 {model_f1} must beat persistence {base_f1}: {e}");
    assert!(f(&e["model"]["roc_auc"]) > f(&e["persistence"]["roc_auc"]), "{e}");
    assert!(f(&e["model"]["roc_auc"]) > 0.5, "{e}");
}

#[test]
fn train_errors_name_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("m.json");
    let missing = root.path().join("nope");
    let e = eddy_err(&[
        "train",
        "--backup",
        missing.to_str().unwrap(),
        "--task",
        "forecast",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(text(&e.stderr).contains("nope"), "{}", text(&e.stderr));
    let e = eddy_err(&[
        "train",
        "--backup",
        missing.to_str().unwrap(),
        "--task",
        "forecast",
        "--rule",
        "nope-high",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(text(&e.stderr).contains("--rule nope-high: no such rule"), "{}", text(&e.stderr));
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn scoring_swaps_the_model_while_the_replay_runs() {
    // Two models trained on one backup, with different versions and horizons.
    let (root, _ds, train_out) = replayed(&["--devices", "20", "--hours", "72", "--seed", "3"], &[]);
    let (v1, v2) = (root.path().join("v1.json"), root.path().join("v2.json"));
    train_forecast(&train_out, &v1, "v1", &[]);
    train_forecast(&train_out, &v2, "v2", &["--horizon", "20"]);

    // A paced replay of another fleet, scoring with the watched file.
    let ds = root.path().join("live");
    eddy_ok(&["gen", ds.to_str().unwrap(), "--devices", "4", "--hours", "6", "--seed", "9"]);
    let model = root.path().join("model.json");
    std::fs::copy(&v1, &model).unwrap();
    let out = root.path().join("scored");
    let mut child = support::eddy()
        .args(["replay", ds.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q", "--speed", "1800"])
        .args(["--model", model.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Once v1 has scored something, replace the file (atomically, as `eddy train` writes).
    let forecasts = out.join("forecasts.jsonl");
    let mut waited = 0;
    while jsonl(&forecasts).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the replay ended ({status}) before any forecast");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
        assert!(waited < 2400, "no forecast after two minutes");
    }
    let tmp = root.path().join("model.json.tmp");
    std::fs::copy(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(child.wait().unwrap().success());

    let records = jsonl(&forecasts);
    let mut by_epoch: BTreeMap<u64, std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let p = f(&r["probability"]);
        assert!((0.0..=1.0).contains(&p), "{r}");
        let v = r["model_version"].as_str().unwrap().to_string();
        assert_eq!(r["horizon_min"], if v == "v1" { 30 } else { 20 }, "{r}");
        by_epoch.entry(r["epoch"].as_u64().unwrap()).or_default().insert(v);
    }
    // Both versions scored, one model per epoch, and v2 only after every v1 epoch.
    let v1_epochs: Vec<u64> = by_epoch.iter().filter(|(_, v)| v.contains("v1")).map(|(e, _)| *e).collect();
    let v2_epochs: Vec<u64> = by_epoch.iter().filter(|(_, v)| v.contains("v2")).map(|(e, _)| *e).collect();
    assert!(!v1_epochs.is_empty() && !v2_epochs.is_empty(), "{by_epoch:?}");
    assert!(by_epoch.values().all(|v| v.len() == 1), "an epoch was scored by two models: {by_epoch:?}");
    assert!(v1_epochs.last() < v2_epochs.first(), "{by_epoch:?}");
    // Every scored reading is an on-time reading of the replay.
    let enriched = jsonl(&out.join("enriched.jsonl"));
    let keys: std::collections::BTreeSet<(String, i64)> =
        enriched.iter().map(|e| (e["device_id"].as_str().unwrap().to_string(), e["ts"].as_i64().unwrap())).collect();
    for r in &records {
        assert!(keys.contains(&(r["device_id"].as_str().unwrap().to_string(), r["ts"].as_i64().unwrap())), "{r}");
    }
}

#[test]
fn scoring_refuses_a_model_that_is_not_a_forecaster() {
    let (root, _ds, out) =
        replayed(&["--devices", "4", "--hours", "24", "--seed", "3", "--reference-channel", "--late", "0"], &[]);
    let cal = root.path().join("cal.json");
    eddy_ok(&["train", "--backup", out.to_str().unwrap(), "--task", "calibration", "--out", cal.to_str().unwrap()]);
    let out2 = root.path().join("out2");
    let e = eddy_err(&[
        "replay",
        root.path().join("ds").to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "-q",
        "--model",
        cal.to_str().unwrap(),
    ]);
    let msg = text(&e.stderr);
    assert!(msg.contains("cal.json") && msg.contains("calibration model cannot score"), "{msg}");
}

/// Per device, the calibrated co2 baseline over the last 24 h of `enriched`:
/// the mean of the 3 lowest hourly means (the adapter's own definition).
fn co2_baselines(enriched: &[Value]) -> BTreeMap<String, f64> {
    let end = enriched.iter().map(|e| e["ts"].as_i64().unwrap()).max().unwrap();
    let mut hours: BTreeMap<String, BTreeMap<i64, (f64, f64)>> = BTreeMap::new();
    for e in enriched {
        let (Some(v), ts) = (e["co2"].as_f64(), e["ts"].as_i64().unwrap()) else { continue };
        if ts >= end - 24 * 3_600_000 {
            let h = hours
                .entry(e["device_id"].as_str().unwrap().to_string())
                .or_default()
                .entry(ts / 3_600_000)
                .or_default();
            *h = (h.0 + v, h.1 + 1.0);
        }
    }
    hours
        .into_iter()
        .filter(|(_, h)| h.len() >= 20)
        .map(|(d, h)| {
            let mut means: Vec<f64> = h.values().map(|(s, n)| s / n).collect();
            means.sort_by(f64::total_cmp);
            (d, means[..3].iter().sum::<f64>() / 3.0)
        })
        .collect()
}

#[test]
fn the_adapter_removes_an_injected_co2_drift() {
    let root = tempfile::tempdir().unwrap();
    let ds = root.path().join("ds");
    eddy_ok(&[
        "gen",
        ds.to_str().unwrap(),
        "--devices",
        "6",
        "--hours",
        "96",
        "--seed",
        "5",
        "--late",
        "0",
        "--drift",
        "20",
        "--drift-fraction",
        "1",
    ]);
    let drifting: Vec<String> = csv_rows(&ds.join("drift.csv")).into_iter().map(|r| r["device_id"].clone()).collect();
    assert_eq!(drifting.len(), 6);
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("adapter.toml"), "kind = \"adapter\"\nenabled = true\n").unwrap();
    let (plain, adapted) = (root.path().join("plain"), root.path().join("adapted"));
    eddy_ok(&["replay", ds.to_str().unwrap(), "--out", plain.to_str().unwrap(), "-q"]);
    eddy_ok(&[
        "replay",
        ds.to_str().unwrap(),
        "--out",
        adapted.to_str().unwrap(),
        "-q",
        "--jobs",
        jobs.to_str().unwrap(),
    ]);
    let before = co2_baselines(&jsonl(&plain.join("enriched.jsonl")));
    let after = co2_baselines(&jsonl(&adapted.join("enriched.jsonl")));
    let off = |b: f64| (b - 420.0).abs() / 420.0;
    let mut worst = 0.0f64;
    let mut drifted = 0;
    for d in &drifting {
        let (b, a) = (before[d], after[d]);
        eprintln!("{d}: baseline {b:.1} without the adapter, {a:.1} with it");
        drifted += (off(b) > 0.05) as usize;
        assert!(off(a) <= 0.05, "{d}: the adapted baseline {a:.1} is not within 5% of 420");
        worst = worst.max(off(a));
    }
    assert!(drifted >= 4, "without the adapter most baselines are off by more than 5%: {before:?}");
    eprintln!("worst adapted baseline error {:.1}%", worst * 100.0);
    // The other outputs' record counts do not change.
    let (p, a) = (read_json(&plain.join("summary.json")), read_json(&adapted.join("summary.json")));
    assert_eq!(p["records"]["enriched"], a["records"]["enriched"]);
}
