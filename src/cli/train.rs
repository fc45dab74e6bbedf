//! `eddy train`: trains a model on a Parquet backup (see `docs/ml.md`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::core::spec::PipelineSpec;
use eddy_ml::calibrate::CalibrationOptions;
use eddy_ml::forecast::ForecastOptions;
use eddy_ml::model::EventRule;
use eddy_ml::{Evaluation, TaskOptions};

/// The training tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TrainTask {
    /// Will an alert rule's event start for a device within the next H minutes?
    Forecast,
    /// Per-device gain and offset of a channel against a co-located reference channel.
    Calibration,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The Parquet backup to train on (OUT/backup of a replay, or an OUT holding one).
    #[arg(long)]
    backup: PathBuf,
    /// What to train.
    #[arg(long, value_enum)]
    task: TrainTask,
    /// Where to write the model (JSON); its evaluation goes beside it, MODEL.eval.json.
    #[arg(long)]
    out: PathBuf,
    /// The model's version, carried by every forecast it scores (default: TASK-TRAINED_AT).
    #[arg(long)]
    version: Option<String>,
    /// forecast: the alert rule whose events are forecast (from the alerts spec).
    #[arg(long, default_value = "pm25-high")]
    rule: String,
    /// forecast: minutes ahead.
    #[arg(long, default_value_t = 30)]
    horizon: u32,
    /// forecast: fraction of the time range that trains (the rest tests).
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    /// A directory of job specs: the alert rules come from its alerts spec.
    #[arg(long)]
    jobs: Option<PathBuf>,
    /// calibration: the channel to calibrate.
    #[arg(long, default_value = "pm25")]
    channel: String,
    /// calibration: the reference channel (default ref_CHANNEL).
    #[arg(long)]
    reference: Option<String>,
    /// calibration: rows with a smaller reference value are left out of the fit.
    #[arg(long, default_value_t = 8.0)]
    min_reference: f64,
    /// Also publish the model to the scoring job's model topic, PREFIX.models,
    /// on these Kafka brokers (host:port[,…]).
    #[arg(long)]
    brokers: Option<String>,
    /// The pipeline's topic prefix (with --brokers).
    #[arg(long, default_value = "eddy")]
    prefix: String,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// The backup directory: `DIR` itself, or `DIR/backup`.
fn backup_dir(p: &Path) -> PathBuf {
    if p.join(crate::parquet::MANIFEST_DIR).is_dir() || !p.join("backup").is_dir() {
        p.to_path_buf()
    } else {
        p.join("backup")
    }
}

pub fn cmd_train(a: TrainArgs, spec: impl FnOnce(Option<&Path>) -> Result<PipelineSpec>) -> Result<()> {
    let task = match a.task {
        TrainTask::Forecast => {
            let spec = spec(a.jobs.as_deref())?;
            let Some(r) = spec.alerts.rules.iter().find(|r| r.rule_id == a.rule) else {
                let known: Vec<&str> = spec.alerts.rules.iter().map(|r| r.rule_id.as_str()).collect();
                bail!("--rule {}: no such rule in the alerts spec (it has: {})", a.rule, known.join(", "));
            };
            if a.horizon == 0 {
                bail!("--horizon must be at least 1 minute");
            }
            if !(a.train_fraction > 0.0 && a.train_fraction < 1.0) {
                bail!("--train-fraction must be between 0 and 1, found {}", a.train_fraction);
            }
            TaskOptions::Forecast(ForecastOptions {
                rule: EventRule {
                    rule_id: r.rule_id.clone(),
                    channel: r.channel.clone(),
                    rise_above: r.rise_above,
                    fall_below: r.fall_below,
                },
                horizon_min: a.horizon,
                train_fraction: a.train_fraction,
            })
        }
        TrainTask::Calibration => TaskOptions::Calibration(CalibrationOptions {
            reference: a.reference.clone().unwrap_or_else(|| format!("ref_{}", a.channel)),
            channel: a.channel.clone(),
            min_reference: a.min_reference,
            min_rows: 20,
            clip_margin: 4.0,
        }),
    };
    let name = match a.task {
        TrainTask::Forecast => "forecast",
        TrainTask::Calibration => "calibration",
    };
    let version = a.version.clone().unwrap_or_else(|| format!("{name}-{}", eddy_ml::model::now_ms()));
    let backup = backup_dir(&a.backup);

    let show = !a.quiet && std::io::stderr().is_terminal();
    let bar = if show { ProgressBar::new(1) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} train {msg:10} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (model, eval) = eddy_ml::train(&backup, &task, &version, &mut |stage, done, total| {
        bar.set_message(stage.to_string());
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("training {name} on {}", backup.display()))?;
    bar.finish_and_clear();

    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    model.save(&a.out)?;
    let eval_path = eddy_ml::eval_path(&a.out);
    eddy_ml::save_eval(&eval_path, &eval)?;

    println!(
        "trained {name} model {version} on {} rows of {} devices ({} .. {})",
        model.data.rows, model.data.devices, model.data.from_ts, model.data.to_ts
    );
    match &eval.eval {
        Evaluation::Forecast(e) => {
            println!(
                "  events of {} within {} min; train {} samples ({} positive), test {} ({} positive), threshold {:.3}",
                a.rule, e.horizon_min, e.train.rows, e.train.positives, e.test.rows, e.test.positives, e.threshold
            );
            println!("  {:<12} {:>9} {:>9} {:>9} {:>9}", "test set", "precision", "recall", "F1", "ROC AUC");
            for (n, s) in [("model", &e.model), ("persistence", &e.persistence)] {
                println!("  {n:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3}", s.precision, s.recall, s.f1, s.roc_auc);
            }
        }
        Evaluation::Calibration(e) => {
            println!(
                "  {} devices, {} rows; RMSE against the reference: {:.3} before, {:.3} after",
                e.devices, e.rows, e.rmse_before, e.rmse_after
            );
            if !e.skipped.is_empty() {
                println!("  skipped (too few rows): {}", e.skipped.join(", "));
            }
        }
    }
    println!("  model: {}\n  evaluation: {}", a.out.display(), eval_path.display());
    if let Some(brokers) = &a.brokers {
        #[cfg(not(feature = "kafka"))]
        bail!("--brokers {brokers}: this eddy was built without the `kafka` feature");
        #[cfg(feature = "kafka")]
        let cfg = crate::kafka::KafkaConfig::new(brokers);
        #[cfg(feature = "kafka")]
        let topics = crate::kafka::Topics::new(a.prefix.clone());
        #[cfg(feature = "kafka")]
        crate::runtime::kafka::ml::publish_model(&cfg, &topics, &a.out)
            .with_context(|| format!("publishing the model to {}", topics.models()))?;
        #[cfg(feature = "kafka")]
        println!("  published to {} on {brokers}", topics.models());
    }
    Ok(())
}
