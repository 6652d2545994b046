//! Reading the arguments of the functions whose fmgr glue is written by hand
//! (`api_key_verify`, `login`, `require_scope`): raw datums, no conversions that could
//! raise on hostile input.

use std::net::IpAddr;

use pgrx::pg_sys;

use crate::postgres::datum::{self, CallMemory, TooLong};

/// Longer than any key this extension issues, by a wide margin; larger input is
/// `malformed` without being detoasted.
const MAX_KEY_BYTES: usize = 1024;

/// Argument `i`, None when SQL NULL (or absent).
///
/// # Safety
/// `fcinfo` is a live call info.
pub(crate) unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> Option<pg_sys::Datum> {
    // SAFETY: a call info holds `nargs` arguments.
    unsafe {
        let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
        args.get(i).filter(|a| !a.isnull).map(|a| a.value)
    }
}

/// A presented key's bytes, borrowed from the call's memory; NULL and oversized input
/// read as empty (malformed).
///
/// # Safety
/// `fcinfo` is the live call info of the call `memory` stands for; its argument `i` (if
/// any) is a text.
pub(crate) unsafe fn key(
    _memory: &CallMemory,
    fcinfo: pg_sys::FunctionCallInfo,
    i: usize,
) -> &[u8] {
    // SAFETY: as the function's contract says; the size is read before detoasting, and
    // the bytes (the datum or its detoasted copy) live in the call's memory.
    unsafe {
        arg(fcinfo, i).map_or(&[][..], |d| {
            if datum::raw_size(d) > MAX_KEY_BYTES {
                &[]
            } else {
                datum::bytes(d)
            }
        })
    }
}

/// A text argument's bytes, borrowed from the call's memory, None when NULL; `TooLong`
/// when over `max` bytes, found out without detoasting it.
///
/// # Safety
/// `fcinfo` is the live call info of the call `memory` stands for; its argument `i` (if
/// any) is a text.
pub(crate) unsafe fn short_text(
    _memory: &CallMemory,
    fcinfo: pg_sys::FunctionCallInfo,
    i: usize,
    max: usize,
) -> Result<Option<&[u8]>, TooLong> {
    // SAFETY: as the function's contract says; the size is read from the varlena header
    // (or the toast pointer) before anything is detoasted.
    unsafe {
        match arg(fcinfo, i) {
            None => Ok(None),
            Some(d) if datum::raw_size(d) > max + pg_sys::VARHDRSZ => Err(TooLong),
            Some(d) => Ok(Some(datum::bytes(d))),
        }
    }
}

/// An `inet` argument's address (the mask is ignored).
///
/// # Safety
/// `fcinfo` is a live call info whose argument `i` (if any) is an inet.
pub(crate) unsafe fn client_ip(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> Option<IpAddr> {
    // SAFETY: as the function's contract says.
    unsafe { arg(fcinfo, i).and_then(|d| datum::inet_address(d)) }
}
