//! Roles that push on the extension, on real clusters: has_scope's memory under endless
//! distinct texts and in databases whose text is not UTF-8, oversized inputs refused
//! before they cost anything, argon2 waits that answer cancel and statement_timeout,
//! a worker that neither dies on a row it cannot process nor waits on a user's row lock,
//! rows written before the input bounds, SECURITY DEFINER functions acting for their
//! owner, and an empty X-API-Key header.

mod common;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::{
    issue, running_worker, shared_cluster, stats, verify, wait_for, worker_pid, Client, Cluster,
    DB, WORKER_CONF,
};
use postgres::GenericClient;

/// One cluster for the tests of this file that need no settings of their own; it stops
/// when the last of them drops its handle.
fn shared() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    shared_cluster(&SHARED, || Cluster::start("roles"))
}

/// The SQLSTATE and message of a statement that must fail with an error from the server.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, postgres::Error>) -> (String, String) {
    let e = result.expect_err(what);
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not an error from the server: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

fn backend_pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// A key's stored status (not the effective one of `key_list`).
fn status(c: &mut Client, id: &str) -> String {
    c.query_one(
        "SELECT status::text FROM api_keys.keys WHERE id = $1::text::uuid",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// What the worker has written of a key's use: verified calls in `api_keys.usage`, and
/// whether `last_used_at` is set.
fn recorded_use(c: &mut Client, id: &str) -> (i64, bool) {
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage u WHERE u.key_id = k.id), \
                    k.last_used_at IS NOT NULL \
               FROM api_keys.keys k WHERE k.id = $1::text::uuid",
            &[&id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn flushes(c: &mut Client) -> i64 {
    stats(c)["flushes"]
}

/// VmRSS and VmHWM of a process in kB: its resident memory now, and at its peak.
fn resident_kb(pid: i32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The server log's messages, each with its DETAIL, HINT, CONTEXT and STATEMENT lines.
fn log_messages(log: &str) -> Vec<String> {
    const PARTS: [&str; 6] = [
        "] DETAIL:  ",
        "] HINT:  ",
        "] CONTEXT:  ",
        "] STATEMENT:  ",
        "] QUERY:  ",
        "] LOCATION:  ",
    ];
    let mut messages: Vec<String> = Vec::new();
    for line in log.lines() {
        let continues = line.starts_with('\t') || PARTS.iter().any(|p| line.contains(p));
        match messages.last_mut() {
            Some(m) if continues => {
                m.push('\n');
                m.push_str(line);
            }
            _ => messages.push(line.to_string()),
        }
    }
    messages
}

/// has_scope over 100 distinct texts of 10 MB each: none is a scope.
const HUGE_TEXTS: &str =
    "SELECT count(*) FILTER (WHERE api_keys.has_scope(repeat('x', 10000000) || g)) \
                            FROM generate_series(1, 100) g";
/// has_scope over 100,000 distinct valid scopes of exactly 200 bytes.
const MANY_SCOPES: &str =
    "SELECT count(*) FILTER (WHERE api_keys.has_scope(rpad('r' || g, 195, 'x') || ':read')) \
                             FROM generate_series(1, 100000) g";

fn count(c: &mut impl GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// A role with nothing granted feeds has_scope 1 GB of distinct texts and 100,000
/// distinct scopes, without a key and then inside a context of a `*` key: the answers
/// are right, its backend's resident memory (now and at its peak) grows by less than
/// 150 MB, and the server neither crashes nor restarts.
#[test]
fn has_scope_memory_is_bounded_and_the_server_survives() {
    let cluster = shared();
    let mut admin = cluster.connect_fast(DB);
    admin.batch_execute("CREATE ROLE plain LOGIN").unwrap();
    let postmaster_started = |c: &mut Client| -> String {
        c.query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0)
    };
    let started = postmaster_started(&mut admin);
    // A crashed backend makes the postmaster end every session (its start time stays):
    // one opened before must still answer after.
    let mut witness = cluster.connect_fast(DB);
    let mut c = cluster.connect_as(DB, "plain");
    let pid = backend_pid(&mut c);
    // Loads the library and its caches before the baseline.
    count(
        &mut c,
        "SELECT count(*) FILTER (WHERE api_keys.has_scope('runs:read'))",
    );
    let before = resident_kb(pid);

    assert_eq!(count(&mut c, HUGE_TEXTS), 0);
    assert_eq!(count(&mut c, MANY_SCOPES), 0, "no key: nothing is granted");

    let k = issue(
        &mut admin,
        "'plain login', 'service', 'production', owner => 'plain'",
    );
    admin
        .batch_execute("GRANT api_keys_verifier TO plain")
        .unwrap();
    let mut t = c.transaction().unwrap();
    t.query_one("SELECT api_keys.login($1::text)::text", &[&k.key])
        .unwrap();
    assert_eq!(
        count(&mut t, HUGE_TEXTS),
        0,
        "a text over 200 bytes is no scope"
    );
    assert_eq!(count(&mut t, MANY_SCOPES), 100_000, "* grants every scope");
    t.commit().unwrap();

    let after = resident_kb(pid);
    let grown = |now: u64, then: u64| now.saturating_sub(then) / 1024;
    assert!(
        grown(after.0, before.0) < 150 && grown(after.1, before.1) < 150,
        "backend {pid} grew from {before:?} to {after:?} kB (VmRSS, VmHWM)"
    );
    assert_eq!(
        count(&mut c, "SELECT 1::int8"),
        1,
        "the session still works"
    );
    assert_eq!(
        postmaster_started(&mut admin),
        started,
        "the server restarted\n{}",
        cluster.server_log()
    );
    assert_eq!(
        count(&mut witness, "SELECT 1::int8"),
        1,
        "a session opened before survives"
    );
}

/// has_scope's answers in `db` for texts that are no scope there, NULL, and a per-row
/// check over such rows, with or without a context granting `runs:read`.
fn check_texts(c: &mut impl GenericClient, db: &str, logged_in: bool) {
    for text in [
        "E'caf\\xe9:read'",
        "'café:read'",
        "E'runs:\\xffread'",
        "E'\\xff\\xfe'",
        "NULL",
    ] {
        let sql = format!("SELECT api_keys.has_scope({text})");
        let answer: Option<bool> = c
            .query_one(&sql, &[])
            .unwrap_or_else(|e| panic!("{db}: {sql}: {e:?}"))
            .get(0);
        assert_eq!(answer, Some(false), "{db}: {sql}");
    }
    let policy = "SELECT count(*) FROM (VALUES ('runs:read'), (E'x\\xe9'), (E'runs:read\\xff'), (NULL)) v(s) \
                   WHERE api_keys.has_scope(s)";
    let granted: i64 = c
        .query_one(policy, &[])
        .unwrap_or_else(|e| panic!("{db}: per-row check: {e:?}"))
        .get(0);
    assert_eq!(granted, i64::from(logged_in), "{db}: per-row check");
}

/// Issue, update and register_scope with scopes holding bytes that are not UTF-8 (0.4.0
/// before the review aborted the whole server on `\xff`): 22023, and the session lives.
fn scopes_that_are_not_utf8_are_refused(c: &mut Client, db: &str, own: &str) {
    for scopes in [
        "ARRAY[E'ab\\xff:read']",
        "ARRAY['runs:read', E'r\\xe9:read']",
    ] {
        for sql in [
            format!(
                "SELECT id FROM api_keys.api_key_issue('x', 'service', 'production', {scopes})"
            ),
            format!("SELECT id FROM api_keys.api_key_update('{own}', scopes => {scopes})"),
        ] {
            let (code, message) = refusal(&sql, c.query(&sql, &[]));
            assert_eq!(code, "22023", "{db}: {sql}: {message}");
        }
    }
    let sql = "SELECT api_keys.api_key_register_scope(E'r\\xff', 'read')";
    let (code, message) = refusal(sql, c.query(sql, &[]));
    assert_eq!(code, "22023", "{db}: {sql}: {message}");
    assert_eq!(count(c, "SELECT 1::int8"), 1, "{db}: the session lives");
}

/// In SQL_ASCII and LATIN1 databases, has_scope answers false (never an error) for
/// texts that are not UTF-8 or not scopes, false for NULL, and a per-row policy over such
/// rows runs, granting only the real scope once a key is logged in.
#[test]
fn has_scope_in_sql_ascii_and_latin1() {
    let cluster = shared();
    let mut admin = cluster.connect(DB);
    for (db, encoding) in [("ascii", "SQL_ASCII"), ("latin1", "LATIN1")] {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {db} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ))
            .unwrap();
        let mut c = cluster.connect_fast(db);
        c.batch_execute("CREATE EXTENSION api_keys").unwrap();
        let k = issue(
            &mut c,
            "'encoded', 'service', 'production', ARRAY['runs:read']",
        );
        check_texts(&mut c, db, false);
        scopes_that_are_not_utf8_are_refused(&mut c, db, &k.id);
        let mut t = c.transaction().unwrap();
        t.query_one("SELECT api_keys.login($1::text)::text", &[&k.key])
            .unwrap_or_else(|e| panic!("{db}: login: {e:?}"));
        check_texts(&mut t, db, true);
        t.commit().unwrap();
    }
}

/// Oversized arguments, each with the word its refusal must name. `big` is a temporary
/// table built before the timeout is set, so only the call itself is timed.
const OVERSIZED: &[(&str, &str)] = &[
    ("scope", "scopes => (SELECT scopes FROM big)"),
    ("scope", "scopes => (SELECT many_scopes FROM big)"),
    ("scope", "scopes => ARRAY[rpad('r', 196, 'x') || ':read']"),
    ("cidr", "allowed_cidrs => (SELECT cidrs FROM big)"),
    (
        "description",
        "description => (SELECT description FROM big)",
    ),
    ("metadata", "metadata => (SELECT metadata FROM big)"),
];

const BIG_INPUTS: &str = "\
CREATE TEMP TABLE big AS SELECT
    (SELECT array_agg(format('r%s:read', g)) FROM generate_series(1, 120000) g) AS scopes,
    array_fill('*'::text, ARRAY[10000000]) AS many_scopes,
    repeat('n', 140000000) AS name,
    (SELECT array_agg(('10.' || (g >> 16) || '.' || ((g >> 8) & 255) || '.' || (g & 255))::cidr)
       FROM generate_series(1, 1000000) g) AS cidrs,
    repeat('d', 300000) AS description,
    jsonb_build_object('blob', repeat('m', 100000)) AS metadata";

/// A plain role's issue and update of its own key with 120,000 scopes, 10,000,000
/// scopes, a 201-byte scope, a 140,000,000-character name, 1,000,000 CIDR rules, a
/// 300,000-character description or 100 kB of metadata: each is 22023 naming the field,
/// within a 2 s statement_timeout.
fn oversized_inputs_are_refused(cluster: &Cluster) {
    cluster
        .connect(DB)
        .batch_execute("CREATE ROLE plain LOGIN")
        .unwrap();
    let mut c = cluster.connect_as(DB, "plain");
    let own = issue(&mut c, "'own', 'service', 'production'");
    c.batch_execute(BIG_INPUTS).unwrap();
    c.batch_execute("SET statement_timeout = '2s'").unwrap();
    for (field, arg) in OVERSIZED {
        for sql in [
            format!("SELECT id FROM api_keys.api_key_issue(name => 'big', key_type => 'service', environment => 'production', {arg})"),
            format!(
                "SELECT id FROM api_keys.api_key_update('{}', {arg})",
                own.id
            ),
        ] {
            refused_naming(&mut c, &sql, field);
        }
    }
    for sql in [
        "SELECT id FROM api_keys.api_key_issue((SELECT name FROM big), 'service', 'production')"
            .to_string(),
        format!(
            "SELECT id FROM api_keys.api_key_update('{}', name => (SELECT name FROM big))",
            own.id
        ),
    ] {
        refused_naming(&mut c, &sql, "name");
    }
}

fn refused_naming(c: &mut Client, sql: &str, field: &str) {
    let (code, message) = refusal(sql, c.query(sql, &[]));
    assert_eq!(code, "22023", "{sql}: {message}");
    assert!(
        message.to_lowercase().contains(field),
        "{sql}: the message names the field: {message}"
    );
}

const ISSUE_WAITER: &str =
    "SELECT id FROM api_keys.api_key_issue('waiter', 'service', 'production')";

/// Argon2 settings for `c` under which one hash takes at least about `at_least` in this
/// build (debug or release): measured with one pass over 256 MiB.
fn slow_hashing(c: &mut Client, at_least: Duration) {
    c.batch_execute("SET api_keys.argon2_memory_kib = 262144; SET api_keys.argon2_iterations = 1")
        .unwrap();
    let start = Instant::now();
    issue(c, "'calibration', 'service', 'production'");
    let passes = (at_least.as_secs_f64() / start.elapsed().as_secs_f64())
        .ceil()
        .clamp(1.0, 64.0) as u32;
    c.batch_execute(&format!("SET api_keys.argon2_iterations = {passes}"))
        .unwrap();
}

fn is_active(c: &mut Client, pid: i32) -> bool {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
        &[&pid],
    )
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

/// With max_concurrent_argon2 = 1 and one issue hashing slowly in the only slot, an
/// issue waiting for the slot ends with 57014 within 2 s of pg_cancel_backend, and one
/// under a 500 ms statement_timeout within 2 s of it, both while the slot is still held.
fn waiting_for_argon2_answers_cancel_and_timeout(cluster: &Cluster) {
    let mut admin = cluster.connect(DB);
    admin
        .batch_execute("ALTER SYSTEM SET api_keys.max_concurrent_argon2 = 1")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let mut holder = cluster.connect_fast(DB);
    let mut cancelled = cluster.connect_fast(DB);
    let mut timed_out = cluster.connect_fast(DB);
    for c in [&mut holder, &mut cancelled, &mut timed_out] {
        wait_for(
            "max_concurrent_argon2 = 1 in every session",
            Duration::from_secs(10),
            || {
                let cap: String = c
                    .query_one("SHOW api_keys.max_concurrent_argon2", &[])
                    .unwrap()
                    .get(0);
                cap == "1"
            },
        );
    }
    slow_hashing(&mut holder, Duration::from_secs(6));
    timed_out
        .batch_execute("SET statement_timeout = '500ms'")
        .unwrap();
    let holder_pid = backend_pid(&mut holder);
    let cancelled_pid = backend_pid(&mut cancelled);
    std::thread::scope(|s| {
        let holding = s.spawn(|| issue(&mut holder, "'holder', 'service', 'production'"));
        wait_for("the holder's issue", Duration::from_secs(10), || {
            is_active(&mut admin, holder_pid)
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let first = s.spawn(|| (cancelled.query(ISSUE_WAITER, &[]), Instant::now()));
        let second = s.spawn(|| (timed_out.query(ISSUE_WAITER, &[]), Instant::now()));
        std::thread::sleep(Duration::from_millis(300));
        let cancel_sent = Instant::now();
        admin
            .query_one("SELECT pg_cancel_backend($1)", &[&cancelled_pid])
            .unwrap();
        let (first, first_ended) = first.join().unwrap();
        let (second, second_ended) = second.join().unwrap();
        assert!(
            !holding.is_finished(),
            "the holder's hash ended before the waiters: nothing was tested"
        );
        let (code, message) = refusal("the cancelled issue", first);
        assert_eq!(code, "57014", "{message}");
        let waited = first_ended - cancel_sent;
        assert!(waited < Duration::from_secs(2), "cancel took {waited:?}");
        let (code, message) = refusal("the timed-out issue", second);
        assert_eq!(code, "57014", "{message}");
        let waited = second_ended - started;
        assert!(
            waited < Duration::from_millis(2500),
            "a 500 ms statement_timeout took {waited:?}"
        );
        holding.join().unwrap();
    });
}

/// Oversized inputs are 22023 before any work (never a statement_timeout), and an
/// issue waiting for an argon2 slot answers cancel and statement_timeout.
#[test]
fn oversized_inputs_are_refused_quickly_and_calls_answer_cancel() {
    let cluster = Cluster::start("oversized");
    oversized_inputs_are_refused(&cluster);
    waiting_for_argon2_answers_cancel_and_timeout(&cluster);
}

/// A test-only trigger that fails the expiry of keys named 'poison', naming the key.
const POISON: &str = "\
CREATE FUNCTION public.poison_expiry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'poison' AND NEW.status = 'expired' THEN
        RAISE EXCEPTION 'poison row %', NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE UPDATE ON api_keys.keys
    FOR EACH ROW EXECUTE FUNCTION public.poison_expiry()";

/// A key whose expiry always fails is skipped: the other due keys are expired, usage and
/// last use are written, the worker keeps its pid for 10 s of rounds, and the server log
/// names the poison key in one message only.
#[test]
fn worker_skips_a_row_it_cannot_process() {
    let cluster = Cluster::start_with("poison", WORKER_CONF);
    let worker = running_worker(&cluster);
    let mut c = cluster.connect_fast(DB);
    c.batch_execute(POISON).unwrap();
    let due = "expires_at => now() + interval '2 seconds'";
    let poison = issue(&mut c, &format!("'poison', 'service', 'production', {due}"));
    let due_keys = [
        issue(&mut c, &format!("'due 1', 'service', 'production', {due}")),
        issue(&mut c, &format!("'due 2', 'service', 'production', {due}")),
    ];
    let used = issue(&mut c, "'used', 'service', 'production'");
    for _ in 0..3 {
        assert_eq!(verify(&mut c, &used.key, None, None).reason, "ok");
    }
    wait_for(
        "the due keys expired and the use written",
        Duration::from_secs(30),
        || {
            due_keys.iter().all(|k| status(&mut c, &k.id) == "expired")
                && recorded_use(&mut c, &used.id) == (3, true)
        },
    );
    let rounds = flushes(&mut c);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            worker_pid(&mut c),
            Some(worker),
            "the worker restarted\n{}",
            cluster.server_log()
        );
    }
    assert!(
        flushes(&mut c) >= rounds + 5,
        "the worker kept working rounds"
    );
    assert_eq!(status(&mut c, &poison.id), "active");
    let log = cluster.server_log();
    let naming = log_messages(&log)
        .into_iter()
        .filter(|m| m.contains(&poison.id) || m.contains(&poison.prefix))
        .count();
    assert_eq!(naming, 1, "messages naming the poison key\n{log}");
}

/// Keys whose description is over jsonb's string limit (270 MB, as only rows written
/// before the input bounds can be) can still be revoked, with their audit entry, and
/// expired by the worker.
#[test]
fn legacy_oversized_row_can_be_revoked_and_expired() {
    let cluster = Cluster::start_with("legacy", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let revoked = issue(&mut c, "'legacy revoked', 'service', 'production'");
    let expiring = issue(&mut c, "'legacy expiring', 'service', 'production'");
    // Triggers off: the row as an earlier release could have stored it.
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         UPDATE api_keys.keys SET description = repeat('x', 270000000)
          WHERE id IN ('{}', '{}');
         UPDATE api_keys.keys SET expires_at = now() - interval '1 second' WHERE id = '{}';
         RESET session_replication_role",
        revoked.id, expiring.id, expiring.id
    ))
    .unwrap();

    let revoke = "SELECT status::text FROM api_keys.api_key_revoke($1::text::uuid, 'legacy row')";
    let now: String = c
        .query_one(revoke, &[&revoked.id])
        .unwrap_or_else(|e| panic!("revoking the legacy row: {e:?}"))
        .get(0);
    assert_eq!(now, "revoked");
    let audited = |c: &mut Client, id: &str, action: &str| -> (i64, i64) {
        let row = c
            .query_one(
                "SELECT count(*), coalesce(max(octet_length(details::text)), 0)::int8 \
                   FROM api_keys.audit_log WHERE key_id = $1::text::uuid AND action = $2",
                &[&id, &action],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (entries, details) = audited(&mut c, &revoked.id, "revoked");
    assert_eq!(entries, 1);
    assert!(details < 70_000, "audit details of {details} bytes");

    wait_for(
        "the worker to expire the legacy row",
        Duration::from_secs(60),
        || status(&mut c, &expiring.id) == "expired",
    );
    assert_eq!(audited(&mut c, &expiring.id, "expired").0, 1);
}

/// A user's open transaction holding a key's row lock neither stops nor delays the
/// worker: other keys' usage and last use are written and due keys expired while the
/// locked key is left alone; once the lock goes, the locked key is expired and its use
/// during the lock is written.
#[test]
fn worker_never_waits_on_a_users_lock() {
    let cluster = Cluster::start_with("locked", WORKER_CONF);
    let mut admin = cluster.connect_fast(DB);
    admin.batch_execute("CREATE ROLE plain LOGIN").unwrap();
    running_worker(&cluster);
    let mut user = cluster.connect_as(DB, "plain");
    let a = issue(
        &mut user,
        "'a', 'service', 'production', expires_at => now() + interval '3 seconds'",
    );
    let mut held = user.transaction().unwrap();
    held.query_one(
        "SELECT name FROM api_keys.api_key_update($1::text::uuid, name => 'held')",
        &[&a.id],
    )
    .unwrap();
    assert_eq!(verify(&mut admin, &a.key, None, None).reason, "ok");
    // C is due after A: expiring it means a round got past A's lock.
    let b = issue(&mut admin, "'b', 'service', 'production'");
    let c = issue(
        &mut admin,
        "'c', 'service', 'production', expires_at => now() + interval '3 seconds'",
    );
    for _ in 0..3 {
        assert_eq!(verify(&mut admin, &b.key, None, None).reason, "ok");
    }
    wait_for(
        "B's use written and C expired while A is locked",
        Duration::from_secs(20),
        || recorded_use(&mut admin, &b.id) == (3, true) && status(&mut admin, &c.id) == "expired",
    );
    assert_eq!(status(&mut admin, &a.id), "active");
    assert!(!recorded_use(&mut admin, &a.id).1);
    held.commit().unwrap();
    wait_for(
        "A expired and its use written after the commit",
        Duration::from_secs(20),
        || status(&mut admin, &a.id) == "expired" && recorded_use(&mut admin, &a.id) == (1, true),
    );
}

/// Functions of alice's own keys for whoever may call them.
const ALICE_FUNCTIONS: &str = "\
CREATE FUNCTION alice.revoke_key(k uuid) RETURNS void SECURITY DEFINER LANGUAGE sql
    AS $$ SELECT api_keys.api_key_revoke(k, 'via alice') $$;
CREATE FUNCTION alice.issue_for_bob() RETURNS uuid SECURITY DEFINER LANGUAGE sql
    AS $$ SELECT id FROM api_keys.api_key_issue('for bob', 'service', 'production', owner => 'bob') $$;
CREATE FUNCTION alice.visible_keys() RETURNS bigint SECURITY DEFINER LANGUAGE sql
    AS $$ SELECT count(*) FROM api_keys.key_list $$;
GRANT USAGE ON SCHEMA alice TO keyadmin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA alice TO keyadmin";

/// Inside a SECURITY DEFINER function owned by plain role alice, the management
/// functions act for alice whoever calls: an admin calling it cannot revoke bob's key
/// (P0002) or issue for bob (42501), revokes alice's key as alice (the audit actor),
/// and key_list there shows alice's keys only.
#[test]
fn definer_function_acts_for_its_owner() {
    let cluster = shared();
    let mut su = cluster.connect(DB);
    su.batch_execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; \
         CREATE ROLE keyadmin LOGIN IN ROLE api_keys_admin; \
         CREATE SCHEMA alice AUTHORIZATION alice",
    )
    .unwrap();
    let bobs = issue(
        &mut cluster.connect_as(DB, "bob"),
        "'bob''s', 'service', 'production'",
    );
    let mut alice = cluster.connect_as(DB, "alice");
    alice.batch_execute(ALICE_FUNCTIONS).unwrap();
    let alices = issue(&mut alice, "'alice''s', 'service', 'production'");
    let mut admin = cluster.connect_as(DB, "keyadmin");

    let revoke = "SELECT alice.revoke_key($1::text::uuid)";
    let (code, message) = refusal(
        "revoking bob's key through alice",
        admin.query(revoke, &[&bobs.id]),
    );
    assert_eq!(code, "P0002", "{message}");
    assert_eq!(status(&mut su, &bobs.id), "active");

    admin
        .query(revoke, &[&alices.id])
        .unwrap_or_else(|e| panic!("revoking alice's key through alice: {e:?}"));
    let actor: String = su
        .query_one(
            "SELECT actor FROM api_keys.audit_log WHERE key_id = $1::text::uuid AND action = 'revoked'",
            &[&alices.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(actor, "alice");

    let (code, message) = refusal(
        "issuing for bob through alice",
        admin.query("SELECT alice.issue_for_bob()", &[]),
    );
    assert_eq!(code, "42501", "{message}");

    assert_eq!(count(&mut admin, "SELECT alice.visible_keys()"), 1);
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM api_keys.key_list WHERE owner IN ('alice', 'bob')"
        ),
        2,
        "the admin itself sees both"
    );
}

/// authenticate() with an X-API-Key header that is present but empty or blank raises
/// PT401 "malformed" instead of running the request anonymously.
#[test]
fn empty_x_api_key_is_unauthorized() {
    let cluster = shared();
    cluster
        .connect(DB)
        .batch_execute("CREATE ROLE gateway LOGIN IN ROLE api_keys_verifier")
        .unwrap();
    let mut c = cluster.connect_as(DB, "gateway");
    for value in ["", "   "] {
        let mut t = c.transaction().unwrap();
        t.query_one(
            "SELECT set_config('request.headers', $1, true)",
            &[&format!(r#"{{"x-api-key": "{value}"}}"#)],
        )
        .unwrap();
        let (code, message) = refusal(
            &format!("x-api-key {value:?}"),
            t.query("SELECT api_keys.authenticate()", &[]),
        );
        assert_eq!(code, "PT401", "x-api-key {value:?}: {message}");
        assert!(
            message.contains("malformed"),
            "x-api-key {value:?}: {message}"
        );
    }
}

/// Issuing shares the server's argon2 slots with verification but yields them: with
/// max_concurrent_argon2 = 1 and four sessions issuing slow keys without pause, each
/// first verification of a key (an argon2 run) waits for at most about the hash that is
/// running, never for the queue of issuers.
#[test]
fn issuing_in_bulk_yields_argon2_slots_to_verification() {
    let cluster = Cluster::start_with("yield", &["api_keys.max_concurrent_argon2 = 1"]);
    let mut verifier = cluster.connect_fast(DB);
    let keys: Vec<_> = (0..6)
        .map(|i| {
            issue(
                &mut verifier,
                &format!("'fresh {i}', 'service', 'production'"),
            )
        })
        .collect();
    let mut calibration = cluster.connect(DB);
    slow_hashing(&mut calibration, Duration::from_millis(500));
    let one_hash = Instant::now();
    issue(&mut calibration, "'timed', 'service', 'production'");
    let one_hash = one_hash.elapsed();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let issued = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = cluster.connect(DB);
                slow_hashing(&mut c, Duration::from_millis(500));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    issue(&mut c, "'bulk', 'service', 'production'");
                    issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        wait_for("the issuers to start", Duration::from_secs(60), || {
            issued.load(std::sync::atomic::Ordering::Relaxed) >= 4
        });
        let waits: Vec<Duration> = keys
            .iter()
            .map(|k| {
                let start = Instant::now();
                assert_eq!(verify(&mut verifier, &k.key, None, None).reason, "ok");
                start.elapsed()
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bound = one_hash * 5 / 2 + Duration::from_millis(300);
        assert!(
            waits.iter().all(|w| *w < bound),
            "first verifications took {waits:?}; one slow hash takes about {one_hash:?}"
        );
    });
}

/// An expiry that fails as a whole takes no usage with it: the flush commits on its own.
/// Here the database is still at 0.3.1's SQL (the library is updated, ALTER EXTENSION
/// not yet run), whose expire_due() waits on a user's row lock until the worker's
/// lock_timeout, every round; the use of another key is written all the same.
#[test]
fn a_failing_expiry_loses_no_usage() {
    let cluster = Cluster::start_with("oldsql", WORKER_CONF);
    let mut admin = cluster.connect(DB);
    admin.batch_execute("CREATE DATABASE old").unwrap();
    admin.batch_execute("CREATE ROLE plain LOGIN").unwrap();
    let mut old = cluster.connect_fast("old");
    old.batch_execute("CREATE EXTENSION api_keys VERSION '0.3.1'")
        .unwrap();
    let used = issue(&mut old, "'used', 'service', 'production'");
    let mut user = cluster.connect_as("old", "plain");
    let due = issue(
        &mut user,
        "'due', 'service', 'production', expires_at => now() + interval '2 seconds'",
    );
    let mut held = user.transaction().unwrap();
    held.query_one(
        "SELECT name FROM api_keys.api_key_update($1::text::uuid, name => 'held')",
        &[&due.id],
    )
    .unwrap();
    wait_for("an expiry to fail", Duration::from_secs(30), || {
        cluster.server_log().contains("lock timeout")
    });
    for _ in 0..5 {
        assert_eq!(verify(&mut old, &used.key, None, None).reason, "ok");
    }
    wait_for(
        "the use written while every expiry fails",
        Duration::from_secs(40),
        || recorded_use(&mut old, &used.id) == (5, true),
    );
    assert_eq!(
        status(&mut old, &due.id),
        "active",
        "the lock is still held"
    );
    held.commit().unwrap();
    wait_for("the due key expired", Duration::from_secs(30), || {
        status(&mut old, &due.id) == "expired"
    });
}
