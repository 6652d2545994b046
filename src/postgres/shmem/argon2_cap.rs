//! The server-wide cap on concurrent argon2 computations (`api_keys.max_concurrent_argon2`),
//! with verifications served before issues.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};

use pgrx::pg_sys;

use super::counters::bump;
use super::{now, shared};
use crate::postgres::gucs;

/// The cap's state in shared memory.
#[repr(C)]
pub(super) struct Argon2Cap {
    running: AtomicU32,
    /// Broadcast when a slot is given back; waiters sleep on it.
    released: UnsafeCell<pg_sys::ConditionVariable>,
    /// When a verification last waited for a slot (µs): issuing yields to it.
    verifier_waiting_at: AtomicI64,
}

impl Argon2Cap {
    /// # Safety
    /// Once, on the zeroed shared segment, before any backend uses it.
    pub(super) unsafe fn init(&self) {
        // SAFETY: as the function's contract says; nobody sleeps on it yet.
        unsafe { pg_sys::ConditionVariableInit(self.released.get()) }
    }
}

/// What an argon2 computation is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Argon2For {
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
pub(crate) fn argon2<R>(purpose: Argon2For, compute: impl FnOnce() -> R) -> R {
    bump(|c| &c.argon2_runs);
    let Some(header) = shared() else {
        return compute();
    };
    let cap = gucs::MAX_CONCURRENT_ARGON2.get().max(1) as u32;
    let cap_state = &header.argon2_cap;
    let running = &cap_state.running;
    let released = cap_state.released.get();
    let mut slept = false;
    loop {
        let now = now();
        // A range, not a bound: a clock stepped back must not hold issuing up.
        let yields = purpose == Argon2For::Issuing
            && (0..VERIFIER_WAITING_US)
                .contains(&(now - cap_state.verifier_waiting_at.load(Relaxed)));
        if !yields
            && running
                .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
                .is_ok()
        {
            break;
        }
        let timeout_ms = match purpose {
            Argon2For::Verifying => {
                cap_state.verifier_waiting_at.store(now, Relaxed);
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
