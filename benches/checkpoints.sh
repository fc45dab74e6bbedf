#!/usr/bin/env bash
# What checkpoints cost `eddy replay`, in one run of each kind, interleaved.
#
#   benches/checkpoints.sh [DATASET] [WORKERS] [EVERY] [REPS]
#
# DATASET defaults to the cached 10k-device × 24 h fleet (made with
# `eddy gen` if missing), WORKERS to 2, EVERY (the checkpoint interval) to 10s,
# REPS to 3. Prints:
#   * wall time without checkpoints and with them (A, B, A, B, …), the median
#     ratio: the throughput cost;
#   * for the checkpoints of the last run (kept in a store outside OUT): how
#     many, their size on disk, and the pause each cost the source (from the
#     cut to the release: drain, save and encode; the writing is on a thread
#     of its own), p50, p99 and max; and the writer thread's time per
#     checkpoint (write, fsync, commit, gc), from its debug log;
#   * restart against history: the run SIGKILLed right after its first
#     checkpoint, and (another time) right after a late one, then run again;
#     each restart's wall time less the share of a clean run's that the lines
#     after its checkpoint take is its overhead, which must not grow with the
#     history before the checkpoint.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
eddy="$root/target/release/eddy"
dataset="${1:-$root/target/bench-data/fleet-10k-24h}"
workers="${2:-2}"
every="${3:-10s}"
reps="${4:-3}"
work="$root/target/bench-data/checkpoints"
[ -x "$eddy" ] || cargo build --release --quiet --bin eddy
if [ ! -f "$dataset/readings.jsonl" ]; then
    "$eddy" gen "$dataset" --devices 10000 --hours 24 --seed 1 > /dev/null
fi
rm -rf "$work"; mkdir -p "$work"

off=() on=()
for i in $(seq "$reps"); do
    for mode in off on; do
        rm -rf "$work/out" "$work/store"
        s=$(date +%s.%N)
        if [ "$mode" = off ]; then
            "$eddy" replay "$dataset" --out "$work/out" -w "$workers" -q --checkpoint-every off
        else
            RUST_LOG=eddy_runtime::snapshots=debug "$eddy" replay "$dataset" --out "$work/out" -w "$workers" -q \
                --checkpoint-every "$every" --store "$work/store" --keep 1000 2> "$work/writer.log"
        fi
        e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc)
        echo "run $i checkpoints $mode: $t s"
        if [ "$mode" = off ]; then off+=("$t"); else on+=("$t"); fi
    done
done

# The checkpoints of the last run: sizes and pauses.
python3 - "$work/store" "${off[*]}" "${on[*]}" "$work/writer.log" <<'PY'
import json, os, re, statistics, sys
store, off, on = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
writes = []
for line in open(sys.argv[4], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "Checkpoint written" in line:
        f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
        writes.append((int(f["bytes"]), float(f["write_ms"])))
mo, mn = statistics.median(off), statistics.median(on)
print(f"median without {mo:.2f} s, with {mn:.2f} s: with/without = {mn / mo:.3f}x")
pauses, sizes = [], []
for d in sorted(os.listdir(store)):
    m = os.path.join(store, d, "manifest.json")
    if not os.path.exists(m):
        continue
    meta = json.load(open(m))["meta"]
    pauses.append(meta["pause_ms"])
    sizes.append(sum(os.path.getsize(os.path.join(store, d, f)) for f in os.listdir(os.path.join(store, d))))
if not pauses:
    print("no checkpoint was taken: the run is shorter than the interval")
    sys.exit(0)
pauses.sort()
p = lambda q: pauses[min(len(pauses) - 1, int(q * len(pauses)))]
print(f"{len(pauses)} checkpoints; size median {statistics.median(sizes) / 1e6:.1f} MB, max {max(sizes) / 1e6:.1f} MB")
print(f"pause of the source: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {pauses[-1]:.1f} ms")
if writes:
    ms = sorted(w for _, w in writes)
    big = max(writes)
    print(f"writer thread per checkpoint: median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms; "
          f"largest {big[0] / 1e6:.1f} MB of state in {big[1]:.0f} ms")
PY

# Restart against history: kill right after checkpoint K (early, then late).
total=$(wc -l < "$dataset/readings.jsonl")
clean=$(IFS=,; python3 -c "import statistics; print(statistics.median([${off[*]}]))")
n=$(ls "$work/store" | wc -l)
for k in 1 $(( n > 2 ? n / 2 + 1 : 1 )); do
    rm -rf "$work/kill"
    "$eddy" replay "$dataset" --out "$work/kill" -w "$workers" -q --checkpoint-every "$every" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        # The newest complete checkpoint's id (the store keeps only a few).
        c=$(find "$work/kill/_checkpoints" -name manifest.json 2>/dev/null | sort | tail -1 | xargs -r dirname | xargs -r basename || true)
        c=$((10#${c:-0}))
        if [ "$c" -ge "$k" ]; then kill -9 "$pid"; break; fi
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
    if ! info=$("$eddy" checkpoints inspect --store "$work/kill" 2>/dev/null); then
        echo "restart after checkpoint $k: the run ended first"
        continue
    fi
    line=$(echo "$info" | python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.index("{"):])["position"]["offset"])')
    s=$(date +%s.%N)
    "$eddy" replay "$dataset" --out "$work/kill" -w "$workers" -q --checkpoint-every "$every"
    e=$(date +%s.%N)
    python3 - "$line" "$total" "$clean" "$(echo "$e - $s" | bc)" <<'PY'
import sys
line, total, clean, wall = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rest = clean * (total - line) / total
print(f"restart after line {line} of {total} ({100 * line / total:.0f}% of history): {wall:.2f} s, "
      f"the rest of a clean run {rest:.2f} s, overhead {wall - rest:+.2f} s")
PY
done
