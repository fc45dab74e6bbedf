//! # eddy-core
//!
//! The bottom of eddy's crate stack: the record and time model, identifiers,
//! validation rules, reference-data rows and job specs. No I/O and no
//! dataflow: everything here is a pure function or a plain data type, shared
//! by the operators (`eddy-operators`), the connectors (`eddy-connectors`),
//! the runtime (`eddy-runtime`) and the tests' reference models.
//!
//! ```
//! use eddy_core::validate::parse_line;
//!
//! let r = parse_line(br#"{"device_id":"dev-1","ts":1767225600000,"pm25":12.5}"#).unwrap();
//! assert_eq!(&*r.device.name(), "dev-1");
//! ```
#![deny(missing_docs)]

pub mod clock;
pub mod duration;
pub mod hysteresis;
pub mod ids;
pub mod keys;
pub mod reading;
pub mod records;
pub mod reference;
pub mod sink;
pub mod size;
pub mod spec;
pub mod validate;

pub use duration::Millis;
pub use ids::{Channel, DeviceId};
pub use reading::{Context, DeadLetter, Enriched, Position, Reading, Values};
pub use size::Bytes;
pub use spec::{JobKind, JobSpec, PipelineSpec, SpecError};
