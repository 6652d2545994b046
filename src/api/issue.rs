//! Helpers that api_key_issue / api_key_rotate / api_key_update (sql/functions.sql) call:
//! minting a key and validating scopes. Not granted to PUBLIC.

use pgrx::prelude::*;

use super::pattern::configured_brand;
use crate::errors;
use crate::gucs;
use crate::key::{format, hash, secret};
use crate::scope::Scope;

/// A fresh key for `environment`: its prefix, the full key (shown once) and the argon2id
/// hash of its secret (stored).
#[pg_extern(volatile, requires = ["schema"])]
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
    let Some(env) = format::Environment::from_sql_name(environment) else {
        errors::invalid_parameter(format!("environment \"{environment}\" is not valid"), None)
    };
    let brand = configured_brand();
    let secret = secret::secret();
    let new = format::compose(&brand, env, &secret::public_id(), &secret);
    let settings = gucs::argon2_settings();
    let secret_hash = hash::hash_secret(&secret, settings).unwrap_or_else(|e| {
        errors::invalid_parameter(
            format!("argon2 settings are not usable: {e}"),
            Some(
                "api_keys.argon2_memory_kib must be at least 8 x api_keys.argon2_parallelism"
                    .into(),
            ),
        )
    });
    TableIterator::once((new.prefix, new.full, secret_hash))
}

/// Validate and normalise a scope list: grammar always; with `against_catalog`, each
/// scope must overlap an entry of `api_keys.scope_catalog` when it has any. Raises 22023
/// naming the offending scope, with the valid ones in the HINT.
#[pg_extern(stable, requires = ["schema"])]
fn _check_scopes(scopes: Option<Vec<Option<String>>>, against_catalog: bool) -> Vec<String> {
    let Some(scopes) = scopes else {
        errors::invalid_parameter(
            "scopes must not be NULL",
            Some("Use ARRAY['*'] for full access or '{}' for none.".into()),
        )
    };
    let catalog: Vec<String> = if against_catalog {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT resource || ':' || action FROM api_keys.scope_catalog ORDER BY 1",
                    None,
                    &[],
                )
                .expect("scope catalog")
                .filter_map(|row| row.get::<String>(1).ok().flatten())
                .collect()
        })
    } else {
        Vec::new()
    };
    let catalog_scopes: Vec<Scope> = catalog
        .iter()
        .filter_map(|c| Scope::parse(c).ok())
        .collect();
    let mut normalised: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let Some(scope) = scope else {
            errors::invalid_parameter("scopes must not contain NULL", None)
        };
        let parsed = Scope::parse(&scope).unwrap_or_else(|e| {
            errors::invalid_parameter(
                format!("scopes: \"{scope}\" is malformed: {e}"),
                Some("A scope is \"*\" or \"<resource>:<action>\", e.g. \"runs:read\" or \"projects/42/*:write\".".into()),
            )
        });
        if !catalog_scopes.is_empty() && !catalog_scopes.iter().any(|c| c.overlaps(&parsed)) {
            errors::invalid_parameter(
                format!("scopes: \"{scope}\" is not in the scope catalog"),
                Some(format!("Valid scopes: {}.", catalog.join(", "))),
            )
        }
        let text = parsed.to_string();
        if !normalised.contains(&text) {
            normalised.push(text);
        }
    }
    normalised
}
