//! The configuration of the statistics: EWMA weight, top-k size and the trend's half-life.

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
    /// Half-life of the trend's weights, in ms of event time: a value this
    /// much older than the key's latest `ts` weighs half as much. Default
    /// `3_600_000` (one hour).
    pub trend_half_life_ms: i64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { alpha: 0.1, top_k: 5, trend_half_life_ms: 3_600_000 }
    }
}

impl StatsConfig {
    /// Checks the configuration: `alpha` finite and in `(0, 1]`,
    /// `top_k >= 1` and `trend_half_life_ms >= 1`.
    ///
    /// [`ChannelStats`](super::ChannelStats) never panics on an invalid configuration, but its
    /// results are then degenerate: `top_k == 0` gives `NaN` top-k means, a
    /// non-positive half-life is taken as 1 ms, and an `alpha` outside
    /// `(0, 1]` gives a meaningless EWMA.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("stats alpha must be in (0, 1], got {}", self.alpha));
        }
        if self.top_k == 0 {
            return Err("stats top_k must be at least 1, got 0".to_string());
        }
        if self.trend_half_life_ms < 1 {
            return Err(format!("stats trend_half_life_ms must be at least 1, got {}", self.trend_half_life_ms));
        }
        Ok(())
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
        assert_eq!(c.trend_half_life_ms, 3_600_000);
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
            StatsConfig { trend_half_life_ms: 0, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(StatsConfig { alpha: 1.0, ..ok }.validate().is_ok());
        assert!(cfg(0.1, 1, 1).validate().is_ok());
    }

    #[test]
    fn config_serde_fills_defaults() -> Result<(), serde_json::Error> {
        let c: StatsConfig = serde_json::from_str("{}")?;
        assert_eq!(c, StatsConfig::default());
        let c: StatsConfig = serde_json::from_str(r#"{"alpha": 0.25, "top_k": 3}"#)?;
        assert_eq!(c.alpha, 0.25);
        assert_eq!(c.top_k, 3);
        assert_eq!(c.trend_half_life_ms, 3_600_000);
        Ok(())
    }
}
