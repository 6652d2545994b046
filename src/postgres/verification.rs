//! One verification of a presented key, from bytes to a verdict: parse, the signature,
//! read the key row, memo or argon2 (within the budgets for keys issued before
//! signing), status/network/scope, rate limits. Shared by `api_key_verify` and the
//! request context (`login`, `authenticate`).

use std::cell::Cell;
use std::net::IpAddr;

use pgrx::pg_sys;

use crate::core::key::{format, hash};
use crate::core::memo::{self, Fact};
use crate::core::rate_limit::{Admission, LimitState, Limits, Spend, Window};
use crate::core::verdict::{self, KeyState, KeyStatus, Reason};
use crate::postgres::gucs;
use crate::postgres::key_row::{self, KeyRow};
use crate::postgres::shmem::{self, Argon2For};
use crate::postgres::signing_keys;

/// A verification's answer: the key row of a valid key or why not, and, once the secret
/// has matched, the key's limits after the call.
pub(crate) struct Verdict<'m> {
    pub(crate) outcome: Result<KeyRow<'m>, Reason>,
    pub(crate) limits: Option<LimitState>,
}

impl Verdict<'_> {
    pub(crate) fn reason(&self) -> Reason {
        *self.outcome.as_ref().err().unwrap_or(&Reason::Ok)
    }
}

/// Verify, spending `cost` uses of a key with credits, and count the outcome in
/// `api_keys.stats()`. `required_scope` is raw bytes: a scope that is not UTF-8 is one
/// nobody holds.
pub(crate) fn verify<'m>(
    key: &'m [u8],
    client: Option<IpAddr>,
    required_scope: Option<&[u8]>,
    cost: u32,
) -> Verdict<'m> {
    let verdict = check(key, client, required_scope, cost);
    shmem::count(verdict.reason());
    verdict
}

/// A presentation the memo does not know: argon2 decides, and the memo remembers the
/// answer. A signed presentation is the key this installation issued (only its MAC
/// got it here), so it is never throttled; a key issued before signing is hashed
/// within its prefix's budgets, as anyone can present a secret for its prefix, and so
/// is a signed one once its signing key has proved known outside (see below).
fn secret_matches(
    key_id: &[u8; 16],
    fact: &[u8; 32],
    parsed: &format::ParsedKey<'_>,
    secret_hash: &str,
) -> bool {
    let budgeted = parsed
        .signature
        .as_ref()
        .is_none_or(|s| KNOWN_OUTSIDE.with_borrow(|k| k.contains(s.signing_key_id)));
    if budgeted && !shmem::spend_budget(key_id) {
        return false;
    }
    let matches = shmem::argon2(Argon2For::Verifying, || {
        hash::verify_secret(parsed.secret, secret_hash)
    });
    let known = if matches {
        Fact::Matches
    } else {
        Fact::DoesNotMatch
    };
    shmem::memo_remember(key_id, fact, known);
    if !matches {
        shmem::record_failure(key_id);
        if let Some(signature) = &parsed.signature {
            signing_key_known_outside(signature.signing_key_id);
        }
    }
    matches
}

thread_local! {
    /// Signing keys this backend has seen make a valid signature on a wrong secret (at
    /// most every signing key: only real ones make valid signatures).
    static KNOWN_OUTSIDE: std::cell::RefCell<std::collections::HashSet<String>> =
        Default::default();
}

/// A valid signature on a wrong secret: only a holder of the signing key can make one.
/// From then on this backend hashes that signing key's unknown presentations within the
/// argon2 budgets, like unsigned ones; the server log says so once (no secret in it).
fn signing_key_known_outside(signing_key_id: &str) {
    if KNOWN_OUTSIDE.with_borrow_mut(|k| k.insert(signing_key_id.to_owned())) {
        pgrx::log!(
            "api_keys: a key was presented with a valid signature by signing key {signing_key_id} and a wrong secret, so that signing key is known outside this database; rotate it and the keys it signed (README, Signed keys)"
        );
    }
}

/// A forged presentation: its MAC fails, or it comes without the signature its key
/// row says the key has (or with another). Refused as `invalid_secret` having changed
/// nothing: no budget, memo entry, rate window or usage count.
fn forged() -> Reason {
    shmem::count_forged();
    Reason::InvalidSecret
}

/// The key row of `key` when it is a key this installation issued (checksum,
/// signature, row and secret all agree) and not revoked, whatever its networks or
/// limits; for reports of leaked keys. No argon2 budget: a key is reported leaked exactly when
/// others may be guessing at its prefix, and the budget would then refuse it. Nothing
/// is counted: no usage, rate window, memo entry or failure.
pub(crate) fn authentic(key: &[u8]) -> Option<KeyRow<'_>> {
    let (parsed, row) = presented_row(key).ok()?;
    // A revoked key is left as it is, so it costs no argon2.
    if row.status == Some(KeyStatus::Revoked) {
        return None;
    }
    let fact = memo::fact_id(&row.secret_hash, key);
    let matches = match shmem::memo_lookup(&row.key_id(), &fact) {
        Some(known) => known == Fact::Matches,
        None => shmem::argon2(Argon2For::Verifying, || {
            hash::verify_secret(parsed.secret, &row.secret_hash)
        }),
    };
    if let (false, Some(signature)) = (matches, &parsed.signature) {
        signing_key_known_outside(signature.signing_key_id);
    }
    matches.then_some(row)
}

/// Why a presentation has no key row to judge.
enum Unread {
    Malformed,
    NotFound,
    /// Its MAC fails, or it is not signed as its row says.
    Forged,
}

/// The presentation, parsed, and its key row. Cheap rejection first: the shape and
/// checksum (no table, no hash), then the signature (one HMAC, still no table), then
/// the row, which says how the key is signed.
fn presented_row(key: &[u8]) -> Result<(format::ParsedKey<'_>, KeyRow<'_>), Unread> {
    let parsed = format::parse(key).map_err(|_| Unread::Malformed)?;
    if let Some(signature) = &parsed.signature {
        if !signing_keys::made_by_us(signature) {
            return Err(Unread::Forged);
        }
    }
    let row = key_row::fetch(parsed.prefix).ok_or(Unread::NotFound)?;
    // A signed key is presented signed, by the signing key its row names.
    if parsed
        .signature
        .as_ref()
        .map(|s| s.signing_key_id.as_bytes())
        != row.signing_key.as_ref().map(|id| &id[..])
    {
        return Err(Unread::Forged);
    }
    Ok((parsed, row))
}

/// A call refused before its key is read (a cost out of bounds), counted as malformed.
pub(crate) fn malformed_call<'m>() -> Verdict<'m> {
    shmem::count(Reason::Malformed);
    refused(Reason::Malformed)
}

/// A refusal before the key's limits are known.
fn refused<'m>(reason: Reason) -> Verdict<'m> {
    Verdict {
        outcome: Err(reason),
        limits: None,
    }
}

/// The key row of a valid key, or why it is not valid. Every call that finds a key
/// row counts in that key's usage, except forgeries; only calls that pass every other
/// check consume rate-limit quota and spend uses.
fn check<'m>(
    key: &'m [u8],
    client: Option<IpAddr>,
    required_scope: Option<&[u8]>,
    cost: u32,
) -> Verdict<'m> {
    let (parsed, row) = match presented_row(key) {
        Ok(found) => found,
        Err(Unread::Malformed) => return refused(Reason::Malformed),
        Err(Unread::NotFound) => return refused(Reason::NotFound),
        Err(Unread::Forged) => return refused(forged()),
    };
    let key_id = row.key_id();
    let limits = rate_limits(&row);
    match judge_row(key, &parsed, &row, &key_id, limits, client, required_scope) {
        // Over its limit before the secret was checked: the window, nothing else.
        (Reason::RateLimited, Some(window)) => Verdict {
            outcome: Err(Reason::RateLimited),
            limits: Some(LimitState {
                window: Some(window),
                ..LimitState::default()
            }),
        },
        (Reason::Ok, _) => {
            // SAFETY: reads the clock, which the credits and the windows then share.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            let spend = row.credits.terms(now).map(|terms| Spend { terms, cost });
            if spend.is_some() && !shmem::is_shared() {
                return unshared_credits(&key_id);
            }
            let owner = owner_limits(&row);
            let (admission, state) = shmem::admit(now, &key_id, limits, client, spend, owner);
            let outcome = match admission {
                Admission::Admitted => Ok(row),
                Admission::RateLimited => Err(Reason::RateLimited),
                Admission::UsageExceeded => Err(Reason::UsageExceeded),
            };
            Verdict {
                outcome,
                limits: Some(state),
            }
        }
        (reason, _) => {
            if let Some(column) = reason.usage_column() {
                shmem::record_rejected(&key_id, column);
            }
            refused(reason)
        }
    }
}

/// The owner's limits the key row carries (a copy of `api_keys.owner_limits`), if any.
fn owner_limits<'r>(row: &'r KeyRow<'_>) -> Option<shmem::OwnerLimits<'r>> {
    let limits = Limits {
        per_minute: limit(row.owner_rate_limit_per_minute, 0),
        per_hour: limit(row.owner_rate_limit_per_hour, 0),
    };
    (limits != Limits::UNLIMITED).then(|| shmem::OwnerLimits {
        owner: row.owner_bytes(),
        limits,
    })
}

/// A stored limit, else `default` (0 = unlimited).
fn limit(stored: Option<i32>, default: i32) -> u32 {
    stored.unwrap_or(default).max(0) as u32
}

/// The key's limits: its own, else the settings' defaults (0 = unlimited).
fn rate_limits(row: &KeyRow<'_>) -> Limits {
    let limits = Limits {
        per_minute: limit(
            row.rate_limit_per_minute,
            gucs::DEFAULT_RATE_LIMIT_PER_MINUTE.get(),
        ),
        per_hour: limit(
            row.rate_limit_per_hour,
            gucs::DEFAULT_RATE_LIMIT_PER_HOUR.get(),
        ),
    };
    if limits != Limits::UNLIMITED && !shmem::is_shared() {
        warn_unshared_limits();
    }
    limits
}

/// Without shared memory nothing counts a key's uses across sessions or writes them, so
/// a key with credits would have them all again in each session: it is refused instead
/// (`usage_exceeded`), and the server log says why, once per session.
fn unshared_credits<'m>(key_id: &[u8; 16]) -> Verdict<'m> {
    thread_local! {
        static WARNED: Cell<bool> = const { Cell::new(false) };
    }
    if !WARNED.replace(true) {
        pgrx::log!(
            "api_keys: keys with credits (remaining_uses) are refused as usage_exceeded, because api_keys is not in shared_preload_libraries"
        );
    }
    if let Some(column) = Reason::UsageExceeded.usage_column() {
        shmem::record_rejected(key_id, column);
    }
    refused(Reason::UsageExceeded)
}

/// Without shared memory a limit holds per session, which is no longer what the key's
/// owner was promised: say so in the server log, once per session.
fn warn_unshared_limits() {
    thread_local! {
        static WARNED: Cell<bool> = const { Cell::new(false) };
    }
    if !WARNED.replace(true) {
        pgrx::log!(
            "api_keys: rate limits are counted per session, because api_keys is not in shared_preload_libraries"
        );
    }
}

/// Secret, then status, network and scope (see `verdict`), for a key row.
fn judge_row(
    key: &[u8],
    parsed: &format::ParsedKey<'_>,
    row: &KeyRow<'_>,
    key_id: &[u8; 16],
    limits: Limits,
    client: Option<IpAddr>,
    required_scope: Option<&[u8]>,
) -> (Reason, Option<Window>) {
    let fact = memo::fact_id(&row.secret_hash, key);
    let secret_ok = match shmem::memo_lookup(key_id, &fact) {
        Some(known) => known == Fact::Matches,
        None => match shmem::rate_limited(key_id, limits) {
            // A key over its limit costs no argon2.
            Some(window) => return (Reason::RateLimited, Some(window)),
            None => secret_matches(key_id, &fact, parsed, &row.secret_hash),
        },
    };
    if !secret_ok {
        return (Reason::InvalidSecret, None);
    }
    // SAFETY: reads the statement's start time.
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    // Not UTF-8: a scope nobody holds.
    let required = required_scope.map(|s| std::str::from_utf8(s).unwrap_or("\u{0}"));
    // The array is read only when a scope is asked for, not on every call.
    let scopes = required.map(|_| row.scopes()).unwrap_or_default();
    let cidrs = row.cidrs();
    let state = KeyState {
        status: row.status,
        past_expiry: row.expires_at.is_some_and(|at| at <= now),
        cidrs: cidrs.as_deref(),
        scopes: &scopes,
    };
    (verdict::judge(&state, client, required), None)
}
