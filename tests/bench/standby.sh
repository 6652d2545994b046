#!/usr/bin/env bash
# The benchmark behind `make bench-standby` (a benchmark, not a test: it reports, it
# never fails on a missed target). Needs the extension installed and the PostgreSQL 15
# binaries on PATH.
#
# A preloaded primary (flush_interval STANDBY_FLUSH s) and a streaming hot standby whose
# api_keys.primary_conninfo points at it; STANDBY_KEYS keys (100,000) with a per-hour
# limit of 2, issued on the primary with cheap argon2 parameters. Then, each pass one
# call per key (2 sessions):
#   1 on the standby   all ok; time until the primary's api_keys.usage shows every call
#                      (the standby's workers send them through libpq);
#   2 on the primary   all ok (1 call elsewhere + 1 here = the limit);
#   3 on the standby   all rate_limited, once the primary's counts are replayed and read;
#   4 on the primary   all rate_limited.
# Writes tests/bench/STANDBY.md. Knobs: STANDBY_KEYS, STANDBY_FLUSH (2), STANDBY_PORT
# (55495; the standby takes the next port).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KEYS=${STANDBY_KEYS:-100000}
FLUSH=${STANDBY_FLUSH:-2}
PORT=${STANDBY_PORT:-55495}
REPORT=$here/STANDBY.md

for tool in psql awk; do
    command -v "$tool" >/dev/null || { echo "bench-standby: $tool not found on PATH" >&2; exit 1; }
done

primary=$(mktemp -d /tmp/api_keys_bp.XXXXXX)
standby=$(mktemp -d /tmp/api_keys_bs.XXXXXX)
work=$(mktemp -d /tmp/api_keys_bw.XXXXXX)
cleanup() {
    "$root/tests/pg_cluster.sh" stop "$standby" || true
    "$root/tests/pg_cluster.sh" stop "$primary" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$root" diff --quiet HEAD -- src sql 2>/dev/null || commit+=" + uncommitted changes in src/ or sql/"

echo "==> a primary ($primary, port $PORT) and a hot standby (port $((PORT + 1)))"
"$root/tests/pg_cluster.sh" start "$primary" "$PORT" "api_keys.flush_interval = $FLUSH"
p() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$primary" -p "$PORT" -U postgres -d postgres "$@"; }
s() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$standby" -p "$((PORT + 1))" -U postgres -d postgres "$@"; }
p -c "CREATE EXTENSION api_keys"
p -c "CREATE SCHEMA bench; CREATE TABLE bench.keys (n int8 PRIMARY KEY, key text NOT NULL)"

echo "==> issuing $KEYS keys (per-hour limit 2)"
half=$((KEYS / 2))
for part in 0 1; do
    lo=$((part * half + 1)) hi=$(( part == 1 ? KEYS : half ))
    p -c "SET api_keys.argon2_memory_kib = 64; SET api_keys.argon2_iterations = 1" \
      -c "INSERT INTO bench.keys SELECT g, i.key FROM generate_series($lo, $hi) g, api_keys.api_key_issue('k' || g, 'service', 'production', rate_limit_per_hour => 2) i" &
done
wait
"$root/tests/pg_cluster.sh" standby "$primary" "$PORT" "$standby" "$((PORT + 1))" \
    "api_keys.primary_conninfo = 'host=$primary port=$PORT user=postgres'"
lsn=$(p -c "SELECT pg_current_wal_lsn()")
until [ "$(s -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ]; do sleep 0.2; done

verified() { p -c "SELECT coalesce(sum(verified), 0) FROM api_keys.usage"; }
# One pass on server $1 (p or s): every key once, 2 sessions; prints "reason=count ...".
pass() {
    local on=$1 t0
    t0=$(date +%s.%N)
    for part in 0 1; do
        $on -F '=' -c "SELECT v.reason, count(*) FROM bench.keys k, api_keys.api_key_verify(k.key) v WHERE k.n % 2 = $part GROUP BY 1" >"$work/pass.$part" &
    done
    wait
    awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }' >"$work/pass_s"
    cat "$work"/pass.* | awk -F= '{ s[$1] += $2 } END { for (r in s) printf "%s=%d ", r, s[r] }'
}
# Wait until the primary's usage shows $1 calls; prints the seconds it took.
arrival() {
    local t0=$(date +%s.%N)
    until [ "$(verified)" -ge "$1" ]; do sleep 0.1; done
    awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'
}

# The passes must stay in one clock hour.
left=$(p -c "SELECT extract(epoch FROM date_trunc('hour', clock_timestamp()) + interval '1 hour' - clock_timestamp())::int")
if [ "$left" -lt 600 ]; then
    echo "==> waiting ${left}s for the next clock hour (the passes must fit in one)"
    sleep $((left + 1))
fi

echo "==> pass 1 on the standby"
r1=$(pass s); t1=$(cat "$work/pass_s")
a1=$(arrival "$KEYS")
echo "    $r1 in $t1 s; all on the primary ${a1} s later"
echo "==> pass 2 on the primary"
r2=$(pass p); t2=$(cat "$work/pass_s")
a2=$(arrival $((2 * KEYS)))
lsn=$(p -c "SELECT pg_current_wal_lsn()")
until [ "$(s -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ]; do sleep 0.1; done
# Two rounds of the standby's workers: one reads the replayed counts.
sleep $((2 * FLUSH + 1))
echo "    $r2 in $t2 s"
echo "==> pass 3 on the standby"
r3=$(pass s); t3=$(cat "$work/pass_s")
echo "    $r3 in $t3 s"
echo "==> pass 4 on the primary"
r4=$(pass p); t4=$(cat "$work/pass_s")
echo "    $r4 in $t4 s"
sleep $((2 * FLUSH + 1))
total=$(verified)
lost=$(s -c "SELECT value FROM api_keys.stats() WHERE counter = 'usage_lost'")

verdict() {
    [ "$2" = "$1=$KEYS " ] && echo "as required" || echo "**not as required** (want $1=$KEYS)"
}
cat >"$REPORT" <<EOF
# Usage and limits across a primary and a hot standby (make bench-standby)

Run $started at $commit, $(nproc) cores; release build; a primary and a streaming hot
standby on this machine, \`api_keys.flush_interval = $FLUSH\`, $KEYS keys with a per-hour
limit of 2 (tests/bench/standby.sh). Each pass is one call per key from 2 sessions.

| pass | server | answers | time | |
|---|---|---|---|---|
| 1 | standby | $r1 | $t1 s | $(verdict ok "$r1") |
| 2 | primary | $r2 | $t2 s | $(verdict ok "$r2") |
| 3 | standby | $r3 | $t3 s | $(verdict rate_limited "$r3") |
| 4 | primary | $r4 | $t4 s | $(verdict rate_limited "$r4") |

- The standby's $KEYS calls of pass 1 were all in the primary's \`api_keys.usage\` $a1 s
  after the pass ended (the standby's worker sends 10,000 keys a transaction through
  libpq); the primary's own pass 2 was written $a2 s after it ended.
- Verified calls written in the end: $total (want $((2 * KEYS))); \`usage_lost\` on the
  standby: $lost.
EOF
echo "==> wrote $REPORT"
