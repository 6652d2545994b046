//! Behaviour across sessions of one server: status changes are seen at once after
//! commit and not before, verification in read-only transactions, a warm session
//! after the extension is dropped and created again elsewhere, and the settings of a
//! preloaded library exist in every fresh session.

mod common;

use std::sync::{Arc, Mutex, Weak};

use common::{
    forge_secret, issue, shared_cluster, try_verify, verify, Client, Cluster, Issued, DB,
};

/// One cluster shared by the tests of this file that run at the same time; it stops
/// when the last of them drops its handle.
fn shared() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    shared_cluster(&SHARED, || Cluster::start("sess"))
}

fn admin_call(c: &mut Client, sql: &str, id: &str) {
    c.query(sql, &[&id])
        .unwrap_or_else(|e| panic!("{sql} ({id}): {e:?}"));
}

fn assert_ok(c: &mut impl postgres::GenericClient, k: &Issued, what: &str) {
    let v = verify(c, &k.key, None, None);
    assert!(v.valid && v.reason == "ok", "{what}: {v:?}");
    assert_eq!(v.key_id.as_deref(), Some(k.id.as_str()), "{what}");
}

fn assert_rejected(c: &mut impl postgres::GenericClient, k: &Issued, reason: &str, what: &str) {
    let v = verify(c, &k.key, None, None);
    assert_eq!(v.reason, reason, "{what}: {v:?}");
    assert!(!v.valid, "{what}: {v:?}");
    assert_eq!(
        (v.key_id, v.owner, v.scopes),
        (None, None, None),
        "{what}: identity must be empty"
    );
}

/// (a) A warm session sees every committed status change on its very next call.
#[test]
fn warm_session_sees_committed_changes_at_once() {
    let cluster = shared();
    let mut admin = cluster.connect_fast(DB);
    let revoke = issue(&mut admin, "'warm-revoke', 'service', 'production'");
    let suspend = issue(&mut admin, "'warm-suspend', 'service', 'production'");
    let delete = issue(&mut admin, "'warm-delete', 'user', 'staging'");
    let expire = issue(&mut admin, "'warm-expire', 'user', 'development'");
    let direct = issue(&mut admin, "'warm-direct-update', 'service', 'production'");
    let rotate = issue(&mut admin, "'warm-rotate', 'service', 'production'");
    let in_tx = issue(&mut admin, "'warm-in-transaction', 'service', 'production'");

    let mut a = cluster.connect_fast(DB);
    // Warm up: each key verified (repeatedly, so any per-session or shared cache holds it).
    for k in [
        &revoke, &suspend, &delete, &expire, &direct, &rotate, &in_tx,
    ] {
        for _ in 0..3 {
            assert_ok(&mut a, k, "warm-up");
        }
    }

    admin_call(
        &mut admin,
        "SELECT api_key_revoke($1::text::uuid, 'compromised')",
        &revoke.id,
    );
    assert_rejected(&mut a, &revoke, "revoked", "after revoke");

    admin_call(
        &mut admin,
        "SELECT api_key_suspend($1::text::uuid, 'paused')",
        &suspend.id,
    );
    assert_rejected(&mut a, &suspend, "suspended", "after suspend");
    admin_call(
        &mut admin,
        "SELECT api_key_reactivate($1::text::uuid)",
        &suspend.id,
    );
    assert_ok(&mut a, &suspend, "after reactivate");

    admin_call(
        &mut admin,
        "SELECT api_key_delete($1::text::uuid)",
        &delete.id,
    );
    assert_rejected(&mut a, &delete, "not_found", "after delete");

    admin_call(
        &mut admin,
        "SELECT api_key_set_status($1::text::uuid, 'expired')",
        &expire.id,
    );
    assert_rejected(&mut a, &expire, "expired", "after set_status expired");

    // An admin's direct UPDATE of the table counts too.
    admin_call(
        &mut admin,
        "UPDATE api_keys.keys SET status = 'revoked', status_reason = 'direct' WHERE id = $1::text::uuid",
        &direct.id,
    );
    assert_rejected(&mut a, &direct, "revoked", "after direct UPDATE");

    // Rotation without grace revokes the old key at once; the new one works.
    let row = admin
        .query_one(
            "SELECT id::text, key, prefix FROM api_key_rotate($1::text::uuid)",
            &[&rotate.id],
        )
        .unwrap();
    let fresh = Issued {
        id: row.get(0),
        key: row.get(1),
        prefix: row.get(2),
    };
    assert_rejected(&mut a, &rotate, "revoked", "old key after rotate (grace 0)");
    assert_ok(&mut a, &fresh, "new key after rotate");

    // Inside an open READ COMMITTED transaction of the warm session, too.
    let mut tx = a.transaction().unwrap();
    assert_ok(&mut tx, &in_tx, "in transaction, before");
    admin_call(
        &mut admin,
        "SELECT api_key_revoke($1::text::uuid, 'mid-transaction')",
        &in_tx.id,
    );
    assert_rejected(
        &mut tx,
        &in_tx,
        "revoked",
        "in transaction, after a commit elsewhere",
    );
    tx.commit().unwrap();
}

/// (b) An uncommitted change in session B does not affect session A (nor block it)
/// until B commits; a rolled-back change never does.
#[test]
fn uncommitted_change_is_invisible_until_commit() {
    let cluster = shared();
    let mut admin = cluster.connect_fast(DB);
    let k_revoke = issue(&mut admin, "'pending-revoke', 'service', 'production'");
    let k_suspend = issue(&mut admin, "'pending-suspend', 'service', 'production'");
    let k_delete = issue(&mut admin, "'pending-delete', 'service', 'production'");

    let mut a = cluster.connect_fast(DB);
    // Verification must not wait for B's row lock: fail instead of hanging.
    a.batch_execute("SET statement_timeout = '10s'").unwrap();
    let mut b = cluster.connect_fast(DB);

    // Revoke: invisible while open, visible after COMMIT.
    assert_ok(&mut a, &k_revoke, "before");
    let mut tx = b.transaction().unwrap();
    tx.query(
        "SELECT api_key_revoke($1::text::uuid, 'pending')",
        &[&k_revoke.id],
    )
    .unwrap();
    // B itself sees its own change.
    assert_rejected(&mut tx, &k_revoke, "revoked", "B inside its transaction");
    assert_ok(&mut a, &k_revoke, "A while B's revoke is uncommitted");
    assert_ok(&mut a, &k_revoke, "A again while B's revoke is uncommitted");
    tx.commit().unwrap();
    assert_rejected(&mut a, &k_revoke, "revoked", "A after B commits");

    // Suspend, rolled back: never visible.
    let mut tx = b.transaction().unwrap();
    tx.query(
        "SELECT api_key_suspend($1::text::uuid, 'maybe')",
        &[&k_suspend.id],
    )
    .unwrap();
    assert_ok(&mut a, &k_suspend, "A while B's suspend is uncommitted");
    tx.rollback().unwrap();
    assert_ok(&mut a, &k_suspend, "A after B rolls back");

    // Delete: invisible while open, not_found after COMMIT.
    let mut tx = b.transaction().unwrap();
    tx.query("SELECT api_key_delete($1::text::uuid)", &[&k_delete.id])
        .unwrap();
    assert_ok(&mut a, &k_delete, "A while B's delete is uncommitted");
    tx.commit().unwrap();
    assert_rejected(&mut a, &k_delete, "not_found", "A after B's delete commits");
}

/// (c) Verification works in read-only transactions (as on a hot standby).
#[test]
fn verify_works_in_read_only_transactions() {
    let cluster = shared();
    let mut admin = cluster.connect_fast(DB);
    let good = issue(
        &mut admin,
        "'read-only-good', 'service', 'production', ARRAY['runs:read'], \
         allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[], expires_at => now() + interval '1 day'",
    );
    let bad = issue(&mut admin, "'read-only-revoked', 'service', 'production'");
    admin_call(
        &mut admin,
        "SELECT api_key_revoke($1::text::uuid, 'gone')",
        &bad.id,
    );

    let mut a = cluster.connect_fast(DB);
    let mut tx = a.build_transaction().read_only(true).start().unwrap();
    let ro: String = tx
        .query_one("SHOW transaction_read_only", &[])
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    for i in 0..3 {
        let v = verify(&mut tx, &good.key, Some("10.9.8.7"), Some("runs:read"));
        assert!(v.valid && v.reason == "ok", "read-only call {i}: {v:?}");
        assert_eq!(v.key_id.as_deref(), Some(good.id.as_str()));
    }
    let checks = [
        (good.key.clone(), Some("11.0.0.1"), None, "ip_not_allowed"),
        (
            good.key.clone(),
            Some("10.0.0.1"),
            Some("runs:write"),
            "insufficient_scope",
        ),
        (
            forge_secret(&good.key),
            Some("10.0.0.1"),
            None,
            "invalid_secret",
        ),
        (bad.key.clone(), None, None, "revoked"),
        ("not a key".to_string(), None, None, "malformed"),
    ];
    for (key, ip, scope, reason) in &checks {
        let v = try_verify(&mut tx, key, *ip, *scope).unwrap_or_else(|e| {
            panic!("verify raised in a read-only transaction ({reason}): {e:?}")
        });
        assert_eq!(&v.reason, reason, "{v:?}");
    }
    // The transaction is still healthy and commits.
    tx.commit().unwrap();

    // A session whose every transaction is read-only, autocommit statements.
    let mut s = cluster.connect_fast(DB);
    s.batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    let v = verify(&mut s, &good.key, Some("10.0.0.1"), Some("runs:read"));
    assert!(v.valid, "{v:?}");
    // ... and a REPEATABLE READ, READ ONLY one.
    let mut tx = s
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .unwrap();
    assert!(verify(&mut tx, &good.key, Some("10.0.0.1"), None).valid);
    tx.commit().unwrap();
}

/// (d) With the library in shared_preload_libraries, its settings exist in a fresh
/// session before any extension function has run; without it, they do not.
#[test]
fn preloaded_settings_exist_in_fresh_sessions() {
    let cluster = shared();
    // A fresh session of the extension's database, and one of a database that does not
    // even have the extension: nothing of api_keys has been called in either.
    for db in [DB, "postgres"] {
        let mut fresh = cluster.connect(db);
        let shown: String = fresh
            .query_one("SHOW api_keys.argon2_memory_kib", &[])
            .unwrap_or_else(|e| panic!("SHOW in a fresh session of {db}: {e:?}"))
            .get(0);
        assert_eq!(shown, "19MB", "default 19456 kB");
        let row = fresh
            .query_one(
                "SELECT setting, unit, vartype, min_val, context \
                   FROM pg_settings WHERE name = 'api_keys.argon2_memory_kib'",
                &[],
            )
            .unwrap();
        // A real, typed GUC (an unloaded placeholder would be a bare string).
        assert_eq!(row.get::<_, String>(0), "19456");
        assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("kB"));
        assert_eq!(row.get::<_, String>(2), "integer");
        assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("64"));
        assert_eq!(row.get::<_, String>(4), "superuser");
        let preload: String = fresh
            .query_one("SHOW shared_preload_libraries", &[])
            .unwrap()
            .get(0);
        assert_eq!(preload, "api_keys");
        // Out-of-range values are refused by the typed setting.
        let err = fresh
            .batch_execute("SET api_keys.argon2_memory_kib = 1")
            .expect_err("below the minimum of 64");
        assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
    }

    // Control: the same server without the preload (a later line overrides the
    // script's). A fresh session does not know the setting until the library loads.
    let plain = Cluster::start_with("nopre", &["shared_preload_libraries = ''"]);
    let mut fresh = plain.connect(DB);
    let err = fresh
        .query_one("SHOW api_keys.argon2_memory_kib", &[])
        .expect_err("without preload the setting must be unknown in a fresh session");
    assert_eq!(err.code().map(|c| c.code()), Some("42704"), "{err:?}");
    fresh
        .query_one("SELECT api_keys.key_pattern()", &[])
        .unwrap();
    let shown: String = fresh
        .query_one("SHOW api_keys.argon2_memory_kib", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        shown, "19MB",
        "known once a function has loaded the library"
    );
}

/// A session that has verified keeps the key table's oids; another session's DROP and
/// CREATE EXTENSION must make it look them up again, not read a dropped table.
#[test]
fn a_warm_session_follows_the_extension_dropped_and_created_again() {
    let cluster = Cluster::start("recreate");
    let mut warm = cluster.connect_fast(DB);
    let old = issue(&mut warm, "'before', 'service', 'production'");
    assert_ok(&mut warm, &old, "before the drop");

    let mut other = cluster.connect_fast(DB);
    other
        .batch_execute("DROP EXTENSION api_keys CASCADE; CREATE EXTENSION api_keys")
        .unwrap();
    let new = issue(&mut other, "'after', 'service', 'production'");

    assert_ok(&mut warm, &new, "a key of the new extension");
    // Its signing key went with the extension: its MAC no longer checks, which is
    // invalid_secret before any table is read (whether or not the prefix exists).
    assert_rejected(
        &mut warm,
        &old,
        "invalid_secret",
        "a key of the dropped extension",
    );
    // And again, with the oids now cached anew.
    assert_ok(&mut warm, &new, "a key of the new extension, again");
}
