//! Shared state of verification, one file per structure: the memo of wrong secrets
//! (`memo`), each key's state (`key_state`: rate windows, unflushed usage, argon2
//! budget, its known-good presentation) in one hash table per database, the directory
//! of those databases (`databases`), the cap on concurrent argon2 computations
//! (`argon2_cap`) and the counters of `api_keys.stats()` (`counters`). This file lays
//! them out, sets them up and locks them.
//!
//! With `shared_preload_libraries = 'api_keys'` it lives in shared memory: a fixed
//! segment sized at server start (the memo, by `api_keys.memo_entries`) and a `dsa`
//! area that grows with the number of keys in use (`dshash` tables, as PostgreSQL's
//! own statistics keep theirs). Without preloading each backend keeps its own copy:
//! verification stays correct, only colder, and limits hold per session.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, CStr};
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use pgrx::pg_sys;

use crate::core::key_state::KeyState;
use crate::core::memo::Slot;
use crate::postgres::gucs;

mod argon2_budget;
mod argon2_cap;
mod counters;
pub(crate) mod databases;
mod dshash;
pub(crate) mod key_state;
mod memo;
mod rate_limit;

pub(crate) use argon2_budget::{record_failure, spend_budget};
pub(crate) use argon2_cap::{argon2, Argon2For};
pub(crate) use counters::{count, count_flush, count_forged, snapshot};
pub(crate) use memo::{memo_lookup, memo_remember};
pub(crate) use rate_limit::{admit, rate_limited, record_rejected, OwnerLimits};

use argon2_cap::Argon2Cap;
use counters::Counters;

const NAME: &CStr = c"api_keys";
/// LWLocks: the memo is striped over `MEMO_LOCKS`. The hash tables lock their own
/// partitions (tranche "api_keys hash"), the dsa area its own (tranche "api_keys dsa").
const MEMO_LOCKS: usize = 15;
const LOCAL_MEMO_SLOTS: usize = 1024;
/// Size of the part of the dsa area that sits in the fixed segment: the directory of
/// databases and the first key tables fit in it; beyond it the area adds segments.
const DSA_IN_PLACE: usize = 1 << 20;
/// Without preloading: past this many keys a session drops the idle ones.
const LOCAL_KEYS_BEFORE_PRUNING: usize = 4096;

/// What sits at the start of the shared segment; the memo slots and the in-place part
/// of the dsa area follow it (`dsa_offset`).
#[repr(C)]
struct Header {
    counters: Counters,
    argon2_cap: Argon2Cap,
    /// The server-wide argon2 allowance for suspect keys (GCRA state, µs).
    argon2_allowance: AtomicI64,
    memo_slots: usize,
    dsa_tranche: c_int,
    hash_tranche: c_int,
    /// The directory of databases (`databases`), a dshash table in the area.
    directory: pg_sys::dsa_pointer,
    /// Entries in all key tables.
    tracked_keys: AtomicI64,
    /// The source this server writes its usage rows under (a uuid, two halves): new at
    /// each start, kept across a clean restart (the launcher restores it with the
    /// saved usage, before any worker runs).
    usage_source: [AtomicU64; 2],
    /// A launcher saved the unflushed usage to a file while this memory lives on.
    usage_saved: AtomicBool,
}

// Set once in the postmaster's shmem_startup hook; forked backends inherit them.
static mut SHARED: *mut Header = ptr::null_mut();
static mut LWLOCKS: *mut pg_sys::LWLockPadded = ptr::null_mut();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

struct Local {
    counters: Counters,
    memo: Vec<Slot>,
    keys: HashMap<[u8; 16], KeyState>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local {
        counters: Counters::default(),
        memo: vec![Slot::default(); LOCAL_MEMO_SLOTS],
        keys: HashMap::new(),
    });
}

fn dsa_offset(memo_slots: usize) -> usize {
    let end = size_of::<Header>() + memo_slots * size_of::<Slot>();
    end.next_multiple_of(align_of::<u64>().max(16))
}

fn shared_size(memo_slots: usize) -> usize {
    dsa_offset(memo_slots) + DSA_IN_PLACE
}

fn memo_slots_setting() -> usize {
    gucs::MEMO_ENTRIES.get().max(0) as usize
}

/// Called from _PG_init while shared_preload_libraries is being processed.
pub(crate) fn install_hooks() {
    // SAFETY: the postmaster loads libraries one at a time, before any backend exists;
    // the previous hooks are kept and called first.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

/// # Safety
/// Called by Postgres while shared memory is being sized.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: the requests Postgres expects from this hook; the previous hook first.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(shared_size(memo_slots_setting()));
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), MEMO_LOCKS as i32);
    }
}

/// PostgreSQL's AddinShmemInitLock, which serialises extensions setting up their shared
/// memory. C reaches it through a macro over the main lock array (`&MainLWLockArray[21]
/// .lock`, from lwlocknames.h in PostgreSQL 15), which bindgen cannot translate.
///
/// # Safety
/// Call only after the main lock array exists (in a shmem startup hook or later).
unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    const ADDIN_SHMEM_INIT_LOCK: usize = 21;
    // SAFETY: the main lock array has NUM_INDIVIDUAL_LWLOCKS (> 21) entries.
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock }
}

/// # Safety
/// Called by Postgres once shared memory exists, in the postmaster and (EXEC_BACKEND)
/// in each backend.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    // SAFETY: the segment is sized by request_shmem for these settings; it is written
    // only while AddinShmemInitLock is held and before any backend uses it.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let init_lock = addin_shmem_init_lock();
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = memo_slots_setting();
        let size = shared_size(slots);
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(NAME.as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            // All-zero is a valid empty state for every fixed part (empty slots, zero
            // counters); the dsa area and the directory are made here, in place.
            ptr::write_bytes(header.cast::<u8>(), 0, size);
            (*header).argon2_cap.init();
            (*header).memo_slots = slots;
            set_usage_source(&*header, new_usage_source());
            databases::create_in_place(header, header.cast::<u8>().add(dsa_offset(slots)));
        }
        SHARED = header;
        LWLOCKS = pg_sys::GetNamedLWLockTranche(NAME.as_ptr());
        pg_sys::LWLockRelease(init_lock);
    }
}

/// A random (version 4) uuid.
fn new_usage_source() -> [u8; 16] {
    let mut id: [u8; 16] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn set_usage_source(header: &Header, id: [u8; 16]) {
    let (high, low) = id.split_at(8);
    header.usage_source[0].store(u64::from_be_bytes(high.try_into().expect("8")), Relaxed);
    header.usage_source[1].store(u64::from_be_bytes(low.try_into().expect("8")), Relaxed);
}

/// The source of this server's usage rows (see `Header::usage_source`); None without
/// shared memory (no worker writes then).
pub(crate) fn usage_source() -> Option<[u8; 16]> {
    shared().map(|h| {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&h.usage_source[0].load(Relaxed).to_be_bytes());
        id[8..].copy_from_slice(&h.usage_source[1].load(Relaxed).to_be_bytes());
        id
    })
}

/// Note whether a launcher saved the unflushed usage while this memory lives on;
/// returns what was noted before.
pub(crate) fn note_usage_saved(saved: bool) -> bool {
    shared().is_some_and(|h| h.usage_saved.swap(saved, Relaxed))
}

/// Go on writing under the source a clean shutdown saved (the launcher, at start).
pub(crate) fn restore_usage_source(id: [u8; 16]) {
    if let Some(h) = shared() {
        set_usage_source(h, id);
    }
}

fn shared() -> Option<&'static Header> {
    // SAFETY: set once by startup_shmem before any backend runs; never changed after.
    unsafe { (&raw const SHARED).read().as_ref() }
}

/// The `range` of the shared segment's slots of type `T` that start `offset` bytes in,
/// borrowed (exclusively) from `_held`, the lock that guards exactly those slots.
///
/// # Safety
/// `offset` and `range` come from the layout above (the slots exist), and `_held` is
/// the lock that serialises every access to these slots, in every backend.
unsafe fn shared_slots<T>(
    _held: &mut Held,
    offset: usize,
    range: std::ops::Range<usize>,
) -> &mut [T] {
    // SAFETY: `shared()` gave out the guard's header, so SHARED is set; the slots are
    // inside the segment, and no other backend touches them while the lock is held.
    unsafe {
        std::slice::from_raw_parts_mut(
            (&raw const SHARED)
                .read()
                .cast::<u8>()
                .add(offset)
                .cast::<T>()
                .add(range.start),
            range.len(),
        )
    }
}

pub(crate) fn is_shared() -> bool {
    shared().is_some()
}

/// Exclusive hold of one of our LWLocks, released on drop (also on unwinding).
struct Held(*mut pg_sys::LWLock);

/// The lock of memo stripe `stripe`.
fn memo_lock(stripe: usize) -> usize {
    stripe % MEMO_LOCKS
}

impl Held {
    /// Take our lock `index` (`memo_lock`); `_header` shows
    /// the shared segment, and so our lock tranche, exists.
    fn take(_header: &Header, index: usize) -> Held {
        assert!(index < MEMO_LOCKS, "api_keys has {MEMO_LOCKS} locks");
        // SAFETY: index < MEMO_LOCKS, the tranche's size; LWLOCKS is set with SHARED, which
        // `_header` comes from.
        unsafe {
            let lock = &raw mut (*(&raw const LWLOCKS).read().add(index)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            Held(lock)
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: this backend took the lock in `take`.
        unsafe { pg_sys::LWLockRelease(self.0) }
    }
}

fn now() -> i64 {
    // SAFETY: GetCurrentTimestamp reads the system clock; it has no precondition.
    unsafe { pg_sys::GetCurrentTimestamp() }
}
