//! Shared state of verification: the memo, the argon2 budgets, per-key activity (rate
//! windows and unflushed usage), the counters of `api_keys.stats()` and the cap on
//! concurrent argon2 computations.
//!
//! With `shared_preload_libraries = 'api_keys'` it lives in shared memory (sized by
//! `api_keys.memo_entries` at server start), so every session, new ones included,
//! shares one warm memo. Without preloading each backend keeps its own small copy:
//! verification stays correct, only colder.

use std::cell::RefCell;
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use pgrx::pg_sys;

use crate::budget::{self, BudgetSlot};
use crate::gucs;
use crate::key_activity::{self, HourUsage, KeySlot, LastUse, Limits};
use crate::memo::{self, Fact, Slot};
use crate::verdict::Reason;

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

#[repr(C)]
#[derive(Default)]
struct Counters {
    by_reason: [AtomicU64; Reason::ALL.len()],
    memo_hits: AtomicU64,
    memo_misses: AtomicU64,
    argon2_runs: AtomicU64,
    throttled: AtomicU64,
    activity_evictions: AtomicU64,
    flushes: AtomicU64,
}

#[repr(C)]
struct Header {
    counters: Counters,
    argon2_running: AtomicU32,
    /// Broadcast when an argon2 slot is given back; waiters sleep on it.
    argon2_released: UnsafeCell<pg_sys::ConditionVariable>,
    /// When a verification last waited for an argon2 slot (µs): issuing yields to it.
    verifier_waiting_at: AtomicI64,
    /// The server-wide allowance of `budget` (GCRA state); guarded by the budget lock.
    after_failure_tat: AtomicI64,
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
pub fn install_hooks() {
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(shared_size(memo_slots_setting(), key_slots_setting()));
        pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), LOCKS as i32);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let (slots, keys) = (memo_slots_setting(), key_slots_setting());
        let size = shared_size(slots, keys);
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(NAME.as_ptr(), size, &mut found).cast::<Header>();
        if !found {
            // All-zero is a valid empty state for every part (empty slots, zero counters).
            ptr::write_bytes(header.cast::<u8>(), 0, size);
            pg_sys::ConditionVariableInit((*header).argon2_released.get());
            (*header).memo_slots = slots;
            (*header).key_slots = keys;
        }
        SHARED = header;
        LWLOCKS = pg_sys::GetNamedLWLockTranche(NAME.as_ptr());
        pg_sys::LWLockRelease(init_lock);
    }
}

fn shared() -> Option<&'static Header> {
    unsafe { SHARED.as_ref() }
}

pub fn is_shared() -> bool {
    shared().is_some()
}

/// Exclusive hold of one of our LWLocks, released on drop (also on unwinding).
struct Held(*mut pg_sys::LWLock);

impl Held {
    fn take(index: usize) -> Held {
        unsafe {
            let lock = &raw mut (*LWLOCKS.add(index)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            Held(lock)
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.0) }
    }
}

fn with_memo<R>(id: &[u8; 32], f: impl FnOnce(&mut [Slot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let n = header.memo_slots;
            let _held = Held::take(memo::bucket_index(n, id) % MEMO_LOCKS);
            // Safety: the slots follow the header; the stripe lock serialises access
            // to this bucket, the only part `f` touches.
            let slots = unsafe {
                std::slice::from_raw_parts_mut(
                    (SHARED as *mut u8).add(size_of::<Header>()).cast::<Slot>(),
                    n,
                )
            };
            f(slots)
        }
        None => LOCAL.with_borrow_mut(|l| f(&mut l.memo)),
    }
}

pub fn memo_lookup(id: &[u8; 32]) -> Option<Fact> {
    let found = with_memo(id, |slots| memo::lookup(slots, id));
    bump(|c| {
        if found.is_some() {
            &c.memo_hits
        } else {
            &c.memo_misses
        }
    });
    found
}

pub fn memo_remember(id: &[u8; 32], fact: Fact) {
    with_memo(id, |slots| memo::remember(slots, id, fact));
}

/// Run `f` over the argon2 budget: its slots and the server-wide allowance's state.
fn with_budget<R>(f: impl FnOnce(&mut [BudgetSlot], &mut i64) -> R) -> R {
    match shared() {
        Some(header) => {
            let _held = Held::take(BUDGET_LOCK);
            // Safety: the budget slots follow the memo; the budget lock serialises them.
            let slots = unsafe {
                std::slice::from_raw_parts_mut(
                    (SHARED as *mut u8)
                        .add(budget_offset(header.memo_slots))
                        .cast::<BudgetSlot>(),
                    BUDGET_SLOTS,
                )
            };
            let mut tat = header.after_failure_tat.load(Relaxed);
            let result = f(slots, &mut tat);
            header.after_failure_tat.store(tat, Relaxed);
            result
        }
        None => LOCAL.with_borrow_mut(|l| {
            let Local {
                budget,
                after_failure_tat,
                ..
            } = l;
            f(budget, after_failure_tat)
        }),
    }
}

/// Spend one argon2 computation for `prefix` (see `budget` for the two budgets).
pub fn spend_budget(prefix: &str) -> bool {
    let limits = budget::Limits {
        per_prefix_per_minute: gucs::ARGON2_BUDGET_PER_MINUTE.get().max(0) as u32,
        after_failure_per_second: gucs::ARGON2_AFTER_FAILURE_PER_SECOND.get().max(0) as u32,
    };
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let id = budget::prefix_id(prefix);
    let ok = with_budget(|slots, tat| budget::try_spend(slots, tat, id, now, limits));
    if !ok {
        bump(|c| &c.throttled);
    }
    ok
}

/// argon2 said a presented secret for `prefix` is wrong.
pub fn record_failure(prefix: &str) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let id = budget::prefix_id(prefix);
    with_budget(|slots, _| budget::record_failure(slots, id, now));
}

/// The per-key activity slots in shared memory.
///
/// Safety: the caller holds the key stripe lock of every bucket it touches.
unsafe fn shared_key_slots(header: &Header) -> &'static mut [KeySlot] {
    unsafe {
        std::slice::from_raw_parts_mut(
            (SHARED as *mut u8)
                .add(key_offset(header.memo_slots))
                .cast::<KeySlot>(),
            header.key_slots,
        )
    }
}

fn with_key<R>(key_id: &[u8; 16], f: impl FnOnce(&mut [KeySlot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let stripe = key_activity::bucket_index(header.key_slots, key_id) % KEY_LOCKS;
            let _held = Held::take(BUDGET_LOCK + 1 + stripe);
            f(unsafe { shared_key_slots(header) })
        }
        None => LOCAL.with_borrow_mut(|l| f(&mut l.keys)),
    }
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Is the key at or over one of its limits now?
pub fn rate_limited(key_id: &[u8; 16], limits: Limits) -> bool {
    with_key(key_id, |slots| {
        key_activity::is_over(slots, key_id, now(), limits)
    })
}

/// Count an otherwise valid call against the key's limits; false when over one.
pub fn admit(key_id: &[u8; 16], limits: Limits, ip: Option<std::net::IpAddr>) -> bool {
    let (admitted, evicted) = with_key(key_id, |slots| {
        key_activity::admit(slots, key_id, now(), limits, ip)
    });
    if evicted {
        bump(|c| &c.activity_evictions);
    }
    admitted
}

/// Count a rejected call of a known key in its usage.
pub fn record_rejected(key_id: &[u8; 16]) {
    if with_key(key_id, |slots| {
        key_activity::record_rejected(slots, key_id, now())
    }) {
        bump(|c| &c.activity_evictions);
    }
}

/// Take all unflushed usage out of shared memory, one stripe at a time.
pub fn drain_activity() -> (Vec<HourUsage>, Vec<LastUse>) {
    let (mut usage, mut last) = (Vec::new(), Vec::new());
    let Some(header) = shared() else {
        return (usage, last);
    };
    let buckets = header.key_slots.div_ceil(key_activity::WAYS);
    for stripe in 0..KEY_LOCKS {
        let _held = Held::take(BUDGET_LOCK + 1 + stripe);
        let slots = unsafe { shared_key_slots(header) };
        for bucket in (stripe..buckets).step_by(KEY_LOCKS) {
            let start = bucket * key_activity::WAYS;
            let end = (start + key_activity::WAYS).min(slots.len());
            key_activity::drain(&mut slots[start..end], &mut usage, &mut last);
        }
    }
    (usage, last)
}

/// The background worker finished a flush.
pub fn count_flush() {
    bump(|c| &c.flushes);
}

/// What an argon2 computation is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Argon2For {
    Verifying,
    /// Hashing a new secret (issue, rotate): yields to waiting verifications, so that
    /// issuing in bulk delays a verification by at most the hashes already running.
    Issuing,
}

/// How recently a verification must have waited for issuing to yield: a waiting one
/// looks again every millisecond.
const VERIFIER_WAITING_US: i64 = 10_000;

/// Run one argon2 computation, waiting while `api_keys.max_concurrent_argon2` others
/// run server-wide. Waiting sleeps on a condition variable, woken when a slot is given
/// back (verifications also every millisecond, to keep their claim fresh), and answers
/// cancel requests; the computation itself calls no Postgres function, so the slot is
/// always given back.
pub fn argon2<R>(purpose: Argon2For, compute: impl FnOnce() -> R) -> R {
    bump(|c| &c.argon2_runs);
    let Some(header) = shared() else {
        return compute();
    };
    let cap = gucs::MAX_CONCURRENT_ARGON2.get().max(1) as u32;
    let running = &header.argon2_running;
    let released = header.argon2_released.get();
    let mut slept = false;
    loop {
        let now = now();
        // A range, not a bound: a clock stepped back must not hold issuing up.
        let yields = purpose == Argon2For::Issuing
            && (0..VERIFIER_WAITING_US).contains(&(now - header.verifier_waiting_at.load(Relaxed)));
        if !yields
            && running
                .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
                .is_ok()
        {
            break;
        }
        let timeout_ms = match purpose {
            Argon2For::Verifying => {
                header.verifier_waiting_at.store(now, Relaxed);
                1
            }
            Argon2For::Issuing => 10,
        };
        // SAFETY: the condition variable lives in shared memory as long as the server;
        // the sleep answers interrupts, and an error ends it with the transaction.
        unsafe {
            pg_sys::ConditionVariableTimedSleep(released, timeout_ms, pg_sys::PG_WAIT_EXTENSION)
        };
        slept = true;
    }
    if slept {
        // SAFETY: ends this backend's sleep on the condition variable.
        unsafe { pg_sys::ConditionVariableCancelSleep() };
    }
    struct Release<'a>(&'a AtomicU32, *mut pg_sys::ConditionVariable);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
            // SAFETY: the shared condition variable; waking waiters raises no error.
            unsafe { pg_sys::ConditionVariableBroadcast(self.1) };
        }
    }
    let _release = Release(running, released);
    compute()
}

pub fn count(reason: Reason) {
    bump(|c| &c.by_reason[reason as usize]);
}

fn bump(which: impl Fn(&Counters) -> &AtomicU64) {
    match shared() {
        Some(header) => which(&header.counters).fetch_add(1, Relaxed),
        None => LOCAL.with_borrow(|l| which(&l.counters).fetch_add(1, Relaxed)),
    };
}

/// Every counter as (name, value), for api_keys.stats().
pub fn snapshot() -> Vec<(String, i64)> {
    let read = |c: &Counters| {
        let mut rows: Vec<(String, i64)> = Reason::ALL
            .iter()
            .map(|r| {
                (
                    format!("verify_{}", r.as_str()),
                    c.by_reason[*r as usize].load(Relaxed) as i64,
                )
            })
            .collect();
        rows.push(("memo_hits".into(), c.memo_hits.load(Relaxed) as i64));
        rows.push(("memo_misses".into(), c.memo_misses.load(Relaxed) as i64));
        rows.push(("argon2_runs".into(), c.argon2_runs.load(Relaxed) as i64));
        rows.push(("argon2_throttled".into(), c.throttled.load(Relaxed) as i64));
        rows.push((
            "activity_evictions".into(),
            c.activity_evictions.load(Relaxed) as i64,
        ));
        rows.push(("flushes".into(), c.flushes.load(Relaxed) as i64));
        rows
    };
    let mut rows = match shared() {
        Some(header) => read(&header.counters),
        None => LOCAL.with_borrow(|l| read(&l.counters)),
    };
    rows.push(("shared_memory".into(), is_shared() as i64));
    rows.push((
        "memo_capacity".into(),
        shared().map_or(LOCAL_MEMO_SLOTS, |h| h.memo_slots) as i64,
    ));
    rows.push((
        "tracked_keys_capacity".into(),
        shared().map_or(LOCAL_KEY_SLOTS, |h| h.key_slots) as i64,
    ));
    rows
}
