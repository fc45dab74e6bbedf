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

# An S3-compatible server for the checkpoint tests on object storage: s3s-fs,
# from crates.io (a few minutes to build once; skipped when the binary is
# there). 0.14.1 is its newest release that builds with rustc 1.95. Fixed
# test credentials; buckets are directories under target/s3s-fs.
S3S_FS="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
if ! "$S3S_FS" --version >/dev/null 2>&1; then
  echo "test.sh: installing s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary --locked)" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
export EDDY_S3_ENDPOINT="${EDDY_S3_ENDPOINT:-http://127.0.0.1:8014}"
export AWS_ENDPOINT_URL="$EDDY_S3_ENDPOINT" AWS_ACCESS_KEY_ID=eddy-test AWS_SECRET_ACCESS_KEY=eddy-test-secret \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
s3_addr="${EDDY_S3_ENDPOINT#http://}"
if ! (exec 3<>"/dev/tcp/${s3_addr%:*}/${s3_addr##*:}") 2>/dev/null; then
  echo "test.sh: starting s3s-fs on $EDDY_S3_ENDPOINT (objects in target/s3s-fs; logs in target/s3s-fs.log)" >&2
  mkdir -p target/s3s-fs
  nohup "$S3S_FS" --host "${s3_addr%:*}" --port "${s3_addr##*:}" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" target/s3s-fs >target/s3s-fs.log 2>&1 &
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${s3_addr%:*}/${s3_addr##*:}") 2>/dev/null && break
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
