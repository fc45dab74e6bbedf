//! Checkpoints of `eddy replay` on S3-compatible object storage
//! (`--store s3://BUCKET/PREFIX`), through the CLI, against the server of
//! `crates/eddy-checkpoint/tests/support/s3.rs` (scripts/test.sh starts
//! s3s-fs; without a server these tests fail and say how to start one): a
//! run SIGKILLed after a checkpoint restarts from it and ends with a clean
//! run's records; `eddy checkpoints` lists and inspects the store; a corrupt
//! newest checkpoint is skipped for the one before.

#[path = "../crates/eddy-checkpoint/tests/support/s3.rs"]
mod s3;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use eddy_checkpoint::{Status, Store};
use s3::S3;
use serde_json::Value;
use support::*;

/// A dataset, and a clean run of it without checkpoints.
fn dataset(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = root.join("data");
    eddy_ok(&["gen", data.to_str().unwrap(), "--devices", "200", "--hours", "24", "--seed", "7"]);
    let clean = root.join("clean");
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", clean.to_str().unwrap(), "--checkpoint-every", "off", "-q"]);
    (data, clean)
}

/// `eddy`, configured to reach the test server.
fn eddy_s3(s3: &S3) -> Command {
    let mut c = eddy();
    c.envs(s3.env());
    c
}

fn replay(s3: &S3, data: &Path, out: &Path, store: &str) -> Command {
    let mut c = eddy_s3(s3);
    c.args(["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", "2", "-q"]);
    c.args(["--store", store, "--checkpoint-every", "200ms"]);
    c
}

/// The ids of the complete checkpoints of the store at `url`, oldest first.
fn complete(s3: &S3, url: &str) -> Vec<u64> {
    let store = Store::open_with(url, &s3.options()).unwrap();
    store.list().unwrap().into_iter().filter(|l| matches!(l.status, Status::Complete(_))).map(|l| l.id).collect()
}

/// Starts `run` and SIGKILLs it once the store holds `wanted` complete
/// checkpoints. Panics if the run ends first.
fn kill_after_checkpoints(s3: &S3, mut run: Command, url: &str, wanted: usize) {
    let mut child = run.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {wanted} checkpoint(s) were in {url}");
        }
        if complete(s3, url).len() >= wanted {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return;
        }
        assert!(Instant::now() < until, "no checkpoint was written within 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counts of a summary that a restarted run must reproduce.
fn counts(s: &Value) -> Vec<(String, Value)> {
    ["valid", "late", "future", "deadletter", "junk", "records", "junk_by_device", "lines"]
        .iter()
        .map(|k| (k.to_string(), s[*k].clone()))
        .collect()
}

fn assert_same_as_clean(out: &Path, clean: &Path) {
    let (want, got) = (output_sets(clean), output_sets(out));
    for (name, lines) in &want {
        assert_same(got[name].clone(), lines.clone(), name);
    }
    let (s, c) = (read_json(&out.join("summary.json")), read_json(&clean.join("summary.json")));
    assert_eq!(counts(&s), counts(&c), "the counts and records of every output, the backup's included");
}

#[test]
fn a_replay_killed_after_a_checkpoint_on_s3_restarts_from_it_with_a_clean_runs_records() {
    let s3 = S3::server();
    let root = tempfile::tempdir().unwrap();
    let (data, clean) = dataset(root.path());
    let url = format!("s3://{}/replay/ckpt", s3.bucket("replay-killed"));
    let out = root.path().join("killed");

    kill_after_checkpoints(&s3, replay(&s3, &data, &out, &url), &url, 1);
    let before = complete(&s3, &url);
    assert!(!before.is_empty());
    assert!(!out.join("_checkpoints").exists(), "nothing of the store is local");

    let listed = eddy_s3(&s3).args(["checkpoints", "list", "--store", &url]).output().unwrap();
    let listed = text(&listed.stdout);
    for id in &before {
        assert!(
            listed.lines().any(|l| l.trim_start().starts_with(&format!("{id} ")) && l.contains("complete")),
            "{listed}"
        );
    }
    let inspected = eddy_s3(&s3).args(["checkpoints", "inspect", "--store", &url]).output().unwrap();
    assert!(inspected.status.success(), "{}", text(&inspected.stderr));
    assert!(text(&inspected.stdout).contains("\"outputs\""), "{}", text(&inspected.stdout));

    let rerun = replay(&s3, &data, &out, &url).args(["--log", "info"]).output().unwrap();
    let err = text(&rerun.stderr);
    assert!(rerun.status.success(), "{err}");
    assert!(err.contains("Restarting from a checkpoint"), "the run says it restored a checkpoint: {err}");
    let s = read_json(&out.join("summary.json"));
    let restored = s["checkpoints"]["restored_from"].as_u64().expect("restored from a checkpoint");
    assert!(before.contains(&restored), "restored from {restored}, one of {before:?}");
    assert_same_as_clean(&out, &clean);
    // An explicit store outlives the run; gc kept at most --keep (3).
    let after = complete(&s3, &url);
    assert!(!after.is_empty() && after.len() <= 3, "{after:?}");
}

#[test]
fn a_corrupt_newest_checkpoint_on_s3_is_skipped_and_the_one_before_is_used() {
    let s3 = S3::server();
    let root = tempfile::tempdir().unwrap();
    let (data, clean) = dataset(root.path());
    let bucket = s3.bucket("replay-corrupt");
    let url = format!("s3://{bucket}/ckpt");
    let out = root.path().join("killed");

    kill_after_checkpoints(&s3, replay(&s3, &data, &out, &url), &url, 2);
    let ids = complete(&s3, &url);
    let (older, newest) = (ids[ids.len() - 2], ids[ids.len() - 1]);

    // Flip one byte in the middle of the newest checkpoint's largest object.
    let client = s3.client(&bucket);
    let dir = format!("ckpt/{newest:020}/");
    let largest = s3::keys(&client)
        .into_iter()
        .filter(|k| k.starts_with(&dir) && !k.ends_with("/manifest.json"))
        .max_by_key(|k| s3::get(&client, k).len())
        .unwrap();
    let mut bytes = s3::get(&client, &largest);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    s3::put(&client, &largest, bytes);

    let bad =
        eddy_s3(&s3).args(["checkpoints", "inspect", "--store", &url, "--id", &newest.to_string()]).output().unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("checksum"), "{}", text(&bad.stderr));

    let rerun = eddy_s3(&s3)
        .args(["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-w", "2", "-q"])
        .args(["--store", &url, "--checkpoint-every", "off"])
        .output()
        .unwrap();
    let err = text(&rerun.stderr);
    assert!(rerun.status.success(), "{err}");
    assert!(err.contains("did not verify") && err.contains(&format!("restarting from checkpoint {older}")), "{err}");
    assert_eq!(read_json(&out.join("summary.json"))["checkpoints"]["restored_from"], older);
    assert_same_as_clean(&out, &clean);
}
