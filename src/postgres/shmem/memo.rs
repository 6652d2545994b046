//! The verification memo in shared memory (`core::memo`), striped over MEMO_LOCKS.

use std::mem::size_of;

use super::counters::bump;
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

pub(crate) fn memo_lookup(id: &[u8; 32]) -> Option<Fact> {
    let found = with_memo(id, |slots| memo::lookup(slots, id));
    bump(|c| {
        if found.is_some() {
            &c.memo_hits
        } else {
            &c.memo_misses
        }
    });
    found
}

pub(crate) fn memo_remember(id: &[u8; 32], fact: Fact) {
    with_memo(id, |slots| memo::remember(slots, id, fact));
}
