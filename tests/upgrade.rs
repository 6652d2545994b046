//! Upgrades: a database created at any earlier release (from that release's install
//! script, kept as `sql/released/api_keys--<old>.sql`) and brought up with
//! `ALTER EXTENSION api_keys UPDATE` has exactly the objects of a fresh install
//! (definitions, privileges, comments, dump configuration), and the keys issued before
//! the update keep verifying, before and after it.

mod common;

use std::collections::BTreeSet;

use common::{
    cheap_hashing, issue, verify, wait_for, wait_for_room_in_hour, Client, Cluster, DB, WORKER_CONF,
};
use std::time::Duration;

/// Every member object of the extension with what defines it, one row each.
const DESCRIBE: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'api_keys'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT pg_describe_object(m.classid, m.objid, 0)
       || ' | comment: ' || coalesce(obj_description(m.objid, m.classid::regclass::text), '')
       || ' | ' || coalesce(CASE m.classid
    WHEN 'pg_proc'::regclass THEN (
        SELECT pg_get_functiondef(p.oid) || ' acl: ' || coalesce(p.proacl::text, 'default')
          FROM pg_proc p WHERE p.oid = m.objid)
    WHEN 'pg_namespace'::regclass THEN (
        SELECT 'acl: ' || coalesce(n.nspacl::text, 'default') FROM pg_namespace n WHERE n.oid = m.objid)
    WHEN 'pg_type'::regclass THEN (
        SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = m.objid)
    WHEN 'pg_class'::regclass THEN (
        SELECT concat_ws(' | ',
            'kind: ' || c.relkind::text, 'acl: ' || coalesce(c.relacl::text, 'default'),
            'rls: ' || c.relrowsecurity, 'options: ' || coalesce(c.reloptions::text, ''),
            'view: ' || CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
            'columns: ' || (
                SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                  || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                  || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
                                  || coalesce(' acl ' || a.attacl::text, ''),
                                  ', ' ORDER BY a.attnum)
                  FROM pg_attribute a
                  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
            'constraints: ' || (
                SELECT string_agg(co.conname || ' ' || pg_get_constraintdef(co.oid), '; ' ORDER BY co.conname)
                  FROM pg_constraint co WHERE co.conrelid = c.oid),
            'indexes: ' || (
                SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY pg_get_indexdef(i.indexrelid))
                  FROM pg_index i WHERE i.indrelid = c.oid),
            'triggers: ' || (
                SELECT string_agg(pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text, '; ' ORDER BY t.tgname)
                  FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
            'policies: ' || (
                SELECT string_agg(po.polname || ' ' || po.polcmd::text || ' '
                                  || coalesce(pg_get_expr(po.polqual, po.polrelid), '') || ' '
                                  || coalesce(pg_get_expr(po.polwithcheck, po.polrelid), ''),
                                  '; ' ORDER BY po.polname)
                  FROM pg_policy po WHERE po.polrelid = c.oid))
          FROM pg_class c WHERE c.oid = m.objid)
    END, '')
  FROM members m
UNION ALL
SELECT 'dump configuration: '
       || coalesce((SELECT string_agg(c::regclass::text, ', ' ORDER BY c::regclass::text)
                      FROM unnest(extconfig) c), '')
       || ' conditions: ' || coalesce(array_to_string(extcondition, ','), '')
  FROM pg_extension WHERE extname = 'api_keys'
"#;

/// The description, without the `tests` schema and its functions that a `pg_test`
/// build (as `cargo pgrx test` installs it) adds to a fresh install only.
fn describe(c: &mut Client) -> BTreeSet<String> {
    c.query(DESCRIBE, &[])
        .expect("describing the extension")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|d| !d.starts_with("schema tests |") && !d.starts_with("function tests."))
        .collect()
}

fn version(c: &mut Client) -> String {
    c.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'api_keys'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Every earlier release: the `<old>` of each `sql/api_keys--<old>--<new>.sql`, so a new
/// upgrade script brings its starting point into this test by itself (and fails it
/// until that release's install script is shipped too).
fn earlier_versions() -> Vec<String> {
    let sql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut versions: Vec<String> = std::fs::read_dir(sql)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            let (old, _new) = name
                .strip_prefix("api_keys--")?
                .strip_suffix(".sql")?
                .split_once("--")?;
            Some(old.to_string())
        })
        .collect();
    versions.sort();
    // Several upgrade scripts may start from one release.
    versions.dedup();
    versions
}

#[test]
fn update_from_every_earlier_release_matches_a_fresh_install() {
    let versions = earlier_versions();
    assert!(
        versions.len() >= 2 && versions[0] == "0.1.0",
        "upgrade scripts: {versions:?}"
    );
    let cluster = Cluster::start("upgrade");
    let mut fresh = cluster.connect(DB);
    assert_eq!(version(&mut fresh), env!("CARGO_PKG_VERSION"));
    let want = describe(&mut fresh);
    assert!(
        want.len() > 50,
        "the description lists too little: {want:#?}"
    );
    for old_version in &versions {
        update_from(&cluster, old_version, &want);
    }
}

/// Create the extension at `old_version` (from its install script, which must be
/// shipped), issue and verify a key there, update, verify again, and compare every
/// member object with `want`, a fresh install's description.
fn update_from(cluster: &Cluster, old_version: &str, want: &BTreeSet<String>) {
    let script = format!("sql/released/api_keys--{old_version}.sql");
    assert!(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(&script)
            .exists(),
        "{script} is not shipped: a database created at {old_version} cannot be rebuilt"
    );
    let db = format!("at_{}", old_version.replace('.', "_"));
    cluster
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let mut old = cluster.connect(&db);
    old.batch_execute(&format!(
        "CREATE EXTENSION api_keys VERSION '{old_version}'"
    ))
    .unwrap_or_else(|e| panic!("creating {old_version} with this library: {e:?}"));
    assert_eq!(version(&mut old), old_version);
    cheap_hashing(&mut old);
    let key = issue(
        &mut old,
        &format!("'issued at {old_version}', 'service', 'production', ARRAY['runs:read']"),
    );
    // An old catalog verifies through the entry point it names (0.1.0's is a
    // compatibility symbol of this library).
    let v = verify(&mut old, &key.key, None, Some("runs:read"));
    assert_eq!(
        (v.valid, v.reason.as_str()),
        (true, "ok"),
        "at {old_version}: {v:?}"
    );

    old.batch_execute("ALTER EXTENSION api_keys UPDATE")
        .unwrap();
    assert_eq!(version(&mut old), env!("CARGO_PKG_VERSION"));
    let mut after = cluster.connect(&db);
    let v = verify(&mut after, &key.key, None, Some("runs:read"));
    assert_eq!(
        (v.valid, v.reason.as_str()),
        (true, "ok"),
        "{old_version} after the update: {v:?}"
    );
    assert_eq!(v.key_id.as_deref(), Some(key.id.as_str()));
    // The key has no signature (it was issued before signing) and keeps verifying on
    // that path; the update made a signing key, and rotating the key yields a signed one.
    assert_eq!(key.key.len(), key.prefix.len() + 1 + 43 + 6, "{}", key.key);
    let row = after
        .query_one(
            "SELECT key, id::text FROM api_keys.api_key_rotate($1::text::uuid, interval '1 hour')",
            &[&key.id],
        )
        .unwrap_or_else(|e| panic!("{old_version}: rotating after the update: {e:?}"));
    let (rotated, rotated_id): (String, String) = (row.get(0), row.get(1));
    let row = after
        .query_one(
            "SELECT signing_key, (SELECT count(*) FROM api_keys.signing_keys)
               FROM api_keys.keys WHERE id = $1::text::uuid",
            &[&rotated_id],
        )
        .unwrap();
    let (signing_key, signing_keys): (Option<String>, i64) = (row.get(0), row.get(1));
    assert_eq!(
        signing_keys, 1,
        "{old_version}: one signing key after the update"
    );
    let signing_key = signing_key.expect("the rotated key names its signing key");
    let at = key.prefix.len() + 1 + 43;
    assert_eq!(&rotated[at..at + 4], signing_key, "{rotated}");
    assert_eq!(rotated.len(), key.prefix.len() + 1 + 70, "{rotated}");
    let v = verify(&mut after, &rotated, None, Some("runs:read"));
    assert_eq!(
        (v.valid, v.reason.as_str()),
        (true, "ok"),
        "{old_version}: {v:?}"
    );

    let got = describe(&mut after);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{old_version} + update differs from a fresh install\nonly in the fresh install:\n{missing:#?}\nonly after the update:\n{extra:#?}"
    );
}

/// Usage the worker added up under 0.4.0's SQL (the nil source) is not written again
/// under this server's source after `ALTER EXTENSION api_keys UPDATE`: the totals count
/// on from what was added, and the hour's limit counts both.
#[test]
fn usage_added_before_the_update_is_not_counted_again() {
    let cluster = Cluster::start_with("upgrade_usage", WORKER_CONF);
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE at_0_4_0")
        .unwrap();
    let mut c = cluster.connect("at_0_4_0");
    c.batch_execute("CREATE EXTENSION api_keys VERSION '0.4.0'")
        .unwrap();
    cheap_hashing(&mut c);
    wait_for_room_in_hour(&mut c, 60.0);
    let key = issue(
        &mut c,
        "'metered', 'service', 'production', rate_limit_per_minute => 100, rate_limit_per_hour => 4",
    );
    let verified = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&key.id],
        )
        .unwrap()
        .get(0)
    };
    for _ in 0..2 {
        assert_eq!(verify(&mut c, &key.key, None, None).reason, "ok");
    }
    wait_for("0.4.0's flush", Duration::from_secs(30), || {
        verified(&mut c) == 2
    });

    c.batch_execute("ALTER EXTENSION api_keys UPDATE").unwrap();
    let mut c = cluster.connect("at_0_4_0");
    assert_eq!(verify(&mut c, &key.key, None, None).reason, "ok");
    wait_for(
        "the flush after the update",
        Duration::from_secs(30),
        || verified(&mut c) >= 3,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(verified(&mut c), 3, "{}", cluster.server_log());
    assert_eq!(verify(&mut c, &key.key, None, None).reason, "ok");
    assert_eq!(
        verify(&mut c, &key.key, None, None).reason,
        "rate_limited",
        "2 added before the update + 2 after: the limit of 4"
    );
}

/// Privileges a database set on a lifecycle function hold for its new prefix version
/// too: a revoked EXECUTE is not opened again by the update.
#[test]
fn the_prefix_versions_take_the_privileges_of_the_uuid_versions() {
    let cluster = Cluster::start("upgrade_acl");
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE at_0_4_0")
        .unwrap();
    let mut c = cluster.connect("at_0_4_0");
    c.batch_execute(
        "CREATE EXTENSION api_keys VERSION '0.4.0'; \
         CREATE ROLE ops; CREATE ROLE \"Help Desk\"; CREATE ROLE alice LOGIN; \
         REVOKE EXECUTE ON FUNCTION api_keys.api_key_delete(uuid), \
                                    api_keys.api_key_revoke(uuid, text) FROM PUBLIC; \
         GRANT EXECUTE ON FUNCTION api_keys.api_key_delete(uuid) TO ops WITH GRANT OPTION; \
         GRANT EXECUTE ON FUNCTION api_keys.api_key_revoke(uuid, text) TO \"Help Desk\"; \
         ALTER EXTENSION api_keys UPDATE",
    )
    .unwrap();
    let acls: Vec<(String, String)> = c
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(p.proacl::text, 'default') \
               FROM pg_proc p \
              WHERE p.pronamespace = 'api_keys'::regnamespace \
                AND p.proname IN ('api_key_delete', 'api_key_revoke', 'api_key_suspend') \
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let acl = |f: &str| &acls.iter().find(|(name, _)| name == f).unwrap().1;
    for (uuid_version, text_version) in [
        (
            "api_keys.api_key_delete(uuid)",
            "api_keys.api_key_delete(text)",
        ),
        (
            "api_keys.api_key_revoke(uuid,text)",
            "api_keys.api_key_revoke(text,text)",
        ),
        (
            "api_keys.api_key_suspend(uuid,text)",
            "api_keys.api_key_suspend(text,text)",
        ),
    ] {
        assert_eq!(acl(uuid_version), acl(text_version), "{acls:?}");
    }
    // pg_dump writes the changes from the initial privileges: both versions start alike.
    let init_differs: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_init_privs t JOIN pg_init_privs u \
                 ON u.objoid = to_regprocedure(replace(t.objoid::regprocedure::text, '(text', '(uuid')) \
              WHERE t.classoid = 'pg_proc'::regclass AND u.classoid = 'pg_proc'::regclass \
                AND t.objoid::regprocedure::text \
                    ~ '^api_keys\\.api_key_(suspend|reactivate|revoke|set_status|delete|rotate|update)\\(text' \
                AND t.initprivs IS DISTINCT FROM u.initprivs",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(init_differs, 0);
    assert!(
        acl("api_keys.api_key_revoke(text,text)").contains("Help Desk"),
        "{acls:?}"
    );
    assert!(
        acl("api_keys.api_key_delete(text)").contains("ops=X*"),
        "{acls:?}"
    );
    // A plain role still cannot delete, by id or by prefix.
    cheap_hashing(&mut c);
    c.batch_execute("SET ROLE alice").unwrap();
    let k = issue(&mut c, "'alice''s', 'user', 'development'");
    for call in [
        format!("SELECT api_keys.api_key_delete('{}')", k.prefix),
        format!("SELECT api_keys.api_key_delete('{}'::uuid)", k.id),
    ] {
        let e = c.batch_execute(&call).unwrap_err();
        assert_eq!(
            e.code(),
            Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{call}: {e:?}"
        );
    }
}
