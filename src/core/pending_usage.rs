//! Usage and last use the background worker has taken out of shared memory and not yet
//! written: a key whose row a user's open transaction has locked waits for a later
//! round, and a round that fails is retried whole. Merged by key and hour, so each
//! (key, hour) is written once per round; bounded, so a flood of locked keys cannot
//! grow the worker without end. Pure: no pgrx.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::core::rate_limit::{HourUsage, LastUse};

/// Most (key, hour) counts and last uses held at once (about 100 bytes each).
pub(crate) const MAX_ENTRIES: usize = 1_000_000;

#[derive(Default, Debug)]
pub(crate) struct PendingUsage {
    usage: HashMap<([u8; 16], i64), (i64, i64)>,
    last: HashMap<[u8; 16], (i64, Option<IpAddr>)>,
}

impl PendingUsage {
    /// Add what was drained. Returns how many entries did not fit (dropped).
    pub(crate) fn add(&mut self, usage: Vec<HourUsage>, last: Vec<LastUse>) -> usize {
        let mut dropped = 0;
        for u in usage {
            let room = self.len() < MAX_ENTRIES;
            match self.usage.get_mut(&(u.key_id, u.hour_start)) {
                Some((verified, rejected)) => {
                    *verified += i64::from(u.verified);
                    *rejected += i64::from(u.rejected);
                }
                None if room => {
                    self.usage.insert(
                        (u.key_id, u.hour_start),
                        (i64::from(u.verified), i64::from(u.rejected)),
                    );
                }
                None => dropped += 1,
            }
        }
        for l in last {
            let room = self.len() < MAX_ENTRIES;
            match self.last.get_mut(&l.key_id) {
                Some(known) if known.0 < l.at => *known = (l.at, l.ip),
                Some(_) => {}
                None if room => {
                    self.last.insert(l.key_id, (l.at, l.ip));
                }
                None => dropped += 1,
            }
        }
        dropped
    }

    pub(crate) fn len(&self) -> usize {
        self.usage.len() + self.last.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep only the entries of `keys` (the ones a round could not write).
    pub(crate) fn retain_keys(&mut self, keys: &HashSet<[u8; 16]>) {
        self.usage.retain(|(key, _), _| keys.contains(key));
        self.last.retain(|key, _| keys.contains(key));
    }

    /// (key, hour start µs since 2000, verified, rejected), in any order.
    pub(crate) fn usage(&self) -> impl Iterator<Item = ([u8; 16], i64, i64, i64)> + '_ {
        self.usage
            .iter()
            .map(|(&(key, hour), &(verified, rejected))| (key, hour, verified, rejected))
    }

    /// (key, last use µs since 2000, from where), in any order.
    pub(crate) fn last_uses(&self) -> impl Iterator<Item = ([u8; 16], i64, Option<IpAddr>)> + '_ {
        self.last.iter().map(|(&key, &(at, ip))| (key, at, ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn usage(k: u8, hour: i64, verified: u32, rejected: u32) -> HourUsage {
        HourUsage {
            key_id: key(k),
            hour_start: hour,
            verified,
            rejected,
        }
    }

    fn last(k: u8, at: i64) -> LastUse {
        LastUse {
            key_id: key(k),
            at,
            ip: None,
        }
    }

    #[test]
    fn rounds_merge_by_key_and_hour_and_keep_the_latest_use() {
        let mut u = PendingUsage::default();
        u.add(
            vec![usage(1, 10, 2, 1), usage(1, 11, 1, 0)],
            vec![last(1, 5)],
        );
        u.add(
            vec![usage(1, 10, 3, 0), usage(2, 10, 1, 1)],
            vec![last(1, 4), last(2, 9)],
        );
        let mut counts: Vec<_> = u.usage().collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![(key(1), 10, 5, 1), (key(1), 11, 1, 0), (key(2), 10, 1, 1)]
        );
        let mut uses: Vec<_> = u.last_uses().collect();
        uses.sort();
        assert_eq!(uses, vec![(key(1), 5, None), (key(2), 9, None)]);
    }

    #[test]
    fn only_the_unwritten_keys_stay() {
        let mut u = PendingUsage::default();
        u.add(
            vec![usage(1, 10, 1, 0), usage(2, 10, 1, 0)],
            vec![last(1, 1), last(2, 2)],
        );
        u.retain_keys(&HashSet::from([key(2)]));
        assert_eq!(u.usage().map(|c| c.0).collect::<Vec<_>>(), vec![key(2)]);
        assert_eq!(u.last_uses().map(|c| c.0).collect::<Vec<_>>(), vec![key(2)]);
        u.retain_keys(&HashSet::new());
        assert!(u.is_empty());
    }

    #[test]
    fn full_it_still_counts_known_entries_and_reports_the_rest() {
        let mut u = PendingUsage::default();
        let many: Vec<_> = (0..MAX_ENTRIES as i64).map(|h| usage(1, h, 1, 0)).collect();
        assert_eq!(u.add(many, vec![]), 0);
        assert_eq!(
            u.add(vec![usage(1, 0, 1, 0), usage(2, 0, 1, 0)], vec![last(3, 1)]),
            2
        );
        assert_eq!(u.len(), MAX_ENTRIES);
        assert!(u.usage().any(|c| c == (key(1), 0, 2, 0)));
    }
}
