#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# then runs every test of the workspace (unit, integration, doc tests).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh -E 'test(cli)'   # extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

# Independent readers of the Parquet backup (DuckDB, pyarrow), in a venv.
if ! .venv/bin/python -c 'import duckdb, pyarrow' >/dev/null 2>&1; then
  echo "test.sh: installing duckdb and pyarrow into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check duckdb pyarrow
fi
export EDDY_PYTHON="$PWD/.venv/bin/python"

# nextest does not run doc tests: run them first, so that the run ends on
# the summary of the whole suite.
cargo test --workspace --doc --quiet
# The Rust toolchain is the machine's; nextest when present, cargo test otherwise.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
