//! # eddy
//!
//! Rust-native dataflow jobs for IoT sensor pipelines, built on timely and
//! differential dataflow. This facade re-exports the crates by role:
//!
//! * [`core`]: records, ids, validation rules, reference rows, job specs;
//! * [`state`]: per-key state machines (statistics, windows);
//! * [`operators`]: the dataflow operators of every job;
//! * [`connectors`]: datasets and outputs;
//! * [`runtime`]: worker configuration, `replay`, the commit ledger;
//! * [`gen`]: synthetic fleet datasets;
//! * [`parquet`]: the Parquet backup and raw archive;
//! * [`checkpoint`]: the checkpoint store (state files, manifests, verification);
//! * [`kafka`]: Kafka topics, producer, consumers and `eddy publish`.
//!
//! The `eddy` binary is [`cli::main`] over the built-in jobs. To write a job
//! of your own and a binary that runs it beside them, see `docs/jobs.md` and
//! `examples/custom_eddy.rs`.

pub use eddy_checkpoint as checkpoint;
pub use eddy_connectors as connectors;
pub use eddy_core as core;
pub use eddy_gen as gen;
#[cfg(feature = "kafka")]
pub use eddy_kafka as kafka;
pub use eddy_operators as operators;
pub use eddy_parquet as parquet;
pub use eddy_runtime as runtime;
pub use eddy_state as state;

pub mod cli;
pub mod testing;
