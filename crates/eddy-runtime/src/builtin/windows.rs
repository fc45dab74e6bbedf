//! `kind = "windows"`: count, mean, min and max per (device, channel, window).

use eddy_core::reading::Enriched;
use eddy_core::spec::{JobSpec, WindowsSpec};
use eddy_core::SpecError;
use eddy_state::window::WindowSpec;

use crate::component::{Job, JobBuilder};
use crate::error::Result;

/// The windows job: on-time enriched readings in, one aggregate per
/// (device, channel, window) once the watermark passes the window's end.
pub struct Windows;

impl Job for Windows {
    type Spec = WindowsSpec;
    const KIND: &'static str = "windows";
    const ABOUT: &'static str = "Tumbling or hopping event-time windows: count, mean, min, max per (device, channel).";
    const INPUTS: &'static [&'static str] = &["enriched"];
    const OUTPUTS: &'static [&'static str] = &["windows"];
    const DEFAULT_SPEC: Option<&'static str> = Some(include_str!("../../../../jobs/windows.toml"));

    fn parse(text: &str, file: &str) -> Result<WindowsSpec, SpecError> {
        match super::core_spec(text, file)? {
            JobSpec::Windows(s) => Ok(s),
            other => Err(SpecError::at_key(file, "kind", format!("expected windows, found {}", other.kind().name()))),
        }
    }

    /// `windows.<size>`: one topic per window size.
    fn topic(spec: &WindowsSpec, port: &str) -> String {
        format!("{port}.{}", spec.size)
    }

    /// Builds from the pipeline's windows spec (the instance's spec is the
    /// same file).
    fn build(_spec: &WindowsSpec, job: &mut JobBuilder<'_, '_>) -> Result<()> {
        let window = window_spec(&job.pipeline().windows);
        let windows = job.input::<Enriched>("enriched")?.on_time().windows(window);
        job.output("windows", windows)
    }
}

/// The operator's window from the spec.
pub fn window_spec(spec: &WindowsSpec) -> WindowSpec {
    WindowSpec::hopping(spec.size.ms(), spec.slide().ms())
}
