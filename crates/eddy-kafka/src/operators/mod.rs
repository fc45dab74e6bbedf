//! The timely operators of a Kafka job, by role:
//!
//! * sources: the raw source ([`raw_source`], the ingest job's validation
//!   over the partitions of `P.raw`), the typed source ([`typed_source`],
//!   eddy's own topics, each record with the time it was stamped with), and
//!   what they share with the worker loop that commits their offsets
//!   ([`Input`], [`Unsettled`], [`Stop`]);
//! * the sink: a topic as a `BatchSink` ([`KafkaSink`]), and [`suppress`]
//!   for sinks that cannot drop an earlier run's records themselves;
//! * side inputs read live by worker 0: reference changes
//!   ([`live_reference`], held back by an [`AdapterGate`] in the calibration
//!   adapter's loop) and models ([`model_source`]).
//!
//! `eddy-runtime` composes them into jobs (`eddy_runtime::kafka`).

mod input;
mod models;
mod raw;
mod reference;
mod sink;
mod typed;

pub use input::{Input, Record, Stop, Unsettled, RESUME_REWIND};
pub use models::model_source;
pub use raw::{raw_source, RawConfig, RawStreams};
pub use reference::{live_reference, AdapterGate};
pub use sink::{suppress, Encoder, KafkaSink};
pub use typed::{typed_source, Stamped};

/// Messages read per activation.
const BATCH: usize = 4096;
