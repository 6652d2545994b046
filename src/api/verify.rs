//! `api_key_verify`: one row for any input, never an error for bad input.

use pgrx::datum::{Inet, TimestampWithTimeZone, Uuid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiTupleTable};
use std::cell::OnceCell;

use crate::cidr;
use crate::enum_datum::{EnvironmentDatum, KeyTypeDatum};
use crate::key::{format, hash};
use crate::memo::{self, Fact};
use crate::shmem;
use crate::verdict::{self, KeyState, Reason};

type VerifyRow = (
    bool,
    String,
    Option<Uuid>,
    Option<String>,
    Option<KeyTypeDatum>,
    Option<EnvironmentDatum>,
    Option<Vec<String>>,
    Option<TimestampWithTimeZone>,
);

fn rejected(reason: Reason) -> VerifyRow {
    (
        false,
        reason.as_str().to_owned(),
        None,
        None,
        None,
        None,
        None,
        None,
    )
}

const FETCH_BY_PREFIX: &str = "\
    SELECT id, secret_hash, owner, key_type, environment, status::text, \
           coalesce(expires_at <= statement_timestamp(), false), scopes, allowed_cidrs::text[], expires_at \
      FROM api_keys.keys WHERE prefix OPERATOR(pg_catalog.=) $1";

thread_local! {
    /// Planned once per backend; Postgres replans it by itself if the table changes.
    static FETCH_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
}

/// `key` arrives as the raw bytes of its text datum (see the CREATE FUNCTION below), so
/// bytes that are not UTF-8 (possible in a SQL_ASCII database) are `malformed`, not an
/// error. Likewise `required_scope`.
#[pg_extern(
    requires = ["schema"],
    sql = r#"
CREATE FUNCTION api_keys.api_key_verify(
    key text,
    client_ip inet DEFAULT NULL,
    required_scope text DEFAULT NULL
) RETURNS TABLE (
    valid boolean, reason text, key_id uuid, owner text,
    key_type api_keys.key_type, environment api_keys.environment,
    scopes text[], expires_at timestamptz
)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#
)]
#[allow(clippy::type_complexity)] // name!() cannot go through a type alias
fn api_key_verify(
    key: Option<&[u8]>,
    client_ip: Option<Inet>,
    required_scope: Option<&[u8]>,
) -> TableIterator<
    'static,
    (
        name!(valid, bool),
        name!(reason, String),
        name!(key_id, Option<Uuid>),
        name!(owner, Option<String>),
        name!(key_type, Option<KeyTypeDatum>),
        name!(environment, Option<EnvironmentDatum>),
        name!(scopes, Option<Vec<String>>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::once(verify(
        key.unwrap_or_default(),
        client_ip.as_deref(),
        required_scope,
    ))
}

fn verify(key: &[u8], client_ip: Option<&str>, required_scope: Option<&[u8]>) -> VerifyRow {
    let outcome = check(key, client_ip, required_scope);
    shmem::count(*outcome.as_ref().err().unwrap_or(&Reason::Ok));
    outcome.unwrap_or_else(rejected)
}

/// An enum column's raw datum (the row's types are fixed by the query).
fn enum_column(row: &SpiTupleTable, ordinal: usize) -> Option<pg_sys::Datum> {
    row.get_datum_by_ordinal(ordinal).ok().flatten()
}

/// Does `key` match the stored hash? The memo answers for presentations seen before;
/// otherwise argon2 decides, within the prefix's budget, and the memo remembers.
fn secret_matches(key: &[u8], prefix: &str, secret: &str, secret_hash: &str) -> bool {
    let fact = memo::fact_id(secret_hash, key);
    match shmem::memo_lookup(&fact) {
        Some(known) => known == Fact::Matches,
        None if !shmem::spend_budget(prefix) => false,
        None => {
            let matches = shmem::argon2(|| hash::verify_secret(secret, secret_hash));
            let known = if matches {
                Fact::Matches
            } else {
                Fact::DoesNotMatch
            };
            shmem::memo_remember(&fact, known);
            matches
        }
    }
}

/// The identity row of a valid key, or why it is not valid.
fn check(
    key: &[u8],
    client_ip: Option<&str>,
    required_scope: Option<&[u8]>,
) -> Result<VerifyRow, Reason> {
    // Cheap rejection first: no table, no hash.
    let parsed = format::parse(key).map_err(|_| Reason::Malformed)?;
    Spi::connect(|client| {
        let rows = FETCH_PLAN.with(|plan| {
            let plan = plan.get_or_init(|| {
                client
                    .prepare(FETCH_BY_PREFIX, &[PgOid::BuiltIn(PgBuiltInOids::TEXTOID)])
                    .expect("prepare key lookup")
                    .keep()
            });
            client
                .select(plan, Some(1), &[parsed.prefix.into()])
                .expect("key lookup")
        });
        if rows.is_empty() {
            return Err(Reason::NotFound);
        }
        let row = rows.first();
        let secret_hash: String = row.get(2).ok().flatten().unwrap_or_default();
        if !secret_matches(key, parsed.prefix, parsed.secret, &secret_hash) {
            return Err(Reason::InvalidSecret);
        }
        let status: String = row.get(6).ok().flatten().unwrap_or_default();
        let past_expiry: bool = row.get(7).ok().flatten().unwrap_or(false);
        // Arrays are read with room for NULL elements (a table constraint forbids them,
        // but verify must not raise): a NULL scope grants nothing, a NULL rule fails closed.
        let scopes: Vec<String> = row
            .get::<Vec<Option<String>>>(8)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        let cidr_text: Option<Vec<String>> = row
            .get::<Vec<Option<String>>>(9)
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let rules = cidr_text.and_then(|c| cidr::parse_rules(&c));
        let state = KeyState {
            status: &status,
            past_expiry,
            cidrs: rules.as_deref(),
            scopes: &scopes,
        };
        let client = client_ip.and_then(cidr::parse_client);
        // Not UTF-8: a scope nobody holds.
        let required = required_scope.map(|s| std::str::from_utf8(s).unwrap_or("\u{0}"));
        match verdict::judge(&state, client, required) {
            Reason::Ok => Ok((
                true,
                Reason::Ok.as_str().to_owned(),
                row.get(1).ok().flatten(),
                row.get(3).ok().flatten(),
                enum_column(&row, 4).map(KeyTypeDatum::from_column),
                enum_column(&row, 5).map(EnvironmentDatum::from_column),
                Some(scopes),
                row.get(10).ok().flatten(),
            )),
            reason => Err(reason),
        }
    })
}
