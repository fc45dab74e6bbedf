//! Per-device signal model: daily cycles, AR(1) noise and pollution episodes.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, Gamma, StandardNormal};

use crate::plan::{DAY, HOUR, MINUTE};

/// Channel slots of a reading (`values` arrays).
pub(crate) const PM25: usize = 0;
pub(crate) const CO2: usize = 1;
pub(crate) const VOC: usize = 2;
pub(crate) const TEMP: usize = 3;
pub(crate) const HUM: usize = 4;
pub(crate) const REF_PM25: usize = 5;
/// Number of value slots.
pub(crate) const SLOTS: usize = 6;
/// Marker for a `null` value.
pub(crate) const NULL: i32 = i32::MIN;
/// Whether a slot holds tenths (1 decimal) rather than an integer.
pub(crate) const TENTHS: [bool; SLOTS] = [true, false, false, true, true, true];
/// JSON field names of the slots.
pub(crate) const NAMES: [&str; SLOTS] = ["pm25", "co2", "voc", "temp", "hum", "ref_pm25"];

/// Probability that a channel value is null.
const NULL_P: f64 = 0.005;
/// AR(1) coefficient of the noise processes (per reading).
const AR: f32 = 0.8;

#[derive(Clone, Copy, Debug)]
struct Episode {
    start: i64,
    end: i64,
    amp: f32,
}

impl Episode {
    fn value(&self, ts: i64) -> f64 {
        if ts < self.start || ts >= self.end {
            return 0.0;
        }
        let dur = (self.end - self.start) as f64;
        let up = (10.0 * MINUTE as f64).min(dur / 4.0);
        let down = (20.0 * MINUTE as f64).min(dur / 3.0);
        let f = ((ts - self.start) as f64 / up).min((self.end - ts) as f64 / down).min(1.0);
        self.amp as f64 * f
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Pm,
    Co2,
    Voc,
}

/// Model and state of one device.
pub(crate) struct Device {
    pub phase: i64,
    pub from: i64,
    pub until: i64,
    pm_base: f32,
    co2_peak: f32,
    occ_on: f32,
    occ_off: f32,
    weekend: f32,
    temp_base: f32,
    temp_day: f32,
    hum_base: f32,
    hum_day: f32,
    voc_base: f32,
    voc_occ: f32,
    drift_per_ms: f64,
    gain_true: f32,
    offset_true: f32,
    /// Mean gap between episodes in ms, per kind.
    gap: [f32; 3],
    ep: [Episode; 3],
    /// Unit-variance AR(1) noise state per channel (pm25, co2, voc, temp, hum).
    x: [f32; 5],
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// 1 between `on` and `off` hours of the (UTC) day, with smooth ramps.
fn schedule(h: f64, on: f64, off: f64, ramp_up: f64, ramp_down: f64) -> f64 {
    smoothstep((h - on) / ramp_up) * (1.0 - smoothstep((h - off) / ramp_down))
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    z as f32
}

impl Device {
    /// Draws a device model. `drift` is in ppm/day; `truth` is the raw pm25
    /// sensor's (gain, offset) in reference-channel mode.
    pub fn new(
        rng: &mut ChaCha8Rng,
        interval: i64,
        window: (i64, i64),
        drift: f64,
        truth: Option<(f64, f64)>,
    ) -> Device {
        // Episode rates vary across the fleet: Gamma(2, mean/2) episodes/day.
        let mut gap = |mean_per_day: f64| -> f32 {
            let per_day: f64 = Gamma::new(2.0, mean_per_day / 2.0).expect("valid gamma").sample(rng);
            (DAY as f64 / per_day.max(0.05)) as f32
        };
        let gap = [gap(2.0), gap(1.0), gap(0.5)];
        let u = |rng: &mut ChaCha8Rng, lo: f32, hi: f32| rng.random_range(lo..hi);
        let pm_base = 3.0 + 12.0 * rng.random::<f32>().powf(1.5);
        let (gain_true, offset_true) = truth.unwrap_or((1.0, 0.0));
        let mut d = Device {
            phase: rng.random_range(0..interval),
            from: window.0,
            until: window.1,
            pm_base,
            co2_peak: u(rng, 800.0, 1400.0),
            occ_on: u(rng, 7.0, 9.5),
            occ_off: u(rng, 16.5, 19.0),
            weekend: u(rng, 0.05, 0.2),
            temp_base: u(rng, 19.0, 21.0),
            temp_day: u(rng, 1.5, 3.5),
            hum_base: u(rng, 35.0, 47.0),
            hum_day: u(rng, 0.0, 6.0),
            voc_base: u(rng, 50.0, 120.0),
            voc_occ: u(rng, 80.0, 250.0),
            drift_per_ms: drift / DAY as f64,
            gain_true: gain_true as f32,
            offset_true: offset_true as f32,
            gap,
            ep: [Episode { start: 0, end: 0, amp: 0.0 }; 3],
            x: [0.0; 5],
        };
        for x in &mut d.x {
            *x = normal(rng);
        }
        for (i, kind) in [Kind::Pm, Kind::Co2, Kind::Voc].into_iter().enumerate() {
            d.ep[i] = d.next_episode(rng, kind, window.0, 0);
        }
        d
    }

    fn next_episode(&self, rng: &mut ChaCha8Rng, kind: Kind, after: i64, min_gap: i64) -> Episode {
        let i = kind as usize;
        let e: f64 = Exp1.sample(rng);
        let start = after + min_gap + (e * self.gap[i] as f64) as i64;
        let (dur_max, amp) = match kind {
            Kind::Pm => {
                let peak = 40.0 + 110.0 * rng.random::<f32>().powf(1.5);
                (120, peak - self.pm_base * 1.2)
            }
            Kind::Co2 => (120, rng.random_range(300.0..900.0)),
            Kind::Voc => (90, rng.random_range(250.0..600.0)),
        };
        let dur = rng.random_range(20 * MINUTE..=dur_max * MINUTE);
        Episode { start, end: start + dur, amp }
    }

    /// Produces the values for the reading at `ts` (readings of one device
    /// must come in increasing `ts`). `t0` is the dataset start (drift origin).
    pub fn step(&mut self, rng: &mut ChaCha8Rng, ts: i64, t0: i64, reference: bool) -> [i32; SLOTS] {
        for (i, kind) in [Kind::Pm, Kind::Co2, Kind::Voc].into_iter().enumerate() {
            while ts >= self.ep[i].end {
                self.ep[i] = self.next_episode(rng, kind, self.ep[i].end, 30 * MINUTE);
            }
        }
        let b = (1.0 - AR * AR).sqrt();
        for x in &mut self.x {
            *x = AR * *x + b * normal(rng);
        }
        let [xp, xc, xv, xt, xh] = self.x.map(|v| v as f64);

        let h = ts.rem_euclid(DAY) as f64 / HOUR as f64;
        let weekday = (ts.div_euclid(DAY) + 3).rem_euclid(7); // 0 = Monday
        let weekend = weekday >= 5;
        let lunch = 1.0 - 0.15 * smoothstep(1.0 - (h - 12.5).abs() / 0.75);
        let mut occ = schedule(h, self.occ_on as f64, self.occ_off as f64, 1.0, 1.5) * lunch;
        let mut heat = schedule(h, self.occ_on as f64 - 1.5, self.occ_off as f64 + 0.5, 1.0, 1.0);
        if weekend {
            occ *= self.weekend as f64;
            heat *= 0.3;
        }
        let ep_pm = self.ep[0].value(ts);
        let ep_co2 = self.ep[1].value(ts);
        let ep_voc = self.ep[2].value(ts);

        let pm_base = self.pm_base as f64 * (1.0 + 0.2 * occ);
        let pm_true = (pm_base + ep_pm + xp * (0.5 + 0.06 * self.pm_base as f64 + 0.06 * ep_pm)).max(0.0);
        let co2_mean = 420.0 + (self.co2_peak as f64 - 420.0) * occ + ep_co2 + self.drift_per_ms * (ts - t0) as f64;
        let co2 = (co2_mean + xc * (12.0 + 0.03 * (co2_mean - 420.0).max(0.0))).max(380.0);
        let voc_mean = self.voc_base as f64 + self.voc_occ as f64 * occ + ep_voc;
        let voc = (voc_mean + xv * (8.0 + 0.04 * voc_mean)).max(0.0);
        let temp = self.temp_base as f64 + self.temp_day as f64 * heat + 0.3 * occ + 0.15 * xt;
        let day_phase = (h - 6.0) / 24.0 * std::f64::consts::TAU;
        let hum = (self.hum_base as f64 + self.hum_day as f64 * occ - 1.5 * heat + 2.0 * day_phase.sin() + 0.8 * xh)
            .clamp(0.0, 100.0);

        let tenths = |v: f64| (v * 10.0).round() as i32;
        let mut v = [NULL; SLOTS];
        if reference {
            let raw =
                pm_true * self.gain_true as f64 + self.offset_true as f64 + normal(rng) as f64 * (0.8 + 0.03 * pm_true);
            v[PM25] = tenths(raw.max(0.0));
            v[REF_PM25] = tenths(pm_true);
        } else {
            v[PM25] = tenths(pm_true);
        }
        v[CO2] = co2.round() as i32;
        v[VOC] = voc.round() as i32;
        v[TEMP] = tenths(temp);
        v[HUM] = tenths(hum);
        let used = if reference { SLOTS } else { SLOTS - 1 };
        for slot in v.iter_mut().take(used) {
            if rng.random_bool(NULL_P) {
                *slot = NULL;
            }
        }
        v
    }
}
