//! The role a management call acts for: `current_user` where it was called. Its
//! implementation is SECURITY DEFINER (it writes tables no caller may touch), so inside
//! it `current_user` is the extension's owner; the entry point (`sql_api::as_caller`) notes
//! the role first. Outside a management call the role is simply `current_user`, which
//! inside anyone's SECURITY DEFINER function is that function's owner, as PostgreSQL has
//! it. Kept per transaction: an error that ends a call early (and the savepoint that
//! catches it) forgets the role through the transaction callbacks.

use std::cell::RefCell;

use pgrx::pg_sys;

use crate::core::txn_scoped::{TxnEvent, TxnScoped};
use crate::postgres::txn_callbacks;

thread_local! {
    static ACTING_FOR: RefCell<TxnScoped<pg_sys::Oid>> = RefCell::new(TxnScoped::default());
}

fn subtransaction() -> u32 {
    // SAFETY: called inside a transaction (by a function call).
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// Act for `current_user` unless an outer management call already acts for someone:
/// triggers that fire inside a call keep its caller. True when this call set it.
pub(crate) fn enter() -> bool {
    if ACTING_FOR.with_borrow(|a| a.get().is_some()) {
        return false;
    }
    txn_callbacks::register();
    // SAFETY: reads the backend's current user id.
    let user = unsafe { pg_sys::GetUserId() };
    let sub = subtransaction();
    ACTING_FOR.with_borrow_mut(|a| a.set(sub, Some(user)));
    true
}

/// The call that entered has returned.
pub(crate) fn leave() {
    let sub = subtransaction();
    ACTING_FOR.with_borrow_mut(|a| a.set(sub, None));
}

/// The role the current management call acts for, else `current_user`.
pub(crate) fn current() -> pg_sys::Oid {
    ACTING_FOR
        .with_borrow(|a| a.get().copied())
        // SAFETY: reads the backend's current user id.
        .unwrap_or_else(|| unsafe { pg_sys::GetUserId() })
}

pub(crate) fn on_txn_event(event: TxnEvent) {
    ACTING_FOR.with_borrow_mut(|a| a.on(event));
}
