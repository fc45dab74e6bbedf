//! A custom job: 15-minute PM2.5 averages per site.
//!
//! `cargo run --release --example custom_job -- datasets/sample out/site_pm25 [-w 2]`
//! writes `out/site_pm25/site_pm25.jsonl` and a summary. Copy this file to
//! start a job of your own; `site_pm25_job` is the whole job.
use eddy::core::{Channel, Enriched};
use eddy::operators::windows::Windowed;
use eddy::runtime::job::{run, JobOptions, Summary};
use eddy::runtime::workers::Workers;
use eddy::state::window::WindowSpec;

/// The job: enrich, keep on-time PM2.5, group by site, 15-minute windows, write.
pub fn site_pm25_job(opts: &JobOptions) -> eddy::runtime::Result<Summary> {
    run(
        opts,
        |job| {
            let reference = job.reference();
            let site_means = job
                .ingest()
                .readings
                .enrich(&reference, 6 * 3_600_000) // calibration and context as of each reading
                .on_time()
                .filter(|e| e.value(Channel::PM25).is_some())
                .key_by(|e| eddy::core::ids::stable_hash(site(e).as_bytes())) // a site's devices meet on one worker
                .window(WindowSpec::tumbling(15 * 60_000))
                .aggregate(|e, emit| emit(site(e), e.ts, e.value(Channel::PM25).unwrap_or_default()))
                .map(|w: Windowed<String>| SiteMean {
                    site: w.key,
                    window_start: w.start,
                    mean_pm25: w.agg.mean(),
                    readings: w.agg.count,
                });
            job.build_with(|job| {
                job.commit(site_means.sink(job.jsonl("site_pm25")?));
                Ok(())
            });
        },
        |_| {},
    )
}

/// The device's site from its context, or "unknown".
pub fn site(e: &Enriched) -> String {
    e.context.as_ref().and_then(|c| c.value("site")).unwrap_or("unknown").to_string()
}

/// One output line.
#[derive(Clone, serde::Serialize)]
pub struct SiteMean {
    site: String,
    window_start: i64,
    mean_pm25: f64,
    readings: u64,
}

impl eddy::connectors::jsonl::Encode for SiteMean {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend(serde_json::to_vec(self).unwrap_or_default())
    }
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dataset, out) = (args.get(1).ok_or("usage: custom_job DATASET OUT [-w N]")?, args.get(2).ok_or("OUT")?);
    let threads = match args.get(3).map(String::as_str) {
        Some("-w") => args.get(4).ok_or("-w N")?.parse()?,
        _ => 1,
    };
    let opts = JobOptions { workers: Workers::threads(threads), ..JobOptions::new(dataset, out) };
    let summary = site_pm25_job(&opts)?;
    println!("{} readings in, {:?} out", summary.valid, summary.records);
    Ok(())
}
