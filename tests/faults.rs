//! Faults in the middle of the pgbench mix (tests/load/mix.sql): kill -9 of a backend
//! while api_key_issue hashes and of one that has issued but not committed, kill -9 of
//! the background worker, and an immediate shutdown. After each, once the server is
//! back: every key a committed call minted verifies as its row says, nothing is
//! half-written, the audit log matches the key table, and the worker runs again.

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use common::load::{self, Run};
use common::{wait_for, worker_pid, Client, Cluster, DB, WORKER_CONF};

const CLIENTS: u32 = 4;
const SLOTS: u32 = 25;
/// Long enough to be cut short by the fault.
const LOAD_SECS: u64 = 60;

fn kill_9(pid: i32) {
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
}

fn backend_pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Once the server accepts connections again and a worker other than `old` runs.
fn recovered(cluster: &Cluster, old_worker: i32) -> Client {
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

fn running_worker(cluster: &Cluster) -> i32 {
    let mut c = cluster.connect(DB);
    let mut pid = None;
    wait_for("the worker", Duration::from_secs(30), || {
        pid = worker_pid(&mut c);
        pid.is_some()
    });
    pid.unwrap()
}

/// Run the mix, apply `fault` two seconds in, wait for pgbench (the fault ends its
/// sessions), wait for the server and its worker, and check everything.
fn under_load(cluster: &Cluster, what: &str, fault: impl FnOnce()) {
    let worker = running_worker(cluster);
    let bench = load::spawn_pgbench(
        cluster,
        DB,
        "mix.sql",
        CLIENTS,
        LOAD_SECS,
        &[&format!("slots={SLOTS}")],
    );
    thread::sleep(Duration::from_secs(2));
    fault();
    let run = Run::of(bench.wait_with_output().unwrap());
    assert!(
        run.contract_violations().is_empty(),
        "{what}: {}",
        run.output
    );
    assert!(
        run.transactions > 0,
        "{what}: no load before the fault\n{}",
        run.output
    );
    let mut c = recovered(cluster, worker);
    let problems = load::problems(&mut c);
    assert!(
        problems.is_empty(),
        "after {what}:\n{}",
        problems.join("\n")
    );
    eprintln!(
        "faults: {what}: {} transactions before it; then {}",
        run.transactions,
        load::tally(&mut c)
    );
}

/// The key `id` left no trace: no key row, no audit entry.
fn left_no_trace(cluster: &Cluster, id: &str) {
    let mut c = cluster.connect(DB);
    let traces: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM api_keys.keys WHERE id = $1::text::uuid)
                  + (SELECT count(*) FROM api_keys.audit_log WHERE key_id = $1::text::uuid)",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(traces, 0, "the uncommitted key {id} left a trace");
}

#[test]
fn faults_under_load_lose_no_committed_key_and_half_write_nothing() {
    let cluster = Cluster::start_with("faults", WORKER_CONF);
    drop(load::prepare(&cluster, DB, CLIENTS, SLOTS));

    // A backend killed while api_key_issue hashes (made slow for this session only).
    under_load(
        &cluster,
        "kill -9 of a backend inside api_key_issue",
        || {
            let mut victim = cluster.connect(DB);
            let pid = backend_pid(&mut victim);
            victim
                .batch_execute(
                    "SET api_keys.argon2_memory_kib = 19456; SET api_keys.argon2_iterations = 40",
                )
                .unwrap();
            let issuing = thread::spawn(move || {
                victim.query(
                    "SELECT id FROM api_keys.api_key_issue('victim', 'service', 'production')",
                    &[],
                )
            });
            let mut watcher = cluster.connect(DB);
            wait_for("api_key_issue to run", Duration::from_secs(10), || {
                watcher
                    .query_opt(
                        "SELECT FROM pg_stat_activity
                      WHERE pid = $1 AND state = 'active' AND query LIKE '%api_key_issue%'",
                        &[&pid],
                    )
                    .unwrap()
                    .is_some()
            });
            thread::sleep(Duration::from_millis(100));
            kill_9(pid);
            assert!(
                issuing.join().unwrap().is_err(),
                "the issue finished before the kill"
            );
        },
    );
    let mut c = cluster.connect(DB);
    let victims: i64 = c
        .query_one(
            "SELECT count(*) FROM api_keys.keys WHERE name = 'victim'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(victims, 0, "the killed issue left a key row");

    // A backend killed after api_key_issue returned, before COMMIT.
    let mut uncommitted = String::new();
    under_load(
        &cluster,
        "kill -9 of a backend before its issue commits",
        || {
            let mut victim = cluster.connect(DB);
            let pid = backend_pid(&mut victim);
            victim.batch_execute("BEGIN").unwrap();
            uncommitted = victim
            .query_one(
                "SELECT id::text FROM api_keys.api_key_issue('victim', 'service', 'production')",
                &[],
            )
            .unwrap()
            .get(0);
            kill_9(pid);
            assert!(victim.batch_execute("COMMIT").is_err());
        },
    );
    left_no_trace(&cluster, &uncommitted);

    under_load(&cluster, "kill -9 of the worker", || {
        kill_9(worker_pid(&mut cluster.connect(DB)).unwrap());
    });

    under_load(&cluster, "an immediate shutdown", || {
        cluster.restart("immediate");
    });
}
