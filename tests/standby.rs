//! Verification on a streaming hot standby: keys verify there, a revocation on the
//! primary is seen once replayed, and the worker writes nothing on the standby.

mod common;

use common::{
    issue, running_worker, stats, verify, wait_for, worker_pid, Cluster, DB, WORKER_CONF,
};
use std::time::Duration;

#[test]
fn verify_on_a_hot_standby_sees_revocations_after_replay() {
    let primary = Cluster::start_with("primary", WORKER_CONF);
    let mut p = primary.connect_fast(DB);
    let k = issue(
        &mut p,
        "'replicated', 'service', 'production', ARRAY['runs:read']",
    );
    let other = issue(&mut p, "'untouched', 'service', 'production'");

    let standby = primary.standby("standby");
    let mut s = standby.connect(DB);
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    wait_for("the keys on the standby", Duration::from_secs(30), || {
        verify(&mut s, &k.key, None, None).reason == "ok"
    });
    let v = verify(&mut s, &k.key, None, Some("runs:read"));
    assert!(v.valid);
    assert_eq!(v.key_id.as_deref(), Some(k.id.as_str()));
    assert_eq!(
        verify(&mut s, &k.key, None, Some("runs:write")).reason,
        "insufficient_scope"
    );
    assert_eq!(stats(&mut s)["shared_memory"], 1);

    p.execute(
        "SELECT api_keys.api_key_revoke($1::text::uuid, 'leaked')",
        &[&k.id],
    )
    .unwrap();
    let lsn: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    wait_for("replay of the revocation", Duration::from_secs(30), || {
        s.query_one(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .unwrap()
        .get(0)
    });
    // Replayed means visible: the standby's next verification refuses the key.
    assert_eq!(verify(&mut s, &k.key, None, None).reason, "revoked");
    assert_eq!(verify(&mut s, &other.key, None, None).reason, "ok");

    // The worker runs on the primary only; the standby has none and stays read-only.
    assert_eq!(worker_pid(&mut s), None);
    running_worker(&primary);
    assert!(
        !standby.server_log().contains("ERROR"),
        "{}",
        standby.server_log()
    );
}
