//! Every setting of the extension: name, default, bounds, who may change it.
//! Settings that weaken security are superuser-only (`PGC_SUSET`).

use ipnet::IpNet;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_guard, pg_sys};
use std::ffi::{c_char, c_void, CStr, CString};

use crate::core::forwarded_for::parse_proxies;

use crate::core::key::format::is_valid_brand;
use crate::core::key::hash::Argon2Settings;

pub(crate) static BRAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"ak"));
pub(crate) static ARGON2_MEMORY_KIB: GucSetting<i32> = GucSetting::<i32>::new(19456);
pub(crate) static ARGON2_ITERATIONS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub(crate) static ARGON2_PARALLELISM: GucSetting<i32> = GucSetting::<i32>::new(1);
pub(crate) static EXPIRY_WARNING_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
pub(crate) static MEMO_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(65536);
pub(crate) static ARGON2_BUDGET_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(5);
pub(crate) static ARGON2_AFTER_FAILURE_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(2);
pub(crate) static MAX_CONCURRENT_ARGON2: GucSetting<i32> = GucSetting::<i32>::new(2);
pub(crate) static DEFAULT_RATE_LIMIT_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub(crate) static DEFAULT_RATE_LIMIT_PER_HOUR: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub(crate) static TRACKED_KEYS: GucSetting<i32> = GucSetting::<i32>::new(16384);
pub(crate) static FLUSH_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(10);
pub(crate) static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub(crate) static PRIMARY_CONNINFO: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub(crate) static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Read by SQL (`api_keys._audit`), not by Rust.
pub(crate) static CHANGE_EVENTS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub(crate) static TRUSTED_PROXIES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// `preloading`: loaded by shared_preload_libraries. Settings that size shared memory
/// exist only then (Postgres refuses postmaster-level settings defined later).
pub(crate) fn init(preloading: bool) {
    if preloading {
        GucRegistry::define_int_guc(
            c"api_keys.memo_entries",
            c"Slots of the shared verification memo (about 34 bytes each); 0 disables it.",
            c"Each slot remembers that one presented key does or does not match one stored hash, so argon2 runs once per key rather than once per call. Needs shared_preload_libraries; set at server start.",
            &MEMO_ENTRIES,
            0,
            16 * 1024 * 1024,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"api_keys.tracked_keys",
            c"Obsolete since 0.5.0, and ignored: shared memory now holds every key in use.",
            c"Accepted so that configurations that set it keep starting; api_keys.stats() shows tracked_keys.",
            &TRACKED_KEYS,
            64,
            16 * 1024 * 1024,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_string_guc(
            c"api_keys.database",
            c"Obsolete since 0.5.0, and ignored: the worker now serves every database that has the extension.",
            c"Accepted so that configurations that set it keep starting.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"api_keys.flush_interval",
            c"How often the background workers write usage and last use, and expire keys past expires_at, in each database with the extension.",
            c"Usage recorded since the last flush is lost if the server crashes (a clean shutdown saves it).",
            &FLUSH_INTERVAL_S,
            1,
            3600,
            GucContext::Sighup,
            GucFlags::UNIT_S,
        );
        // Superusers only, also to read: it may hold a password.
        GucRegistry::define_string_guc(
            c"api_keys.primary_conninfo",
            c"On a hot standby: how its workers connect to the primary to send usage and last use (a libpq connection string without dbname; each worker adds its database's name).",
            c"Its role needs LOGIN and membership in api_keys_standby. Empty: a standby keeps its counts in memory (two hours at most) and sends none.",
            &PRIMARY_CONNINFO,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
        );
    }
    GucRegistry::define_string_guc(
        c"api_keys.brand",
        c"Brand at the start of every issued key (2-8 lowercase letters or digits).",
        c"Changing it affects new keys and api_keys.key_pattern(); existing keys keep verifying.",
        &BRAND,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.argon2_memory_kib",
        c"argon2id memory cost in KiB for newly hashed secrets (OWASP: 19456).",
        c"Existing hashes keep the parameters they were made with.",
        &ARGON2_MEMORY_KIB,
        64,
        4 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"api_keys.argon2_iterations",
        c"argon2id time cost (passes) for newly hashed secrets (OWASP: 2).",
        c"",
        &ARGON2_ITERATIONS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.argon2_parallelism",
        c"argon2id lanes for newly hashed secrets (OWASP: 1).",
        c"",
        &ARGON2_PARALLELISM,
        1,
        16,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.expiry_warning",
        c"How far ahead api_keys.expiring_soon looks.",
        c"",
        &EXPIRY_WARNING_S,
        60,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"api_keys.argon2_budget_per_minute",
        c"argon2 computations per key prefix per minute for presentations not in the memo; 0 = unlimited.",
        c"Past it, unknown presentations for that prefix are invalid_secret without hashing, while keys already in the memo keep working.",
        &ARGON2_BUDGET_PER_MINUTE,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.argon2_after_failure_per_second",
        c"Server-wide argon2 computations per second for prefixes that saw a wrong secret in the last 10 minutes; 0 = unlimited.",
        c"Bounds a flood spread over many real prefixes. Prefixes without recent failures (keys verified for the first time) are not held back by it.",
        &ARGON2_AFTER_FAILURE_PER_SECOND,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.max_concurrent_argon2",
        c"argon2 computations allowed to run at once in the whole server; others wait.",
        c"Bounds CPU and memory (argon2_memory_kib each) under a flood. Needs shared_preload_libraries.",
        &MAX_CONCURRENT_ARGON2,
        1,
        1024,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.default_rate_limit_per_minute",
        c"Calls per key per clock minute for keys whose rate_limit_per_minute is NULL; 0 = unlimited.",
        c"",
        &DEFAULT_RATE_LIMIT_PER_MINUTE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_keys.default_rate_limit_per_hour",
        c"Calls per key per clock hour for keys whose rate_limit_per_hour is NULL; 0 = unlimited.",
        c"",
        &DEFAULT_RATE_LIMIT_PER_HOUR,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hook is guarded.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"api_keys.trusted_proxies",
            c"Proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For authenticate() believes.",
            c"When a connection comes from one of them, the client is the right-most X-Forwarded-For hop that is not a trusted proxy. Empty: the connection's own address is the client.",
            &TRUSTED_PROXIES,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_trusted_proxies),
            None,
            None,
        );
    }
    // Superuser-only: turned off, status changes go unannounced to listeners.
    GucRegistry::define_bool_guc(
        c"api_keys.change_events",
        c"Send a NOTIFY on channel api_keys at commit for every status change, rotation and deletion.",
        c"Turn it off (e.g. ALTER ROLE ... SET) for sessions whose transactions are PREPAREd for two-phase commit: PostgreSQL refuses to prepare a transaction that sent a NOTIFY.",
        &CHANGE_EVENTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hook is guarded.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"api_keys.actor",
            c"Application-level actor recorded in the audit log beside current_user (at most 200 characters).",
            c"Set it per transaction, e.g. SET LOCAL api_keys.actor = 'jane@example.com'.",
            &ACTOR,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_actor),
            None,
            None,
        );
    }
}

/// Longest `api_keys.actor`, in characters: it lands in every audit entry.
const MAX_ACTOR_CHARS: usize = 200;

fn checked_actor(text: &str) -> Result<(), String> {
    let chars = text.chars().count();
    (chars <= MAX_ACTOR_CHARS).then_some(()).ok_or_else(|| {
        format!("api_keys.actor is at most {MAX_ACTOR_CHARS} characters (got {chars}).")
    })
}

fn checked_proxies(text: &str) -> Result<(), String> {
    parse_proxies(text).map(|_| ())
}

/// A string setting's check hook over `check`, which says in its error why a value is
/// refused: `$why` is Postgres' GUC_check_errdetail_string or GUC_check_errhint_string,
/// the DETAIL or HINT of its "invalid value for parameter" (22023).
macro_rules! string_check_hook {
    ($hook:ident, $check:path, $why:ident) => {
        /// # Safety
        /// Called by Postgres with the proposed value of the setting.
        #[pg_guard]
        unsafe extern "C-unwind" fn $hook(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            // SAFETY: Postgres hands the hook the proposed value, NULL or a C string.
            let value = unsafe { (*newval).as_ref() }.map(|p| unsafe { CStr::from_ptr(p) });
            let text = value.map(|v| v.to_string_lossy()).unwrap_or_default();
            match $check(&text) {
                Ok(()) => true,
                Err(why) => {
                    let why = CString::new(why).unwrap_or_default();
                    // SAFETY: Postgres reads the palloc'd text after the hook returns.
                    unsafe { pg_sys::$why = pg_sys::pstrdup(why.as_ptr()) };
                    false
                }
            }
        }
    };
}
// The limit is advice on what to send (a HINT); a proxy that is no address is a fact
// about the value (a DETAIL).
string_check_hook!(check_actor, checked_actor, GUC_check_errhint_string);
string_check_hook!(
    check_trusted_proxies,
    checked_proxies,
    GUC_check_errdetail_string
);

/// `api_keys.trusted_proxies`, parsed (the check hook has refused anything else).
pub(crate) fn trusted_proxies() -> Vec<IpNet> {
    let value = TRUSTED_PROXIES.get();
    let text = value
        .as_deref()
        .map(CStr::to_string_lossy)
        .unwrap_or_default();
    parse_proxies(&text).unwrap_or_default()
}

/// The configured brand, or None when it is not a valid brand.
pub(crate) fn brand() -> Option<String> {
    let brand = BRAND
        .get()
        .and_then(|b| b.into_string().ok())
        .unwrap_or_else(|| "ak".into());
    is_valid_brand(&brand).then_some(brand)
}

pub(crate) fn argon2_settings() -> Argon2Settings {
    // Bounds above keep these positive.
    Argon2Settings {
        memory_kib: ARGON2_MEMORY_KIB.get() as u32,
        iterations: ARGON2_ITERATIONS.get() as u32,
        parallelism: ARGON2_PARALLELISM.get() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_is_at_most_200_characters() {
        assert_eq!(checked_actor(""), Ok(()));
        assert_eq!(checked_actor(&"é".repeat(200)), Ok(()));
        let refused = checked_actor(&"a".repeat(201)).unwrap_err();
        assert!(
            refused.contains("at most 200 characters (got 201)"),
            "{refused}"
        );
    }
}
