//! A job of your own, in a binary of your own: `site_means`, the count and
//! mean of every channel per site and hour.
//!
//! ```sh
//! # embedded, beside the built-in jobs (DIR holds a site_means.toml, see examples/site_means.toml):
//! cargo run --release --example custom_eddy -- replay datasets/sample --out out/site --jobs DIR
//! # as its own process over Kafka:
//! cargo run --release --example custom_eddy -- run examples/site_means.toml --brokers 127.0.0.1:9092
//! # what the binary knows:
//! cargo run --release --example custom_eddy -- jobs
//! ```
//!
//! `SiteMeans` is the whole job: its spec, its ports and its dataflow. The
//! binary is `main`, one line. `docs/jobs.md` walks through it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use eddy::connectors::jsonl::Encode;
use eddy::core::duration::Millis;
use eddy::core::{Channel, Enriched, PipelineSpec, SpecError};
use eddy::operators::windows::Windowed;
use eddy::runtime::component::{Job, JobBuilder, OutputRecord, Registry};
use eddy::state::window::WindowSpec;

/// Count and mean per (site, channel, tumbling window).
pub struct SiteMeans;

/// `site_means.toml`: every key has a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteMeansSpec {
    /// Window size. Default `"1h"`.
    #[serde(default = "hour")]
    pub size: Millis,
    /// The channels to average. Default: every channel.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

fn hour() -> Millis {
    Millis::HOUR
}

/// One line of `site_means.jsonl` (and one record of `P.site_means`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiteMean {
    /// The devices' `site` (from their context), or `unknown`.
    pub site: String,
    /// The channel.
    pub channel: String,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Values in the window.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
}

impl Job for SiteMeans {
    type Spec = SiteMeansSpec;
    const KIND: &'static str = "site_means";
    const ABOUT: &'static str = "Count and mean per (site, channel, window) of calibrated on-time values.";
    const INPUTS: &'static [&'static str] = &["enriched"];
    const OUTPUTS: &'static [&'static str] = &["site_means"];

    fn check(spec: &SiteMeansSpec, pipeline: &PipelineSpec, file: &str) -> Result<(), SpecError> {
        let epoch = pipeline.ingest.epoch;
        if spec.size.ms() <= 0 || spec.size.ms() % epoch.ms() != 0 {
            return Err(SpecError::at_key(file, "size", format!("must be a multiple of the ingest epoch ({epoch})")));
        }
        Ok(())
    }

    fn build(spec: &SiteMeansSpec, job: &mut JobBuilder<'_, '_>) -> eddy::runtime::Result<()> {
        let wanted: Option<Vec<Channel>> =
            spec.channels.as_ref().map(|c| c.iter().map(|c| Channel::intern(c)).collect());
        let size = spec.size.ms();
        let means = job
            .input::<Enriched>("enriched")?
            .on_time()
            .key_by(|e| eddy::core::ids::stable_hash(site(e).as_bytes())) // a site's devices meet on one worker
            .window(WindowSpec::tumbling(size))
            .aggregate(move |e, emit| {
                // `values` holds the calibrated values; junk and nulls are None.
                for (channel, v) in e.values.iter() {
                    let (Some(v), true) = (v, wanted.as_ref().is_none_or(|w| w.contains(channel))) else { continue };
                    emit((site(e).to_string(), *channel), e.ts, *v);
                }
            })
            .map(|w: Windowed<(String, Channel)>| SiteMean {
                site: w.key.0,
                channel: w.key.1.to_string(),
                window_start: w.start,
                window_end: w.end,
                count: w.agg.count,
                mean: w.agg.mean(),
            });
        job.output("site_means", means)
    }
}

/// The device's site from its context, or "unknown".
fn site(e: &Enriched) -> &str {
    e.context.as_ref().and_then(|c| c.value("site")).unwrap_or("unknown")
}

impl Encode for SiteMean {
    fn encode(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).expect("serialises to memory");
    }
}

impl OutputRecord for SiteMean {
    fn key(&self) -> Option<Arc<str>> {
        Some(Arc::from(self.site.as_str()))
    }
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    eddy::cli::main(Registry::builtin().with::<SiteMeans>())
}
