//! Everything decided before the first reading: device ids and registry,
//! calibration, rules, the update stream, activity windows, drift and truth.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::GenConfig;

/// Independent random streams, so that e.g. the reference data does not
/// change when only the readings-related options change.
pub(crate) mod stream {
    pub const REGISTRY: u64 = 1;
    pub const CALIBRATION: u64 = 2;
    pub const RULES: u64 = 3;
    pub const UPDATES: u64 = 4;
    pub const TRUTH: u64 = 5;
    pub const DRIFT: u64 = 6;
    pub const UNKNOWN: u64 = 7;
    pub const DEVICE_MODEL: u64 = 8;
    pub const SIGNAL: u64 = 9;
    pub const JUNK: u64 = 10;
}

pub(crate) const MINUTE: i64 = 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 86_400_000;

/// Number of devices that report but are never registered.
pub(crate) const UNKNOWN_DEVICES: usize = 3;

pub(crate) const MODELS: [&str; 4] = ["AQ-100", "AQ-200", "AQ-250", "AQ-300"];

pub(crate) fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Registry row of a device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceMeta {
    pub model: usize,
    pub site: usize,
    pub owner: usize,
}

/// One calibration version.
#[derive(Clone, Debug)]
pub(crate) struct CalRow {
    pub device: usize,
    pub channel: &'static str,
    pub gain: f64,
    pub offset: f64,
    pub valid_from: Option<i64>,
}

/// One alert rule; `device == None` means `*`.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub rule_id: &'static str,
    pub device: Option<usize>,
    pub channel: &'static str,
    pub rise_above: f64,
    pub fall_below: f64,
}

/// A reference-data change. `None` payloads are deletes.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    Device {
        device: usize,
        meta: Option<DeviceMeta>,
    },
    Calibration {
        device: usize,
        channel: &'static str,
        /// (gain, offset)
        value: Option<(f64, f64)>,
        valid_from: Option<i64>,
    },
    Rule {
        rule_id: &'static str,
        device: Option<usize>,
        /// (channel, rise_above, fall_below)
        spec: Option<(&'static str, f64, f64)>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Update {
    pub ts: i64,
    pub change: Change,
}

pub(crate) struct Plan {
    pub start: i64,
    pub end: i64,
    /// Ids of every device that may report: fleet, then the new device (if
    /// any), then the unknown devices.
    pub ids: Vec<String>,
    /// Registry rows of the fleet devices (`ids[..meta.len()]`).
    pub meta: Vec<DeviceMeta>,
    pub calibration: Vec<CalRow>,
    pub rules: Vec<Rule>,
    /// Sorted by ts.
    pub updates: Vec<Update>,
    /// Per reporting device: [from, until) in which it reports.
    pub windows: Vec<(i64, i64)>,
    /// Per reporting device: co2 drift in ppm/day.
    pub drift: Vec<f64>,
    /// Per reporting device: true pm25 (gain, offset); empty unless
    /// `reference_channel`.
    pub truth: Vec<(f64, f64)>,
}

pub(crate) fn device_id(i: usize) -> String {
    format!("dev-{:06}", i + 1)
}

pub(crate) fn site_name(s: usize) -> String {
    format!("site-{:02}", s + 1)
}

pub(crate) fn owner_name(o: usize) -> String {
    format!("owner-{}", o + 1)
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (v * m).round() / m
}

fn pick_model(rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.random();
    match u {
        u if u < 0.40 => 0,
        u if u < 0.75 => 1,
        u if u < 0.90 => 2,
        _ => 3,
    }
}

/// A calibration (gain, offset) for `channel`.
fn calibration_value(rng: &mut ChaCha8Rng, channel: &str) -> (f64, f64) {
    let gain = round_to(rng.random_range(0.8..=1.2), 3);
    let offset = if channel == "co2" {
        round_to(rng.random_range(-30.0..=30.0), 1)
    } else {
        round_to(rng.random_range(-5.0..=5.0), 2)
    };
    (gain, offset)
}

impl Plan {
    pub fn new(cfg: &GenConfig) -> Plan {
        let n = cfg.devices;
        let start = cfg.start_ms;
        let dur = cfg.duration_ms();
        let end = start + dur;
        // A time in the dataset at fraction `f` of its duration, on a whole second.
        let at = |f: f64| -> i64 {
            let t = start + ((dur as f64) * f.clamp(0.0, 1.0)) as i64;
            (start + (t - start) / 1000 * 1000).min(end - 1).max(start)
        };

        // --- registry ---
        let mut rng = rng_for(cfg.seed, stream::REGISTRY);
        let n_sites = n.div_ceil(8).max(2);
        let n_owners = n_sites.div_ceil(3).max(2);
        let site_owner: Vec<usize> = (0..n_sites).map(|_| rng.random_range(0..n_owners)).collect();
        let meta: Vec<DeviceMeta> = (0..n)
            .map(|_| {
                let model = pick_model(&mut rng);
                let site = rng.random_range(0..n_sites);
                DeviceMeta { model, site, owner: site_owner[site] }
            })
            .collect();

        // --- ids and windows ---
        let mut ids: Vec<String> = (0..n).map(device_id).collect();
        let mut windows = vec![(start, end); n];
        let new_device = if cfg.updates {
            ids.push(device_id(n));
            windows.push((at(1.0 / 3.0), end));
            Some(n)
        } else {
            None
        };
        let mut urng = rng_for(cfg.seed, stream::UNKNOWN);
        for k in 0..UNKNOWN_DEVICES {
            ids.push(device_id(n + 1 + k));
            let len = urng.random_range(15 * MINUTE..=60 * MINUTE);
            let from = start + urng.random_range(0..=(dur - len).max(0));
            windows.push((from, from + len));
        }

        // --- calibration ---
        let mut rng = rng_for(cfg.seed, stream::CALIBRATION);
        let mut calibration = Vec::new();
        let mut calibrated: Vec<(usize, &'static str)> = Vec::new();
        for d in 0..n {
            if !rng.random_bool(0.5) {
                continue;
            }
            let u: f64 = rng.random();
            let channels: &[&'static str] = if u < 0.4 {
                &["pm25"]
            } else if u < 0.7 {
                &["co2"]
            } else {
                &["pm25", "co2"]
            };
            for &ch in channels {
                let (gain, offset) = calibration_value(&mut rng, ch);
                calibration.push(CalRow { device: d, channel: ch, gain, offset, valid_from: None });
                calibrated.push((d, ch));
            }
        }
        // Recalibrations: ~10% of calibrated devices (~5% of the fleet), at least one.
        let mut recal: Vec<(usize, &'static str)> = Vec::new();
        let mut last_dev = usize::MAX;
        for &(d, ch) in &calibrated {
            if d != last_dev && rng.random_bool(0.1) {
                recal.push((d, ch));
                last_dev = d;
            }
        }
        if recal.is_empty() && !calibrated.is_empty() {
            recal.push(calibrated[rng.random_range(0..calibrated.len())]);
        }
        for (d, ch) in recal {
            let (gain, offset) = calibration_value(&mut rng, ch);
            let valid_from = at(rng.random_range(0.3..0.7)) / MINUTE * MINUTE;
            let pos =
                calibration.iter().rposition(|r| r.device == d && r.channel == ch).expect("recalibrated row exists");
            calibration.insert(
                pos + 1,
                CalRow { device: d, channel: ch, gain, offset, valid_from: Some(valid_from.max(start)) },
            );
        }

        // --- rules ---
        let mut rng = rng_for(cfg.seed, stream::RULES);
        let strict_dev = rng.random_range(0..n);
        let loose_dev = rng.random_range(0..n);
        let rules = vec![
            Rule { rule_id: "pm25-high", device: None, channel: "pm25", rise_above: 35.0, fall_below: 25.0 },
            Rule { rule_id: "co2-high", device: None, channel: "co2", rise_above: 1000.0, fall_below: 800.0 },
            Rule { rule_id: "voc-high", device: None, channel: "voc", rise_above: 500.0, fall_below: 350.0 },
            // A sensitive room (e.g. a nursery) with a stricter pm25 rule.
            Rule {
                rule_id: "pm25-high",
                device: Some(strict_dev),
                channel: "pm25",
                rise_above: 25.0,
                fall_below: 15.0,
            },
            // A gym with a looser co2 rule.
            Rule {
                rule_id: "co2-high",
                device: Some(loose_dev),
                channel: "co2",
                rise_above: 1400.0,
                fall_below: 1100.0,
            },
        ];

        // --- updates ---
        let mut updates = Vec::new();
        if cfg.updates {
            let mut rng = rng_for(cfg.seed, stream::UPDATES);
            let rand_ts = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| at(rng.random_range(lo..hi));
            let scale = n as f64 * cfg.hours / 24.0;
            let count = |rate: f64, min: usize| ((rate * scale).round() as usize).max(min);

            // Decommissioned device: stops reporting, then is deleted.
            let retired = if n >= 10 {
                let mut d = rng.random_range(0..n);
                while d == strict_dev || d == loose_dev {
                    d = (d + 1) % n;
                }
                let ts = rand_ts(&mut rng, 0.5, 0.9);
                let silent = rng.random_range(0..=30 * MINUTE);
                windows[d].1 = (ts - silent).max(start);
                updates.push(Update { ts, change: Change::Device { device: d, meta: None } });
                Some(d)
            } else {
                None
            };
            let pick_active = |rng: &mut ChaCha8Rng| loop {
                let d = rng.random_range(0..n);
                if Some(d) != retired || n == 1 {
                    break d;
                }
            };

            // The new device gets registered (and calibrated) halfway through.
            if let Some(nd) = new_device {
                let site = rng.random_range(0..n_sites);
                let ts = at(0.5);
                updates.push(Update {
                    ts,
                    change: Change::Device {
                        device: nd,
                        meta: Some(DeviceMeta { model: pick_model(&mut rng), site, owner: site_owner[site] }),
                    },
                });
                updates.push(Update {
                    ts: (ts + MINUTE).min(end - 1),
                    change: Change::Calibration {
                        device: nd,
                        channel: "pm25",
                        value: Some(calibration_value(&mut rng, "pm25")),
                        valid_from: None,
                    },
                });
            }

            // Devices moving to another site (sometimes with a new model).
            for _ in 0..count(0.01, 1) {
                let d = pick_active(&mut rng);
                let site = rng.random_range(0..n_sites);
                let model = if rng.random_bool(0.1) { pick_model(&mut rng) } else { meta[d].model };
                updates.push(Update {
                    ts: rand_ts(&mut rng, 0.0, 1.0),
                    change: Change::Device {
                        device: d,
                        meta: Some(DeviceMeta { model, site, owner: site_owner[site] }),
                    },
                });
            }

            // New calibrations.
            for _ in 0..count(0.03, 2) {
                let d = pick_active(&mut rng);
                let ch = if rng.random_bool(0.6) { "pm25" } else { "co2" };
                updates.push(Update {
                    ts: rand_ts(&mut rng, 0.0, 1.0),
                    change: Change::Calibration {
                        device: d,
                        channel: ch,
                        value: Some(calibration_value(&mut rng, ch)),
                        valid_from: None,
                    },
                });
            }

            // Deleted calibration rows (distinct existing rows).
            if !calibration.is_empty() {
                let k = count(0.003, 1).min(calibration.len());
                for i in sample(&mut rng, calibration.len(), k).into_vec() {
                    let row = &calibration[i];
                    updates.push(Update {
                        ts: rand_ts(&mut rng, 0.0, 1.0),
                        change: Change::Calibration {
                            device: row.device,
                            channel: row.channel,
                            value: None,
                            valid_from: row.valid_from,
                        },
                    });
                }
            }

            // Rules: lower the fleet-wide voc threshold, add and delete device rules.
            updates.push(Update {
                ts: at(0.4),
                change: Change::Rule { rule_id: "voc-high", device: None, spec: Some(("voc", 400.0, 300.0)) },
            });
            updates.push(Update {
                ts: at(0.6),
                change: Change::Rule {
                    rule_id: "co2-high",
                    device: Some(pick_active(&mut rng)),
                    spec: Some(("co2", 900.0, 700.0)),
                },
            });
            updates.push(Update {
                ts: at(0.75),
                change: Change::Rule { rule_id: "pm25-high", device: Some(strict_dev), spec: None },
            });
            // Stable sort: equal timestamps keep their creation order.
            updates.sort_by_key(|u| u.ts);
        }

        // --- drift ---
        let mut drift = vec![0.0; ids.len()];
        if cfg.drift_co2_ppm_per_day != 0.0 && cfg.drift_fraction > 0.0 {
            let mut rng = rng_for(cfg.seed, stream::DRIFT);
            let k = ((cfg.drift_fraction * n as f64).round() as usize).min(n);
            let mut chosen = sample(&mut rng, n, k).into_vec();
            chosen.sort_unstable();
            for d in chosen {
                drift[d] = cfg.drift_co2_ppm_per_day;
            }
        }

        // --- truth for the reference channel ---
        let truth = if cfg.reference_channel {
            let mut rng = rng_for(cfg.seed, stream::TRUTH);
            (0..ids.len())
                .map(|_| (round_to(rng.random_range(0.7..=1.5), 3), round_to(rng.random_range(-2.0..=4.0), 2)))
                .collect()
        } else {
            Vec::new()
        };

        Plan { start, end, ids, meta, calibration, rules, updates, windows, drift, truth }
    }

    pub fn has_drift(&self) -> bool {
        self.drift.iter().any(|&d| d != 0.0)
    }
}
