//! The Rust half of `api_key_report_leaked` (sql/leaked.sql): which presented strings
//! are keys this installation issued. Granted to nobody; the SQL half revokes them.

use pgrx::prelude::*;

use crate::postgres::verification;

/// The id of the key `key` is, when it is one issued here and not revoked; else
/// NULL. Raw bytes (`textsend`), so that a string that is not UTF-8 is no key rather
/// than an error. Costs at most one argon2 computation, for an unsigned key the memo
/// has not seen.
#[pg_extern(volatile, parallel_unsafe, requires = ["tables"])]
fn _authentic_key(key: &[u8]) -> Option<pgrx::datum::Uuid> {
    pg_sys::check_for_interrupts!();
    verification::authentic(key).map(|row| pgrx::datum::Uuid::from_bytes(row.key_id()))
}
