//! Change events: a real `LISTEN api_keys` session receives, at commit and only then,
//! one NOTIFY per status change, rotation and deletion, whoever makes it: the lifecycle
//! functions (by id or prefix), a direct UPDATE or DELETE by an admin, the worker's
//! expiry, a leaked-key report. Edits that change no status send nothing, and no
//! payload ever holds more than the action, key id, prefix and statuses (and a
//! rotation's new key): never a secret or a hash.

mod common;

use std::time::Duration;

use common::{cheap_hashing, issue, Client, Cluster, Issued, DB, WORKER_CONF};
use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};

/// Long enough for a notification a committed transaction sent to reach a listener on
/// the same machine; only waited out when asserting that nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(500);

fn listener(cluster: &Cluster) -> Client {
    // A plain role: any role of the database may listen, so the payload is for anyone.
    let mut admin = cluster.connect_fast(DB);
    admin
        .batch_execute("DO $$ BEGIN CREATE ROLE events_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .unwrap();
    let mut l = cluster.connect_as(DB, "events_reader");
    l.batch_execute("LISTEN api_keys").unwrap();
    l
}

/// The next `n` events, each within `wait`; then nothing more for QUIET. Each names
/// the audit entry (read by `admin`) that says the same; the entry ids are left out of
/// what is returned.
fn next_events(l: &mut Client, admin: &mut Client, n: usize, wait: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        let note = l
            .notifications()
            .timeout_iter(wait)
            .next()
            .unwrap_or_else(|e| panic!("reading notifications: {e}"))
            .unwrap_or_else(|| panic!("{} of {n} events arrived: {got:?}", got.len()));
        assert_eq!(note.channel(), "api_keys");
        let mut e: Value = serde_json::from_str(note.payload()).expect("a JSON payload");
        let entry = e
            .as_object_mut()
            .and_then(|o| o.remove("audit_id"))
            .and_then(|id| id.as_i64())
            .unwrap_or_else(|| panic!("no audit_id in {}", note.payload()));
        let audited: String = admin
            .query_one(
                "SELECT json_build_object('action', action, 'key_id', key_id, 'prefix', prefix, \
                        'old_status', old_status, 'new_status', new_status)::text \
                   FROM api_keys.audit_log WHERE id = $1",
                &[&entry],
            )
            .unwrap()
            .get(0);
        let audited: Value = serde_json::from_str(&audited).unwrap();
        for field in ["action", "key_id", "prefix", "old_status", "new_status"] {
            assert_eq!(e[field], audited[field], "{field} of audit entry {entry}");
        }
        got.push(e);
    }
    assert_nothing_more(l);
    got
}

fn assert_nothing_more(l: &mut Client) {
    let extra = l.notifications().timeout_iter(QUIET).next().unwrap();
    assert!(
        extra.is_none(),
        "unexpected event: {:?}",
        extra.map(|n| n.payload().to_owned())
    );
}

fn event(action: &str, k: &Issued, old: Option<&str>, new: Option<&str>) -> Value {
    json!({"action": action, "key_id": k.id, "prefix": k.prefix,
           "old_status": old, "new_status": new})
}

/// Rotate `k` (by prefix) with `grace` (SQL); the new key and the event it must send.
fn rotate(c: &mut Client, k: &Issued, grace: &str) -> (Issued, Value) {
    let row = c
        .query_one(
            &format!(
                "SELECT id::text, key, prefix FROM api_keys.api_key_rotate($1::text, {grace})"
            ),
            &[&k.prefix],
        )
        .unwrap();
    let fresh = Issued {
        id: row.get(0),
        key: row.get(1),
        prefix: row.get(2),
    };
    let mut rotated = event("rotated", k, Some("active"), Some("active"));
    rotated["new_key_id"] = json!(fresh.id);
    rotated["new_prefix"] = json!(fresh.prefix);
    (fresh, rotated)
}

fn status(c: &mut Client, k: &Issued) -> String {
    c.query_one(
        "SELECT status::text FROM api_keys.keys WHERE prefix = $1",
        &[&k.prefix],
    )
    .unwrap()
    .get(0)
}

fn secret_hash(c: &mut Client, k: &Issued) -> String {
    c.query_one(
        "SELECT secret_hash FROM api_keys.keys WHERE id = $1::text::uuid",
        &[&k.id],
    )
    .unwrap()
    .get(0)
}

#[test]
fn status_changes_rotations_and_deletions_are_sent_at_commit() {
    let cluster = Cluster::start_with("events", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    cheap_hashing(&mut c);
    let mut l = listener(&cluster);
    let wait = Duration::from_secs(5);
    let k = issue(&mut c, "'events', 'service', 'production'");
    let hashes = vec![secret_hash(&mut c, &k)];

    // Issuing and editing send nothing; a rolled-back change sends nothing.
    c.batch_execute(&format!(
        "SELECT api_keys.api_key_update('{}', name => 'renamed')",
        k.prefix
    ))
    .unwrap();
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!("SELECT api_keys.api_key_suspend('{}')", k.id))
        .unwrap();
    t.rollback().unwrap();
    assert_nothing_more(&mut l);

    // Sent at commit, not before.
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!(
        "SELECT api_keys.api_key_suspend('{}', 'a secret reason')",
        k.prefix
    ))
    .unwrap();
    assert_nothing_more(&mut l);
    t.commit().unwrap();
    let mut seen = next_events(&mut l, &mut c, 1, wait);
    assert_eq!(
        seen,
        [event("suspended", &k, Some("active"), Some("suspended"))]
    );

    // The functions, and an admin's direct UPDATE, alike.
    c.batch_execute(&format!(
        "SELECT api_keys.api_key_reactivate('{0}'::uuid); \
         UPDATE api_keys.keys SET status = 'suspended' WHERE id = '{0}'; \
         UPDATE api_keys.keys SET status = 'active', description = 'x' WHERE id = '{0}'",
        k.id
    ))
    .unwrap();
    let got = next_events(&mut l, &mut c, 3, wait);
    assert_eq!(
        got,
        [
            event("reactivated", &k, Some("suspended"), Some("active")),
            event("suspended", &k, Some("active"), Some("suspended")),
            event("reactivated", &k, Some("suspended"), Some("active")),
        ]
    );
    seen.extend(got);

    // A rotation with a grace names the new key; one without also revokes the old key.
    let (k2, rotated) = rotate(&mut c, &k, "interval '1 hour'");
    let got = next_events(&mut l, &mut c, 1, wait);
    assert_eq!(got, [rotated]);
    seen.extend(got);
    let (k3, rotated) = rotate(&mut c, &k2, "interval '0'");
    let got = next_events(&mut l, &mut c, 2, wait);
    assert_eq!(
        got,
        [
            rotated,
            event("revoked", &k2, Some("active"), Some("revoked"))
        ]
    );
    seen.extend(got);

    // Deletion, by function and by an admin's DELETE, with the status it had.
    c.batch_execute(&format!(
        "SELECT api_keys.api_key_delete('{}'); DELETE FROM api_keys.keys WHERE id = '{}'",
        k2.prefix, k.id
    ))
    .unwrap();
    let got = next_events(&mut l, &mut c, 2, wait);
    assert_eq!(
        got,
        [
            event("deleted", &k2, Some("revoked"), None),
            event("deleted", &k, Some("active"), None),
        ]
    );
    seen.extend(got);

    // A leaked-key report revokes, and says so.
    let hashes = [hashes, vec![secret_hash(&mut c, &k3)]].concat();
    c.query(
        "SELECT api_keys.api_key_report_leaked(ARRAY[$1], 'ci log')",
        &[&k3.key],
    )
    .unwrap();
    let got = next_events(&mut l, &mut c, 1, wait);
    assert_eq!(
        got,
        [event("revoked", &k3, Some("active"), Some("revoked"))]
    );
    seen.extend(got);

    // No payload holds a secret, a hash, a reason, a name or an owner.
    for e in &seen {
        let text = e.to_string();
        for secret in [&k.key, &k2.key, &k3.key].into_iter().chain(&hashes) {
            assert!(!text.contains(secret.as_str()), "{text}");
        }
        for word in ["secret reason", "ci log", "renamed", "postgres", "argon2"] {
            assert!(!text.contains(word), "{text}");
        }
    }
}

#[test]
fn the_workers_expiry_is_sent() {
    let cluster = Cluster::start_with("events_expiry", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    cheap_hashing(&mut c);
    let mut l = listener(&cluster);
    let k = issue(
        &mut c,
        "'short-lived', 'service', 'production', expires_at => clock_timestamp() + interval '1 second'",
    );
    // The worker marks it within a round or two of its expiry.
    let got = next_events(&mut l, &mut c, 1, Duration::from_secs(30));
    assert_eq!(got, [event("expired", &k, Some("active"), Some("expired"))]);
}

/// PostgreSQL refuses to PREPARE a transaction that sent a NOTIFY, so sessions that use
/// two-phase commit turn the events off; only a superuser may (a role that could would
/// hide its changes from listeners).
#[test]
fn two_phase_commit_works_with_change_events_off() {
    let cluster = Cluster::start_with("events_2pc", &["max_prepared_transactions = 2"]);
    let mut c = cluster.connect_fast(DB);
    cheap_hashing(&mut c);
    let mut l = listener(&cluster);
    let a = issue(&mut c, "'two-phase a', 'service', 'production'");
    let b = issue(&mut c, "'two-phase b', 'service', 'production'");
    c.batch_execute(
        "CREATE ROLE xa_app LOGIN IN ROLE api_keys_admin; \
         ALTER ROLE xa_app SET api_keys.change_events = off",
    )
    .unwrap();

    // With the events on, the revocation cannot be prepared (and so is rolled back).
    let mut on = cluster.connect(DB);
    on.batch_execute(&format!(
        "BEGIN; SELECT api_keys.api_key_revoke('{}', 'two-phase')",
        a.prefix
    ))
    .unwrap();
    let refused = on
        .batch_execute("PREPARE TRANSACTION 'with_events'")
        .unwrap_err();
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().unwrap_or("").contains("NOTIFY"),
        "{refused:?}"
    );

    // Off for xa_app: prepared, committed, and no event.
    let mut xa = cluster.connect_as(DB, "xa_app");
    let denied = xa
        .batch_execute("SET api_keys.change_events = on")
        .unwrap_err();
    let message = denied.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .unwrap_or("")
            .contains("permission denied"),
        "{denied:?}"
    );
    xa.batch_execute(&format!(
        "BEGIN; SELECT api_keys.api_key_revoke('{}', 'two-phase'); \
         PREPARE TRANSACTION 'without_events'",
        b.prefix
    ))
    .unwrap();
    xa.batch_execute("COMMIT PREPARED 'without_events'")
        .unwrap();
    assert_eq!(status(&mut c, &b), "revoked");
    assert_eq!(status(&mut c, &a), "active");
    assert_nothing_more(&mut l);
}
