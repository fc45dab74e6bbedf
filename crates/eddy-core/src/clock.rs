//! Event time: the fleet clock, and the lateness and future rules.
//!
//! An [`EventClock`] classifies the valid readings of one input (a dataset
//! file, or one partition of the raw topic) in arrival order. It keeps:
//!
//! * each device's **latest** `ts`: the `ts` of its most recent valid
//!   reading that was not late (held readings during the warm-up count
//!   all);
//! * the **fleet clock**: the `quorum`-th largest of the devices' latest
//!   `ts`, never decreasing, once `2·quorum − 1` devices have been seen.
//!   Devices whose clocks run ahead move it only when `quorum` of them agree
//!   at once; a device that sent one wrong `ts` counts as ahead only until
//!   its next reading, and a device that resends old readings does not pull
//!   it down;
//! * the largest `ts` among accepted readings, the base of the
//!   **watermark** (that `ts` minus the lateness), as before the fleet clock.
//!
//! A reading is **future** when the fleet clock runs and its `ts` is more
//! than `max_future` ahead of it: it is set aside and moves neither the
//! watermark nor any job's state. Otherwise it is **late** when its `ts` is
//! more than the lateness below the largest accepted `ts`, and **on time**
//! else. So a fleet whose devices stay within `max_future` of each other is
//! classified exactly as it would be without the future rule. Fleets of
//! fewer than `2·quorum − 1` devices, and a quorum of 1, have no fleet clock.
//!
//! **Warm-up.** Until the clock has seen `2·quorum − 1` devices (or held
//! `warmup` readings, or the input ends), there is no fleet clock: readings
//! are held, in arrival order, and classified when the warm-up ends, each
//! with the watermark it would have had. So a wrong clock on the very first
//! line of the input is caught like any other.
//!
//! ```
//! use eddy_core::clock::{Admitted, ClockConfig, EventClock};
//! use eddy_core::reading::{Position, Reading};
//! use eddy_core::DeviceId;
//!
//! let reading = |device: &str, ts: i64| Reading {
//!     device: DeviceId::intern(device),
//!     ts,
//!     pos: Position::line(1),
//!     values: Default::default(),
//!     late: false,
//!     future: false,
//!     junk: Default::default(),
//! };
//! let mut clock = EventClock::new(ClockConfig { quorum: 2, ..ClockConfig::new(600_000) });
//! // The year 2100 on the first line: held while the clock warms up.
//! assert!(matches!(clock.admit(reading("rogue", 4_102_444_800_000), i64::MIN), Admitted::Held));
//! assert!(matches!(clock.admit(reading("a", 1_767_225_600_000), i64::MIN), Admitted::Held));
//! let Admitted::Released(rs) = clock.admit(reading("b", 1_767_225_601_000), i64::MIN) else { panic!() };
//! assert_eq!(rs.iter().map(|(_, r)| r.future).collect::<Vec<_>>(), [true, false, false]);
//! assert_eq!(clock.watermark(), Some(1_767_225_601_000 - 600_000));
//! ```

use serde::{Deserialize, Serialize};

use crate::reading::Reading;

/// The settings of an [`EventClock`]: the ingest spec's `lateness`,
/// `max_future`, `quorum` and `warmup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockConfig {
    /// A reading more than this below the largest accepted `ts` is late.
    pub lateness_ms: i64,
    /// A reading more than this ahead of the fleet clock is future.
    pub max_future_ms: i64,
    /// The fleet clock is the `quorum`-th largest of the devices' latest
    /// `ts` (fewer while fewer than `2·quorum − 1` devices are seen). 1
    /// turns the future rule off.
    pub quorum: usize,
    /// The warm-up holds at most this many readings.
    pub warmup: usize,
}

impl ClockConfig {
    /// The default `max_future` (1 h).
    pub const MAX_FUTURE_MS: i64 = 3_600_000;
    /// The default `quorum`.
    pub const QUORUM: usize = 3;
    /// The default `warmup`.
    pub const WARMUP: usize = 100;

    /// The defaults, with the lateness `lateness_ms`.
    pub fn new(lateness_ms: i64) -> ClockConfig {
        ClockConfig { lateness_ms, max_future_ms: Self::MAX_FUTURE_MS, quorum: Self::QUORUM, warmup: Self::WARMUP }
    }
}

/// What [`EventClock::admit`] made of a reading.
#[derive(Debug)]
pub enum Admitted {
    /// The reading, classified: its `late` and `future` flags are set.
    One(Reading),
    /// Held while the clock warms up.
    Held,
    /// The warm-up ended with this reading: every reading held, this one
    /// last, classified, in arrival order, each with the watermark before it
    /// (what it would have been stamped with, had it not been held).
    Released(Vec<(Option<i64>, Reading)>),
}

/// The event-time rules of one input, applied to its valid readings in
/// arrival order: see the [module docs](self).
///
/// It serializes with the process-local indices of its devices (a
/// checkpoint restores them in a process that interned the same device
/// ids in the same order first: see `DeviceId::interned`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventClock {
    cfg: ClockConfig,
    /// The devices seen, by device index.
    seen: Vec<bool>,
    /// Devices seen.
    devices: usize,
    /// The devices whose latest `ts` is above the fleet clock (every device
    /// seen, during the warm-up), with that `ts`: fewer than `quorum` once
    /// the clock runs.
    above: Vec<(u32, i64)>,
    /// The fleet clock; `None` during the warm-up.
    fleet: Option<i64>,
    /// The largest `ts` among accepted readings.
    max_ts: Option<i64>,
    /// The readings held during the warm-up; `None` once it has ended.
    held: Option<Vec<Reading>>,
}

impl EventClock {
    /// A clock that has seen nothing, warming up.
    pub fn new(cfg: ClockConfig) -> EventClock {
        let cfg = ClockConfig { quorum: cfg.quorum.max(1), ..cfg };
        EventClock {
            cfg,
            seen: Vec::new(),
            devices: 0,
            above: Vec::with_capacity(cfg.quorum),
            fleet: None,
            max_ts: None,
            held: Some(Vec::new()),
        }
    }

    /// Classifies a valid reading (its flags are overwritten). A reading
    /// below `floor` (a time its source has passed; `i64::MIN` for none) is
    /// late as well.
    pub fn admit(&mut self, r: Reading, floor: i64) -> Admitted {
        self.count(&r);
        if self.held.is_some() {
            self.see(&r);
            let full = self.devices >= self.full();
            let held = self.held.as_mut().expect("warming up");
            held.push(r);
            return if full || held.len() >= self.cfg.warmup {
                Admitted::Released(self.release(floor))
            } else {
                Admitted::Held
            };
        }
        let r = self.classify(r, floor);
        if !r.late {
            self.see(&r);
            self.tick();
        }
        Admitted::One(r)
    }

    /// The devices the fleet clock waits for: `2·quorum − 1`.
    fn full(&self) -> usize {
        2 * self.cfg.quorum - 1
    }

    /// The input has ended: the readings still held, classified, each with
    /// the watermark before it.
    pub fn finish(&mut self, floor: i64) -> Vec<(Option<i64>, Reading)> {
        match self.held {
            Some(_) => self.release(floor),
            None => Vec::new(),
        }
    }

    /// True while readings are held.
    pub fn holding(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.is_empty())
    }

    /// The watermark: every reading at or after it is accepted (unless
    /// future). `None` before the first accepted reading.
    pub fn watermark(&self) -> Option<i64> {
        self.max_ts.map(|m| m.saturating_sub(self.cfg.lateness_ms))
    }

    /// The largest `ts` among accepted readings.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// The fleet clock; `None` during the warm-up.
    pub fn fleet(&self) -> Option<i64> {
        self.fleet
    }

    /// Ends the warm-up: the fleet clock starts, and the held readings are
    /// classified.
    fn release(&mut self, floor: i64) -> Vec<(Option<i64>, Reading)> {
        let held = self.held.take().unwrap_or_default();
        self.tick();
        held.into_iter()
            .map(|r| {
                let wm = self.watermark();
                (wm, self.classify(r, floor))
            })
            .collect()
    }

    fn classify(&mut self, mut r: Reading, floor: i64) -> Reading {
        let fleet = self.fleet.unwrap_or(i64::MAX);
        r.future = r.ts > fleet.saturating_add(self.cfg.max_future_ms);
        r.late = false;
        if !r.future {
            let late = self.max_ts.is_some_and(|m| m.saturating_sub(r.ts) > self.cfg.lateness_ms);
            if !late {
                self.max_ts = self.max_ts.max(Some(r.ts));
            }
            r.late = late || r.ts < floor;
        }
        r
    }

    /// Counts a reading's device, if new.
    fn count(&mut self, r: &Reading) {
        let slot = r.device.index() as usize;
        if self.seen.len() <= slot {
            self.seen.resize(slot + 1, false);
        }
        if !self.seen[slot] {
            self.seen[slot] = true;
            self.devices += 1;
        }
    }

    /// Records a reading's `ts` as its device's latest.
    fn see(&mut self, r: &Reading) {
        let i = r.device.index();
        let ahead = self.fleet.is_none_or(|f| r.ts > f);
        match (self.above.iter().position(|&(d, _)| d == i), ahead) {
            (Some(p), true) => self.above[p].1 = r.ts,
            (Some(p), false) => {
                self.above.swap_remove(p);
            }
            (None, true) => self.above.push((i, r.ts)),
            (None, false) => {}
        }
    }

    /// Moves the fleet clock to the `quorum`-th largest latest `ts`, if that
    /// is later, once `2·quorum − 1` devices have been seen (never with a
    /// quorum of 1). Only devices above the clock can make it later, and
    /// only once `quorum` of them are.
    fn tick(&mut self) {
        let k = self.cfg.quorum;
        if k < 2 || self.devices < self.full() || self.above.len() < k {
            return;
        }
        self.above.sort_unstable_by_key(|&(_, ts)| std::cmp::Reverse(ts));
        let kth = self.above[k - 1].1;
        if self.fleet.is_none_or(|f| kth > f) {
            self.fleet = Some(kth);
            self.above.retain(|&(_, ts)| ts > kth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Position;
    use crate::DeviceId;

    fn at(device: &str, ts: i64) -> Reading {
        Reading {
            device: DeviceId::intern(device),
            ts,
            pos: Position::line(1),
            values: Default::default(),
            late: false,
            future: false,
            junk: Default::default(),
        }
    }

    const H: i64 = 3_600_000;
    const NOW: i64 = 1_767_225_600_000;

    /// Admits `(device, ts)` pairs, then ends the input; the class of each
    /// reading in the order they come out.
    fn run(cfg: ClockConfig, input: &[(&str, i64)]) -> Vec<(String, i64, &'static str)> {
        let mut clock = EventClock::new(cfg);
        let mut out = Vec::new();
        for &(d, ts) in input {
            match clock.admit(at(d, ts), i64::MIN) {
                Admitted::One(r) => out.push(r),
                Admitted::Held => {}
                Admitted::Released(rs) => out.extend(rs.into_iter().map(|(_, r)| r)),
            }
        }
        out.extend(clock.finish(i64::MIN).into_iter().map(|(_, r)| r));
        out.into_iter()
            .map(|r| {
                let class = if r.future {
                    "future"
                } else if r.late {
                    "late"
                } else {
                    "on"
                };
                (r.device.name().to_string(), r.ts, class)
            })
            .collect()
    }

    fn classes(out: &[(String, i64, &'static str)]) -> Vec<&'static str> {
        out.iter().map(|o| o.2).collect()
    }

    #[test]
    fn a_rogue_first_line_is_future_and_moves_nothing() {
        let cfg = ClockConfig::new(10 * 60_000);
        let mut input = vec![("clk-rogue", 4_102_444_800_000)];
        for i in 0..6 {
            input.push((["clk-a", "clk-b", "clk-c", "clk-d", "clk-e", "clk-f"][i], NOW + i as i64 * 1000));
        }
        input.push(("clk-a", NOW + 60_000));
        let out = run(cfg, &input);
        assert_eq!(classes(&out), ["future", "on", "on", "on", "on", "on", "on", "on"]);
    }

    #[test]
    fn clocks_ahead_by_more_than_max_future_are_future_and_slow_ones_late() {
        let cfg = ClockConfig::new(10 * 60_000);
        let mut input = Vec::new();
        for m in 0..20 {
            let t = NOW + m * 60_000;
            input.extend([("clk-g", t), ("clk-h", t + 5), ("clk-i", t + 9), ("clk-j", t + 7)]);
            input.push(("clk-fast", t + 3 * H));
            input.push(("clk-1970", 1000 + m));
            // Ahead, but by less than the lateness: accepted, and harmless.
            input.push(("clk-ahead", t + 5 * 60_000));
        }
        let out = run(cfg, &input);
        for (d, _, class) in &out {
            let want = match d.as_str() {
                "clk-fast" => "future",
                "clk-1970" => "late",
                _ => "on",
            };
            assert_eq!(*class, want, "{d}");
        }
    }

    #[test]
    fn a_fleet_within_max_future_is_classified_as_by_the_largest_ts_alone() {
        // Without the future rule (quorum 1), the same classes.
        let input: Vec<(&str, i64)> = (0..200)
            .map(|i| {
                let d = ["clk-k", "clk-l", "clk-m", "clk-n", "clk-o"][i % 5];
                let jitter = ((i * 7919) % 1300) as i64 * 1000;
                (d, NOW + i as i64 * 10_000 - jitter)
            })
            .collect();
        let cfg = ClockConfig::new(5 * 60_000);
        let with = run(cfg, &input);
        let without = run(ClockConfig { quorum: 1, ..cfg }, &input);
        assert_eq!(with, without);
        assert!(classes(&with).contains(&"late"), "the input has late readings");
    }

    #[test]
    fn a_small_fleet_ends_its_warm_up_at_the_limit_or_the_end() {
        let cfg = ClockConfig { warmup: 3, ..ClockConfig::new(60_000) };
        let mut clock = EventClock::new(cfg);
        assert!(matches!(clock.admit(at("clk-p", NOW), i64::MIN), Admitted::Held));
        assert!(clock.holding());
        assert!(matches!(clock.admit(at("clk-p", NOW + 1), i64::MIN), Admitted::Held));
        let Admitted::Released(rs) = clock.admit(at("clk-q", NOW + 2), i64::MIN) else { panic!("released") };
        assert_eq!(rs.len(), 3);
        assert_eq!(clock.fleet(), None, "two devices: no fleet clock");
        // One device: no warm-up limit reached, the end releases it.
        let mut clock = EventClock::new(ClockConfig::new(60_000));
        assert!(matches!(clock.admit(at("clk-r", NOW), i64::MIN), Admitted::Held));
        assert_eq!(clock.finish(i64::MIN).len(), 1);
        assert!(clock.finish(i64::MIN).is_empty());
        assert_eq!(clock.watermark(), Some(NOW - 60_000));
    }

    #[test]
    fn the_fleet_clock_follows_the_quorum_not_the_fastest_devices() {
        let cfg = ClockConfig::new(60_000);
        let mut clock = EventClock::new(cfg);
        let names = ["clk-s", "clk-t", "clk-u", "clk-v", "clk-w"];
        for (i, d) in names.iter().enumerate() {
            clock.admit(at(d, NOW + i as i64), i64::MIN);
        }
        assert_eq!(clock.fleet(), Some(NOW + 2), "the 3rd largest of 5");
        // Two devices jump ahead: the clock stays.
        clock.admit(at("clk-s", NOW + 10 * H), i64::MIN);
        clock.admit(at("clk-t", NOW + 10 * H), i64::MIN);
        assert_eq!(clock.fleet(), Some(NOW + 4));
        // A third agrees: the clock follows (the fleet moved on).
        clock.admit(at("clk-u", NOW + 10 * H), i64::MIN);
        assert_eq!(clock.fleet(), Some(NOW + 10 * H));
    }

    #[test]
    fn lateness_is_relative_to_the_largest_accepted_ts() {
        let cfg = ClockConfig { quorum: 1, warmup: 0, ..ClockConfig::new(10) };
        let out = run(cfg, &[("clk-y", 100), ("clk-y", 90), ("clk-y", 89), ("clk-y", 120), ("clk-y", 100)]);
        // Exactly the lateness below: not late.
        assert_eq!(classes(&out), ["on", "on", "late", "on", "late"]);
        let mut clock = EventClock::new(cfg);
        for ts in [100, 89, 120] {
            clock.admit(at("clk-y", ts), i64::MIN);
        }
        assert_eq!(clock.watermark(), Some(110));
    }

    #[test]
    fn devices_that_sent_one_wrong_ts_each_do_not_add_up() {
        let cfg = ClockConfig::new(10 * 60_000);
        let names = ["clk-z0", "clk-z1", "clk-z2", "clk-z3", "clk-z4", "clk-z5"];
        let mut input = Vec::new();
        for m in 0..30i64 {
            for (i, d) in names.iter().enumerate() {
                // Every few minutes another device sends one reading from 2100.
                let ts = if m % 5 == 1 && i == (m / 5) as usize { 4_102_444_800_000 } else { NOW + m * 60_000 };
                input.push((*d, ts));
            }
        }
        let out = run(cfg, &input);
        let future: Vec<_> = out.iter().filter(|o| o.2 == "future").map(|o| o.1).collect();
        assert_eq!(future, [4_102_444_800_000; 6]);
        assert!(out.iter().filter(|o| o.1 < 4_102_444_800_000).all(|o| o.2 == "on"), "{out:?}");
    }

    #[test]
    fn a_reading_below_the_floor_is_late() {
        let mut clock = EventClock::new(ClockConfig { warmup: 1, ..ClockConfig::new(60_000) });
        let Admitted::Released(rs) = clock.admit(at("clk-x", NOW), NOW + 1) else { panic!("released") };
        assert!(rs[0].1.late);
        assert_eq!(clock.max_ts(), Some(NOW), "late by the floor alone: still the largest accepted ts");
    }
}
