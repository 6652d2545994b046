//! Harness for the integration tests: a throwaway PostgreSQL 15 cluster with
//! `api_keys` preloaded, reachable only on a unix socket in its own temp directory.
//!
//! Starting and stopping goes through `tests/pg_cluster.sh`, which runs initdb/pg_ctl
//! as the `postgres` OS user when the tests run as root (initdb refuses root).
//! The extension must already be installed into the system PostgreSQL.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

pub use postgres::{Client, NoTls};

pub mod load;
pub mod standby;

/// The database every cluster creates, with `CREATE EXTENSION api_keys` already run.
pub const DB: &str = "api_keys_test";

pub fn pg_bin() -> PathBuf {
    PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg_cluster.sh")
}

/// Settings for a cluster whose workers flush every second.
pub const WORKER_CONF: &[&str] = &["api_keys.flush_interval = 1"];

/// A port nobody is listening on right now (the server only uses it to name its socket,
/// but a distinct port per cluster keeps socket and shared-memory names apart).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("could not find a free port")
}

/// A fresh directory name for a cluster. Short: unix socket paths are limited to ~107
/// bytes.
fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("ak_{}_{}_{:x}", name, std::process::id(), nanos));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub struct Cluster {
    /// Temp dir: socket, data directory (`data/`), `server.log`.
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// Start a fresh preloaded cluster and create the extension in database [`DB`].
    /// Panics (with the server log) when the cluster does not come up.
    pub fn start(name: &str) -> Cluster {
        Self::start_with(name, &[])
    }

    /// Like [`Cluster::start`], with extra `postgresql.conf` lines.
    pub fn start_with(name: &str, conf: &[&str]) -> Cluster {
        let port = free_port();
        let dir = temp_dir(name);

        let out = Command::new("bash")
            .arg(cluster_script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .args(conf)
            .output()
            .expect("could not run tests/pg_cluster.sh");
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            stop_dir(&dir);
            panic!(
                "cluster {name} did not start on port {port}\n{}\nserver.log:\n{log}",
                describe(&out)
            );
        }
        let cluster = Cluster { dir, port };
        // From here on Drop cleans up, even if setup below panics.
        let setup = (|| -> Result<(), postgres::Error> {
            let mut c = cluster.try_connect("postgres")?;
            c.batch_execute(&format!("CREATE DATABASE {DB}"))?;
            let mut c = cluster.try_connect(DB)?;
            c.batch_execute("CREATE EXTENSION api_keys")?;
            Ok(())
        })();
        if let Err(e) = setup {
            panic!(
                "cluster {name}: creating the extension failed: {e:?}\nserver.log:\n{}",
                cluster.server_log()
            );
        }
        cluster
    }

    /// Stop the server with `pg_ctl stop -m <mode>` (`fast`: clean shutdown;
    /// `immediate`: like a crash, recovery at the next start) and start it again.
    pub fn restart(&self, mode: &str) {
        let out = Command::new("bash")
            .arg(cluster_script())
            .args(["restart", self.socket_dir(), mode])
            .output()
            .expect("could not run tests/pg_cluster.sh");
        assert!(
            out.status.success(),
            "restart -m {mode} failed\n{}\nserver.log:\n{}",
            describe(&out),
            self.server_log()
        );
    }

    /// A streaming hot standby of this cluster (pg_basebackup -R), started.
    pub fn standby(&self, name: &str) -> Cluster {
        self.standby_with(name, &[])
    }

    /// A copy (`cp -a`) of this server's data directory, which must be stopped, as a
    /// cluster of its own: its own directory, socket and port, every other setting
    /// (and any file in the data directory) as copied. Not started: see
    /// [`Cluster::start_server`].
    pub fn copy_stopped(&self, name: &str) -> Cluster {
        let port = free_port();
        let dir = temp_dir(name);
        let out = Command::new("bash")
            .arg(cluster_script())
            .args(["copy", self.socket_dir()])
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .expect("could not run tests/pg_cluster.sh");
        let copy = Cluster { dir, port };
        assert!(
            out.status.success(),
            "copying {} to {name} failed\n{}",
            self.socket_dir(),
            describe(&out)
        );
        copy
    }

    /// Like [`Cluster::standby`], with extra `postgresql.conf` lines written before the
    /// standby first starts (it inherits the rest of this cluster's settings), e.g.
    /// `&[&primary.primary_conninfo_conf("postgres")]`.
    pub fn standby_with(&self, name: &str, conf: &[&str]) -> Cluster {
        let port = free_port();
        let dir = temp_dir(name);
        let out = Command::new("bash")
            .arg(cluster_script())
            .args(["standby", self.socket_dir(), &self.port.to_string()])
            .arg(&dir)
            .arg(port.to_string())
            .args(conf)
            .output()
            .expect("could not run tests/pg_cluster.sh");
        let standby = Cluster { dir, port };
        assert!(
            out.status.success(),
            "standby {name} did not start\n{}\nserver.log:\n{}",
            describe(&out),
            standby.server_log()
        );
        standby
    }

    /// The `postgresql.conf` line that makes a standby of this cluster send its usage
    /// here, connecting as `user` (libpq conninfo without dbname: the standby's worker
    /// adds the name of its own database).
    /// The same over TCP on the loopback address (the cluster must listen there).
    pub fn primary_conninfo_tcp_conf(&self, user: &str) -> String {
        format!(
            "api_keys.primary_conninfo = 'host=127.0.0.1 port={} user={user}'",
            self.port
        )
    }

    pub fn primary_conninfo_conf(&self, user: &str) -> String {
        format!(
            "api_keys.primary_conninfo = 'host={} port={} user={user}'",
            self.socket_dir(),
            self.port
        )
    }

    /// Run `tests/pg_cluster.sh <args>` on this cluster's directory; panics with its
    /// output and the server log when it fails.
    fn cluster_sh(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .expect("could not run tests/pg_cluster.sh");
        assert!(
            out.status.success(),
            "pg_cluster.sh {args:?} on {} failed\n{}\nserver.log:\n{}",
            self.socket_dir(),
            describe(&out),
            self.server_log()
        );
    }

    /// Stop the server (`pg_ctl stop -m <mode>`: `fast` is a clean shutdown,
    /// `immediate` a crash) and leave it stopped; its directory stays, for
    /// [`Cluster::start_server`]. Sessions open on it are gone.
    pub fn stop_server(&self, mode: &str) {
        self.cluster_sh(&["stop-server", mode]);
    }

    /// Start the server stopped by [`Cluster::stop_server`] (returns once it accepts
    /// connections; a standby, once it is consistent).
    pub fn start_server(&self) {
        self.cluster_sh(&["start-server"]);
    }

    /// Promote this standby (`pg_ctl promote -w`: returns once it is a primary).
    pub fn promote(&self) {
        self.cluster_sh(&["promote"]);
    }

    /// Append lines to `postgresql.conf` (the last of a setting wins). Takes effect at
    /// the next start, or for `sighup` settings at [`Cluster::reload`].
    pub fn append_conf(&self, lines: &[&str]) {
        let mut args = vec!["append-conf"];
        args.extend_from_slice(lines);
        self.cluster_sh(&args);
    }

    /// `SELECT pg_reload_conf()`: every process re-reads the configuration files soon
    /// after (asynchronously; a worker at its next round).
    pub fn reload(&self) {
        let reloaded: bool = self
            .connect("postgres")
            .query_one("SELECT pg_reload_conf()", &[])
            .unwrap()
            .get(0);
        assert!(reloaded, "pg_reload_conf() failed");
    }

    /// Wait (30 s at most) until `standby` has replayed this primary's WAL up to its
    /// current position: whatever was committed here before the call is visible there.
    pub fn wait_for_replay_on(&self, standby: &Cluster) {
        let lsn: String = self
            .connect("postgres")
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        let mut s = standby.connect("postgres");
        let start = Instant::now();
        let replayed = |s: &mut Client| -> bool {
            s.query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&lsn],
            )
            .unwrap()
            .get(0)
        };
        while !replayed(&mut s) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the standby did not replay up to {lsn} in 30 s\nstandby server.log:\n{}",
                standby.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn socket_dir(&self) -> &str {
        self.dir.to_str().expect("temp dir is not UTF-8")
    }

    pub fn conn_string(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db} application_name=api_keys_it",
            self.socket_dir(),
            self.port
        )
    }

    pub fn try_connect(&self, db: &str) -> Result<Client, postgres::Error> {
        Client::connect(&self.conn_string(db), NoTls)
    }

    /// A session as `role` (no settings).
    pub fn connect_as(&self, db: &str, role: &str) -> Client {
        Client::connect(&format!("{} user={role}", self.conn_string(db)), NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {role}: {e:?}"))
    }

    /// A plain new session as superuser `postgres` (nothing set).
    pub fn connect(&self, db: &str) -> Client {
        self.try_connect(db).unwrap_or_else(|e| {
            panic!(
                "connect to {db} failed: {e:?}\nserver.log:\n{}",
                self.server_log()
            )
        })
    }

    /// A new session with cheap argon2 parameters (fast issuing) and UTC timestamps.
    pub fn connect_fast(&self, db: &str) -> Client {
        let mut c = self.connect(db);
        cheap_hashing(&mut c);
        c
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Run a PostgreSQL client program (pg_dump, pg_restore, psql...) against this
    /// cluster's socket as user postgres. Panics with its output when it fails.
    pub fn run_tool(&self, tool: &str, args: &[&str]) -> Output {
        let out = Command::new(pg_bin().join(tool))
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg("postgres")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("could not run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed\n{}\nserver.log:\n{}",
            describe(&out),
            self.server_log()
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_dir(&self.dir);
    }
}

fn stop_dir(dir: &Path) {
    let _ = Command::new("bash")
        .arg(cluster_script())
        .arg("stop")
        .arg(dir)
        .output();
    let _ = std::fs::remove_dir_all(dir);
}

/// Cheap argon2 for this session (the settings are superuser-only) and UTC timestamps,
/// so that timestamps printed as text compare equal across sessions and databases.
pub fn cheap_hashing(c: &mut Client) {
    c.batch_execute(
        "SET api_keys.argon2_memory_kib = 64; SET api_keys.argon2_iterations = 1; \
         SET TimeZone = 'UTC'; SET search_path = api_keys, public",
    )
    .expect("session settings");
}

/// What `api_key_verify` answered, with every column as comparable text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub valid: bool,
    pub reason: String,
    pub key_id: Option<String>,
    pub owner: Option<String>,
    pub key_type: Option<String>,
    pub environment: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
}

pub const VERIFY_SQL: &str = "\
    SELECT valid, reason, key_id::text, owner, key_type::text, environment::text, scopes, \
           expires_at::text \
      FROM api_keys.api_key_verify($1::text, $2::text::inet, $3::text)";

pub fn try_verify(
    c: &mut impl postgres::GenericClient,
    key: &str,
    ip: Option<&str>,
    scope: Option<&str>,
) -> Result<Verdict, postgres::Error> {
    let rows = c.query(VERIFY_SQL, &[&key, &ip, &scope])?;
    assert_eq!(rows.len(), 1, "api_key_verify must return exactly one row");
    let r = &rows[0];
    Ok(Verdict {
        valid: r.get(0),
        reason: r.get(1),
        key_id: r.get(2),
        owner: r.get(3),
        key_type: r.get(4),
        environment: r.get(5),
        scopes: r.get(6),
        expires_at: r.get(7),
    })
}

pub fn verify(
    c: &mut impl postgres::GenericClient,
    key: &str,
    ip: Option<&str>,
    scope: Option<&str>,
) -> Verdict {
    try_verify(c, key, ip, scope).unwrap_or_else(|e| panic!("api_key_verify raised: {e:?}"))
}

/// An issued key: (id, full key, prefix).
#[derive(Clone, Debug)]
pub struct Issued {
    pub id: String,
    pub key: String,
    pub prefix: String,
}

/// `api_key_issue` with the given argument list (SQL text after `name`), e.g.
/// `issue(c, "'svc', 'service', 'production', ARRAY['runs:read']")`.
pub fn issue(c: &mut impl postgres::GenericClient, args_sql: &str) -> Issued {
    let row = c
        .query_one(
            &format!("SELECT id::text, key, prefix FROM api_keys.api_key_issue({args_sql})"),
            &[],
        )
        .unwrap_or_else(|e| panic!("api_key_issue({args_sql}) failed: {e:?}"));
    Issued {
        id: row.get(0),
        key: row.get(1),
        prefix: row.get(2),
    }
}

/// A key as issued before 0.5.0, without a signature: issued now, then its row marked
/// unsigned (as the update to 0.5.0 leaves older keys) and its text cut back to the
/// secret with a new checksum. Its stored hash is of that secret, so it verifies on the
/// path of unsigned keys (with the per-prefix argon2 budgets).
pub fn issue_unsigned(c: &mut Client, args_sql: &str) -> Issued {
    let k = issue(c, args_sql);
    // The guard forbids changing signing_key; a superuser's replica role skips it.
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         UPDATE api_keys.keys SET signing_key = NULL WHERE id = '{}';
         RESET session_replication_role",
        k.id
    ))
    .unwrap();
    let secret_end = k.prefix.len() + 1 + 43;
    Issued {
        key: with_checksum(&k.key[..secret_end]),
        ..k
    }
}

/// A key with the same prefix as `key` and a different secret, with a correct checksum
/// (CRC32 of the body, fixed-width base62): it reaches the hash check and must fail it.
pub fn forge_secret(key: &str) -> String {
    let body = &key[..key.len() - 6];
    let (prefix, secret) = body.rsplit_once('_').expect("key has no secret part");
    let forged: String = secret
        .chars()
        .map(|ch| match ch {
            'a' => 'b',
            'b' => 'a',
            'A' => 'B',
            'B' => 'A',
            '0' => '1',
            '1' => '0',
            other => other,
        })
        .collect();
    let mut forged = forged;
    if forged == secret {
        // No a/b/0/1 at all (unlikely): change the first character.
        let first = if secret.starts_with('z') { "y" } else { "z" };
        forged = format!("{first}{}", &secret[1..]);
    }
    with_checksum(&format!("{prefix}_{forged}"))
}

/// `body` followed by its checksum (CRC32 as fixed-width base62): a key that passes the
/// format check whatever its secret.
pub fn with_checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body}{:0>6}", base62::encode(crc))
}

/// One cluster for the tests of a file that run at the same time: started by `start`
/// for the first of them, stopped when the last lets go.
pub fn shared_cluster(
    slot: &std::sync::Mutex<std::sync::Weak<Cluster>>,
    start: impl FnOnce() -> Cluster,
) -> std::sync::Arc<Cluster> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = std::sync::Arc::new(start());
    *slot = std::sync::Arc::downgrade(&c);
    c
}

/// `api_keys.stats()` as a map.
pub fn stats(c: &mut Client) -> HashMap<String, i64> {
    c.query("SELECT counter, value FROM api_keys.stats()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Poll `ready` every 100 ms until it is true; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The launcher's pid, when it runs (the long-lived process of the background work;
/// the workers it starts live one round each).
pub fn worker_pid(c: &mut Client) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'api_keys launcher'",
        &[],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// `kill -9 pid`.
pub fn kill_9(pid: i32) {
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
}

/// The running worker's pid, waiting for it to start.
pub fn running_worker(cluster: &Cluster) -> i32 {
    let mut c = cluster.connect(DB);
    let mut pid = None;
    wait_for("the worker", Duration::from_secs(30), || {
        pid = worker_pid(&mut c);
        pid.is_some()
    });
    pid.unwrap()
}

/// A session once the server accepts connections again (after a crash or a restart)
/// and a worker other than `old_worker` runs.
pub fn recovered(cluster: &Cluster, old_worker: i32) -> Client {
    let mut c = None;
    wait_for(
        "the server and a new worker",
        Duration::from_secs(60),
        || {
            c = cluster.try_connect(DB).ok();
            c.as_mut()
                .and_then(worker_pid)
                .is_some_and(|pid| pid != old_worker)
        },
    );
    c.unwrap()
}

/// Fixed windows: wait until the current clock minute (and hour) has at least
/// `seconds` left, so that a test counting exact admissions stays inside one window.
pub fn wait_for_room_in_window(c: &mut Client, seconds: f64) {
    wait_for_room_in(c, "minute", seconds);
}

/// Like [`wait_for_room_in_window`], for the clock hour: a test counting exact per-hour
/// admissions waits for the next hour when fewer than `seconds` are left in this one.
pub fn wait_for_room_in_hour(c: &mut Client, seconds: f64) {
    wait_for_room_in(c, "hour", seconds);
}

fn wait_for_room_in(c: &mut Client, unit: &str, seconds: f64) {
    let left: f64 = c
        .query_one(
            &format!("SELECT extract(epoch FROM date_trunc('{unit}', clock_timestamp()) + interval '1 {unit}' - clock_timestamp())::float8"),
            &[],
        )
        .unwrap()
        .get(0);
    if left < seconds {
        std::thread::sleep(Duration::from_secs_f64(left + 0.2));
    }
}

/// Calls written to `api_keys.usage` as verified, all keys and hours.
pub fn total_verified(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage",
        &[],
    )
    .unwrap()
    .get(0)
}
