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

use super::{args, fmgr};
use crate::core::scope::MAX_SCOPE_LEN;
use crate::postgres::datum;
use crate::postgres::datum::CallMemory;
use crate::postgres::errors;
use crate::postgres::verification::{self, Verdict};

/// The most uses one call may spend (`cost`); outside 0 to this, the call is malformed.
pub(crate) const MAX_COST: i32 = 1_000_000;

extension_sql!(
    r#"
CREATE FUNCTION api_keys.api_key_verify(
    key text,
    client_ip inet DEFAULT NULL,
    required_scope text DEFAULT NULL,
    cost integer DEFAULT 1
) RETURNS TABLE (
    valid boolean, reason text, key_id uuid, owner text,
    key_type api_keys.key_type, environment api_keys.environment,
    scopes text[], expires_at timestamptz,
    rate_limit integer, rate_remaining integer, rate_reset timestamptz,
    remaining_uses bigint
)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_key_verify';
COMMENT ON FUNCTION api_keys.api_key_verify(text, inet, text, integer) IS
    'One row for any input: valid, reason and, when valid, the key''s identity; once the secret matched, its limits (the window that runs out first, uses left).';
"#,
    name = "api_key_verify",
    requires = ["tables"]
);

fmgr::finfo_v1!(pg_finfo_api_key_verify);

/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn api_key_verify(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: at the start of the call, kept on its stack.
    let memory = unsafe { CallMemory::of_this_call() };
    // SAFETY: the function manager's call info for api_key_verify(text, inet, text, integer)
    // (or 0.4.0's, without the cost: `args::arg` reads only the arguments there are).
    let (key, client, required_scope, cost) = unsafe {
        (
            args::key(&memory, fcinfo, 0),
            args::client_ip(fcinfo, 1),
            // Longer than any scope: one nobody holds, found out without reading it.
            args::short_text(&memory, fcinfo, 2, MAX_SCOPE_LEN).unwrap_or(Some(b"\0")),
            // NULL (and 0.4.0's declaration, which has no cost): one use.
            args::arg(fcinfo, 3).map_or(1, |d| d.value() as i32),
        )
    };
    // The row's shape first, while the function's catalog entry is certainly there:
    // verification may wait for a lock held by a DROP EXTENSION that then commits.
    // SAFETY: this call's info.
    let desc = unsafe { result_desc(fcinfo) };
    let verdict = match u32::try_from(cost) {
        Ok(cost) if cost <= MAX_COST as u32 => {
            verification::verify(key, client, required_scope, cost)
        }
        _ => verification::malformed_call(),
    };
    // SAFETY: the row's datums live in this call's memory; `desc` is its descriptor.
    unsafe { result_row(desc, &verdict) }
}

// The entry point 0.1.0's catalog names. A database still at 0.1.0 keeps verifying
// with this library until `ALTER EXTENSION api_keys UPDATE` (and can be created at
// 0.1.0, which the upgrade test does); the declaration is the same.
fmgr::finfo_v1!(pg_finfo_api_key_verify_wrapper);

/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn api_key_verify_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: 0.1.0 declares the same arguments.
    unsafe { api_key_verify(fcinfo) }
}

thread_local! {
    /// The blessed result row descriptor, for the function oid it was built for.
    static RESULT_DESC: Cell<Option<(pg_sys::Oid, pg_sys::TupleDesc)>> = const { Cell::new(None) };
}

/// # Safety
/// `fcinfo` is api_key_verify's live call info.
unsafe fn result_desc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    // SAFETY: the declared result type, copied into TopMemoryContext and blessed once per
    // backend (per function oid), so the cached descriptor outlives every call.
    unsafe {
        let fn_oid = (*(*fcinfo).flinfo).fn_oid;
        if let Some((_, desc)) = RESULT_DESC.get().filter(|(oid, _)| *oid == fn_oid) {
            return desc;
        }
        let mut desc = ptr::null_mut();
        let kind = pg_sys::get_call_result_type(fcinfo, ptr::null_mut(), &mut desc);
        if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE {
            errors::raise(
                PgSqlErrorCode::ERRCODE_INVALID_FUNCTION_DEFINITION,
                "api_key_verify must be declared to return a row".into(),
                Some("ALTER EXTENSION api_keys UPDATE restores its declaration.".into()),
            );
        }
        let copy = pgrx::PgMemoryContexts::TopMemoryContext
            .switch_to(|_| pg_sys::CreateTupleDescCopy(desc));
        let blessed = pg_sys::BlessTupleDesc(copy);
        RESULT_DESC.set(Some((fn_oid, blessed)));
        blessed
    }
}

/// (valid, reason, key_id, owner, key_type, environment, scopes, expires_at,
/// rate_limit, rate_remaining, rate_reset, remaining_uses); a database still at 0.4.0's
/// declaration takes the first eight.
///
/// # Safety
/// `desc` is api_key_verify's blessed result descriptor (`result_desc`); the row's
/// datums live in this call's memory.
unsafe fn result_row(desc: pg_sys::TupleDesc, verdict: &Verdict<'_>) -> pg_sys::Datum {
    // SAFETY: twelve values and nulls, at least the blessed descriptor's columns, each
    // of its column's type.
    unsafe {
        let mut values = [pg_sys::Datum::from(0); 12];
        let mut nulls = [true; 12];
        let outcome = &verdict.outcome;
        let reason = verdict.reason();
        values[0] = pg_sys::Datum::from(outcome.is_ok());
        values[1] = datum::text_datum(reason.as_str().as_bytes());
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
        // The limits, once the secret has matched.
        if let Some(limits) = &verdict.limits {
            let window = limits.window;
            let state = [
                window.map(|w| pg_sys::Datum::from(w.limit as i32)),
                window.map(|w| pg_sys::Datum::from(w.remaining as i32)),
                window.map(|w| pg_sys::Datum::from(w.reset)),
                limits
                    .remaining_uses
                    .map(|n| pg_sys::Datum::from(n.min(i64::MAX as u64) as i64)),
            ];
            for (i, column) in state.into_iter().enumerate() {
                if let Some(d) = column {
                    values[8 + i] = d;
                    nulls[8 + i] = false;
                }
            }
        }
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
