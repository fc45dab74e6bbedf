//! Random small datasets for the model tests: a few devices (and an unknown
//! one), readings in a disordered arrival order with late ones, nulls, junk
//! values and extra channels, malformed lines of every kind, calibration
//! versions, thresholds, and reference updates in the middle of the stream.
//! Half of the datasets also have rogue clocks: devices whose readings are
//! far in the future (up to about 75 years), a few hours ahead, or in 1970,
//! sometimes on the very first line; their readings are inserted between the
//! others, which keep their own distributions.
//!
//! A [`Scenario`] is a plain description (so proptest can shrink it);
//! [`Scenario::render`] turns it into dataset files, a job spec and the
//! matching model configuration.

use std::fmt::Write as _;

use proptest::prelude::*;

use eddy::core::PipelineSpec;

use super::reference::{Config, DatasetFiles, RuleRow, MAX_TS};

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const YEAR: i64 = 365 * 24 * HOUR + 6 * HOUR;

/// Device ids; the last one is in no `devices.csv` (it may be upserted later).
pub const DEVICES: [&str; 9] = ["d-1", "d-2", "dév-3", "d-4", "d-5", "d-6", "ghost-7", " ", "q\"\\é"];
const GHOST: usize = 6;
/// A device id that is a single space (valid: ids are not trimmed); in no reference data.
const BLANK: usize = 7;
/// A device id with a quote, a backslash and a non-ASCII letter; in no reference data.
const ODD: usize = 8;
/// The ids of rogue devices that are not fleet devices (in no reference data).
const ROGUE_IDS: [&str; 3] = ["rogue-a", "rogue-b", "rogue-c"];
const STANDARD: [&str; 5] = ["pm25", "co2", "voc", "temp", "hum"];
const EXTRA: [&str; 4] = ["ref_pm25", "x_noise", "pm10", "µg/m³ \"x\""];
/// Channels that get calibration rows.
const CAL_CHANNELS: [&str; 4] = ["pm25", "co2", "temp", "x_noise"];
/// Rules that thresholds and updates pick from: (rule_id, channel, lo, hi) where
/// [lo, hi] is the range the channel's values are drawn from.
const RULES: [(&str, &str, f64, f64); 5] = [
    ("pm25-high", "pm25", 0.0, 80.0),
    ("co2-high", "co2", 400.0, 1500.0),
    ("pm25-spike", "pm25", 0.0, 80.0),
    ("temp-hot", "temp", 15.0, 30.0),
    ("noise-high", "x_noise", -50.0, 50.0),
];

/// One channel value of a reading.
#[derive(Clone, Debug)]
pub enum Val {
    /// The field is not there.
    Absent,
    /// `null`.
    Null,
    /// A normal value: the fraction of the channel's usual range.
    Normal(f64),
    /// Out of range (which of a few).
    Junk(u8),
    /// Exactly on a bound of the default range (not junk there).
    Edge(bool),
}

/// When a reading arrives relative to the clock.
#[derive(Clone, Debug)]
pub enum Timing {
    /// `ts = clock + jitter` (ms, may be negative).
    Jitter(i64),
    /// `ts = clock − delay` (15–120 min): late.
    Late(i64),
    /// `ts` exactly the lateness below the largest earlier ts (not late).
    Boundary,
    /// One ms more than that (late).
    JustLate,
}

/// A valid reading.
#[derive(Clone, Debug)]
pub struct ReadingSpec {
    /// Index into [`DEVICES`].
    pub dev: usize,
    /// Clock advance before it, ms.
    pub step: i64,
    /// Its ts relative to the clock.
    pub timing: Timing,
    /// Values of the standard channels.
    pub vals: [Val; 5],
    /// An extra channel: (index into EXTRA, fraction, integer?).
    pub extra: Option<(usize, f64)>,
    /// Rotation of the field order (device_id and ts need not come first).
    pub rotate: usize,
    /// Numbers in exponent notation.
    pub exp_style: bool,
    /// `\r\n` line ending.
    pub crlf: bool,
}

/// A malformed line: (kind, variant).
#[derive(Clone, Debug)]
pub enum Bad {
    /// Not UTF-8.
    Utf8(u8),
    /// Blank.
    Empty(u8),
    /// Not JSON.
    Json(u8),
    /// JSON, not an object.
    NotObject(u8),
    /// No device_id.
    MissingDevice(u8),
    /// device_id not a non-empty string.
    InvalidDevice(u8),
    /// No ts.
    MissingTs(u8),
    /// ts not an integer in range.
    InvalidTs(u8),
    /// A channel that is not a number or null.
    InvalidValue(u8),
    /// A reserved field name.
    Reserved(u8),
}

/// One input line.
#[derive(Clone, Debug)]
pub enum LineSpec {
    /// A valid reading.
    Reading(ReadingSpec),
    /// A malformed line.
    Bad(Bad),
}

/// A calibration version: (device, channel, gain, offset, valid_from slot).
#[derive(Clone, Debug)]
pub struct CalRow {
    dev: usize,
    chan: usize,
    gain: f64,
    offset: f64,
    /// `None`: forever (CSV) or the update's ts (update); `Some(k)`: start + k·20 min.
    vf: Option<i64>,
}

/// A rule row: (rule index, scope: None = "*", rise fraction, gap fraction).
#[derive(Clone, Debug)]
pub struct RuleSpec {
    rule: usize,
    scope: Option<usize>,
    rise: f64,
    gap: f64,
}

/// A reference update.
#[derive(Clone, Debug)]
pub enum UpdKind {
    /// Calibration upsert (numbers as strings when `strings`).
    CalUpsert(CalRow, bool),
    /// Calibration delete of one version or (vf None) all.
    CalDelete(usize, usize, Option<i64>),
    /// Device upsert: (device, site, floor number).
    DevUpsert(usize, u8, Option<i64>),
    /// Device delete.
    DevDelete(usize),
    /// Rule upsert; `omit_scope` leaves `device_id` out for a wildcard rule.
    RuleUpsert(RuleSpec, bool),
    /// Rule delete.
    RuleDelete(usize, Option<usize>, bool),
    /// A rule upsert, then its delete this many ms later (removals of changed rules).
    ChangeThenDelete(RuleSpec, i64),
}

/// When an update applies.
#[derive(Clone, Debug)]
pub enum UpdTime {
    /// A fraction of the readings' time span.
    Frac(f64),
    /// Exactly the ts of the n-th reading (mod the count).
    AtReading(usize),
}

/// A device clock that is wrong.
#[derive(Clone, Debug)]
pub enum RogueClock {
    /// `ts = clock + offset`, offset from two days to about 75 years.
    Far(i64),
    /// `ts = clock + offset`, offset from 20 min to 5 h: future or not,
    /// depending on `max_future`.
    Ahead(i64),
    /// Reset to 1970: `ts = base + (clock − start)`.
    Epoch1970(i64),
}

/// A device with a wrong clock.
#[derive(Clone, Debug)]
pub struct Rogue {
    /// Its clock.
    pub clock: RogueClock,
    /// `None`: an id of its own ([`ROGUE_IDS`]); `Some(i)`: fleet device `i`,
    /// whose other readings keep a good clock.
    pub dev: Option<usize>,
}

/// A reading of a rogue device.
#[derive(Clone, Debug)]
pub struct RogueLine {
    /// Where it goes: a fraction of the other lines before it.
    pub at: f64,
    /// Which rogue (mod their count).
    pub rogue: usize,
    /// Its values (its device, step and timing are not used, only a jitter).
    pub reading: ReadingSpec,
}

/// A whole dataset plus the job spec preset.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Which spec preset (see [`preset`]).
    pub preset: usize,
    /// Start offset from [`T0`], ms.
    pub start: i64,
    /// Registered devices (1..=6).
    pub devices: usize,
    /// The lines, in arrival order.
    pub lines: Vec<LineSpec>,
    /// calibration.csv rows.
    pub calibration: Vec<CalRow>,
    /// thresholds.csv rows.
    pub thresholds: Vec<RuleSpec>,
    /// updates.jsonl rows.
    pub updates: Vec<(UpdTime, UpdKind)>,
    /// Does the file end with `\n`?
    pub final_newline: bool,
    /// Devices with wrong clocks (often none).
    pub rogues: Vec<Rogue>,
    /// Their readings (ignored without rogues).
    pub rogue_lines: Vec<RogueLine>,
    /// The first rogue line is the first line of the file.
    pub rogue_first: bool,
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        30 => (0.0f64..1.0).prop_map(Val::Normal),
        2 => Just(Val::Absent),
        2 => Just(Val::Null),
        1 => any::<u8>().prop_map(Val::Junk),
        1 => any::<bool>().prop_map(Val::Edge),
    ]
}

fn timing() -> impl Strategy<Value = Timing> {
    prop_oneof![
        12 => (-60i64..=60).prop_map(|s| Timing::Jitter(s * 1000)),
        4 => (-60_000i64..=60_000).prop_map(Timing::Jitter),
        2 => (15 * MIN..=120 * MIN).prop_map(Timing::Late),
        1 => Just(Timing::Boundary),
        1 => Just(Timing::JustLate),
    ]
}

fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => (0i64..=90).prop_map(|s| s * 1000),
        3 => 0i64..=90_000,
        1 => Just(0i64),
        1 => 10 * MIN..=40 * MIN,
    ]
}

fn reading(devices: usize) -> impl Strategy<Value = ReadingSpec> {
    let dev = prop_oneof![18 => 0..devices, 2 => Just(GHOST), 1 => Just(BLANK), 1 => Just(ODD)];
    (
        dev,
        step(),
        timing(),
        [val(), val(), val(), val(), val()],
        proptest::option::weighted(0.3, (0..EXTRA.len(), 0.0f64..1.0)),
        prop_oneof![4 => Just(0usize), 1 => 0usize..8],
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(dev, step, timing, vals, extra, rotate, exp_style, crlf)| ReadingSpec {
            dev,
            step,
            timing,
            vals,
            extra,
            rotate,
            exp_style,
            crlf,
        })
}

fn bad() -> impl Strategy<Value = Bad> {
    let v = any::<u8>();
    prop_oneof![
        v.prop_map(Bad::Utf8),
        v.prop_map(Bad::Empty),
        v.prop_map(Bad::Json),
        v.prop_map(Bad::NotObject),
        v.prop_map(Bad::MissingDevice),
        v.prop_map(Bad::InvalidDevice),
        v.prop_map(Bad::MissingTs),
        v.prop_map(Bad::InvalidTs),
        v.prop_map(Bad::InvalidValue),
        v.prop_map(Bad::Reserved),
    ]
}

fn line(devices: usize) -> impl Strategy<Value = LineSpec> {
    prop_oneof![
        30 => reading(devices).prop_map(LineSpec::Reading),
        1 => bad().prop_map(LineSpec::Bad),
    ]
}

fn vf_slot() -> impl Strategy<Value = Option<i64>> {
    proptest::option::weighted(0.5, 0i64..12)
}

fn cal_row(devices: usize) -> impl Strategy<Value = CalRow> {
    (prop_oneof![5 => 0..devices, 1 => Just(GHOST)], 0..CAL_CHANNELS.len(), 0.5f64..1.5, -5.0f64..5.0, vf_slot())
        .prop_map(|(dev, chan, gain, offset, vf)| CalRow {
            dev,
            chan,
            gain: (gain * 1000.0).round() / 1000.0,
            offset: (offset * 100.0).round() / 100.0,
            vf,
        })
}

/// A rule index, mostly `pm25-high` (the standard rule, whose changes and
/// removals hit active events most often).
fn rule_index() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 2 => 0..RULES.len()]
}

fn scope(devices: usize) -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        3 => Just(None),
        2 => (0..devices).prop_map(Some),
        1 => Just(Some(GHOST)),
    ]
}

fn rule_spec(devices: usize) -> impl Strategy<Value = RuleSpec> {
    (rule_index(), scope(devices), 0.2f64..0.8, 0.0f64..0.3).prop_map(|(rule, scope, rise, gap)| RuleSpec {
        rule,
        scope,
        rise,
        gap,
    })
}

fn update(devices: usize) -> impl Strategy<Value = (UpdTime, UpdKind)> {
    let time = prop_oneof![
        2 => (0.0f64..1.0).prop_map(UpdTime::Frac),
        1 => any::<usize>().prop_map(UpdTime::AtReading),
    ];
    let dev = prop_oneof![5 => 0..devices, 1 => Just(GHOST)];
    let kind = prop_oneof![
        3 => (cal_row(devices), proptest::bool::weighted(0.3))
            .prop_map(|(c, s)| UpdKind::CalUpsert(c, s)),
        2 => (dev.clone(), 0..CAL_CHANNELS.len(), vf_slot())
            .prop_map(|(d, c, v)| UpdKind::CalDelete(d, c, v)),
        2 => (dev.clone(), any::<u8>(), proptest::option::of(-2i64..40))
            .prop_map(|(d, s, f)| UpdKind::DevUpsert(d, s, f)),
        1 => dev.prop_map(UpdKind::DevDelete),
        3 => (rule_spec(devices), any::<bool>()).prop_map(|(r, o)| UpdKind::RuleUpsert(r, o)),
        2 => (rule_spec(devices), MIN..=20 * MIN).prop_map(|(r, g)| UpdKind::ChangeThenDelete(r, g)),
        3 => (rule_index(), scope(devices), any::<bool>())
            .prop_map(|(r, s, o)| UpdKind::RuleDelete(r, s, o)),
    ];
    (time, kind)
}

fn rogue(devices: usize) -> impl Strategy<Value = Rogue> {
    let clock = prop_oneof![
        2 => prop_oneof![3 => 2 * 24 * HOUR..=75 * YEAR, 1 => Just(75 * YEAR)].prop_map(RogueClock::Far),
        2 => (20 * MIN..=5 * HOUR).prop_map(RogueClock::Ahead),
        2 => prop_oneof![Just(0i64), 0..YEAR].prop_map(RogueClock::Epoch1970),
    ];
    let dev = prop_oneof![3 => Just(None), 1 => (0..devices).prop_map(Some)];
    (clock, dev).prop_map(|(clock, dev)| Rogue { clock, dev })
}

fn rogue_line(devices: usize) -> impl Strategy<Value = RogueLine> {
    (0.0f64..1.0, 0usize..3, reading(devices)).prop_map(|(at, rogue, reading)| RogueLine { at, rogue, reading })
}

prop_compose! {
    /// A random scenario.
    pub fn scenario()(devices in 1usize..=6)(
        preset in 0usize..4,
        start in prop_oneof![Just(0i64), 0i64..3_600_000],
        lines in proptest::collection::vec(line(devices), 20..300),
        calibration in proptest::collection::vec(cal_row(devices), 0..8),
        thresholds in proptest::collection::vec(rule_spec(devices), 0..5),
        updates in proptest::collection::vec(update(devices), 0..20),
        final_newline in proptest::bool::weighted(0.8),
        rogues in prop_oneof![
            1 => Just(Vec::new()),
            1 => proptest::collection::vec(rogue(devices), 1..=3),
        ],
        rogue_lines in proptest::collection::vec(rogue_line(devices), 1..30),
        rogue_first in proptest::bool::weighted(0.4),
        devices in Just(devices),
    ) -> Scenario {
        Scenario {
            preset, start, devices, lines, calibration, thresholds, updates, final_newline,
            rogues, rogue_lines, rogue_first,
        }
    }
}

/// A job spec preset: (spec files, model configuration). The event-time
/// settings: 0 the defaults (quorum 3, a warm-up of 100 readings, so small
/// datasets with few devices are held to their end); 1 quorum 1 (the fleet
/// clock is the largest `ts`: the warm-up ends at the first reading and
/// nothing is ever future, which is the rule before rogue clocks); 2 quorum 4
/// and a warm-up of 7 readings; 3 quorum 2, a warm-up of 25 readings and a
/// small `max_future`.
pub fn preset(n: usize) -> (PipelineSpec, Config) {
    let d = Config::documented_defaults();
    match n {
        0 => (PipelineSpec::builtin(), d),
        1 => {
            let files = [
                (
                    "ingest.toml",
                    "kind = \"ingest\"\nlateness = \"5m\"\nepoch = \"1m\"\n\
                     max_future = \"30m\"\nquorum = 1\n\
                     [ranges]\npm25 = { max = 100 }\nx_noise = { min = -10, max = 10 }\n",
                ),
                ("enrich.toml", "kind = \"enrich\"\nreference_retention = \"3h\"\n"),
                (
                    "stats.toml",
                    "kind = \"stats\"\nalpha = 0.3\ntop_k = 3\ntrend_half_life = \"30m\"\n\
                     snapshot_every = \"30m\"\n",
                ),
                ("windows.toml", "kind = \"windows\"\nsize = \"30m\"\nslide = \"10m\"\n"),
                (
                    "alerts.toml",
                    "kind = \"alerts\"\n[[rules]]\nrule_id = \"pm25-high\"\nchannel = \"pm25\"\n\
                     rise_above = 30\nfall_below = 20\n\
                     [[rules]]\nrule_id = \"hum-wet\"\ndevice_id = \"d-1\"\nchannel = \"hum\"\n\
                     rise_above = 70\nfall_below = 60\n",
                ),
            ];
            let mut cfg = d;
            cfg.lateness_ms = 5 * MIN;
            cfg.epoch_ms = MIN;
            cfg.max_future_ms = 30 * MIN;
            cfg.quorum = 1;
            cfg.ranges.insert("pm25".into(), (f64::NEG_INFINITY, 100.0));
            cfg.ranges.insert("x_noise".into(), (-10.0, 10.0));
            cfg.retention_ms = 3 * 60 * MIN;
            cfg.alpha = 0.3;
            cfg.top_k = 3;
            cfg.trend_half_life_ms = 30 * MIN;
            cfg.snapshot_every_ms = 30 * MIN;
            cfg.window_size_ms = 30 * MIN;
            cfg.window_slide_ms = 10 * MIN;
            cfg.rules = vec![
                RuleRow {
                    rule_id: "pm25-high".into(),
                    device_id: "*".into(),
                    channel: "pm25".into(),
                    rise_above: 30.0,
                    fall_below: 20.0,
                },
                RuleRow {
                    rule_id: "hum-wet".into(),
                    device_id: "d-1".into(),
                    channel: "hum".into(),
                    rise_above: 70.0,
                    fall_below: 60.0,
                },
            ];
            (spec_of(&files), cfg)
        }
        2 => {
            let files = [
                (
                    "ingest.toml",
                    "kind = \"ingest\"\nlateness = \"2m\"\nepoch = \"250ms\"\n\
                     max_future = \"2h\"\nquorum = 4\nwarmup = 7\n\
                     default_ranges = false\n[ranges]\ntemp = { min = -40, max = 85 }\n",
                ),
                (
                    "stats.toml",
                    "kind = \"stats\"\nalpha = 1.0\ntop_k = 1\ntrend_half_life = \"7m\"\n\
                     snapshot_every = \"10m\"\n",
                ),
                ("windows.toml", "kind = \"windows\"\nsize = \"1h\"\nslide = \"15m\"\n"),
                ("alerts.toml", "kind = \"alerts\"\nrules = []\n"),
            ];
            let mut cfg = d;
            cfg.lateness_ms = 2 * MIN;
            cfg.epoch_ms = 250;
            cfg.max_future_ms = 2 * HOUR;
            cfg.quorum = 4;
            cfg.warmup = 7;
            cfg.ranges.clear();
            cfg.ranges.insert("temp".into(), (-40.0, 85.0));
            cfg.alpha = 1.0;
            cfg.top_k = 1;
            cfg.trend_half_life_ms = 7 * MIN;
            cfg.snapshot_every_ms = 10 * MIN;
            cfg.window_size_ms = 60 * MIN;
            cfg.window_slide_ms = 15 * MIN;
            cfg.rules = Vec::new();
            (spec_of(&files), cfg)
        }
        _ => {
            let files = [
                (
                    "ingest.toml",
                    "kind = \"ingest\"\nlateness = \"0s\"\nepoch = \"1ms\"\n\
                     max_future = \"5m\"\nquorum = 2\nwarmup = 25\n",
                ),
                (
                    "stats.toml",
                    "kind = \"stats\"\ntrend_half_life = \"3m\"\n\
                     snapshot_every = \"7m\"\n",
                ),
                ("windows.toml", "kind = \"windows\"\nsize = \"20m\"\n"),
            ];
            let mut cfg = d;
            cfg.lateness_ms = 0;
            cfg.epoch_ms = 1;
            cfg.max_future_ms = 5 * MIN;
            cfg.quorum = 2;
            cfg.warmup = 25;
            cfg.trend_half_life_ms = 3 * MIN;
            cfg.snapshot_every_ms = 7 * MIN;
            cfg.window_size_ms = 20 * MIN;
            cfg.window_slide_ms = 20 * MIN;
            (spec_of(&files), cfg)
        }
    }
}

pub fn spec_of(files: &[(&str, &str)]) -> PipelineSpec {
    let files: Vec<(String, String)> = files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
    PipelineSpec::from_files(&files, true).expect("the preset specs are valid")
}

/// A number as JSON text, optionally in exponent notation.
fn num(x: f64, exp: bool) -> String {
    if exp {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn channel_value(chan: usize, v: &Val) -> Option<Option<f64>> {
    // (usual lo, usual hi, decimals?, junk values, edges)
    let (lo, hi, dec, junk, edge): (f64, f64, bool, [f64; 3], (f64, f64)) = match chan {
        0 => (0.0, 80.0, true, [-0.1, 1000.5, 5000.0], (0.0, 1000.0)),
        1 => (400.0, 1500.0, false, [-1.0, 10001.0, 65535.0], (0.0, 10000.0)),
        2 => (0.0, 800.0, false, [-5.0, 100001.0, 999999.0], (0.0, 100000.0)),
        3 => (15.0, 30.0, true, [-40.5, 85.1, 150.0], (-40.0, 85.0)),
        _ => (20.0, 80.0, true, [-0.5, 100.5, 140.0], (0.0, 100.0)),
    };
    match v {
        Val::Absent => None,
        Val::Null => Some(None),
        Val::Normal(u) => {
            let x = lo + u * (hi - lo);
            Some(Some(if dec { round1(x) } else { x.round() }))
        }
        Val::Junk(k) => Some(Some(junk[*k as usize % 3])),
        Val::Edge(b) => Some(Some(if *b { edge.1 } else { edge.0 })),
    }
}

fn extra_value(idx: usize, u: f64) -> f64 {
    match idx {
        0 => round1(u * 80.0),
        1 => round1(-50.0 + u * 100.0),
        _ => (u * 200.0).round(),
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn bad_line(b: &Bad, clock: i64) -> Vec<u8> {
    let d = q(DEVICES[0]);
    let pick = |k: &u8, opts: &[String]| opts[*k as usize % opts.len()].clone().into_bytes();
    match b {
        Bad::Utf8(k) => {
            let mut v = format!("{{\"device_id\":{d},\"ts\":{clock},\"pm25\":\"").into_bytes();
            v.push(0xff);
            v.extend_from_slice(b"\"}");
            if k % 2 == 0 {
                v
            } else {
                vec![0xfe, 0xff, b'{']
            }
        }
        Bad::Empty(k) => pick(k, &["".into(), "   ".into(), "\t".into(), " \r".into()]),
        Bad::Json(k) => pick(
            k,
            &[
                format!("{{\"device_id\":{d},\"ts\":{clock}"),
                "not json at all".into(),
                format!("{{\"device_id\":{d},\"ts\":{clock}}} trailing"),
                format!("{{\"device_id\":{d},}}"),
                "{'device_id':'d-1'}".into(),
                format!("{{\"device_id\":{d},\"ts\":{clock},\"pm25\":1e400}}"),
            ],
        ),
        Bad::NotObject(k) => pick(
            k,
            &[
                "[1,2]".into(),
                "42".into(),
                "\"text\"".into(),
                "null".into(),
                "true".into(),
                format!("[{{\"device_id\":{d},\"ts\":{clock}}}]"),
            ],
        ),
        Bad::MissingDevice(k) => pick(
            k,
            &[
                format!("{{\"ts\":{clock},\"pm25\":12}}"),
                format!("{{\"ts\":{clock},\"pm25\":\"bad\",\"raw\":1}}"),
                "{}".into(),
            ],
        ),
        Bad::InvalidDevice(k) => pick(
            k,
            &[
                format!("{{\"device_id\":\"\",\"ts\":{clock}}}"),
                format!("{{\"device_id\":7,\"ts\":{clock}}}"),
                format!("{{\"device_id\":null,\"ts\":{clock},\"pm25\":1}}"),
                "{\"device_id\":[\"d-1\"],\"ts\":\"x\"}".to_string(),
                format!("{{\"device_id\":{{\"id\":1}},\"ts\":{clock},\"pm25\":\"x\"}}"),
                "{\"device_id\":true}".into(),
                // Longer than 128 bytes: in bytes (65 two-byte letters), not characters.
                format!("{{\"device_id\":\"{}\",\"ts\":{clock}}}", "d".repeat(129)),
                format!("{{\"pm25\":1,\"device_id\":\"{}\",\"ts\":\"x\"}}", "é".repeat(65)),
            ],
        ),
        Bad::MissingTs(k) => pick(
            k,
            &[
                format!("{{\"device_id\":{d},\"pm25\":3}}"),
                format!("{{\"device_id\":{d}}}"),
                format!("{{\"device_id\":{d},\"co2\":null}}"),
            ],
        ),
        Bad::InvalidTs(k) => pick(
            k,
            &[
                format!("{{\"device_id\":{d},\"ts\":\"{clock}\"}}"),
                format!("{{\"device_id\":{d},\"ts\":{clock}.5}}"),
                format!("{{\"device_id\":{d},\"ts\":-1,\"pm25\":4}}"),
                format!("{{\"device_id\":{d},\"ts\":9007199254740992}}"),
                format!("{{\"device_id\":{d},\"ts\":1e12}}"),
                format!("{{\"device_id\":{d},\"ts\":null}}"),
                format!("{{\"device_id\":{d},\"ts\":18446744073709551616}}"),
                format!("{{\"device_id\":{d},\"ts\":true,\"pm25\":\"x\"}}"),
            ],
        ),
        Bad::InvalidValue(k) => pick(
            k,
            &[
                format!("{{\"device_id\":{d},\"ts\":{clock},\"pm25\":\"3\"}}"),
                format!("{{\"device_id\":{d},\"ts\":{clock},\"co2\":true}}"),
                format!("{{\"device_id\":{d},\"ts\":{clock},\"pm25\":1,\"voc\":[1]}}"),
                format!("{{\"device_id\":{d},\"ts\":{clock},\"x_noise\":{{\"v\":1}}}}"),
                format!("{{\"device_id\":{d},\"ts\":{clock},\"hum\":\"wet\",\"raw\":1}}"),
            ],
        ),
        Bad::Reserved(k) => {
            let f = ["raw", "junk", "late", "line_no", "calibrated", "device", "future"][*k as usize % 7];
            let v = ["1", "null", "[]", "{}", "\"x\"", "false"][(*k as usize / 6) % 6];
            format!("{{\"device_id\":{d},\"ts\":{clock},\"pm25\":5,\"{f}\":{v}}}").into_bytes()
        }
    }
}

fn device_name(i: usize) -> &'static str {
    DEVICES[i]
}

fn rule_thresholds(r: &RuleSpec) -> (f64, f64) {
    let (_, _, lo, hi) = RULES[r.rule];
    let rise = round1(lo + r.rise * (hi - lo));
    let fall = round1(rise - r.gap * (hi - lo));
    (rise, fall)
}

/// A reading line: `device_id`, `ts`, the channels, rotated.
fn reading_line(device: &str, ts: i64, r: &ReadingSpec) -> Vec<u8> {
    let mut fields = vec![format!("\"device_id\":{}", q(device)), format!("\"ts\":{ts}")];
    for (c, v) in r.vals.iter().enumerate() {
        match channel_value(c, v) {
            None => {}
            Some(None) => fields.push(format!("\"{}\":null", STANDARD[c])),
            Some(Some(x)) => fields.push(format!("\"{}\":{}", STANDARD[c], num(x, r.exp_style))),
        }
    }
    if let Some((e, u)) = r.extra {
        fields.push(format!("{}:{}", q(EXTRA[e]), num(extra_value(e, u), r.exp_style)));
    }
    let k = r.rotate % fields.len();
    fields.rotate_left(k);
    let mut s = format!("{{{}}}", fields.join(","));
    if r.crlf {
        s.push('\r');
    }
    s.into_bytes()
}

/// One line of the file, before rendering.
enum Item<'a> {
    Line(&'a LineSpec),
    /// A reading of the rogue of this index.
    Rogue(usize, &'a ReadingSpec),
}

impl Scenario {
    /// The lines in arrival order: the rogue lines inserted among the
    /// others at their fractions (the first one first when `rogue_first`).
    fn arrival_order(&self) -> Vec<Item<'_>> {
        let n = self.lines.len();
        let mut rogue: Vec<(usize, usize, Item<'_>)> = Vec::new();
        if !self.rogues.is_empty() {
            for (k, l) in self.rogue_lines.iter().enumerate() {
                let at = if k == 0 && self.rogue_first { 0 } else { ((l.at * n as f64) as usize).min(n) };
                rogue.push((at, k, Item::Rogue(l.rogue % self.rogues.len(), &l.reading)));
            }
        }
        // Stable by position: at one position, rogue lines in their order,
        // before the line there.
        rogue.sort_by_key(|(at, k, _)| (*at, *k));
        let mut out = Vec::with_capacity(n + rogue.len());
        let mut it = rogue.into_iter().peekable();
        for (i, l) in self.lines.iter().enumerate() {
            while let Some((_, _, item)) = it.next_if(|(at, _, _)| *at <= i) {
                out.push(item);
            }
            out.push(Item::Line(l));
        }
        out.extend(it.map(|(_, _, item)| item));
        out
    }

    /// The dataset files, the spec and the model configuration.
    pub fn render(&self) -> (DatasetFiles, PipelineSpec, Config) {
        let (spec, cfg) = preset(self.preset);
        let start = T0 + self.start;
        let mut clock = start;
        // The largest accepted ts, for the Boundary and JustLate timings
        // (rogue readings left out: they are meant to be set aside).
        let mut max_ts: Option<i64> = None;
        let mut bytes: Vec<u8> = Vec::new();
        let mut reading_ts = Vec::new();
        let items = self.arrival_order();
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let mut line = match item {
                Item::Line(LineSpec::Bad(b)) => bad_line(b, clock),
                Item::Line(LineSpec::Reading(r)) => {
                    clock += r.step;
                    let ts = match (&r.timing, max_ts) {
                        (Timing::Jitter(j), _) => clock + j,
                        (Timing::Late(d), _) => clock - d,
                        (Timing::Boundary, Some(m)) => m - cfg.lateness_ms,
                        (Timing::JustLate, Some(m)) => m - cfg.lateness_ms - 1,
                        (_, None) => clock,
                    };
                    let late = max_ts.is_some_and(|m| m - ts > cfg.lateness_ms);
                    if !late {
                        max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
                    }
                    reading_ts.push(ts);
                    reading_line(device_name(r.dev), ts, r)
                }
                Item::Rogue(idx, r) => {
                    let rogue = &self.rogues[idx];
                    let jitter = match r.timing {
                        Timing::Jitter(j) => j,
                        _ => 0,
                    };
                    let ts = match rogue.clock {
                        RogueClock::Far(off) | RogueClock::Ahead(off) => clock + off + jitter,
                        RogueClock::Epoch1970(base) => base + (clock - start) + jitter,
                    };
                    let dev = rogue.dev.map_or(ROGUE_IDS[idx], device_name);
                    reading_line(dev, ts.clamp(0, MAX_TS), r)
                }
            };
            if i + 1 < n || self.final_newline {
                line.push(b'\n');
            }
            bytes.append(&mut line);
        }
        let end = clock.max(start + 1);

        let mut devices = String::from("device_id, site ,model\n");
        for i in 0..self.devices {
            let _ = writeln!(devices, "{}, site-{} ,AQ {}", device_name(i), i % 3, 100 + i);
        }

        let vf = |slot: i64| start + slot * 20 * MIN;
        let mut calibration = String::from("device_id,channel,gain,offset,valid_from,note\n");
        for c in &self.calibration {
            let _ = writeln!(
                calibration,
                "{},{},{},{},{},extra column",
                device_name(c.dev),
                CAL_CHANNELS[c.chan],
                c.gain,
                c.offset,
                c.vf.map(|s| vf(s).to_string()).unwrap_or_default()
            );
        }

        let mut thresholds = String::from("rule_id,device_id,channel,rise_above,fall_below,note\n");
        for r in &self.thresholds {
            let (rise, fall) = rule_thresholds(r);
            let _ = writeln!(
                thresholds,
                "{},{},{},{},{},ignored",
                RULES[r.rule].0,
                r.scope.map_or("*", device_name),
                RULES[r.rule].1,
                rise,
                fall
            );
        }

        let mut updates = String::new();
        for (when, kind) in &self.updates {
            let ts = match when {
                UpdTime::Frac(f) => start + ((end - start) as f64 * f) as i64 / 1000 * 1000,
                UpdTime::AtReading(k) if !reading_ts.is_empty() => reading_ts[k % reading_ts.len()],
                UpdTime::AtReading(_) => start,
            };
            let items = match kind {
                UpdKind::ChangeThenDelete(r, gap) => vec![
                    (ts, UpdKind::RuleUpsert(r.clone(), false)),
                    (ts + gap, UpdKind::RuleDelete(r.rule, r.scope, false)),
                ],
                k => vec![(ts, k.clone())],
            };
            for (ts, kind) in &items {
                let (table, op, row) = match kind {
                    UpdKind::CalUpsert(c, strings) => {
                        let mut row = serde_json::json!({
                            "device_id": device_name(c.dev),
                            "channel": CAL_CHANNELS[c.chan],
                        });
                        if *strings {
                            row["gain"] = serde_json::json!(c.gain.to_string());
                            row["offset"] = serde_json::json!(c.offset.to_string());
                        } else {
                            row["gain"] = serde_json::json!(c.gain);
                            row["offset"] = serde_json::json!(c.offset);
                        }
                        if let Some(s) = c.vf {
                            row["valid_from"] = serde_json::json!(vf(s));
                        }
                        ("calibration", "upsert", row)
                    }
                    UpdKind::CalDelete(d, c, v) => {
                        let mut row = serde_json::json!({
                            "device_id": device_name(*d),
                            "channel": CAL_CHANNELS[*c],
                        });
                        if let Some(s) = v {
                            row["valid_from"] = serde_json::json!(vf(*s));
                        }
                        ("calibration", "delete", row)
                    }
                    UpdKind::DevUpsert(d, site, floor) => {
                        let mut row = serde_json::json!({
                            "device_id": device_name(*d),
                            "site": format!("site-{}", site % 4),
                            "note": null,
                        });
                        if let Some(f) = floor {
                            row["floor"] = serde_json::json!(f);
                        }
                        ("devices", "upsert", row)
                    }
                    UpdKind::DevDelete(d) => ("devices", "delete", serde_json::json!({"device_id": device_name(*d)})),
                    UpdKind::RuleUpsert(r, omit) => {
                        let (rise, fall) = rule_thresholds(r);
                        let mut row = serde_json::json!({
                            "rule_id": RULES[r.rule].0,
                            "channel": RULES[r.rule].1,
                            "rise_above": rise,
                            "fall_below": fall,
                        });
                        if (r.rise * 1000.0) as i64 % 3 == 0 {
                            // Numbers may be numeric strings.
                            row["rise_above"] = serde_json::json!(rise.to_string());
                            row["fall_below"] = serde_json::json!(fall.to_string());
                        }
                        match r.scope {
                            Some(d) => row["device_id"] = serde_json::json!(device_name(d)),
                            None if !omit => row["device_id"] = serde_json::json!("*"),
                            None => {}
                        }
                        ("rules", "upsert", row)
                    }
                    UpdKind::ChangeThenDelete(..) => unreachable!("expanded above"),
                    UpdKind::RuleDelete(rule, scope, omit) => {
                        let mut row = serde_json::json!({"rule_id": RULES[*rule].0});
                        match scope {
                            Some(d) => row["device_id"] = serde_json::json!(device_name(*d)),
                            None if !omit => row["device_id"] = serde_json::json!("*"),
                            None => {}
                        }
                        ("rules", "delete", row)
                    }
                };
                let line = serde_json::json!({"ts": ts, "table": table, "op": op, "row": row});
                let _ = writeln!(updates, "{line}");
            }
        }

        let files = DatasetFiles {
            readings: bytes,
            devices_csv: Some(devices),
            calibration_csv: Some(calibration),
            thresholds_csv: Some(thresholds),
            updates_jsonl: Some(updates),
        };
        (files, spec, cfg)
    }
}
