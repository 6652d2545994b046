//! The dsa area and its directory of databases: for each database the server has seen
//! use api_keys, whether the extension is there (as last checked), its key table (a
//! dshash table of `key_state::KeyEntry`, made on first use) and when the worker last
//! flushed it. The launcher reads it to know whom to serve and drops the entries of
//! dropped databases; `api_keys.stats()` shows it.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::Ordering::Relaxed;

use pgrx::pg_sys;

use super::dshash::{Entry, Table};
use super::key_state::KeyEntry;
use super::{shared, Header, DSA_IN_PLACE};

/// Whether a database has the extension, as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extension {
    Unknown,
    Present,
    Absent,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct DatabaseEntry {
    oid: u32,
    /// `Extension` as 0, 1, 2.
    extension: u32,
    /// The key table, or 0 (InvalidDsaPointer) before the first key is seen.
    keys: pg_sys::dsa_pointer,
    /// When the extension was last looked for (µs since 2000), by a worker.
    checked_at: i64,
    last_flush_at: i64,
    /// Keys whose usage the last flush wrote.
    last_flush_keys: i64,
    /// The worker running a round here (0: none): one round at a time per database.
    worker_pid: i32,
    /// When that worker last moved on (µs): the launcher stops one that does not.
    progress_at: i64,
    /// When a backend here last said it has the extension (µs): a worker's older look
    /// that found none does not undo it.
    noted_at: i64,
    /// No round starts before this (µs): a command that needs the database free of
    /// sessions (DROP DATABASE …) is under way.
    hold_off_until: i64,
    /// The newest usage tick (`api_keys.usage_clock`) whose rows the workers read here:
    /// other servers' counts are read from the next one on.
    others_tick: i64,
    /// A standby's sending to the primary: failing since (µs; 0: it works), and when
    /// that was last logged.
    link_failing_since: i64,
    link_reported_at: i64,
    /// How the last round wrote (`Mode` as 0 none yet, 1, 2, 3).
    mode: u32,
}

/// How a round writes usage.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Here, adding the new calls (before 0.5.0's SQL).
    Adding = 1,
    /// Here, as this server's totals.
    Totals = 2,
    /// To the primary (a hot standby).
    Sending = 3,
}

/// A change between two rounds that the keys' state must follow.
#[derive(Clone, Copy)]
pub(crate) enum ModeChange {
    /// From a standby to a primary.
    Promoted,
    /// From adding to totals (ALTER EXTENSION api_keys UPDATE).
    Updated,
}

// SAFETY: `oid` leads; all-zero is a database never seen (Unknown, no table).
unsafe impl Entry for DatabaseEntry {
    const KEY_SIZE: usize = 4;
}

impl DatabaseEntry {
    pub(crate) fn oid(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.oid)
    }

    pub(crate) fn extension(&self) -> Extension {
        match self.extension {
            1 => Extension::Present,
            2 => Extension::Absent,
            _ => Extension::Unknown,
        }
    }

    pub(crate) fn checked_at(&self) -> i64 {
        self.checked_at
    }
}

/// Make the area in the fixed segment at `place` (DSA_IN_PLACE bytes), and the
/// directory in it; the postmaster then lets go of both, as PostgreSQL's statistics do.
///
/// # Safety
/// In the shmem startup hook, on the freshly zeroed segment `header` starts.
pub(super) unsafe fn create_in_place(header: *mut Header, place: *mut u8) {
    // SAFETY: the caller's promise; tranche ids come from Postgres' shared counter.
    unsafe {
        let dsa_tranche = pg_sys::LWLockNewTrancheId();
        let hash_tranche = pg_sys::LWLockNewTrancheId();
        let area = pg_sys::dsa_create_in_place(
            place.cast::<c_void>(),
            DSA_IN_PLACE,
            dsa_tranche,
            std::ptr::null_mut(),
        );
        pg_sys::dsa_pin(area);
        // The directory goes in the fixed segment: the postmaster cannot make others.
        pg_sys::dsa_set_size_limit(area, DSA_IN_PLACE);
        let directory = Table::<DatabaseEntry>::create(area, hash_tranche);
        pg_sys::dsa_set_size_limit(area, usize::MAX);
        (*header).dsa_tranche = dsa_tranche;
        (*header).hash_tranche = hash_tranche;
        (*header).directory = directory.handle();
        directory.detach();
        pg_sys::dsa_detach(area);
    }
}

/// This backend's attachment to the area and the directory, made on first use.
struct Attached {
    area: *mut pg_sys::dsa_area,
    directory: Table<DatabaseEntry>,
    /// The key table of the database this backend is connected to.
    own_keys: Option<Table<KeyEntry>>,
}

thread_local! {
    static ATTACHED: RefCell<Option<Attached>> = const { RefCell::new(None) };
}

fn place(header: &Header) -> *mut c_void {
    // SAFETY: the in-place part of the area follows the memo in the fixed segment.
    unsafe {
        std::ptr::from_ref(header)
            .cast::<u8>()
            .cast_mut()
            .add(super::dsa_offset(header.memo_slots))
            .cast()
    }
}

/// Run `f` with this backend's attachment (made now if needed); None without shared
/// memory.
fn with_attached<R>(f: impl FnOnce(&mut Attached, &Header) -> R) -> Option<R> {
    let header = shared()?;
    ATTACHED.with_borrow_mut(|attached| {
        let a = attached.get_or_insert_with(|| {
            // SAFETY: the area was made in place at server start and is pinned; the
            // tranches are ours (registered by name for pg_stat_activity); the mapping
            // is pinned so it lives as long as this backend, not a transaction.
            unsafe {
                pg_sys::LWLockRegisterTranche(header.dsa_tranche, c"api_keys dsa".as_ptr());
                pg_sys::LWLockRegisterTranche(header.hash_tranche, c"api_keys hash".as_ptr());
                let area = super::dshash::in_top_memory_context(|| {
                    pg_sys::dsa_attach_in_place(place(header), std::ptr::null_mut())
                });
                pg_sys::dsa_pin_mapping(area);
                let directory = Table::attach(area, header.hash_tranche, header.directory);
                Attached {
                    area,
                    directory,
                    own_keys: None,
                }
            }
        });
        Some(f(a, header))
    })
}

fn current_database() -> pg_sys::Oid {
    // SAFETY: set once at connection; InvalidOid in a process with no database.
    unsafe { pg_sys::MyDatabaseId }
}

/// The key table of database `oid` (made when absent and `create`), with its
/// directory entry locked while it is looked up.
fn keys_table(
    a: &Attached,
    header: &Header,
    oid: pg_sys::Oid,
    create: bool,
) -> Option<Table<KeyEntry>> {
    let key = u32::from(oid).to_ne_bytes();
    let mut db = if create {
        a.directory.find_or_insert(&key).0
    } else {
        a.directory.find(&key)?
    };
    if db.keys == 0 {
        if !create {
            return None;
        }
        // SAFETY: the area is attached; the tranche is ours.
        let table = unsafe { Table::<KeyEntry>::create(a.area, header.hash_tranche) };
        db.keys = table.handle();
        return Some(table);
    }
    // SAFETY: made by `create` above, with the same entry type; a table is destroyed
    // only once its database is gone (`forget`).
    Some(unsafe { Table::attach(a.area, header.hash_tranche, db.keys) })
}

/// Run `f` over the key table of this backend's database, made if it is the first
/// (and the database noted as having the extension: only its code gets here). None
/// without shared memory.
pub(super) fn with_own_keys<R>(f: impl FnOnce(&Table<KeyEntry>) -> R) -> Option<R> {
    with_attached(|a, header| {
        if a.own_keys.is_none() {
            let oid = current_database();
            let table = keys_table(a, header, oid, true).expect("made when absent");
            if let Some(mut db) = a.directory.find(&u32::from(oid).to_ne_bytes()) {
                db.extension = 1;
                db.noted_at = super::now();
            }
            a.own_keys = Some(table);
        }
        f(a.own_keys.as_ref().expect("attached just now"))
    })
}

/// Note that this backend's database has the extension (CREATE EXTENSION), so the
/// launcher serves it from its next round.
pub(crate) fn note_extension_here() {
    let now = super::now();
    with_own_keys(|_| ());
    with_attached(|a, _| {
        let (mut db, _) = a
            .directory
            .find_or_insert(&u32::from(current_database()).to_ne_bytes());
        db.extension = 1;
        db.noted_at = now;
    });
}

/// Every database in the directory.
pub(crate) fn list() -> Vec<DatabaseEntry> {
    with_attached(|a, _| {
        let mut all = Vec::new();
        a.directory.for_each(|db| all.push(*db));
        all
    })
    .unwrap_or_default()
}

/// Record what a worker that looked at `looked_at` found: whether `oid` has the
/// extension (a backend's note since then wins over "no"; one shortly before makes it
/// "look again": the noting CREATE EXTENSION may not have committed when the worker
/// looked), and (when its flush wrote everything it could) how many keys it wrote.
pub(crate) fn note_round(
    oid: pg_sys::Oid,
    extension: bool,
    looked_at: i64,
    flushed_keys: Option<i64>,
) {
    /// How long a backend's note may take to commit.
    const NOTE_PENDING: i64 = 60 * 1_000_000;
    let now = super::now();
    with_attached(|a, _| {
        let (mut db, _) = a.directory.find_or_insert(&u32::from(oid).to_ne_bytes());
        if extension {
            db.extension = 1;
        } else if db.noted_at < looked_at {
            db.extension = if looked_at - db.noted_at < NOTE_PENDING {
                0
            } else {
                2
            };
        }
        db.checked_at = now;
        if let Some(keys) = flushed_keys {
            db.last_flush_at = now;
            db.last_flush_keys = keys;
        }
    });
}

/// Take the round of database `oid` for this process; false when another live worker
/// has it (one whose launcher went away mid-round). Released by `release_round`.
pub(crate) fn claim_round(oid: pg_sys::Oid) -> bool {
    let now = super::now();
    // SAFETY: this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    with_attached(|a, _| {
        let (mut db, _) = a.directory.find_or_insert(&u32::from(oid).to_ne_bytes());
        if now < db.hold_off_until {
            return false;
        }
        let holder = db.worker_pid;
        // SAFETY: looks a pid up in the proc array (under its own lock); NULL when no
        // backend or worker has it.
        let holder_alive =
            holder != 0 && holder != me && !unsafe { pg_sys::BackendPidGetProc(holder) }.is_null();
        if holder_alive {
            return false;
        }
        db.worker_pid = me;
        true
    })
    .unwrap_or(false)
}

/// The worker running a round in `oid`, if any; no round starts there for the next
/// `HOLD_OFF` (the caller is about to need the database free of sessions).
pub(crate) fn worker_of(oid: pg_sys::Oid) -> Option<i32> {
    const HOLD_OFF: i64 = 10 * 1_000_000;
    let now = super::now();
    with_attached(|a, _| {
        let mut db = a.directory.find(&u32::from(oid).to_ne_bytes())?;
        db.hold_off_until = now + HOLD_OFF;
        (db.worker_pid != 0).then_some(db.worker_pid)
    })
    .flatten()
}

/// This process's round of `oid` is over (also when it exits on an error).
pub(crate) fn release_round(oid: pg_sys::Oid) {
    // SAFETY: this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    with_attached(|a, _| {
        if let Some(mut db) = a.directory.find(&u32::from(oid).to_ne_bytes()) {
            if db.worker_pid == me {
                db.worker_pid = 0;
            }
        }
    });
}

/// The worker of `oid` moved on (connected, wrote a batch, swept).
pub(crate) fn note_progress(oid: pg_sys::Oid) {
    let now = super::now();
    with_attached(|a, _| {
        if let Some(mut db) = a.directory.find(&u32::from(oid).to_ne_bytes()) {
            db.progress_at = now;
        }
    });
}

/// The usage tick up to which other servers' counts in `oid` were read (0: none yet).
pub(crate) fn others_tick(oid: pg_sys::Oid) -> i64 {
    with_attached(|a, _| {
        a.directory
            .find(&u32::from(oid).to_ne_bytes())
            .map_or(0, |db| db.others_tick)
    })
    .unwrap_or(0)
}

/// Other servers' counts in `oid` are read up to usage tick `tick`.
pub(crate) fn note_others_tick(oid: pg_sys::Oid, tick: i64) {
    with_attached(|a, _| {
        let (mut db, _) = a.directory.find_or_insert(&u32::from(oid).to_ne_bytes());
        db.others_tick = db.others_tick.max(tick);
    });
}

/// Note whether `oid`'s worker reached the primary; true when that is worth a log line:
/// the first failure, a failure `REPORT_EVERY` after the last one logged, or the first
/// success after failures.
pub(crate) fn note_link(oid: pg_sys::Oid, reached: bool) -> bool {
    const REPORT_EVERY: i64 = 5 * 60 * 1_000_000;
    let now = super::now();
    with_attached(|a, _| {
        let (mut db, _) = a.directory.find_or_insert(&u32::from(oid).to_ne_bytes());
        if reached {
            return std::mem::take(&mut db.link_failing_since) != 0;
        }
        if db.link_failing_since == 0 {
            db.link_failing_since = now;
        } else if now - db.link_reported_at < REPORT_EVERY {
            return false;
        }
        db.link_reported_at = now;
        true
    })
    .unwrap_or(true)
}

/// Note how this round of `oid` writes; the change since the last round, if the keys'
/// state must follow it.
pub(crate) fn note_mode(oid: pg_sys::Oid, mode: Mode) -> Option<ModeChange> {
    with_attached(|a, _| {
        let (mut db, _) = a.directory.find_or_insert(&u32::from(oid).to_ne_bytes());
        let before = std::mem::replace(&mut db.mode, mode as u32);
        match (before, mode) {
            (3, Mode::Totals | Mode::Adding) => Some(ModeChange::Promoted),
            (1, Mode::Totals) => Some(ModeChange::Updated),
            _ => None,
        }
    })
    .flatten()
}

/// When the worker of `oid` last moved on.
pub(crate) fn progress_at(oid: pg_sys::Oid) -> Option<i64> {
    with_attached(|a, _| {
        a.directory
            .find(&u32::from(oid).to_ne_bytes())
            .map(|db| db.progress_at)
    })
    .flatten()
}

/// Run `f` over the key table of database `oid` (made when absent and `create`): this
/// backend's cached attachment when it is its own database and already attached, else
/// attached only for the call. None when it has none, or without shared memory.
pub(super) fn with_keys_of<R>(
    oid: pg_sys::Oid,
    create: bool,
    f: impl FnOnce(&Table<KeyEntry>) -> R,
) -> Option<R> {
    with_attached(|a, header| {
        if oid == current_database() {
            if let Some(own) = &a.own_keys {
                return Some(f(own));
            }
        }
        let table = keys_table(a, header, oid, create)?;
        let result = f(&table);
        table.detach();
        Some(result)
    })
    .flatten()
}

/// Database `oid` is gone: free its key table and its directory entry.
pub(crate) fn forget(oid: pg_sys::Oid) {
    with_attached(|a, header| {
        let key = u32::from(oid).to_ne_bytes();
        let Some(db) = a.directory.find(&key) else {
            return;
        };
        if db.keys != 0 {
            // SAFETY: as in `with_keys_of`; no backend is connected to a dropped
            // database, so nobody else is attached.
            let table = unsafe { Table::<KeyEntry>::attach(a.area, header.hash_tranche, db.keys) };
            let mut entries = 0;
            table.for_each(|_| entries += 1);
            table.destroy();
            header.tracked_keys.fetch_sub(entries, Relaxed);
        }
        db.delete();
    });
}

/// `api_keys.stats()` rows of each database with the extension: when its worker last
/// flushed (Unix seconds, 0 = not yet) and how many keys that flush wrote.
pub(crate) fn flush_rows() -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for db in list() {
        if db.extension() != Extension::Present {
            continue;
        }
        // SAFETY: a syscache lookup by oid; NULL when the database is gone.
        let name = unsafe { pg_sys::get_database_name(db.oid()) };
        if name.is_null() {
            continue;
        }
        // SAFETY: a palloc'd NUL-terminated name, copied before it is freed.
        let name = unsafe {
            let owned = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            pg_sys::pfree(name.cast());
            owned
        };
        const POSTGRES_EPOCH_UNIX_S: i64 = 946_684_800;
        let at = match db.last_flush_at {
            0 => 0,
            us => us / 1_000_000 + POSTGRES_EPOCH_UNIX_S,
        };
        rows.push((format!("flushed_at:{name}"), at));
        rows.push((format!("flushed_keys:{name}"), db.last_flush_keys));
    }
    rows.sort();
    rows
}
