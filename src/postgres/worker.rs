//! The worker of one database: started by the launcher (`launcher.rs`) every
//! `api_keys.flush_interval`, it writes the usage counted in shared memory
//! (`api_keys.usage`, `last_used_at`, `last_used_ip`) in batches, drops the state of
//! idle keys, then marks keys past `expires_at` as expired (`api_keys._expire_keys()`),
//! each batch and step in a transaction of its own, and exits. Usage is copied, written,
//! and only taken out of shared memory once written (`core::rate_limit`): a worker
//! stopped at any point loses nothing and writes nothing twice. In a database without
//! the extension it drops what shared memory held for it and exits.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::core::rate_limit::Unflushed;
use crate::postgres::shmem::{self, databases, key_state};

// PostgreSQL's `die`, by address (pgrx's `pg_sys::die` is a Rust wrapper, which a
// signal handler must not be).
unsafe extern "C-unwind" {
    fn die(signal: std::ffi::c_int);
}

/// Keys written per transaction: bounds one statement's arrays and one transaction's
/// locks, whatever the number of keys in use.
const BATCH: usize = 10_000;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn api_keys_worker_main(arg: pg_sys::Datum) {
    // SIGTERM (a shutdown, pg_terminate_backend, DROP DATABASE … WITH (FORCE), the
    // launcher stopping a stalled round) ends the worker at its next interrupt check,
    // as in any backend, lock waits included: usage leaves shared memory only once
    // written, so stopping anywhere loses nothing.
    // SAFETY: `die` is PostgreSQL's SIGTERM handler for backends; signals were blocked
    // until now, as for every background worker.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let oid = pg_sys::Oid::from(arg.value() as u32);
    // One round at a time per database: a worker left running by a launcher that went
    // away finishes its round alone.
    if !databases::claim_round(oid) {
        // SAFETY: a clean exit; the launcher starts the next one.
        unsafe { pg_sys::proc_exit(0) }
    }
    // SAFETY: registered once; runs at exit (an error's too), before shared memory
    // is detached.
    unsafe { pg_sys::before_shmem_exit(Some(release_round), arg) };
    // The worker is a superuser in a database whose owner may be anyone: the settings
    // its owner gave it (ALTER DATABASE … SET) must not reach the worker's statements.
    // Set here with a source that outranks them. A connection blocked on the database's
    // lock (a user's open ALTER DATABASE … RENAME) gives up after 200 ms.
    for (name, value) in [
        (c"search_path", c"pg_catalog, pg_temp"),
        (c"lock_timeout", c"200ms"),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
    ] {
        // SAFETY: sets a setting of this process, before it connects.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            );
        }
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None);
    // SAFETY: reads the clock.
    let looked_at = unsafe { pg_sys::GetCurrentTimestamp() };
    databases::note_progress(oid);
    match step("extension check", installed) {
        Some(true) => {}
        Some(false) => {
            databases::note_round(oid, false, looked_at, None);
            // Nothing of this database's keys can be written anywhere: let it go.
            key_state::drop_idle(oid, true);
            // SAFETY: as above.
            unsafe { pg_sys::proc_exit(0) }
        }
        // Could not tell (logged): the next round looks again; nothing is dropped.
        None => {
            // SAFETY: as above.
            unsafe { pg_sys::proc_exit(0) }
        }
    }
    let flushed = flush_usage(oid);
    key_state::drop_idle(oid, false);
    pg_sys::check_for_interrupts!();
    step("expiry", expire);
    databases::note_round(oid, true, looked_at, flushed);
    shmem::count_flush();
    // SAFETY: as above.
    unsafe { pg_sys::proc_exit(0) }
}

/// # Safety
/// Called by Postgres at process exit, with the database oid as `arg`.
#[pg_guard]
unsafe extern "C-unwind" fn release_round(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    databases::release_round(pg_sys::Oid::from(arg.value() as u32));
}

/// Write every key's unflushed usage, a batch per transaction; returns the keys written,
/// or None when a batch failed (logged; its keys are left whole for the next round). A
/// key whose row a user has locked is left for a later round (SKIP LOCKED: the worker
/// never waits on a user's row lock).
fn flush_usage(oid: pg_sys::Oid) -> Option<i64> {
    let copies = key_state::unflushed(oid);
    let (mut written, mut failed) = (0, false);
    for batch in copies.chunks(BATCH) {
        pg_sys::check_for_interrupts!();
        let Some(not_written) = step("usage flush", || {
            // Triggers off for the flush (superuser-only setting): writing last use is
            // not an edit to guard or audit, and no row's content can then fail it.
            Spi::run(
                "SET LOCAL search_path = pg_catalog, pg_temp; \
                 SET LOCAL lock_timeout = '5s'; \
                 SET LOCAL statement_timeout = '20s'; \
                 SET LOCAL session_replication_role = replica",
            )
            .expect("flush settings");
            flush(batch)
        }) else {
            failed = true;
            continue;
        };
        let done: Vec<_> = batch
            .iter()
            .filter(|(key, _)| !not_written.locked.contains(key))
            .cloned()
            .collect();
        key_state::forget_flushed(oid, &done);
        // No row: a key deleted, or one never committed (issued and verified in a
        // transaction that rolled back). Its state goes now, not an hour later.
        key_state::forget_keys(oid, &not_written.gone);
        written += (done.len() - not_written.gone.len()) as i64;
        databases::note_progress(oid);
    }
    (!failed).then_some(written)
}

fn expire() {
    Spi::run(
        "SET LOCAL search_path = pg_catalog, pg_temp; \
         SET LOCAL lock_timeout = '5s'; \
         SET LOCAL statement_timeout = '20s'; \
         SET LOCAL api_keys.actor = 'api_keys worker'",
    )
    .expect("expiry settings");
    // Before 0.4.0's SQL (until ALTER EXTENSION api_keys UPDATE): its expire_due().
    let current = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('api_keys._expire_keys()') IS NOT NULL",
    );
    if current != Ok(Some(true)) {
        Spi::get_one::<i32>("SELECT api_keys.expire_due()").expect("expire_due");
        return;
    }
    let failed: Vec<([u8; 16], String)> = Spi::connect(|client| {
        client
            .select(
                // The error as bytes: in a SQL_ASCII or LATIN1 database it need not be
                // UTF-8.
                "SELECT s, pg_catalog.convert_to(e, 'SQL_ASCII') \
                   FROM api_keys._expire_keys() x, \
                        ROWS FROM (pg_catalog.unnest(x.skipped), pg_catalog.unnest(x.errors)) AS f(s, e)",
                None,
                &[],
            )
            .expect("expire keys")
            .filter_map(|row| {
                let key_id = row.get::<pgrx::datum::Uuid>(1).ok().flatten()?;
                let error = row.get::<Vec<u8>>(2).expect("bytes").unwrap_or_default();
                Some((*key_id.as_bytes(), String::from_utf8_lossy(&error).into_owned()))
            })
            .collect()
    });
    for (key_id, error) in failed {
        // Logged once per key while its state lives (an hour after its last use).
        if key_state::first_expiry_failure(&key_id) {
            log!(
                "api_keys worker: key {} could not be marked expired, skipped (it verifies as expired regardless): {error}",
                uuid_text(&key_id)
            );
        }
    }
}

/// Does this database have the extension? A catalog lookup, no SQL: nothing a user
/// defined (an operator, a search_path) can take part.
fn installed() -> bool {
    // SAFETY: a syscache-backed catalog lookup, in the step's transaction.
    unsafe { pg_sys::get_extension_oid(c"api_keys".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Run `work` in a transaction of its own; on an error, roll it back, log it and answer
/// None.
fn step<R>(what: &str, work: impl FnOnce() -> R) -> Option<R> {
    // The worker's own state is consistent at every point an error can stop `work`.
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| {
        Ok(BackgroundWorker::transaction(AssertUnwindSafe(work)))
    }))
    .catch_others(|e| Err(message(&e)))
    .execute();
    outcome
        .map_err(|message| {
            // SAFETY: the failed step's transaction is still open; end it as Postgres'
            // own error recovery does before the next one starts.
            unsafe { pg_sys::AbortCurrentTransaction() };
            log!("api_keys worker: {what} failed, tried again next round: {message}");
        })
        .ok()
}

fn message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_owned(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
    }
}

/// Write usage and last use of every key whose row no user has locked, in one
/// statement that waits for no row lock (SKIP LOCKED); counts of keys that no longer
/// exist go. Returns the keys it left for a later round.
const FLUSH: &str = "\
WITH batch AS (
    SELECT b.key_id::uuid AS key_id,
           pg_catalog.to_timestamp(946684800 + b.hour_us / 1000000.0) AS hour,
           b.verified, b.rejected
      FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::int8[]),
                      pg_catalog.unnest($3::int8[]), pg_catalog.unnest($4::int8[]))
           AS b(key_id, hour_us, verified, rejected)
), used AS (
    SELECT l.key_id::uuid AS key_id,
           pg_catalog.to_timestamp(946684800 + l.at_us / 1000000.0) AS at,
           l.ip::inet AS ip
      FROM ROWS FROM (pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::int8[]),
                      pg_catalog.unnest($7::text[])) AS l(key_id, at_us, ip)
), wanted AS (
    SELECT key_id FROM batch UNION SELECT key_id FROM used
), locked AS (
    SELECT k.id FROM api_keys.keys k
     WHERE k.id IN (SELECT key_id FROM wanted)
       FOR NO KEY UPDATE OF k SKIP LOCKED
), counted AS (
    INSERT INTO api_keys.usage AS u (key_id, hour, verified, rejected)
    SELECT b.key_id, b.hour, b.verified, b.rejected
      FROM batch b
     WHERE b.key_id IN (SELECT id FROM locked)
    ON CONFLICT (key_id, hour) DO UPDATE
       SET verified = u.verified OPERATOR(pg_catalog.+) EXCLUDED.verified,
           rejected = u.rejected OPERATOR(pg_catalog.+) EXCLUDED.rejected
), touched AS (
    UPDATE api_keys.keys k
       SET last_used_at = l.at, last_used_ip = l.ip
      FROM used l
     WHERE k.id OPERATOR(pg_catalog.=) l.key_id
       AND k.id IN (SELECT id FROM locked)
       AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) l.at)
)
SELECT w.key_id, k.id IS NULL
  FROM wanted w LEFT JOIN api_keys.keys k ON k.id OPERATOR(pg_catalog.=) w.key_id
 WHERE k.id IS NULL OR k.id NOT IN (SELECT id FROM locked)";

fn uuid_text(id: &[u8; 16]) -> String {
    pgrx::datum::Uuid::from_bytes(*id).to_string()
}

/// What a flush did not write: keys whose row a user has locked (for a later round),
/// and keys with no row (gone, or never committed: their state is dropped).
#[derive(Default)]
struct NotWritten {
    locked: HashSet<[u8; 16]>,
    gone: Vec<[u8; 16]>,
}

/// Write `batch`.
fn flush(batch: &[([u8; 16], Unflushed)]) -> NotWritten {
    let (mut ids, mut hours, mut verified, mut rejected) = (vec![], vec![], vec![], vec![]);
    let (mut last_ids, mut last_at, mut last_ip) = (vec![], vec![], vec![]);
    for (key, u) in batch {
        for h in &u.usage {
            ids.push(uuid_text(key));
            hours.push(h.hour_start);
            verified.push(i64::from(h.verified));
            rejected.push(i64::from(h.rejected));
        }
        if let Some(l) = u.last {
            last_ids.push(uuid_text(key));
            last_at.push(l.at);
            last_ip.push(l.ip.map(|ip| ip.to_string()));
        }
    }
    Spi::connect(|client| {
        client
            .select(
                FLUSH,
                None,
                &[
                    ids.into(),
                    hours.into(),
                    verified.into(),
                    rejected.into(),
                    last_ids.into(),
                    last_at.into(),
                    last_ip.into(),
                ],
            )
            .expect("flush usage")
            .fold(NotWritten::default(), |mut not, row| {
                let id = row.get::<pgrx::datum::Uuid>(1).expect("a key id");
                let id = *id.expect("not NULL").as_bytes();
                if row.get::<bool>(2).expect("a flag") == Some(true) {
                    not.gone.push(id);
                } else {
                    not.locked.insert(id);
                }
                not
            })
    })
}
