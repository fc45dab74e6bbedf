#!/usr/bin/env bash
# Installs the Spark baseline's Python environment: pyspark from PyPI into
# benches/baselines/.venv (gitignored), using the machine's Java 17.
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
PYSPARK_VERSION="${PYSPARK_VERSION:-3.5.3}"

java_home=""
for d in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64 /usr/lib/jvm/java-1.17.0-openjdk-amd64; do
    [ -x "$d/bin/java" ] && { java_home="$d"; break; }
done
if [ -z "$java_home" ]; then
    echo "setup: Java 17 not found under /usr/lib/jvm; install openjdk-17-jre-headless" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import pyspark, pyarrow" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "pyspark==$PYSPARK_VERSION" "pyarrow>=14"
fi
echo "JAVA_HOME=$java_home"
echo "PYTHON=$venv/bin/python"
"$venv/bin/python" -c "import pyspark; print('pyspark', pyspark.__version__)"
