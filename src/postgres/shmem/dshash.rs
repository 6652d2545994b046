//! PostgreSQL's hash tables in dynamic shared memory (`lib/dshash.h`, over a `dsa`
//! area), which the cumulative statistics use since PostgreSQL 15. pgrx 0.18 binds dsa
//! but not dshash for PostgreSQL 15, so the few functions used here are declared by
//! hand, with `dshash_parameters` laid out as in PostgreSQL 15's `dshash.h`.
//!
//! A table holds fixed-size entries whose first `key_size` bytes are the key. An entry
//! found or inserted is returned locked (its partition's LWLock), and `Locked` releases
//! it when dropped.

use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::mem::size_of;
use std::ops::{Deref, DerefMut};

use pgrx::pg_sys;

/// `dshash_table`: opaque.
#[repr(C)]
pub(super) struct RawTable {
    _opaque: [u8; 0],
}

type Compare = unsafe extern "C" fn(*const c_void, *const c_void, usize, *mut c_void) -> c_int;
type Hash = unsafe extern "C" fn(*const c_void, usize, *mut c_void) -> u32;

/// `dshash_parameters` (PostgreSQL 15).
#[repr(C)]
struct Parameters {
    key_size: usize,
    entry_size: usize,
    compare_function: Compare,
    hash_function: Hash,
    tranche_id: c_int,
}

/// `dshash_seq_status` (PostgreSQL 15); filled in by `dshash_seq_init`.
#[repr(C)]
struct SeqStatus {
    hash_table: *mut RawTable,
    curbucket: c_int,
    nbuckets: c_int,
    curitem: *mut c_void,
    pnextitem: pg_sys::dsa_pointer,
    curpartition: c_int,
    exclusive: bool,
}

// Referenced by address only (as the table's hash and compare functions): they raise
// no error.
unsafe extern "C" {
    fn dshash_memcmp(a: *const c_void, b: *const c_void, size: usize, arg: *mut c_void) -> c_int;
    fn dshash_memhash(v: *const c_void, size: usize, arg: *mut c_void) -> u32;
}

// Each call goes through `guarded`: a Postgres error raised inside (out of memory)
// becomes a Rust panic that unwinds through our frames first.
unsafe extern "C-unwind" {
    fn dshash_create(
        area: *mut pg_sys::dsa_area,
        params: *const Parameters,
        arg: *mut c_void,
    ) -> *mut RawTable;
    fn dshash_attach(
        area: *mut pg_sys::dsa_area,
        params: *const Parameters,
        handle: pg_sys::dsa_pointer,
        arg: *mut c_void,
    ) -> *mut RawTable;
    fn dshash_detach(table: *mut RawTable);
    fn dshash_get_hash_table_handle(table: *mut RawTable) -> pg_sys::dsa_pointer;
    fn dshash_destroy(table: *mut RawTable);
    fn dshash_find(table: *mut RawTable, key: *const c_void, exclusive: bool) -> *mut c_void;
    fn dshash_find_or_insert(
        table: *mut RawTable,
        key: *const c_void,
        found: *mut bool,
    ) -> *mut c_void;
    fn dshash_release_lock(table: *mut RawTable, entry: *mut c_void);
    fn dshash_delete_entry(table: *mut RawTable, entry: *mut c_void);
    fn dshash_seq_init(status: *mut SeqStatus, table: *mut RawTable, exclusive: bool);
    fn dshash_seq_next(status: *mut SeqStatus) -> *mut c_void;
    fn dshash_seq_term(status: *mut SeqStatus);
    fn dshash_delete_current(status: *mut SeqStatus);
}

/// Call into dshash behind pgrx's error boundary.
///
/// # Safety
/// `f` only calls one dshash function, with arguments that satisfy it.
unsafe fn guarded<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: `f` holds nothing with a destructor (the caller's promise).
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}

/// An entry type: `#[repr(C)]`, plain data (all-zero is valid), its key first.
///
/// # Safety
/// `KEY_SIZE` is the size of a leading field every entry's identity is, and the type
/// is valid for any bytes a table may hold (it is only ever zeroed, then written).
pub(super) unsafe trait Entry: Copy + 'static {
    const KEY_SIZE: usize;
}

/// A hash table this backend is attached to.
pub(super) struct Table<E: Entry> {
    raw: *mut RawTable,
    _entries: PhantomData<E>,
}

fn parameters<E: Entry>(tranche_id: c_int) -> Parameters {
    Parameters {
        key_size: E::KEY_SIZE,
        entry_size: size_of::<E>(),
        compare_function: dshash_memcmp,
        hash_function: dshash_memhash,
        tranche_id,
    }
}

/// Run `f` with TopMemoryContext current: what dshash allocates for this backend lives
/// as long as its attachment, not the current transaction.
pub(super) fn in_top_memory_context<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: TopMemoryContext exists for the life of every backend; the previous
    // context is restored before returning (also when `f` unwinds: a Postgres error
    // resets the current context anyway).
    unsafe {
        let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let result = f();
        pg_sys::MemoryContextSwitchTo(previous);
        result
    }
}

impl<E: Entry> Table<E> {
    /// A new, empty table in `area`.
    ///
    /// # Safety
    /// `area` is attached in this backend; `tranche_id` is a registered LWLock tranche.
    pub(super) unsafe fn create(area: *mut pg_sys::dsa_area, tranche_id: c_int) -> Table<E> {
        let params = parameters::<E>(tranche_id);
        // SAFETY: the caller's promise; dshash copies `params`.
        let raw = in_top_memory_context(|| unsafe {
            guarded(|| dshash_create(area, &params, std::ptr::null_mut()))
        });
        Table {
            raw,
            _entries: PhantomData,
        }
    }

    /// The table `handle` names, made by `create` with the same `E`.
    ///
    /// # Safety
    /// As `create`, and `handle` is a live table of entries `E` in `area`.
    pub(super) unsafe fn attach(
        area: *mut pg_sys::dsa_area,
        tranche_id: c_int,
        handle: pg_sys::dsa_pointer,
    ) -> Table<E> {
        let params = parameters::<E>(tranche_id);
        // SAFETY: the caller's promise.
        let raw = in_top_memory_context(|| unsafe {
            guarded(|| dshash_attach(area, &params, handle, std::ptr::null_mut()))
        });
        Table {
            raw,
            _entries: PhantomData,
        }
    }

    pub(super) fn handle(&self) -> pg_sys::dsa_pointer {
        // SAFETY: `raw` is attached.
        unsafe { guarded(|| dshash_get_hash_table_handle(self.raw)) }
    }

    /// Let go of this backend's attachment (the table lives on).
    pub(super) fn detach(self) {
        // SAFETY: `raw` is attached and not used again.
        unsafe { guarded(|| dshash_detach(self.raw)) }
    }

    /// Free the table and every entry in it. No other backend may be attached.
    pub(super) fn destroy(self) {
        // SAFETY: `raw` is attached; the caller's promise covers other backends.
        unsafe { guarded(|| dshash_destroy(self.raw)) }
    }

    /// The entry of `key`, inserted all-zero (but for its key) when absent; the bool is
    /// true when it was inserted.
    pub(super) fn find_or_insert(&self, key: &[u8]) -> (Locked<'_, E>, bool) {
        assert_eq!(key.len(), E::KEY_SIZE, "a whole key");
        let mut found = false;
        // SAFETY: `raw` is attached; the key has the table's key size.
        let entry =
            unsafe { guarded(|| dshash_find_or_insert(self.raw, key.as_ptr().cast(), &mut found)) };
        if !found {
            // SAFETY: a new entry of size_of::<E>() bytes, its key already copied in;
            // zero is valid for every entry type (the `Entry` promise).
            unsafe {
                let bytes = entry.cast::<u8>();
                std::ptr::write_bytes(bytes.add(E::KEY_SIZE), 0, size_of::<E>() - E::KEY_SIZE);
            }
        }
        (
            Locked {
                table: self.raw,
                entry: entry.cast(),
                _table: PhantomData,
            },
            !found,
        )
    }

    /// The entry of `key`, locked exclusively, if present.
    pub(super) fn find(&self, key: &[u8]) -> Option<Locked<'_, E>> {
        assert_eq!(key.len(), E::KEY_SIZE, "a whole key");
        // SAFETY: `raw` is attached; the key has the table's key size.
        let entry = unsafe { guarded(|| dshash_find(self.raw, key.as_ptr().cast(), true)) };
        (!entry.is_null()).then(|| Locked {
            table: self.raw,
            entry: entry.cast(),
            _table: PhantomData,
        })
    }

    /// Visit every entry, one partition locked at a time (shared: verifications of
    /// other keys in that partition go on). `f` must not raise a Postgres error or take
    /// another lock.
    pub(super) fn for_each(&self, mut f: impl FnMut(&E)) {
        // SAFETY: `raw` is attached; every entry `dshash_seq_next` returns is locked
        // (shared) until the next call.
        unsafe {
            let mut status = std::mem::MaybeUninit::<SeqStatus>::uninit();
            guarded(|| dshash_seq_init(status.as_mut_ptr(), self.raw, false));
            loop {
                let entry = guarded(|| dshash_seq_next(status.as_mut_ptr()));
                if entry.is_null() {
                    break;
                }
                f(&*entry.cast::<E>());
            }
            guarded(|| dshash_seq_term(status.as_mut_ptr()));
        }
    }

    /// Visit every entry, one partition locked at a time (exclusively): `f` answers
    /// whether to keep it. `f` must not raise a Postgres error or take another lock.
    pub(super) fn retain(&self, mut f: impl FnMut(&mut E) -> bool) {
        // SAFETY: `raw` is attached; every entry `dshash_seq_next` returns is locked
        // until the next call, and `dshash_delete_current` deletes only that one.
        unsafe {
            let mut status = std::mem::MaybeUninit::<SeqStatus>::uninit();
            guarded(|| dshash_seq_init(status.as_mut_ptr(), self.raw, true));
            loop {
                let entry = guarded(|| dshash_seq_next(status.as_mut_ptr()));
                if entry.is_null() {
                    break;
                }
                if !f(&mut *entry.cast::<E>()) {
                    guarded(|| dshash_delete_current(status.as_mut_ptr()));
                }
            }
            guarded(|| dshash_seq_term(status.as_mut_ptr()));
        }
    }
}

/// An entry with its partition lock held; released on drop.
pub(super) struct Locked<'t, E: Entry> {
    table: *mut RawTable,
    entry: *mut E,
    _table: PhantomData<&'t Table<E>>,
}

impl<E: Entry> Locked<'_, E> {
    /// Delete the entry (which also lets go of its lock).
    pub(super) fn delete(self) {
        let (table, entry) = (self.table, self.entry);
        std::mem::forget(self);
        // SAFETY: this backend holds the entry's lock, which deleting releases.
        unsafe { guarded(|| dshash_delete_entry(table, entry.cast())) }
    }
}

impl<E: Entry> Deref for Locked<'_, E> {
    type Target = E;
    fn deref(&self) -> &E {
        // SAFETY: the entry exists and is locked by this backend while `self` lives.
        unsafe { &*self.entry }
    }
}

impl<E: Entry> DerefMut for Locked<'_, E> {
    fn deref_mut(&mut self) -> &mut E {
        // SAFETY: as in `deref`; the lock is exclusive.
        unsafe { &mut *self.entry }
    }
}

impl<E: Entry> Drop for Locked<'_, E> {
    fn drop(&mut self) {
        // SAFETY: this backend holds the entry's lock.
        unsafe { guarded(|| dshash_release_lock(self.table, self.entry.cast())) }
    }
}
