//! Micro-benchmarks of the hot path, one group per pipeline step, reported
//! as throughput (elements or bytes per second).
//!
//! `cargo bench --bench micro` (add `-- parse` to run one group).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use eddy::core::hysteresis::observe;
use eddy::core::ids::{Channel, DeviceId};
use eddy::core::reading::{ContextRow, Enriched, Position, Reading};
use eddy::core::reference::{Calibration, DeviceRef, Num, FOREVER};
use eddy::core::validate::{parse_line, Ranges};
use eddy::operators::enrich::{enrich_reading, DeviceView};
use eddy::state::stats::{ChannelStats, StatsConfig};
use eddy::state::window::{WindowAgg, WindowSpec};

const T0: i64 = 1_767_225_600_000;

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"device_id":"dev-{:06}","ts":{},"pm25":{:.1},"co2":{},"voc":{},"temp":{:.1},"hum":{:.1}}}"#,
                i % 10_000,
                T0 + i as i64 * 30,
                5.0 + (i % 40) as f64,
                420 + i % 600,
                80 + i % 300,
                19.0 + (i % 60) as f64 / 10.0,
                35.0 + (i % 200) as f64 / 10.0
            )
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let lines = lines(10_000);
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let ranges = Ranges::new([("pm25", Some(0.0), Some(1000.0)), ("hum", Some(0.0), Some(100.0))]);
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("validate_and_decode_10k_lines", |b| {
        b.iter(|| {
            for l in &lines {
                let p = parse_line(l.as_bytes()).expect("valid");
                black_box(ranges.junk_of(&p.values));
            }
        })
    });
    g.finish();
}

fn reading(i: usize) -> Reading {
    let p = parse_line(lines(1)[0].as_bytes()).expect("valid");
    Reading {
        device: p.device,
        ts: T0 + i as i64,
        pos: Position::line(i as u64),
        values: p.values,
        late: false,
        future: false,
        junk: Default::default(),
    }
}

fn enrich(c: &mut Criterion) {
    let d = DeviceId::intern("dev-000000");
    let cal = |vf, g| {
        DeviceRef::Calibration(Calibration { channel: Channel::PM25, valid_from: vf, gain: Num(g), offset: Num(0.5) })
    };
    let history = vec![
        (DeviceRef::Context(Arc::new(ContextRow::new([("site", "s1"), ("model", "AQ-1")]))), 0, 1),
        (cal(FOREVER, 1.1), 0, 1),
        (cal(T0 + 3_600_000, 1.2), 0, 1),
    ];
    let view = DeviceView::of(&history, u64::MAX);
    let readings: Vec<Reading> = (0..1000).map(reading).collect();
    let mut g = c.benchmark_group("enrich");
    g.throughput(Throughput::Elements(readings.len() as u64));
    g.bench_function("as_of_view_and_calibrate_1k", |b| {
        b.iter_batched(
            || readings.clone(),
            |rs| {
                for r in rs {
                    black_box(enrich_reading(r, &view));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("view_of_history_1k", |b| {
        b.iter(|| {
            for i in 0..1000u64 {
                black_box(DeviceView::of(&history, i));
            }
        })
    });
    let _ = d;
    g.finish();
}

fn stats(c: &mut Criterion) {
    let cfg = StatsConfig::default();
    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("update_100k", |b| {
        b.iter(|| {
            let mut s = ChannelStats::new(&cfg);
            for i in 0..100_000i64 {
                s.update(&cfg, T0 + i * 300_000 / 7, (i % 97) as f64);
            }
            black_box(s.snapshot())
        })
    });
    g.finish();
}

fn windows(c: &mut Criterion) {
    let tumbling = WindowSpec::tumbling(3_600_000);
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("assign_and_add_100k", |b| {
        b.iter(|| {
            let mut agg = WindowAgg::new();
            for i in 0..100_000i64 {
                for start in tumbling.windows_of(T0 + i * 1000) {
                    black_box(start);
                    agg.add((i % 50) as f64);
                }
            }
            black_box(agg)
        })
    });
    g.finish();
}

fn hysteresis(c: &mut Criterion) {
    let values: Vec<f64> = (0..100_000).map(|i| ((i % 200) as f64 - 100.0).abs()).collect();
    let mut g = c.benchmark_group("hysteresis");
    g.throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("observe_100k", |b| {
        b.iter(|| {
            let mut state = None;
            for (i, v) in values.iter().enumerate() {
                black_box(observe(&mut state, i as i64, *v, 35.0, 25.0));
            }
        })
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let enriched: Vec<Enriched> = (0..10_000).map(|i| enrich_reading(reading(i), &DeviceView::default())).collect();
    let mut g = c.benchmark_group("parquet");
    g.sample_size(10);
    g.throughput(Throughput::Elements(enriched.len() as u64));
    g.bench_function("backup_encode_and_commit_10k", |b| {
        b.iter_batched(
            || (tempfile::tempdir().expect("tempdir"), enriched.clone()),
            |(dir, mut rows)| {
                let mut w = eddy::parquet::BackupWriter::new(dir.path(), "w0of1", Default::default()).expect("writer");
                w.try_write(&mut rows).expect("write");
                black_box(w.try_commit(None).expect("commit"));
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(micro, parse, enrich, stats, windows, hysteresis, parquet);
criterion_main!(micro);
