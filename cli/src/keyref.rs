//! Naming a key on the command line (its id or its prefix), and keeping secrets out of
//! what the client prints.
//!
//! A prefix is `<brand>_<env tag>_<public id>`: brand 2–8 lowercase letters or digits,
//! tag `live`, `stage` or `dev`, public id 12 base62 characters (the extension's
//! `_prefix_pattern()`). A whole key is a prefix followed by `_` and the secret.

use crate::errors::{Error, Result};

/// A key as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key's id, lowercased.
    Id(String),
    /// A key's prefix, exactly as given (prefixes are case-sensitive).
    Prefix(String),
}

impl KeyRef {
    /// Reads an id or a prefix. A whole key names the key by its prefix, with a warning
    /// (as the server's lifecycle functions do) that never repeats the secret.
    pub fn parse(text: &str) -> Result<KeyRef> {
        if is_uuid(text) {
            return Ok(KeyRef::Id(text.to_ascii_lowercase()));
        }
        if is_prefix(text) {
            return Ok(KeyRef::Prefix(text.to_owned()));
        }
        if let Some(prefix) = whole_key_prefix(text) {
            eprintln!(
                "warning: that is a whole API key, secret included; its prefix {prefix} names the key"
            );
            eprintln!(
                "hint: Pass the prefix only. A key sent where it should not be is exposed: revoke it."
            );
            return Ok(KeyRef::Prefix(prefix.to_owned()));
        }
        Err(
            Error::usage("a key must be named by its id (a uuid) or its prefix")
                .with_hint("As `api-keys list` shows them, e.g. ak_live_AbCdEf012345."),
        )
    }

    /// The id or the prefix, as the lifecycle functions take it.
    pub fn as_str(&self) -> &str {
        match self {
            KeyRef::Id(s) | KeyRef::Prefix(s) => s,
        }
    }

    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            KeyRef::Id(id) => format!("id {id}"),
            KeyRef::Prefix(p) => format!("prefix {p}"),
        }
    }
}

/// 8-4-4-4-12 hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn is_prefix(s: &str) -> bool {
    let mut parts = s.split('_');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(brand), Some(tag), Some(id), None)
            if (2..=8).contains(&brand.len())
                && brand.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && matches!(tag, "live" | "stage" | "dev")
                && id.len() == 12
                && is_base62(id)
    )
}

/// The prefix of `s` when `s` is a prefix followed by `_` and more: a whole key, or
/// most of one.
pub fn whole_key_prefix(s: &str) -> Option<&str> {
    let mut underscores = s.match_indices('_').map(|(i, _)| i);
    let end = underscores.nth(2)?;
    let prefix = &s[..end];
    (is_prefix(prefix) && end + 1 < s.len()).then_some(prefix)
}

/// `text` with the secret of every key in it replaced by `…`: what the client prints
/// on stderr may quote a mistyped argument. A key is found wherever it starts, also
/// glued to a word (`token_<key>`).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            redact_word(&word, &mut out);
            word.clear();
            out.push(c);
        }
    }
    redact_word(&word, &mut out);
    out
}

/// One run of letters, digits and underscores: up to the first key's prefix as is,
/// the rest (the secret, and whatever is glued to it) as `_…`. Linear in the word:
/// each triple of consecutive underscores is tried once.
fn redact_word(word: &str, out: &mut String) {
    let bytes = word.as_bytes();
    let underscores: Vec<usize> = word.match_indices('_').map(|(i, _)| i).collect();
    for w in underscores.windows(3) {
        let (u1, u3) = (w[0], w[2]);
        let brand_len = bytes[..u1]
            .iter()
            .rev()
            .take(8)
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .count();
        if brand_len >= 2 && u3 + 1 < word.len() && is_prefix(&word[u1 - brand_len..u3]) {
            out.push_str(&word[..u3]);
            out.push_str("_…");
            return;
        }
    }
    out.push_str(word);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ak_live_IMdcQW4lJbJX_ceXZJUWGD6JvTpe7TL7yXKN6v7hdaN1X750jGbgFmhE3V2i5Y";

    #[test]
    fn ids_prefixes_and_whole_keys() {
        assert_eq!(
            KeyRef::parse("0E8A3A0C-1B2C-4D5E-8F90-A1B2C3D4E5F6").unwrap(),
            KeyRef::Id("0e8a3a0c-1b2c-4d5e-8f90-a1b2c3d4e5f6".into())
        );
        assert_eq!(
            KeyRef::parse("ak_live_IMdcQW4lJbJX").unwrap(),
            KeyRef::Prefix("ak_live_IMdcQW4lJbJX".into())
        );
        assert_eq!(
            KeyRef::parse(KEY).unwrap(),
            KeyRef::Prefix("ak_live_IMdcQW4lJbJX".into())
        );
        for bad in [
            "",
            "ak_live_short",
            "AK_live_IMdcQW4lJbJX",
            "ak_prod_IMdcQW4lJbJX",
            "ak_live_IMdcQW4lJbJX_",
            "x_live_IMdcQW4lJbJX",
            "ak_live_IMdcQW4lJb-X",
            "0e8a3a0c1b2c4d5e8f90a1b2c3d4e5f6",
        ] {
            let e = KeyRef::parse(bad).unwrap_err();
            assert_eq!(e.class, crate::errors::Class::Usage, "{bad}");
        }
    }

    #[test]
    fn redaction_keeps_the_prefix_only() {
        assert_eq!(
            redact(&format!("unexpected argument '{KEY}' found")),
            "unexpected argument 'ak_live_IMdcQW4lJbJX_…' found"
        );
        assert_eq!(
            redact("ak_live_IMdcQW4lJbJX is fine"),
            "ak_live_IMdcQW4lJbJX is fine"
        );
        assert_eq!(redact("a_b_c_d ünïcode"), "a_b_c_d ünïcode");
        assert!(!redact(&format!("{KEY}{KEY}")).contains("ceXZ"));
        // Glued to a word, after an underscore or letters.
        for glued in [format!("_{KEY}"), format!("x_{KEY}"), format!("svc{KEY}")] {
            let shown = redact(&format!("bad value '{glued}'"));
            assert!(!shown.contains("ceXZ"), "{shown}");
            assert!(shown.contains("IMdcQW4lJbJX_…"), "{shown}");
        }
    }
}
