//! # eddy-gen: deterministic synthetic fleet datasets
//!
//! This crate backs the `eddy gen` command. [`generate`] writes a directory
//! that looks like what a fleet of indoor air-quality sensors and its
//! reference-data systems would produce, including the messy parts (late
//! readings, malformed lines, out-of-range values, devices that are not in the
//! device registry yet). The output is fully determined by the [`GenConfig`]:
//! the same configuration (including `seed`) always yields byte-identical files.
//!
//! The full data contract lives in `docs/formats.md`; this is a summary of what
//! the generator writes.
//!
//! ## Files
//!
//! | file | content |
//! |------|---------|
//! | `readings.jsonl` (or `readings.jsonl.gz` with [`GenConfig::gzip`]) | sensor readings, one JSON object per line, in **arrival** order |
//! | `devices.csv` | `device_id,model,site,owner`: the device registry |
//! | `calibration.csv` | `device_id,channel,gain,offset,valid_from`: calibration versions |
//! | `thresholds.csv` | `rule_id,device_id,channel,rise_above,fall_below`: alert rules |
//! | `updates.jsonl` | reference-data changes over time, sorted by `ts` (only with [`GenConfig::updates`]) |
//! | `truth.csv` | `device_id,channel,gain,offset`: true sensor gain/offset (only with [`GenConfig::reference_channel`]) |
//! | `drift.csv` | `device_id,channel,ppm_per_day`: devices with co2 drift (only when [`GenConfig::drift_co2_ppm_per_day`] is not 0 and at least one device drifts) |
//! | `gen.json` | the configuration and the [`GenSummary`] |
//!
//! Files from an earlier run that the current configuration does not produce
//! (e.g. `updates.jsonl` when updates are off, or the plain/gzip counterpart of
//! the readings file) are removed so the directory stays consistent.
//!
//! ### `readings.jsonl`
//!
//! ```text
//! {"device_id":"dev-000042","ts":1767225637412,"pm25":12.3,"co2":845,"voc":123,"temp":21.4,"hum":45.2}
//! ```
//!
//! * `device_id`: non-empty string (`dev-NNNNNN`, numbered from 1).
//! * `ts`: measurement time, integer epoch milliseconds (UTC).
//! * `pm25` (µg/m³, 1 decimal), `co2` (ppm, integer), `voc` (index/ppb,
//!   integer), `temp` (°C, 1 decimal), `hum` (% RH, 1 decimal): a number, or
//!   `null` when the channel was not measured (about 0.5% of values).
//! * `ref_pm25` (1 decimal or `null`): only with [`GenConfig::reference_channel`].
//!
//! Every device reads every [`GenConfig::interval_ms`] (5 minutes) at its own
//! random phase within the interval, from [`GenConfig::start_ms`] for
//! [`GenConfig::hours`]. A reading *arrives* at `ts` plus 0–30 s of jitter; a
//! fraction [`GenConfig::late`] arrives 15–120 minutes late instead. Lines are
//! written in arrival order, so `ts` is *not* sorted: small inversions come
//! from jitter and phases, large ones from late readings.
//!
//! Signals: daily occupancy cycles (office hours on weekdays, quieter on
//! weekends; `co2` from the 420 ppm outdoor baseline up to a per-device peak of
//! 800–1400 ppm, `temp` 19–25 °C, `hum` 30–60 %, `voc` 50–500), autocorrelated
//! noise, and random pollution episodes per device (on average about two
//! `pm25` episodes per device per day, rate varying across the fleet): `pm25`
//! rises from its 3–20 baseline to a peak of 40–150 for 20–120 minutes and
//! returns to baseline (below 25); `co2` episodes add 300–900 ppm (above 1000,
//! then back below 800 outside office hours) and `voc` episodes occasionally
//! push `voc` above 500.
//!
//! ### Junk
//!
//! A fraction [`GenConfig::junk`] of all lines is junk, half of each kind:
//!
//! * **malformed lines** ([`GenSummary::junk_lines`]), inserted at random
//!   positions: truncated JSON objects, non-JSON text, JSON arrays, objects
//!   without `device_id` (or with an empty / non-string one), `ts` as a string,
//!   a channel value that is a string or a boolean;
//! * **out-of-range values** ([`GenSummary::junk_values`]): otherwise valid
//!   readings where one channel has an impossible value: `pm25` < 0 or ≥ 5000,
//!   `co2` < 0 or ≥ 65535, `voc` < 0 or ≥ 999999, `temp` < -50 or ≥ 150,
//!   `hum` < 0 or > 100. Clean values always stay within
//!   `pm25` 0..1000, `co2` 0..10000, `voc` 0..10000, `temp` -40..85, `hum` 0..100.
//!
//! ### Devices that are not (yet) registered
//!
//! * With [`GenConfig::updates`], one **new device** `dev-(N+1)` (for
//!   `N` = [`GenConfig::devices`]) starts reporting a third into the dataset;
//!   it is not in `devices.csv` and is only added by a `devices` upsert in
//!   `updates.jsonl` halfway through (plus a calibration upsert a minute later).
//! * Three **unknown devices** `dev-(N+2)`..`dev-(N+4)` report for a short
//!   window (15–60 minutes) and never appear in any reference data.
//!
//! ### Reference data
//!
//! `devices.csv` has one row per fleet device (models `AQ-100`, `AQ-200`,
//! `AQ-250`, `AQ-300`; sites `site-NN`, each owned by one `owner-N`). CSV files
//! use `\n` line endings and RFC 4180 quoting only where needed.
//!
//! `calibration.csv` has rows for about half of the devices (`pm25` and/or
//! `co2`; gain 0.8–1.2, offset -5..5 for pm25 and -30..30 for co2) with an
//! empty `valid_from` (valid since forever); about 5% of devices also get a
//! recalibration row whose `valid_from` is a timestamp in the middle of the
//! dataset.
//!
//! `thresholds.csv` has fleet-wide rules (`pm25-high,*,pm25,35,25`,
//! `co2-high,*,co2,1000,800`, `voc-high,*,voc,500,350`) and two
//! device-specific rules (a rule is keyed by `rule_id` and `device_id`).
//!
//! `updates.jsonl` lines look like
//! `{"ts":…,"table":"calibration","op":"upsert","row":{"device_id":"dev-000001","channel":"pm25","gain":1.1,"offset":-2.0}}`
//! for the tables `devices`, `calibration` and `rules`. `"op":"delete"` rows
//! carry only the key: `device_id` (devices); `device_id`, `channel` and
//! `valid_from` if that version had one (calibration); `rule_id`, `device_id`
//! (rules). The stream contains devices moving to another site, new
//! calibrations, a change of the fleet-wide `voc-high` rule, a new and a
//! deleted device-specific rule, deleted calibration rows and (for fleets of at
//! least 10 devices) a decommissioned device, which stops reporting shortly
//! before its delete.
//!
//! ## Knobs for ML experiments
//!
//! * [`GenConfig::drift_co2_ppm_per_day`] / [`GenConfig::drift_fraction`]: a
//!   fraction of the fleet gets a linear co2 baseline drift (listed in
//!   `drift.csv`).
//! * [`GenConfig::reference_channel`]: adds `ref_pm25` (the true pm25) and makes
//!   `pm25` a raw sensor value `true * gain + offset + noise` with the per-device
//!   gain/offset in `truth.csv`.
//!
//! ## Example
//!
//! ```no_run
//! let cfg = eddy_gen::GenConfig { devices: 50, seed: 7, ..Default::default() };
//! let summary = eddy_gen::generate(&cfg, std::path::Path::new("datasets/sample"), &mut |_, _| {})?;
//! println!("{} readings, {} lines", summary.readings, summary.lines);
//! # Ok::<(), eddy_gen::GenError>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

mod plan;
mod readings;
mod refdata;
mod signal;

/// Default dataset start: 2026-01-01T00:00:00Z in epoch milliseconds.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;
/// Default reading interval per device: 5 minutes in milliseconds.
pub const DEFAULT_INTERVAL_MS: i64 = 300_000;
/// Largest accepted [`GenConfig::devices`].
pub const MAX_DEVICES: usize = 10_000_000;

/// Timestamps (start and end of the dataset) must stay below this (year ~33658).
const MAX_TS_MS: i64 = 1_000_000_000_000_000;

/// Options for [`generate`]. Build it with struct update syntax from
/// [`GenConfig::default()`] and check it with [`GenConfig::validate`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenConfig {
    /// Number of registered fleet devices (`--devices`), the rows of
    /// `devices.csv`. Default 100.
    pub devices: usize,
    /// Dataset duration in hours (`--hours`), may be fractional. Default 24.
    pub hours: f64,
    /// Random seed (`--seed`); same config and seed give byte-identical files.
    /// Default 42.
    pub seed: u64,
    /// Fraction of readings that arrive 15–120 minutes late (`--late`), in
    /// [0, 1]. Default 0.01.
    pub late: f64,
    /// Fraction of lines that are junk (`--junk`), in [0, 1]: half malformed
    /// lines, half valid readings with an out-of-range channel value. Default
    /// 0.005.
    pub junk: f64,
    /// Start of the dataset in epoch milliseconds UTC (`--start`). Default
    /// [`DEFAULT_START_MS`] (2026-01-01T00:00:00Z).
    pub start_ms: i64,
    /// Reading interval of each device in milliseconds. Default
    /// [`DEFAULT_INTERVAL_MS`] (5 minutes).
    pub interval_ms: i64,
    /// Write `updates.jsonl` and add the new mid-stream device and the
    /// decommissioned device (`--updates`). Default true.
    pub updates: bool,
    /// Write `readings.jsonl.gz` (gzip) instead of `readings.jsonl`. Default
    /// false.
    pub gzip: bool,
    /// Linear co2 baseline drift in ppm per day for the drifting devices
    /// (`--drift`); 0 disables drift. Default 0.
    pub drift_co2_ppm_per_day: f64,
    /// Fraction of fleet devices that drift (`--drift-fraction`), in [0, 1].
    /// Default 0.2.
    pub drift_fraction: f64,
    /// Add the `ref_pm25` channel (true pm25) and make `pm25` a raw sensor
    /// value with per-device gain/offset written to `truth.csv`. Default false.
    pub reference_channel: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            devices: 100,
            hours: 24.0,
            seed: 42,
            late: 0.01,
            junk: 0.005,
            start_ms: DEFAULT_START_MS,
            interval_ms: DEFAULT_INTERVAL_MS,
            updates: true,
            gzip: false,
            drift_co2_ppm_per_day: 0.0,
            drift_fraction: 0.2,
            reference_channel: false,
        }
    }
}

impl GenConfig {
    /// Checks the options. Error messages name the `eddy gen` flag, e.g.
    /// `--late must be between 0 and 1, got 1.5`.
    pub fn validate(&self) -> Result<(), GenError> {
        fn fraction(flag: &str, v: f64) -> Result<(), GenError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(GenError::Invalid(format!("{flag} must be between 0 and 1, got {v}")))
            }
        }
        if self.devices == 0 {
            return Err(GenError::Invalid("--devices must be at least 1, got 0".into()));
        }
        if self.devices > MAX_DEVICES {
            return Err(GenError::Invalid(format!("--devices must be at most {MAX_DEVICES}, got {}", self.devices)));
        }
        if !(self.hours.is_finite() && self.hours > 0.0) {
            return Err(GenError::Invalid(format!("--hours must be a positive number, got {}", self.hours)));
        }
        fraction("--late", self.late)?;
        fraction("--junk", self.junk)?;
        fraction("--drift-fraction", self.drift_fraction)?;
        if !self.drift_co2_ppm_per_day.is_finite() {
            return Err(GenError::Invalid(format!(
                "--drift must be a finite number of ppm per day, got {}",
                self.drift_co2_ppm_per_day
            )));
        }
        if self.interval_ms <= 0 {
            return Err(GenError::Invalid(format!("interval_ms must be positive, got {}", self.interval_ms)));
        }
        if !(0..MAX_TS_MS).contains(&self.start_ms) {
            return Err(GenError::Invalid(format!(
                "--start must be between 0 and {MAX_TS_MS} (epoch milliseconds), got {}",
                self.start_ms
            )));
        }
        let end = self.start_ms as f64 + self.hours * 3_600_000.0;
        if end >= MAX_TS_MS as f64 {
            return Err(GenError::Invalid(format!(
                "--hours {} is too large: the dataset would end after epoch ms {MAX_TS_MS}",
                self.hours
            )));
        }
        Ok(())
    }

    /// Dataset duration in milliseconds (`hours` rounded to whole ms).
    fn duration_ms(&self) -> i64 {
        (self.hours * 3_600_000.0).round() as i64
    }

    /// Fraction of readings that get an out-of-range value and, independently,
    /// the probability of inserting a malformed line before a reading, so that
    /// both together make `junk` of all lines: q = j / (2 - j).
    fn junk_rate(&self) -> f64 {
        self.junk / (2.0 - self.junk)
    }
}

/// Counts reported by [`generate`] (also stored in `gen.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenSummary {
    /// Valid readings written (JSON objects with a `device_id` and an integer
    /// `ts`), including those with an out-of-range value (`junk_values`).
    pub readings: u64,
    /// Readings that arrived 15–120 minutes late.
    pub late: u64,
    /// Malformed lines (not a valid reading).
    pub junk_lines: u64,
    /// Valid readings with one out-of-range channel value.
    pub junk_values: u64,
    /// Lines in the readings file: `readings + junk_lines`.
    pub lines: u64,
    /// Registered fleet devices (rows of `devices.csv`, = `GenConfig::devices`).
    pub devices: usize,
    /// Size in bytes of the readings file as written (compressed with gzip).
    pub bytes: u64,
}

/// Errors of [`generate`] and [`GenConfig::validate`].
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// An option is out of range; the message names the flag.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Creating or writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl GenError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenError + '_ {
        move |source| GenError::Io { path: path.to_path_buf(), source }
    }
}

/// Contents of `gen.json`.
#[derive(serde::Serialize)]
struct GenJson<'a> {
    generator: &'static str,
    version: &'static str,
    config: &'a GenConfig,
    summary: &'a GenSummary,
    files: Vec<&'static str>,
}

/// Writes the dataset described by `cfg` into `out_dir` (created if missing)
/// and returns the counts.
///
/// `progress(lines_written, total_lines_expected)` is called periodically
/// while `readings.jsonl` is written; the total is an estimate (the number of
/// malformed lines is random) and the last call has `lines_written ==
/// total_lines_expected`.
pub fn generate(cfg: &GenConfig, out_dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<GenSummary, GenError> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(GenError::io(out_dir))?;

    let plan = plan::Plan::new(cfg);
    let mut files = vec!["devices.csv", "calibration.csv", "thresholds.csv"];
    refdata::write_devices(&plan, &out_dir.join("devices.csv"))?;
    refdata::write_calibration(&plan, &out_dir.join("calibration.csv"))?;
    refdata::write_thresholds(&plan, &out_dir.join("thresholds.csv"))?;

    let mut stale = Vec::new();
    if cfg.updates {
        refdata::write_updates(&plan, &out_dir.join("updates.jsonl"))?;
        files.push("updates.jsonl");
    } else {
        stale.push("updates.jsonl");
    }
    if cfg.reference_channel {
        refdata::write_truth(&plan, &out_dir.join("truth.csv"))?;
        files.push("truth.csv");
    } else {
        stale.push("truth.csv");
    }
    if plan.has_drift() {
        refdata::write_drift(&plan, &out_dir.join("drift.csv"))?;
        files.push("drift.csv");
    } else {
        stale.push("drift.csv");
    }
    let (readings_name, other) =
        if cfg.gzip { ("readings.jsonl.gz", "readings.jsonl") } else { ("readings.jsonl", "readings.jsonl.gz") };
    stale.push(other);
    for name in stale {
        let p = out_dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(GenError::io(&p)(e)),
        }
    }

    let summary = readings::write_readings(cfg, &plan, &out_dir.join(readings_name), progress)?;
    files.push(readings_name);
    files.push("gen.json");

    let gen_path = out_dir.join("gen.json");
    let json =
        GenJson { generator: "eddy-gen", version: env!("CARGO_PKG_VERSION"), config: cfg, summary: &summary, files };
    let mut text = serde_json::to_vec_pretty(&json).expect("gen.json serializes");
    text.push(b'\n');
    std::fs::File::create(&gen_path).and_then(|mut f| f.write_all(&text)).map_err(GenError::io(&gen_path))?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
