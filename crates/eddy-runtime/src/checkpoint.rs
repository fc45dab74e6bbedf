//! The commit ledger: which input position every output has made durable.
//!
//! The ingest source records, for each epoch `t` it opens, the input position
//! `p` of the first line stamped `t` or later: every line before `p` carries
//! a time before `t`. Every sink commits when its input frontier advances, and
//! holds its output at the committed frontier; a probe over all sinks' outputs
//! (on every worker) therefore passes `t` exactly when every record of every
//! epoch before `t` is durable in every output. Then the input before `p` is
//! committed. This is the position a restarted job must resume from (records
//! of the uncommitted epoch may then be produced twice, never lost); the
//! Kafka source commits consumer offsets from it. `eddy replay` itself
//! restarts from its newest checkpoint of operator state, if it has one (`crate::snapshots`).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use eddy_core::reading::Position;
use eddy_operators::ingest::SourceProgress;
use eddy_operators::metrics::Metrics;

use crate::error::Result;
use crate::runner::{Commits, Next};

/// `_checkpoint.json`: the committed input position of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// Format version, [`Checkpoint::VERSION`].
    pub version: u32,
    /// The input (file path or topic).
    pub input: String,
    /// Every input record before this position is committed in every output.
    pub committed: Position,
    /// The epoch (dataflow time) the committed position begins.
    pub epoch: u64,
    /// True once the whole input is committed.
    pub complete: bool,
}

impl Checkpoint {
    /// The current format version.
    pub const VERSION: u32 = 1;
}

/// Advances and records the committed position: the embedded runs'
/// commit protocol.
pub struct Ledger {
    path: PathBuf,
    current: Checkpoint,
    dirty: bool,
    /// The ingest source's epochs and where each begins.
    progress: Rc<SourceProgress>,
    /// The lines read, for the end position.
    metrics: Arc<Metrics>,
    last_write: Instant,
}

impl Ledger {
    /// How often, at most, the checkpoint is written while running.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// A ledger writing to `path`, committing the epochs `progress` records.
    pub fn new(path: PathBuf, input: String, progress: Rc<SourceProgress>, metrics: Arc<Metrics>) -> Ledger {
        Ledger {
            path,
            current: Checkpoint {
                version: Checkpoint::VERSION,
                input,
                committed: Position::line(1),
                epoch: 0,
                complete: false,
            },
            dirty: true,
            progress,
            metrics,
            last_write: Instant::now(),
        }
    }

    /// Moves the committed position past every epoch below `frontier`.
    pub fn advance(&mut self, frontier: u64) {
        let mut epochs = self.progress.epochs.borrow_mut();
        while let Some(&(t, p)) = epochs.front() {
            if frontier < t {
                break;
            }
            epochs.pop_front();
            self.current.committed = p;
            self.current.epoch = t;
            self.dirty = true;
        }
    }

    /// Marks the whole input committed, up to `end`.
    pub fn finish_at(&mut self, end: Position) {
        self.current.committed = end;
        self.current.complete = true;
        self.dirty = true;
    }

    /// Writes the checkpoint (atomically: a temporary file, then a rename) if it changed.
    pub fn write(&mut self, sync: bool) {
        if !self.dirty {
            return;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.current).expect("checkpoint serialises");
        let result = (|| -> std::io::Result<()> {
            std::fs::write(&tmp, text)?;
            if sync {
                std::fs::File::open(&tmp)?.sync_all()?;
            }
            std::fs::rename(&tmp, &self.path)
        })();
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Could not write the checkpoint")
            }
        }
    }
}

impl Commits for Ledger {
    fn committed(&mut self, frontier: u64, _done: bool) -> Result<Next> {
        // A failed run commits nothing more: a failed sink no longer holds
        // its output back, so the frontier no longer says what is durable.
        if self.metrics.failure().is_some() {
            return Ok(Next::Run);
        }
        self.advance(frontier);
        if self.last_write.elapsed() > Ledger::EVERY {
            self.write(false);
            self.last_write = Instant::now();
        }
        Ok(Next::Run)
    }

    fn finish(&mut self) -> Result<()> {
        if self.metrics.failure().is_none() {
            self.finish_at(Position::line(Metrics::get(&self.metrics.lines) + 1));
        }
        self.write(true);
        Ok(())
    }
}
