//! Red-team regressions for hot standbys sending usage to their primary (issue 16).
//!
//! - `a_standby_pointed_at_another_cluster_keeps_its_counts_and_limits`: another
//!   cluster's `_merge_usage` refuses a standby that is not its own (system identifiers
//!   differ) instead of answering "gone" for every key, so the standby keeps its counts
//!   (and with them its per-hour limits) until it is pointed back at its primary.
//! - `a_copy_of_a_stopped_standby_does_not_take_its_saved_usage`: the usage a standby
//!   saved at shutdown is restored by that server only, not by a copy of its data
//!   directory (another directory and port), so the copy counts under a source of its
//!   own and neither server's calls are lost or counted twice.
//! - `a_password_in_a_broken_conninfo_never_reaches_the_log`: a conninfo libpq cannot
//!   parse is reported without quoting it (and the password in it).
//!
//! Every server's workers flush every second (WORKER_CONF, inherited by the standbys).

mod common;

use common::standby::{issue_replayed, pair, usage, ARRIVAL, SETTLE};
use common::{verify, wait_for_room_in_hour, Client, Cluster, Issued, DB, WORKER_CONF};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Rows in `api_keys.usage`, any key.
fn usage_rows(c: &mut Client) -> i64 {
    c.query_one("SELECT count(*) FROM api_keys.usage", &[])
        .unwrap()
        .get(0)
}

/// `key`'s rows in `api_keys.usage` (source, hour, verified, rejected), for failure
/// messages.
fn usage_detail(c: &mut Client, key: &Issued) -> String {
    c.query(
        "SELECT source::text, hour::text, verified, rejected \
           FROM api_keys.usage WHERE key_id = $1::text::uuid ORDER BY hour, source",
        &[&key.id],
    )
    .unwrap()
    .iter()
    .map(|r| {
        let (source, hour, v, r): (String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        format!("{source} {hour} verified {v} rejected {r}\n")
    })
    .collect()
}

/// The logs of `servers`, for failure messages.
fn logs(servers: &[(&str, &Cluster)]) -> String {
    servers
        .iter()
        .map(|(name, c)| format!("--- {name} server.log:\n{}", c.server_log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until `on` counts exactly `want` for `key`; fails at once when it counts more,
/// and after [`ARRIVAL`] when it still counts less (with the logs of `servers`).
fn wait_for_usage(on: &Cluster, key: &Issued, want: (i64, i64), servers: &[(&str, &Cluster)]) {
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
        "(verified, rejected) of key {} on {}\nits rows:\n{}{}",
        key.id,
        on.socket_dir(),
        usage_detail(&mut c, key),
        logs(servers)
    );
}

/// After [`SETTLE`], `on` still counts exactly `want` for `key` (nothing sent twice).
fn stays(on: &Cluster, key: &Issued, want: (i64, i64), servers: &[(&str, &Cluster)]) {
    sleep(SETTLE);
    let got = usage(&mut on.connect(DB), key);
    assert_eq!(
        got,
        want,
        "(verified, rejected) of key {} on {} changed\n{}",
        key.id,
        on.socket_dir(),
        logs(servers)
    );
}

/// Wait until `cluster`'s log has `text`.
fn wait_for_log(cluster: &Cluster, text: &str) {
    let start = Instant::now();
    while !cluster.server_log().contains(text) {
        assert!(
            start.elapsed() < ARRIVAL,
            "no {text:?} in {} after {ARRIVAL:?}; server.log:\n{}",
            cluster.socket_dir(),
            cluster.server_log()
        );
        sleep(Duration::from_millis(100));
    }
}

fn ok(c: &mut Client, key: &Issued) {
    assert_eq!(verify(c, &key.key, None, None).reason, "ok");
}

/// Guards: a standby pointed at an unrelated cluster O kept verifying a limited key as
/// "ok" forever, because O answered "gone" for every key and the standby dropped the
/// key's counts (its rate window) each round. Now O refuses (system identifiers
/// differ), the counts stay, the limit holds, and they reach the real primary later.
#[test]
fn a_standby_pointed_at_another_cluster_keeps_its_counts_and_limits() {
    let (primary, standby) = pair("other");
    let other = Cluster::start_with("other_o", WORKER_CONF);
    let all = [
        ("primary", &primary),
        ("standby", &standby),
        ("other", &other),
    ];
    let k = issue_replayed(
        &primary,
        &standby,
        "'other', 'service', 'production', rate_limit_per_hour => 3",
    );

    standby.append_conf(&[&other.primary_conninfo_conf("postgres")]);
    standby.reload();
    // Every worker round after this one reads the new setting.
    sleep(SETTLE);

    let mut s = standby.connect(DB);
    // The five calls and the rounds between them stay in one clock hour.
    wait_for_room_in_hour(&mut s, 90.0);
    let mut reasons = Vec::new();
    for i in 0..5 {
        if i > 0 {
            // More than a flush interval: a worker round between every two calls.
            sleep(Duration::from_millis(1200));
        }
        reasons.push(verify(&mut s, &k.key, None, None).reason);
    }
    assert_eq!(
        reasons,
        ["ok", "ok", "ok", "rate_limited", "rate_limited"],
        "{}",
        logs(&all)
    );
    wait_for_log(&standby, "system identifiers differ");
    sleep(SETTLE);
    assert_eq!(
        usage_rows(&mut other.connect(DB)),
        0,
        "usage written on the other cluster\n{}",
        logs(&all)
    );
    assert_eq!(usage(&mut primary.connect(DB), &k), (0, 0));

    standby.append_conf(&[&primary.primary_conninfo_conf("postgres")]);
    standby.reload();
    wait_for_usage(&primary, &k, (3, 2), &all);
    stays(&primary, &k, (3, 2), &all);
    wait_for_log(&standby, "api_keys worker: usage reaches the primary again");
    assert_eq!(usage_rows(&mut other.connect(DB)), 0);
}

/// Guards: a copy of a cleanly stopped standby's data directory restored the usage the
/// standby saved, under the standby's source; the primary keeps one (the larger) total
/// per source, so the calls of one of the two were lost. Now only the server that saved
/// the file (same host, data directory and port) restores it; the copy counts afresh.
#[test]
fn a_copy_of_a_stopped_standby_does_not_take_its_saved_usage() {
    let (primary, standby) = pair("copy");
    let k = issue_replayed(&primary, &standby, "'copy', 'service', 'production'");

    primary.stop_server("fast");
    let mut s = standby.connect(DB);
    for _ in 0..3 {
        ok(&mut s, &k);
    }
    drop(s);
    standby.stop_server("fast");
    assert!(
        standby
            .server_log()
            .contains("api_keys launcher: usage of 1 keys saved for the next start"),
        "{}",
        standby.server_log()
    );

    let copy = standby.copy_stopped("copy_c");
    let all = [
        ("primary", &primary),
        ("standby", &standby),
        ("copy", &copy),
    ];
    standby.start_server();
    copy.start_server();
    wait_for_log(
        &copy,
        "api_keys launcher: saved usage ignored: it was saved by another server, timeline or role",
    );
    assert!(
        !standby.server_log().contains("saved usage ignored"),
        "{}",
        standby.server_log()
    );

    // The standby's three calls arrive once; the copy has none to send.
    primary.start_server();
    wait_for_usage(&primary, &k, (3, 0), &all);
    stays(&primary, &k, (3, 0), &all);

    // The copy's own calls add to them: it sends its totals under a source of its own.
    // (Under the standby's, its restored 3 were sent, the key's entry then dropped as
    // idle, and its new total of 2 lost against the 3 already there.)
    let mut c = copy.connect(DB);
    for _ in 0..2 {
        ok(&mut c, &k);
    }
    wait_for_usage(&primary, &k, (5, 0), &all);
    stays(&primary, &k, (5, 0), &all);

    // And the standby's next call adds to its restored total: the restored hour's entry
    // is kept while its hour runs (it was dropped as idle once sent, and the new total,
    // 1, lost against the 3 already written).
    ok(&mut standby.connect(DB), &k);
    wait_for_usage(&primary, &k, (6, 0), &all);
    stays(&primary, &k, (6, 0), &all);
}

/// Guards: a conninfo libpq cannot parse was logged with libpq's message, which quotes
/// the offending token (`invalid percent-encoded token: "Pw%zzSecret"`): the password.
/// Now the standby says only that the setting is not a valid connection string.
#[test]
fn a_password_in_a_broken_conninfo_never_reaches_the_log() {
    let (primary, standby) = pair("secret");
    let k = issue_replayed(&primary, &standby, "'secret', 'service', 'production'");

    standby.append_conf(&[
        "api_keys.primary_conninfo = 'postgresql://postgres:Pw%zzSecret@localhost/'",
    ]);
    standby.reload();
    sleep(SETTLE);
    ok(&mut standby.connect(DB), &k);
    wait_for_log(
        &standby,
        "api_keys worker: usage could not be sent to the primary (kept, tried again every round): \
         api_keys.primary_conninfo is not a valid connection string",
    );
    // Some more rounds fail the same way.
    sleep(SETTLE);

    let log = standby.server_log();
    // PostgreSQL itself logs a changed setting's new value at a reload; nothing else may.
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("zzSecret"))
        .filter(|l| !l.contains("parameter \"api_keys.primary_conninfo\""))
        .collect();
    assert!(
        leaks.is_empty(),
        "the password is in the log:\n{}",
        leaks.join("\n")
    );
    assert_eq!(usage(&mut primary.connect(DB), &k), (0, 0));
}
