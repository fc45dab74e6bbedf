//! The configuration of the statistics: EWMA weight, top-k size and trend span.

use serde::{Deserialize, Serialize};

/// Configuration shared by every [`ChannelStats`](super::ChannelStats) of an operator.
///
/// Fields missing from a serialized config take their [`Default`] values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsConfig {
    /// EWMA smoothing factor in `(0, 1]`: the weight of the newest value.
    /// Default `0.1`.
    pub alpha: f64,
    /// How many largest and smallest values feed
    /// [`StatsSnapshot::top_k_max_mean`](super::StatsSnapshot::top_k_max_mean) and
    /// [`StatsSnapshot::top_k_min_mean`](super::StatsSnapshot::top_k_min_mean). Default `5`.
    pub top_k: usize,
    /// Event-time length of the rolling trend span, in ms. Default
    /// `3_600_000` (one hour).
    pub trend_span_ms: i64,
    /// Number of buckets the trend span is divided into. Default `60`.
    pub trend_buckets: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { alpha: 0.1, top_k: 5, trend_span_ms: 3_600_000, trend_buckets: 60 }
    }
}

impl StatsConfig {
    /// Checks the configuration: `alpha` finite and in `(0, 1]`,
    /// `top_k >= 1`, `trend_span_ms >= 1` and `trend_buckets >= 1`.
    ///
    /// [`ChannelStats`](super::ChannelStats) never panics on an invalid configuration, but its
    /// results are then degenerate: `top_k == 0` gives `NaN` top-k means,
    /// `trend_buckets == 0` gives no trend, a non-positive span gives 1 ms
    /// buckets, and an `alpha` outside `(0, 1]` gives a meaningless EWMA.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("stats alpha must be in (0, 1], got {}", self.alpha));
        }
        if self.top_k == 0 {
            return Err("stats top_k must be at least 1, got 0".to_string());
        }
        if self.trend_span_ms < 1 {
            return Err(format!("stats trend_span_ms must be at least 1, got {}", self.trend_span_ms));
        }
        if self.trend_buckets == 0 {
            return Err("stats trend_buckets must be at least 1, got 0".to_string());
        }
        Ok(())
    }

    /// Width of one trend bucket in ms: `trend_span_ms / trend_buckets`, at
    /// least 1 (also when `trend_buckets == 0`).
    pub(super) fn bucket_width_ms(&self) -> i64 {
        let buckets = i64::try_from(self.trend_buckets).unwrap_or(i64::MAX);
        if buckets == 0 {
            1
        } else {
            (self.trend_span_ms / buckets).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::testing::cfg;

    #[test]
    fn default_config() {
        let c = StatsConfig::default();
        assert_eq!(c.alpha, 0.1);
        assert_eq!(c.top_k, 5);
        assert_eq!(c.trend_span_ms, 3_600_000);
        assert_eq!(c.trend_buckets, 60);
        assert_eq!(c.bucket_width_ms(), 60_000);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = StatsConfig::default();
        for bad in [
            StatsConfig { alpha: 0.0, ..ok.clone() },
            StatsConfig { alpha: 1.5, ..ok.clone() },
            StatsConfig { alpha: f64::NAN, ..ok.clone() },
            StatsConfig { top_k: 0, ..ok.clone() },
            StatsConfig { trend_span_ms: 0, ..ok.clone() },
            StatsConfig { trend_buckets: 0, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(StatsConfig { alpha: 1.0, ..ok }.validate().is_ok());
    }

    #[test]
    fn bucket_width_is_at_least_one() {
        assert_eq!(cfg(0.1, 1, 10, 60).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, -5, 3).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, 100, 0).bucket_width_ms(), 1);
        assert_eq!(cfg(0.1, 1, 100, 7).bucket_width_ms(), 14);
    }

    #[test]
    fn config_serde_fills_defaults() -> Result<(), serde_json::Error> {
        let c: StatsConfig = serde_json::from_str("{}")?;
        assert_eq!(c, StatsConfig::default());
        let c: StatsConfig = serde_json::from_str(r#"{"alpha": 0.25, "top_k": 3}"#)?;
        assert_eq!(c.alpha, 0.25);
        assert_eq!(c.top_k, 3);
        assert_eq!(c.trend_buckets, 60);
        Ok(())
    }
}
