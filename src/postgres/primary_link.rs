//! A standby worker's connection to the primary (`api_keys.primary_conninfo`), through
//! libpq as dblink and the WAL receiver use it. Driven without blocking: every wait is
//! on the socket and the process latch, so a SIGTERM ends the worker at once, and every
//! wait has a deadline. Connection errors never show the connection string.

use std::ffi::{c_int, CStr, CString};
use std::time::Duration;

use pgrx::pg_sys;
use pq_sys::{ConnStatusType, ExecStatusType, PostgresPollingStatusType};

/// Longest wait for the primary at any step (connecting, a statement's answer).
const WAIT: Duration = Duration::from_secs(20);

pub(crate) struct Primary(*mut pq_sys::PGconn);

/// A result row, as text (NULL: None).
pub(crate) type Row = Vec<Option<String>>;

impl Drop for Primary {
    fn drop(&mut self) {
        // SAFETY: the connection made in `connect`, finished once.
        unsafe { pq_sys::PQfinish(self.0) }
    }
}

fn deadline() -> i64 {
    now() + WAIT.as_micros() as i64
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

impl Primary {
    /// Connect to database `dbname` on the primary. `conninfo` names everything else
    /// (its own dbname, if any, is replaced); our defaults (timeouts, keepalives) give
    /// way to what it sets.
    pub(crate) fn connect(conninfo: &CStr, dbname: &CStr) -> Result<Primary, String> {
        // libpq's parse errors quote the string (a password with it): checked first, and
        // said without it.
        let mut parse_error = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string; the options and any message are freed here.
        unsafe {
            let options = pq_sys::PQconninfoParse(conninfo.as_ptr(), &mut parse_error);
            if !parse_error.is_null() {
                pq_sys::PQfreemem(parse_error.cast());
            }
            if options.is_null() {
                return Err("api_keys.primary_conninfo is not a valid connection string".into());
            }
            pq_sys::PQconninfoFree(options);
        }
        let pairs: [(&CStr, &CStr); 8] = [
            (c"connect_timeout", c"10"),
            (c"keepalives_idle", c"10"),
            (c"keepalives_interval", c"5"),
            (c"keepalives_count", c"3"),
            (c"tcp_user_timeout", c"20000"),
            // Expanded: the connection string.
            (c"dbname", conninfo),
            (c"dbname", dbname),
            (c"application_name", c"api_keys standby worker"),
        ];
        let mut keywords: Vec<*const std::ffi::c_char> =
            pairs.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const std::ffi::c_char> =
            pairs.iter().map(|(_, v)| v.as_ptr()).collect();
        keywords.push(std::ptr::null());
        values.push(std::ptr::null());
        // SAFETY: both arrays are NULL-terminated and outlive the call; libpq copies them.
        let conn = unsafe { pq_sys::PQconnectStartParams(keywords.as_ptr(), values.as_ptr(), 1) };
        if conn.is_null() {
            return Err("out of memory".into());
        }
        let link = Primary(conn);
        // SAFETY: a live connection object.
        if unsafe { pq_sys::PQstatus(conn) } == ConnStatusType::CONNECTION_BAD {
            return Err(link.error());
        }
        let until = deadline();
        loop {
            // SAFETY: as above; polled until it says OK or FAILED.
            match unsafe { pq_sys::PQconnectPoll(conn) } {
                PostgresPollingStatusType::PGRES_POLLING_OK => break,
                PostgresPollingStatusType::PGRES_POLLING_FAILED => return Err(link.error()),
                PostgresPollingStatusType::PGRES_POLLING_READING => {
                    link.wait(pg_sys::WL_SOCKET_READABLE, until)?
                }
                PostgresPollingStatusType::PGRES_POLLING_WRITING => {
                    link.wait(pg_sys::WL_SOCKET_WRITEABLE, until)?
                }
                _ => link.wait(
                    pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE,
                    until,
                )?,
            }
        }
        // SAFETY: a connected connection.
        if unsafe { pq_sys::PQsetnonblocking(conn, 1) } != 0 {
            return Err(link.error());
        }
        // Nothing the role's settings name (a search_path, no timeout) takes part.
        link.query(
            c"SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false), \
                     pg_catalog.set_config('statement_timeout', '20s', false), \
                     pg_catalog.set_config('lock_timeout', '5s', false), \
                     pg_catalog.set_config('default_transaction_read_only', 'off', false)",
            &[],
        )?;
        Ok(link)
    }

    /// Run one statement with text parameters (in a transaction of its own) and return
    /// its rows as text.
    pub(crate) fn query(&self, sql: &CStr, params: &[Option<String>]) -> Result<Vec<Row>, String> {
        let params: Vec<Option<CString>> = params
            .iter()
            .map(|p| p.as_ref().map(|p| CString::new(p.as_str())))
            .map(Option::transpose)
            .collect::<Result<_, _>>()
            .map_err(|_| "a parameter holds a NUL byte".to_string())?;
        let values: Vec<*const std::ffi::c_char> = params
            .iter()
            .map(|p| p.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()))
            .collect();
        // SAFETY: `values` (and the strings it points to) outlive the call; text
        // parameters with no types given (the statement casts them).
        let sent = unsafe {
            pq_sys::PQsendQueryParams(
                self.0,
                sql.as_ptr(),
                values.len() as c_int,
                std::ptr::null(),
                values.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
            )
        };
        if sent == 0 {
            return Err(self.error());
        }
        let until = deadline();
        loop {
            // SAFETY: sends what libpq buffered, without blocking.
            match unsafe { pq_sys::PQflush(self.0) } {
                0 => break,
                1 => {
                    self.wait(
                        pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE,
                        until,
                    )?;
                    self.consume()?;
                }
                _ => return Err(self.error()),
            }
        }
        let (mut rows, mut failure) = (Vec::new(), None);
        loop {
            // SAFETY: reads what arrived; waits while the answer is incomplete.
            while unsafe { pq_sys::PQisBusy(self.0) } != 0 {
                self.wait(pg_sys::WL_SOCKET_READABLE, until)?;
                self.consume()?;
            }
            // SAFETY: a whole result is there (or none is left: NULL).
            let result = unsafe { pq_sys::PQgetResult(self.0) };
            if result.is_null() {
                break;
            }
            // SAFETY: a result libpq gave, read and then cleared once.
            unsafe {
                match pq_sys::PQresultStatus(result) {
                    ExecStatusType::PGRES_TUPLES_OK => {
                        let (n, fields) = (pq_sys::PQntuples(result), pq_sys::PQnfields(result));
                        for row in 0..n {
                            rows.push(
                                (0..fields)
                                    .map(|f| {
                                        (pq_sys::PQgetisnull(result, row, f) == 0).then(|| {
                                            CStr::from_ptr(pq_sys::PQgetvalue(result, row, f))
                                                .to_string_lossy()
                                                .into_owned()
                                        })
                                    })
                                    .collect(),
                            );
                        }
                    }
                    ExecStatusType::PGRES_COMMAND_OK => {}
                    _ => {
                        failure.get_or_insert_with(|| text(pq_sys::PQresultErrorMessage(result)));
                    }
                }
                pq_sys::PQclear(result);
            }
        }
        match failure {
            Some(message) => Err(message),
            None => Ok(rows),
        }
    }

    fn consume(&self) -> Result<(), String> {
        // SAFETY: reads what the socket has, without blocking.
        if unsafe { pq_sys::PQconsumeInput(self.0) } == 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Wait for `events` on the connection's socket, the latch (interrupts are served:
    /// a SIGTERM ends the worker here) or the deadline (an error).
    fn wait(&self, events: u32, until: i64) -> Result<(), String> {
        let left_ms = (until - now()) / 1000;
        if left_ms <= 0 {
            return Err(format!(
                "the primary did not answer within {} s",
                WAIT.as_secs()
            ));
        }
        // SAFETY: MyLatch is this process's latch; the socket is the connection's own.
        let woke = unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (events | pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                    as c_int,
                pq_sys::PQsocket(self.0),
                left_ms as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            )
        };
        if woke & pg_sys::WL_LATCH_SET as c_int != 0 {
            // SAFETY: this process's latch.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            pg_sys::check_for_interrupts!();
        }
        Ok(())
    }

    fn error(&self) -> String {
        // SAFETY: the connection's last error, copied.
        unsafe { text(pq_sys::PQerrorMessage(self.0)) }
    }
}

/// # Safety
/// `message` is NULL or a NUL-terminated string.
unsafe fn text(message: *const std::ffi::c_char) -> String {
    if message.is_null() {
        return "unknown error".into();
    }
    // SAFETY: the caller's promise.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    text.trim().replace('\n', " ")
}
