#!/usr/bin/env bash
# The benchmark behind `make bench-scale` (a benchmark, not a test: it reports, it never
# fails on a missed target). Needs the extension installed (`make bench-scale` installs
# a release build first) and the PostgreSQL 15 binaries on PATH.
#
# A throwaway preloaded cluster with default settings gets SCALE_KEYS keys (1,000,000)
# with a per-hour limit of 2, issued with cheap argon2 parameters (64 KiB, 1 pass:
# hashing a million secrets at the defaults would take hours, and verification never
# hashes a known presentation again). Then:
#   passes   4 passes over every key (2 sessions, half the keys each): passes 1-2 must
#            answer ok for every key, passes 3-4 rate_limited for every key;
#   memory   shared memory per tracked key: the growth of dynamic shared memory
#            (/dev/shm) over the passes, divided by the keys tracked (so run it with no
#            other PostgreSQL server running);
#   warm     pgbench, 2 clients, alternating SCALE_SECS rounds: verification of a
#            random key among the first 200 and among all of them (warm, limits
#            lifted), each beside a plain lookup of a key row by prefix drawn the same
#            way (as make bench compares); medians of SCALE_ROUNDS rounds each. The
#            figure is the verification's ratio to the lookup at each size: the
#            lookup pays what a table of a million rows costs (buffer misses), so the
#            ratio shows what verification itself adds at that size.
# Writes tests/bench/SCALE.md. Knobs: SCALE_KEYS, SCALE_SECS (10), SCALE_ROUNDS (5),
# SCALE_PORT (55498), SCALE_SHARED_BUFFERS (PostgreSQL's default, 128MB; another value
# writes tests/bench/SCALE-shared_buffers-<value>.md instead).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KEYS=${SCALE_KEYS:-1000000}
SECS=${SCALE_SECS:-10}
ROUNDS=${SCALE_ROUNDS:-5}
PORT=${SCALE_PORT:-55498}
SMALL=200
BUFFERS=${SCALE_SHARED_BUFFERS:-}
REPORT=$here/SCALE${BUFFERS:+-shared_buffers-$BUFFERS}.md

for tool in pgbench psql awk; do
    command -v "$tool" >/dev/null || { echo "bench-scale: $tool not found on PATH" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/api_keys_scale.XXXXXX)
work=$(mktemp -d /tmp/api_keys_scale_work.XXXXXX)
cleanup() {
    "$root/tests/pg_cluster.sh" stop "$dir" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$root" diff --quiet HEAD -- src sql 2>/dev/null || commit+=" + uncommitted changes in src/ or sql/"

echo "==> starting a preloaded cluster in $dir (port $PORT), default settings"
"$root/tests/pg_cluster.sh" start "$dir" "$PORT" ${BUFFERS:+"shared_buffers = '$BUFFERS'"}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -U postgres -d postgres "$@"; }
counter() { q -c "SELECT value FROM api_keys.stats() WHERE counter = '$1'"; }
# Dynamic shared memory of every PostgreSQL server on the machine (segments are not
# named by cluster): run this benchmark with no other server running.
dsm_bytes() { du -cb /dev/shm/PostgreSQL.* 2>/dev/null | tail -1 | cut -f1; }

q -c "CREATE EXTENSION api_keys"
q -c "CREATE SCHEMA bench; CREATE TABLE bench.keys (n int8 PRIMARY KEY, key text NOT NULL, prefix text NOT NULL)"

echo "==> issuing $KEYS keys (per-hour limit 2), 2 sessions"
t0=$(date +%s)
half=$((KEYS / 2))
for part in 0 1; do
    lo=$((part * half + 1)) hi=$(( part == 1 ? KEYS : half ))
    q -c "SET api_keys.argon2_memory_kib = 64; SET api_keys.argon2_iterations = 1" \
      -c "INSERT INTO bench.keys SELECT g, i.key, i.prefix FROM generate_series($lo, $hi) g, api_keys.api_key_issue('k' || g, 'service', 'production', rate_limit_per_hour => 2) i" &
done
wait
issue_s=$(( $(date +%s) - t0 ))
q -c "VACUUM ANALYZE bench.keys"

# One pass: every key once, 2 sessions; prints "reason=count ..." (its seconds go to
# $work/pass_s).
pass() {
    local t0 out
    t0=$(date +%s.%N)
    for part in 0 1; do
        q -F '=' -c "SELECT v.reason, count(*) FROM bench.keys k, api_keys.api_key_verify(k.key) v WHERE k.n % 2 = $part GROUP BY 1" >"$work/pass.$part" &
    done
    wait
    out=$(cat "$work"/pass.* | awk -F= '{ s[$1] += $2 } END { for (r in s) printf "%s=%d ", r, s[r] }')
    awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }' >"$work/pass_s"
    echo "$out"
}

# The passes must stay in one clock hour.
left=$(q -c "SELECT extract(epoch FROM date_trunc('hour', clock_timestamp()) + interval '1 hour' - clock_timestamp())::int")
if [ "$left" -lt 900 ]; then
    echo "==> waiting ${left}s for the next clock hour (the passes must fit in one)"
    sleep $((left + 1))
fi
dsm_before=$(dsm_bytes)
tracked_before=$(counter tracked_keys)
declare -a results times
for p in 1 2 3 4; do
    echo "==> pass $p over $KEYS keys"
    results[$p]=$(pass)
    times[$p]=$(cat "$work/pass_s")
    echo "    ${results[$p]} in ${times[$p]} s"
done
tracked=$(counter tracked_keys)
dsm_after=$(dsm_bytes)
per_key=$(( (dsm_after - dsm_before) / (tracked - tracked_before) ))

verdict() {
    local want=$1 got=$2
    [ "$got" = "$want=$KEYS " ] && echo "as required" || echo "**not as required** (want $want=$KEYS)"
}

echo "==> warm verification: all $KEYS keys against the first $SMALL (limits lifted)"
q -c "SET session_replication_role = replica; UPDATE api_keys.keys SET rate_limit_per_minute = 2000000000, rate_limit_per_hour = 2000000000" -c "VACUUM ANALYZE api_keys.keys"
cat >"$work/warm.sql" <<'SQL'
\set n random(1, :pool)
SELECT * FROM api_keys.api_key_verify((SELECT key FROM bench.keys WHERE n = :n));
SQL
cat >"$work/lookup.sql" <<'SQL'
\set n random(1, :pool)
SELECT id, status, scopes FROM api_keys.keys
 WHERE prefix = (SELECT prefix FROM bench.keys WHERE n = :n);
SQL
tps() {
    pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -D pool="$2" -f "$work/$1.sql" \
        -h "$dir" -p "$PORT" -U postgres postgres 2>&1 |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
# Every key warm first: one call each. Then quiet: the worker has written that usage
# (a million rows' last use), and VACUUM has cleaned up after it, so that autovacuum
# does not run during the rounds.
q -c "SELECT count(*) FROM bench.keys k, api_keys.api_key_verify(k.key) v WHERE v.valid" >/dev/null
flushed=$(counter flushes)
# Two more rounds: the second started after the warm-up ended, and wrote all of it.
until [ "$(counter flushes)" -ge $((flushed + 2)) ]; do sleep 2; done
q -c "VACUUM ANALYZE api_keys.keys" -c "VACUUM ANALYZE api_keys.usage" -c "CHECKPOINT"
argon2_before=$(counter argon2_runs)
small=() large=() small_l=() large_l=()
for r in $(seq "$ROUNDS"); do
    small_l+=("$(tps lookup $SMALL)")
    small+=("$(tps warm $SMALL)")
    large_l+=("$(tps lookup "$KEYS")")
    large+=("$(tps warm "$KEYS")")
    echo "    round $r: $SMALL keys: verify ${small[-1]}, lookup ${small_l[-1]} tps; $KEYS keys: verify ${large[-1]}, lookup ${large_l[-1]} tps"
done
argon2_warm=$(( $(counter argon2_runs) - argon2_before ))
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%.0f", a[int((NR + 1) / 2)] }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
small_m=$(median "${small[@]}") large_m=$(median "${large[@]}")
small_lm=$(median "${small_l[@]}") large_lm=$(median "${large_l[@]}")
small_ratio=$(div "$small_m" "$small_lm") large_ratio=$(div "$large_m" "$large_lm")
scaled=$(div "$large_ratio" "$small_ratio")
absolute=$(div "$large_m" "$small_m")
sizes=$(q -c "SELECT pg_size_pretty(pg_total_relation_size('api_keys.keys')) || ' (api_keys.keys with its indexes), ' || pg_size_pretty(pg_total_relation_size('bench.keys')) || ' (the benchmark''s key table); shared_buffers ' || current_setting('shared_buffers')")

cat >"$REPORT" <<EOF
# make bench-scale

Written by \`tests/bench/scale.sh\` on $started, at commit $commit; $(nproc) cores.
A preloaded cluster with default settings; $KEYS keys with a per-hour limit of 2
(issued in ${issue_s} s with argon2 at 64 KiB, 1 pass).

## Four passes over every key

| pass | answers | time (s) | |
|---|---|---|---|
| 1 | ${results[1]}| ${times[1]} | $(verdict ok "${results[1]}") |
| 2 | ${results[2]}| ${times[2]} | $(verdict ok "${results[2]}") |
| 3 | ${results[3]}| ${times[3]} | $(verdict rate_limited "${results[3]}") |
| 4 | ${results[4]}| ${times[4]} | $(verdict rate_limited "${results[4]}") |

Keys tracked in shared memory afterwards: $tracked.

## Shared memory per key

Dynamic shared memory grew by $((dsm_after - dsm_before)) bytes for $((tracked - tracked_before))
keys: **$per_key bytes per tracked key** (the hash table's entries and buckets, in
segments that grow by doubling, so this includes the unused part of the last one).

## Warm verification

pgbench, 2 clients, prepared, $ROUNDS alternating rounds of ${SECS} s, a random key per
call (its text read from an indexed table), limits lifted so every call is \`ok\`;
beside each, a plain lookup of a key row by prefix drawn the same way (as \`make
bench\` compares). Tables: $sizes.

| keys drawn from | verify, median tps | lookup, median tps | verify / lookup |
|---|---|---|---|
| the first $SMALL | $small_m | $small_lm | $small_ratio |
| all $KEYS | $large_m | $large_lm | $large_ratio |

- Verification's ratio to the lookup at $KEYS keys over that at $SMALL: **$scaled**
  (target: at least 0.90, "within 10% of the 200-key figure").
- Verification's tps at $KEYS keys over that at $SMALL: $absolute (both sizes pay the
  table's buffer misses, which the lookup measures alone).
- argon2 computations during the rounds: $argon2_warm.

Rounds (tps): verify $SMALL: ${small[*]}; lookup $SMALL: ${small_l[*]};
verify $KEYS: ${large[*]}; lookup $KEYS: ${large_l[*]}.
EOF
echo "==> wrote $REPORT"
cat "$REPORT"
