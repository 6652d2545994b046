//! api_key_verify never raises, whatever the bytes: in a SQL_ASCII database text can
//! hold byte sequences that are not UTF-8, and those must come back `malformed`. Then
//! pgbench feeds it random bytes and mangled keys for a minute (RANDOM_BYTES_SECS).

mod common;

use common::load::{self, Run};
use common::{cheap_hashing, issue, stats, Cluster};

#[test]
fn bytes_that_are_not_utf8_are_malformed_not_errors() {
    let cluster = Cluster::start("ascii");
    let mut admin = cluster.connect(common::DB);
    admin
        .batch_execute(
            "CREATE DATABASE ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .unwrap();
    let mut c = cluster.connect("ascii");
    c.batch_execute("CREATE EXTENSION api_keys").unwrap();
    cheap_hashing(&mut c);
    let k = issue(
        &mut c,
        "'ascii', 'service', 'production', ARRAY['runs:read']",
    );

    // Raw high bytes, a key with one byte replaced by 0xff, and invalid UTF-8 in the scope.
    let cases = [
        ("E'\\xff\\xfe\\x80'", "NULL", "malformed"),
        (
            &format!("overlay('{}' placing E'\\xff' from 30 for 1)", k.key),
            "NULL",
            "malformed",
        ),
        (
            &format!("'{}'", k.key),
            "E'runs:\\xffread'",
            "insufficient_scope",
        ),
        (&format!("'{}'", k.key), "'runs:read'", "ok"),
    ];
    for (key_sql, scope_sql, expected) in cases {
        let rows = c
            .query(
                &format!(
                    "SELECT reason FROM api_keys.api_key_verify({key_sql}, NULL, {scope_sql})"
                ),
                &[],
            )
            .unwrap_or_else(|e| panic!("verify raised for {key_sql}: {e:?}"));
        assert_eq!(rows.len(), 1);
        let reason: String = rows[0].get(0);
        assert_eq!(reason, expected, "{key_sql} / {scope_sql}");
    }
}

#[test]
fn a_minute_of_random_bytes_through_verify_raises_nothing_and_accepts_no_changed_key() {
    let secs = load::seconds("RANDOM_BYTES_SECS", 60);
    let cluster = Cluster::start("random_bytes");
    cluster
        .connect(common::DB)
        .batch_execute(
            "CREATE DATABASE fuzz ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .unwrap();
    cluster
        .connect("fuzz")
        .batch_execute("CREATE EXTENSION api_keys")
        .unwrap();
    // 20 keys, and 10 that only 10.0.0.0/8 or 2001:db8::/32 may use.
    let mut c = load::prepare(&cluster, "fuzz", 1, 20);
    c.batch_execute(
        "INSERT INTO load.minted
         SELECT i.id, i.key FROM generate_series(1, 10) g,
                LATERAL api_keys.api_key_issue('cidr ' || g, 'service', 'production',
                    allowed_cidrs => ARRAY['10.0.0.0/8', '2001:db8::/32']::cidr[],
                    rate_limit_per_minute => 1000000000, rate_limit_per_hour => 1000000000) i",
    )
    .unwrap();
    let before = stats(&mut c);

    let out = load::spawn_pgbench(&cluster, "fuzz", "random_bytes.sql", 2, secs, &[])
        .wait_with_output()
        .unwrap();
    let run = Run::of(out);

    run.assert_clean();
    let after = stats(&mut c);
    let by_reason: Vec<String> = after
        .iter()
        .filter(|(k, v)| k.starts_with("verify_") && **v > before[*k])
        .map(|(k, v)| format!("{k} {}", v - before[k]))
        .collect();
    eprintln!(
        "random bytes: {} calls in {secs} s ({:.0}/s), 0 errors; {}",
        run.transactions,
        run.tps,
        by_reason.join(", ")
    );
    let log = cluster.server_log();
    assert!(
        !log.contains("PANIC") && !log.contains("terminated by signal"),
        "{log}"
    );
}
