#!/usr/bin/env bash
# The long chaos run over Kafka: the chain fed by `eddy publish --speed`, 50
# SIGKILLs of random jobs at random times (tests/kafka_chaos.rs, which CI
# runs with 10). Needs the broker scripts/test.sh starts.
#
#   scripts/chaos.sh [KILLS] [SEED]
#
# Prints the seed (repeat a run with it), each kill, how many restarts
# restored a checkpoint of their state, and the test's verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
export EDDY_CHAOS_KILLS="${1:-50}"
[ -n "${2:-}" ] && export EDDY_CHAOS_SEED="$2"
export EDDY_BROKERS="${EDDY_BROKERS:-127.0.0.1:9092}"
if ! (exec 3<>"/dev/tcp/${EDDY_BROKERS%:*}/${EDDY_BROKERS##*:}") 2>/dev/null; then
  echo "chaos.sh: no broker at $EDDY_BROKERS: run scripts/test.sh once (it installs and starts tansu)" >&2
  exit 1
fi
# The whole output goes to target/chaos.log; the summary lines to the screen.
mkdir -p target
cargo test --test kafka_chaos -- --nocapture 2>&1 | tee target/chaos.log | grep -E "^chaos:|test result|panicked|FAILED|error|did not finish|lost after|records over Kafka|that replay does not make"
