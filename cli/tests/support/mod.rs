//! The harness of tests/cli.rs: a throwaway cluster (tests/pg_cluster.sh of the
//! extension) with the installed extension, shared by the tests of the file, and the
//! binary run with a controlled environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

pub use postgres::{Client, NoTls};
use serde_json::Value;

pub const DB: &str = "cli_test";

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pg_cluster.sh")
}

impl Cluster {
    fn start() -> Cluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!("ak_cli_{}_{nanos:x}", std::process::id()));
        let out = Command::new("bash")
            .arg(cluster_script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            // The worker flushes usage every second; cheap hashing for fast issuing
            // (a plain role cannot SET these).
            .args([
                "api_keys.flush_interval = 1",
                "api_keys.argon2_memory_kib = 64",
                "api_keys.argon2_iterations = 1",
            ])
            .output()
            .expect("could not run tests/pg_cluster.sh");
        let cluster = Cluster { dir, port };
        assert!(
            out.status.success(),
            "the cluster did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default()
        );
        cluster
            .admin("postgres")
            .batch_execute(&format!("CREATE DATABASE {DB}"))
            .unwrap();
        cluster
            .admin(DB)
            .batch_execute("CREATE EXTENSION api_keys")
            .unwrap();
        cluster
    }

    pub fn socket_dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn admin(&self, db: &str) -> Client {
        Client::connect(
            &format!(
                "host={} port={} user=postgres dbname={db}",
                self.socket_dir(),
                self.port
            ),
            NoTls,
        )
        .unwrap()
    }

    /// A plain login role of this name (no admin).
    pub fn role(&self, name: &str) {
        self.admin(DB)
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"
            ))
            .unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(cluster_script())
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

pub fn cluster() -> Arc<Cluster> {
    static SLOT: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut slot = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(Cluster::start());
    *slot = Arc::downgrade(&c);
    c
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The binary with only the given environment (no DATABASE_URL or PG* of the caller)
/// and no terminal on stdin.
pub fn run_env(env: &[(&str, &str)], args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_api-keys"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        code: out.status.code().expect("killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `api-keys <args>` as `user`, connected by PGHOST/PGPORT/PGUSER/PGDATABASE.
pub fn run(c: &Cluster, user: &str, args: &[&str]) -> Out {
    let port = c.port.to_string();
    run_env(
        &[
            ("PGHOST", c.socket_dir()),
            ("PGPORT", &port),
            ("PGUSER", user),
            ("PGDATABASE", DB),
        ],
        args,
    )
}

/// Like [`run`], asserting the exit code.
#[track_caller]
pub fn expect(c: &Cluster, user: &str, code: i32, args: &[&str]) -> Out {
    let out = run(c, user, args);
    assert_eq!(out.code, code, "api-keys {args:?} as {user}: {out:#?}");
    out
}

/// A key's secret part: what must never be printed after create or rotate.
pub fn secret(key: &str) -> &str {
    let prefix_end = key.match_indices('_').nth(2).unwrap().0;
    &key[prefix_end + 1..]
}

#[track_caller]
pub fn assert_no_secret(outs: &[&Out], keys: &[&str]) {
    for out in outs {
        for key in keys {
            let s = secret(key);
            assert!(
                !out.stdout.contains(s) && !out.stderr.contains(s),
                "a secret was printed: {out:#?}"
            );
        }
    }
}

pub fn prefix_of(key: &str) -> &str {
    &key[..key.match_indices('_').nth(2).unwrap().0]
}

/// A key created with `--quiet`: stdout is the key alone.
pub fn create_quiet(c: &Cluster, user: &str, args: &[&str]) -> String {
    let out = expect(c, user, 0, &[&["create", "--quiet"][..], args].concat());
    let key = out.stdout.strip_suffix('\n').expect("a line").to_owned();
    assert!(!key.contains(char::is_whitespace), "{out:?}");
    assert_eq!(key.matches('_').count(), 3, "{key}");
    assert_eq!(out.stderr, "");
    key
}

pub fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}
