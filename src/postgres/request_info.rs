//! What the request being served carries besides its arguments: a setting's value (such
//! as PostgREST's `request.headers`) and the connection's peer address.

use std::ffi::CStr;
use std::net::IpAddr;

use pgrx::pg_sys;

use crate::postgres::datum::{self, TooLong};

/// A setting's current value, None when it was never set; `TooLong` over `max` bytes,
/// found out before the value is copied.
pub(crate) fn setting(name: &CStr, max: usize) -> Result<Option<String>, TooLong> {
    // SAFETY: a valid setting name; missing_ok, so NULL when it was never set. The value
    // is a palloc'd copy in the current context.
    let value = unsafe { pg_sys::GetConfigOptionByName(name.as_ptr(), std::ptr::null_mut(), true) };
    if value.is_null() {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated string from Postgres.
    let value = unsafe { CStr::from_ptr(value) };
    if value.to_bytes().len() > max {
        return Err(TooLong);
    }
    Ok(Some(value.to_string_lossy().into_owned()))
}

/// Set a setting for the rest of the transaction, as `set_config(name, value, true)`.
pub(crate) fn set_local_setting(name: &CStr, value: &str) {
    let value = std::ffi::CString::new(value).expect("no NUL in a setting");
    // SAFETY: valid NUL-terminated name and value; a placeholder is made for a name
    // with a dot that no module defines (as set_config does); errors are raised.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// `inet_client_addr()`: None over a Unix socket.
pub(crate) fn peer_address() -> Option<IpAddr> {
    // SAFETY: inet_client_addr() takes no argument and returns an inet or NULL.
    unsafe {
        let address = pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[])?;
        datum::inet_address(address)
    }
}
