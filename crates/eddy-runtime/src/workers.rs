//! Worker configuration: timely's process arguments.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How many workers, in how many processes: timely's `-w`, `-n`, `-p`, `-h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workers {
    /// Worker threads per process (`-w`).
    pub threads: usize,
    /// Number of processes (`-n`).
    pub processes: usize,
    /// This process's index (`-p`).
    pub process: usize,
    /// A file with one `host:port` line per process (`-h`).
    pub hostfile: Option<PathBuf>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers { threads: 1, processes: 1, process: 0, hostfile: None }
    }
}

impl Workers {
    /// `n` threads in one process.
    pub fn threads(n: usize) -> Workers {
        Workers { threads: n, ..Workers::default() }
    }

    /// Checks the arguments and builds timely's configuration.
    pub fn to_timely(&self) -> Result<timely::Config> {
        if self.threads == 0 {
            return Err(Error::Workers("-w must be at least 1".into()));
        }
        if self.processes == 0 {
            return Err(Error::Workers("-n must be at least 1".into()));
        }
        if self.process >= self.processes {
            return Err(Error::Workers(format!("-p {} is out of range for -n {}", self.process, self.processes)));
        }
        if self.processes == 1 {
            return Ok(timely::Config::process(self.threads));
        }
        let addresses = match &self.hostfile {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| Error::Workers(format!("{}: {e}", path.display())))?;
                let addrs: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
                if addrs.len() < self.processes {
                    return Err(Error::Workers(format!(
                        "{}: has {} addresses, but -n {} needs one per process",
                        path.display(),
                        addrs.len(),
                        self.processes
                    )));
                }
                addrs.into_iter().take(self.processes).collect()
            }
            None => (0..self.processes).map(|i| format!("localhost:{}", 2101 + i)).collect(),
        };
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }

    /// Total workers over all processes.
    pub fn total(&self) -> usize {
        self.threads * self.processes
    }
}
