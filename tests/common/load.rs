//! pgbench load for the load and fault tests: the `load` schema (tests/load/schema.sql)
//! and its scripts, a pgbench run's outcome, and the checks made afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use super::{pg_bin, Client, Cluster};

pub const SCHEMA: &str = include_str!("../load/schema.sql");

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/load")
        .join(name)
}

/// Seconds from the environment variable `var`, else `default`.
pub fn seconds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `load` schema in database `db`, cheap argon2 for every session of it (the tests
/// are about what survives, not about hashing cost; cheap hashes mean more calls), and
/// `slots` keys for each of `clients` pgbench clients.
pub fn prepare(cluster: &Cluster, db: &str, clients: u32, slots: u32) -> Client {
    let mut c = cluster.connect(db);
    c.batch_execute(&format!(
        "ALTER DATABASE {db} SET api_keys.argon2_memory_kib = 64; \
         ALTER DATABASE {db} SET api_keys.argon2_iterations = 1"
    ))
    .unwrap();
    let mut c = cluster.connect(db);
    c.batch_execute(SCHEMA).expect("tests/load/schema.sql");
    c.execute(
        "SELECT load.mint(c, s) FROM generate_series(0, $1 - 1) c, generate_series(1, $2) s",
        &[&(clients as i32), &(slots as i32)],
    )
    .expect("minting the slots' keys");
    c
}

/// `pgbench -c clients -j clients -T secs -f script`, started in the background.
pub fn spawn_pgbench(
    cluster: &Cluster,
    db: &str,
    script_name: &str,
    clients: u32,
    secs: u64,
    defines: &[&str],
) -> Child {
    let mut cmd = Command::new(pg_bin().join("pgbench"));
    cmd.arg("-h")
        .arg(&cluster.dir)
        .arg("-p")
        .arg(cluster.port.to_string())
        .args(["-U", "postgres", "-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &clients.to_string()])
        .args(["-T", &secs.to_string()]);
    for d in defines {
        cmd.args(["-D", d]);
    }
    cmd.arg("-f")
        .arg(script(script_name))
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("could not start pgbench")
}

/// What a pgbench run printed.
pub struct Run {
    pub ok: bool,
    pub transactions: u64,
    pub failed: u64,
    pub tps: f64,
    pub output: String,
}

impl Run {
    pub fn of(out: Output) -> Run {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // pgbench prints its summary even when the clients were cut off; a line that
        // is missing is a pgbench this harness does not understand.
        let number = |prefix: &str| -> String {
            output
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no \"{prefix}\" in pgbench's output:\n{output}"))
                .to_string()
        };
        let processed = number("number of transactions actually processed: ");
        Run {
            ok: out.status.success(),
            // "N" with -T; "N/M" with -t.
            transactions: processed.split('/').next().unwrap().parse().unwrap(),
            failed: number("number of failed transactions: ").parse().unwrap(),
            tps: number("tps = ").parse().unwrap(),
            output,
        }
    }

    /// pgbench ran to its end, with transactions, no failed one and no broken contract.
    pub fn assert_clean(&self) {
        assert!(self.ok, "pgbench failed:\n{}", self.output);
        assert!(self.contract_violations().is_empty(), "{}", self.output);
        assert_eq!(self.failed, 0, "{}", self.output);
        assert!(self.transactions > 0, "{}", self.output);
    }

    /// Lines where a `load` function found an answer that breaks the contract.
    pub fn contract_violations(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.contains("verify answered"))
            .collect()
    }
}

/// Half-written or inconsistent state (`load.problems()`), and minted keys whose
/// verification does not follow from their row (`load.unverifiable()`).
pub fn problems(c: &mut Client) -> Vec<String> {
    let mut found: Vec<String> = c
        .query("SELECT load.problems()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    found.extend(
        c.query("SELECT load.unverifiable()", &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0)),
    );
    found
}

/// How many keys committed calls minted, and audit entries by action.
pub fn tally(c: &mut Client) -> String {
    c.query_one(
        "SELECT format('%s keys minted, %s in the key table; audit: %s',
                (SELECT count(*) FROM load.minted), (SELECT count(*) FROM api_keys.keys),
                (SELECT string_agg(format('%s %s', action, n), ', ' ORDER BY action)
                   FROM (SELECT action, count(*) AS n FROM api_keys.audit_log GROUP BY 1) a))",
        &[],
    )
    .unwrap()
    .get(0)
}
