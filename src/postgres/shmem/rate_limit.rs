//! Per-key rate windows and unflushed usage (`core::rate_limit`), in each key's state.

use std::net::IpAddr;

use super::key_state::with_key;
use super::now;
use crate::core::rate_limit::Limits;

/// Is the key at or over one of its limits now?
pub(crate) fn rate_limited(key_id: &[u8; 16], limits: Limits) -> bool {
    with_key(key_id, |s| s.activity.is_over(now(), limits))
}

/// Count an otherwise valid call against the key's limits; false when over one.
pub(crate) fn admit(key_id: &[u8; 16], limits: Limits, ip: Option<IpAddr>) -> bool {
    with_key(key_id, |s| s.activity.admit(now(), limits, ip))
}

/// Count a rejected call of a known key in its usage.
pub(crate) fn record_rejected(key_id: &[u8; 16]) {
    with_key(key_id, |s| s.activity.record_rejected(now()));
}
