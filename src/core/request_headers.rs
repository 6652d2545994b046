//! PostgREST's `request.headers`: which API key, if any, a request presents, and its
//! `x-forwarded-for`. The setting is
//! a JSON object of lower-cased header names. The key is `x-api-key`, else an
//! `Authorization: Bearer` token that has this installation's key shape. Any other
//! bearer token (a JWT) is not ours and passes through untouched.

use serde_json::{Map, Value};

use crate::core::key::format::Environment;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    /// No key: the request is anonymous as far as api_keys is concerned.
    Anonymous,
    Key(String),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HeadersError;

pub(crate) struct Headers(Map<String, Value>);

impl Headers {
    /// `text`: the value of `request.headers`; None or blank when unset.
    pub(crate) fn parse(text: Option<&str>) -> Result<Headers, HeadersError> {
        match text.filter(|t| !t.trim().is_empty()) {
            None => Ok(Headers(Map::new())),
            Some(t) => serde_json::from_str(t)
                .map(Headers)
                .map_err(|_| HeadersError),
        }
    }

    /// A header's value, trimmed; names compared without case, for callers that set
    /// `request.headers` themselves.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::trim)
    }

    pub(crate) fn credential(&self, brand: &str) -> Credential {
        // Present, even empty, blank or not a string, is presented: a client whose key
        // variable is unset is refused (malformed) rather than served anonymous results.
        let named = |(k, _): &(&String, &Value)| k.eq_ignore_ascii_case("x-api-key");
        if let Some((_, value)) = self.0.iter().find(named) {
            return Credential::Key(value.as_str().map_or("", str::trim).to_owned());
        }
        self.get("authorization")
            .and_then(bearer_token)
            .filter(|token| has_key_shape(token, brand))
            .map_or(Credential::Anonymous, |token| {
                Credential::Key(token.to_owned())
            })
    }
}

fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `<brand>_<env tag>_…`: ours, even when mistyped (it is then refused as malformed
/// rather than handed on as a JWT).
pub(crate) fn has_key_shape(token: &str, brand: &str) -> bool {
    let mut parts = token.splitn(3, '_');
    parts.next() == Some(brand)
        && parts.next().and_then(Environment::from_tag).is_some()
        && parts.next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Result<Credential, HeadersError> {
        Ok(Credential::Key(s.into()))
    }

    fn from_headers(text: Option<&str>, brand: &str) -> Result<Credential, HeadersError> {
        Headers::parse(text).map(|h| h.credential(brand))
    }

    #[test]
    fn no_headers_is_anonymous() {
        assert_eq!(from_headers(None, "ak"), Ok(Credential::Anonymous));
        assert_eq!(from_headers(Some(""), "ak"), Ok(Credential::Anonymous));
        assert_eq!(from_headers(Some("{}"), "ak"), Ok(Credential::Anonymous));
        let h = r#"{"accept":"application/json"}"#;
        assert_eq!(from_headers(Some(h), "ak"), Ok(Credential::Anonymous));
    }

    #[test]
    fn an_empty_or_blank_x_api_key_is_presented() {
        for blank in ["\"\"", "\"  \"", "\"\\t\"", "null", "42"] {
            let h = format!(r#"{{"x-api-key":{blank},"authorization":"Bearer ak_dev_x"}}"#);
            assert_eq!(from_headers(Some(&h), "ak"), key(""), "{h}");
        }
    }

    #[test]
    fn not_an_object_is_an_error() {
        for bad in ["[]", "\"x\"", "{", "null"] {
            assert!(Headers::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn x_api_key_first_and_taken_as_is() {
        let h = r#"{"x-api-key":" ak_live_abc ","authorization":"Bearer ak_dev_x"}"#;
        assert_eq!(from_headers(Some(h), "ak"), key("ak_live_abc"));
        // Whatever it holds is presented, so garbage is refused, not ignored.
        assert_eq!(
            from_headers(Some(r#"{"X-Api-Key":"nonsense"}"#), "ak"),
            key("nonsense")
        );
    }

    #[test]
    fn bearer_keys_are_ours_and_jwts_pass_through() {
        let h = |v: &str| format!(r#"{{"authorization":"{v}"}}"#);
        assert_eq!(
            from_headers(Some(&h("Bearer ak_live_abc")), "ak"),
            key("ak_live_abc")
        );
        assert_eq!(
            from_headers(Some(&h("bearer   ak_stage_x")), "ak"),
            key("ak_stage_x")
        );
        for passes in [
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoid2ViIn0.sig",
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "Bearer zz_live_abc",
            "Bearer ak_prod_abc",
            "Bearer",
            "ak_live_abc",
        ] {
            assert_eq!(
                from_headers(Some(&h(passes)), "ak"),
                Ok(Credential::Anonymous),
                "{passes}"
            );
        }
    }

    #[test]
    fn key_shape() {
        assert!(has_key_shape("ak_live_", "ak"));
        assert!(has_key_shape("acme_dev_x", "acme"));
        assert!(!has_key_shape("ak_livex", "ak"));
        assert!(!has_key_shape("akk_live_x", "ak"));
        assert!(!has_key_shape("", "ak"));
    }
}
