//! The background worker (preloaded library only). Every `api_keys.flush_interval` it
//! writes the usage counted in shared memory (`api_keys.usage`, `last_used_at`,
//! `last_used_ip`) in one statement and runs `api_keys.expire_due()`; at a clean
//! shutdown it flushes once more. It works in the database named by `api_keys.database`
//! and starts only once recovery has finished, so it never tries to write on a standby.
//! If it dies, the postmaster starts it again.

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::gucs;
use crate::key_activity::{HourUsage, LastUse};
use crate::shmem;

/// Called from _PG_init while shared_preload_libraries is being processed.
pub fn register() {
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
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn api_keys_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("api_keys worker started in database \"{database}\"");
    loop {
        let running = BackgroundWorker::wait_latch(Some(interval()));
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !running {
            // SIGTERM (clean shutdown): one last flush. Postmaster death: just go.
            if shutdown_requested() {
                run_once();
            }
            break;
        }
        run_once();
    }
}

/// One round: flush usage, expire keys. Usage is taken out of shared memory first, so
/// a failed round loses at most what it took (and the worker restarts).
fn run_once() {
    let (usage, last) = shmem::drain_activity();
    BackgroundWorker::transaction(|| {
        let installed = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'api_keys')",
        );
        if installed != Ok(Some(true)) {
            return; // nothing to maintain in this database (yet)
        }
        Spi::run(
            "SET LOCAL search_path = pg_catalog, pg_temp; \
             SET LOCAL api_keys.actor = 'api_keys worker'",
        )
        .expect("worker settings");
        flush(&usage, &last);
        Spi::get_one::<i32>("SELECT api_keys.expire_due()").expect("expire_due");
    });
    shmem::count_flush();
}

const FLUSH: &str = "\
WITH batch AS (
    SELECT b.key_id::uuid AS key_id,
           pg_catalog.to_timestamp(946684800 + b.hour_us / 1000000.0) AS hour,
           b.verified, b.rejected
      FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::int8[]),
                      pg_catalog.unnest($3::int8[]), pg_catalog.unnest($4::int8[]))
           AS b(key_id, hour_us, verified, rejected)
), counted AS (
    INSERT INTO api_keys.usage AS u (key_id, hour, verified, rejected)
    SELECT b.key_id, b.hour, b.verified, b.rejected
      FROM batch b
     WHERE EXISTS (SELECT FROM api_keys.keys k WHERE k.id OPERATOR(pg_catalog.=) b.key_id)
    ON CONFLICT (key_id, hour) DO UPDATE
       SET verified = u.verified OPERATOR(pg_catalog.+) EXCLUDED.verified,
           rejected = u.rejected OPERATOR(pg_catalog.+) EXCLUDED.rejected
)
UPDATE api_keys.keys k
   SET last_used_at = l.at, last_used_ip = l.ip
  FROM (SELECT l.key_id::uuid AS key_id,
               pg_catalog.to_timestamp(946684800 + l.at_us / 1000000.0) AS at,
               l.ip::inet AS ip
          FROM ROWS FROM (pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::int8[]),
                          pg_catalog.unnest($7::text[])) AS l(key_id, at_us, ip)) l
 WHERE k.id OPERATOR(pg_catalog.=) l.key_id
   AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) l.at)";

fn uuid_text(id: &[u8; 16]) -> String {
    pgrx::datum::Uuid::from_bytes(*id).to_string()
}

fn flush(usage: &[HourUsage], last: &[LastUse]) {
    if usage.is_empty() && last.is_empty() {
        return;
    }
    let ids: Vec<String> = usage.iter().map(|u| uuid_text(&u.key_id)).collect();
    let hours: Vec<i64> = usage.iter().map(|u| u.hour_start).collect();
    let verified: Vec<i64> = usage.iter().map(|u| i64::from(u.verified)).collect();
    let rejected: Vec<i64> = usage.iter().map(|u| i64::from(u.rejected)).collect();
    let last_ids: Vec<String> = last.iter().map(|l| uuid_text(&l.key_id)).collect();
    let last_at: Vec<i64> = last.iter().map(|l| l.at).collect();
    let last_ip: Vec<Option<String>> = last.iter().map(|l| l.ip.map(|ip| ip.to_string())).collect();
    Spi::run_with_args(
        FLUSH,
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
    .expect("flush usage");
}
