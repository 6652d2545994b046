//! Client-address allow-lists. IPv4 and IPv6 rules are independent: a key whose rules
//! are all IPv4 admits no IPv6 client, and the other way round.

use ipnet::IpNet;
use std::net::IpAddr;

/// Parse a Postgres `inet` text (`10.0.0.1` or `10.0.0.1/24`) into its address. Tests
/// write addresses as text; verification reads them from datums (`client`).
#[cfg(test)]
pub(crate) fn parse_client(text: &str) -> Option<IpAddr> {
    let addr = text.split_once('/').map_or(text, |(a, _)| a);
    addr.parse::<IpAddr>().ok().map(canonical)
}

/// An IPv4 client reaching an IPv6 socket appears as `::ffff:a.b.c.d`; it is an IPv4
/// client and is matched against the IPv4 rules.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address of an `inet` value given as its parts (family, address bytes).
pub(crate) fn client(v6: bool, addr: &[u8]) -> Option<IpAddr> {
    address(v6, addr).map(canonical)
}

fn address(v6: bool, addr: &[u8]) -> Option<IpAddr> {
    Some(if v6 {
        IpAddr::from(<[u8; 16]>::try_from(addr).ok()?)
    } else {
        IpAddr::from(<[u8; 4]>::try_from(addr).ok()?)
    })
}

/// A stored `cidr` rule given as its parts (family, prefix length, address bytes).
pub(crate) fn rule(v6: bool, bits: u8, addr: &[u8]) -> Option<IpNet> {
    IpNet::new(address(v6, addr)?, bits).ok()
}

/// Rules written as text, for tests (verification reads them from datums: `rule`).
#[cfg(test)]
pub(crate) fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Option<Vec<IpNet>> {
    rules.iter().map(|r| r.as_ref().parse().ok()).collect()
}

/// No rules: everyone. Rules but no client address: nobody.
pub(crate) fn allows(rules: &[IpNet], client: Option<IpAddr>) -> bool {
    if rules.is_empty() {
        return true;
    }
    match client {
        None => false,
        // `contains` is false across families, which gives the independence for free.
        Some(ip) => rules.iter().any(|net| net.contains(&ip)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn rules(r: &[&str]) -> Vec<IpNet> {
        parse_rules(r).unwrap()
    }

    #[test]
    fn parts_agree_with_text() {
        assert_eq!(client(false, &[10, 1, 2, 3]), parse_client("10.1.2.3"));
        let mapped = "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(client(true, &mapped), parse_client("10.1.2.3"));
        assert_eq!(client(false, &[1, 2, 3]), None);
        assert_eq!(
            rule(false, 8, &[10, 0, 0, 0]),
            Some(rules(&["10.0.0.0/8"])[0])
        );
        let v6 = "2001:db8::".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(rule(true, 32, &v6), Some(rules(&["2001:db8::/32"])[0]));
        assert_eq!(rule(false, 33, &[10, 0, 0, 0]), None);
    }

    #[test]
    fn empty_allows_all_even_without_address() {
        assert!(allows(&[], None));
        assert!(allows(&[], parse_client("::1")));
    }

    #[test]
    fn families_are_independent() {
        let v4 = rules(&["10.0.0.0/8"]);
        assert!(allows(&v4, parse_client("10.1.2.3")));
        assert!(!allows(&v4, parse_client("11.0.0.1")));
        assert!(!allows(&v4, parse_client("::1")));
        let v6 = rules(&["2001:db8::/32"]);
        assert!(allows(&v6, parse_client("2001:db8::5")));
        assert!(!allows(&v6, parse_client("10.1.2.3")));
        let all4 = rules(&["0.0.0.0/0"]);
        assert!(!allows(&all4, parse_client("2001:db8::5")));
    }

    #[test]
    fn rules_without_client_deny() {
        assert!(!allows(&rules(&["0.0.0.0/0"]), None));
    }

    #[test]
    fn mapped_v4_is_v4_and_masks_are_ignored() {
        let v4 = rules(&["192.168.1.0/24"]);
        assert!(allows(&v4, parse_client("::ffff:192.168.1.7")));
        assert!(allows(&v4, parse_client("192.168.1.7/24")));
        assert_eq!(parse_client("junk"), None);
    }

    /// Property tests; `make fuzz` runs them at volume.
    mod proptests {
        use super::*;

        /// (client, network, whether the network holds the client) by arithmetic on
        /// `width`-bit numbers. The client shares the network's bits when `near` (half
        /// the cases), so both answers are common even for long prefixes.
        fn by_arithmetic(width: u32, a: u128, n: u128, len: u8, near: bool) -> (u128, u128, bool) {
            let all = u128::MAX >> (128 - width);
            let mask = if len == 0 {
                0
            } else {
                (all << (width - u32::from(len))) & all
            };
            let a = if near { (n & mask) | (a & !mask) } else { a } & all;
            (a, n & mask, (a & mask) == (n & mask))
        }

        proptest! {
            #[test]
            fn v4_matches_prefix_arithmetic(
                a in any::<u32>(), n in any::<u32>(), len in 0u8..=32, near in any::<bool>(),
            ) {
                let (a, n, expected) = by_arithmetic(32, a.into(), n.into(), len, near);
                let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(n as u32)), len).unwrap();
                prop_assert_eq!(allows(&[net], Some(IpAddr::V4(Ipv4Addr::from(a as u32)))), expected);
            }

            #[test]
            fn v6_matches_prefix_arithmetic(
                a in any::<u128>(), n in any::<u128>(), len in 0u8..=128, near in any::<bool>(),
            ) {
                let (a, n, expected) = by_arithmetic(128, a, n, len, near);
                let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(n)), len).unwrap();
                prop_assert_eq!(allows(&[net], Some(IpAddr::V6(Ipv6Addr::from(a)))), expected);
            }

            #[test]
            fn v4_rules_never_admit_v6(a in any::<u128>(), n in any::<u32>(), len in 0u8..=32) {
                let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(n)), len).unwrap().trunc();
                // What reaches the rules is canonical: a v4-mapped address is IPv4.
                let client = canonical(IpAddr::V6(Ipv6Addr::from(a)));
                prop_assert!(client.is_ipv4() || !allows(&[net], Some(client)));
            }

            #[test]
            fn v6_rules_never_admit_v4(a in any::<u32>(), n in any::<u128>(), len in 0u8..=128) {
                let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(n)), len).unwrap().trunc();
                prop_assert!(!allows(&[net], Some(IpAddr::V4(Ipv4Addr::from(a)))));
            }
        }
    }
}
