//! Scope grammar and matching, free of Postgres.
//!
//! `*` alone is full access. Otherwise `<resource>:<action>`, where the resource is
//! segments separated by `/`, each `[a-z0-9][a-z0-9_-]*` or `*`; a `*` segment matches
//! exactly one segment and a trailing `*` matches that segment and everything below.
//! The action is a lowercase word or `*`. No action implies another.

use std::fmt;

/// Longest scope text, in bytes.
pub(crate) const MAX_SCOPE_LEN: usize = 200;
/// Most scopes one key may hold.
pub(crate) const MAX_SCOPES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Any,
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `*`: every resource, every action.
    All,
    Rule {
        resource: Vec<Part>,
        action: Part,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScopeError(pub String);

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn segment(s: &str) -> Result<Part, ScopeError> {
    if s == "*" {
        return Ok(Part::Any);
    }
    let mut bytes = s.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(Part::Name(s.to_owned()))
    } else {
        Err(ScopeError(format!(
            "resource segment \"{s}\" must be \"*\" or match [a-z0-9][a-z0-9_-]*"
        )))
    }
}

fn action(s: &str) -> Result<Part, ScopeError> {
    if s == "*" {
        return Ok(Part::Any);
    }
    let mut bytes = s.bytes();
    let ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(Part::Name(s.to_owned()))
    } else {
        Err(ScopeError(format!(
            "action \"{s}\" must be \"*\" or a lowercase word"
        )))
    }
}

impl Scope {
    pub(crate) fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s == "*" {
            return Ok(Scope::All);
        }
        if s.len() > MAX_SCOPE_LEN {
            return Err(ScopeError(format!(
                "a scope is at most {MAX_SCOPE_LEN} bytes"
            )));
        }
        let Some((resource, act)) = s.split_once(':') else {
            return Err(ScopeError(
                "a scope is \"*\" or \"<resource>:<action>\"".into(),
            ));
        };
        let resource = resource.split('/').map(segment).collect::<Result<_, _>>()?;
        Ok(Scope::Rule {
            resource,
            action: action(act)?,
        })
    }

    /// Does holding `self` allow everything `required` allows?
    /// (For a concrete `required`, simply: is it granted.)
    pub(crate) fn grants(&self, required: &Scope) -> bool {
        match (self, required) {
            (Scope::All, _) => true,
            (Scope::Rule { .. }, Scope::All) => false,
            (
                Scope::Rule {
                    resource: g,
                    action: ga,
                },
                Scope::Rule {
                    resource: r,
                    action: ra,
                },
            ) => {
                let action_ok = *ga == Part::Any || ga == ra;
                action_ok && resource_covers(g, r)
            }
        }
    }

    /// Is there any concrete scope that both `self` and `other` grant? Used to check a
    /// requested scope against the catalog: a typo overlaps nothing.
    pub(crate) fn overlaps(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::All, _) | (_, Scope::All) => true,
            (
                Scope::Rule {
                    resource: a,
                    action: aa,
                },
                Scope::Rule {
                    resource: b,
                    action: ba,
                },
            ) => {
                let action_ok = *aa == Part::Any || *ba == Part::Any || aa == ba;
                action_ok && resources_overlap(a, b)
            }
        }
    }
}

fn is_trailing_any(parts: &[Part], i: usize) -> bool {
    i + 1 == parts.len() && parts[i] == Part::Any
}

/// Every resource matched by pattern `r` is matched by pattern `g`.
fn resource_covers(g: &[Part], r: &[Part]) -> bool {
    for (i, gp) in g.iter().enumerate() {
        if i >= r.len() {
            return false;
        }
        if is_trailing_any(g, i) {
            return true;
        }
        let covered = match (gp, &r[i]) {
            // A trailing `*` of `r` spans deeper than this one segment; the length
            // check on the next round rejects that case.
            (Part::Any, _) => true,
            (Part::Name(_), Part::Any) => false,
            (Part::Name(a), Part::Name(b)) => a == b,
        };
        if !covered {
            return false;
        }
    }
    g.len() == r.len()
}

fn resources_overlap(a: &[Part], b: &[Part]) -> bool {
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(pa), Some(pb)) => {
                if is_trailing_any(a, i) || is_trailing_any(b, i) {
                    return true;
                }
                let same = match (pa, pb) {
                    (Part::Any, _) | (_, Part::Any) => true,
                    (Part::Name(x), Part::Name(y)) => x == y,
                };
                if !same {
                    return false;
                }
            }
        }
        i += 1;
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Any => f.write_str("*"),
            Part::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Rule { resource, action } => {
                for (i, p) in resource.iter().enumerate() {
                    if i > 0 {
                        f.write_str("/")?;
                    }
                    write!(f, "{p}")?;
                }
                write!(f, ":{action}")
            }
        }
    }
}

/// True when any of the granted scopes grants `required`. Unparseable entries grant
/// nothing; an unparseable `required` is granted by nothing (fail closed).
pub(crate) fn any_grants<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    let Ok(required) = Scope::parse(required) else {
        return false;
    };
    granted
        .iter()
        .filter_map(|g| Scope::parse(g.as_ref()).ok())
        .any(|g| g.grants(&required))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    #[test]
    fn grammar() {
        for ok in [
            "*",
            "runs:read",
            "test-cases:write",
            "projects/42/runs:*",
            "*:read",
            "a/*/b:x_y",
        ] {
            assert_eq!(s(ok).to_string(), ok);
        }
        for bad in [
            "",
            "runs",
            "Runs:read",
            "runs:Read",
            "runs:",
            ":read",
            "runs:read:x",
            "a//b:r",
            "-a:read",
            "a b:read",
            "runs:1read",
            "**:read",
            "runs:re*d",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert!(Scope::parse(&format!("{}:read", "a".repeat(300))).is_err());
    }

    #[test]
    fn examples_from_the_contract() {
        assert!(s("runs:*").grants(&s("runs:read")));
        assert!(s("*:read").grants(&s("projects/42:read")));
        assert!(s("projects/42/*:read").grants(&s("projects/42/runs/7:read")));
        assert!(!s("projects/42/*:read").grants(&s("projects/43/runs:read")));
        assert!(s("*").grants(&s("anything/at/all:admin")));
        assert!(
            !s("runs:write").grants(&s("runs:read")),
            "no action implies another"
        );
        assert!(!s("runs:admin").grants(&s("runs:read")));
    }

    #[test]
    fn segment_wildcards() {
        assert!(s("projects/*/runs:read").grants(&s("projects/1/runs:read")));
        assert!(!s("projects/*/runs:read").grants(&s("projects/1/2/runs:read")));
        assert!(!s("projects/*:read").grants(&s("projects:read")));
        assert!(!s("runs:read").grants(&s("runs/1:read")));
        assert!(!s("runs:read").grants(&s("*")));
        assert!(s("a/*:r").grants(&s("a/*:r")));
        assert!(!s("a/*/c:r").grants(&s("a/*:r")));
        assert!(s("a/*:r").grants(&s("a/*/c:r")));
    }

    #[test]
    fn overlap_for_the_catalog() {
        assert!(s("runs:*").overlaps(&s("runs:read")));
        assert!(s("projects/42/runs:read").overlaps(&s("projects/*/runs:read")));
        assert!(!s("rnus:read").overlaps(&s("runs:read")));
        assert!(!s("projects/42:read").overlaps(&s("projects:read")));
        assert!(s("*").overlaps(&s("runs:read")));
        assert!(s("*:read").overlaps(&s("a/b/c:read")));
    }

    #[test]
    fn any_grants_fails_closed() {
        assert!(any_grants(&["bad scope", "runs:read"], "runs:read"));
        assert!(!any_grants(&["bad scope"], "runs:read"));
        assert!(!any_grants(&["*"], "not a scope"));
        assert!(!any_grants::<&str>(&[], "runs:read"));
    }

    // A naive reference: a granted pattern as a regex over the printed required scope.
    fn reference_grants(granted: &str, required: &str) -> bool {
        if granted == "*" {
            return true;
        }
        let (res, act) = granted.split_once(':').unwrap();
        let parts: Vec<&str> = res.split('/').collect();
        let mut re = String::from("^");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                re.push('/');
            }
            match *p {
                "*" if i + 1 == parts.len() => re.push_str("[^/:]+(/[^/:]+)*"),
                "*" => re.push_str("[^/:]+"),
                name => re.push_str(&regex::escape(name)),
            }
        }
        re.push(':');
        re.push_str(if act == "*" { "[^/:]+" } else { act });
        re.push('$');
        regex::Regex::new(&re).unwrap().is_match(required)
    }

    fn pattern() -> impl Strategy<Value = String> {
        let seg = prop_oneof![Just("*".to_string()), "[ab]{1,2}"];
        (
            proptest::collection::vec(seg, 1..4),
            prop_oneof![Just("*".to_string()), "(read|write)"],
        )
            .prop_map(|(segs, a)| format!("{}:{a}", segs.join("/")))
    }

    fn concrete() -> impl Strategy<Value = String> {
        (proptest::collection::vec("[ab]{1,2}", 1..5), "(read|write)")
            .prop_map(|(segs, a)| format!("{}:{a}", segs.join("/")))
    }

    /// Property tests; `make fuzz` runs them at volume.
    mod proptests {
        use super::*;

        proptest! {
            #[test]
            fn matcher_agrees_with_reference(g in pattern(), r in concrete()) {
                prop_assert_eq!(s(&g).grants(&s(&r)), reference_grants(&g, &r));
            }

            #[test]
            fn grants_implies_overlap(g in pattern(), r in pattern()) {
                if s(&g).grants(&s(&r)) {
                    prop_assert!(s(&g).overlaps(&s(&r)));
                }
                prop_assert!(s(&g).grants(&s(&g)));
                prop_assert_eq!(s(&g).overlaps(&s(&r)), s(&r).overlaps(&s(&g)));
            }

            #[test]
            fn grants_of_patterns_is_sound(g in pattern(), r in pattern(), c in concrete()) {
                // If g covers pattern r, every concrete scope r grants, g grants too.
                if s(&g).grants(&s(&r)) && s(&r).grants(&s(&c)) {
                    prop_assert!(s(&g).grants(&s(&c)));
                }
            }

            #[test]
            fn parse_never_panics(x in ".{0,64}") {
                let _ = Scope::parse(&x);
            }
        }
    }
}
