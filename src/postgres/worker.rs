//! The worker of one database: started by the launcher (`launcher.rs`) every
//! `api_keys.flush_interval`, it writes the usage counted in shared memory
//! (`api_keys.usage`, `last_used_at`, `last_used_ip`) in batches, reads the counts other
//! servers wrote since its last look (for per-hour limits), drops the state of idle
//! keys, then marks keys past `expires_at` as expired (`api_keys._expire_keys()`), each
//! batch and step in a transaction of its own, and exits. On a hot standby it sends the
//! usage to the primary instead (`api_keys.primary_conninfo`) and expires nothing.
//! Usage is written as this server's totals and noted as written only once committed
//! (`core::rate_limit`): a worker stopped at any point loses nothing, and a total
//! written twice counts once. In a database without the extension it drops what shared
//! memory held for it and exits.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::panic::AssertUnwindSafe;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::core::key_state::owner_entry_id;
use crate::core::rate_limit::Unflushed;
use crate::postgres::shmem::{self, databases, key_state};
use crate::postgres::{gucs, primary_link};

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
    let sql = match step("extension check", installed) {
        Some(Some(sql)) => sql,
        Some(None) => {
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
    };
    let Some(source) = shmem::usage_source() else {
        // SAFETY: as above (no shared memory: nothing to write).
        unsafe { pg_sys::proc_exit(0) }
    };
    // SAFETY: reads the recovery state from shared memory.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let mode = match (standby, sql.current) {
        (true, _) => databases::Mode::Sending,
        (false, true) => databases::Mode::Totals,
        (false, false) => databases::Mode::Adding,
    };
    if let Some(change) = databases::note_mode(oid, mode) {
        key_state::after_mode_change(oid, change);
    }
    let flushed = if standby {
        send_usage(oid, &sql, source)
    } else {
        flush_usage(oid, &sql, source)
    };
    if sql.current {
        pg_sys::check_for_interrupts!();
        step("reading other servers' counts", || read_others(oid, source));
    }
    key_state::drop_idle(oid, false);
    pg_sys::check_for_interrupts!();
    if !standby {
        step("expiry", expire);
    }
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

/// Write every key's unflushed usage here (a primary), a batch per transaction; returns
/// the keys written, or None when a batch failed (logged; its keys are left for the next
/// round). A key whose row a user has locked is left for a later round (SKIP LOCKED: the
/// worker never waits on a user's row lock).
fn flush_usage(oid: pg_sys::Oid, sql: &Sql, source: [u8; 16]) -> Option<i64> {
    write_batches(oid, key_state::unflushed(oid), |batch| {
        step("usage flush", || {
            Spi::run(
                "SET LOCAL search_path = pg_catalog, pg_temp; \
                 SET LOCAL lock_timeout = '5s'; \
                 SET LOCAL statement_timeout = '20s'",
            )
            .expect("flush settings");
            if sql.current {
                merge_here(source, batch)
            } else {
                flush_before_0_5_0(batch)
            }
        })
    })
}

/// On a hot standby: send every key's unflushed usage to the primary, a batch per
/// transaction there. Nothing is sent without `api_keys.primary_conninfo` (the launcher
/// says so), and nothing is lost while the primary cannot be reached: the counts wait
/// in shared memory (two hours at most, see `core::rate_limit`).
fn send_usage(oid: pg_sys::Oid, sql: &Sql, source: [u8; 16]) -> Option<i64> {
    let conninfo = gucs::PRIMARY_CONNINFO.get().filter(|c| !c.is_empty())?;
    let copies = key_state::unflushed(oid);
    if copies.is_empty() {
        return Some(0);
    }
    if !sql.current {
        // The primary's SQL is older than 0.5.0 (its replica here is): nothing takes
        // the counts until ALTER EXTENSION api_keys UPDATE there.
        report_link(
            oid,
            Some("api_keys on the primary is older than 0.5.0 and takes no usage from standbys: run ALTER EXTENSION api_keys UPDATE there"),
        );
        return None;
    }
    let primary = match primary_link::Primary::connect(&conninfo, &sql.database) {
        Ok(primary) => primary,
        Err(e) => {
            report_link(oid, Some(&e));
            return None;
        }
    };
    databases::note_progress(oid);
    let mut reached = true;
    let written = write_batches(oid, copies, |batch| {
        if !reached {
            return None;
        }
        match primary.query(MERGE, &merge_params(source, batch)) {
            Ok(rows) => Some(not_written(rows.into_iter().filter_map(|row| {
                let key = uuid_bytes(row.first()?.as_deref()?)?;
                Some((key, row.get(1)?.as_deref() == Some("t")))
            }))),
            Err(e) => {
                report_link(oid, Some(&e));
                reached = false;
                None
            }
        }
    });
    if reached {
        report_link(oid, None);
    }
    written
}

/// Log a failure to reach the primary (`Some`) or that it is reached again (`None`):
/// the first failure, then at most once per `REPORT_EVERY`, not every round.
fn report_link(oid: pg_sys::Oid, failure: Option<&str>) {
    match (failure, databases::note_link(oid, failure.is_none())) {
        (Some(e), true) => log!(
            "api_keys worker: usage could not be sent to the primary (kept, tried again every round): {e}"
        ),
        (None, true) => log!("api_keys worker: usage reaches the primary again"),
        _ => {}
    }
}

/// Write `copies` (of the unflushed usage of `oid`) with `write`, BATCH keys at a
/// time: what a batch wrote is noted as written, keys with no row are dropped. Returns
/// the keys written, or None when a batch failed.
fn write_batches(
    oid: pg_sys::Oid,
    copies: Vec<([u8; 16], Unflushed)>,
    mut write: impl FnMut(&[([u8; 16], Unflushed)]) -> Option<NotWritten>,
) -> Option<i64> {
    let (mut written, mut failed) = (0, false);
    for batch in copies.chunks(BATCH) {
        pg_sys::check_for_interrupts!();
        let Some(not_written) = write(batch) else {
            failed = true;
            continue;
        };
        let done: Vec<_> = batch
            .iter()
            .filter(|(key, _)| !not_written.locked.contains(key))
            .cloned()
            .collect();
        key_state::mark_written(oid, &done);
        // No row: a key deleted, or one never committed (issued and verified in a
        // transaction that rolled back). Its state goes now, not an hour later.
        key_state::forget_keys(oid, &not_written.gone);
        written += (done.len() - not_written.gone.len()) as i64;
        databases::note_progress(oid);
    }
    (!failed).then_some(written)
}

/// Write `batch` in this database through `api_keys._merge_usage`.
fn merge_here(source: [u8; 16], batch: &[([u8; 16], Unflushed)]) -> NotWritten {
    let args: Vec<_> = merge_params(source, batch)
        .into_iter()
        .map(pgrx::datum::DatumWithOid::from)
        .collect();
    Spi::connect(|client| {
        let rows = client.select(MERGE, None, &args).expect("merge usage");
        not_written(rows.map(|row| {
            let id = row.get::<String>(1).expect("a key id").expect("not NULL");
            let id = uuid_bytes(&id).expect("a uuid");
            (id, row.get::<bool>(2).expect("a flag") == Some(true))
        }))
    })
}

/// Keys a write left out, from (key, gone) rows.
fn not_written(rows: impl Iterator<Item = ([u8; 16], bool)>) -> NotWritten {
    rows.fold(NotWritten::default(), |mut not, (id, gone)| {
        if gone {
            not.gone.push(id);
        } else {
            not.locked.insert(id);
        }
        not
    })
}

/// `api_keys._merge_usage` called with text parameters (`merge_params`), the same here
/// and on the primary: every name qualified, so no search_path takes part.
const MERGE: &CStr = c"\
SELECT m.key_id::pg_catalog.text, m.gone
  FROM api_keys._merge_usage(
         $1::pg_catalog.text::pg_catalog.int8,
         $2::pg_catalog.text::pg_catalog.uuid,
         $3::pg_catalog.text::pg_catalog.uuid[],
         ARRAY(SELECT pg_catalog.to_timestamp(946684800 OPERATOR(pg_catalog.+) (h OPERATOR(pg_catalog./) 1000000.0))
                 FROM pg_catalog.unnest($4::pg_catalog.text::pg_catalog.int8[]) WITH ORDINALITY AS a(h, n)
                ORDER BY n),
         $5::pg_catalog.text::pg_catalog.int8[],
         $6::pg_catalog.text::pg_catalog.int8[],
         $7::pg_catalog.text::pg_catalog.int8[],
         $8::pg_catalog.text::pg_catalog.uuid[],
         ARRAY(SELECT pg_catalog.to_timestamp(946684800 OPERATOR(pg_catalog.+) (t OPERATOR(pg_catalog./) 1000000.0))
                 FROM pg_catalog.unnest($9::pg_catalog.text::pg_catalog.int8[]) WITH ORDINALITY AS a(t, n)
                ORDER BY n),
         $10::pg_catalog.text::pg_catalog.inet[],
         $11::pg_catalog.text::pg_catalog.uuid[],
         ARRAY(SELECT '2000-01-01 00:00:00+00'::pg_catalog.timestamptz OPERATOR(pg_catalog.+)
                        (t::pg_catalog.float8 OPERATOR(pg_catalog.*) '1 microsecond'::pg_catalog.interval)
                 FROM pg_catalog.unnest($12::pg_catalog.text::pg_catalog.int8[]) WITH ORDINALITY AS a(t, n)
                ORDER BY n),
         $13::pg_catalog.text::pg_catalog.int8[],
         $14::pg_catalog.text::pg_catalog.int8[]) AS m";

/// The parameters of MERGE for `batch`: this cluster's system identifier (the primary
/// checks it is its own), and array literals of this server's totals.
fn merge_params(source: [u8; 16], batch: &[([u8; 16], Unflushed)]) -> Vec<Option<String>> {
    let mut lists: [Vec<String>; 12] = Default::default();
    for (key, u) in batch {
        for h in &u.usage {
            lists[0].push(uuid_text(key));
            lists[1].push(h.hour_start.to_string());
            lists[2].push(h.verified.to_string());
            lists[3].push(h.rejected.to_string());
            lists[4].extend(h.outcomes.iter().map(u32::to_string));
        }
        if let Some(l) = u.last {
            lists[5].push(uuid_text(key));
            lists[6].push(l.at.to_string());
            lists[7].push(l.ip.map_or("NULL".into(), |ip| format!("\"{ip}\"")));
        }
        if let Some(c) = u.credits {
            lists[8].push(uuid_text(key));
            lists[9].push(c.period.to_string());
            lists[10].push(c.since.to_string());
            lists[11].push(c.spent.to_string());
        }
    }
    // SAFETY: reads the control file's value kept in shared memory.
    let system = unsafe { pg_sys::GetSystemIdentifier() } as i64;
    [Some(system.to_string()), Some(uuid_text(&source))]
        .into_iter()
        .chain(lists.iter().map(|l| Some(format!("{{{}}}", l.join(",")))))
        .collect()
}

/// Other servers' counts of the current hour written since the last look (tick), summed
/// per key, and the clock they were read at: one statement, so one snapshot (a reader
/// that has seen tick n has seen every write up to n).
const OTHERS: &str = "\
SELECT (SELECT c.tick FROM api_keys.usage_clock c), o.key_id, o.hour_us, o.verified
  FROM (SELECT) one
  LEFT JOIN LATERAL (
    SELECT x.key_id,
           ((pg_catalog.date_part('epoch', x.hour) - 946684800) * 1000000)::pg_catalog.int8 AS hour_us,
           (SELECT pg_catalog.sum(u.verified) FROM api_keys.usage u
             WHERE u.key_id = x.key_id AND u.hour = x.hour AND u.source <> $3)::pg_catalog.int8 AS verified
      FROM (SELECT DISTINCT y.key_id, y.hour FROM api_keys.usage y
             WHERE y.hour = $1 AND y.tick > $2 AND y.source <> $3) x
  ) o ON true";

/// Read other servers' new counts of the current hour into the keys' state, a chunk at a
/// time (however many keys changed, the worker's memory stays bounded).
fn read_others(oid: pg_sys::Oid, source: [u8; 16]) {
    // A SELECT, not Spi::run: on a standby nothing may ask for a transaction id.
    Spi::connect(|client| {
        client
            .select(
                "SELECT pg_catalog.set_config('statement_timeout', '20s', true)",
                None,
                &[],
            )
            .map(|_| ())
    })
    .expect("read settings");
    let since = databases::others_tick(oid);
    // Nothing read yet: from before the first tick too (rows written before 0.5.0's
    // SQL have tick 0).
    let after = if since == 0 { -1 } else { since };
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let hour_us = now - now.rem_euclid(3_600_000_000);
    let hour = TimestampWithTimeZone::try_from(hour_us).expect("an hour start");
    let clock = Spi::connect(|client| {
        let mut cursor = client.open_cursor(
            OTHERS,
            &[
                hour.into(),
                after.into(),
                pgrx::datum::Uuid::from_bytes(source).into(),
            ],
        );
        let mut clock = since;
        loop {
            let chunk = cursor.fetch(BATCH as i64).expect("other servers' counts");
            if chunk.is_empty() {
                break;
            }
            let mut counts = Vec::with_capacity(chunk.len());
            for row in chunk {
                clock = row.get::<i64>(1).expect("the clock").unwrap_or(since);
                let (Some(key), Some(hour_us), Some(verified)) = (
                    row.get::<pgrx::datum::Uuid>(2).expect("a key"),
                    row.get::<i64>(3).expect("an hour"),
                    row.get::<i64>(4).expect("a count"),
                ) else {
                    continue;
                };
                counts.push((
                    *key.as_bytes(),
                    hour_us,
                    u32::try_from(verified.max(0)).unwrap_or(u32::MAX),
                ));
            }
            key_state::note_others(oid, &counts);
            databases::note_progress(oid);
            pg_sys::check_for_interrupts!();
        }
        clock
    });
    read_credits(oid, source, after);
    read_owners(oid, source, (hour, hour_us), after);
    databases::note_others_tick(oid, clock);
}

/// Every writer's spending in the credit periods written to since tick `after`
/// (exact µs periods: `extract` is numeric).
const CREDITS: &str = "\
SELECT c.key_id,
       ((EXTRACT(epoch FROM c.period) - 946684800) * 1000000)::pg_catalog.int8,
       c.source, c.since, c.spent
  FROM api_keys.credit_use c
 WHERE (c.key_id, c.period) IN (SELECT y.key_id, y.period FROM api_keys.credit_use y WHERE y.tick > $1)
 ORDER BY c.key_id, c.period";

/// Other servers' spending of the credits of keys in use here (`Activity::note_credit_others`).
fn read_credits(oid: pg_sys::Oid, source: [u8; 16], after: i64) {
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(CREDITS, &[after.into()]);
        let mut rows: Vec<key_state::CreditRow> = Vec::new();
        loop {
            let chunk = cursor.fetch(BATCH as i64).expect("credit spending");
            if chunk.is_empty() {
                key_state::note_credit_others(oid, source, &rows);
                break;
            }
            for row in chunk {
                let (Some(key), Some(period), Some(writer), Some(since), Some(spent)) = (
                    row.get::<pgrx::datum::Uuid>(1).expect("a key"),
                    row.get::<i64>(2).expect("a period"),
                    row.get::<pgrx::datum::Uuid>(3).expect("a source"),
                    row.get::<i64>(4).expect("a start"),
                    row.get::<i64>(5).expect("a count"),
                ) else {
                    continue;
                };
                rows.push(key_state::CreditRow {
                    key: *key.as_bytes(),
                    period,
                    writer: *writer.as_bytes(),
                    since,
                    spent: spent.max(0) as u64,
                });
            }
            // Rows come ordered by key and period: the last group may go on in the
            // next chunk, so it waits for it.
            let last = rows.last().map(|r| (r.key, r.period));
            let split = rows.partition_point(|r| Some((r.key, r.period)) != last);
            let rest = rows.split_off(split);
            key_state::note_credit_others(oid, source, &rows);
            rows = rest;
            databases::note_progress(oid);
            pg_sys::check_for_interrupts!();
        }
    });
}

/// The calls of the hour summed over each owner with an hourly limit whose keys' counts
/// other servers changed since tick `after` (at the first read after a start, this
/// server's too): the other servers', and this server's as written (what a clean
/// restart leaves of its own count: owners' windows are not saved).
const OWNERS: &str = "\
SELECT pg_catalog.convert_to(k.owner, 'SQL_ASCII'),
       (pg_catalog.sum(u.verified) FILTER (WHERE u.source <> $3))::pg_catalog.int8,
       (pg_catalog.sum(u.verified) FILTER (WHERE u.source = $3))::pg_catalog.int8
  FROM api_keys.usage u JOIN api_keys.keys k ON k.id = u.key_id
 WHERE u.hour = $1 AND k.owner_rate_limit_per_hour IS NOT NULL
   AND k.owner IN (SELECT k2.owner FROM api_keys.usage y JOIN api_keys.keys k2 ON k2.id = y.key_id
                    WHERE y.hour = $1 AND y.tick > $2 AND (y.source <> $3 OR $2 < 0)
                      AND k2.owner_rate_limit_per_hour IS NOT NULL)
 GROUP BY k.owner";

/// The owners' counts of `hour` (as a timestamp, and in µs since 2000).
fn read_owners(
    oid: pg_sys::Oid,
    source: [u8; 16],
    (hour, hour_us): (TimestampWithTimeZone, i64),
    after: i64,
) {
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(
            OWNERS,
            &[
                hour.into(),
                after.into(),
                pgrx::datum::Uuid::from_bytes(source).into(),
            ],
        );
        loop {
            let chunk = cursor.fetch(BATCH as i64).expect("owners' counts");
            if chunk.is_empty() {
                break;
            }
            let mut counts = Vec::with_capacity(chunk.len());
            let count = |n: Option<i64>| u32::try_from(n.unwrap_or(0).max(0)).unwrap_or(u32::MAX);
            for row in chunk {
                // The name's bytes, as verification reads them from the key row.
                let Some(owner) = row.get::<Vec<u8>>(1).expect("an owner") else {
                    continue;
                };
                counts.push(key_state::OwnerCount {
                    owner: owner_entry_id(&owner),
                    hour_start: hour_us,
                    others: count(row.get::<i64>(2).expect("a count")),
                    here_written: count(row.get::<i64>(3).expect("a count")),
                });
            }
            key_state::note_owner_others(oid, &counts);
            databases::note_progress(oid);
            pg_sys::check_for_interrupts!();
        }
    });
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

/// What the worker needs to know of a database with the extension.
struct Sql {
    /// Its SQL is 0.5.0's or later (`api_keys._merge_usage` and the usage clock exist);
    /// before, usage is added up as it was then and nothing is sent or read.
    current: bool,
    /// Its name (a standby's worker connects to the same on the primary).
    database: CString,
}

/// Does this database have the extension (and which SQL)? Catalog lookups, no SQL:
/// nothing a user defined (an operator, a search_path) can take part.
fn installed() -> Option<Sql> {
    // SAFETY: syscache-backed catalog lookups, in the step's transaction; the name is
    // copied out of the transaction's memory.
    unsafe {
        let extension = pg_sys::get_extension_oid(c"api_keys".as_ptr(), true);
        if extension == pg_sys::InvalidOid {
            return None;
        }
        // The extension's schema is fixed (api_keys.control: not relocatable).
        let schema = pg_sys::get_namespace_oid(c"api_keys".as_ptr(), true);
        let clock = pg_sys::get_relname_relid(c"usage_clock".as_ptr(), schema);
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        Some(Sql {
            current: clock != pg_sys::InvalidOid,
            database: CStr::from_ptr(name).to_owned(),
        })
    }
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

/// Before 0.5.0's SQL (until ALTER EXTENSION api_keys UPDATE): usage and last use of
/// every key whose row no user has locked added up in one statement that waits for no
/// row lock (SKIP LOCKED); counts of keys that no longer exist go. Returns the keys it
/// left for a later round.
const FLUSH_BEFORE_0_5_0: &str = "\
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

/// A uuid's 16 bytes from its text (as PostgreSQL prints it).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0; 16];
    for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(id)
}

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

/// Write `batch` the way 0.4.0's SQL takes it: the calls not yet written, added.
fn flush_before_0_5_0(batch: &[([u8; 16], Unflushed)]) -> NotWritten {
    // Triggers off (superuser-only setting): writing last use is not an edit to guard
    // or audit. 0.5.0's _merge_usage sets it itself.
    Spi::run("SET LOCAL session_replication_role = replica").expect("flush settings");
    let (mut ids, mut hours, mut verified, mut rejected) = (vec![], vec![], vec![], vec![]);
    let (mut last_ids, mut last_at, mut last_ip) = (vec![], vec![], vec![]);
    for (key, u) in batch {
        for h in &u.usage {
            let (new_verified, new_rejected) = h.new_calls();
            ids.push(uuid_text(key));
            hours.push(h.hour_start);
            verified.push(i64::from(new_verified));
            rejected.push(i64::from(new_rejected));
        }
        if let Some(l) = u.last {
            last_ids.push(uuid_text(key));
            last_at.push(l.at);
            last_ip.push(l.ip.map(|ip| ip.to_string()));
        }
    }
    Spi::connect(|client| {
        let rows = client
            .select(
                FLUSH_BEFORE_0_5_0,
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
                let id = *id.expect("not NULL").as_bytes();
                (id, row.get::<bool>(2).expect("a flag") == Some(true))
            });
        not_written(rows)
    })
}
