//! The counters of `api_keys.stats()`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{is_shared, shared, LOCAL, LOCAL_MEMO_SLOTS};
use crate::core::verdict::Reason;

#[repr(C)]
#[derive(Default)]
pub(super) struct Counters {
    pub(super) by_reason: [AtomicU64; Reason::ALL.len()],
    pub(super) memo_hits: AtomicU64,
    pub(super) memo_misses: AtomicU64,
    pub(super) argon2_runs: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) forged: AtomicU64,
    pub(super) usage_lost: AtomicU64,
}

/// The background worker finished a flush.
pub(crate) fn count_flush() {
    bump(|c| &c.flushes);
}

/// A presentation refused by its signature (also counted as `invalid_secret`).
pub(crate) fn count_forged() {
    bump(|c| &c.forged);
}

pub(crate) fn count(reason: Reason) {
    bump(|c| &c.by_reason[reason as usize]);
}

pub(super) fn bump(which: impl Fn(&Counters) -> &AtomicU64) {
    add(which, 1);
}

pub(super) fn add(which: impl Fn(&Counters) -> &AtomicU64, n: u64) {
    match shared() {
        Some(header) => which(&header.counters).fetch_add(n, Relaxed),
        None => LOCAL.with_borrow(|l| which(&l.counters).fetch_add(n, Relaxed)),
    };
}

/// Every counter as (name, value), for api_keys.stats().
pub(crate) fn snapshot() -> Vec<(String, i64)> {
    let read = |c: &Counters| {
        let mut rows: Vec<(String, i64)> = Reason::ALL
            .iter()
            .map(|r| {
                (
                    format!("verify_{}", r.as_str()),
                    c.by_reason[*r as usize].load(Relaxed) as i64,
                )
            })
            .collect();
        rows.push(("memo_hits".into(), c.memo_hits.load(Relaxed) as i64));
        rows.push(("memo_misses".into(), c.memo_misses.load(Relaxed) as i64));
        rows.push(("argon2_runs".into(), c.argon2_runs.load(Relaxed) as i64));
        rows.push(("argon2_throttled".into(), c.throttled.load(Relaxed) as i64));
        rows.push(("flushes".into(), c.flushes.load(Relaxed) as i64));
        rows.push(("forged_signatures".into(), c.forged.load(Relaxed) as i64));
        rows.push(("usage_lost".into(), c.usage_lost.load(Relaxed) as i64));
        rows
    };
    let mut rows = match shared() {
        Some(header) => read(&header.counters),
        None => LOCAL.with_borrow(|l| read(&l.counters)),
    };
    rows.push(("shared_memory".into(), is_shared() as i64));
    rows.push((
        "memo_capacity".into(),
        shared().map_or(LOCAL_MEMO_SLOTS, |h| h.memo_slots) as i64,
    ));
    rows.push((
        "tracked_keys".into(),
        super::key_state::tracked().unwrap_or_else(|| LOCAL.with_borrow(|l| l.keys.len() as i64)),
    ));
    rows
}
