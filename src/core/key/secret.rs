//! Random material for new keys, straight from the operating system's CSPRNG.

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};

use super::format::{PUBLIC_ID_LEN, SECRET_LEN};
use super::signature::{SIGNING_KEY_ID_LEN, SIGNING_SECRET_LEN};

fn base62(len: usize) -> String {
    // Alphanumeric samples uniformly from the 62 characters (rejection sampling).
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) fn public_id() -> String {
    base62(PUBLIC_ID_LEN)
}

/// 43 uniform base62 characters: 256 bits of entropy.
pub(crate) fn secret() -> String {
    base62(SECRET_LEN)
}

/// A new signing key's public id (unique within a database: the caller checks).
pub(crate) fn signing_key_id() -> String {
    base62(SIGNING_KEY_ID_LEN)
}

/// A new signing key's secret: 256 bits.
pub(crate) fn signing_secret() -> [u8; SIGNING_SECRET_LEN] {
    let mut secret = [0; SIGNING_SECRET_LEN];
    OsRng.fill_bytes(&mut secret);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shapes_and_uniqueness() {
        let secrets: HashSet<String> = (0..1000).map(|_| secret()).collect();
        assert_eq!(secrets.len(), 1000);
        assert!(secrets
            .iter()
            .all(|s| s.len() == SECRET_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())));
        assert_eq!(public_id().len(), PUBLIC_ID_LEN);
        assert!(super::super::signature::is_signing_key_id(&signing_key_id()));
        let secrets: HashSet<_> = (0..1000).map(|_| signing_secret()).collect();
        assert_eq!(secrets.len(), 1000);
    }

    #[test]
    fn every_character_class_appears() {
        let all: String = (0..200).map(|_| secret()).collect();
        assert!(all.bytes().any(|b| b.is_ascii_digit()));
        assert!(all.bytes().any(|b| b.is_ascii_lowercase()));
        assert!(all.bytes().any(|b| b.is_ascii_uppercase()));
    }
}
