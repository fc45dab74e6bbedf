//! `kind = "windows"`: the spec of the event-time window aggregates job.

use serde::{Deserialize, Serialize};

use super::{d_hour, JobKind, SpecError};
use crate::duration::Millis;

/// `kind = "windows"`: event-time window aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsSpec {
    /// Must be `"windows"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Window size. Default `"1h"`.
    #[serde(default = "d_hour")]
    pub size: Millis,
    /// Slide of hopping windows; omit (or set equal to `size`) for tumbling
    /// windows. `size` must be a multiple of it.
    #[serde(default)]
    pub slide: Option<Millis>,
}

impl WindowsSpec {
    /// The slide (the size, for tumbling windows).
    pub fn slide(&self) -> Millis {
        self.slide.unwrap_or(self.size)
    }

    /// Checks the values of the spec on its own: a positive size, and a slide
    /// from 1ms to the size that divides it.
    pub(super) fn check(&self, file: &str) -> Result<(), SpecError> {
        if self.size.ms() <= 0 {
            return Err(SpecError::key(file, "size", "must be at least 1ms"));
        }
        let slide = self.slide();
        if slide.ms() <= 0 || slide > self.size {
            return Err(SpecError::key(
                file,
                "slide",
                format!("must be between 1ms and size ({}), found {}", self.size, slide),
            ));
        }
        if self.size.ms() % slide.ms() != 0 {
            return Err(SpecError::key(
                file,
                "slide",
                format!("size ({}) must be a multiple of slide ({})", self.size, slide),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::JobSpec;

    /// A slide that does not divide the size is an error at `slide`.
    #[test]
    fn slide_must_divide_size() {
        let e = JobSpec::from_toml("kind = \"windows\"\nsize = \"1h\"\nslide = \"7m\"\n", "w.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("slide"));
    }
}
