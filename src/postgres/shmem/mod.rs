//! Shared state of verification, one file per structure: the memo (`memo`), the argon2
//! budgets (`argon2_budget`), per-key rate windows and unflushed usage (`rate_limit`),
//! the cap on concurrent argon2 computations (`argon2_cap`) and the counters of
//! `api_keys.stats()` (`counters`). This file lays them out, sets them up and locks them.
//!
//! With `shared_preload_libraries = 'api_keys'` it lives in shared memory (sized by
//! `api_keys.memo_entries` at server start), so every session, new ones included,
//! shares one warm memo. Without preloading each backend keeps its own small copy:
//! verification stays correct, only colder.

use std::cell::RefCell;
use std::ffi::CStr;
use std::mem::{align_of, size_of};
use std::ptr;

use pgrx::pg_sys;

use crate::core::argon2_budget::BudgetSlot;
use crate::core::memo::Slot;
use crate::core::rate_limit::KeySlot;
use crate::postgres::gucs;

mod argon2_budget;
mod argon2_cap;
mod counters;
mod memo;
mod rate_limit;

pub(crate) use argon2_budget::{record_failure, spend_budget};
pub(crate) use argon2_cap::{argon2, Argon2For};
pub(crate) use counters::{count, count_flush, count_forged, snapshot};
pub(crate) use memo::{memo_lookup, memo_remember};
pub(crate) use rate_limit::{admit, drain_activity, rate_limited, record_rejected};

use argon2_budget::Allowance;
use argon2_cap::Argon2Cap;
use counters::Counters;

const NAME: &CStr = c"api_keys";
/// LWLocks: the memo is striped over the first `MEMO_LOCKS`, then one guards the
/// budgets, then per-key activity is striped over `KEY_LOCKS`.
const MEMO_LOCKS: usize = 15;
const BUDGET_LOCK: usize = MEMO_LOCKS;
const KEY_LOCKS: usize = 16;
const LOCKS: usize = MEMO_LOCKS + 1 + KEY_LOCKS;
const BUDGET_SLOTS: usize = 4096;
const LOCAL_MEMO_SLOTS: usize = 1024;
const LOCAL_KEY_SLOTS: usize = 1024;

/// What sits at the start of the shared segment; the memo slots, the budget slots and
/// the key slots follow it (`budget_offset`, `key_offset`).
#[repr(C)]
struct Header {
    counters: Counters,
    argon2_cap: Argon2Cap,
    argon2_allowance: Allowance,
    memo_slots: usize,
    key_slots: usize,
}

// Set once in the postmaster's shmem_startup hook; forked backends inherit them.
static mut SHARED: *mut Header = ptr::null_mut();
static mut LWLOCKS: *mut pg_sys::LWLockPadded = ptr::null_mut();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

struct Local {
    counters: Counters,
    memo: Vec<Slot>,
    budget: Vec<BudgetSlot>,
    after_failure_tat: i64,
    keys: Vec<KeySlot>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local {
        counters: Counters::default(),
        memo: vec![Slot::default(); LOCAL_MEMO_SLOTS],
        budget: vec![BudgetSlot::default(); BUDGET_SLOTS / 16],
        after_failure_tat: 0,
        keys: vec![KeySlot::default(); LOCAL_KEY_SLOTS],
    });
}

fn budget_offset(memo_slots: usize) -> usize {
    let end = size_of::<Header>() + memo_slots * size_of::<Slot>();
    end.next_multiple_of(align_of::<BudgetSlot>())
}

fn key_offset(memo_slots: usize) -> usize {
    let end = budget_offset(memo_slots) + BUDGET_SLOTS * size_of::<BudgetSlot>();
    end.next_multiple_of(align_of::<KeySlot>())
}

fn shared_size(memo_slots: usize, key_slots: usize) -> usize {
    key_offset(memo_slots) + key_slots * size_of::<KeySlot>()
}

fn memo_slots_setting() -> usize {
    gucs::MEMO_ENTRIES.get().max(0) as usize
}

fn key_slots_setting() -> usize {
    gucs::TRACKED_KEYS.get().max(0) as usize
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
        pg_sys::RequestAddinShmemSpace(shared_size(memo_slots_setting(), key_slots_setting()));
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), LOCKS as i32);
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
        let (slots, keys) = (memo_slots_setting(), key_slots_setting());
        let size = shared_size(slots, keys);
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(NAME.as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            // All-zero is a valid empty state for every part (empty slots, zero counters).
            ptr::write_bytes(header.cast::<u8>(), 0, size);
            (*header).argon2_cap.init();
            (*header).memo_slots = slots;
            (*header).key_slots = keys;
        }
        SHARED = header;
        LWLOCKS = pg_sys::GetNamedLWLockTranche(NAME.as_ptr());
        pg_sys::LWLockRelease(init_lock);
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

/// The lock of key-slot stripe `stripe`.
fn key_lock(stripe: usize) -> usize {
    BUDGET_LOCK + 1 + stripe % KEY_LOCKS
}

impl Held {
    /// Take our lock `index` (`memo_lock`, `BUDGET_LOCK`, `key_lock`); `_header` shows
    /// the shared segment, and so our lock tranche, exists.
    fn take(_header: &Header, index: usize) -> Held {
        assert!(index < LOCKS, "api_keys has {LOCKS} locks");
        // SAFETY: index < LOCKS, the tranche's size; LWLOCKS is set with SHARED, which
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
