//! The shared-memory runtime on real clusters: rate limits across sessions, usage and
//! last use flushed by the background worker, expiry by the worker, clean shutdown,
//! crash, and the worker coming back after it is killed.

mod common;

use common::{
    cheap_hashing, issue, kill_9, recovered, running_worker, stats, total_verified, verify,
    wait_for, wait_for_room_in_hour, wait_for_room_in_window, Client, Cluster, DB, WORKER_CONF,
};
use std::time::Duration;

fn flushes(c: &mut Client) -> i64 {
    stats(c)["flushes"]
}

/// Wait for two completed flushes: whatever happened before this call is written.
fn wait_for_flush(cluster: &Cluster) {
    let mut c = cluster.connect(DB);
    let start = flushes(&mut c);
    wait_for("two flushes by the worker", Duration::from_secs(30), || {
        flushes(&mut c) >= start + 2
    });
}

#[test]
fn rate_limits_hold_exactly_across_concurrent_sessions() {
    let cluster = Cluster::start("limits");
    let mut c = cluster.connect_fast(DB);
    let minute = issue(
        &mut c,
        "'per minute', 'service', 'production', rate_limit_per_minute => 40",
    );
    let hour = issue(
        &mut c,
        "'per hour', 'service', 'production', rate_limit_per_minute => 1000, rate_limit_per_hour => 7",
    );
    wait_for_room_in_window(&mut c, 30.0);
    let counts: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (cluster, minute, hour) = (&cluster, &minute, &hour);
                s.spawn(move || {
                    let mut c = cluster.connect(DB);
                    let mut ok = (0, 0);
                    for _ in 0..25 {
                        ok.0 += (verify(&mut c, &minute.key, None, None).reason == "ok") as usize;
                        ok.1 += (verify(&mut c, &hour.key, None, None).reason == "ok") as usize;
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_minute: usize = counts.iter().map(|c| c.0).sum();
    let per_hour: usize = counts.iter().map(|c| c.1).sum();
    assert_eq!(per_minute, 40, "{counts:?}");
    assert_eq!(per_hour, 7, "{counts:?}");
    let d = stats(&mut c);
    assert_eq!(d["verify_rate_limited"], 100 - 40 + 100 - 7, "{d:?}");

    // Over its limit, a forged presentation is refused by its MAC: it is not told the
    // key is busy, and costs no argon2. (A key issued before signing, over its limit,
    // answers rate_limited to a presentation the memo does not know, also unhashed.)
    let wrong = common::forge_secret(&minute.key);
    let before = stats(&mut c)["argon2_runs"];
    assert_eq!(verify(&mut c, &wrong, None, None).reason, "invalid_secret");
    assert_eq!(stats(&mut c)["argon2_runs"], before);
    let unsigned = common::issue_unsigned(
        &mut c,
        "'unsigned hour', 'service', 'production', rate_limit_per_hour => 1",
    );
    let before = stats(&mut c)["argon2_runs"];
    assert_eq!(verify(&mut c, &unsigned.key, None, None).reason, "ok");
    let wrong = common::forge_secret(&unsigned.key);
    assert_eq!(verify(&mut c, &wrong, None, None).reason, "rate_limited");
    assert_eq!(stats(&mut c)["argon2_runs"], before + 1);
    // Only calls that pass every other check consume quota.
    let scoped = issue(
        &mut c,
        "'scoped', 'service', 'production', ARRAY['runs:read'], rate_limit_per_minute => 2",
    );
    for _ in 0..5 {
        assert_eq!(
            verify(&mut c, &scoped.key, None, Some("runs:write")).reason,
            "insufficient_scope"
        );
    }
    assert_eq!(verify(&mut c, &scoped.key, None, None).reason, "ok");
    assert_eq!(verify(&mut c, &scoped.key, None, None).reason, "ok");
    assert_eq!(
        verify(&mut c, &scoped.key, None, None).reason,
        "rate_limited"
    );
}

#[test]
fn default_limits_come_from_the_settings_and_zero_is_unlimited() {
    let cluster = Cluster::start("defaults");
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'default', 'service', 'production'");
    wait_for_room_in_window(&mut c, 20.0);
    c.batch_execute("SET api_keys.default_rate_limit_per_minute = 3")
        .unwrap();
    let ok = (0..6)
        .filter(|_| verify(&mut c, &k.key, None, None).reason == "ok")
        .count();
    assert_eq!(ok, 3);
    c.batch_execute(
        "SET api_keys.default_rate_limit_per_minute = 0; SET api_keys.default_rate_limit_per_hour = 0",
    )
    .unwrap();
    assert!((0..200).all(|_| verify(&mut c, &k.key, None, None).reason == "ok"));
}

#[test]
fn usage_and_last_use_are_flushed_without_writes_in_verify() {
    let cluster = Cluster::start_with("usage", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'used', 'service', 'production', ARRAY['runs:read']",
    );
    let idle = issue(&mut c, "'idle', 'service', 'production'");
    // Verification inside a read-only transaction, as PostgREST runs GET requests.
    c.batch_execute("BEGIN READ ONLY").unwrap();
    for _ in 0..3 {
        assert_eq!(verify(&mut c, &k.key, Some("10.1.2.3"), None).reason, "ok");
    }
    for _ in 0..2 {
        assert_eq!(
            verify(&mut c, &k.key, None, Some("runs:write")).reason,
            "insufficient_scope"
        );
    }
    c.batch_execute("COMMIT").unwrap();
    wait_for_flush(&cluster);
    let row = c
        .query_one(
            "SELECT sum(verified)::int8, sum(rejected)::int8 FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 2));
    let row = c
        .query_one(
            "SELECT last_used_ip::text, last_used_at > now() - interval '1 minute' FROM api_keys.key_list WHERE id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("10.1.2.3/32")
    );
    assert!(row.get::<_, bool>(1));
    let idle_used: Option<String> = c
        .query_one(
            "SELECT last_used_at::text FROM api_keys.keys WHERE id = $1::text::uuid",
            &[&idle.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(idle_used, None);
    // Both views see it; the last use is no edit, so nothing was audited.
    let by_owner: i64 = c
        .query_one(
            "SELECT sum(verified)::int8 FROM api_keys.usage_by_owner WHERE owner = 'postgres'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(by_owner, 3);
    let by_key: i64 = c
        .query_one(
            "SELECT sum(rejected)::int8 FROM api_keys.usage_by_key WHERE key_id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(by_key, 2);
    let updates: i64 = c
        .query_one(
            "SELECT count(*) FROM api_keys.audit_log WHERE action = 'updated'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(updates, 0);
}

#[test]
fn the_worker_expires_keys_and_audits_each() {
    let cluster = Cluster::start_with("expiry", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'short-lived', 'service', 'production', expires_at => clock_timestamp() + interval '1 second'",
    );
    let keep = issue(&mut c, "'long-lived', 'service', 'production'");
    // Expired at once for verify, before any sweep: a REPEATABLE READ snapshot taken
    // while the key was active keeps seeing its row unswept.
    let mut t = c.transaction().unwrap();
    t.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    let status: String = t
        .query_one(
            "SELECT status::text FROM api_keys.keys WHERE id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(verify(&mut t, &k.key, None, None).reason, "expired");
    t.commit().unwrap();
    wait_for_flush(&cluster);
    let status: String = c
        .query_one(
            "SELECT status::text FROM api_keys.keys WHERE id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "expired");
    let audited = c
        .query_one(
            "SELECT count(*), min(app_actor) FROM api_keys.audit_log WHERE key_id = $1::text::uuid AND action = 'expired'",
            &[&k.id],
        )
        .unwrap();
    assert_eq!(audited.get::<_, i64>(0), 1);
    assert_eq!(
        audited.get::<_, Option<String>>(1).as_deref(),
        Some("api_keys worker")
    );
    assert_eq!(verify(&mut c, &keep.key, None, None).reason, "ok");
    // Only admins (and superusers) may run it.
    c.batch_execute("CREATE ROLE plain").unwrap();
    let denied = c
        .batch_execute("SET ROLE plain; SELECT api_keys.expire_due()")
        .unwrap_err();
    assert_eq!(denied.code().map(|s| s.code()), Some("42501"));
}

#[test]
fn clean_shutdown_flushes_and_a_crash_loses_at_most_the_unflushed_counts() {
    // A long interval: only the shutdown flush can write these counts.
    let cluster = Cluster::start_with("shutdown", &["api_keys.flush_interval = 3600"]);
    let mut c = cluster.connect_fast(DB);
    running_worker(&cluster);
    let keys: Vec<_> = (0..3)
        .map(|i| issue(&mut c, &format!("'k{i}', 'service', 'production'")))
        .collect();
    for _ in 0..5 {
        assert_eq!(verify(&mut c, &keys[0].key, None, None).reason, "ok");
    }
    drop(c);
    cluster.restart("fast");
    let mut c = cluster.connect_fast(DB);
    // Saved at the shutdown, written by the first round after the start.
    wait_for("the saved counts written", Duration::from_secs(30), || {
        total_verified(&mut c) >= 5
    });
    assert_eq!(total_verified(&mut c), 5, "{}", cluster.server_log());

    for _ in 0..4 {
        assert_eq!(verify(&mut c, &keys[1].key, None, None).reason, "ok");
    }
    drop(c);
    cluster.restart("immediate");
    let mut c = cluster.connect_fast(DB);
    // The 4 unflushed counts are gone with the crash; nothing else is.
    assert_eq!(total_verified(&mut c), 5);
    for k in &keys {
        assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    }
    let issued: i64 = c
        .query_one(
            "SELECT count(*) FROM api_keys.audit_log WHERE action = 'issued'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(issued, 3);
}

/// A crash forgets the per-minute windows, not the hour: calls written before it count
/// as another server's (before 0.5.0, a crash gave every key its whole hour again).
#[test]
fn a_crash_keeps_the_written_calls_of_the_hour() {
    let cluster = Cluster::start_with("crash_hour", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    wait_for_room_in_hour(&mut c, 60.0);
    let k = issue(
        &mut c,
        "'hourly', 'service', 'production', rate_limit_per_minute => 100, rate_limit_per_hour => 3",
    );
    for _ in 0..3 {
        assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    }
    wait_for_flush(&cluster);
    assert_eq!(total_verified(&mut c), 3);
    drop(c);
    cluster.restart("immediate");
    let mut c = cluster.connect_fast(DB);
    // The first round after the start reads the hour's rows.
    wait_for_flush(&cluster);
    assert_eq!(verify(&mut c, &k.key, None, None).reason, "rate_limited");
    assert_eq!(total_verified(&mut c), 3);
}

/// A clean restart goes on under the same usage source from every key's totals of the
/// hour, also those of keys fully written before it (before, only keys with unwritten
/// counts were saved: a written key's new calls were swallowed by the larger total
/// already written, and its hour started again).
#[test]
fn a_clean_restart_goes_on_from_every_keys_totals() {
    let cluster = Cluster::start_with("restart_totals", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    wait_for_room_in_hour(&mut c, 120.0);
    let written = issue(
        &mut c,
        "'written', 'service', 'production', rate_limit_per_minute => 100, rate_limit_per_hour => 6",
    );
    let held = issue(&mut c, "'held', 'service', 'production'");
    let verified = |c: &mut Client, id: &str| -> i64 {
        c.query_one(
            "SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    for _ in 0..5 {
        assert_eq!(verify(&mut c, &written.key, None, None).reason, "ok");
    }
    assert_eq!(verify(&mut c, &held.key, None, None).reason, "ok");
    // A user's lock keeps `held` unwritten (so the shutdown saves a file).
    let mut holder = cluster.connect(DB);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM api_keys.keys WHERE id = '{}' FOR UPDATE",
            held.id
        ))
        .unwrap();
    wait_for("the written key's flush", Duration::from_secs(30), || {
        verified(&mut c, &written.id) == 5
    });
    drop((c, holder));
    cluster.restart("fast");
    let mut c = cluster.connect_fast(DB);
    assert_eq!(verify(&mut c, &written.key, None, None).reason, "ok");
    assert_eq!(
        verify(&mut c, &written.key, None, None).reason,
        "rate_limited",
        "5 before the restart + 1 after: the limit of 6"
    );
    wait_for("both keys' usage", Duration::from_secs(30), || {
        verified(&mut c, &written.id) == 6 && verified(&mut c, &held.id) == 1
    });
}

/// The worker is stopped by `stop(session, worker pid)`; a new one must come, within
/// `within` of the stop, and write the usage of a verification made after it.
fn the_worker_comes_back(name: &str, within: Duration, stop: impl FnOnce(&mut Client, i32)) {
    let cluster = Cluster::start_with(name, WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'survivor', 'service', 'production'");
    let pid = running_worker(&cluster);
    stop(&mut c, pid);
    let started = std::time::Instant::now();
    drop(c);
    let mut c = recovered(&cluster, pid);
    assert!(
        started.elapsed() < within,
        "the worker came back after {:?}",
        started.elapsed()
    );
    cheap_hashing(&mut c);
    assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    wait_for_flush(&cluster);
    assert_eq!(total_verified(&mut c), 1);
}

/// SIGKILL: the postmaster treats it as a crash, resets every backend and starts over.
#[test]
fn the_worker_comes_back_after_it_is_killed() {
    the_worker_comes_back("killed", Duration::from_secs(60), |_, pid| kill_9(pid));
}

/// pg_terminate_backend (SIGTERM, as a shutdown sends) is not the end of the worker:
/// the postmaster starts it again within one flush interval (1 s) plus 5 s (and a
/// margin for a busy machine's polling).
#[test]
fn the_worker_comes_back_after_pg_terminate_backend() {
    the_worker_comes_back("terminated", Duration::from_secs(1 + 5 + 4), |c, pid| {
        let terminated: bool = c
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(terminated);
    });
}

#[test]
fn without_preload_limits_hold_per_session_and_say_so() {
    let cluster = Cluster::start_with("nopreload", &["shared_preload_libraries = ''"]);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'local', 'service', 'production', rate_limit_per_minute => 2",
    );
    wait_for_room_in_window(&mut c, 20.0);
    let ok = (0..5)
        .filter(|_| verify(&mut c, &k.key, None, None).reason == "ok")
        .count();
    assert_eq!(ok, 2, "a limited key never gets unlimited use");
    assert!(
        cluster
            .server_log()
            .contains("rate limits are counted per session"),
        "the server log says why limits are per session"
    );
    assert_eq!(stats(&mut c)["shared_memory"], 0);
}

/// The launcher terminated while counts wait to be written: they are saved and taken
/// back by the next launcher, and written once (not once more per launcher).
#[test]
fn a_terminated_launcher_neither_loses_nor_doubles_counts() {
    let cluster = Cluster::start_with("relaunch", &["api_keys.flush_interval = 3600"]);
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'counted', 'service', 'production'");
    for _ in 0..5 {
        assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    }
    let pid = running_worker(&cluster);
    let terminated: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(terminated);
    let mut c = recovered(&cluster, pid);
    assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    c.batch_execute("ALTER SYSTEM SET api_keys.flush_interval = 1")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("the six uses written", Duration::from_secs(30), || {
        total_verified(&mut c) >= 6
    });
    wait_for_flush(&cluster);
    assert_eq!(total_verified(&mut c), 6, "{}", cluster.server_log());
}
