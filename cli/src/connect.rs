//! Where to connect, by libpq's conventions: `--dsn` (a keyword string or a URL), else
//! `DATABASE_URL`, else the `PG*` variables, which also fill in what a DSN leaves out;
//! then libpq's defaults. Plain connections only: there is no TLS in this client.

use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};

use crate::errors::{describe, Class, Error, Result};
use crate::keyref::redact;

/// Where libpq looks first when no host is given (Debian's socket directory).
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Connects, printing the server's notices and warnings on stderr as they come.
pub fn connect(dsn: Option<&str>) -> Result<Client> {
    let mut config = config(dsn, &|name| std::env::var(name).ok())?;
    config.notice_callback(|notice| {
        eprintln!(
            "{}: {}",
            notice.severity().to_lowercase(),
            redact(notice.message())
        );
        if let Some(hint) = notice.hint() {
            eprintln!("hint: {}", redact(hint));
        }
    });
    let mut client = config
        .connect(NoTls)
        .map_err(|e| Error::connect(&target(&config), &e))?;
    // Every name this client uses is qualified or built in: nothing a role put in a
    // schema on the search path (an overload of to_json, an operator) may run as the
    // caller, who may be an admin. As pg_dump does.
    client.batch_execute(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)",
    )?;
    Ok(client)
}

fn connection_error(message: impl std::fmt::Display) -> Error {
    Error::new(Class::Connection, message)
}

/// The settings, from `dsn` or the environment (`env` reads a variable).
pub fn config(dsn: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let (source, text) = match dsn {
        Some(d) => ("--dsn", Some(d.to_owned())),
        None => ("DATABASE_URL", var("DATABASE_URL")),
    };
    let mut config = match &text {
        // The parser's message names the faulty option, never a value. It knows
        // sslmode disable, prefer and require only: allow, verify-ca and verify-full
        // are refused as invalid values, and require below.
        Some(text) => text.parse::<Config>().map_err(|e| {
            let why = describe(&e);
            let error =
                connection_error(format!("{source} is not a valid connection string: {why}"));
            if why.contains("sslmode") {
                error.with_hint(SSL_HINT)
            } else {
                error
            }
        })?,
        None => Config::new(),
    };
    // As parsed (the last of several, URL escapes decoded, quoting undone).
    if config.get_ssl_mode() == SslMode::Require {
        check_ssl_mode("require")?;
    }
    if let Some(mode) = var("PGSSLMODE") {
        check_ssl_mode(&mode)?;
    }
    // A DSN with sslmode=prefer connects in plain text all the same: this client
    // never offers TLS.
    config.ssl_mode(SslMode::Disable);

    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        match var("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host);
                }
            }
            None => {
                config.host_path(DEFAULT_SOCKET_DIR);
                config.host("localhost");
            }
        }
    }
    if config.get_ports().is_empty() {
        for port in var("PGPORT").as_deref().unwrap_or("5432").split(',') {
            let port = port
                .trim()
                .parse()
                .map_err(|_| connection_error(format!("PGPORT is not a port number: {port:?}")))?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        let user = var("PGUSER").or_else(os_user).ok_or_else(|| {
            connection_error("no user name: set PGUSER, or user in the connection string")
        })?;
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let dbname = var("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap().to_owned());
        config.dbname(&dbname);
    }
    if config.get_password().is_none() {
        if let Some(password) = var("PGPASSWORD") {
            config.password(password);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name(var("PGAPPNAME").as_deref().unwrap_or("api-keys"));
    }
    if config.get_options().is_none() {
        if let Some(options) = var("PGOPTIONS") {
            config.options(&options);
        }
    }
    if config.get_connect_timeout().is_none() {
        if let Some(t) = var("PGCONNECT_TIMEOUT") {
            let secs: u64 = t.trim().parse().map_err(|_| {
                connection_error(format!(
                    "PGCONNECT_TIMEOUT is not a number of seconds: {t:?}"
                ))
            })?;
            // As libpq: 0 waits forever, and less than 2 seconds is 2.
            if secs > 0 {
                config.connect_timeout(Duration::from_secs(secs.max(2)));
            }
        }
    }
    Ok(config)
}

const SSL_HINT: &str = "api-keys has no TLS: connect over a unix socket or a trusted network with sslmode=disable or prefer, or through a local TLS tunnel.";

fn check_ssl_mode(mode: &str) -> Result<()> {
    match mode {
        "disable" | "allow" | "prefer" => Ok(()),
        "require" | "verify-ca" | "verify-full" => Err(connection_error(format!(
            "sslmode={mode} needs TLS, which api-keys does not support"
        ))
        .with_hint(SSL_HINT)),
        other => Err(connection_error(format!(
            "invalid sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
        ))),
    }
}

/// The OS user, as libpq takes it when no user is named: $USER, $LOGNAME, or the
/// passwd entry of this process's uid.
fn os_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let env = |n| std::env::var(n).ok().filter(|v: &String| !v.is_empty());
    env("USER").or_else(|| env("LOGNAME")).or_else(|| {
        let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == uid)
            .map(|f| f[0].to_owned())
    })
}

/// Host, port, user and database, for messages; never the password.
pub fn target(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host {} port {} as user {} to database {}",
        hosts.join(","),
        ports.join(","),
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(dsn: Option<&str>, vars: &[(&str, &str)]) -> Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config(dsn, &move |name| vars.get(name).cloned())
    }

    #[test]
    fn pg_variables() {
        let c = with(
            None,
            &[
                ("PGHOST", "/tmp/sock"),
                ("PGPORT", "5433"),
                ("PGUSER", "alice"),
                ("PGPASSWORD", "s3cret"),
                ("PGAPPNAME", "ci"),
                ("PGCONNECT_TIMEOUT", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.get_hosts(), &[Host::Unix("/tmp/sock".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("alice"));
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.get_application_name(), Some("ci"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert!(!target(&c).contains("s3cret"));
    }

    #[test]
    fn libpq_defaults() {
        let c = with(None, &[("PGUSER", "bob")]).unwrap();
        assert_eq!(
            c.get_hosts(),
            &[
                Host::Unix(DEFAULT_SOCKET_DIR.into()),
                Host::Tcp("localhost".into())
            ]
        );
        assert_eq!(c.get_ports(), &[5432]);
        assert_eq!(c.get_dbname(), Some("bob"));
        assert_eq!(c.get_application_name(), Some("api-keys"));
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn dsn_before_database_url_before_variables() {
        let vars = [
            ("DATABASE_URL", "postgres://url@dbhost:6000/urldb"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "pw"),
        ];
        let c = with(Some("host=/run/x dbname=dsndb"), &vars).unwrap();
        assert_eq!(c.get_hosts(), &[Host::Unix("/run/x".into())]);
        assert_eq!(c.get_dbname(), Some("dsndb"));
        // What the DSN leaves out comes from the variables.
        assert_eq!(c.get_user(), Some("envuser"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        let c = with(None, &vars).unwrap();
        assert_eq!(c.get_hosts(), &[Host::Tcp("dbhost".into())]);
        assert_eq!(c.get_ports(), &[6000]);
        assert_eq!(c.get_user(), Some("url"));
        assert_eq!(c.get_dbname(), Some("urldb"));
    }

    #[test]
    fn no_tls() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let e = with(None, &[("PGUSER", "u"), ("PGSSLMODE", mode)]).unwrap_err();
            assert_eq!(e.class, Class::Connection);
            assert!(e.message.contains("needs TLS"), "{}", e.message);
        }
        // A connection string is read as the parser reads it: spaces around `=`,
        // quoting, the last of several, URL escapes. Every way to ask for TLS is
        // refused (require as such, verify-* as values the parser does not know).
        for dsn in [
            "host=h user=u sslmode=require",
            "host=h user=u sslmode = require",
            "host=h user=u sslmode='require'",
            "host=h user=u sslmode=prefer sslmode=require",
            "postgres://u@h/db?sslmode=require",
            "postgres://u@h/db?sslmode=disable&sslmode=require",
            "postgres://u@h/db?ssl%6dode=require",
            "host=h user=u sslmode=verify-full",
            "postgres://u@h/db?sslmode=verify-ca",
        ] {
            let e = with(Some(dsn), &[]).unwrap_err();
            assert_eq!(e.class, Class::Connection, "{dsn}");
            assert!(e.message.contains("sslmode"), "{dsn}: {}", e.message);
        }
        for mode in ["disable", "allow", "prefer"] {
            assert!(with(None, &[("PGUSER", "u"), ("PGSSLMODE", mode)]).is_ok());
        }
        for mode in ["disable", "prefer"] {
            assert!(with(Some(&format!("host=h user=u sslmode={mode}")), &[]).is_ok());
        }
        assert!(with(None, &[("PGUSER", "u"), ("PGSSLMODE", "bogus")]).is_err());
        // Never a value in the message: here, part of a password.
        let e = with(Some("host=h user=u password=xsslmode=Hunter2"), &[]);
        assert!(e.is_ok() || !e.unwrap_err().message.contains("Hunter2"));
    }

    #[test]
    fn bad_settings_are_connection_errors_without_secrets() {
        let e = with(Some("host=h password=hunter2 bogus=1"), &[]).unwrap_err();
        assert_eq!(e.class, Class::Connection);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = with(None, &[("PGUSER", "u"), ("PGPORT", "x")]).unwrap_err();
        assert_eq!(e.class, Class::Connection);
    }
}
