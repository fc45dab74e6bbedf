//! Write → commit → read tests of the backup, the raw archive and the manifest.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::{ChannelList, Context, Enriched, Position, Values};
use eddy_core::sink::BatchSink;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;

use crate::*;

/// 2026-01-01T00:00:00Z.
const DAY0: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 86_400_000;

fn cfg() -> BackupConfig {
    BackupConfig { max_file_age: Duration::ZERO, ..BackupConfig::default() }
}

fn ctx(pairs: &[(&str, &str)]) -> Context {
    Arc::new(eddy_core::reading::ContextRow::new(pairs.iter().copied()))
}

/// An on-time reading without context or calibration (also used by `background`'s tests).
pub(crate) fn reading(dev: &str, ts: i64, offset: u64, raw: &[(&str, Option<f64>)]) -> Enriched {
    let raw: Values = raw.iter().map(|(c, v)| (Channel::intern(c), *v)).collect();
    Enriched {
        device: DeviceId::intern(dev),
        ts,
        pos: Position { partition: 0, offset },
        late: false,
        future: false,
        values: raw.clone(),
        raw,
        calibrated: ChannelList::new(),
        context: None,
        junk: ChannelList::new(),
    }
}

/// The non-null `(channel, value)` pairs, sorted.
fn non_null(v: &[(String, Option<f64>)]) -> Vec<(String, f64)> {
    let mut out: Vec<_> = v.iter().filter_map(|(c, v)| v.map(|v| (c.clone(), v))).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn non_null_values(v: &Values) -> Vec<(String, f64)> {
    let mut out: Vec<_> = v.iter().filter_map(|(c, v)| v.map(|v| (c.name().to_string(), v))).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Checks that `row` is what `e` was written as.
fn assert_row_is(row: &BackupRow, e: &Enriched) {
    assert_eq!(row.device_id, &*e.device.name());
    assert_eq!(row.ts, e.ts);
    assert_eq!(row.pos, e.pos);
    assert_eq!(row.late, e.late);
    assert_eq!(row.future, e.future);
    assert_eq!(non_null(&row.raw), non_null_values(&e.raw));
    assert_eq!(non_null(&row.values), non_null_values(&e.values));
    let junk: Vec<String> = e.junk.iter().map(|c| c.name().to_string()).collect();
    assert_eq!(row.junk, junk);
    let mut want_ctx: Vec<(String, String)> = e.context.as_deref().map(|c| c.to_pairs()).unwrap_or_default();
    want_ctx.sort();
    let mut got_ctx = row.context.clone();
    got_ctx.sort();
    assert_eq!(got_ctx, want_ctx);
}

/// Every file under `dir` (recursively), relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn column_names(path: &Path) -> Vec<String> {
    let b = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap();
    b.schema().fields().iter().map(|f| f.name().clone()).collect()
}

#[test]
fn round_trip_write_commit_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup");
    let mut w = BackupWriter::new(&out, "w0", cfg()).unwrap();
    let mut a = reading("dev-a", DAY0 + 1000, 1, &[("pm25", Some(12.5)), ("co2", Some(400.0))]);
    a.values[0].1 = Some(11.0); // calibrated
    a.context = Some(ctx(&[("site", "lab"), ("floor", "2")]));
    let mut b = reading("dev-b", DAY0 + 2000, 2, &[("pm25", Some(9999.0)), ("hum", None)]);
    b.values[0].1 = None; // junk
    b.junk.push(Channel::PM25);
    b.late = true;
    let c = reading("dev-c", DAY0 + 500, 3, &[("temp", Some(-3.25))]);
    let rows = vec![a.clone(), b.clone(), c.clone()];
    w.write(&mut rows.clone()).unwrap();
    assert_eq!(w.uncommitted_rows(), 3);
    // Nothing is visible before the commit.
    assert!(read_backup(&out).unwrap().is_empty());
    let entry = w.try_commit(Some(7)).unwrap().expect("a manifest entry");
    assert!(w.error().is_none());
    assert_eq!(w.uncommitted_rows(), 0);
    assert!(entry.file_name().unwrap().to_str().unwrap().starts_with("00000000000000000007-w0-"));

    let got = read_backup(&out).unwrap();
    assert_eq!(got.len(), 3);
    for (g, e) in got.iter().zip(&rows) {
        assert_row_is(g, e);
    }
    assert_eq!(got[1].junk, vec!["pm25".to_string()]);
    assert_eq!(got[1].values[0], ("pm25".to_string(), None));
    assert_eq!(got[1].raw[0], ("pm25".to_string(), Some(9999.0)));

    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.entries.len(), 1);
    let e = &m.entries[0];
    assert_eq!((e.version, e.kind.as_str(), e.writer.as_str()), (1, "backup", "w0"));
    assert_eq!(e.epoch, Some(7));
    assert_eq!(e.files.len(), 1);
    let f = &e.files[0];
    assert_eq!((f.rows, f.min_ts, f.max_ts), (3, DAY0 + 500, DAY0 + 2000));
    assert_eq!((f.min_offset, f.max_offset), (1, 3));
    assert_eq!(f.partitions.len(), 1);
    assert!(f.path.starts_with("date=2026-01-01/part-w0-000000-"));
    assert_eq!(m.max_offset("w0", 0), Some(3));
    assert_eq!(m.max_offset("w0", 1), None);
    let path = out.join(&f.path);
    assert_eq!(f.bytes, fs::metadata(&path).unwrap().len());
    assert_eq!(
        column_names(&path),
        [
            "device_id",
            "ts",
            "pm25",
            "co2",
            "voc",
            "temp",
            "hum",
            "raw_pm25",
            "raw_co2",
            "raw_voc",
            "raw_temp",
            "raw_hum",
            "floor",
            "site",
            "late",
            "future",
            "junk",
            "src_partition",
            "src_offset"
        ]
    );
    // Snappy (the default), dictionary-encoded device_id.
    let meta = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap()).unwrap().metadata().clone();
    let col0 = meta.row_group(0).column(0);
    assert_eq!(col0.compression(), parquet::basic::Compression::SNAPPY);
    assert!(col0.dictionary_page_offset().is_some());
    // No temporary files are left.
    assert!(listing(&out).iter().all(|p| !p.ends_with(".tmp")), "{:?}", listing(&out));
}

#[test]
fn every_codec_writes_files_that_read_back() {
    use parquet::basic::Compression as P;
    for (codec, want) in [
        (Codec::Snappy, P::SNAPPY),
        (Codec::Zstd, P::ZSTD(parquet::basic::ZstdLevel::try_new(3).unwrap())),
        (Codec::Lz4, P::LZ4_RAW),
        (Codec::None, P::UNCOMPRESSED),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = BackupConfig { codec, compression_level: 3, ..cfg() };
        let mut w = BackupWriter::new(dir.path(), "w0", config).unwrap();
        let rows: Vec<Enriched> = (0..500)
            .map(|i| reading(&format!("dev-{}", i % 7), DAY0 + i * 1000, i as u64, &[("pm25", Some(i as f64 / 4.0))]))
            .collect();
        w.write(&mut rows.clone()).unwrap();
        w.commit(None).unwrap();
        let got = read_backup(dir.path()).unwrap();
        assert_eq!(got.len(), rows.len(), "{codec:?}");
        for (g, e) in got.iter().zip(&rows) {
            assert_row_is(g, e);
        }
        let path = committed_files(dir.path()).unwrap().remove(0);
        let meta = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap().metadata().clone();
        for col in meta.row_group(0).columns() {
            // A file does not record the zstd level: compare the codecs.
            let got = col.compression();
            assert_eq!(std::mem::discriminant(&got), std::mem::discriminant(&want), "{codec:?}, {}", col.column_path());
        }
    }
}

#[test]
fn ts_column_is_utc_millis() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    w.commit(None).unwrap();
    let path = committed_files(dir.path()).unwrap().remove(0);
    let b = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap();
    let schema = b.schema();
    assert_eq!(
        schema.field_with_name("ts").unwrap().data_type(),
        &arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into()))
    );
    assert_eq!(
        schema.field_with_name("junk").unwrap().data_type(),
        &arrow::datatypes::DataType::List(Arc::new(arrow::datatypes::Field::new_list_field(
            arrow::datatypes::DataType::Utf8,
            false
        )))
    );
}

#[test]
fn rolling_by_rows_makes_several_files_all_in_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let c = BackupConfig { max_rows_per_file: 10, row_group_rows: 4, ..cfg() };
    let mut w = BackupWriter::new(dir.path(), "w0", c).unwrap();
    let mut batch: Vec<Enriched> =
        (1..=35).map(|i| reading("d", DAY0 + i as i64, i, &[("pm25", Some(i as f64))])).collect();
    w.write(&mut batch).unwrap();
    assert!(batch.is_empty());
    w.commit(Some(1)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.entries.len(), 1);
    let rows: Vec<u64> = m.files().map(|f| f.rows).collect();
    assert_eq!(rows.iter().sum::<u64>(), 35);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|&r| r <= 10));
    // Every data file on disk is listed, and row groups are at most 4 rows.
    let on_disk: BTreeSet<String> = listing(dir.path()).into_iter().filter(|p| p.ends_with(".parquet")).collect();
    let listed: BTreeSet<String> = m.files().map(|f| f.path.clone()).collect();
    assert_eq!(on_disk, listed);
    for p in m.paths() {
        let b = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&p).unwrap()).unwrap();
        let md = b.metadata();
        let rows: i64 = md.row_groups().iter().map(|g| g.num_rows()).sum();
        assert_eq!(md.num_row_groups() as i64, (rows + 3) / 4);
        assert!(md.row_groups().iter().all(|g| g.num_rows() <= 4));
    }
    let got = read_backup(dir.path()).unwrap();
    let mut offsets: Vec<u64> = got.iter().map(|r| r.pos.offset).collect();
    offsets.sort();
    assert_eq!(offsets, (1..=35).collect::<Vec<_>>());
}

#[test]
fn uncommitted_files_are_ignored_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let slow = BackupConfig { max_file_age: Duration::from_secs(3600), ..BackupConfig::default() };
    let mut w = BackupWriter::new(out, "w0", slow).unwrap();
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    // The end of input always publishes.
    w.commit(None).unwrap();
    let committed = committed_files(out).unwrap();
    assert_eq!(committed.len(), 1);

    // A second batch, not due at this commit: it stays a .tmp file.
    w.write(&mut vec![reading("d", DAY0 + 5, 2, &[("pm25", Some(2.0))])]).unwrap();
    assert_eq!(w.try_commit(Some(9)).unwrap(), None);
    assert_eq!(w.uncommitted_rows(), 1);
    // A renamed file that no manifest entry lists (a crash between rename
    // and manifest write).
    let orphan = out.join("date=2026-01-01/part-w9-000000-deadbeef.parquet");
    fs::copy(&committed[0], &orphan).unwrap();
    // A crash: the writer goes away without committing.
    drop(w);
    let tmp: Vec<String> = listing(out).into_iter().filter(|p| p.ends_with(".tmp")).collect();
    assert_eq!(tmp.len(), 1, "{tmp:?}");

    let got = read_backup(out).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pos.offset, 1);

    let removed = cleanup_uncommitted(out).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.contains(&orphan));
    assert!(listing(out).iter().all(|p| !p.ends_with(".tmp")));
    assert!(committed[0].exists());
    assert_eq!(read_backup(out).unwrap(), got);
    // Idempotent.
    assert!(cleanup_uncommitted(out).unwrap().is_empty());
    // Nothing to clean in a directory that does not exist.
    assert!(cleanup_uncommitted(&out.join("nope")).unwrap().is_empty());
}

#[test]
fn a_listed_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    w.commit(Some(1)).unwrap();
    let p = committed_files(dir.path()).unwrap().remove(0);
    fs::remove_file(&p).unwrap();
    let err = read_backup(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&*p.to_string_lossy()), "{err}");
}

#[test]
fn schema_evolution_rolls_into_a_wider_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    let first =
        vec![reading("d1", DAY0 + 1, 1, &[("pm25", Some(1.0))]), reading("d2", DAY0 + 2, 2, &[("co2", Some(410.0))])];
    w.write(&mut first.clone()).unwrap();
    // Same date, no commit in between: a new channel and a context column.
    let mut late_ch = reading("d1", DAY0 + 3, 3, &[("pm25", Some(2.0)), ("no2", Some(17.0))]);
    late_ch.context = Some(ctx(&[("site", "roof")]));
    let second = vec![late_ch.clone(), reading("d2", DAY0 + 4, 4, &[("pm25", Some(3.0))])];
    w.write(&mut second.clone()).unwrap();
    w.commit(Some(1)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    let files: Vec<&FileEntry> = m.files().collect();
    assert_eq!(files.len(), 2);
    let mut by_rows: Vec<(u64, Vec<String>)> =
        files.iter().map(|f| (f.min_offset, column_names(&dir.path().join(&f.path)))).collect();
    by_rows.sort();
    assert!(!by_rows[0].1.contains(&"no2".to_string()));
    assert!(!by_rows[0].1.contains(&"site".to_string()));
    let wide = &by_rows[1].1;
    let pos = |n: &str| wide.iter().position(|c| c == n).unwrap();
    assert!(pos("hum") < pos("no2") && pos("no2") < pos("raw_pm25"));
    assert!(pos("raw_hum") < pos("raw_no2") && pos("raw_no2") < pos("site"));
    assert!(pos("site") < pos("late"));

    let mut got = read_backup(dir.path()).unwrap();
    got.sort_by_key(|r| r.pos);
    assert_eq!(got.len(), 4);
    for (g, e) in got.iter().zip(first.iter().chain(&second)) {
        assert_row_is(g, e);
    }
    // The first file has no no2 column at all; the second has one, null
    // for the reading without it.
    assert!(got[0].raw.iter().all(|(c, _)| c != "no2"));
    assert!(got[3].raw.contains(&("no2".to_string(), None)));
    assert_eq!(got[2].context, vec![("site".to_string(), "roof".to_string())]);

    // A later commit: new files use the widest schema known so far, without
    // a roll.
    w.write(&mut vec![reading("d3", DAY0 + 5, 5, &[("voc", Some(1.0))])]).unwrap();
    w.commit(Some(2)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.entries.len(), 2);
    let last = &m.entries[1].files[0];
    assert!(column_names(&dir.path().join(&last.path)).contains(&"no2".to_string()));
}

#[test]
fn readings_around_midnight_go_to_their_dates() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w3", cfg()).unwrap();
    let mut batch = vec![
        reading("d", DAY0 - 1, 1, &[("pm25", Some(1.0))]),
        reading("d", DAY0, 2, &[("pm25", Some(2.0))]),
        reading("d", DAY0 - 2, 3, &[("pm25", Some(3.0))]),
        reading("d", DAY0 + DAY_MS - 1, 4, &[("pm25", Some(4.0))]),
        reading("d", DAY0 + DAY_MS, 5, &[("pm25", Some(5.0))]),
    ];
    w.write(&mut batch).unwrap();
    w.commit(Some(1)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    let mut by_date: Vec<(String, u64, i64, i64)> =
        m.files().map(|f| (f.path.split('/').next().unwrap().to_string(), f.rows, f.min_ts, f.max_ts)).collect();
    by_date.sort();
    assert_eq!(
        by_date,
        vec![
            ("date=2025-12-31".to_string(), 2, DAY0 - 2, DAY0 - 1),
            ("date=2026-01-01".to_string(), 2, DAY0, DAY0 + DAY_MS - 1),
            ("date=2026-01-02".to_string(), 1, DAY0 + DAY_MS, DAY0 + DAY_MS),
        ]
    );
    for f in m.files() {
        for r in read_backup_file(&dir.path().join(&f.path)).unwrap() {
            assert_eq!(format!("date={}", date_of_ms(r.ts)), f.path.split('/').next().unwrap());
        }
        assert!(f.path.contains("/part-w3-"));
    }
    assert_eq!(read_backup(dir.path()).unwrap().len(), 5);
}

#[test]
fn committing_nothing_writes_no_manifest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    assert_eq!(w.try_commit(Some(0)).unwrap(), None);
    w.commit(Some(1)).unwrap();
    w.commit(None).unwrap();
    assert!(Manifest::load(dir.path()).unwrap().entries.is_empty());
    w.write(&mut Vec::new()).unwrap();
    w.commit(Some(2)).unwrap();
    assert!(Manifest::load(dir.path()).unwrap().entries.is_empty());
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    w.commit(Some(3)).unwrap();
    w.commit(Some(4)).unwrap();
    w.commit(None).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.entries.len(), 1);
    assert_eq!(m.entries[0].epoch, Some(3));
    assert_eq!(listing(&dir.path().join(MANIFEST_DIR)).len(), 1, "only the one entry, no temporary files");
}

#[test]
fn files_are_published_once_older_than_max_file_age() {
    let dir = tempfile::tempdir().unwrap();
    let c = BackupConfig { max_file_age: Duration::from_millis(100), ..BackupConfig::default() };
    let mut w = BackupWriter::new(dir.path(), "w0", c).unwrap();
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    assert_eq!(w.try_commit(Some(1)).unwrap(), None);
    w.write(&mut vec![reading("d", DAY0 + 1, 2, &[("pm25", Some(1.0))])]).unwrap();
    assert!(committed_files(dir.path()).unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(120));
    assert!(w.try_commit(Some(2)).unwrap().is_some());
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.rows(), 2);
    assert_eq!(m.entries[0].epoch, Some(2));
}

#[test]
fn the_writer_fails_closed_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    w.write(&mut vec![reading("d", DAY0, 1, &[("pm25", Some(1.0))])]).unwrap();
    // The date directory disappears under the writer: the rename fails.
    fs::remove_dir_all(dir.path().join("date=2026-01-01")).unwrap();
    let failed = w.commit(Some(1)).expect_err("the commit fails");
    let err = w.error().expect("an error").to_string();
    assert!(err.contains("date=2026-01-01"), "{err}");
    // As a sink's error: the output, then the writer's error as its cause.
    assert_eq!(failed.output, w.output());
    assert_eq!(failed.source.to_string(), err);
    let mut batch = vec![reading("d", DAY0 + DAY_MS, 2, &[("pm25", Some(1.0))])];
    let again = w.write(&mut batch).expect_err("the writer stays failed");
    assert_eq!(again.source.to_string(), err);
    assert!(batch.is_empty());
    assert!(w.commit(None).is_err());
    assert_eq!(w.error().unwrap().to_string(), err);
    assert!(matches!(w.try_commit(None), Err(Error::Failed(_))));
    assert!(Manifest::load(dir.path()).unwrap().entries.is_empty());
    assert!(!dir.path().join("date=2026-01-02").exists());
}

#[test]
fn several_writers_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut w0 = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    let mut w1 = BackupWriter::new(dir.path(), "w1", cfg()).unwrap();
    let mut a = reading("a", DAY0, 10, &[("pm25", Some(1.0))]);
    a.pos.partition = 1;
    let b = reading("b", DAY0, 20, &[("pm25", Some(2.0))]);
    let mut c = reading("c", DAY0, 30, &[("pm25", Some(3.0))]);
    c.pos.partition = 1;
    w0.write(&mut vec![a, b]).unwrap();
    w1.write(&mut vec![c]).unwrap();
    w0.commit(Some(5)).unwrap();
    w1.commit(Some(5)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.entries.len(), 2);
    assert_eq!(m.max_offset("w0", 0), Some(20));
    assert_eq!(m.max_offset("w0", 1), Some(10));
    assert_eq!(m.max_offset("w1", 1), Some(30));
    assert_eq!(m.max_offset("w1", 0), None);
    assert_eq!(m.max_offsets().len(), 3);
    assert_eq!(read_backup(dir.path()).unwrap().len(), 3);
    // A restarted writer with the same id never reuses a file name.
    let mut again = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    assert_ne!(again.run_id(), w0.run_id());
    again.write(&mut vec![reading("b", DAY0, 21, &[("pm25", Some(2.0))])]).unwrap();
    again.commit(Some(5)).unwrap();
    assert_eq!(Manifest::load(dir.path()).unwrap().entries.len(), 3);
    assert_eq!(read_backup(dir.path()).unwrap().len(), 4);
}

#[test]
fn raw_archive_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("raw");
    let mut w = RawArchiveWriter::new(&out, "w0", cfg()).unwrap();
    let recs = vec![
        RawRecord { partition: 0, offset: 1, arrival_ms: DAY0 - 1, bytes: br#"{"device_id":"d","ts":1}"#.to_vec() },
        RawRecord { partition: 0, offset: 2, arrival_ms: DAY0, bytes: vec![0xff, 0xfe, b'{'] },
        RawRecord { partition: 1, offset: 1, arrival_ms: DAY0 + 1, bytes: Vec::new() },
    ];
    w.write(&mut recs.clone()).unwrap();
    assert_eq!(read_raw_archive(&out).unwrap(), Vec::new());
    w.commit(None).unwrap();
    assert!(w.error().is_none());
    assert_eq!(read_raw_archive(&out).unwrap(), recs);
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.entries[0].kind, "raw");
    assert_eq!(m.entries[0].epoch, None);
    assert_eq!(m.files().count(), 2);
    assert_eq!(m.max_offset("w0", 0), Some(2));
    assert_eq!(m.max_offset("w0", 1), Some(1));
    let names = column_names(&m.paths()[0]);
    assert_eq!(names, ["src_partition", "src_offset", "arrival", "bytes"]);
    assert!(m.entries[0].files[0].path.starts_with("date=2025-12-31/"));
}

#[test]
fn jsonl_lines_replay_as_the_readings_received() {
    let row = BackupRow {
        device_id: "dev \"1\"".into(),
        ts: 1_767_225_600_000,
        raw: vec![
            ("pm25".into(), Some(12.5)),
            ("co2".into(), None),
            ("temp".into(), Some(-0.1)),
            ("no2".into(), Some(400.0)),
        ],
        values: Vec::new(),
        context: Vec::new(),
        late: true,
        future: false,
        junk: vec!["pm25".into()],
        pos: Position::line(3),
    };
    let line = to_jsonl_line(&row);
    assert_eq!(line, r#"{"device_id":"dev \"1\"","ts":1767225600000,"pm25":12.5,"temp":-0.1,"no2":400.0}"#);
    let parsed = eddy_core::validate::parse_line(line.as_bytes()).unwrap();
    assert_eq!(&*parsed.device.name(), "dev \"1\"");
    assert_eq!(parsed.ts, row.ts);
    let got: Vec<(String, Option<f64>)> = parsed.values.iter().map(|(c, v)| (c.name().to_string(), *v)).collect();
    let want: Vec<(String, Option<f64>)> = row.raw.iter().filter(|(_, v)| v.is_some()).cloned().collect();
    assert_eq!(got, want);
}

#[test]
fn replay_order_is_by_time_then_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BackupWriter::new(dir.path(), "w0", cfg()).unwrap();
    w.write(&mut vec![
        reading("b", DAY0 + DAY_MS + 5, 1, &[("pm25", Some(1.0))]),
        reading("a", DAY0 + 7, 2, &[("pm25", Some(2.0))]),
        reading("b", DAY0 + 7, 3, &[("pm25", Some(3.0))]),
        reading("a", DAY0 + 1, 4, &[("pm25", Some(4.0))]),
    ])
    .unwrap();
    w.commit(None).unwrap();
    let mut rows = read_backup(dir.path()).unwrap();
    sort_for_replay(&mut rows);
    let order: Vec<u64> = rows.iter().map(|r| r.pos.offset).collect();
    assert_eq!(order, [4, 2, 3, 1]);
    let lines: Vec<String> = rows.iter().map(to_jsonl_line).collect();
    assert_eq!(lines[0], format!(r#"{{"device_id":"a","ts":{},"pm25":4.0}}"#, DAY0 + 1));
}

#[test]
fn too_many_dates_close_the_least_recently_used_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = BackupConfig { max_open_files: 2, ..cfg() };
    let mut w = BackupWriter::new(dir.path(), "w0", c).unwrap();
    let mut batch: Vec<Enriched> =
        (0..6u64).map(|i| reading("d", DAY0 + (i as i64 % 3) * DAY_MS, i + 1, &[("pm25", Some(1.0))])).collect();
    w.write(&mut batch).unwrap();
    w.commit(Some(1)).unwrap();
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.rows(), 6);
    assert_eq!(m.files().count(), 6);
    assert_eq!(read_backup(dir.path()).unwrap().len(), 6);
}

/// One generated reading: device, day, ms in day, channels, context, late.
#[derive(Clone, Debug)]
struct Spec {
    dev: u8,
    day: i64,
    ms: i64,
    channels: Vec<(u8, Option<f64>)>,
    junk_first: bool,
    ctx: u8,
    late: bool,
    partition: u32,
}

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<Spec>),
    Commit,
}

const POOL: [&str; 6] = ["pm25", "co2", "voc", "hum", "prop_ozone", "prop_no2"];

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        0i64..3,
        prop_oneof![Just(0i64), Just(DAY_MS - 1), 0..DAY_MS],
        proptest::collection::btree_map(0u8..6, proptest::option::of(-50.0f64..5000.0), 0..4),
        any::<bool>(),
        0u8..5,
        any::<bool>(),
        0u32..2,
    )
        .prop_map(|(dev, day, ms, ch, junk_first, ctx, late, partition)| Spec {
            dev,
            day,
            ms,
            channels: ch.into_iter().collect(),
            junk_first,
            ctx,
            late,
            partition,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(spec(), 0..12).prop_map(Op::Write),
        1 => Just(Op::Commit),
    ]
}

fn build(s: &Spec, offset: u64, contexts: &[Option<Context>]) -> Enriched {
    let raw: Vec<(&str, Option<f64>)> = s.channels.iter().map(|(c, v)| (POOL[*c as usize], *v)).collect();
    let mut e = reading(&format!("dev-{}", s.dev), DAY0 + s.day * DAY_MS + s.ms, offset, &raw);
    for (_, v) in e.values.iter_mut() {
        *v = v.map(|x| x * 0.5 + 1.0);
    }
    if s.junk_first && !e.values.is_empty() {
        e.values[0].1 = None;
        e.junk.push(e.values[0].0);
    }
    e.context = contexts[s.ctx as usize].clone();
    e.late = s.late;
    // Some on-time rows of one device are future instead.
    e.future = !s.late && s.dev == 3 && s.ms % 2 == 1;
    e.pos.partition = s.partition;
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random batches and commit points: reading back gives exactly the
    /// rows written before the last commit, once each; a crash loses only
    /// the rest, and cleanup removes its files.
    #[test]
    fn committed_rows_are_read_back_exactly_once(
        ops in proptest::collection::vec(op(), 1..12),
        max_rows in 1u64..20,
        row_group_rows in 1usize..8,
        max_open_files in 1usize..3,
        finish in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let c = BackupConfig {
            max_rows_per_file: max_rows,
            row_group_rows,
            max_open_files,
            ..cfg()
        };
        // Rows of other devices may have contexts with the same keys
        // (mapped once for all) or the same keys in another order.
        let contexts = vec![
            None,
            Some(ctx(&[("site", "a")])),
            Some(ctx(&[("site", "b"), ("floor", "3")])),
            Some(ctx(&[("site", "c"), ("floor", "4")])),
            Some(ctx(&[("floor", "5"), ("site", "d")])),
        ];
        let mut w = BackupWriter::new(dir.path(), "w0", c).unwrap();
        let mut written: Vec<Enriched> = Vec::new();
        let mut committed = 0;
        let mut epoch = 0;
        for op in &ops {
            match op {
                Op::Write(specs) => {
                    let mut batch: Vec<Enriched> = specs
                        .iter()
                        .enumerate()
                        .map(|(i, s)| build(s, (written.len() + i + 1) as u64, &contexts))
                        .collect();
                    written.extend(batch.iter().cloned());
                    w.write(&mut batch).unwrap();
                }
                Op::Commit => {
                    epoch += 1;
                    w.commit(Some(epoch)).unwrap();
                    committed = written.len();
                }
            }
        }
        if finish {
            w.commit(None).unwrap();
            committed = written.len();
        }
        prop_assert!(w.error().is_none(), "{:?}", w.error());
        drop(w);

        let check = |dir: &Path| -> Result<(), TestCaseError> {
            let mut got = read_backup(dir).unwrap();
            got.sort_by_key(|r| r.pos.offset);
            prop_assert_eq!(got.len(), committed);
            for (g, e) in got.iter().zip(&written[..committed]) {
                assert_row_is(g, e);
            }
            let m = Manifest::load(dir).unwrap();
            prop_assert_eq!(m.rows(), committed as u64);
            for p in [0u32, 1] {
                let want = written[..committed]
                    .iter()
                    .filter(|e| e.pos.partition == p)
                    .map(|e| e.pos.offset)
                    .max();
                prop_assert_eq!(m.max_offset("w0", p), want);
            }
            Ok(())
        };
        check(dir.path())?;
        cleanup_uncommitted(dir.path()).unwrap();
        let files: Vec<PathBuf> = listing(dir.path())
            .into_iter()
            .filter(|p| p.ends_with(".parquet") || p.ends_with(".tmp"))
            .map(|p| dir.path().join(p))
            .collect();
        prop_assert_eq!(files, committed_files(dir.path()).unwrap());
        check(dir.path())?;
    }
}
