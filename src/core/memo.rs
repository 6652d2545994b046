//! The verification memo: a bounded set of immutable facts "this exact presented key
//! does / does not match this exact stored hash". The fact's identity is
//! SHA-256(hash ‖ 0 ‖ key), so a changed hash (rotation) can never hit an old fact, and
//! nothing here needs invalidation: status, expiry, CIDRs and scopes are read from the
//! row on every call.
//!
//! Layout: buckets of `WAYS` slots over a plain slice, so the same code runs over
//! shared memory (preloaded) or a backend-local Vec (not preloaded). Eviction is CLOCK
//! within a bucket. Pure: no pgrx; the caller does the locking.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) const WAYS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    digest: [u8; 32],
    /// 0 empty, 1 matches, 2 does not match.
    state: u8,
    /// CLOCK's second-chance bit.
    referenced: u8,
}

const EMPTY: u8 = 0;
const MATCHES: u8 = 1;
const MISMATCH: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fact {
    Matches,
    DoesNotMatch,
}

/// The identity of "this key against this hash".
pub(crate) fn fact_id(secret_hash: &str, presented_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret_hash.as_bytes());
    h.update([0u8]);
    h.update(presented_key);
    h.finalize().into()
}

/// Which bucket `id` lives in: callers lock by it.
pub(crate) fn bucket_index(slots_len: usize, id: &[u8; 32]) -> usize {
    let buckets = (slots_len / WAYS).max(1);
    u64::from_le_bytes(id[..8].try_into().expect("8 bytes")) as usize % buckets
}

/// The slots of `id`'s bucket. `lookup` and `remember` take the whole table or just
/// this bucket (a table of one bucket), so a caller may lend out only what it locked.
pub(crate) fn bucket(slots_len: usize, id: &[u8; 32]) -> std::ops::Range<usize> {
    let start = bucket_index(slots_len, id) * WAYS;
    start..(start + WAYS).min(slots_len)
}

pub(crate) fn lookup(slots: &mut [Slot], id: &[u8; 32]) -> Option<Fact> {
    if slots.is_empty() {
        return None;
    }
    let range = bucket(slots.len(), id);
    for slot in &mut slots[range] {
        if slot.state != EMPTY && bool::from(slot.digest.ct_eq(id)) {
            slot.referenced = 1;
            return Some(if slot.state == MATCHES {
                Fact::Matches
            } else {
                Fact::DoesNotMatch
            });
        }
    }
    None
}

pub(crate) fn remember(slots: &mut [Slot], id: &[u8; 32], fact: Fact) {
    if slots.is_empty() {
        return;
    }
    let range = bucket(slots.len(), id);
    let state = match fact {
        Fact::Matches => MATCHES,
        Fact::DoesNotMatch => MISMATCH,
    };
    let bucket = &mut slots[range];
    // Already known (another backend raced us), or a free slot.
    let target = bucket
        .iter()
        .position(|s| s.state != EMPTY && s.digest == *id)
        .or_else(|| bucket.iter().position(|s| s.state == EMPTY))
        .unwrap_or_else(|| victim(bucket));
    bucket[target] = Slot {
        digest: *id,
        state,
        referenced: 1,
    };
}

/// Failures are evicted before working keys, so a flood of wrong secrets cannot push
/// out keys in use; within each kind, CLOCK picks the first slot without its second
/// chance, clearing chances on the way.
fn victim(bucket: &mut [Slot]) -> usize {
    clock(bucket, MISMATCH)
        .or_else(|| clock(bucket, MATCHES))
        .unwrap_or(0)
}

fn clock(bucket: &mut [Slot], state: u8) -> Option<usize> {
    let mut first = None;
    for (i, slot) in bucket.iter_mut().enumerate() {
        if slot.state != state {
            continue;
        }
        if slot.referenced == 0 {
            return Some(i);
        }
        slot.referenced = 0;
        first.get_or_insert(i);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_lent_alone_is_the_same_table() {
        let mut table = vec![Slot::default(); 64];
        let (a, b) = (id(3), id(4));
        let range = bucket(table.len(), &a);
        remember(&mut table[range.clone()], &a, Fact::Matches);
        assert_eq!(lookup(&mut table, &a), Some(Fact::Matches));
        remember(&mut table, &b, Fact::DoesNotMatch);
        let range_b = bucket(table.len(), &b);
        assert_eq!(lookup(&mut table[range_b], &b), Some(Fact::DoesNotMatch));
        assert_eq!(lookup(&mut table[range], &a), Some(Fact::Matches));
    }

    fn id(n: u32) -> [u8; 32] {
        fact_id("$argon2id$x", &n.to_le_bytes())
    }

    #[test]
    fn remembers_both_kinds_of_fact() {
        let mut slots = vec![Slot::default(); 64];
        assert_eq!(lookup(&mut slots, &id(1)), None);
        remember(&mut slots, &id(1), Fact::Matches);
        remember(&mut slots, &id(2), Fact::DoesNotMatch);
        assert_eq!(lookup(&mut slots, &id(1)), Some(Fact::Matches));
        assert_eq!(lookup(&mut slots, &id(2)), Some(Fact::DoesNotMatch));
    }

    #[test]
    fn the_hash_is_part_of_the_fact() {
        let mut slots = vec![Slot::default(); 64];
        remember(&mut slots, &fact_id("hash-a", b"key"), Fact::Matches);
        assert_eq!(lookup(&mut slots, &fact_id("hash-b", b"key")), None);
        // No ambiguity between (hash, key) splits.
        assert_ne!(fact_id("ab", b"c"), fact_id("a", b"bc"));
    }

    #[test]
    fn bounded_and_keeps_recently_used_working_keys_under_a_flood() {
        let mut slots = vec![Slot::default(); 8 * 16];
        let good: Vec<_> = (0..16).map(id).collect();
        for g in &good {
            remember(&mut slots, g, Fact::Matches);
        }
        for n in 1000..101_000 {
            remember(&mut slots, &id(n), Fact::DoesNotMatch);
            if n % 50 == 0 {
                for g in &good {
                    lookup(&mut slots, g);
                }
            }
        }
        let kept = good
            .iter()
            .filter(|g| lookup(&mut slots, g) == Some(Fact::Matches))
            .count();
        assert_eq!(kept, good.len(), "a flood of failures evicted working keys");
        assert_eq!(slots.len(), 128);
    }

    #[test]
    fn an_empty_memo_remembers_nothing() {
        let mut slots: Vec<Slot> = Vec::new();
        remember(&mut slots, &id(1), Fact::Matches);
        assert_eq!(lookup(&mut slots, &id(1)), None);
    }
}
