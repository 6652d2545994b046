//! The background worker (preloaded library only). Every `api_keys.flush_interval` it
//! writes the usage counted in shared memory (`api_keys.usage`, `last_used_at`,
//! `last_used_ip`) in one statement, then marks keys past `expires_at` as expired
//! (`api_keys._expire_keys()`), each in a transaction of its own; at a clean shutdown it
//! flushes once more. It works in the database named by `api_keys.database`
//! and starts only once recovery has finished, so it never tries to write on a standby.
//! If it dies or is terminated (`pg_terminate_backend`), the postmaster starts it again
//! 5 s later.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::core::pending_usage::{PendingUsage, MAX_ENTRIES};
use crate::postgres::gucs;
use crate::postgres::shmem;

/// Called from _PG_init while shared_preload_libraries is being processed.
pub(crate) fn register() {
    BackgroundWorkerBuilder::new("api_keys worker")
        .set_type("api_keys worker")
        .set_library("api_keys")
        .set_function("api_keys_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn database() -> String {
    gucs::DATABASE
        .get()
        .and_then(|d| d.into_string().ok())
        .unwrap_or_else(|| "postgres".into())
}

fn interval() -> Duration {
    Duration::from_secs(gucs::FLUSH_INTERVAL_S.get().max(1) as u64)
}

fn shutdown_requested() -> bool {
    // SAFETY: a flag the signal handler sets; read without tearing as a sig_atomic_t.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn api_keys_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("api_keys worker started in database \"{database}\"");
    let mut worker = Worker::default();
    loop {
        let running = BackgroundWorker::wait_latch(Some(interval()));
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereading postgresql.conf, as a SIGHUP asks, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !running {
            // SIGTERM (clean shutdown, or pg_terminate_backend): one last flush.
            // Postmaster death: just go.
            if shutdown_requested() {
                worker.round();
            }
            break;
        }
        worker.round();
    }
    // Exit code 1, not 0 (which would unregister the worker for good): after a
    // pg_terminate_backend the postmaster starts it again in 5 s; in a shutdown it
    // starts nothing.
    // SAFETY: leaves the process the way PostgreSQL's own workers do.
    unsafe { pg_sys::proc_exit(1) }
}

/// What the worker keeps between rounds.
#[derive(Default)]
struct Worker {
    pending: PendingUsage,
    /// Keys whose expiry failed and was logged: each is logged once.
    reported: HashSet<String>,
}

/// Keys not reported again, at most: beyond it the set starts afresh (a key may then
/// be logged a second time).
const MAX_REPORTED: usize = 10_000;

impl Worker {
    /// One round: flush usage, then expire keys, each in its own transaction. A round
    /// never waits on a user's lock (rows a user has locked wait for a later round), and
    /// an error ends its step, not the worker: counts are forgotten only once their
    /// flush has committed, so what a failed step did not write is tried next round.
    fn round(&mut self) {
        let (usage, last) = shmem::drain_activity();
        let dropped = self.pending.add(usage, last);
        if dropped > 0 {
            log!("api_keys worker: {dropped} usage counts dropped: more than {MAX_ENTRIES} wait to be written");
        }
        match step("usage flush", || self.flush()) {
            Some(Some(left)) => self.pending.retain_keys(&left),
            // No api_keys here: counts of another database's keys have nowhere to go.
            Some(None) => self.pending = PendingUsage::default(),
            None => {}
        }
        step("expiry", || self.expire());
        shmem::count_flush();
    }

    /// The keys it could not write this round (locked by a user); None when the
    /// extension is not installed in this database, so there is nowhere to write.
    fn flush(&self) -> Option<HashSet<[u8; 16]>> {
        if !installed() {
            return None;
        }
        // Triggers off for the flush (superuser-only setting): writing last use is not an
        // edit to guard or audit, and no row's content can then fail it.
        Spi::run(
            "SET LOCAL search_path = pg_catalog, pg_temp; \
             SET LOCAL lock_timeout = '5s'; \
             SET LOCAL session_replication_role = replica",
        )
        .expect("flush settings");
        Some(flush(&self.pending))
    }

    fn expire(&mut self) {
        if !installed() {
            return;
        }
        Spi::run(
            "SET LOCAL search_path = pg_catalog, pg_temp; \
             SET LOCAL lock_timeout = '5s'; \
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
        let failed: Vec<(String, String)> = Spi::connect(|client| {
            client
                .select(
                    // The error as bytes: in a SQL_ASCII or LATIN1 database it need not
                    // be UTF-8.
                    "SELECT s::text, pg_catalog.convert_to(e, 'SQL_ASCII') \
                       FROM api_keys._expire_keys() x, \
                            ROWS FROM (pg_catalog.unnest(x.skipped), pg_catalog.unnest(x.errors)) AS f(s, e)",
                    None,
                    &[],
                )
                .expect("expire keys")
                .map(|row| {
                    let key_id = row.get::<String>(1).expect("a key id").unwrap_or_default();
                    let error = row.get::<Vec<u8>>(2).expect("bytes").unwrap_or_default();
                    (key_id, String::from_utf8_lossy(&error).into_owned())
                })
                .collect()
        });
        if self.reported.len() > MAX_REPORTED {
            self.reported.clear();
        }
        for (key_id, error) in failed {
            if self.reported.insert(key_id.clone()) {
                log!("api_keys worker: key {key_id} could not be marked expired, skipped (it verifies as expired regardless): {error}");
            }
        }
    }
}

fn installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'api_keys')",
    ) == Ok(Some(true))
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
SELECT k.id FROM api_keys.keys k
 WHERE k.id IN (SELECT key_id FROM wanted) AND k.id NOT IN (SELECT id FROM locked)";

fn uuid_text(id: &[u8; 16]) -> String {
    pgrx::datum::Uuid::from_bytes(*id).to_string()
}

fn flush(pending: &PendingUsage) -> HashSet<[u8; 16]> {
    if pending.is_empty() {
        return HashSet::new();
    }
    let (mut ids, mut hours, mut verified, mut rejected) = (vec![], vec![], vec![], vec![]);
    for (key, hour, v, r) in pending.usage() {
        ids.push(uuid_text(&key));
        hours.push(hour);
        verified.push(v);
        rejected.push(r);
    }
    let (mut last_ids, mut last_at, mut last_ip) = (vec![], vec![], vec![]);
    for (key, at, ip) in pending.last_uses() {
        last_ids.push(uuid_text(&key));
        last_at.push(at);
        last_ip.push(ip.map(|ip| ip.to_string()));
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
            .map(|row| {
                let id = row.get::<pgrx::datum::Uuid>(1).expect("a key id");
                *id.expect("not NULL").as_bytes()
            })
            .collect()
    })
}
