#!/usr/bin/env bash
# The benchmark behind `make bench` (a benchmark, not a test: it never fails on a
# missed target, it reports it). Needs the extension installed (`make bench` installs
# a release build first) and the PostgreSQL 15 binaries on PATH.
#
# A throwaway preloaded cluster gets 200 keys issued with the default argon2 settings
# (signed, as every key issued from 0.5.0 on), and 200 more made unsigned, like keys
# issued before 0.5.0 (their rows' signing_key cleared, their text cut back to the
# 43-character secret with a new checksum); pgbench then runs, 2 clients, prepared
# statements, alternating rounds of a plain lookup of a key row by prefix (lookup.sql;
# for the scenarios drawing from a pool, lookup_pool.sql drawing its prefix from that
# pool) and one verification scenario:
#   warm          valid signed keys already in the shared memo                 (warm.sql)
#   metered       the same with credits and owner-wide limits on                (metered.sql)
#   garbage       key-shaped strings with a wrong checksum                       (garbage.sql)
#   forged        signed-shaped forgeries for real prefixes: random secret, the
#                 key's real signing key id, random 96-bit MAC, valid checksum;
#                 refused by the MAC, before any key row is read                 (forged.sql)
#   wrong_secret  unsigned-shaped wrong secrets (43 random characters, no
#                 signature, valid checksum) for the signed keys' prefixes;
#                 refused after the key row read, as the row says signed         (wrong_secret.sql)
#   legacy_flood  unsigned-shaped wrong secrets for the unsigned keys' prefixes:
#                 the path of keys issued before 0.5.0, argon2 within budgets    (legacy_flood.sql)
#   new_sessions  warm.sql with pgbench -C, against lookup.sql -C
# and has_scope as row-level checks over BENCH_RLS_ROWS rows (rls_*.sql: per row against
# the same scan without it, and the (SELECT ...) initplan form against a bare scan),
# plus the latency of the first verification of freshly issued keys. Writes
# tests/bench/REPORT.md. Knobs (environment): BENCH_SECS (10, seconds per round),
# BENCH_ROUNDS (5), BENCH_KEYS (200 signed keys, and as many unsigned),
# BENCH_WRONG_PER_KEY (1000: each of the forged, wrong_secret and legacy_flood pools
# holds BENCH_KEYS x this many keys), BENCH_COLD_KEYS (10), BENCH_RLS_ROWS (100000),
# BENCH_PORT (55499).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-5}
NKEYS=${BENCH_KEYS:-200}
WRONG_PER_KEY=${BENCH_WRONG_PER_KEY:-1000}
NWRONG=$((NKEYS * WRONG_PER_KEY))
COLD_KEYS=${BENCH_COLD_KEYS:-10}
RLS_ROWS=${BENCH_RLS_ROWS:-100000}
PORT=${BENCH_PORT:-55499}
CLIENTS=2
REPORT=$here/REPORT.md

for tool in pgbench psql python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found on PATH" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/api_keys_bench.XXXXXX)   # the cluster (owned by postgres)
work=$(mktemp -d /tmp/api_keys_bench_work.XXXXXX) # our scratch files
cleanup() {
    "$root/tests/pg_cluster.sh" stop "$dir" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
t_start=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# What was just built and installed (taken now: others may edit the tree during the run).
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$root" diff --quiet HEAD -- src sql 2>/dev/null || commit+=" + uncommitted changes in src/ or sql/"

echo "==> starting a preloaded cluster in $dir (port $PORT)"
"$root/tests/pg_cluster.sh" start "$dir" "$PORT"

q() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$PORT" -U postgres -d postgres "$@"; }
stats() { q -F $'\t' -c "SELECT counter, value FROM api_keys.stats()" >"$1"; }

q -c "CREATE EXTENSION api_keys"
[ "$(q -c "SELECT value FROM api_keys.stats() WHERE counter = 'shared_memory'")" = 1 ] ||
    { echo "bench: shared memory is not active (library not preloaded?)" >&2; exit 1; }

echo "==> issuing $NKEYS signed keys and $NKEYS more made unsigned, with the default argon2 settings"
# Rate limits far above what the benchmark can reach, so every warm call is `ok`.
q <<SQL
CREATE SCHEMA bench;
CREATE TABLE bench.keys (
    n int PRIMARY KEY,
    key text NOT NULL,
    prefix text NOT NULL,
    garbage text   -- the real key with its last checksum character changed
);
INSERT INTO bench.keys (n, key, prefix)
SELECT g, i.key, i.prefix
  FROM generate_series(1, $NKEYS) g,
       LATERAL api_keys.api_key_issue('bench ' || g, 'service', 'production',
                                      rate_limit_per_minute => 1000000000,
                                      rate_limit_per_hour => 1000000000) i;
-- Metered keys: a trillion uses each, and an owner with owner-wide limits, all far
-- above what the benchmark reaches: every call spends a use and counts for the owner.
SELECT api_keys.api_key_set_owner_limits('bench metered', 1000000000, 1000000000);
CREATE TABLE bench.metered (n int PRIMARY KEY, key text NOT NULL, prefix text NOT NULL);
INSERT INTO bench.metered (n, key, prefix)
SELECT g, i.key, i.prefix
  FROM generate_series(1, $NKEYS) g,
       LATERAL api_keys.api_key_issue('metered ' || g, 'service', 'production',
                                      owner => 'bench metered',
                                      rate_limit_per_minute => 1000000000,
                                      rate_limit_per_hour => 1000000000,
                                      remaining_uses => 1000000000000) i;
-- The pools drawn from at random (n = 1 .. nwrong, interleaved over the prefixes); each
-- row's prefix lets the lookup baseline sample the same pool.
CREATE TABLE bench.wrong (n int PRIMARY KEY, key text NOT NULL, prefix text NOT NULL);        -- wrong_secret
CREATE TABLE bench.forged (n int PRIMARY KEY, key text NOT NULL, prefix text NOT NULL);       -- forged
CREATE TABLE bench.legacy_wrong (n int PRIMARY KEY, key text NOT NULL, prefix text NOT NULL); -- legacy_flood
-- Keys as issued before 0.5.0: issued signed, then their rows marked unsigned (the
-- guard forbids changing signing_key; a superuser's replica role skips it), and their
-- text (computed below) cut back to the secret with a new checksum. The stored hash is
-- of the 43-character secret alone, so they verify on the unsigned path.
CREATE TABLE bench.legacy (n int PRIMARY KEY, key text NOT NULL, prefix text NOT NULL);
INSERT INTO bench.legacy (n, key, prefix)
SELECT g, i.key, i.prefix
  FROM generate_series(1, $NKEYS) g,
       LATERAL api_keys.api_key_issue('legacy ' || g, 'service', 'production',
                                      rate_limit_per_minute => 1000000000,
                                      rate_limit_per_hour => 1000000000) i;
SET session_replication_role = replica;
UPDATE api_keys.keys SET signing_key = NULL WHERE name LIKE 'legacy %';
RESET session_replication_role;
-- has_scope in row-level checks: a table of runs in 100 projects, and one key that may
-- read project 42's runs.
CREATE TABLE bench.runs AS SELECT g AS id, g % 100 AS project FROM generate_series(1, $RLS_ROWS) g;
-- (pgbench would read ":read" in a script as a variable; the scope text is built here.)
CREATE FUNCTION bench.runs_read(project int) RETURNS text
LANGUAGE sql IMMUTABLE AS \$\$ SELECT format('projects/%s/runs:read', project) \$\$;
CREATE TABLE bench.rls_key AS
SELECT key FROM api_keys.api_key_issue('bench rls', 'service', 'production', ARRAY['projects/42/*:read'],
                                       rate_limit_per_minute => 1000000000,
                                       rate_limit_per_hour => 1000000000);
CREATE TABLE bench.cold (n int PRIMARY KEY, key text NOT NULL);
-- Server-side time of one verification (ms), for the cold-latency measurement.
CREATE FUNCTION bench.timed_verify(k text, OUT ms float8, OUT reason text)
LANGUAGE plpgsql AS \$\$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    SELECT v.reason INTO reason FROM api_keys.api_key_verify(k) v;
    ms := 1000 * extract(epoch FROM clock_timestamp() - t0);
END
\$\$;
SQL

[ "$(q -c "SELECT count(*) FROM api_keys.keys WHERE signing_key IS NULL")" = "$NKEYS" ] ||
    { echo "bench: expected $NKEYS unsigned key rows" >&2; exit 1; }

echo "==> computing $NKEYS garbage keys and 3 pools of $NWRONG presentations (forged, wrong_secret, legacy_flood)"
# CRC32 (zlib) of everything before the checksum, base62 (0-9A-Za-z), width 6.
q -F $'\t' -c "SELECT n, key, prefix FROM bench.keys ORDER BY n" >"$work/keys.tsv"
q -F $'\t' -c "SELECT n, key, prefix FROM bench.legacy ORDER BY n" >"$work/legacy_signed.tsv"
python3 - "$work" "$WRONG_PER_KEY" <<'PY'
import os, random, sys, zlib
work, per_key = sys.argv[1], int(sys.argv[2])
A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET, SIGNING_ID, MAC, CHECK = 43, 4, 17, 6
def b62(n, width):
    s = ""
    while n:
        n, r = divmod(n, 62)
        s = A[r] + s
    return s.rjust(width, "0")
def checksum(body):
    return b62(zlib.crc32(body.encode()), CHECK)
rng = random.Random(os.urandom(16))
def secret():
    return "".join(rng.choices(A, k=SECRET))
def unsigned_wrong(prefix):
    # The shape of a key issued before 0.5.0: real prefix, random secret, valid checksum.
    body = prefix + "_" + secret()
    return body + checksum(body)
def signing_id(key, prefix):
    at = len(prefix) + 1 + SECRET
    return key[at:at + SIGNING_ID]
def forged(key, prefix):
    # Signed shape: real prefix, random secret, the key's real signing key id, a random
    # MAC that is a 96-bit number (as a real one is), valid checksum. Only the MAC fails.
    body = prefix + "_" + secret() + signing_id(key, prefix) + b62(rng.getrandbits(96), MAC)
    return body + checksum(body)
def load(name):
    rows = [line.rstrip("\n").split("\t") for line in open(f"{work}/{name}")]
    for n, key, prefix in rows:
        if checksum(key[:-CHECK]) != key[-CHECK:]:
            sys.exit(f"bench: checksum of issued key {prefix}... does not match zlib.crc32/base62")
        if len(key) != len(prefix) + 1 + SECRET + SIGNING_ID + MAC + CHECK:
            sys.exit(f"bench: issued key {prefix}... is not of the signed shape")
    return rows
def pool(name, rows, make):
    with open(f"{work}/{name}", "w") as out:
        i = 0
        for _ in range(per_key):      # interleaved, so every prefix is equally likely
            for n, key, prefix in rows:
                i += 1
                out.write(f"{i}\t{make(key, prefix)}\t{prefix}\n")
keys, legacy = load("keys.tsv"), load("legacy_signed.tsv")
with open(f"{work}/extra.tsv", "w") as extra:
    for n, key, prefix in keys:
        last = "1" if key[-1] == "0" else "0"
        extra.write(f"{n}\t{key[:-1] + last}\n")
with open(f"{work}/legacy.tsv", "w") as out:
    for n, key, prefix in legacy:
        body = key[:len(prefix) + 1 + SECRET]   # the key as issued before signing
        out.write(f"{n}\t{body + checksum(body)}\n")
pool("wrong.tsv", keys, lambda key, prefix: unsigned_wrong(prefix))
pool("forged.tsv", keys, forged)
pool("legacy_wrong.tsv", legacy, lambda key, prefix: unsigned_wrong(prefix))
PY
q -c "CREATE TEMP TABLE extra (n int, garbage text)" \
  -c "COPY extra FROM STDIN" \
  -c "UPDATE bench.keys k SET garbage = e.garbage FROM extra e WHERE k.n = e.n" \
  <"$work/extra.tsv"
q -c "CREATE TEMP TABLE unsigned (n int, key text)" \
  -c "COPY unsigned FROM STDIN" \
  -c "UPDATE bench.legacy l SET key = u.key FROM unsigned u WHERE l.n = u.n" \
  <"$work/legacy.tsv"
q -c "COPY bench.wrong FROM STDIN" <"$work/wrong.tsv"
q -c "COPY bench.forged FROM STDIN" <"$work/forged.tsv"
q -c "COPY bench.legacy_wrong FROM STDIN" <"$work/legacy_wrong.tsv"
for t in bench.keys bench.metered bench.legacy bench.wrong bench.forged bench.legacy_wrong api_keys.keys; do
    q -c "VACUUM ANALYZE $t"
done

echo "==> warming the memo (one argon2 per key, signed and unsigned)"
stats "$work/warmup_a.tsv"
for t in keys metered legacy; do
    q -F $'\t' -c "SELECT v.reason, count(*) FROM bench.$t k, LATERAL api_keys.api_key_verify(k.key) v GROUP BY 1" \
        >"$work/warmup_$t.tsv"
    [ "$(cat "$work/warmup_$t.tsv")" = "ok	$NKEYS" ] ||
        { echo "bench: warming did not verify every key of bench.$t:" >&2; cat "$work/warmup_$t.tsv" >&2; exit 1; }
done
stats "$work/warmup_b.tsv"

echo "==> cold single-key latency ($COLD_KEYS freshly issued keys, one new session each)"
q -c "INSERT INTO bench.cold SELECT g, i.key FROM generate_series(1, 2 * $COLD_KEYS) g,
        LATERAL api_keys.api_key_issue('cold ' || g, 'service', 'production') i"
stats "$work/cold_a.tsv"
: >"$work/cold.tsv"
for i in $(seq 1 "$COLD_KEYS"); do
    # First call in a new session on a never-verified key, then the same key again.
    q -F $'\t' -c "SELECT ms, reason FROM bench.timed_verify((SELECT key FROM bench.cold WHERE n = $i))" \
               -c "SELECT ms, reason FROM bench.timed_verify((SELECT key FROM bench.cold WHERE n = $i))" |
        paste - - >>"$work/cold.tsv"
done
stats "$work/cold_b.tsv"
# The other half: never-verified keys, one after another in a single session that has
# already run argon2 once (a pooled connection meeting a new key).
q -F $'\t' -c "SELECT t.ms, t.reason FROM bench.cold c, LATERAL bench.timed_verify(c.key) t
                WHERE c.n > $COLD_KEYS ORDER BY c.n" >"$work/pooled.tsv"

pgb=(pgbench -h "$dir" -p "$PORT" -U postgres -n -M prepared -c "$CLIENTS" -j "$CLIENTS"
     -T "$SECS" -D "nkeys=$NKEYS" -D "nwrong=$NWRONG")
: >"$work/rounds.tsv"
# round LABEL N SCRIPT [pgbench flags]: one pgbench run; tps and transactions into
# rounds.tsv, api_keys.stats() before and after into stats_LABEL_N_{a,b}.tsv.
round() {
    local label=$1 n=$2 script=$3 out tps txns
    shift 3
    stats "$work/stats_${label}_${n}_a.tsv"
    [[ $script = /* ]] || script=$here/$script
    if ! out=$("${pgb[@]}" "$@" -f "$script" postgres 2>&1); then
        echo "$out" >&2
        exit 1
    fi
    stats "$work/stats_${label}_${n}_b.tsv"
    tps=$(awk '/^tps = / { print $3; exit }' <<<"$out")
    txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2; exit }' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$n" "$tps" "$txns" "$(date +%H:%M:%S)" >>"$work/rounds.tsv"
    printf '    %-22s round %s: %10.1f tps  (%s transactions)\n' "$label" "$n" "$tps" "$txns"
}

# Each scenario: lookup, scenario, lookup, scenario, ... so both see the same machine.
# The scenarios drawing from a pool of 200,000 keys compare with a lookup that draws its
# prefix from the same pool (lookup_pool.sql), so both pay the same sampling.
scenarios=(warm:warm.sql::lookup.sql metered:metered.sql::lookup.sql garbage:garbage.sql::lookup.sql
           forged:forged.sql::lookup_pool.sql wrong_secret:wrong_secret.sql::lookup_pool.sql
           legacy_flood:legacy_flood.sql::lookup_pool.sql new_sessions:warm.sql:-C:lookup.sql)
for s in "${scenarios[@]}"; do
    IFS=: read -r label script flag baseline <<<"$s"
    if [ "$baseline" = lookup_pool.sql ]; then
        # (A table name cannot be a pgbench variable under -M prepared.)
        pool=$(sed -n 's/.*FROM bench\.\([a-z_]*\) WHERE n = :w.*/\1/p' "$here/$script")
        sed "s/:pool/bench.$pool/" "$here/lookup_pool.sql" >"$work/lookup_$pool.sql"
        baseline=$work/lookup_$pool.sql
    fi
    echo "==> $label: $ROUNDS x ($(basename "$baseline" .sql)${flag:+ $flag}, $label), ${SECS}s each"
    for n in $(seq 1 "$ROUNDS"); do
        round "lookup_for_$label" "$n" "$baseline" ${flag:+"$flag"}
        round "$label" "$n" "$script" ${flag:+"$flag"}
    done
done

echo "==> rls: $ROUNDS x (rls_format, rls_has_scope, rls_scan, rls_initplan), ${SECS}s each"
for n in $(seq 1 "$ROUNDS"); do
    for label in rls_format rls_has_scope rls_scan rls_initplan; do
        round "$label" "$n" "$label.sql"
    done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - t_start))

setting() { q -c "SELECT current_setting('$1')"; }
export BENCH_STARTED="$started" BENCH_ELAPSED="$elapsed" BENCH_LOAD_BEFORE="$load_before" \
    BENCH_LOAD_AFTER="$load_after" BENCH_SECS="$SECS" BENCH_ROUNDS="$ROUNDS" BENCH_KEYS="$NKEYS" \
    BENCH_NWRONG="$NWRONG" BENCH_WRONG_PER_KEY="$WRONG_PER_KEY" BENCH_COLD_KEYS="$COLD_KEYS" \
    BENCH_CLIENTS="$CLIENTS" BENCH_RLS_ROWS="$RLS_ROWS" \
    BENCH_PG_VERSION="$(q -c 'SHOW server_version')" \
    BENCH_NPROC="$(nproc)" \
    BENCH_CPU="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    BENCH_MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
    BENCH_COMMIT="$commit" \
    BENCH_SETTINGS="$(for g in api_keys.argon2_memory_kib api_keys.argon2_iterations api_keys.argon2_parallelism \
        api_keys.argon2_budget_per_minute api_keys.argon2_after_failure_per_second \
        api_keys.max_concurrent_argon2 api_keys.memo_entries \
        shared_buffers fsync; do printf '%s = %s; ' "$g" "$(setting "$g")"; done)"

python3 - "$work" "$REPORT" <<'PY'
import os, statistics, sys
work, report = sys.argv[1], sys.argv[2]
E = os.environ

def load_stats(path):
    return {c: int(v) for c, v in (l.rstrip("\n").split("\t") for l in open(path) if l.strip())}

def delta(a, b):
    a, b = load_stats(a), load_stats(b)
    return {k: b[k] - a.get(k, 0) for k in b}

rounds = {}
for line in open(f"{work}/rounds.tsv"):
    label, n, tps, txns, at = line.rstrip("\n").split("\t")
    rounds.setdefault(label, []).append((int(n), float(tps), int(txns), at))

def med(label):
    return statistics.median(t for _, t, _, _ in rounds[label])

def rdelta(label, n):
    return delta(f"{work}/stats_{label}_{n}_a.tsv", f"{work}/stats_{label}_{n}_b.tsv")

def sdelta(label):
    total = {}
    for n, *_ in rounds[label]:
        for k, v in rdelta(label, n).items():
            total[k] = total.get(k, 0) + v
    return total

def other_reasons(d):
    return ", ".join(f"{k[7:]} {v:,}" for k, v in sorted(d.items())
                     if k.startswith("verify_") and k != "verify_invalid_secret" and v) or "none"

rows = [
    ("warm valid keys (memo hit)", "warm", "lookup", 0.8),
    ("warm valid keys with credits and owner limits (memo hit)", "metered", "lookup", 1.0),
    ("garbage (checksum fails)", "garbage", "lookup", 1.0),
    ("forged signed secrets, real prefixes (flood)", "forged", "lookup, same pool", 1.1),
    ("unsigned-shaped wrong secrets for signed keys", "wrong_secret", "lookup, same pool", 0.5),
    ("wrong secrets for unsigned (pre-0.5.0) keys, real prefixes (flood)", "legacy_flood", "lookup, same pool", 0.5),
    ("new sessions (`pgbench -C`, warm.sql, shared memo)", "new_sessions", "lookup `-C`", None),
]
out = []
w = out.append
w("# api_keys benchmark report\n")
w("Written by `tests/bench/run.sh`; reproduce with:\n")
w("```sh\nmake bench\n```\n")
w(f"- Date: {E['BENCH_STARTED']} (run took {E['BENCH_ELAPSED']} s)")
w(f"- Machine: {E['BENCH_NPROC']} CPUs (`nproc`), {E['BENCH_CPU']}, {E['BENCH_MEM']} RAM; "
  f"load average before {E['BENCH_LOAD_BEFORE']}, after {E['BENCH_LOAD_AFTER']}")
w(f"- PostgreSQL {E['BENCH_PG_VERSION']}; api_keys release build (`cargo pgrx install --release`), "
  f"commit {E['BENCH_COMMIT']}")
w("- Cluster: throwaway, `tests/pg_cluster.sh` (`shared_preload_libraries = 'api_keys'`, "
  "unix socket, `fsync = off`), otherwise default settings:")
w(f"  `{E['BENCH_SETTINGS'].strip().rstrip(';')}`")
w(f"- Data: {E['BENCH_KEYS']} signed keys issued with the default argon2 settings "
  f"(realistic hashes), and {E['BENCH_KEYS']} more made unsigned like keys issued before "
  "0.5.0 (issued the same way, then their rows' `signing_key` cleared as a superuser with "
  "`session_replication_role = replica`, and their text cut back to prefix and 43-character "
  "secret with a new checksum); memo warmed by one verification of each (all `ok`); rate "
  "limits set far above what the benchmark reaches.")
w(f"- Load: `pgbench -M prepared -c {E['BENCH_CLIENTS']} -j {E['BENCH_CLIENTS']} "
  f"-T {E['BENCH_SECS']} -n`, key chosen by `\\set n random(1, {E['BENCH_KEYS']})` (from "
  f"a pool: `\\set w random(1, {int(E['BENCH_NWRONG'])})`) and a primary-key subselect "
  "(the same in every script, baseline included). For each scenario "
  f"{E['BENCH_ROUNDS']} rounds of the baseline alternate with {E['BENCH_ROUNDS']} rounds of "
  "the scenario; the table gives medians, and the ratio is scenario median / baseline "
  "median of the same alternation.")
w("- Baseline `lookup.sql`: `SELECT id, status, scopes FROM api_keys.keys WHERE prefix = …` "
  "as a superuser, the prefix drawn from `bench.keys` (200 rows) like the key of the warm "
  "and garbage scripts. The scenarios drawing from a pool of "
  f"{int(E['BENCH_NWRONG']):,} keys compare with `lookup_pool.sql`, the same lookup with "
  "its prefix drawn from that pool the same way, so both pay the same sampling (a larger "
  "table's index probe). New sessions compare `warm.sql` and `lookup.sql`, both with `-C` "
  "(a new connection per transaction).")
w(f"- Pools: three of {int(E['BENCH_NWRONG']):,} precomputed keys each "
  f"({E['BENCH_WRONG_PER_KEY']} per prefix, all with a valid checksum), drawn at random each "
  "call; not fresh per call (PostgreSQL 15 has no CRC32 in SQL).")
w("  - forged: real prefix of a signed key, random 43-character secret, that key's real "
  "signing key id, random 17-digit MAC below 2^96: refused `invalid_secret` by the MAC "
  "(one HMAC), before any key row is read; no memo, argon2 or budget.")
w("  - wrong_secret: real prefix of a signed key, random 43-character secret and no "
  "signature (the shape of a key issued before 0.5.0): refused `invalid_secret` after the "
  "key row is read, as the row says the key is signed; no memo, argon2 or budget. Both "
  "count in `forged_signatures`.")
w("  - legacy_flood: real prefix of an unsigned key, random 43-character secret: the path "
  "of keys issued before 0.5.0 (key row, memo, argon2 within the budgets below). A repeat "
  "behaves like a fresh key unless argon2 already ran for it (then it is a memo hit); "
  "throttled presentations are not remembered.")
w(f"- Garbage: each real key with its last checksum character changed.\n")

w("## Results\n")
w("| scenario | tps (median) | lookup tps (same run) | ratio | target | met? |")
w("|---|---:|---:|---:|---:|:---:|")
for name, label, base_name, target in rows:
    s, b = med(label), med("lookup_for_" + label)
    r = s / b
    tgt = f"≥ {target:.1f}×" if target else "—"
    met = ("yes" if r >= target else "**no**") if target else "—"
    w(f"| {name} | {s:,.0f} | {b:,.0f} ({base_name}) | {r:.2f}× | {tgt} | {met} |")

# What metering itself costs: the metered keys against the plain warm ones, each against
# its own alternating lookup rounds (the machine's drift cancels out).
metered_ratio = (med("metered") / med("lookup_for_metered")) / (med("warm") / med("lookup_for_warm"))
w("")
w(f"Credits and owner limits on (every call spends a use and counts in the owner's windows as "
  f"well as the key's) run at {metered_ratio:.2f}× the warm verification without them, "
  f"each taken against its own lookup rounds.")

def per_round(label, counter):
    return [rdelta(label, n).get(counter, 0) for n, *_ in rounds[label]]

def time_weighted(label):
    rs = rounds[label]
    return sum(t for _, _, t, _ in rs) / (len(rs) * float(E["BENCH_SECS"]))

def counts(xs):
    return ", ".join(f"{x:,}" for x in xs)

w("")
for name, label, what, section in [
    ("Forged", "forged", f"argon2 runs per round {counts(per_round('forged', 'argon2_runs'))}, "
     f"forged_signatures per round {counts(per_round('forged', 'forged_signatures'))}",
     "Forged signed secrets"),
    ("Unsigned keys flood", "legacy_flood",
     f"argon2 runs per round {counts(per_round('legacy_flood', 'argon2_runs'))}",
     "Flood of wrong secrets for unsigned keys"),
]:
    tw = time_weighted(label)
    w(f"{name}: {what}; time-weighted over all {label} rounds (transactions / seconds) "
      f"{tw:,.0f} tps, {tw / med('lookup_for_' + label):.2f}× the lookup (see {section} below).\n")

cold = [l.rstrip("\n").split("\t") for l in open(f"{work}/cold.tsv") if l.strip()]
first = [float(c[0]) for c in cold]
second = [float(c[2]) for c in cold]
reasons = sorted({c[1] for c in cold} | {c[3] for c in cold})
cd = delta(f"{work}/cold_a.tsv", f"{work}/cold_b.tsv")
pooled = [float(l.split("\t")[0]) for l in open(f"{work}/pooled.tsv") if l.strip()][1:]
pooled_reasons = sorted({l.rstrip("\n").split("\t")[1] for l in open(f"{work}/pooled.tsv") if l.strip()})
w(f"**Cold single-key latency** (first verification of a freshly issued key, in a new "
  f"session; server-side `clock_timestamp()` around the call; {len(first)} keys): "
  f"median **{statistics.median(first):.1f} ms**, max **{max(first):.1f} ms** "
  f"(min {min(first):.1f} ms). The same key again in the same session: median "
  f"{statistics.median(second):.3f} ms. Reasons: {', '.join(reasons)}; argon2 runs "
  f"{cd['argon2_runs']}, memo hits {cd['memo_hits']}.\n")
w(f"First verification of a never-verified key in a session that has already hashed once "
  f"(a pooled connection; {len(pooled)} keys): median **{statistics.median(pooled):.1f} ms**, "
  f"max {max(pooled):.1f} ms ({', '.join(pooled_reasons)}): mostly argon2 itself; the cold "
  "latency also includes a new backend's first verification and first argon2.\n")

rls_rows = int(E["BENCH_RLS_ROWS"])
w(f"**has_scope in row-level checks** (`count(*)` over {rls_rows:,} rows per transaction, "
  "after `login()` with a key holding `projects/42/*:read`; medians):\n")
w("| check | tps | baseline | baseline tps | ratio | added time per row |")
w("|---|---:|---|---:|---:|---:|")
for name, label, base, base_name in [
    ("per row: `has_scope(format('projects/%s/runs:read', project))`", "rls_has_scope", "rls_format",
     "the same scope text without has_scope"),
    ("once: `(SELECT has_scope('projects/42/runs:read'))`", "rls_initplan", "rls_scan", "the bare scan"),
]:
    s, b = med(label), med(base)
    added = (1 / s - 1 / b) * int(E["BENCH_CLIENTS"]) / rls_rows
    w(f"| {name} | {s:,.1f} | {base_name} | {b:,.1f} | {s / b:.2f}× | {added * 1e9:,.1f} ns |")
w("")
w("In the initplan form has_scope runs once per statement; the time it adds per row is "
  "PostgreSQL's gating `Result` node (`One-Time Filter: $0`), which passes every row of "
  "the scan through.\n")

w("## Forged signed secrets (forged) — `api_keys.stats()` deltas\n")
w("| round | ended | tps | transactions | argon2_runs | forged_signatures | invalid_secret | memo_hits | memo_misses | other reasons |")
w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
for n, tps, txns, at in rounds["forged"]:
    d = rdelta("forged", n)
    w(f"| {n} | {at} | {tps:,.0f} | {txns:,} | {d['argon2_runs']:,} | {d['forged_signatures']:,} | "
      f"{d['verify_invalid_secret']:,} | {d['memo_hits']:,} | {d['memo_misses']:,} | {other_reasons(d)} |")
w("")
w("A forged presentation's MAC is checked (one HMAC-SHA-256) before the key row is read; "
  "when it fails the answer is `invalid_secret`, counted in `forged_signatures`, with no "
  "key row read, no memo lookup, no argon2 and no budget spent, so argon2_runs, memo_hits "
  "and memo_misses should stay 0 and forged_signatures equal invalid_secret.\n")

w("## Flood of wrong secrets for unsigned keys (legacy_flood) — `api_keys.stats()` deltas\n")
w("| round | ended | tps | transactions | argon2_runs | argon2_throttled | memo_hits | memo_misses | invalid_secret | other reasons |")
w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
for n, tps, txns, at in rounds["legacy_flood"]:
    d = rdelta("legacy_flood", n)
    w(f"| {n} | {at} | {tps:,.0f} | {txns:,} | {d['argon2_runs']:,} | {d['argon2_throttled']:,} | "
      f"{d['memo_hits']:,} | {d['memo_misses']:,} | {d['verify_invalid_secret']:,} | {other_reasons(d)} |")
w("")
settings = dict(kv.split(" = ", 1) for kv in E["BENCH_SETTINGS"].strip().rstrip(";").split("; "))
budget = int(settings["api_keys.argon2_budget_per_minute"])
allowance = int(settings["api_keys.argon2_after_failure_per_second"])
text = ("Two budgets bound the hashing for keys issued before 0.5.0 (a signed presentation "
        "reaches argon2 only when its MAC checks, and is never throttled). Per prefix, at "
        f"most {budget} computations per clock minute. Server-wide, once a prefix has seen a "
        "wrong secret (it is then suspect for 10 minutes), its unknown presentations also "
        f"draw on {allowance} computations a second for all suspect prefixes together. So a "
        f"flood over all {E['BENCH_KEYS']} prefixes costs one hash per prefix when it starts "
        "(each one's first failure), then "
        f"about {allowance} a second. Everything else is answered `invalid_secret` without hashing.")
w(text + "\n")

w("## Every round\n")
w("| scenario | round | ended | tps | transactions |")
w("|---|---:|---|---:|---:|")
for label in rounds:
    for n, tps, txns, at in rounds[label]:
        w(f"| {label} | {n} | {at} | {tps:,.1f} | {txns:,} |")
w("")

w("## Sanity: verification reasons per scenario (all rounds)\n")
w("| scenario | transactions | reasons (stats deltas) | forged_signatures | argon2_runs | memo_hits |")
w("|---|---:|---|---:|---:|---:|")
for _, label, _, _ in rows:
    d = sdelta(label)
    txns = sum(t for _, _, t, _ in rounds[label])
    rs = ", ".join(f"{k[7:]} {v:,}" for k, v in sorted(d.items()) if k.startswith("verify_") and v)
    w(f"| {label} | {txns:,} | {rs} | {d.get('forged_signatures', 0):,} | {d['argon2_runs']:,} | "
      f"{d['memo_hits']:,} |")
w("")
open(report, "w").write("\n".join(out))
print("\n".join(out))
PY
echo "==> wrote $REPORT"
