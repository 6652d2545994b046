use pgrx::prelude::*;

use crate::postgres::shmem;

/// Counters since server start (per session without shared_preload_libraries):
/// verifications by reason, memo hits and misses, argon2 computations and throttled
/// attempts; `shared_memory` is 1 when they are shared by the whole server.
#[pg_extern(volatile, requires = ["tables"])]
fn stats() -> TableIterator<'static, (name!(counter, String), name!(value, i64))> {
    TableIterator::new(shmem::snapshot())
}
