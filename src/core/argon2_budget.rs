//! Budgets for argon2 computations on presentations the memo does not know:
//!
//! - per prefix, per clock minute (`argon2_budget_per_minute`), so a flood of wrong
//!   secrets against one real prefix costs at most that many hashes a minute;
//! - server-wide, for prefixes that have seen a wrong secret in the last
//!   `SUSPECT_MINUTES` (`argon2_after_failure_per_second`), so a flood spread over many
//!   real prefixes costs a bounded number of hashes a second, not prefixes × budget.
//!   A prefix with no recent failure (a legitimate key verified for the first time)
//!   never waits on the server-wide allowance.
//!
//! Slots live in buckets of `WAYS` over a plain slice (shared or backend-local memory).
//! Pure: no pgrx; the caller does the locking.

use sha2::{Digest, Sha256};

const WAYS: usize = 4;
/// How long a wrong secret marks its prefix as under attack.
pub(crate) const SUSPECT_MINUTES: u32 = 10;
const MICROS_PER_MINUTE: i64 = 60_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BudgetSlot {
    prefix_id: u64,
    minute: u32,
    spent: u32,
    /// The prefix is suspect until this minute (exclusive); 0 = never failed.
    suspect_until: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Per prefix per minute; 0 = unlimited.
    pub(crate) per_prefix_per_minute: u32,
    /// Server-wide per second, for suspect prefixes; 0 = unlimited.
    pub(crate) after_failure_per_second: u32,
}

pub(crate) fn prefix_id(prefix: &str) -> u64 {
    let digest = Sha256::digest(prefix.as_bytes());
    // 0 marks an empty slot.
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

fn minute_of(now_us: i64) -> u32 {
    (now_us.max(0) / MICROS_PER_MINUTE) as u32
}

/// The slot of `prefix_id`, claimed if absent. Reuses, in order: the prefix's own
/// slot, a slot with neither a live window nor suspicion, a slot whose window is over,
/// the slot that spent least. Forgetting a prefix only ever gives it a fresh budget.
fn slot(slots: &mut [BudgetSlot], prefix_id: u64, minute: u32) -> &mut BudgetSlot {
    let buckets = (slots.len() / WAYS).max(1);
    let start = (prefix_id as usize % buckets) * WAYS;
    let end = (start + WAYS).min(slots.len());
    let bucket = &mut slots[start..end];
    let i = bucket
        .iter()
        .position(|s| s.prefix_id == prefix_id)
        .or_else(|| {
            bucket
                .iter()
                .position(|s| s.minute != minute && s.suspect_until <= minute)
        })
        .or_else(|| bucket.iter().position(|s| s.minute != minute))
        .unwrap_or_else(|| {
            (0..bucket.len())
                .min_by_key(|&i| bucket[i].spent)
                .unwrap_or(0)
        });
    let slot = &mut bucket[i];
    if slot.prefix_id != prefix_id {
        *slot = BudgetSlot {
            prefix_id,
            minute,
            spent: 0,
            suspect_until: 0,
        };
    }
    if slot.minute != minute {
        slot.minute = minute;
        slot.spent = 0;
    }
    slot
}

/// GCRA over one "theoretical arrival time": `per_second` a second, bursts of up to
/// `per_second`. 0 = unlimited.
fn gcra_take(tat_us: &mut i64, now_us: i64, per_second: u32) -> bool {
    if per_second == 0 {
        return true;
    }
    let interval = 1_000_000 / i64::from(per_second);
    let tolerance = interval * (i64::from(per_second) - 1);
    let tat = (*tat_us).max(now_us);
    if tat - now_us > tolerance {
        return false;
    }
    *tat_us = tat + interval;
    true
}

/// Spend one argon2 computation for `prefix_id` at `now_us` (microseconds); false when
/// a budget says no. `tat_us` is the server-wide allowance's state.
pub(crate) fn try_spend(
    slots: &mut [BudgetSlot],
    tat_us: &mut i64,
    prefix_id: u64,
    now_us: i64,
    limits: Limits,
) -> bool {
    if slots.is_empty() {
        return true;
    }
    let minute = minute_of(now_us);
    let slot = slot(slots, prefix_id, minute);
    let per_prefix = limits.per_prefix_per_minute;
    if per_prefix != 0 && slot.spent >= per_prefix {
        return false;
    }
    if slot.suspect_until > minute && !gcra_take(tat_us, now_us, limits.after_failure_per_second) {
        return false;
    }
    slot.spent += 1;
    true
}

/// A wrong secret was presented for `prefix_id`: it is suspect for a while.
pub(crate) fn record_failure(slots: &mut [BudgetSlot], prefix_id: u64, now_us: i64) {
    if slots.is_empty() {
        return;
    }
    let minute = minute_of(now_us);
    slot(slots, prefix_id, minute).suspect_until = minute + SUSPECT_MINUTES;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const LIMITS: Limits = Limits {
        per_prefix_per_minute: 5,
        after_failure_per_second: 2,
    };

    #[test]
    fn budget_per_prefix_per_minute() {
        let mut slots = vec![BudgetSlot::default(); 64];
        let mut tat = 0;
        let a = prefix_id("ak_live_aaaaaaaaaaaa");
        let b = prefix_id("ak_live_bbbbbbbbbbbb");
        let t = 7 * MIN;
        assert!((0..5).all(|_| try_spend(&mut slots, &mut tat, a, t, LIMITS)));
        assert!(!try_spend(&mut slots, &mut tat, a, t, LIMITS));
        assert!(
            try_spend(&mut slots, &mut tat, b, t, LIMITS),
            "other prefixes are unaffected"
        );
        assert!(
            try_spend(&mut slots, &mut tat, a, t + MIN, LIMITS),
            "a new minute brings a new budget"
        );
    }

    #[test]
    fn suspect_prefixes_share_a_server_wide_allowance() {
        let mut slots = vec![BudgetSlot::default(); 4096];
        let mut tat = 0;
        let t = 100 * MIN;
        let prefixes: Vec<u64> = (0..200).map(|i| prefix_id(&format!("p{i}"))).collect();
        // Every prefix's first failure is hashed: nothing is suspect yet.
        for p in &prefixes {
            assert!(try_spend(&mut slots, &mut tat, *p, t, LIMITS));
            record_failure(&mut slots, *p, t);
        }
        // Afterwards the whole flood gets 2 a second (a burst of 2), not 200 × 4.
        let granted = (0..10_000)
            .filter(|i| {
                let now = t + i64::from(*i) * 100; // 10,000 tries over one second
                try_spend(
                    &mut slots,
                    &mut tat,
                    prefixes[*i as usize % 200],
                    now,
                    LIMITS,
                )
            })
            .count();
        assert!((2..=4).contains(&granted), "{granted}");
        // A prefix that never failed is not held back by the flood.
        let fresh = prefix_id("fresh");
        assert!(try_spend(&mut slots, &mut tat, fresh, t + 500_000, LIMITS));
        // Suspicion ends after SUSPECT_MINUTES without failures.
        let later = t + i64::from(SUSPECT_MINUTES) * MIN;
        assert!((0..5).all(|_| try_spend(&mut slots, &mut tat, prefixes[0], later, LIMITS)));
    }

    #[test]
    fn zero_is_unlimited() {
        let mut slots = vec![BudgetSlot::default(); 4];
        let mut tat = 0;
        let unlimited = Limits {
            per_prefix_per_minute: 0,
            after_failure_per_second: 0,
        };
        record_failure(&mut slots, 42, MIN);
        assert!((0..1000).all(|_| try_spend(&mut slots, &mut tat, 42, MIN, unlimited)));
    }

    #[test]
    fn gcra_rate_and_burst() {
        let mut tat = 0;
        let t = 10_000_000;
        assert!((0..3).all(|_| gcra_take(&mut tat, t, 3)), "burst of 3");
        assert!(!gcra_take(&mut tat, t, 3));
        assert!(
            gcra_take(&mut tat, t + 333_334, 3),
            "one more a third of a second later"
        );
        assert!(!gcra_take(&mut tat, t + 333_334, 3));
    }

    #[test]
    fn ids_are_never_zero() {
        assert_ne!(prefix_id(""), 0);
    }
}
