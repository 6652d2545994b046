//! Per-key rate windows and unflushed usage in shared memory (`core::rate_limit`),
//! striped over KEY_LOCKS by bucket.

use super::counters::bump;
use super::{key_offset, now, shared, shared_slots, Header, Held, BUDGET_LOCK, KEY_LOCKS, LOCAL};
use crate::core::rate_limit::{self, HourUsage, KeySlot, LastUse, Limits};

/// The per-key slots in shared memory.
///
/// # Safety
/// The caller holds the key stripe lock of every bucket it touches.
unsafe fn shared_key_slots(header: &Header) -> &'static mut [KeySlot] {
    // SAFETY: the key slots end the segment; locking is the caller's.
    unsafe { shared_slots::<KeySlot>(key_offset(header.memo_slots), header.key_slots) }
}

fn with_key<R>(key_id: &[u8; 16], f: impl FnOnce(&mut [KeySlot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let stripe = rate_limit::bucket_index(header.key_slots, key_id) % KEY_LOCKS;
            let _held = Held::take(BUDGET_LOCK + 1 + stripe);
            // SAFETY: the stripe lock of the key's bucket is held.
            f(unsafe { shared_key_slots(header) })
        }
        None => LOCAL.with_borrow_mut(|l| f(&mut l.keys)),
    }
}

/// Is the key at or over one of its limits now?
pub(crate) fn rate_limited(key_id: &[u8; 16], limits: Limits) -> bool {
    with_key(key_id, |slots| {
        rate_limit::is_over(slots, key_id, now(), limits)
    })
}

/// Count an otherwise valid call against the key's limits; false when over one.
pub(crate) fn admit(key_id: &[u8; 16], limits: Limits, ip: Option<std::net::IpAddr>) -> bool {
    let (admitted, evicted) = with_key(key_id, |slots| {
        rate_limit::admit(slots, key_id, now(), limits, ip)
    });
    if evicted {
        bump(|c| &c.activity_evictions);
    }
    admitted
}

/// Count a rejected call of a known key in its usage.
pub(crate) fn record_rejected(key_id: &[u8; 16]) {
    if with_key(key_id, |slots| {
        rate_limit::record_rejected(slots, key_id, now())
    }) {
        bump(|c| &c.activity_evictions);
    }
}

/// Take all unflushed usage out of shared memory, one stripe at a time.
pub(crate) fn drain_activity() -> (Vec<HourUsage>, Vec<LastUse>) {
    let (mut usage, mut last) = (Vec::new(), Vec::new());
    let Some(header) = shared() else {
        return (usage, last);
    };
    let buckets = header.key_slots.div_ceil(rate_limit::WAYS);
    for stripe in 0..KEY_LOCKS {
        let _held = Held::take(BUDGET_LOCK + 1 + stripe);
        // SAFETY: this stripe's lock is held; only its buckets are touched.
        let slots = unsafe { shared_key_slots(header) };
        for bucket in (stripe..buckets).step_by(KEY_LOCKS) {
            let start = bucket * rate_limit::WAYS;
            let end = (start + rate_limit::WAYS).min(slots.len());
            rate_limit::drain(&mut slots[start..end], &mut usage, &mut last);
        }
    }
    (usage, last)
}
