//! Counters shared by the workers of one process, read by the runtime for
//! the progress bar and the summary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The error a run failed with, as an operator or a sink met it: shared
/// (every worker may read it, and the runtime returns it), with its cause
/// chain intact, so the caller can print each cause.
pub type Failure = Arc<dyn std::error::Error + Send + Sync>;

/// Process-wide counters. Workers add; the runtime reads.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Input lines read.
    pub lines: AtomicU64,
    /// Input bytes read.
    pub bytes: AtomicU64,
    /// Lines that passed validation (late ones included).
    pub valid: AtomicU64,
    /// Valid readings classified late.
    pub late: AtomicU64,
    /// Valid readings classified future.
    pub future: AtomicU64,
    /// Lines sent to the dead-letter output.
    pub deadletter: AtomicU64,
    /// On-time valid readings with at least one junk channel.
    pub junk: AtomicU64,
    /// Junk readings per device id (non-late).
    pub junk_by_device: Mutex<HashMap<String, u64>>,
    /// The first fatal error a worker met (an I/O error, say).
    pub error: Mutex<Option<Failure>>,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records the first fatal error; later ones are dropped (they are
    /// most often consequences of the first).
    pub fn fail(&self, error: impl std::error::Error + Send + Sync + 'static) {
        self.fail_with(Arc::new(error));
    }

    /// [`Metrics::fail`] with an error already shared.
    pub fn fail_with(&self, error: Failure) {
        let mut e = self.error.lock();
        if e.is_none() {
            *e = Some(error);
        }
    }

    /// The first fatal error, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.error.lock().clone()
    }
}

// ---------------------------------------------------------------------------
// Benchmark instrumentation: per-operator busy time and latency.
//
// Both are off unless asked for by environment variable (the bench command,
// `benches/e2e.sh`, sets them), so a normal run pays one boolean test per
// epoch. They are process-wide because the latency marks cross operators
// that share nothing else (ingest, alerts, backup), and because a bench runs
// one job per process.
// ---------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `EDDY_BENCH_STAGES=1`: record the busy time of every operator (timely's
/// schedule log) and write it to `OUT/bench.json`.
pub const STAGES_ENV: &str = "EDDY_BENCH_STAGES";
/// `EDDY_BENCH_LATENCY=1`: record ingestion-to-event and
/// ingestion-to-backup-durability latency and write it to `OUT/bench.json`.
pub const LATENCY_ENV: &str = "EDDY_BENCH_LATENCY";

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Busy time per operator name, summed over workers, plus parked time.
#[derive(Debug, Default)]
struct StageTimes {
    busy: BTreeMap<String, Duration>,
    parked: Duration,
}

fn stages() -> &'static Mutex<StageTimes> {
    static S: OnceLock<Mutex<StageTimes>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Installs the busy-time logger on a worker when `EDDY_BENCH_STAGES` is set.
/// Time is exclusive: a scope's time excludes that of the operators inside it.
pub fn install_stage_timer(worker: &mut timely::worker::Worker) {
    use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
    if !env_on(STAGES_ENV) {
        return;
    }
    let Some(mut registry) = worker.log_register() else { return };
    let mut names: rustc_hash::FxHashMap<usize, String> = Default::default();
    // (operator id, start, time of nested operators)
    let mut stack: Vec<(usize, Duration, Duration)> = Vec::new();
    let mut local: rustc_hash::FxHashMap<usize, Duration> = Default::default();
    let mut park_start: Option<Duration> = None;
    let mut parked = Duration::ZERO;
    registry.insert::<TimelyEventBuilder, _>("timely", move |_time, data| {
        let Some(data) = data else { return };
        for (t, ev) in data.iter() {
            match ev {
                TimelyEvent::Operates(o) => {
                    names.insert(o.id, o.name.clone());
                }
                TimelyEvent::Schedule(s) => match s.start_stop {
                    StartStop::Start => stack.push((s.id, *t, Duration::ZERO)),
                    StartStop::Stop => {
                        if let Some((id, start, nested)) = stack.pop() {
                            let total = t.saturating_sub(start);
                            *local.entry(id).or_default() += total.saturating_sub(nested);
                            if let Some(parent) = stack.last_mut() {
                                parent.2 += total;
                            }
                        }
                    }
                },
                TimelyEvent::Park(timely::logging::ParkEvent::Park(_)) => park_start = Some(*t),
                TimelyEvent::Park(timely::logging::ParkEvent::Unpark) => {
                    if let Some(s) = park_start.take() {
                        parked += t.saturating_sub(s);
                    }
                }
                _ => {}
            }
        }
        let mut g = stages().lock();
        for (id, d) in local.drain() {
            let name = names.get(&id).cloned().unwrap_or_else(|| format!("operator {id}"));
            *g.busy.entry(name).or_default() += d;
        }
        g.parked += std::mem::take(&mut parked);
    });
}

/// A latency distribution, in microseconds, with a weight per sample.
#[derive(Debug, Default)]
struct Samples(Vec<(u64, u64)>);

impl Samples {
    fn add(&mut self, micros: u64, weight: u64) {
        if weight > 0 {
            self.0.push((micros, weight));
        }
    }

    fn json(&mut self) -> String {
        self.0.sort_unstable();
        let total: u64 = self.0.iter().map(|s| s.1).sum();
        let q = |p: f64| -> f64 {
            let want = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (v, w) in &self.0 {
                seen += w;
                if seen >= want {
                    return *v as f64 / 1000.0;
                }
            }
            0.0
        };
        // A coarse histogram: counts per power-of-two bucket of microseconds.
        let mut hist: BTreeMap<u64, u64> = BTreeMap::new();
        for (v, w) in &self.0 {
            *hist.entry(v.max(&1).next_power_of_two()).or_default() += w;
        }
        let hist: Vec<String> = hist.iter().map(|(b, n)| format!("[{b},{n}]")).collect();
        format!(
            "{{\"count\":{total},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\
             \"histogram_us_le_count\":[{}]}}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            hist.join(",")
        )
    }
}

#[derive(Debug)]
struct EpochMark {
    first: Instant,
    readings: u64,
}

#[derive(Debug, Default)]
struct LatencyState {
    /// Wall-clock instant at which the ingest source stamped the first line of each epoch.
    epochs: BTreeMap<u64, EpochMark>,
    /// Committed frontier of every backup sink, by registration.
    backup_frontiers: Vec<u64>,
    /// Epochs below this are durable in every backup sink and accounted for.
    durable_below: u64,
    /// Workers (one backup sink each): nothing counts as durable before all registered.
    peers: usize,
    events: Samples,
    backup: Samples,
}

/// Latency marks shared by ingest, alerts and the backup sinks (see the
/// section comment). Every method does nothing unless `EDDY_BENCH_LATENCY` is set.
pub struct Latency {
    on: bool,
    state: Mutex<LatencyState>,
}

/// The process's latency recorder.
pub fn latency() -> &'static Latency {
    static L: OnceLock<Latency> = OnceLock::new();
    L.get_or_init(|| Latency { on: env_on(LATENCY_ENV), state: Mutex::new(LatencyState::default()) })
}

impl Latency {
    /// True when latency is being recorded.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The ingest source stamps a line with epoch `t` (first call per epoch
    /// records the instant; later calls only count readings).
    pub fn ingested(&self, t: u64, readings: u64) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock();
        s.epochs.entry(t).or_insert(EpochMark { first: now, readings: 0 }).readings += readings;
    }

    /// The alerts job emits `n` events of epoch `t`. The latency counted is
    /// from the first line of the epoch, an upper bound for each reading in it.
    pub fn events(&self, t: u64, n: u64) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock();
        if let Some(first) = s.epochs.get(&t).map(|e| e.first) {
            s.events.add(now.duration_since(first).as_micros() as u64, n);
        }
    }

    /// The number of workers, set by the ingest source.
    pub fn set_peers(&self, peers: usize) {
        if self.on {
            self.state.lock().peers = peers;
        }
    }

    /// Registers a backup sink; returns its slot for [`Latency::durable`].
    pub fn register_backup(&self) -> Option<usize> {
        if !self.on {
            return None;
        }
        let mut s = self.state.lock();
        s.backup_frontiers.push(0);
        Some(s.backup_frontiers.len() - 1)
    }

    /// Backup sink `slot` has made every epoch before `upto` durable
    /// (`None`: everything). An epoch counts once every backup sink holds it.
    pub fn durable(&self, slot: Option<usize>, upto: Option<u64>) {
        let Some(slot) = slot else { return };
        let now = Instant::now();
        let mut s = self.state.lock();
        let f = upto.unwrap_or(u64::MAX);
        if s.backup_frontiers[slot] >= f {
            return;
        }
        s.backup_frontiers[slot] = f;
        if s.backup_frontiers.len() < s.peers {
            return;
        }
        let low = s.backup_frontiers.iter().copied().min().unwrap_or(0);
        if low <= s.durable_below {
            return;
        }
        let from = s.durable_below;
        s.durable_below = low;
        let marks: Vec<(Instant, u64)> = s.epochs.range(from..low).map(|(_, e)| (e.first, e.readings)).collect();
        for (first, n) in marks {
            s.backup.add(now.duration_since(first).as_micros() as u64, n);
        }
    }

    fn take_json(&self) -> Option<String> {
        if !self.on {
            return None;
        }
        let mut s = self.state.lock();
        let ev = s.events.json();
        let bk = s.backup.json();
        let epochs = s.epochs.len();
        *s = LatencyState::default();
        Some(format!(
            "{{\"note\":\"ms from the ingest of the first line of a reading's epoch (an upper bound)\",\
             \"epochs\":{epochs},\"ingest_to_event\":{ev},\"ingest_to_backup_durable\":{bk}}}"
        ))
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Writes `OUT/bench.json` (stage busy times and/or latency) when either
/// bench variable is set; does nothing otherwise.
pub fn write_bench_report(out: &Path, wall: Duration) -> std::io::Result<()> {
    let stages_on = env_on(STAGES_ENV);
    let lat = latency().take_json();
    if !stages_on && lat.is_none() {
        return Ok(());
    }
    let mut parts = vec![format!("\"wall_s\":{:.3}", wall.as_secs_f64())];
    if stages_on {
        let mut g = stages().lock();
        let mut by_op: Vec<(&String, &Duration)> = g.busy.iter().collect();
        by_op.sort_by(|a, b| b.1.cmp(a.1));
        let ops: Vec<String> = by_op.iter().map(|(n, d)| format!("{}:{:.3}", json_str(n), d.as_secs_f64())).collect();
        // By step: the operator name up to its first '.', as `Flow` names them.
        let mut by_step: BTreeMap<String, Duration> = BTreeMap::new();
        for (n, d) in &g.busy {
            let step = n.split('.').next().unwrap_or(n).to_string();
            *by_step.entry(step).or_default() += *d;
        }
        let mut by_step: Vec<(String, Duration)> = by_step.into_iter().collect();
        by_step.sort_by_key(|b| std::cmp::Reverse(b.1));
        let steps: Vec<String> =
            by_step.iter().map(|(n, d)| format!("{}:{:.3}", json_str(n), d.as_secs_f64())).collect();
        let busy: f64 = g.busy.values().map(|d| d.as_secs_f64()).sum();
        parts.push(format!(
            "\"busy_s_total\":{busy:.3},\"parked_s\":{:.3},\"busy_s_by_step\":{{{}}},\"busy_s_by_operator\":{{{}}}",
            g.parked.as_secs_f64(),
            steps.join(","),
            ops.join(",")
        ));
        *g = StageTimes::default();
    }
    if let Some(l) = lat {
        parts.push(format!("\"latency\":{l}"));
    }
    std::fs::write(out.join("bench.json"), format!("{{{}}}\n", parts.join(",")))
}
