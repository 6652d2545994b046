//! The stored form of a secret: an argon2id PHC string. Verification reads the
//! parameters from the PHC string itself, so changing the settings affects only new keys.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Argon2Settings {
    pub(crate) memory_kib: u32,
    pub(crate) iterations: u32,
    pub(crate) parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommendation for argon2id.
    fn default() -> Self {
        Self {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Hash a secret with a fresh random salt. Errors only on impossible parameters.
pub(crate) fn hash_secret(secret: &str, settings: Argon2Settings) -> Result<String, argon2::Error> {
    let params = Params::new(
        settings.memory_kib,
        settings.iterations,
        settings.parallelism,
        None,
    )?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| argon2::Error::OutputTooShort)
}

/// True when `secret` matches the argon2id PHC string `phc`. The final comparison is
/// constant-time (password-hash compares outputs with `subtle`).
pub(crate) fn verify_secret(secret: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Settings = Argon2Settings {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hash_then_verify() {
        let h = hash_secret("s3cret", CHEAP).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_secret("s3cret", &h));
        assert!(!verify_secret("s3creT", &h));
        assert!(!verify_secret("", &h));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(
            hash_secret("x", CHEAP).unwrap(),
            hash_secret("x", CHEAP).unwrap()
        );
    }

    #[test]
    fn garbage_or_other_algorithms_never_verify() {
        assert!(!verify_secret("x", ""));
        assert!(!verify_secret("x", "not a phc string"));
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"x", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(!verify_secret("x", &argon2i));
    }

    #[test]
    fn impossible_parameters_are_errors() {
        let bad = Argon2Settings {
            memory_kib: 1,
            ..CHEAP
        };
        assert!(hash_secret("x", bad).is_err());
    }
}
