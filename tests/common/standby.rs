//! A primary and a hot standby that sends its usage there: the setup and the usage
//! checks the standby tests share.

use std::time::Duration;

use super::{issue, Client, Cluster, Issued, DB, WORKER_CONF};

/// How long usage may take to reach a server (a few flush intervals suffice).
pub const ARRIVAL: Duration = Duration::from_secs(30);

/// Three flush intervals: long enough for anything sent twice to show.
pub const SETTLE: Duration = Duration::from_secs(3);

/// A primary flushing every second and a hot standby of it that sends its usage there
/// as `postgres`, over TCP on the loopback address (both listen there too).
pub fn pair(name: &str) -> (Cluster, Cluster) {
    let mut conf = WORKER_CONF.to_vec();
    conf.push("listen_addresses = '127.0.0.1'");
    let primary = Cluster::start_with(&format!("{name}_p"), &conf);
    let standby = primary.standby_with(
        &format!("{name}_s"),
        &[&primary.primary_conninfo_tcp_conf("postgres")],
    );
    (primary, standby)
}

/// A key issued on the primary, replayed on the standby.
pub fn issue_replayed(primary: &Cluster, standby: &Cluster, args_sql: &str) -> Issued {
    let k = issue(&mut primary.connect_fast(DB), args_sql);
    primary.wait_for_replay_on(standby);
    k
}

/// (sum of verified, sum of rejected) of `key` in `api_keys.usage`, every hour and
/// every server that counted.
pub fn usage(c: &mut Client, key: &Issued) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT coalesce(sum(verified), 0)::int8, coalesce(sum(rejected), 0)::int8 \
               FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&key.id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}
