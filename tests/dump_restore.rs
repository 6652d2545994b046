//! pg_dump -Fc / pg_restore of a database using api_keys keeps every key working exactly
//! as before, keeps the audit history and scope catalog, and invents nothing.

mod common;

use common::{forge_secret, issue, verify, Cluster, Issued, Verdict, DB};
use postgres::{Client, GenericClient, IsolationLevel};

/// Everything a restore must carry over, as text rows (session TimeZone is UTC).
#[derive(Debug, PartialEq, Eq)]
struct State {
    keys: Vec<String>,
    key_list: Vec<String>,
    api_key_list: Vec<String>,
    audit_log: Vec<String>,
    scope_catalog: Vec<String>,
    audit_seq: String,
    extconfig: String,
}

fn texts(c: &mut impl GenericClient, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn state(c: &mut impl GenericClient) -> State {
    State {
        // The table itself, hash included: the restored row must be byte-identical.
        keys: texts(c, "SELECT k::text FROM api_keys.keys k ORDER BY id"),
        key_list: texts(c, "SELECT l::text FROM api_keys.key_list l ORDER BY id"),
        api_key_list: texts(
            c,
            "SELECT l::text FROM api_keys.api_key_list(order_by => 'prefix asc', page_size => 1000) l",
        ),
        audit_log: texts(c, "SELECT a::text FROM api_keys.audit_log a ORDER BY id"),
        scope_catalog: texts(
            c,
            "SELECT s::text FROM api_keys.scope_catalog s ORDER BY resource, action",
        ),
        audit_seq: texts(
            c,
            "SELECT last_value::text || ' ' || is_called::text FROM api_keys.audit_log_id_seq",
        )
        .remove(0),
        extconfig: texts(
            c,
            "SELECT extconfig::regclass[]::text || ' ' || coalesce(extcondition::text, '') \
               FROM pg_extension WHERE extname = 'api_keys'",
        )
        .remove(0),
    }
}

/// One verification to replay after the restore.
struct Case {
    label: &'static str,
    key: String,
    ip: Option<&'static str>,
    scope: Option<&'static str>,
    expect_reason: &'static str,
}

fn uuid_param(c: &mut Client, sql: &str, id: &str) {
    c.query(sql, &[&id])
        .unwrap_or_else(|e| panic!("{sql} ({id}): {e:?}"));
}

#[test]
fn dump_and_restore_keeps_keys_audit_and_catalog() {
    let started = std::time::Instant::now();
    let cluster = Cluster::start("dump");
    let mut c = cluster.connect_fast(DB);

    // A scope catalog: from now on issued scopes must match it.
    c.batch_execute(
        "SELECT api_key_register_scope('runs', 'read', 'Read test runs');
         SELECT api_key_register_scope('runs', 'write', 'Create and edit test runs');
         SELECT api_key_register_scope('reports', 'read');",
    )
    .unwrap();

    // Active, with scopes, IPv4 + IPv6 rules, expiry, limits and metadata.
    let active = issue(
        &mut c,
        "'ci-runner', 'service', 'production', ARRAY['runs:read', 'runs:write'], 'CI runner', \
         now() + interval '30 days', ARRAY['10.0.0.0/8', '192.168.1.0/24', '2001:db8::/32']::cidr[], \
         'team-ci', 50, 500, '{\"team\": \"ci\"}'",
    );
    // Suspended (by an application actor, so audit_log.app_actor is filled).
    let suspended = issue(
        &mut c,
        "'suspended-key', 'user', 'staging', ARRAY['reports:read'], owner => 'alice'",
    );
    c.batch_execute("SET api_keys.actor = 'jane@example.com'")
        .unwrap();
    uuid_param(
        &mut c,
        "SELECT api_key_suspend($1::text::uuid, 'under investigation')",
        &suspended.id,
    );
    c.batch_execute("RESET api_keys.actor").unwrap();
    // Revoked.
    let revoked = issue(
        &mut c,
        "'revoked-key', 'service', 'development', ARRAY['runs:read']",
    );
    uuid_param(
        &mut c,
        "SELECT api_key_revoke($1::text::uuid, 'leaked in a public repository')",
        &revoked.id,
    );
    // Rotated with a grace period: old and new key both work for now.
    let rotating = issue(
        &mut c,
        "'rotating', 'service', 'production', ARRAY['runs:read', 'reports:read'], NULL, \
         now() + interval '90 days'",
    );
    let row = c
        .query_one(
            "SELECT id::text, key, prefix FROM api_key_rotate($1::text::uuid, interval '2 days')",
            &[&rotating.id],
        )
        .unwrap();
    let rotated = Issued {
        id: row.get(0),
        key: row.get(1),
        prefix: row.get(2),
    };
    // Updated (an 'updated' audit row) and deleted (a 'deleted' row, key gone).
    let updated = issue(
        &mut c,
        "'to-update', 'user', 'development', ARRAY['runs:read']",
    );
    uuid_param(
        &mut c,
        "SELECT api_key_update($1::text::uuid, description => 'edited', scopes => ARRAY['reports:read'])",
        &updated.id,
    );
    let deleted = issue(&mut c, "'doomed', 'service', 'staging', ARRAY['runs:read']");
    uuid_param(&mut c, "SELECT api_key_delete($1::text::uuid)", &deleted.id);
    let issued_count = 7; // active, suspended, revoked, rotating, rotated, updated, deleted

    // The rotation did what README, Lifecycle, says (api_key_rotate), before we rely on it.
    let r = c
        .query_one(
            "SELECT (SELECT rotated_from::text FROM key_list WHERE id = $2::text::uuid),
                    (SELECT expires_at BETWEEN now() + interval '2 days' - interval '1 minute'
                                           AND now() + interval '2 days'
                       FROM key_list WHERE id = $1::text::uuid),
                    (SELECT status::text FROM key_list WHERE id = $1::text::uuid)",
            &[&rotating.id, &rotated.id],
        )
        .unwrap();
    assert_eq!(
        r.get::<_, Option<String>>(0).as_deref(),
        Some(rotating.id.as_str())
    );
    assert_eq!(
        r.get::<_, Option<bool>>(1),
        Some(true),
        "grace expiry of the old key"
    );
    assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("active"));

    let cases = vec![
        Case {
            label: "active, allowed v4, granted scope",
            key: active.key.clone(),
            ip: Some("10.1.2.3"),
            scope: Some("runs:read"),
            expect_reason: "ok",
        },
        Case {
            label: "active, allowed v6, granted scope",
            key: active.key.clone(),
            ip: Some("2001:db8::1"),
            scope: Some("runs:write"),
            expect_reason: "ok",
        },
        Case {
            label: "active, other /24",
            key: active.key.clone(),
            ip: Some("192.168.1.77"),
            scope: None,
            expect_reason: "ok",
        },
        Case {
            label: "active, outside CIDRs",
            key: active.key.clone(),
            ip: Some("172.16.0.1"),
            scope: None,
            expect_reason: "ip_not_allowed",
        },
        Case {
            label: "active, no client ip",
            key: active.key.clone(),
            ip: None,
            scope: None,
            expect_reason: "ip_not_allowed",
        },
        Case {
            label: "active, missing scope",
            key: active.key.clone(),
            ip: Some("10.1.2.3"),
            scope: Some("reports:read"),
            expect_reason: "insufficient_scope",
        },
        Case {
            label: "active, forged secret",
            key: forge_secret(&active.key),
            ip: Some("10.1.2.3"),
            scope: None,
            expect_reason: "invalid_secret",
        },
        Case {
            label: "suspended",
            key: suspended.key.clone(),
            ip: None,
            scope: Some("reports:read"),
            expect_reason: "suspended",
        },
        Case {
            label: "revoked",
            key: revoked.key.clone(),
            ip: None,
            scope: None,
            expect_reason: "revoked",
        },
        Case {
            label: "rotated-from, in grace",
            key: rotating.key.clone(),
            ip: None,
            scope: Some("reports:read"),
            expect_reason: "ok",
        },
        Case {
            label: "rotated-to",
            key: rotated.key.clone(),
            ip: None,
            scope: Some("runs:read"),
            expect_reason: "ok",
        },
        Case {
            label: "updated, new scope",
            key: updated.key.clone(),
            ip: None,
            scope: Some("reports:read"),
            expect_reason: "ok",
        },
        Case {
            label: "updated, old scope",
            key: updated.key.clone(),
            ip: None,
            scope: Some("runs:read"),
            expect_reason: "insufficient_scope",
        },
        Case {
            label: "deleted",
            key: deleted.key.clone(),
            ip: None,
            scope: None,
            expect_reason: "not_found",
        },
        Case {
            label: "garbage",
            key: "ak_live_nope".into(),
            ip: None,
            scope: None,
            expect_reason: "malformed",
        },
    ];

    let mut before: Vec<Verdict> = Vec::new();
    for case in &cases {
        let v = verify(&mut c, &case.key, case.ip, case.scope);
        assert_eq!(
            v.reason, case.expect_reason,
            "before dump: {}: {v:?}",
            case.label
        );
        assert_eq!(
            v.valid,
            case.expect_reason == "ok",
            "before dump: {}",
            case.label
        );
        if v.valid {
            assert!(
                v.key_id.is_some() && v.owner.is_some() && v.scopes.is_some(),
                "{}: {v:?}",
                case.label
            );
        } else {
            assert_eq!(
                (&v.key_id, &v.owner, &v.scopes),
                (&None, &None, &None),
                "{}: {v:?}",
                case.label
            );
        }
        before.push(v);
    }
    assert_eq!(before[0].key_id.as_deref(), Some(active.id.as_str()));
    assert_eq!(before[0].owner.as_deref(), Some("team-ci"));
    assert_eq!(before[0].key_type.as_deref(), Some("service"));
    assert_eq!(before[0].environment.as_deref(), Some("production"));
    assert_eq!(
        before[0].scopes,
        Some(vec!["runs:read".to_string(), "runs:write".to_string()])
    );
    assert!(before[0].expires_at.is_some());
    assert_eq!(before[10].key_id.as_deref(), Some(rotated.id.as_str()));

    // Dump from an exported snapshot, and read the state in that same snapshot, so the
    // comparison cannot be disturbed by anything written after it.
    let dump_file = cluster.dir.join("api_keys.dump");
    let dump_path = dump_file.to_str().unwrap().to_owned();
    let old = {
        let mut snap = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .unwrap();
        let snapshot: String = snap
            .query_one("SELECT pg_export_snapshot()", &[])
            .unwrap()
            .get(0);
        let old = state(&mut snap);
        cluster.run_tool(
            "pg_dump",
            &["-Fc", "--snapshot", &snapshot, "-f", &dump_path, "-d", DB],
        );
        snap.commit().unwrap();
        old
    };
    assert_eq!(old.keys.len(), 6, "6 keys left after the delete");
    let old_max_audit: i64 = c
        .query_one("SELECT max(id) FROM api_keys.audit_log", &[])
        .unwrap()
        .get(0);
    let issued_before = issued_rows(&mut c);
    assert_eq!(
        issued_before, issued_count,
        "one 'issued' row per key issued"
    );

    // Restore into a brand-new database of the same cluster.
    c.batch_execute("CREATE DATABASE restored").unwrap();
    let out = cluster.run_tool(
        "pg_restore",
        &["--exit-on-error", "-d", "restored", &dump_path],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "pg_restore complained:\n{stderr}");

    let mut r = cluster.connect_fast("restored");
    // Read before any verification in the new database.
    let new = state(&mut r);
    assert_eq!(new.scope_catalog, old.scope_catalog, "scope_catalog");
    assert_eq!(new.scope_catalog.len(), 3);
    assert_eq!(new.keys, old.keys, "api_keys.keys rows (hash included)");
    assert_eq!(new.key_list, old.key_list, "key_list view");
    assert_eq!(new.api_key_list, old.api_key_list, "api_key_list()");
    assert_eq!(new.audit_log, old.audit_log, "audit_log rows");
    assert_eq!(new.audit_seq, old.audit_seq, "audit id sequence position");
    assert_eq!(
        new.extconfig, old.extconfig,
        "extension config tables (pg_extension_config_dump)"
    );
    let issued_after = issued_rows(&mut r);
    assert_eq!(
        issued_after, issued_count,
        "restore must not invent 'issued' rows"
    );

    // Every key verifies exactly as before.
    for (case, was) in cases.iter().zip(&before) {
        let now = verify(&mut r, &case.key, case.ip, case.scope);
        assert_eq!(&now, was, "after restore: {}", case.label);
    }
    // Still nothing invented (verification writes no audit rows).
    assert_eq!(
        state(&mut r).audit_log,
        old.audit_log,
        "audit_log after verifying"
    );

    // New audit ids continue after the restored ones.
    let extra = issue(
        &mut r,
        "'after-restore', 'service', 'production', ARRAY['runs:read']",
    );
    let extra_audit: i64 = r
        .query_one(
            "SELECT id FROM api_keys.audit_log WHERE key_id = $1::text::uuid AND action = 'issued'",
            &[&extra.id],
        )
        .unwrap()
        .get(0);
    assert!(
        extra_audit > old_max_audit,
        "new audit id {extra_audit} must be above the restored maximum {old_max_audit}"
    );
    assert_eq!(
        verify(&mut r, &extra.key, None, Some("runs:read")).reason,
        "ok"
    );
    // The restored catalog is enforced.
    let err = r
        .query(
            "SELECT * FROM api_key_issue('bad', 'service', 'production', ARRAY['billing:read'])",
            &[],
        )
        .expect_err("scope outside the restored catalog must be rejected");
    assert_eq!(err.code().map(|s| s.code()), Some("22023"), "{err:?}");

    // The restored lifecycle is live and the two databases are independent.
    uuid_param(
        &mut r,
        "SELECT api_key_revoke($1::text::uuid, 'revoked in the copy')",
        &active.id,
    );
    assert_eq!(
        verify(&mut r, &active.key, Some("10.1.2.3"), None).reason,
        "revoked"
    );
    assert_eq!(
        verify(&mut c, &active.key, Some("10.1.2.3"), None).reason,
        "ok"
    );
    let last: String = r
        .query_one(
            "SELECT action || ' ' || old_status || '->' || new_status FROM api_keys.audit_log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(last, "revoked active->revoked");

    eprintln!(
        "dump_restore: {} cases replayed in {:?}",
        cases.len(),
        started.elapsed()
    );
}

fn issued_rows(c: &mut postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM api_keys.audit_log WHERE action = 'issued'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// An admin's pg_dump (API.md, Roles): the secret hashes and the signing keys are for
/// superusers only (and `pg_read_all_data`), so a plain pg_dump by an admin stops at
/// them, naming the table; with their data left out it carries everything else.
#[test]
fn an_admin_dumps_everything_but_the_secrets() {
    let cluster = Cluster::start("dump_admin");
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'admin-dumped', 'service', 'production'");
    c.batch_execute(
        "SELECT api_keys.api_key_register_scope('runs', 'read'); \
         CREATE ROLE backup_admin LOGIN IN ROLE api_keys_admin",
    )
    .unwrap();
    let secrets: Vec<String> = c
        .query(
            "SELECT secret_hash FROM api_keys.keys \
             UNION ALL SELECT encode(secret, 'hex') FROM api_keys.signing_keys",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dump = |extra: &[&str]| {
        std::process::Command::new(common::pg_bin().join("pg_dump"))
            .args([
                "-h",
                cluster.dir.to_str().unwrap(),
                "-p",
                &cluster.port.to_string(),
            ])
            .args(["-U", "backup_admin", "-d", DB])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = dump(&[]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("permission denied for table keys"),
        "{error}"
    );

    let out = dump(&[
        "--exclude-table-data=api_keys.keys",
        "--exclude-table-data=api_keys.signing_keys",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for copied in [
        "COPY api_keys.audit_log ",
        "COPY api_keys.scope_catalog ",
        "COPY api_keys.usage ",
        "api_keys.audit_log_id_seq",
    ] {
        assert!(text.contains(copied), "no {copied} in the admin's dump");
    }
    assert!(text.contains(&k.prefix), "the audit log names the key");
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the admin's dump"
        );
    }
    assert!(!text.contains(&k.key));
}
