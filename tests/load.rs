//! Load: the pgbench mix of tests/load/mix.sql (90% verify, 5% issue, 5% lifecycle
//! changes) at 8 clients for two minutes (LOAD_SECS), on a preloaded cluster with its
//! worker. No call may fail, every verification must follow from the key row, and
//! afterwards the key table, the audit log and what the committed calls wrote down
//! must agree.

mod common;

use common::load::{self, Run};
use common::{stats, Cluster, DB, WORKER_CONF};

const CLIENTS: u32 = 8;
const SLOTS: u32 = 25;

#[test]
fn two_minutes_of_mixed_load_at_8_clients_fail_nothing_and_keep_the_audit_exact() {
    let secs = load::seconds("LOAD_SECS", 120);
    let cluster = Cluster::start_with("load", WORKER_CONF);
    let mut c = load::prepare(&cluster, DB, CLIENTS, SLOTS);
    let before = stats(&mut c);

    let out = load::spawn_pgbench(
        &cluster,
        DB,
        "mix.sql",
        CLIENTS,
        secs,
        &[&format!("slots={SLOTS}")],
    )
    .wait_with_output()
    .unwrap();
    let run = Run::of(out);

    run.assert_clean();
    let after = stats(&mut c);
    let problems = load::problems(&mut c);
    assert!(
        problems.is_empty(),
        "after the load:\n{}",
        problems.join("\n")
    );
    // Nothing presented was mangled, so nothing was malformed, unknown or a wrong secret.
    for reason in [
        "verify_malformed",
        "verify_not_found",
        "verify_invalid_secret",
    ] {
        assert_eq!(after[reason], before[reason], "{reason}");
    }
    eprintln!(
        "load: {} transactions in {secs} s at {CLIENTS} clients ({:.0} tps), 0 failed; {}",
        run.transactions,
        run.tps,
        load::tally(&mut c)
    );
}
