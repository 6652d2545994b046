//! The request context: which key `login` or `authenticate` accepted in this
//! transaction. It is kept in backend memory, not in a setting, so no `SET` or
//! `set_config` by any role can forge it; transaction and savepoint callbacks end it
//! with the transaction (see `txn_scoped`, `txn_callbacks`).

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;

use crate::core::scope::{Scope, MAX_SCOPE_LEN};
use crate::core::txn_scoped::{TxnEvent, TxnScoped};
use crate::postgres::datum;
use crate::postgres::key_row::KeyRow;
use crate::postgres::txn_callbacks;

pub(crate) struct Context {
    pub(crate) key_id: [u8; 16],
    pub(crate) owner: String,
    /// The key's scopes, parsed once; a stored scope that does not parse grants nothing.
    scopes: Vec<Scope>,
}

impl Context {
    pub(crate) fn of(row: &KeyRow<'_>) -> Context {
        Context {
            key_id: row.key_id(),
            owner: row
                .owner
                // SAFETY: the owner column, a text copied by key_row::fetch into the
                // call's memory, which the row (borrowed here) does not outlive.
                .map(|d| unsafe { datum::text_string(d) })
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
    /// has_scope answers for the current context, by required scope text: an RLS
    /// policy asks the same few questions once per row. Emptied whenever the context
    /// may change. Only texts that can be scopes are kept, so it holds at most
    /// MAX_ANSWERS x MAX_SCOPE_LEN bytes of text (about 1 MB) whatever a session asks.
    static ANSWERS: RefCell<HashMap<Box<[u8]>, bool>> = RefCell::new(HashMap::new());
}

/// Bounds the answers a statement with endless distinct scopes can pile up.
const MAX_ANSWERS: usize = 4096;

/// Does the current context (none: nothing) grant `required`? Bytes that are not a
/// scope (too long, not UTF-8, not the grammar) are granted by nothing.
pub(crate) fn grants(required: &[u8]) -> bool {
    if required.len() > MAX_SCOPE_LEN {
        return false;
    }
    if let Some(known) = ANSWERS.with_borrow(|a| a.get(required).copied()) {
        return known;
    }
    let scope = std::str::from_utf8(required)
        .ok()
        .and_then(|s| Scope::parse(s).ok());
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
pub(crate) fn set(context: Option<Context>) {
    txn_callbacks::register();
    // SAFETY: called inside a transaction (by login or authenticate).
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    change(|c| c.set(sub, context));
}

pub(crate) fn with<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    CONTEXT.with_borrow(|c| f(c.get()))
}

/// A transaction or savepoint ended (see `txn_callbacks`).
pub(crate) fn on_txn_event(event: TxnEvent) {
    change(|c| c.on(event));
}
