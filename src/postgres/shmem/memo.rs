//! The verification memo: a key's known-good presentation lives in its state
//! (`key_state`), never evicted while the key is in use; wrong presentations go to the
//! bounded memo of `core::memo` in the fixed segment, striped over MEMO_LOCKS (losing
//! one of those costs an argon2 computation within the key's budget, nothing more).

use std::mem::size_of;

use super::counters::bump;
use super::key_state::with_key;
use super::{memo_lock, shared, shared_slots, Header, Held, LOCAL};
use crate::core::memo::{self, Fact, Slot};

/// Run `f` over the bucket `id` lives in (`core::memo` takes one bucket as a table of
/// one), under that bucket's stripe lock.
fn with_memo<R>(id: &[u8; 32], f: impl FnOnce(&mut [Slot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let n = header.memo_slots;
            let mut held = Held::take(header, memo_lock(memo::bucket_index(n, id)));
            // SAFETY: the memo slots follow the header; the bucket's stripe lock is held
            // for as long as the slice lives.
            let bucket = unsafe {
                shared_slots::<Slot>(&mut held, size_of::<Header>(), memo::bucket(n, id))
            };
            f(bucket)
        }
        None => LOCAL.with_borrow_mut(|l| f(&mut l.memo)),
    }
}

pub(crate) fn memo_lookup(key_id: &[u8; 16], id: &[u8; 32]) -> Option<Fact> {
    let found = if with_key(key_id, |s| s.knows_match(id)) {
        Some(Fact::Matches)
    } else {
        with_memo(id, |slots| memo::lookup(slots, id))
    };
    bump(|c| {
        if found.is_some() {
            &c.memo_hits
        } else {
            &c.memo_misses
        }
    });
    found
}

pub(crate) fn memo_remember(key_id: &[u8; 16], id: &[u8; 32], fact: Fact) {
    match fact {
        Fact::Matches => with_key(key_id, |s| s.remember_match(id)),
        Fact::DoesNotMatch => with_memo(id, |slots| memo::remember(slots, id, fact)),
    }
}
