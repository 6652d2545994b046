//! `api_key_verify`: one row for any input, never an error for bad input.
//!
//! This is the hot path, so its fmgr glue is written by hand instead of through
//! `#[pg_extern]`: arguments are read as raw datums (a key that is not UTF-8, possible
//! in a SQL_ASCII database, is `malformed`, not an error), the key row is read straight
//! from the prefix index (`key_row`), and the one result row is formed against a row
//! descriptor built once per backend. A set-returning function may answer a single row
//! in value-per-call mode by leaving `isDone` at `ExprSingleResult`; the executor then
//! neither calls it again nor keeps per-call state.
//!
//! It is SECURITY INVOKER and runs no SQL: the EXECUTE privilege (api_keys_verifier)
//! is its only gate, and nothing a caller puts on its search_path is ever consulted.

use std::cell::Cell;
use std::ptr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::cidr;
use crate::gucs;
use crate::key::{format, hash};
use crate::key_activity::Limits;
use crate::key_row::{self, KeyRow};
use crate::memo::{self, Fact};
use crate::shmem;
use crate::varlena;
use crate::verdict::{self, KeyState, Reason};

extension_sql!(
    r#"
CREATE FUNCTION api_keys.api_key_verify(
    key text,
    client_ip inet DEFAULT NULL,
    required_scope text DEFAULT NULL
) RETURNS TABLE (
    valid boolean, reason text, key_id uuid, owner text,
    key_type api_keys.key_type, environment api_keys.environment,
    scopes text[], expires_at timestamptz
)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_key_verify';
COMMENT ON FUNCTION api_keys.api_key_verify(text, inet, text) IS
    'One row for any input: valid, reason and, when valid, the key''s identity.';
"#,
    name = "api_key_verify",
    requires = ["schema"]
);

/// Longer than any key this extension issues, by a wide margin; larger input is
/// `malformed` without being detoasted.
const MAX_KEY_BYTES: usize = 1024;

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_api_key_verify() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn api_key_verify(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
        let arg = |i: usize| args.get(i).filter(|a| !a.isnull).map(|a| a.value);
        let key = arg(0).map_or(&[][..], |d| {
            if varlena::raw_size(d) > MAX_KEY_BYTES {
                &[]
            } else {
                varlena::bytes(d)
            }
        });
        let client = arg(1)
            .and_then(|d| varlena::inet(d))
            .and_then(|(v6, _, addr)| cidr::client(v6, &addr));
        let outcome = check(key, client, arg(2));
        shmem::count(*outcome.as_ref().err().unwrap_or(&Reason::Ok));
        result_row(fcinfo, &outcome)
    }
}

/// A presentation the memo does not know: argon2 decides, within the budgets, and the
/// memo remembers the answer.
fn secret_matches(fact: &[u8; 32], prefix: &str, secret: &str, secret_hash: &str) -> bool {
    if !shmem::spend_budget(prefix) {
        return false;
    }
    let matches = shmem::argon2(|| hash::verify_secret(secret, secret_hash));
    let known = if matches {
        Fact::Matches
    } else {
        Fact::DoesNotMatch
    };
    shmem::memo_remember(fact, known);
    if !matches {
        shmem::record_failure(prefix);
    }
    matches
}

/// The key row of a valid key, or why it is not valid. Every call that finds a key
/// row counts in that key's usage; only calls that pass every other check consume
/// rate-limit quota.
fn check(
    key: &[u8],
    client: Option<std::net::IpAddr>,
    required_scope: Option<pg_sys::Datum>,
) -> Result<KeyRow, Reason> {
    // Cheap rejection first: no table, no hash.
    let parsed = format::parse(key).map_err(|_| Reason::Malformed)?;
    let row = key_row::fetch(parsed.prefix).ok_or(Reason::NotFound)?;
    let key_id = row.key_id();
    let limits = rate_limits(&row);
    match judge_row(key, &parsed, &row, &key_id, limits, client, required_scope) {
        Reason::Ok if shmem::admit(&key_id, limits, client) => Ok(row),
        Reason::Ok => Err(Reason::RateLimited),
        reason => {
            shmem::record_rejected(&key_id);
            Err(reason)
        }
    }
}

/// The key's limits: its own, else the settings' defaults (0 = unlimited).
fn rate_limits(row: &KeyRow) -> Limits {
    let limit = |own: Option<i32>, default: i32| own.unwrap_or(default).max(0) as u32;
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
    row: &KeyRow,
    key_id: &[u8; 16],
    limits: Limits,
    client: Option<std::net::IpAddr>,
    required_scope: Option<pg_sys::Datum>,
) -> Reason {
    let fact = memo::fact_id(&row.secret_hash, key);
    let secret_ok = match shmem::memo_lookup(&fact) {
        Some(known) => known == Fact::Matches,
        // A key over its limit costs no argon2.
        None if shmem::rate_limited(key_id, limits) => return Reason::RateLimited,
        None => secret_matches(&fact, parsed.prefix, parsed.secret, &row.secret_hash),
    };
    if !secret_ok {
        return Reason::InvalidSecret;
    }
    let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    let state = KeyState {
        status: &row.status,
        past_expiry: row.expires_at.is_some_and(|at| at <= now),
        cidrs: row.cidrs.as_deref(),
        scopes: &row.scopes,
    };
    // Not UTF-8: a scope nobody holds.
    let required = required_scope.map(|d| unsafe { varlena::bytes(d) });
    let required = required.map(|s| std::str::from_utf8(s).unwrap_or("\u{0}"));
    verdict::judge(&state, client, required)
}

thread_local! {
    /// The blessed result row descriptor, for the function oid it was built for.
    static RESULT_DESC: Cell<Option<(pg_sys::Oid, pg_sys::TupleDesc)>> = const { Cell::new(None) };
}

unsafe fn result_desc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    unsafe {
        let fn_oid = (*(*fcinfo).flinfo).fn_oid;
        if let Some((_, desc)) = RESULT_DESC.get().filter(|(oid, _)| *oid == fn_oid) {
            return desc;
        }
        let mut desc = ptr::null_mut();
        let kind = pg_sys::get_call_result_type(fcinfo, ptr::null_mut(), &mut desc);
        if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE {
            error!("api_key_verify must be declared to return a row");
        }
        let copy = pgrx::PgMemoryContexts::TopMemoryContext
            .switch_to(|_| pg_sys::CreateTupleDescCopy(desc));
        let blessed = pg_sys::BlessTupleDesc(copy);
        RESULT_DESC.set(Some((fn_oid, blessed)));
        blessed
    }
}

/// (valid, reason, key_id, owner, key_type, environment, scopes, expires_at)
unsafe fn result_row(
    fcinfo: pg_sys::FunctionCallInfo,
    outcome: &Result<KeyRow, Reason>,
) -> pg_sys::Datum {
    unsafe {
        let mut values = [pg_sys::Datum::from(0); 8];
        let mut nulls = [true; 8];
        let reason = *outcome.as_ref().err().unwrap_or(&Reason::Ok);
        values[0] = pg_sys::Datum::from(outcome.is_ok());
        values[1] = varlena::text_datum(reason.as_str().as_bytes());
        nulls[..2].fill(false);
        // Identity columns only when valid.
        if let Ok(row) = outcome {
            let identity = [
                row.id,
                row.owner,
                row.key_type,
                row.environment,
                row.scopes_datum,
                row.expires_at.map(pg_sys::Datum::from),
            ];
            for (i, column) in identity.into_iter().enumerate() {
                if let Some(d) = column {
                    values[2 + i] = d;
                    nulls[2 + i] = false;
                }
            }
        }
        let tuple =
            pg_sys::heap_form_tuple(result_desc(fcinfo), values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
