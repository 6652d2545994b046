//! api_keys: issue, verify, scope, rotate and revoke API keys inside PostgreSQL.
//!
//! Pure rooms (no pgrx): `key`, `scope`, `cidr`, `verdict`, `memo`, `budget`,
//! `key_activity`, `unwritten`, `request_headers`, `forwarded_for`, `txn_scoped`.
//! Postgres-facing rooms: `gucs`, `errors`, `shmem`, `key_row`, `varlena`,
//! `verification`, `context`, `caller`, `txn_callbacks`, `worker`, `api`.
//! Tables, views, triggers, lifecycle and grants: `sql/`.

use pgrx::prelude::*;

mod api;
pub mod budget;
mod caller;
pub mod cidr;
mod context;
mod errors;
pub mod forwarded_for;
mod gucs;
pub mod key;
pub mod key_activity;
mod key_row;
pub mod memo;
pub mod request_headers;
pub mod scope;
mod shmem;
mod txn_callbacks;
pub mod txn_scoped;
pub mod unwritten;
mod varlena;
pub mod verdict;
mod verification;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/functions.sql",
    name = "functions",
    requires = ["schema"]
);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        shmem::install_hooks();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'api_keys'"]
    }
}
