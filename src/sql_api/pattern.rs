use pgrx::prelude::*;

use crate::{core::key::format, postgres::errors, postgres::gucs};

/// A regex that matches every key this installation issues, under any brand, for
/// secret scanners.
#[pg_extern(immutable, parallel_safe, requires = ["tables"])]
fn key_pattern() -> String {
    format::key_pattern()
}

/// The prefix part of `key_pattern()`, for telling a prefix from an id (sql/key_ref.sql).
#[pg_extern(immutable, parallel_safe, requires = ["tables"])]
fn _prefix_pattern() -> String {
    format::prefix_pattern()
}

/// The brand from `api_keys.brand`, or 22023 when the setting holds an invalid brand.
pub(super) fn configured_brand() -> String {
    gucs::brand().unwrap_or_else(|| {
        errors::invalid_parameter(
            "api_keys.brand must be 2 to 8 lowercase letters or digits",
            Some("ALTER SYSTEM SET api_keys.brand = 'ak'; SELECT pg_reload_conf();".into()),
        )
    })
}
