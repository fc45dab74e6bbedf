//! The `forecast` task: will an event of an alert rule start for a device
//! within the next H minutes?
//!
//! * **Events** are those of the alert rule (hysteresis: start when a value
//!   rises above `rise_above`, end when it falls below `fall_below`), replayed
//!   per device over the backup in event-time order.
//! * **Samples** are the device's readings while no event is active (during
//!   an event there is nothing to forecast); the label says whether an event
//!   starts in `(ts, ts + H]`; the features ([`crate::features`]) come from
//!   the readings at or before `ts`.
//! * **Split by time**: samples with `ts + H` before the cut (70% of the time
//!   range) train, samples at or after the cut test; so no training label
//!   looks into the test period.
//! * **Baseline**: persistence of the outcome: it warns when an event started
//!   in the past H minutes, `(ts − H, ts]`, i.e. what happened in the last
//!   horizon happens again in the next.

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use eddy_core::hysteresis::{observe, Transition};
use eddy_parquet::BackupRow;

use crate::error::{Error, Result};
use crate::features::{History, N_FEATURES};
use crate::metrics::{scores, Scores};
use crate::model::{EventRule, ForecastModel, Logistic};

/// Options of the forecast task.
#[derive(Clone, Debug)]
pub struct ForecastOptions {
    /// The rule whose events are forecast.
    pub rule: EventRule,
    /// Minutes ahead (default 30).
    pub horizon_min: u32,
    /// Fraction of the time range used for training (default 0.7).
    pub train_fraction: f64,
}

/// Size and positives of one side of the split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitSize {
    /// Samples.
    pub rows: u64,
    /// Samples labelled positive.
    pub positives: u64,
}

/// The evaluation of a forecaster on the test set, against persistence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastEval {
    /// Minutes ahead.
    pub horizon_min: u32,
    /// Training samples have `ts + H` before this; test samples `ts` at or after it.
    pub split_ts: i64,
    /// The training set.
    pub train: SplitSize,
    /// The test set.
    pub test: SplitSize,
    /// The model's decision threshold.
    pub threshold: f64,
    /// The model on the test set.
    pub model: Scores,
    /// The persistence baseline on the test set.
    pub persistence: Scores,
}

/// One sample.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub ts: i64,
    pub x: [f64; N_FEATURES],
    pub label: bool,
    pub persistence: bool,
}

/// The samples of one device's series (event-time order).
pub(crate) fn samples(series: &[(i64, f64)], rule: &EventRule, horizon_ms: i64, out: &mut Vec<Sample>) {
    let mut state = None;
    let mut starts = Vec::new();
    let mut inactive = Vec::with_capacity(series.len());
    for &(ts, v) in series {
        if observe(&mut state, ts, v, rule.rise_above, rule.fall_below) == Transition::Start {
            starts.push(ts);
        }
        inactive.push(state.is_none());
    }
    let mut h = History::default();
    for (i, &(ts, v)) in series.iter().enumerate() {
        h.push(ts, v);
        if !inactive[i] {
            continue;
        }
        let Some(x) = h.features() else { continue };
        // First start strictly after ts.
        let next = starts.partition_point(|&s| s <= ts);
        let label = starts.get(next).is_some_and(|&s| s <= ts + horizon_ms);
        let persistence = next > 0 && starts[next - 1] > ts - horizon_ms;
        out.push(Sample { ts, x, label, persistence });
    }
}

/// Trains and evaluates a forecaster on backup rows.
pub fn train(
    rows: &[BackupRow],
    opts: &ForecastOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(ForecastModel, ForecastEval)> {
    let horizon_ms = opts.horizon_min as i64 * 60_000;
    let by_dev = crate::data::series(rows, &opts.rule.channel);
    if by_dev.is_empty() {
        return Err(Error::Data(format!("the backup has no values of channel `{}`", opts.rule.channel)));
    }
    let mut all = Vec::new();
    let n = by_dev.len() as u64;
    for (i, s) in by_dev.values().enumerate() {
        samples(s, &opts.rule, horizon_ms, &mut all);
        progress("features", i as u64 + 1, n);
    }
    let lo = all.iter().map(|s| s.ts).min().unwrap_or(0);
    let hi = all.iter().map(|s| s.ts).max().unwrap_or(0);
    let split_ts = lo + ((hi - lo) as f64 * opts.train_fraction) as i64;
    let (train, test): (Vec<&Sample>, Vec<&Sample>) = {
        let train = all.iter().filter(|s| s.ts + horizon_ms < split_ts).collect();
        let test = all.iter().filter(|s| s.ts >= split_ts).collect();
        (train, test)
    };
    let size =
        |s: &[&Sample]| SplitSize { rows: s.len() as u64, positives: s.iter().filter(|s| s.label).count() as u64 };
    let (train_size, test_size) = (size(&train), size(&test));
    for (name, s) in [("training", train_size), ("test", test_size)] {
        if s.positives == 0 || s.positives == s.rows {
            return Err(Error::Data(format!(
                "the {name} set ({} samples) has {} positives: it needs both classes; give a longer backup",
                s.rows, s.positives
            )));
        }
    }

    // Standardise with the training set's statistics.
    let mut mean = vec![0.0; N_FEATURES];
    let mut std = vec![0.0; N_FEATURES];
    for s in &train {
        for (m, v) in mean.iter_mut().zip(&s.x) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= train.len() as f64);
    for s in &train {
        for ((sd, m), v) in std.iter_mut().zip(&mean).zip(&s.x) {
            *sd += (v - m).powi(2);
        }
    }
    std.iter_mut().for_each(|sd| {
        *sd = (*sd / train.len() as f64).sqrt();
        if *sd == 0.0 || !sd.is_finite() {
            *sd = 1.0;
        }
    });
    let x: Vec<Vec<f64>> =
        train.iter().map(|s| s.x.iter().zip(&mean).zip(&std).map(|((v, m), sd)| (v - m) / sd).collect()).collect();
    let y: Vec<u32> = train.iter().map(|s| s.label as u32).collect();
    progress("fit", 0, 1);
    let fit_err = |e: smartcore::error::Failed| Error::Fit { task: "forecast", message: e.to_string() };
    let xm = DenseMatrix::from_2d_vec(&x).map_err(fit_err)?;
    let lr =
        LogisticRegression::fit(&xm, &y, LogisticRegressionParameters::default().with_alpha(1e-3)).map_err(fit_err)?;
    progress("fit", 1, 1);
    let coef = lr.coefficients();
    use smartcore::linalg::basic::arrays::Array;
    let weights: Vec<f64> = (0..N_FEATURES).map(|j| *coef.get((0, j))).collect();
    let intercept = *lr.intercept().get((0, 0));
    let mut logistic = Logistic { mean, std, weights, intercept, threshold: 0.5 };

    // The decision threshold that maximises F1 on the training set.
    let mut scored: Vec<(f64, bool)> = train.iter().map(|s| (logistic.probability(&s.x), s.label)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total_pos = train_size.positives as f64;
    let (mut tp, mut best, mut best_t) = (0.0, -1.0, 0.5);
    for (i, &(p, l)) in scored.iter().enumerate() {
        if l {
            tp += 1.0;
        }
        if scored.get(i + 1).is_some_and(|n| n.0 == p) {
            continue;
        }
        let f1 = 2.0 * tp / ((i + 1) as f64 + total_pos);
        if f1 > best {
            best = f1;
            best_t = p;
        }
    }
    logistic.threshold = best_t;

    let truth: Vec<bool> = test.iter().map(|s| s.label).collect();
    let prob: Vec<f64> = test.iter().map(|s| logistic.probability(&s.x)).collect();
    let pred: Vec<bool> = prob.iter().map(|&p| p >= logistic.threshold).collect();
    let base: Vec<bool> = test.iter().map(|s| s.persistence).collect();
    let base_score: Vec<f64> = base.iter().map(|&b| b as u8 as f64).collect();
    let eval = ForecastEval {
        horizon_min: opts.horizon_min,
        split_ts,
        train: train_size,
        test: test_size,
        threshold: logistic.threshold,
        model: scores(&truth, &pred, &prob),
        persistence: scores(&truth, &base, &base_score),
    };
    Ok((ForecastModel { horizon_min: opts.horizon_min, rule: opts.rule.clone(), logistic }, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_look_ahead_and_skip_active_readings() {
        let rule = EventRule { rule_id: "r".into(), channel: "pm25".into(), rise_above: 35.0, fall_below: 25.0 };
        let m = 60_000;
        // 5-minute readings; an event starts at 40 min and ends at 55 min.
        let vals = [5.0, 5.0, 5.0, 6.0, 8.0, 20.0, 30.0, 40.0, 50.0, 30.0, 28.0, 10.0, 5.0];
        let series: Vec<(i64, f64)> = vals.iter().enumerate().map(|(i, &v)| (i as i64 * 5 * m, v)).collect();
        let mut out = Vec::new();
        samples(&series, &rule, 30 * m, &mut out);
        let by_ts: Vec<(i64, bool, bool)> = out.iter().map(|s| (s.ts / m, s.label, s.persistence)).collect();
        // Features need 3 values, so samples start at 10 min; 35..=50 min are active (35 starts, 55 ends).
        assert_eq!(
            by_ts,
            vec![
                (10, true, false),
                (15, true, false),
                (20, true, false),
                (25, true, false),
                (30, true, false),
                (55, false, true),
                (60, false, true)
            ]
        );
    }
}
