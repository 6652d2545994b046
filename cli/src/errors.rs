//! Errors as the user sees them: `error: <message>` and `hint: <hint>` on stderr, and
//! one exit code per class, so that scripts can tell "no such key" from "not allowed".

use std::fmt::Display;
use std::process::ExitCode;

use crate::keyref::redact;

/// The exit code classes (README, "Command line").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anything not below (a server error of another kind, an I/O error).
    Other = 1,
    /// Bad arguments: clap's errors, a bad `--filter`, and the server's 22xxx (invalid
    /// parameter values, which it names).
    Usage = 2,
    /// P0002: no such key, or one of another owner (indistinguishable by design).
    NotFound = 3,
    /// 42501: not allowed for this role.
    NotAllowed = 4,
    /// 55000: the key's status does not allow it (revoked and expired are final).
    Transition = 5,
    /// The server could not be reached, refused the login, or went away.
    Connection = 6,
}

#[derive(Debug)]
pub struct Error {
    pub class: Class,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The server's SQLSTATE, for a caller that retries 40001 or tells errors apart.
    pub sqlstate: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(class: Class, message: impl Display) -> Error {
        Error {
            class,
            message: message.to_string(),
            detail: None,
            hint: None,
            sqlstate: None,
        }
    }

    pub fn usage(message: impl Display) -> Error {
        Error::new(Class::Usage, message)
    }

    pub fn with_hint(mut self, hint: impl Display) -> Error {
        self.hint = Some(hint.to_string());
        self
    }

    /// A failure to connect: every cause is class [`Class::Connection`], the server's
    /// own refusals (authentication, unknown database) included. `target` names host,
    /// port, user and database, never the password.
    pub fn connect(target: &str, e: &postgres::Error) -> Error {
        let mut err = Error::new(
            Class::Connection,
            format!("could not connect to {target}: {}", describe(e)),
        );
        if let Some(db) = e.as_db_error() {
            err.detail = db.detail().map(str::to_owned);
            err.hint = db.hint().map(str::to_owned);
            err.sqlstate = Some(db.code().code().to_owned());
        }
        err
    }

    /// Prints the error (secrets redacted) and gives its exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}", redact(&self.message));
        if let Some(detail) = &self.detail {
            eprintln!("detail: {}", redact(detail));
        }
        if let Some(hint) = &self.hint {
            eprintln!("hint: {}", redact(hint));
        }
        if let Some(code) = &self.sqlstate {
            eprintln!("sqlstate: {code}");
        }
        ExitCode::from(self.class as u8)
    }
}

/// The class of a server error, by SQLSTATE.
fn class_of(code: &str) -> Class {
    match code {
        "P0002" => Class::NotFound,
        "42501" => Class::NotAllowed,
        "55000" => Class::Transition,
        // Data exceptions: invalid parameter values, and input the server could not
        // read as a timestamp, interval, cidr...
        c if c.starts_with("22") => Class::Usage,
        // Connection exceptions, and the server shutting down under us.
        c if c.starts_with("08") || c.starts_with("57P") => Class::Connection,
        _ => Class::Other,
    }
}

/// What the server had to say, or else the client's reason.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        let Some(db) = e.as_db_error() else {
            // No answer from the server: it is gone, or never was.
            let class = if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|c| c.is::<std::io::Error>())
            {
                Class::Connection
            } else {
                Class::Other
            };
            return Error::new(class, describe(&e));
        };
        let code = db.code().code();
        let hint = db.hint().map(str::to_owned).or_else(|| match code {
            // No such schema, relation or function: the extension is missing, or older
            // than this client.
            "3F000" | "42P01" | "42883" => Some(
                "Is the extension installed in this database (CREATE EXTENSION api_keys), \
                 at version 0.5.0 or later (ALTER EXTENSION api_keys UPDATE)?"
                    .into(),
            ),
            _ => None,
        });
        Error {
            class: class_of(code),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint,
            sqlstate: Some(code.to_owned()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(Class::Other, e)
    }
}

impl From<csv::Error> for Error {
    fn from(e: csv::Error) -> Error {
        Error::new(Class::Other, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_their_classes() {
        assert_eq!(class_of("P0002"), Class::NotFound);
        assert_eq!(class_of("42501"), Class::NotAllowed);
        assert_eq!(class_of("55000"), Class::Transition);
        assert_eq!(class_of("22023"), Class::Usage);
        assert_eq!(class_of("22007"), Class::Usage);
        assert_eq!(class_of("08006"), Class::Connection);
        assert_eq!(class_of("57P01"), Class::Connection);
        assert_eq!(class_of("XX000"), Class::Other);
    }
}
