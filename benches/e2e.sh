#!/usr/bin/env bash
# End-to-end benchmark of `eddy replay` (see docs/performance.md).
#
#   benches/e2e.sh [--skip-throughput] [--skip-spark] [--skip-memory] [--skip-paced] [--rate R] [--chunk-lines N]
#
# EDDY_BIN=path uses that binary instead of building target/release/eddy.
#
# 1. builds the release binary;
# 2. generates the 10,000-device × 24 h fleet (cached in target/bench-data);
# 3. replays it at -w 1 and -w 2 (same run): readings/s, MB/s, peak RSS;
#    again with EDDY_BENCH_STAGES (timely's schedule log, which slows the
#    run, so its times are not the throughput) for the busy time of every
#    step; at -w 1 and -w 2 without `enriched.jsonl` (the pipeline of the
#    throughput target: every job and the backup); and at -w 2 with
#    `--outputs windows`, the work the Spark baseline does;
# 4. a paced run at R readings/s offered (default 100,000; -w 2): p50/p99/max
#    latency from ingestion to event emission and to backup durability
#    (EDDY_BENCH_LATENCY);
# 5. the Spark Structured Streaming baseline (benches/baselines, local[2]) on
#    the same dataset, in one micro-batch and in micro-batches of 50,000 lines;
# 6. memory: 1,000,000 devices × 5 channels of live state (RSS sampled from
#    /proc): for 15 minutes of readings (three per device, every key young)
#    and for 75 minutes (the steady state: every key past its young values,
#    its trend span of an hour full, an hourly window and snapshot closed).
#
# Writes every run under target/bench-data/runs/STAMP/ and a report,
# target/bench-data/runs/STAMP/report.md, which it also prints.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
spark=1 memory=1 paced=1 throughput=1 rate=100000 chunk=50000
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-spark) spark=0 ;;
        --skip-memory) memory=0 ;;
        --skip-throughput) throughput=0 ;;
        --skip-paced) paced=0 ;;
        --rate) rate="$2"; shift ;;
        --chunk-lines) chunk="$2"; shift ;;
        *) echo "usage: $0 [--skip-throughput] [--skip-spark] [--skip-memory] [--skip-paced] [--rate R] [--chunk-lines N]" >&2; exit 2 ;;
    esac
    shift
done

data="$root/target/bench-data"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
runs="$data/runs/$stamp"
mkdir -p "$runs"
if [ -n "${EDDY_BIN:-}" ]; then
    eddy="$EDDY_BIN"   # a prebuilt binary (e.g. to bench a given commit)
else
    echo "== build (release)"
    cargo build --release --bin eddy
    eddy="$root/target/release/eddy"
fi

fleet="$data/fleet-10k-24h"
if [ ! -f "$fleet/gen.json" ]; then
    echo "== generate $fleet"
    rm -rf "$fleet"
    "$eddy" gen "$fleet" --devices 10000 --hours 24 --seed 1
fi

# run NAME WORKERS [ENV=VALUE…] [-- extra replay args]: one replay, with
# /usr/bin/time and a /proc RSS sampler.
run() {
    local name="$1" workers="$2" dataset="$3"; shift 3
    local envs=() extra=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    [ "${1:-}" = "--" ] && { shift; extra=("$@"); }
    local out="$runs/$name"
    rm -rf "$out"; mkdir -p "$out"
    echo "== $name: eddy replay -w $workers ${extra[*]:-}"
    env "${envs[@]}" /usr/bin/time -v -o "$out.time" "$eddy" replay "$dataset" --out "$out" -w "$workers" -q "${extra[@]}" &
    local pid=$!
    # /usr/bin/time's child is eddy: sample its RSS twice a second.
    ( sleep 0.2; child="$(pgrep -P "$pid" | head -1)"
      while [ -n "$child" ] && [ -r "/proc/$child/status" ]; do
          awk '/VmRSS/ {print $2}' "/proc/$child/status" 2>/dev/null || true
          sleep 0.5
      done ) > "$out.rss" &
    local sampler=$!
    wait "$pid"
    wait "$sampler" || true
}

if [ "$throughput" = 1 ]; then
    run w1 1 "$fleet"
    run w2 2 "$fleet"
    # The busy time per step: the schedule log costs time of its own, so
    # these runs are kept apart from the throughput runs above.
    run w1-stages 1 "$fleet" EDDY_BENCH_STAGES=1
    run w2-stages 2 "$fleet" EDDY_BENCH_STAGES=1
    # The pipeline the issue's throughput target names (validate → enrich →
    # statistics → windows → alerts → Parquet backup): every job and the
    # backup, without `enriched.jsonl`, the JSON copy of what the backup holds.
    run w1-pipeline 1 "$fleet" -- --outputs late,deadletter,stats,windows,events
    run w2-pipeline 2 "$fleet" -- --outputs late,deadletter,stats,windows,events
    # The work the Spark baseline does (parse, validate, calibrate, 1-hour
    # windows, Parquet backup): no statistics, alerts or other JSON-lines
    # outputs (eddy still writes the raw archive, which Spark does not).
    run w2-windows 2 "$fleet" -- --outputs windows
fi

if [ "$paced" = 1 ]; then
    speed="$(python3 -c "
import json; g = json.load(open('$fleet/gen.json'))
print(round($rate / (g['summary']['lines'] / (g['config']['hours'] * 3600)), 1))" 2>/dev/null || echo 3000)"
    echo "$speed" > "$runs/paced.speed"
    run paced 2 "$fleet" EDDY_BENCH_LATENCY=1 -- --speed "$speed"
fi

if [ "$spark" = 1 ]; then
    echo "== Spark baseline setup"
    eval "$(benches/baselines/setup.sh | grep -E '^(JAVA_HOME|PYTHON)=')"
    export JAVA_HOME
    for cfg in one "chunks:$chunk"; do
        args=()
        [ "$cfg" != one ] && args=(--chunk-lines "${cfg#chunks:}")
        echo "== spark-$cfg"
        "$PYTHON" benches/baselines/spark_pipeline.py "$fleet" "$runs/spark-${cfg%%:*}" --stage "$data/spark-input" \
            "${args[@]}" 2> "$runs/spark-${cfg%%:*}.log" | tail -1 > "$runs/spark-${cfg%%:*}.json"
        cat "$runs/spark-${cfg%%:*}.json"
    done
    # eddy again, right after Spark, so the ratio is taken within minutes.
    run w2-after-spark 2 "$fleet"
    run w2-windows-after-spark 2 "$fleet" -- --outputs windows
fi

if [ "$memory" = 1 ]; then
    million="$data/fleet-1m-15min"
    if [ ! -f "$million/gen.json" ]; then
        echo "== generate $million"
        rm -rf "$million"
        "$eddy" gen "$million" --devices 1000000 --hours 0.25 --seed 1
    fi
    run million 2 "$million"
    rm -rf "$runs/million/backup" "$runs/million/raw" "$runs/million/"*.jsonl
    steady="$data/fleet-1m-75min"
    if [ ! -f "$steady/gen.json" ]; then
        echo "== generate $steady"
        rm -rf "$steady"
        "$eddy" gen "$steady" --devices 1000000 --hours 1.25 --seed 1
    fi
    # The enriched, late and dead-letter lines would take several GB of disk; the
    # jobs that hold state (statistics, windows, alerts, backup) all run.
    run million-steady 2 "$steady" -- --outputs stats,windows,events
    rm -rf "$runs/million-steady/backup" "$runs/million-steady/raw" "$runs/million-steady/"*.jsonl
fi

python3 benches/report.py "$runs" | tee "$runs/report.md"
