//! Limits are exact at any number of keys: 100,000 keys with a per-hour limit of 2,
//! each verified 4 times (a pass over all keys at a time, from several sessions), answer
//! `ok` in passes 1 and 2 and `rate_limited` in passes 3 and 4, every one of them;
//! shared memory tracks every key, and every use is written.

mod common;

use common::{stats, wait_for, wait_for_room_in_hour, Cluster, DB, WORKER_CONF};
use std::collections::BTreeMap;
use std::time::Duration;

const KEYS: i64 = 100_000;
const SESSIONS: i64 = 4;

#[test]
fn a_per_hour_limit_is_exact_for_100_000_keys() {
    let cluster = Cluster::start_with("scale", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    // Issued in a few big statements (cheap argon2: this is about limits, not hashing).
    c.batch_execute("CREATE TABLE public.pass_keys (n int8 PRIMARY KEY, key text NOT NULL)")
        .unwrap();
    for chunk in 0..10 {
        c.execute(
            "INSERT INTO public.pass_keys \
             SELECT g, (api_keys.api_key_issue('k' || g, 'service', 'production', rate_limit_per_hour => 2)).key \
               FROM generate_series($1::int8, $2::int8) g",
            &[&(chunk * KEYS / 10), &((chunk + 1) * KEYS / 10 - 1)],
        )
        .unwrap();
    }
    // Four passes take a few minutes on a slow machine: all inside one clock hour.
    wait_for_room_in_hour(&mut c, 300.0);
    for pass in 1..=4 {
        let answers: BTreeMap<String, i64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..SESSIONS)
                .map(|session| {
                    let cluster = &cluster;
                    s.spawn(move || {
                        let mut c = cluster.connect(DB);
                        c.query(
                            "SELECT v.reason, count(*) FROM public.pass_keys k, \
                                    api_keys.api_key_verify(k.key) v \
                              WHERE k.n % $1 = $2 GROUP BY 1",
                            &[&SESSIONS, &session],
                        )
                        .unwrap()
                        .into_iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                        .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all = BTreeMap::new();
            for h in handles {
                for (reason, n) in h.join().unwrap() {
                    *all.entry(reason).or_insert(0) += n;
                }
            }
            all
        });
        let expected = if pass <= 2 { "ok" } else { "rate_limited" };
        assert_eq!(
            answers,
            BTreeMap::from([(expected.to_owned(), KEYS)]),
            "pass {pass}"
        );
    }
    let s = stats(&mut c);
    assert_eq!(s["tracked_keys"], KEYS, "{s:?}");
    // Every use reaches the usage table: 2 verified and 2 rejected per key.
    wait_for("every use written", Duration::from_secs(120), || {
        let row = c
            .query_one(
                "SELECT coalesce(sum(verified), 0)::int8, coalesce(sum(rejected), 0)::int8, count(DISTINCT key_id) \
                   FROM api_keys.usage",
                &[],
            )
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        ) == (2 * KEYS, 2 * KEYS, KEYS)
    });
}
