#!/usr/bin/env bash
# The SQL-surface tier: tests/pg_regress/sql/*.sql against a fresh preloaded cluster,
# compared with tests/pg_regress/expected/*.out. With --isolation, the concurrency
# tier instead: tests/isolation/specs/*.spec through pg_isolation_regress. Needs
# `cargo pgrx install` first.
#   tests/run_pg_regress.sh [--isolation] [test names...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pgxs=$(pg_config --pkglibdir)/pgxs
tool=$pgxs/src/test/regress/pg_regress suite=pg_regress kind=sql
PORT=${REGRESS_PORT:-55433}
if [ "${1:-}" = --isolation ]; then
    shift
    tool=$pgxs/src/test/isolation/pg_isolation_regress suite=isolation kind=specs
    PORT=${ISOLATION_PORT:-55434}
fi
dir=$(mktemp -d /tmp/api_keys_regress.XXXXXX)
trap '"$here/pg_cluster.sh" stop "$dir"' EXIT
"$here/pg_cluster.sh" start "$dir" "$PORT"
psql -X -q -h "$dir" -p "$PORT" -U postgres -d postgres \
    -c "CREATE DATABASE api_keys_regress" \
    -c "\\c api_keys_regress" -c "CREATE EXTENSION api_keys"
# Helpers shared by the test files (e.g. error capture with random parts masked).
if [ -f "$here/pg_regress/setup.sql" ]; then
    psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -U postgres -d api_keys_regress \
        -f "$here/pg_regress/setup.sql"
fi

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    for f in "$here/$suite/$kind"/*; do tests+=("$(basename "${f%.*}")"); done
fi
mkdir -p "$dir/out"
status=0
"$tool" --use-existing --host="$dir" --port="$PORT" \
    --user=postgres --dbname=api_keys_regress \
    --inputdir="$here/$suite" --outputdir="$dir/out" "${tests[@]}" || status=$?
if [ $status -ne 0 ]; then
    cat "$dir/out/regression.diffs" 2>/dev/null || true
    # Keep the actual output where a developer can copy it into expected/.
    rm -rf "$here/$suite/results" && cp -r "$dir/out/results" "$here/$suite/results" 2>/dev/null || true
fi
exit $status
