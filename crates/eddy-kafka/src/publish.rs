//! `eddy publish`: a recorded dataset into a pipeline's topics.
//!
//! Reference data first (the base tables at `ts` 0, then every update with
//! its own `ts`, each to its compacted topic keyed by primary key), then the
//! readings file line by line into `P.raw` (keyed by `device_id` when the
//! line has one), optionally at the recorded pace, then an `end` marker into
//! every partition of `P.raw`. The bytes of each line are published exactly
//! as they are in the file, junk included.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eddy_connectors::dataset::Dataset;
use eddy_core::reference::Table;
use eddy_core::validate::parse_line;

use crate::codec::marker_headers;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::produce::Producer;
use crate::topics::{ensure, TopicSpec, Topics};

/// What to publish, and how.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// The pipeline's topics.
    pub topics: Topics,
    /// Partitions of `P.raw` when it has to be created.
    pub raw_partitions: i32,
    /// `Some(x)`: publish at x times the recorded event-time pace.
    pub speed: Option<f64>,
    /// Leave out the `end` markers (the stream stays open).
    pub no_end: bool,
    /// Leave out the reference data (publish readings only).
    pub no_reference: bool,
    /// Skip this many lines of the readings file first.
    pub skip_lines: u64,
    /// Publish at most this many lines (after the skipped ones).
    pub max_lines: Option<u64>,
}

/// Progress of a publish: lines and bytes sent, of the total bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublishProgress {
    /// Lines sent.
    pub lines: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Size of the readings file.
    pub total_bytes: u64,
}

/// What a publish sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Reading lines (valid or not) sent to `P.raw`.
    pub lines: u64,
    /// Reference records sent.
    pub reference: u64,
}

/// The topics a pipeline reads that `publish` writes, with their layout.
pub fn input_topics(topics: &Topics, raw_partitions: i32) -> Vec<TopicSpec> {
    let mut v = vec![TopicSpec::new(topics.raw(), raw_partitions)];
    v.extend(topics.reference().into_iter().map(|t| TopicSpec::compacted(t, 1)));
    v
}

/// Publishes a dataset. `on_progress` is called every few thousand lines.
pub fn publish(
    cfg: &KafkaConfig,
    opts: &PublishOptions,
    mut on_progress: impl FnMut(PublishProgress),
) -> Result<PublishSummary> {
    if let Some(s) = opts.speed {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::Other(format!("--speed must be a positive number, found {s}")));
        }
    }
    let dataset = Dataset::open(&opts.dataset).map_err(|e| Error::Other(e.to_string()))?;
    cfg.check_reachable()?;
    ensure(cfg, &input_topics(&opts.topics, opts.raw_partitions))?;
    let mut producer = Producer::new(cfg)?;
    let mut summary = PublishSummary::default();

    let reference = if opts.no_reference { &[][..] } else { &dataset.updates[..] };
    let base = if opts.no_reference { &[][..] } else { &dataset.base[..] };
    for u in base.iter().chain(reference.iter()) {
        let (table, key, value) = u.to_json();
        let topic = match table {
            Table::Devices => opts.topics.devices(),
            Table::Calibration => opts.topics.calibration(),
            Table::Rules => opts.topics.rules(),
        };
        let value = value.to_string();
        producer.send(&topic, None, Some(key.as_bytes()), Some(value.as_bytes()), Default::default());
        summary.reference += 1;
    }

    // The reference data is in before the first reading, so a job that
    // reads both sees every change before the readings it applies to.
    wait_acked(&mut producer)?;
    let raw = opts.topics.raw();
    let partitions = producer.partitions(&raw, cfg.connect_timeout)?;
    let mut lines = dataset.lines().map_err(|e| Error::Other(e.to_string()))?;
    let mut buf = Vec::with_capacity(1024);
    let mut progress = PublishProgress { total_bytes: dataset.readings_bytes, ..Default::default() };
    let mut pace: Option<(Instant, i64)> = None;
    let mut skipped = 0u64;
    loop {
        if opts.max_lines.is_some_and(|m| summary.lines >= m) {
            break;
        }
        buf.clear();
        match lines.next_line(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(Error::Other(format!("{}: {e}", lines.describe()))),
        }
        if skipped < opts.skip_lines {
            skipped += 1;
            continue;
        }
        let parsed = parse_line(&buf).ok();
        if let (Some(p), Some(speed)) = (&parsed, opts.speed) {
            let (origin, first) = *pace.get_or_insert((Instant::now(), p.ts));
            let due = origin + Duration::from_secs_f64(((p.ts - first).max(0) as f64 / 1000.0) / speed);
            let now = Instant::now();
            if due > now {
                producer.poll();
                std::thread::sleep(due - now);
            }
        }
        let key = parsed.as_ref().map(|p| p.device.name());
        producer.send(&raw, None, key.as_deref().map(str::as_bytes), Some(&buf), Default::default());
        summary.lines += 1;
        progress.lines += 1;
        progress.bytes += buf.len() as u64 + 1;
        if summary.lines % 4096 == 0 {
            producer.poll();
            on_progress(progress);
            if let Some(e) = producer.error() {
                return Err(e.clone().into());
            }
        }
    }
    if !opts.no_end {
        // Every line is acknowledged before the end markers go out, so a
        // marker never overtakes a line of its partition.
        wait_acked(&mut producer)?;
        for p in 0..partitions {
            producer.send(&raw, Some(p), None, None, marker_headers(u64::MAX));
        }
    }
    wait_acked(&mut producer)?;
    on_progress(progress);
    Ok(summary)
}

fn wait_acked(producer: &mut Producer) -> Result<()> {
    while !producer.flush(Duration::from_secs(1)) {
        if let Some(e) = producer.error() {
            return Err(e.clone().into());
        }
        tracing::info!("waiting for the brokers to acknowledge every record");
    }
    match producer.error() {
        Some(e) => Err(e.clone().into()),
        None => Ok(()),
    }
}
