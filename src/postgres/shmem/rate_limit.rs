//! Per-key rate windows and unflushed usage in shared memory (`core::rate_limit`),
//! striped over KEY_LOCKS by bucket.

use super::counters::bump;
use super::{key_lock, key_offset, now, shared, shared_slots, Held, KEY_LOCKS, LOCAL};
use crate::core::rate_limit::{self, HourUsage, KeySlot, LastUse, Limits};

/// Run `f` over the bucket `key_id` lives in (`core::rate_limit` takes one bucket as a
/// table of one), under that bucket's stripe lock.
fn with_key<R>(key_id: &[u8; 16], f: impl FnOnce(&mut [KeySlot]) -> R) -> R {
    match shared() {
        Some(header) => {
            let n = header.key_slots;
            let mut held = Held::take(header, key_lock(rate_limit::bucket_index(n, key_id)));
            // SAFETY: the key slots end the segment; the bucket's stripe lock is held for
            // as long as the slice lives.
            let bucket = unsafe {
                shared_slots::<KeySlot>(
                    &mut held,
                    key_offset(header.memo_slots),
                    rate_limit::bucket(n, key_id),
                )
            };
            f(bucket)
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
    let n = header.key_slots;
    let buckets = n.div_ceil(rate_limit::WAYS);
    for stripe in 0..KEY_LOCKS {
        let mut held = Held::take(header, key_lock(stripe));
        for bucket in (stripe..buckets).step_by(KEY_LOCKS) {
            let start = bucket * rate_limit::WAYS;
            // SAFETY: this bucket belongs to the stripe whose lock is held.
            let slots = unsafe {
                shared_slots::<KeySlot>(
                    &mut held,
                    key_offset(header.memo_slots),
                    start..(start + rate_limit::WAYS).min(n),
                )
            };
            rate_limit::drain(slots, &mut usage, &mut last);
        }
    }
    (usage, last)
}
