//! `eddy replay`: the whole pipeline in one process, on a recorded dataset.
//!
//! The jobs (ingest, enrich, stats, windows, alerts) are built into one
//! timely dataflow per worker and wired by in-process topics: each topic is a
//! [`Flow`](crate::flow::Flow) from one job to the next. Each job's part is
//! the same code that runs it alone (see `docs/architecture.md`).

use eddy_core::spec::PipelineSpec;
use eddy_operators::stats::StatsParams;
use eddy_state::stats::StatsConfig;
use eddy_state::window::WindowSpec;

use crate::error::Result;
use crate::job::{run, JobContext};
pub use crate::job::{JobOptions as ReplayOptions, Progress, Summary};

/// The outputs of a replay, by name: each is `OUT/<name>.jsonl`.
pub const OUTPUTS: [&str; 6] = ["enriched", "late", "deadletter", "stats", "windows", "events"];

/// The statistics settings of a pipeline spec.
pub fn stats_params(spec: &PipelineSpec) -> StatsParams {
    StatsParams {
        config: StatsConfig {
            alpha: spec.stats.alpha,
            top_k: spec.stats.top_k,
            trend_span_ms: spec.stats.trend_span.ms(),
            trend_buckets: spec.stats.trend_buckets,
        },
        snapshot_every_ms: spec.stats.snapshot_every.ms(),
    }
}

/// The window settings of a pipeline spec.
pub fn window_spec(spec: &PipelineSpec) -> WindowSpec {
    WindowSpec::hopping(spec.windows.size.ms(), spec.windows.slide().ms())
}

/// Builds the embedded pipeline on one worker.
pub fn pipeline(job: &mut JobContext<'_, '_>) {
    let spec = job.spec().clone();
    let (readings, dead) = job.ingest();
    let reference = job.reference();

    // ingest → readings, late, deadletter
    job.commit(readings.clone().late().step("late").sink(job.jsonl("late")));
    job.commit(dead.step("deadletter").sink(job.jsonl("deadletter")));

    // enrich → enriched (late readings are enriched too, for the backup)
    let enriched = readings.step("enrich").enrich(&reference, spec.enrich.reference_retention.ms());
    let on_time = enriched.on_time();
    job.commit(on_time.clone().sink(job.jsonl("enriched")));

    // stats, windows, alerts ← enriched (on time)
    job.commit(on_time.clone().step("stats").stats(stats_params(&spec)).sink(job.jsonl("stats")));
    job.commit(on_time.clone().step("windows").windows(window_spec(&spec)).sink(job.jsonl("windows")));
    job.commit(on_time.step("alerts").detect(&reference).sink(job.jsonl("events")));
}

/// Runs the embedded pipeline over a dataset.
pub fn replay(opts: &ReplayOptions, on_progress: impl FnMut(Progress)) -> Result<Summary> {
    std::fs::create_dir_all(&opts.out).map_err(|e| eddy_connectors::Error::io(&opts.out, e))?;
    // Create every output up front, so that an empty one exists as a file.
    let summary = run(
        opts,
        |job| {
            for name in OUTPUTS {
                let _ = job.jsonl(name);
            }
            pipeline(job)
        },
        on_progress,
    )?;
    Ok(summary)
}
