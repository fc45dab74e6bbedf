//! Chaos over Kafka: the chain (ingest → enrich → stats, windows, alerts,
//! backup) fed at a steady pace by `eddy publish --speed`, while random jobs
//! are killed with SIGKILL at random times and restarted at a random worker
//! count. At the end statistics, windows and events, de-duplicated, equal
//! `eddy replay`'s, and the backup holds every reading exactly once.
//!
//! `EDDY_CHAOS_KILLS` kills (default 10; `scripts/chaos.sh` runs 50),
//! `EDDY_CHAOS_SEED` to repeat a run (printed), `EDDY_CHAOS_KEEP` to keep
//! its directory and topics (and each job's output, in `logs/`),
//! `EDDY_CHAOS_LOG` for the jobs' `RUST_LOG`.
#![cfg(feature = "kafka")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use support::broker::{backup_rows, brokers, check_restarted, jobs_dir, prefix, publish};
use support::*;

/// A small deterministic generator (SplitMix64): the run is repeatable from
/// its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const JOBS: [&str; 6] = ["ingest", "enrich", "stats", "windows", "alerts", "backup"];

/// A running job, its output going to files (a pipe nobody reads until
/// the end would fill, and block the job).
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    /// What it printed so far: (stdout, last lines of stderr).
    fn said(&self) -> (String, String) {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = err.lines().collect();
        (out, lines[lines.len().saturating_sub(100)..].join("\n"))
    }
}

/// One job of the chain (its `n`th start), started with its own store and a
/// short checkpoint interval.
fn spawn(job: &str, p: &str, root: &Path, workers: u64, n: usize) -> Running {
    let spec = jobs_dir().join(format!("{job}.toml"));
    let store = root.join("stores").join(job);
    let out = root.join("kafka-out");
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (stdout, stderr) = (logs.join(format!("{job}-{n}.out")), logs.join(format!("{job}-{n}.err")));
    let mut c = eddy();
    c.args(["run", spec.to_str().unwrap(), "--brokers", &brokers(), "--prefix", p]);
    c.args(["-w", &workers.to_string(), "--checkpoint-every", "500ms", "--store", store.to_str().unwrap()]);
    if job == "backup" {
        c.args(["--out", out.to_str().unwrap()]);
    }
    if let Ok(filter) = std::env::var("EDDY_CHAOS_LOG") {
        c.env("RUST_LOG", filter);
    }
    c.stdout(std::fs::File::create(&stdout).unwrap()).stderr(std::fs::File::create(&stderr).unwrap());
    Running { child: c.spawn().expect("start eddy run"), stdout, stderr }
}

/// CI runs 10 kills (about 30 s); `scripts/chaos.sh` runs 50.
#[test]
fn the_chain_survives_random_kills_and_computes_what_replay_computes() {
    let kills: usize = std::env::var("EDDY_CHAOS_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("EDDY_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("chaos: {kills} kills, EDDY_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let mut data = Data::new();
    let keep = std::env::var_os("EDDY_CHAOS_KEEP").is_some();
    // Kept even when the run fails, for a look at the jobs' logs.
    data.root.disable_cleanup(keep);
    eddy_ok(&["gen", data.dir().to_str().unwrap(), "--devices", "12", "--hours", "12", "--seed", "9"]);
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);
    let root = data.root.path().to_path_buf();
    let p = prefix("chaos");

    let mut running: BTreeMap<&str, Running> = JOBS.iter().map(|j| (*j, spawn(j, &p, &root, 1, 0))).collect();
    // The readings at a pace that spreads them over about 2.5 s per kill
    // (12 hours of readings), in the background.
    let speed = (12.0 * 3600.0 / (2.5 * kills as f64)).max(60.0).to_string();
    let publisher = {
        let (dir, p, speed) = (data.dir(), p.clone(), speed.clone());
        std::thread::spawn(move || publish(&dir, &p, &["--speed", &speed]))
    };
    let mut restored = 0;
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(800 + rng.below(2200)));
        let job = JOBS[rng.below(JOBS.len() as u64) as usize];
        let mut r = running.remove(job).expect("running");
        if let Some(status) = r.child.try_wait().unwrap() {
            panic!("{job} ended ({status}) before the stream did:\n{}", r.said().1);
        }
        r.child.kill().unwrap();
        r.child.wait().unwrap();
        restored += r.said().0.matches("restored checkpoint").count();
        let workers = 1 + rng.below(3);
        eprintln!("chaos: kill {} of {kills}: {job}, restarted at -w {workers}", k + 1);
        running.insert(job, spawn(job, &p, &root, workers, k + 1));
    }
    publisher.join().expect("publish");
    let until = Instant::now() + Duration::from_secs(300);
    for (job, mut r) in running {
        let status = loop {
            if let Some(status) = r.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > until {
                let _ = r.child.kill();
                let _ = r.child.wait();
                let (out, err) = r.said();
                panic!("{job} did not finish (logs in {}):\n{out}\n{err}", r.stderr.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (out, err) = r.said();
        assert!(status.success(), "{job} failed ({status}):\n{out}\n{err}");
        restored += out.matches("restored checkpoint").count();
    }
    eprintln!("chaos: {restored} restarts restored a checkpoint of their state");
    let replay_out = data.out();
    if keep {
        // For a look at a failure: the outputs stay, and so do the topics.
        eprintln!("chaos: kept {} (topic prefix {p})", root.display());
    }

    // Every record once at least, and nothing replay does not make (no
    // frontier bound on repeats here: a job may have been killed many times).
    check_restarted(
        &p,
        &replay_out,
        &[("stats", "stats"), ("windows.1h", "windows"), ("events", "events")],
        0,
        "chaos",
    );
    assert_same(backup_rows(&root.join("kafka-out")), backup_rows(&replay_out), "backup");
}
