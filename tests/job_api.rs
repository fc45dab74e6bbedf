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
