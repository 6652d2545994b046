//! No secret and no hash in the server log: a cluster logging at `debug5` goes through
//! issuing, verifying (right and wrong keys), login, authenticate, rotation, keys named
//! by a whole key, leaked-key reports, refusals and errors, and its log must contain no
//! key, no secret part and no argon2 hash.

mod common;

use common::{cheap_hashing, forge_secret, issue, try_verify, Cluster, DB};

/// The SQLSTATE a call raised; None when it succeeded.
fn sqlstate<T>(result: Result<T, postgres::Error>) -> Option<String> {
    result
        .err()
        .map(|e| e.code().map_or("no SQLSTATE", |c| c.code()).to_string())
}

#[test]
fn no_key_secret_or_hash_reaches_the_log_at_debug5() {
    let cluster = Cluster::start_with(
        "logs",
        &[
            "log_min_messages = debug5",
            "log_min_error_statement = debug5",
            "log_error_verbosity = verbose",
        ],
    );
    let mut c = cluster.connect(DB);
    cheap_hashing(&mut c);
    let a = issue(
        &mut c,
        "'logged a', 'service', 'production', ARRAY['runs:read'], allowed_cidrs => '{10.0.0.0/8}'",
    );
    let b = issue(&mut c, "'logged b', 'user', 'development'");
    let mut keys = vec![a.key.clone(), b.key.clone()];

    for (key, ip, scope) in [
        (a.key.clone(), Some("10.1.1.1"), Some("runs:read")),
        (a.key.clone(), Some("192.0.2.1"), None),
        (a.key.clone(), Some("10.1.1.1"), Some("runs:write")),
        (forge_secret(&a.key), None, None),
        (b.key.clone(), None, None),
    ] {
        try_verify(&mut c, &key, ip, scope).unwrap();
    }
    // Refusals and errors carrying keys as parameters (each with the SQLSTATE it must
    // raise, so that the refusal path really ran), and one login that succeeds.
    let logins = [
        (
            "SELECT api_keys.login($1)",
            forge_secret(&b.key),
            Some("PT401"),
        ),
        ("SELECT api_keys.login($1)", a.key.clone(), Some("PT403")),
        ("SELECT api_keys.login($1, '10.1.1.1')", a.key.clone(), None),
    ];
    for (sql, key, expected) in &logins {
        assert_eq!(
            sqlstate(c.query(*sql, &[key])).as_deref(),
            *expected,
            "{sql}"
        );
    }
    let headers = format!(r#"{{"x-api-key": "{}"}}"#, forge_secret(&a.key));
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT set_config('request.headers', $1, true)",
        &[&headers],
    )
    .unwrap();
    assert_eq!(
        sqlstate(tx.execute("SELECT api_keys.authenticate()", &[])).as_deref(),
        Some("PT401")
    );
    drop(tx);
    let rotated: String = c
        .query_one(
            "SELECT key FROM api_keys.api_key_rotate($1::text::uuid)",
            &[&b.id],
        )
        .unwrap()
        .get(0);
    keys.push(rotated);
    // A whole key where a lifecycle function wants an id or a prefix: a WARNING names
    // its prefix, the secret goes nowhere; a leaked-key report of a forgery revokes
    // nothing and says nothing.
    for sql in [
        "SELECT api_keys.api_key_suspend($1)",
        "SELECT api_keys.api_key_reactivate($1)",
    ] {
        c.execute(sql, &[&a.key]).unwrap();
    }
    let reported = c
        .query(
            "SELECT api_keys.api_key_report_leaked(ARRAY[$1, $2], 'logs')",
            &[&forge_secret(&a.key), &forge_secret(&b.key)],
        )
        .unwrap();
    assert!(reported.is_empty());
    assert_eq!(
        sqlstate(c.query(
            "SELECT api_keys.api_key_revoke($1::text::uuid, NULL)",
            &[&a.id]
        ))
        .as_deref(),
        Some("22023")
    );
    c.execute(
        "SELECT api_keys.api_key_revoke($1::text::uuid, 'done')",
        &[&a.id],
    )
    .unwrap();

    let hashes: Vec<String> = c
        .query("SELECT secret_hash FROM api_keys.keys", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(c);
    let log = cluster.server_log();
    assert!(
        log.contains("DEBUG"),
        "the log is not at debug level, so this test would prove nothing"
    );
    for key in &keys {
        let secret = &key[key.len() - 6 - 43..key.len() - 6];
        assert!(!log.contains(key.as_str()), "a key is in the server log");
        assert!(!log.contains(secret), "a secret is in the server log");
    }
    for hash in &hashes {
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let digest = hash.rsplit('$').next().unwrap();
        assert!(!log.contains(digest), "a hash is in the server log");
    }
    assert!(
        !log.contains("$argon2id$"),
        "an argon2 PHC string is in the server log"
    );
}

/// PostgreSQL logs the text of a statement that fails (`log_min_error_statement`, here
/// at `warning`, stricter than its default), literals included. A whole key written
/// as a literal where a lifecycle function wants an id or a prefix, or in a leaked-key
/// report, stays out of the log whatever then fails: a missing reason, a refused
/// transition, an unknown key, input that is no id at all.
#[test]
fn failing_statements_with_a_whole_key_literal_are_not_logged() {
    let cluster = Cluster::start_with("logs_literal", &["log_min_error_statement = warning"]);
    let mut c = cluster.connect(DB);
    cheap_hashing(&mut c);
    let a = issue(&mut c, "'literal a', 'service', 'production'");
    c.batch_execute(&format!("SELECT api_keys.api_key_suspend('{}')", a.prefix))
        .unwrap();
    let key = &a.key;
    for (sql, expected) in [
        (
            format!("SELECT api_keys.api_key_revoke('{key}', NULL)"),
            "22023",
        ),
        (format!("SELECT api_keys.api_key_suspend('{key}')"), "55000"),
        (
            format!("SELECT api_keys.api_key_suspend(' {key}')"),
            "22023",
        ),
        (
            format!(
                "SELECT api_keys.api_key_delete('{key}x{}')",
                "y".repeat(200)
            ),
            "22023",
        ),
        (
            format!("SELECT api_keys.api_key_report_leaked(ARRAY['{key}'], NULL)"),
            "22023",
        ),
        (format!("SELECT api_keys.api_key_reactivate('{key}')"), "ok"),
    ] {
        let got = sqlstate(c.batch_execute(&sql));
        assert_eq!(got.as_deref().unwrap_or("ok"), expected, "{sql}");
    }
    // An error outside our functions is logged with its statement, as PostgreSQL does.
    assert!(c.batch_execute("SELECT 1/0 AS logged_statement").is_err());
    // Also later in a transaction where a whole key was named: the quiet log ends with
    // the call (a role cannot keep its own failing statements out of the log that way).
    c.batch_execute("BEGIN").unwrap();
    c.batch_execute(&format!("SELECT api_keys.api_key_suspend('{key}')"))
        .unwrap();
    assert!(c.batch_execute("SELECT 1/0 AS after_a_whole_key").is_err());
    c.batch_execute("ROLLBACK").unwrap();
    drop(c);
    let log = cluster.server_log();
    assert!(
        log.contains("logged_statement"),
        "statements are not logged at all"
    );
    assert!(
        log.contains("after_a_whole_key"),
        "a whole key kept the rest of its transaction out of the log"
    );
    let secret = &key[key.len() - 6 - 21 - 43..key.len() - 6 - 21];
    assert!(
        !log.contains(secret),
        "a secret is in the server log:\n{log}"
    );
}
