//! Bad device clocks (issue 19): three rogue devices injected into a
//! generated fleet must not change what any other device gets.
//!
//! * `rogue-future` reads about 75 years ahead, and is the very first line;
//! * `rogue-ahead`'s clock runs 3 h ahead;
//! * `rogue-1970`'s clock was reset to 1970.
//!
//! Their values are copied from the fleet's readings around them. The fleet
//! with and without them is replayed at `-w 1` and `-w 2`: every other
//! device's windows, final statistics and events are the same, every rogue
//! reading is in exactly one side output (`future.jsonl` for the first two,
//! `late.jsonl` for the last) and in the Parquet backup with its flags, and
//! the summary counts them. Then the dataset with rogues goes through the
//! Kafka chain (one job per process, `EDDY_BROKERS`), which must compute what
//! replay computes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

use eddy::core::validate::parse_line;
use eddy::gen::{generate, GenConfig};
use eddy::runtime::replay::{replay, ReplayOptions, Summary};
use eddy::runtime::workers::Workers;
use support::{read_json, read_jsonl, sorted};

const FUTURE: &str = "rogue-future";
const AHEAD: &str = "rogue-ahead";
const EPOCH: &str = "rogue-1970";
const ROGUES: [&str; 3] = [FUTURE, AHEAD, EPOCH];

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// About 75 years.
const YEARS_75: i64 = 75 * (365 * 24 + 6) * HOUR;

fn is_rogue(device: &str) -> bool {
    ROGUES.contains(&device)
}

/// A rogue reading as written: where, which device, its ts, and whether it
/// is expected in `future.jsonl` (else in `late.jsonl`).
#[derive(Clone, Debug)]
struct RogueLine {
    line_no: u64,
    device: &'static str,
    ts: i64,
    future: bool,
}

/// Generates the fleet into `dir`: 40 devices, 6 hours.
fn gen_fleet(dir: &Path) {
    let cfg = GenConfig { devices: 40, hours: 6.0, ..Default::default() };
    generate(&cfg, dir, &mut |_, _| {}).expect("generating the fleet");
}

/// The fields of a line that passes validation, in line order.
fn valid_reading(line: &str) -> Option<Map<String, Value>> {
    parse_line(line.as_bytes()).ok()?;
    serde_json::from_str(line).ok()
}

/// Copies the dataset `clean` to `dir` with the three rogue devices
/// interleaved into its readings: each of them reads once per 40 lines (one
/// round of the fleet), with the values of the fleet reading next to it.
/// `rogue-future` is dated the largest `ts` so far plus about 75 years, and
/// its first reading is the first line; `rogue-ahead` the largest `ts` so far
/// plus 3 h; `rogue-1970` the largest `ts` so far minus the start of the
/// dataset (a day in January 1970).
fn with_rogues(clean: &Path, dir: &Path) -> Vec<RogueLine> {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(clean).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "readings.jsonl" {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let text = std::fs::read_to_string(clean.join("readings.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().find_map(|l| valid_reading(l)).expect("a valid reading");
    let start = first["ts"].as_i64().unwrap();
    let mut max_ts = start;
    let mut model = first;
    let mut out: Vec<String> = Vec::new();
    let mut rogues = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(v) = valid_reading(line) {
            model = v;
        }
        let rogue = match i % 40 {
            0 => Some((FUTURE, max_ts + YEARS_75 + (i as i64 % 7) * 1000, true)),
            13 => Some((AHEAD, max_ts + 3 * HOUR + (i as i64 % 5) * 1000, true)),
            27 => Some((EPOCH, max_ts - start + 6 * HOUR, false)),
            _ => None,
        };
        if let Some((device, ts, future)) = rogue {
            let mut r = model.clone();
            r["device_id"] = device.into();
            r["ts"] = ts.into();
            out.push(Value::Object(r).to_string());
            rogues.push(RogueLine { line_no: out.len() as u64, device, ts, future });
        }
        out.push(line.to_string());
        if let Some(v) = valid_reading(line) {
            max_ts = max_ts.max(v["ts"].as_i64().unwrap());
        }
    }
    std::fs::write(dir.join("readings.jsonl"), out.join("\n") + "\n").unwrap();
    assert_eq!(rogues[0].line_no, 1, "rogue-future is the first line");
    rogues
}

/// Replays `dataset` into `out` at `-w workers`.
fn run(dataset: &Path, out: &Path, workers: usize) -> Summary {
    let mut opts = ReplayOptions::new(dataset, out);
    opts.workers = Workers::threads(workers);
    replay(&opts, |_| {}).unwrap_or_else(|e| panic!("replay of {} failed: {e}", dataset.display()))
}

fn lines(out: &Path, name: &str) -> Vec<String> {
    let path = out.join(format!("{name}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(String::from)
        .collect()
}

fn device_of(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    v["device_id"].as_str().unwrap_or_default().to_string()
}

/// The sorted lines of an output, those of rogue devices left out.
fn fleet_lines(out: &Path, name: &str) -> Vec<String> {
    sorted(lines(out, name).into_iter().filter(|l| !is_rogue(&device_of(l))).collect())
}

/// The last `stats.jsonl` line of each (device, channel): its final snapshot.
fn final_stats(out: &Path) -> BTreeMap<(String, String), String> {
    let mut last = BTreeMap::new();
    for l in lines(out, "stats") {
        let v: Value = serde_json::from_str(&l).unwrap();
        let key = (v["device_id"].as_str().unwrap().to_string(), v["channel"].as_str().unwrap().to_string());
        last.insert(key, l);
    }
    last
}

/// A side-output line without its `line_no` (the rogue lines shift the others).
fn without_line_no(line: &str) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    v.as_object_mut().unwrap().remove("line_no");
    v.to_string()
}

/// A backup row without its input position, with its flags.
fn row_text(r: &eddy::parquet::BackupRow) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{:?}|late={}|future={}|{:?}",
        r.device_id, r.ts, r.raw, r.values, r.context, r.late, r.future, r.junk
    )
}

/// Differences between two sorted sets of lines, for a message (empty when equal).
fn diff(what: &str, a: &[String], b: &[String]) -> Option<String> {
    if a == b {
        return None;
    }
    let (sa, sb): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
    let only_a: Vec<_> = sa.difference(&sb).take(3).collect();
    let only_b: Vec<_> = sb.difference(&sa).take(3).collect();
    Some(format!(
        "{what}: {} vs {} lines\n  only without rogues: {only_a:#?}\n  only with rogues: {only_b:#?}",
        a.len(),
        b.len()
    ))
}

/// What the fleet gets without and with the rogues, and where the rogue
/// readings went, at one worker count.
fn check_run(
    clean: &Path,
    rogue: &Path,
    rogues: &[RogueLine],
    clean_sum: &Summary,
    rogue_sum: &Summary,
) -> Vec<String> {
    let mut errs = Vec::new();
    // Every other device: windows, final statistics, events.
    for name in ["windows", "events"] {
        errs.extend(diff(&format!("{name}.jsonl"), &fleet_lines(clean, name), &fleet_lines(rogue, name)));
        if let Some(l) = lines(rogue, name).iter().find(|l| is_rogue(&device_of(l))) {
            errs.push(format!("{name}.jsonl has a line of a rogue device: {l}"));
        }
    }
    let (fc, fr) = (final_stats(clean), final_stats(rogue));
    let fr_fleet: BTreeMap<_, _> =
        fr.iter().filter(|((d, _), _)| !is_rogue(d)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if fc != fr_fleet {
        let a: Vec<String> = fc.values().cloned().collect();
        let b: Vec<String> = fr_fleet.values().cloned().collect();
        errs.extend(diff("final stats.jsonl lines", &sorted(a), &sorted(b)));
    }
    if let Some(k) = fr.keys().find(|(d, _)| is_rogue(d)) {
        errs.push(format!("stats.jsonl has a rogue key: {k:?}"));
    }
    // The fleet's own late readings are the same; nothing of it is future.
    let fleet_side = |out: &Path, name: &str| -> Vec<String> {
        sorted(lines(out, name).iter().filter(|l| !is_rogue(&device_of(l))).map(|l| without_line_no(l)).collect())
    };
    errs.extend(diff("late.jsonl of the fleet", &fleet_side(clean, "late"), &fleet_side(rogue, "late")));
    for out in [clean, rogue] {
        if let Some(l) = fleet_side(out, "future").first() {
            errs.push(format!("{}: a fleet reading is future: {l}", out.display()));
        }
    }
    if let Some(l) = lines(rogue, "enriched").iter().find(|l| is_rogue(&device_of(l))) {
        errs.push(format!("enriched.jsonl has a rogue reading: {l}"));
    }

    // Every rogue reading in exactly one side output, the right one.
    let by_line = |name: &str| -> BTreeMap<u64, Value> {
        read_jsonl(&rogue.join(format!("{name}.jsonl")))
            .into_iter()
            .filter(|v| is_rogue(v["device_id"].as_str().unwrap_or_default()))
            .map(|v| (v["line_no"].as_u64().unwrap(), v))
            .collect()
    };
    let (late, future) = (by_line("late"), by_line("future"));
    for r in rogues {
        let (want, other) = if r.future { (&future, &late) } else { (&late, &future) };
        let wanted = if r.future { "future" } else { "late" };
        match want.get(&r.line_no) {
            Some(v) if v["device_id"] == r.device && v["ts"] == r.ts => {}
            Some(v) => errs.push(format!("line {} ({r:?}) in {wanted}.jsonl as {v}", r.line_no)),
            None => errs.push(format!("line {} ({r:?}) is not in {wanted}.jsonl", r.line_no)),
        }
        if let Some(v) = other.get(&r.line_no) {
            errs.push(format!("line {} ({r:?}) is also in the other side output: {v}", r.line_no));
        }
    }
    let n_future = rogues.iter().filter(|r| r.future).count();
    if late.len() + future.len() != rogues.len() {
        errs.push(format!(
            "{} rogue lines in late.jsonl and future.jsonl, {} written",
            late.len() + future.len(),
            rogues.len()
        ));
    }

    // The backup: every rogue reading once, flagged; the fleet's rows unchanged.
    let rows = |out: &Path| eddy::parquet::read_backup(&out.join("backup")).unwrap();
    let (clean_rows, rogue_rows) = (rows(clean), rows(rogue));
    let mut backed: BTreeMap<(String, i64), Vec<(bool, bool)>> = BTreeMap::new();
    for r in rogue_rows.iter().filter(|r| is_rogue(&r.device_id)) {
        backed.entry((r.device_id.to_string(), r.ts)).or_default().push((r.late, r.future));
    }
    let mut expected: BTreeMap<(String, i64), Vec<(bool, bool)>> = BTreeMap::new();
    for r in rogues {
        expected.entry((r.device.to_string(), r.ts)).or_default().push((!r.future, r.future));
    }
    if backed != expected {
        let missing: Vec<_> = expected.iter().filter(|(k, v)| backed.get(*k) != Some(*v)).take(3).collect();
        let extra: Vec<_> = backed.iter().filter(|(k, v)| expected.get(*k) != Some(*v)).take(3).collect();
        errs.push(format!(
            "backup rows of rogue devices (late, future): {} rows, {} rogue lines\n  expected: {missing:?}\n  actual: {extra:?}",
            backed.values().map(Vec::len).sum::<usize>(),
            rogues.len()
        ));
    }
    let fleet_rows = |rows: &[eddy::parquet::BackupRow]| -> Vec<String> {
        sorted(rows.iter().filter(|r| !is_rogue(&r.device_id)).map(row_text).collect())
    };
    errs.extend(diff("backup rows of the fleet", &fleet_rows(&clean_rows), &fleet_rows(&rogue_rows)));

    // The summary counts them.
    let summary = read_json(&rogue.join("summary.json"));
    if summary["future"].as_u64() != Some(n_future as u64) || rogue_sum.future != n_future as u64 {
        errs.push(format!(
            "summary future: {} (returned {}), {n_future} future rogue lines",
            summary["future"], rogue_sum.future
        ));
    }
    let n_late = (rogues.len() - n_future) as u64;
    let want = (
        clean_sum.valid + rogues.len() as u64,
        clean_sum.late + n_late,
        0,
        clean_sum.junk,
        clean_sum.deadletter,
        &clean_sum.junk_by_device,
    );
    let got = (
        rogue_sum.valid,
        rogue_sum.late,
        clean_sum.future,
        rogue_sum.junk,
        rogue_sum.deadletter,
        &rogue_sum.junk_by_device,
    );
    if want != got {
        errs.push(format!(
            "summary counts (valid, late, future without rogues, junk, deadletter, junk_by_device): expected {want:?}, actual {got:?}"
        ));
    }
    errs
}

/// The fleet with and without the three rogue devices, replayed at `-w 1`
/// and `-w 2`.
#[test]
fn rogue_clocks_change_nothing_for_the_rest_of_the_fleet_in_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let rogue = tmp.path().join("rogue");
    gen_fleet(&clean);
    let rogues = with_rogues(&clean, &rogue);
    for d in ROGUES {
        assert!(rogues.iter().filter(|r| r.device == d).count() >= 50, "{d} reads all along");
    }
    let mut errs = Vec::new();
    let mut per_w: Vec<BTreeMap<&str, Vec<String>>> = Vec::new();
    for w in [1, 2] {
        let (co, ro) = (tmp.path().join(format!("clean-w{w}")), tmp.path().join(format!("rogue-w{w}")));
        let (cs, rs) = (run(&clean, &co, w), run(&rogue, &ro, w));
        assert!(
            !lines(&co, "events").is_empty() && !lines(&co, "late").is_empty(),
            "the fleet has events and late readings"
        );
        errs.extend(check_run(&co, &ro, &rogues, &cs, &rs).into_iter().map(|e| format!("-w {w}: {e}")));
        per_w.push(
            ["enriched", "late", "future", "stats", "windows", "events"]
                .into_iter()
                .map(|n| (n, sorted(lines(&ro, n))))
                .collect(),
        );
    }
    for (name, a) in &per_w[0] {
        errs.extend(diff(&format!("{name}.jsonl with rogues, -w 1 vs -w 2"), a, &per_w[1][name]));
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[cfg(feature = "kafka")]
mod kafka {
    //! The dataset with rogues through the Kafka chain: ingest → enrich →
    //! stats, windows, alerts and backup, each job its own process, against
    //! the broker at `EDDY_BROKERS` (scripts/test.sh starts one).

    use std::process::Child;
    use std::time::{Duration, Instant};

    use eddy::kafka::rdkafka::message::{Headers, Message};

    use super::support::broker::{config as kafka, finish_by, prefix, publish, start};
    use super::support::{assert_same, file_lines, sorted, text};
    use super::*;

    /// A topic's data records (markers left out).
    fn topic(prefix: &str, name: &str) -> Vec<String> {
        let topic = format!("{prefix}.{name}");
        let records = eddy::kafka::consume::read_to_end(&kafka(), &topic, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{topic}: {e}"));
        sorted(
            records
                .into_iter()
                .filter(|m| !m.headers().is_some_and(|h| h.iter().any(|hd| hd.key == "eddy.wm")))
                .map(|m| text(m.payload().unwrap_or_default()))
                .collect(),
        )
    }

    /// `device_id|ts` of side-output records (a file's line numbers and
    /// Kafka offsets differ).
    fn keys(lines: Vec<String>) -> Vec<String> {
        sorted(
            lines
                .iter()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    format!("{}|{}", v["device_id"], v["ts"])
                })
                .collect(),
        )
    }

    fn backup_rows(out: &Path) -> Vec<String> {
        sorted(eddy::parquet::read_backup(&out.join("backup")).unwrap().iter().map(row_text).collect())
    }

    /// The dataset with rogues through the chain (one `P.raw` partition),
    /// every job at `-w 1` and then at `-w 2`, computes what its replay
    /// computes, and what the fleet gets is what the replay without rogues
    /// gives it.
    #[test]
    fn rogue_clocks_through_the_kafka_chain_match_replay() {
        let tmp = tempfile::tempdir().unwrap();
        let clean = tmp.path().join("clean");
        let rogue = tmp.path().join("rogue");
        gen_fleet(&clean);
        let rogues = with_rogues(&clean, &rogue);
        let (co, ro) = (tmp.path().join("clean-out"), tmp.path().join("rogue-out"));
        run(&clean, &co, 2);
        run(&rogue, &ro, 2);

        let _ = kafka();
        for w in ["1", "2"] {
            let p = prefix(&format!("clocks-w{w}"));
            let kout = tmp.path().join(format!("kafka-out-w{w}"));
            let mut jobs: Vec<(&str, Child)> = ["ingest", "enrich", "stats", "windows", "alerts"]
                .iter()
                .map(|j| (*j, start(j, &p, &["-w", w])))
                .collect();
            jobs.push(("backup", start("backup", &p, &["-w", w, "--out", kout.to_str().unwrap()])));
            publish(&rogue, &p, &[]);
            let until = Instant::now() + Duration::from_secs(600);
            for (name, child) in jobs {
                finish_by(child, &format!("{name} -w {w}"), until);
            }

            let what = |x: &str| format!("{x} (jobs at -w {w})");
            assert_same(topic(&p, "stats"), file_lines(&ro, "stats"), &what("stats"));
            assert_same(topic(&p, "windows.1h"), file_lines(&ro, "windows"), &what("windows"));
            assert_same(topic(&p, "events"), file_lines(&ro, "events"), &what("events"));
            assert_same(keys(topic(&p, "late")), keys(file_lines(&ro, "late")), &what("late"));
            assert_same(keys(topic(&p, "future")), keys(file_lines(&ro, "future")), &what("future"));
            let future: Vec<String> =
                rogues.iter().filter(|r| r.future).map(|r| format!("\"{}\"|{}", r.device, r.ts)).collect();
            assert_same(keys(topic(&p, "future")), sorted(future), &what("future: the rogue readings ahead"));
            assert_same(backup_rows(&kout), backup_rows(&ro), &what("backup"));
            // What the fleet gets over Kafka is what it gets without rogues.
            assert_same(topic(&p, "windows.1h"), file_lines(&co, "windows"), &what("windows vs replay without rogues"));
            assert_same(topic(&p, "events"), file_lines(&co, "events"), &what("events vs replay without rogues"));
        }
    }
}
