//! One place that turns our errors into Postgres errors with SQLSTATE, message and hint.

use std::ffi::{c_char, c_int};

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise `22023 invalid_parameter_value`; the message names the parameter.
pub(crate) fn invalid_parameter(message: impl Into<String>, hint: Option<String>) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message.into(),
        hint,
    )
}

pub(crate) fn raise(code: PgSqlErrorCode, message: String, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message, "api_keys");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// `s` copied into palloc'd memory, NUL-terminated.
fn palloc_text(s: &str) -> *mut c_char {
    // SAFETY: copies `s` (pointer and length of a live str).
    unsafe { pgrx::pg_sys::pnstrdup(s.as_ptr().cast(), s.len()) }
}

/// An error with a SQLSTATE of our own (PostgREST's `PT401`, `PT403`, `PT429`), which
/// pgrx's error type cannot carry. Its texts are copied into palloc memory, which the
/// error cleanup frees, so raising it needs nothing from Rust.
#[derive(Clone, Copy)]
pub(crate) struct Refusal {
    sqlstate: c_int,
    message: *mut c_char,
    hint: *mut c_char,
    /// Null: none.
    detail: *mut c_char,
}

impl Refusal {
    /// `sqlstate`: five characters, such as `PT401`.
    pub(crate) fn new(sqlstate: &str, message: &str, hint: &str) -> Refusal {
        debug_assert_eq!(sqlstate.len(), 5, "a SQLSTATE has five characters");
        // MAKE_SQLSTATE: six bits per character, first character lowest.
        let sqlstate = sqlstate.bytes().rev().fold(0, |code, ch| {
            (code << 6) | ((ch as c_int - b'0' as c_int) & 0x3F)
        });
        Refusal {
            sqlstate,
            message: palloc_text(message),
            hint: palloc_text(hint),
            detail: std::ptr::null_mut(),
        }
    }

    pub(crate) fn with_detail(self, detail: &str) -> Refusal {
        Refusal {
            detail: palloc_text(detail),
            ..self
        }
    }

    /// Raise it (`errfinish` jumps back into Postgres).
    ///
    /// # Safety
    /// Call only from a frame that holds nothing to drop and outside pgrx's guard (the
    /// jump skips Rust frames); see `refusable_entry!`.
    pub(crate) unsafe fn raise(self) -> ! {
        unsafe extern "C-unwind" {
            fn errstart(elevel: c_int, domain: *const c_char) -> bool;
            fn errcode(sqlerrcode: c_int) -> c_int;
            fn errmsg(fmt: *const c_char, ...) -> c_int;
            fn errhint(fmt: *const c_char, ...) -> c_int;
            fn errdetail(fmt: *const c_char, ...) -> c_int;
            fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
        }
        // SAFETY: ereport(ERROR) spelled out; the texts are palloc'd, NUL-terminated and
        // passed through "%s", and errfinish jumps back into Postgres, as the caller
        // has arranged (see `raise`'s contract).
        unsafe {
            if errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null()) {
                errcode(self.sqlstate);
                errmsg(c"%s".as_ptr(), self.message);
                errhint(c"%s".as_ptr(), self.hint);
                if !self.detail.is_null() {
                    errdetail(c"%s".as_ptr(), self.detail);
                }
                errfinish(c"api_keys".as_ptr(), 0, c"api_keys".as_ptr());
            }
        }
        unreachable!("errstart(ERROR) always reports")
    }
}
