//! api_keys: issue, verify, scope, rotate and revoke API keys inside PostgreSQL.
//!
//! Three layers, each using only the ones below it (ARCHITECTURE.md):
//! - `core`: pure logic, no pgrx and no unsafe code (key format, secrets, hashing,
//!   scopes, CIDRs, verdict, memo, argon2 budget, rate-limit windows, request headers,
//!   X-Forwarded-For, transaction scoping);
//! - `postgres`: the glue (settings, errors, datums, key rows, shared memory, the
//!   request context and the caller, the background worker);
//! - `sql_api`: the thin entry points SQL calls.
//!
//! Tables, views, triggers, lifecycle and grants: `sql/`.

use pgrx::prelude::*;

mod core;
mod postgres;
mod sql_api;

::pgrx::pg_module_magic!(name, version);

// The SQL by concern, in the order each builds on the ones before (no forward references):
// tables, views, validation (with _check_scopes from Rust), audit, lifecycle, signing
// (with the signing-key helpers from Rust), issue (with _mint_signed_key), key_ref
// (keys named by prefix), leaked (with _authentic_key), listing, usage (the workers'
// writes), grants. The Rust-declared functions need only the tables.
extension_sql_file!("../sql/tables.sql", name = "tables", bootstrap);
extension_sql_file!("../sql/views.sql", name = "views", requires = ["tables"]);
extension_sql_file!(
    "../sql/validation.sql",
    name = "validation",
    requires = ["views", "check_scopes"]
);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = ["validation"]
);
extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["audit"]
);
extension_sql_file!(
    "../sql/signing.sql",
    name = "signing",
    requires = [
        "lifecycle",
        "signing_keys_changed",
        sql_api::signing::_new_signing_key_id,
        sql_api::signing::_new_signing_secret
    ]
);
extension_sql_file!(
    "../sql/issue.sql",
    name = "issue",
    requires = ["signing", sql_api::issue::_mint_signed_key]
);
extension_sql_file!(
    "../sql/key_ref.sql",
    name = "key_ref",
    requires = ["issue", sql_api::pattern::_prefix_pattern]
);
extension_sql_file!(
    "../sql/leaked.sql",
    name = "leaked",
    requires = ["key_ref", sql_api::leaked::_authentic_key]
);
extension_sql_file!(
    "../sql/listing.sql",
    name = "listing",
    requires = ["leaked"]
);
extension_sql_file!("../sql/usage.sql", name = "usage", requires = ["listing"]);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a flag Postgres sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    postgres::gucs::init(preloading);
    if preloading {
        postgres::shmem::install_hooks();
        postgres::launcher::register();
        postgres::database_ddl::install_hook();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub(crate) mod pg_test {
    pub(crate) fn setup(_options: Vec<&str>) {}

    pub(crate) fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'api_keys'"]
    }
}
