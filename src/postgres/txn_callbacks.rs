//! One pair of transaction and savepoint callbacks per backend for every value that
//! lives for one transaction (`TxnScoped`): the request context and the acting caller.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::core::txn_scoped::TxnEvent;
use crate::{postgres::caller, postgres::request_context};

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Register the callbacks, once per backend, before the first value is set.
pub(crate) fn register() {
    if !REGISTERED.replace(true) {
        // SAFETY: plain registrations; the callbacks live as long as the library.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
}

fn dispatch(event: TxnEvent) {
    request_context::on_txn_event(event);
    caller::on_txn_event(event);
}

/// # Safety
/// Called by Postgres at the end of a transaction.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        dispatch(TxnEvent::Ended);
    }
}

/// # Safety
/// Called by Postgres at the end of a subtransaction.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => dispatch(TxnEvent::SubAborted(sub)),
        SUBXACT_EVENT_COMMIT_SUB => dispatch(TxnEvent::SubCommitted { sub, parent }),
        _ => {}
    }
}
