#!/usr/bin/env bash
# Same-run comparison of two eddy binaries (before/after an optimisation).
#
#   benches/ab.sh BIN_A BIN_B [DATASET] [WORKERS] [REPS]
#
# Runs A, B, A, B, … (REPS each, default 3) on DATASET (default the cached
# 10k-device × 24 h fleet), -w WORKERS (default 2), and prints each wall time,
# the medians and the ratio A/B (> 1: B is faster), and each run's peak RSS
# (`/usr/bin/time`) with the median ratio. Interleaving keeps the noise of a
# shared machine out of the ratio as far as possible. EDDY_AB_ARGS adds
# replay arguments to both (e.g. EDDY_AB_ARGS="--outputs stats,windows").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
a="$1" b="$2"
dataset="${3:-$root/target/bench-data/fleet-10k-24h}"
workers="${4:-2}"
reps="${5:-3}"
out="$root/target/bench-data/ab"
mkdir -p "$out"
ta=() tb=() ma=() mb=()
for i in $(seq "$reps"); do
    for v in a b; do
        bin="$a"; [ "$v" = b ] && bin="$b"
        rm -rf "$out/$v"
        s=$(date +%s.%N)
        /usr/bin/time -f %M -o "$out/$v.rss" "$bin" replay "$dataset" --out "$out/$v" -w "$workers" -q ${EDDY_AB_ARGS:-} > /dev/null
        e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc)
        m=$(( $(tail -1 "$out/$v.rss") / 1024 ))
        echo "run $i $v: $t s, peak RSS $m MB"
        if [ "$v" = a ]; then ta+=("$t"); ma+=("$m"); else tb+=("$t"); mb+=("$m"); fi
    done
done
python3 - "${ta[*]}" "${tb[*]}" "${ma[*]}" "${mb[*]}" <<'PY'
import statistics, sys
a, b, ra, rb = ([float(x) for x in arg.split()] for arg in sys.argv[1:5])
ma, mb = statistics.median(a), statistics.median(b)
print(f"median A {ma:.2f} s, median B {mb:.2f} s, A/B = {ma / mb:.2f}x")
ma, mb = statistics.median(ra), statistics.median(rb)
print(f"peak RSS: median A {ma:.0f} MB, median B {mb:.0f} MB, A/B = {ma / mb:.2f}x")
PY
# The outputs must agree (the backup and raw archive are checked by the tests).
for f in enriched late deadletter stats windows events; do
    [ -f "$out/a/$f.jsonl" ] || [ -f "$out/b/$f.jsonl" ] || continue
    if ! cmp -s <(sort "$out/a/$f.jsonl") <(sort "$out/b/$f.jsonl"); then
        echo "OUTPUT DIFFERS: $f.jsonl" >&2
        exit 1
    fi
done
echo "outputs identical (sorted lines of every JSON-lines output)"
