//! `kind = "alerts"`: threshold rules with hysteresis.

use eddy_core::reading::Enriched;
use eddy_core::spec::{AlertsSpec, JobSpec};
use eddy_core::SpecError;

use crate::component::{Job, JobBuilder};
use crate::error::Result;

/// The alerts job: on-time enriched readings and the rules (the spec's,
/// `thresholds.csv` and rule updates, as reference data) in, `start` and
/// `end` events per (rule, device) out.
pub struct Alerts;

impl Job for Alerts {
    type Spec = AlertsSpec;
    const KIND: &'static str = "alerts";
    const ABOUT: &'static str =
        "Pollution alerts: threshold rules with hysteresis, start and end events per (rule, device).";
    const INPUTS: &'static [&'static str] = &["enriched", "rules"];
    const OUTPUTS: &'static [&'static str] = &["events"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/alerts.toml"));

    fn parse(text: &str, file: &str) -> Result<AlertsSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Alerts(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected alerts, found {}", other.kind().name()))),
        }
    }

    fn build(_spec: &AlertsSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let enriched = job.input::<Enriched>("enriched")?;
        // The spec's rules reach the operator as reference data.
        let reference = job.reference()?;
        let events = enriched.on_time().alerts(&reference);
        job.output("events", events)
    }
}
