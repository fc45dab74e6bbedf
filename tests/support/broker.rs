//! Running `eddy run` jobs against the test broker (`EDDY_BROKERS`, which
//! `scripts/test.sh` starts).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{eddy, eddy_ok, text};

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
            panic!("{what} did not finish:\n{}", text(&out.stderr));
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
