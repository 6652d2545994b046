//! The file the launcher writes when it stops (a clean shutdown) with the usage not yet
//! flushed, and reads back at start: so a clean restart loses no count (a crash still
//! loses up to one flush interval). Little-endian records behind a magic (with the
//! version) and the server's identity; a file that does not decode whole is refused,
//! never half-read. Each hour keeps its totals and what of them was written, and the
//! file keeps the server's usage source, so the next start goes on writing the same
//! totals under the same source: nothing counts twice. Pure: no pgrx.

use std::net::IpAddr;

use crate::core::rate_limit::{CreditUse, HourUsage, LastUse, Unflushed};

const MAGIC: &[u8; 8] = b"akusage3";
/// More hours than this per key cannot come from `Activity` (it keeps two).
const MAX_HOURS: u8 = 2;

/// One key's unflushed usage, and the database it belongs to.
pub(crate) type Saved = (u32, [u8; 16], Unflushed);

/// Which server saved the file: only the same system on the same timeline, still a
/// standby or still not one, in the same place (host, data directory, port), takes it.
/// A copy of the data directory elsewhere, or started as a standby of its original,
/// does not: two servers never go on under one usage source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) system_identifier: u64,
    pub(crate) timeline: u32,
    pub(crate) in_recovery: bool,
    /// A digest of the host name, the data directory and the port.
    pub(crate) place: [u8; 8],
}

/// What the file holds besides the records: the source this server's usage rows are
/// written under.
pub(crate) type Source = [u8; 16];

const HEADER: usize = 8 + 8 + 4 + 1 + 8 + 16 + 8;

pub(crate) fn encode(origin: Origin, source: Source, records: &[Saved]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + records.len() * 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&origin.system_identifier.to_le_bytes());
    out.extend_from_slice(&origin.timeline.to_le_bytes());
    out.push(u8::from(origin.in_recovery));
    out.extend_from_slice(&origin.place);
    out.extend_from_slice(&source);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for (db, key, u) in records {
        out.extend_from_slice(&db.to_le_bytes());
        out.extend_from_slice(key);
        let hours = u.usage.len().min(usize::from(MAX_HOURS));
        out.push(hours as u8);
        for h in &u.usage[..hours] {
            out.extend_from_slice(&h.hour_start.to_le_bytes());
            out.extend_from_slice(&h.verified.to_le_bytes());
            out.extend_from_slice(&h.rejected.to_le_bytes());
            out.extend_from_slice(&h.written_verified.to_le_bytes());
            out.extend_from_slice(&h.written_rejected.to_le_bytes());
            for n in &h.outcomes {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        match u.last {
            None => out.push(0),
            Some(l) => {
                let (family, ip) = match l.ip {
                    None => (1, [0; 16]),
                    Some(IpAddr::V4(v4)) => {
                        let mut b = [0; 16];
                        b[..4].copy_from_slice(&v4.octets());
                        (4, b)
                    }
                    Some(IpAddr::V6(v6)) => (6, v6.octets()),
                };
                out.push(family);
                out.extend_from_slice(&l.at.to_le_bytes());
                out.extend_from_slice(&ip);
            }
        }
        match u.credits {
            None => out.push(0),
            Some(c) => {
                out.push(1);
                for n in [c.period, c.since] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                for n in [c.available, c.spent, c.written, c.floor] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the file ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(Origin, Source, Vec<Saved>), String> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not an api_keys usage file".into());
    }
    let origin = Origin {
        system_identifier: u64::from_le_bytes(r.array()?),
        timeline: u32::from_le_bytes(r.array()?),
        in_recovery: match r.array::<1>()?[0] {
            0 => false,
            1 => true,
            _ => return Err("the header is damaged".into()),
        },
        place: r.array()?,
    };
    let source: Source = r.array()?;
    let count = u64::from_le_bytes(r.array()?);
    // Each record is at least 22 bytes: a count beyond what the file holds is a lie.
    if count > (bytes.len() / 22) as u64 {
        return Err("the record count does not fit the file".into());
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let db = u32::from_le_bytes(r.array()?);
        let key: [u8; 16] = r.array()?;
        let hours = r.array::<1>()?[0];
        if hours > MAX_HOURS {
            return Err("a record has too many hours".into());
        }
        let mut usage = Vec::with_capacity(usize::from(hours));
        for _ in 0..hours {
            let mut h = HourUsage {
                hour_start: i64::from_le_bytes(r.array()?),
                verified: u32::from_le_bytes(r.array()?),
                rejected: u32::from_le_bytes(r.array()?),
                written_verified: u32::from_le_bytes(r.array()?),
                written_rejected: u32::from_le_bytes(r.array()?),
                ..HourUsage::default()
            };
            for n in &mut h.outcomes {
                *n = u32::from_le_bytes(r.array()?);
            }
            usage.push(h);
        }
        let family = r.array::<1>()?[0];
        let last = match family {
            0 => None,
            1 | 4 | 6 => {
                let at = i64::from_le_bytes(r.array()?);
                let ip: [u8; 16] = r.array()?;
                let ip = match family {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(&ip[..4]).expect("4"))),
                    6 => Some(IpAddr::from(ip)),
                    _ => None,
                };
                Some(LastUse { at, ip })
            }
            _ => return Err("a record has an unknown address family".into()),
        };
        let credits = match r.array::<1>()?[0] {
            0 => None,
            1 => Some(CreditUse {
                period: i64::from_le_bytes(r.array()?),
                since: i64::from_le_bytes(r.array()?),
                available: u64::from_le_bytes(r.array()?),
                spent: u64::from_le_bytes(r.array()?),
                written: u64::from_le_bytes(r.array()?),
                floor: u64::from_le_bytes(r.array()?),
            }),
            _ => return Err("a record's credits are damaged".into()),
        };
        records.push((
            db,
            key,
            Unflushed {
                usage,
                last,
                credits,
            },
        ));
    }
    if !r.0.is_empty() {
        return Err("bytes after the last record".into());
    }
    Ok((origin, source, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORIGIN: Origin = Origin {
        system_identifier: 7,
        timeline: 1,
        in_recovery: false,
        place: [3; 8],
    };

    fn record() -> impl Strategy<Value = Saved> {
        let hour = (any::<i64>(), any::<[u32; 4]>(), any::<[u32; 8]>()).prop_map(
            |(h, [v, r, wv, wr], outcomes)| HourUsage {
                hour_start: h,
                verified: v,
                rejected: r,
                written_verified: wv,
                written_rejected: wr,
                outcomes,
            },
        );
        let credits = proptest::option::of((any::<[i64; 2]>(), any::<[u64; 4]>()).prop_map(
            |([period, since], [available, spent, written, floor])| CreditUse {
                period,
                since,
                available,
                spent,
                written,
                floor,
            },
        ));
        let ip = prop_oneof![
            Just(None),
            any::<[u8; 4]>().prop_map(|b| Some(IpAddr::from(b))),
            any::<[u8; 16]>().prop_map(|b| Some(IpAddr::from(b))),
        ];
        let last = proptest::option::of((any::<i64>(), ip).prop_map(|(at, ip)| LastUse { at, ip }));
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            proptest::collection::vec(hour, 0..=2),
            last,
            credits,
        )
            .prop_map(|(db, key, usage, last, credits)| {
                (
                    db,
                    key,
                    Unflushed {
                        usage,
                        last,
                        credits,
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn round_trip(
            records in proptest::collection::vec(record(), 0..20),
            system_identifier in any::<u64>(),
            timeline in any::<u32>(),
            in_recovery in any::<bool>(),
            place in any::<[u8; 8]>(),
            source in any::<[u8; 16]>(),
        ) {
            let origin = Origin { system_identifier, timeline, in_recovery, place };
            prop_assert_eq!(
                decode(&encode(origin, source, &records)).unwrap(),
                (origin, source, records)
            );
        }

        #[test]
        fn a_cut_or_grown_file_is_refused(
            records in proptest::collection::vec(record(), 1..5),
            cut in 1usize..40,
        ) {
            let bytes = encode(ORIGIN, [1; 16], &records);
            let cut = cut.min(bytes.len());
            prop_assert!(decode(&bytes[..bytes.len() - cut]).is_err());
            let mut grown = bytes.clone();
            grown.push(0);
            prop_assert!(decode(&grown).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut bytes = encode(ORIGIN, [1; 16], &[]);
        bytes[HEADER - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&bytes).is_err());
    }
}
