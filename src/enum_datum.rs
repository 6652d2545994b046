//! The extension's SQL enum types (`api_keys.key_type`, `api_keys.environment`) are
//! created in sql/schema.sql. Verification reads their datums from the key row and
//! hands them back unchanged, so no label lookup runs on the hot path.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::{Datum, FromDatum, IntoDatum};
use pgrx::{impl_sql_translatable, pg_sys};

macro_rules! enum_datum {
    ($name:ident, $sql:literal) => {
        /// A value of the SQL enum, carried as its raw datum (the pg_enum row's oid).
        #[derive(Clone, Copy, Debug)]
        pub struct $name(pg_sys::Datum);

        impl $name {
            /// Wrap a datum read from a column of this type, skipping pgrx's type check
            /// (which parses the type name on every call).
            pub fn from_column(datum: pg_sys::Datum) -> Self {
                $name(datum)
            }
        }

        impl FromDatum for $name {
            unsafe fn from_polymorphic_datum(
                datum: pg_sys::Datum,
                is_null: bool,
                _: pg_sys::Oid,
            ) -> Option<Self> {
                (!is_null).then_some($name(datum))
            }
        }

        impl IntoDatum for $name {
            fn into_datum(self) -> Option<pg_sys::Datum> {
                Some(self.0)
            }
            fn type_oid() -> pg_sys::Oid {
                pgrx::wrappers::regtypein($sql)
            }
        }

        unsafe impl BoxRet for $name {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
                unsafe { fcinfo.return_raw_datum(self.0) }
            }
        }

        impl_sql_translatable!($name, $sql);
    };
}

enum_datum!(KeyTypeDatum, "api_keys.key_type");
enum_datum!(EnvironmentDatum, "api_keys.environment");
