//! Per-key rate windows and unflushed usage (`core::rate_limit`), in each key's state.

use std::net::IpAddr;

use super::counters::add;
use super::key_state::with_key;
use super::now;
use crate::core::key_state::KeyState;
use crate::core::rate_limit::Limits;

/// Is the key at or over one of its limits now?
pub(crate) fn rate_limited(key_id: &[u8; 16], limits: Limits) -> bool {
    with_key(key_id, |s| s.activity.is_over(now(), limits))
}

/// Run `f` on the key's activity; counts it lost in stats() (`usage_lost`).
fn counting<R>(key_id: &[u8; 16], f: impl FnOnce(&mut KeyState) -> R) -> R {
    let (result, lost) = with_key(key_id, |s| {
        let result = f(s);
        (result, s.activity.take_lost())
    });
    if lost > 0 {
        add(|c| &c.usage_lost, u64::from(lost));
    }
    result
}

/// Count an otherwise valid call against the key's limits; false when over one.
pub(crate) fn admit(key_id: &[u8; 16], limits: Limits, ip: Option<IpAddr>) -> bool {
    counting(key_id, |s| s.activity.admit(now(), limits, ip))
}

/// Count a rejected call of a known key in its usage.
pub(crate) fn record_rejected(key_id: &[u8; 16]) {
    counting(key_id, |s| s.activity.record_rejected(now()));
}
