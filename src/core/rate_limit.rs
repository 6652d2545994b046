//! Per-key activity between flushes: rate-limit windows and usage not yet written.
//!
//! Rate limits count in fixed, clock-aligned windows: the UTC minute and the UTC hour
//! (counted from 2000-01-01, Postgres' epoch, which is hour-aligned). A call is admitted
//! when both windows have room, and then counts in both; so at most `per_minute` calls
//! in any clock minute and `per_hour` in any clock hour, and up to twice a limit across
//! a window boundary. Usage (verified / rejected per hour, last use) accumulates here
//! until the background worker drains it into tables.
//!
//! Layout: buckets of `WAYS` slots keyed by key id over a plain slice (shared or
//! backend-local memory). Pure: no pgrx; the caller does the locking and chooses the
//! stripe with `bucket_index`.

pub(crate) const WAYS: usize = 8;
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
pub(crate) struct KeySlot {
    /// All zero: an empty slot (no key has the nil uuid).
    key_id: [u8; 16],
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

/// One key's usage in one hour, drained for flushing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HourUsage {
    pub(crate) key_id: [u8; 16],
    /// Start of the hour, µs since 2000-01-01 UTC.
    pub(crate) hour_start: i64,
    pub(crate) verified: u32,
    pub(crate) rejected: u32,
}

/// One key's last admitted call, drained for flushing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LastUse {
    pub(crate) key_id: [u8; 16],
    pub(crate) at: i64,
    pub(crate) ip: Option<std::net::IpAddr>,
}

fn minute_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_MINUTE) as u32
}

fn hour_of(now: i64) -> u32 {
    (now.max(0) / MICROS_PER_HOUR) as u32
}

/// Which bucket `key_id` lives in: callers lock by it.
pub(crate) fn bucket_index(slots_len: usize, key_id: &[u8; 16]) -> usize {
    let buckets = (slots_len / WAYS).max(1);
    u64::from_le_bytes(key_id[..8].try_into().expect("8 bytes")) as usize % buckets
}

/// The slots of `key_id`'s bucket. The functions below take the whole table or just
/// this bucket (a table of one bucket), so a caller may lend out only what it locked.
pub(crate) fn bucket(slots_len: usize, key_id: &[u8; 16]) -> std::ops::Range<usize> {
    let start = bucket_index(slots_len, key_id) * WAYS;
    start..(start + WAYS).min(slots_len)
}

impl KeySlot {
    fn is_empty(&self) -> bool {
        self.key_id == [0; 16]
    }

    fn has_unflushed(&self) -> bool {
        self.last_used_at != 0 || self.usage.iter().any(|u| u.verified + u.rejected > 0)
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

    fn usage_now(&mut self, now: i64) -> &mut UsageCount {
        let hour = hour_of(now);
        let u = &mut self.usage[hour as usize % 2];
        if u.hour != hour {
            // Counts two hours old were never drained (no worker): dropped.
            *u = UsageCount {
                hour,
                ..UsageCount::default()
            };
        }
        u
    }
}

/// The slot of `key_id`, claimed if absent; None when the slice is empty. Reuses, in
/// order: the key's own slot, an empty one, one with no live window and nothing
/// unflushed, the least recently seen. `evicted` is set when live state was dropped
/// (the evicted key starts afresh: its windows and unflushed usage are lost).
fn slot<'a>(
    slots: &'a mut [KeySlot],
    key_id: &[u8; 16],
    now: i64,
    evicted: &mut bool,
) -> Option<&'a mut KeySlot> {
    if slots.is_empty() {
        return None;
    }
    let range = bucket(slots.len(), key_id);
    let bucket = &mut slots[range];
    let hour = hour_of(now);
    let i = bucket
        .iter()
        .position(|s| s.key_id == *key_id)
        .or_else(|| bucket.iter().position(KeySlot::is_empty))
        .or_else(|| {
            bucket
                .iter()
                .position(|s| s.hour != hour && !s.has_unflushed())
        })
        .unwrap_or_else(|| {
            *evicted = true;
            (0..bucket.len())
                .min_by_key(|&i| bucket[i].last_seen_minute)
                .unwrap_or(0)
        });
    let s = &mut bucket[i];
    if s.key_id != *key_id {
        *s = KeySlot {
            key_id: *key_id,
            ..KeySlot::default()
        };
    }
    s.roll(now);
    Some(s)
}

/// Is the key at or over a limit now? Counts nothing.
pub(crate) fn is_over(slots: &mut [KeySlot], key_id: &[u8; 16], now: i64, limits: Limits) -> bool {
    let mut evicted = false;
    slot(slots, key_id, now, &mut evicted).is_some_and(|s| s.over(limits))
}

/// A call that passed every other check: admitted (counted in both windows, recorded
/// as verified and as the last use) when both windows have room, else recorded as
/// rejected. Returns (admitted, evicted another key's state).
pub(crate) fn admit(
    slots: &mut [KeySlot],
    key_id: &[u8; 16],
    now: i64,
    limits: Limits,
    ip: Option<std::net::IpAddr>,
) -> (bool, bool) {
    let mut evicted = false;
    let Some(s) = slot(slots, key_id, now, &mut evicted) else {
        return (true, evicted);
    };
    if s.over(limits) {
        s.usage_now(now).rejected += 1;
        return (false, evicted);
    }
    s.in_minute += 1;
    s.in_hour += 1;
    s.usage_now(now).verified += 1;
    s.last_used_at = now;
    (s.last_ip_family, s.last_ip) = match ip {
        None => (0, [0; 16]),
        Some(std::net::IpAddr::V4(v4)) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        Some(std::net::IpAddr::V6(v6)) => (6, v6.octets()),
    };
    (true, evicted)
}

/// A call for this key that failed a check other than the rate limit.
pub(crate) fn record_rejected(slots: &mut [KeySlot], key_id: &[u8; 16], now: i64) -> bool {
    let mut evicted = false;
    if let Some(s) = slot(slots, key_id, now, &mut evicted) {
        s.usage_now(now).rejected += 1;
    }
    evicted
}

/// Take every unflushed count and last use out of `slots` (they start again from zero).
pub(crate) fn drain(slots: &mut [KeySlot], usage: &mut Vec<HourUsage>, last: &mut Vec<LastUse>) {
    for s in slots.iter_mut().filter(|s| !s.is_empty()) {
        for u in s.usage.iter_mut().filter(|u| u.verified + u.rejected > 0) {
            usage.push(HourUsage {
                key_id: s.key_id,
                hour_start: i64::from(u.hour) * MICROS_PER_HOUR,
                verified: u.verified,
                rejected: u.rejected,
            });
            u.verified = 0;
            u.rejected = 0;
        }
        if s.last_used_at != 0 {
            let ip = match s.last_ip_family {
                4 => Some(std::net::IpAddr::from(
                    <[u8; 4]>::try_from(&s.last_ip[..4]).expect("4 bytes"),
                )),
                6 => Some(std::net::IpAddr::from(s.last_ip)),
                _ => None,
            };
            last.push(LastUse {
                key_id: s.key_id,
                at: s.last_used_at,
                ip,
            });
            s.last_used_at = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = MICROS_PER_MINUTE;
    const HOUR: i64 = MICROS_PER_HOUR;

    fn key(n: u8) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[0] = n;
        k[15] = 1;
        k
    }

    fn limits(per_minute: u32, per_hour: u32) -> Limits {
        Limits {
            per_minute,
            per_hour,
        }
    }

    #[test]
    fn one_bucket_lent_alone_is_the_same_table() {
        let mut table = vec![KeySlot::default(); 64];
        let k = key(3);
        let range = bucket(table.len(), &k);
        let (t, l) = (1000 * HOUR, limits(2, 0));
        assert!(admit(&mut table[range.clone()], &k, t, l, None).0);
        assert!(admit(&mut table, &k, t, l, None).0);
        assert!(
            !admit(&mut table[range], &k, t, l, None).0,
            "the same windows"
        );
    }

    #[test]
    fn per_minute_window_is_exact_and_resets_on_the_clock_minute() {
        let mut slots = vec![KeySlot::default(); 64];
        let t = 1000 * HOUR + 10 * MIN;
        let l = limits(3, 0);
        let admitted = (0..10)
            .filter(|i| admit(&mut slots, &key(1), t + i * 1000, l, None).0)
            .count();
        assert_eq!(admitted, 3);
        assert!(is_over(&mut slots, &key(1), t + 59_000_000, l));
        assert!(
            !is_over(&mut slots, &key(1), t + MIN, l),
            "next clock minute"
        );
        assert!(admit(&mut slots, &key(1), t + MIN, l, None).0);
        assert!(
            admit(&mut slots, &key(2), t, l, None).0,
            "other keys are unaffected"
        );
    }

    #[test]
    fn per_hour_window_spans_minutes() {
        let mut slots = vec![KeySlot::default(); 64];
        let t = 1000 * HOUR;
        let l = limits(100, 5);
        let admitted = (0..20)
            .filter(|i| admit(&mut slots, &key(1), t + i * MIN, l, None).0)
            .count();
        assert_eq!(admitted, 5);
        assert!(admit(&mut slots, &key(1), t + HOUR, l, None).0);
    }

    #[test]
    fn zero_is_unlimited_and_rejections_do_not_consume_quota() {
        let mut slots = vec![KeySlot::default(); 8];
        let t = 5 * HOUR;
        assert!((0..1000).all(|_| admit(&mut slots, &key(1), t, limits(0, 0), None).0));
        for _ in 0..50 {
            record_rejected(&mut slots, &key(2), t);
        }
        assert!(!is_over(&mut slots, &key(2), t, limits(1, 1)));
    }

    #[test]
    fn drain_reports_usage_per_hour_and_the_last_use_once() {
        let mut slots = vec![KeySlot::default(); 64];
        let t = 7 * HOUR + 59 * MIN;
        let ip = "10.1.2.3".parse().ok();
        admit(&mut slots, &key(1), t, limits(0, 0), None);
        record_rejected(&mut slots, &key(1), t);
        admit(&mut slots, &key(1), t + MIN, limits(0, 0), ip); // the next hour
        let (mut usage, mut last) = (Vec::new(), Vec::new());
        drain(&mut slots, &mut usage, &mut last);
        usage.sort_by_key(|u| u.hour_start);
        assert_eq!(
            usage,
            vec![
                HourUsage {
                    key_id: key(1),
                    hour_start: 7 * HOUR,
                    verified: 1,
                    rejected: 1
                },
                HourUsage {
                    key_id: key(1),
                    hour_start: 8 * HOUR,
                    verified: 1,
                    rejected: 0
                },
            ]
        );
        assert_eq!(
            last,
            vec![LastUse {
                key_id: key(1),
                at: t + MIN,
                ip
            }]
        );
        let (mut usage, mut last) = (Vec::new(), Vec::new());
        drain(&mut slots, &mut usage, &mut last);
        assert!(usage.is_empty() && last.is_empty(), "drained once");
    }

    #[test]
    fn a_full_bucket_evicts_the_least_recently_seen_key() {
        let mut slots = vec![KeySlot::default(); WAYS];
        let t = 3 * HOUR;
        for n in 1..=WAYS as u8 {
            admit(
                &mut slots,
                &key(n),
                t + i64::from(n) * MIN,
                limits(1, 0),
                None,
            );
        }
        let (admitted, evicted) = admit(&mut slots, &key(100), t + 20 * MIN, limits(1, 0), None);
        assert!(admitted && evicted);
        // key(1) was seen least recently: it was dropped and starts afresh.
        assert!(!is_over(&mut slots, &key(1), t + 20 * MIN, limits(1, 0)));
    }
}
