//! Read one key row by prefix, straight through the unique index `keys_prefix_key`.
//!
//! This replaces an SPI query on the hot path: no executor, no plan, no portal. The
//! snapshot is the one a query would get (`GetTransactionSnapshot`: fresh per call in
//! READ COMMITTED, the transaction's in REPEATABLE READ and SERIALIZABLE), so a
//! revocation is seen as soon as it commits, and the scan works on a hot standby and
//! in read-only transactions. No privilege check happens here: `api_key_verify` is
//! gated by EXECUTE, like a SECURITY DEFINER function would be.

use std::cell::Cell;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr;

use ipnet::IpNet;
use pgrx::{pg_guard, pg_sys, PgSqlErrorCode};

use crate::core::cidr;
use crate::core::credits::{CreditRow, Refill};
use crate::core::key::signature::SIGNING_KEY_ID_LEN;
use crate::core::verdict::KeyStatus;
use crate::postgres::datum;
use crate::postgres::errors;

/// The columns verification needs, copied out of the buffer page into the current
/// memory context: a row lives no longer than the presented key it was found by (`'m`,
/// the call's memory).
pub(crate) struct KeyRow<'m> {
    pub(crate) id: Option<pg_sys::Datum>,
    pub(crate) secret_hash: String,
    pub(crate) owner: Option<pg_sys::Datum>,
    pub(crate) key_type: Option<pg_sys::Datum>,
    pub(crate) environment: Option<pg_sys::Datum>,
    /// None when the stored label is unknown (verification fails closed).
    pub(crate) status: Option<KeyStatus>,
    pub(crate) expires_at: Option<pg_sys::TimestampTz>,
    /// The stored `scopes` array, copied, handed back unchanged in the result; read as
    /// strings only when a scope is asked for (`scopes()`).
    pub(crate) scopes_datum: Option<pg_sys::Datum>,
    /// The stored `allowed_cidrs` array: its rules are read only once the secret
    /// matched (`cidrs()`), so a wrong secret never pays for a long list.
    cidrs: StoredRules,
    pub(crate) rate_limit_per_minute: Option<i32>,
    pub(crate) rate_limit_per_hour: Option<i32>,
    /// The owner's limits, copied into each of its keys (`api_keys.owner_limits`).
    pub(crate) owner_rate_limit_per_minute: Option<i32>,
    pub(crate) owner_rate_limit_per_hour: Option<i32>,
    pub(crate) credits: CreditRow,
    /// The id of the signing key that signed the key (read without a copy on the heap;
    /// a stored value of another length, which the table's CHECK forbids, matches no
    /// key); None for a key issued before signing (or a catalog from before it).
    pub(crate) signing_key: Option<[u8; SIGNING_KEY_ID_LEN]>,
    memory: PhantomData<&'m [u8]>,
}

/// A key row's `allowed_cidrs`, as read from the page.
#[derive(Clone, Copy)]
enum StoredRules {
    /// NULL (a table constraint forbids it): verification fails closed.
    Unreadable,
    /// No rules: every client.
    None,
    /// The array, copied into the call's memory.
    Copied(pg_sys::Datum),
}

impl KeyRow<'_> {
    /// The owner's name as stored (empty if the column could not be read).
    pub(crate) fn owner_bytes(&self) -> &[u8] {
        // SAFETY: a text datum copied into this call's memory by `read_row`.
        self.owner.map_or(&[][..], |d| unsafe { datum::bytes(d) })
    }

    /// The key's uuid bytes (the nil uuid if the column could not be read).
    pub(crate) fn key_id(&self) -> [u8; 16] {
        self.id
            // SAFETY: a uuid datum copied by `read_row`: 16 bytes.
            .map_or([0; 16], |d| unsafe { *d.cast_mut_ptr::<[u8; 16]>() })
    }

    /// The key's network rules; None when the column or a rule cannot be read (fail
    /// closed).
    pub(crate) fn cidrs(&self) -> Option<Vec<IpNet>> {
        match self.cidrs {
            StoredRules::Unreadable => None,
            StoredRules::None => Some(Vec::new()),
            // SAFETY: a cidr[] copied into this call's memory by `fetch`.
            StoredRules::Copied(d) => unsafe { datum::inet_array(d) }
                .into_iter()
                .map(|rule| rule.and_then(|(v6, bits, addr)| cidr::rule(v6, bits, addr)))
                .collect(),
        }
    }

    /// The key's scopes. NULL elements (forbidden by a table constraint) are dropped:
    /// they grant nothing.
    pub(crate) fn scopes(&self) -> Vec<String> {
        self.scopes_datum
            // SAFETY: a text[] copied into this call's memory by `fetch`.
            .map(|d| unsafe { datum::text_array(d) })
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Attribute numbers of the columns we read, found by name (an upgrade may add columns).
#[derive(Clone, Copy, Default)]
struct Columns {
    id: i32,
    secret_hash: i32,
    owner: i32,
    key_type: i32,
    environment: i32,
    status: i32,
    expires_at: i32,
    scopes: i32,
    allowed_cidrs: i32,
    rate_limit_per_minute: i32,
    rate_limit_per_hour: i32,
    signing_key: i32,
    owner_rate_limit_per_minute: i32,
    owner_rate_limit_per_hour: i32,
    uses_granted: i32,
    uses_from: i32,
    refill_amount: i32,
    refill_interval: i32,
    uses_period: i32,
    uses_spent: i32,
}

/// # Safety
/// `desc` is the key table's live tuple descriptor.
unsafe fn columns(desc: pg_sys::TupleDesc) -> Columns {
    let mut c = Columns::default();
    // SAFETY: a tuple descriptor has `natts` attributes, each with a NUL-terminated name.
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        for (i, attr) in attrs.iter().enumerate() {
            if attr.attisdropped {
                continue;
            }
            let slot = match CStr::from_ptr(attr.attname.data.as_ptr()).to_bytes() {
                b"id" => &mut c.id,
                b"secret_hash" => &mut c.secret_hash,
                b"owner" => &mut c.owner,
                b"key_type" => &mut c.key_type,
                b"environment" => &mut c.environment,
                b"status" => &mut c.status,
                b"expires_at" => &mut c.expires_at,
                b"scopes" => &mut c.scopes,
                b"allowed_cidrs" => &mut c.allowed_cidrs,
                b"rate_limit_per_minute" => &mut c.rate_limit_per_minute,
                b"rate_limit_per_hour" => &mut c.rate_limit_per_hour,
                b"signing_key" => &mut c.signing_key,
                b"owner_rate_limit_per_minute" => &mut c.owner_rate_limit_per_minute,
                b"owner_rate_limit_per_hour" => &mut c.owner_rate_limit_per_hour,
                b"uses_granted" => &mut c.uses_granted,
                b"uses_from" => &mut c.uses_from,
                b"refill_amount" => &mut c.refill_amount,
                b"refill_interval" => &mut c.refill_interval,
                b"uses_period" => &mut c.uses_period,
                b"uses_spent" => &mut c.uses_spent,
                _ => continue,
            };
            *slot = i as i32 + 1;
        }
    }
    c
}

fn relation_oid(namespace: pg_sys::Oid, name: &CStr) -> pg_sys::Oid {
    // SAFETY: a catalog lookup by a NUL-terminated name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        errors::raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation api_keys.{} is missing", name.to_string_lossy()),
            Some("The extension's objects were altered; DROP and CREATE EXTENSION api_keys, or restore them.".into()),
        );
    }
    oid
}

/// The key table and its prefix index as this backend last found them by name, with
/// the table's column numbers once known: looked up once, not on every call, and
/// forgotten whenever a relation cache invalidation may concern them (DROP or CREATE
/// EXTENSION, ALTER TABLE, a cache reset).
#[derive(Clone, Copy)]
struct Relations {
    table: pg_sys::Oid,
    index: pg_sys::Oid,
    columns: Option<Columns>,
}

thread_local! {
    static RELATIONS: Cell<Option<Relations>> = const { Cell::new(None) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// # Safety
/// Called by Postgres on a relation cache invalidation.
#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if RELATIONS
        .get()
        .is_some_and(|r| relid == pg_sys::InvalidOid || relid == r.table || relid == r.index)
    {
        RELATIONS.set(None);
    }
}

fn relations() -> Relations {
    if let Some(known) = RELATIONS.get() {
        return known;
    }
    if !WATCHING.replace(true) {
        // SAFETY: registers a callback that lives as long as the library.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
    }
    // SAFETY: a catalog lookup by name; a missing schema raises an error.
    let namespace = unsafe { pg_sys::get_namespace_oid(c"api_keys".as_ptr(), false) };
    let found = Relations {
        table: relation_oid(namespace, c"keys"),
        index: relation_oid(namespace, c"keys_prefix_key"),
        columns: None,
    };
    RELATIONS.set(Some(found));
    found
}

/// The key table and its prefix index, opened with AccessShareLock (held to the end of
/// the transaction, as for any query), and the table's column numbers.
///
/// # Safety
/// Call inside a transaction; close both relations before it ends.
unsafe fn open() -> (pg_sys::Relation, pg_sys::Relation, Columns) {
    let lock = pg_sys::AccessShareLock as i32;
    loop {
        let known = relations();
        // SAFETY: NULL when the table is gone, checked below.
        let table = unsafe { pg_sys::try_relation_open(known.table, lock) };
        // Taking the lock took in pending invalidations: is it still the table we
        // looked up (not dropped, nor dropped and made again)?
        let current = RELATIONS
            .get()
            .is_some_and(|r| (r.table, r.index) == (known.table, known.index));
        if !table.is_null() && current {
            // SAFETY: the table is open and locked; its descriptor is live.
            unsafe {
                // The table's lock keeps its index from being dropped meanwhile.
                let index = pg_sys::index_open(known.index, lock);
                let columns = known.columns.unwrap_or_else(|| {
                    let columns = columns((*table).rd_att);
                    RELATIONS.set(Some(Relations {
                        columns: Some(columns),
                        ..known
                    }));
                    columns
                });
                return (table, index, columns);
            }
        }
        if !table.is_null() {
            // SAFETY: opened above with this lock.
            unsafe { pg_sys::relation_close(table, lock) };
        }
        RELATIONS.set(None);
    }
}

/// The row whose prefix is `prefix`, as visible to this transaction now.
pub(crate) fn fetch(prefix: &str) -> Option<KeyRow<'_>> {
    // SAFETY: one index scan, as the executor would do it: relations opened and locked,
    // a registered snapshot, a slot of the table's type; each released in turn, the
    // row copied out first.
    unsafe {
        let (table, index, columns) = open();
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());

        let mut scan_key = pg_sys::ScanKeyData::default();
        pg_sys::ScanKeyEntryInitialize(
            &mut scan_key,
            0,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::InvalidOid,
            // Compare under the index's collation, or the btree descent could go astray.
            *(*index).rd_indcollation,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            datum::text_datum(prefix.as_bytes()),
        );
        let slot = pg_sys::table_slot_create(table, ptr::null_mut());
        let scan = pg_sys::index_beginscan(table, index, snapshot, 1, 0);
        pg_sys::index_rescan(scan, &mut scan_key, 1, ptr::null_mut(), 0);
        let row = if pg_sys::index_getnext_slot(
            scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            slot,
        ) {
            Some(read_row(slot, &columns))
        } else {
            None
        };
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        // Locks stay until the end of the transaction, as for any query.
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        pg_sys::table_close(table, pg_sys::NoLock as i32);
        row
    }
}

/// Copy what verification needs out of the slot, whose page is released afterwards.
///
/// # Safety
/// `slot` holds a row of the key table; `c` are its column numbers.
unsafe fn read_row<'m>(slot: *mut pg_sys::TupleTableSlot, c: &Columns) -> KeyRow<'m> {
    // SAFETY: after slot_getallattrs the slot's values and nulls have `natts` entries;
    // each column is read as its declared type.
    unsafe {
        pg_sys::slot_getallattrs(slot);
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        let get = |attnum: i32| -> Option<pg_sys::Datum> {
            let i = (attnum as usize).checked_sub(1)?;
            (!nulls[i]).then(|| values[i])
        };
        // By-reference columns are copied into the current memory context.
        let copy = |attnum: i32| get(attnum).map(|d| datum::copy(d));
        KeyRow {
            id: get(c.id).map(|d| datum::copy_fixed(d, 16)),
            secret_hash: get(c.secret_hash)
                .map(|d| datum::text_string(d))
                .unwrap_or_default(),
            owner: copy(c.owner),
            key_type: get(c.key_type),
            environment: get(c.environment),
            status: get(c.status).and_then(|d| status(d)),
            expires_at: get(c.expires_at).map(|d| d.value() as pg_sys::TimestampTz),
            scopes_datum: copy(c.scopes),
            // Most keys have no rules: then nothing is copied or read again.
            cidrs: match get(c.allowed_cidrs) {
                None => StoredRules::Unreadable,
                Some(d) if datum::array_is_empty(d) => StoredRules::None,
                Some(d) => StoredRules::Copied(datum::copy(d)),
            },
            rate_limit_per_minute: get(c.rate_limit_per_minute).map(|d| d.value() as i32),
            rate_limit_per_hour: get(c.rate_limit_per_hour).map(|d| d.value() as i32),
            owner_rate_limit_per_minute: get(c.owner_rate_limit_per_minute)
                .map(|d| d.value() as i32),
            owner_rate_limit_per_hour: get(c.owner_rate_limit_per_hour).map(|d| d.value() as i32),
            // int8 and timestamptz are passed by value (64-bit builds only).
            credits: CreditRow {
                uses_granted: get(c.uses_granted).map(|d| d.value() as i64),
                uses_from: get(c.uses_from).map(|d| d.value() as i64),
                refill_amount: get(c.refill_amount).map(|d| d.value() as i64),
                refill: get(c.refill_interval).and_then(|d| Refill::from_label(datum::bytes(d))),
                uses_period: get(c.uses_period).map(|d| d.value() as i64),
                uses_spent: get(c.uses_spent).map_or(0, |d| d.value() as i64),
            },
            signing_key: get(c.signing_key)
                .map(|d| <[u8; SIGNING_KEY_ID_LEN]>::try_from(datum::bytes(d)).unwrap_or_default()),
            memory: PhantomData,
        }
    }
}

/// The status an enum value (`key_status`) stands for, by its label in the syscache.
///
/// # Safety
/// `value` is an enum datum (an oid).
unsafe fn status(value: pg_sys::Datum) -> Option<KeyStatus> {
    // SAFETY: a syscache lookup, released before returning; the label is NUL-terminated.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::ENUMOID as i32, value);
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_enum>(tuple);
        let status =
            KeyStatus::from_label(CStr::from_ptr((*form).enumlabel.data.as_ptr()).to_bytes());
        pg_sys::ReleaseSysCache(tuple);
        status
    }
}
