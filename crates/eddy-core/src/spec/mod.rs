//! Declarative job specs: the `jobs/*.toml` files.
//!
//! Each file describes one job and names its `kind`. Every key has a default,
//! so a file that says only `kind = "stats"` is a complete spec. Unknown keys
//! are errors, and every error names the file, the key and the reason.
//! The shipped files in `jobs/` are compiled in as the built-in defaults
//! ([`PipelineSpec::builtin`]), so the binary and the repository agree.

mod alerts;
mod backup;
mod enrich;
mod ingest;
mod ml;
mod stats;
mod windows;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Millis;

pub use alerts::{check_rule, AlertsSpec, RuleSpec};
pub use backup::{BackupSpec, Compression};
pub use enrich::EnrichSpec;
pub use ingest::{default_ranges, IngestSpec, RangeSpec};
pub use ml::{AdapterSpec, ScoreSpec, ML_KINDS};
pub use stats::StatsSpec;
pub use windows::WindowsSpec;

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

// Defaults shared by the specs of several kinds.
fn d_true() -> bool {
    true
}

fn d_hour() -> Millis {
    Millis::HOUR
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
            JobSpec::Ingest(s) => s.check(file),
            JobSpec::Enrich(s) => s.check(file),
            JobSpec::Stats(s) => s.check(file),
            JobSpec::Windows(s) => s.check(file),
            JobSpec::Alerts(s) => s.check(file),
            JobSpec::Backup(s) => s.check(file),
        }
    }
}

fn ml_builtin<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let text = BUILTIN_JOBS.iter().find(|(n, _)| *n == file).expect("a built-in ML spec").1;
    toml::from_str(text).expect("the built-in ML specs are valid")
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
    ("ingest.toml", include_str!("../../../../jobs/ingest.toml")),
    ("enrich.toml", include_str!("../../../../jobs/enrich.toml")),
    ("stats.toml", include_str!("../../../../jobs/stats.toml")),
    ("windows.toml", include_str!("../../../../jobs/windows.toml")),
    ("alerts.toml", include_str!("../../../../jobs/alerts.toml")),
    ("backup.toml", include_str!("../../../../jobs/backup.toml")),
    ("adapter.toml", include_str!("../../../../jobs/adapter.toml")),
    ("score.toml", include_str!("../../../../jobs/score.toml")),
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
                    s.check(name)?;
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
                    s.check(name)?;
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
        assert_eq!(p.ingest.max_line, crate::Bytes(1_048_576));
        assert_eq!(p.windows.size, Millis::HOUR);
        assert_eq!(p.stats.alpha, 0.1);
        assert_eq!(p.alerts.rules.len(), 2);
        assert_eq!(p.ingest.effective_ranges()["temp"].min, Some(-40.0));
        assert!(!p.adapter.enabled);
        assert_eq!((p.adapter.k, p.adapter.outdoor_ppm), (3, 420.0));
        assert_eq!(p.score.model, None);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = JobSpec::from_toml("kind = \"stats\"\nalfa = 0.2\n", "jobs/s.toml").unwrap_err();
        assert!(e.to_string().starts_with("jobs/s.toml: "), "{e}");
        assert!(e.to_string().contains("unknown field `alfa`"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = JobSpec::from_toml("kind = \"nope\"\n", "x.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kind"));
        let e = JobSpec::from_toml("kind = \"windows\"\nsize = \"1x\"\n", "w.toml").unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn max_line_must_be_positive() {
        let e = JobSpec::from_toml("kind = \"ingest\"\nmax_line = 0\n", "ml.toml").unwrap_err();
        assert_eq!(e.to_string(), "ml.toml: key `max_line`: must be at least 1 byte");
        let e = JobSpec::from_toml("kind = \"ingest\"\nmax_line = \"0KiB\"\n", "ml.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("max_line"));
        let e = JobSpec::from_toml("kind = \"ingest\"\nmax_line = \"1MB\"\n", "ml.toml").unwrap_err();
        assert!(e.to_string().starts_with("ml.toml: ") && e.to_string().contains("unknown unit"), "{e}");
        let JobSpec::Ingest(s) = JobSpec::from_toml("kind = \"ingest\"\nmax_line = \"4KiB\"\n", "ml.toml").unwrap()
        else {
            panic!("an ingest spec")
        };
        assert_eq!(s.max_line.bytes(), 4096);
    }

    #[test]
    fn epoch_must_divide_periods() {
        let files = vec![("i.toml".to_string(), "kind = \"ingest\"\nepoch = \"7m\"\n".to_string())];
        let e = PipelineSpec::from_files(&files, true).unwrap_err();
        assert!(e.to_string().contains("not a multiple of the ingest epoch"), "{e}");
    }
}
