//! # eddy-runtime
//!
//! Turns job specs into timely workers and runs them: the worker
//! configuration ([`workers`]), the typed job API ([`flow`]), the job runner
//! ([`job`]), the embedded pipeline of `eddy replay` ([`replay`]) and the
//! commit ledger ([`checkpoint`]) and checkpoints of operator state ([`snapshots`]).
//!
//! ```no_run
//! use eddy_runtime::replay::{replay, ReplayOptions};
//! use eddy_runtime::workers::Workers;
//!
//! let opts = ReplayOptions { workers: Workers::threads(2), ..ReplayOptions::new("datasets/sample", "out") };
//! let summary = replay(&opts, |_progress| {}).unwrap();
//! println!("{} valid readings", summary.valid);
//! ```
#![deny(missing_docs)]

pub mod backup;
pub mod builtin;
pub mod checkpoint;
pub mod component;
pub mod error;
pub mod flow;
pub mod job;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod replay;
pub mod runner;
pub mod snapshots;
pub mod workers;

pub use error::{Error, Result};
