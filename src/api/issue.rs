//! Helpers that api_key_issue / api_key_rotate / api_key_update (sql/functions.sql) call:
//! minting a key and validating scopes. Not granted to PUBLIC.

use std::collections::HashSet;

use pgrx::prelude::*;

use super::pattern::configured_brand;
use crate::errors;
use crate::gucs;
use crate::key::{format, hash, secret};
use crate::scope::{Scope, MAX_SCOPES, MAX_SCOPE_LEN};
use crate::shmem;

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
    // Under the server-wide cap like every argon2 run: issuing in bulk cannot take more
    // of the machine than verifying can, and a call waiting for a slot can be cancelled.
    let secret_hash = shmem::argon2(|| hash::hash_secret(&secret, settings)).unwrap_or_else(|e| {
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

/// Validate and normalise a scope list: count first, then grammar; with
/// `against_catalog`, each scope must overlap an entry of `api_keys.scope_catalog` when
/// it has any. Raises 22023 naming the offending scope, with the valid ones in the HINT.
/// Duplicates go (first one kept) in one pass.
#[pg_extern(stable, requires = ["schema"])]
fn _check_scopes(scopes: Option<Vec<Option<String>>>, against_catalog: bool) -> Vec<String> {
    let Some(scopes) = scopes else {
        errors::invalid_parameter(
            "scopes must not be NULL",
            Some("Use ARRAY['*'] for full access or '{}' for none.".into()),
        )
    };
    if scopes.len() > MAX_SCOPES {
        errors::invalid_parameter(
            format!("scopes has {} entries; a key holds at most {MAX_SCOPES}", scopes.len()),
            Some(format!("api_keys allows at most {MAX_SCOPES} scopes per key; a wildcard such as \"projects/*:read\" covers many.")),
        )
    }
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
    let mut seen = HashSet::with_capacity(scopes.len());
    let mut normalised: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        check_for_interrupts!();
        let Some(scope) = scope else {
            errors::invalid_parameter("scopes must not contain NULL", None)
        };
        let parsed = Scope::parse(&scope).unwrap_or_else(|e| {
            errors::invalid_parameter(
                format!("scopes: \"{}\" is malformed: {e}", shown(&scope)),
                Some("A scope is \"*\" or \"<resource>:<action>\", e.g. \"runs:read\" or \"projects/42/*:write\".".into()),
            )
        });
        if !catalog_scopes.is_empty() && !catalog_scopes.iter().any(|c| c.overlaps(&parsed)) {
            errors::invalid_parameter(
                format!("scopes: \"{scope}\" is not in the scope catalog"),
                Some(format!("Valid scopes: {}.", listed(&catalog))),
            )
        }
        let text = parsed.to_string();
        if seen.insert(text.clone()) {
            normalised.push(text);
        }
    }
    normalised
}

/// A scope as an error message shows it: cut after MAX_SCOPE_LEN bytes.
fn shown(scope: &str) -> String {
    match scope.char_indices().nth(MAX_SCOPE_LEN) {
        Some((cut, _)) => format!("{}…", &scope[..cut]),
        None => scope.to_owned(),
    }
}

/// The first catalog entries, for a hint of bounded length.
fn listed(catalog: &[String]) -> String {
    const SHOWN: usize = 50;
    let mut text = catalog[..catalog.len().min(SHOWN)].join(", ");
    if catalog.len() > SHOWN {
        text.push_str(&format!(
            " and {} more (api_keys.scope_catalog)",
            catalog.len() - SHOWN
        ));
    }
    text
}
