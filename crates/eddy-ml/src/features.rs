//! The forecast features of one device, from its recent past.
//!
//! [`History`] keeps a device's last [`HISTORY_MS`] of values of the watched
//! channel; [`History::features`] computes the feature vector at the latest
//! value. Training (over a backup, per device in event-time order) and the
//! scoring job (per device in arrival order) use this same code, so a model
//! sees the features it was trained on.

use std::collections::VecDeque;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// How far back the features look.
pub const HISTORY_MS: i64 = 2 * HOUR;

/// The feature names, in vector order: the schema every model records.
pub const FEATURES: [&str; 12] = [
    "value",
    "delta_prev",
    "mean_15m",
    "mean_60m",
    "max_60m",
    "min_60m",
    "std_60m",
    "trend_30m_per_h",
    "rise_over_min_60m",
    "max_120m",
    "hour_sin",
    "hour_cos",
];

/// Number of features.
pub const N_FEATURES: usize = FEATURES.len();

/// A device's recent values of one channel.
#[derive(Clone, Debug, Default)]
pub struct History {
    values: VecDeque<(i64, f64)>,
}

impl History {
    /// Adds a value; values older than [`HISTORY_MS`] before it are dropped.
    /// A value older than the latest one (out of order) is ignored.
    pub fn push(&mut self, ts: i64, value: f64) {
        if let Some(&(last, _)) = self.values.back() {
            if ts < last {
                return;
            }
        }
        self.values.push_back((ts, value));
        while self.values.front().is_some_and(|&(t, _)| t < ts - HISTORY_MS) {
            self.values.pop_front();
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The features at the latest value, or `None` with fewer than 3 values.
    pub fn features(&self) -> Option<[f64; N_FEATURES]> {
        let &(now, value) = self.values.back()?;
        if self.values.len() < 3 {
            return None;
        }
        let within = |span: i64| self.values.iter().rev().take_while(move |&&(t, _)| t > now - span);
        let mean = |span: i64| {
            let (s, n) = within(span).fold((0.0, 0usize), |(s, n), &(_, v)| (s + v, n + 1));
            s / n as f64
        };
        let prev = self.values[self.values.len() - 2].1;
        let mean_60 = mean(HOUR);
        let n_60 = within(HOUR).count() as f64;
        let max_60 = within(HOUR).map(|&(_, v)| v).fold(f64::MIN, f64::max);
        let min_60 = within(HOUR).map(|&(_, v)| v).fold(f64::MAX, f64::min);
        let var_60 = within(HOUR).map(|&(_, v)| (v - mean_60).powi(2)).sum::<f64>() / n_60.max(1.0);
        let max_120 = self.values.iter().map(|&(_, v)| v).fold(f64::MIN, f64::max);
        // Least-squares slope over the last 30 minutes, per hour.
        let pts: Vec<(f64, f64)> = within(30 * MINUTE).map(|&(t, v)| ((t - now) as f64 / HOUR as f64, v)).collect();
        let trend = if pts.len() >= 2 {
            let n = pts.len() as f64;
            let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
            let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
            let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
            let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            if sxx > 0.0 {
                sxy / sxx
            } else {
                0.0
            }
        } else {
            0.0
        };
        let hour = now.rem_euclid(DAY) as f64 / HOUR as f64;
        let angle = hour / 24.0 * std::f64::consts::TAU;
        Some([
            value,
            value - prev,
            mean(15 * MINUTE),
            mean_60,
            max_60,
            min_60,
            var_60.sqrt(),
            trend,
            value - min_60,
            max_120,
            angle.sin(),
            angle.cos(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_a_rising_series() {
        let mut h = History::default();
        for i in 0..30 {
            h.push(i * 5 * MINUTE, i as f64);
        }
        let f = h.features().unwrap();
        assert_eq!(f[0], 29.0);
        assert_eq!(f[1], 1.0);
        assert_eq!(f[5], 18.0); // 60 minutes back exclusive: 18..=29 (t > now - 1h)
        assert!((f[7] - 12.0).abs() < 1e-9, "1 per 5 min = 12 per hour, got {}", f[7]);
        assert_eq!(h.len(), 25); // 2 h inclusive at 5-minute steps
    }
}
