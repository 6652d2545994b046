//! The glue between the pure `core` and PostgreSQL: settings, errors, datums, key rows,
//! shared memory, the request context and the caller, the background worker.

pub(crate) mod caller;
pub(crate) mod database_ddl;
pub(crate) mod datum;
pub(crate) mod errors;
pub(crate) mod gucs;
pub(crate) mod key_row;
pub(crate) mod launcher;
pub(crate) mod primary_link;
pub(crate) mod request_context;
pub(crate) mod request_info;
pub(crate) mod scope_check;
pub(crate) mod shmem;
pub(crate) mod signing_keys;
pub(crate) mod txn_callbacks;
pub(crate) mod verification;
pub(crate) mod worker;
