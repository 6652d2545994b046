//! Hand-written fmgr entry points, for the functions `#[pg_extern]` does not fit: the
//! hot path (`api_key_verify`) and those that refuse with PostgREST's own SQLSTATEs.

/// `pg_finfo_<symbol>`: tells Postgres that `<symbol>` uses the V1 calling convention.
macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

/// The C entry point `$symbol` (V1 calling convention, info function `$finfo`) of a
/// SQL function whose `$body` may refuse with a `Refusal`. The body runs under pgrx's
/// guard like any `#[pg_extern]`; a refusal is raised after the body has returned and
/// dropped all it held.
macro_rules! refusable_entry {
    ($symbol:ident, $finfo:ident, $body:path) => {
        $crate::sql_api::fmgr::finfo_v1!($finfo);

        /// # Safety
        /// Called by the function manager with a valid `fcinfo`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C-unwind" fn $symbol(
            fcinfo: pgrx::pg_sys::FunctionCallInfo,
        ) -> pgrx::pg_sys::Datum {
            /// # Safety
            /// `fcinfo` as for the entry point; `refusal` points to a live Option.
            #[pgrx::pg_guard]
            unsafe extern "C-unwind" fn guarded(
                fcinfo: pgrx::pg_sys::FunctionCallInfo,
                refusal: *mut Option<$crate::postgres::errors::Refusal>,
            ) -> pgrx::pg_sys::Datum {
                // SAFETY: the body is written for this entry point's declaration.
                match unsafe { $body(fcinfo) } {
                    Ok(datum) => datum,
                    Err(r) => {
                        // SAFETY: the caller's local, alive until we return.
                        unsafe { *refusal = Some(r) };
                        pgrx::pg_sys::Datum::from(0)
                    }
                }
            }
            let mut refusal = None;
            // SAFETY: as this entry point's contract says.
            let datum = unsafe { guarded(fcinfo, &mut refusal) };
            if let Some(r) = refusal {
                // SAFETY: this frame holds nothing to drop and is outside pgrx's guard.
                unsafe { r.raise() }
            }
            datum
        }
    };
}
pub(crate) use {finfo_v1, refusable_entry};
