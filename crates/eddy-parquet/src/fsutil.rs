//! File system helpers: atomic writes, directory fsync, dates, names.

use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The UTC day number (days since 1970-01-01) of epoch milliseconds `ms`.
pub(crate) fn day_of_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The proleptic Gregorian `(year, month, day)` of a day number (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// `YYYY-MM-DD` of a day number.
pub(crate) fn date_of_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC date `YYYY-MM-DD` of epoch milliseconds `ms`: the value of the
/// `date=` partition a row with that time is written to.
pub fn date_of_ms(ms: i64) -> String {
    date_of_day(day_of_ms(ms))
}

/// Fsyncs a directory, so that renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
    d.sync_all().map_err(|e| Error::io(dir, e))
}

/// Creates `dir` (and its parents) if missing, fsyncing the parent of each
/// directory it creates.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            ensure_dir(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Another worker created it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `dir/name` atomically: to `dir/.name.tmp`, fsync,
/// rename, fsync `dir`.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// A random id for one writer's run (16 hex digits), so that a restarted
/// writer never reuses a file name.
pub(crate) fn run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// Checks that a writer id is usable in file names.
pub(crate) fn check_writer_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "writer id {id:?} must be 1 to 64 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_known_days() {
        assert_eq!(date_of_ms(0), "1970-01-01");
        assert_eq!(date_of_ms(DAY_MS - 1), "1970-01-01");
        assert_eq!(date_of_ms(DAY_MS), "1970-01-02");
        assert_eq!(date_of_ms(-1), "1969-12-31");
        assert_eq!(date_of_ms(1_767_225_600_000), "2026-01-01");
        assert_eq!(date_of_ms(1_767_225_599_999), "2025-12-31");
        assert_eq!(date_of_ms(951_782_400_000), "2000-02-29");
        assert_eq!(date_of_ms(4_107_542_400_000), "2100-03-01");
    }

    #[test]
    fn writer_ids_are_checked() {
        assert!(check_writer_id("w0").is_ok());
        assert!(check_writer_id("worker_3.b-1").is_ok());
        assert!(check_writer_id("").is_err());
        assert!(check_writer_id(".w").is_err());
        assert!(check_writer_id("a/b").is_err());
        assert!(check_writer_id("a b").is_err());
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(run_id(), run_id());
        assert_eq!(run_id().len(), 16);
    }

    #[test]
    fn atomic_write_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "a.json", b"{}").unwrap();
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec!["a.json".to_string()]);
        let nested = dir.path().join("x/y/z");
        ensure_dir(&nested).unwrap();
        ensure_dir(&nested).unwrap();
        assert!(nested.is_dir());
    }
}
