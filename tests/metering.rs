//! Metering: credits (remaining uses, cost, refill), owner-wide limits, the limit state
//! in `api_key_verify`'s answer and usage per outcome; across sessions, a crash, and a
//! primary with its standby. Workers flush every second (WORKER_CONF).

mod common;

use common::standby::{issue_replayed, pair, ARRIVAL, SETTLE};
use common::{
    cheap_hashing, forge_secret, issue, wait_for, wait_for_room_in_hour, wait_for_room_in_window,
    Client, Cluster, Issued, DB, WORKER_CONF,
};
use std::sync::{Arc, Barrier};
use std::thread::sleep;
use std::time::Duration;

/// (reason, rate_limit, rate_remaining, seconds to rate_reset, remaining_uses) of one
/// call spending `cost` (NULL: the default).
type State = (String, Option<i32>, Option<i32>, Option<f64>, Option<i64>);

fn call(c: &mut Client, key: &str, cost: Option<i32>) -> State {
    let r = c
        .query_one(
            "SELECT reason, rate_limit, rate_remaining, \
                    extract(epoch FROM rate_reset - now())::float8, remaining_uses \
               FROM api_keys.api_key_verify($1::text, NULL, NULL, coalesce($2::int4, 1))",
            &[&key, &cost],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

fn reason(c: &mut Client, key: &str, cost: i32) -> String {
    call(c, key, Some(cost)).0
}

/// The key's remaining uses as `key_list` shows them (as written by the worker).
fn listed_remaining(c: &mut Client, key: &Issued) -> Option<i64> {
    c.query_one(
        "SELECT remaining_uses FROM api_keys.key_list WHERE id = $1::text::uuid",
        &[&key.id],
    )
    .unwrap()
    .get(0)
}

fn wait_for_listed(c: &mut Client, key: &Issued, want: i64) {
    wait_for("the spending written", ARRIVAL, || {
        listed_remaining(c, key) == Some(want)
    });
}

#[test]
fn credits_run_out_exactly_across_eight_sessions() {
    let cluster = Cluster::start_with("credits_exact", WORKER_CONF);
    let mut c = cluster.connect(DB);
    let k = issue(
        &mut c,
        "'metered', 'service', 'production', rate_limit_per_minute => 1000000, \
         rate_limit_per_hour => 1000000, remaining_uses => 500",
    );
    let start = Arc::new(Barrier::new(8));
    let sessions: Vec<_> = (0..8)
        .map(|_| {
            let (mut s, key, start) = (cluster.connect(DB), k.key.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let (mut ok, mut refused) = (0, 0);
                // Each session goes on until it is refused three times in a row.
                while refused < 3 {
                    match reason(&mut s, &key, 1).as_str() {
                        "ok" => {
                            ok += 1;
                            refused = 0;
                        }
                        "usage_exceeded" => refused += 1,
                        other => panic!("unexpected reason {other}"),
                    }
                }
                ok
            })
        })
        .collect();
    let admitted: i64 = sessions.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 500, "exactly the uses granted");
    wait_for_listed(&mut c, &k, 0);
    // Once out of uses every call is refused: each session ends with its three.
    let mut counts: (i64, i64, i64) = (0, 0, 0);
    wait_for("every call written", ARRIVAL, || {
        let row = c
            .query_one(
                "SELECT coalesce(sum(verified), 0)::int8, coalesce(sum(usage_exceeded), 0)::int8, \
                        coalesce(sum(rejected), 0)::int8 \
                   FROM api_keys.usage_by_key WHERE key_id = $1::text::uuid",
                &[&k.id],
            )
            .unwrap();
        counts = (row.get(0), row.get(1), row.get(2));
        counts == (500, 24, 24)
    });
    assert_eq!(
        counts,
        (500, 24, 24),
        "(verified, usage_exceeded, rejected)"
    );
}

#[test]
fn a_call_spends_its_cost_and_answers_the_limit_state() {
    let cluster = Cluster::start_with("credits_cost", WORKER_CONF);
    let mut c = cluster.connect(DB);
    let k = issue(
        &mut c,
        "'costly', 'service', 'production', rate_limit_per_minute => 50, \
         rate_limit_per_hour => 1000, remaining_uses => 10",
    );
    wait_for_room_in_window(&mut c, 20.0);
    let (why, limit, left, reset, uses) = call(&mut c, &k.key, Some(3));
    assert_eq!(
        (why.as_str(), limit, left, uses),
        ("ok", Some(50), Some(49), Some(7))
    );
    let reset = reset.unwrap();
    assert!(reset > 0.0 && reset <= 60.0, "the minute's end: {reset}");
    assert_eq!(
        call(&mut c, &k.key, Some(0)).4,
        Some(7),
        "a free call spends nothing"
    );
    assert_eq!(call(&mut c, &k.key, None).4, Some(6), "NULL costs one");
    let refused = call(&mut c, &k.key, Some(8));
    assert_eq!((refused.0.as_str(), refused.4), ("usage_exceeded", Some(6)));
    for cost in [-1, 1_000_001] {
        assert_eq!(
            call(&mut c, &k.key, Some(cost)),
            ("malformed".into(), None, None, None, None)
        );
    }
    // A wrong secret learns nothing of the key's limits.
    let wrong = call(&mut c, &forge_secret(&k.key), None);
    assert_eq!(wrong, ("invalid_secret".into(), None, None, None, None));
    // An unlimited key: no uses column; default limits still show.
    let free = issue(&mut c, "'free', 'service', 'production'");
    let (why, limit, _, _, uses) = call(&mut c, &free.key, None);
    assert_eq!((why.as_str(), limit, uses), ("ok", Some(100), None));
    // The default cost from the three-argument form.
    let r: i64 = c
        .query_one(
            "SELECT remaining_uses FROM api_keys.api_key_verify($1::text)",
            &[&k.key],
        )
        .unwrap()
        .get(0);
    assert_eq!(r, 5);
    wait_for_listed(&mut c, &k, 5);
}

#[test]
fn a_refill_at_the_boundary_gives_the_refill_amount() {
    let cluster = Cluster::start_with("credits_refill", WORKER_CONF);
    let mut c = cluster.connect(DB);
    cheap_hashing(&mut c);
    let daily = issue(
        &mut c,
        "'daily', 'service', 'production', remaining_uses => 2, refill_amount => 50, \
         refill_interval => 'daily'",
    );
    let once = issue(
        &mut c,
        "'once', 'service', 'production', remaining_uses => 2",
    );
    // Both were granted yesterday and spent it all then (as the worker writes it).
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         UPDATE api_keys.keys
            SET uses_from = date_trunc('day', now(), 'UTC') - interval '10 hours',
                uses_period = date_trunc('day', now(), 'UTC') - interval '10 hours',
                uses_spent = 2
          WHERE id IN ('{}', '{}');
         RESET session_replication_role",
        daily.id, once.id
    ))
    .unwrap();
    assert_eq!(
        call(&mut c, &once.key, None).0,
        "usage_exceeded",
        "no refill"
    );
    let (why, _, _, _, uses) = call(&mut c, &daily.key, None);
    assert_eq!(
        (why.as_str(), uses),
        ("ok", Some(49)),
        "refilled at midnight UTC"
    );
    wait_for_listed(&mut c, &daily, 49);
    let (period, next_is_tomorrow): (bool, bool) = {
        let r = c
            .query_one(
                "SELECT uses_period = date_trunc('day', now(), 'UTC'), \
                        refill_at = date_trunc('day', now(), 'UTC') + interval '1 day' \
                   FROM api_keys.keys k JOIN api_keys.key_list l USING (id) \
                  WHERE id = $1::text::uuid",
                &[&daily.id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(period, "the worker wrote today's period");
    assert!(next_is_tomorrow, "the next refill is the next midnight");
}

#[test]
fn a_crash_loses_at_most_one_flush_interval_of_spending_never_a_use() {
    let cluster = Cluster::start_with("credits_crash", WORKER_CONF);
    let mut c = cluster.connect(DB);
    let k = issue(
        &mut c,
        "'crash', 'service', 'production', rate_limit_per_minute => 100000, \
         rate_limit_per_hour => 100000, remaining_uses => 100",
    );
    for _ in 0..30 {
        assert_eq!(reason(&mut c, &k.key, 1), "ok");
    }
    wait_for_listed(&mut c, &k, 70);
    for _ in 0..10 {
        assert_eq!(reason(&mut c, &k.key, 1), "ok");
    }
    drop(c);
    // Straight away, before the next flush can write the last ten.
    cluster.stop_server("immediate");
    cluster.start_server();
    let mut c = cluster.connect(DB);
    let mut after = 0;
    while reason(&mut c, &k.key, 1) == "ok" {
        after += 1;
        assert!(after <= 100, "the crash gave the key its uses back");
    }
    let total = 40 + after;
    assert!(
        (100..=110).contains(&total),
        "100 granted; at most the 10 unwritten again: {total}"
    );
}

#[test]
fn credits_hold_across_a_primary_and_its_standby() {
    let (primary, standby) = pair("credits");
    let k = issue_replayed(
        &primary,
        &standby,
        "'shared', 'service', 'production', rate_limit_per_minute => 100000, \
         rate_limit_per_hour => 100000, remaining_uses => 40",
    );
    let mut p = primary.connect(DB);
    let mut s = standby.connect(DB);
    for _ in 0..20 {
        assert_eq!(reason(&mut p, &k.key, 1), "ok");
    }
    wait_for_listed(&mut p, &k, 20);
    primary.wait_for_replay_on(&standby);
    let mut on_standby = 0;
    while reason(&mut s, &k.key, 1) == "ok" {
        on_standby += 1;
        assert!(on_standby <= 40);
    }
    assert_eq!(
        on_standby, 20,
        "the standby starts from what the primary wrote"
    );
    // The standby's spending reaches the primary, whose own count then has none left.
    wait_for_listed(&mut p, &k, 0);
    wait_for(
        "the primary to read the standby's spending",
        ARRIVAL,
        || reason(&mut p, &k.key, 0) == "usage_exceeded",
    );
}

#[test]
fn owner_limits_are_shared_by_every_key_of_the_owner() {
    let cluster = Cluster::start_with("owner_limits", WORKER_CONF);
    let mut admin = cluster.connect(DB);
    let keys: Vec<_> = (0..3)
        .map(|i| {
            issue(
                &mut admin,
                &format!("'k{i}', 'service', 'production', owner => 'alice', rate_limit_per_minute => 1000"),
            )
        })
        .collect();
    let bob = issue(&mut admin, "'bob', 'service', 'production', owner => 'bob'");
    let r = admin
        .query_one(
            "SELECT keys FROM api_keys.api_key_set_owner_limits('alice', 12, 1000)",
            &[],
        )
        .unwrap();
    assert_eq!(
        r.get::<_, i32>(0),
        3,
        "the limits reach every key of the owner"
    );
    // One issued after the change gets them too.
    let late = issue(
        &mut admin,
        "'late', 'service', 'production', owner => 'alice'",
    );
    wait_for_room_in_window(&mut admin, 30.0);
    let start = Arc::new(Barrier::new(4));
    let sessions: Vec<_> = (0..4)
        .map(|t| {
            let mut s = cluster.connect(DB);
            let mut mine: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
            mine.push(late.key.clone());
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut ok = 0;
                for i in 0..10 {
                    let key = &mine[(t + i) % mine.len()];
                    let (why, limit, left, _, _) = call(&mut s, key, None);
                    match why.as_str() {
                        "ok" => ok += 1,
                        "rate_limited" => assert_eq!((limit, left), (Some(12), Some(0))),
                        other => panic!("unexpected {other}"),
                    }
                }
                ok
            })
        })
        .collect();
    let admitted: i32 = sessions.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 12, "alice's keys share her 12 a minute");
    assert_eq!(call(&mut admin, &bob.key, None).0, "ok", "bob is not alice");
    // Removed: each key's own limits again.
    admin
        .execute(
            "SELECT api_keys.api_key_set_owner_limits('alice', NULL, NULL)",
            &[],
        )
        .unwrap();
    assert_eq!(call(&mut admin, &keys[0].key, None).0, "ok");
}

#[test]
fn owner_hourly_limits_count_the_standby_too() {
    let (primary, standby) = pair("owner_hour");
    let mut p = primary.connect(DB);
    p.execute(
        "SELECT api_keys.api_key_set_owner_limits('carol', NULL, 30)",
        &[],
    )
    .unwrap();
    let a = issue_replayed(
        &primary,
        &standby,
        "'a', 'service', 'production', owner => 'carol', rate_limit_per_minute => 1000, rate_limit_per_hour => 1000",
    );
    let b = issue_replayed(
        &primary,
        &standby,
        "'b', 'service', 'production', owner => 'carol', rate_limit_per_minute => 1000, rate_limit_per_hour => 1000",
    );
    let mut s = standby.connect(DB);
    wait_for_room_in_hour(&mut p, 120.0);
    for _ in 0..20 {
        assert_eq!(reason(&mut p, &a.key, 1), "ok");
    }
    wait_for("the primary's calls written", ARRIVAL, || {
        p.query_one(
            "SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&a.id],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 20
    });
    primary.wait_for_replay_on(&standby);
    // The standby's worker has read them since.
    sleep(SETTLE);
    let mut on_standby = 0;
    while reason(&mut s, &b.key, 1) == "ok" {
        on_standby += 1;
        assert!(on_standby <= 30);
    }
    assert_eq!(
        on_standby, 10,
        "30 an hour for carol, 20 of them on the primary"
    );
}

#[test]
fn usage_counts_each_outcome() {
    let cluster = Cluster::start_with("outcomes", WORKER_CONF);
    let mut c = cluster.connect(DB);
    cheap_hashing(&mut c);
    let k = issue(
        &mut c,
        "'outcomes', 'service', 'production', ARRAY['runs:read'], \
         allowed_cidrs => ARRAY['10.0.0.0/8']::cidr[], rate_limit_per_minute => 3, \
         remaining_uses => 1000",
    );
    wait_for_room_in_window(&mut c, 20.0);
    let verify = |c: &mut Client, ip: &str, scope: Option<&str>| -> String {
        c.query_one(
            "SELECT reason FROM api_keys.api_key_verify($1::text, $2::text::inet, $3::text)",
            &[&k.key, &ip, &scope],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        verify(&mut c, "10.1.1.1", Some("runs:write")),
        "insufficient_scope"
    );
    assert_eq!(verify(&mut c, "192.168.1.1", None), "ip_not_allowed");
    for _ in 0..3 {
        assert_eq!(verify(&mut c, "10.1.1.1", None), "ok");
    }
    assert_eq!(verify(&mut c, "10.1.1.1", None), "rate_limited");
    c.execute(
        "SELECT api_keys.api_key_suspend($1::text::uuid, 'outcomes')",
        &[&k.id],
    )
    .unwrap();
    assert_eq!(verify(&mut c, "10.1.1.1", None), "suspended");
    let want = (3i64, 4i64, 1i64, 0i64, 0i64, 1i64, 1i64, 1i64);
    let read = |c: &mut Client| {
        let r = c
            .query_one(
                "SELECT sum(verified)::int8, sum(rejected)::int8, sum(rate_limited)::int8, \
                        sum(usage_exceeded)::int8, sum(invalid_secret)::int8, \
                        sum(suspended)::int8, sum(ip_not_allowed)::int8, \
                        sum(insufficient_scope)::int8 \
                   FROM api_keys.usage_by_key WHERE key_id = $1::text::uuid",
                &[&k.id],
            )
            .unwrap();
        (
            r.get::<_, Option<i64>>(0).unwrap_or(0),
            r.get::<_, Option<i64>>(1).unwrap_or(0),
            r.get::<_, Option<i64>>(2).unwrap_or(0),
            r.get::<_, Option<i64>>(3).unwrap_or(0),
            r.get::<_, Option<i64>>(4).unwrap_or(0),
            r.get::<_, Option<i64>>(5).unwrap_or(0),
            r.get::<_, Option<i64>>(6).unwrap_or(0),
            r.get::<_, Option<i64>>(7).unwrap_or(0),
        )
    };
    wait_for("every outcome written", ARRIVAL, || read(&mut c) == want);
    sleep(Duration::from_secs(2));
    assert_eq!(read(&mut c), want, "written once");
    let by_owner: i64 = c
        .query_one(
            "SELECT sum(rate_limited)::int8 FROM api_keys.usage_by_owner",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(by_owner, 1);
}
