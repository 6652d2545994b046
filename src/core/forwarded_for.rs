//! The client address of a request that came through proxies: the right-most
//! `X-Forwarded-For` hop that is not a trusted proxy. Every proxy appends the address
//! it saw, so hops to the left of the first untrusted one are whatever the client chose
//! to send, and are never believed.

use ipnet::IpNet;
use std::net::IpAddr;

use crate::core::cidr;

/// `api_keys.trusted_proxies`: CIDRs or bare addresses, separated by commas or spaces.
pub(crate) fn parse_proxies(setting: &str) -> Result<Vec<IpNet>, String> {
    setting
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("\"{entry}\" is not an address or CIDR"))
        })
        .collect()
}

/// `peer` is the address of the connection (None over a Unix socket). With no trusted
/// proxies, or a peer that is not one, the peer is the client. Otherwise walk the
/// `X-Forwarded-For` hops from the right while they are trusted and take the first that
/// is not. When there is none — no header, or every hop a trusted proxy — or a hop that
/// is not an address comes first, the client is unknown (None), which a key with CIDR
/// rules refuses: a request that reaches PostgREST without passing a proxy that
/// appends the header must not borrow a trusted proxy's address.
pub(crate) fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut candidate = cidr::canonical(peer?);
    let mut hops = forwarded_for.unwrap_or("").rsplit(',');
    while is_trusted(&candidate) {
        candidate = cidr::canonical(parse_hop(hops.next()?)?);
    }
    Some(candidate)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Some(rest) = hop.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        let port_ok = tail.is_empty() || is_port(tail.strip_prefix(':')?);
        return port_ok.then(|| addr.parse().ok()).flatten();
    }
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    let (addr, port) = hop.rsplit_once(':')?;
    let v4 = addr.parse::<std::net::Ipv4Addr>().ok()?;
    is_port(port).then_some(IpAddr::V4(v4))
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> Vec<IpNet> {
        parse_proxies("10.0.0.0/8, 192.168.1.1 ::1").unwrap()
    }

    #[test]
    fn proxies_setting() {
        assert_eq!(proxies().len(), 3);
        assert_eq!(parse_proxies("").unwrap(), vec![]);
        assert_eq!(parse_proxies(" , ").unwrap(), vec![]);
        let err = parse_proxies("10.0.0.0/8,nonsense").unwrap_err();
        assert!(err.contains("\"nonsense\""), "{err}");
        assert!(parse_proxies("10.0.0.0/33").is_err());
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let peer = Some(ip("203.0.113.9"));
        assert_eq!(
            client_address(peer, Some("1.1.1.1"), &proxies()),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(client_address(peer, Some("1.1.1.1"), &[]), peer);
        assert_eq!(client_address(None, Some("1.1.1.1"), &proxies()), None);
    }

    #[test]
    fn right_most_untrusted_hop() {
        let peer = Some(ip("10.1.1.1"));
        let t = proxies();
        // A forged left-most entry is never reached.
        let xff = "6.6.6.6, 198.51.100.7, 10.2.2.2";
        assert_eq!(
            client_address(peer, Some(xff), &t),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_address(peer, Some("garbage, 198.51.100.7"), &t),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_address(peer, Some(" [2001:db8::5]:443 "), &t),
            Some(ip("2001:db8::5"))
        );
        assert_eq!(
            client_address(peer, Some("198.51.100.7:5678"), &t),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn no_untrusted_hop_leaves_the_client_unknown() {
        let peer = Some(ip("10.1.1.1"));
        let t = proxies();
        assert_eq!(client_address(peer, None, &t), None);
        assert_eq!(client_address(peer, Some("  "), &t), None);
        assert_eq!(
            client_address(peer, Some("10.3.3.3, 192.168.1.1"), &t),
            None
        );
    }

    #[test]
    fn junk_behind_trusted_hops_leaves_the_client_unknown() {
        let peer = Some(ip("10.1.1.1"));
        for xff in [
            "unknown",
            "1.2.3.4, ",
            "1.2.3.4,,10.0.0.2",
            "[::1",
            "1.2.3.4:http",
        ] {
            assert_eq!(client_address(peer, Some(xff), &proxies()), None, "{xff}");
        }
    }

    #[test]
    fn mapped_ipv4_peer_is_ipv4() {
        let peer = Some(ip("::ffff:10.1.1.1"));
        assert_eq!(
            client_address(peer, Some("198.51.100.7"), &proxies()),
            Some(ip("198.51.100.7"))
        );
    }

    /// A naive reference: list the hops, then scan from the right.
    fn reference(peer: IpAddr, xff: &str, trusted: &[IpNet]) -> Option<IpAddr> {
        let mut chain = vec![Some(peer)];
        chain.extend(xff.split(',').rev().map(parse_hop));
        for hop in chain {
            let hop = cidr::canonical(hop?);
            if !trusted.iter().any(|n| n.contains(&hop)) {
                return Some(hop);
            }
        }
        None
    }

    /// Property tests; `make fuzz` runs them at volume.
    mod proptests {
        use super::*;

        proptest! {
            #[test]
            fn agrees_with_the_reference(
                peer in prop_oneof![Just("10.0.0.1"), Just("203.0.113.1"), Just("::1")],
                hops in proptest::collection::vec(
                    prop_oneof![
                        Just("10.9.9.9".to_string()),
                        Just("192.168.1.1".to_string()),
                        Just("198.51.100.2".to_string()),
                        Just("[::1]:80".to_string()),
                        "\\PC{0,12}",
                    ],
                    0..6,
                ),
            ) {
                let xff = hops.join(",");
                let trusted = proxies();
                prop_assert_eq!(
                    client_address(Some(ip(peer)), Some(&xff), &trusted),
                    reference(ip(peer), &xff, &trusted)
                );
            }
        }
    }
}
