//! A value that lives for one transaction and follows its savepoints: set inside a
//! subtransaction that rolls back, it reverts to what it was before; set inside one that
//! commits, it belongs to the parent. Pure bookkeeping; `postgres::txn_callbacks` feeds it
//! the events.

/// Postgres numbers subtransactions from 1, the top level.
pub(crate) type SubId = u32;
pub(crate) const TOP_LEVEL: SubId = 1;

pub(crate) struct TxnScoped<T> {
    current: Option<T>,
    /// (subtransaction, value before it first set one), innermost last.
    saved: Vec<(SubId, Option<T>)>,
}

impl<T> Default for TxnScoped<T> {
    fn default() -> Self {
        Self {
            current: None,
            saved: Vec::new(),
        }
    }
}

impl<T> TxnScoped<T> {
    pub(crate) fn get(&self) -> Option<&T> {
        self.current.as_ref()
    }

    /// Did subtransaction `sub` (the innermost that changed the value) save one?
    fn saved_by(&self, sub: SubId) -> bool {
        self.saved.last().is_some_and(|(s, _)| *s == sub)
    }

    /// Replace the value from inside subtransaction `sub`.
    pub(crate) fn set(&mut self, sub: SubId, value: Option<T>) {
        let already_saved = self.saved_by(sub);
        let old = std::mem::replace(&mut self.current, value);
        if sub != TOP_LEVEL && !already_saved {
            self.saved.push((sub, old));
        }
    }

    pub(crate) fn subtransaction_aborted(&mut self, sub: SubId) {
        if self.saved_by(sub) {
            self.current = self.saved.pop().and_then(|(_, old)| old);
        }
    }

    pub(crate) fn subtransaction_committed(&mut self, sub: SubId, parent: SubId) {
        if !self.saved_by(sub) {
            return;
        }
        // The parent keeps the oldest value it must restore; the child's is obsolete.
        let parent_saved = parent == TOP_LEVEL
            || self.saved.len() >= 2 && self.saved[self.saved.len() - 2].0 == parent;
        if parent_saved {
            self.saved.pop();
        } else if let Some(last) = self.saved.last_mut() {
            last.0 = parent;
        }
    }

    pub(crate) fn transaction_ended(&mut self) {
        self.current = None;
        self.saved.clear();
    }

    pub(crate) fn on(&mut self, event: TxnEvent) {
        match event {
            TxnEvent::Ended => self.transaction_ended(),
            TxnEvent::SubAborted(sub) => self.subtransaction_aborted(sub),
            TxnEvent::SubCommitted { sub, parent } => self.subtransaction_committed(sub, parent),
        }
    }
}

/// What the transaction callbacks report to every `TxnScoped` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxnEvent {
    /// Committed, aborted or prepared.
    Ended,
    SubAborted(SubId),
    SubCommitted {
        sub: SubId,
        parent: SubId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_set_lasts_until_the_end() {
        let mut t = TxnScoped::default();
        t.set(TOP_LEVEL, Some(1));
        assert_eq!(t.get(), Some(&1));
        t.transaction_ended();
        assert_eq!(t.get(), None);
    }

    #[test]
    fn rolled_back_savepoint_restores() {
        let mut t = TxnScoped::default();
        t.set(TOP_LEVEL, Some(1));
        t.set(2, Some(2));
        t.set(2, Some(3));
        assert_eq!(t.get(), Some(&3));
        t.subtransaction_aborted(2);
        assert_eq!(t.get(), Some(&1));
    }

    #[test]
    fn released_savepoint_hands_value_to_parent() {
        let mut t = TxnScoped::default();
        // SAVEPOINT a (2); SAVEPOINT b (3); set; RELEASE b; ROLLBACK TO a
        t.set(3, Some(7));
        t.subtransaction_committed(3, 2);
        assert_eq!(t.get(), Some(&7));
        t.subtransaction_aborted(2);
        assert_eq!(t.get(), None);
    }

    #[test]
    fn parent_keeps_its_own_older_value() {
        let mut t = TxnScoped::default();
        t.set(TOP_LEVEL, Some(1));
        t.set(2, Some(2));
        t.set(3, Some(3));
        t.subtransaction_committed(3, 2);
        assert_eq!(t.get(), Some(&3));
        t.subtransaction_aborted(2);
        assert_eq!(t.get(), Some(&1));
    }

    #[test]
    fn untouched_subtransactions_change_nothing() {
        let mut t = TxnScoped::default();
        t.set(TOP_LEVEL, Some(1));
        t.subtransaction_aborted(4);
        t.subtransaction_committed(5, 1);
        assert_eq!(t.get(), Some(&1));
    }
}
