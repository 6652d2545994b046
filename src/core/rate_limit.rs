//! One key's activity on this server: rate-limit windows, usage and its last use.
//!
//! Rate limits count in fixed, clock-aligned windows: the UTC minute and the UTC hour
//! (counted from 2000-01-01, Postgres' epoch, which is hour-aligned). A call is admitted
//! when both windows have room, and then counts in both; so at most `per_minute` calls
//! in any clock minute and `per_hour` in any clock hour, and up to twice a limit across
//! a window boundary. The minute is this server's alone; the hour also counts the calls
//! other servers (a primary, its standbys, this server before a crash) admitted, as the
//! usage table last showed them (`note_others`).
//!
//! Usage (verified / rejected per hour) counts up from this server's start and is
//! written as this server's total for the hour: the worker takes a copy (`unflushed`),
//! writes it (the row keeps the larger of its total and the copy's), and once that has
//! committed notes what is written (`mark_written`). Writing a total twice changes
//! nothing, so a copy sent again after a lost answer or a restart counts once.
//!
//! One `Activity` per key, wherever the caller keeps it (a shared hash table entry, or a
//! backend-local map). Pure: no pgrx; the caller does the locking.

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UsageCount {
    hour: u32,
    /// Calls of the hour on this server, and how many of them are written.
    verified: u32,
    rejected: u32,
    written_verified: u32,
    written_rejected: u32,
}

impl UsageCount {
    fn unwritten(&self) -> u32 {
        (self.verified.saturating_sub(self.written_verified))
            .saturating_add(self.rejected.saturating_sub(self.written_rejected))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Activity {
    minute: u32,
    in_minute: u32,
    /// Counts of the current and the previous hour (indexed by hour % 2).
    usage: [UsageCount; 2],
    /// Calls other servers admitted in hour `others_hour`, as last read.
    others_hour: u32,
    others_verified: u32,
    /// Last admitted call not yet written: when (µs since 2000), and from where.
    last_used_at: i64,
    last_ip: [u8; 16],
    /// 0 none, 4 IPv4 (first 4 bytes), 6 IPv6.
    last_ip_family: u8,
    last_seen_minute: u32,
    /// Calls counted here that can no longer be written: an hour left unwritten for two
    /// hours (no flush could write it) was pushed out. Taken by `take_lost` for stats().
    lost: u32,
}

/// Per key; 0 = unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) per_minute: u32,
    pub(crate) per_hour: u32,
}

impl Limits {
    pub(crate) const UNLIMITED: Limits = Limits {
        per_minute: 0,
        per_hour: 0,
    };
}

/// One key's usage in one hour on this server, copied for writing: the totals, and how
/// much of them was already written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HourUsage {
    /// Start of the hour, µs since 2000-01-01 UTC.
    pub(crate) hour_start: i64,
    pub(crate) verified: u32,
    pub(crate) rejected: u32,
    pub(crate) written_verified: u32,
    pub(crate) written_rejected: u32,
}

impl HourUsage {
    /// The calls not yet written (for a table that adds instead of keeping totals).
    pub(crate) fn new_calls(&self) -> (u32, u32) {
        (
            self.verified.saturating_sub(self.written_verified),
            self.rejected.saturating_sub(self.written_rejected),
        )
    }
}

/// One key's last admitted call, copied for flushing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastUse {
    pub(crate) at: i64,
    pub(crate) ip: Option<std::net::IpAddr>,
}

/// What one key has not had written yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unflushed {
    pub(crate) usage: Vec<HourUsage>,
    pub(crate) last: Option<LastUse>,
}

/// Hours before the current one whose counts may still be written (the usage table
/// takes the last three).
const STALE_AFTER_HOURS: u32 = 2;

fn minute_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_MINUTE) as u32
}

pub(crate) fn hour_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_HOUR) as u32
}

fn ip_parts(ip: Option<std::net::IpAddr>) -> (u8, [u8; 16]) {
    match ip {
        None => (0, [0; 16]),
        Some(std::net::IpAddr::V4(v4)) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        Some(std::net::IpAddr::V6(v6)) => (6, v6.octets()),
    }
}

impl Activity {
    fn has_unflushed(&self) -> bool {
        self.last_used_at != 0 || self.usage.iter().any(|u| u.unwritten() > 0)
    }

    fn roll(&mut self, now: i64) {
        let minute = minute_of(now);
        if self.minute != minute {
            self.minute = minute;
            self.in_minute = 0;
        }
        self.last_seen_minute = minute;
    }

    /// Calls admitted in `hour`, here and (as last read) on other servers.
    fn admitted_in(&self, hour: u32) -> u32 {
        let here = self
            .usage
            .iter()
            .find(|u| u.hour == hour)
            .map_or(0, |u| u.verified);
        let others = if self.others_hour == hour {
            self.others_verified
        } else {
            0
        };
        here.saturating_add(others)
    }

    fn over(&self, now: i64, limits: Limits) -> bool {
        (limits.per_minute != 0 && self.in_minute >= limits.per_minute)
            || (limits.per_hour != 0 && self.admitted_in(hour_of(now)) >= limits.per_hour)
    }

    /// The count of `hour`: its slot, taken over from an older hour (whose unwritten
    /// counts are then lost); None when the slot holds a newer hour not yet written
    /// (a call or a saved count older than that is lost instead).
    fn usage_for(&mut self, hour: u32) -> Option<&mut UsageCount> {
        let u = &mut self.usage[hour as usize % 2];
        if u.hour != hour {
            let unwritten = u.unwritten();
            if unwritten > 0 && u.hour > hour {
                return None;
            }
            self.lost = self.lost.saturating_add(unwritten);
            *u = UsageCount {
                hour,
                ..UsageCount::default()
            };
        }
        Some(u)
    }

    fn count(&mut self, now: i64, verified: bool) {
        match self.usage_for(hour_of(now)) {
            // Saturating at u32::MAX calls an hour: a total never wraps below what is
            // written.
            Some(u) if verified => u.verified = u.verified.saturating_add(1),
            Some(u) => u.rejected = u.rejected.saturating_add(1),
            // The clock went back past an unwritten hour.
            None => self.lost = self.lost.saturating_add(1),
        }
    }

    /// Calls counted and lost since the last call (see `lost`).
    pub(crate) fn take_lost(&mut self) -> u32 {
        std::mem::take(&mut self.lost)
    }

    /// Is the key at or over a limit now? Counts nothing.
    pub(crate) fn is_over(&mut self, now: i64, limits: Limits) -> bool {
        self.roll(now);
        self.over(now, limits)
    }

    /// A call that passed every other check: admitted (counted in both windows,
    /// recorded as verified and as the last use) when both windows have room, else
    /// recorded as rejected.
    pub(crate) fn admit(&mut self, now: i64, limits: Limits, ip: Option<std::net::IpAddr>) -> bool {
        self.roll(now);
        if self.over(now, limits) {
            self.count(now, false);
            return false;
        }
        self.in_minute += 1;
        self.count(now, true);
        self.last_used_at = now;
        (self.last_ip_family, self.last_ip) = ip_parts(ip);
        true
    }

    /// A call for this key that failed a check other than the rate limit.
    pub(crate) fn record_rejected(&mut self, now: i64) {
        self.roll(now);
        self.count(now, false);
    }

    /// The calls other servers admitted in hour `hour_start` (µs since 2000), as the
    /// usage table shows them now. An older hour than the one known is ignored.
    pub(crate) fn note_others(&mut self, hour_start: i64, verified: u32) {
        let hour = hour_of(hour_start);
        if hour >= self.others_hour {
            self.others_hour = hour;
            self.others_verified = verified;
        }
    }

    /// A copy of what is not yet written at `now`; None when nothing is. Hours more
    /// than two before the current one are left out (`drop_stale` counts them lost).
    pub(crate) fn unflushed(&self, now: i64) -> Option<Unflushed> {
        if !self.has_unflushed() {
            return None;
        }
        let current = hour_of(now);
        let usage = self
            .usage
            .iter()
            .filter(|u| u.unwritten() > 0 && u.hour.saturating_add(STALE_AFTER_HOURS) >= current)
            .map(|u| HourUsage {
                hour_start: i64::from(u.hour) * MICROS_PER_HOUR,
                verified: u.verified,
                rejected: u.rejected,
                written_verified: u.written_verified,
                written_rejected: u.written_rejected,
            })
            .collect();
        let last = (self.last_used_at != 0).then(|| LastUse {
            at: self.last_used_at,
            ip: match self.last_ip_family {
                4 => Some(std::net::IpAddr::from(
                    <[u8; 4]>::try_from(&self.last_ip[..4]).expect("4 bytes"),
                )),
                6 => Some(std::net::IpAddr::from(self.last_ip)),
                _ => None,
            },
        });
        Some(Unflushed { usage, last })
    }

    /// All this server still knows of the key at `now` (for the file a clean shutdown
    /// writes): every hour a table still takes, written or not, and the last use. A
    /// restart that goes on under the same source must go on from these totals.
    pub(crate) fn saved(&self, now: i64) -> Option<Unflushed> {
        let current = hour_of(now);
        let usage: Vec<_> = self
            .usage
            .iter()
            .filter(|u| u.verified > 0 || u.rejected > 0)
            .filter(|u| u.hour.saturating_add(STALE_AFTER_HOURS) >= current)
            .map(|u| HourUsage {
                hour_start: i64::from(u.hour) * MICROS_PER_HOUR,
                verified: u.verified,
                rejected: u.rejected,
                written_verified: u.written_verified,
                written_rejected: u.written_rejected,
            })
            .collect();
        let last = self.unflushed(now).and_then(|u| u.last);
        (!usage.is_empty() || last.is_some()).then_some(Unflushed { usage, last })
    }

    /// This server's writes may not have reached the tables it writes now (it was a
    /// standby, promoted: the old primary may have lost what it committed): its totals
    /// are written again (which changes nothing where they did arrive).
    pub(crate) fn unmark_written(&mut self) {
        for u in &mut self.usage {
            u.written_verified = 0;
            u.written_rejected = 0;
        }
    }

    /// The calls written so far went into a table that adds instead of keeping totals
    /// (before 0.5.0's SQL), under no source: from now on this server's totals count
    /// only the calls after them (the rows written then count as another server's).
    pub(crate) fn rebase_written(&mut self) {
        for u in &mut self.usage {
            u.verified -= u.written_verified.min(u.verified);
            u.rejected -= u.written_rejected.min(u.rejected);
            u.written_verified = 0;
            u.written_rejected = 0;
        }
    }

    /// Counts of an hour more than two before `now`'s that are still not written (no
    /// flush could write them: the primary out of reach for hours, a saved file read
    /// back late) are lost: the tables take no hour that old.
    pub(crate) fn drop_stale(&mut self, now: i64) {
        let current = hour_of(now);
        for u in &mut self.usage {
            if u.hour.saturating_add(STALE_AFTER_HOURS) < current && u.unwritten() > 0 {
                self.lost = self.lost.saturating_add(u.unwritten());
                u.written_verified = u.verified;
                u.written_rejected = u.rejected;
            }
        }
    }

    /// `written` (a copy `unflushed` gave) is now in the tables: note its totals as
    /// written, keeping whatever was counted since the copy.
    pub(crate) fn mark_written(&mut self, written: &Unflushed) {
        for w in &written.usage {
            let hour = hour_of(w.hour_start);
            if let Some(u) = self.usage.iter_mut().find(|u| u.hour == hour) {
                u.written_verified = u.written_verified.max(w.verified.min(u.verified));
                u.written_rejected = u.written_rejected.max(w.rejected.min(u.rejected));
            }
        }
        if written.last.is_some_and(|l| l.at == self.last_used_at) {
            self.last_used_at = 0;
        }
    }

    /// Add activity saved at a clean shutdown, read back at start: its totals and what
    /// of them was written.
    pub(crate) fn restore(&mut self, saved: &Unflushed) {
        for s in &saved.usage {
            // Kept (not idle) while the hour's totals can matter: written again under
            // this server's source, they must go on from here, not from 0.
            let last_minute = hour_of(s.hour_start).saturating_add(1).saturating_mul(60) - 1;
            self.last_seen_minute = self.last_seen_minute.max(last_minute);
            let written_verified = s.written_verified.min(s.verified);
            let written_rejected = s.written_rejected.min(s.rejected);
            match self.usage_for(hour_of(s.hour_start)) {
                Some(u) => {
                    u.verified = u.verified.saturating_add(s.verified);
                    u.rejected = u.rejected.saturating_add(s.rejected);
                    u.written_verified = u.written_verified.saturating_add(written_verified);
                    u.written_rejected = u.written_rejected.saturating_add(written_rejected);
                    u.written_verified = u.written_verified.min(u.verified);
                    u.written_rejected = u.written_rejected.min(u.rejected);
                }
                None => {
                    let (v, r) = s.new_calls();
                    self.lost = self.lost.saturating_add(v.saturating_add(r));
                }
            }
        }
        if let Some(l) = saved.last {
            if l.at > self.last_used_at {
                self.last_used_at = l.at;
                (self.last_ip_family, self.last_ip) = ip_parts(l.ip);
            }
        }
    }

    /// Nothing to write, and no window or trace that could still matter at `now`: last
    /// seen more than an hour ago (so both windows are over), and no other server's
    /// count of the current hour to remember.
    pub(crate) fn is_idle(&self, now: i64) -> bool {
        !self.has_unflushed()
            && minute_of(now).saturating_sub(self.last_seen_minute) > 60
            && (self.others_hour != hour_of(now) || self.others_verified == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const HOUR: i64 = MICROS_PER_HOUR;

    fn hour(hour_start: i64, verified: u32, rejected: u32) -> HourUsage {
        HourUsage {
            hour_start,
            verified,
            rejected,
            written_verified: 0,
            written_rejected: 0,
        }
    }

    fn limits(per_minute: u32, per_hour: u32) -> Limits {
        Limits {
            per_minute,
            per_hour,
        }
    }

    #[test]
    fn per_minute_window_is_exact_and_resets_on_the_clock_minute() {
        let mut a = Activity::default();
        let t = 1000 * HOUR + 10 * MIN;
        let l = limits(3, 0);
        let admitted = (0..10).filter(|i| a.admit(t + i * 1000, l, None)).count();
        assert_eq!(admitted, 3);
        assert!(a.is_over(t + 59_000_000, l));
        assert!(!a.is_over(t + MIN, l), "next clock minute");
        assert!(a.admit(t + MIN, l, None));
    }

    #[test]
    fn per_hour_window_spans_minutes() {
        let mut a = Activity::default();
        let t = 1000 * HOUR;
        let l = limits(100, 5);
        let admitted = (0..20).filter(|i| a.admit(t + i * MIN, l, None)).count();
        assert_eq!(admitted, 5);
        assert!(a.admit(t + HOUR, l, None));
    }

    #[test]
    fn zero_is_unlimited_and_rejections_do_not_consume_quota() {
        let mut a = Activity::default();
        let t = 5 * HOUR;
        assert!((0..1000).all(|_| a.admit(t, limits(0, 0), None)));
        let mut b = Activity::default();
        for _ in 0..50 {
            b.record_rejected(t);
        }
        assert!(!b.is_over(t, limits(1, 1)));
    }

    #[test]
    fn unflushed_reports_usage_per_hour_and_the_last_use() {
        let mut a = Activity::default();
        let t = 7 * HOUR + 59 * MIN;
        let ip = "10.1.2.3".parse().ok();
        a.admit(t, limits(0, 0), None);
        a.record_rejected(t);
        a.admit(t + MIN, limits(0, 0), ip); // the next hour
        let mut copy = a.unflushed(t).expect("something to write");
        copy.usage.sort_by_key(|u| u.hour_start);
        assert_eq!(
            copy.usage,
            vec![hour(7 * HOUR, 1, 1), hour(8 * HOUR, 1, 0),]
        );
        assert_eq!(copy.last, Some(LastUse { at: t + MIN, ip }));
        a.mark_written(&copy);
        assert_eq!(a.unflushed(t), None, "written once");
    }

    #[test]
    fn calls_counted_while_a_flush_runs_are_kept() {
        let mut a = Activity::default();
        let t = 3 * HOUR;
        a.admit(t, limits(0, 0), None);
        let copy = a.unflushed(t).unwrap();
        a.admit(t + 1, limits(0, 0), None); // during the flush
        a.mark_written(&copy);
        let left = a.unflushed(t).unwrap();
        assert_eq!(
            left.usage[0].new_calls(),
            (1, 0),
            "the call counted meanwhile"
        );
        assert_eq!(left.usage[0].verified, 2, "sent as the hour's total");
        assert_eq!(
            left.last.map(|l| l.at),
            Some(t + 1),
            "the newer last use stays"
        );
    }

    #[test]
    fn restore_adds_saved_counts() {
        let mut a = Activity::default();
        let t = 9 * HOUR;
        a.admit(t, limits(0, 0), None);
        let saved = a.unflushed(t).unwrap();
        let mut b = Activity::default();
        b.admit(t + 5, limits(0, 0), None);
        b.restore(&saved);
        let both = b.unflushed(t).unwrap();
        assert_eq!(both.usage[0].verified, 2);
        assert_eq!(both.last.map(|l| l.at), Some(t + 5));
    }

    #[test]
    fn a_restored_hour_is_kept_while_it_counts() {
        let t = 70 * HOUR + 10 * MIN;
        let mut saved = Activity::default();
        saved.admit(t, limits(0, 2), None);
        let copy = saved.unflushed(t).unwrap();
        let mut a = Activity::default();
        a.restore(&copy);
        a.mark_written(&a.unflushed(t).unwrap());
        assert!(!a.is_idle(t + 40 * MIN), "its hour is not over");
        assert!(a.admit(t + 40 * MIN, limits(0, 2), None));
        assert!(
            !a.admit(t + 40 * MIN, limits(0, 2), None),
            "the restored call counts"
        );
        let mut later = Activity::default();
        later.restore(&copy);
        later.mark_written(&later.unflushed(t).unwrap());
        assert!(later.is_idle(t + 111 * MIN), "an hour after its hour");
    }

    #[test]
    fn idle_only_after_an_hour_unseen_and_once_written() {
        let mut a = Activity::default();
        let t = 20 * HOUR;
        a.admit(t, limits(0, 2), None);
        assert!(!a.is_idle(t + 2 * HOUR), "unwritten usage keeps it");
        let copy = a.unflushed(t).unwrap();
        a.mark_written(&copy);
        assert!(!a.is_idle(t + 30 * MIN), "its hour window still counts");
        assert!(a.is_idle(t + 62 * MIN));
    }

    #[test]
    fn an_hour_left_unwritten_for_two_hours_is_counted_as_lost() {
        let mut a = Activity::default();
        let t = 30 * HOUR;
        a.admit(t, limits(0, 0), None);
        a.record_rejected(t);
        assert_eq!(a.take_lost(), 0);
        a.admit(t + 2 * HOUR, limits(0, 0), None); // the same slot, two hours on
        assert_eq!(a.take_lost(), 2, "both calls of the unwritten hour");
        assert_eq!(a.take_lost(), 0, "taken once");
    }

    #[test]
    fn restoring_an_old_hour_never_pushes_out_a_newer_one() {
        let mut a = Activity::default();
        let t = 40 * HOUR;
        a.admit(t, limits(0, 0), None);
        let old = Unflushed {
            usage: vec![hour(t - 2 * HOUR, 3, 1)],
            last: None,
        };
        a.restore(&old);
        assert_eq!(a.take_lost(), 4, "the saved hour is the one lost");
        let now = a.unflushed(t).unwrap();
        assert_eq!(now.usage, vec![hour(t, 1, 0)]);
        // A clock that goes back past an unwritten hour loses that call, not the hour.
        a.record_rejected(t - 2 * HOUR);
        assert_eq!(a.take_lost(), 1);
        assert_eq!(a.unflushed(t).unwrap().usage[0].verified, 1);
    }

    /// A usage table that keeps, per hour, the larger of its total and the one written.
    #[derive(Default)]
    struct Table(std::collections::HashMap<(u8, i64), (u32, u32)>);

    impl Table {
        fn write(&mut self, source: u8, copy: &Unflushed) {
            for u in &copy.usage {
                let row = self.0.entry((source, u.hour_start)).or_default();
                *row = (row.0.max(u.verified), row.1.max(u.rejected));
            }
        }

        fn others(&self, source: u8, hour_start: i64) -> u32 {
            self.0
                .iter()
                .filter(|((s, h), _)| *s != source && *h == hour_start)
                .map(|(_, (v, _))| v)
                .sum()
        }
    }

    #[test]
    fn a_total_written_twice_counts_once() {
        let mut a = Activity::default();
        let mut table = Table::default();
        let t = 12 * HOUR;
        a.admit(t, limits(0, 0), None);
        let copy = a.unflushed(t).unwrap();
        table.write(1, &copy); // committed, but the answer was lost: not marked
        a.admit(t + 1, limits(0, 0), None);
        let again = a.unflushed(t).unwrap();
        table.write(1, &again);
        a.mark_written(&again);
        assert_eq!(table.0[&(1, 12 * HOUR)], (2, 0));
        assert_eq!(a.unflushed(t), None, "all written");
    }

    #[test]
    fn hours_no_table_takes_are_left_out_and_counted_lost() {
        let mut a = Activity::default();
        let t = 60 * HOUR + 30 * MIN;
        a.admit(t, limits(0, 0), None);
        a.record_rejected(t);
        assert_eq!(
            a.unflushed(t + 2 * HOUR).unwrap().usage.len(),
            1,
            "two hours on: sent"
        );
        let late = t + 3 * HOUR;
        assert_eq!(
            a.unflushed(late).map(|u| u.usage),
            Some(vec![]),
            "three: not sent"
        );
        a.drop_stale(late);
        assert_eq!(a.take_lost(), 2);
        assert!(
            a.unflushed(late).is_some_and(|u| u.usage.is_empty()),
            "its last use stays"
        );
    }

    #[test]
    fn saved_totals_include_what_was_written() {
        let mut a = Activity::default();
        let t = 80 * HOUR;
        a.admit(t, limits(0, 0), None);
        a.mark_written(&a.unflushed(t).unwrap());
        assert_eq!(a.unflushed(t), None);
        let saved = a.saved(t + MIN).expect("the hour's total");
        assert_eq!(
            saved.usage,
            vec![HourUsage {
                written_verified: 1,
                ..hour(t, 1, 0)
            }]
        );
        assert_eq!(a.saved(t + 3 * HOUR), None, "an hour no table takes");
    }

    #[test]
    fn promotion_writes_totals_again_and_an_update_counts_on_from_what_was_added() {
        let t = 90 * HOUR;
        let mut a = Activity::default();
        a.admit(t, limits(0, 0), None);
        a.admit(t, limits(0, 0), None);
        a.mark_written(&a.unflushed(t).unwrap());
        a.unmark_written();
        assert_eq!(a.unflushed(t).unwrap().usage, vec![hour(t, 2, 0)]);
        a.mark_written(&a.unflushed(t).unwrap());
        a.admit(t, limits(0, 0), None);
        a.rebase_written();
        assert_eq!(
            a.unflushed(t).unwrap().usage,
            vec![hour(t, 1, 0)],
            "only the new call"
        );
    }

    #[test]
    fn other_servers_calls_fill_the_hour() {
        let mut a = Activity::default();
        let t = 14 * HOUR + 5 * MIN;
        a.note_others(14 * HOUR, 4);
        let l = limits(0, 6);
        assert!(a.admit(t, l, None) && a.admit(t, l, None));
        assert!(!a.admit(t, l, None), "4 elsewhere + 2 here");
        a.note_others(13 * HOUR, 0);
        assert!(!a.admit(t, l, None), "an older hour changes nothing");
        assert!(a.admit(t + HOUR, l, None), "the next hour starts empty");
        assert!(!a.is_idle(t + 2 * HOUR), "unwritten");
        let mut b = Activity::default();
        b.note_others(14 * HOUR, 1);
        assert!(
            !b.is_idle(t),
            "the others' count of the current hour is kept"
        );
        assert!(b.is_idle(t + HOUR));
    }

    proptest! {
        /// However calls fall in time and however often a write's answer is lost, no
        /// clock minute admits more than per_minute and no clock hour more than
        /// per_hour, and the table ends with every call counted exactly once.
        #[test]
        fn windows_never_admit_more_than_the_limits(
            steps in proptest::collection::vec((0i64..90_000_000, 0u8..4), 1..300),
            per_minute in 1u32..6,
            per_hour in 1u32..20,
        ) {
            let mut a = Activity::default();
            let mut table = Table::default();
            let l = limits(per_minute, per_hour);
            let mut t = 400 * HOUR;
            let mut by_minute = std::collections::HashMap::new();
            let mut calls = std::collections::HashMap::<i64, (u32, u32)>::new();
            for (step, flush) in steps {
                t += step;
                let hour = calls.entry(t / HOUR * HOUR).or_default();
                if a.admit(t, l, None) {
                    *by_minute.entry(t / MIN).or_insert(0u32) += 1;
                    hour.0 += 1;
                } else {
                    hour.1 += 1;
                }
                if let Some(copy) = a.unflushed(t) {
                    // Written after every call (when 0: the answer is lost).
                    table.write(0, &copy);
                    if flush != 0 {
                        a.mark_written(&copy);
                    }
                }
            }
            prop_assert!(by_minute.values().all(|&n| n <= per_minute));
            prop_assert!(calls.values().all(|&(v, _)| v <= per_hour));
            calls.retain(|_, c| *c != (0, 0));
            let written: std::collections::HashMap<_, _> =
                table.0.iter().map(|((_, h), c)| (*h, *c)).collect();
            prop_assert_eq!(written, calls);
            prop_assert_eq!(a.take_lost(), 0);
        }

        /// Two servers that write and read the table after every call never admit more
        /// than per_hour between them in any clock hour.
        #[test]
        fn servers_that_share_counts_share_the_hourly_limit(
            steps in proptest::collection::vec((0i64..900_000_000, any::<bool>()), 1..200),
            per_hour in 1u32..20,
        ) {
            let mut servers = [Activity::default(), Activity::default()];
            let mut table = Table::default();
            let l = limits(0, per_hour);
            let mut t = 500 * HOUR;
            let mut by_hour = std::collections::HashMap::new();
            for (step, on_second) in steps {
                t += step;
                let s = usize::from(on_second);
                if servers[s].admit(t, l, None) {
                    *by_hour.entry(t / HOUR).or_insert(0u32) += 1;
                }
                if let Some(copy) = servers[s].unflushed(t) {
                    table.write(s as u8, &copy);
                    servers[s].mark_written(&copy);
                }
                for (i, server) in servers.iter_mut().enumerate() {
                    server.note_others(t / HOUR * HOUR, table.others(i as u8, t / HOUR * HOUR));
                }
            }
            prop_assert!(by_hour.values().all(|&n| n <= per_hour));
        }
    }
}
