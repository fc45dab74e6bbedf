//! The machine-learning features over Kafka: the calibration adapter's
//! feedback loop through `P.calibration`, and the scoring job with models
//! from a file and from `P.models`. Every job is its own `eddy run` process
//! against the real broker (Tansu, started by scripts/test.sh at
//! `EDDY_BROKERS`, default 127.0.0.1:9092); each test uses its own topic
//! prefix. Helpers copied from `tests/kafka.rs`.
#![cfg(all(feature = "kafka", feature = "ml"))]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use eddy::kafka::rdkafka;
use eddy::kafka::rdkafka::message::{Headers, Message};
use serde_json::Value;
use support::broker::{
    brokers, config as kafka, finish_by, jobs_dir, prefix, publish, records, start, start_spec, try_records,
};
use support::*;

/// Waits for a job to exit on its own, for at most 15 minutes (the
/// adapter loop and the model swaps take a few); returns its stdout.
fn finish(child: Child, what: &str) -> String {
    finish_by(child, what, Instant::now() + Duration::from_secs(900))
}

/// Asserts a job is still running.
fn running(child: &mut Child, what: &str) {
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("{what} exited ({status}) while it should run:\n{err}");
    }
}

/// A topic's values as text; none while the topic does not exist.
fn topic_so_far(prefix: &str, name: &str) -> Vec<String> {
    try_records(prefix, name).unwrap_or_default().into_iter().map(|r| text(&r.3)).collect()
}

/// A topic's values, as text.
fn topic(prefix: &str, name: &str) -> Vec<String> {
    records(prefix, name).into_iter().map(|r| text(&r.3)).collect()
}

/// Enriched readings as comparable JSON: the `enriched.jsonl` encoding
/// without the input position (a file's line numbers are 1-based, Kafka
/// offsets 0-based).
fn enriched_key(mut v: Value) -> String {
    if let Some(o) = v.as_object_mut() {
        o.remove("line_no");
        o.remove("pos");
    }
    v.to_string()
}

/// The on-time readings of `P.enriched`, in the encoding of `enriched.jsonl`.
fn kafka_enriched(prefix: &str) -> Vec<Value> {
    use eddy::connectors::jsonl::Encode;
    records(prefix, "enriched")
        .into_iter()
        .map(|r| serde_json::from_slice::<eddy::core::reading::Enriched>(&r.3).unwrap())
        .filter(|e| !e.late)
        .map(|e| {
            let mut buf = Vec::new();
            e.encode(&mut buf);
            serde_json::from_slice(&buf).unwrap()
        })
        .collect()
}

/// Per device, the calibrated co2 baseline over the last 24 h: the mean of
/// the 3 lowest hourly means (the adapter's own definition; as in tests/ml.rs).
fn co2_baselines(enriched: &[Value]) -> BTreeMap<String, f64> {
    let end = enriched.iter().map(|e| e["ts"].as_i64().unwrap()).max().unwrap();
    let mut hours: BTreeMap<String, BTreeMap<i64, (f64, f64)>> = BTreeMap::new();
    for e in enriched {
        let (Some(v), ts) = (e["co2"].as_f64(), e["ts"].as_i64().unwrap()) else { continue };
        if ts >= end - 24 * 3_600_000 {
            let h = hours
                .entry(e["device_id"].as_str().unwrap().to_string())
                .or_default()
                .entry(ts / 3_600_000)
                .or_default();
            *h = (h.0 + v, h.1 + 1.0);
        }
    }
    hours
        .into_iter()
        .filter(|(_, h)| h.len() >= 20)
        .map(|(d, h)| {
            let mut means: Vec<f64> = h.values().map(|(s, n)| s / n).collect();
            means.sort_by(f64::total_cmp);
            (d, means[..3].iter().sum::<f64>() / 3.0)
        })
        .collect()
}

/// The pipeline of the adapter tests: the adapter on, and hour-long epochs
/// (one round trip enrich → adapter → enrich moves the loop by an epoch).
const LOOP_SPECS: [(&str, &str); 2] =
    [("adapter.toml", "kind = \"adapter\"\nenabled = true\n"), ("ingest.toml", "kind = \"ingest\"\nepoch = \"1h\"\n")];

#[test]
fn the_adapter_loop_over_kafka_removes_the_drift_and_computes_what_replay_computes() {
    let root = tempfile::tempdir().unwrap();
    let ds = root.path().join("ds");
    eddy_ok(&[
        "gen",
        ds.to_str().unwrap(),
        "--devices",
        "6",
        "--hours",
        "96",
        "--seed",
        "5",
        "--late",
        "0",
        "--drift",
        "20",
        "--drift-fraction",
        "1",
    ]);
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for (f, t) in LOOP_SPECS {
        std::fs::write(jobs.join(f), t).unwrap();
    }
    let (plain, adapted) = (root.path().join("plain"), root.path().join("adapted"));
    eddy_ok(&["replay", ds.to_str().unwrap(), "--out", plain.to_str().unwrap(), "-q"]);
    let j = jobs.to_str().unwrap();
    eddy_ok(&["replay", ds.to_str().unwrap(), "--out", adapted.to_str().unwrap(), "-q", "--jobs", j]);

    let p = prefix("adapter");
    publish(&ds, &p, &[]);
    let mut children: Vec<(&str, Child)> = Vec::new();
    for job in ["ingest", "enrich", "adapter", "stats", "windows", "alerts"] {
        // The pipeline's own spec of the job's kind if it has one (SPEC
        // replaces the file of its kind in --jobs), else the shipped one.
        let own = jobs.join(format!("{job}.toml"));
        let spec = if own.exists() { own } else { jobs_dir().join(format!("{job}.toml")) };
        children.push((job, start_spec(&spec, &p, &["--jobs", j])));
    }
    for (name, child) in children {
        finish(child, name);
    }

    // The drift is gone over Kafka, as in replay.
    let before = co2_baselines(&read_jsonl(&plain.join("enriched.jsonl")));
    let enriched = kafka_enriched(&p);
    let after = co2_baselines(&enriched);
    let off = |b: f64| (b - 420.0).abs() / 420.0;
    let drifted = before.values().filter(|b| off(**b) > 0.05).count();
    assert!(drifted >= 4, "without the adapter most baselines are off by more than 5%: {before:?}");
    let text = std::fs::read_to_string(ds.join("drift.csv")).unwrap();
    let drifting: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
    assert_eq!(drifting.len(), 6, "{text}");
    for d in drifting {
        let a = after[d];
        eprintln!("{d}: baseline {:.1} without the adapter, {a:.1} with it over Kafka", before[d]);
        assert!(off(a) <= 0.05, "{d}: the adapted baseline {a:.1} is not within 5% of 420");
    }
    // The adapter published its updates into P.calibration, after the dataset's rows.
    let updates: Vec<_> = records(&p, "calibration").into_iter().filter(|r| r.0.is_some()).collect();
    assert!(!updates.is_empty(), "no calibration update in {p}.calibration");
    for (_, _, _, v) in &updates {
        let v: Value = serde_json::from_slice(v).unwrap();
        assert_eq!((v["table"].as_str(), v["op"].as_str()), (Some("calibration"), Some("upsert")), "{v}");
        assert_eq!(v["row"]["channel"], "co2", "{v}");
    }

    // And the chain computes what replay computes with the adapter on.
    let replayed: Vec<String> = read_jsonl(&adapted.join("enriched.jsonl")).into_iter().map(enriched_key).collect();
    assert_same(sorted(enriched.into_iter().map(enriched_key).collect()), sorted(replayed), "enriched");
    assert_same(sorted(topic(&p, "stats")), file_lines(&adapted, "stats"), "stats");
    assert_same(sorted(topic(&p, "windows.1h")), file_lines(&adapted, "windows"), "windows");
    assert_same(sorted(topic(&p, "events")), file_lines(&adapted, "events"), "events");
}

/// Trains a forecaster on `backup`; `extra` adds options (`--brokers`…).
fn train(backup: &Path, model: &Path, version: &str, extra: &[&str]) -> String {
    let mut args = vec!["train", "--backup", backup.to_str().unwrap(), "--task", "forecast", "-q"];
    args.extend_from_slice(&["--out", model.to_str().unwrap(), "--version", version]);
    args.extend_from_slice(extra);
    eddy_ok(&args)
}

/// `(epoch, model_version, horizon_min)` of every forecast in `P.forecasts`.
fn forecasts(prefix: &str) -> Vec<(u64, String, u64)> {
    topic_so_far(prefix, "forecasts")
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let p = v["probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "{v}");
            (
                v["epoch"].as_u64().unwrap(),
                v["model_version"].as_str().unwrap().to_string(),
                v["horizon_min"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The enrich job's output on a staging prefix, fed to the scoring job's
/// `P.enriched` a chunk at a time: records and markers as enrich wrote them
/// (same partition, key, value and `eddy.t`), so the scoring job sees a live
/// stream that advances when the test says so.
struct Feed {
    producer: eddy::kafka::produce::Producer,
    topic: String,
    parts: Vec<Vec<rdkafka::message::OwnedMessage>>,
    chunks: usize,
    next: usize,
}

impl Feed {
    fn new(staging: &str, live: &str, chunks: usize) -> Feed {
        let topic = format!("{staging}.enriched");
        let mut parts: Vec<Vec<rdkafka::message::OwnedMessage>> = Vec::new();
        for m in eddy::kafka::consume::read_to_end(&kafka(), &topic, Duration::from_secs(60)).unwrap() {
            let p = m.partition() as usize;
            parts.resize_with(parts.len().max(p + 1), Vec::new);
            parts[p].push(m);
        }
        for p in &mut parts {
            p.sort_by_key(|m| m.offset());
        }
        let producer = eddy::kafka::produce::Producer::new(&kafka()).unwrap();
        Feed { producer, topic: format!("{live}.enriched"), parts, chunks, next: 0 }
    }

    /// Sends the next chunk; false once everything (end markers included) was sent.
    fn chunk(&mut self) -> bool {
        if self.next >= self.chunks {
            return false;
        }
        let (k, n) = (self.next, self.chunks);
        for (p, msgs) in self.parts.iter().enumerate() {
            for m in &msgs[k * msgs.len() / n..(k + 1) * msgs.len() / n] {
                let headers = m.headers().cloned().unwrap_or_default();
                self.producer.send(&self.topic, Some(p as i32), m.key(), m.payload(), headers);
            }
        }
        // A marker per partition: every record below the least time still
        // to send is in (enrich wrote markers only at its end here).
        for (p, msgs) in self.parts.iter().enumerate() {
            let rest = &msgs[(k + 1) * msgs.len() / n..];
            let least = rest.iter().filter_map(|m| stamp(m, "eddy.t")).min();
            if let Some(t) = least {
                self.producer.send(&self.topic, Some(p as i32), None, None, eddy::kafka::codec::marker_headers(t));
            }
        }
        assert!(self.producer.flush(Duration::from_secs(30)));
        self.next += 1;
        true
    }
}

/// A record's header `key` as a number.
fn stamp(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<u64> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == key).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Feeds chunks, waiting after each, until `done` holds; fails if the
/// stream runs out first.
fn feed_until(feed: &mut Feed, score: &mut Child, what: &str, done: impl Fn() -> bool) {
    loop {
        running(score, "the scoring job");
        for _ in 0..40 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(feed.chunk(), "the stream ended before {what}");
    }
}

fn scored(p: &str, version: &str) -> usize {
    forecasts(p).iter().filter(|f| f.1 == version).count()
}

#[test]
fn the_scoring_job_swaps_models_from_the_topic_and_the_file_while_it_runs() {
    // Models trained on one backup.
    let root = tempfile::tempdir().unwrap();
    let train_ds = root.path().join("train");
    eddy_ok(&["gen", train_ds.to_str().unwrap(), "--devices", "20", "--hours", "72", "--seed", "3"]);
    let train_out = root.path().join("train-out");
    eddy_ok(&["replay", train_ds.to_str().unwrap(), "--out", train_out.to_str().unwrap(), "-q"]);
    let backup = train_out.join("backup");
    let model = root.path().join("model.json");
    train(&backup, &model, "v1", &[]);

    // A live fleet through ingest and enrich on a staging prefix; its enriched
    // stream is then fed to the scoring job in chunks, while the job runs.
    let ds = root.path().join("live");
    eddy_ok(&["gen", ds.to_str().unwrap(), "--devices", "4", "--hours", "8", "--seed", "9"]);
    let staging = prefix("score-staging");
    publish(&ds, &staging, &[]);
    let chain = [("ingest", start("ingest", &staging, &[])), ("enrich", start("enrich", &staging, &[]))];
    for (name, child) in chain {
        finish(child, name);
    }
    let p = prefix("score");
    let mut score = start("score", &p, &["--model", model.to_str().unwrap()]);
    let mut feed = Feed::new(&staging, &p, 24);

    // 1. The file's model scores.
    feed_until(&mut feed, &mut score, "v1 scored", || scored(&p, "v1") > 0);
    // 2. A model published to P.models by `eddy train --brokers` replaces it.
    let v2 = root.path().join("v2.json");
    let b = brokers();
    let out = train(&backup, &v2, "v2", &["--horizon", "20", "--brokers", &b, "--prefix", &p]);
    assert!(out.contains(&format!("published to {p}.models")), "{out}");
    feed_until(&mut feed, &mut score, "v2 scored", || scored(&p, "v2") > 0);
    // 3. Bad model records: dead letters, and the job keeps v2.
    let mut producer = eddy::kafka::produce::Producer::new(&kafka()).unwrap();
    let models = format!("{p}.models");
    let mut wrong: Value = serde_json::from_str(&std::fs::read_to_string(&v2).unwrap()).unwrap();
    wrong["format_version"] = 99.into();
    wrong["version"] = "v-wrong".into();
    let wrong = wrong.to_string();
    for bad in [&b"\xff\xfenot a model"[..], b"{\"format\": \"eddy-model\"", wrong.as_bytes()] {
        producer.send(&models, Some(0), Some(b"bad"), Some(bad), Default::default());
    }
    assert!(producer.flush(Duration::from_secs(30)));
    feed_until(&mut feed, &mut score, "the bad records were dead letters", || {
        topic_so_far(&p, "deadletter").len() >= 3
    });
    let v2_before = scored(&p, "v2");
    feed_until(&mut feed, &mut score, "v2 scored after the bad records", || scored(&p, "v2") > v2_before);
    // 4. A model written to the file replaces v2 (atomically, as `eddy train` writes).
    let mut v3: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    v3["version"] = "v3".into();
    let tmp = root.path().join("model.json.tmp");
    std::fs::write(&tmp, v3.to_string()).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    feed_until(&mut feed, &mut score, "v3 scored", || scored(&p, "v3") > 0);
    // The rest, and the end of the stream.
    while feed.chunk() {}
    finish(score, "the scoring job");

    // Each epoch was scored by one model; v1, then v2, then v3.
    let all = forecasts(&p);
    let mut by_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (epoch, version, horizon) in &all {
        let expected = if version == "v2" { 20 } else { 30 };
        assert_eq!(*horizon, expected, "{version}");
        by_epoch.entry(*epoch).or_default().insert(version.clone());
    }
    assert!(by_epoch.values().all(|v| v.len() == 1), "an epoch was scored by two models: {by_epoch:?}");
    let order: Vec<&String> = by_epoch.values().map(|v| v.first().unwrap()).collect();
    let mut runs: Vec<&String> = order.clone();
    runs.dedup();
    assert_eq!(runs, ["v1", "v2", "v3"], "the versions by epoch");
    // The bad records are dead letters with their partition, offset and reason.
    let model_records = records(&p, "models");
    let dead: Vec<Value> = topic(&p, "deadletter").iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    // v2 (from eddy train), then the three bad records.
    assert_eq!(model_records.len(), 4, "{model_records:?}");
    let bad = &model_records[1..];
    let reasons: Vec<(i64, String)> = dead
        .iter()
        .map(|d| (d["pos"]["offset"].as_i64().unwrap(), d["reason"].as_str().unwrap().to_string()))
        .collect();
    for (i, (_, partition, offset, _)) in bad.iter().enumerate() {
        let d = dead.iter().find(|d| d["pos"]["offset"] == *offset && d["pos"]["partition"] == *partition);
        let d = d.unwrap_or_else(|| panic!("no dead letter for {p}.models {partition}/{offset}: {reasons:?}"));
        let reason = d["reason"].as_str().unwrap();
        let expected = ["undecodable: not UTF-8", "undecodable: not JSON", "bad_model: field `format_version`"][i];
        assert!(reason.starts_with(expected), "{reason}");
    }
    assert!(!all.iter().any(|f| f.1 == "v-wrong"));
}
