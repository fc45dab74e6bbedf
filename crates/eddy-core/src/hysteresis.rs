//! Hysteresis per (rule, device): the state machine of the alerts job.

use serde::{Deserialize, Serialize};

/// An active event.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// ts of the reading that started it.
    pub start_ts: i64,
    /// Largest value seen since the start (the start value included).
    pub peak: f64,
}

/// What one observation did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// The rule became active.
    Start,
    /// The rule became inactive; the event that ended.
    End(Active),
}

/// Applies one value to a rule's state (`None` = inactive).
///
/// While inactive, a value above `rise_above` starts an event. While active,
/// the peak is tracked, and a value below `fall_below` ends the event. A value
/// in between changes nothing but the peak.
pub fn observe(state: &mut Option<Active>, ts: i64, value: f64, rise_above: f64, fall_below: f64) -> Transition {
    match state {
        None => {
            if value > rise_above {
                *state = Some(Active { start_ts: ts, peak: value });
                Transition::Start
            } else {
                Transition::None
            }
        }
        Some(active) => {
            if value < fall_below {
                let ended = *active;
                *state = None;
                Transition::End(ended)
            } else {
                if value > active.peak {
                    active.peak = value;
                }
                Transition::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_tracks_peak_and_falls() {
        let mut s = None;
        assert_eq!(observe(&mut s, 1, 30.0, 35.0, 25.0), Transition::None);
        assert_eq!(observe(&mut s, 2, 36.0, 35.0, 25.0), Transition::Start);
        assert_eq!(observe(&mut s, 3, 50.0, 35.0, 25.0), Transition::None);
        assert_eq!(observe(&mut s, 4, 26.0, 35.0, 25.0), Transition::None);
        assert_eq!(observe(&mut s, 5, 24.0, 35.0, 25.0), Transition::End(Active { start_ts: 2, peak: 50.0 }));
        assert_eq!(observe(&mut s, 6, 35.0, 35.0, 25.0), Transition::None, "equal to rise_above is not above");
    }
}
