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

use crate::core::credits::Terms;

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

/// Rejections are also counted by reason, in this order (the usage table's columns):
/// rate_limited, usage_exceeded, invalid_secret, suspended, revoked, expired,
/// ip_not_allowed, insufficient_scope (`Reason::usage_column`).
pub(crate) const OUTCOMES: usize = 8;
/// The outcome column of a call that passed every check but a window.
pub(crate) const RATE_LIMITED: usize = 0;
/// The outcome column of a call refused for want of uses.
pub(crate) const USAGE_EXCEEDED: usize = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UsageCount {
    hour: u32,
    /// Calls of the hour on this server, and how many of them are written.
    verified: u32,
    rejected: u32,
    written_verified: u32,
    written_rejected: u32,
    /// Rejections by reason: they add up to `rejected`, and are written with it (so
    /// `written_rejected` also says what of them is written).
    outcomes: [u32; OUTCOMES],
}

impl UsageCount {
    fn copy(&self) -> HourUsage {
        HourUsage {
            hour_start: i64::from(self.hour) * MICROS_PER_HOUR,
            verified: self.verified,
            rejected: self.rejected,
            written_verified: self.written_verified,
            written_rejected: self.written_rejected,
            outcomes: self.outcomes,
        }
    }

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
    credits: Credits,
}

/// This server's spending of a key's credits in one credit period. Written as the
/// total of one writer, this server's source and `since` (when this count started),
/// so a state dropped and made again, or a server restarted after a crash, writes
/// beside the earlier counts instead of over them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Credits {
    /// 0: nothing counted.
    since: i64,
    period: i64,
    /// The uses the period started with.
    available: u64,
    spent: u64,
    written: u64,
    /// The other writers' spending the key row showed when this count started.
    floor: u64,
    /// The other writers' spending as the worker last read it.
    others: u64,
}

impl Credits {
    fn copy(&self) -> CreditUse {
        CreditUse {
            period: self.period,
            since: self.since,
            available: self.available,
            spent: self.spent,
            written: self.written,
            floor: self.floor,
        }
    }

    fn counting(&self) -> bool {
        self.since != 0
    }

    /// Uses left in the period counted here.
    fn left(&self) -> u64 {
        let spent = self.floor.max(self.others).saturating_add(self.spent);
        self.available.saturating_sub(spent)
    }

    /// Count from here in `terms`' period when it is newer than the one counted. A
    /// caller whose key row names an older period (a snapshot taken before the credits
    /// changed, or a statement begun before a refill) spends in the newer one: the
    /// period counted here only ever moves forward.
    fn follow(&mut self, terms: &Terms, now: i64) {
        if !self.counting() || terms.period > self.period {
            *self = Credits {
                since: now.max(1),
                period: terms.period,
                available: terms.available,
                floor: terms.written_spent,
                ..Credits::default()
            };
        }
    }
}

/// One writer's spending in a credit period, copied for writing or saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CreditUse {
    pub(crate) period: i64,
    pub(crate) since: i64,
    pub(crate) available: u64,
    pub(crate) spent: u64,
    pub(crate) written: u64,
    pub(crate) floor: u64,
}

/// A call's credits: the key's terms now, and the uses it costs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spend {
    pub(crate) terms: Terms,
    pub(crate) cost: u32,
}

/// One rate window's state after a call, as `RateLimit-*` headers give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// When the window starts again, µs since 2000.
    pub(crate) reset: i64,
}

impl Window {
    /// The clock minute and hour windows at `now` given the calls counted in each (0 in
    /// a limit: that window does not apply), the one that runs out first.
    fn clock(now: i64, limits: Limits, in_minute: u32, in_hour: u32) -> Option<Window> {
        let window = |limit: u32, used: u32, unit: i64| {
            (limit != 0).then(|| Window {
                limit,
                remaining: limit.saturating_sub(used),
                reset: (now.max(0) / unit + 1) * unit,
            })
        };
        Window::tighter(
            window(limits.per_minute, in_minute, MICROS_PER_MINUTE),
            window(limits.per_hour, in_hour, MICROS_PER_HOUR),
        )
    }

    /// The window that runs out first: fewer calls left, then the later reset.
    pub(crate) fn tighter(a: Option<Window>, b: Option<Window>) -> Option<Window> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if (b.remaining, -b.reset) < (a.remaining, -a.reset) {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        }
    }
}

/// What `admit` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted,
    RateLimited,
    UsageExceeded,
}

/// A key's limits after a call: the window that runs out first, the uses left (None:
/// unlimited) and when they are refilled next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LimitState {
    pub(crate) window: Option<Window>,
    pub(crate) remaining_uses: Option<u64>,
    pub(crate) uses_reset: Option<i64>,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HourUsage {
    /// Start of the hour, µs since 2000-01-01 UTC.
    pub(crate) hour_start: i64,
    pub(crate) verified: u32,
    pub(crate) rejected: u32,
    pub(crate) written_verified: u32,
    pub(crate) written_rejected: u32,
    /// Rejections by reason (the usage table's outcome columns).
    pub(crate) outcomes: [u32; OUTCOMES],
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
    pub(crate) credits: Option<CreditUse>,
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
        self.last_used_at != 0
            || self.usage.iter().any(|u| u.unwritten() > 0)
            || self.credits.spent > self.credits.written
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

    /// A window with no call left (the tightest is then full).
    fn over(&self, now: i64, limits: Limits) -> bool {
        self.window(now, limits).is_some_and(|w| w.remaining == 0)
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

    /// Count a call: verified (`None`), or rejected for the outcome column given.
    fn count(&mut self, now: i64, rejected: Option<usize>) {
        match (self.usage_for(hour_of(now)), rejected) {
            // Saturating at u32::MAX calls an hour: a total never wraps below what is
            // written.
            (Some(u), None) => u.verified = u.verified.saturating_add(1),
            (Some(u), Some(outcome)) => {
                u.rejected = u.rejected.saturating_add(1);
                if let Some(n) = u.outcomes.get_mut(outcome) {
                    *n = n.saturating_add(1);
                }
            }
            // The clock went back past an unwritten hour.
            (None, _) => self.lost = self.lost.saturating_add(1),
        }
    }

    /// The key's window that runs out first at `now` (after `roll`).
    pub(crate) fn window(&self, now: i64, limits: Limits) -> Option<Window> {
        Window::clock(now, limits, self.in_minute, self.admitted_in(hour_of(now)))
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

    /// A call that passed every other check: admitted (counted in both windows, its
    /// cost spent, recorded as verified and as the last use) when both windows have
    /// room and the key has the uses (at least one, and the cost), else recorded as
    /// rejected. Also answers the limits' state after the call.
    pub(crate) fn admit(
        &mut self,
        now: i64,
        limits: Limits,
        ip: Option<std::net::IpAddr>,
        spend: Option<Spend>,
    ) -> (Admission, LimitState) {
        self.roll(now);
        if let Some(s) = &spend {
            self.credits.follow(&s.terms, now);
        }
        let left = spend.map(|_| self.credits.left());
        let admission = if self.over(now, limits) {
            Admission::RateLimited
        } else if spend
            .zip(left)
            .is_some_and(|(s, left)| left == 0 || left < u64::from(s.cost))
        {
            Admission::UsageExceeded
        } else {
            Admission::Admitted
        };
        let remaining_uses = match admission {
            Admission::Admitted => {
                self.in_minute += 1;
                self.count(now, None);
                self.last_used_at = now;
                (self.last_ip_family, self.last_ip) = ip_parts(ip);
                if let Some(s) = spend {
                    self.credits.spent = self.credits.spent.saturating_add(u64::from(s.cost));
                }
                spend.zip(left).map(|(s, left)| left - u64::from(s.cost))
            }
            Admission::RateLimited => {
                self.count(now, Some(RATE_LIMITED));
                left
            }
            Admission::UsageExceeded => {
                self.count(now, Some(USAGE_EXCEEDED));
                left
            }
        };
        let state = LimitState {
            window: self.window(now, limits),
            remaining_uses,
            uses_reset: spend.and_then(|s| s.terms.refill_at),
        };
        (admission, state)
    }

    /// Take back a call `admit` admitted at `now` at this cost, which a limit checked
    /// after it (the owner's) refused: it counts as rate limited, and spent nothing.
    pub(crate) fn refund(&mut self, now: i64, spend: Option<Spend>) {
        if self.minute == minute_of(now) {
            self.in_minute = self.in_minute.saturating_sub(1);
        }
        if let Some(u) = self.usage.iter_mut().find(|u| u.hour == hour_of(now)) {
            u.verified = u.verified.saturating_sub(1);
            u.written_verified = u.written_verified.min(u.verified);
            u.rejected = u.rejected.saturating_add(1);
            u.outcomes[RATE_LIMITED] = u.outcomes[RATE_LIMITED].saturating_add(1);
        }
        if let Some(s) = spend {
            let c = &mut self.credits;
            c.spent = c.spent.saturating_sub(u64::from(s.cost));
            c.written = c.written.min(c.spent);
        }
    }

    /// A call for this key that failed a check other than its limits, counted under
    /// that outcome column.
    pub(crate) fn record_rejected(&mut self, now: i64, outcome: usize) {
        self.roll(now);
        self.count(now, Some(outcome));
    }

    /// Other writers' spending of the key's credits in `period`, as the table shows
    /// it now: every writer's total but this state's own (`source`, its `since`).
    pub(crate) fn note_credit_others(
        &mut self,
        period: i64,
        source: [u8; 16],
        writers: impl Iterator<Item = ([u8; 16], i64, u64)>,
    ) {
        let c = &mut self.credits;
        if !c.counting() || c.period != period {
            return;
        }
        let others = writers
            .filter(|(s, since, _)| !(*s == source && *since == c.since))
            .fold(0u64, |sum, (_, _, spent)| sum.saturating_add(spent));
        c.others = c.others.max(others);
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
            .map(UsageCount::copy)
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
        let c = &self.credits;
        let credits = (c.spent > c.written).then(|| c.copy());
        Some(Unflushed {
            usage,
            last,
            credits,
        })
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
            .map(UsageCount::copy)
            .collect();
        let last = self.unflushed(now).and_then(|u| u.last);
        let credits =
            (self.credits.counting() && self.credits.spent > 0).then(|| self.credits.copy());
        (!usage.is_empty() || last.is_some() || credits.is_some()).then_some(Unflushed {
            usage,
            last,
            credits,
        })
    }

    /// This server's writes may not have reached the tables it writes now (it was a
    /// standby, promoted: the old primary may have lost what it committed): its totals
    /// are written again (which changes nothing where they did arrive).
    pub(crate) fn unmark_written(&mut self) {
        for u in &mut self.usage {
            u.written_verified = 0;
            u.written_rejected = 0;
        }
        self.credits.written = 0;
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
        let c = &mut self.credits;
        if let Some(w) = written
            .credits
            .filter(|w| (w.period, w.since) == (c.period, c.since))
        {
            c.written = c.written.max(w.spent.min(c.spent));
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
                    for (n, saved) in u.outcomes.iter_mut().zip(s.outcomes) {
                        *n = n.saturating_add(saved);
                    }
                }
                None => {
                    let (v, r) = s.new_calls();
                    self.lost = self.lost.saturating_add(v.saturating_add(r));
                }
            }
        }
        match saved.credits {
            Some(c) if !self.credits.counting() => {
                self.credits = Credits {
                    since: c.since,
                    period: c.period,
                    available: c.available,
                    spent: c.spent,
                    written: c.written.min(c.spent),
                    floor: c.floor,
                    others: 0,
                };
            }
            Some(c) => {
                let unwritten = c.spent.saturating_sub(c.written);
                self.lost = self
                    .lost
                    .saturating_add(u32::try_from(unwritten).unwrap_or(u32::MAX));
            }
            None => {}
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

/// The windows an owner's keys share (owner-wide limits): calls admitted in the clock
/// minute and hour on this server, and (for the hour) on other servers as last read.
/// Nothing of it is written: the usage of the owner's keys is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OwnerWindows {
    minute: u32,
    in_minute: u32,
    hour: u32,
    in_hour: u32,
    others_hour: u32,
    others: u32,
    last_seen_minute: u32,
}

impl OwnerWindows {
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

    /// The owner's window that runs out first at `now` (after `roll`).
    fn window(&self, now: i64, limits: Limits) -> Option<Window> {
        let others = if self.others_hour == hour_of(now) {
            self.others
        } else {
            0
        };
        Window::clock(
            now,
            limits,
            self.in_minute,
            self.in_hour.saturating_add(others),
        )
    }

    /// Count a call in both windows when both have room; the windows' state after it.
    pub(crate) fn admit(&mut self, now: i64, limits: Limits) -> (bool, Option<Window>) {
        self.roll(now);
        let room = self.window(now, limits).is_none_or(|w| w.remaining > 0);
        if room {
            self.in_minute += 1;
            self.in_hour = self.in_hour.saturating_add(1);
        }
        (room, self.window(now, limits))
    }

    /// The calls other servers admitted for the owner's keys in hour `hour_start`.
    pub(crate) fn note_others(&mut self, hour_start: i64, verified: u32) {
        let hour = hour_of(hour_start);
        if hour >= self.others_hour {
            self.others_hour = hour;
            self.others = verified;
        }
    }

    /// This server's calls of hour `hour_start` as written: a floor for its own count
    /// of the hour (which a clean restart forgets).
    pub(crate) fn note_written_here(&mut self, hour_start: i64, verified: u32) {
        let hour = hour_of(hour_start);
        if hour > self.hour {
            self.hour = hour;
            self.in_hour = 0;
        }
        if hour == self.hour {
            self.in_hour = self.in_hour.max(verified);
        }
    }

    /// Both windows over and no other server's count of the current hour to keep.
    pub(crate) fn is_idle(&self, now: i64) -> bool {
        minute_of(now).saturating_sub(self.last_seen_minute) > 60
            && (self.others_hour != hour_of(now) || self.others == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const HOUR: i64 = MICROS_PER_HOUR;

    /// An uncharged call: admitted?
    fn admit(a: &mut Activity, now: i64, l: Limits, ip: Option<std::net::IpAddr>) -> bool {
        a.admit(now, l, ip, None).0 == Admission::Admitted
    }

    fn hour(hour_start: i64, verified: u32, rejected: u32) -> HourUsage {
        HourUsage {
            hour_start,
            verified,
            rejected,
            outcomes: [0, 0, rejected, 0, 0, 0, 0, 0],
            ..HourUsage::default()
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
        let admitted = (0..10)
            .filter(|i| admit(&mut a, t + i * 1000, l, None))
            .count();
        assert_eq!(admitted, 3);
        assert!(a.is_over(t + 59_000_000, l));
        assert!(!a.is_over(t + MIN, l), "next clock minute");
        assert!(admit(&mut a, t + MIN, l, None));
    }

    #[test]
    fn per_hour_window_spans_minutes() {
        let mut a = Activity::default();
        let t = 1000 * HOUR;
        let l = limits(100, 5);
        let admitted = (0..20)
            .filter(|i| admit(&mut a, t + i * MIN, l, None))
            .count();
        assert_eq!(admitted, 5);
        assert!(admit(&mut a, t + HOUR, l, None));
    }

    #[test]
    fn zero_is_unlimited_and_rejections_do_not_consume_quota() {
        let mut a = Activity::default();
        let t = 5 * HOUR;
        assert!((0..1000).all(|_| admit(&mut a, t, limits(0, 0), None)));
        let mut b = Activity::default();
        for _ in 0..50 {
            b.record_rejected(t, 2);
        }
        assert!(!b.is_over(t, limits(1, 1)));
    }

    #[test]
    fn unflushed_reports_usage_per_hour_and_the_last_use() {
        let mut a = Activity::default();
        let t = 7 * HOUR + 59 * MIN;
        let ip = "10.1.2.3".parse().ok();
        admit(&mut a, t, limits(0, 0), None);
        a.record_rejected(t, 2);
        admit(&mut a, t + MIN, limits(0, 0), ip); // the next hour
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
        admit(&mut a, t, limits(0, 0), None);
        let copy = a.unflushed(t).unwrap();
        admit(&mut a, t + 1, limits(0, 0), None); // during the flush
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
        admit(&mut a, t, limits(0, 0), None);
        let saved = a.unflushed(t).unwrap();
        let mut b = Activity::default();
        admit(&mut b, t + 5, limits(0, 0), None);
        b.restore(&saved);
        let both = b.unflushed(t).unwrap();
        assert_eq!(both.usage[0].verified, 2);
        assert_eq!(both.last.map(|l| l.at), Some(t + 5));
    }

    #[test]
    fn a_restored_hour_is_kept_while_it_counts() {
        let t = 70 * HOUR + 10 * MIN;
        let mut saved = Activity::default();
        admit(&mut saved, t, limits(0, 2), None);
        let copy = saved.unflushed(t).unwrap();
        let mut a = Activity::default();
        a.restore(&copy);
        a.mark_written(&a.unflushed(t).unwrap());
        assert!(!a.is_idle(t + 40 * MIN), "its hour is not over");
        assert!(admit(&mut a, t + 40 * MIN, limits(0, 2), None));
        assert!(
            !admit(&mut a, t + 40 * MIN, limits(0, 2), None),
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
        admit(&mut a, t, limits(0, 2), None);
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
        admit(&mut a, t, limits(0, 0), None);
        a.record_rejected(t, 2);
        assert_eq!(a.take_lost(), 0);
        admit(&mut a, t + 2 * HOUR, limits(0, 0), None); // the same slot, two hours on
        assert_eq!(a.take_lost(), 2, "both calls of the unwritten hour");
        assert_eq!(a.take_lost(), 0, "taken once");
    }

    #[test]
    fn restoring_an_old_hour_never_pushes_out_a_newer_one() {
        let mut a = Activity::default();
        let t = 40 * HOUR;
        admit(&mut a, t, limits(0, 0), None);
        let old = Unflushed {
            usage: vec![hour(t - 2 * HOUR, 3, 1)],
            last: None,
            credits: None,
        };
        a.restore(&old);
        assert_eq!(a.take_lost(), 4, "the saved hour is the one lost");
        let now = a.unflushed(t).unwrap();
        assert_eq!(now.usage, vec![hour(t, 1, 0)]);
        // A clock that goes back past an unwritten hour loses that call, not the hour.
        a.record_rejected(t - 2 * HOUR, 2);
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
        admit(&mut a, t, limits(0, 0), None);
        let copy = a.unflushed(t).unwrap();
        table.write(1, &copy); // committed, but the answer was lost: not marked
        admit(&mut a, t + 1, limits(0, 0), None);
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
        admit(&mut a, t, limits(0, 0), None);
        a.record_rejected(t, 2);
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
        admit(&mut a, t, limits(0, 0), None);
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
        admit(&mut a, t, limits(0, 0), None);
        admit(&mut a, t, limits(0, 0), None);
        a.mark_written(&a.unflushed(t).unwrap());
        a.unmark_written();
        assert_eq!(a.unflushed(t).unwrap().usage, vec![hour(t, 2, 0)]);
        a.mark_written(&a.unflushed(t).unwrap());
        admit(&mut a, t, limits(0, 0), None);
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
        assert!(admit(&mut a, t, l, None) && admit(&mut a, t, l, None));
        assert!(!admit(&mut a, t, l, None), "4 elsewhere + 2 here");
        a.note_others(13 * HOUR, 0);
        assert!(!admit(&mut a, t, l, None), "an older hour changes nothing");
        assert!(
            admit(&mut a, t + HOUR, l, None),
            "the next hour starts empty"
        );
        assert!(!a.is_idle(t + 2 * HOUR), "unwritten");
        let mut b = Activity::default();
        b.note_others(14 * HOUR, 1);
        assert!(
            !b.is_idle(t),
            "the others' count of the current hour is kept"
        );
        assert!(b.is_idle(t + HOUR));
    }

    fn terms(period: i64, available: u64, written_spent: u64) -> Terms {
        Terms {
            period,
            available,
            written_spent,
            refill_at: None,
        }
    }

    fn spend(terms: Terms, cost: u32) -> Option<Spend> {
        Some(Spend { terms, cost })
    }

    #[test]
    fn credits_run_out_exactly_and_zero_refuses_even_a_free_call() {
        let mut a = Activity::default();
        let t = 100 * HOUR;
        let c = terms(t - HOUR, 5, 0);
        let outcomes: Vec<_> = (0..4)
            .map(|_| a.admit(t, Limits::UNLIMITED, None, spend(c, 2)))
            .map(|(adm, s)| (adm, s.remaining_uses))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (Admission::Admitted, Some(3)),
                (Admission::Admitted, Some(1)),
                (Admission::UsageExceeded, Some(1)),
                (Admission::UsageExceeded, Some(1)),
            ]
        );
        assert_eq!(
            a.admit(t, Limits::UNLIMITED, None, spend(c, 1)).0,
            Admission::Admitted
        );
        assert_eq!(
            a.admit(t, Limits::UNLIMITED, None, spend(c, 0)).0,
            Admission::UsageExceeded,
            "at zero, even a call that costs nothing"
        );
        let copy = a.unflushed(t).unwrap();
        assert_eq!(copy.usage[0].outcomes[USAGE_EXCEEDED], 3);
        assert_eq!(copy.credits.map(|c| c.spent), Some(5));
    }

    #[test]
    fn spending_starts_from_the_row_and_adds_other_writers_but_never_itself() {
        let mut a = Activity::default();
        let t = 200 * HOUR;
        let p = t - HOUR;
        // The row says 6 of 10 are spent (earlier writers); this state adds 2.
        for _ in 0..2 {
            a.admit(t, Limits::UNLIMITED, None, spend(terms(p, 10, 6), 1));
        }
        let since = a.unflushed(t).unwrap().credits.unwrap().since;
        // The table: our own total (2), never counted as another's, and another server's
        // (5): the row's 6 stays the larger reading of the others, so 6 + 2 are spent.
        let me = [7; 16];
        a.note_credit_others(p, me, [(me, since, 2), ([8; 16], 1, 5)].into_iter());
        let (adm, s) = a.admit(t, Limits::UNLIMITED, None, spend(terms(p, 10, 6), 1));
        assert_eq!((adm, s.remaining_uses), (Admission::Admitted, Some(1)));
        // Another server spent more since: 7 others.
        a.note_credit_others(p, me, [(me, since, 3), ([8; 16], 1, 7)].into_iter());
        let (adm, s) = a.admit(t, Limits::UNLIMITED, None, spend(terms(p, 10, 6), 1));
        assert_eq!((adm, s.remaining_uses), (Admission::UsageExceeded, Some(0)));
        a.note_credit_others(p + 1, me, [([8; 16], 1, 100)].into_iter());
        assert_eq!(
            a.admit(t, Limits::UNLIMITED, None, spend(terms(p, 10, 6), 0))
                .1
                .remaining_uses,
            Some(0),
            "another period's writers change nothing"
        );
    }

    #[test]
    fn a_new_period_starts_a_new_count_and_an_older_one_spends_in_it() {
        let mut a = Activity::default();
        let t = 300 * HOUR;
        a.admit(t, Limits::UNLIMITED, None, spend(terms(t - HOUR, 1, 0), 1));
        let (adm, _) = a.admit(t, Limits::UNLIMITED, None, spend(terms(t - HOUR, 1, 0), 1));
        assert_eq!(adm, Admission::UsageExceeded);
        // Refilled (or granted again): a new period, a new writer.
        let (adm, s) = a.admit(t + 1, Limits::UNLIMITED, None, spend(terms(t, 3, 0), 1));
        assert_eq!((adm, s.remaining_uses), (Admission::Admitted, Some(2)));
        let copy = a.unflushed(t + 1).unwrap().credits.unwrap();
        assert_eq!((copy.period, copy.since, copy.spent), (t, t + 1, 1));
        // A caller whose snapshot still shows the old period spends in the new one.
        let stale = spend(terms(t - HOUR, 4, 1), 1);
        let (adm, s) = a.admit(t + 2, Limits::UNLIMITED, None, stale);
        assert_eq!((adm, s.remaining_uses), (Admission::Admitted, Some(1)));
        assert_eq!(a.unflushed(t + 2).unwrap().credits.unwrap().spent, 2);
        a.admit(t + 3, Limits::UNLIMITED, None, spend(terms(t, 3, 0), 1));
        let (adm, _) = a.admit(t + 4, Limits::UNLIMITED, None, stale);
        assert_eq!(
            adm,
            Admission::UsageExceeded,
            "the newer period's uses are shared"
        );
    }

    #[test]
    fn a_refund_takes_back_the_call_and_its_cost() {
        let mut a = Activity::default();
        let t = 400 * HOUR + 30 * MIN;
        let c = spend(terms(t - HOUR, 10, 0), 4);
        let (adm, _) = a.admit(t, limits(1, 0), None, c);
        assert_eq!(adm, Admission::Admitted);
        a.refund(t, c);
        let (adm, s) = a.admit(t, limits(1, 0), None, c);
        assert_eq!(
            (adm, s.remaining_uses),
            (Admission::Admitted, Some(6)),
            "room and uses back"
        );
        let copy = a.unflushed(t).unwrap();
        assert_eq!((copy.usage[0].verified, copy.usage[0].rejected), (1, 1));
        assert_eq!(copy.usage[0].outcomes[RATE_LIMITED], 1);
        assert_eq!(copy.credits.unwrap().spent, 4);
    }

    #[test]
    fn the_state_names_the_window_that_runs_out_first() {
        let mut a = Activity::default();
        let t = 500 * HOUR + 10 * MIN + 5_000_000;
        let l = limits(3, 100);
        let (_, s) = a.admit(t, l, None, None);
        assert_eq!(
            s.window,
            Some(Window {
                limit: 3,
                remaining: 2,
                reset: 500 * HOUR + 11 * MIN
            })
        );
        a.admit(t, l, None, None);
        a.admit(t, l, None, None);
        let (adm, s) = a.admit(t, l, None, None);
        assert_eq!(adm, Admission::RateLimited);
        assert_eq!(s.window.map(|w| w.remaining), Some(0));
        let (_, s) = a.admit(t, limits(0, 4), None, None);
        assert_eq!(
            s.window,
            Some(Window {
                limit: 4,
                remaining: 0,
                reset: 501 * HOUR
            }),
            "the hour"
        );
        assert_eq!(a.admit(t, Limits::UNLIMITED, None, None).1.window, None);
        let equal = |reset| {
            Some(Window {
                limit: 1,
                remaining: 0,
                reset,
            })
        };
        assert_eq!(
            Window::tighter(equal(5), equal(9)),
            equal(9),
            "the later reset"
        );
    }

    #[test]
    fn owner_windows_are_shared_and_count_other_servers() {
        let mut o = OwnerWindows::default();
        let t = 600 * HOUR + 59 * MIN;
        let l = limits(2, 3);
        assert!(o.admit(t, l).0 && o.admit(t, l).0);
        let (room, w) = o.admit(t, l);
        assert!(!room, "the minute");
        assert_eq!(w.map(|w| (w.remaining, w.reset)), Some((0, 601 * HOUR)));
        assert!(o.admit(t + MIN, l).0, "a new hour and minute");
        o.note_others(601 * HOUR, 2);
        assert!(!o.admit(t + MIN, l).0, "1 here + 2 elsewhere");
        let mut restarted = OwnerWindows::default();
        restarted.note_written_here(601 * HOUR, 3);
        assert!(!restarted.admit(t + MIN, l).0, "its own calls as written");
        restarted.note_written_here(600 * HOUR, 0);
        assert!(
            !restarted.admit(t + MIN, l).0,
            "an older hour changes nothing"
        );
        assert!(!o.is_idle(t + 30 * MIN));
        assert!(o.is_idle(t + 2 * HOUR));
    }

    /// A server that crashes loses only what it had not written: the key never gets
    /// fewer uses than it was given, and never more than that plus the lost spending.
    #[test]
    fn a_crash_loses_at_most_the_unwritten_spending() {
        let t = 700 * HOUR;
        let p = t - HOUR;
        let granted = 100u64;
        let mut table: u64 = 0; // what all writers have written for the period
        let mut a = Activity::default();
        let mut admitted = 0u64;
        let call = |a: &mut Activity, table: u64| {
            a.admit(
                t,
                Limits::UNLIMITED,
                None,
                spend(terms(p, granted, table), 1),
            )
            .0 == Admission::Admitted
        };
        for _ in 0..30 {
            admitted += u64::from(call(&mut a, table));
        }
        let copy = a.unflushed(t).unwrap();
        table += copy.credits.unwrap().spent;
        a.mark_written(&copy);
        for _ in 0..10 {
            admitted += u64::from(call(&mut a, table));
        }
        // Crash: the state is gone; 10 uses were never written.
        let mut b = Activity::default();
        while call(&mut b, table) {
            admitted += 1;
        }
        assert!(admitted >= granted, "never fewer");
        assert_eq!(admitted, granted + 10, "at most the unwritten ones more");
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
                if admit(&mut a, t, l, None) {
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
                if admit(&mut servers[s], t, l, None) {
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
