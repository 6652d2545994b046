//! The request context on the SQL surface: `authenticate()` for PostgREST's
//! `db-pre-request`, `login()` for other apps, and the helpers RLS policies call.
//! Refusals carry SQLSTATE `PT401`/`PT403`/`PT429`, which PostgREST answers with that
//! HTTP status; the message names the reason and never the key.

use std::net::IpAddr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::pattern::configured_brand;
use super::{args, fmgr};
use crate::core::forwarded_for;
use crate::core::limit_headers;
use crate::core::request_headers::{Credential, Headers};
use crate::core::scope::{Scope, MAX_SCOPE_LEN};
use crate::core::verdict::Reason;
use crate::postgres::datum::{CallMemory, TooLong};
use crate::postgres::errors::{self, Refusal};
use crate::postgres::gucs;
use crate::postgres::key_row::KeyRow;
use crate::postgres::request_context::{self, Context};
use crate::postgres::request_info::{peer_address, set_local_setting, setting};
use crate::postgres::verification::{self, Verdict};

extension_sql!(
    r#"
CREATE FUNCTION api_keys.authenticate() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_keys_authenticate';
COMMENT ON FUNCTION api_keys.authenticate() IS
    'PostgREST db-pre-request: verifies the x-api-key (or Bearer) key of request.headers and sets this transaction''s context; no key = anonymous.';

CREATE FUNCTION api_keys.login(key text, client_ip inet DEFAULT NULL) RETURNS uuid
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'api_keys_login';
COMMENT ON FUNCTION api_keys.login(text, inet) IS
    'Verifies a key and makes it this transaction''s context; returns its id, or raises PT401/PT403/PT429.';

CREATE FUNCTION api_keys.has_scope(required text) RETURNS boolean
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_has_scope';
COMMENT ON FUNCTION api_keys.has_scope(text) IS
    'For RLS policies: does the key authenticated in this transaction grant the scope? False when none, for NULL and for any text that is not a scope.';

CREATE FUNCTION api_keys.require_scope(required text) RETURNS void
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'api_keys_require_scope';
COMMENT ON FUNCTION api_keys.require_scope(text) IS
    'Raises PT401 when no key is authenticated in this transaction, PT403 when it lacks the scope.';
"#,
    name = "request_context",
    requires = ["tables"]
);

fmgr::refusable_entry!(
    api_keys_authenticate,
    pg_finfo_api_keys_authenticate,
    authenticate
);
fmgr::refusable_entry!(api_keys_login, pg_finfo_api_keys_login, login);
fmgr::refusable_entry!(
    api_keys_require_scope,
    pg_finfo_api_keys_require_scope,
    require_scope
);

const VOID: pg_sys::Datum = pg_sys::Datum::null();

/// The most of `request.headers` authenticate() parses.
const MAX_HEADERS_BYTES: usize = 1024 * 1024;

/// # Safety
/// The body of `api_keys_authenticate` (`refusable_entry!`).
unsafe fn authenticate(_fcinfo: pg_sys::FunctionCallInfo) -> Result<pg_sys::Datum, Refusal> {
    let text = setting(c"request.headers", MAX_HEADERS_BYTES).unwrap_or_else(|_| {
        errors::invalid_parameter(
            format!("request.headers is larger than {MAX_HEADERS_BYTES} bytes"),
            Some(
                "HTTP servers refuse headers far smaller; api_keys reads at most 1 MiB of them."
                    .into(),
            ),
        )
    });
    let headers = Headers::parse(text.as_deref()).unwrap_or_else(|_| {
        errors::invalid_parameter(
            "request.headers is not a JSON object",
            Some(r#"PostgREST sets it per request; elsewhere: SELECT set_config('request.headers', '{"x-api-key": "..."}', true)"#.into()),
        )
    });
    let Credential::Key(key) = headers.credential(&configured_brand()) else {
        request_context::set(None);
        return Ok(VOID);
    };
    let client = forwarded_for::client_address(
        peer_address(),
        headers.get("x-forwarded-for"),
        &gucs::trusted_proxies(),
    );
    accept(key.as_bytes(), client, Caller::Http).map(|_| VOID)
}

/// # Safety
/// The body of `api_keys_login`: `fcinfo` of login(key text, client_ip inet).
unsafe fn login(fcinfo: pg_sys::FunctionCallInfo) -> Result<pg_sys::Datum, Refusal> {
    // SAFETY: at the start of the call, kept on its stack.
    let memory = unsafe { CallMemory::of_this_call() };
    // SAFETY: login(key text, client_ip inet).
    let (key, client) = unsafe { (args::key(&memory, fcinfo, 0), args::client_ip(fcinfo, 1)) };
    let row = accept(key, client, Caller::App)?;
    Ok(pgrx::Uuid::from_bytes(row.key_id())
        .into_datum()
        .unwrap_or(VOID))
}

/// # Safety
/// The body of `api_keys_require_scope`: `fcinfo` of require_scope(required text).
unsafe fn require_scope(fcinfo: pg_sys::FunctionCallInfo) -> Result<pg_sys::Datum, Refusal> {
    // SAFETY: at the start of the call, kept on its stack.
    let memory = unsafe { CallMemory::of_this_call() };
    // SAFETY: require_scope(required text).
    let required = match unsafe { args::short_text(&memory, fcinfo, 0, MAX_SCOPE_LEN) } {
        Ok(Some(bytes)) => bytes,
        Ok(None) => errors::invalid_parameter("required scope must not be NULL", None),
        Err(TooLong) => errors::invalid_parameter(
            format!("required scope is not valid: a scope is at most {MAX_SCOPE_LEN} bytes"),
            Some(format!("A scope is at most {MAX_SCOPE_LEN} bytes.")),
        ),
    };
    let text = String::from_utf8_lossy(required);
    check_required_scope(&text);
    let granted = request_context::grants(required);
    request_context::with(|context| match context {
        None => Err(Refusal::new(
            "PT401",
            "no API key is authenticated in this transaction",
            "Call api_keys.authenticate() or api_keys.login() first, in the same transaction.",
        )),
        Some(_) if granted => Ok(VOID),
        Some(_) => Err(Refusal::new(
            "PT403",
            &format!("API key lacks scope \"{text}\""),
            "Issue or update the key with a scope that grants it.",
        )),
    })
}

fmgr::finfo_v1!(pg_finfo_api_keys_has_scope);

/// `has_scope(required)`: does the key authenticated in this transaction grant
/// `required`? False when none, for NULL, and for any text that is not a scope (in any
/// server encoding): a policy that builds the scope from row data
/// (`format('projects/%s/runs:read', project_id)`) denies an odd row instead of failing
/// the whole query. Wrap a check that does not depend on the row as
/// `(SELECT api_keys.has_scope('…'))` to have it evaluated once per statement.
///
/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn api_keys_has_scope(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: at the start of the call, kept on its stack.
    let memory = unsafe { CallMemory::of_this_call() };
    // Over MAX_SCOPE_LEN: not a scope, and never detoasted.
    // SAFETY: has_scope(required text).
    let required = unsafe { args::short_text(&memory, fcinfo, 0, MAX_SCOPE_LEN) };
    pg_sys::Datum::from(matches!(required, Ok(Some(r)) if request_context::grants(r)))
}

// The entry point 0.3.1's catalog names (STRICT there). A database still at 0.3.1
// keeps its policies working with this library until ALTER EXTENSION api_keys UPDATE.
fmgr::finfo_v1!(pg_finfo_has_scope_wrapper);

/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn has_scope_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the same declaration but for STRICT.
    unsafe { api_keys_has_scope(fcinfo) }
}

/// The id of the key authenticated in this transaction, or NULL.
#[pg_extern(stable, parallel_restricted, requires = ["tables"])]
fn current_key_id() -> Option<pgrx::Uuid> {
    request_context::with(|c| c.map(|c| pgrx::Uuid::from_bytes(c.key_id)))
}

/// The owner of the key authenticated in this transaction, or NULL.
#[pg_extern(stable, parallel_restricted, requires = ["tables"])]
fn current_owner() -> Option<String> {
    request_context::with(|c| c.map(|c| c.owner.clone()))
}

/// Who asks: PostgREST's pre-request (limits go out as HTTP headers) or an app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    Http,
    App,
}

/// Verify (one use) and, when valid, make the key this transaction's context. For
/// HTTP, the key's limits go into `response.headers`, and a 429 is raised the way
/// PostgREST answers with headers (`Retry-After`).
fn accept(key: &[u8], client: Option<IpAddr>, caller: Caller) -> Result<KeyRow<'_>, Refusal> {
    let Verdict { outcome, limits } = verification::verify(key, client, None, 1);
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let http_limits = limits.filter(|_| caller == Caller::Http);
    match outcome {
        Ok(row) => {
            if let Some(limits) = http_limits {
                let headers = limit_headers::rate_limit_headers(&limits, now);
                if !headers.is_empty() {
                    set_local_setting(
                        c"response.headers",
                        &limit_headers::response_headers(&headers),
                    );
                }
            }
            request_context::set(Some(Context::of(&row)));
            Ok(row)
        }
        Err(reason) => Err(match http_limits {
            Some(limits) if reason.refusal_status() == Some(429) => {
                let (body, detail) = limit_headers::too_many_requests(reason, &limits, now);
                Refusal::new("PGRST", &body, reason.hint()).with_detail(&detail)
            }
            _ => refusal(reason),
        }),
    }
}

fn refusal(reason: Reason) -> Refusal {
    let status = reason.refusal_status().unwrap_or(401);
    Refusal::new(
        &format!("PT{status}"),
        &reason.refusal_message(),
        reason.hint(),
    )
}

const SCOPE_HINT: &str = "A scope is \"*\" or \"<resource>:<action>\", e.g. projects/42/runs:read.";

/// `require_scope` is an explicit check in code: a mistake in its scope raises 22023
/// rather than answering PT403.
fn check_required_scope(text: &str) {
    Scope::parse(text).unwrap_or_else(|e| {
        errors::invalid_parameter(
            format!("required scope \"{text}\" is not valid: {e}"),
            Some(SCOPE_HINT.into()),
        )
    });
}
