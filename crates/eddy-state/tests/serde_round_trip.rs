//! Saving and restoring the per-key state with serde (in `postcard`, the
//! binary codec of checkpoints) is exact: a state restored in the middle of
//! a stream of updates behaves as the original under the rest of it, bit
//! for bit, and both serialize to the same bytes at every step.

use eddy_state::{ChannelStats, DeviceStats, StatsConfig, StatsSnapshot, WindowAgg};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An event time in 2023, epoch ms.
const T0: i64 = 1_700_000_000_000;

fn save<T: Serialize>(value: &T) -> Result<Vec<u8>, TestCaseError> {
    postcard::to_stdvec(value).map_err(|e| TestCaseError::fail(format!("serialize: {e}")))
}

fn restore<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TestCaseError> {
    postcard::from_bytes(bytes).map_err(|e| TestCaseError::fail(format!("deserialize: {e}")))
}

/// Every field of a snapshot, floats as bits.
type SnapshotBits = (u64, [u64; 6], Option<u64>, Option<u64>, i64);

fn snapshot_bits(s: &StatsSnapshot) -> SnapshotBits {
    (
        s.count,
        [s.mean, s.min, s.max, s.ewma, s.top_k_max_mean, s.top_k_min_mean].map(f64::to_bits),
        s.stddev.map(f64::to_bits),
        s.trend_per_hour.map(f64::to_bits),
        s.ts,
    )
}

/// Everything a device reports: per slot its key, latest value time and
/// snapshot; and its allocation size (which tells inline from spilled).
fn device_state<K: Copy + PartialEq>(
    d: &DeviceStats<K>,
    cfg: &StatsConfig,
) -> (Vec<(K, Option<i64>, SnapshotBits)>, usize) {
    let slots =
        (0..d.len()).filter_map(|i| Some((d.key(i)?, d.last_ts(i), snapshot_bits(&d.snapshot(i, cfg)?)))).collect();
    (slots, d.allocated_bytes())
}

fn agg_bits(a: &WindowAgg) -> (u64, [u64; 3]) {
    (a.count, [a.sum, a.min, a.max].map(f64::to_bits))
}

/// A configuration: any valid `alpha`, top-k sizes on both sides of the
/// heaps' inline capacity (k <= 5), the default half-life or another.
fn arb_cfg() -> impl Strategy<Value = StatsConfig> {
    (0.01f64..=1.0, 1usize..9, prop_oneof![Just(3_600_000i64), 60_000i64..20_000_000])
        .prop_map(|(alpha, top_k, trend_half_life_ms)| StatsConfig { alpha, top_k, trend_half_life_ms })
}

/// A value: mostly finite, sometimes `-0.0`, infinite, or `NaN` (with the
/// default payload or another, either sign: a young slot keeps it as is).
fn arb_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        12 => -1000.0f64..5000.0,
        1 => Just(-0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::from_bits(0xfff0_0000_dead_beef)),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => any::<f64>(),
    ]
}

/// Event times: a clock with small steps, disorder, jumps around the
/// ±`i32` ms reach of a young device's timeline, and times anywhere.
fn arb_times(n: usize) -> impl Strategy<Value = Vec<i64>> {
    let limit = i64::from(i32::MAX);
    let step = prop_oneof![
        8 => (0i64..600_000).prop_map(|d| (false, d)),
        3 => (-7_200_000i64..0).prop_map(|d| (false, d)),
        1 => prop_oneof![limit - 2..limit + 3, -limit - 3..-limit + 2].prop_map(|d| (false, d)),
        1 => any::<i64>().prop_map(|t| (true, t)),
    ];
    (1_600_000_000_000i64..1_800_000_000_000, proptest::collection::vec(step, n)).prop_map(|(start, steps)| {
        let mut clock = start;
        steps
            .into_iter()
            .map(|(absolute, t)| match (absolute, t >= 0) {
                (true, _) => t,
                (false, true) => {
                    clock = clock.saturating_add(t);
                    clock
                }
                (false, false) => clock.saturating_add(t),
            })
            .collect()
    })
}

/// A device's readings: a subset of five standard channels, any of 12
/// channels with repeats (a key twice in one reading), or all 12 at once
/// (past eight slots a device's slots spill to a second allocation).
fn arb_readings() -> impl Strategy<Value = Vec<(i64, Vec<(u32, f64)>)>> {
    let standard = (0u32..32, proptest::array::uniform5(arb_value()))
        .prop_map(|(mask, v)| (0..5u32).filter(|k| mask & (1 << k) != 0).map(|k| (k, v[k as usize])).collect());
    let any_keys = proptest::collection::vec((0u32..12, arb_value()), 0..10);
    let all = proptest::collection::vec(arb_value(), 12).prop_map(|v| (0..12u32).zip(v).collect());
    let values = prop_oneof![6 => standard, 2 => any_keys, 1 => all];
    (1usize..40)
        .prop_flat_map(move |n| (arb_times(n), proptest::collection::vec(values.clone(), n)))
        .prop_map(|(times, values)| times.into_iter().zip(values).collect())
}

/// Applies `readings` to `original`, saving it before reading `cut`,
/// restoring it and applying the rest to both: their reports, states and
/// bytes are the same at every step.
fn check_device(cfg: &StatsConfig, readings: &[(i64, Vec<(u32, f64)>)], cut: usize) -> Result<(), TestCaseError> {
    let cut = cut.min(readings.len());
    let mut original = DeviceStats::<u32>::new();
    for (ts, values) in &readings[..cut] {
        original.update(cfg, *ts, values.iter().copied(), |_, _| {});
    }
    let bytes = save(&original)?;
    let mut restored: DeviceStats<u32> = restore(&bytes)?;
    prop_assert_eq!(save(&restored)?, bytes);
    prop_assert_eq!(device_state(&restored, cfg), device_state(&original, cfg));
    for (ts, values) in &readings[cut..] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        original.update(cfg, *ts, values.iter().copied(), |i, last| a.push((i, last)));
        restored.update(cfg, *ts, values.iter().copied(), |i, last| b.push((i, last)));
        prop_assert_eq!(a, b);
        prop_assert_eq!(device_state(&restored, cfg), device_state(&original, cfg), "after ts {}", ts);
        prop_assert_eq!(save(&restored)?, save(&original)?);
    }
    Ok(())
}

/// One operation on a window aggregate: add a value, or merge an aggregate
/// of these values.
#[derive(Clone, Debug)]
enum AggOp {
    Add(f64),
    Merge(Vec<f64>),
}

fn apply(agg: &mut WindowAgg, op: &AggOp) {
    match op {
        AggOp::Add(v) => agg.add(*v),
        AggOp::Merge(values) => {
            let mut other = WindowAgg::new();
            values.iter().for_each(|&v| other.add(v));
            agg.merge(&other);
        }
    }
}

/// A valid encoding with one byte changed, or cut short.
fn corrupt(bytes: &[u8], at: usize, xor: u8, truncate: bool) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    if bytes.is_empty() {
        return bytes;
    }
    let at = at % bytes.len();
    if truncate {
        bytes.truncate(at);
    } else {
        bytes[at] ^= xor;
    }
    bytes
}

proptest! {
    #[test]
    fn device_stats_restored_mid_stream_behave_identically(
        cfg in arb_cfg(),
        readings in arb_readings(),
        cut in 0usize..40,
    ) {
        check_device(&cfg, &readings, cut)?;
    }

    #[test]
    fn channel_stats_restored_mid_stream_behave_identically(
        cfg in arb_cfg(),
        events in (1usize..300).prop_flat_map(|n| (arb_times(n), proptest::collection::vec(arb_value(), n))),
        cut in 0usize..300,
    ) {
        let (times, values) = events;
        let cut = cut.min(times.len());
        let mut original = ChannelStats::new(&cfg);
        for (&ts, &v) in times.iter().zip(&values).take(cut) {
            original.update(&cfg, ts, v);
        }
        let bytes = save(&original)?;
        let mut restored: ChannelStats = restore(&bytes)?;
        prop_assert_eq!(save(&restored)?, bytes);
        prop_assert_eq!(snapshot_bits(&restored.snapshot()), snapshot_bits(&original.snapshot()));
        for (&ts, &v) in times.iter().zip(&values).skip(cut) {
            original.update(&cfg, ts, v);
            restored.update(&cfg, ts, v);
            prop_assert_eq!(restored.count(), original.count());
            prop_assert_eq!(snapshot_bits(&restored.snapshot()), snapshot_bits(&original.snapshot()));
        }
        prop_assert_eq!(save(&restored)?, save(&original)?);
    }

    #[test]
    fn window_aggs_restored_mid_stream_behave_identically(
        ops in proptest::collection::vec(
            prop_oneof![
                6 => arb_value().prop_map(AggOp::Add),
                1 => proptest::collection::vec(arb_value(), 0..5).prop_map(AggOp::Merge),
            ],
            0..200,
        ),
        cut in 0usize..200,
    ) {
        let cut = cut.min(ops.len());
        let mut original = WindowAgg::new();
        ops[..cut].iter().for_each(|op| apply(&mut original, op));
        let bytes = save(&original)?;
        let mut restored: WindowAgg = restore(&bytes)?;
        prop_assert_eq!(save(&restored)?, bytes);
        prop_assert_eq!(agg_bits(&restored), agg_bits(&original));
        for op in &ops[cut..] {
            apply(&mut original, op);
            apply(&mut restored, op);
            prop_assert_eq!(agg_bits(&restored), agg_bits(&original));
            prop_assert_eq!(restored.mean().to_bits(), original.mean().to_bits());
        }
        prop_assert_eq!(save(&restored)?, save(&original)?);
    }

    /// Corrupt input is an error or a device that works (restoring never
    /// panics, nor does using what it restored); input cut short is always
    /// an error.
    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic(
        cfg in arb_cfg(),
        readings in arb_readings(),
        at in any::<usize>(),
        xor in 1u8..=255,
        truncate in any::<bool>(),
        more in arb_readings(),
    ) {
        let mut device = DeviceStats::<u32>::new();
        for (ts, values) in &readings {
            device.update(&cfg, *ts, values.iter().copied(), |_, _| {});
        }
        let bytes = corrupt(&save(&device)?, at, xor, truncate);
        match postcard::from_bytes::<DeviceStats<u32>>(&bytes) {
            Err(_) => {}
            Ok(mut d) => {
                prop_assert!(!truncate, "a truncated encoding was read back");
                let _ = device_state(&d, &cfg);
                for (ts, values) in &more {
                    d.update(&cfg, *ts, values.iter().copied(), |_, _| {});
                }
                let _ = device_state(&d, &cfg);
            }
        }
        let stats = ChannelStats::new(&cfg);
        let bytes = corrupt(&save(&stats)?, at, xor, truncate);
        if let Ok(mut s) = postcard::from_bytes::<ChannelStats>(&bytes) {
            prop_assert!(!truncate, "a truncated encoding was read back");
            s.update(&cfg, T0, 1.0);
            let _ = s.snapshot();
        }
    }

    /// Bytes that are not an encoding at all.
    #[test]
    fn garbage_bytes_are_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let cfg = StatsConfig::default();
        if let Ok(mut d) = postcard::from_bytes::<DeviceStats<u32>>(&bytes) {
            let _ = device_state(&d, &cfg);
            d.update(&cfg, T0, (0..12u32).map(|k| (k, 1.0)), |_, _| {});
            let _ = device_state(&d, &cfg);
        }
        if let Ok(mut s) = postcard::from_bytes::<ChannelStats>(&bytes) {
            s.update(&cfg, T0, 1.0);
            let _ = s.snapshot();
        }
        let _ = postcard::from_bytes::<WindowAgg>(&bytes);
    }
}

/// Fixed garbage: empty input, a length far past the input, an unknown
/// slot variant.
#[test]
fn known_garbage_is_an_error() {
    for bytes in [&[][..], &[0xff; 64][..], &[0, 0, 0, 0, 0, 1, 7][..], &[0, 0, 0, 0, 9, 0][..]] {
        assert!(postcard::from_bytes::<DeviceStats<u32>>(bytes).is_err(), "{bytes:?}");
        assert!(postcard::from_bytes::<ChannelStats>(bytes).is_err(), "{bytes:?}");
    }
    assert!(postcard::from_bytes::<WindowAgg>(&[]).is_err());
    assert!(postcard::from_bytes::<WindowAgg>(&[1, 2, 3]).is_err());
}

/// Keys that are strings, borrowed from the saved bytes: a restored device
/// finds its channels by the keys' contents and goes on as the original.
#[test]
fn string_keys_round_trip() -> Result<(), postcard::Error> {
    let cfg = StatsConfig::default();
    let names = ["pm25", "pm10", "co2", "temp", "rh", "no2", "o3", "so2", "co", "noise"];
    let mut original: DeviceStats<&str> = DeviceStats::new();
    for r in 0..3 {
        original.update(&cfg, T0 + r * 60_000, names.iter().map(|&k| (k, r as f64)), |_, _| {});
    }
    let bytes = postcard::to_stdvec(&original)?;
    let mut restored: DeviceStats<&str> = postcard::from_bytes(&bytes)?;
    assert_eq!(restored.keys().collect::<Vec<_>>(), names);
    for r in 3..8 {
        let values = names.iter().enumerate().filter(|(i, _)| (r + i) % 3 != 0).map(|(i, &k)| (k, (r * i) as f64));
        original.update(&cfg, T0 + r as i64 * 60_000, values.clone(), |_, _| {});
        restored.update(&cfg, T0 + r as i64 * 60_000, values, |_, _| {});
        assert_eq!(device_state(&restored, &cfg), device_state(&original, &cfg));
    }
    assert_eq!(restored.len(), names.len());
    assert_eq!(postcard::to_stdvec(&restored)?, postcard::to_stdvec(&original)?);
    Ok(())
}
