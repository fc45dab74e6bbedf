//! The embedded pipeline (`eddy replay`) against a plain, sequential
//! reference model of its documented semantics (`tests/model/reference.rs`;
//! the random datasets are in `tests/model/scenario.rs`, the comparison and
//! its diffs in `tests/model/compare.rs`).
//!
//! * `pipeline_matches_reference_model_at_1_and_2_workers`: random small
//!   datasets (disorder, late readings, nulls, junk, extra channels,
//!   malformed lines of every kind, calibration versions, thresholds,
//!   reference updates mid-stream, rogue device clocks, four spec presets
//!   with their own quorum, warm-up and `max_future`), every output compared
//!   with the model, record by record, plus the documented line order;
//! * `generated_fleet_matches_reference_model`: the same on an `eddy gen` fleet;
//! * `output_record_sets_do_not_depend_on_worker_count`: -w 1, 2 and 4;
//! * `paced_and_gzipped_replays_give_the_same_records`: `--speed` and `.gz`;
//! * `windows_and_final_stats_match_two_pass_recomputation_from_enriched`;
//! * focused cases: dead-letter precedence and field order, the thresholds of
//!   a `rule_removed` end, same-`ts` reference changes, extreme timestamps,
//!   the event-time warm-up and fleet clock, and the sample dataset with one
//!   reading dated 2100 (the example of issue 19).
//!
//! On a mismatch, the failure names the output, the key and the first
//! differing fields, with the expected and the actual line; the random test
//! also prints the (shrunk) dataset files.

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
    // `new` fills the options this test does not care about (speed, reference, …).
    let mut opts = ReplayOptions::new(dataset, out);
    opts.spec = spec.clone();
    opts.workers = Workers::threads(workers);
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
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", describe(&files, s.preset))))?;
    }
}

/// The dataset files as text, to reproduce a failure by hand.
fn describe(files: &DatasetFiles, preset: usize) -> String {
    let cut = |t: &str| match t.char_indices().nth(6000) {
        Some((i, _)) => format!("{}…\n", &t[..i]),
        None if t.is_empty() || t.ends_with('\n') => t.to_string(),
        None => format!("{t}\n(no final newline)\n"),
    };
    format!(
        "spec: preset {preset} of scenario::preset\n--- readings.jsonl\n{}--- devices.csv\n{}--- calibration.csv\n{}--- thresholds.csv\n{}--- updates.jsonl\n{}",
        cut(&String::from_utf8_lossy(&files.readings)),
        cut(files.devices_csv.as_deref().unwrap_or("")),
        cut(files.calibration_csv.as_deref().unwrap_or("")),
        cut(files.thresholds_csv.as_deref().unwrap_or("")),
        cut(files.updates_jsonl.as_deref().unwrap_or("")),
    )
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
    ["enriched", "late", "future", "deadletter", "stats", "windows", "events", "health"]
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
    let out1 = tmp.path().join("out-w1");
    let (s1, _) = run_pipeline(&ds, &out1, &spec, 1);
    let sets1 = record_sets(&out1);
    // A fleet whose clocks are fine has no future readings.
    assert!(sets1.iter().all(|(name, lines)| lines.is_empty() == (name == "future")), "every other output has records");
    let mut diffs = Vec::new();
    for w in [2, 4] {
        let out = tmp.path().join(format!("out-w{w}"));
        let (s, _) = run_pipeline(&ds, &out, &spec, w);
        diffs.extend(diff_record_sets(&sets1, &record_sets(&out), &format!("-w 1 vs -w {w}")));
        let counts = |s: &Summary| (s.valid, s.late, s.future, s.deadletter, s.junk, s.lines, s.bytes);
        if counts(&s1) != counts(&s) || s1.records != s.records || s1.junk_by_device != s.junk_by_device {
            diffs.push(format!("summary at -w 1: {s1:?}\nsummary at -w {w}: {s:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Windows and the final statistics snapshot of each key, recomputed with
/// two-pass arithmetic from `enriched.jsonl` (every on-time reading, in
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

/// The rule order is documented in `parse_line` and docs/formats.md 2.1:
/// device_id, then ts, then the channel rules (reserved name, bad value,
/// repeated field: the first broken field in the line wins), whatever the
/// order of the fields in the line. A bad channel field written before
/// `device_id` or `ts` must not hide them. (Repeated keys are only written
/// here, where each line's outcome is unambiguous.)
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
        format!(r#"{{"device_id":"d1","device_id":"d2","ts":{t}}}"#),
        r#"{"device_id":"d1","device_id":"d2"}"#.to_string(),
        format!(r#"{{"device_id":"d1","ts":{t},"pm25":1,"co2":"x","pm25":2}}"#),
        format!(r#"{{"device_id":"d1","ts":{t},"pm25":1,"pm25":2,"co2":"x"}}"#),
        format!(r#"{{"ts":{t},"ts":{t},"device_id":"d1","raw":1}}"#),
        format!(r#"{{"pm25":null,"device_id":"d1","pm25":null,"ts":{t}}}"#),
        // device_id: at most 128 bytes (not characters); 128 is valid.
        format!(r#"{{"pm25":"x","device_id":"{}","ts":{t}}}"#, "é".repeat(65)),
        format!(r#"{{"device_id":"{}","ts":{t},"pm25":3}}"#, "é".repeat(64)),
    ];
    let files = small_dataset(&lines, &[]);
    let cfg = Config::documented_defaults();
    let expected = reference::run(&cfg, &files);
    let codes: Vec<&str> = expected.deadletter.iter().map(|v| v["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "invalid_value",
            "reserved_field",
            "invalid_value",
            "invalid_device_id",
            "invalid_ts",
            "reserved_field",
            "duplicate_field",
            "missing_ts",
            "invalid_value",
            "duplicate_field",
            "duplicate_field",
            "duplicate_field",
            "invalid_device_id"
        ],
        "the model encodes the documented precedence"
    );
    if let Err(e) = check_against_model(&files, &PipelineSpec::builtin(), &cfg, &[1]) {
        panic!("{e}");
    }
}

/// A rule deleted while its event is active ends the event at the device's
/// next on-time reading with reason `rule_removed`. The end carries the
/// thresholds last in force for the event (`alerts.rs`: the rule as last
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

/// The first differences between two runs' record sets, for a message.
fn diff_record_sets(a: &[(String, Vec<String>)], b: &[(String, Vec<String>)], what: &str) -> Vec<String> {
    let mut diffs = Vec::new();
    for ((name, x), (_, y)) in a.iter().zip(b) {
        if x != y {
            let only_a: Vec<_> = x.iter().filter(|l| y.binary_search(l).is_err()).take(3).collect();
            let only_b: Vec<_> = y.iter().filter(|l| x.binary_search(l).is_err()).take(3).collect();
            diffs.push(format!(
                "{name}.jsonl: {} vs {} records ({what})\n  only in the first: {only_a:#?}\n  only in the second: {only_b:#?}",
                x.len(),
                y.len()
            ));
        }
    }
    diffs
}

/// `--speed` changes the pace, not the results (readings held back for
/// pacing must come out exactly as without pacing), and a gzipped readings
/// file gives the same records as the plain one.
#[test]
fn paced_and_gzipped_replays_give_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    let gz = tmp.path().join("gz");
    let cfg = GenConfig { devices: 30, hours: 12.0, ..Default::default() };
    generate(&cfg, &plain, &mut |_, _| {}).unwrap();
    generate(&GenConfig { gzip: true, ..cfg }, &gz, &mut |_, _| {}).unwrap();
    assert!(gz.join("readings.jsonl.gz").is_file());

    let spec = PipelineSpec::builtin();
    let base_out = tmp.path().join("out-plain");
    run_pipeline(&plain, &base_out, &spec, 1);
    let base = record_sets(&base_out);

    let gz_out = tmp.path().join("out-gz");
    run_pipeline(&gz, &gz_out, &spec, 2);
    let mut diffs = diff_record_sets(&base, &record_sets(&gz_out), "plain -w 1 vs gzip -w 2");

    // 12 hours at 200000× is about 0.2 s of pacing.
    let paced_out = tmp.path().join("out-paced");
    let mut opts = ReplayOptions::new(&plain, &paced_out);
    opts.workers = Workers::threads(2);
    opts.speed = Some(200_000.0);
    replay(&opts, |_| {}).unwrap();
    diffs.extend(diff_record_sets(&base, &record_sets(&paced_out), "unpaced -w 1 vs --speed 200000 -w 2"));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Reference changes with the same `ts` apply in file order (after the
/// file is sorted by `ts`, stably), and a reading at exactly that `ts` sees
/// all of them; one ms earlier sees none.
#[test]
fn same_ts_reference_changes_apply_in_file_order() {
    let t = scenario::T0;
    let u = t + 30 * 60_000;
    let lines = vec![
        format!(r#"{{"device_id":"a","ts":{t},"pm25":10,"co2":100}}"#),
        format!(r#"{{"device_id":"a","ts":{},"pm25":10,"co2":100}}"#, u - 1),
        format!(r#"{{"device_id":"a","ts":{u},"pm25":10,"co2":100}}"#),
        format!(r#"{{"device_id":"b","ts":{u},"pm25":10,"co2":100}}"#),
        format!(r#"{{"device_id":"a","ts":{},"pm25":10,"co2":100}}"#, u + 1),
    ];
    let up = |ts: i64, table: &str, op: &str, row: Value| serde_json::json!({"ts": ts, "table": table, "op": op, "row": row});
    let updates = [
        // Out of file order in time: sorted by ts, stably.
        up(
            u,
            "calibration",
            "upsert",
            serde_json::json!({"device_id": "a", "channel": "pm25", "gain": 2, "offset": 0}),
        ),
        up(t + 60_000, "devices", "upsert", serde_json::json!({"device_id": "a", "site": "first"})),
        up(u, "calibration", "delete", serde_json::json!({"device_id": "a", "channel": "pm25"})),
        up(
            u,
            "calibration",
            "upsert",
            serde_json::json!({"device_id": "a", "channel": "pm25", "gain": 3, "offset": 1}),
        ),
        up(u, "devices", "upsert", serde_json::json!({"device_id": "a", "zeta": 1, "alpha": null, "site": "S3"})),
        up(u, "devices", "delete", serde_json::json!({"device_id": "b"})),
        up(u, "devices", "upsert", serde_json::json!({"device_id": "b", "site": "B"})),
        up(
            u,
            "calibration",
            "upsert",
            serde_json::json!({"device_id": "a", "channel": "co2", "gain": "0.5", "offset": "1", "valid_from": u + 1}),
        ),
        up(
            u,
            "calibration",
            "upsert",
            serde_json::json!({"device_id": "a", "channel": "co2", "gain": 0.25, "offset": 0, "valid_from": u + 1}),
        ),
    ];
    let files = small_dataset(&lines, &updates);
    let cfg = Config::documented_defaults();
    let expected = reference::run(&cfg, &files);
    let pm25: Vec<f64> =
        expected.enriched.iter().filter(|e| e["device_id"] == "a").map(|e| e["pm25"].as_f64().unwrap()).collect();
    assert_eq!(pm25, [10.0, 10.0, 31.0, 31.0], "the model: gain 3, offset 1 from {u}");
    if let Err(e) = check_against_model(&files, &PipelineSpec::builtin(), &cfg, &[1, 2]) {
        panic!("{e}");
    }
}

/// A dataset of `readings` lines run with an ingest spec of its own: the
/// model's verdicts (`L` late, `F` future, `.` on time, per valid reading in
/// line order) are `verdicts`, and the pipeline agrees with the model.
fn check_event_time(ingest_toml: &str, cfg: &Config, lines: &[String], verdicts: &str) {
    let files = small_dataset(lines, &[]);
    let expected = reference::run(cfg, &files);
    let (_, readings, _) = reference::ingest(cfg, &files.readings);
    let got: String = readings
        .iter()
        .map(|r| {
            if r.future {
                'F'
            } else if r.late {
                'L'
            } else {
                '.'
            }
        })
        .collect();
    assert_eq!(got, verdicts, "the model's verdicts (L late, F future, . on time)");
    assert_eq!(expected.summary.future as usize, verdicts.matches('F').count());
    let spec = scenario::spec_of(&[("ingest.toml", ingest_toml)]);
    if let Err(e) = check_against_model(&files, &spec, cfg, &[1, 2]) {
        panic!("{e}");
    }
}

/// The warm-up and the fleet clock, on the documented defaults (quorum 3:
/// the warm-up ends at the fifth device). A first line dated 75 years
/// ahead is held, then set aside as future, and moves nothing; a clock 3 h
/// ahead is future; a clock in 1970 is late; the others' late readings stay late.
#[test]
fn warm_up_and_fleet_clock_set_rogue_clocks_aside_from_the_first_line() {
    let t = scenario::T0;
    let m = 60_000;
    let y75 = 75 * 365 * 24 * 60 * m;
    let lines = vec![
        reading_at("rogue-future", t + y75),
        reading_at("a", t),
        reading_at("b", t + 1000),
        reading_at("c", t + 2000),
        reading_at("a", t + m),
        reading_at("d", t + 3000), // the fifth device: the warm-up ends here
        reading_at("rogue-1970", 5_000),
        reading_at("b", t + 2 * m),
        reading_at("rogue-ahead", t + 2 * m + 3 * 60 * m),
        reading_at("c", t + 3 * m),
        reading_at("rogue-future", t + y75 + m),
        reading_at("a", t + 4 * m),
        reading_at("rogue-1970", 65_000),
        reading_at("b", t + 20 * m),
        reading_at("d", t + 5 * m), // 15 min below b: late
    ];
    check_event_time("kind = \"ingest\"\n", &Config::documented_defaults(), &lines, "F.....L.F.F.L.L");
}

/// The bounds of the rule with a spec of its own (quorum 2, a warm-up of
/// four readings, `max_future` 5 min): the warm-up ends on its count with
/// two devices (k = 1, nothing is future below three devices); a reading
/// exactly `max_future` ahead of the fleet clock is on time, one ms more is
/// future; one device far ahead is future, two devices that agree move the
/// fleet clock (k = 2), and the watermark follows them.
#[test]
fn fleet_clock_bounds_follow_the_model() {
    let t = scenario::T0;
    let m = 60_000;
    let mut cfg = Config::documented_defaults();
    cfg.max_future_ms = 5 * m;
    cfg.quorum = 2;
    cfg.warmup = 4;
    let lines = vec![
        reading_at("a", t),
        reading_at("a", t + 1000),
        reading_at("b", t + 2000),
        reading_at("b", t + 3000), // the fourth reading: the warm-up ends, two devices: no clock yet
        reading_at("c", t + 5 * m + 3000), // the third device: the clock starts, Q = t + 3 s
        reading_at("c", t + 5 * m + 4000),
        reading_at("a", t + m),      // Q = t + 1 min
        reading_at("d", t + 60 * m), // Q = c's t + 5 min 4 s
        reading_at("d", t + 61 * m),
        reading_at("e", t + 62 * m), // future, then d and e agree: Q = t + 61 min
        reading_at("a", t + 2 * m),
    ];
    let ingest = "kind = \"ingest\"\nmax_future = \"5m\"\nquorum = 2\nwarmup = 4\n";
    check_event_time(ingest, &cfg, &lines, ".....F.FFF.");
}

/// A device's latest `ts` is its most recent one (docs/decisions.md): with
/// quorum 2, a device that sent one reading 75 years ahead is forgotten at
/// its next reading, so a second device's glitch later does not make two
/// devices "agree" on 2100 (with the largest `ts`, it would move the fleet
/// clock and make every later reading late).
#[test]
fn a_device_that_sent_one_wrong_ts_is_forgotten_at_its_next_reading() {
    let t = scenario::T0;
    let m = 60_000;
    let y75 = 75 * 365 * 24 * 60 * m;
    let mut cfg = Config::documented_defaults();
    cfg.quorum = 2;
    let lines = vec![
        reading_at("a", t),
        reading_at("b", t + 1000),
        reading_at("c", t + 2000), // the third device: the warm-up ends
        reading_at("a", t + y75),
        reading_at("a", t + m),
        reading_at("b", t + y75 + 1000),
        reading_at("c", t + 2 * m),
        reading_at("b", t + 3 * m),
    ];
    check_event_time("kind = \"ingest\"\nquorum = 2\n", &cfg, &lines, "...F.F..");
}

/// The input ends during the warm-up (three devices, the defaults): the held
/// readings are classified then. Three devices are too few for the fleet
/// clock (it waits for 2·quorum − 1 = 5): a first line 75 years ahead is not
/// told apart, and the lateness rule alone applies, as before the clock.
#[test]
fn input_ending_in_the_warm_up_is_classified_at_its_end() {
    let t = scenario::T0;
    let m = 60_000;
    let lines = vec![
        reading_at("rogue-future", t + 75 * 365 * 24 * 60 * m),
        reading_at("a", t),
        reading_at("b", t + 1000),
        reading_at("b", 5_000),
        reading_at("a", t + m),
    ];
    check_event_time("kind = \"ingest\"\n", &Config::documented_defaults(), &lines, ".LLLL");
}

/// A reading line with a pm25 and a co2 value (alerts start and end).
fn reading_at(device: &str, ts: i64) -> String {
    format!(r#"{{"device_id":"{device}","ts":{ts},"pm25":{},"co2":{}}}"#, 20 + ts % 31, 700 + ts % 601)
}

/// The example of issue 19: the sample dataset with one copy of one of its
/// readings dated 2100 (appended, and as the first line). With the rule
/// before the fleet clock, almost every reading came out late; now the copy
/// is future and the model and the pipeline agree on everything else.
#[test]
fn sample_with_a_reading_dated_2100_follows_the_model() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample");
    let files = DatasetFiles::read(&sample).unwrap();
    let text = String::from_utf8(files.readings.clone()).unwrap();
    let first = text.lines().next().unwrap();
    let mut rogue: Value = serde_json::from_str(first).unwrap();
    rogue["ts"] = serde_json::json!(4_102_444_800_000i64);
    let cfg = Config::documented_defaults();
    let base = reference::run(&cfg, &files);
    for (name, readings) in [("appended", format!("{text}{rogue}\n")), ("first line", format!("{rogue}\n{text}"))] {
        let f = DatasetFiles { readings: readings.into_bytes(), ..files.clone() };
        let expected = reference::run(&cfg, &f);
        assert_eq!(expected.summary.future, 1, "{name}");
        assert_eq!(expected.summary.late, base.summary.late, "{name}: late readings");
        assert_eq!(expected.enriched.len(), base.enriched.len(), "{name}: enriched readings");
        if let Err(e) = check_against_model(&f, &PipelineSpec::builtin(), &cfg, &[2]) {
            panic!("{name}: {e}");
        }
    }
}
