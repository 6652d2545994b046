//! Budgets for argon2 computations on presentations the memo does not know:
//!
//! - per key (its prefix), per clock minute (`argon2_budget_per_minute`), so a flood of
//!   wrong secrets against one real prefix costs at most that many hashes a minute;
//! - server-wide, for prefixes that have seen a wrong secret in the last
//!   `SUSPECT_MINUTES` (`argon2_after_failure_per_second`), so a flood spread over many
//!   real prefixes costs a bounded number of hashes a second, not prefixes × budget.
//!   A prefix with no recent failure (a legitimate key verified for the first time)
//!   never waits on the server-wide allowance.
//!
//! One `Budget` per key (a prefix names exactly one key row), kept with the key's other
//! state; the server-wide allowance is one GCRA state. Pure: no pgrx; the caller does
//! the locking.

/// How long a wrong secret marks its prefix as under attack.
pub(crate) const SUSPECT_MINUTES: u32 = 10;
const MICROS_PER_MINUTE: i64 = 60_000_000;

/// One key's argon2 budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Budget {
    minute: u32,
    spent: u32,
    /// The key is suspect until this minute (exclusive); 0 = never failed.
    suspect_until: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Per prefix per minute; 0 = unlimited.
    pub(crate) per_prefix_per_minute: u32,
    /// Server-wide per second, for suspect prefixes; 0 = unlimited.
    pub(crate) after_failure_per_second: u32,
}

fn minute_of(now_us: i64) -> u32 {
    (now_us.max(0) / MICROS_PER_MINUTE) as u32
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

impl Budget {
    /// Spend one argon2 computation at `now_us` (microseconds); false when a budget
    /// says no. `take_allowance` takes from the server-wide allowance (GCRA), asked
    /// only for a suspect key.
    pub(crate) fn try_spend(
        &mut self,
        now_us: i64,
        per_prefix_per_minute: u32,
        take_allowance: impl FnOnce() -> bool,
    ) -> bool {
        let minute = minute_of(now_us);
        if self.minute != minute {
            self.minute = minute;
            self.spent = 0;
        }
        if per_prefix_per_minute != 0 && self.spent >= per_prefix_per_minute {
            return false;
        }
        if self.suspect_until > minute && !take_allowance() {
            return false;
        }
        self.spent += 1;
        true
    }

    /// A wrong secret was presented for this key: it is suspect for a while.
    pub(crate) fn record_failure(&mut self, now_us: i64) {
        self.suspect_until = minute_of(now_us) + SUSPECT_MINUTES;
    }

    /// Still suspect, or with a budget spent this minute: forgetting it would change
    /// what it allows.
    pub(crate) fn is_live(&self, now_us: i64) -> bool {
        let minute = minute_of(now_us);
        self.suspect_until > minute || (self.minute == minute && self.spent > 0)
    }
}

/// Take one from the server-wide allowance kept in `tat_us` (see `gcra_take`).
pub(crate) fn take_allowance(tat_us: &mut i64, now_us: i64, limits: Limits) -> bool {
    gcra_take(tat_us, now_us, limits.after_failure_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const LIMITS: Limits = Limits {
        per_prefix_per_minute: 5,
        after_failure_per_second: 2,
    };

    fn spend(b: &mut Budget, tat: &mut i64, now: i64) -> bool {
        b.try_spend(now, LIMITS.per_prefix_per_minute, || {
            take_allowance(tat, now, LIMITS)
        })
    }

    #[test]
    fn budget_per_key_per_minute() {
        let (mut a, mut b) = (Budget::default(), Budget::default());
        let mut tat = 0;
        let t = 7 * MIN;
        assert!((0..5).all(|_| spend(&mut a, &mut tat, t)));
        assert!(!spend(&mut a, &mut tat, t));
        assert!(spend(&mut b, &mut tat, t), "other keys are unaffected");
        assert!(
            spend(&mut a, &mut tat, t + MIN),
            "a new minute brings a new budget"
        );
    }

    #[test]
    fn suspect_keys_share_a_server_wide_allowance() {
        let mut keys = vec![Budget::default(); 200];
        let mut tat = 0;
        let t = 100 * MIN;
        // Every key's first failure is hashed: nothing is suspect yet.
        for k in &mut keys {
            assert!(spend(k, &mut tat, t));
            k.record_failure(t);
        }
        // Afterwards the whole flood gets 2 a second (a burst of 2), not 200 × 4.
        let granted = (0..10_000)
            .filter(|i| {
                let now = t + i64::from(*i) * 100; // 10,000 tries over one second
                spend(&mut keys[*i as usize % 200], &mut tat, now)
            })
            .count();
        assert!((2..=4).contains(&granted), "{granted}");
        // A key that never failed is not held back by the flood.
        assert!(spend(&mut Budget::default(), &mut tat, t + 500_000));
        // Suspicion ends after SUSPECT_MINUTES without failures.
        let later = t + i64::from(SUSPECT_MINUTES) * MIN;
        assert!(keys[0].is_live(later - 1));
        assert!(!keys[0].is_live(later));
        assert!((0..5).all(|_| spend(&mut keys[0], &mut tat, later)));
    }

    #[test]
    fn zero_is_unlimited() {
        let mut b = Budget::default();
        let mut tat = 0;
        let unlimited = Limits {
            per_prefix_per_minute: 0,
            after_failure_per_second: 0,
        };
        b.record_failure(MIN);
        assert!((0..1000).all(|_| b.try_spend(MIN, 0, || take_allowance(&mut tat, MIN, unlimited))));
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
}
