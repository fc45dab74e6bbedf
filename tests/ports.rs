//! Ports between jobs in the embedded pipeline, through the public API and
//! the testing kit: a user's job reads the ingest job's `readings` port
//! in-process, a job reading a port that no job writes fails the run naming
//! it, and `--outputs` builds only the jobs it needs.

use eddy::core::reading::Reading;
use eddy::runtime::component::{Job, JobBuilder, Registry};
use eddy::testing::Bench;
use serde::Deserialize;

/// Every late reading, read from the ingest job's `readings` port.
struct LateCopy;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

impl Job for LateCopy {
    type Spec = NoSettings;
    const KIND: &'static str = "late_copy";
    const ABOUT: &'static str = "The late readings, again (a test).";
    const INPUTS: &'static [&'static str] = &["readings"];
    const OUTPUTS: &'static [&'static str] = &["late_copy"];
    fn build(_spec: &NoSettings, job: &mut JobBuilder<'_, '_>) -> eddy::runtime::Result<()> {
        let late = job.input::<Reading>("readings")?.late();
        job.output("late_copy", late)
    }
}

/// Reads a port no job writes.
struct Orphan;

impl Job for Orphan {
    type Spec = NoSettings;
    const KIND: &'static str = "orphan";
    const ABOUT: &'static str = "Reads a port nobody writes (a test).";
    const INPUTS: &'static [&'static str] = &["nowhere"];
    const OUTPUTS: &'static [&'static str] = &["orphan"];
    fn build(_spec: &NoSettings, job: &mut JobBuilder<'_, '_>) -> eddy::runtime::Result<()> {
        let flow = job.input::<Reading>("nowhere")?;
        job.output("orphan", flow)
    }
}

fn fleet(registry: Registry) -> Bench {
    let mut bench = Bench::new(registry).device("a", &[("site", "lab")]).device("b", &[("site", "lab")]);
    for i in 0..40 {
        bench = bench.reading("a", i * 60_000, &[("pm25", 10.0 + i as f64)]);
        bench = bench.reading("b", i * 60_000 + 30_000, &[("pm25", 20.0)]);
    }
    // Far behind the fleet: late (the default lateness is 10 minutes).
    bench.reading("a", 60_000, &[("pm25", 99.0)]).reading("b", 90_000, &[("pm25", 98.0)])
}

#[test]
fn a_users_job_reads_the_ingest_jobs_readings_port_in_process() {
    let registry = Registry::builtin().with::<LateCopy>();
    let out = fleet(registry).spec("kind = \"late_copy\"\n").run_everywhere();
    assert_eq!(out.lines("late").len(), 2, "the bench's two late readings");
    assert_eq!(out.lines("late_copy"), out.lines("late"));
}

#[test]
fn a_job_reading_a_port_no_job_writes_fails_naming_the_port() {
    let registry = Registry::builtin().with::<Orphan>();
    let e = fleet(registry).spec("kind = \"orphan\"\n").try_run(1).err().expect("the run fails");
    let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    assert!(cause.contains("no job built before this one writes port \"nowhere\""), "{e}: {cause}");
}

#[test]
fn only_the_jobs_an_output_needs_are_built() {
    let out = fleet(Registry::builtin()).only(&["stats"]).run(2);
    assert_eq!(out.names(), ["stats"]);
    assert!(!out.lines("stats").is_empty());
    // The backup still runs: it writes Parquet, not a JSON-lines output.
    assert!(out.summary.records.get("backup").is_some_and(|n| *n > 0), "{:?}", out.summary.records);
}
