//! Counters shared by the workers of one process, read by the runtime for
//! the progress bar and the summary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Process-wide counters. Workers add; the runtime reads.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Input lines read.
    pub lines: AtomicU64,
    /// Input bytes read.
    pub bytes: AtomicU64,
    /// Lines that passed validation (late ones included).
    pub valid: AtomicU64,
    /// Valid readings classified late.
    pub late: AtomicU64,
    /// Lines sent to the dead-letter output.
    pub deadletter: AtomicU64,
    /// Non-late valid readings with at least one junk channel.
    pub junk: AtomicU64,
    /// Junk readings per device id (non-late).
    pub junk_by_device: Mutex<HashMap<String, u64>>,
    /// The first fatal error a worker met (an I/O error, say).
    pub error: Mutex<Option<String>>,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records the first fatal error.
    pub fn fail(&self, message: String) {
        let mut e = self.error.lock();
        if e.is_none() {
            *e = Some(message);
        }
    }
}
