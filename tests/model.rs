//! The embedded pipeline (`eddy replay`) against a plain, sequential
//! reference model of its documented semantics (`tests/model/reference.rs`).
//!
//! * `pipeline_matches_reference_model_at_1_and_2_workers`: random small
//!   datasets (disorder, late readings, nulls, junk, malformed lines of every
//!   kind, calibration versions, reference updates mid-stream, three spec
//!   presets), every output compared with the model;
//! * `generated_fleet_matches_reference_model`: the same on an `eddy gen` fleet;
//! * `output_record_sets_do_not_depend_on_worker_count`: -w 1, 2 and 4 give
//!   the same records;
//! * `windows_and_final_stats_match_two_pass_recomputation_from_enriched`;
//! * focused cases for documented rules the random test leaves out.

#[path = "model/compare.rs"]
mod compare;
#[path = "model/reference.rs"]
mod reference;
#[path = "model/scenario.rs"]
mod scenario;

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use eddy::core::PipelineSpec;
use eddy::gen::{generate, GenConfig};
use eddy::runtime::replay::{replay, ReplayOptions, Summary};
use eddy::runtime::workers::Workers;

use compare::{compare, read_outputs, Actual};
use reference::{Config, DatasetFiles};

/// Runs the embedded pipeline over `dataset` into `out`.
fn run_pipeline(dataset: &Path, out: &Path, spec: &PipelineSpec, workers: usize) -> (Summary, Actual) {
    let opts = ReplayOptions {
        dataset: dataset.to_path_buf(),
        out: out.to_path_buf(),
        spec: spec.clone(),
        workers: Workers::threads(workers),
        speed: None,
    };
    let summary = replay(&opts, |_| {}).unwrap_or_else(|e| panic!("replay failed: {e}"));
    (summary, read_outputs(out))
}

/// Writes `files` to a temporary dataset, runs the pipeline at each worker
/// count and compares with the model.
fn check_against_model(
    files: &DatasetFiles,
    spec: &PipelineSpec,
    cfg: &Config,
    workers: &[usize],
) -> Result<(), String> {
    let expected = reference::run(cfg, files);
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("dataset");
    files.write(&ds).expect("writing the dataset");
    for &w in workers {
        let out = tmp.path().join(format!("out-w{w}"));
        let (_, actual) = run_pipeline(&ds, &out, spec, w);
        compare(&expected, &actual).map_err(|e| format!("at -w {w}:\n{e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        max_shrink_iters: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every output of the pipeline equals the reference model's, at one
    /// and at two workers.
    #[test]
    fn pipeline_matches_reference_model_at_1_and_2_workers(s in scenario::scenario()) {
        let (files, spec, cfg) = s.render();
        check_against_model(
            &files,
            &spec,
            &cfg,
            &[1, 2],
                    )
        .map_err(|e| TestCaseError::fail(format!("{e}\n(preset {})", s.preset)))?;
    }
}

fn gen_fleet(dir: &Path) {
    let cfg = GenConfig { devices: 30, hours: 12.0, ..Default::default() };
    generate(&cfg, dir, &mut |_, _| {}).expect("generating the fleet");
}

/// The documented semantics hold on a generated fleet too (its calibration
/// versions, device moves, rule changes, unknown devices and junk).
#[test]
fn generated_fleet_matches_reference_model() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("fleet");
    gen_fleet(&ds);
    let files = DatasetFiles::read(&ds).unwrap();
    let r = check_against_model(&files, &PipelineSpec::builtin(), &Config::documented_defaults(), &[2]);
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The sorted lines of every output file.
fn record_sets(out: &Path) -> Vec<(String, Vec<String>)> {
    eddy::runtime::replay::OUTPUTS
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(out.join(format!("{name}.jsonl"))).unwrap();
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            (name.to_string(), lines)
        })
        .collect()
}

/// `-w` changes nothing but speed: the same records in every output.
#[test]
fn output_record_sets_do_not_depend_on_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("fleet");
    gen_fleet(&ds);
    let spec = PipelineSpec::builtin();
    let mut base: Option<(Summary, Vec<(String, Vec<String>)>)> = None;
    for w in [1, 2, 4] {
        let out = tmp.path().join(format!("out-w{w}"));
        let (summary, _) = run_pipeline(&ds, &out, &spec, w);
        let sets = record_sets(&out);
        match &base {
            None => base = Some((summary, sets)),
            Some((s1, sets1)) => {
                let mut diffs = Vec::new();
                for ((name, a), (_, b)) in sets1.iter().zip(&sets) {
                    if a != b {
                        let only1: Vec<_> = a.iter().filter(|l| b.binary_search(l).is_err()).take(3).collect();
                        let only_w: Vec<_> = b.iter().filter(|l| a.binary_search(l).is_err()).take(3).collect();
                        diffs.push(format!(
                            "{name}.jsonl: {} records at -w 1, {} at -w {w}\n  only at -w 1: {only1:#?}\n  only at -w {w}: {only_w:#?}",
                            a.len(),
                            b.len()
                        ));
                    }
                }
                for (k, x, y) in [
                    ("valid", s1.valid, summary.valid),
                    ("late", s1.late, summary.late),
                    ("deadletter", s1.deadletter, summary.deadletter),
                    ("junk", s1.junk, summary.junk),
                    ("lines", s1.lines, summary.lines),
                ] {
                    if x != y {
                        diffs.push(format!("summary.{k}: {x} at -w 1, {y} at -w {w}"));
                    }
                }
                if s1.records != summary.records || s1.junk_by_device != summary.junk_by_device {
                    diffs.push(format!(
                        "summary records/junk_by_device differ:\n  -w 1: {:?} {:?}\n  -w {w}: {:?} {:?}",
                        s1.records, s1.junk_by_device, summary.records, summary.junk_by_device
                    ));
                }
                assert!(diffs.is_empty(), "{}", diffs.join("\n"));
            }
        }
    }
}

/// Windows and the final statistics snapshot of each key, recomputed with
/// two-pass arithmetic from `enriched.jsonl` (every non-late reading, in
/// each device's arrival order), agree within 1e-9 relative.
#[test]
fn windows_and_final_stats_match_two_pass_recomputation_from_enriched() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("fleet");
    gen_fleet(&ds);
    let out = tmp.path().join("out");
    let (_, actual) = run_pipeline(&ds, &out, &PipelineSpec::builtin(), 2);
    let cfg = Config::documented_defaults();
    assert!(!actual.enriched.is_empty());

    // Usable values per key, in arrival order.
    let not_channels = ["device_id", "ts", "raw", "device", "junk"];
    let mut per_key: std::collections::BTreeMap<(String, String), Vec<(i64, f64)>> = Default::default();
    for e in &actual.enriched {
        let d = e["device_id"].as_str().unwrap().to_string();
        let ts = e["ts"].as_i64().unwrap();
        for (k, v) in e.as_object().unwrap() {
            if not_channels.contains(&k.as_str()) {
                continue;
            }
            if let Some(x) = v.as_f64() {
                per_key.entry((d.clone(), k.clone())).or_default().push((ts, x));
            }
        }
    }

    // Windows.
    let mut windows: Vec<Value> = Vec::new();
    let mut acc: std::collections::BTreeMap<(String, String, i64), Vec<f64>> = Default::default();
    for ((d, c), vals) in &per_key {
        for (ts, x) in vals {
            for s in reference::window_starts(&cfg, *ts) {
                acc.entry((d.clone(), c.clone(), s)).or_default().push(*x);
            }
        }
    }
    for ((d, c, s), xs) in acc {
        let n = xs.len() as f64;
        windows.push(serde_json::json!({
            "device_id": d, "channel": c, "window_start": s, "window_end": s + cfg.window_size_ms,
            "count": xs.len(), "mean": xs.iter().sum::<f64>() / n,
            "min": xs.iter().copied().fold(f64::INFINITY, f64::min),
            "max": xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }));
    }
    let r = compare::compare_keyed("windows.jsonl vs two-pass recomputation", &windows, &actual.windows, |v| {
        (
            v["device_id"].as_str().unwrap_or("").to_string(),
            v["channel"].as_str().unwrap_or("").to_string(),
            v["window_start"].as_i64(),
        )
    });

    // The final snapshot of each key is its last stats record.
    let mut last: std::collections::BTreeMap<(String, String), &Value> = Default::default();
    for s in &actual.stats {
        last.insert((s["device_id"].as_str().unwrap().to_string(), s["channel"].as_str().unwrap().to_string()), s);
    }
    let mut report = compare::Report::new("final stats vs two-pass recomputation");
    let keys: std::collections::BTreeSet<_> = per_key.keys().chain(last.keys()).cloned().collect();
    for k in keys {
        let (Some(vals), Some(act)) = (per_key.get(&k), last.get(&k)) else {
            report.add(format!(
                "{k:?}: only in one of enriched.jsonl ({}) and stats.jsonl ({})",
                per_key.contains_key(&k),
                last.contains_key(&k)
            ));
            continue;
        };
        let (mut exp, scale) = reference::stats_of(&cfg, vals);
        exp.insert("device_id".into(), serde_json::json!(k.0));
        exp.insert("channel".into(), serde_json::json!(k.1));
        let mut fields = Vec::new();
        let mut e2 = exp.clone();
        let mut a2 = act.as_object().unwrap().clone();
        e2.remove("trend_per_hour");
        a2.remove("trend_per_hour");
        compare::diff_value("", &Value::Object(e2), &Value::Object(a2), &mut fields);
        match (exp["trend_per_hour"].as_f64(), act["trend_per_hour"].as_f64()) {
            (Some(x), Some(y)) => {
                let tol = 1e-9 * x.abs().max(1.0) + 1e-9 * scale;
                if (x - y).abs() > tol {
                    fields.push(format!(".trend_per_hour: expected {x}, actual {y} (tolerance {tol:e})"));
                }
            }
            (None, None) => {}
            (x, y) => fields.push(format!(".trend_per_hour: expected {x:?}, actual {y:?}")),
        }
        if !fields.is_empty() {
            report.records(&format!("{k:?}"), &fields, Some(&Value::Object(exp)), Some(act));
        }
    }
    let errs: Vec<String> = [r, report.finish()].into_iter().filter_map(Result::err).collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// A dataset of `readings` lines (joined with `\n`) and optional `updates.jsonl`.
fn small_dataset(readings: &[String], updates: &[Value]) -> DatasetFiles {
    DatasetFiles {
        readings: (readings.join("\n") + "\n").into_bytes(),
        updates_jsonl: (!updates.is_empty()).then(|| updates.iter().map(|u| u.to_string() + "\n").collect::<String>()),
        ..Default::default()
    }
}

/// The rule order is documented in `parse_line`: device_id, then ts, then
/// the channel rules, whatever the order of the fields in the line. A bad
/// channel field written before `device_id` or `ts` must not hide them.
#[test]
fn dead_letter_reason_follows_rule_precedence_not_field_order() {
    let t = scenario::T0;
    let lines = vec![
        format!(r#"{{"pm25":"x","device_id":"d-1","ts":{t}}}"#),
        format!(r#"{{"junk":1,"device_id":"d-1","ts":{t}}}"#),
        format!(r#"{{"device_id":"d-1","pm25":"x","ts":{t}}}"#),
        format!(r#"{{"pm25":"x","device_id":7,"ts":{t}}}"#),
        format!(r#"{{"device_id":"d-1","co2":true,"ts":"soon"}}"#),
        format!(r#"{{"ts":{t},"raw":{{}},"device_id":"d-1"}}"#),
    ];
    let files = small_dataset(&lines, &[]);
    let cfg = Config::documented_defaults();
    let expected = reference::run(&cfg, &files);
    let codes: Vec<&str> = expected.deadletter.iter().map(|v| v["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["invalid_value", "reserved_field", "invalid_value", "invalid_device_id", "invalid_ts", "reserved_field"],
        "the model encodes the documented precedence"
    );
    if let Err(e) = check_against_model(&files, &PipelineSpec::builtin(), &cfg, &[1]) {
        panic!("{e}");
    }
}

/// A rule deleted while its event is active ends the event at the device's
/// next on-time reading with reason `rule_removed`. The end carries the
/// thresholds last in force for the event (`detect.rs`: the rule as last
/// applied), so `rise_above`/`fall_below` are numbers, and the line reads back
/// as an `EventRecord`. Here the rule is also changed while active (the event
/// stays; the new thresholds apply from the next reading).
#[test]
fn rule_removed_end_carries_the_thresholds_last_in_force() {
    let t = scenario::T0;
    let m = 60_000;
    let lines = vec![
        format!(r#"{{"device_id":"d-1","ts":{t},"pm25":50}}"#),
        format!(r#"{{"device_id":"d-1","ts":{},"pm25":40}}"#, t + 5 * m),
        format!(r#"{{"device_id":"d-1","ts":{},"co2":500}}"#, t + 20 * m),
    ];
    let updates = [
        serde_json::json!({"ts": t + 3 * m, "table": "rules", "op": "upsert",
            "row": {"rule_id": "pm25-high", "channel": "pm25", "rise_above": 45, "fall_below": 30}}),
        serde_json::json!({"ts": t + 10 * m, "table": "rules", "op": "delete",
            "row": {"rule_id": "pm25-high", "device_id": "*"}}),
    ];
    let files = small_dataset(&lines, &updates);
    let cfg = Config::documented_defaults();
    let expected = reference::run(&cfg, &files);
    assert_eq!(expected.events.len(), 2, "{:?}", expected.events);
    let end = &expected.events[1];
    assert_eq!(end["reason"], "rule_removed");
    assert_eq!(end["value"], Value::Null);
    assert_eq!((end["rise_above"].as_f64(), end["fall_below"].as_f64()), (Some(45.0), Some(30.0)));
    if let Err(e) = check_against_model(&files, &PipelineSpec::builtin(), &cfg, &[1, 2]) {
        panic!("{e}");
    }
}

/// The ends of the valid `ts` range (0 and 2^53 − 1) go through every job
/// like any other time: windows, snapshots, lateness and reference updates.
#[test]
fn extreme_valid_timestamps_follow_the_model() {
    let max = reference::MAX_TS;
    let lines = vec![
        r#"{"device_id":"d-1","ts":0,"pm25":40}"#.to_string(),
        r#"{"device_id":"d-1","ts":5,"pm25":10,"co2":1200}"#.to_string(),
        format!(r#"{{"device_id":"d-2","ts":{max},"pm25":50}}"#),
        format!(r#"{{"device_id":"d-2","ts":{},"pm25":20}}"#, max - 600_000),
        r#"{"device_id":"d-1","ts":1000,"pm25":1}"#.to_string(),
        format!(r#"{{"device_id":"d-2","ts":{max},"co2":2000,"pm25":60}}"#),
        format!(r#"{{"device_id":"d-1","ts":{},"pm25":36}}"#, max - 1),
    ];
    let updates = [
        serde_json::json!({"ts": 0, "table": "calibration", "op": "upsert",
            "row": {"device_id": "d-1", "channel": "pm25", "gain": 2, "offset": 1}}),
        serde_json::json!({"ts": max, "table": "rules", "op": "upsert",
            "row": {"rule_id": "pm25-high", "device_id": "d-2", "channel": "pm25",
                    "rise_above": 55, "fall_below": 45}}),
    ];
    let files = small_dataset(&lines, &updates);
    if let Err(e) = check_against_model(&files, &PipelineSpec::builtin(), &Config::documented_defaults(), &[1, 2]) {
        panic!("{e}");
    }
}
