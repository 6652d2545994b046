//! Faults in the middle of the pgbench mix (tests/load/mix.sql): kill -9 of a backend
//! while api_key_issue hashes and of one that has issued but not committed, kill -9 of
//! the background worker, and an immediate shutdown. After each, once the server is
//! back: every key a committed call minted verifies as its row says, nothing is
//! half-written, the audit log matches the key table, and the worker runs again.

mod common;

use std::thread;
use std::time::Duration;

use common::load::{self, Run};
use common::{
    kill_9, recovered, running_worker, verify, wait_for, Client, Cluster, DB, WORKER_CONF,
};

const CLIENTS: u32 = 4;
const SLOTS: u32 = 25;
/// Long enough to be cut short by the fault.
const LOAD_SECS: u64 = 60;

fn backend_pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Keys this test issues and sees committed before a fault, kept here, outside the
/// database: they must verify after it, whatever the database itself remembers.
fn witnesses(cluster: &Cluster, phase: i32) -> Vec<String> {
    let mut c = cluster.connect(DB);
    c.execute(
        "SELECT load.mint(1000 + $1, s) FROM generate_series(1, 3) s",
        &[&phase],
    )
    .unwrap();
    c.query(
        "SELECT m.key FROM load.slots s JOIN load.minted m USING (key_id) WHERE s.client = 1000 + $1",
        &[&phase],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Run the mix, apply `fault` two seconds in, wait for pgbench (the fault ends its
/// sessions), wait for the server and its worker, and check everything, including
/// every witness key kept so far (`kept`, which this phase adds to).
fn under_load(
    cluster: &Cluster,
    phase: i32,
    kept: &mut Vec<String>,
    what: &str,
    fault: impl FnOnce(),
) {
    let worker = running_worker(cluster);
    kept.extend(witnesses(cluster, phase));
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
    // The fault ends sessions (FATAL, or a closed connection); no call may fail with an
    // ERROR of its own before it.
    assert!(
        !run.output.contains("ERROR:") && run.failed == 0,
        "{what}: a call failed\n{}",
        run.output
    );
    assert!(
        run.transactions > 0,
        "{what}: no load before the fault\n{}",
        run.output
    );
    let mut c = recovered(cluster, worker);
    for key in kept.iter() {
        let v = verify(&mut c, key, None, None);
        assert_eq!(v.reason, "ok", "{what}: a key committed before it: {v:?}");
    }
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

/// The connection ended under the query: the backend was killed, it raised nothing.
fn cut_off(result: Result<impl Sized, postgres::Error>) -> bool {
    result.is_err_and(|e| e.as_db_error().is_none())
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
    let mut kept = Vec::new();

    // A backend killed while api_key_issue hashes (made slow for this session only).
    under_load(
        &cluster,
        1,
        &mut kept,
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
                cut_off(issuing.join().unwrap()),
                "the issue was not cut off by the kill"
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
        2,
        &mut kept,
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
            assert!(cut_off(victim.batch_execute("COMMIT")));
        },
    );
    left_no_trace(&cluster, &uncommitted);

    under_load(&cluster, 3, &mut kept, "kill -9 of the worker", || {
        kill_9(running_worker(&cluster));
    });

    under_load(&cluster, 4, &mut kept, "an immediate shutdown", || {
        cluster.restart("immediate");
    });
}
