//! Running `eddy run` jobs against the test broker (`EDDY_BROKERS`, which
//! `scripts/test.sh` starts).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use eddy::kafka::rdkafka::message::{Headers, Message};

use super::{eddy, eddy_ok, file_lines, sorted, text};

/// The brokers the Kafka tests use.
pub fn brokers() -> String {
    std::env::var("EDDY_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A client configuration for the test broker, which must be reachable.
pub fn config() -> eddy::kafka::KafkaConfig {
    let cfg = eddy::kafka::KafkaConfig::new(brokers());
    cfg.check_reachable().unwrap_or_else(|e| panic!("{e}\n(scripts/test.sh installs and starts a broker)"));
    cfg
}

/// A topic prefix no other test (or earlier run) uses.
pub fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{test}-{nanos}", std::process::id())
}

/// The shipped job specs.
pub fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

/// `eddy run jobs/<job>.toml --prefix P extra…`, started in the background.
pub fn start(job: &str, prefix: &str, extra: &[&str]) -> Child {
    start_spec(&jobs_dir().join(format!("{job}.toml")), prefix, extra)
}

/// `eddy run SPEC --prefix P extra…`, started in the background.
pub fn start_spec(spec: &Path, prefix: &str, extra: &[&str]) -> Child {
    eddy()
        .args(["run", spec.to_str().unwrap(), "--brokers", &brokers(), "--prefix", prefix, "-q"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start eddy run")
}

/// Waits for a job to exit on its own (the stream ends), with a generous
/// guard against hanging forever; returns its stdout.
pub fn finish(child: Child, what: &str) -> String {
    finish_by(child, what, Instant::now() + Duration::from_secs(600))
}

/// [`finish`], failing if the job is still running at `until`.
pub fn finish_by(mut child: Child, what: &str, until: Instant) -> String {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success(), "{what} failed ({status}):\n{}\n{}", text(&out.stdout), text(&out.stderr));
            return text(&out.stdout);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let tail = |b: &[u8]| {
                let t = text(b);
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(200)..].join("\n")
            };
            panic!("{what} did not finish:\n{}\n{}", tail(&out.stdout), tail(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `eddy publish DATA --prefix P extra…`, to its end.
pub fn publish(data: &Path, prefix: &str, extra: &[&str]) {
    let brokers = brokers();
    let mut args = vec!["publish", data.to_str().unwrap(), "--brokers", &brokers];
    args.extend_from_slice(&["--prefix", prefix, "-q"]);
    args.extend_from_slice(extra);
    eddy_ok(&args);
}

/// A topic's data records (markers left out): `(eddy.t, partition, offset, value)`.
pub type Record = (Option<u64>, i32, i64, Vec<u8>);

/// A topic's data records.
pub fn records(prefix: &str, name: &str) -> Vec<Record> {
    try_records(prefix, name).unwrap_or_else(|e| panic!("{prefix}.{name}: {e}"))
}

/// [`records`], or the error (a topic a job has not created yet).
pub fn try_records(prefix: &str, name: &str) -> Result<Vec<Record>, eddy::kafka::Error> {
    let topic = format!("{prefix}.{name}");
    Ok(eddy::kafka::consume::read_to_end(&config(), &topic, Duration::from_secs(60))?
        .into_iter()
        .filter_map(|m| {
            let mut t = None;
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    match hd.key {
                        "eddy.wm" => return None,
                        "eddy.t" => t = std::str::from_utf8(hd.value.unwrap()).ok().and_then(|s| s.parse().ok()),
                        _ => {}
                    }
                }
            }
            Some((t, m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()))
        })
        .collect())
}

/// A topic's data records as `(eddy.t, value)`.
pub fn topic(prefix: &str, name: &str) -> Vec<(Option<u64>, String)> {
    try_topic(prefix, name).unwrap_or_else(|e| panic!("{prefix}.{name}: {e}"))
}

/// [`topic`], or the error.
pub fn try_topic(prefix: &str, name: &str) -> Result<Vec<(Option<u64>, String)>, eddy::kafka::Error> {
    Ok(try_records(prefix, name)?.into_iter().map(|(t, _, _, v)| (t, text(&v))).collect())
}

pub fn values(records: Vec<(Option<u64>, String)>) -> Vec<String> {
    sorted(records.into_iter().map(|(_, v)| v).collect())
}

/// Backup rows without their input positions (a file's line numbers are
/// 1-based, Kafka offsets 0-based), sorted.
pub fn backup_rows(out: &Path) -> Vec<String> {
    let rows = eddy::parquet::read_backup(&out.join("backup")).unwrap();
    sorted(
        rows.into_iter()
            .map(|r| {
                format!("{}|{}|{:?}|{:?}|{:?}|{}|{:?}", r.device_id, r.ts, r.raw, r.values, r.context, r.late, r.junk)
            })
            .collect(),
    )
}

/// Each of `checks` (a topic and the replay output it must equal) after a
/// restart (`what`): nothing lost, nothing that replay does not make, and
/// duplicates only at or after the frontier `resumed` the restarted job
/// resumed from.
pub fn check_restarted(p: &str, replay_out: &Path, checks: &[(&str, &str)], resumed: u64, what: &str) {
    for (name, replay_file) in checks {
        let records = topic(p, name);
        let mut counts: BTreeMap<&str, (usize, Vec<u64>)> = BTreeMap::new();
        for (t, v) in &records {
            let e = counts.entry(v.as_str()).or_default();
            e.0 += 1;
            e.1.push(t.expect("eddy.t on every record"));
        }
        let mut expected = file_lines(replay_out, replay_file);
        expected.dedup();
        for line in &expected {
            if !counts.contains_key(line.as_str()) {
                let key = &line[..line.find(",\"count\"").or_else(|| line.find(",\"window_start\"")).unwrap_or(20)];
                let near: Vec<&&str> = counts.keys().filter(|k| k.starts_with(key)).collect();
                panic!("{name}: lost after {what}: {line}\nover Kafka for the same key: {near:#?}");
            }
        }
        let extra: Vec<&&str> = counts.keys().filter(|k| expected.binary_search(&k.to_string()).is_err()).collect();
        assert!(extra.is_empty(), "{name}: records that replay does not make: {:?}", &extra[..extra.len().min(3)]);
        for (v, (n, times)) in &counts {
            if *n > 1 {
                // A record repeated by the restart must come from the epochs
                // after the checkpoint (the same record twice in replay is fine).
                let below = times.iter().filter(|t| **t < resumed).count();
                let in_replay = file_lines(replay_out, replay_file).iter().filter(|l| l == v).count();
                assert!(below <= in_replay, "{name}: {v} repeated below the resumed frontier {resumed}");
            }
        }
    }
}
