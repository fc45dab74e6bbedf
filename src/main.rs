//! The `eddy` command line: glue over `eddy-runtime`, and the one place that
//! uses `anyhow`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use eddy::core::spec::{PipelineSpec, BUILTIN_JOBS};
use eddy::gen::{generate, GenConfig};
use eddy::runtime::replay::{replay, ReplayOptions, Summary};
use eddy::runtime::workers::Workers;

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
    /// archive to OUT/raw. A rerun into the same OUT recomputes the JSON-lines
    /// outputs and adds to the backup only what it does not hold yet. Goes as
    /// fast as possible unless --speed is given.
    Replay(ReplayArgs),
    /// Generate a synthetic fleet dataset (deterministic per seed).
    Gen(GenArgs),
    /// Check job spec files and print the effective pipeline spec.
    Check(CheckArgs),
    /// Train a model on a Parquet backup (see docs/ml.md).
    ///
    /// --task forecast: will an alert rule's event start for a device within
    /// the next --horizon minutes (logistic regression on features of the
    /// recent past, split by time, evaluated against persistence).
    /// --task calibration: per-device gain and offset of a channel against a
    /// co-located reference channel, with RMSE before and after. Writes the
    /// model (versioned JSON) to --out and its evaluation beside it.
    Train(train::TrainArgs),
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
    /// No progress bar and no summary table.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
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
    #[arg(long, default_value_t = eddy::gen::DEFAULT_START_MS)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli) {
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Replay(a) => cmd_replay(a),
        Command::Gen(a) => cmd_gen(a),
        Command::Check(a) => cmd_check(a),
        Command::Train(a) => train::cmd_train(a, load_pipeline),
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

fn load_pipeline(jobs: Option<&Path>) -> Result<PipelineSpec> {
    match jobs {
        None => Ok(PipelineSpec::builtin()),
        Some(dir) => Ok(PipelineSpec::from_files(&read_specs(&[dir.to_path_buf()])?, true)?),
    }
}

fn cmd_replay(a: ReplayArgs) -> Result<()> {
    let spec = load_pipeline(a.jobs.as_deref())?;
    let opts = ReplayOptions {
        dataset: a.dataset.clone(),
        out: a.out.clone(),
        spec,
        workers: a.workers.workers(),
        speed: a.speed,
        reference: a.reference.clone(),
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
        interval_ms: eddy::gen::DEFAULT_INTERVAL_MS,
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

fn cmd_check(a: CheckArgs) -> Result<()> {
    let spec = if a.paths.is_empty() {
        println!("built-in specs: {}", BUILTIN_JOBS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "));
        PipelineSpec::builtin()
    } else {
        PipelineSpec::from_files(&read_specs(&a.paths)?, true)?
    };
    // A closed pipe (`eddy check | head`) is not an error.
    let _ = writeln!(std::io::stdout(), "{spec:#?}\nok");
    Ok(())
}
