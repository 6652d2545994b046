//! Red-team regression tests for signed keys (issue 14): defects found by attacking the
//! signing-key cache, `rotate_signing_key()` and the signing-keys table as a plain role,
//! a verifier, an admin and a superuser's routine operations. Each test states what must
//! hold; each failed against 0.5.0 as first implemented.
//!
//! - a backend that verified a signed-shaped string before `ALTER EXTENSION api_keys
//!   UPDATE` (0.4.0 -> 0.5.0) cached "no signing-keys table" and could then not issue,
//!   rotate or follow the HINT's `rotate_signing_key()`;
//! - the cap of 1,000 signing keys (and the check that an id is unused) is read with the
//!   transaction's snapshot, so admins in REPEATABLE READ transactions exceed it;
//! - `api_key_verify` raised XX000 "could not open relation with OID" when the
//!   extension was dropped and created again while the call waited for the table's lock;
//! - a restore that meets signing keys already there printed a signing key's secret in
//!   the error and the server log (the primary key holds the secret);
//! - a signing key deleted without the table's statement trigger firing (replica role:
//!   logical replication's apply worker, or a superuser) kept verifying, and kept signing
//!   new keys, in every session that had read it.

mod common;

use common::{try_verify, verify, with_checksum, Client, Cluster};
use rand::distributions::Alphanumeric;
use rand::Rng;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

static CLUSTER: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

/// One cluster for this file; each test works in a database of its own.
fn shared() -> Arc<Cluster> {
    common::shared_cluster(&CLUSTER, || Cluster::start("hsign"))
}

/// A new database `name` with `CREATE EXTENSION api_keys <version clause>`.
fn database(cluster: &Cluster, name: &str, version_clause: &str) {
    let mut c = cluster.connect("postgres");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut c = cluster.connect(name);
    c.batch_execute(&format!("CREATE EXTENSION api_keys {version_clause}"))
        .unwrap();
}

fn random_base62(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A string in the shape of a signed key (checksum right, everything else random):
/// anyone can send one.
fn signed_shape() -> String {
    with_checksum(&format!(
        "ak_live_{}_{}",
        random_base62(12),
        random_base62(43 + 4 + 17)
    ))
}

fn issue_in(c: &mut Client) -> Result<(String, String), postgres::Error> {
    c.query_one(
        "SELECT key, prefix FROM api_keys.api_key_issue('hostile', 'service', 'production')",
        &[],
    )
    .map(|r| (r.get(0), r.get(1)))
}

/// Finding 1. Installations update the library first and the catalog later (`ALTER
/// EXTENSION api_keys UPDATE`). In between, any verifier can send a signed-shaped string:
/// the backend reads the signing keys, finds no table, and caches that. The update's
/// relation cache invalidation names the new table, not "no table", so that backend
/// never reads again for issuing: every api_key_issue / api_key_rotate in it fails with
/// 55000 "api_keys has no signing key", even after rotate_signing_key() as its HINT says.
#[test]
fn a_backend_that_verified_before_the_update_to_0_5_0_issues_after_it() {
    let cluster = shared();
    database(&cluster, "hs_update", "VERSION '0.4.0'");
    let mut pooled = cluster.connect_fast("hs_update");
    // Before the update: a signed-shaped presentation (an attacker's, or a client that
    // already has a 0.5.0 key from elsewhere).
    let v = verify(&mut pooled, &signed_shape(), None, None);
    assert_eq!(v.reason, "invalid_secret");

    let mut dba = cluster.connect("hs_update");
    dba.batch_execute("ALTER EXTENSION api_keys UPDATE")
        .unwrap();

    let issued = issue_in(&mut pooled);
    let (key, _) = issued.unwrap_or_else(|e| {
        panic!("api_key_issue after the update, in a backend that verified before it: {e:?}")
    });
    let mut fresh = cluster.connect_fast("hs_update");
    assert_eq!(verify(&mut fresh, &key, None, None).reason, "ok");
}

/// Finding 1, the HINT's own remedy: rotate_signing_key() in that backend must make it
/// able to issue (it did not: the rotation's invalidation names the table, the cache
/// remembers "no table").
#[test]
fn the_hint_of_no_signing_key_works_in_a_backend_that_verified_before_the_update() {
    let cluster = shared();
    database(&cluster, "hs_update_hint", "VERSION '0.4.0'");
    let mut pooled = cluster.connect_fast("hs_update_hint");
    verify(&mut pooled, &signed_shape(), None, None);
    pooled
        .batch_execute("ALTER EXTENSION api_keys UPDATE")
        .unwrap();
    pooled
        .query_one("SELECT id FROM api_keys.rotate_signing_key()", &[])
        .unwrap();
    if let Err(e) = issue_in(&mut pooled) {
        panic!("api_key_issue after ALTER EXTENSION UPDATE and rotate_signing_key(): {e:?}");
    }
}

/// Finding 2. `_create_signing_key` locks the table and then counts its rows, but in a
/// REPEATABLE READ transaction the count (and the check that a new id is unused) uses
/// the snapshot taken before the lock: two admins whose snapshots saw 999 signing keys
/// both add one. With N sessions an admin adds N x 999 (20 sessions made 19,981 signing
/// keys, 15 ids used twice); every verifying backend reads them all after each change
/// and once a second under a flood of unknown ids (about 50 ms per read at 20,000).
#[test]
fn the_cap_of_1000_signing_keys_holds_under_repeatable_read() {
    let cluster = shared();
    database(&cluster, "hs_cap", "");
    let mut su = cluster.connect("hs_cap");
    su.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hs_admin') THEN
                 CREATE ROLE hs_admin NOLOGIN IN ROLE api_keys_admin;
             END IF;
         END $$;
         SELECT count(*) FROM (SELECT api_keys.rotate_signing_key()
                                 FROM generate_series(1, 998)) s;",
    )
    .unwrap();
    let count = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM api_keys.signing_keys", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&mut su), 999);

    let mut admins: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = cluster.connect("hs_cap");
            c.batch_execute("SET ROLE hs_admin; BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
                .unwrap();
            c
        })
        .collect();
    let mut refusals = Vec::new();
    for a in &mut admins {
        // Each rotates after the one before committed; each may succeed or be refused,
        // for its isolation level (25000) or the cap (54000), nothing else.
        match a.batch_execute("SELECT api_keys.rotate_signing_key()") {
            Ok(()) => a.batch_execute("COMMIT").unwrap(),
            Err(e) => {
                refusals.push(e.code().map(|c| c.code().to_string()));
                a.batch_execute("ROLLBACK").unwrap();
            }
        }
    }
    assert!(
        refusals
            .iter()
            .all(|c| matches!(c.as_deref(), Some("25000" | "54000"))),
        "{refusals:?}"
    );
    // At READ COMMITTED, one after the other: the first takes the last place, the
    // others meet the cap.
    for expect in [None, Some("54000"), Some("54000")] {
        let mut a = cluster.connect("hs_cap");
        let got = a
            .batch_execute("SET ROLE hs_admin; SELECT api_keys.rotate_signing_key()")
            .err()
            .map(|e| e.code().map(|c| c.code().to_string()));
        assert_eq!(got.flatten().as_deref(), expect, "after {refusals:?}");
    }
    let (n, distinct): (i64, i64) = {
        let r = su
            .query_one(
                "SELECT count(*), count(DISTINCT id) FROM api_keys.signing_keys",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(n, 1000, "the cap of 1,000 signing keys");
    assert_eq!(n, distinct, "two signing keys share an id");
}

/// Finding 3. `api_key_verify` never raises (README). A backend reading the signing keys
/// looks the table up by name, then waits for its lock; if the extension is dropped and
/// created again meanwhile (one transaction), the lock is granted on a table that no
/// longer exists and the call failed with XX000 "could not open relation with OID n".
/// (The key table's reader, key_row.rs, already retries exactly this case.)
#[test]
fn verify_answers_when_the_extension_is_reinstalled_while_it_waits() {
    let cluster = shared();
    database(&cluster, "hs_reinstall", "");
    let mut dba = cluster.connect("hs_reinstall");
    dba.batch_execute("BEGIN; DROP EXTENSION api_keys; CREATE EXTENSION api_keys")
        .unwrap();

    // A new session: it has not read the signing keys yet.
    let mut verifier = cluster.connect("hs_reinstall");
    let pid: i32 = verifier
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let key = signed_shape();
    let call =
        std::thread::spawn(move || try_verify(&mut verifier, &key, None, None).map(|v| v.reason));

    let mut monitor = cluster.connect("postgres");
    let started = Instant::now();
    loop {
        let waiting: bool = monitor
            .query_one(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false)
                   FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the verification never waited for the signing keys' lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dba.batch_execute("COMMIT").unwrap();

    match call.join().unwrap() {
        Ok(reason) => assert!(
            reason == "invalid_secret" || reason == "not_found",
            "unexpected answer {reason}"
        ),
        Err(e) => panic!("api_key_verify raised during a reinstall: {e:?}"),
    }
}

/// Finding 4. README: signing keys "are never in an error, a log line or a listing".
/// The table's primary key is (id, secret), so any duplicate — a data-only restore run
/// twice, or into the database it came from — fails with `DETAIL: Key (id, secret)=
/// (Ab12, \x<the 32-byte secret>) already exists`, to the client and the server log.
#[test]
fn a_restore_that_meets_existing_signing_keys_prints_no_secret() {
    let cluster = shared();
    database(&cluster, "hs_restore", "");
    let mut su = cluster.connect("hs_restore");
    let secret: String = su
        .query_one(
            "SELECT encode(secret, 'hex') FROM api_keys.signing_keys LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let dump = cluster.dir.join("hs_signing_keys.sql");
    let dump = dump.to_str().unwrap();
    cluster.run_tool(
        "pg_dump",
        &[
            "-d",
            "hs_restore",
            "--data-only",
            "-t",
            "api_keys.signing_keys",
            "-f",
            dump,
        ],
    );
    // psql goes on past errors (no ON_ERROR_STOP) and exits 0.
    let out = cluster.run_tool("psql", &["-X", "-d", "hs_restore", "-f", dump]);
    let client_side = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        client_side.contains("already exists"),
        "the restore met no existing signing key:\n{client_side}"
    );
    assert!(
        !client_side.contains(&secret),
        "a signing key's secret is in the restore's error:\n{client_side}"
    );
    common::wait_for(
        "the error in the server log",
        Duration::from_secs(10),
        || cluster.server_log().contains("already exists"),
    );
    assert!(
        !cluster.server_log().contains(&secret),
        "a signing key's secret is in the server log"
    );
}

/// Finding 5. The statement trigger that tells backends the signing keys changed is an
/// ordinary trigger, so it does not fire under `session_replication_role = replica`
/// (logical replication's apply worker; a superuser's maintenance). A signing key deleted
/// so kept verifying for as long as a session lived, and that session kept signing new
/// keys with it, keys no other session accepts. The once-a-second re-read covers only ids
/// a backend does not know.
#[test]
fn a_signing_key_deleted_without_its_trigger_is_forgotten_by_cached_sessions() {
    let cluster = shared();
    database(&cluster, "hs_replica", "");
    let mut pooled = cluster.connect_fast("hs_replica");
    let mut dba = cluster.connect_fast("hs_replica");
    let (k1, _) = issue_in(&mut pooled).unwrap();
    let newer: String = dba
        .query_one("SELECT id FROM api_keys.rotate_signing_key()", &[])
        .unwrap()
        .get(0);
    // The rotation reached the pooled session: it signs with the newer key now.
    let (k2, p2) = issue_in(&mut pooled).unwrap();
    let signer: Option<String> = dba
        .query_one(
            "SELECT signing_key FROM api_keys.keys WHERE prefix = $1",
            &[&p2],
        )
        .unwrap()
        .get(0);
    assert_eq!(signer.as_deref(), Some(newer.as_str()));
    assert_eq!(verify(&mut pooled, &k1, None, None).reason, "ok");
    assert_eq!(verify(&mut pooled, &k2, None, None).reason, "ok");

    dba.batch_execute(&format!(
        "SET session_replication_role = replica;
         DELETE FROM api_keys.signing_keys WHERE id = '{newer}';
         RESET session_replication_role"
    ))
    .unwrap();

    let mut fresh = cluster.connect_fast("hs_replica");
    assert_eq!(verify(&mut fresh, &k2, None, None).reason, "invalid_secret");
    assert_eq!(
        verify(&mut pooled, &k2, None, None).reason,
        "invalid_secret",
        "a deleted signing key still verifies in a session that had read it"
    );
    let (k3, _) = issue_in(&mut pooled).unwrap();
    assert_eq!(
        verify(&mut fresh, &k3, None, None).reason,
        "ok",
        "the session signed a new key with the deleted signing key"
    );
}
