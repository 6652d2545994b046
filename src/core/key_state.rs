//! Everything the server keeps about one key between calls: its rate windows and
//! unflushed usage (`rate_limit`), its argon2 budget (`argon2_budget`) and the one
//! presentation known to match its stored hash. One entry per key that was presented,
//! kept until it is idle, so nothing in it is ever forgotten while it can change an
//! answer. Pure: no pgrx; the caller finds the entry and locks it.

use subtle::ConstantTimeEq;

use crate::core::argon2_budget::Budget;
use crate::core::rate_limit::{Activity, OwnerWindows};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyState {
    pub(crate) activity: Activity,
    pub(crate) budget: Budget,
    /// In an owner's entry (`owner_entry_id`), the windows its keys share.
    pub(crate) owner: OwnerWindows,
    /// The memo fact (`memo::fact_id`) of the last presentation argon2 accepted; all
    /// zero: none. A hash change (rotation) changes every fact, so a stale one never
    /// matches.
    matched: [u8; 32],
    /// The minute (since 2000) the worker last logged that it could not mark this key
    /// expired; 0: never.
    expiry_reported_minute: u32,
}

const MICROS_PER_MINUTE: i64 = 60_000_000;

fn minute_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_MINUTE) as u32
}

/// The entry an owner's shared windows live in, beside its keys' entries: a digest of
/// the owner's name (a key's entry is named by its uuid; 128 bits apart).
pub(crate) fn owner_entry_id(owner: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"api_keys owner\0")
        .chain_update(owner)
        .finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

impl KeyState {
    /// Did argon2 already accept exactly this presentation against this hash?
    pub(crate) fn knows_match(&self, fact: &[u8; 32]) -> bool {
        self.matched != [0; 32] && bool::from(self.matched.ct_eq(fact))
    }

    pub(crate) fn remember_match(&mut self, fact: &[u8; 32]) {
        self.matched = *fact;
    }

    /// True when expiring the key failed and that was not logged in the last hour.
    pub(crate) fn first_expiry_failure(&mut self, now: i64) -> bool {
        let minute = minute_of(now);
        if self.expiry_reported_minute != 0
            && minute.saturating_sub(self.expiry_reported_minute) < 60
        {
            return false;
        }
        self.expiry_reported_minute = minute.max(1);
        true
    }

    /// Safe to drop at `now`: nothing to write, no live window, budget or suspicion.
    /// Dropping it costs the key one argon2 computation at its next presentation.
    pub(crate) fn is_idle(&self, now: i64) -> bool {
        self.activity.is_idle(now)
            && self.owner.is_idle(now)
            && !self.budget.is_live(now)
            && minute_of(now).saturating_sub(self.expiry_reported_minute) > 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rate_limit::Limits;

    #[test]
    fn remembers_one_matching_presentation() {
        let mut s = KeyState::default();
        assert!(!s.knows_match(&[0; 32]), "an empty entry knows nothing");
        s.remember_match(&[7; 32]);
        assert!(s.knows_match(&[7; 32]));
        assert!(!s.knows_match(&[8; 32]));
    }

    #[test]
    fn an_expiry_failure_is_reported_once_an_hour_and_keeps_the_state() {
        const MIN: i64 = MICROS_PER_MINUTE;
        let mut s = KeyState::default();
        let t = 1000 * 60 * MIN;
        assert!(s.first_expiry_failure(t));
        assert!(!s.first_expiry_failure(t + MIN));
        assert!(
            !s.is_idle(t + 59 * MIN),
            "kept, so the next round stays quiet"
        );
        assert!(s.first_expiry_failure(t + 60 * MIN), "again an hour later");
        assert!(s.is_idle(t + 122 * MIN));
    }

    #[test]
    fn a_suspect_key_is_not_idle() {
        const HOUR: i64 = 3_600_000_000;
        let mut s = KeyState::default();
        let t = 50 * HOUR;
        s.activity.record_rejected(t, 2);
        let copy = s.activity.unflushed(t).unwrap();
        s.activity.mark_written(&copy);
        s.budget.record_failure(t + 55 * 60_000_000);
        assert!(!s.is_idle(t + 62 * 60_000_000), "suspect for 10 minutes");
        assert!(s.is_idle(t + 66 * 60_000_000));
        let mut fresh = KeyState::default();
        let (admitted, _) = fresh.activity.admit(t, Limits::UNLIMITED, None, None);
        assert_eq!(admitted, crate::core::rate_limit::Admission::Admitted);
        assert!(!fresh.is_idle(t + 3 * HOUR), "unwritten usage");
    }
}
