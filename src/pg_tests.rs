//! In-database units (`cargo pgrx test`): what only a running Postgres can show.
//! The functions live in schema `tests`, where the pgrx test harness calls them.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::core::key::format;

    fn cheap_hashing() {
        Spi::run("SET api_keys.argon2_memory_kib = 64; SET api_keys.argon2_iterations = 1")
            .unwrap();
    }

    fn issue(scopes: &str) -> (String, String) {
        cheap_hashing();
        Spi::get_two::<String, String>(&format!(
            "SELECT id::text, key FROM api_keys.api_key_issue('unit', 'service', 'production', {scopes})"
        ))
        .map(|(id, key)| (id.unwrap(), key.unwrap()))
        .unwrap()
    }

    fn reason(key_sql: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT reason FROM api_keys.api_key_verify({key_sql})"
        ))
        .unwrap()
        .unwrap()
    }

    /// Index and heap scans of api_keys.keys in this transaction so far.
    fn key_table_scans() -> i64 {
        Spi::get_one::<i64>(
            "SELECT sum(pg_stat_get_xact_numscans(c.oid))::bigint FROM pg_class c
              WHERE c.oid = 'api_keys.keys'::regclass
                 OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'api_keys.keys'::regclass)",
        )
        .unwrap()
        .unwrap_or(0)
    }

    #[pg_test]
    fn issued_keys_parse_and_verify() {
        let (id, key) = issue("ARRAY['runs:read']");
        let parsed = format::parse(key.as_bytes()).expect("issued key parses");
        assert_eq!(parsed.environment, format::Environment::Production);
        assert_eq!(reason(&format!("'{key}'")), "ok");
        let key_id = Spi::get_one::<String>(&format!(
            "SELECT key_id::text FROM api_keys.api_key_verify('{key}')"
        ))
        .unwrap();
        assert_eq!(key_id.as_deref(), Some(id.as_str()));
    }

    #[pg_test]
    fn only_an_argon2id_hash_of_the_secret_is_stored() {
        let (id, key) = issue("ARRAY['*']");
        let parsed = format::parse(key.as_bytes()).unwrap();
        let stored = Spi::get_one::<String>(&format!(
            "SELECT secret_hash FROM api_keys.keys WHERE id = '{id}'"
        ))
        .unwrap()
        .unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        // Neither the secret nor the full key appears in any stored row.
        let leaks = Spi::get_one::<i64>(&format!(
            "SELECT (SELECT count(*) FROM api_keys.keys k WHERE k::text LIKE '%{s}%')
                  + (SELECT count(*) FROM api_keys.audit_log a WHERE a::text LIKE '%{s}%')",
            s = parsed.secret
        ))
        .unwrap()
        .unwrap();
        assert_eq!(leaks, 0);
    }

    #[pg_test]
    fn malformed_and_bad_checksum_input_touches_no_table() {
        let (_, key) = issue("ARRAY['*']");
        let before = key_table_scans();
        let mut near_miss = key.clone().into_bytes();
        let i = near_miss.len() - 20;
        near_miss[i] = if near_miss[i] == b'a' { b'b' } else { b'a' };
        let near_miss = String::from_utf8(near_miss).unwrap();
        for input in [
            "NULL",
            "''",
            "'garbage'",
            "repeat('x', 1000000)",
            &format!("'{near_miss}'"),
        ] {
            assert_eq!(reason(input), "malformed", "{input}");
        }
        assert_eq!(
            key_table_scans(),
            before,
            "rejected input must not reach the table"
        );
        assert_eq!(reason(&format!("'{key}'")), "ok");
        assert!(key_table_scans() > before, "a real key is looked up");
    }

    /// A forged signature is refused before the key table, as garbage is; the same key
    /// in the unsigned shape is refused once its row says it is signed.
    #[pg_test]
    fn a_forged_signature_never_reaches_the_table() {
        use crate::core::key::format::checksum;
        let (_, key) = issue("ARRAY['*']");
        let body = &key[..key.len() - 6];
        let forged_body = format!("{}{}", &body[..body.len() - 17], "1".repeat(17));
        let forged = format!("{forged_body}{}", checksum(&forged_body));
        let before = key_table_scans();
        assert_eq!(reason(&format!("'{forged}'")), "invalid_secret");
        assert_eq!(
            key_table_scans(),
            before,
            "a forgery must not reach the table"
        );
        let unsigned_body = &body[..body.len() - 21];
        let unsigned = format!("{unsigned_body}{}", checksum(unsigned_body));
        assert_eq!(reason(&format!("'{unsigned}'")), "invalid_secret");
        assert!(key_table_scans() > before, "its row says it is signed");
        assert_eq!(reason(&format!("'{key}'")), "ok");
    }

    /// `_authentic_key` (behind api_key_report_leaked): the key whatever its status
    /// short of revoked; NULL for a revoked key, a wrong secret, a forged MAC, an
    /// unknown prefix or bytes that are not UTF-8; and it counts nothing a verification
    /// would.
    #[pg_test]
    fn authentic_keys_are_found_unless_revoked() {
        use crate::core::key::format::checksum;
        // A limit of one call a minute: a report that counted as a call would use it up.
        let (id, key) = issue("ARRAY['*'], rate_limit_per_minute => 1");
        let authentic = |sql: &str| {
            Spi::get_one::<String>(&format!("SELECT api_keys._authentic_key({sql})::text")).unwrap()
        };
        assert_eq!(authentic(&format!("textsend('{key}')")), Some(id.clone()));
        assert_eq!(authentic(&format!("textsend('{key}')")), Some(id.clone()));
        assert_eq!(reason(&format!("'{key}'")), "ok", "no call is counted");
        Spi::run(&format!("SELECT api_keys.api_key_suspend('{id}'::uuid)")).unwrap();
        assert_eq!(authentic(&format!("textsend('{key}')")), Some(id.clone()));
        let body = &key[..key.len() - 6];
        let forged_body = format!("{}{}", &body[..body.len() - 17], "1".repeat(17));
        let forged = format!("{forged_body}{}", checksum(&forged_body));
        assert_eq!(authentic(&format!("textsend('{forged}')")), None);
        let unknown = format!("ak_live_AAAAAAAAAAAA{}", &key[20..]);
        assert_eq!(authentic(&format!("textsend('{unknown}')")), None);
        assert_eq!(authentic("'\\xff00'::bytea"), None);
        Spi::run(&format!(
            "SELECT api_keys.api_key_revoke('{id}'::uuid, 'unit')"
        ))
        .unwrap();
        assert_eq!(authentic(&format!("textsend('{key}')")), None);
    }

    #[pg_test]
    fn brand_setting_shapes_new_keys_and_the_pattern() {
        Spi::run("SET api_keys.brand = 'acme'").unwrap();
        let (_, key) = issue("ARRAY['*']");
        assert!(key.starts_with("acme_live_"), "{key}");
        let matches = Spi::get_one::<bool>(&format!(
            "SELECT '{key}' ~ ('^' || api_keys.key_pattern() || '$')"
        ))
        .unwrap()
        .unwrap();
        assert!(matches);
        assert_eq!(reason(&format!("'{key}'")), "ok");
    }

    #[pg_test(error = "api_keys.brand must be 2 to 8 lowercase letters or digits")]
    fn invalid_brand_is_refused_when_issuing() {
        Spi::run("SET api_keys.brand = 'Not A Brand'").unwrap();
        issue("ARRAY['*']");
    }

    #[pg_test]
    fn scopes_are_normalised_and_deduplicated() {
        let scopes = Spi::get_one::<Vec<String>>(
            "SELECT api_keys._check_scopes(ARRAY['runs:read', 'runs:read', '*'], true)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(scopes, vec!["runs:read".to_string(), "*".to_string()]);
    }

    #[pg_test]
    fn argon2_parameters_come_from_the_settings() {
        Spi::run("SET api_keys.argon2_memory_kib = 128; SET api_keys.argon2_iterations = 3; SET api_keys.argon2_parallelism = 2").unwrap();
        let hash =
            Spi::get_one::<String>("SELECT secret_hash FROM api_keys._mint_signed_key('staging')")
                .unwrap()
                .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=128,t=3,p=2$"), "{hash}");
    }

    #[pg_test]
    fn verify_is_usable_in_a_read_only_transaction() {
        let (_, key) = issue("ARRAY['*']");
        Spi::run("SET TRANSACTION READ ONLY").unwrap();
        assert_eq!(reason(&format!("'{key}'")), "ok");
    }
}
