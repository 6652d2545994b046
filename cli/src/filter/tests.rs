use super::*;
use proptest::prelude::*;

fn compile(input: &str) -> (String, Vec<String>) {
    let mut params = Params::default();
    let sql = parse(input)
        .unwrap_or_else(|e| panic!("{input}: {e}"))
        .to_sql(&mut params);
    (sql, params.0)
}

fn error(input: &str) -> String {
    parse(input).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn conditions_compile_to_bound_parameters() {
    assert_eq!(
        compile("status = active"),
        (
            "coalesce(l.status = $1::text::api_keys.key_status, false)".into(),
            vec!["active".into()]
        )
    );
    assert_eq!(
        compile("name ~ '50%_off'"),
        (
            "coalesce(l.name ILIKE $1::text, false)".into(),
            vec!["%50\\%\\_off%".into()]
        )
    );
    assert_eq!(
        compile("env not in (production, Staging)").0,
        "NOT coalesce(l.environment IN ($1::text::api_keys.environment, $2::text::api_keys.environment), false)"
    );
    assert_eq!(
        compile("scope = runs:read").0,
        "coalesce($1::text = ANY (l.scopes), false)"
    );
    assert_eq!(
        compile("scope in (runs:read, 'projects/42/*:write')"),
        (
            "coalesce(l.scopes && ARRAY[$1::text, $2::text], false)".into(),
            vec!["runs:read".into(), "projects/42/*:write".into()]
        )
    );
    assert_eq!(
        compile("last_used < 7d"),
        (
            "coalesce(l.last_used_at > statement_timestamp() - $1::text::interval, false)".into(),
            vec!["7 days".into()]
        )
    );
    assert_eq!(
        compile("expires <= 30d").0,
        "coalesce(coalesce(l.expires_at, 'infinity') <= statement_timestamp() + $1::text::interval, false)"
    );
    assert_eq!(
        compile("created >= '2025-01-31 10:00'"),
        (
            "coalesce(l.created_at >= $1::text::timestamptz, false)".into(),
            vec!["2025-01-31 10:00".into()]
        )
    );
    assert_eq!(
        compile("last_used = never").0,
        "coalesce(l.last_used_at IS NULL, false)"
    );
    assert_eq!(
        compile("expires != NEVER").0,
        "NOT coalesce(l.expires_at IS NULL, false)"
    );
    assert_eq!(
        compile("id = 0E8A3A0C-1B2C-4D5E-8F90-A1B2C3D4E5F6").1,
        vec!["0e8a3a0c-1b2c-4d5e-8f90-a1b2c3d4e5f6".to_owned()]
    );
    assert_eq!(
        compile("description != \"say \\\"hi\\\"\"").1,
        vec!["say \"hi\"".to_owned()]
    );
}

#[test]
fn precedence_and_grouping() {
    let (sql, params) = compile(
        "status = active and env in (production, staging) and (name ~ ci or scope = runs:read) and last_used < 7d and expires < 30d",
    );
    assert_eq!(
        params,
        [
            "active",
            "production",
            "staging",
            "%ci%",
            "runs:read",
            "7 days",
            "30 days"
        ]
    );
    assert!(sql.starts_with("(coalesce(l.status"), "{sql}");
    assert!(
        sql.contains(" AND (coalesce(l.name ILIKE $4::text, false) OR coalesce($5::text = ANY"),
        "{sql}"
    );
    // and binds tighter than or; not tighter than and.
    assert_eq!(
        compile("not type = user and owner = a OR owner = b").0,
        "((NOT coalesce(l.key_type = $1::text::api_keys.key_type, false) AND coalesce(l.owner = $2::text, false)) OR coalesce(l.owner = $3::text, false))"
    );
    assert_eq!(
        compile("NOT (owner = a or owner = b)").0,
        "NOT (coalesce(l.owner = $1::text, false) OR coalesce(l.owner = $2::text, false))"
    );
}

#[test]
fn errors_say_where_and_what() {
    assert_eq!(
        error("status ="),
        "at 9: expected a value after '=', got the end of the filter"
    );
    assert_eq!(error("name = ci and"), "at 14: expected a condition (a field: id, prefix, name, description, owner, type, env, status, scope, created, last_used, expires), got the end of the filter");
    assert_eq!(error("colour = red"), "at 1: unknown field 'colour' (fields: id, prefix, name, description, owner, type, env, status, scope, created, last_used, expires)");
    assert_eq!(
        error("status = actve"),
        "at 10: unknown status 'actve' (one of: active, suspended, revoked, expired)"
    );
    assert_eq!(
        error("status ~ act"),
        "at 8: operator '~' does not apply to status (use =, !=, in, not in)"
    );
    assert_eq!(
        error("name active"),
        "at 6: expected an operator after 'name' (=, !=, ~, !~, in, not in), got 'active'"
    );
    assert_eq!(
        error("(name = a"),
        "at 10: expected ')', 'and' or 'or', got the end of the filter"
    );
    assert_eq!(error("name = a)"), "at 9: unbalanced ')'");
    assert_eq!(
        error("name = a owner = b"),
        "at 10: expected 'and', 'or' or the end, got 'owner'"
    );
    assert_eq!(
        error("name = 'abc"),
        "at 8: unterminated string (no closing ')"
    );
    assert_eq!(
        error("name ! a"),
        "at 6: unexpected '!' (did you mean != or !~?)"
    );
    assert_eq!(error("name = a;"), "at 9: unexpected character ';'");
    assert_eq!(error("env in production"), "at 8: expected '(' after 'in'");
    assert_eq!(
        error("env in (production staging)"),
        "at 20: expected ',' or ')', got 'staging'"
    );
    assert_eq!(
        error("env not production"),
        "at 9: expected 'in' after 'not'"
    );
    assert_eq!(error("last_used < soon"), "at 13: expected a duration (7d, 12h, 30m) or a date (2025-01-31, '2025-01-31 10:00') after '<', got 'soon'");
    assert_eq!(error("expires = 7d"), "at 11: '=' compares expires only with never; use <, <=, >, >= with a duration (7d) or a date (2025-01-31)");
    assert_eq!(error("created = never"), "at 11: created is never empty");
    assert_eq!(error("id = 42"), "at 6: '42' is not a key id (a uuid)");
    assert_eq!(error("   "), "at 1: the filter is empty");
}

#[test]
fn bounds() {
    assert!(error(&"x".repeat(MAX_LEN + 1)).starts_with("at 1001: the filter is longer"));
    let deep = format!("{}name = a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert!(
        error(&deep).contains("nested too deeply"),
        "{}",
        error(&deep)
    );
    let ok = format!(
        "{}name = a{}",
        "(".repeat(MAX_DEPTH - 1),
        ")".repeat(MAX_DEPTH - 1)
    );
    assert!(parse(&ok).is_ok());
    assert!(error(&"not ".repeat(MAX_DEPTH + 1)).contains("nested too deeply"));
    let many = vec!["name = a"; MAX_CONDITIONS + 1].join(" or ");
    assert!(error(&many).contains("more than 64 conditions"));
    let list = format!("name in ({})", vec!["a"; MAX_LIST + 1].join(","));
    assert!(error(&list).contains("more than 100 values"));
    assert!(error(&format!("name = {}", "a".repeat(MAX_VALUE + 1))).contains("longer than 200"));
}

/// Words and symbols of the language, to build inputs that get far into the parser.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("status".to_owned()),
        Just("name".to_owned()),
        Just("scope".to_owned()),
        Just("last_used".to_owned()),
        Just("expires".to_owned()),
        Just("env".to_owned()),
        Just("id".to_owned()),
        Just("and".to_owned()),
        Just("or".to_owned()),
        Just("not".to_owned()),
        Just("in".to_owned()),
        Just("never".to_owned()),
        Just("active".to_owned()),
        Just("7d".to_owned()),
        Just("2025-01-31".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just("=".to_owned()),
        Just("!=".to_owned()),
        Just("~".to_owned()),
        Just("<".to_owned()),
        Just("'".to_owned()),
        "[a-z:*/0-9]{1,6}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(input in "\\PC{0,200}") {
        if let Ok(expr) = parse(&input) {
            let mut params = Params::default();
            let _ = expr.to_sql(&mut params);
        }
    }

    #[test]
    fn token_soup_never_panics_and_binds_every_value(pieces in prop::collection::vec(piece(), 0..40)) {
        let input = pieces.join(" ");
        match parse(&input) {
            Ok(expr) => {
                let mut params = Params::default();
                let sql = expr.to_sql(&mut params);
                // One placeholder per parameter, and no input text in the SQL.
                prop_assert_eq!(sql.matches("::text").count(), params.0.len());
                prop_assert!(!sql.contains('"'));
                prop_assert_eq!(sql.matches('\'').count(), 2 * sql.matches("'infinity'").count());
            }
            Err(e) => prop_assert!(e.pos >= 1 && e.pos <= input.chars().count() + 1, "{}", e),
        }
    }

    #[test]
    fn values_never_reach_the_sql(value in "zq[a-zA-Z0-9 ;'\"%_\\\\-]{0,30}") {
        for template in ["name = {}", "owner ~ {}", "scope in (a, {})", "description !~ {}"] {
            let quoted = format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
            let input = template.replace("{}", &quoted);
            let mut params = Params::default();
            let sql = parse(&input).unwrap().to_sql(&mut params);
            prop_assert!(!sql.contains("zq"), "{}", sql);
            prop_assert!(params.0.iter().any(|p| p.contains("zq")));
        }
    }
}
