//! The `calibration` task: per device, a linear fit of a channel's raw
//! values against a co-located reference channel.
//!
//! The fit is `raw = sensor_gain × reference + sensor_offset` by ordinary
//! least squares (smartcore's `LinearRegression`) over the rows where both
//! are present and the reference is at least `min_reference`. Selecting rows
//! on the reference (the regressor) keeps the fit unbiased while leaving out
//! the low end, where the sensor clips at 0; a second pass then takes every
//! row whose raw value the first fit expects to be `clip_margin` above 0. The eddy calibration that
//! undoes the response is `gain = 1 / sensor_gain`,
//! `offset = −sensor_offset / sensor_gain`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::linear_regression::{LinearRegression, LinearRegressionParameters};

use eddy_parquet::BackupRow;

use crate::data::get;
use crate::error::{Error, Result};
use crate::model::{CalibrationModel, DeviceCalibration};

/// Options of the calibration task.
#[derive(Clone, Debug)]
pub struct CalibrationOptions {
    /// The channel to calibrate (default `pm25`).
    pub channel: String,
    /// The reference channel (default `ref_<channel>`).
    pub reference: String,
    /// Rows with a smaller reference value are left out of the fit (default 8).
    pub min_reference: f64,
    /// Devices with fewer usable rows are skipped (default 20).
    pub min_rows: usize,
    /// Second pass: rows whose raw value the first fit expects below this
    /// are left out (default 4: about four noise deviations above the clip at 0).
    pub clip_margin: f64,
}

/// The evaluation of a calibration: RMSE against the reference, before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationEval {
    /// Devices fitted.
    pub devices: u64,
    /// Devices skipped for having too few rows.
    pub skipped: Vec<String>,
    /// Rows fitted, over every device.
    pub rows: u64,
    /// RMSE of the raw channel against the reference, over every fitted row.
    pub rmse_before: f64,
    /// RMSE of the calibrated channel against the reference.
    pub rmse_after: f64,
}

/// Fits every device's calibration.
pub fn train(
    rows: &[BackupRow],
    opts: &CalibrationOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(CalibrationModel, CalibrationEval)> {
    // Raw values on both sides: the reference is never calibrated, and the
    // channel's backup value already has the dataset's calibration applied.
    let mut pairs: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut all: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut seen_reference = false;
    for r in rows {
        let reference = get(&r.raw, &opts.reference);
        seen_reference |= reference.is_some();
        let junk = r.junk.iter().any(|j| *j == opts.channel || *j == opts.reference);
        if let (Some(x), Some(y), false) = (reference, get(&r.raw, &opts.channel), junk) {
            all.entry(&r.device_id).or_default().push((x, y));
            if x >= opts.min_reference {
                pairs.entry(&r.device_id).or_default().push((x, y));
            }
        }
    }
    if !seen_reference {
        return Err(Error::Data(format!(
            "the backup has no values of the reference channel `{}` (generate one with `eddy gen --reference-channel`)",
            opts.reference
        )));
    }
    let mut devices = Vec::new();
    let mut skipped = Vec::new();
    let (mut se_before, mut se_after, mut n_all) = (0.0, 0.0, 0u64);
    let total = pairs.len() as u64;
    for (i, (dev, p)) in pairs.into_iter().enumerate() {
        progress("fit", i as u64 + 1, total);
        if p.len() < opts.min_rows {
            skipped.push(dev.to_string());
            continue;
        }
        let Some((g1, o1)) = fit(dev, &p)? else {
            skipped.push(dev.to_string());
            continue;
        };
        // Second pass: every row whose expected raw value is well clear of
        // the sensor's clipping at 0 (selected on the reference again, through
        // the first fit), which reaches down to each device's baseline.
        let p: Vec<(f64, f64)> = all
            .get(dev)
            .map(|a| a.iter().copied().filter(|&(x, _)| g1 * x + o1 >= opts.clip_margin).collect())
            .unwrap_or_default();
        let Some((sensor_gain, sensor_offset)) = fit(dev, &p)? else {
            skipped.push(dev.to_string());
            continue;
        };
        let gain = 1.0 / sensor_gain;
        let offset = -sensor_offset / sensor_gain;
        let (mut b, mut a) = (0.0, 0.0);
        for &(x, y) in &p {
            b += (y - x).powi(2);
            a += (gain * y + offset - x).powi(2);
        }
        let n = p.len() as f64;
        se_before += b;
        se_after += a;
        n_all += p.len() as u64;
        devices.push(DeviceCalibration {
            device_id: dev.to_string(),
            sensor_gain,
            sensor_offset,
            gain,
            offset,
            rows: p.len() as u64,
            reference_mean: p.iter().map(|&(x, _)| x).sum::<f64>() / n,
            rmse_before: (b / n).sqrt(),
            rmse_after: (a / n).sqrt(),
        });
    }
    if devices.is_empty() {
        return Err(Error::Data(format!(
            "no device has {} rows with both `{}` and `{}` ≥ {}",
            opts.min_rows, opts.channel, opts.reference, opts.min_reference
        )));
    }
    let eval = CalibrationEval {
        devices: devices.len() as u64,
        skipped,
        rows: n_all,
        rmse_before: (se_before / n_all as f64).sqrt(),
        rmse_after: (se_after / n_all as f64).sqrt(),
    };
    Ok((CalibrationModel { channel: opts.channel.clone(), reference: opts.reference.clone(), devices }, eval))
}

/// Least squares `y = gain × x + offset`; `None` when the gain is not positive.
fn fit(dev: &str, p: &[(f64, f64)]) -> Result<Option<(f64, f64)>> {
    let x: Vec<Vec<f64>> = p.iter().map(|&(x, _)| vec![x]).collect();
    let y: Vec<f64> = p.iter().map(|&(_, y)| y).collect();
    let fit_err = |e: smartcore::error::Failed| Error::Fit { task: "calibration", message: format!("{dev}: {e}") };
    let xm = DenseMatrix::from_2d_vec(&x).map_err(fit_err)?;
    let lr = LinearRegression::fit(&xm, &y, LinearRegressionParameters::default()).map_err(fit_err)?;
    use smartcore::linalg::basic::arrays::Array;
    let gain = *lr.coefficients().get((0, 0));
    let offset = *lr.intercept();
    Ok((gain.is_finite() && gain > 0.0 && offset.is_finite()).then_some((gain, offset)))
}
