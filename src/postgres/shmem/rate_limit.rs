//! Per-key rate windows, credits and unflushed usage (`core::rate_limit`), in each key's
//! state; an owner's shared windows in its owner's entry.

use std::net::IpAddr;

use super::counters::add;
use super::key_state::with_key;
use super::now;
use crate::core::key_state::{owner_entry_id, KeyState};
use crate::core::rate_limit::{Admission, LimitState, Limits, Spend, Window};

/// The key's window that is full now, if one is (its state: no call left, and when
/// it starts again).
pub(crate) fn rate_limited(key_id: &[u8; 16], limits: Limits) -> Option<Window> {
    let now = now();
    with_key(key_id, |s| {
        s.activity
            .is_over(now, limits)
            .then(|| s.activity.window(now, limits))
            .flatten()
    })
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

/// The limits an owner's keys share, and the owner's name.
pub(crate) struct OwnerLimits<'a> {
    pub(crate) owner: &'a [u8],
    pub(crate) limits: Limits,
}

/// Count an otherwise valid call against the key's limits and credits, then its
/// owner's: admitted only when all have room. The key is counted first (its entry's
/// lock is never held with another); when the owner's windows then refuse, the key's
/// count is taken back, so a refusal spends nothing. `now` is the clock the caller read
/// the key's credits by.
pub(crate) fn admit(
    now: i64,
    key_id: &[u8; 16],
    limits: Limits,
    ip: Option<IpAddr>,
    spend: Option<Spend>,
    owner: Option<OwnerLimits<'_>>,
) -> (Admission, LimitState) {
    let (admission, mut state) = counting(key_id, |s| s.activity.admit(now, limits, ip, spend));
    let Some(owner) = owner.filter(|_| admission == Admission::Admitted) else {
        return (admission, state);
    };
    let (room, window) = with_key(&owner_entry(owner.owner), |s| {
        s.owner.admit(now, owner.limits)
    });
    state.window = Window::tighter(state.window, window);
    if room {
        return (admission, state);
    }
    counting(key_id, |s| s.activity.refund(now, spend));
    state.remaining_uses = state
        .remaining_uses
        .zip(spend)
        .map(|(left, s)| left + u64::from(s.cost));
    (Admission::RateLimited, state)
}

/// The owner's entry id (a SHA-256 of its name), remembered for the last owner this
/// backend saw: a pooled connection serves one tenant's keys call after call.
fn owner_entry(owner: &[u8]) -> [u8; 16] {
    thread_local! {
        static LAST: std::cell::RefCell<(Vec<u8>, [u8; 16])> = Default::default();
    }
    LAST.with_borrow_mut(|(name, id)| {
        if name.as_slice() != owner || *id == [0; 16] {
            *id = owner_entry_id(owner);
            name.clear();
            name.extend_from_slice(owner);
        }
        *id
    })
}

/// Count a rejected call of a known key in its usage, under the reason's column.
pub(crate) fn record_rejected(key_id: &[u8; 16], outcome: usize) {
    counting(key_id, |s| s.activity.record_rejected(now(), outcome));
}
