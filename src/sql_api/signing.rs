//! Helpers of the signing-key SQL (sql/signing.sql): new ids and secrets, and the
//! trigger that tells every backend the signing keys changed. Not granted to PUBLIC.

use pgrx::prelude::*;

use super::fmgr;
use crate::core::key::secret;
use crate::postgres::errors;
use crate::postgres::shmem;

/// A new signing key's public id (sql/signing.sql makes sure it is unused). Called when
/// the extension is created, so it also tells the launcher this database has it.
#[pg_extern(volatile, requires = ["tables"])]
fn _new_signing_key_id() -> String {
    shmem::databases::note_extension_here();
    secret::signing_key_id()
}

/// A new signing key's secret: 32 bytes from the OS CSPRNG.
#[pg_extern(volatile, requires = ["tables"])]
fn _new_signing_secret() -> Vec<u8> {
    secret::signing_secret().to_vec()
}

extension_sql!(
    r#"
CREATE FUNCTION api_keys._signing_keys_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', '_signing_keys_changed';
"#,
    name = "signing_keys_changed",
    requires = ["tables"]
);

fmgr::finfo_v1!(pg_finfo__signing_keys_changed);

/// The statement trigger of `api_keys.signing_keys`: a relation cache invalidation of
/// the table, sent at commit to every backend (and in the commit record to standbys),
/// makes each forget the signing keys it read (`postgres::signing_keys`).
///
/// # Safety
/// Called by the function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn _signing_keys_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the call's context is a node; as a trigger, a TriggerData whose relation
    // is open for the statement.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            errors::raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "_signing_keys_changed runs only as a trigger".into(),
                None,
            );
        }
        let trigger = context.cast::<pg_sys::TriggerData>();
        pg_sys::CacheInvalidateRelcache((*trigger).tg_relation);
    }
    // A statement trigger's result is ignored.
    pg_sys::Datum::from(0)
}
