//! The calibration adapter: corrects the baseline drift of CO2 sensors.
//!
//! It consumes statistics snapshots (see [`adapter`] for where they come
//! from) and keeps, per device, the
//! smoothed level (`ewma`) of each snapshot of the channel over a rolling
//! span. Once the span is covered, the mean of the `k` lowest levels is taken
//! to be outdoor air; if it is off the outdoor level by at least
//! `min_correction`, the adapter publishes a calibration upsert that keeps
//! the gain in force and shifts the offset by the difference, valid from
//! `ts` = the snapshot's dataflow time plus the feedback delay. Levels kept
//! from before a change of calibration (its own, or the dataset's) are
//! converted to the calibration in force; the baseline is extrapolated from
//! the time of the lows to the correction's `ts` with the drift rate seen so
//! far (the change of the uncorrected baseline since the first estimate, over
//! at least 12 hours); and the two hours after a
//! correction, which the smoothed level still mixes, are skipped; so the
//! adapter keeps tracking a drift, correcting whenever the baseline is off by
//! `min_correction`.
//!
//! The calibration in force is that of the dataset's reference data (base
//! tables and updates, as of `ts`) together with the adapter's own updates,
//! chosen like enrichment chooses it: the version with the latest
//! `valid_from ≤ ts`.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use eddy_core::ids::{Channel, DeviceId};
use eddy_core::reading::{Enriched, Reading};
use eddy_core::records::StatsRecord;
use eddy_core::reference::{Calibration, Num, RefChange, RefUpdate};
use eddy_operators::stats::snapshot_end;
use eddy_state::stats::{ChannelStats, StatsConfig};

/// Settings of the adapter.
#[derive(Clone, Debug)]
pub struct AdapterConfig {
    /// The channel whose baseline drifts.
    pub channel: Channel,
    /// How many of the lowest levels make the baseline.
    pub k: usize,
    /// The rolling span of levels (ms).
    pub span_ms: i64,
    /// The level outdoor air should read.
    pub outdoor: f64,
    /// Smaller corrections are not published.
    pub min_correction: f64,
    /// The feedback edge's delay (ms): an update emitted at dataflow time `t`
    /// applies from `t + delay`.
    pub delay_ms: i64,
}

/// A calibration update from the adapter: exchanged between workers, then
/// fed back into the reference data as a [`RefUpdate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationUpdate {
    /// From when it applies (epoch ms).
    pub ts: i64,
    /// The device.
    pub device: DeviceId,
    /// The new version (its `valid_from` is `ts`).
    pub calibration: Calibration,
    /// The baseline it corrects, as measured.
    pub baseline: f64,
}

impl From<CalibrationUpdate> for RefUpdate {
    fn from(u: CalibrationUpdate) -> RefUpdate {
        RefUpdate { ts: u.ts, change: RefChange::UpsertCalibration(u.device, u.calibration) }
    }
}

/// The channel's calibration changes of the reference data, per device.
#[derive(Clone, Debug, Default)]
pub struct CalibrationBook {
    changes: BTreeMap<DeviceId, Vec<(i64, RefChange)>>,
}

impl CalibrationBook {
    /// The changes of `channel` among reference updates (in `ts` order).
    pub fn new(updates: &[RefUpdate], channel: Channel) -> CalibrationBook {
        let mut changes: BTreeMap<DeviceId, Vec<(i64, RefChange)>> = BTreeMap::new();
        for u in updates {
            match &u.change {
                RefChange::UpsertCalibration(d, c) if c.channel == channel => {
                    changes.entry(*d).or_default().push((u.ts, u.change.clone()))
                }
                RefChange::DeleteCalibration(d, c, _) if *c == channel => {
                    changes.entry(*d).or_default().push((u.ts, u.change.clone()))
                }
                _ => {}
            }
        }
        CalibrationBook { changes }
    }

    /// The (gain, offset) in force for `device` at `ts`, given the adapter's
    /// own versions; `(1, 0)` when there is none.
    pub fn in_force(&self, device: DeviceId, ts: i64, own: &[Calibration]) -> (f64, f64) {
        let mut versions: BTreeMap<i64, Calibration> = BTreeMap::new();
        let mut own = own.iter().filter(|c| c.valid_from <= ts).peekable();
        for (uts, change) in self.changes.get(&device).into_iter().flatten() {
            if *uts > ts {
                break;
            }
            while let Some(c) = own.next_if(|c| c.valid_from < *uts) {
                versions.insert(c.valid_from, *c);
            }
            match change {
                RefChange::UpsertCalibration(_, c) => {
                    versions.insert(c.valid_from, *c);
                }
                RefChange::DeleteCalibration(_, _, Some(vf)) => {
                    versions.remove(vf);
                }
                RefChange::DeleteCalibration(_, _, None) => versions.clear(),
                _ => {}
            }
        }
        for c in own {
            versions.insert(c.valid_from, *c);
        }
        versions.range(..=ts).next_back().map_or((1.0, 0.0), |(_, c)| (c.gain.0, c.offset.0))
    }
}

/// The adapter's state for its devices.
#[derive(Debug)]
pub struct Adapter {
    cfg: AdapterConfig,
    book: CalibrationBook,
    levels: BTreeMap<DeviceId, VecDeque<(i64, f64)>>,
    /// Per device: its own versions, and the ts before which levels are ignored.
    own: BTreeMap<DeviceId, (Vec<Calibration>, i64)>,
    /// Per device: the (gain, offset) in force at its last level.
    in_force: BTreeMap<DeviceId, (f64, f64)>,
    /// Per device: what it knows of the drift.
    drift: BTreeMap<DeviceId, Drift>,
}

/// A device's drift history since its last calibration from the dataset.
#[derive(Clone, Copy, Debug, Default)]
struct Drift {
    /// The sum of the adapter's corrections.
    corrected: f64,
    /// The first baseline estimate: (mean time of its lows, baseline without corrections).
    first: Option<(f64, f64)>,
}

impl Adapter {
    /// A new adapter.
    pub fn new(cfg: AdapterConfig, book: CalibrationBook) -> Adapter {
        Adapter {
            cfg,
            book,
            levels: BTreeMap::new(),
            own: BTreeMap::new(),
            in_force: BTreeMap::new(),
            drift: BTreeMap::new(),
        }
    }

    /// Takes one snapshot, emitted at dataflow time `time`; returns the
    /// update to publish, if any.
    pub fn observe(&mut self, time: i64, rec: &StatsRecord) -> Option<CalibrationUpdate> {
        if rec.channel != self.cfg.channel {
            return None;
        }
        let s = &rec.stats;
        let (own, ignore_before) = self.own.entry(rec.device_id).or_insert_with(|| (Vec::new(), i64::MIN));
        let levels = self.levels.entry(rec.device_id).or_default();
        if levels.back().is_some_and(|&(t, _)| t >= s.ts) {
            return None; // the final snapshot repeats the last one
        }
        // Levels measured under another calibration (a dataset update, or the
        // adapter's own) are converted to the one in force now.
        let (g, o) = self.book.in_force(rec.device_id, s.ts, own);
        let (g0, o0) = *self.in_force.entry(rec.device_id).or_insert((g, o));
        let drift = self.drift.entry(rec.device_id).or_default();
        if (g0, o0) != (g, o) {
            for (_, v) in levels.iter_mut() {
                *v = g * (*v - o0) / g0 + o;
            }
            self.in_force.insert(rec.device_id, (g, o));
            let mine = own.last().is_some_and(|c| (c.gain.0, c.offset.0) == (g, o));
            if !mine {
                *drift = Drift::default(); // a new calibration from the dataset: a new drift history
            }
        }
        if s.ts < *ignore_before {
            return None; // the smoothed level still remembers the old calibration
        }
        levels.push_back((s.ts, s.ewma));
        while levels.front().is_some_and(|&(t, _)| t <= s.ts - self.cfg.span_ms) {
            levels.pop_front();
        }
        // Wait until the levels cover the span (one snapshot period short of it).
        let first = levels.front().map_or(s.ts, |&(t, _)| t);
        if s.ts - first < self.cfg.span_ms * 22 / 24 || levels.len() < self.cfg.k {
            return None;
        }
        let mut sorted: Vec<(i64, f64)> = levels.iter().copied().collect();
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
        let lows = &sorted[..self.cfg.k];
        let baseline = lows.iter().map(|l| l.1).sum::<f64>() / self.cfg.k as f64;
        let at = lows.iter().map(|l| l.0 as f64).sum::<f64>() / self.cfg.k as f64;
        // The baseline in the terms of the first level (the adapter's own
        // corrections undone) gives the drift rate; extrapolate from the time
        // of the lows to when the correction applies.
        let anchor = (at, baseline - drift.corrected);
        let first = *drift.first.get_or_insert(anchor);
        let rate =
            if anchor.0 - first.0 >= 12.0 * 3_600_000.0 { (anchor.1 - first.1) / (anchor.0 - first.0) } else { 0.0 };
        let ts = time + self.cfg.delay_ms;
        let expected = baseline + rate * (ts as f64 - at);
        let correction = self.cfg.outdoor - expected;
        if correction.abs() < self.cfg.min_correction {
            return None;
        }
        let (gain, offset) = self.book.in_force(rec.device_id, ts, own);
        drift.corrected += correction;
        let calibration = Calibration {
            channel: self.cfg.channel,
            valid_from: ts,
            gain: Num(gain),
            offset: Num(offset + correction),
        };
        own.push(calibration);
        // The levels are converted once the correction is in force; the hours
        // just after it, which the smoothed level still mixes, are skipped.
        *ignore_before = ts + 2 * 3_600_000;
        tracing::info!(device = %rec.device_id, baseline, correction, ts, "adapter: calibration update");
        Some(CalibrationUpdate { ts, device: rec.device_id, calibration, baseline })
    }
}

/// The adapter operator: enriched readings in (partitioned by device; late
/// ones are skipped), calibration updates out, at the time of the reading that closed
/// the snapshot window.
///
/// It keeps the statistics of the adapted channel itself, with the statistics
/// job's code and settings ([`ChannelStats`], snapshot per `every_ms` window),
/// and passes each device's snapshot to [`Adapter::observe`] when a reading
/// of a later window arrives. It does not take the statistics job's output:
/// that operator holds a capability at its input frontier, which inside the
/// feedback loop would creep forward one feedback delay per round trip.
/// This operator holds no capability, so the loop's frontier is that of the
/// readings.
pub fn adapter<'s>(
    enriched: StreamVec<'s, u64, Enriched>,
    mut adapter: Adapter,
    stats: StatsConfig,
    every_ms: i64,
    name: &str,
) -> StreamVec<'s, u64, CalibrationUpdate> {
    let channel = adapter.cfg.channel;
    let mut state: BTreeMap<DeviceId, (ChannelStats, i64)> = BTreeMap::new();
    // `unary_frontier`, not `unary`: an operator in the feedback loop must be
    // scheduled from the start, so that its initial capability is released
    // before any data reaches it.
    enriched.unary_frontier(Pipeline, name, move |_cap, _info| {
        move |(input, _frontier), output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                let time = *cap.time() as i64;
                let mut out = Vec::new();
                for r in data.iter().filter(|r| r.on_time()) {
                    let Some(v) = r.value(channel) else { continue };
                    let (s, end) = state.entry(r.device).or_insert_with(|| (ChannelStats::new(&stats), i64::MIN));
                    let this_end = snapshot_end(r.ts, every_ms);
                    if *end != i64::MIN && this_end > *end {
                        let rec = StatsRecord { device_id: r.device, channel, stats: s.snapshot() };
                        out.extend(adapter.observe(time, &rec));
                    }
                    s.update(&stats, r.ts, v);
                    *end = (*end).max(this_end);
                }
                if !out.is_empty() {
                    output.session(&cap).give_iterator(out.into_iter());
                }
            });
        }
    })
}

/// Re-stamps readings for the feedback loop: each reading's dataflow time
/// becomes at least its own `ts` minus the lateness, rounded down to the
/// epoch. Ingest stamps a reading with the watermark of the readings before
/// it (0 before the first one), which can be far below its `ts`; enrich then
/// holds the reading, at that stamp, until the reference frontier passes its
/// `ts`, while the feedback edge holds the reference frontier at most one
/// loop delay above the stamp. After re-stamping every reading has
/// `ts < time + lateness + epoch`, so a loop delay of `lateness + epoch`
/// never holds a reading back (a future reading keeps its stamp, which
/// enrich looks it up at). Times only move forward, each reading's
/// position relative to the frontier is kept (`ts ≥ time` for on-time ones),
/// and the order of each worker's output follows its input.
pub fn restamp<'s>(
    readings: StreamVec<'s, u64, Reading>,
    lateness_ms: i64,
    epoch_ms: i64,
    name: &str,
) -> StreamVec<'s, u64, Reading> {
    readings.unary_frontier(Pipeline, name, move |_cap, _info| {
        move |(input, _frontier), output| {
            input.for_each(|cap, data| {
                let Some(least) = cap.least().copied() else { return };
                let mut run: Vec<Reading> = Vec::new();
                let mut run_time = least;
                for r in data.drain(..) {
                    // A future reading keeps its time: enrich looks it up
                    // as of that time, not its `ts`.
                    let own = if r.future { 0 } else { (r.ts - lateness_ms).div_euclid(epoch_ms) * epoch_ms };
                    let t = least.max(own.max(0) as u64);
                    if t != run_time && !run.is_empty() {
                        output.session(&cap.delayed(&run_time, 0)).give_iterator(run.drain(..));
                    }
                    run_time = t;
                    run.push(r);
                }
                if !run.is_empty() {
                    output.session(&cap.delayed(&run_time, 0)).give_iterator(run.drain(..));
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_state::stats::StatsSnapshot;

    const H: i64 = 3_600_000;

    fn snap(device: DeviceId, ts: i64, ewma: f64) -> StatsRecord {
        let stats = StatsSnapshot {
            count: 1,
            mean: ewma,
            min: ewma,
            max: ewma,
            stddev: None,
            ewma,
            top_k_max_mean: ewma,
            top_k_min_mean: ewma,
            trend_per_hour: None,
            ts,
        };
        StatsRecord { device_id: device, channel: Channel::intern("co2"), stats }
    }

    fn cfg() -> AdapterConfig {
        AdapterConfig {
            channel: Channel::intern("co2"),
            k: 3,
            span_ms: 24 * H,
            outdoor: 420.0,
            min_correction: 4.0,
            delay_ms: 601_000,
        }
    }

    #[test]
    fn a_drifted_baseline_is_corrected_once_the_span_is_covered() {
        let d = DeviceId::intern("dev-a");
        // File calibration: gain 1.1, offset -10 since forever.
        let book = CalibrationBook::new(
            &[RefUpdate {
                ts: 0,
                change: RefChange::UpsertCalibration(
                    d,
                    Calibration {
                        channel: Channel::intern("co2"),
                        valid_from: i64::MIN,
                        gain: Num(1.1),
                        offset: Num(-10.0),
                    },
                ),
            }],
            Channel::intern("co2"),
        );
        let mut a = Adapter::new(cfg(), book);
        let mut published = Vec::new();
        // What enrichment adds once an update is in force.
        let mut applied: Vec<(i64, f64)> = Vec::new();
        for h in 0..30 {
            // Nights (hours 0..6 of each day) at 470, days higher.
            let ts = h * H + 1;
            let shift: f64 = applied.iter().filter(|(from, _)| *from <= ts).map(|(_, c)| c).sum();
            let level = if h % 24 < 6 { 470.0 + (h % 3) as f64 } else { 800.0 } + shift;
            if let Some(u) = a.observe(h * H, &snap(d, ts, level)) {
                applied.push((u.ts, 420.0 - u.baseline));
                published.push((h, u));
            }
        }
        assert_eq!(published.len(), 1, "{published:?}");
        let (h, u) = &published[0];
        assert_eq!(*h, 22, "published once 22 of the 24 hours are covered");
        assert_eq!(u.ts, 22 * H + 601_000);
        assert_eq!(u.calibration.valid_from, u.ts);
        // The 3 lowest levels: 470, 470, 471.
        let baseline = (470.0 + 470.0 + 471.0) / 3.0;
        assert!((u.baseline - baseline).abs() < 1e-9, "{}", u.baseline);
        assert_eq!(u.calibration.gain, Num(1.1));
        let offset = -10.0 + (420.0 - baseline);
        assert!((u.calibration.offset.0 - offset).abs() < 1e-9);
        // The next correction builds on the adapter's own version; before it, the file's holds.
        assert_eq!(a.book.in_force(d, u.ts, &a.own[&d].0), (1.1, u.calibration.offset.0));
        assert_eq!(a.book.in_force(d, u.ts - 1, &a.own[&d].0), (1.1, -10.0));
    }

    #[test]
    fn a_baseline_at_outdoor_level_is_left_alone() {
        let d = DeviceId::intern("dev-b");
        let mut a = Adapter::new(cfg(), CalibrationBook::default());
        for h in 0..60 {
            let level = if h % 24 < 6 { 421.0 } else { 900.0 };
            assert_eq!(a.observe(h * H, &snap(d, h * H - 1, level)), None);
        }
    }
}
