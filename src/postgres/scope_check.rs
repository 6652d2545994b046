//! Checking a key's scopes: the grammar (`core::scope`) and, when the scope catalog has
//! entries, that each scope overlaps one of them (read through SPI).

use std::collections::HashSet;

use pgrx::prelude::*;

use crate::core::scope::Scope;
use crate::postgres::errors;

/// Grammar, then, with `against_catalog`, each scope must overlap an entry of
/// `api_keys.scope_catalog` when it has any. Raises 22023 naming the offending scope,
/// with the valid ones in the HINT. Duplicates go (first one kept) in one pass.
pub(crate) fn check_scopes(scopes: Vec<Option<String>>, against_catalog: bool) -> Vec<String> {
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
                format!("scopes: \"{scope}\" is malformed: {e}"),
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
