//! Per-prefix budget of argon2 computations per minute, so a flood of wrong secrets
//! against one real prefix costs at most `budget` hashes a minute. Fixed one-minute
//! windows; buckets of `WAYS` slots over a plain slice (shared or backend-local memory).
//! Pure: no pgrx; the caller does the locking.

use sha2::{Digest, Sha256};

const WAYS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetSlot {
    prefix_id: u64,
    minute: u32,
    spent: u32,
}

pub fn prefix_id(prefix: &str) -> u64 {
    let digest = Sha256::digest(prefix.as_bytes());
    // 0 marks an empty slot.
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

/// Spend one argon2 computation for `prefix` in minute `minute`; false when the
/// prefix has used up `budget` this minute. A budget of 0 means unlimited.
pub fn try_spend(slots: &mut [BudgetSlot], prefix_id: u64, minute: u32, budget: u32) -> bool {
    if budget == 0 || slots.is_empty() {
        return true;
    }
    let buckets = (slots.len() / WAYS).max(1);
    let start = (prefix_id as usize % buckets) * WAYS;
    let end = (start + WAYS).min(slots.len());
    let bucket = &mut slots[start..end];
    let i = bucket
        .iter()
        .position(|s| s.prefix_id == prefix_id)
        // Reuse a slot whose window is over, else the oldest: forgetting a prefix only
        // ever gives it a fresh budget, never takes one away.
        .or_else(|| bucket.iter().position(|s| s.minute != minute))
        .unwrap_or_else(|| {
            (0..bucket.len())
                .min_by_key(|&i| bucket[i].spent)
                .unwrap_or(0)
        });
    let slot = &mut bucket[i];
    if slot.prefix_id != prefix_id || slot.minute != minute {
        *slot = BudgetSlot {
            prefix_id,
            minute,
            spent: 0,
        };
    }
    if slot.spent >= budget {
        return false;
    }
    slot.spent += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_prefix_per_minute() {
        let mut slots = vec![BudgetSlot::default(); 64];
        let a = prefix_id("ak_live_aaaaaaaaaaaa");
        let b = prefix_id("ak_live_bbbbbbbbbbbb");
        assert!((0..5).all(|_| try_spend(&mut slots, a, 7, 5)));
        assert!(!try_spend(&mut slots, a, 7, 5));
        assert!(
            try_spend(&mut slots, b, 7, 5),
            "other prefixes are unaffected"
        );
        assert!(
            try_spend(&mut slots, a, 8, 5),
            "a new minute brings a new budget"
        );
    }

    #[test]
    fn zero_is_unlimited() {
        let mut slots = vec![BudgetSlot::default(); 4];
        assert!((0..1000).all(|_| try_spend(&mut slots, 42, 1, 0)));
    }

    #[test]
    fn ids_are_never_zero() {
        assert_ne!(prefix_id(""), 0);
    }
}
