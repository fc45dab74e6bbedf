//! eddy's Parquet outputs: the near-real-time **backup** of enriched
//! readings, the **raw archive** of every input record, and **replay** from
//! a backup.
//!
//! # Where it sits
//!
//! The backup job writes every [`Enriched`](eddy_core::reading::Enriched)
//! reading (late ones and junk-carrying ones included) through a
//! [`BackupWriter`]; the raw archive keeps each input record exactly as it
//! was received (malformed lines included) through a [`RawArchiveWriter`].
//! Both implement [`BatchSink`](eddy_core::sink::BatchSink): the runtime
//! drives one instance per worker from a timely sink operator, calling
//! `write` with each batch and `commit` whenever the operator's input
//! frontier advances. All the workers of a job write into the same
//! directory; every file name carries the writer id, so they never collide.
//!
//! # Layout on disk
//!
//! ```text
//! OUT/backup/
//!   _manifest/00000000000000000042-w0-<run>-000003.json   one file per commit
//!   date=2026-01-01/part-w0-000007-<run>.parquet          committed data
//!   date=2026-01-01/.part-w0-000008-<run>.parquet.tmp     being written
//! OUT/raw/
//!   _manifest/…
//!   date=2026-01-01/part-w0-000001-<run>.parquet
//! ```
//!
//! Files are partitioned Hive-style by the UTC date of the event time
//! (backup) or of the arrival time (raw archive). `<run>` is a random id
//! drawn when the writer is created, so a restarted job never reuses a name.
//!
//! # Exactly once: the manifest
//!
//! A data file is written under a hidden temporary name, finished, fsynced,
//! renamed to its final name (and the directory fsynced), and only *then*
//! listed in a manifest entry, which is itself written to a temporary name,
//! fsynced, renamed and its directory fsynced. **A file exists for readers
//! only once a manifest entry lists it**: readers (eddy's [`read_backup`],
//! and the DuckDB and pyarrow recipes below) trust the manifest, never the
//! directory listing. A crash leaves at worst `.tmp` files, or renamed files
//! no entry lists; [`cleanup_uncommitted`] deletes both and is meant to run
//! on restart, before the writers start.
//!
//! Each manifest entry is a *consistent cut* of its writer: when a commit
//! publishes anything it closes every open file of that writer, so the rows a
//! writer has committed are always a prefix of the rows it was given.
//! [`Manifest::max_offset`] gives, per writer and input partition, the
//! largest committed `src_offset`: a restarted replay that delivers each
//! partition to a writer in offset order can skip what is already backed up.
//!
//! ## Manifest format, version 1
//!
//! `DIR/_manifest/{epoch:020}-{writer}-{run}-{seq:06}.json`, where `epoch` is
//! the commit's `upto` (`u64::MAX` for `None`, the end of input) and `seq`
//! counts the writer's commits in this run; names therefore sort by epoch.
//! Each file is one JSON object ([`ManifestEntry`]):
//!
//! ```json
//! {"version":1,"kind":"backup","writer":"w0","run":"5f0c…","seq":3,"epoch":42,
//!  "files":[{"path":"date=2026-01-01/part-w0-000007-5f0c….parquet","rows":1000,
//!            "bytes":52311,"min_ts":1767225600000,"max_ts":1767229199000,
//!            "min_offset":1,"max_offset":1000,
//!            "partitions":[{"partition":0,"rows":1000,"min_offset":1,"max_offset":1000}]}]}
//! ```
//!
//! `epoch` is `null` for the final commit at the end of input. `min_ts` and
//! `max_ts` are event times (backup) or arrival times (raw archive), epoch
//! milliseconds UTC. A commit that has nothing to publish writes no entry.
//!
//! # Backup schema
//!
//! `device_id` (Utf8), `ts` (Timestamp(ms, "UTC")), one Float64 column per
//! channel with the calibrated value (null when the channel is absent, null
//! or junk), in the order `pm25, co2, voc, temp, hum` and then the other
//! channels sorted by name; then `raw_<channel>` (Float64, the value as
//! received) in the same order; then the device context columns (Utf8,
//! sorted by name; null for an unknown device or a missing key); then `late`
//! (Boolean), `junk` (`List<Utf8>`), `src_partition` (UInt32) and `src_offset`
//! (UInt64). Each value, raw and context field also carries the metadata key
//! `eddy.channel`, `eddy.raw_channel` or `eddy.context` naming its channel or
//! context key; eddy's reader relies on it (a name that would collide with
//! another column gets a prefix or suffix, e.g. `ctx_late`). Files are Snappy
//! compressed by default ([`BackupConfig::codec`]: zstd, LZ4 or none), with row groups of up to [`BackupConfig::row_group_rows`] rows
//! and dictionary encoding for `device_id` and the context columns.
//!
//! A file's schema is fixed when it is opened. When a reading brings a
//! channel or context key that the open file of its date lacks, that file is
//! closed (rolled) and a new one opened with the wider schema, so different
//! files may have different columns. Readers see the union by name:
//!
//! ```sql
//! -- DuckDB: committed files only, schemas merged by column name
//! SET VARIABLE files = (
//!   SELECT list('OUT/backup/' || f.path)
//!   FROM (SELECT unnest(files) AS f FROM read_json('OUT/backup/_manifest/*.json')));
//! SELECT device_id, ts, pm25, co2 FROM read_parquet(getvariable('files'), union_by_name = true);
//! ```
//!
//! ```python
//! # pyarrow: committed files only, unified schema
//! import glob, json, pyarrow.dataset as ds, pyarrow.parquet as pq, pyarrow as pa
//! files = [f"OUT/backup/{f['path']}"
//!          for m in sorted(glob.glob("OUT/backup/_manifest/*.json"))
//!          for f in json.load(open(m))["files"]]
//! schema = pa.unify_schemas([pq.read_schema(f) for f in files])
//! table = ds.dataset(files, schema=schema, format="parquet").to_table()
//! ```
//!
//! # Durability
//!
//! Between commits rows are buffered in Arrow builders and the Parquet
//! writer's in-progress row group. A commit publishes only when something is
//! due: a file was rolled, the oldest open file is older than
//! [`BackupConfig::max_file_age`] (5 s by default: at a steady rate a reading
//! is durable within about that long), or the input ended (`upto == None`).
//! A commit with nothing due is a cheap no-op; a commit with nothing written
//! writes no manifest entry. `max_file_age = Duration::ZERO` makes every
//! commit durable, as [`BatchSink::commit`](eddy_core::sink::BatchSink::commit)
//! asks for in general.
//!
//! In a dataflow the writers run on threads of their own ([`Background`]):
//! the worker hands rows over and asks for commits, the thread encodes,
//! compresses, fsyncs and publishes, and the worker learns what is durable
//! from the thread's claims, which never run ahead of the manifest.
//!
//! A writer fails closed: it keeps its first error, returns it (as a
//! [`SinkError`](eddy_core::sink::SinkError) naming the directory and the
//! writer, through `BatchSink`; as [`Error`] through `try_write` and
//! `try_commit`), exposes it through `error()`, and from then on writes and
//! publishes nothing more, returning the same error from every call.

#![deny(missing_docs)]

// Each module imports only from modules below it in this list, never back up:
// `background` (drives the writers) over `backup` and `raw` (the two
// writers; `raw` also reads its archive back through `read`), over `part`
// (the part-file and commit machinery they share) and `read`, over
// `manifest`, `fsutil`, `config` (`BackupConfig`, `Codec`, `durable_after`)
// and `meta` (the Parquet metadata keys), over `error`.
mod background;
mod backup;
mod config;
mod error;
mod fsutil;
mod manifest;
mod meta;
mod part;
mod raw;
mod read;

pub use background::{Background, Writer};
pub use backup::BackupWriter;
pub use config::{durable_after, BackupConfig, Codec};
pub use error::{Error, Result};
pub use fsutil::date_of_ms;
pub use manifest::{
    cleanup_uncommitted, committed_files, FileEntry, Manifest, ManifestEntry, PartitionRange, MANIFEST_DIR,
    MANIFEST_VERSION,
};
pub use raw::{read_raw_archive, RawArchiveWriter, RawRecord};
pub use read::{read_backup, read_backup_file, sort_for_replay, to_jsonl_line, BackupRow};

#[cfg(test)]
mod tests;
