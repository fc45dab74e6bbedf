//! `examples/custom_eddy.rs`, a user's job in a user's binary, end to end:
//! embedded through `eddy::testing` and through the binary's `replay`, over
//! Kafka as its own process, and as a cluster of two processes. Each run is
//! checked against a direct computation from `eddy replay`'s enriched
//! readings.
//!
//! The binary is this test executable itself: started with
//! `EDDY_CUSTOM_EDDY_ARGS`, its `child` test runs the example's `main` with
//! those arguments.

mod support;

#[path = "../examples/custom_eddy.rs"]
mod custom_eddy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
#[cfg(feature = "kafka")]
use std::process::{Child, Stdio};
#[cfg(feature = "kafka")]
use std::time::{Duration, Instant};

use eddy::runtime::component::Registry;
use eddy::testing::Bench;
use support::*;

use custom_eddy::{SiteMean, SiteMeans};

const CHILD: &str = "EDDY_CUSTOM_EDDY_ARGS";

/// The example's binary, when this executable is started as one.
#[test]
fn child() {
    let Ok(args) = std::env::var(CHILD) else { return };
    let args: Vec<String> = serde_json::from_str(&args).expect("child arguments");
    let code = eddy::cli::main_from(Registry::builtin().with::<SiteMeans>(), args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// `custom_eddy args…`, as a process of its own.
fn custom_eddy(args: &[&str]) -> Command {
    let mut all = vec!["custom_eddy".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["child", "--exact", "--nocapture", "--test-threads", "1"]).env(CHILD, serde_json::to_string(&all).unwrap());
    c
}

fn custom_eddy_ok(args: &[&str]) -> String {
    let out = custom_eddy(args).output().unwrap();
    assert!(out.status.success(), "custom_eddy {args:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/site_means.toml");

/// Expected site means from `enriched.jsonl` (calibrated on-time readings;
/// junk and null values are null there): (site, channel, window start) →
/// (sum, count).
fn expected(enriched: &Path, size: i64) -> BTreeMap<(String, String, i64), (f64, u64)> {
    let mut out: BTreeMap<(String, String, i64), (f64, u64)> = BTreeMap::new();
    for e in read_jsonl(enriched) {
        let site = e["device"]["site"].as_str().unwrap_or("unknown").to_string();
        let start = e["ts"].as_i64().unwrap().div_euclid(size) * size;
        for c in ["pm25", "co2", "voc", "temp", "hum"] {
            let Some(v) = e[c].as_f64() else { continue };
            let s = out.entry((site.clone(), c.to_string(), start)).or_default();
            s.0 += v;
            s.1 += 1;
        }
    }
    out
}

fn check(got: &[SiteMean], want: &BTreeMap<(String, String, i64), (f64, u64)>, size: i64, what: &str) {
    let mut seen = BTreeMap::new();
    for m in got {
        let k = (m.site.clone(), m.channel.clone(), m.window_start);
        assert_eq!(m.window_end - m.window_start, size, "{what}: {m:?}");
        assert!(seen.insert(k.clone(), m).is_none(), "{what}: {k:?} twice");
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: keys");
    for (k, (sum, n)) in want {
        let m = seen[k];
        assert_eq!(m.count, *n, "{what}: {k:?}");
        let mean = sum / *n as f64;
        assert!((m.mean - mean).abs() <= 1e-9 * mean.abs().max(1.0), "{what}: {k:?}: {} vs {mean}", m.mean);
    }
}

fn replay_sample(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("replay");
    eddy_ok(&["replay", SAMPLE, "--out", out.to_str().unwrap(), "-q"]);
    out
}

#[test]
fn site_means_runs_embedded_beside_the_builtin_jobs() {
    let root = tempfile::tempdir().unwrap();
    let want = expected(&replay_sample(root.path()).join("enriched.jsonl"), 3_600_000);
    assert!(want.len() > 100);

    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::copy(SPEC, jobs.join("site_means.toml")).unwrap();
    for w in ["1", "2"] {
        let out = root.path().join(format!("w{w}"));
        custom_eddy_ok(&[
            "replay",
            SAMPLE,
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            jobs.to_str().unwrap(),
            "-w",
            w,
            "-q",
        ]);
        let got: Vec<SiteMean> =
            read_jsonl(&out.join("site_means.jsonl")).into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
        check(&got, &want, 3_600_000, &format!("-w {w}"));
        // The built-in jobs ran beside it.
        for f in ["stats", "windows", "events", "health"] {
            assert!(out.join(format!("{f}.jsonl")).is_file(), "{f}.jsonl");
        }
    }
    let listed = custom_eddy_ok(&["jobs"]);
    assert!(listed.lines().any(|l| l.starts_with("site_means ") && l.contains("in: enriched")), "{listed}");
    // The binary's check knows the new kind and its keys.
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "kind = \"site_means\"\nsize = \"7s\"\nchanels = [\"pm25\"]\n").unwrap();
    let out = custom_eddy(&["check", bad.to_str().unwrap()]).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml: key `chanels`") && err.contains("line 3"), "{err}");
}

#[test]
fn site_means_with_the_testing_kit_agrees_at_1_2_and_4_workers() {
    let hour = 3_600_000;
    let bench = Bench::new(Registry::builtin().with::<SiteMeans>())
        .spec("kind = \"site_means\"\nchannels = [\"pm25\"]\n")
        .device("a", &[("site", "lab")])
        .device("b", &[("site", "lab")])
        .device("c", &[("site", "roof")])
        .calibration("a", "pm25", 0, 2.0, 0.0)
        .reading("a", 0, &[("pm25", 10.0), ("co2", 500.0)])
        .reading("b", 60_000, &[("pm25", 30.0)])
        .reading("c", 120_000, &[("pm25", 5.0)])
        .reading("a", hour + 60_000, &[("pm25", 4.0)])
        .reading("b", hour + 120_000, &[("pm25", 5000.0)]) // junk: out of range
        .reading("c", 3 * hour, &[("pm25", 1.0)])
        .only(&["site_means"]);
    let out = bench.run_everywhere();
    let got: Vec<SiteMean> = out.records("site_means");
    let mean = |site: &str, start: i64| {
        got.iter().find(|m| m.site == site && m.window_start == start).map(|m| (m.count, m.mean))
    };
    assert_eq!(mean("lab", 0), Some((2, 25.0)), "{got:?}"); // 2×10 calibrated, and 30
    assert_eq!(mean("lab", hour), Some((1, 8.0)), "{got:?}");
    assert_eq!(mean("roof", 0), Some((1, 5.0)), "{got:?}");
    assert_eq!(mean("roof", 3 * hour), Some((1, 1.0)), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(out.names(), ["site_means"]);
    out.assert_golden("site_means", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/site_means.jsonl"));
}

#[cfg(feature = "kafka")]
fn brokers() -> String {
    std::env::var("EDDY_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

#[cfg(feature = "kafka")]
fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{test}-{nanos}", std::process::id())
}

#[cfg(feature = "kafka")]
fn start(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[cfg(feature = "kafka")]
fn finish(mut child: Child, what: &str) {
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success(), "{what} failed ({status}):\n{}\n{}", text(&out.stdout), text(&out.stderr));
            return;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} did not finish:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(feature = "kafka")]
fn job(spec: &str, p: &str, extra: &[&str]) -> Child {
    let b = brokers();
    let mut args = vec!["run", spec, "--brokers", &b, "--prefix", p, "-q"];
    args.extend_from_slice(extra);
    start(custom_eddy(&args))
}

#[cfg(feature = "kafka")]
fn site_means_topic(p: &str) -> Vec<SiteMean> {
    use eddy::kafka::rdkafka::message::{Headers, Message};
    let cfg = eddy::kafka::KafkaConfig::new(brokers());
    let topic = format!("{p}.site_means");
    eddy::kafka::consume::read_to_end(&cfg, &topic, Duration::from_secs(60))
        .unwrap()
        .into_iter()
        .filter(|m| !m.headers().is_some_and(|h| h.iter().any(|h| h.key == "eddy.wm")))
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}

/// ingest and enrich from the built-in jobs, site_means from the example's
/// binary: one process, and a cluster of two processes of one worker.
#[cfg(feature = "kafka")]
#[test]
fn site_means_runs_over_kafka_as_one_process_and_as_two() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    eddy_ok(&["gen", data.to_str().unwrap(), "--devices", "12", "--hours", "6", "--seed", "7"]);
    let out = root.path().join("replay");
    eddy_ok(&["replay", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"]);
    let want = expected(&out.join("enriched.jsonl"), 3_600_000);
    assert!(want.len() > 10);

    let hosts = root.path().join("hosts");
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(&hosts, format!("127.0.0.1:{}\n127.0.0.1:{}\n", port(), port())).unwrap();
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let (one, two) = (prefix("site1"), prefix("site2"));
    for p in [&one, &two] {
        let b = brokers();
        let core: Vec<Child> = ["ingest", "enrich"]
            .iter()
            .map(|j| {
                let spec = jobs.join(format!("{j}.toml"));
                start({
                    let mut c = eddy();
                    c.args(["run", spec.to_str().unwrap(), "--brokers", &b, "--prefix", p, "-q"]);
                    c
                })
            })
            .collect();
        let mine: Vec<Child> = if p == &one {
            vec![job(SPEC, p, &[])]
        } else {
            let h = hosts.to_str().unwrap();
            (0..2).map(|i| job(SPEC, p, &["-n", "2", "-p", &i.to_string(), "-h", h])).collect()
        };
        eddy_ok(&["publish", data.to_str().unwrap(), "--brokers", &b, "--prefix", p, "-q"]);
        for c in core.into_iter().chain(mine) {
            finish(c, p);
        }
        check(&site_means_topic(p), &want, 3_600_000, p);
    }
}
