//! The server signing keys (`api_keys.signing_keys`), as this backend last read them.
//!
//! Read straight from the table (no SQL, no privilege check: the table is readable by
//! superusers only, and verifiers must not be able to read it), once, then kept until
//! a relation cache invalidation names the table. The table's statement trigger sends
//! one at commit for every change (`_signing_keys_changed`), which other backends and
//! hot standbys (through the commit record) take in at their next transaction; it fires
//! also under the replica role. A key naming a signing key this backend does not know
//! makes it read the table again, at most once a second, so a signing key added while
//! the trigger was disabled is found too (one deleted so is forgotten only at the next
//! change, or in new sessions).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pgrx::{pg_guard, pg_sys, PgSqlErrorCode};

use crate::core::key::format::Signature;
use crate::core::key::signature::{self, SigningKey, SIGNING_SECRET_LEN};
use crate::postgres::{datum, errors};

/// Every signing key this database has, by public id (ids are unique within a
/// database, but a restore merges the dumped keys with the one CREATE EXTENSION made,
/// so two may share an id), and the one that signs new keys.
struct SigningKeys {
    table: pg_sys::Oid,
    by_id: HashMap<String, Vec<SigningKey>>,
    /// The newest (latest created_at, then greatest id).
    current: Option<SigningKey>,
    read_at: Instant,
}

thread_local! {
    static KNOWN: RefCell<Option<Rc<SigningKeys>>> = const { RefCell::new(None) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// How often an unknown signing key id may make this backend read the table again.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// # Safety
/// Called by Postgres on a relation cache invalidation.
#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    KNOWN.with_borrow_mut(|known| {
        // A catalog without the table (before ALTER EXTENSION api_keys UPDATE) is looked
        // at again after any change: the update's creates the table.
        if known.as_ref().is_some_and(|k| {
            relid == pg_sys::InvalidOid || relid == k.table || k.table == pg_sys::InvalidOid
        }) {
            *known = None;
        }
    });
}

fn known() -> Rc<SigningKeys> {
    if let Some(k) = KNOWN.with_borrow(|k| k.clone()) {
        return k;
    }
    if !WATCHING.replace(true) {
        // SAFETY: registers a callback that lives as long as the library.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
    }
    let read = Rc::new(read());
    KNOWN.set(Some(read.clone()));
    read
}

/// Whether this installation made the signature: one HMAC per signing key of that id
/// (one, unless a restore merged two). Reads no key row and changes nothing.
pub(crate) fn made_by_us(signature: &Signature<'_>) -> bool {
    let mut keys = known();
    if !keys.by_id.contains_key(signature.signing_key_id) && keys.read_at.elapsed() >= REREAD_AFTER
    {
        KNOWN.set(None);
        keys = known();
    }
    keys.by_id
        .get(signature.signing_key_id)
        .is_some_and(|candidates| candidates.iter().any(|k| signature.is_made_by(k)))
}

/// The signing key that signs new keys.
pub(crate) fn current() -> SigningKey {
    known().current.clone().unwrap_or_else(|| {
        errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "api_keys has no signing key, so it cannot issue keys".into(),
            Some("A superuser or a member of api_keys_admin runs SELECT api_keys.rotate_signing_key() to create one.".into()),
        )
    })
}

/// The signing-keys table by name, opened with AccessShareLock (held to the end of the
/// transaction, as for any query); None in a catalog from before signing.
fn open() -> Option<pg_sys::Relation> {
    loop {
        // SAFETY: catalog lookups by name. The schema is missing only while the
        // extension is dropped (this call waited for it): nothing signs, nothing raises.
        let table = unsafe {
            let namespace = pg_sys::get_namespace_oid(c"api_keys".as_ptr(), true);
            if namespace == pg_sys::InvalidOid {
                return None;
            }
            pg_sys::get_relname_relid(c"signing_keys".as_ptr(), namespace)
        };
        if table == pg_sys::InvalidOid {
            return None;
        }
        // SAFETY: NULL when the table is gone by the time the lock is granted.
        let rel = unsafe { pg_sys::try_relation_open(table, pg_sys::AccessShareLock as i32) };
        if !rel.is_null() {
            return Some(rel);
        }
        // Dropped (the extension made again) while we waited: look it up again.
    }
}

/// Read the whole table (a handful of rows) with the latest snapshot.
fn read() -> SigningKeys {
    let mut keys = SigningKeys {
        table: pg_sys::InvalidOid,
        by_id: HashMap::new(),
        current: None,
        read_at: Instant::now(),
    };
    let Some(rel) = open() else {
        return keys;
    };
    let mut newest: Option<(i64, String)> = None;
    // SAFETY: a sequential scan as the executor would do it: the table open and locked,
    // a registered snapshot, each tuple deformed by its descriptor; each released in
    // turn. Values are copied out before the next tuple.
    unsafe {
        keys.table = (*rel).rd_id;
        let desc = (*rel).rd_att;
        let (id_at, secret_at, created_at) = (
            attnum(desc, c"id"),
            attnum(desc, c"secret"),
            attnum(desc, c"created_at"),
        );
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let scan = pg_sys::table_beginscan(rel, snapshot, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let get = |at: Option<usize>| at.filter(|&i| !nulls[i]).map(|i| values[i]);
            let (Some(id), Some(secret)) = (get(id_at), get(secret_at)) else {
                continue;
            };
            let id = String::from_utf8_lossy(datum::bytes(id)).into_owned();
            let Ok(secret) = <[u8; SIGNING_SECRET_LEN]>::try_from(datum::bytes(secret)) else {
                // The table's CHECK forbids it; such a row signs nothing.
                continue;
            };
            if !signature::is_signing_key_id(&id) {
                continue;
            }
            let created = get(created_at).map_or(i64::MIN, |d| d.value() as i64);
            if newest
                .as_ref()
                .is_none_or(|(at, nid)| (created, &id) > (*at, nid))
            {
                newest = Some((created, id.clone()));
                keys.current = Some(SigningKey::new(id.clone(), &secret));
            }
            keys.by_id
                .entry(id.clone())
                .or_default()
                .push(SigningKey::new(id, &secret));
        }
        pg_sys::table_endscan(scan);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
    keys
}

/// The 0-based index of the column `name`, if the table has it.
///
/// # Safety
/// `desc` is a live tuple descriptor.
unsafe fn attnum(desc: pg_sys::TupleDesc, name: &CStr) -> Option<usize> {
    // SAFETY: a tuple descriptor has `natts` attributes, each with a NUL-terminated name.
    unsafe {
        (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .position(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
    }
}
