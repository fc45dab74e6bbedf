//! # eddy-ml
//!
//! Models in the stream and, with the `train` feature (on by default),
//! offline training on the Parquet backup. The two parts share the model
//! files and the features, nothing else:
//!
//! * **streaming** (always): [`adapt`] (the calibration adapter),
//!   [`score`] (the scoring job), [`model`] (versioned model files) and
//!   [`features`] (the forecast features, the same in training and scoring);
//! * **training** (`train`, with smartcore): `train` runs a task over a
//!   backup (`eddy train`): `forecast` (will an alert rule's event start
//!   within H minutes?) or `calibrate` (per-device gain and offset against a
//!   reference channel), and returns a versioned [`model::ModelFile`] and
//!   its evaluation.
//!
//! The walkthrough is `docs/ml.md`.

pub mod adapt;
#[cfg(feature = "train")]
pub mod calibrate;
#[cfg(feature = "train")]
pub mod data;
mod error;
pub mod features;
#[cfg(feature = "train")]
pub mod forecast;
#[cfg(feature = "train")]
pub mod metrics;
pub mod model;
pub mod score;

pub use error::{Error, Result};

#[cfg(feature = "train")]
pub use training::*;

#[cfg(feature = "train")]
mod training;
