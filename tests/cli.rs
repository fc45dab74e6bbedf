//! End-to-end tests of `eddy replay`, `eddy gen` and `eddy check` through the CLI.

mod support;

use serde_json::{json, Value};
use support::*;

fn find<'a>(records: &'a [Value], device: &str, ts: i64) -> &'a Value {
    records
        .iter()
        .find(|r| r["device_id"] == device && r["ts"] == ts)
        .unwrap_or_else(|| panic!("no record for {device} at {ts} in {records:#?}"))
}

#[test]
fn every_dead_letter_reason_is_reported_with_line_and_original_text() {
    let d = Data::new();
    let lines: Vec<String> = vec![
        reading("d1", T0, &[("pm25", json!(10))]),
        "not json at all".into(),
        "{\"device_id\":\"d1\",\"ts\":1".into(),
        "[1,2,3]".into(),
        "{\"ts\":1767225600000,\"pm25\":1}".into(),
        "{\"device_id\":\"\",\"ts\":1767225600000}".into(),
        "{\"device_id\":42,\"ts\":1767225600000}".into(),
        "{\"device_id\":\"d1\",\"pm25\":1}".into(),
        "{\"device_id\":\"d1\",\"ts\":\"2026-01-01\"}".into(),
        "{\"device_id\":\"d1\",\"ts\":1.5}".into(),
        "{\"device_id\":\"d1\",\"ts\":1767225600000,\"pm25\":\"high\"}".into(),
        "{\"device_id\":\"d1\",\"ts\":1767225600000,\"co2\":true}".into(),
        "{\"device_id\":\"d1\",\"ts\":1767225600000,\"junk\":1}".into(),
        "{\"device_id\":\"d1\",\"ts\":1767225600000,\"pm25\":1,\"pm25\":2}".into(),
        "".into(),
    ];
    d.readings(&lines);
    let summary = d.replay(1);
    let dead = d.output("deadletter");
    let expect = [
        (2, "invalid_json"),
        (3, "invalid_json"),
        (4, "not_an_object"),
        (5, "missing_device_id"),
        (6, "invalid_device_id"),
        (7, "invalid_device_id"),
        (8, "missing_ts"),
        (9, "invalid_ts"),
        (10, "invalid_ts"),
        (11, "invalid_value"),
        (12, "invalid_value"),
        (13, "reserved_field"),
        (14, "duplicate_field"),
        (15, "empty_line"),
    ];
    assert_eq!(dead.len(), expect.len(), "{dead:#?}");
    for (line_no, code) in expect {
        let r = dead.iter().find(|r| r["line_no"] == line_no).unwrap_or_else(|| panic!("line {line_no} not dead"));
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.starts_with(&format!("{code}: ")), "line {line_no}: {reason}");
        assert_eq!(r["line"], lines[line_no as usize - 1].as_str(), "the original text is kept");
    }
    // The reason names the field.
    let r = dead.iter().find(|r| r["line_no"] == 11).unwrap();
    assert!(r["reason"].as_str().unwrap().contains("`pm25`"));
    assert_eq!(summary["deadletter"], 14);
    assert_eq!(summary["valid"], 1);
    assert_eq!(summary["records"]["enriched"], 1, "the run goes on after bad lines");
}

/// Replaces lines `at` (1-based) of `lines` with `by`.
fn with_lines(lines: &[String], at: &[usize], by: &str) -> Vec<String> {
    let mut l = lines.to_vec();
    for i in at {
        l[i - 1] = by.to_string();
    }
    l
}

/// A 2 MiB line and a 129-byte `device_id` between valid lines: two dead
/// letters with their reasons and line numbers, the long one holding its
/// first 1 KiB (in the raw archive too), and every other output exactly as
/// when the two lines are ordinary bad lines.
#[test]
fn a_2_mib_line_and_a_129_byte_device_id_are_dead_letters_and_the_rest_is_unaffected() {
    let head = format!(r#"{{"device_id":"d1","ts":{},"pm25":5,"note":""#, T0 + 2 * MIN);
    let long = format!("{head}{}\"}}", "x".repeat((2 << 20) - head.len() - 2));
    assert_eq!(long.len(), 2 << 20);
    let lines: Vec<String> = vec![
        reading("d1", T0, &[("pm25", json!(10))]),
        reading("d2", T0 + MIN, &[("pm25", json!(2000)), ("co2", json!(500))]),
        long.clone(),
        reading("d1", T0 + 3 * MIN, &[("pm25", json!(12))]),
        reading(&"d".repeat(129), T0 + 3 * MIN, &[("pm25", json!(1))]),
        reading(&"e".repeat(128), T0 + 4 * MIN, &[("pm25", json!(3))]),
        reading("d2", T0 + 70 * MIN, &[("pm25", json!(30))]),
    ];
    let d = Data::new();
    d.readings(&lines);
    let summary = d.replay(1);
    assert_eq!((&summary["lines"], &summary["valid"], &summary["deadletter"]), (&json!(7), &json!(5), &json!(2)));
    let dead = d.output("deadletter");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert_eq!(dead[0]["line_no"], 3);
    assert_eq!(
        dead[0]["reason"],
        "line_too_long: the line is 2097152 bytes long, more than the limit of 1048576 bytes (max_line)"
    );
    assert_eq!(dead[0]["line"], long[..1024]);
    assert_eq!(dead[1]["line_no"], 5);
    assert_eq!(dead[1]["reason"], "invalid_device_id: field `device_id` is longer than 128 bytes (129 bytes)");
    assert_eq!(dead[1]["line"], lines[4].as_str());
    // 128 bytes is a valid id.
    assert_eq!(d.output("enriched").iter().filter(|r| r["device_id"] == "e".repeat(128).as_str()).count(), 1);
    // The raw archive keeps every line at its position, the long one cut.
    let raw = eddy::parquet::read_raw_archive(&d.out().join("raw")).unwrap();
    let raw: Vec<(u64, Vec<u8>)> = raw.into_iter().map(|r| (r.offset, r.bytes)).collect();
    assert_eq!(raw.len(), 7);
    for (i, (offset, bytes)) in raw.iter().enumerate() {
        assert_eq!(*offset, i as u64 + 1);
        let want = if i == 2 { &long.as_bytes()[..1024] } else { lines[i].as_bytes() };
        assert_eq!(&bytes[..], want, "raw line {offset}");
    }
    // The same dataset with two ordinary bad lines in their places gives the same outputs.
    let control = Data::new();
    control.readings(&with_lines(&lines, &[3, 5], "not json"));
    control.replay(1);
    let (mut got, mut want) = (output_sets(&d.out()), output_sets(&control.out()));
    assert_eq!(want.remove("deadletter").map(|d| d.len()), Some(2));
    got.remove("deadletter");
    assert_eq!(got, want);
}

/// `max_line` comes from the ingest spec: a line of exactly the limit is
/// read, one byte more is a dead letter holding the first `max_line` bytes
/// (the limit is below 1 KiB); the `\r` of a CRLF line does not count.
#[test]
fn max_line_comes_from_the_spec() {
    let exactly = |n: usize, ts: i64| {
        let base = reading("d1", ts, &[("p", json!(1))]).len() - 1;
        reading("d1", ts, &[(&"p".repeat(n - base), json!(1))])
    };
    let lines = vec![
        exactly(200, T0),
        exactly(201, T0 + MIN),
        format!("{}\r", exactly(200, T0 + 2 * MIN)),
        reading("d1", T0 + 3 * MIN, &[("pm25", json!(4))]),
    ];
    assert_eq!((lines[0].len(), lines[1].len(), lines[2].len()), (200, 201, 201));
    let spec = [("ingest.toml", "kind = \"ingest\"\nmax_line = \"200B\"\n")];
    let d = Data::new();
    d.readings(&lines);
    let summary = d.replay_with_specs(&spec);
    assert_eq!((&summary["valid"], &summary["deadletter"]), (&json!(3), &json!(1)));
    let dead = d.output("deadletter");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["line_no"], 2);
    assert_eq!(
        dead[0]["reason"],
        "line_too_long: the line is 201 bytes long, more than the limit of 200 bytes (max_line)"
    );
    assert_eq!(dead[0]["line"], lines[1][..200]);
    // The default limit reads them all.
    let default = Data::new();
    default.readings(&lines);
    assert_eq!(default.replay(1)["deadletter"], 0);
}

#[test]
fn late_readings_are_classified_against_the_largest_earlier_ts() {
    let d = Data::new();
    d.readings(&[
        reading("a", T0 + 30 * MIN, &[("pm25", json!(10))]),
        reading("b", T0 + 20 * MIN, &[("pm25", json!(11))]), // exactly 10 min below: on time
        reading("a", T0 + 19 * MIN, &[("pm25", json!(12))]), // 11 min below: late
        "garbage".into(),                                    // dead letters do not move the watermark
        reading("b", T0 + 60 * MIN, &[("pm25", json!(13))]),
        reading("a", T0 + 45 * MIN, &[("pm25", json!(14))]), // 15 min below: late
        reading("a", T0 + 50 * MIN, &[("pm25", json!(15))]), // 10 min below: on time
    ]);
    let s = d.replay(1);
    assert_eq!(s["valid"], 6);
    assert_eq!(s["late"], 2);
    let late = d.output("late");
    let mut late_ts: Vec<i64> = late.iter().map(|r| r["ts"].as_i64().unwrap()).collect();
    late_ts.sort();
    assert_eq!(late_ts, vec![T0 + 19 * MIN, T0 + 45 * MIN]);
    assert!(late[0]["line_no"].as_u64().is_some());
    let enriched = d.output("enriched");
    assert_eq!(enriched.len(), 4);
    assert!(enriched.iter().all(|e| e["ts"] != T0 + 19 * MIN && e["ts"] != T0 + 45 * MIN));
    // Late readings stay out of windows and statistics.
    let windows = d.output("windows");
    let total: u64 = windows.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 4);
}

#[test]
fn lateness_comes_from_the_spec() {
    let d = Data::new();
    d.readings(&[reading("a", T0 + 30 * MIN, &[]), reading("a", T0 + 19 * MIN, &[])]);
    let summary = d.replay_with_specs(&[("ingest.toml", "kind = \"ingest\"\nlateness = \"15m\"\n")]);
    assert_eq!(summary["late"], 0);
}

#[test]
fn junk_values_are_flagged_excluded_and_counted_per_device() {
    let d = Data::new();
    d.file("calibration.csv", "device_id,channel,gain,offset\na,hum,2,0\n");
    d.readings(&[
        reading("a", T0, &[("pm25", json!(5000)), ("hum", json!(140)), ("co2", json!(500))]),
        reading("a", T0 + MIN, &[("pm25", json!(-5)), ("temp", json!(21))]),
        reading("b", T0 + MIN, &[("pm25", json!(1000)), ("temp", json!(-40))]), // the bounds are valid
        reading("b", T0 + 2 * MIN, &[("other", json!(-1e9))]),                  // other channels are unbounded
    ]);
    let s = d.replay(1);
    assert_eq!(s["junk"], 2);
    assert_eq!(s["junk_by_device"], json!({"a": 2}));
    let e = d.output("enriched");
    let first = find(&e, "a", T0);
    assert_eq!(first["junk"], json!(["pm25", "hum"]), "junk channels in the order received");
    assert_eq!(first["pm25"], Value::Null);
    assert_eq!(first["hum"], Value::Null, "no calibration applies to a junk value");
    assert_eq!(first["raw"], json!({}));
    assert_eq!(first["co2"], 500.0);
    assert_eq!(find(&e, "b", T0 + MIN)["junk"], json!([]));
    // A junk value reaches no statistic or window.
    let windows = d.output("windows");
    assert!(!windows.iter().any(|w| w["device_id"] == "a" && w["channel"] == "pm25"), "{windows:#?}");
    let stats = d.output("stats");
    assert!(stats.iter().all(|s| !(s["device_id"] == "a" && s["channel"] == "hum")));
}

#[test]
fn junk_ranges_come_from_the_spec() {
    let d = Data::new();
    d.readings(&[reading("a", T0, &[("pm25", json!(900)), ("ref_pm25", json!(-1))])]);
    let summary = d.replay_with_specs(&[(
        "ingest.toml",
        "kind = \"ingest\"\n[ranges]\npm25 = { min = 0, max = 500 }\nref_pm25 = { min = 0 }\n",
    )]);
    assert_eq!(summary["junk"], 1);
    assert_eq!(d.output("enriched")[0]["junk"], json!(["pm25", "ref_pm25"]));
}

#[test]
fn calibration_applies_as_of_valid_from_including_a_mid_stream_update() {
    let d = Data::new();
    d.file("devices.csv", "device_id,site,owner\na,s1,o1\n");
    // gain 2 since forever; gain 3 from T0+60min.
    d.file(
        "calibration.csv",
        &format!("device_id,channel,gain,offset,valid_from\na,pm25,2,1,\na,pm25,3,0,{}\n", T0 + 60 * MIN),
    );
    // An update at T0+120min: gain 10 (valid from its ts); and the device moves site.
    d.file(
        "updates.jsonl",
        &format!(
            "{}\n{}\n",
            json!({"ts": T0 + 120 * MIN, "table": "calibration", "op": "upsert", "row": {"device_id": "a", "channel": "pm25", "gain": 10, "offset": 0}}),
            json!({"ts": T0 + 120 * MIN, "table": "devices", "op": "upsert", "row": {"device_id": "a", "site": "s2", "owner": "o1"}})
        ),
    );
    d.readings(&[
        reading("a", T0 + 30 * MIN, &[("pm25", json!(1)), ("co2", json!(400))]),
        reading("a", T0 + 90 * MIN, &[("pm25", json!(1))]),
        reading("a", T0 + 125 * MIN, &[("pm25", json!(1))]),
        reading("a", T0 + 118 * MIN, &[("pm25", json!(1))]), // arrives after the update, but its ts is before it
        reading("a", T0 + 130 * MIN, &[("pm25", json!(1))]),
    ]);
    for w in [1, 2] {
        d.replay(w);
        let e = d.output("enriched");
        assert_eq!(find(&e, "a", T0 + 30 * MIN)["pm25"], 3.0);
        assert_eq!(find(&e, "a", T0 + 30 * MIN)["raw"], json!({"pm25": 1.0}), "raw lists calibrated channels");
        assert_eq!(find(&e, "a", T0 + 30 * MIN)["co2"], 400.0, "an uncalibrated channel passes through");
        assert_eq!(find(&e, "a", T0 + 90 * MIN)["pm25"], 3.0);
        assert_eq!(find(&e, "a", T0 + 130 * MIN)["pm25"], 10.0);
        assert_eq!(find(&e, "a", T0 + 125 * MIN)["pm25"], 10.0);
        assert_eq!(find(&e, "a", T0 + 118 * MIN)["pm25"], 3.0, "as of event time, whatever the arrival order");
        assert_eq!(find(&e, "a", T0 + 118 * MIN)["device"]["site"], "s1");
        assert_eq!(find(&e, "a", T0 + 130 * MIN)["device"]["site"], "s2");
    }
}

#[test]
fn unknown_devices_are_enriched_with_nothing_and_never_dropped() {
    let d = Data::new();
    d.file("devices.csv", "device_id,site\nknown,s1\n");
    d.file("calibration.csv", "device_id,channel,gain,offset\nknown,pm25,2,0\n");
    d.readings(&[reading("known", T0, &[("pm25", json!(5))]), reading("stranger", T0, &[("pm25", json!(5))])]);
    d.replay(2);
    let e = d.output("enriched");
    assert_eq!(e.len(), 2);
    let s = find(&e, "stranger", T0);
    assert_eq!(s["device"], Value::Null);
    assert_eq!(s["pm25"], 5.0);
    assert_eq!(s["raw"], json!({}));
    assert_eq!(find(&e, "known", T0)["device"], json!({"site": "s1"}));
}

#[test]
fn a_device_deleted_mid_stream_loses_its_context_from_the_update_on() {
    let d = Data::new();
    d.file("devices.csv", "device_id,site\na,s1\n");
    d.file(
        "updates.jsonl",
        &format!("{}\n", json!({"ts": T0 + 10 * MIN, "table": "devices", "op": "delete", "row": {"device_id": "a"}})),
    );
    d.readings(&[reading("a", T0, &[]), reading("a", T0 + 10 * MIN, &[])]);
    d.replay(1);
    let e = d.output("enriched");
    assert_eq!(find(&e, "a", T0)["device"], json!({"site": "s1"}));
    assert_eq!(find(&e, "a", T0 + 10 * MIN)["device"], Value::Null);
}

#[test]
fn spec_errors_name_the_file_and_the_key() {
    let d = Data::new();
    d.readings(&[reading("a", T0, &[])]);
    let jobs = d.root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let cases = [
        ("stats.toml", "kind = \"stats\"\nalpha = 1.5\n", "key `alpha`"),
        ("stats.toml", "kind = \"stats\"\nalfa = 0.5\n", "unknown field `alfa`"),
        ("windows.toml", "kind = \"windows\"\nsize = \"1h\"\nslide = \"7m\"\n", "key `slide`"),
        ("windows.toml", "kind = \"windows\"\nsize = \"ten minutes\"\n", "invalid duration"),
        (
            "alerts.toml",
            "kind = \"alerts\"\n[[rules]]\nrule_id = \"x\"\nchannel = \"pm25\"\nrise_above = 1\nfall_below = 2\n",
            "key `rules[0].fall_below`",
        ),
        ("thing.toml", "kind = \"teleport\"\n", "key `kind`"),
        ("ingest.toml", "kind = \"ingest\"\nepoch = \"7m\"\n", "not a multiple of the ingest epoch"),
        ("ingest.toml", "kind = \"ingest\"\nmax_line = 0\n", "key `max_line`: must be at least 1 byte"),
    ];
    for (file, text, needle) in cases {
        for f in std::fs::read_dir(&jobs).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        std::fs::write(jobs.join(file), text).unwrap();
        let out = eddy_err(&[
            "replay",
            d.dir().to_str().unwrap(),
            "--out",
            d.out().to_str().unwrap(),
            "--jobs",
            jobs.to_str().unwrap(),
        ]);
        let err = text_of(&out.stderr);
        assert!(err.contains(file), "{file}: error does not name the file: {err}");
        assert!(err.contains(needle), "{file}: expected {needle:?} in: {err}");
        // eddy check says the same.
        let out = eddy_err(&["check", jobs.join(file).to_str().unwrap()]);
        assert!(text_of(&out.stderr).contains(needle));
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bad_reference_data_names_file_line_and_field() {
    let d = Data::new();
    d.readings(&[reading("a", T0, &[])]);
    d.file("calibration.csv", "device_id,channel,gain,offset\na,pm25,1,0\na,co2,one,0\n");
    let out = eddy_err(&["replay", d.dir().to_str().unwrap(), "--out", d.out().to_str().unwrap()]);
    let err = text_of(&out.stderr);
    assert!(err.contains("calibration.csv:3: field `gain`"), "{err}");
}

#[test]
fn missing_dataset_is_a_clear_error() {
    let out = eddy_err(&["replay", "/nonexistent/dataset", "--out", "/tmp/eddy-never"]);
    assert!(text_of(&out.stderr).contains("/nonexistent/dataset: not found"));
}

#[test]
fn the_sample_gives_the_same_records_on_1_2_and_4_workers() {
    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    let mut sets = Vec::new();
    for w in [1, 2, 4] {
        let out = root.path().join(format!("w{w}"));
        eddy_ok(&["replay", sample, "--out", out.to_str().unwrap(), "-w", &w.to_string(), "-q"]);
        sets.push(output_sets(&out));
    }
    for (name, lines) in &sets[0] {
        assert!(!lines.is_empty() || name == "none", "{name} is empty");
        assert_eq!(lines, &sets[1][name], "{name}: -w 1 and -w 2 differ");
        assert_eq!(lines, &sets[2][name], "{name}: -w 1 and -w 4 differ");
    }
}

/// `--outputs` writes just the named JSON-lines files, each with the records
/// of a full run, and the backup with every enriched reading; the jobs whose
/// outputs are left out do not run. An unknown name is refused by name.
#[test]
fn outputs_writes_only_the_named_files_with_the_same_records() {
    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    let all = root.path().join("all");
    let some = root.path().join("some");
    eddy_ok(&["replay", sample, "--out", all.to_str().unwrap(), "-w", "2", "-q"]);
    let stdout =
        eddy_ok(&["replay", sample, "--out", some.to_str().unwrap(), "-w", "2", "--outputs", "windows,events"]);
    let (full, part) = (output_sets(&all), output_sets_present(&some));
    assert_eq!(part.keys().collect::<Vec<_>>(), ["events", "windows"], "files written");
    for (name, lines) in &part {
        assert!(!lines.is_empty(), "{name} is empty");
        assert_eq!(lines, &full[name], "{name}: --outputs changed its records");
    }
    assert!(!stdout.contains("stats.jsonl") && stdout.contains("events.jsonl"), "summary: {stdout}");
    // The backup still holds every enriched reading.
    let rows = |out: &std::path::Path| -> u64 {
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        s["records"]["backup"].as_u64().expect("backup rows in the summary")
    };
    assert_eq!(rows(&some), rows(&all));
    assert_eq!(rows(&all), full["enriched"].len() as u64 + full["late"].len() as u64);

    let out = eddy_err(&["replay", sample, "--out", some.to_str().unwrap(), "--outputs", "stats,alerts"]);
    let err = text_of(&out.stderr);
    assert!(err.contains("--outputs: unknown output \"alerts\"") && err.contains("events"), "{err}");
}

/// The sorted lines of each replay output present in `out`.
fn output_sets_present(out: &std::path::Path) -> std::collections::BTreeMap<String, Vec<String>> {
    ["enriched", "late", "deadletter", "stats", "windows", "events", "health"]
        .iter()
        .filter_map(|n| {
            let text = std::fs::read_to_string(out.join(format!("{n}.jsonl"))).ok()?;
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            Some((n.to_string(), lines))
        })
        .collect()
}

#[test]
fn the_summary_counts_every_line_once() {
    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    let out = root.path().join("o");
    let stdout = eddy_ok(&["replay", sample, "--out", out.to_str().unwrap()]);
    assert!(stdout.contains("replayed"), "{stdout}");
    let s = read_json(&out.join("summary.json"));
    let lines = std::fs::read_to_string(format!("{sample}/readings.jsonl")).unwrap().lines().count() as u64;
    assert_eq!(s["lines"], lines);
    assert_eq!(s["valid"].as_u64().unwrap() + s["deadletter"].as_u64().unwrap(), lines, "nothing lost");
    assert_eq!(s["records"]["enriched"].as_u64().unwrap() + s["late"].as_u64().unwrap(), s["valid"].as_u64().unwrap());
    assert_eq!(s["records"]["late"], s["late"]);
    assert_eq!(s["records"]["deadletter"], s["deadletter"]);
    for name in ["stats", "windows", "events"] {
        let n = std::fs::read_to_string(out.join(format!("{name}.jsonl"))).unwrap().lines().count() as u64;
        assert_eq!(s["records"][name], n, "{name}");
        assert!(n > 0, "{name} is empty");
    }
    assert_eq!(s["records"]["backup"], s["valid"], "every valid reading is backed up");
    assert_eq!(s["records"]["raw"], lines, "every line is archived");
    let cp = read_json(&out.join("_checkpoint.json"));
    assert_eq!(cp["complete"], true);
    assert_eq!(cp["committed"]["offset"], lines + 1);
    assert!(s["wall_time_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn gen_makes_a_fleet_of_ten_thousand_devices() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("fleet");
    let stdout = eddy_ok(&["gen", dir.to_str().unwrap(), "--devices", "10000", "--hours", "0.25", "--seed", "3"]);
    assert!(stdout.contains("10000 devices"), "{stdout}");
    let devices = std::fs::read_to_string(dir.join("devices.csv")).unwrap();
    assert_eq!(devices.lines().count(), 10_001);
    let readings = std::fs::read_to_string(dir.join("readings.jsonl")).unwrap();
    let ids: std::collections::HashSet<&str> = readings
        .lines()
        .filter_map(|l| l.split("\"device_id\":\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .collect();
    assert!(ids.len() >= 10_000, "{} devices sent readings", ids.len());
    // And it replays.
    let out = root.path().join("out");
    eddy_ok(&["replay", dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", "2", "-q"]);
    assert!(read_json(&out.join("summary.json"))["valid"].as_u64().unwrap() >= 30_000);
}

#[test]
fn gen_rejects_bad_options_by_name() {
    let out = eddy_err(&["gen", "/tmp/eddy-gen-bad", "--late", "1.5"]);
    assert!(text_of(&out.stderr).contains("--late"), "{}", text_of(&out.stderr));
}

#[test]
fn help_explains_every_command() {
    let out = eddy_ok(&["--help"]);
    for c in ["replay", "gen", "check"] {
        assert!(out.contains(c), "{out}");
    }
    let out = eddy_ok(&["replay", "--help"]);
    for flag in ["--out", "--workers", "--processes", "--process", "--hostfile", "--speed", "--jobs"] {
        assert!(out.contains(flag), "{flag} missing from replay --help:\n{out}");
    }
}

#[test]
fn speed_paces_the_replay_by_event_time() {
    // 10 minutes of event time at 600x take about a second.
    let d = Data::new();
    let lines: Vec<String> = (0..=10).map(|i| reading("a", T0 + i * MIN, &[("pm25", json!(1))])).collect();
    d.readings(&lines);
    let out = d.out();
    let started = std::time::Instant::now();
    eddy_ok(&["replay", d.dir().to_str().unwrap(), "--out", out.to_str().unwrap(), "--speed", "600", "-q"]);
    let took = started.elapsed();
    // A lower bound only: pacing must not be skipped (no upper bound: the machine is shared).
    assert!(took >= std::time::Duration::from_millis(900), "took {took:?}");
    assert_eq!(read_json(&out.join("summary.json"))["valid"], 11);
    let out2 = eddy_err(&["replay", d.dir().to_str().unwrap(), "--out", out.to_str().unwrap(), "--speed", "0"]);
    assert!(text_of(&out2.stderr).contains("--speed"));
}

#[test]
fn gzip_datasets_replay_the_same() {
    let root = tempfile::tempdir().unwrap();
    let (plain, gz) = (root.path().join("plain"), root.path().join("gz"));
    eddy_ok(&["gen", plain.to_str().unwrap(), "--devices", "20", "--hours", "3"]);
    eddy_ok(&["gen", gz.to_str().unwrap(), "--devices", "20", "--hours", "3", "--gzip"]);
    assert!(gz.join("readings.jsonl.gz").is_file());
    let (o1, o2) = (root.path().join("o1"), root.path().join("o2"));
    eddy_ok(&["replay", plain.to_str().unwrap(), "--out", o1.to_str().unwrap(), "-q"]);
    eddy_ok(&["replay", gz.to_str().unwrap(), "--out", o2.to_str().unwrap(), "-q"]);
    assert_eq!(output_sets(&o1), output_sets(&o2));
}

#[test]
fn hopping_windows_hold_each_value_in_size_over_slide_windows() {
    let d = Data::new();
    // Values 1..=6 every 10 minutes from 00:05; 1-hour windows sliding by 20 minutes.
    let lines: Vec<String> =
        (0..6).map(|i| reading("a", T0 + 5 * MIN + i * 10 * MIN, &[("pm25", json!(i + 1))])).collect();
    d.readings(&lines);
    let summary = d.replay_with_specs(&[("windows.toml", "kind = \"windows\"\nsize = \"1h\"\nslide = \"20m\"\n")]);
    assert_eq!(summary["valid"], 6);
    let mut w: Vec<(i64, u64, f64, f64, f64)> = d
        .output("windows")
        .iter()
        .map(|r| {
            assert_eq!(r["window_end"].as_i64().unwrap() - r["window_start"].as_i64().unwrap(), 60 * MIN);
            let start = (r["window_start"].as_i64().unwrap() - T0) / MIN;
            (
                start,
                r["count"].as_u64().unwrap(),
                r["mean"].as_f64().unwrap(),
                r["min"].as_f64().unwrap(),
                r["max"].as_f64().unwrap(),
            )
        })
        .collect();
    w.sort_by_key(|x| x.0);
    // Starts -40, -20, 0, 20, 40 minutes; values at 5, 15, …, 55 minutes.
    assert_eq!(
        w,
        vec![
            (-40, 2, 1.5, 1.0, 2.0),
            (-20, 4, 2.5, 1.0, 4.0),
            (0, 6, 3.5, 1.0, 6.0),
            (20, 4, 4.5, 3.0, 6.0),
            (40, 2, 5.5, 5.0, 6.0),
        ]
    );
}

#[test]
fn an_out_of_order_reading_from_before_a_rule_existed_does_not_end_its_event() {
    // Regression: the reading at T+9m saw no `spike` rule as of its ts and
    // used to end the event started at T+11m as `rule_removed`.
    let d = Data::new();
    d.file(
        "updates.jsonl",
        &[
            json!({"ts": T0, "table": "rules", "op": "delete", "row": {"rule_id": "pm25-high", "device_id": "*"}}),
            json!({"ts": T0 + 10 * MIN, "table": "rules", "op": "upsert", "row": {"rule_id": "spike", "device_id": "d", "channel": "pm25", "rise_above": 45, "fall_below": 40}}),
        ]
        .iter()
        .map(|v| v.to_string() + "\n")
        .collect::<String>(),
    );
    d.readings(&[
        reading("d", T0 + 11 * MIN, &[("pm25", json!(50))]),
        reading("d", T0 + 9 * MIN, &[("pm25", json!(50))]),
        reading("d", T0 + 12 * MIN, &[("pm25", json!(50))]),
    ]);
    d.replay(1);
    let events = d.output("events");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["state"], "start");
    assert_eq!(events[0]["ts"], T0 + 11 * MIN);
}

/// An output that cannot be written fails the run: the error names the file
/// and the operating system's reason, through the whole cause chain, and the
/// run ends instead of waiting for a commit that cannot come.
#[cfg(target_os = "linux")]
#[test]
fn an_output_that_cannot_be_written_fails_the_run_naming_the_file_and_the_reason() {
    use std::process::Stdio;
    use std::time::Duration;

    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Every write to /dev/full fails with ENOSPC.
    let stats = out.join("stats.jsonl");
    std::os::unix::fs::symlink("/dev/full", &stats).unwrap();
    let child = eddy()
        .args(["replay", sample, "--out", out.to_str().unwrap(), "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run eddy");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("eddy ran"),
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("eddy replay did not end within 120 s after its output failed");
        }
    };
    let err = text_of(&output.stderr);
    assert!(!output.status.success(), "the run succeeded:\n{err}");
    assert!(err.contains(&stats.display().to_string()), "the file is not named:\n{err}");
    assert!(err.contains("No space left on device"), "the reason is not given:\n{err}");
}
