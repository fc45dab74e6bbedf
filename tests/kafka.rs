//! The pipeline over Kafka: every job as its own process (`eddy run`), fed by
//! `eddy publish`, against a real broker (Tansu, started by scripts/test.sh
//! at `EDDY_BROKERS`, default 127.0.0.1:9092). Each test uses its own topic
//! prefix.
#![cfg(feature = "kafka")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::broker::{
    backup_rows, brokers, check_restarted, config as kafka, finish, finish_by, jobs_dir, prefix, publish, start, topic,
    try_topic, values,
};
use support::*;

/// `(device_id, ts)` of late readings.
fn late_keys(lines: Vec<String>) -> Vec<String> {
    sorted(
        lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{}|{}", v["device_id"], v["ts"])
            })
            .collect(),
    )
}

fn gen(dir: &Path, devices: &str, hours: &str) {
    eddy_ok(&["gen", dir.to_str().unwrap(), "--devices", devices, "--hours", hours, "--seed", "5"]);
}

const CHAIN: [&str; 5] = ["ingest", "enrich", "stats", "windows", "alerts"];

#[test]
fn every_job_in_its_own_process_computes_what_replay_computes() {
    let data = Data::new();
    gen(&data.dir(), "12", "6");
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    let p = prefix("chain");
    let kout = data.root.path().join("kafka-out");
    // The jobs start first: the reference data and its updates reach enrich
    // and alerts while they run (the live path), then the readings.
    // ingest prints its summary (no -q): its counts are checked below.
    let spec = jobs_dir().join("ingest.toml");
    let ingest = eddy()
        .args(["run", spec.to_str().unwrap(), "--brokers", &brokers(), "--prefix", &p])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut jobs: Vec<(&str, Child)> =
        CHAIN.iter().filter(|j| **j != "ingest").map(|j| (*j, start(j, &p, &[]))).collect();
    jobs.push(("sensor-health", start("sensor-health", &p, &[])));
    jobs.push(("backup", start("backup", &p, &["--out", kout.to_str().unwrap()])));
    publish(&data.dir(), &p, &[]);
    let said = finish(ingest, "ingest");
    for (name, child) in jobs {
        finish(child, name);
    }

    let out = data.out();
    // The Kafka ingest counts what the file ingest counts (one validator).
    let summary = read_json(&out.join("summary.json"));
    let counts = format!(
        "{} valid, {} dead letters, {} with junk values",
        summary["valid"], summary["deadletter"], summary["junk"]
    );
    assert!(summary["junk"].as_u64().unwrap() > 0, "the dataset should have junk values");
    assert!(said.contains(&counts), "ingest said {said:?}, replay counted {counts}");
    assert_same(values(topic(&p, "stats")), file_lines(&out, "stats"), "stats");
    assert_same(values(topic(&p, "windows.1h")), file_lines(&out, "windows"), "windows");
    assert_same(values(topic(&p, "events")), file_lines(&out, "events"), "events");
    assert!(!file_lines(&out, "events").is_empty(), "the dataset should raise alerts");
    assert_same(values(topic(&p, "health")), file_lines(&out, "health"), "health");
    assert_same(late_keys(values(topic(&p, "late"))), late_keys(file_lines(&out, "late")), "late");
    let dead = topic(&p, "deadletter");
    assert_eq!(dead.len(), file_lines(&out, "deadletter").len(), "dead letters");
    for (_, d) in &dead {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert!(v["pos"]["offset"].is_u64() && v["reason"].is_string(), "{d}");
    }
    assert_same(backup_rows(&kout), backup_rows(&out), "backup");
}

const HOUR: i64 = 60 * MIN;

/// One device reading every hour for three years (26,280 readings, five
/// channels), with pollution episodes that raise alerts, a calibration
/// change, a few null values, late readings and junk lines.
fn three_years_hourly(data: &Data) {
    data.file("devices.csv", "device_id,model,site,owner\ndev-000001,AQ-100,site-01,owner-2\n");
    data.file(
        "calibration.csv",
        &format!(
            "device_id,channel,gain,offset,valid_from\ndev-000001,pm25,1.006,-3.79,\ndev-000001,pm25,0.924,-3.47,{}\n",
            T0 + 9_000 * HOUR
        ),
    );
    data.file(
        "thresholds.csv",
        "rule_id,device_id,channel,rise_above,fall_below\npm25-high,*,pm25,35,25\nco2-high,*,co2,1000,800\n",
    );
    let line = |h: i64| {
        let ts = T0 + h * HOUR + 17_000;
        let day = (h % 24) as f64;
        let pm25 = 8.0 + day / 2.0 + if h % 97 < 3 { 60.0 } else { 0.0 } + (h % 7) as f64 / 10.0;
        let co2 = 420 + (h % 24) * 30 + if h % 131 < 2 { 700 } else { 0 };
        let voc = if h % 200 == 0 { "null".to_string() } else { (100 + h % 50).to_string() };
        let temp = 20.0 + ((h % 8_760) as f64 / 8_760.0 * 6.0) - 3.0;
        let hum = 40 + h % 20;
        format!(
            r#"{{"device_id":"dev-000001","ts":{ts},"pm25":{pm25:.1},"co2":{co2},"voc":{voc},"temp":{temp:.1},"hum":{hum}}}"#
        )
    };
    let mut lines = Vec::new();
    for h in 0..26_280 {
        // Every 1,000th reading arrives three hours late.
        if h % 1_000 == 500 {
            continue;
        }
        lines.push(line(h));
        if h % 1_000 == 503 {
            lines.push(line(h - 3));
        }
        if h % 2_000 == 1_234 {
            lines.push(r#"{"device_id":"dev-000001","ts":"#.to_string());
        }
    }
    data.readings(&lines);
}

/// A long history through the chain: more statistics snapshots than the
/// statistics operator sends in one activation (65,536). The stats job reads
/// `P.enriched` much faster than its operator sends snapshots, so its input
/// ends while epochs are still buffered behind a full chunk. It used to send
/// the final state early, drop its capability and stop for good after its
/// first chunk (about 65,560 records), with no error.
#[test]
fn three_years_of_an_hourly_device_through_the_chain_finish_and_compute_what_replay_computes() {
    let data = Data::new();
    three_years_hourly(&data);
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);
    let out = data.out();
    assert!(file_lines(&out, "stats").len() > 65_536, "more snapshots than one chunk of the statistics operator");

    let p = prefix("three-years");
    let jobs: Vec<(&str, Child)> = CHAIN.iter().map(|j| (*j, start(j, &p, &[]))).collect();
    publish(&data.dir(), &p, &[]);
    // A guard well below `finish`'s: a job that stalls fails the test in minutes.
    let until = Instant::now() + Duration::from_secs(180);
    for (name, child) in jobs {
        finish_by(child, name, until);
    }

    assert_same(values(topic(&p, "stats")), file_lines(&out, "stats"), "stats");
    assert_same(values(topic(&p, "windows.1h")), file_lines(&out, "windows"), "windows");
    assert_same(values(topic(&p, "events")), file_lines(&out, "events"), "events");
    assert!(!file_lines(&out, "events").is_empty(), "the dataset should raise alerts");
    assert!(!file_lines(&out, "late").is_empty(), "the dataset should have late readings");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `job` as a cluster of 2 processes × 2 workers.
fn start_cluster(job: &str, prefix: &str, dir: &Path) -> Vec<Child> {
    let hostfile = dir.join(format!("hosts-{job}"));
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let h = hostfile.to_str().unwrap().to_string();
    (0..2).map(|i| start(job, prefix, &["-w", "2", "-n", "2", "-p", &i.to_string(), "-h", &h])).collect()
}

#[test]
fn a_job_on_two_processes_of_two_workers_computes_what_one_process_computes() {
    let data = Data::new();
    gen(&data.dir(), "16", "4");
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    let p = prefix("cluster");
    publish(&data.dir(), &p, &[]);
    let mut single = vec![("ingest", start("ingest", &p, &[])), ("alerts", start("alerts", &p, &[]))];
    let mut clustered = start_cluster("enrich", &p, data.root.path());
    clustered.extend(start_cluster("windows", &p, data.root.path()));
    single.push(("stats", start("stats", &p, &["-w", "2"])));
    for (name, child) in single {
        finish(child, name);
    }
    for child in clustered {
        finish(child, "cluster process");
    }
    let out = data.out();
    assert_same(values(topic(&p, "windows.1h")), file_lines(&out, "windows"), "windows");
    assert_same(values(topic(&p, "stats")), file_lines(&out, "stats"), "stats");
    assert_same(values(topic(&p, "events")), file_lines(&out, "events"), "events");
}

/// The processes of a job must place keys alike: two started with other
/// `--key-groups` both stop, naming the two numbers, before reading.
#[test]
fn processes_of_one_job_with_other_key_groups_are_refused() {
    let data = Data::new();
    gen(&data.dir(), "4", "1");
    let p = prefix("groups");
    publish(&data.dir(), &p, &[]);
    let hostfile = data.root.path().join("hosts-groups");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let h = hostfile.to_str().unwrap();
    let procs: Vec<Child> = [("0", "8"), ("1", "16")]
        .iter()
        .map(|(i, g)| start_loud("stats", &p, &["-n", "2", "-p", i, "-h", h, "--key-groups", g]))
        .collect();
    for child in procs {
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "a process ran with other key groups than its peer");
        let err = text(&out.stderr);
        assert!(
            err.contains("16 key groups") && err.contains("has 8")
                || err.contains("8 key groups") && err.contains("has 16"),
            "{err}"
        );
        assert!(err.contains("the same --key-groups"), "{err}");
    }
}

/// Stops `job` with `signal` once it has written some of `own` (its
/// output), restarts it, and checks each of `checks` (a topic and the replay
/// output it must equal): nothing lost, nothing that replay does not make,
/// and duplicates only at or after the frontier the restarted job resumed from.
fn redeploy(signal: &str, job: &str, own: &str, checks: &[(&str, &str)]) {
    let data = Data::new();
    gen(&data.dir(), "10", "8");
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    let p = prefix(&format!("redeploy-{}", signal.to_lowercase()));
    let others: Vec<(&str, Child)> = CHAIN.iter().filter(|j| **j != job).map(|j| (*j, start(j, &p, &[]))).collect();
    let mut victim = start(job, &p, &[]);
    // The first half of the readings, without an end: the job cannot finish
    // before it is stopped.
    let lines = std::fs::read_to_string(data.dir().join("readings.jsonl")).unwrap().lines().count();
    let half = (lines / 2).to_string();
    publish(&data.dir(), &p, &["--max-lines", &half, "--no-end"]);
    // Wait until the job has written part of its output.
    let waited = Instant::now();
    let until = waited + Duration::from_secs(240);
    while try_topic(&p, own).map_or(0, |t| t.len()) < 20 {
        assert!(Instant::now() < until, "{job} wrote nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let it commit at least once.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = victim.try_wait().unwrap() {
        let out = victim.wait_with_output().unwrap();
        panic!("{job} ended ({status}) before it was stopped: {}", text(&out.stderr));
    }
    eprintln!("{job}: sending SIG{signal} after {:?}", waited.elapsed());
    let status = Command::new("kill").args(["-s", signal, &victim.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = victim.wait_with_output().unwrap();
    if signal == "TERM" {
        assert!(out.status.success(), "SIGTERM should stop {job} cleanly: {}", text(&out.stderr));
    }
    let restarted = start(job, &p, &[]);
    // The rest of the stream, and its end.
    publish(&data.dir(), &p, &["--skip-lines", &half, "--no-reference"]);
    let restarted_out = finish(restarted, job);
    for (name, child) in others {
        finish(child, name);
    }
    let resumed = resumed_from(&restarted_out);

    check_restarted(&p, &data.out(), checks, resumed, &format!("SIG{signal}"));
}

/// The frontier a restarted job says it resumed from.
fn resumed_from(said: &str) -> u64 {
    said.lines()
        .find_map(|l| l.split("resumed from frontier ").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the restarted job should resume from a checkpoint: {said}"))
}

/// `eddy run JOB` with its summary on stdout (not `-q`), in the background.
fn start_loud(job: &str, prefix: &str, extra: &[&str]) -> Child {
    let spec = jobs_dir().join(format!("{job}.toml"));
    eddy()
        .args(["run", spec.to_str().unwrap(), "--brokers", &brokers(), "--prefix", prefix])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The complete checkpoints in the store at `dir` (by their manifests).
fn checkpoints_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.path().join("manifest.json").is_file()).count())
}

/// The records a job's summary says it read.
fn records_in(said: &str) -> u64 {
    said.lines()
        .find_map(|l| l.split(" records in").next().filter(|_| l.contains(" records in")))
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {said}"))
}

/// The stats and windows jobs take checkpoints of their state every 300 ms
/// at `-w 2`; once each has written one, both are killed (SIGKILL). Stats
/// restarts at `-w 3`, windows as a cluster of 2 processes of 1 worker: each
/// restores its devices' state, reads only the records after its checkpoint
/// (counted), and the results equal replay's.
#[test]
fn stateful_jobs_killed_after_a_checkpoint_restore_their_state_at_other_worker_counts() {
    let data = Data::new();
    gen(&data.dir(), "10", "8");
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    let p = prefix("restore");
    let stores = data.root.path().join("stores");
    let (s_stats, s_windows) = (stores.join("stats"), stores.join("windows"));
    let ck = |store: &Path| -> Vec<String> {
        ["--checkpoint-every", "300ms", "--store", store.to_str().unwrap()].map(String::from).to_vec()
    };
    let args = |v: &[String], more: &[&str]| -> Vec<String> {
        v.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect()
    };
    let others: Vec<(&str, Child)> = ["ingest", "enrich", "alerts"].iter().map(|j| (*j, start(j, &p, &[]))).collect();
    let a_stats = args(&ck(&s_stats), &["-w", "2"]);
    let a_windows = args(&ck(&s_windows), &["-w", "2"]);
    let mut victims = vec![
        start("stats", &p, &a_stats.iter().map(String::as_str).collect::<Vec<_>>()),
        start("windows", &p, &a_windows.iter().map(String::as_str).collect::<Vec<_>>()),
    ];
    let lines = std::fs::read_to_string(data.dir().join("readings.jsonl")).unwrap().lines().count();
    let half = (lines / 2).to_string();
    publish(&data.dir(), &p, &["--max-lines", &half, "--no-end"]);
    let until = Instant::now() + Duration::from_secs(240);
    while checkpoints_in(&s_stats) < 1
        || checkpoints_in(&s_windows) < 1
        || try_topic(&p, "windows.1h").map_or(0, |t| t.len()) < 20
    {
        assert!(Instant::now() < until, "no checkpoints: {s_stats:?} {s_windows:?}");
        for v in &mut victims {
            if let Some(status) = v.try_wait().unwrap() {
                panic!("a job ended ({status}) before it was killed");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for v in &mut victims {
        v.kill().unwrap();
        v.wait().unwrap();
    }
    let inspect = eddy_ok(&["checkpoints", "inspect", "--store", s_stats.to_str().unwrap()]);
    assert!(inspect.contains("\"offsets\""), "{inspect}");

    // Stats at 3 workers; windows on 2 processes of 1 worker.
    let stats =
        start_loud("stats", &p, &args(&ck(&s_stats), &["-w", "3"]).iter().map(String::as_str).collect::<Vec<_>>());
    let hostfile = data.root.path().join("hosts-windows");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let h = hostfile.to_str().unwrap();
    let windows: Vec<Child> = (0..2)
        .map(|i| {
            let more = ["-n", "2", "-p", &i.to_string(), "-h", h].map(String::from);
            let a = args(&ck(&s_windows), &more.iter().map(String::as_str).collect::<Vec<_>>());
            start_loud("windows", &p, &a.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .collect();
    publish(&data.dir(), &p, &["--skip-lines", &half, "--no-reference"]);
    let said_stats = finish(stats, "stats");
    let said_windows: Vec<String> = windows.into_iter().map(|c| finish(c, "windows")).collect();
    for (name, child) in others {
        finish(child, name);
    }
    let enriched = topic(&p, "enriched").len() as u64;
    for said in [&said_stats, &said_windows[0], &said_windows[1]] {
        assert!(said.contains("restored checkpoint"), "{said}");
    }
    // Only the records after the checkpoint were read again.
    let read_stats = records_in(&said_stats);
    let read_windows: u64 = said_windows.iter().map(|s| records_in(s)).sum();
    assert!(read_stats < enriched && read_windows < enriched, "read {read_stats} and {read_windows} of {enriched}");
    check_restarted(&p, &data.out(), &[("stats", "stats")], resumed_from(&said_stats), "a restore at -w 3");
    check_restarted(&p, &data.out(), &[("windows.1h", "windows")], resumed_from(&said_windows[0]), "a restore at -n 2");
}

/// The offsets of `topic` in the newest complete checkpoint of `store`.
fn checkpoint_offsets(store: &Path, topic: &str) -> BTreeMap<i32, i64> {
    let newest = std::fs::read_dir(store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .max()
        .expect("a complete checkpoint");
    let manifest = read_json(&newest.join("manifest.json"));
    let offsets = manifest["meta"]["offsets"][topic].as_object().unwrap_or_else(|| panic!("{manifest}"));
    offsets.iter().map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap())).collect()
}

/// Deletes `topic` and makes it again with `records` (each with its
/// partition, key, value and headers), checking that each lands at the
/// offset it had.
fn remake_topic(topic: &str, partitions: i32, records: &[eddy::kafka::rdkafka::message::OwnedMessage]) {
    use eddy::kafka::rdkafka::admin::{AdminClient, AdminOptions};
    use eddy::kafka::rdkafka::client::DefaultClientContext;
    use eddy::kafka::rdkafka::message::Message;
    use eddy::kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let cfg = kafka();
    let admin: AdminClient<DefaultClientContext> = cfg.client().create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in futures_executor::block_on(admin.delete_topics(&[topic], &opts)).unwrap() {
        r.unwrap_or_else(|(t, code)| panic!("deleting {t}: {code}"));
    }
    eddy::kafka::topics::ensure(&cfg, &[eddy::kafka::topics::TopicSpec::new(topic, partitions)]).unwrap();
    let producer: BaseProducer = cfg.client().set("max.in.flight.requests.per.connection", "1").create().unwrap();
    for m in records {
        let mut r = BaseRecord::to(topic).partition(m.partition());
        if let Some(k) = m.key() {
            r = r.key(k);
        }
        if let Some(v) = m.payload() {
            r = r.payload(v);
        }
        if let Some(h) = m.headers() {
            r = r.headers(h.clone());
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let back = eddy::kafka::consume::read_to_end(&cfg, topic, Duration::from_secs(60)).unwrap();
    let at = |v: &[eddy::kafka::rdkafka::message::OwnedMessage]| -> Vec<(i32, i64)> {
        let mut x: Vec<(i32, i64)> = v.iter().map(|m| (m.partition(), m.offset())).collect();
        x.sort_unstable();
        x
    };
    assert_eq!(at(&back), at(records), "the remade {topic} keeps each record's offset");
}

/// Retention has deleted a restored job's input up to its checkpoint: the
/// job needs none of it. Tansu cannot delete records (DeleteRecords), so the
/// input topic is deleted and made again with every record at its offset,
/// those below the checkpoint's offsets rewritten to a device that does not
/// exist: a job that read any of them would have statistics for it.
#[test]
fn a_restored_job_reads_nothing_of_its_input_before_its_checkpoint() {
    use eddy::kafka::rdkafka::message::Message;
    let data = Data::new();
    gen(&data.dir(), "10", "8");
    eddy_ok(&["replay", data.dir().to_str().unwrap(), "--out", data.out().to_str().unwrap(), "-q"]);

    let p = prefix("retained");
    let store = data.root.path().join("stats-store");
    let ck = ["-w", "2", "--checkpoint-every", "300ms", "--store", store.to_str().unwrap()];
    let chain: Vec<(&str, Child)> = ["ingest", "enrich"].iter().map(|j| (*j, start(j, &p, &[]))).collect();
    let mut stats = start("stats", &p, &ck);
    let lines = std::fs::read_to_string(data.dir().join("readings.jsonl")).unwrap().lines().count();
    let half = (lines / 2).to_string();
    publish(&data.dir(), &p, &["--max-lines", &half, "--no-end"]);
    let until = Instant::now() + Duration::from_secs(240);
    while checkpoints_in(&store) < 1 || try_topic(&p, "stats").map_or(0, |t| t.len()) < 10 {
        assert!(Instant::now() < until, "no checkpoint in {store:?}");
        assert!(stats.try_wait().unwrap().is_none(), "stats ended before it was killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    stats.kill().unwrap();
    stats.wait().unwrap();
    publish(&data.dir(), &p, &["--skip-lines", &half, "--no-reference"]);
    for (name, child) in chain {
        finish(child, name);
    }

    let enriched = format!("{p}.enriched");
    let offsets = checkpoint_offsets(&store, &enriched);
    let all = eddy::kafka::consume::read_to_end(&kafka(), &enriched, Duration::from_secs(60)).unwrap();
    let partitions = all.iter().map(|m| m.partition()).max().unwrap() + 1;
    let mut poisoned = 0;
    let remade: Vec<_> = all
        .into_iter()
        .map(|m| {
            let before = offsets.get(&m.partition()).is_some_and(|o| m.offset() < *o);
            let value: Option<serde_json::Value> = m.payload().and_then(|v| serde_json::from_slice(v).ok());
            match value {
                Some(mut v) if before && v.get("device").is_some() => {
                    v["device"] = "retention-deleted-me".into();
                    poisoned += 1;
                    m.set_payload(Some(serde_json::to_vec(&v).unwrap()))
                }
                _ => m,
            }
        })
        .collect();
    assert!(poisoned > 0, "the checkpoint is past some readings: {offsets:?}");
    remake_topic(&enriched, partitions, &remade);

    let said = finish(start_loud("stats", &p, &["-w", "3", "--store", store.to_str().unwrap()]), "stats");
    let stats = topic(&p, "stats");
    assert!(
        !stats.iter().any(|(_, l)| l.contains("retention-deleted-me")),
        "the restored job read before its checkpoint"
    );
    assert!(said.contains("restored checkpoint"), "{said}");
    check_restarted(&p, &data.out(), &[("stats", "stats")], resumed_from(&said), "a restore without the early records");
}

#[test]
fn an_ingest_job_stopped_with_sigterm_and_restarted_loses_nothing() {
    redeploy("TERM", "ingest", "readings", &[("stats", "stats"), ("windows.1h", "windows"), ("events", "events")]);
}

#[test]
fn an_ingest_job_killed_with_sigkill_and_restarted_loses_nothing() {
    redeploy("KILL", "ingest", "readings", &[("stats", "stats"), ("windows.1h", "windows"), ("events", "events")]);
}

/// The windows job writes output mid-stream (its input's frontier moves with
/// the readings, not with the end of the stream), so it can be killed there.
#[test]
fn a_windows_job_killed_with_sigkill_and_restarted_loses_nothing() {
    redeploy("KILL", "windows", "windows.1h", &[("windows.1h", "windows")]);
}

/// Enrich resumes from its committed offsets (it does not rewind): a
/// regression test for resuming inside a broker's record batch.
#[test]
fn an_enrich_job_killed_with_sigkill_and_restarted_loses_nothing_downstream() {
    redeploy("KILL", "enrich", "enriched", &[("stats", "stats"), ("windows.1h", "windows"), ("events", "events")]);
}

/// Topics of records are created with the retention asked for (`--retention`,
/// default 7 days), the reference topics compacted.
#[test]
fn topics_eddy_creates_have_an_explicit_retention() {
    let data = Data::new();
    gen(&data.dir(), "2", "1");
    let p = prefix("retention");
    publish(&data.dir(), &p, &["--retention", "36h"]);
    let raw = eddy::kafka::topics::config_of(&kafka(), &format!("{p}.raw")).unwrap();
    assert_eq!(raw.get("retention.ms").map(String::as_str), Some("129600000"), "{raw:?}");
    assert_eq!(raw.get("cleanup.policy").map(String::as_str), Some("delete"), "{raw:?}");
    let devices = eddy::kafka::topics::config_of(&kafka(), &format!("{p}.devices")).unwrap();
    assert_eq!(devices.get("cleanup.policy").map(String::as_str), Some("compact"), "{devices:?}");
    // A job creates its output topics with the default.
    let q = prefix("retention-default");
    publish(&data.dir(), &q, &[]);
    finish(start("ingest", &q, &[]), "ingest");
    let readings = eddy::kafka::topics::config_of(&kafka(), &format!("{q}.readings")).unwrap();
    assert_eq!(readings.get("retention.ms").map(String::as_str), Some("604800000"), "{readings:?}");
    let out = eddy_err(&["publish", data.dir().to_str().unwrap(), "--brokers", &brokers(), "--retention", "soon"]);
    assert!(text(&out.stderr).contains("--retention \"soon\""), "{}", text(&out.stderr));
}

#[test]
fn an_unreachable_broker_is_a_clear_error_within_the_connect_timeout() {
    let spec = jobs_dir().join("stats.toml");
    let port = free_port();
    let started = Instant::now();
    let out = eddy_err(&[
        "run",
        spec.to_str().unwrap(),
        "--brokers",
        &format!("127.0.0.1:{port}"),
        "--connect-timeout",
        "2",
        "-q",
    ]);
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot reach Kafka at 127.0.0.1:{port}")), "{err}");
    // A hang guard, not a speed claim: the error must come at all.
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn undecodable_records_go_to_the_dead_letter_topic_with_partition_offset_and_reason() {
    let p = prefix("undecodable");
    let cfg = kafka();
    let topics = eddy::kafka::Topics::new(&p);
    eddy::kafka::topics::ensure(&cfg, &[eddy::kafka::topics::TopicSpec::new(topics.enriched(), 1)]).unwrap();
    let mut producer = eddy::kafka::produce::Producer::new(&cfg).unwrap();
    let good = r#"{"device":"d1","ts":1767225600000,"pos":{"partition":0,"offset":1},"late":false,"values":[["pm25",40.0]],"raw":[["pm25",40.0]],"calibrated":[],"context":null,"junk":[]}"#;
    producer.send(&topics.enriched(), Some(0), None, Some(b"not json at all"), eddy::kafka::codec::data_headers(0));
    producer.send(&topics.enriched(), Some(0), None, Some(good.as_bytes()), eddy::kafka::codec::data_headers(0));
    producer.send(&topics.enriched(), Some(0), None, None, eddy::kafka::codec::marker_headers(u64::MAX));
    assert!(producer.flush(Duration::from_secs(30)));
    drop(producer);

    let job = start("windows", &p, &["--partitions", "1"]);
    finish(job, "windows");
    let dead = topic(&p, "deadletter");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let v: serde_json::Value = serde_json::from_str(&dead[0].1).unwrap();
    assert_eq!(v["pos"], serde_json::json!({"partition": 0, "offset": 0}));
    assert!(v["reason"].as_str().unwrap().starts_with("undecodable"), "{v}");
    assert_eq!(v["line"], "not json at all");
    // The job went on: the good record made its window.
    let windows = topic(&p, "windows.1h");
    assert!(windows.iter().any(|(_, w)| w.contains("\"d1\"")), "{windows:?}");
}

/// Over Kafka as in replay: a record of `P.raw` longer than the ingest
/// spec's `max_line` is a `line_too_long` dead letter holding its first
/// 1 KiB, a 129-byte `device_id` is `invalid_device_id`, and the readings
/// around them go on.
#[test]
fn a_record_longer_than_max_line_and_a_129_byte_device_id_are_dead_letters_over_kafka() {
    let data = Data::new();
    let head = format!(r#"{{"device_id":"d1","ts":{},"pm25":5,"note":""#, T0 + 2 * MIN);
    let long = format!("{head}{}\"}}", "x".repeat(20_000));
    let lines = vec![
        reading("d1", T0, &[("pm25", serde_json::json!(10))]),
        long.clone(),
        reading(&"d".repeat(129), T0 + MIN, &[("pm25", serde_json::json!(1))]),
        reading("d1", T0 + 3 * MIN, &[("pm25", serde_json::json!(12))]),
    ];
    data.readings(&lines);
    // Replay with the same spec (written to ROOT/jobs/ingest.toml): what Kafka must match.
    let summary = data.replay_with_specs(&[("ingest.toml", "kind = \"ingest\"\nmax_line = \"8KiB\"\n")]);
    assert_eq!(summary["deadletter"], 2);
    let spec = data.root.path().join("jobs").join("ingest.toml");

    let p = prefix("max-line");
    let ingest = eddy()
        .args(["run", spec.to_str().unwrap(), "--brokers", &brokers(), "--prefix", &p, "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish(&data.dir(), &p, &[]);
    finish(ingest, "ingest");

    let mut dead: Vec<serde_json::Value> =
        topic(&p, "deadletter").iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    dead.sort_by_key(|d| d["pos"]["offset"].as_u64());
    assert_eq!(dead.len(), 2, "{dead:#?}");
    // One partition: offsets are line numbers minus one.
    assert_eq!(dead[0]["pos"], serde_json::json!({"partition": 0, "offset": 1}));
    let reason =
        format!("line_too_long: the line is {} bytes long, more than the limit of 8192 bytes (max_line)", long.len());
    assert_eq!(dead[0]["reason"], reason.as_str());
    assert_eq!(dead[0]["line"], long[..1024]);
    assert_eq!(dead[1]["pos"], serde_json::json!({"partition": 0, "offset": 2}));
    assert_eq!(dead[1]["reason"], "invalid_device_id: field `device_id` is longer than 128 bytes (129 bytes)");
    assert_eq!(dead[1]["line"], lines[2].as_str());
    // The same dead letters as replay's.
    let replayed = data.output("deadletter");
    for (k, r) in dead.iter().zip(&replayed) {
        assert_eq!((&k["reason"], &k["line"]), (&r["reason"], &r["line"]));
    }
    assert_eq!(topic(&p, "readings").len(), 2, "the readings around them");
}

fn python() -> PathBuf {
    std::env::var("EDDY_PYTHON").map(PathBuf::from).unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        assert!(venv.exists(), "no Python with confluent-kafka: run scripts/test.sh, which installs it into .venv");
        venv
    })
}

#[test]
fn confluent_kafka_produces_what_eddy_consumes_and_consumes_what_eddy_produces() {
    let p = prefix("interop");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kafka_peer.py");
    let ingest = start("ingest", &p, &[]);
    // The Python peer produces raw readings (and an end marker) into P.raw…
    let o = Command::new(python()).args([script.to_str().unwrap(), "produce", &brokers(), &p]).output().unwrap();
    assert!(o.status.success(), "kafka_peer.py produce: {}", text(&o.stderr));
    finish(ingest, "ingest");
    // …and consumes the readings and dead letters eddy wrote.
    let o = Command::new(python()).args([script.to_str().unwrap(), "consume", &brokers(), &p]).output().unwrap();
    assert!(o.status.success(), "kafka_peer.py consume: {}", text(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["readings"], 3, "{got}");
    assert_eq!(got["deadletter"], 1, "{got}");
    assert_eq!(got["devices"], serde_json::json!(["py-1", "py-2"]), "{got}");
    assert_eq!(got["keyed_by_device"], true, "{got}");
}
