//! api_key_verify never raises, whatever the bytes: in a SQL_ASCII database text can
//! hold byte sequences that are not UTF-8, and those must come back `malformed`.

mod common;

use common::{cheap_hashing, issue, Cluster};

#[test]
fn bytes_that_are_not_utf8_are_malformed_not_errors() {
    let cluster = Cluster::start("ascii");
    let mut admin = cluster.connect("api_keys_test");
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
