//! Model artifacts: versioned JSON files with their feature schema and
//! training metadata (format in `docs/ml.md`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::{FEATURES, N_FEATURES};

/// The `format` field of every model file.
pub const FORMAT: &str = "eddy-model";
/// The current format version; a reader refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// What a model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    /// The backup directory.
    pub backup: String,
    /// Smallest event time of the rows used (epoch ms).
    pub from_ts: i64,
    /// Largest event time of the rows used (epoch ms).
    pub to_ts: i64,
    /// Backup rows read.
    pub rows: u64,
    /// Devices seen.
    pub devices: u64,
}

/// The alert rule whose events a forecaster predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRule {
    /// The rule's id (e.g. `pm25-high`).
    pub rule_id: String,
    /// The channel it watches.
    pub channel: String,
    /// An event starts when a value rises above this.
    pub rise_above: f64,
    /// And ends when a value falls below this.
    pub fall_below: f64,
}

/// A standardised logistic regression: `p = σ(w · (x − mean) / std + b)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    /// Per-feature mean of the training set.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation of the training set (1 where 0).
    pub std: Vec<f64>,
    /// Coefficients of the standardised features.
    pub weights: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
    /// Probability at or above which the model warns (chosen on the
    /// training set to maximise F1).
    pub threshold: f64,
}

impl Logistic {
    /// The probability of the positive class for a feature vector.
    pub fn probability(&self, x: &[f64; N_FEATURES]) -> f64 {
        let z: f64 = x
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .zip(&self.weights)
            .map(|(((v, m), s), w)| w * (v - m) / s)
            .sum::<f64>()
            + self.intercept;
        1.0 / (1.0 + (-z).exp())
    }
}

/// The event forecaster: will an event of `rule` start within `horizon_min`?
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastModel {
    /// Minutes ahead.
    pub horizon_min: u32,
    /// The rule defining an event.
    pub rule: EventRule,
    /// The fitted model.
    pub logistic: Logistic,
}

/// One device's fitted calibration against the reference channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCalibration {
    /// The device.
    pub device_id: String,
    /// Fitted sensor response: `channel = sensor_gain × reference + sensor_offset`.
    pub sensor_gain: f64,
    /// See `sensor_gain`.
    pub sensor_offset: f64,
    /// The eddy calibration that undoes it (`calibrated = gain × raw + offset`,
    /// as in `calibration.csv`): `1 / sensor_gain`, `−sensor_offset / sensor_gain`.
    pub gain: f64,
    /// See `gain`.
    pub offset: f64,
    /// Rows fitted.
    pub rows: u64,
    /// Mean reference value of the rows fitted: the level the calibration
    /// mostly works at.
    pub reference_mean: f64,
    /// RMSE of the raw channel against the reference.
    pub rmse_before: f64,
    /// RMSE of the calibrated channel against the reference.
    pub rmse_after: f64,
}

/// Per-device linear calibration of `channel` against `reference`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationModel {
    /// The calibrated channel (e.g. `pm25`).
    pub channel: String,
    /// The co-located reference channel (e.g. `ref_pm25`).
    pub reference: String,
    /// Per device, sorted by device id.
    pub devices: Vec<DeviceCalibration>,
}

/// What a model file holds, by task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Task {
    /// `forecast`: event forecasting.
    Forecast(ForecastModel),
    /// `calibration`: per-device linear calibration.
    Calibration(CalibrationModel),
}

/// A model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model's version, carried by every record it scores.
    pub version: String,
    /// When it was trained (epoch ms).
    pub trained_at: i64,
    /// The feature names, in order (empty for calibration).
    pub features: Vec<String>,
    /// What it was trained on.
    pub data: TrainingData,
    /// The task and its fitted parameters.
    #[serde(flatten)]
    pub task: Task,
}

impl ModelFile {
    /// Writes the model as pretty JSON, atomically (temporary file, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a model serialises") + "\n";
        write_atomic(path, &text)
    }

    /// Reads and checks a model file.
    pub fn load(path: &Path) -> Result<ModelFile> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        ModelFile::parse(&text).map_err(|message| Error::Model { path: path.to_path_buf(), message })
    }

    /// Parses and checks a model's JSON text.
    pub fn parse(text: &str) -> std::result::Result<ModelFile, String> {
        let head: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if head.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(format!(
                "field `format`: expected {FORMAT:?}, found {}",
                head.get("format").unwrap_or(&serde_json::Value::Null)
            ));
        }
        match head.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == FORMAT_VERSION as u64 => {}
            other => {
                return Err(format!(
                    "field `format_version`: this eddy reads version {FORMAT_VERSION}, found {other:?}"
                ))
            }
        }
        let m: ModelFile = serde_json::from_value(head).map_err(|e| format!("not a valid model: {e}"))?;
        if let Task::Forecast(f) = &m.task {
            let names: Vec<&str> = m.features.iter().map(String::as_str).collect();
            if names != FEATURES {
                return Err(format!("field `features`: this eddy computes {FEATURES:?}, the model expects {names:?}"));
            }
            let l = &f.logistic;
            if [l.mean.len(), l.std.len(), l.weights.len()] != [N_FEATURES; 3] {
                return Err(format!("field `logistic`: mean, std and weights must each have {N_FEATURES} values"));
            }
        }
        Ok(m)
    }

    /// The forecaster, if this is one.
    pub fn forecast(&self) -> Option<&ForecastModel> {
        match &self.task {
            Task::Forecast(f) => Some(f),
            Task::Calibration(_) => None,
        }
    }
}

/// A new forecast model for the scoring job: from a watched file (`eddy
/// replay --model`) or, over Kafka, the value of a model-topic record (the
/// model file's JSON text). Serialisable, so that timely can broadcast it
/// from the worker that reads the model topic to every worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelUpdate {
    /// The model's version.
    pub version: String,
    /// The model.
    pub model: ForecastModel,
}

impl ModelUpdate {
    /// The update of a model file, if it is a forecaster.
    pub fn from_file(m: ModelFile) -> std::result::Result<ModelUpdate, String> {
        match m.task {
            Task::Forecast(model) => Ok(ModelUpdate { version: m.version, model }),
            Task::Calibration(_) => Err("a calibration model cannot score events: train with --task forecast".into()),
        }
    }

    /// Parses a model-topic record's value (a model file's JSON text).
    pub fn from_json(text: &str) -> std::result::Result<ModelUpdate, String> {
        ModelUpdate::from_file(ModelFile::parse(text)?)
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// The current time in epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
