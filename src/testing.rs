//! A testing kit for jobs: in-memory inputs, runs at several worker counts,
//! typed outputs, and golden files.
//!
//! A [`Bench`] holds a small dataset (raw lines, readings, reference data and
//! changes at given times) and the job specs to run. [`Bench::run`] replays
//! it through the embedded pipeline, built-in jobs and yours, at one worker
//! count; [`Bench::run_everywhere`] runs it at 1, 2 and 4 workers and
//! asserts that every output holds the same records at each. The outputs
//! come back as lines or as typed records ([`Outputs::records`]), and
//! [`Outputs::assert_golden`] compares one with a file that
//! `EDDY_UPDATE_GOLDEN=1` rewrites.
//!
//! ```no_run
//! use eddy::runtime::component::Registry;
//! use eddy::testing::Bench;
//!
//! let bench = Bench::new(Registry::builtin())
//!     .device("dev-1", &[("site", "lab")])
//!     .reading("dev-1", 0, &[("pm25", 10.0)])
//!     .reading("dev-1", 60_000, &[("pm25", 50.0)])
//!     .reading("dev-1", 11 * 60_000, &[("pm25", 12.0)])
//!     .only(&["events"]);
//! let out = bench.run_everywhere();
//! assert_eq!(out.lines("events").len(), 2);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::runtime::component::Registry;
use crate::runtime::replay::{replay, ReplayOptions, Summary};
use crate::runtime::workers::Workers;

/// The worker counts [`Bench::run_everywhere`] runs at.
pub const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

/// The environment variable that makes [`Outputs::assert_golden`] rewrite
/// its file instead of comparing.
pub const UPDATE_GOLDEN: &str = "EDDY_UPDATE_GOLDEN";

/// A dataset in memory and the jobs to run over it.
#[derive(Clone)]
pub struct Bench {
    registry: Registry,
    specs: Vec<(String, String)>,
    lines: Vec<String>,
    devices: Vec<(String, Vec<(String, String)>)>,
    calibration: Vec<String>,
    updates: Vec<String>,
    outputs: Option<Vec<String>>,
}

impl Bench {
    /// An empty dataset, run with `registry`'s jobs at their defaults.
    pub fn new(registry: Registry) -> Bench {
        Bench {
            registry,
            specs: Vec::new(),
            lines: Vec::new(),
            devices: Vec::new(),
            calibration: Vec::new(),
            updates: Vec::new(),
            outputs: None,
        }
    }

    /// Adds a job spec (the text of a `*.toml`), in place of its kind's default.
    pub fn spec(mut self, toml: &str) -> Bench {
        let n = self.specs.len();
        self.specs.push((format!("<bench>/spec{n}.toml"), toml.to_string()));
        self
    }

    /// Writes only these outputs (see `eddy replay --outputs`): the jobs
    /// whose outputs are all left out do not run.
    pub fn only(mut self, outputs: &[&str]) -> Bench {
        self.outputs = Some(outputs.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Appends a raw input line, as a device would send it (any text).
    pub fn line(mut self, line: impl Into<String>) -> Bench {
        self.lines.push(line.into());
        self
    }

    /// Appends a reading of `device` at event time `ts` (epoch ms).
    pub fn reading(self, device: &str, ts: i64, values: &[(&str, f64)]) -> Bench {
        let mut m = serde_json::Map::new();
        m.insert("device_id".into(), json!(device));
        m.insert("ts".into(), json!(ts));
        for (c, v) in values {
            m.insert((*c).to_string(), json!(v));
        }
        self.line(Value::Object(m).to_string())
    }

    /// Adds a device to `devices.csv` with its context columns.
    pub fn device(mut self, device: &str, context: &[(&str, &str)]) -> Bench {
        let cols = context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.devices.push((device.to_string(), cols));
        self
    }

    /// Adds a calibration version to `calibration.csv`.
    pub fn calibration(mut self, device: &str, channel: &str, valid_from: i64, gain: f64, offset: f64) -> Bench {
        self.calibration.push(format!("{device},{channel},{gain},{offset},{valid_from}"));
        self
    }

    /// Adds a reference change at event time `ts`: a line of
    /// `updates.jsonl` (`table` is `devices`, `calibration` or `rules`, `op`
    /// `upsert` or `delete`; see docs/formats.md).
    pub fn change(mut self, ts: i64, table: &str, op: &str, row: Value) -> Bench {
        self.updates.push(json!({"ts": ts, "table": table, "op": op, "row": row}).to_string());
        self
    }

    /// Writes the dataset files into `dir`.
    pub fn write_dataset(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut readings = self.lines.join("\n");
        readings.push('\n');
        std::fs::write(dir.join("readings.jsonl"), readings)?;
        let mut columns: Vec<String> = Vec::new();
        for (_, cols) in &self.devices {
            for (k, _) in cols {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let mut devices = String::from("device_id");
        for c in &columns {
            devices.push(',');
            devices.push_str(c);
        }
        devices.push('\n');
        for (d, cols) in &self.devices {
            devices.push_str(d);
            for c in &columns {
                devices.push(',');
                devices.push_str(cols.iter().find(|(k, _)| k == c).map_or("", |(_, v)| v));
            }
            devices.push('\n');
        }
        std::fs::write(dir.join("devices.csv"), devices)?;
        let mut cal = String::from("device_id,channel,gain,offset,valid_from\n");
        for l in &self.calibration {
            cal.push_str(l);
            cal.push('\n');
        }
        std::fs::write(dir.join("calibration.csv"), cal)?;
        if !self.updates.is_empty() {
            std::fs::write(dir.join("updates.jsonl"), self.updates.join("\n") + "\n")?;
        }
        Ok(())
    }

    /// Replays the dataset at `workers` workers. Panics with the error if
    /// the specs or the run fail.
    pub fn run(&self, workers: usize) -> Outputs {
        self.try_run(workers).unwrap_or_else(|e| panic!("the bench run at -w {workers} failed: {e}"))
    }

    /// [`run`](Self::run), returning the error.
    pub fn try_run(&self, workers: usize) -> Result<Outputs, crate::runtime::Error> {
        let root = tempfile::tempdir().map_err(|e| eddy_connectors::Error::io(Path::new("<tempdir>"), e))?;
        let data = root.path().join("data");
        self.write_dataset(&data).map_err(|e| eddy_connectors::Error::io(&data, e))?;
        let jobs = self.registry.load(&self.specs, true)?;
        let out = root.path().join("out");
        let opts = ReplayOptions {
            workers: Workers::threads(workers),
            outputs: self.outputs.clone(),
            ..ReplayOptions::with_jobs(&data, &out, jobs)
        };
        let summary = replay(&opts, |_| {})?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&out).map_err(|e| eddy_connectors::Error::io(&out, e))? {
            let path = entry.map_err(|e| eddy_connectors::Error::io(&out, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl")) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| eddy_connectors::Error::io(&path, e))?;
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            files.insert(name.to_string(), lines);
        }
        Ok(Outputs { files, summary, _root: root })
    }

    /// Runs at 1, 2 and 4 workers, asserts that every output holds the same
    /// records at each, and returns the outputs of the run at 1 worker.
    pub fn run_everywhere(&self) -> Outputs {
        let first = self.run(WORKER_COUNTS[0]);
        for w in &WORKER_COUNTS[1..] {
            let other = self.run(*w);
            first.assert_same(&other, &format!("-w {} and -w {w}", WORKER_COUNTS[0]));
        }
        first
    }
}

/// The outputs of a run: every `*.jsonl`, its lines sorted.
pub struct Outputs {
    files: BTreeMap<String, Vec<String>>,
    /// The run's summary.
    pub summary: Summary,
    _root: tempfile::TempDir,
}

impl Outputs {
    /// The names of the outputs written.
    pub fn names(&self) -> Vec<&str> {
        self.files.keys().map(String::as_str).collect()
    }

    /// The lines of output `name`, sorted. Panics if there is no such output.
    pub fn lines(&self, name: &str) -> &[String] {
        self.files.get(name).unwrap_or_else(|| panic!("no output {name:?}; the outputs are {:?}", self.names()))
    }

    /// The records of output `name`, decoded (in line order). Panics, naming
    /// the line, on a record that does not decode.
    pub fn records<T: DeserializeOwned>(&self, name: &str) -> Vec<T> {
        self.lines(name)
            .iter()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}.jsonl, sorted line {}: {e}: {l}", i + 1))
            })
            .collect()
    }

    /// Asserts that both runs wrote the same outputs with the same records.
    pub fn assert_same(&self, other: &Outputs, what: &str) {
        assert_eq!(self.names(), other.names(), "{what}: different outputs");
        for (name, lines) in &self.files {
            let theirs = &other.files[name];
            if lines != theirs {
                let first = lines.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(lines.len().min(theirs.len()));
                panic!(
                    "{what}: {name}.jsonl differs ({} and {} records); first difference at sorted line {}:\n  {}\n  {}",
                    lines.len(),
                    theirs.len(),
                    first + 1,
                    lines.get(first).map_or("<none>", String::as_str),
                    theirs.get(first).map_or("<none>", String::as_str)
                );
            }
        }
    }

    /// Compares output `name` (its sorted lines) with the golden file
    /// `path`; with `EDDY_UPDATE_GOLDEN=1`, writes the file instead.
    pub fn assert_golden(&self, name: &str, path: impl AsRef<Path>) {
        let path: PathBuf = path.as_ref().to_path_buf();
        let mut text = self.lines(name).join("\n");
        text.push('\n');
        if std::env::var(UPDATE_GOLDEN).is_ok_and(|v| v == "1") {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            }
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            return;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e} (run with {UPDATE_GOLDEN}=1 to write it)", path.display()));
        if golden != text {
            let g: Vec<&str> = golden.lines().collect();
            let t: Vec<&str> = text.lines().collect();
            let first = g.iter().zip(&t).position(|(a, b)| a != b).unwrap_or(g.len().min(t.len()));
            panic!(
                "{name}.jsonl differs from {} ({} and {} lines) at line {}:\n  golden: {}\n  got:    {}\n(run with {UPDATE_GOLDEN}=1 to accept)",
                path.display(),
                g.len(),
                t.len(),
                first + 1,
                g.get(first).unwrap_or(&"<none>"),
                t.get(first).unwrap_or(&"<none>")
            );
        }
    }
}
