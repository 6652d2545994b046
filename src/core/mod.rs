//! Pure logic: no pgrx, no unsafe code. Everything here is plain Rust with plain
//! `#[test]`s and proptests; the `postgres` layer does the locking and the datums.
#![forbid(unsafe_code)]

pub(crate) mod argon2_budget;
pub(crate) mod cidr;
pub(crate) mod credits;
pub(crate) mod forwarded_for;
pub(crate) mod key;
pub(crate) mod key_state;
pub(crate) mod limit_headers;
pub(crate) mod memo;
pub(crate) mod rate_limit;
pub(crate) mod request_headers;
pub(crate) mod saved_usage;
pub(crate) mod scope;
pub(crate) mod txn_scoped;
pub(crate) mod verdict;
