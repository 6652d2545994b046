//! The launcher (preloaded library only): one background worker, connected to no
//! database, that every half `api_keys.flush_interval` starts a short-lived worker
//! (`worker.rs`) in each database that has the extension, one at a time, and waits for
//! it. It needs no configuration: it lists the databases from `pg_database`, and a
//! database it has not seen yet gets one worker that looks for the extension. A
//! database without it costs a short visit every `RECHECK`; a database's first use of
//! api_keys (CREATE EXTENSION, a verification) tells the launcher at once. Nothing
//! stays connected between rounds, so DROP DATABASE never waits on a worker for long,
//! and the launcher drops a dropped database's shared state.
//!
//! It starts once the server accepts read-only connections, so on a hot standby too
//! (whose workers send their usage to the primary). At a clean shutdown it writes the
//! usage not yet flushed to `SAVED_USAGE` and reads it back at start. If it dies or is
//! terminated, the postmaster starts it again 1 s later.

use std::ffi::CStr;
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::core::saved_usage;
use crate::postgres::gucs;
use crate::postgres::shmem::{self, databases, key_state};

/// Where unflushed usage waits across a clean restart (relative to the data directory,
/// the server's working directory). pg_stat: kept by a restart, and holds only
/// statistics-like files.
const SAVED_USAGE: &str = "pg_stat/api_keys_usage";
/// How often a database known to lack the extension is looked at again (µs).
const RECHECK: i64 = 5 * 60 * 1_000_000;
/// A worker that has not moved on for this long is stopped (µs): one database's
/// trouble never holds up the others for longer.
const STALL: i64 = 30 * 1_000_000;

/// Called from _PG_init while shared_preload_libraries is being processed.
pub(crate) fn register() {
    BackgroundWorkerBuilder::new("api_keys launcher")
        .set_type("api_keys launcher")
        .set_library("api_keys")
        .set_function("api_keys_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(RESTART))
        .load();
}

/// How soon the postmaster starts the launcher again after it exits (pg_terminate_backend,
/// an error): short, as calls counted in between are saved by no one if the server then
/// stops.
const RESTART: Duration = Duration::from_secs(1);

pub(crate) fn interval() -> Duration {
    Duration::from_secs(gucs::FLUSH_INTERVAL_S.get().max(1) as u64)
}

/// The wait between rounds: half a flush interval. A call is then written within half
/// an interval, and another server's written calls are read within the next half, so
/// per-hour limits count every server's calls within one flush interval (plus a
/// standby's replay lag).
fn between_rounds() -> Duration {
    interval() / 2
}

pub(crate) fn shutdown_requested() -> bool {
    // SAFETY: a flag the signal handler sets; read without tearing as a sig_atomic_t.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn api_keys_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: pg_database is a shared catalog, and a launcher connected to one
    // database would stand in the way of dropping it.
    BackgroundWorker::connect_worker_to_spi(None, None);
    restore_saved_usage();
    log!("api_keys launcher started");
    warn_if_parallel_queries_can_take_every_slot();
    let mut said_no_conninfo = false;
    loop {
        say_if_a_standby_sends_nothing(&mut said_no_conninfo);
        serve_databases();
        // Both asked before sleeping: a SIGTERM or a SIGHUP during a round set the latch,
        // which a wait for the worker then reset (and the sleep must use the new
        // flush_interval).
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereading postgresql.conf, as a SIGHUP asks, outside a transaction.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if shutdown_requested() || !BackgroundWorker::wait_latch(Some(between_rounds())) {
            break;
        }
    }
    if shutdown_requested() {
        // Also after pg_terminate_backend: shared memory keeps what is saved, and the
        // next launcher of this server run drops the file (`restore_saved_usage`).
        save_usage();
    }
    // Exit code 1, not 0 (which would unregister it for good): after a
    // pg_terminate_backend the postmaster starts it again in 1 s (RESTART); in a
    // shutdown it starts nothing.
    // SAFETY: leaves the process the way PostgreSQL's own workers do.
    unsafe { pg_sys::proc_exit(1) }
}

/// On a hot standby without `api_keys.primary_conninfo`, say once (until it is set) that
/// its usage stays here.
fn say_if_a_standby_sends_nothing(said: &mut bool) {
    // SAFETY: reads the recovery state from shared memory.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let missing = gucs::PRIMARY_CONNINFO.get().is_none_or(|c| c.is_empty());
    if standby && missing && !*said {
        log!(
            "api_keys launcher: api_keys.primary_conninfo is not set: usage counted on this standby stays in its memory (two hours at most) and per-hour limits do not count it on other servers"
        );
    }
    *said = standby && missing;
}

/// Parallel queries draw on the same background worker slots as the launcher's
/// workers: when they may take all of them, a busy server (or any role running parallel
/// queries) leaves no slot for a round, and usage is written late. Say so at start.
fn warn_if_parallel_queries_can_take_every_slot() {
    // SAFETY: reads two settings of this process.
    let (slots, parallel) = unsafe { (pg_sys::max_worker_processes, pg_sys::max_parallel_workers) };
    // This launcher, its worker, the logical replication launcher.
    if slots < parallel + 3 {
        pgrx::warning!(
            "api_keys: max_worker_processes ({slots}) leaves parallel queries (max_parallel_workers = {parallel}) room to take every background worker slot, and then usage is written late; set max_worker_processes to at least {}",
            parallel + 3
        );
    }
}

/// A database of `pg_database`.
struct Database {
    oid: pg_sys::Oid,
    name: String,
    /// It accepts connections, is not a template (a connection to one would make
    /// CREATE DATABASE fail), and is not half-dropped: a worker may go there.
    servable: bool,
}

/// Every database of `pg_database`.
fn all_databases() -> Vec<Database> {
    BackgroundWorker::transaction(|| {
        let mut found = Vec::new();
        // SAFETY: a catalog scan in a transaction, as the autovacuum launcher lists
        // databases; every tuple is read before the next call, the scan and relation
        // are closed before commit.
        unsafe {
            let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let data = (*tuple).t_data;
                let form = data
                    .cast::<u8>()
                    .add(usize::from((*data).t_hoff))
                    .cast::<pg_sys::FormData_pg_database>();
                found.push(Database {
                    oid: (*form).oid,
                    name: CStr::from_ptr((*form).datname.data.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                    // -2: DATCONNLIMIT_INVALID_DB, a DROP DATABASE that did not finish.
                    servable: (*form).datallowconn
                        && !(*form).datistemplate
                        && (*form).datconnlimit != -2,
                });
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
        }
        found
    })
}

/// One round: drop the state of databases that are gone, then run a worker in each
/// database that has (or may have) the extension.
fn serve_databases() {
    // The directory first, the catalog after: a database a backend put in the directory
    // was committed before, so the catalog read later shows it unless it was dropped.
    // Only a database gone from the catalog is forgotten (one that merely stopped
    // accepting connections may still have sessions using its state).
    let known = databases::list();
    let present = all_databases();
    for db in &known {
        if !present.iter().any(|p| p.oid == db.oid()) {
            databases::forget(db.oid());
        }
    }
    BACKOFF.with_borrow_mut(|b| b.retain(|oid, _| present.iter().any(|p| p.oid == *oid)));
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let extension = |oid| {
        known
            .iter()
            .find(|k| k.oid() == oid)
            .map(|e| (e.extension(), e.checked_at()))
    };
    // Databases with the extension first, then the ones to look at.
    let mut due: Vec<(&Database, bool)> = present
        .iter()
        .filter(|d| d.servable)
        .filter(|d| BACKOFF.with_borrow(|b| b.get(&d.oid).is_none_or(|f| now >= f.next_try)))
        .filter_map(|d| match extension(d.oid) {
            Some((databases::Extension::Present, _)) => Some((d, true)),
            Some((databases::Extension::Absent, checked_at)) if now - checked_at < RECHECK => None,
            _ => Some((d, false)),
        })
        .collect();
    due.sort_by_key(|(_, present)| !present);
    for (db, _) in due {
        if shutdown_requested() {
            return;
        }
        let connected = run_worker(db);
        BACKOFF.with_borrow_mut(|b| {
            if connected {
                b.remove(&db.oid);
            } else {
                // SAFETY: reads the clock.
                let now = unsafe { pg_sys::GetCurrentTimestamp() };
                let f = b.entry(db.oid).or_insert(Failures {
                    count: 0,
                    next_try: 0,
                });
                f.count = (f.count + 1).min(16);
                let wait = (interval().as_micros() as i64)
                    .saturating_mul(1 << f.count.min(10))
                    .min(RECHECK);
                f.next_try = now + wait;
            }
        });
    }
}

/// A database whose worker could not connect (its lock held, its worker slot taken):
/// tried again after a wait that doubles with each failure, up to RECHECK, so that
/// such databases cost the others almost nothing.
struct Failures {
    count: u32,
    next_try: i64,
}

thread_local! {
    static BACKOFF: std::cell::RefCell<std::collections::HashMap<pg_sys::Oid, Failures>> =
        Default::default();
}

/// Start the worker of `db` and wait for it to finish; false when it never got to
/// work there (no slot, or it could not connect).
fn run_worker(db: &Database) -> bool {
    let started = BackgroundWorkerBuilder::new(&format!("api_keys worker {}", db.name))
        .set_type("api_keys worker")
        .set_library("api_keys")
        .set_function("api_keys_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(u32::from(db.oid))))
        // SAFETY: this process's pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    thread_local! {
        /// Saying so once per shortage, not every round.
        static SHORT_OF_SLOTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    // SAFETY: reads the clock.
    let before = unsafe { pg_sys::GetCurrentTimestamp() };
    match started {
        Ok(worker) => {
            SHORT_OF_SLOTS.set(false);
            wait_for(worker, db);
            // It notes progress once connected.
            databases::progress_at(db.oid).is_some_and(|at| at >= before)
        }
        Err(_) => {
            if !SHORT_OF_SLOTS.replace(true) {
                log!(
                    "api_keys launcher: no background worker slot for database \"{}\" (max_worker_processes is in use); databases are skipped until one is free",
                    db.name
                );
            }
            false
        }
    }
}

/// Wait for `worker` to finish its round (also when a shutdown is asked for: it saves
/// nothing until the worker is gone), stopping it once it has not moved on for STALL.
fn wait_for(worker: DynamicBackgroundWorker, db: &Database) {
    use pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted;
    // SAFETY: reads the clock.
    let now = || unsafe { pg_sys::GetCurrentTimestamp() };
    let started = now();
    loop {
        match worker.pid() {
            Ok(_) | Err(NotYetStarted) => {}
            // Stopped, or the postmaster died: done.
            Err(_) => return,
        }
        BackgroundWorker::wait_latch(Some(Duration::from_millis(100)));
        let progress = databases::progress_at(db.oid).unwrap_or(0).max(started);
        if now() - progress > STALL {
            log!(
                "api_keys launcher: the worker of database \"{}\" made no progress for {} s, stopped; tried again next round",
                db.name,
                STALL / 1_000_000
            );
            let _ = worker.terminate().wait_for_shutdown();
            return;
        }
    }
}

/// This server's identity in its saved usage: its system identifier, timeline, whether
/// it is a standby, and where it runs. A copy of the data directory that is promoted
/// later (a new timeline), started as a standby of its original or elsewhere, or another
/// cluster ignores the file.
fn server_identity() -> saved_usage::Origin {
    // SAFETY: these read the control file's values and the recovery state kept in
    // shared memory; on a standby the timeline is the one being replayed.
    unsafe {
        let in_recovery = pg_sys::RecoveryInProgress();
        saved_usage::Origin {
            system_identifier: pg_sys::GetSystemIdentifier(),
            timeline: if in_recovery {
                let mut timeline = 0;
                pg_sys::GetXLogReplayRecPtr(&mut timeline);
                timeline
            } else {
                pg_sys::GetWALInsertionTimeLine()
            },
            in_recovery,
            place: place(),
        }
    }
}

/// A digest of this server's host name, data directory and port.
fn place() -> [u8; 8] {
    use sha2::Digest;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // SAFETY: the data directory's path and the port, set at postmaster start.
    let (dir, port) = unsafe {
        (
            CStr::from_ptr(pg_sys::DataDir).to_bytes(),
            pg_sys::PostPortNumber,
        )
    };
    let digest = sha2::Sha256::new()
        .chain_update(host.trim())
        .chain_update([0])
        .chain_update(dir)
        .chain_update([0])
        .chain_update(port.to_le_bytes())
        .finalize();
    digest[..8].try_into().expect("8 bytes")
}

/// When the launcher stops (a clean shutdown, or pg_terminate_backend): every key's
/// unflushed usage to `SAVED_USAGE`, written and synced. Shared memory keeps it too: a
/// launcher started while it still exists (only the launcher stopped) finds it marked
/// as saved there and drops the file; a server started afresh takes the file.
fn save_usage() {
    let mut records = Vec::new();
    for db in databases::list() {
        records.extend(
            key_state::saved(db.oid())
                .into_iter()
                .map(|(key, u)| (u32::from(db.oid()), key, u)),
        );
    }
    let Some(source) = shmem::usage_source() else {
        return;
    };
    if records.is_empty() {
        return;
    }
    let tmp = format!("{SAVED_USAGE}.tmp");
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&saved_usage::encode(server_identity(), source, &records))?;
        f.sync_all()?;
        std::fs::rename(&tmp, SAVED_USAGE)?;
        std::fs::File::open("pg_stat")?.sync_all()
    })();
    match written {
        Ok(()) => {
            shmem::note_usage_saved(true);
            log!(
                "api_keys launcher: usage of {} keys saved for the next start",
                records.len()
            );
        }
        Err(e) => log!("api_keys launcher: could not save unflushed usage: {e}"),
    }
}

/// At start: add the usage a launcher saved, once (the file goes first), unless shared
/// memory still holds it.
fn restore_saved_usage() {
    let bytes = match std::fs::read(SAVED_USAGE) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log!("api_keys launcher: could not read saved usage: {e}");
            return;
        }
    };
    // Removed first: whatever happens next, it is never added twice.
    if let Err(e) = std::fs::remove_file(SAVED_USAGE) {
        log!("api_keys launcher: saved usage ignored, it could not be removed: {e}");
        return;
    }
    if shmem::note_usage_saved(false) {
        // Saved by a launcher of this very server run: shared memory still has it all.
        return;
    }
    match saved_usage::decode(&bytes) {
        Ok((origin, _, _)) if origin != server_identity() => log!(
            "api_keys launcher: saved usage ignored: it was saved by another server, timeline or role"
        ),
        Ok((_, source, records)) => {
            // The totals go on under the source they were counted for.
            shmem::restore_usage_source(source);
            let mut by_db: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
            for (db, key, u) in records {
                by_db.entry(db).or_default().push((key, u));
            }
            for (db, saved) in &by_db {
                key_state::restore(pg_sys::Oid::from(*db), saved);
            }
        }
        Err(e) => log!("api_keys launcher: saved usage ignored: {e}"),
    }
}
