//! Helpers the SQL of issue, rotate, update and the guard trigger calls (sql/issue.sql,
//! sql/lifecycle.sql):
//! minting a key and validating scopes. Not granted to PUBLIC.

use pgrx::prelude::*;

use super::pattern::configured_brand;
use super::{args, fmgr};
use crate::core::key::signature::SigningKey;
use crate::core::key::{format, hash, secret};
use crate::core::scope::{MAX_SCOPES, MAX_SCOPE_LEN};
use crate::postgres::errors;
use crate::postgres::gucs;
use crate::postgres::shmem::{self, Argon2For};
use crate::postgres::{datum, scope_check, signing_keys};

/// A fresh key for `environment`, signed with the current signing key: its prefix,
/// the full key (shown once), the argon2id hash of its secret (stored) and the id of
/// the signing key.
#[pg_extern(volatile, requires = ["tables"])]
pub(crate) fn _mint_signed_key(
    environment: &str,
) -> TableIterator<
    'static,
    (
        name!(prefix, String),
        name!(key, String),
        name!(secret_hash, String),
        name!(signing_key, String),
    ),
> {
    let signing_key = signing_keys::current();
    let (prefix, key, secret_hash) = mint(environment, Some(&signing_key));
    TableIterator::once((prefix, key, secret_hash, signing_key.id))
}

/// What catalogs before 0.5.0 call to mint a key, until `ALTER EXTENSION api_keys
/// UPDATE`: a key without a signature, as they issued (they have no signing keys and
/// no column to record one).
#[pg_extern(volatile, sql = false)]
fn _mint_key(
    environment: &str,
) -> TableIterator<
    'static,
    (
        name!(prefix, String),
        name!(key, String),
        name!(secret_hash, String),
    ),
> {
    TableIterator::once(mint(environment, None))
}

/// (prefix, full key, argon2id hash of the secret) of a fresh key.
fn mint(environment: &str, signing_key: Option<&SigningKey>) -> (String, String, String) {
    let env = environment_named(environment);
    let secret = secret::secret();
    let new = format::compose(
        &configured_brand(),
        env,
        &secret::public_id(),
        &secret,
        signing_key,
    );
    (new.prefix, new.full, hash(&secret))
}

fn environment_named(environment: &str) -> format::Environment {
    format::Environment::from_sql_name(environment).unwrap_or_else(|| {
        errors::invalid_parameter(format!("environment \"{environment}\" is not valid"), None)
    })
}

/// The argon2id hash of a new secret. Under the server-wide cap like every argon2 run,
/// yielding to verifications: issuing in bulk takes no more of the machine than the
/// cap and delays no verification by more than the hashes running; a call waiting can
/// be cancelled.
fn hash(secret: &str) -> String {
    let settings = gucs::argon2_settings();
    shmem::argon2(Argon2For::Issuing, || hash::hash_secret(secret, settings)).unwrap_or_else(|e| {
        errors::invalid_parameter(
            format!("argon2 settings are not usable: {e}"),
            Some(
                "api_keys.argon2_memory_kib must be at least 8 x api_keys.argon2_parallelism"
                    .into(),
            ),
        )
    })
}

extension_sql!(
    r#"
CREATE FUNCTION api_keys._check_scopes(scopes text[], against_catalog boolean) RETURNS text[]
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', '_check_scopes_wrapper';
"#,
    name = "check_scopes",
    requires = ["tables"]
);

fmgr::finfo_v1!(pg_finfo__check_scopes_wrapper);

/// `api_keys._check_scopes(scopes, against_catalog)`: validate and normalise a scope
/// list (see `check_scopes`). Its fmgr glue is written by hand so that the array is
/// counted from its header before any element is read, and elements are read as bytes:
/// text that is not UTF-8 (SQL_ASCII, LATIN1 databases) is a malformed scope, never a
/// conversion failure. The symbol is the one earlier releases' catalogs name.
///
/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn _check_scopes_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo comes from the function manager; arguments are read as declared.
    let (scopes, against_catalog) = unsafe { (args::arg(fcinfo, 0), args::arg(fcinfo, 1)) };
    let Some(scopes) = scopes else {
        errors::invalid_parameter(
            "scopes must not be NULL",
            Some("Use ARRAY['*'] for full access or '{}' for none.".into()),
        )
    };
    // Too many bytes for MAX_SCOPES scopes of MAX_SCOPE_LEN: refused before the array
    // is decompressed. SAFETY: a varlena datum; only its header or toast pointer is read.
    let bytes = unsafe { datum::raw_size(scopes) };
    if bytes > MAX_SCOPES * (MAX_SCOPE_LEN + 8) + 1024 {
        errors::invalid_parameter(
            format!("scopes is {bytes} bytes; a key holds at most {MAX_SCOPES} scopes of at most {MAX_SCOPE_LEN} bytes"),
            Some(format!("api_keys allows at most {MAX_SCOPES} scopes per key, each at most {MAX_SCOPE_LEN} bytes.")),
        )
    }
    // SAFETY: a text[] datum, now of a bounded size.
    let count = unsafe { datum::array_len(scopes) };
    if count > MAX_SCOPES {
        errors::invalid_parameter(
            format!("scopes has {count} entries; a key holds at most {MAX_SCOPES}"),
            Some(format!("api_keys allows at most {MAX_SCOPES} scopes per key; a wildcard such as \"projects/*:read\" covers many.")),
        )
    }
    // SAFETY: a text[] datum of at most MAX_SCOPES elements; the bytes live as long as
    // this call's memory.
    let elements = unsafe { datum::text_array_bytes(scopes) };
    let texts: Vec<Option<String>> = elements
        .into_iter()
        .map(|e| {
            e.map(|bytes| {
                // Refused before it is copied: a scope is short.
                if bytes.len() > MAX_SCOPE_LEN {
                    errors::invalid_parameter(
                        format!("scopes: an entry of {} bytes is no scope: a scope is at most {MAX_SCOPE_LEN} bytes", bytes.len()),
                        Some(format!("A scope is at most {MAX_SCOPE_LEN} bytes.")),
                    )
                }
                String::from_utf8_lossy(bytes).into_owned()
            })
        })
        .collect();
    let against_catalog = against_catalog.is_some_and(|d| d.value() != 0);
    scope_check::check_scopes(texts, against_catalog)
        .into_datum()
        .expect("a text[]")
}
