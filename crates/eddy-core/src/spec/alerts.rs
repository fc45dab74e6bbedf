//! `kind = "alerts"`: the spec of the threshold-rules job, and the check of
//! a rule's thresholds that the rules of `thresholds.csv` share.

use serde::{Deserialize, Serialize};

use super::{JobKind, SpecError};

/// One threshold rule with hysteresis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The rule's id, part of every event id.
    pub rule_id: String,
    /// The device it applies to, or `"*"` for every device. Default `"*"`.
    #[serde(default = "d_star")]
    pub device_id: String,
    /// The channel it watches.
    pub channel: String,
    /// An inactive rule starts an event when a value rises above this.
    pub rise_above: f64,
    /// An active rule ends its event when a value falls below this.
    pub fall_below: f64,
}

fn d_star() -> String {
    "*".into()
}

fn d_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec {
            rule_id: "pm25-high".into(),
            device_id: "*".into(),
            channel: "pm25".into(),
            rise_above: 35.0,
            fall_below: 25.0,
        },
        RuleSpec {
            rule_id: "co2-high".into(),
            device_id: "*".into(),
            channel: "co2".into(),
            rise_above: 1000.0,
            fall_below: 800.0,
        },
    ]
}

/// `kind = "alerts"`: threshold rules with hysteresis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    /// Must be `"alerts"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// The standard rules, applied before `thresholds.csv` and rule updates.
    /// Default: `pm25-high` (35/25) and `co2-high` (1000/800), for every device.
    #[serde(default = "d_rules")]
    pub rules: Vec<RuleSpec>,
}

/// Checks a rule's thresholds; `key` is the rule's key path for messages.
pub fn check_rule(rise_above: f64, fall_below: f64) -> Result<(), String> {
    if !rise_above.is_finite() || !fall_below.is_finite() {
        return Err("thresholds must be finite numbers".into());
    }
    if fall_below > rise_above {
        return Err(format!("fall_below ({fall_below}) must not exceed rise_above ({rise_above})"));
    }
    Ok(())
}

impl AlertsSpec {
    /// Checks the values of the spec on its own: every rule has an id, a
    /// channel and a device (or `"*"`), valid thresholds, and no two rules
    /// share an id and a device.
    pub(super) fn check(&self, file: &str) -> Result<(), SpecError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.rule_id.is_empty() {
                return Err(SpecError::key(file, format!("rules[{i}].rule_id"), "must not be empty"));
            }
            if r.channel.is_empty() {
                return Err(SpecError::key(file, format!("rules[{i}].channel"), "must not be empty"));
            }
            if r.device_id.is_empty() {
                return Err(SpecError::key(file, format!("rules[{i}].device_id"), "must be a device id or \"*\""));
            }
            check_rule(r.rise_above, r.fall_below)
                .map_err(|m| SpecError::key(file, format!("rules[{i}].fall_below"), m))?;
            if !seen.insert((r.rule_id.clone(), r.device_id.clone())) {
                return Err(SpecError::key(
                    file,
                    format!("rules[{i}].rule_id"),
                    format!("rule {:?} for device {:?} is defined twice", r.rule_id, r.device_id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::JobSpec;

    /// A rule whose `fall_below` exceeds its `rise_above` is an error at that
    /// rule's `fall_below`.
    #[test]
    fn rule_thresholds_are_checked() {
        let e = JobSpec::from_toml(
            "kind = \"alerts\"\n[[rules]]\nrule_id = \"r\"\nchannel = \"pm25\"\nrise_above = 10\nfall_below = 20\n",
            "a.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rules[0].fall_below"));
    }
}
