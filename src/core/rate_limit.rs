//! One key's activity between flushes: rate-limit windows and usage not yet written.
//!
//! Rate limits count in fixed, clock-aligned windows: the UTC minute and the UTC hour
//! (counted from 2000-01-01, Postgres' epoch, which is hour-aligned). A call is admitted
//! when both windows have room, and then counts in both; so at most `per_minute` calls
//! in any clock minute and `per_hour` in any clock hour, and up to twice a limit across
//! a window boundary. Usage (verified / rejected per hour, last use) accumulates here
//! until the background worker writes it: it takes a copy (`unflushed`), writes it, and
//! only once that has committed subtracts what it wrote (`forget_flushed`), so calls
//! counted in between are kept and nothing is written twice.
//!
//! One `Activity` per key, wherever the caller keeps it (a shared hash table entry, or a
//! backend-local map). Pure: no pgrx; the caller does the locking.

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UsageCount {
    hour: u32,
    verified: u32,
    rejected: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Activity {
    minute: u32,
    in_minute: u32,
    hour: u32,
    in_hour: u32,
    /// Unflushed counts of the current and the previous hour (indexed by hour % 2).
    usage: [UsageCount; 2],
    /// Last admitted call not yet flushed: when (µs since 2000), and from where.
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

/// One key's usage in one hour, copied for flushing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HourUsage {
    /// Start of the hour, µs since 2000-01-01 UTC.
    pub(crate) hour_start: i64,
    pub(crate) verified: u32,
    pub(crate) rejected: u32,
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

fn minute_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_MINUTE) as u32
}

fn hour_of(now: i64) -> u32 {
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
        self.last_used_at != 0 || self.usage.iter().any(|u| u.verified > 0 || u.rejected > 0)
    }

    fn roll(&mut self, now: i64) {
        let (minute, hour) = (minute_of(now), hour_of(now));
        if self.minute != minute {
            self.minute = minute;
            self.in_minute = 0;
        }
        if self.hour != hour {
            self.hour = hour;
            self.in_hour = 0;
        }
        self.last_seen_minute = minute;
    }

    fn over(&self, limits: Limits) -> bool {
        (limits.per_minute != 0 && self.in_minute >= limits.per_minute)
            || (limits.per_hour != 0 && self.in_hour >= limits.per_hour)
    }

    /// The count of `hour`: its slot, taken over from an older hour (whose unwritten
    /// counts are then lost); None when the slot holds a newer hour not yet written
    /// (a call or a saved count older than that is lost instead).
    fn usage_for(&mut self, hour: u32) -> Option<&mut UsageCount> {
        let u = &mut self.usage[hour as usize % 2];
        if u.hour != hour {
            let unwritten = u.verified.saturating_add(u.rejected);
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
        self.over(limits)
    }

    /// A call that passed every other check: admitted (counted in both windows,
    /// recorded as verified and as the last use) when both windows have room, else
    /// recorded as rejected.
    pub(crate) fn admit(&mut self, now: i64, limits: Limits, ip: Option<std::net::IpAddr>) -> bool {
        self.roll(now);
        if self.over(limits) {
            self.count(now, false);
            return false;
        }
        self.in_minute += 1;
        self.in_hour += 1;
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

    /// A copy of what is not yet written; None when nothing is.
    pub(crate) fn unflushed(&self) -> Option<Unflushed> {
        if !self.has_unflushed() {
            return None;
        }
        let usage = self
            .usage
            .iter()
            .filter(|u| u.verified > 0 || u.rejected > 0)
            .map(|u| HourUsage {
                hour_start: i64::from(u.hour) * MICROS_PER_HOUR,
                verified: u.verified,
                rejected: u.rejected,
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

    /// `written` (a copy `unflushed` gave) is now in the tables: take it out, keeping
    /// whatever was counted since the copy.
    pub(crate) fn forget_flushed(&mut self, written: &Unflushed) {
        for w in &written.usage {
            let hour = (w.hour_start / MICROS_PER_HOUR) as u32;
            if let Some(u) = self.usage.iter_mut().find(|u| u.hour == hour) {
                u.verified = u.verified.saturating_sub(w.verified);
                u.rejected = u.rejected.saturating_sub(w.rejected);
            }
        }
        if written.last.is_some_and(|l| l.at == self.last_used_at) {
            self.last_used_at = 0;
        }
    }

    /// Add activity written to disk at a clean shutdown, read back at start.
    pub(crate) fn restore(&mut self, saved: &Unflushed) {
        for s in &saved.usage {
            match self.usage_for(hour_of(s.hour_start)) {
                Some(u) => {
                    u.verified = u.verified.saturating_add(s.verified);
                    u.rejected = u.rejected.saturating_add(s.rejected);
                }
                None => {
                    self.lost = self
                        .lost
                        .saturating_add(s.verified.saturating_add(s.rejected));
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
    /// seen more than an hour ago (so both windows are over).
    pub(crate) fn is_idle(&self, now: i64) -> bool {
        !self.has_unflushed() && minute_of(now).saturating_sub(self.last_seen_minute) > 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const HOUR: i64 = MICROS_PER_HOUR;

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
        let mut copy = a.unflushed().expect("something to write");
        copy.usage.sort_by_key(|u| u.hour_start);
        assert_eq!(
            copy.usage,
            vec![
                HourUsage {
                    hour_start: 7 * HOUR,
                    verified: 1,
                    rejected: 1
                },
                HourUsage {
                    hour_start: 8 * HOUR,
                    verified: 1,
                    rejected: 0
                },
            ]
        );
        assert_eq!(copy.last, Some(LastUse { at: t + MIN, ip }));
        a.forget_flushed(&copy);
        assert_eq!(a.unflushed(), None, "written once");
    }

    #[test]
    fn calls_counted_while_a_flush_runs_are_kept() {
        let mut a = Activity::default();
        let t = 3 * HOUR;
        a.admit(t, limits(0, 0), None);
        let copy = a.unflushed().unwrap();
        a.admit(t + 1, limits(0, 0), None); // during the flush
        a.forget_flushed(&copy);
        let left = a.unflushed().unwrap();
        assert_eq!(left.usage[0].verified, 1);
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
        let saved = a.unflushed().unwrap();
        let mut b = Activity::default();
        b.admit(t + 5, limits(0, 0), None);
        b.restore(&saved);
        let both = b.unflushed().unwrap();
        assert_eq!(both.usage[0].verified, 2);
        assert_eq!(both.last.map(|l| l.at), Some(t + 5));
    }

    #[test]
    fn idle_only_after_an_hour_unseen_and_once_written() {
        let mut a = Activity::default();
        let t = 20 * HOUR;
        a.admit(t, limits(0, 2), None);
        assert!(!a.is_idle(t + 2 * HOUR), "unwritten usage keeps it");
        let copy = a.unflushed().unwrap();
        a.forget_flushed(&copy);
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
            usage: vec![HourUsage {
                hour_start: t - 2 * HOUR,
                verified: 3,
                rejected: 1,
            }],
            last: None,
        };
        a.restore(&old);
        assert_eq!(a.take_lost(), 4, "the saved hour is the one lost");
        let now = a.unflushed().unwrap();
        assert_eq!(
            now.usage,
            vec![HourUsage {
                hour_start: t,
                verified: 1,
                rejected: 0
            }]
        );
        // A clock that goes back past an unwritten hour loses that call, not the hour.
        a.record_rejected(t - 2 * HOUR);
        assert_eq!(a.take_lost(), 1);
        assert_eq!(a.unflushed().unwrap().usage[0].verified, 1);
    }

    proptest! {
        /// However calls fall in time, no clock minute admits more than per_minute and
        /// no clock hour more than per_hour, and every call is counted exactly once.
        #[test]
        fn windows_never_admit_more_than_the_limits(
            steps in proptest::collection::vec(0i64..90_000_000, 1..300),
            per_minute in 1u32..6,
            per_hour in 1u32..20,
        ) {
            let mut a = Activity::default();
            let l = limits(per_minute, per_hour);
            let mut t = 400 * HOUR;
            let mut by_minute = std::collections::HashMap::new();
            let mut by_hour = std::collections::HashMap::new();
            let (mut verified, mut rejected) = (0u32, 0u32);
            for step in steps {
                t += step;
                if a.admit(t, l, None) {
                    *by_minute.entry(t / MIN).or_insert(0u32) += 1;
                    *by_hour.entry(t / HOUR).or_insert(0u32) += 1;
                    verified += 1;
                } else {
                    rejected += 1;
                }
                if let Some(copy) = a.unflushed() {
                    // Flushing as often as possible loses nothing.
                    for u in &copy.usage {
                        prop_assert!(u.verified + u.rejected <= verified + rejected);
                    }
                    verified -= copy.usage.iter().map(|u| u.verified).sum::<u32>();
                    rejected -= copy.usage.iter().map(|u| u.rejected).sum::<u32>();
                    a.forget_flushed(&copy);
                }
            }
            prop_assert!(by_minute.values().all(|&n| n <= per_minute));
            prop_assert!(by_hour.values().all(|&n| n <= per_hour));
            prop_assert_eq!((verified, rejected), (0, 0));
        }
    }
}
