//! The MAC a signed key carries: HMAC-SHA-256 under a server signing key over
//! everything before it (`<prefix>_<secret><signing key id>`), truncated to 96 bits and
//! printed as fixed-width base62.
//!
//! Only this installation can make one, so a presentation whose MAC fails is a forgery,
//! refused for the price of one HMAC: no key row, no argon2, no budget, no rate window.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signing key's public id inside a key: 4 base62 characters (62^4 ≈ 14.8 million).
pub(crate) const SIGNING_KEY_ID_LEN: usize = 4;
/// Bytes of the HMAC kept (the leftmost): 96 bits.
const MAC_BYTES: usize = 12;
/// 17 base62 digits hold 96 bits (62^17 > 2^101).
pub(crate) const MAC_LEN: usize = 17;
/// A signing key's secret: 256 bits from the OS CSPRNG.
pub(crate) const SIGNING_SECRET_LEN: usize = 32;

/// A server signing key: its public id, and its secret made into an HMAC key once (the
/// inner and outer pads hashed), so a verification hashes only the message.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) id: String,
    keyed: Hmac<Sha256>,
}

impl SigningKey {
    pub(crate) fn new(id: String, secret: &[u8; SIGNING_SECRET_LEN]) -> SigningKey {
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
        SigningKey { id, keyed }
    }

    fn hmac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(message.as_bytes());
        mac
    }
}

impl std::fmt::Debug for SigningKey {
    // Never the secret, whatever prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn is_signing_key_id(id: &str) -> bool {
    id.len() == SIGNING_KEY_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The MAC of `message` (the key's text before it), as printed in the key.
pub(crate) fn sign(key: &SigningKey, message: &str) -> String {
    let tag = key.hmac(message).finalize().into_bytes();
    let mut n = [0u8; 16];
    n[16 - MAC_BYTES..].copy_from_slice(&tag[..MAC_BYTES]);
    format!(
        "{:0>width$}",
        base62::encode(u128::from_be_bytes(n)),
        width = MAC_LEN
    )
}

/// Whether `mac` (MAC_LEN base62 digits, as parsed) is `message`'s MAC under `key`,
/// compared in constant time. A number of more than 96 bits is no MAC of ours.
pub(crate) fn verify(key: &SigningKey, message: &str, mac: &str) -> bool {
    let Ok(n) = base62::decode(mac) else {
        return false;
    };
    if mac.len() != MAC_LEN || n >> (8 * MAC_BYTES) != 0 {
        return false;
    }
    let tag = n.to_be_bytes();
    key.hmac(message)
        .verify_truncated_left(&tag[16 - MAC_BYTES..])
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: &str, byte: u8) -> SigningKey {
        SigningKey::new(id.into(), &[byte; SIGNING_SECRET_LEN])
    }

    /// RFC 4231 test case 2 ("Jefe"), through the same HMAC, truncated to 96 bits.
    #[test]
    fn hmac_sha256_is_the_standard_one() {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let tag = m.finalize().into_bytes();
        assert_eq!(
            tag[..MAC_BYTES],
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26]
        );
    }

    #[test]
    fn sign_and_verify() {
        let k = key("AbC1", 7);
        let m = sign(&k, "ak_live_7Qx2aB9kLm0P_secretAbC1");
        assert_eq!(m.len(), MAC_LEN);
        assert!(m.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(verify(&k, "ak_live_7Qx2aB9kLm0P_secretAbC1", &m));
        // Another message, another key, another MAC: all refused.
        assert!(!verify(&k, "ak_live_7Qx2aB9kLm0P_secreTAbC1", &m));
        assert!(!verify(
            &key("AbC1", 8),
            "ak_live_7Qx2aB9kLm0P_secretAbC1",
            &m
        ));
        assert!(!verify(
            &k,
            "ak_live_7Qx2aB9kLm0P_secretAbC1",
            &"0".repeat(MAC_LEN)
        ));
        // Over 96 bits, or not base62.
        assert!(!verify(&k, "x", &"z".repeat(MAC_LEN)));
        assert!(!verify(&k, "x", &"-".repeat(MAC_LEN)));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        assert_eq!(
            format!("{:?}", key("AbC1", 0xab)),
            r#"SigningKey { id: "AbC1", .. }"#
        );
    }

    #[test]
    fn signing_key_ids() {
        assert!(is_signing_key_id("a0Z9"));
        assert!(!is_signing_key_id("a0Z"));
        assert!(!is_signing_key_id("a0Z9x"));
        assert!(!is_signing_key_id("a0_9"));
    }

    proptest! {
        /// Codec round trip: every MAC printed verifies, and is fixed width.
        #[test]
        fn printed_macs_verify(secret in any::<[u8; 32]>(), message in ".{0,100}") {
            let k = SigningKey::new("AAAA".into(), &secret);
            let m = sign(&k, &message);
            prop_assert_eq!(m.len(), MAC_LEN);
            prop_assert!(verify(&k, &message, &m));
        }

        /// Any change to one character of a MAC is refused.
        #[test]
        fn a_changed_mac_is_refused(
            secret in any::<[u8; 32]>(),
            message in "[0-9A-Za-z_]{1,80}",
            pos in 0usize..MAC_LEN,
            to in "[0-9A-Za-z]",
        ) {
            let k = SigningKey::new("AAAA".into(), &secret);
            let m = sign(&k, &message);
            let mut changed = m.clone().into_bytes();
            changed[pos] = to.as_bytes()[0];
            let changed = String::from_utf8(changed).unwrap();
            prop_assert_eq!(verify(&k, &message, &changed), changed == m);
        }

        /// verify never panics on any text.
        #[test]
        fn verify_never_panics(mac in ".{0,40}", message in ".{0,40}") {
            let _ = verify(&key("AAAA", 1), &message, &mac);
        }
    }
}
