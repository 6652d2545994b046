//! Each key's state (`core::key_state`) in its database's key table: one entry per key
//! presented, made on its first presentation and dropped by the worker once idle, so
//! shared memory grows with the keys in use and forgets nothing that could change an
//! answer. Without shared memory, a map in the session.

use std::sync::atomic::Ordering::Relaxed;

use pgrx::pg_sys;

use super::databases;
use super::dshash::Entry;
use super::{now, shared, LOCAL, LOCAL_KEYS_BEFORE_PRUNING};
use crate::core::key_state::KeyState;
use crate::core::rate_limit::Unflushed;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyEntry {
    key_id: [u8; 16],
    state: KeyState,
}

// SAFETY: `key_id` leads; all-zero is a key with no state yet.
unsafe impl Entry for KeyEntry {
    const KEY_SIZE: usize = 16;
}

/// Run `f` over the state of key `key_id` of this backend's database, under its lock.
pub(super) fn with_key<R>(key_id: &[u8; 16], f: impl FnOnce(&mut KeyState) -> R) -> R {
    if let Some(header) = shared() {
        return databases::with_own_keys(|table| {
            let (mut entry, inserted) = table.find_or_insert(key_id);
            if inserted {
                header.tracked_keys.fetch_add(1, Relaxed);
            }
            f(&mut entry.state)
        })
        .expect("the area is made with the shared segment");
    }
    LOCAL.with_borrow_mut(|l| {
        if l.keys.len() >= LOCAL_KEYS_BEFORE_PRUNING && !l.keys.contains_key(key_id) {
            let now = now();
            l.keys.retain(|_, s| !s.is_idle(now));
        }
        f(l.keys.entry(*key_id).or_default())
    })
}

/// True when the worker fails to expire the key and has not said so in the last hour.
pub(crate) fn first_expiry_failure(key_id: &[u8; 16]) -> bool {
    let now = now();
    with_key(key_id, |s| s.first_expiry_failure(now))
}

/// What the keys of database `oid` have not had written yet, copied (see
/// `core::rate_limit`: written, then `mark_written`).
pub(crate) fn unflushed(oid: pg_sys::Oid) -> Vec<([u8; 16], Unflushed)> {
    let now = now();
    databases::with_keys_of(oid, false, |table| {
        let mut all = Vec::new();
        table.for_each(|e| {
            if let Some(u) = e.state.activity.unflushed(now) {
                all.push((e.key_id, u));
            }
        });
        all
    })
    .unwrap_or_default()
}

/// What a clean shutdown saves of database `oid`'s keys (`Activity::saved`).
pub(crate) fn saved(oid: pg_sys::Oid) -> Vec<([u8; 16], Unflushed)> {
    let now = now();
    databases::with_keys_of(oid, false, |table| {
        let mut all = Vec::new();
        table.for_each(|e| {
            if let Some(u) = e.state.activity.saved(now) {
                all.push((e.key_id, u));
            }
        });
        all
    })
    .unwrap_or_default()
}

/// How database `oid`'s writes changed since its last round (`databases::note_mode`):
/// after a promotion every total is written again; after the update to 0.5.0's SQL the
/// totals count on from what was added before.
pub(crate) fn after_mode_change(oid: pg_sys::Oid, change: databases::ModeChange) {
    databases::with_keys_of(oid, false, |table| {
        table.retain(|e| {
            match change {
                databases::ModeChange::Promoted => e.state.activity.unmark_written(),
                databases::ModeChange::Updated => e.state.activity.rebase_written(),
            }
            true
        });
    });
}

/// `written` is committed: note it in the keys' state.
pub(crate) fn mark_written(oid: pg_sys::Oid, written: &[([u8; 16], Unflushed)]) {
    databases::with_keys_of(oid, false, |table| {
        for (key_id, w) in written {
            if let Some(mut entry) = table.find(key_id) {
                entry.state.activity.mark_written(w);
            }
        }
    });
}

/// Other servers' counts of database `oid`'s keys, as the usage table shows them: per
/// key, the hour (µs since 2000) and the calls they admitted in it. Keys not seen here
/// yet get an entry, so their first call here already counts them.
pub(crate) fn note_others(oid: pg_sys::Oid, counts: &[([u8; 16], i64, u32)]) {
    if counts.is_empty() {
        return;
    }
    databases::with_keys_of(oid, true, |table| {
        let mut inserted = 0;
        for (key_id, hour_start, verified) in counts {
            let (mut entry, new) = table.find_or_insert(key_id);
            inserted += i64::from(new);
            entry.state.activity.note_others(*hour_start, *verified);
        }
        if let Some(header) = shared() {
            header.tracked_keys.fetch_add(inserted, Relaxed);
        }
    });
}

/// One writer's spending in one credit period of a key, as the credit table shows it.
pub(crate) struct CreditRow {
    pub(crate) key: [u8; 16],
    pub(crate) period: i64,
    pub(crate) writer: [u8; 16],
    pub(crate) since: i64,
    pub(crate) spent: u64,
}

/// Other writers' spending of the credits of database `oid`'s keys in use here; `rows`
/// come grouped by key and period, every writer of each. Keys not in use here are left
/// out: their first call reads the spending from the key row.
pub(crate) fn note_credit_others(oid: pg_sys::Oid, source: [u8; 16], rows: &[CreditRow]) {
    if rows.is_empty() {
        return;
    }
    databases::with_keys_of(oid, false, |table| {
        for group in rows.chunk_by(|a, b| (a.key, a.period) == (b.key, b.period)) {
            if let Some(mut entry) = table.find(&group[0].key) {
                let writers = group.iter().map(|r| (r.writer, r.since, r.spent));
                entry
                    .state
                    .activity
                    .note_credit_others(group[0].period, source, writers);
            }
        }
    });
}

/// An owner's calls of one hour as the usage table shows them.
pub(crate) struct OwnerCount {
    /// The owner's entry (`owner_entry_id`).
    pub(crate) owner: [u8; 16],
    /// µs since 2000.
    pub(crate) hour_start: i64,
    pub(crate) others: u32,
    /// This server's, as written.
    pub(crate) here_written: u32,
}

/// Owners' calls of the current hour: other servers', and this server's as written.
/// Owners not seen here yet get an entry, so their first call here already counts them.
pub(crate) fn note_owner_others(oid: pg_sys::Oid, counts: &[OwnerCount]) {
    if counts.is_empty() {
        return;
    }
    databases::with_keys_of(oid, true, |table| {
        let mut inserted = 0;
        for c in counts {
            let (mut entry, new) = table.find_or_insert(&c.owner);
            inserted += i64::from(new);
            entry.state.owner.note_others(c.hour_start, c.others);
            entry
                .state
                .owner
                .note_written_here(c.hour_start, c.here_written);
        }
        if let Some(header) = shared() {
            header.tracked_keys.fetch_add(inserted, Relaxed);
        }
    });
}

/// Drop the state of these keys of database `oid` (their rows are gone).
pub(crate) fn forget_keys(oid: pg_sys::Oid, keys: &[[u8; 16]]) {
    if keys.is_empty() {
        return;
    }
    let mut dropped = 0;
    databases::with_keys_of(oid, false, |table| {
        for key_id in keys {
            if let Some(entry) = table.find(key_id) {
                entry.delete();
                dropped += 1;
            }
        }
    });
    if let Some(header) = shared() {
        header.tracked_keys.fetch_sub(dropped, Relaxed);
    }
}

/// Drop the idle keys of database `oid` (or, when `everything`, all of them: the
/// extension is gone), and counts too old for any table to take; returns how many keys
/// are left.
pub(crate) fn drop_idle(oid: pg_sys::Oid, everything: bool) -> i64 {
    let now = now();
    let (mut dropped, mut left, mut lost) = (0, 0, 0);
    databases::with_keys_of(oid, false, |table| {
        table.retain(|e| {
            e.state.activity.drop_stale(now);
            lost += u64::from(e.state.activity.take_lost());
            let drop = everything || e.state.is_idle(now);
            if drop {
                dropped += 1;
            } else {
                left += 1;
            }
            !drop
        });
    });
    if let Some(header) = shared() {
        header.tracked_keys.fetch_sub(dropped, Relaxed);
        header.counters.usage_lost.fetch_add(lost, Relaxed);
    }
    left
}

/// Add activity saved at a clean shutdown back to database `oid`'s keys (the launcher,
/// at start).
pub(crate) fn restore(oid: pg_sys::Oid, saved: &[([u8; 16], Unflushed)]) {
    databases::with_keys_of(oid, true, |table| {
        let (mut inserted, mut lost) = (0, 0);
        for (key_id, s) in saved {
            let (mut entry, new) = table.find_or_insert(key_id);
            inserted += i64::from(new);
            entry.state.activity.restore(s);
            lost += u64::from(entry.state.activity.take_lost());
        }
        if let Some(header) = shared() {
            header.tracked_keys.fetch_add(inserted, Relaxed);
            header.counters.usage_lost.fetch_add(lost, Relaxed);
        }
    });
}

/// Keys tracked in the whole server (entries of every key table).
pub(crate) fn tracked() -> Option<i64> {
    shared().map(|h| h.tracked_keys.load(Relaxed))
}
