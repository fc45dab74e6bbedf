//! The typed job API, end to end: the shipped example job, run through the
//! public API, agrees with a direct computation from `eddy replay`'s output.

mod support;

#[path = "../examples/custom_job.rs"]
mod custom_job;

use std::collections::BTreeMap;

use eddy::runtime::job::JobOptions;
use eddy::runtime::workers::Workers;
use support::*;

#[test]
fn the_example_job_computes_site_means_from_enriched_readings() {
    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    let replay_out = root.path().join("replay");
    eddy_ok(&["replay", sample, "--out", replay_out.to_str().unwrap(), "-q"]);

    // Expected: from enriched.jsonl, mean pm25 per (site, 15-minute window).
    let mut expected: BTreeMap<(String, i64), (f64, u64)> = BTreeMap::new();
    for e in read_jsonl(&replay_out.join("enriched.jsonl")) {
        let Some(v) = e["pm25"].as_f64() else { continue };
        let site = e["device"]["site"].as_str().unwrap_or("unknown").to_string();
        let start = e["ts"].as_i64().unwrap().div_euclid(900_000) * 900_000;
        let s = expected.entry((site, start)).or_default();
        s.0 += v;
        s.1 += 1;
    }
    assert!(expected.len() > 100);

    for w in [1, 2] {
        let out = root.path().join(format!("job{w}"));
        let opts = JobOptions { workers: Workers::threads(w), ..JobOptions::new(sample, &out) };
        let summary = custom_job::site_pm25_job(&opts).unwrap();
        assert_eq!(summary.records["site_pm25"], expected.len() as u64);
        let mut got = BTreeMap::new();
        for r in read_jsonl(&out.join("site_pm25.jsonl")) {
            let k = (r["site"].as_str().unwrap().to_string(), r["window_start"].as_i64().unwrap());
            assert!(got.insert(k, (r["mean_pm25"].as_f64().unwrap(), r["readings"].as_u64().unwrap())).is_none());
        }
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "-w {w}");
        for (k, (sum, n)) in &expected {
            let (mean, count) = got[k];
            assert_eq!(count, *n, "{k:?}");
            let want = sum / *n as f64;
            assert!((mean - want).abs() <= 1e-9 * want.abs().max(1.0), "{k:?}: {mean} vs {want}");
        }
    }
}

/// The enriched stream's batches each hold only on-time or only late
/// readings. `on_time` then passes a shared batch on whole or drops it,
/// and never copies the records of one that the backup's writer thread
/// still holds (see `OUT_BATCH` in the enrich operator).
#[test]
fn enriched_batches_hold_only_on_time_or_only_late_readings() {
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Inspect;

    let root = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/sample");
    // (batches, late batches, mixed batches, late readings, readings)
    let seen = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64, 0u64)));
    let s = Arc::clone(&seen);
    let opts = JobOptions { workers: Workers::threads(2), ..JobOptions::new(sample, root.path()) };
    let summary = eddy::runtime::job::run(
        &opts,
        move |job| {
            let reference = job.reference();
            let enriched = job.ingest().readings.enrich(&reference, 6 * 3_600_000);
            job.commit(enriched.clone().sink(job.jsonl("enriched").unwrap()));
            let s = Arc::clone(&s);
            enriched.into_shared().inspect_core(move |event| {
                let Ok((_, batch)) = event else { return };
                let late = batch.iter().filter(|e| e.late).count() as u64;
                let mut s = s.lock().unwrap();
                s.0 += 1;
                s.1 += u64::from(late > 0 && late == batch.len() as u64);
                s.2 += u64::from(late > 0 && late < batch.len() as u64);
                s.3 += late;
                s.4 += batch.len() as u64;
            });
        },
        |_| {},
    )
    .unwrap();
    let (batches, late_batches, mixed, late, readings) = *seen.lock().unwrap();
    assert_eq!(readings, summary.valid, "every valid reading is enriched");
    assert_eq!(late, summary.late);
    assert!(late > 0 && late_batches > 0, "the sample has late readings: {late}");
    assert_eq!(mixed, 0, "{mixed} of {batches} batches mix on-time and late readings");
}
