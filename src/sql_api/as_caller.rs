//! Management functions act for the role that calls them (see `caller`). Each public
//! one (`api_key_revoke`, …, and the audit trigger function) is declared with this
//! SECURITY INVOKER entry point, which notes `current_user` at the call site and then
//! calls its implementation `api_keys._impl_<name>` (SECURITY DEFINER, same arguments,
//! granted to nobody) with the same arguments, set-returning and trigger calls included.
//! `api_keys._caller()` answers the role acted for.

use std::ffi::{CStr, CString};
use std::mem::{offset_of, size_of};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::fmgr;
use crate::postgres::caller;
use crate::postgres::errors;

fmgr::finfo_v1!(pg_finfo_api_keys_as_caller);

/// The entry point of every management function.
///
/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn api_keys_as_caller(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mut entered = false;
    // SAFETY: fcinfo comes from the function manager.
    let inner = unsafe { prepare(fcinfo, &mut entered) };
    // Not under pgrx's guard: an error in the implementation jumps back into Postgres
    // through this frame, which holds nothing to drop; the transaction callbacks then
    // forget the caller (see `caller`).
    // SAFETY: `prepare` resolved the implementation into the copy's flinfo and checked
    // that it has an address (nothing here may panic: no guard would catch it).
    let datum = unsafe {
        let call = (*(*inner).flinfo).fn_addr.unwrap_unchecked();
        call(inner)
    };
    // SAFETY: both are the live call infos of this call.
    unsafe { finish(fcinfo, inner, entered) };
    datum
}

/// A copy of `fcinfo` aimed at the implementation (resolved once per call site and
/// kept in `fn_extra`), with the caller noted.
///
/// # Safety
/// `fcinfo` is the live call info of one of this extension's entry points.
#[pg_guard]
unsafe extern "C-unwind" fn prepare(
    fcinfo: pg_sys::FunctionCallInfo,
    entered: *mut bool,
) -> pg_sys::FunctionCallInfo {
    // SAFETY: fcinfo and its flinfo are valid for this call; fn_extra is ours.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if (*flinfo).fn_extra.is_null() {
            (*flinfo).fn_extra = implementation(flinfo).cast();
        }
        let size = offset_of!(pg_sys::FunctionCallInfoBaseData, args)
            + (*fcinfo).nargs as usize * size_of::<pg_sys::NullableDatum>();
        let inner = pg_sys::palloc(size).cast::<pg_sys::FunctionCallInfoBaseData>();
        std::ptr::copy_nonoverlapping(fcinfo.cast::<u8>(), inner.cast::<u8>(), size);
        (*inner).flinfo = (*flinfo).fn_extra.cast();
        if (*(*inner).flinfo).fn_addr.is_none() {
            errors::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                "an api_keys implementation function has no address".into(),
                Some("ALTER EXTENSION api_keys UPDATE".into()),
            );
        }
        *entered = caller::enter();
        inner
    }
}

/// # Safety
/// `fcinfo` is the live call info `inner` was copied from by `prepare`.
#[pg_guard]
unsafe extern "C-unwind" fn finish(
    fcinfo: pg_sys::FunctionCallInfo,
    inner: pg_sys::FunctionCallInfo,
    entered: bool,
) {
    // SAFETY: both point to live call infos; `inner` was palloc'd by `prepare`.
    unsafe {
        (*fcinfo).isnull = (*inner).isnull;
        pg_sys::pfree(inner.cast());
    }
    if entered {
        caller::leave();
    }
}

/// `api_keys._impl_<name>` with the argument types of the function `flinfo` calls,
/// looked up and prepared for calls in `flinfo`'s memory context.
///
/// # Safety
/// `flinfo` is a valid FmgrInfo of one of this extension's functions.
unsafe fn implementation(flinfo: *mut pg_sys::FmgrInfo) -> *mut pg_sys::FmgrInfo {
    // SAFETY: catalog lookups of a function that exists (it is being called); the
    // FmgrInfo is allocated in, and lives as long as, the caller's flinfo context.
    unsafe {
        let public = (*flinfo).fn_oid;
        let name = CStr::from_ptr(pg_sys::get_func_name(public)).to_string_lossy();
        let qualified = format!("api_keys._impl_{}", name.trim_start_matches('_'));
        let mut argtypes = std::ptr::null_mut();
        let mut nargs = 0;
        pg_sys::get_func_signature(public, &mut argtypes, &mut nargs);
        let c_name = CString::new(qualified.as_str()).expect("no NUL in a function name");
        let names = pg_sys::stringToQualifiedNameList(c_name.as_ptr());
        let oid = pg_sys::LookupFuncName(names, nargs, argtypes, true);
        if oid == pg_sys::InvalidOid {
            errors::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                format!("{qualified} is missing: the api_keys library and its SQL objects are of different versions"),
                Some("ALTER EXTENSION api_keys UPDATE".into()),
            );
        }
        let target =
            pg_sys::MemoryContextAllocZero((*flinfo).fn_mcxt, size_of::<pg_sys::FmgrInfo>())
                .cast::<pg_sys::FmgrInfo>();
        pg_sys::fmgr_info_cxt(oid, target, (*flinfo).fn_mcxt);
        (*target).fn_expr = (*flinfo).fn_expr;
        target
    }
}

fmgr::finfo_v1!(pg_finfo_api_keys_caller);

/// `api_keys._caller()`: the role the current management call acts for, else
/// `current_user`.
///
/// # Safety
/// Called by the function manager.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn api_keys_caller(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the role exists (it is acting now); the name is copied into a text.
    unsafe {
        let name = pg_sys::GetUserNameFromId(caller::current(), false);
        pg_sys::Datum::from(pg_sys::cstring_to_text(name))
    }
}
