//! Training a model on the backup: `eddy train`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{ModelFile, Task, FORMAT, FORMAT_VERSION};
use crate::{calibrate, data, features, forecast, model};

/// What to train.
#[derive(Clone, Debug)]
pub enum TaskOptions {
    /// Event forecasting.
    Forecast(forecast::ForecastOptions),
    /// Per-device calibration.
    Calibration(calibrate::CalibrationOptions),
}

/// The evaluation of a trained model, saved beside it as `MODEL.eval.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Evaluation {
    /// Of a forecaster.
    Forecast(forecast::ForecastEval),
    /// Of a calibration.
    Calibration(calibrate::CalibrationEval),
}

/// An evaluation file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalFile {
    /// Always `eddy-model-eval`.
    pub format: String,
    /// The model format version.
    pub format_version: u32,
    /// The model's version.
    pub version: String,
    /// The evaluation.
    #[serde(flatten)]
    pub eval: Evaluation,
}

/// Trains a model on the backup in `backup`. `version` names the model (it
/// is carried by every record the model scores); `progress(stage, done, total)`
/// reports progress.
pub fn train(
    backup: &Path,
    task: &TaskOptions,
    version: &str,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(ModelFile, EvalFile)> {
    progress("read", 0, 1);
    let rows = data::load(backup)?;
    progress("read", 1, 1);
    let data = data::describe(backup, &rows);
    let (task, features, eval) = match task {
        TaskOptions::Forecast(o) => {
            let (m, e) = forecast::train(&rows, o, progress)?;
            (Task::Forecast(m), features::FEATURES.iter().map(|s| s.to_string()).collect(), Evaluation::Forecast(e))
        }
        TaskOptions::Calibration(o) => {
            let (m, e) = calibrate::train(&rows, o, progress)?;
            (Task::Calibration(m), Vec::new(), Evaluation::Calibration(e))
        }
    };
    let model = ModelFile {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        version: version.to_string(),
        trained_at: model::now_ms(),
        features,
        data,
        task,
    };
    let eval =
        EvalFile { format: "eddy-model-eval".into(), format_version: FORMAT_VERSION, version: version.into(), eval };
    Ok((model, eval))
}

/// The path of a model's evaluation file: `MODEL.eval.json` beside `MODEL`
/// (`model.json` → `model.eval.json`).
pub fn eval_path(model: &Path) -> std::path::PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    model.with_file_name(format!("{stem}.eval.json"))
}

/// Saves an evaluation as pretty JSON.
pub fn save_eval(path: &Path, eval: &EvalFile) -> Result<()> {
    model::write_atomic(path, &(serde_json::to_string_pretty(eval).expect("an evaluation serialises") + "\n"))
}
