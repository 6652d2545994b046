//! The verification memo and flood protection, measured by api_keys.stats() on a
//! cluster of its own (the counters are server-wide, so nothing else may run there).
//! The argon2 budgets guard keys issued before signing (`issue_unsigned`); a signed
//! key's forgeries never reach them (tests/signed_keys.rs).

mod common;

use common::{issue, issue_unsigned, stats, verify, with_checksum, Cluster, DB};
use postgres::Client;
use std::collections::HashMap;

/// Counter deltas caused by `f`.
fn delta(c: &mut Client, f: impl FnOnce(&mut Client)) -> HashMap<String, i64> {
    let before = stats(c);
    f(c);
    let after = stats(c);
    after
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (k, d)
        })
        .collect()
}

/// A key with `prefix`, a made-up secret numbered `n`, and a correct checksum: it
/// reaches the hash check and fails it.
fn wrong_key(prefix: &str, n: u32) -> String {
    with_checksum(&format!("{prefix}_{n:0>43}"))
}

#[test]
fn argon2_runs_once_per_key_and_new_sessions_are_warm() {
    let cluster = Cluster::start("memo");
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'memo', 'service', 'production'");
    let d = delta(&mut c, |c| {
        for _ in 0..5 {
            assert_eq!(verify(c, &k.key, None, None).reason, "ok");
        }
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    assert_eq!(d["memo_hits"], 4, "{d:?}");
    assert_eq!(d["verify_ok"], 5, "{d:?}");

    // A brand-new session shares the memo: no argon2 at all.
    let mut fresh = cluster.connect(DB);
    let d = delta(&mut c, |_| {
        assert_eq!(verify(&mut fresh, &k.key, None, None).reason, "ok");
    });
    assert_eq!(d["argon2_runs"], 0, "{d:?}");
    assert_eq!(stats(&mut c)["shared_memory"], 1);
}

#[test]
fn garbage_costs_no_hash_and_wrong_secrets_are_remembered() {
    let cluster = Cluster::start("fails");
    let mut c = cluster.connect_fast(DB);
    let k = issue_unsigned(&mut c, "'fails', 'service', 'production'");
    let d = delta(&mut c, |c| {
        for input in [
            "",
            "garbage",
            &k.key[..k.key.len() - 1],
            &format!("{}x", k.key),
        ] {
            assert_eq!(verify(c, input, None, None).reason, "malformed");
        }
    });
    assert_eq!(
        d["argon2_runs"] + d["memo_misses"] + d["memo_hits"],
        0,
        "{d:?}"
    );
    assert_eq!(d["verify_malformed"], 4);

    let wrong = wrong_key(&k.prefix, 1);
    let d = delta(&mut c, |c| {
        for _ in 0..4 {
            assert_eq!(verify(c, &wrong, None, None).reason, "invalid_secret");
        }
    });
    assert_eq!(
        d["argon2_runs"], 1,
        "one hash per distinct presentation: {d:?}"
    );
    assert_eq!(d["verify_invalid_secret"], 4);
}

#[test]
fn a_flood_on_one_prefix_is_throttled_while_the_real_key_keeps_working() {
    let cluster = Cluster::start("budget");
    let mut c = cluster.connect_fast(DB);
    c.batch_execute("SET api_keys.argon2_budget_per_minute = 3")
        .unwrap();
    let target = issue_unsigned(&mut c, "'target', 'service', 'production'");
    let bystander = issue_unsigned(&mut c, "'bystander', 'service', 'production'");
    assert_eq!(verify(&mut c, &target.key, None, None).reason, "ok");

    let d = delta(&mut c, |c| {
        for n in 0..20 {
            assert_eq!(
                verify(c, &wrong_key(&target.prefix, n), None, None).reason,
                "invalid_secret"
            );
            // The real key, already in the memo, is unaffected by the attack.
            assert_eq!(verify(c, &target.key, None, None).reason, "ok");
        }
    });
    // The real key's first verification spent 1 of the 3; the budget is per minute and
    // the loop may straddle a minute boundary once.
    assert!((2..=5).contains(&d["argon2_runs"]), "{d:?}");
    assert_eq!(d["argon2_runs"] + d["argon2_throttled"], 20, "{d:?}");
    assert_eq!(d["verify_ok"], 20);

    // Other prefixes keep their own budget.
    let d = delta(&mut c, |c| {
        assert_eq!(verify(c, &bystander.key, None, None).reason, "ok");
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    assert_eq!(d["argon2_throttled"], 0, "{d:?}");
}

#[test]
fn a_flood_over_many_prefixes_shares_one_server_wide_allowance() {
    let cluster = Cluster::start("spread_flood");
    let mut c = cluster.connect_fast(DB);
    // A per-prefix budget that would allow 20 × 50 = 1000 hashes this minute, and a
    // server-wide allowance of 1 a second for prefixes that already failed.
    c.batch_execute(
        "SET api_keys.argon2_budget_per_minute = 50; \
         SET api_keys.argon2_after_failure_per_second = 1",
    )
    .unwrap();
    let targets: Vec<_> = (0..20)
        .map(|i| issue_unsigned(&mut c, &format!("'target {i}', 'service', 'production'")))
        .collect();
    let started = std::time::Instant::now();
    let d = delta(&mut c, |c| {
        for n in 0..25 {
            for t in &targets {
                assert_eq!(
                    verify(c, &wrong_key(&t.prefix, n), None, None).reason,
                    "invalid_secret"
                );
            }
        }
    });
    let seconds = started.elapsed().as_secs() as i64;
    // One hash per prefix for its first failure, then 1 a second (a burst of 1) for all
    // of them together.
    assert!(d["argon2_runs"] >= 20, "{d:?}");
    assert!(
        d["argon2_runs"] <= 20 + 1 + seconds + 1,
        "{d:?} in {seconds} s"
    );
    assert_eq!(d["argon2_runs"] + d["argon2_throttled"], 500, "{d:?}");

    // A key that has never seen a failure is hashed at once, flood or not.
    let fresh = issue_unsigned(&mut c, "'fresh', 'service', 'production'");
    let d = delta(&mut c, |c| {
        assert_eq!(verify(c, &fresh.key, None, None).reason, "ok");
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    assert_eq!(d["argon2_throttled"], 0, "{d:?}");
}

#[test]
fn without_preload_each_session_keeps_its_own_memo() {
    let cluster = Cluster::start_with("nomemo", &["shared_preload_libraries = ''"]);
    let mut c = cluster.connect_fast(DB);
    let k = issue(&mut c, "'local', 'service', 'production'");
    let d = delta(&mut c, |c| {
        for _ in 0..3 {
            assert_eq!(verify(c, &k.key, None, None).reason, "ok");
        }
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    assert_eq!(stats(&mut c)["shared_memory"], 0);
    // Another session has its own (cold) memo and its own counters, and verifies fine.
    let mut other = cluster.connect(DB);
    assert_eq!(verify(&mut other, &k.key, None, None).reason, "ok");
    assert_eq!(stats(&mut other)["argon2_runs"], 1);
}
