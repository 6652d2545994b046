//! The request context: which key `login` or `authenticate` accepted in this
//! transaction. It is kept in backend memory, not in a setting, so no `SET` or
//! `set_config` by any role can forge it; transaction and savepoint callbacks end it
//! with the transaction (see `txn_scoped`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::key_row::KeyRow;
use crate::scope::Scope;
use crate::txn_scoped::TxnScoped;
use crate::varlena;

pub struct Context {
    pub key_id: [u8; 16],
    pub owner: String,
    /// The key's scopes, parsed once; a stored scope that does not parse grants nothing.
    scopes: Vec<Scope>,
}

impl Context {
    pub fn of(row: &KeyRow) -> Context {
        Context {
            key_id: row.key_id(),
            owner: row
                .owner
                .map(|d| unsafe { varlena::text_string(d) })
                .unwrap_or_default(),
            scopes: row
                .scopes()
                .iter()
                .filter_map(|s| Scope::parse(s).ok())
                .collect(),
        }
    }

    fn grants(&self, required: &Scope) -> bool {
        self.scopes.iter().any(|s| s.grants(required))
    }
}

thread_local! {
    static CONTEXT: RefCell<TxnScoped<Context>> = RefCell::new(TxnScoped::default());
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
    /// has_scope answers for the current context, by required scope text: an RLS
    /// policy asks the same few questions once per row. Emptied whenever the context
    /// may change.
    static ANSWERS: RefCell<HashMap<Box<str>, bool>> = RefCell::new(HashMap::new());
}

/// Bounds the answers a statement with endless distinct scopes can pile up.
const MAX_ANSWERS: usize = 4096;

/// Does the current context (none: nothing) grant `required`? A text that is not a
/// scope is granted by nothing.
pub fn grants(required: &str) -> bool {
    if let Some(known) = ANSWERS.with_borrow(|a| a.get(required).copied()) {
        return known;
    }
    let scope = Scope::parse(required).ok();
    let answer = with(|c| c.zip(scope.as_ref()).is_some_and(|(c, s)| c.grants(s)));
    ANSWERS.with_borrow_mut(|a| {
        if a.len() >= MAX_ANSWERS {
            a.clear();
        }
        a.insert(required.into(), answer);
    });
    answer
}

fn change(f: impl FnOnce(&mut TxnScoped<Context>)) {
    ANSWERS.with_borrow_mut(HashMap::clear);
    CONTEXT.with_borrow_mut(f);
}

/// Set (or, with None, clear) the context for the rest of this transaction.
pub fn set(context: Option<Context>) {
    if !CALLBACKS.replace(true) {
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    change(|c| c.set(sub, context));
}

pub fn with<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    CONTEXT.with_borrow(|c| f(c.get()))
}

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
        change(TxnScoped::transaction_ended);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => change(|c| c.subtransaction_aborted(sub)),
        SUBXACT_EVENT_COMMIT_SUB => change(|c| c.subtransaction_committed(sub, parent)),
        _ => {}
    }
}
