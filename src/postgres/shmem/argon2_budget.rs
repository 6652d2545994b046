//! The argon2 budgets in shared memory (`core::argon2_budget`), under one lock.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use super::counters::bump;
use super::{
    budget_offset, now, shared, shared_slots, Held, Local, BUDGET_LOCK, BUDGET_SLOTS, LOCAL,
};
use crate::core::argon2_budget::{self, BudgetSlot};
use crate::postgres::gucs;

/// The server-wide allowance of `core::argon2_budget` for prefixes that saw a wrong
/// secret (GCRA state); guarded by the budget lock with the budget slots.
#[repr(C)]
#[derive(Default)]
pub(super) struct Allowance {
    theoretical_arrival: AtomicI64,
}

/// Run `f` over the argon2 budget: its slots and the server-wide allowance's state.
fn with_budget<R>(f: impl FnOnce(&mut [BudgetSlot], &mut i64) -> R) -> R {
    match shared() {
        Some(header) => {
            let mut held = Held::take(header, BUDGET_LOCK);
            // SAFETY: the budget slots follow the memo; the budget lock, held for as long
            // as the slice lives, serialises them all.
            let slots = unsafe {
                shared_slots::<BudgetSlot>(
                    &mut held,
                    budget_offset(header.memo_slots),
                    0..BUDGET_SLOTS,
                )
            };
            let allowance = &header.argon2_allowance.theoretical_arrival;
            let mut tat = allowance.load(Relaxed);
            let result = f(slots, &mut tat);
            allowance.store(tat, Relaxed);
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

/// Spend one argon2 computation for `prefix` (see `core::argon2_budget` for the two
/// budgets).
pub(crate) fn spend_budget(prefix: &str) -> bool {
    let limits = argon2_budget::Limits {
        per_prefix_per_minute: gucs::ARGON2_BUDGET_PER_MINUTE.get().max(0) as u32,
        after_failure_per_second: gucs::ARGON2_AFTER_FAILURE_PER_SECOND.get().max(0) as u32,
    };
    let now = now();
    let id = argon2_budget::prefix_id(prefix);
    let ok = with_budget(|slots, tat| argon2_budget::try_spend(slots, tat, id, now, limits));
    if !ok {
        bump(|c| &c.throttled);
    }
    ok
}

/// argon2 said a presented secret for `prefix` is wrong.
pub(crate) fn record_failure(prefix: &str) {
    let now = now();
    let id = argon2_budget::prefix_id(prefix);
    with_budget(|slots, _| argon2_budget::record_failure(slots, id, now));
}
