//! Every database with the extension is served with no configuration: two application
//! databases (neither `postgres`) get usage, last use and expiry sweeps; state is kept
//! per database (a copy of a database does not share its keys' windows); a database
//! without the extension keeps no worker; dropping one database disturbs no other; a
//! worker stopped mid-round is followed by another.

mod common;

use common::{
    issue, running_worker, stats, verify, wait_for, wait_for_room_in_window, Client, Cluster,
    Issued, DB, WORKER_CONF,
};
use std::time::{Duration, Instant};

const APPS: [&str; 2] = ["shop", "billing"];

/// A cluster with the extension in each of `APPS` (and in [`DB`], made by the harness).
fn two_apps(name: &str) -> Cluster {
    let cluster = Cluster::start_with(name, WORKER_CONF);
    let mut admin = cluster.connect(DB);
    for app in APPS {
        admin
            .batch_execute(&format!("CREATE DATABASE {app}"))
            .unwrap();
        cluster
            .connect(app)
            .batch_execute("CREATE EXTENSION api_keys")
            .unwrap();
    }
    cluster
}

fn flushed_at(c: &mut Client, db: &str) -> Option<i64> {
    stats(c).get(&format!("flushed_at:{db}")).copied()
}

/// Wait until `db` has been flushed twice more: what happened before is written.
fn wait_for_flushes(c: &mut Client, db: &str) {
    let start = Instant::now();
    let first = flushed_at(c, db).unwrap_or(0);
    wait_for(
        &format!("two flushes of {db}"),
        Duration::from_secs(30),
        || flushed_at(c, db).unwrap_or(0) >= first + 2 || start.elapsed() > Duration::from_secs(29),
    );
    assert!(
        flushed_at(c, db).unwrap_or(0) >= first + 2,
        "{db} was not flushed: {:?}",
        stats(c)
    );
}

fn usage_and_last_use(c: &mut Client, key: &Issued) -> (i64, bool) {
    let row = c
        .query_one(
            "SELECT (SELECT coalesce(sum(verified), 0)::int8 FROM api_keys.usage WHERE key_id = k.id), \
                    k.last_used_at IS NOT NULL \
               FROM api_keys.keys k WHERE k.id = $1::text::uuid",
            &[&key.id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn status(c: &mut Client, key: &Issued) -> String {
    c.query_one(
        "SELECT status::text FROM api_keys.keys WHERE id = $1::text::uuid",
        &[&key.id],
    )
    .unwrap()
    .get(0)
}

#[test]
fn every_database_with_the_extension_gets_flushes_and_sweeps() {
    let cluster = two_apps("two_apps");
    let mut used = Vec::new();
    for (n, app) in APPS.iter().enumerate() {
        let mut c = cluster.connect_fast(app);
        let k = issue(&mut c, "'used', 'service', 'production'");
        let due = issue(
            &mut c,
            "'due', 'service', 'production', expires_at => clock_timestamp() + interval '1 second'",
        );
        for _ in 0..=n {
            assert_eq!(verify(&mut c, &k.key, Some("10.0.0.7"), None).reason, "ok");
        }
        used.push((app, c, k, due, n as i64 + 1));
    }
    for (app, c, k, due, times) in &mut used {
        wait_for(
            &format!("the use of a key in {app} written"),
            Duration::from_secs(30),
            || usage_and_last_use(c, k) == (*times, true),
        );
        wait_for(
            &format!("the due key of {app} expired"),
            Duration::from_secs(30),
            || status(c, due) == "expired",
        );
        let ip: String = c
            .query_one(
                "SELECT host(last_used_ip) FROM api_keys.keys WHERE id = $1::text::uuid",
                &[&k.id],
            )
            .unwrap()
            .get(0);
        assert_eq!(ip, "10.0.0.7");
        // stats() says when each database was last flushed, in every database.
        let s = stats(c);
        for other in APPS {
            let at = s[&format!("flushed_at:{other}")];
            let now: f64 = c
                .query_one("SELECT extract(epoch FROM now())::float8", &[])
                .unwrap()
                .get(0);
            assert!(
                (now as i64 - at).abs() < 30,
                "{other} flushed at {at}, now {now}"
            );
        }
    }
    // No worker stays connected to a database between rounds; none ever to `postgres`,
    // which does not have the extension, past its one look.
    let mut c = cluster.connect(DB);
    wait_for("no worker in postgres", Duration::from_secs(10), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'api_keys worker' AND datname = 'postgres'",
                &[],
            )
            .unwrap()
            .get(0);
        n == 0
    });
    assert_eq!(flushed_at(&mut c, "postgres"), None, "{:?}", stats(&mut c));
}

/// A copy of a database (CREATE DATABASE … TEMPLATE) has the same key ids: its keys'
/// windows are its own.
#[test]
fn a_copy_of_a_database_does_not_share_its_keys_windows() {
    let cluster = Cluster::start_with("copies", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'copied', 'service', 'production', rate_limit_per_minute => 2",
    );
    drop(c);
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE copy TEMPLATE {DB}"))
        .unwrap();
    let mut original = cluster.connect(DB);
    let mut copy = cluster.connect("copy");
    wait_for_room_in_window(&mut original, 20.0);
    for c in [&mut original, &mut copy] {
        let answers: Vec<String> = (0..3)
            .map(|_| verify(c, &k.key, None, None).reason)
            .collect();
        assert_eq!(answers, ["ok", "ok", "rate_limited"]);
    }
}

/// DROP DATABASE, with FORCE or without, of one database: the other keeps being served,
/// and the dropped one's shared state goes.
#[test]
fn dropping_one_database_disturbs_no_other() {
    let cluster = two_apps("drops");
    let mut keys = Vec::new();
    for app in APPS {
        let mut c = cluster.connect_fast(app);
        let k = issue(&mut c, "'k', 'service', 'production'");
        assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
        keys.push(k);
    }
    let mut admin = cluster.connect(DB);
    let launcher = running_worker(&cluster);
    // Many drops in a row, each racing the rounds: none fails on a worker.
    for round in 0..5 {
        let name = format!("scratch{round}");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        cluster
            .connect(&name)
            .batch_execute("CREATE EXTENSION api_keys")
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .unwrap();
    }
    let tracked_before = stats(&mut admin)["tracked_keys"];
    admin
        .batch_execute("DROP DATABASE shop WITH (FORCE)")
        .unwrap();
    wait_for(
        "the dropped database's keys forgotten",
        Duration::from_secs(30),
        || stats(&mut admin)["tracked_keys"] == tracked_before - 1,
    );
    assert!(!stats(&mut admin).keys().any(|k| k.ends_with(":shop")));
    let mut billing = cluster.connect_fast("billing");
    for _ in 0..3 {
        assert_eq!(verify(&mut billing, &keys[1].key, None, None).reason, "ok");
    }
    wait_for_flushes(&mut billing, "billing");
    assert_eq!(usage_and_last_use(&mut billing, &keys[1]), (4, true));
    assert_eq!(
        running_worker(&cluster),
        launcher,
        "the launcher lived through every drop"
    );
}

/// A worker terminated in the middle of its round (its flush waiting on a table lock a
/// user holds, up to its lock_timeout): the next round comes, and writes what that one
/// could not.
#[test]
fn a_worker_stopped_mid_round_is_followed_by_another() {
    let cluster = Cluster::start_with("midround", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let used = issue(&mut c, "'used', 'service', 'production'");
    assert_eq!(verify(&mut c, &used.key, None, None).reason, "ok");
    let mut holder = cluster.connect(DB);
    let mut held = holder.transaction().unwrap();
    held.batch_execute("LOCK TABLE api_keys.keys IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut admin = cluster.connect("postgres");
    let mut stuck = None;
    wait_for(
        "a worker waiting on the lock",
        Duration::from_secs(30),
        || {
            stuck = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'api_keys worker' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .map(|r| r.get::<_, i32>(0));
            stuck.is_some()
        },
    );
    let stopped = Instant::now();
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&stuck.unwrap()])
        .unwrap()
        .get(0);
    assert!(terminated);
    held.rollback().unwrap();
    wait_for(
        "the use written by a later round",
        Duration::from_secs(30),
        || usage_and_last_use(&mut c, &used) == (1, true),
    );
    // One flush interval (1 s) plus 5 s, and a margin for a busy machine.
    assert!(
        stopped.elapsed() < Duration::from_secs(1 + 5 + 4),
        "{:?}",
        stopped.elapsed()
    );
}

/// A database closed to new connections (or made a template) is no longer visited, but
/// its sessions keep their keys' state: windows still count.
#[test]
fn a_database_closed_to_new_connections_keeps_its_state() {
    let cluster = Cluster::start_with("closed", WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'kept', 'service', 'production', rate_limit_per_minute => 3",
    );
    wait_for_room_in_window(&mut c, 20.0);
    for _ in 0..2 {
        assert_eq!(verify(&mut c, &k.key, None, None).reason, "ok");
    }
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("ALTER DATABASE {DB} ALLOW_CONNECTIONS false"))
        .unwrap();
    // Several launcher rounds.
    std::thread::sleep(Duration::from_secs(4));
    let answers: Vec<String> = (0..2)
        .map(|_| verify(&mut c, &k.key, None, None).reason)
        .collect();
    assert_eq!(answers, ["ok", "rate_limited"]);
    assert_eq!(stats(&mut c)["tracked_keys"], 1);
}

/// A user's open `ALTER DATABASE … RENAME` holds its database's lock: that database's
/// worker gives up connecting (lock_timeout) and the other databases are still served.
#[test]
fn a_database_locked_by_a_user_holds_up_no_other() {
    let cluster = two_apps("locked_db");
    let mut shop = cluster.connect_fast("shop");
    let k = issue(&mut shop, "'k', 'service', 'production'");
    drop(shop);
    let mut billing = cluster.connect_fast("billing");
    let b = issue(&mut billing, "'b', 'service', 'production'");
    assert_eq!(verify(&mut billing, &b.key, None, None).reason, "ok");
    drop(billing);
    let mut admin = cluster.connect("postgres");
    let mut rename = admin.transaction().unwrap();
    rename
        .batch_execute("ALTER DATABASE billing RENAME TO billing_renamed")
        .unwrap();
    let mut shop = cluster.connect("shop");
    for _ in 0..3 {
        assert_eq!(verify(&mut shop, &k.key, None, None).reason, "ok");
    }
    wait_for(
        "shop served while billing is locked",
        Duration::from_secs(30),
        || usage_and_last_use(&mut shop, &k) == (3, true),
    );
    // Past the hold-off the DDL asked for, billing's worker waits for the lock, gives up
    // (an error exit), and shop's rounds go on.
    wait_for(
        "a worker giving up on billing",
        Duration::from_secs(40),
        || cluster.server_log().contains("lock timeout"),
    );
    assert_eq!(verify(&mut shop, &k.key, None, None).reason, "ok");
    wait_for("shop still served", Duration::from_secs(30), || {
        usage_and_last_use(&mut shop, &k) == (4, true)
    });
    rename.rollback().unwrap();
    // The next worker serves billing.
    let mut billing = cluster.connect("billing");
    assert_eq!(verify(&mut billing, &b.key, None, None).reason, "ok");
    wait_for(
        "billing served once unlocked",
        Duration::from_secs(30),
        || usage_and_last_use(&mut billing, &b) == (2, true),
    );
}

/// The owner of a database (a plain role) drops it while its worker is in a long round
/// (here a trigger that sleeps in the expiry sweep): the worker is stopped for the
/// command, which does not fail on "being accessed by other users".
#[test]
fn an_owner_drops_a_database_during_a_long_round() {
    let cluster = Cluster::start_with("long_round", WORKER_CONF);
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("CREATE ROLE owner LOGIN CREATEDB")
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE slow OWNER owner")
        .unwrap();
    let mut slow = cluster.connect_fast("slow");
    slow.batch_execute(
        "CREATE EXTENSION api_keys;
         CREATE FUNCTION public.sleepy() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.status = 'expired' THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$;
         CREATE TRIGGER sleepy BEFORE UPDATE ON api_keys.keys
           FOR EACH ROW EXECUTE FUNCTION public.sleepy();",
    )
    .unwrap();
    issue(
        &mut slow,
        "'due', 'service', 'production', expires_at => clock_timestamp() + interval '1 second'",
    );
    drop(slow);
    wait_for(
        "a worker asleep in the sweep",
        Duration::from_secs(30),
        || {
            admin
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'api_keys worker' AND wait_event = 'PgSleep'",
                &[],
            )
            .unwrap()
            .is_some()
        },
    );
    let launcher = running_worker(&cluster);
    let mut owner = cluster.connect_as("postgres", "owner");
    let started = Instant::now();
    owner.batch_execute("DROP DATABASE slow").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(running_worker(&cluster), launcher);
}

/// A CREATE EXTENSION that the worker looks at before it commits (the backend noted the
/// extension, the worker's snapshot does not show it yet) leaves the database to be
/// looked at again next round: it is served at once after the commit, with no
/// verification there to say so again (it used to be taken as having no extension, and
/// looked at again only 5 minutes later).
#[test]
fn a_create_extension_seen_before_its_commit_is_served_after_it() {
    let cluster = Cluster::start_with("slow_create", WORKER_CONF);
    let mut admin = cluster.connect(DB);
    admin.batch_execute("CREATE DATABASE late").unwrap();
    let mut creator = cluster.connect("late");
    creator
        .batch_execute("BEGIN; CREATE EXTENSION api_keys")
        .unwrap();
    // Several rounds look while the CREATE EXTENSION is open.
    std::thread::sleep(Duration::from_secs(3));
    creator.batch_execute("COMMIT").unwrap();
    wait_for(
        "a flush of the new database",
        Duration::from_secs(20),
        || flushed_at(&mut admin, "late").is_some_and(|at| at > 0),
    );
}
