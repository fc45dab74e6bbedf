//! # eddy-connectors
//!
//! Where data enters and leaves eddy: dataset directories ([`dataset`],
//! [`lines`]) and JSON-lines outputs ([`jsonl`]). Parquet and Kafka
//! connectors join them here. Connectors know formats and files; the
//! dataflow operators that drive them live in `eddy-operators`.
#![deny(missing_docs)]

pub mod dataset;
pub mod error;
pub mod jsonl;
pub mod lines;

pub use error::{Error, Result};
