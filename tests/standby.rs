//! Hot standbys: keys verify there and a revocation on the primary is seen once
//! replayed; the usage and last use of a standby's verifications reach the primary
//! (`api_keys.primary_conninfo`), exactly once, through a primary that is down for a
//! while, a clean restart of the standby and a promotion; per-hour limits hold across
//! the primary and its standby, per-minute limits per server; the role the standby
//! connects as needs `api_keys_standby`.
//!
//! The primary's workers flush every second (WORKER_CONF, inherited by the standby).

mod common;

use common::standby::{issue_replayed, pair, usage, ARRIVAL, SETTLE};
use common::{
    issue, running_worker, stats, verify, wait_for, wait_for_room_in_hour, wait_for_room_in_window,
    Client, Cluster, Issued, DB, WORKER_CONF,
};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// (last_used_at is set, host(last_used_ip)) of `key`.
fn last_use(c: &mut Client, key: &Issued) -> (bool, Option<String>) {
    let row = c
        .query_one(
            "SELECT last_used_at IS NOT NULL, host(last_used_ip) \
               FROM api_keys.keys WHERE id = $1::text::uuid",
            &[&key.id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Wait until `on` counts exactly `want` for `key`; fails at once when it counts more,
/// and after [`ARRIVAL`] when it still counts less (with the logs of both servers).
fn wait_for_usage(on: &Cluster, key: &Issued, want: (i64, i64), other: &Cluster) {
    let mut c = on.connect(DB);
    let start = Instant::now();
    let mut got = usage(&mut c, key);
    while got != want && got.0 <= want.0 && got.1 <= want.1 && start.elapsed() < ARRIVAL {
        sleep(Duration::from_millis(100));
        got = usage(&mut c, key);
    }
    assert_eq!(
        got,
        want,
        "(verified, rejected) of key {} on {}\nits server.log:\n{}\nthe other server's log:\n{}",
        key.id,
        on.socket_dir(),
        on.server_log(),
        other.server_log()
    );
}

/// After [`SETTLE`], `on` still counts exactly `want` for `key` (nothing sent twice).
fn stays(on: &Cluster, key: &Issued, want: (i64, i64), other: &Cluster) {
    sleep(SETTLE);
    let got = usage(&mut on.connect(DB), key);
    assert_eq!(
        got,
        want,
        "(verified, rejected) of key {} on {} changed\nother server's log:\n{}",
        key.id,
        on.socket_dir(),
        other.server_log()
    );
}

fn ok(c: &mut Client, key: &Issued, ip: Option<&str>) {
    assert_eq!(verify(c, &key.key, ip, None).reason, "ok");
}

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
    primary.wait_for_replay_on(&standby);
    // Replayed means visible: the standby's next verification refuses the key.
    assert_eq!(verify(&mut s, &k.key, None, None).reason, "revoked");
    assert_eq!(verify(&mut s, &other.key, None, None).reason, "ok");

    // Without api_keys.primary_conninfo the standby sends nothing: its counts stay in its
    // memory, no usage is written on either server, and the standby (read-only, with a
    // launcher of its own now) logs no error.
    running_worker(&primary);
    running_worker(&standby);
    sleep(SETTLE);
    primary.wait_for_replay_on(&standby);
    assert_eq!(usage(&mut p, &k), (0, 0));
    assert_eq!(usage(&mut p, &other), (0, 0));
    assert_eq!(usage(&mut s, &k), (0, 0));
    assert_eq!(last_use(&mut p, &k), (false, None));
    assert!(
        !standby.server_log().contains("ERROR"),
        "{}",
        standby.server_log()
    );
}

/// (a) Verifications served by the standby, valid and rejected, are added to the
/// primary's own in `api_keys.usage` once, with the last use (and its address); the
/// standby sees the totals once replayed.
#[test]
fn standby_usage_and_last_use_reach_the_primary_once() {
    let (primary, standby) = pair("reach");
    let k = issue_replayed(
        &primary,
        &standby,
        "'reach', 'service', 'production', ARRAY['runs:read']",
    );
    let mut p = primary.connect(DB);
    for _ in 0..2 {
        ok(&mut p, &k, Some("10.0.0.1"));
    }
    wait_for_usage(&primary, &k, (2, 0), &standby);

    let mut s = standby.connect(DB);
    for _ in 0..5 {
        ok(&mut s, &k, Some("10.0.0.9"));
    }
    assert_eq!(
        verify(&mut s, &k.key, None, Some("runs:write")).reason,
        "insufficient_scope"
    );
    wait_for_usage(&primary, &k, (7, 1), &standby);
    wait_for("the standby's last use on the primary", ARRIVAL, || {
        last_use(&mut p, &k) == (true, Some("10.0.0.9".into()))
    });
    stays(&primary, &k, (7, 1), &standby);

    primary.wait_for_replay_on(&standby);
    assert_eq!(usage(&mut s, &k), (7, 1));
    assert_eq!(last_use(&mut s, &k), (true, Some("10.0.0.9".into())));
    assert!(
        !standby.server_log().contains("ERROR"),
        "{}",
        standby.server_log()
    );
}

/// (b) A per-hour limit counts the calls of every server: 3 on the standby and 3 on the
/// primary exhaust a limit of 6 on both, once flushed, merged and replayed. A per-minute
/// limit is per server: the standby's calls leave the primary its own minute.
#[test]
fn per_hour_limits_count_every_server_and_per_minute_limits_stay_per_server() {
    let (primary, standby) = pair("limits");
    let hour = issue_replayed(
        &primary,
        &standby,
        "'hour', 'service', 'production', rate_limit_per_minute => 100, rate_limit_per_hour => 6",
    );
    let minute = issue_replayed(
        &primary,
        &standby,
        "'minute', 'service', 'production', rate_limit_per_minute => 2, rate_limit_per_hour => 1000",
    );
    let mut p = primary.connect(DB);
    let mut s = standby.connect(DB);
    // Everything below happens within one clock hour and one clock minute.
    wait_for_room_in_hour(&mut p, 120.0);
    wait_for_room_in_window(&mut p, 40.0);

    for _ in 0..3 {
        ok(&mut s, &hour, None);
        ok(&mut p, &hour, None);
    }
    for _ in 0..2 {
        ok(&mut s, &minute, None);
    }
    wait_for_usage(&primary, &hour, (6, 0), &standby);
    wait_for_usage(&primary, &minute, (2, 0), &standby);
    primary.wait_for_replay_on(&standby);
    // Two flush intervals: each server has read the others' counts since.
    sleep(SETTLE);

    assert_eq!(verify(&mut p, &hour.key, None, None).reason, "rate_limited");
    assert_eq!(verify(&mut s, &hour.key, None, None).reason, "rate_limited");
    // The standby's two calls this minute are not the primary's.
    ok(&mut p, &minute, None);
    ok(&mut p, &minute, None);
    assert_eq!(
        verify(&mut p, &minute.key, None, None).reason,
        "rate_limited"
    );
    assert_eq!(
        verify(&mut s, &minute.key, None, None).reason,
        "rate_limited"
    );

    sleep(SETTLE);
    assert_eq!(usage(&mut p, &hour).0, 6, "admitted past the hour's limit");
    assert_eq!(usage(&mut p, &minute).0, 4);
}

/// (c) While the primary is down the standby keeps verifying and counting; once it is
/// back the counts arrive, exactly once.
#[test]
fn counts_made_while_the_primary_is_down_arrive_once_when_it_is_back() {
    let (primary, standby) = pair("down");
    let k = issue_replayed(&primary, &standby, "'down', 'service', 'production'");
    let mut s = standby.connect(DB);
    for _ in 0..2 {
        ok(&mut s, &k, None);
    }
    wait_for_usage(&primary, &k, (2, 0), &standby);

    primary.stop_server("fast");
    for _ in 0..5 {
        ok(&mut s, &k, Some("10.0.0.5"));
    }
    // Several rounds find no primary; the standby goes on serving.
    sleep(SETTLE);
    ok(&mut s, &k, Some("10.0.0.5"));

    primary.start_server();
    wait_for_usage(&primary, &k, (8, 0), &standby);
    stays(&primary, &k, (8, 0), &standby);
    assert_eq!(
        last_use(&mut primary.connect(DB), &k),
        (true, Some("10.0.0.5".into()))
    );
}

/// (d) Counts not yet sent survive a clean restart of the standby (the primary being
/// down) and arrive exactly once; counts sent before the restart are not sent again.
#[test]
fn unsent_counts_survive_a_clean_standby_restart_and_arrive_once() {
    let (primary, standby) = pair("restart");
    let k = issue_replayed(&primary, &standby, "'restart', 'service', 'production'");
    let mut s = standby.connect(DB);
    for _ in 0..2 {
        ok(&mut s, &k, None);
    }
    wait_for_usage(&primary, &k, (2, 0), &standby);

    primary.stop_server("fast");
    for _ in 0..4 {
        ok(&mut s, &k, None);
    }
    drop(s);
    standby.restart("fast");
    let mut s = standby.connect(DB);
    ok(&mut s, &k, Some("10.0.0.4"));
    sleep(SETTLE);

    primary.start_server();
    wait_for_usage(&primary, &k, (7, 0), &standby);
    stays(&primary, &k, (7, 0), &standby);
    assert_eq!(
        last_use(&mut primary.connect(DB), &k),
        (true, Some("10.0.0.4".into()))
    );
}

/// (e) Promotion: counts the standby sent before the primary died are in the replicated
/// table, those made after are written by the promoted server's own worker; nothing is
/// lost or counted twice, and new verifications are written locally.
#[test]
fn after_promotion_the_new_primary_writes_its_counts_locally() {
    let (primary, standby) = pair("promote");
    let k = issue_replayed(
        &primary,
        &standby,
        "'promote', 'service', 'production', ARRAY['runs:read']",
    );
    let mut p = primary.connect(DB);
    for _ in 0..2 {
        ok(&mut p, &k, None);
    }
    let mut s = standby.connect(DB);
    for _ in 0..3 {
        ok(&mut s, &k, None);
    }
    wait_for_usage(&primary, &k, (5, 0), &standby);
    primary.wait_for_replay_on(&standby);
    drop(p);

    primary.stop_server("immediate");
    for _ in 0..4 {
        ok(&mut s, &k, Some("10.0.0.6"));
    }
    assert_eq!(
        verify(&mut s, &k.key, None, Some("runs:write")).reason,
        "insufficient_scope"
    );
    standby.promote();
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery);
    wait_for_usage(&standby, &k, (9, 1), &primary);
    wait_for("last use on the promoted server", ARRIVAL, || {
        last_use(&mut s, &k) == (true, Some("10.0.0.6".into()))
    });

    ok(&mut s, &k, Some("10.0.0.7"));
    wait_for_usage(&standby, &k, (10, 1), &primary);
    wait_for("the new last use on the promoted server", ARRIVAL, || {
        last_use(&mut s, &k) == (true, Some("10.0.0.7".into()))
    });
    stays(&standby, &k, (10, 1), &primary);
}

/// (f) Without a conninfo nothing is sent and the counts are kept; a conninfo whose role
/// is not a member of api_keys_standby fails (logged on the standby) and the counts are
/// still kept; once the role is granted they arrive, exactly once.
#[test]
fn counts_wait_for_a_conninfo_whose_role_is_in_api_keys_standby() {
    let primary = Cluster::start_with("role_p", WORKER_CONF);
    let standby = primary.standby("role_s");
    let k = issue_replayed(&primary, &standby, "'role', 'service', 'production'");
    let mut p = primary.connect(DB);
    p.batch_execute("CREATE ROLE ak_sender LOGIN").unwrap();

    let mut s = standby.connect(DB);
    for _ in 0..3 {
        ok(&mut s, &k, Some("10.0.0.3"));
    }
    sleep(SETTLE);
    assert_eq!(usage(&mut p, &k), (0, 0), "sent without a conninfo");

    let log_before = standby.server_log().len();
    standby.append_conf(&[&primary.primary_conninfo_conf("ak_sender")]);
    standby.reload();
    sleep(SETTLE);
    assert_eq!(
        usage(&mut p, &k),
        (0, 0),
        "merged by a role without the grant"
    );
    ok(&mut s, &k, Some("10.0.0.3"));
    let mut failure = String::new();
    wait_for("the standby to log the failure", ARRIVAL, || {
        let log = standby.server_log();
        failure = log
            .get(log_before..)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("permission denied")
                    || l.contains("api_keys_standby")
                    || l.contains("ERROR:")
                    || l.contains("WARNING:")
                    || l.contains("FATAL:")
            })
            .collect::<Vec<_>>()
            .join("\n");
        !failure.is_empty()
    });
    assert!(
        failure.contains("api_keys") || failure.contains("permission denied"),
        "{failure}"
    );
    assert_eq!(usage(&mut p, &k), (0, 0));

    p.batch_execute("GRANT api_keys_standby TO ak_sender")
        .unwrap();
    wait_for_usage(&primary, &k, (4, 0), &standby);
    stays(&primary, &k, (4, 0), &standby);
    assert_eq!(last_use(&mut p, &k), (true, Some("10.0.0.3".into())));
}
