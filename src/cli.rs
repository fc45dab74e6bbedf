//! The `eddy` command line: glue over `eddy-runtime`, and the one place that
//! uses `anyhow`.
//!
//! [`main`] runs the CLI over a [`Registry`]: the `eddy` binary passes the
//! built-in one, and a user's binary adds its own jobs, which then run
//! embedded (`replay --jobs`), over Kafka (`run`) and show in `jobs`:
//!
//! ```no_run
//! use eddy::runtime::component::Registry;
//!
//! fn main() -> std::process::ExitCode {
//!     eddy::cli::main(Registry::builtin() /* .with::<MyJob>() */)
//! }
//! ```

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::gen::{generate, GenConfig};
use crate::runtime::component::{Jobs, Registry};
use crate::runtime::replay::{replay, ReplayOptions, Summary};
use crate::runtime::workers::Workers;

#[cfg(feature = "ml")]
mod train;

/// eddy: dataflow jobs for IoT air-quality sensor pipelines.
///
/// eddy validates, calibrates and enriches sensor readings, keeps incremental
/// statistics and window aggregates, and raises pollution alerts, on timely
/// and differential dataflow. `eddy replay` runs the whole pipeline in one
/// process on a recorded dataset; `eddy gen` makes synthetic datasets.
#[derive(Parser, Debug)]
#[command(name = "eddy", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. `info`, `eddy=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a recorded dataset through the whole pipeline in this process.
    ///
    /// Runs ingest, enrich, stats, windows, alerts and backup together, wired
    /// by in-process topics, and writes enriched.jsonl, late.jsonl,
    /// deadletter.jsonl, stats.jsonl, windows.jsonl, events.jsonl and
    /// summary.json to OUT, the Parquet backup to OUT/backup and the raw
    /// archive to OUT/raw. Takes a checkpoint every 10 s; a rerun into the
    /// same OUT after a kill restarts from the newest one (otherwise it
    /// recomputes the JSON-lines outputs), and adds to the backup only what
    /// it does not hold yet. Goes as
    /// fast as possible unless --speed is given.
    Replay(ReplayArgs),
    /// List, inspect and garbage-collect the checkpoints of a store.
    Checkpoints(CheckpointsArgs),
    /// Generate a synthetic fleet dataset (deterministic per seed).
    Gen(GenArgs),
    /// Check job spec files and print the effective specs of every job.
    Check(CheckArgs),
    /// List the job kinds this binary knows, with their input and output ports.
    Jobs,
    /// Train a model on a Parquet backup (see docs/ml.md).
    ///
    /// --task forecast: will an alert rule's event start for a device within
    /// the next --horizon minutes (logistic regression on features of the
    /// recent past, split by time, evaluated against persistence).
    /// --task calibration: per-device gain and offset of a channel against a
    /// co-located reference channel, with RMSE before and after. Writes the
    /// model (versioned JSON) to --out and its evaluation beside it.
    #[cfg(feature = "ml")]
    Train(train::TrainArgs),
    /// Run one job of the pipeline against Kafka, as its own process or cluster.
    ///
    /// The job's spec file names its kind (`eddy jobs` lists them); it reads
    /// and writes the topics of docs/kafka.md under --prefix. It runs until every partition of its input has ended
    /// (an end marker, written by `eddy publish`), or forever on a live
    /// stream. Stop it with Ctrl-C or SIGTERM and start it again: it resumes
    /// from its last checkpoint, and nothing is lost.
    #[cfg(feature = "kafka")]
    Run(RunArgs),
    /// Publish a recorded dataset into a pipeline's Kafka topics.
    ///
    /// Reference data first (devices, calibration, rules, and every update,
    /// each with its time), then every line of the readings file into
    /// PREFIX.raw, as it is, then an end marker into each raw partition.
    #[cfg(feature = "kafka")]
    Publish(PublishArgs),
}

#[cfg(feature = "kafka")]
/// Where the brokers are, and the pipeline's topics.
#[derive(Args, Debug, Clone)]
struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port…].
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the pipeline's topics (PREFIX.raw, PREFIX.readings, …).
    #[arg(long, default_value = "eddy")]
    prefix: String,
    /// Seconds to wait for the brokers at start before giving up.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Retention of the topics of records this command creates (`7d`,
    /// `36h`); the compacted topics keep each key's latest record. A topic
    /// that exists is left as it is.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    retention: String,
}

#[cfg(feature = "kafka")]
impl KafkaArgs {
    fn config(&self) -> Result<crate::kafka::KafkaConfig> {
        let ms = eddy_core::Millis::parse(&self.retention)
            .map_err(|e| anyhow::anyhow!("--retention {:?}: {e}", self.retention))?
            .ms();
        if ms <= 0 {
            bail!("--retention {:?}: must be positive", self.retention);
        }
        Ok(crate::kafka::KafkaConfig {
            brokers: self.brokers.clone(),
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
            retention: std::time::Duration::from_millis(ms as u64),
        })
    }
}

#[cfg(feature = "kafka")]
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
struct RunArgs {
    /// The job's spec file (jobs/<job>.toml); its `kind` selects the job.
    spec: PathBuf,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    workers: WorkerArgs,
    /// Output directory of the backup job.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// The pipeline's other job specs (a directory of *.toml, or files):
    /// the ingest spec's lateness and epoch, and whether the calibration
    /// adapter runs (an enrich job then waits for its updates). SPEC
    /// replaces the spec of its own kind there.
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// score: the event-forecast model file, watched for changes (models also
    /// come from PREFIX.models).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Partitions of the topics this job creates.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Seconds after which an idle partition of PREFIX.raw stops holding
    /// the ingest job's watermark back.
    #[arg(long, default_value_t = 10)]
    idle_timeout: u64,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    /// No progress line and no summary.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[cfg(feature = "kafka")]
#[derive(Args, Debug)]
struct PublishArgs {
    /// The dataset directory.
    dataset: PathBuf,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Publish at this multiple of the recorded event-time pace (e.g. 60);
    /// default: as fast as possible.
    #[arg(long)]
    speed: Option<f64>,
    /// Partitions of PREFIX.raw, when it has to be created.
    #[arg(long, default_value_t = 1)]
    raw_partitions: i32,
    /// Do not end the stream: leave out the end markers.
    #[arg(long)]
    no_end: bool,
    /// Publish the readings only, not the reference data.
    #[arg(long)]
    no_reference: bool,
    /// Skip the first N lines of the readings file.
    #[arg(long, default_value_t = 0)]
    skip_lines: u64,
    /// Publish at most N lines (after the skipped ones).
    #[arg(long)]
    max_lines: Option<u64>,
    /// No progress bar and no summary.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Timely's process arguments.
#[derive(Args, Debug, Clone)]
struct WorkerArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    processes: usize,
    /// Index of this process, 0..n.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    process: usize,
    /// Hostfile: one host:port per process.
    #[arg(short = 'h', long = "hostfile")]
    hostfile: Option<PathBuf>,
}

impl WorkerArgs {
    fn workers(&self) -> Workers {
        Workers {
            threads: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
        }
    }
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
struct ReplayArgs {
    /// The dataset directory (readings.jsonl[.gz], devices.csv, calibration.csv, …),
    /// or a backup made by eddy (OUT/backup, or an OUT holding one).
    dataset: PathBuf,
    /// Output directory (created if missing; outputs are overwritten).
    #[arg(long, short = 'o')]
    out: PathBuf,
    #[command(flatten)]
    workers: WorkerArgs,
    /// Replay at this multiple of the recorded event-time pace (e.g. 60).
    #[arg(long)]
    speed: Option<f64>,
    /// A directory of job specs (*.toml); kinds it does not define keep the
    /// built-in defaults (the shipped jobs/ directory).
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// Reference data (devices, calibration, thresholds, updates) from this
    /// dataset directory: for replaying a backup, which has none of its own.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Run the scoring job with this event-forecast model (`eddy train --task
    /// forecast`): early warnings to OUT/forecasts.jsonl. The file is watched;
    /// a new model written to it is used from the next epoch on.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write only these JSON-lines outputs (comma-separated: enriched, late,
    /// deadletter, forecasts, and the outputs of the jobs that run: stats,
    /// windows, events, health, …); by default every one.
    /// A job whose output is left out does not run. The Parquet backup
    /// (which holds every enriched reading) and the raw archive follow the
    /// backup spec.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    outputs: Option<Vec<String>>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    /// No progress bar and no summary table.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args, Debug)]
struct CheckpointsArgs {
    #[command(subcommand)]
    action: CheckpointsAction,
}

#[derive(Subcommand, Debug)]
enum CheckpointsAction {
    /// List the checkpoints of a store: id, status, time, size.
    List(StoreArg),
    /// Show one checkpoint (the newest complete one by default): its time,
    /// input and output positions, and the size of each operator's state.
    Inspect {
        #[command(flatten)]
        store: StoreArg,
        /// The checkpoint's id.
        #[arg(long)]
        id: Option<u64>,
    },
    /// Delete all but the newest N complete checkpoints, and every broken one older than those.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// Complete checkpoints kept (at least 2).
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

#[derive(Args, Debug)]
struct StoreArg {
    /// The store: a directory, a file:// URL or s3://BUCKET/PREFIX; for
    /// `eddy replay`, its --out (OUT/_checkpoints is looked in).
    #[arg(long)]
    store: String,
}

impl StoreArg {
    fn open(&self) -> Result<eddy_checkpoint::Store> {
        if eddy_checkpoint::is_object_storage(&self.store) {
            return eddy_checkpoint::Store::open(&self.store)
                .with_context(|| format!("opening the store {}", self.store));
        }
        let p = Path::new(&self.store);
        let inner = p.join(crate::runtime::snapshots::STORE_DIR);
        let location = if inner.is_dir() { inner.display().to_string() } else { self.store.clone() };
        if !Path::new(location.strip_prefix("file://").unwrap_or(&location)).is_dir() {
            bail!("{}: no checkpoint store there", self.store);
        }
        eddy_checkpoint::Store::open(&location).with_context(|| format!("opening the store {}", self.store))
    }
}

#[derive(Args, Debug)]
struct GenArgs {
    /// Output directory.
    out: PathBuf,
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Hours of readings.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Random seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of readings that arrive 15–120 minutes late.
    #[arg(long, default_value_t = 0.01)]
    late: f64,
    /// Fraction of lines that are junk (malformed, or with out-of-range values).
    #[arg(long, default_value_t = 0.005)]
    junk: f64,
    /// First reading's time, epoch ms (default 2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = crate::gen::DEFAULT_START_MS)]
    start: i64,
    /// Do not write updates.jsonl.
    #[arg(long)]
    no_updates: bool,
    /// Write readings.jsonl.gz instead of readings.jsonl.
    #[arg(long)]
    gzip: bool,
    /// CO2 baseline drift, ppm per day, for a fraction of devices.
    #[arg(long, default_value_t = 0.0)]
    drift: f64,
    /// Fraction of devices that drift.
    #[arg(long, default_value_t = 0.2)]
    drift_fraction: f64,
    /// Add a co-located reference channel ref_pm25 and write truth.csv.
    #[arg(long)]
    reference_channel: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Spec files or directories of *.toml (default: the built-in specs).
    paths: Vec<PathBuf>,
}

/// Runs the `eddy` command line with the job kinds of `registry`, and
/// returns the process's exit code. An error prints its whole cause chain.
pub fn main(registry: Registry) -> ExitCode {
    main_from(registry, std::env::args_os())
}

/// [`main`] with the given arguments (the first is the program's name).
pub fn main_from<I, T>(registry: Registry, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let kinds = registry.entries().iter().map(|e| e.kind()).collect::<Vec<_>>().join(", ");
    let command = Cli::command().after_help(format!("Job kinds (`jobs` describes them): {kinds}"));
    let cli = match Cli::from_arg_matches(&command.get_matches_from(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match run(cli, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Replay(a) => cmd_replay(a, registry),
        Command::Checkpoints(a) => cmd_checkpoints(a),
        Command::Gen(a) => cmd_gen(a),
        Command::Check(a) => cmd_check(a, registry),
        Command::Jobs => cmd_jobs(registry),
        #[cfg(feature = "ml")]
        Command::Train(a) => train::cmd_train(a, |dir| Ok(load_jobs(registry, dir)?.pipeline)),
        #[cfg(feature = "kafka")]
        Command::Run(a) => cmd_run(a, registry),
        #[cfg(feature = "kafka")]
        Command::Publish(a) => cmd_publish(a),
    }
}

/// Reads spec files: each path is a file or a directory of `*.toml`.
fn read_specs(paths: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{}: no *.toml job specs in this directory", p.display());
            }
            for e in entries {
                files.push((
                    e.display().to_string(),
                    std::fs::read_to_string(&e).with_context(|| format!("reading {}", e.display()))?,
                ));
            }
        } else {
            files.push((
                p.display().to_string(),
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ));
        }
    }
    Ok(files)
}

/// The jobs of a pipeline: the built-in defaults, with the specs of `dir`
/// (a directory of `*.toml`) in place of theirs.
fn load_jobs(registry: &Registry, dir: Option<&Path>) -> Result<Jobs> {
    match dir {
        None => Ok(registry.defaults()),
        Some(dir) => Ok(registry.load(&read_specs(&[dir.to_path_buf()])?, true)?),
    }
}

/// Checkpoints of the state of a run (`eddy replay`) or a stateful job
/// (`eddy run`; docs/checkpoints.md).
#[derive(Args, Debug, Clone)]
struct CheckpointArgs {
    /// Take a checkpoint this often (processing time: `10s`, `500ms`, `1m`),
    /// or `off`. Killed and started again, a replay into the same OUT, or a
    /// job with the same store, restarts from its newest complete checkpoint
    /// (without one a Kafka job rebuilds its state from the start of its input).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    checkpoint_every: String,
    /// Where checkpoints go: a directory, a file:// URL, or s3://BUCKET/PREFIX
    /// (S3-compatible object storage, configured by the AWS_* environment
    /// variables: docs/checkpoints.md). Default: for
    /// eddy replay OUT/_checkpoints (removed once the run completes); for
    /// eddy run $EDDY_STATE_DIR/PREFIX.JOB (EDDY_STATE_DIR defaults to
    /// ./eddy-state), which every process of the job must share.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Complete checkpoints kept (at least 2).
    #[arg(long, value_name = "N", default_value_t = 3)]
    keep: usize,
    /// Key groups that keyed state is split into (1 to 32768), set when a
    /// job first starts: a restart keeps its checkpoint's, and refuses
    /// another. The job can run on up to this many workers. Default 256.
    #[arg(long, value_name = "N")]
    key_groups: Option<eddy_core::keys::KeyGroups>,
}

impl CheckpointArgs {
    /// The options, checked.
    fn options(&self) -> Result<crate::runtime::snapshots::CheckpointOptions> {
        let mut o = checkpoint_options(&self.checkpoint_every, self.store.clone(), self.keep)?;
        o.key_groups = self.key_groups;
        Ok(o)
    }
}

/// `--checkpoint-every`, `--store` and `--keep`, checked.
fn checkpoint_options(
    every: &str,
    store: Option<String>,
    keep: usize,
) -> Result<crate::runtime::snapshots::CheckpointOptions> {
    let every = match every {
        "off" | "0" => None,
        text => {
            let ms =
                eddy_core::Millis::parse(text).map_err(|e| anyhow::anyhow!("--checkpoint-every {text:?}: {e}"))?.ms();
            if ms <= 0 {
                bail!("--checkpoint-every {text:?}: must be positive, or off");
            }
            Some(std::time::Duration::from_millis(ms as u64))
        }
    };
    if keep < 2 {
        bail!("--keep {keep}: at least 2 checkpoints are kept, so that a corrupt newest one has one to fall back on");
    }
    Ok(crate::runtime::snapshots::CheckpointOptions { every, store, keep, key_groups: None })
}

fn cmd_replay(a: ReplayArgs, registry: &Registry) -> Result<()> {
    let mut jobs = load_jobs(registry, a.jobs.as_deref())?;
    if let Some(m) = &a.model {
        jobs.pipeline.score.model = Some(m.display().to_string());
    }
    let checkpoints = a.checkpoints.options()?;
    let opts = ReplayOptions {
        workers: a.workers.workers(),
        speed: a.speed,
        reference: a.reference.clone(),
        outputs: a.outputs.clone(),
        checkpoints,
        ..ReplayOptions::with_jobs(a.dataset.clone(), a.out.clone(), jobs)
    };
    let show = !a.quiet && std::io::stderr().is_terminal();
    let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} replay [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summary = replay(&opts, |p| {
        if p.total_bytes > 0 {
            bar.set_length(p.total_bytes);
            bar.set_position(p.bytes.min(p.total_bytes));
        }
        bar.set_message(format!("{} lines, {} valid, {} dead", p.lines, p.valid, p.deadletter));
    })
    .with_context(|| format!("replaying {}", a.dataset.display()))?;
    bar.finish_and_clear();
    if !a.quiet {
        print_summary(&summary, &a.out);
    }
    Ok(())
}

fn cmd_checkpoints(a: CheckpointsArgs) -> Result<()> {
    use eddy_checkpoint::Status;
    match a.action {
        CheckpointsAction::List(store) => {
            let store = store.open()?;
            println!("{:>6}  {:<10}  {:>15}  {:>12}  line", "id", "status", "time", "bytes");
            for l in store.list()? {
                let (status, time, line) = match &l.status {
                    Status::Complete(m) => {
                        let line = m
                            .meta
                            .get("position")
                            .and_then(|p| p.get("offset"))
                            .map_or(String::new(), |v| v.to_string());
                        ("complete".to_string(), m.frontier.to_string(), line)
                    }
                    Status::Incomplete => ("incomplete".to_string(), String::new(), String::new()),
                    Status::Corrupt(e) => (format!("corrupt: {e}"), String::new(), String::new()),
                };
                println!("{:>6}  {:<10}  {:>15}  {:>12}  {}", l.id, status, time, l.bytes_on_disk, line);
            }
        }
        CheckpointsAction::Inspect { store, id } => {
            let store = store.open()?;
            let loaded = match id {
                Some(id) => store.load(id)?,
                None => {
                    store.load_latest()?.ok_or_else(|| anyhow::anyhow!("the store holds no complete checkpoint"))?
                }
            };
            let m = &loaded.manifest;
            println!(
                "checkpoint {} (format {}), time {}, written at {} ms",
                m.id, m.version, m.frontier, m.created_unix_ms
            );
            for (id, why) in &loaded.skipped {
                println!("  newer checkpoint {id} skipped: {why}");
            }
            println!("state files (bytes):");
            for f in &m.files {
                println!("  {:<32}{:>12}", f.name, f.bytes);
            }
            println!("record:");
            println!("{}", serde_json::to_string_pretty(&m.meta)?);
        }
        CheckpointsAction::Gc { store, keep } => {
            if keep < 2 {
                bail!("--keep {keep}: at least 2");
            }
            let removed = store.open()?.gc(keep)?;
            println!(
                "removed {} checkpoint(s){}",
                removed.len(),
                if removed.is_empty() { String::new() } else { format!(": {removed:?}") }
            );
        }
    }
    Ok(())
}

fn print_summary(s: &Summary, out: &Path) {
    println!(
        "replayed {} lines in {:.2}s ({:.0} lines/s, {} workers)",
        s.lines, s.wall_time_s, s.lines_per_s, s.workers
    );
    println!("  valid       {:>10}", s.valid);
    println!("  late        {:>10}", s.late);
    println!("  deadletter  {:>10}", s.deadletter);
    println!("  junk        {:>10}  ({} devices)", s.junk, s.junk_by_device.len());
    println!("outputs in {}:", out.display());
    for (name, n) in &s.records {
        let what = match name.as_str() {
            "backup" => "backup/  (Parquet rows)".to_string(),
            "raw" => "raw/  (raw archive, Parquet rows)".to_string(),
            _ => format!("{name}.jsonl"),
        };
        println!("  {name:<12}{n:>10}  {what}");
    }
    println!("  summary.json");
}

fn cmd_gen(a: GenArgs) -> Result<()> {
    let cfg = GenConfig {
        devices: a.devices,
        hours: a.hours,
        seed: a.seed,
        late: a.late,
        junk: a.junk,
        start_ms: a.start,
        interval_ms: crate::gen::DEFAULT_INTERVAL_MS,
        updates: !a.no_updates,
        gzip: a.gzip,
        drift_co2_ppm_per_day: a.drift,
        drift_fraction: a.drift_fraction,
        reference_channel: a.reference_channel,
    };
    cfg.validate()?;
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} gen [{bar:30}] {pos}/{len} lines ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let s = generate(&cfg, &a.out, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!(
        "wrote {} lines to {} ({} devices, {} readings, {} late, {} malformed lines, {} readings with junk values, {} bytes)",
        s.lines,
        a.out.display(),
        s.devices,
        s.readings,
        s.late,
        s.junk_lines,
        s.junk_values,
        s.bytes
    );
    Ok(())
}

fn cmd_check(a: CheckArgs, registry: &Registry) -> Result<()> {
    let jobs = if a.paths.is_empty() {
        println!("built-in specs: {}", registry.kinds());
        registry.defaults()
    } else {
        registry.load(&read_specs(&a.paths)?, true)?
    };
    // A closed pipe (`eddy check | head`) is not an error.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{:#?}", jobs.pipeline);
    for j in &jobs.instances {
        let _ = writeln!(out, "{j:?}");
    }
    let _ = writeln!(out, "ok");
    Ok(())
}

fn cmd_jobs(registry: &Registry) -> Result<()> {
    let mut out = std::io::stdout();
    let width = registry.entries().iter().map(|e| e.kind().len()).max().unwrap_or(0);
    for e in registry.entries() {
        let _ = writeln!(
            out,
            "{:<width$}  in: {:<40}  out: {:<28}  {}",
            e.kind(),
            e.inputs().join(", "),
            e.outputs().join(", "),
            e.about()
        );
    }
    Ok(())
}

#[cfg(feature = "kafka")]
fn cmd_run(a: RunArgs, registry: &Registry) -> Result<()> {
    use crate::runtime::kafka::{run_job, RunOptions};
    let own = read_specs(std::slice::from_ref(&a.spec))?;
    let kind = registry.kind_of(&own[0].1, &own[0].0)?.kind();
    let mut files = Vec::new();
    if let Some(dir) = &a.jobs {
        for (name, text) in read_specs(std::slice::from_ref(dir))? {
            if registry.kind_of(&text, &name)?.kind() != kind {
                files.push((name, text));
            }
        }
    }
    files.extend(own);
    let mut jobs = registry.load(&files, true)?;
    let job = jobs.instance(kind).cloned().with_context(|| format!("{}: no job of kind {kind}", a.spec.display()))?;
    if let Some(m) = &a.model {
        if kind != "score" {
            bail!("--model is an option of the score job; {} is a {kind} job", a.spec.display());
        }
        jobs.pipeline.score.model = Some(m.display().to_string());
    }
    let mut opts = RunOptions::new(job, jobs.pipeline, &a.kafka.brokers);
    opts.kafka = a.kafka.config()?;
    opts.topics = crate::kafka::Topics::new(a.kafka.prefix.clone());
    opts.workers = a.workers.workers();
    opts.out = a.out.clone();
    opts.partitions = a.partitions;
    opts.idle_timeout = std::time::Duration::from_secs(a.idle_timeout);
    opts.checkpoints = a.checkpoints.options()?;
    // SIGTERM or Ctrl-C: stop reading, make what was read durable, checkpoint,
    // exit 0. A second one exits at once (the checkpoint keeps that safe too).
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, std::sync::Arc::clone(&opts.stop))?;
        signal_hook::flag::register(sig, std::sync::Arc::clone(&opts.stop))?;
    }
    let show = !a.quiet && std::io::stderr().is_terminal();
    let bar = if show { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})").expect("valid template"));
    bar.set_prefix(opts.group());
    let summary = run_job(&opts, |p| {
        bar.set_message(format!("{} records, {} bytes read", p.records, p.bytes));
        bar.tick();
    })
    .with_context(|| format!("running {}", a.spec.display()))?;
    bar.finish_and_clear();
    if !a.quiet {
        println!(
            "{}: {} records in, {} valid, {} dead letters, {} with junk values, in {:.2}s{}",
            summary.job,
            summary.records_in,
            summary.valid,
            summary.deadletter,
            summary.junk,
            summary.wall_time_s,
            if summary.resumed_from > 0 { " (resumed from its checkpoint)" } else { "" }
        );
        if summary.checkpoints.written > 0 || summary.checkpoints.restored_from.is_some() {
            println!(
                "{}: {} checkpoint(s) of its state written{}",
                summary.job,
                summary.checkpoints.written,
                summary
                    .checkpoints
                    .restored_from
                    .map(|id| format!(", restored from checkpoint {id}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

#[cfg(feature = "kafka")]
fn cmd_publish(a: PublishArgs) -> Result<()> {
    use crate::kafka::publish::{publish, PublishOptions};
    let opts = PublishOptions {
        dataset: a.dataset.clone(),
        topics: crate::kafka::Topics::new(a.kafka.prefix.clone()),
        raw_partitions: a.raw_partitions,
        speed: a.speed,
        no_end: a.no_end,
        no_reference: a.no_reference,
        skip_lines: a.skip_lines,
        max_lines: a.max_lines,
    };
    let show = !a.quiet && std::io::stderr().is_terminal();
    let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} publish [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let s = publish(&a.kafka.config()?, &opts, |p| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.bytes.min(p.total_bytes));
        bar.set_message(format!("{} lines", p.lines));
    })
    .with_context(|| format!("publishing {}", a.dataset.display()))?;
    bar.finish_and_clear();
    if !a.quiet {
        println!("published {} lines to {} and {} reference records", s.lines, opts.topics.raw(), s.reference);
    }
    Ok(())
}
