use pgrx::prelude::*;

use crate::postgres::shmem;

/// Counters since server start (per session without shared_preload_libraries):
/// verifications by reason, memo hits and misses, argon2 computations and throttled
/// attempts, keys tracked in shared memory; `shared_memory` is 1 when they are shared
/// by the whole server. Then, per database the worker serves, `flushed_at:<database>`
/// (Unix time of its last flush, 0 before the first) and `flushed_keys:<database>`
/// (keys that flush wrote).
#[pg_extern(volatile, requires = ["tables"])]
fn stats() -> TableIterator<'static, (name!(counter, String), name!(value, i64))> {
    let mut rows = shmem::snapshot();
    rows.extend(shmem::databases::flush_rows());
    TableIterator::new(rows)
}
