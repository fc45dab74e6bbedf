//! Helpers for the integration tests: run the `eddy` binary, write small
//! datasets, read outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[cfg(feature = "kafka")]
pub mod broker;

/// The `eddy` binary built for these tests. Kafka jobs keep their
/// checkpoints under the system's temporary directory, not the checkout
/// (each test's topic prefix gives its jobs stores of their own).
pub fn eddy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eddy"));
    c.env("EDDY_STATE_DIR", std::env::temp_dir().join("eddy-test-state"));
    c
}

/// Runs `eddy args…`, asserting success; returns stdout.
pub fn eddy_ok(args: &[&str]) -> String {
    let out = eddy().args(args).output().expect("run eddy");
    assert!(
        out.status.success(),
        "eddy {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `eddy args…`, asserting failure; returns the output.
pub fn eddy_err(args: &[&str]) -> Output {
    let out = eddy().args(args).output().expect("run eddy");
    assert!(!out.status.success(), "eddy {args:?} should have failed:\nstdout: {}", text(&out.stdout));
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A dataset directory under a temporary directory.
pub struct Data {
    pub root: tempfile::TempDir,
}

impl Data {
    pub fn new() -> Data {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("data")).unwrap();
        Data { root }
    }
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("data")
    }
    pub fn out(&self) -> PathBuf {
        self.root.path().join("out")
    }
    pub fn file(&self, name: &str, content: &str) -> &Self {
        std::fs::write(self.dir().join(name), content).unwrap();
        self
    }
    /// Writes readings.jsonl from lines.
    pub fn readings(&self, lines: &[String]) -> &Self {
        let mut s = lines.join("\n");
        s.push('\n');
        self.file("readings.jsonl", &s)
    }
    /// Replays with `-w workers`, returning the summary.
    pub fn replay(&self, workers: usize) -> Value {
        let w = workers.to_string();
        self.replay_args(&["-w", &w])
    }
    /// Replays with the given spec files (`--jobs`), one worker; returns the summary.
    pub fn replay_with_specs(&self, specs: &[(&str, &str)]) -> Value {
        let jobs = self.root.path().join("jobs");
        let _ = std::fs::remove_dir_all(&jobs);
        std::fs::create_dir_all(&jobs).unwrap();
        for (file, text) in specs {
            std::fs::write(jobs.join(file), text).unwrap();
        }
        self.replay_args(&["--jobs", jobs.to_str().unwrap()])
    }
    /// `eddy replay DATA --out OUT -q extra…`, returning the summary.
    fn replay_args(&self, extra: &[&str]) -> Value {
        let (dir, out) = (self.dir(), self.out());
        let mut args = vec!["replay", dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"];
        args.extend_from_slice(extra);
        eddy_ok(&args);
        read_json(&out.join("summary.json"))
    }
    pub fn output(&self, name: &str) -> Vec<Value> {
        read_jsonl(&self.out().join(format!("{name}.jsonl")))
    }
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Every output of a run directory, each as a sorted list of lines.
pub fn output_sets(out: &Path) -> BTreeMap<String, Vec<String>> {
    ["enriched", "late", "deadletter", "stats", "windows", "events", "health"]
        .iter()
        .map(|n| {
            let mut lines: Vec<String> =
                std::fs::read_to_string(out.join(format!("{n}.jsonl"))).unwrap().lines().map(String::from).collect();
            lines.sort();
            (n.to_string(), lines)
        })
        .collect()
}

/// A reading line.
pub fn reading(device: &str, ts: i64, fields: &[(&str, Value)]) -> String {
    let mut m = serde_json::Map::new();
    m.insert("device_id".into(), device.into());
    m.insert("ts".into(), ts.into());
    for (k, v) in fields {
        m.insert(k.to_string(), v.clone());
    }
    Value::Object(m).to_string()
}

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
pub const MIN: i64 = 60_000;

/// `v`, sorted.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The lines of `OUT/NAME.jsonl`, sorted.
pub fn file_lines(out: &Path, name: &str) -> Vec<String> {
    sorted(std::fs::read_to_string(out.join(format!("{name}.jsonl"))).unwrap().lines().map(String::from).collect())
}

/// Asserts two sorted multisets are equal, showing what differs.
#[track_caller]
pub fn assert_same(kafka: Vec<String>, replay: Vec<String>, what: &str) {
    if kafka == replay {
        return;
    }
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        let mut b = b.to_vec();
        a.iter()
            .filter(|x| match b.iter().position(|y| y == *x) {
                Some(i) => {
                    b.swap_remove(i);
                    false
                }
                None => true,
            })
            .take(3)
            .cloned()
            .collect()
    };
    panic!(
        "{what}: {} records over Kafka, {} from replay\nonly over Kafka (first 3): {:#?}\nonly from replay (first 3): {:#?}",
        kafka.len(),
        replay.len(),
        only(&kafka, &replay),
        only(&replay, &kafka)
    );
}
