//! The verification memo in shared memory (`core::memo`), striped over MEMO_LOCKS.

use std::mem::size_of;

use super::counters::bump;
use super::{shared, shared_slots, Header, Held, LOCAL, MEMO_LOCKS};
use crate::core::memo::{self, Fact, Slot};

fn with_memo<R>(id: &[u8; 32], f: impl FnOnce(&mut [Slot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let n = header.memo_slots;
            let _held = Held::take(memo::bucket_index(n, id) % MEMO_LOCKS);
            // SAFETY: the slots follow the header; the stripe lock serialises access to
            // this bucket, the only part `f` touches.
            let slots = unsafe { shared_slots::<Slot>(size_of::<Header>(), n) };
            f(slots)
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
