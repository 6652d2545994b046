//! The argon2 budgets in shared memory (`core::argon2_budget`), under one lock.

use std::sync::atomic::Ordering::Relaxed;

use super::counters::bump;
use super::{
    budget_offset, now, shared, shared_slots, Held, Local, BUDGET_LOCK, BUDGET_SLOTS, LOCAL,
};
use crate::core::argon2_budget::{self, BudgetSlot};
use crate::postgres::gucs;

/// Run `f` over the argon2 budget: its slots and the server-wide allowance's state.
fn with_budget<R>(f: impl FnOnce(&mut [BudgetSlot], &mut i64) -> R) -> R {
    match shared() {
        Some(header) => {
            let _held = Held::take(BUDGET_LOCK);
            // SAFETY: the budget slots follow the memo; the budget lock serialises them.
            let slots = unsafe {
                shared_slots::<BudgetSlot>(budget_offset(header.memo_slots), BUDGET_SLOTS)
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
