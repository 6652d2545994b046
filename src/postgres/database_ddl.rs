//! DROP DATABASE, ALTER DATABASE … RENAME / SET TABLESPACE and CREATE DATABASE … TEMPLATE
//! need the database free of other sessions, and wait only 5 s for them. A worker's
//! round there (`worker.rs`) may last longer at scale, and a plain owner's `WITH
//! (FORCE)` may not end a superuser's process; so a ProcessUtility hook (preloaded
//! library only) stops that worker first when the database's owner (or a superuser)
//! runs the command, and holds the next round off for 10 s. Stopping a
//! round loses nothing (usage leaves shared memory only once written); the database's
//! next round comes from the launcher as usual.

use std::ffi::{c_char, c_int, CStr};

use pgrx::pg_sys;

use crate::postgres::shmem::databases;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

// The C library's kill(2): the worker runs as another role (the bootstrap superuser),
// which pg_terminate_backend would refuse a plain database owner.
unsafe extern "C" {
    fn kill(pid: c_int, signal: c_int) -> c_int;
}

/// Called from _PG_init while shared_preload_libraries is being processed.
pub(crate) fn install_hook() {
    // SAFETY: the postmaster loads libraries one at a time, before any backend exists;
    // the previous hook is kept and called.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The database a statement needs free of other sessions, if any.
///
/// # Safety
/// `stmt` is a parse tree node (or NULL).
unsafe fn database_to_free(stmt: *mut pg_sys::Node) -> Option<*const c_char> {
    // SAFETY: the node's tag says which struct it is; names are NUL-terminated.
    unsafe {
        if stmt.is_null() {
            return None;
        }
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropdbStmt => Some((*stmt.cast::<pg_sys::DropdbStmt>()).dbname),
            // Of ALTER DATABASE, only SET TABLESPACE needs the database free.
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let alter = &*stmt.cast::<pg_sys::AlterDatabaseStmt>();
                option(alter.options, c"tablespace").map(|_| alter.dbname.cast_const())
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = &*stmt.cast::<pg_sys::RenameStmt>();
                (rename.renameType == pg_sys::ObjectType::OBJECT_DATABASE)
                    .then_some(rename.subname.cast_const())
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let options = (*stmt.cast::<pg_sys::CreatedbStmt>()).options;
                // A template given as something other than a name: Postgres refuses the
                // statement itself.
                option(options, c"template")
                    .filter(|arg| (**arg).type_ == pg_sys::NodeTag::T_String)
                    .map(|arg| (*arg.cast::<pg_sys::String>()).sval.cast_const())
            }
            _ => None,
        }
    }
}

/// The argument of option `name` in a statement's `DefElem` list, if given.
///
/// # Safety
/// `options` is a parse tree's list of DefElem (or NULL).
unsafe fn option(options: *mut pg_sys::List, name: &CStr) -> Option<*mut pg_sys::Node> {
    // SAFETY: the caller's promise; a DefElem's name is NUL-terminated.
    unsafe {
        if options.is_null() {
            return None;
        }
        (0..(*options).length as usize).find_map(|i| {
            let def = (*(*options).elements.add(i))
                .ptr_value
                .cast::<pg_sys::DefElem>();
            (CStr::from_ptr((*def).defname) == name && !(*def).arg.is_null()).then(|| (*def).arg)
        })
    }
}

/// Stop the worker running a round in database `name`, if any.
fn stop_worker_in(name: *const c_char) {
    if name.is_null() {
        return;
    }
    // SAFETY: a catalog lookup by name; InvalidOid when there is no such database.
    let oid = unsafe { pg_sys::get_database_oid(name, true) };
    if oid == pg_sys::InvalidOid {
        return;
    }
    // Only for a role the command could succeed for (the owner, or a superuser):
    // anyone else's attempt must not hold rounds off.
    // SAFETY: an ownership check of an existing database by the current role.
    if !unsafe { pg_sys::pg_database_ownercheck(oid, pg_sys::GetUserId()) } {
        return;
    }
    if let Some(pid) = databases::worker_of(oid) {
        // SAFETY: SIGTERM to our own worker (its pid from the directory, where only a
        // live worker's pid stays); the worker ends at its next interrupt check.
        unsafe { kill(pid, pg_sys::SIGTERM as c_int) };
    }
}

/// # Safety
/// Called by Postgres for every utility statement, with its arguments.
#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: Postgres passes a valid planned statement; the previous hook (or the
    // standard one) gets exactly what we were given.
    unsafe {
        if let Some(name) = database_to_free((*pstmt).utilityStmt) {
            stop_worker_in(name);
        }
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}
