//! The argon2 budgets (`core::argon2_budget`): each key's in its state, and the
//! server-wide allowance for suspect keys in the fixed segment.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;

use super::counters::bump;
use super::key_state::with_key;
use super::{now, shared};
use crate::core::argon2_budget::{self, Limits};
use crate::postgres::gucs;

thread_local! {
    /// Without shared memory: the session's allowance.
    static LOCAL_ALLOWANCE: Cell<i64> = const { Cell::new(0) };
}

/// Take one from the server-wide allowance (GCRA over one shared value, updated with
/// compare-and-swap).
fn take_allowance(now: i64, limits: Limits) -> bool {
    match shared() {
        Some(header) => {
            let tat = &header.argon2_allowance;
            let mut seen = tat.load(Relaxed);
            loop {
                let mut next = seen;
                if !argon2_budget::take_allowance(&mut next, now, limits) {
                    return false;
                }
                match tat.compare_exchange_weak(seen, next, Relaxed, Relaxed) {
                    Ok(_) => return true,
                    Err(current) => seen = current,
                }
            }
        }
        None => LOCAL_ALLOWANCE.with(|tat| {
            let mut next = tat.get();
            let taken = argon2_budget::take_allowance(&mut next, now, limits);
            tat.set(next);
            taken
        }),
    }
}

/// Spend one argon2 computation for the key (see `core::argon2_budget` for the two
/// budgets).
pub(crate) fn spend_budget(key_id: &[u8; 16]) -> bool {
    let limits = Limits {
        per_prefix_per_minute: gucs::ARGON2_BUDGET_PER_MINUTE.get().max(0) as u32,
        after_failure_per_second: gucs::ARGON2_AFTER_FAILURE_PER_SECOND.get().max(0) as u32,
    };
    let now = now();
    let ok = with_key(key_id, |s| {
        s.budget.try_spend(now, limits.per_prefix_per_minute, || {
            take_allowance(now, limits)
        })
    });
    if !ok {
        bump(|c| &c.throttled);
    }
    ok
}

/// argon2 said a presented secret for the key is wrong.
pub(crate) fn record_failure(key_id: &[u8; 16]) {
    let now = now();
    with_key(key_id, |s| s.budget.record_failure(now));
}
