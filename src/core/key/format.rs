//! `<brand>_<env>_<public id>_<secret><checksum>`: parse, print, checksum, scanner regex.
//!
//! The checksum is CRC32 of everything before it, printed as fixed-width base62, so a
//! mistyped or random string is rejected here, before any table access or hashing.
//!
//! The secret part comes in two shapes. A signed key (issued from 0.5.0 on) carries,
//! after its 43 random characters, the id of the signing key that signed it and the
//! MAC (`signature`): `<random 43><signing key id 4><mac 17>`. A key issued before has
//! the 43 random characters alone, and keeps verifying on the old path until rotated.

use std::fmt;

use super::signature::{self, SigningKey, MAC_LEN, SIGNING_KEY_ID_LEN};

/// Length of the random public id (base62). 62^12 is about 2^71.
pub(crate) const PUBLIC_ID_LEN: usize = 12;
/// Length of the secret: 43 base62 characters carry 256 bits (62^43 > 2^256).
pub(crate) const SECRET_LEN: usize = 43;
/// CRC32 needs 6 base62 digits (62^6 > 2^32).
pub(crate) const CHECKSUM_LEN: usize = 6;
const MAX_BRAND_LEN: usize = 8;
const MIN_BRAND_LEN: usize = 2;
/// What a signed key adds after its random secret: signing key id and MAC.
const SIGNATURE_LEN: usize = SIGNING_KEY_ID_LEN + MAC_LEN;
/// The tail after the last `_` of a key issued before signing, and of a signed key.
const UNSIGNED_TAIL_LEN: usize = SECRET_LEN + CHECKSUM_LEN;
const SIGNED_TAIL_LEN: usize = SECRET_LEN + SIGNATURE_LEN + CHECKSUM_LEN;
/// The longest key this format can produce; anything longer is rejected unread.
pub(crate) const MAX_KEY_LEN: usize =
    MAX_BRAND_LEN + 1 + 5 + 1 + PUBLIC_ID_LEN + 1 + SIGNED_TAIL_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Environment {
    Production,
    Staging,
    Development,
}

impl Environment {
    pub(crate) const ALL: [Environment; 3] = [Self::Production, Self::Staging, Self::Development];

    /// The tag inside a key.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Self::Production => "live",
            Self::Staging => "stage",
            Self::Development => "dev",
        }
    }

    pub(crate) fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.tag() == tag)
    }

    /// The label of the `api_keys.environment` enum.
    pub(crate) fn sql_name(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Staging => "staging",
            Self::Development => "development",
        }
    }

    pub(crate) fn from_sql_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.sql_name() == name)
    }
}

/// Why a string is not a key. Callers report all of them as `malformed`; the
/// distinction exists for tests and for the parser's own clarity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    Length,
    Shape,
    Checksum,
}

/// A syntactically valid key with a correct checksum, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedKey<'a> {
    /// `<brand>_<env>_<public id>`: the stored, unique, displayable part.
    pub(crate) prefix: &'a str,
    pub(crate) brand: &'a str,
    pub(crate) environment: Environment,
    pub(crate) public_id: &'a str,
    /// The 43 random characters (what the stored argon2id hash is of).
    pub(crate) secret: &'a str,
    /// None for a key issued before signing.
    pub(crate) signature: Option<Signature<'a>>,
}

/// The signature part of a signed key, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Signature<'a> {
    /// The public id of the signing key that made the MAC.
    pub(crate) signing_key_id: &'a str,
    /// What the MAC is of: the key's text before it.
    pub(crate) message: &'a str,
    pub(crate) mac: &'a str,
}

impl Signature<'_> {
    /// Whether `key` (whose id must be `signing_key_id`) made this MAC; constant time.
    pub(crate) fn is_made_by(&self, key: &SigningKey) -> bool {
        key.id == self.signing_key_id && signature::verify(key, self.message, self.mac)
    }
}

pub(crate) fn is_valid_brand(brand: &str) -> bool {
    (MIN_BRAND_LEN..=MAX_BRAND_LEN).contains(&brand.len())
        && brand
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// CRC32 of `body`, as fixed-width base62.
pub(crate) fn checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{:0>width$}", base62::encode(crc), width = CHECKSUM_LEN)
}

/// `checksum(body) == check` for a `check` of CHECKSUM_LEN base62 digits, without
/// printing one: garbage is rejected here on every call, so this allocates nothing.
/// (A fixed-width base62 number has one spelling, so comparing values is comparing text.)
fn checksum_matches(body: &str, check: &str) -> bool {
    debug_assert_eq!(check.len(), CHECKSUM_LEN);
    base62::decode(check).is_ok_and(|n| n == u128::from(crc32fast::hash(body.as_bytes())))
}

/// Parse raw bytes (whatever the caller sent) into a key. Never panics.
pub(crate) fn parse(raw: &[u8]) -> Result<ParsedKey<'_>, ParseError> {
    if raw.len() > MAX_KEY_LEN || raw.len() < MIN_BRAND_LEN + 3 + PUBLIC_ID_LEN + 2 {
        return Err(ParseError::Length);
    }
    let text = std::str::from_utf8(raw).map_err(|_| ParseError::Shape)?;
    let mut parts = text.split('_');
    let (Some(brand), Some(tag), Some(public_id), Some(tail), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ParseError::Shape);
    };
    let environment = Environment::from_tag(tag).ok_or(ParseError::Shape)?;
    if !is_valid_brand(brand)
        || public_id.len() != PUBLIC_ID_LEN
        || !is_base62(public_id)
        || (tail.len() != UNSIGNED_TAIL_LEN && tail.len() != SIGNED_TAIL_LEN)
        || !is_base62(tail)
    {
        return Err(ParseError::Shape);
    }
    let body = &text[..text.len() - CHECKSUM_LEN];
    if !checksum_matches(body, &text[body.len()..]) {
        return Err(ParseError::Checksum);
    }
    let secret = &tail[..SECRET_LEN];
    let signature = (tail.len() == SIGNED_TAIL_LEN).then(|| {
        let mac_at = body.len() - MAC_LEN;
        Signature {
            signing_key_id: &body[mac_at - SIGNING_KEY_ID_LEN..mac_at],
            message: &body[..mac_at],
            mac: &body[mac_at..],
        }
    });
    Ok(ParsedKey {
        prefix: &text[..brand.len() + tag.len() + public_id.len() + 2],
        brand,
        environment,
        public_id,
        secret,
        signature,
    })
}

/// The parts of a key about to be issued.
pub(crate) struct NewKey {
    pub(crate) prefix: String,
    pub(crate) full: String,
}

/// Assemble a key from its parts; the caller supplies a validated brand, the random
/// parts and the signing key (None: a key without a signature, as catalogs from before
/// 0.5.0 still issue until `ALTER EXTENSION api_keys UPDATE`).
pub(crate) fn compose(
    brand: &str,
    environment: Environment,
    public_id: &str,
    secret: &str,
    signing_key: Option<&SigningKey>,
) -> NewKey {
    let prefix = format!("{brand}_{}_{public_id}", environment.tag());
    let mut body = format!("{prefix}_{secret}");
    if let Some(signing_key) = signing_key {
        body.push_str(&signing_key.id);
        body.push_str(&signature::sign(signing_key, &body));
    }
    let full = format!("{body}{}", checksum(&body));
    NewKey { prefix, full }
}

/// A regex matching every key of this format, signed or not, whatever its brand (keys
/// issued under an earlier `api_keys.brand` keep verifying, so scanners must keep
/// finding them). Portable across POSIX ERE (`grep -E`), RE2, PCRE, Python, JavaScript
/// and Postgres ARE: plain groups only, no `(?:…)`, no `\b` (a backspace in Postgres).
pub(crate) fn key_pattern() -> String {
    format!(
        "{}_[0-9A-Za-z]{{{UNSIGNED_TAIL_LEN}}}([0-9A-Za-z]{{{SIGNATURE_LEN}}})?",
        prefix_pattern()
    )
}

/// A regex matching every key prefix (`<brand>_<env>_<public id>`), whatever its brand.
pub(crate) fn prefix_pattern() -> String {
    format!(
        "[a-z0-9]{{{MIN_BRAND_LEN},{MAX_BRAND_LEN}}}_(live|stage|dev)_[0-9A-Za-z]{{{PUBLIC_ID_LEN}}}"
    )
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "wrong length",
            Self::Shape => "not of the key shape",
            Self::Checksum => "checksum mismatch",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "7Qx2aB9kLm0P";
    const SECRET: &str = "abcdefghijABCDEFGHIJ0123456789abcdefghijXYZ";

    fn signing_key(byte: u8) -> SigningKey {
        SigningKey::new("Sk01".into(), &[byte; 32])
    }

    fn unsigned(brand: &str, env: Environment, public_id: &str, secret: &str) -> String {
        compose(brand, env, public_id, secret, None).full
    }

    #[test]
    fn round_trip() {
        let k = compose(
            "ak",
            Environment::Production,
            ID,
            SECRET,
            Some(&signing_key(1)),
        );
        assert!(k.full.starts_with("ak_live_7Qx2aB9kLm0P_"));
        assert_eq!(k.full.len(), 2 + 6 + 12 + 1 + 43 + 4 + 17 + 6);
        assert_eq!(k.full.len(), MAX_KEY_LEN - 7);
        let p = parse(k.full.as_bytes()).unwrap();
        assert_eq!(p.prefix, k.prefix);
        assert_eq!(p.secret, SECRET);
        assert_eq!(p.environment, Environment::Production);
        let sig = p.signature.unwrap();
        assert_eq!(sig.signing_key_id, "Sk01");
        assert_eq!(sig.message, format!("{}_{SECRET}Sk01", k.prefix));
        assert!(sig.is_made_by(&signing_key(1)));
        assert!(!sig.is_made_by(&signing_key(2)));
        let other_id = SigningKey::new("Sk02".into(), &[1; 32]);
        assert!(!sig.is_made_by(&other_id));
    }

    #[test]
    fn keys_issued_before_signing_still_parse() {
        let k = unsigned("ak", Environment::Staging, ID, SECRET);
        assert_eq!(k.len(), 2 + 7 + 12 + 1 + 43 + 6);
        let p = parse(k.as_bytes()).unwrap();
        assert_eq!(p.secret, SECRET);
        assert_eq!(p.signature, None);
        let re = regex::Regex::new(&format!("^{}$", key_pattern())).unwrap();
        assert!(re.is_match(&k));
    }

    #[test]
    fn a_forged_mac_parses_but_is_not_made_by_the_signing_key() {
        // A forger knows the shape, the public signing key id and the checksum.
        let body = format!("ak_live_{ID}_{SECRET}Sk01{}", "A".repeat(MAC_LEN));
        let forged = format!("{body}{}", checksum(&body));
        let p = parse(forged.as_bytes()).unwrap();
        assert!(!p.signature.unwrap().is_made_by(&signing_key(1)));
    }

    /// The README's example key is a real one: it parses, checksum and all.
    #[test]
    fn the_readme_example_key_parses() {
        let readme = include_str!("../../../README.md");
        let example = readme
            .lines()
            .find(|l| l.starts_with("ak_live_"))
            .expect("README shows an example key");
        let parsed = parse(example.as_bytes()).unwrap();
        assert_eq!(
            parsed.signature.unwrap().signing_key_id.len(),
            SIGNING_KEY_ID_LEN
        );
    }

    #[test]
    fn checksum_is_fixed_width() {
        for body in ["", "a", "ak_live_x", "zzzzzzzzzzzzzz"] {
            assert_eq!(checksum(body).len(), CHECKSUM_LEN);
        }
    }

    #[test]
    fn one_changed_character_fails_the_checksum() {
        let k = compose(
            "ak",
            Environment::Staging,
            ID,
            SECRET,
            Some(&signing_key(1)),
        )
        .full;
        let i = k.len() - 10;
        let mut bytes = k.into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse(&bytes), Err(ParseError::Checksum));
    }

    #[test]
    fn rejects_bad_shapes() {
        let good = compose(
            "ak",
            Environment::Development,
            ID,
            SECRET,
            Some(&signing_key(1)),
        )
        .full;
        assert!(parse(good.as_bytes()).is_ok());
        for bad in [
            String::new(),
            "ak".into(),
            good.replace("_dev_", "_prod_"),
            good.replacen("ak_", "A_", 1),
            format!("{good}x"),
            good[1..].to_string(),
            good.replacen('_', "-", 1),
            format!("x_{good}"),
            // A tail of neither length.
            good[..good.len() - 1].to_string(),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(parse(&[0xff; 70]), Err(ParseError::Shape));
        assert_eq!(parse(&vec![b'a'; 1 << 20]), Err(ParseError::Length));
    }

    #[test]
    fn brands() {
        assert!(is_valid_brand("ak"));
        assert!(is_valid_brand("acme2024"));
        assert!(!is_valid_brand("a"));
        assert!(!is_valid_brand("toolongbr"));
        assert!(!is_valid_brand("Ak"));
        assert!(!is_valid_brand("a_k"));
    }

    /// The pattern has no construct POSIX ERE lacks (checked by `grep -E` in the
    /// regress tests): no `(?`, no `\`, and braces only as counted repetition.
    #[test]
    fn pattern_is_plain_ere() {
        let p = key_pattern();
        assert!(!p.contains("(?") && !p.contains('\\'), "{p}");
    }

    fn base62(len: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[0-9A-Za-z]{{{len}}}")).unwrap()
    }

    /// Property tests; `make fuzz` runs them at volume.
    mod proptests {
        use super::*;

        proptest! {
            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn composed_keys_parse_verify_and_match_the_pattern(
                brand in "[a-z0-9]{2,8}",
                env in 0usize..3,
                id in base62(PUBLIC_ID_LEN),
                secret in base62(SECRET_LEN),
                signing_id in base62(SIGNING_KEY_ID_LEN),
                signing_secret in any::<[u8; 32]>(),
            ) {
                let env = Environment::ALL[env];
                let signing = SigningKey::new(signing_id, &signing_secret);
                let key = compose(&brand, env, &id, &secret, Some(&signing));
                let parsed = parse(key.full.as_bytes()).unwrap();
                prop_assert_eq!(parsed.prefix, key.prefix.as_str());
                prop_assert_eq!(parsed.brand, brand.as_str());
                prop_assert_eq!(parsed.secret, secret.as_str());
                prop_assert_eq!(parsed.environment, env);
                prop_assert!(parsed.signature.unwrap().is_made_by(&signing));
                let re = regex::Regex::new(&format!("^{}$", key_pattern())).unwrap();
                prop_assert!(re.is_match(&key.full));
                prop_assert!(re.is_match(&unsigned(&brand, env, &id, &secret)));
                // A scanner finds the whole key inside text, not a shorter piece of it.
                let found = regex::Regex::new(&key_pattern()).unwrap();
                let text = format!("token: {} end", key.full);
                prop_assert_eq!(found.find(&text).unwrap().as_str(), key.full.as_str());
                // The prefix pattern takes the prefix and nothing longer: a whole key is
                // never taken for a prefix (sql/key_ref.sql).
                let prefix = regex::Regex::new(&format!("^{}$", prefix_pattern())).unwrap();
                prop_assert!(prefix.is_match(&key.prefix));
                prop_assert!(!prefix.is_match(&key.full));
            }

            /// The MAC binds prefix and secret: a key's signature moved onto another
            /// public id or secret (checksum made good again) is refused.
            #[test]
            fn a_signature_binds_prefix_and_secret(
                id in base62(PUBLIC_ID_LEN),
                other_id in base62(PUBLIC_ID_LEN),
                secret in base62(SECRET_LEN),
                other_secret in base62(SECRET_LEN),
            ) {
                let signing = signing_key(9);
                let key = compose("ak", Environment::Production, &id, &secret, Some(&signing)).full;
                let mac = &key[key.len() - CHECKSUM_LEN - MAC_LEN..key.len() - CHECKSUM_LEN];
                for (i, s) in [(&other_id, &secret), (&id, &other_secret)] {
                    let body = format!("ak_live_{i}_{s}Sk01{mac}");
                    let moved = format!("{body}{}", checksum(&body));
                    let parsed = parse(moved.as_bytes()).unwrap();
                    prop_assert_eq!(
                        parsed.signature.unwrap().is_made_by(&signing),
                        *i == id && *s == secret
                    );
                }
            }

            #[test]
            fn any_single_substitution_is_rejected(
                id in base62(PUBLIC_ID_LEN),
                secret in base62(SECRET_LEN),
                pos in 0usize..100,
                change in 1u8..=255,
            ) {
                let key = compose("ak", Environment::Production, &id, &secret, Some(&signing_key(3))).full;
                let mut bytes = key.clone().into_bytes();
                let pos = pos % bytes.len();
                // Any of the 255 other byte values, with no rejected cases.
                bytes[pos] = bytes[pos].wrapping_add(change);
                // CRC32 detects every single-byte change.
                prop_assert!(parse(&bytes).is_err());
            }

            /// Differential: comparing values agrees with comparing the printed checksum,
            /// for the right checksum, one digit off, and any other.
            #[test]
            fn checksum_matches_agrees_with_the_printed_checksum(
                body in ".{0,80}",
                other in base62(CHECKSUM_LEN),
                pos in 0usize..CHECKSUM_LEN,
            ) {
                let right = checksum(&body);
                let mut near = right.clone().into_bytes();
                near[pos] = if near[pos] == b'z' { b'0' } else { b'z' };
                let near = String::from_utf8(near).unwrap();
                for check in [&right, &near, &other] {
                    prop_assert_eq!(checksum_matches(&body, check), checksum(&body) == *check);
                }
            }
        }
    }
}
