//! The metadata keys of eddy's Parquet files: written by the backup and the
//! raw archive, relied on by the reader to map columns back to channels and
//! context keys.

/// Field metadata key naming the channel of a calibrated-value column.
pub(crate) const META_CHANNEL: &str = "eddy.channel";
/// Field metadata key naming the channel of a `raw_` column.
pub(crate) const META_RAW: &str = "eddy.raw_channel";
/// Field metadata key naming the context key of a context column.
pub(crate) const META_CONTEXT: &str = "eddy.context";
/// Schema metadata key with the file format (`backup/1`, `raw/1`).
pub(crate) const META_FORMAT: &str = "eddy.format";
