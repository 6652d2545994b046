//! Signed keys (issue 14), end to end on throwaway clusters.
//!
//! A key issued from 0.5.0 on is `<prefix>_<secret 43><signing key id 4><mac 17><crc 6>`,
//! the MAC an HMAC-SHA-256 (96 bits) under a server signing key. What is covered:
//!
//! - floods of forged presentations for a real prefix, on a cold memo (fresh cluster,
//!   after a fast and after an immediate restart), with 1 and 8 attacking clients: the
//!   real key, presented from new sessions during the flood, is never refused or
//!   throttled, argon2 runs once, and every forgery is counted in `forged_signatures`;
//! - every shape of forgery (random MAC, a MAC moved to another secret or prefix, an
//!   unknown signing key, the real secret without its signature or validly signed by
//!   another signing key) is `invalid_secret` with no argon2 and no memo access;
//! - `rate_limited` is answered only to the real key, and forgeries use no quota or usage;
//! - `rotate_signing_key()`: who may call it, the audit row, which key signs new keys,
//!   and retiring a signing key (refused from the DELETE's commit, in other sessions too);
//! - the signing key cache of a long-lived session follows a rotation at once;
//! - keys issued before 0.5.0 verify, and rotating one yields a signed key;
//! - pg_dump / pg_restore keeps every key verifying and adds one signing key;
//! - a hot standby verifies keys signed after a rotation in a session that cached the
//!   signing keys before it, refuses keys of a retired signing key, and counts forgeries.
//!
//! Counters (`api_keys.stats()`) are server-wide, so every test that asserts them runs
//! on a cluster of its own.

mod common;

use common::{issue, issue_unsigned, stats, verify, wait_for, with_checksum, Cluster, Issued, DB};
use hmac::{Hmac, Mac};
use postgres::Client;
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::Sha256;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Key anatomy (README, "Key format"): what an attacker knows and can build.
// ---------------------------------------------------------------------------------------

const SECRET_LEN: usize = 43;
const SIGNING_ID_LEN: usize = 4;
const MAC_LEN: usize = 17;
const CHECKSUM_LEN: usize = 6;
/// What follows a signed key's prefix and `_`: 70 characters.
const SIGNED_TAIL_LEN: usize = SECRET_LEN + SIGNING_ID_LEN + MAC_LEN + CHECKSUM_LEN;
/// A signed key with the default brand in production: `ak_live_` + 12 + `_` + 70.
const SIGNED_KEY_LEN: usize = 8 + 12 + 1 + SIGNED_TAIL_LEN;
/// The reason-only verification the floods send (prepared once per session).
const REASON_SQL: &str = "SELECT reason FROM api_keys.api_key_verify($1::text, NULL, NULL)";

/// Where the secret starts in a key with this prefix.
fn secret_at(prefix: &str) -> usize {
    prefix.len() + 1
}

/// The 43 random characters of a key.
fn secret_of(k: &Issued) -> &str {
    &k.key[secret_at(&k.prefix)..secret_at(&k.prefix) + SECRET_LEN]
}

/// The signing key id a signed key names (the 4 characters after its secret).
fn signing_id_of(k: &Issued) -> &str {
    assert_eq!(
        k.key.len(),
        secret_at(&k.prefix) + SIGNED_TAIL_LEN,
        "not a signed key: {k:?}"
    );
    let at = secret_at(&k.prefix) + SECRET_LEN;
    &k.key[at..at + SIGNING_ID_LEN]
}

/// The MAC a signed key carries.
fn mac_of(k: &Issued) -> &str {
    let at = secret_at(&k.prefix) + SECRET_LEN + SIGNING_ID_LEN;
    &k.key[at..at + MAC_LEN]
}

fn random_base62(rng: &mut impl Rng, len: usize) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A random number of 96 bits printed like a MAC: the right size, just not the right one.
fn random_mac(rng: &mut impl Rng) -> String {
    format!("{:0>MAC_LEN$}", base62::encode(rng.gen::<u128>() >> 32))
}

/// The MAC the server makes: HMAC-SHA-256, leftmost 96 bits, base62, fixed width.
fn mac(signing_secret: &[u8], message: &str) -> String {
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(signing_secret).unwrap();
    h.update(message.as_bytes());
    let tag = h.finalize().into_bytes();
    let mut n = [0u8; 16];
    n[4..].copy_from_slice(&tag[..12]);
    format!("{:0>MAC_LEN$}", base62::encode(u128::from_be_bytes(n)))
}

/// A signed-shape presentation for `prefix` naming signing key `signing_id`, with the
/// given secret and MAC and a correct checksum: it passes the format check.
fn signed_shape(prefix: &str, secret: &str, signing_id: &str, mac: &str) -> String {
    with_checksum(&format!("{prefix}_{secret}{signing_id}{mac}"))
}

/// A forgery for `prefix`: a random secret, the real signing key id, a random MAC.
fn forged_signed(rng: &mut impl Rng, prefix: &str, signing_id: &str) -> String {
    let secret = random_base62(rng, SECRET_LEN);
    signed_shape(prefix, &secret, signing_id, &random_mac(rng))
}

/// A forgery for `prefix` in the shape of a key issued before 0.5.0 (no signature).
fn forged_unsigned(rng: &mut impl Rng, prefix: &str) -> String {
    with_checksum(&format!("{prefix}_{}", random_base62(rng, SECRET_LEN)))
}

/// The real key's secret presented without its signature, as a pre-0.5.0 key would be:
/// argon2 would accept the secret, so only the row's signing key can refuse it.
fn unsigned_shape_of(k: &Issued) -> String {
    with_checksum(&format!("{}_{}", k.prefix, secret_of(k)))
}

// ---------------------------------------------------------------------------------------
// Sessions, counters, signing keys.
// ---------------------------------------------------------------------------------------

fn reason(c: &mut Client, key: &str) -> String {
    verify(c, key, None, None).reason
}

/// Counter changes between two `stats()` readings.
fn deltas(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> HashMap<String, i64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// Counter changes caused by `f`, read on `monitor` (which must verify nothing itself).
fn delta(monitor: &mut Client, f: impl FnOnce()) -> HashMap<String, i64> {
    let before = stats(monitor);
    f();
    deltas(&before, &stats(monitor))
}

/// The SQLSTATE a statement failed with.
fn sqlstate<T>(what: &str, result: Result<T, postgres::Error>) -> String {
    match result {
        Ok(_) => panic!("{what}: succeeded, expected an error"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("{what}: no SQLSTATE: {e:?}"))
            .code()
            .to_string(),
    }
}

/// A new session (cheap argon2, UTC) acting as `role`.
fn session_as(cluster: &Cluster, role: &str) -> Client {
    let mut c = cluster.connect_fast(DB);
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    c
}

/// `rotate_signing_key()` as the session's role: (new id, created_at as text).
fn rotate_signing_key(c: &mut Client) -> (String, String) {
    let row = c
        .query_one(
            "SELECT id, created_at::text FROM api_keys.rotate_signing_key()",
            &[],
        )
        .unwrap_or_else(|e| panic!("rotate_signing_key(): {e:?}"));
    (row.get(0), row.get(1))
}

/// Every signing key: (id, created_at), oldest first.
fn signing_keys(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT id, created_at::text FROM api_keys.signing_keys ORDER BY created_at, id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The secret of signing key `id` (superuser).
fn signing_secret(c: &mut Client, id: &str) -> Vec<u8> {
    c.query_one(
        "SELECT secret FROM api_keys.signing_keys WHERE id = $1",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// `keys.signing_key` of key `id`.
fn stored_signing_key(c: &mut Client, id: &str) -> Option<String> {
    c.query_one(
        "SELECT signing_key FROM api_keys.keys WHERE id = $1::text::uuid",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// `api_key_rotate(id, grace)`.
fn rotate_key(c: &mut Client, id: &str, grace: &str) -> Issued {
    let row = c
        .query_one(
            "SELECT id::text, key, prefix FROM api_keys.api_key_rotate($1::text::uuid, $2::text::interval)",
            &[&id, &grace],
        )
        .unwrap_or_else(|e| panic!("api_key_rotate({id}): {e:?}"));
    Issued {
        id: row.get(0),
        key: row.get(1),
        prefix: row.get(2),
    }
}

/// Wait until `standby` (any session of it) has replayed the primary's WAL up to now.
fn wait_for_replay(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    wait_for("replay on the standby", Duration::from_secs(30), || {
        standby
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&lsn],
            )
            .unwrap()
            .get(0)
    });
}

/// A session that already holds the signing keys in its cache has no reason to re-read
/// them for an id it knows; for an id it does not know it re-reads at most once a
/// second (signing_keys.rs, REREAD_AFTER). A check that a cache followed a change is only
/// strict when made within that second of the session's last read.
const REREAD_AFTER: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Floods.
// ---------------------------------------------------------------------------------------

/// How long the real key is presented during a flood, and how often.
const REAL_PRESENTATIONS: usize = 20;
const REAL_EVERY: Duration = Duration::from_millis(300);

/// What a flood did.
struct Flood {
    /// Calls the attackers completed (each answered).
    attacker_calls: u64,
    /// Attacker calls answered with anything but `invalid_secret` (first few).
    wrong_answers: Vec<String>,
    /// The real key's answers, each from a new session.
    real_answers: Vec<String>,
    real_slowest: Duration,
    /// Counter deltas over the whole flood.
    counters: HashMap<String, i64>,
    elapsed: Duration,
}

/// One attacking client: its own session, forgeries for `target`'s prefix as fast as it
/// can until `stop` (3 in 4 signed-shape with the real signing key id, of which one in
/// three carries the real key's MAC on another secret; 1 in 4 unsigned-shape).
fn attack(cluster: &Cluster, target: &Issued, stop: &AtomicBool) -> (u64, Vec<String>) {
    let mut c = cluster.connect(DB);
    let stmt = c.prepare(REASON_SQL).unwrap();
    let mut rng = rand::thread_rng();
    let signing_id = signing_id_of(target).to_string();
    let real_mac = mac_of(target).to_string();
    let (mut calls, mut wrong) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let forged = match calls % 4 {
            0 => forged_unsigned(&mut rng, &target.prefix),
            1 => signed_shape(
                &target.prefix,
                &random_base62(&mut rng, SECRET_LEN),
                &signing_id,
                &real_mac,
            ),
            _ => forged_signed(&mut rng, &target.prefix, &signing_id),
        };
        let answer: String = c
            .query_one(&stmt, &[&forged])
            .unwrap_or_else(|e| panic!("attacker: verify raised: {e:?}"))
            .get(0);
        calls += 1;
        if answer != "invalid_secret" && wrong.len() < 10 {
            wrong.push(format!("{forged}: {answer}"));
        }
    }
    (calls, wrong)
}

/// `attackers` clients flood `target`'s prefix while the real key is presented
/// REAL_PRESENTATIONS times, each from a new session, spread over the flood.
fn flood(cluster: &Arc<Cluster>, target: &Issued, attackers: usize) -> Flood {
    let mut monitor = cluster.connect(DB);
    let before = stats(&mut monitor);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..attackers)
        .map(|_| {
            let (cluster, target, stop) = (cluster.clone(), target.clone(), stop.clone());
            thread::spawn(move || attack(&cluster, &target, &stop))
        })
        .collect();

    let mut real_answers = Vec::new();
    let mut real_slowest = Duration::ZERO;
    for _ in 0..REAL_PRESENTATIONS {
        // The first one too comes with the flood already running.
        thread::sleep(REAL_EVERY);
        let t = Instant::now();
        let mut fresh = cluster.connect(DB);
        real_answers.push(reason(&mut fresh, &target.key));
        real_slowest = real_slowest.max(t.elapsed());
    }
    thread::sleep(REAL_EVERY);
    stop.store(true, Ordering::Relaxed);

    let (mut attacker_calls, mut wrong_answers) = (0, Vec::new());
    for t in threads {
        let (calls, wrong) = t.join().expect("an attacker thread panicked");
        attacker_calls += calls;
        wrong_answers.extend(wrong);
    }
    let elapsed = started.elapsed();
    let counters = deltas(&before, &stats(&mut monitor));
    Flood {
        attacker_calls,
        wrong_answers,
        real_answers,
        real_slowest,
        counters,
        elapsed,
    }
}

/// What every flood must show. `cold`: the memo did not know the key when it began.
fn assert_flood_held(label: &str, f: &Flood, attackers: usize, cold: bool) {
    let d = &f.counters;
    eprintln!(
        "{label}: {attackers} attacker(s), {} forged calls in {:?}, real key slowest {:?}, counters {d:?}",
        f.attacker_calls, f.elapsed, f.real_slowest
    );
    // A flood worth the name: far more forgeries than the real key's presentations.
    assert!(
        f.attacker_calls >= 200 * attackers as u64,
        "{label}: only {} forged calls",
        f.attacker_calls
    );
    assert!(
        f.wrong_answers.is_empty(),
        "{label}: forgeries not answered invalid_secret: {:?}",
        f.wrong_answers
    );
    assert_eq!(
        f.real_answers,
        vec!["ok"; REAL_PRESENTATIONS],
        "{label}: the real key during the flood"
    );
    // One argon2 if the memo was cold (the real key's first presentation), none if
    // warm; the budgets were never asked, so nothing was throttled.
    let cold = cold as i64;
    assert_eq!(d["argon2_runs"], cold, "{label}: {d:?}");
    assert_eq!(d["argon2_throttled"], 0, "{label}: {d:?}");
    assert_eq!(d["memo_misses"], cold, "{label}: {d:?}");
    assert_eq!(
        d["memo_hits"],
        REAL_PRESENTATIONS as i64 - cold,
        "{label}: {d:?}"
    );
    assert_eq!(d["verify_ok"], REAL_PRESENTATIONS as i64, "{label}: {d:?}");
    // Every forgery, and nothing else, is a counted forged signature.
    assert_eq!(
        d["forged_signatures"], f.attacker_calls as i64,
        "{label}: {d:?}"
    );
    assert_eq!(
        d["verify_invalid_secret"], f.attacker_calls as i64,
        "{label}: {d:?}"
    );
    assert_eq!(d["verify_rate_limited"], 0, "{label}: {d:?}");
}

fn flood_on_a_cold_start(attackers: usize) {
    let cluster = Arc::new(Cluster::start(&format!("sk_cold{attackers}")));
    let target = issue(
        &mut cluster.connect_fast(DB),
        "'flood target', 'service', 'production'",
    );
    let f = flood(&cluster, &target, attackers);
    assert_flood_held("cold start", &f, attackers, true);
}

#[test]
fn flood_on_a_cold_start_by_one_client_never_throttles_the_real_key() {
    flood_on_a_cold_start(1);
}

#[test]
fn flood_on_a_cold_start_by_eight_clients_never_throttles_the_real_key() {
    flood_on_a_cold_start(8);
}

/// The key was verified (and remembered) before the restart; the restart empties the
/// memo, so the flood meets a key the server must hash again.
fn flood_after_restart(mode: &str, attackers: usize) {
    let cluster = Arc::new(Cluster::start(&format!("sk_{mode}")));
    let target = issue(
        &mut cluster.connect_fast(DB),
        "'flood target', 'service', 'production'",
    );
    assert_eq!(reason(&mut cluster.connect(DB), &target.key), "ok");
    cluster.restart(mode);
    let f = flood(&cluster, &target, attackers);
    assert_flood_held(&format!("after a {mode} restart"), &f, attackers, true);
}

/// The key is in the memo when the flood begins: it costs no argon2 at all.
#[test]
fn flood_on_a_warm_key_never_throttles_it() {
    let cluster = Arc::new(Cluster::start("sk_warm"));
    let target = issue(
        &mut cluster.connect_fast(DB),
        "'flood target', 'service', 'production'",
    );
    assert_eq!(reason(&mut cluster.connect(DB), &target.key), "ok");
    let f = flood(&cluster, &target, 8);
    assert_flood_held("warm", &f, 8, false);
}

/// API.md: key_pattern() works unchanged in POSIX ERE. `grep -Eo` finds a signed key and
/// a key issued before signing whole, inside text, and nothing in a near miss.
#[test]
fn grep_e_finds_signed_and_unsigned_keys_with_key_pattern() {
    let cluster = Cluster::start("sk_grep");
    let mut c = cluster.connect_fast(DB);
    let signed = issue(&mut c, "'grep signed', 'service', 'production'");
    let unsigned = issue_unsigned(&mut c, "'grep unsigned', 'user', 'staging'");
    let pattern: String = c
        .query_one("SELECT api_keys.key_pattern()", &[])
        .unwrap()
        .get(0);
    let text = format!(
        "deploy log: token={} done\nold config key: \"{}\"\nnot a key: ak_live_short_abc\n",
        signed.key, unsigned.key
    );
    let mut grep = std::process::Command::new("grep")
        .args(["-Eo", &pattern])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("grep runs");
    use std::io::Write;
    grep.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = grep.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "grep -E {pattern}: {out:?}"
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n{}\n", signed.key, unsigned.key)
    );
}

#[test]
fn flood_after_a_fast_restart_never_throttles_the_real_key() {
    flood_after_restart("fast", 8);
}

#[test]
fn flood_after_an_immediate_restart_never_throttles_the_real_key() {
    flood_after_restart("immediate", 4);
}

// ---------------------------------------------------------------------------------------
// Forgery shapes, rate limits.
// ---------------------------------------------------------------------------------------

/// Each way of forging a signed key is refused as `invalid_secret` for one HMAC (those
/// that fail the MAC) or one key row read (those that name the wrong signing key or
/// none), never reaching the memo or argon2; a valid MAC for a prefix that does not
/// exist is the only one that goes on, to `not_found`.
#[test]
fn every_forgery_shape_is_refused_without_argon2() {
    let cluster = Cluster::start("sk_shapes");
    let mut c = cluster.connect_fast(DB);
    let older = issue(
        &mut c,
        "'signed by the first signing key', 'service', 'production'",
    );
    let first_id = signing_id_of(&older).to_string();
    let (current_id, _) = rotate_signing_key(&mut c);
    let k = issue(&mut c, "'target', 'service', 'production'");
    assert_eq!(signing_id_of(&k), current_id);
    let first_secret = signing_secret(&mut c, &first_id);
    let current_secret = signing_secret(&mut c, &current_id);

    // The test's MAC is the server's: recomputing the real key's MAC gives it back.
    let message = &k.key[..k.key.len() - CHECKSUM_LEN - MAC_LEN];
    assert_eq!(mac(&current_secret, message), mac_of(&k));

    let mut rng = rand::thread_rng();
    let secret = secret_of(&k);
    let other_secret = random_base62(&mut rng, SECRET_LEN);
    let unknown_id = (0..)
        .map(|_| random_base62(&mut rng, SIGNING_ID_LEN))
        .find(|id| *id != first_id && *id != current_id)
        .unwrap();
    let missing_prefix = format!("ak_live_{}", random_base62(&mut rng, 12));
    let forgeries = [
        (
            "random MAC",
            signed_shape(&k.prefix, secret, &current_id, &random_mac(&mut rng)),
        ),
        (
            "the real MAC on another secret",
            signed_shape(&k.prefix, &other_secret, &current_id, mac_of(&k)),
        ),
        (
            "the real secret and MAC under another prefix that exists",
            signed_shape(&older.prefix, secret, &current_id, mac_of(&k)),
        ),
        (
            "the real secret and MAC under a prefix that does not exist",
            signed_shape(&missing_prefix, secret, &current_id, mac_of(&k)),
        ),
        (
            "a random MAC for a prefix that does not exist",
            forged_signed(&mut rng, &missing_prefix, &current_id),
        ),
        (
            "the real MAC, claimed by an unknown signing key",
            signed_shape(&k.prefix, secret, &unknown_id, mac_of(&k)),
        ),
        (
            "the real MAC, claimed by the older signing key",
            signed_shape(&k.prefix, secret, &first_id, mac_of(&k)),
        ),
        (
            "a MAC over 96 bits",
            signed_shape(&k.prefix, secret, &current_id, &"z".repeat(MAC_LEN)),
        ),
    ];
    let mut monitor = cluster.connect(DB);
    let d = delta(&mut monitor, || {
        for (label, key) in &forgeries {
            assert_eq!(reason(&mut c, key), "invalid_secret", "{label}: {key}");
        }
    });
    let n = forgeries.len() as i64;
    assert_eq!(d["forged_signatures"], n, "{d:?}");
    assert_eq!(d["verify_invalid_secret"], n, "{d:?}");
    assert_eq!(
        d["argon2_runs"] + d["memo_hits"] + d["memo_misses"],
        0,
        "{d:?}"
    );

    // Past the MAC, the key row decides: the real secret without its signature, or
    // validly signed by the other signing key, is refused without argon2 (which would
    // accept the secret).
    let row_refused = [
        ("the real secret, unsigned", unsigned_shape_of(&k)),
        (
            "the real secret, validly signed by the older signing key",
            signed_shape(
                &k.prefix,
                secret,
                &first_id,
                &mac(&first_secret, &format!("{}_{secret}{first_id}", k.prefix)),
            ),
        ),
    ];
    let d = delta(&mut monitor, || {
        for (label, key) in &row_refused {
            assert_eq!(reason(&mut c, key), "invalid_secret", "{label}: {key}");
        }
    });
    assert_eq!(d["forged_signatures"], 2, "{d:?}");
    assert_eq!(
        d["argon2_runs"] + d["memo_hits"] + d["memo_misses"],
        0,
        "{d:?}"
    );

    // A valid MAC (made here with the signing key) for a prefix nobody holds passes the
    // signature and finds no row.
    let genuine_mac = mac(
        &current_secret,
        &format!("{missing_prefix}_{secret}{current_id}"),
    );
    let d = delta(&mut monitor, || {
        assert_eq!(
            reason(
                &mut c,
                &signed_shape(&missing_prefix, secret, &current_id, &genuine_mac)
            ),
            "not_found"
        );
    });
    assert_eq!(d["forged_signatures"], 0, "{d:?}");
    assert_eq!(d["verify_not_found"], 1, "{d:?}");

    // None of this touched the real keys: each now costs its one argon2.
    let d = delta(&mut monitor, || {
        assert_eq!(reason(&mut c, &k.key), "ok");
        assert_eq!(reason(&mut c, &older.key), "ok");
    });
    assert_eq!(d["argon2_runs"], 2, "{d:?}");
    assert_eq!(d["forged_signatures"], 0, "{d:?}");
}

/// Seconds into the current UTC minute (rate windows are clock minutes).
/// `rate_limited` is only ever the answer to the real key: forgeries for a key that is
/// over its limit are still `invalid_secret`, and take none of its quota or usage.
#[test]
fn rate_limited_is_answered_only_to_presentations_whose_mac_checks() {
    let cluster = Cluster::start_with("sk_rate", common::WORKER_CONF);
    let mut c = cluster.connect_fast(DB);
    let k = issue(
        &mut c,
        "'limited', 'service', 'production', rate_limit_per_minute => 3",
    );
    let mut rng = rand::thread_rng();
    let signing_id = signing_id_of(&k).to_string();
    let forgeries: Vec<String> = (0..60)
        .map(|i| match i % 3 {
            0 => forged_unsigned(&mut rng, &k.prefix),
            1 => forged_signed(&mut rng, &k.prefix, &signing_id),
            _ => unsigned_shape_of(&k),
        })
        .collect();
    let refuse_all = |c: &mut Client| {
        for f in &forgeries {
            assert_eq!(reason(c, f), "invalid_secret", "{f}");
        }
    };

    // All within one clock minute (the server's).
    let mut monitor = cluster.connect(DB);
    common::wait_for_room_in_window(&mut monitor, 15.0);
    let d = delta(&mut monitor, || {
        assert_eq!(reason(&mut c, &k.key), "ok");
        assert_eq!(reason(&mut c, &k.key), "ok");
        refuse_all(&mut c);
        // The 60 forgeries took none of the 3 calls a minute.
        assert_eq!(reason(&mut c, &k.key), "ok");
        assert_eq!(reason(&mut c, &k.key), "rate_limited");
        // Over its limit, the key's forgeries are still invalid_secret.
        refuse_all(&mut c);
        assert_eq!(reason(&mut c, &k.key), "rate_limited");
    });
    assert_eq!(d["verify_ok"], 3, "{d:?}");
    assert_eq!(d["verify_rate_limited"], 2, "{d:?}");
    assert_eq!(d["verify_invalid_secret"], 120, "{d:?}");
    assert_eq!(d["forged_signatures"], 120, "{d:?}");
    assert_eq!(d["argon2_runs"], 1, "{d:?}");

    // Usage: the worker writes 3 verified and 2 rejected (the rate-limited calls) and
    // nothing for the forgeries. Two flushes after the calls, everything is written.
    let flushes = stats(&mut monitor)["flushes"];
    wait_for("two flushes", Duration::from_secs(30), || {
        stats(&mut monitor)["flushes"] >= flushes + 2
    });
    let row = monitor
        .query_one(
            "SELECT coalesce(sum(verified), 0)::bigint, coalesce(sum(rejected), 0)::bigint
               FROM api_keys.usage WHERE key_id = $1::text::uuid",
            &[&k.id],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (3, 2),
        "usage (verified, rejected)"
    );
}

// ---------------------------------------------------------------------------------------
// Signing key rotation and retirement.
// ---------------------------------------------------------------------------------------

/// rotate_signing_key() by an admin: new keys are signed with the new signing key, old
/// ones keep verifying, the audit names the admin; only admins may call it and nobody
/// but superusers reads the table. Retirement per README refuses the retired key's
/// keys from the DELETE's commit on, in a session that verified them before.
#[test]
fn rotating_and_retiring_a_signing_key() {
    let cluster = Cluster::start("sk_rotate");
    let mut su = cluster.connect_fast(DB);
    su.batch_execute(
        "CREATE ROLE signer IN ROLE api_keys_admin; CREATE ROLE plain; \
         CREATE ROLE gate IN ROLE api_keys_verifier",
    )
    .unwrap();
    let a = issue(&mut su, "'key a', 'service', 'production'");
    let first_id = signing_id_of(&a).to_string();
    assert_eq!(
        stored_signing_key(&mut su, &a.id).as_deref(),
        Some(&*first_id)
    );
    assert_eq!(signing_keys(&mut su).len(), 1, "CREATE EXTENSION makes one");

    // Rotation by a member of api_keys_admin, with an application actor.
    let mut admin = session_as(&cluster, "signer");
    admin
        .batch_execute("SET api_keys.actor = 'ops@example.com'")
        .unwrap();
    let (new_id, created_at) = rotate_signing_key(&mut admin);
    assert!(
        new_id.len() == SIGNING_ID_LEN && new_id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{new_id}"
    );
    assert_ne!(new_id, first_id);
    let table = signing_keys(&mut su);
    assert_eq!(
        table,
        vec![
            (first_id.clone(), table[0].1.clone()),
            (new_id.clone(), created_at)
        ],
        "signing_keys after the rotation"
    );
    let audit = su
        .query(
            "SELECT actor, app_actor, details->>'signing_key', key_id IS NULL
               FROM api_keys.audit_log WHERE action = 'signing_key_rotated'",
            &[],
        )
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].get::<_, String>(0), "signer");
    assert_eq!(
        audit[0].get::<_, Option<String>>(1).as_deref(),
        Some("ops@example.com")
    );
    assert_eq!(audit[0].get::<_, Option<String>>(2).as_ref(), Some(&new_id));
    assert!(audit[0].get::<_, bool>(3));

    // The superuser's session had cached the first signing key (it signed A); its next
    // key is signed with the new one.
    let b = issue(&mut su, "'key b', 'service', 'production'");
    assert_eq!(signing_id_of(&b), new_id);
    assert_eq!(stored_signing_key(&mut su, &b.id).as_ref(), Some(&new_id));
    // So is one the admin issues.
    let b2 = issue(&mut admin, "'key b2', 'service', 'production'");
    assert_eq!(signing_id_of(&b2), new_id);
    let mut fresh = cluster.connect(DB);
    for k in [&a, &b, &b2] {
        assert_eq!(reason(&mut fresh, &k.key), "ok", "{}", k.prefix);
    }

    // Who may not: an admin reads the public ids, never the secrets.
    let ids: Vec<String> = admin
        .query("SELECT id FROM api_keys.signing_keys", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.contains(&new_id), "{ids:?}");
    assert_eq!(
        sqlstate(
            "an admin reading signing key secrets",
            admin.query("SELECT secret FROM api_keys.signing_keys", &[])
        ),
        "42501"
    );
    for role in ["plain", "gate"] {
        let mut c = session_as(&cluster, role);
        assert_eq!(
            sqlstate(
                &format!("{role} rotating"),
                c.query("SELECT * FROM api_keys.rotate_signing_key()", &[])
            ),
            "42501",
            "{role}"
        );
        assert_eq!(
            sqlstate(
                &format!("{role} reading signing_keys"),
                c.query("SELECT id FROM api_keys.signing_keys", &[])
            ),
            "42501",
            "{role}"
        );
    }
    assert_eq!(
        signing_keys(&mut su).len(),
        2,
        "refused rotations left nothing"
    );
    let rotations: i64 = su
        .query_one(
            "SELECT count(*) FROM api_keys.audit_log WHERE action = 'signing_key_rotated'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rotations, 1);

    // Retirement of the first signing key, as README says. A long-lived session has
    // verified A (A is in the memo and the first signing key in its cache).
    let mut long_lived = cluster.connect(DB);
    assert_eq!(reason(&mut long_lived, &a.key), "ok");
    let successors = su
        .query(
            "SELECT k.id::text, r.id::text, r.key, r.prefix
               FROM api_keys.keys k, api_keys.api_key_rotate(k.id, interval '1 day') r
              WHERE k.signing_key = $1 AND k.status IN ('active', 'suspended')",
            &[&first_id],
        )
        .unwrap();
    assert_eq!(successors.len(), 1, "only A was signed with the first key");
    assert_eq!(successors[0].get::<_, String>(0), a.id);
    let a2 = Issued {
        id: successors[0].get(1),
        key: successors[0].get(2),
        prefix: successors[0].get(3),
    };
    assert_eq!(signing_id_of(&a2), new_id);
    // In its grace period A still works.
    assert_eq!(reason(&mut long_lived, &a.key), "ok");
    assert_eq!(reason(&mut long_lived, &a2.key), "ok");

    let mut tx = su.transaction().unwrap();
    let deleted = tx
        .execute(
            "DELETE FROM api_keys.signing_keys WHERE id = $1",
            &[&first_id],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    // Not committed: nothing changes for anyone else.
    assert_eq!(reason(&mut long_lived, &a.key), "ok");
    tx.commit().unwrap();

    let mut monitor = cluster.connect(DB);
    let d = delta(&mut monitor, || {
        assert_eq!(reason(&mut long_lived, &a.key), "invalid_secret");
        assert_eq!(reason(&mut cluster.connect(DB), &a.key), "invalid_secret");
        for k in [&a2, &b, &b2] {
            assert_eq!(reason(&mut long_lived, &k.key), "ok", "{}", k.prefix);
        }
    });
    assert_eq!(d["forged_signatures"], 2, "{d:?}");
    assert_eq!(d["argon2_runs"], 0, "{d:?}");
    // New keys are still signed with the remaining signing key.
    let c = issue(&mut su, "'after retirement', 'service', 'production'");
    assert_eq!(signing_id_of(&c), new_id);
    assert_eq!(reason(&mut long_lived, &c.key), "ok");
}

/// A session holding the signing keys in its cache verifies a key signed with a signing
/// key created by another session since, at its very next statement: the rotation's
/// commit invalidated the cache (the re-read for unknown ids, at most once a second,
/// cannot be what found it: the check runs within that second).
#[test]
fn a_rotation_reaches_a_long_lived_session_at_its_next_statement() {
    let cluster = Cluster::start("sk_inval");
    let mut admin = cluster.connect_fast(DB);
    let a = issue(&mut admin, "'key a', 'service', 'production'");
    let mut strict = false;
    for attempt in 1..=10 {
        let mut long_lived = cluster.connect(DB);
        let read_at = Instant::now();
        // Its first verification reads the signing keys.
        assert_eq!(reason(&mut long_lived, &a.key), "ok");
        let (new_id, _) = rotate_signing_key(&mut admin);
        let c = issue(&mut admin, "'key c', 'service', 'production'");
        assert_eq!(signing_id_of(&c), new_id);
        assert_eq!(
            reason(&mut long_lived, &c.key),
            "ok",
            "attempt {attempt}: the session did not see the new signing key"
        );
        assert_eq!(reason(&mut long_lived, &a.key), "ok");
        let elapsed = read_at.elapsed();
        eprintln!("attempt {attempt}: cache read to verified in {elapsed:?}");
        if elapsed < REREAD_AFTER {
            strict = true;
            break;
        }
    }
    assert!(strict, "never within {REREAD_AFTER:?} of the cache read");
}

// ---------------------------------------------------------------------------------------
// Keys issued before 0.5.0.
// ---------------------------------------------------------------------------------------

/// An unsigned key verifies on the old path (argon2 within the budgets, no forged
/// signature counted); rotating it yields a signed key.
#[test]
fn an_unsigned_key_verifies_and_rotates_into_a_signed_one() {
    let cluster = Cluster::start("sk_unsigned");
    let mut c = cluster.connect_fast(DB);
    let u = issue_unsigned(&mut c, "'from 0.4', 'service', 'production'");
    assert_eq!(u.key.len(), 8 + 12 + 1 + SECRET_LEN + CHECKSUM_LEN);
    assert_eq!(stored_signing_key(&mut c, &u.id), None);
    let mut monitor = cluster.connect(DB);
    let mut rng = rand::thread_rng();

    let d = delta(&mut monitor, || {
        assert_eq!(reason(&mut cluster.connect(DB), &u.key), "ok");
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    // A wrong secret for it is hashed (no signature to check), not a forged signature.
    let d = delta(&mut monitor, || {
        assert_eq!(
            reason(&mut c, &forged_unsigned(&mut rng, &u.prefix)),
            "invalid_secret"
        );
    });
    assert_eq!(d["argon2_runs"], 1, "{d:?}");
    assert_eq!(d["forged_signatures"], 0, "{d:?}");
    // A signed-shape presentation for it fails the MAC like any other.
    let current = signing_keys(&mut c).pop().unwrap().0;
    let d = delta(&mut monitor, || {
        assert_eq!(
            reason(&mut c, &forged_signed(&mut rng, &u.prefix, &current)),
            "invalid_secret"
        );
    });
    assert_eq!(d["argon2_runs"], 0, "{d:?}");
    assert_eq!(d["forged_signatures"], 1, "{d:?}");

    let r = rotate_key(&mut c, &u.id, "1 hour");
    assert_ne!(r.prefix, u.prefix);
    assert_eq!(r.key.len(), SIGNED_KEY_LEN, "{}", r.key);
    let shape = regex::Regex::new("^ak_live_[0-9A-Za-z]{12}_[0-9A-Za-z]{70}$").unwrap();
    assert!(shape.is_match(&r.key), "{}", r.key);
    assert!(r.key.starts_with(&format!("{}_", r.prefix)));
    assert_eq!(signing_id_of(&r), current);
    assert_eq!(
        stored_signing_key(&mut c, &r.id).as_deref(),
        Some(&*current)
    );
    let mut fresh = cluster.connect(DB);
    assert_eq!(reason(&mut fresh, &r.key), "ok");
    // The old key works for its grace period.
    assert_eq!(reason(&mut fresh, &u.key), "ok");
    // The successor's secret without its signature is refused like any forgery.
    assert_eq!(reason(&mut fresh, &unsigned_shape_of(&r)), "invalid_secret");
}

// ---------------------------------------------------------------------------------------
// pg_dump / pg_restore.
// ---------------------------------------------------------------------------------------

/// Signing keys as comparable (id, hex secret) pairs.
fn signing_key_set(c: &mut Client) -> BTreeSet<(String, String)> {
    c.query(
        "SELECT id, encode(secret, 'hex') FROM api_keys.signing_keys",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A dump restored into a new database: every key (signed with the current signing key,
/// with an older one, and unsigned) verifies; the dumped signing keys are there beside
/// exactly one new one, which signs the keys issued there; forgeries are refused.
#[test]
fn dump_and_restore_keeps_every_key_verifying() {
    let cluster = Cluster::start("sk_dump");
    let mut c = cluster.connect_fast(DB);
    let older = issue(
        &mut c,
        "'signed by the first signing key', 'service', 'production'",
    );
    let (rotated_id, _) = rotate_signing_key(&mut c);
    let newer = issue(
        &mut c,
        "'signed by the rotated signing key', 'user', 'staging'",
    );
    let unsigned = issue_unsigned(&mut c, "'issued before 0.5.0', 'service', 'development'");
    assert_ne!(signing_id_of(&older), rotated_id);
    assert_eq!(signing_id_of(&newer), rotated_id);
    let keys = [&older, &newer, &unsigned];
    for k in keys {
        assert_eq!(
            reason(&mut c, &k.key),
            "ok",
            "before the dump: {}",
            k.prefix
        );
    }
    let dumped = signing_key_set(&mut c);
    assert_eq!(dumped.len(), 2);
    let stored_sql =
        "SELECT prefix || ' ' || coalesce(signing_key, '-') FROM api_keys.keys ORDER BY prefix";
    let stored: Vec<String> = c
        .query(stored_sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let dump = cluster.dir.join("signed.dump");
    let dump = dump.to_str().unwrap();
    cluster.run_tool("pg_dump", &["-Fc", "-f", dump, "-d", DB]);
    cluster.run_tool("createdb", &["restored"]);
    let out = cluster.run_tool("pg_restore", &["--exit-on-error", "-d", "restored", dump]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "pg_restore complained:\n{stderr}");

    let mut r = cluster.connect_fast("restored");
    let restored = signing_key_set(&mut r);
    assert!(restored.is_superset(&dumped), "{restored:?} ⊉ {dumped:?}");
    let added: Vec<_> = restored.difference(&dumped).collect();
    assert_eq!(
        added.len(),
        1,
        "one signing key from CREATE EXTENSION: {added:?}"
    );
    let restore_id = added[0].0.clone();
    let restored_stored: Vec<String> = r
        .query(stored_sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(restored_stored, stored, "keys.signing_key");

    let mut monitor = cluster.connect(DB);
    let d = delta(&mut monitor, || {
        let mut fresh = cluster.connect("restored");
        for k in keys {
            assert_eq!(reason(&mut fresh, &k.key), "ok", "restored: {}", k.prefix);
        }
    });
    assert_eq!(d["verify_ok"], 3, "{d:?}");

    // New keys there are signed with the restore's own signing key.
    let fresh_key = issue(
        &mut r,
        "'issued after the restore', 'service', 'production'",
    );
    assert_eq!(signing_id_of(&fresh_key), restore_id);
    assert_eq!(
        reason(&mut cluster.connect("restored"), &fresh_key.key),
        "ok"
    );
    // The original database has no such signing key: there it is a forgery, refused
    // before its (absent) prefix is even looked up.
    assert_eq!(reason(&mut c, &fresh_key.key), "invalid_secret");

    // Forgeries are refused in the restored database.
    let mut rng = rand::thread_rng();
    let mut forgeries = vec![
        unsigned_shape_of(&older),
        unsigned_shape_of(&newer),
        unsigned_shape_of(&fresh_key),
    ];
    for k in [&older, &newer, &fresh_key] {
        forgeries.push(forged_signed(&mut rng, &k.prefix, signing_id_of(k)));
        forgeries.push(forged_signed(&mut rng, &k.prefix, &restore_id));
    }
    forgeries.push(forged_signed(&mut rng, &unsigned.prefix, &restore_id));
    let d = delta(&mut monitor, || {
        for f in &forgeries {
            assert_eq!(reason(&mut r, f), "invalid_secret", "restored: {f}");
        }
    });
    assert_eq!(d["forged_signatures"], forgeries.len() as i64, "{d:?}");
    assert_eq!(d["argon2_runs"], 0, "{d:?}");
}

// ---------------------------------------------------------------------------------------
// Hot standby.
// ---------------------------------------------------------------------------------------

/// On a hot standby, a session that cached the signing keys before a rotation on the
/// primary verifies a key signed with the new one once replayed (the replayed commit
/// invalidates its cache; checked within the re-read second, with replay paused while
/// the session reads the old keys), refuses a retired signing key's keys once the
/// DELETE is replayed, and counts forgeries in the standby's own stats().
#[test]
fn a_standby_follows_signing_key_rotation_and_retirement() {
    let primary = Cluster::start("sk_primary");
    let mut p = primary.connect_fast(DB);
    let k1 = issue(&mut p, "'before the rotation', 'service', 'production'");
    let first_id = signing_id_of(&k1).to_string();

    let standby = primary.standby("sk_standby");
    let mut ctl = standby.connect(DB);
    let mut s = standby.connect(DB);
    wait_for_replay(&mut p, &mut ctl);
    assert_eq!(reason(&mut s, &k1.key), "ok");

    let mut rng = rand::thread_rng();
    let mut strict = false;
    let mut k2 = None;
    for attempt in 1..=10 {
        ctl.batch_execute("SELECT pg_wal_replay_pause()").unwrap();
        wait_for("replay paused", Duration::from_secs(30), || {
            ctl.query_one("SELECT pg_get_wal_replay_pause_state() = 'paused'", &[])
                .unwrap()
                .get(0)
        });
        let (new_id, _) = rotate_signing_key(&mut p);
        let k = issue(&mut p, "'after the rotation', 'service', 'production'");
        assert_eq!(signing_id_of(&k), new_id);
        let lsn: String = p
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .unwrap()
            .get(0);
        // Past the re-read interval, a key naming an unknown signing key makes `s`
        // read the table again, now, while the rotation is not yet replayed.
        thread::sleep(REREAD_AFTER + Duration::from_millis(100));
        let unknown = (0..)
            .map(|_| random_base62(&mut rng, SIGNING_ID_LEN))
            .find(|id| *id != first_id && *id != new_id)
            .unwrap();
        let read_at = Instant::now();
        assert_eq!(
            reason(&mut s, &forged_signed(&mut rng, &k1.prefix, &unknown)),
            "invalid_secret"
        );
        ctl.batch_execute("SELECT pg_wal_replay_resume()").unwrap();
        wait_for("replay of the rotation", Duration::from_secs(30), || {
            ctl.query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&lsn],
            )
            .unwrap()
            .get(0)
        });
        assert_eq!(
            reason(&mut s, &k.key),
            "ok",
            "attempt {attempt}: the standby session did not see the new signing key"
        );
        let elapsed = read_at.elapsed();
        eprintln!("standby attempt {attempt}: cache read to verified in {elapsed:?}");
        k2 = Some(k);
        if elapsed < REREAD_AFTER {
            strict = true;
            break;
        }
    }
    assert!(strict, "never within {REREAD_AFTER:?} of the cache read");
    let k2 = k2.unwrap();
    assert_eq!(reason(&mut s, &k1.key), "ok");
    assert_eq!(reason(&mut standby.connect(DB), &k2.key), "ok");

    // Forgeries on the standby, counted there.
    let forgeries: Vec<String> = (0..30)
        .map(|i| match i % 3 {
            0 => forged_signed(&mut rng, &k2.prefix, signing_id_of(&k2)),
            1 => forged_signed(&mut rng, &k1.prefix, &first_id),
            _ => unsigned_shape_of(&k2),
        })
        .collect();
    let d = delta(&mut ctl, || {
        for f in &forgeries {
            assert_eq!(reason(&mut s, f), "invalid_secret", "standby: {f}");
        }
    });
    assert_eq!(d["forged_signatures"], 30, "{d:?}");
    assert_eq!(d["verify_invalid_secret"], 30, "{d:?}");
    assert_eq!(d["argon2_runs"], 0, "{d:?}");

    // Retirement of the first signing key on the primary, replayed: `s` knows that id
    // (nothing makes it re-read), so only the invalidation can make it refuse k1.
    let deleted = p
        .execute(
            "DELETE FROM api_keys.signing_keys WHERE id = $1",
            &[&first_id],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    wait_for_replay(&mut p, &mut ctl);
    assert_eq!(reason(&mut s, &k1.key), "invalid_secret");
    assert_eq!(reason(&mut s, &k2.key), "ok");
    assert!(
        !standby.server_log().contains("ERROR"),
        "{}",
        standby.server_log()
    );
}

/// Someone holding a signing key can make valid signatures on wrong secrets. The first
/// one tells the backend so (a LOG line naming the signing key, never a secret); from
/// then on that backend hashes such presentations within the argon2 budgets, as for
/// unsigned keys, instead of without limit.
#[test]
fn a_leaked_signing_key_falls_back_to_the_argon2_budgets() {
    let cluster = Cluster::start("sk_leaked");
    let mut su = cluster.connect_fast(DB);
    let k = issue(&mut su, "'leaked', 'service', 'production'");
    let signing_id = signing_id_of(&k).to_string();
    let secret = signing_secret(&mut su, &signing_id);
    let mut rng = rand::thread_rng();
    let mut attacker = cluster.connect(DB);
    attacker
        .batch_execute("SET api_keys.argon2_budget_per_minute = 3")
        .unwrap();
    let d = delta(&mut su, || {
        for _ in 0..12 {
            let wrong = random_base62(&mut rng, SECRET_LEN);
            let message = format!("{}_{wrong}{signing_id}", k.prefix);
            let presented = signed_shape(&k.prefix, &wrong, &signing_id, &mac(&secret, &message));
            assert_eq!(reason(&mut attacker, &presented), "invalid_secret");
        }
    });
    // The first is hashed unbudgeted; the rest within 3 a minute (a minute boundary
    // may refill it once), the others throttled.
    assert!((2..=7).contains(&d["argon2_runs"]), "{d:?}");
    assert_eq!(d["argon2_runs"] + d["argon2_throttled"], 12, "{d:?}");
    assert_eq!(d["forged_signatures"], 0, "{d:?}");
    let log = cluster.server_log();
    assert!(
        log.contains(&format!("signing key {signing_id} and a wrong secret")),
        "no LOG line naming the signing key"
    );
    assert!(
        !log.contains(&hex(&secret)),
        "the signing key's secret is in the log"
    );
    // The real key, in another session, is not throttled.
    assert_eq!(reason(&mut cluster.connect(DB), &k.key), "ok");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A leaked-key report holding a valid signature on a wrong secret says so too: only a
/// holder of the signing key makes one, so the LOG line names the signing key, and the
/// presentation revokes nothing.
#[test]
fn a_report_with_a_valid_signature_on_a_wrong_secret_names_the_signing_key() {
    let cluster = Cluster::start("sk_leaked_report");
    let mut su = cluster.connect_fast(DB);
    let k = issue(&mut su, "'reported', 'service', 'production'");
    let signing_id = signing_id_of(&k).to_string();
    let secret = signing_secret(&mut su, &signing_id);
    let wrong = random_base62(&mut rand::thread_rng(), SECRET_LEN);
    let message = format!("{}_{wrong}{signing_id}", k.prefix);
    let presented = signed_shape(&k.prefix, &wrong, &signing_id, &mac(&secret, &message));
    let revoked = su
        .query(
            "SELECT api_keys.api_key_report_leaked(ARRAY[$1], 'scanner')",
            &[&presented],
        )
        .unwrap();
    assert!(revoked.is_empty());
    let log = cluster.server_log();
    assert!(
        log.contains(&format!("signing key {signing_id} and a wrong secret")),
        "no LOG line naming the signing key"
    );
    assert_eq!(reason(&mut su, &k.key), "ok");
}
