//! Declarative job specs: the `jobs/*.toml` files.
//!
//! Each file describes one job and names its `kind`. Every key has a default,
//! so a file that says only `kind = "stats"` is a complete spec. Unknown keys
//! are errors, and every error names the file, the key and the reason.
//! The shipped files in `jobs/` are compiled in as the built-in defaults
//! ([`PipelineSpec::builtin`]), so the binary and the repository agree.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Millis;
use crate::validate::Ranges;

/// An invalid spec: which file, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SpecError {
    /// The spec file (or `<builtin>/name.toml`).
    pub file: String,
    /// The key, as a dotted path (`rules[0].fall_below`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key `{}`: {}", self.file, k, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl SpecError {
    fn key(file: &str, key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError { file: file.to_string(), key: Some(key.into()), message: message.into() }
    }
}

/// The built-in job kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Validate raw lines, classify late and junk.
    Ingest,
    /// Join calibration and device context.
    Enrich,
    /// Incremental per-(device, channel) statistics.
    Stats,
    /// Event-time window aggregates.
    Windows,
    /// Threshold rules with hysteresis.
    Alerts,
    /// Near-real-time Parquet backup and raw archive.
    Backup,
    /// The calibration adapter (ML): its spec is [`AdapterSpec`], not a
    /// [`JobSpec`]; it runs inside `eddy replay` or as `eddy run` over Kafka.
    Adapter,
    /// The scoring job (ML): its spec is [`ScoreSpec`].
    Score,
}

impl JobKind {
    /// Every kind of the core pipeline, in pipeline order (each has a
    /// [`JobSpec`]); the ML kinds are [`JobKind::ML`].
    pub const ALL: [JobKind; 6] =
        [JobKind::Ingest, JobKind::Enrich, JobKind::Stats, JobKind::Windows, JobKind::Alerts, JobKind::Backup];

    /// The kind's name as written in specs.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Ingest => "ingest",
            JobKind::Enrich => "enrich",
            JobKind::Stats => "stats",
            JobKind::Windows => "windows",
            JobKind::Alerts => "alerts",
            JobKind::Backup => "backup",
            JobKind::Adapter => "adapter",
            JobKind::Score => "score",
        }
    }

    /// The ML kinds (their specs live in [`PipelineSpec::adapter`] and
    /// [`PipelineSpec::score`]).
    pub const ML: [JobKind; 2] = [JobKind::Adapter, JobKind::Score];

    /// Parses a kind name of the core pipeline ([`JobKind::ALL`]).
    pub fn from_name(name: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of a spec file's text, any kind (the ML ones included);
    /// a core spec is parsed and checked on the way.
    pub fn of_spec(text: &str, file: &str) -> Result<JobKind, SpecError> {
        if let Ok(KindOnly { kind: Some(toml::Value::String(k)) }) = toml::from_str::<KindOnly>(text) {
            if let Some(ml) = JobKind::ML.into_iter().find(|m| m.name() == k) {
                return Ok(ml);
            }
        }
        Ok(JobSpec::from_toml(text, file)?.kind())
    }
}

/// A channel's valid range; a missing bound is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// Smallest valid raw value (inclusive).
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest valid raw value (inclusive).
    #[serde(default)]
    pub max: Option<f64>,
}

/// The default valid ranges: pm25 [0,1000], co2 [0,10000], voc [0,100000],
/// temp [−40,85], hum [0,100].
pub fn default_ranges() -> BTreeMap<String, RangeSpec> {
    [("pm25", 0.0, 1000.0), ("co2", 0.0, 10000.0), ("voc", 0.0, 100000.0), ("temp", -40.0, 85.0), ("hum", 0.0, 100.0)]
        .into_iter()
        .map(|(c, lo, hi)| (c.to_string(), RangeSpec { min: Some(lo), max: Some(hi) }))
        .collect()
}

fn d_lateness() -> Millis {
    Millis(10 * 60_000)
}
fn d_epoch() -> Millis {
    Millis::SECOND
}
fn d_true() -> bool {
    true
}
fn d_retention() -> Millis {
    Millis(6 * 3_600_000)
}
fn d_alpha() -> f64 {
    0.1
}
fn d_top_k() -> usize {
    5
}
fn d_hour() -> Millis {
    Millis::HOUR
}
fn d_buckets() -> usize {
    60
}
fn d_star() -> String {
    "*".into()
}

/// `kind = "ingest"`: validation and routing of raw lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Must be `"ingest"`.
    pub kind: JobKind,
    /// The job's name: the prefix of its operators' names in logs and
    /// profiles (defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// How far below the largest `ts` seen so far a reading may be before it
    /// is late. Default `"10m"`.
    #[serde(default = "d_lateness")]
    pub lateness: Millis,
    /// The length of an epoch of event time: the granularity at which the
    /// watermark advances the dataflow's frontier and sinks commit. It must
    /// divide the window size and slide and the statistics snapshot period.
    /// Default `"1s"`.
    #[serde(default = "d_epoch")]
    pub epoch: Millis,
    /// Start from the default ranges (pm25 [0,1000], co2 [0,10000],
    /// voc [0,100000], temp [−40,85], hum [0,100]). Default true.
    #[serde(default = "d_true")]
    pub default_ranges: bool,
    /// Valid ranges by channel, `{ min = …, max = … }`; they replace the
    /// default for that channel. Channels without a range are unbounded.
    #[serde(default)]
    pub ranges: BTreeMap<String, RangeSpec>,
}

impl IngestSpec {
    /// The effective ranges: the defaults (if enabled) overridden by `ranges`.
    pub fn effective_ranges(&self) -> BTreeMap<String, RangeSpec> {
        let mut r = if self.default_ranges { default_ranges() } else { BTreeMap::new() };
        r.extend(self.ranges.iter().map(|(k, v)| (k.clone(), *v)));
        r
    }

    /// The junk rule as a lookup table.
    pub fn ranges(&self) -> Ranges {
        let eff = self.effective_ranges();
        Ranges::new(eff.iter().map(|(c, r)| (c.as_str(), r.min, r.max)))
    }
}

/// `kind = "enrich"`: calibration and device context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichSpec {
    /// Must be `"enrich"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// How much reference-data history (event time, behind the watermark)
    /// the arrangements keep distinct, for late readings. A late reading
    /// older than this sees the reference data as of the oldest retained
    /// time. Default `"6h"`.
    #[serde(default = "d_retention")]
    pub reference_retention: Millis,
}

/// `kind = "stats"`: incremental statistics per (device, channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSpec {
    /// Must be `"stats"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// EWMA smoothing factor α in (0, 1]. Default 0.1.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// k for `top_k_max_mean` and `top_k_min_mean`. Default 5.
    #[serde(default = "d_top_k")]
    pub top_k: usize,
    /// The rolling event-time span of `trend_per_hour`. Default `"1h"`.
    #[serde(default = "d_hour")]
    pub trend_span: Millis,
    /// How many buckets the trend span is cut into (memory per key is
    /// proportional). Default 60.
    #[serde(default = "d_buckets")]
    pub trend_buckets: usize,
    /// A snapshot of a key is emitted each time one of its tumbling windows
    /// of this size closes (and once at the end of input). Default `"1h"`.
    #[serde(default = "d_hour")]
    pub snapshot_every: Millis,
}

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
}

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

fn d_file_age() -> Millis {
    Millis(5_000)
}
fn d_rows_per_file() -> u64 {
    1_000_000
}
fn d_row_group() -> usize {
    131_072
}
fn d_level() -> i32 {
    1
}

/// The compression codec of the backup's and raw archive's Parquet files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at `compression_level`: the smallest files, the most CPU.
    Zstd,
    /// LZ4 (Parquet's `LZ4_RAW`).
    Lz4,
    /// Snappy (the default, as in Spark, DuckDB and pyarrow): on the fleet,
    /// 10% fewer instructions for the whole replay than zstd, for files
    /// 1.6 times as large.
    #[default]
    Snappy,
    /// No compression.
    None,
}

/// `kind = "backup"`: the near-real-time Parquet backup of every valid
/// reading, and the raw archive of every input line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    /// Must be `"backup"`.
    pub kind: JobKind,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Write the backup (`OUT/backup/`). Default true.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Also archive every input line as received (`OUT/raw/`). Default true.
    #[serde(default = "d_true")]
    pub raw_archive: bool,
    /// A file open longer than this is closed and committed at the next
    /// epoch: the bound on how long a reading waits to be durable. Default `"5s"`.
    #[serde(default = "d_file_age")]
    pub max_file_age: Millis,
    /// Roll a file after this many rows. Default 1,000,000.
    #[serde(default = "d_rows_per_file")]
    pub max_rows_per_file: u64,
    /// Rows per Parquet row group. Default 131,072.
    #[serde(default = "d_row_group")]
    pub row_group_rows: usize,
    /// The files' compression codec: `"snappy"` (default), `"zstd"`,
    /// `"lz4"` or `"none"` (`docs/decisions.md` compares them).
    #[serde(default)]
    pub compression: Compression,
    /// zstd level, 1..=22 (only read with `compression = "zstd"`). Default 1:
    /// on the fleet it spends 2% fewer instructions than 3 for files of the
    /// same size (`docs/decisions.md`).
    #[serde(default = "d_level")]
    pub compression_level: i32,
}

/// The kinds of the ML jobs (the calibration adapter and the scoring job), as
/// written in specs: [`JobKind::ML`]. Their specs are not [`JobSpec`]s (they
/// are optional parts of a [`PipelineSpec`]); they run inside `eddy replay`
/// and as `eddy run`.
pub const ML_KINDS: [&str; 2] = ["adapter", "score"];

fn d_adapter_channel() -> String {
    "co2".into()
}
fn d_adapter_k() -> usize {
    3
}
fn d_adapter_span() -> Millis {
    Millis(24 * 3_600_000)
}
fn d_outdoor() -> f64 {
    420.0
}
fn d_min_correction() -> f64 {
    4.0
}

/// `kind = "adapter"`: the calibration adapter. It takes, per device, the
/// smoothed level (`ewma`) of each statistics snapshot of `channel`; once it
/// has `span` of them, the mean of the `k` lowest is taken to be outdoor air
/// and, when it is off `outdoor_ppm` by at least `min_correction`, a
/// calibration update shifting the offset by the difference is fed back into
/// the calibration reference data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    /// Must be `"adapter"`.
    pub kind: String,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// Run the adapter in `eddy replay`. Default false (see docs/decisions.md).
    #[serde(default)]
    pub enabled: bool,
    /// The channel whose baseline drifts. Default `"co2"`.
    #[serde(default = "d_adapter_channel")]
    pub channel: String,
    /// How many of the lowest levels make the baseline. Default 3.
    #[serde(default = "d_adapter_k")]
    pub k: usize,
    /// The rolling span of levels. Default `"24h"`.
    #[serde(default = "d_adapter_span")]
    pub span: Millis,
    /// The outdoor-air level the baseline is corrected to. Default 420.
    #[serde(default = "d_outdoor")]
    pub outdoor_ppm: f64,
    /// Smaller corrections are not published. Default 4 (ppm).
    #[serde(default = "d_min_correction")]
    pub min_correction: f64,
}

/// `kind = "score"`: the scoring job. With a model (`eddy replay --model`
/// or `model` here) it scores every on-time reading of the model's channel
/// while no event is active, and writes `forecasts.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// Must be `"score"`.
    pub kind: String,
    /// The job's name (operator-name prefix; defaults to the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// A forecast model file, watched for changes (`--model` overrides it).
    #[serde(default)]
    pub model: Option<String>,
    /// How often the model file is checked for a change. Default `"200ms"`.
    #[serde(default = "d_poll")]
    pub poll: Millis,
}

fn d_poll() -> Millis {
    Millis(200)
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

/// One job spec of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum JobSpec {
    /// See [`IngestSpec`].
    Ingest(IngestSpec),
    /// See [`EnrichSpec`].
    Enrich(EnrichSpec),
    /// See [`StatsSpec`].
    Stats(StatsSpec),
    /// See [`WindowsSpec`].
    Windows(WindowsSpec),
    /// See [`AlertsSpec`].
    Alerts(AlertsSpec),
    /// See [`BackupSpec`].
    Backup(BackupSpec),
}

#[derive(Deserialize)]
struct KindOnly {
    kind: Option<toml::Value>,
}

fn toml_error(file: &str, e: toml::de::Error) -> SpecError {
    // toml's message carries the line, the column and the offending key.
    SpecError { file: file.to_string(), key: None, message: e.to_string().trim_end().to_string() }
}

/// The `kind` a spec file's text names, unchecked: the key every spec has.
/// Errors name the file: a TOML syntax error (with its line), a missing
/// `kind`, or one that is not a string.
pub fn kind_of(text: &str, file: &str) -> Result<String, SpecError> {
    let k: KindOnly = toml::from_str(text).map_err(|e| toml_error(file, e))?;
    match k.kind {
        None => Err(SpecError::key(file, "kind", "missing: say which job this is (`eddy jobs` lists the kinds)")),
        Some(toml::Value::String(s)) => Ok(s),
        Some(other) => Err(SpecError::key(file, "kind", format!("must be a string, found {}", other.type_str()))),
    }
}

/// A TOML error as a spec error of `file` (toml's message carries the line,
/// the column and the offending key).
pub fn toml_spec_error(file: &str, e: toml::de::Error) -> SpecError {
    toml_error(file, e)
}

impl SpecError {
    /// An error of `key` in `file`.
    pub fn at_key(file: &str, key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError::key(file, key, message)
    }
}

impl JobSpec {
    /// Parses and checks a spec file's text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<JobSpec, SpecError> {
        let k: KindOnly = toml::from_str(text).map_err(|e| toml_error(file, e))?;
        let kind = match k.kind {
            None => {
                return Err(SpecError::key(
                    file,
                    "kind",
                    "missing: say which job this is (ingest, enrich, stats, windows, alerts or backup)",
                ))
            }
            Some(toml::Value::String(s)) => JobKind::from_name(&s).ok_or_else(|| {
                SpecError::key(
                    file,
                    "kind",
                    format!("unknown job kind {s:?}: expected one of ingest, enrich, stats, windows, alerts, backup, adapter, score"),
                )
            })?,
            Some(other) => {
                return Err(SpecError::key(file, "kind", format!("must be a string, found {}", other.type_str())))
            }
        };
        let spec = match kind {
            JobKind::Ingest => JobSpec::Ingest(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Enrich => JobSpec::Enrich(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Stats => JobSpec::Stats(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Windows => JobSpec::Windows(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Alerts => JobSpec::Alerts(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Backup => JobSpec::Backup(toml::from_str(text).map_err(|e| toml_error(file, e))?),
            JobKind::Adapter | JobKind::Score => {
                return Err(SpecError::key(file, "kind", "an ML job's spec is read by PipelineSpec::from_files"))
            }
        };
        spec.check(file)?;
        Ok(spec)
    }

    /// The job's kind.
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Ingest(_) => JobKind::Ingest,
            JobSpec::Enrich(_) => JobKind::Enrich,
            JobSpec::Stats(_) => JobKind::Stats,
            JobSpec::Windows(_) => JobKind::Windows,
            JobSpec::Alerts(_) => JobKind::Alerts,
            JobSpec::Backup(_) => JobKind::Backup,
        }
    }

    /// Checks the values of one spec on its own.
    fn check(&self, file: &str) -> Result<(), SpecError> {
        match self {
            JobSpec::Ingest(s) => {
                if s.epoch.ms() <= 0 {
                    return Err(SpecError::key(file, "epoch", "must be at least 1ms"));
                }
                for (c, r) in &s.ranges {
                    if let (Some(lo), Some(hi)) = (r.min, r.max) {
                        if lo > hi {
                            return Err(SpecError::key(
                                file,
                                format!("ranges.{c}"),
                                format!("min ({lo}) is greater than max ({hi})"),
                            ));
                        }
                    }
                    if r.min.is_some_and(f64::is_nan) || r.max.is_some_and(f64::is_nan) {
                        return Err(SpecError::key(file, format!("ranges.{c}"), "bounds must be numbers, not NaN"));
                    }
                }
            }
            JobSpec::Enrich(_) => {}
            JobSpec::Stats(s) => {
                if !(s.alpha > 0.0 && s.alpha <= 1.0) {
                    return Err(SpecError::key(file, "alpha", format!("must be in (0, 1], found {}", s.alpha)));
                }
                if s.top_k == 0 {
                    return Err(SpecError::key(file, "top_k", "must be at least 1"));
                }
                if s.trend_buckets == 0 || s.trend_buckets > 10_000 {
                    return Err(SpecError::key(
                        file,
                        "trend_buckets",
                        format!("must be between 1 and 10000, found {}", s.trend_buckets),
                    ));
                }
                if s.trend_span.ms() < s.trend_buckets as i64 {
                    return Err(SpecError::key(
                        file,
                        "trend_span",
                        format!("must be at least trend_buckets ({}) milliseconds", s.trend_buckets),
                    ));
                }
                if s.snapshot_every.ms() <= 0 {
                    return Err(SpecError::key(file, "snapshot_every", "must be at least 1ms"));
                }
            }
            JobSpec::Windows(s) => {
                if s.size.ms() <= 0 {
                    return Err(SpecError::key(file, "size", "must be at least 1ms"));
                }
                let slide = s.slide();
                if slide.ms() <= 0 || slide > s.size {
                    return Err(SpecError::key(
                        file,
                        "slide",
                        format!("must be between 1ms and size ({}), found {}", s.size, slide),
                    ));
                }
                if s.size.ms() % slide.ms() != 0 {
                    return Err(SpecError::key(
                        file,
                        "slide",
                        format!("size ({}) must be a multiple of slide ({})", s.size, slide),
                    ));
                }
            }
            JobSpec::Backup(s) => {
                if s.max_rows_per_file == 0 {
                    return Err(SpecError::key(file, "max_rows_per_file", "must be at least 1"));
                }
                if s.row_group_rows == 0 {
                    return Err(SpecError::key(file, "row_group_rows", "must be at least 1"));
                }
                if !(1..=22).contains(&s.compression_level) {
                    return Err(SpecError::key(
                        file,
                        "compression_level",
                        format!("must be between 1 and 22, found {}", s.compression_level),
                    ));
                }
            }
            JobSpec::Alerts(s) => {
                let mut seen = std::collections::BTreeSet::new();
                for (i, r) in s.rules.iter().enumerate() {
                    if r.rule_id.is_empty() {
                        return Err(SpecError::key(file, format!("rules[{i}].rule_id"), "must not be empty"));
                    }
                    if r.channel.is_empty() {
                        return Err(SpecError::key(file, format!("rules[{i}].channel"), "must not be empty"));
                    }
                    if r.device_id.is_empty() {
                        return Err(SpecError::key(
                            file,
                            format!("rules[{i}].device_id"),
                            "must be a device id or \"*\"",
                        ));
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
            }
        }
        Ok(())
    }
}

fn ml_builtin<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let text = BUILTIN_JOBS.iter().find(|(n, _)| *n == file).expect("a built-in ML spec").1;
    toml::from_str(text).expect("the built-in ML specs are valid")
}

fn check_adapter(s: &AdapterSpec, file: &str) -> Result<(), SpecError> {
    if s.k == 0 {
        return Err(SpecError::key(file, "k", "must be at least 1"));
    }
    if s.span.ms() < 3_600_000 {
        return Err(SpecError::key(file, "span", format!("must be at least 1h, found {}", s.span)));
    }
    if !(s.outdoor_ppm.is_finite() && s.outdoor_ppm > 0.0) {
        return Err(SpecError::key(file, "outdoor_ppm", format!("must be a positive number, found {}", s.outdoor_ppm)));
    }
    if !(s.min_correction.is_finite() && s.min_correction >= 0.0) {
        return Err(SpecError::key(file, "min_correction", "must be a number ≥ 0"));
    }
    if s.channel.is_empty() {
        return Err(SpecError::key(file, "channel", "must not be empty"));
    }
    Ok(())
}

/// The specs of the whole embedded pipeline, one per built-in job.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    /// The ingest job.
    pub ingest: IngestSpec,
    /// The enrich job.
    pub enrich: EnrichSpec,
    /// The statistics job.
    pub stats: StatsSpec,
    /// The windows job.
    pub windows: WindowsSpec,
    /// The alerts job.
    pub alerts: AlertsSpec,
    /// The backup job.
    pub backup: BackupSpec,
    /// The calibration adapter (ML).
    pub adapter: AdapterSpec,
    /// The scoring job (ML).
    pub score: ScoreSpec,
}

/// The shipped `jobs/*.toml` files, compiled in: (file name, text).
pub const BUILTIN_JOBS: [(&str, &str); 8] = [
    ("ingest.toml", include_str!("../../../jobs/ingest.toml")),
    ("enrich.toml", include_str!("../../../jobs/enrich.toml")),
    ("stats.toml", include_str!("../../../jobs/stats.toml")),
    ("windows.toml", include_str!("../../../jobs/windows.toml")),
    ("alerts.toml", include_str!("../../../jobs/alerts.toml")),
    ("backup.toml", include_str!("../../../jobs/backup.toml")),
    ("adapter.toml", include_str!("../../../jobs/adapter.toml")),
    ("score.toml", include_str!("../../../jobs/score.toml")),
];

impl PipelineSpec {
    /// The built-in specs (the shipped `jobs/` directory).
    pub fn builtin() -> PipelineSpec {
        let files: Vec<(String, String)> =
            BUILTIN_JOBS.iter().map(|(n, t)| (format!("<builtin>/{n}"), t.to_string())).collect();
        PipelineSpec::from_files(&files, true).expect("the built-in job specs are valid")
    }

    /// Builds the pipeline from spec files `(name, text)`. With `defaults`,
    /// a kind no file gives comes from the built-in specs; without, every
    /// kind must be given. Two files of the same kind are an error.
    pub fn from_files(files: &[(String, String)], defaults: bool) -> Result<PipelineSpec, SpecError> {
        let mut by_kind: BTreeMap<JobKind, (String, JobSpec)> = BTreeMap::new();
        let mut adapter: Option<(String, AdapterSpec)> = None;
        let mut score: Option<(String, ScoreSpec)> = None;
        for (name, text) in files {
            match toml::from_str::<KindOnly>(text).ok().and_then(|k| k.kind) {
                Some(toml::Value::String(k)) if k == "adapter" => {
                    if let Some((other, _)) = &adapter {
                        return Err(SpecError::key(
                            name,
                            "kind",
                            format!("a second adapter job: {other} already defines one"),
                        ));
                    }
                    let s: AdapterSpec = toml::from_str(text).map_err(|e| toml_error(name, e))?;
                    check_adapter(&s, name)?;
                    adapter = Some((name.clone(), s));
                    continue;
                }
                Some(toml::Value::String(k)) if k == "score" => {
                    if let Some((other, _)) = &score {
                        return Err(SpecError::key(
                            name,
                            "kind",
                            format!("a second score job: {other} already defines one"),
                        ));
                    }
                    let s: ScoreSpec = toml::from_str(text).map_err(|e| toml_error(name, e))?;
                    if s.poll.ms() <= 0 {
                        return Err(SpecError::key(name, "poll", "must be at least 1ms"));
                    }
                    score = Some((name.clone(), s));
                    continue;
                }
                _ => {}
            }
            let spec = JobSpec::from_toml(text, name)?;
            if let Some((other, _)) = by_kind.get(&spec.kind()) {
                return Err(SpecError::key(
                    name,
                    "kind",
                    format!("a second {} job: {other} already defines one", spec.kind().name()),
                ));
            }
            by_kind.insert(spec.kind(), (name.clone(), spec));
        }
        let builtin = if defaults && by_kind.len() < JobKind::ALL.len() { Some(PipelineSpec::builtin()) } else { None };
        let missing = |k: JobKind| SpecError {
            file: files.first().map(|f| f.0.clone()).unwrap_or_else(|| "<jobs>".into()),
            key: None,
            message: format!("no spec of kind {:?} was given", k.name()),
        };
        macro_rules! take {
            ($kind:ident, $field:ident) => {
                match by_kind.remove(&JobKind::$kind) {
                    Some((_, JobSpec::$kind(s))) => s,
                    _ => match &builtin {
                        Some(b) => b.$field.clone(),
                        None => return Err(missing(JobKind::$kind)),
                    },
                }
            };
        }
        let names: BTreeMap<JobKind, String> = by_kind.iter().map(|(k, (n, _))| (*k, n.clone())).collect();
        let spec = PipelineSpec {
            ingest: take!(Ingest, ingest),
            enrich: take!(Enrich, enrich),
            stats: take!(Stats, stats),
            windows: take!(Windows, windows),
            alerts: take!(Alerts, alerts),
            backup: take!(Backup, backup),
            // The ML jobs are optional even without defaults.
            adapter: match adapter {
                Some((_, s)) => s,
                None => ml_builtin::<AdapterSpec>("adapter.toml"),
            },
            score: match score {
                Some((_, s)) => s,
                None => ml_builtin::<ScoreSpec>("score.toml"),
            },
        };
        spec.check(&names)?;
        Ok(spec)
    }

    /// Cross-job checks: the epoch must divide every period that closes on the frontier.
    fn check(&self, names: &BTreeMap<JobKind, String>) -> Result<(), SpecError> {
        let name = |k: JobKind| names.get(&k).cloned().unwrap_or_else(|| format!("<builtin>/{}.toml", k.name()));
        let epoch = self.ingest.epoch.ms();
        for (kind, key, period) in [
            (JobKind::Windows, "size", self.windows.size),
            (JobKind::Windows, "slide", self.windows.slide()),
            (JobKind::Stats, "snapshot_every", self.stats.snapshot_every),
        ] {
            if period.ms() % epoch != 0 {
                return Err(SpecError::key(
                    &name(kind),
                    key,
                    format!(
                        "{period} is not a multiple of the ingest epoch ({}) set in {}",
                        self.ingest.epoch,
                        name(JobKind::Ingest)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_specs_parse_and_have_the_documented_defaults() {
        let p = PipelineSpec::builtin();
        assert_eq!(p.ingest.lateness, Millis(600_000));
        assert_eq!(p.windows.size, Millis::HOUR);
        assert_eq!(p.stats.alpha, 0.1);
        assert_eq!(p.alerts.rules.len(), 2);
        assert_eq!(p.ingest.effective_ranges()["temp"].min, Some(-40.0));
        assert!(!p.adapter.enabled);
        assert_eq!((p.adapter.k, p.adapter.outdoor_ppm), (3, 420.0));
        assert_eq!(p.score.model, None);
    }

    #[test]
    fn adapter_spec_is_checked() {
        let files = vec![("a.toml".to_string(), "kind = \"adapter\"\nenabled = true\nk = 0\n".to_string())];
        let e = PipelineSpec::from_files(&files, true).unwrap_err();
        assert_eq!(e.to_string(), "a.toml: key `k`: must be at least 1");
        let files = vec![("a.toml".to_string(), "kind = \"adapter\"\nenabled = true\nspan = \"12h\"\n".to_string())];
        let p = PipelineSpec::from_files(&files, true).unwrap();
        assert!(p.adapter.enabled);
        assert_eq!(p.adapter.span, Millis(12 * 3_600_000));
    }

    #[test]
    fn minimal_spec_takes_defaults() {
        let s = JobSpec::from_toml("kind = \"stats\"\n", "s.toml").unwrap();
        let JobSpec::Stats(s) = s else { panic!() };
        assert_eq!(s.top_k, 5);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = JobSpec::from_toml("kind = \"stats\"\nalpha = 2.0\n", "jobs/s.toml").unwrap_err();
        assert_eq!(e.to_string(), "jobs/s.toml: key `alpha`: must be in (0, 1], found 2");
        let e = JobSpec::from_toml("kind = \"stats\"\nalfa = 0.2\n", "jobs/s.toml").unwrap_err();
        assert!(e.to_string().starts_with("jobs/s.toml: "), "{e}");
        assert!(e.to_string().contains("unknown field `alfa`"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = JobSpec::from_toml("kind = \"nope\"\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kind"));
        let e = JobSpec::from_toml("kind = \"windows\"\nsize = \"1h\"\nslide = \"7m\"\n", "w.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("slide"));
        let e = JobSpec::from_toml(
            "kind = \"alerts\"\n[[rules]]\nrule_id = \"r\"\nchannel = \"pm25\"\nrise_above = 10\nfall_below = 20\n",
            "a.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rules[0].fall_below"));
        let e = JobSpec::from_toml("kind = \"windows\"\nsize = \"1x\"\n", "w.toml").unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn backup_compression_defaults_to_snappy_and_names_the_choices() {
        let JobSpec::Backup(b) = JobSpec::from_toml("kind = \"backup\"\n", "b.toml").unwrap() else { panic!() };
        assert_eq!((b.compression, b.compression_level), (Compression::Snappy, 1));
        let JobSpec::Backup(b) =
            JobSpec::from_toml("kind = \"backup\"\ncompression = \"zstd\"\ncompression_level = 9\n", "b.toml").unwrap()
        else {
            panic!()
        };
        assert_eq!((b.compression, b.compression_level), (Compression::Zstd, 9));
        let e = JobSpec::from_toml("kind = \"backup\"\ncompression = \"gzip\"\n", "jobs/b.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("jobs/b.toml: ") && msg.contains("line 2"), "{msg}");
        assert!(msg.contains("unknown variant `gzip`, expected one of `zstd`, `lz4`, `snappy`, `none`"), "{msg}");
        // The shipped spec says what the default is.
        assert_eq!(PipelineSpec::builtin().backup.compression, Compression::Snappy);
    }

    #[test]
    fn epoch_must_divide_periods() {
        let files = vec![("i.toml".to_string(), "kind = \"ingest\"\nepoch = \"7m\"\n".to_string())];
        let e = PipelineSpec::from_files(&files, true).unwrap_err();
        assert!(e.to_string().contains("not a multiple of the ingest epoch"), "{e}");
    }
}
