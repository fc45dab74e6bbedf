//! A broker that drops mid-run: the jobs and `eddy publish` retry with
//! backoff and go on when it returns, and nothing is lost.
//!
//! The test starts a broker of its own (Tansu, installed by scripts/test.sh;
//! `EDDY_TANSU` or `~/.cargo/bin/tansu`) behind a TCP proxy that it can cut:
//! the broker advertises the proxy's address, so every connection of every
//! client goes through it. Cutting it closes every open connection and
//! refuses new ones, which is what a client sees of a broker that went away.
#![cfg(feature = "kafka")]

mod support;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy::kafka::rdkafka::message::{Headers, Message};
use support::*;

fn tansu() -> PathBuf {
    std::env::var_os("EDDY_TANSU").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
        home.join("bin").join("tansu")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker of this test's own, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(listen: u16, advertise: u16) -> Broker {
    let child = Command::new(tansu())
        .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{listen}")])
        .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertise}")])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {} (scripts/test.sh installs it): {e}", tansu().display()));
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(Instant::now() < until, "tansu did not start listening on {listen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Broker(child)
}

/// A TCP proxy to `target` that can be cut and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (Arc::clone(&up), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut open = open2.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, open }
    }

    /// Closes every connection and refuses new ones.
    /// Closes every connection and refuses new ones; returns how many
    /// connections were open.
    fn cut(&self) -> usize {
        self.up.store(false, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        for s in open.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = open.len() / 2;
        open.clear();
        n
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

fn start(job: &str, brokers: &str, prefix: &str) -> Child {
    let spec = jobs_dir().join(format!("{job}.toml"));
    eddy()
        .args(["run", spec.to_str().unwrap(), "--brokers", brokers, "--prefix", prefix, "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start eddy run")
}

fn finish(mut child: Child, what: &str) {
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success(), "{what} failed ({status}):\n{}", text(&out.stderr));
            return;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} did not finish after the broker came back:\n{}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The data records of a topic (markers left out), sorted.
fn topic(brokers: &str, topic: &str) -> Vec<String> {
    let cfg = eddy::kafka::KafkaConfig::new(brokers.to_string());
    let mut v: Vec<String> = eddy::kafka::consume::read_to_end(&cfg, topic, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{topic}: {e}"))
        .into_iter()
        .filter(|m| m.headers().is_none_or(|h| h.iter().all(|hd| hd.key != "eddy.wm")))
        .map(|m| text(m.payload().unwrap_or_default()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_broker_that_drops_mid_run_is_retried_and_the_jobs_resume_when_it_returns() {
    let data = Data::new();
    let dir = data.dir();
    eddy_ok(&["gen", dir.to_str().unwrap(), "--devices", "20", "--hours", "6", "--seed", "11"]);
    eddy_ok(&["replay", dir.to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    // The broker advertises the proxy, so every client connects through it.
    let listen = free_port();
    let proxy = Proxy::start(listen);
    let _broker = start_broker(listen, proxy.port);
    let brokers = format!("127.0.0.1:{}", proxy.port);
    let p = "outage";

    let mut jobs: Vec<(&str, Child)> =
        ["ingest", "enrich", "stats"].iter().map(|j| (*j, start(j, &brokers, p))).collect();
    // The dataset at a pace of about six seconds, in the background; the
    // broker goes away for five seconds in the middle of it.
    let lines = std::fs::read_to_string(dir.join("readings.jsonl")).unwrap().lines().count();
    assert!(lines > 1000, "the dataset should have a few thousand readings, found {lines}");
    let mut publisher = eddy()
        .args(["publish", dir.to_str().unwrap(), "--brokers", &brokers, "--prefix", p, "-q", "--speed", "3600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let cut = proxy.cut();
    // Every job and the publisher were connected.
    assert!(cut >= 4, "only {cut} connections went through the proxy");
    std::thread::sleep(Duration::from_secs(5));
    if let Some(status) = publisher.try_wait().unwrap() {
        panic!("eddy publish ended ({status}) while the broker was away: the outage was not mid-stream");
    }
    for (job, child) in &mut jobs {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{job} exited ({status}) while the broker was away instead of retrying");
        }
    }
    proxy.restore();

    finish(publisher, "eddy publish");
    for (job, child) in jobs {
        finish(child, job);
    }
    let stats = topic(&brokers, &format!("{p}.stats"));
    let expected = file_lines(&data.out(), "stats");
    assert!(!expected.is_empty());
    assert_eq!(stats.len(), expected.len(), "statistics snapshots over Kafka and in replay");
    assert!(stats == expected, "the statistics over Kafka differ from replay's after the outage");
}
