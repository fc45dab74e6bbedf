//! Checkpoints of `eddy replay`, through the CLI: runs SIGKILLed right after
//! a checkpoint, at changing worker counts, then run to the end, hold exactly
//! a clean run's records; a corrupt newest checkpoint is skipped; a restart
//! with other specs is refused; `eddy checkpoints` lists, inspects and
//! collects them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn gen(dir: &Path, devices: &str, hours: &str) {
    eddy_ok(&["gen", dir.to_str().unwrap(), "--devices", devices, "--hours", hours, "--seed", "7"]);
}

fn replay_args(data: &Path, out: &Path, w: usize, every: &str) -> Vec<String> {
    let w = w.to_string();
    ["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", &w, "--checkpoint-every", every, "-q"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The ids of the complete checkpoints of `out`'s store, oldest first.
fn complete(out: &Path) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(out.join("_checkpoints")) else { return Vec::new() };
    let mut ids: Vec<u64> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").is_file())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// Starts a replay and SIGKILLs it once a checkpoint newer than any before
/// has been written (at least `wanted` of them in the store). Returns false
/// if the run ended first.
fn kill_after_a_checkpoint(args: &[String], out: &Path, wanted: usize) -> bool {
    let before = complete(out).last().copied().unwrap_or(0);
    let mut child: Child = eddy().args(args).spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = complete(out);
        if now.last().is_some_and(|&id| id > before) && now.len() >= wanted {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < until, "no checkpoint was written within 2 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn summary(out: &Path) -> Value {
    read_json(&out.join("summary.json"))
}

/// The counts of a summary that a restarted run must reproduce.
fn counts(s: &Value) -> Vec<(String, Value)> {
    ["valid", "late", "future", "deadletter", "junk", "records", "junk_by_device", "lines"]
        .iter()
        .map(|k| (k.to_string(), s[*k].clone()))
        .collect()
}

/// A run without checkpoints at one worker: what a restarted run must end with.
fn clean_run(data: &Path, clean: &Path) {
    eddy_ok(&replay_args(data, clean, 1, "off").iter().map(String::as_str).collect::<Vec<_>>());
}

/// Every output of `out` holds exactly the records of `clean`'s, and the
/// summaries agree on the counts and records of every output, the backup's
/// included.
fn assert_like_clean(out: &Path, clean: &Path) {
    let (want, got) = (output_sets(clean), output_sets(out));
    for (name, lines) in &want {
        assert_same(got[name].clone(), lines.clone(), name);
    }
    assert_eq!(counts(&summary(out)), counts(&summary(clean)), "the counts and records of every output");
}

#[test]
fn a_replay_killed_twenty_times_at_changing_worker_counts_ends_with_a_clean_runs_records() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "150", "24");
    let clean = root.path().join("clean");
    clean_run(&data, &clean);
    assert!(!clean.join("_checkpoints").exists(), "no store without checkpoints");

    let out = root.path().join("killed");
    let mut kills = 0;
    for i in 0..60 {
        if kills >= 20 {
            break;
        }
        let w = [1, 2, 4][i % 3];
        if kill_after_a_checkpoint(&replay_args(&data, &out, w, "20ms"), &out, 1) {
            kills += 1;
        }
    }
    assert!(kills >= 20, "only {kills} runs were killed after a checkpoint");
    assert!(!complete(&out).is_empty());
    eddy_ok(&replay_args(&data, &out, 2, "20ms").iter().map(String::as_str).collect::<Vec<_>>());
    let s = summary(&out);
    assert!(s["checkpoints"]["restored_from"].is_u64(), "the last run restarted from a checkpoint: {s}");
    assert!(!out.join("_checkpoints").exists(), "a complete run removes its store");
    assert_like_clean(&out, &clean);
}

#[test]
fn at_one_worker_the_outputs_are_byte_identical_to_a_clean_runs_after_kills() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "80", "24");
    let clean = root.path().join("clean");
    clean_run(&data, &clean);
    let out = root.path().join("killed");
    let mut kills = 0;
    for _ in 0..30 {
        if kills >= 8 {
            break;
        }
        kills += usize::from(kill_after_a_checkpoint(&replay_args(&data, &out, 1, "20ms"), &out, 1));
    }
    assert!(kills >= 8, "only {kills} kills");
    eddy_ok(&replay_args(&data, &out, 1, "20ms").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(summary(&out)["checkpoints"]["restored_from"].is_u64());
    for name in ["late", "future", "deadletter", "stats", "windows"] {
        let file = format!("{name}.jsonl");
        let (a, b) = (std::fs::read(clean.join(&file)).unwrap(), std::fs::read(out.join(&file)).unwrap());
        assert!(a == b, "{file} differs from a clean run's ({} and {} bytes)", a.len(), b.len());
    }
    // enriched.jsonl, and the outputs made from its readings as they come
    // (events, health), hold the same lines, each device's in the same
    // order; but enrich releases a reading held for the reference data
    // behind its own device's only, so the order across devices follows the
    // steps of the reference frontier, which a cut or a restart can change
    // (docs/checkpoints.md, Limits).
    let by_device = |out: &Path, name: &str| {
        let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for l in std::fs::read_to_string(out.join(format!("{name}.jsonl"))).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            m.entry(v["device_id"].as_str().unwrap().to_string()).or_default().push(l.to_string());
        }
        m
    };
    for name in ["enriched", "events", "health"] {
        assert_same(file_lines(&out, name), file_lines(&clean, name), name);
        assert!(by_device(&clean, name) == by_device(&out, name), "{name}: each device's lines in a clean run's order");
    }
}

/// Flips one byte in the middle of the largest state file of checkpoint `id`.
fn corrupt(out: &Path, id: u64) -> PathBuf {
    let dir = out.join("_checkpoints").join(format!("{id:020}"));
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "manifest.json")
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    file
}

#[test]
fn a_corrupt_newest_checkpoint_is_skipped_and_the_one_before_is_used() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "80", "24");
    let clean = root.path().join("clean");
    eddy_ok(&replay_args(&data, &clean, 2, "off").iter().map(String::as_str).collect::<Vec<_>>());
    let out = root.path().join("killed");
    assert!(
        kill_after_a_checkpoint(&replay_args(&data, &out, 2, "20ms"), &out, 2),
        "the run ended before two checkpoints"
    );
    let ids = complete(&out);
    let (older, newest) = (ids[ids.len() - 2], ids[ids.len() - 1]);
    corrupt(&out, newest);

    let listed = eddy_ok(&["checkpoints", "list", "--store", out.to_str().unwrap()]);
    assert!(listed.contains("complete"), "{listed}");
    let inspected = eddy_ok(&["checkpoints", "inspect", "--store", out.to_str().unwrap(), "--id", &older.to_string()]);
    assert!(inspected.contains("-stats") && inspected.contains("\"outputs\""), "{inspected}");
    let bad = eddy_err(&["checkpoints", "inspect", "--store", out.to_str().unwrap(), "--id", &newest.to_string()]);
    assert!(text(&bad.stderr).contains("checksum"), "{}", text(&bad.stderr));

    let run = eddy().args(replay_args(&data, &out, 2, "off")).output().unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let err = text(&run.stderr);
    assert!(err.contains("did not verify") && err.contains(&format!("restarting from checkpoint {older}")), "{err}");
    assert_eq!(summary(&out)["checkpoints"]["restored_from"], older);
    assert_like_clean(&out, &clean);
}

#[test]
fn a_restart_with_other_outputs_is_refused_and_gc_keeps_the_newest() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "80", "24");
    let out = root.path().join("killed");
    assert!(
        kill_after_a_checkpoint(&replay_args(&data, &out, 1, "20ms"), &out, 3),
        "the run ended before three checkpoints"
    );
    let mut args = replay_args(&data, &out, 1, "20ms");
    args.extend(["--outputs".to_string(), "stats".to_string()]);
    let refused = eddy().args(&args).output().unwrap();
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("other specs") && err.contains("outputs: was None now Some"), "{err}");

    let kept = complete(&out).len();
    assert!(kept >= 3, "{kept}");
    let said = eddy_ok(&["checkpoints", "gc", "--store", out.to_str().unwrap(), "--keep", "2"]);
    assert!(said.contains(&format!("removed {}", kept - 2)), "{said}");
    assert_eq!(complete(&out).len(), 2);
    let low = eddy_err(&["checkpoints", "gc", "--store", out.to_str().unwrap(), "--keep", "1"]);
    assert!(text(&low.stderr).contains("at least 2"));
}

#[test]
fn a_job_keeps_the_key_groups_it_was_first_started_with_at_any_worker_count() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    gen(&data, "80", "24");
    let clean = root.path().join("clean");
    clean_run(&data, &clean);

    let out = root.path().join("killed");
    let mut first = replay_args(&data, &out, 2, "20ms");
    first.extend(["--key-groups".to_string(), "6".to_string()]);
    assert!(kill_after_a_checkpoint(&first, &out, 1), "the run ended before a checkpoint");

    // Another number is refused, naming both.
    let mut other = replay_args(&data, &out, 2, "20ms");
    other.extend(["--key-groups".to_string(), "8".to_string()]);
    let refused = eddy().args(&other).output().unwrap();
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("taken with 6 key groups") && err.contains("asks for 8"), "{err}");

    // More workers than key groups cannot run.
    let too_many = eddy().args(replay_args(&data, &out, 8, "20ms")).output().unwrap();
    assert!(!too_many.status.success());
    let err = text(&too_many.stderr);
    assert!(err.contains("8 workers but 6 key groups"), "{err}");

    // Without --key-groups, a restart at -w 3 keeps the checkpoint's 6 (its
    // backup writers are named for them) and ends with a clean run's records.
    eddy_ok(&replay_args(&data, &out, 3, "20ms").iter().map(String::as_str).collect::<Vec<_>>());
    let s = summary(&out);
    assert!(s["checkpoints"]["restored_from"].is_u64(), "the run restarted from a checkpoint: {s}");
    let manifests: Vec<String> = std::fs::read_dir(out.join("backup/_manifest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(manifests.iter().any(|m| m.contains("-w2of3g6-")), "{manifests:?}");
    assert!(manifests.iter().any(|m| m.contains("-w1of2g6-")), "{manifests:?}");
    assert_like_clean(&out, &clean);
}
