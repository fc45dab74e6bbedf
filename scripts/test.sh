#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# then runs every test of the workspace (unit, integration, doc tests).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh -E 'test(cli)'   # extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

# The test builds need about 4 GB in target/ (more on a first build): say so
# up front rather than let the linker die of a full disk.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((6 * 1024 * 1024)) ]; then
  echo "test.sh: warning: only $((free_kb / 1024)) MB free on $(df -P . | awk 'NR==2 {print $6}'); the build wants about 6 GB" >&2
fi

# Independent readers of the Parquet backup (DuckDB, pyarrow),
# and a Kafka client eddy did not write (confluent-kafka), in a venv.
if ! .venv/bin/python -c 'import duckdb, pyarrow, confluent_kafka' >/dev/null 2>&1; then
  echo "test.sh: installing duckdb, pyarrow and confluent-kafka into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check duckdb pyarrow confluent-kafka
fi
export EDDY_PYTHON="$PWD/.venv/bin/python"

# A Kafka-compatible broker for the Kafka tests: Tansu, from crates.io
# (about 15 minutes to build once; skipped when the binary is there).
TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if ! "$TANSU" --version >/dev/null 2>&1; then
  echo "test.sh: installing the tansu broker (cargo install tansu --features dynostore --locked)" >&2
  cargo install tansu --features dynostore --locked
fi
export EDDY_TANSU="$TANSU"   # tests/kafka_outage.rs starts a broker of its own
export EDDY_BROKERS="${EDDY_BROKERS:-127.0.0.1:9092}"
if ! (exec 3<>"/dev/tcp/${EDDY_BROKERS%:*}/${EDDY_BROKERS##*:}") 2>/dev/null; then
  echo "test.sh: starting tansu on $EDDY_BROKERS (in memory; logs in target/tansu.log)" >&2
  mkdir -p target
  nohup "$TANSU" broker --listener-url "tcp://$EDDY_BROKERS" --advertised-listener-url "tcp://$EDDY_BROKERS" \
    --storage-engine memory://tansu/ >target/tansu.log 2>&1 &
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${EDDY_BROKERS%:*}/${EDDY_BROKERS##*:}") 2>/dev/null && break
    sleep 0.1
  done
fi

# An eddy without the optional parts (no librdkafka, no smartcore) must build:
# replay, gen, check and jobs. Built first, so that the test builds below
# (default features) leave the default `eddy` binary in target/.
cargo build --no-default-features --bin eddy --quiet
if cargo tree --no-default-features -e normal,build 2>/dev/null | grep -qE '(rdkafka|smartcore) v'; then
  echo "test.sh: cargo tree --no-default-features still holds rdkafka or smartcore" >&2
  exit 1
fi

# The API docs build without warnings: a link that no longer resolves is a
# doc that no longer matches the code.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

# nextest does not run doc tests: run them first, so that the run ends on
# the summary of the whole suite.
cargo test --workspace --doc --quiet
# The Rust toolchain is the machine's; nextest when present, cargo test otherwise.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
