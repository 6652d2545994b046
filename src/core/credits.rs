//! Credits: a key's remaining uses, with an optional refill at each UTC day or month.
//!
//! The key row holds what was granted (`uses_granted` at `uses_from`), the refill, and
//! the uses spent in a credit period as all servers have written them (`uses_period`,
//! `uses_spent`, kept by the worker). The period at time t starts at `uses_from`, or at
//! the last refill boundary (UTC midnight, or the first of the month) when that is
//! later; after a refill the key has `refill_amount` uses, before it `uses_granted`.
//! `Terms` is that reading of a row at one time; `Activity` (rate_limit.rs) counts the
//! spending of this server on top. Times are µs since 2000-01-01 UTC (PostgreSQL's
//! epoch, a midnight). Pure: no pgrx.

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// How often a key's uses are refilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refill {
    Daily,
    Monthly,
}

impl Refill {
    pub(crate) fn from_label(label: &[u8]) -> Option<Refill> {
        match label {
            b"daily" => Some(Self::Daily),
            b"monthly" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// The last boundary at or before `at`.
    fn floor(self, at: i64) -> i64 {
        let day = at.div_euclid(MICROS_PER_DAY);
        match self {
            Self::Daily => day * MICROS_PER_DAY,
            Self::Monthly => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1) * MICROS_PER_DAY
            }
        }
    }

    /// The first boundary after `at`.
    pub(crate) fn next(self, at: i64) -> i64 {
        let day = at.div_euclid(MICROS_PER_DAY);
        match self {
            Self::Daily => (day + 1) * MICROS_PER_DAY,
            Self::Monthly => {
                let (y, m, _) = civil_from_days(day);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * MICROS_PER_DAY
            }
        }
    }
}

/// Days since 2000-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

/// The date of a day counted from 2000-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A key row's credit columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CreditRow {
    /// None: unlimited.
    pub(crate) uses_granted: Option<i64>,
    pub(crate) uses_from: Option<i64>,
    pub(crate) refill_amount: Option<i64>,
    /// None without refill (or an unknown label: no refill).
    pub(crate) refill: Option<Refill>,
    pub(crate) uses_period: Option<i64>,
    pub(crate) uses_spent: i64,
}

/// A key's credits at one time: the period, the uses it started with, and what the
/// key row says all servers had written as spent in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Terms {
    /// Start of the credit period (µs since 2000): with the server's source and the
    /// time its count started, it names what a server writes.
    pub(crate) period: i64,
    pub(crate) available: u64,
    pub(crate) written_spent: u64,
    /// The next refill, if any.
    pub(crate) refill_at: Option<i64>,
}

impl CreditRow {
    /// The credits at `now`; None for an unlimited key.
    pub(crate) fn terms(&self, now: i64) -> Option<Terms> {
        let granted = self.uses_granted?;
        // A row with uses but no start (forbidden by a table constraint): from the start.
        let from = self.uses_from.unwrap_or(i64::MIN);
        let refill = self.refill.zip(self.refill_amount);
        let (period, available) = match refill {
            Some((r, amount)) if r.floor(now) > from => (r.floor(now), amount),
            _ => (from, granted),
        };
        let written_spent = match self.uses_period {
            Some(p) if p == period => self.uses_spent,
            _ => 0,
        };
        Some(Terms {
            period,
            available: available.max(0) as u64,
            written_spent: written_spent.max(0) as u64,
            refill_at: refill.map(|(r, _)| r.next(now)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000_000;

    fn at(y: i64, m: i64, d: i64, hour: i64) -> i64 {
        days_from_civil(y, m, d) * MICROS_PER_DAY + hour * HOUR
    }

    #[test]
    fn calendar_matches_known_dates() {
        assert_eq!(days_from_civil(2000, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 60, "2000 is a leap year");
        assert_eq!(days_from_civil(2026, 11, 30), 9830);
        assert_eq!(civil_from_days(9830), (2026, 11, 30));
        assert_eq!(civil_from_days(-1), (1999, 12, 31));
    }

    #[test]
    fn boundaries_are_utc_midnights_and_firsts_of_the_month() {
        let t = at(2026, 11, 30, 17);
        assert_eq!(Refill::Daily.floor(t), at(2026, 11, 30, 0));
        assert_eq!(Refill::Daily.next(t), at(2026, 12, 1, 0));
        assert_eq!(Refill::Monthly.floor(t), at(2026, 11, 1, 0));
        assert_eq!(Refill::Monthly.next(t), at(2026, 12, 1, 0));
        assert_eq!(
            Refill::Monthly.next(at(2026, 12, 31, 23)),
            at(2027, 1, 1, 0)
        );
        assert_eq!(Refill::Monthly.floor(at(2024, 2, 29, 5)), at(2024, 2, 1, 0));
        let midnight = at(2026, 12, 1, 0);
        assert_eq!(
            Refill::Daily.floor(midnight),
            midnight,
            "a boundary is its own floor"
        );
    }

    fn row(granted: i64, from: i64, refill: Option<(Refill, i64)>) -> CreditRow {
        CreditRow {
            uses_granted: Some(granted),
            uses_from: Some(from),
            refill_amount: refill.map(|r| r.1),
            refill: refill.map(|r| r.0),
            uses_period: None,
            uses_spent: 0,
        }
    }

    #[test]
    fn the_grant_holds_until_the_first_refill_then_the_refill_amount() {
        let from = at(2026, 11, 30, 10);
        let r = row(5, from, Some((Refill::Daily, 100)));
        let before = r.terms(at(2026, 11, 30, 23)).unwrap();
        assert_eq!((before.period, before.available), (from, 5));
        assert_eq!(before.refill_at, Some(at(2026, 12, 1, 0)));
        let after = r.terms(at(2026, 12, 1, 0)).unwrap();
        assert_eq!((after.period, after.available), (at(2026, 12, 1, 0), 100));
        let no_refill = row(5, from, None).terms(at(2027, 1, 1, 0)).unwrap();
        assert_eq!((no_refill.period, no_refill.available), (from, 5));
        assert_eq!(no_refill.refill_at, None);
        assert_eq!(CreditRow::default().terms(from), None, "unlimited");
    }

    #[test]
    fn written_spending_counts_only_in_its_own_period() {
        let from = at(2026, 11, 30, 10);
        let mut r = row(5, from, Some((Refill::Daily, 100)));
        r.uses_period = Some(from);
        r.uses_spent = 4;
        assert_eq!(r.terms(at(2026, 11, 30, 11)).unwrap().written_spent, 4);
        assert_eq!(
            r.terms(at(2026, 12, 1, 1)).unwrap().written_spent,
            0,
            "refilled"
        );
    }

    proptest! {
        #[test]
        fn floor_and_next_bracket_every_time(t in -4_000_000_000_000_000i64..4_000_000_000_000_000) {
            for r in [Refill::Daily, Refill::Monthly] {
                let (f, n) = (r.floor(t), r.next(t));
                prop_assert!(f <= t && t < n);
                prop_assert_eq!(r.floor(n), n);
                prop_assert_eq!(r.next(f), n);
                prop_assert_eq!(civil_from_days(f.div_euclid(MICROS_PER_DAY)).2 == 1 || r == Refill::Daily, true);
            }
        }

        #[test]
        fn calendar_round_trips(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
