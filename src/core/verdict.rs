//! The checks that follow a correct secret, as a pure function over the key row.

use ipnet::IpNet;
use std::net::IpAddr;

use crate::{core::cidr, core::scope};

/// Every `reason` that `api_key_verify` can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Ok,
    Malformed,
    NotFound,
    InvalidSecret,
    Suspended,
    Revoked,
    Expired,
    IpNotAllowed,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
}

impl Reason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(crate) const ALL: [Reason; 11] = [
        Self::Ok,
        Self::Malformed,
        Self::NotFound,
        Self::InvalidSecret,
        Self::Suspended,
        Self::Revoked,
        Self::Expired,
        Self::IpNotAllowed,
        Self::InsufficientScope,
        Self::RateLimited,
        Self::UsageExceeded,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Malformed => "malformed",
            Self::NotFound => "not_found",
            Self::InvalidSecret => "invalid_secret",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited => "rate_limited",
            Self::UsageExceeded => "usage_exceeded",
        }
    }

    /// The usage table's outcome column a rejection counts in (`rate_limit::OUTCOMES`);
    /// None for `ok` and for calls with no key row.
    pub(crate) fn usage_column(self) -> Option<usize> {
        match self {
            Self::Ok | Self::Malformed | Self::NotFound => None,
            Self::RateLimited => Some(0),
            Self::UsageExceeded => Some(1),
            Self::InvalidSecret => Some(2),
            Self::Suspended => Some(3),
            Self::Revoked => Some(4),
            Self::Expired => Some(5),
            Self::IpNotAllowed => Some(6),
            Self::InsufficientScope => Some(7),
        }
    }

    /// What `authenticate`/`login` say of a refusal: the reason, never the key.
    pub(crate) fn refusal_message(self) -> String {
        format!("API key rejected: {}", self.as_str())
    }

    /// The HTTP status `authenticate`/`login` refuse with (as SQLSTATE `PT<status>`,
    /// which PostgREST answers with that status); None for `ok`.
    pub(crate) fn refusal_status(self) -> Option<u16> {
        match self {
            Self::Ok => None,
            Self::IpNotAllowed | Self::InsufficientScope => Some(403),
            Self::RateLimited | Self::UsageExceeded => Some(429),
            _ => Some(401),
        }
    }

    /// What the caller can do about a refusal; never anything about the key's secret.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Self::Ok => "",
            Self::Malformed => {
                "The key is not in this installation's key format; check that it was copied whole."
            }
            Self::NotFound => "No key has this prefix; it may have been deleted.",
            Self::InvalidSecret => {
                "The key's secret does not match; check that it was copied whole."
            }
            Self::Suspended => "The key is suspended; its owner or an admin can reactivate it.",
            Self::Revoked => "The key is revoked; use another key.",
            Self::Expired => "The key has expired; rotate it or issue a new one.",
            Self::IpNotAllowed => "The client address is outside the key's allowed_cidrs.",
            Self::InsufficientScope => "The key lacks the required scope.",
            Self::RateLimited => {
                "The key is over its rate limit; retry in the next minute or hour."
            }
            Self::UsageExceeded => {
                "The key has no uses left; wait for its refill, or ask its owner or an admin for more."
            }
        }
    }
}

/// A key's `api_keys.key_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyStatus {
    Active,
    Suspended,
    Revoked,
    Expired,
}

impl KeyStatus {
    /// The status an enum label names; None for one this library does not know.
    pub(crate) fn from_label(label: &[u8]) -> Option<KeyStatus> {
        match label {
            b"active" => Some(Self::Active),
            b"suspended" => Some(Self::Suspended),
            b"revoked" => Some(Self::Revoked),
            b"expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// What verification needs from a key row whose secret has matched.
pub(crate) struct KeyState<'a, S: AsRef<str>> {
    /// None when the stored label is unknown: fail closed.
    pub(crate) status: Option<KeyStatus>,
    /// `expires_at <= now()`: expired at once, whether or not a sweep has run.
    pub(crate) past_expiry: bool,
    /// None when a stored rule does not parse: fail closed.
    pub(crate) cidrs: Option<&'a [IpNet]>,
    pub(crate) scopes: &'a [S],
}

/// Status first (revoked outranks expired outranks suspended), then network, then scope.
pub(crate) fn judge<S: AsRef<str>>(
    key: &KeyState<'_, S>,
    client: Option<IpAddr>,
    required_scope: Option<&str>,
) -> Reason {
    match key.status {
        Some(KeyStatus::Revoked) => return Reason::Revoked,
        Some(KeyStatus::Expired) => return Reason::Expired,
        _ if key.past_expiry => return Reason::Expired,
        Some(KeyStatus::Suspended) => return Reason::Suspended,
        Some(KeyStatus::Active) => {}
        None => return Reason::Revoked,
    }
    match key.cidrs {
        Some(rules) if cidr::allows(rules, client) => {}
        _ => return Reason::IpNotAllowed,
    }
    match required_scope {
        Some(required) if !scope::any_grants(key.scopes, required) => Reason::InsufficientScope,
        _ => Reason::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    fn state<'a>(
        status: &str,
        past: bool,
        cidrs: &'a [IpNet],
        scopes: &'a [&'a str],
    ) -> KeyState<'a, &'a str> {
        KeyState {
            status: KeyStatus::from_label(status.as_bytes()),
            past_expiry: past,
            cidrs: Some(cidrs),
            scopes,
        }
    }

    #[test]
    fn refusal_statuses() {
        let status = |r: Reason| r.refusal_status();
        assert_eq!(status(Reason::Ok), None);
        for r in [
            Reason::Malformed,
            Reason::NotFound,
            Reason::InvalidSecret,
            Reason::Suspended,
            Reason::Revoked,
            Reason::Expired,
        ] {
            assert_eq!(status(r), Some(401), "{r:?}");
        }
        assert_eq!(status(Reason::IpNotAllowed), Some(403));
        assert_eq!(status(Reason::InsufficientScope), Some(403));
        assert_eq!(status(Reason::RateLimited), Some(429));
    }

    #[test]
    fn statuses() {
        let all = ["*"];
        assert_eq!(
            judge(&state("active", false, &[], &all), None, None),
            Reason::Ok
        );
        assert_eq!(
            judge(&state("revoked", true, &[], &all), None, None),
            Reason::Revoked
        );
        assert_eq!(
            judge(&state("suspended", true, &[], &all), None, None),
            Reason::Expired
        );
        assert_eq!(
            judge(&state("suspended", false, &[], &all), None, None),
            Reason::Suspended
        );
        assert_eq!(
            judge(&state("active", true, &[], &all), None, None),
            Reason::Expired
        );
        assert_eq!(
            judge(&state("expired", false, &[], &all), None, None),
            Reason::Expired
        );
    }

    #[test]
    fn network_then_scope() {
        let rules = cidr::parse_rules(&["10.0.0.0/8"]).unwrap();
        let scopes = ["runs:read"];
        let s = state("active", false, &rules, &scopes);
        assert_eq!(judge(&s, None, None), Reason::IpNotAllowed);
        let inside = cidr::parse_client("10.0.0.1");
        assert_eq!(
            judge(&s, inside, Some("runs:write")),
            Reason::InsufficientScope
        );
        assert_eq!(judge(&s, inside, Some("runs:read")), Reason::Ok);
        assert_eq!(
            judge(&s, inside, Some("garbage")),
            Reason::InsufficientScope
        );
    }

    #[test]
    fn unparseable_rules_fail_closed() {
        let s: KeyState<'_, &str> = KeyState {
            status: Some(KeyStatus::Active),
            past_expiry: false,
            cidrs: None,
            scopes: &[],
        };
        assert_eq!(
            judge(&s, cidr::parse_client("10.0.0.1"), None),
            Reason::IpNotAllowed
        );
    }
}
