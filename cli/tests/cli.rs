//! The `api-keys` binary against a real cluster with the installed extension: every
//! command, output format and error path, with exact exit codes, and no secret in any
//! output but create's and rotate's.
//!
//! One cluster serves the tests of this file (started by the first, stopped when the
//! last lets go). Each test acts as its own plain login roles, which see only their own
//! keys, so tests running at the same time do not see each other's keys; `postgres`
//! (superuser, so an api_keys admin) does what needs an admin.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

#[test]
fn create_show_and_list_in_every_format() {
    let c = cluster();
    c.role("alice");
    let deploy = create_quiet(
        &c,
        "alice",
        &[
            "--name",
            "CI deploy",
            "--permissions",
            "runs:read, runs:write",
        ],
    );
    let json = expect(
        &c,
        "alice",
        0,
        &[
            "create",
            "--name",
            "staging export",
            "--type",
            "user",
            "--env",
            "staging",
            "--permissions",
            "exports:read",
            "--description",
            "nightly",
            "--expires-in",
            "90d",
            "--allowed-cidrs",
            "10.0.0.0/8,192.0.2.7",
            "--rate-limit-per-minute",
            "5",
            "--output",
            "json",
        ],
    );
    let created = json.json();
    let staging = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["prefix"], prefix_of(&staging));
    assert!(created["id"].as_str().unwrap().len() == 36);
    assert!(created["expires_at"].is_string());
    assert!(staging.starts_with("ak_stage_"), "{staging}");
    let table = expect(
        &c,
        "alice",
        0,
        &["create", "--name", "dev tool", "--env", "development"],
    );
    let dev = table
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ak_dev_"))
        .expect("the key on a line of its own")
        .to_owned();
    assert!(
        table.stdout.starts_with("Created service key ak_dev_"),
        "{table:?}"
    );
    assert!(table.stderr.contains("Store this key now"), "{table:?}");
    let keys = [deploy.as_str(), staging.as_str(), dev.as_str()];

    // show: by prefix, by id; every format.
    let show = expect(&c, "alice", 0, &["show", prefix_of(&deploy)]);
    assert!(
        lines(&show.stdout)
            .iter()
            .any(|l| l.starts_with("prefix:") && l.ends_with(&format!(" {}", prefix_of(&deploy)))),
        "{show:?}"
    );
    assert!(
        lines(&show.stdout)
            .iter()
            .any(|l| l.starts_with("permissions:") && l.ends_with(" runs:read,runs:write")),
        "{show:?}"
    );
    assert!(
        lines(&show.stdout)
            .iter()
            .any(|l| l.starts_with("last used:") && l.ends_with(" never")),
        "{show:?}"
    );
    let shown = expect(
        &c,
        "alice",
        0,
        &["show", created["id"].as_str().unwrap(), "-o", "json"],
    )
    .json();
    assert_eq!(shown["prefix"], created["prefix"]);
    assert_eq!(shown["key_type"], "user");
    assert_eq!(shown["environment"], "staging");
    assert_eq!(shown["description"], "nightly");
    assert_eq!(shown["scopes"], serde_json::json!(["exports:read"]));
    assert_eq!(
        shown["allowed_cidrs"],
        serde_json::json!(["10.0.0.0/8", "192.0.2.7/32"])
    );
    assert_eq!(shown["rate_limit_per_minute"], 5);
    assert_eq!(shown["owner"], "alice");
    let csv = expect(
        &c,
        "alice",
        0,
        &["show", prefix_of(&dev), "--output", "csv"],
    );
    assert!(
        csv.stdout
            .starts_with("id,prefix,name,description,key_type,environment,owner,status,"),
        "{csv:?}"
    );
    assert_eq!(csv.stdout.lines().count(), 2);

    // list: the table's columns; newest first.
    let list = expect(&c, "alice", 0, &["list"]);
    let rows = lines(&list.stdout);
    assert_eq!(
        rows[0]
            .split("  ")
            .filter(|s| !s.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "ID",
            "PREFIX",
            "NAME",
            "TYPE",
            "ENV",
            "STATUS",
            "PERMISSIONS",
            "LAST USED"
        ]
    );
    assert_eq!(rows.len(), 4, "{list:?}");
    assert!(
        rows[1].contains(prefix_of(&dev)) && rows[3].contains(prefix_of(&deploy)),
        "{list:?}"
    );
    assert!(
        rows[3].contains("runs:read,runs:write") && rows[3].ends_with("never"),
        "{list:?}"
    );
    let all = expect(&c, "alice", 0, &["list", "--output", "json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let csv = expect(
        &c,
        "alice",
        0,
        &["list", "--output", "csv", "--order-by", "name"],
    );
    assert_eq!(
        lines(&csv.stdout)[0],
        "id,prefix,name,type,environment,status,permissions,last_used_at,owner,expires_at,created_at"
    );
    assert!(
        lines(&csv.stdout)[1]
            .contains(",CI deploy,service,production,active,\"runs:read,runs:write\",,alice,,"),
        "{csv:?}"
    );

    // Filters, each alone and together.
    let names = |args: &[&str]| -> Vec<String> {
        let out = expect(
            &c,
            "alice",
            0,
            &[&["list", "-o", "json", "--order-by", "name"][..], args].concat(),
        );
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&["--env", "staging"]), ["staging export"]);
    assert_eq!(names(&["--environment", "production"]), ["CI deploy"]);
    assert_eq!(names(&["--status", "active"]).len(), 3);
    assert_eq!(names(&["--status", "revoked"]), Vec::<String>::new());
    assert_eq!(names(&["--search", "EXPORT"]), ["staging export"]);
    assert_eq!(names(&["--search", prefix_of(&dev)]), ["dev tool"]);
    assert_eq!(names(&["--owner", "alice"]).len(), 3);
    assert_eq!(names(&["--filter", "scope = runs:write"]), ["CI deploy"]);
    assert_eq!(
        names(&["--filter", "scope ~ READ"]),
        ["CI deploy", "staging export"]
    );
    assert_eq!(
        names(&["--filter", "name ~ 'ci' or type = user"]),
        ["CI deploy", "staging export"]
    );
    assert_eq!(
        names(&[
            "--filter",
            "env in (staging, development) and not expires = never"
        ]),
        ["staging export"]
    );
    assert_eq!(names(&["--filter", "expires < 100d"]), ["staging export"]);
    assert_eq!(
        names(&["--filter", "expires > 100d"]),
        ["CI deploy", "dev tool"]
    );
    assert_eq!(
        names(&["--filter", "created < 1h and last_used = never"]).len(),
        3
    );
    assert_eq!(names(&["--filter", "created > 1d"]), Vec::<String>::new());
    assert_eq!(
        names(&["--filter", "description ~ night", "--env", "staging"]),
        ["staging export"]
    );
    assert_eq!(
        names(&["--filter", "description !~ night"]),
        ["CI deploy", "dev tool"]
    );
    assert_eq!(
        names(&[
            "--filter",
            &format!("id = {}", created["id"].as_str().unwrap())
        ]),
        ["staging export"]
    );
    assert_eq!(
        names(&[
            "--filter",
            "created >= 2000-01-01 and created < '2999-01-01 00:00'"
        ])
        .len(),
        3
    );

    // Paging: stable, with a note on stderr when a page is full.
    let page = |n: &str| {
        expect(
            &c,
            "alice",
            0,
            &[
                "list",
                "--order-by",
                "name desc",
                "--page-size",
                "2",
                "--page",
                n,
            ],
        )
    };
    let p1 = page("1");
    assert_eq!(lines(&p1.stdout).len(), 3);
    assert!(p1.stdout.contains("staging export") && p1.stdout.contains("dev tool"));
    assert_eq!(p1.stderr, "Page 1 (2 keys); there may be more: --page 2\n");
    let p2 = page("2");
    assert_eq!(lines(&p2.stdout).len(), 2);
    assert!(
        p2.stdout.contains("CI deploy") && p2.stderr.is_empty(),
        "{p2:?}"
    );
    let p3 = page("3");
    assert_eq!(
        (p3.stdout.as_str(), p3.stderr.as_str()),
        ("", "No keys found.\n")
    );

    // Usage errors: exit 2, with the position in the filter.
    let bad = expect(&c, "alice", 2, &["list", "--filter", "status ="]);
    assert_eq!(
        bad.stderr,
        "error: --filter: at 9: expected a value after '=', got the end of the filter\n\
         hint: See `api-keys list --help` for the filter language.\n"
    );
    let bad = expect(&c, "alice", 2, &["list", "--filter", "status = actve"]);
    assert!(
        bad.stderr
            .starts_with("error: --filter: at 10: unknown status 'actve'"),
        "{bad:?}"
    );
    let bad = expect(&c, "alice", 2, &["list", "--filter", "colour = red or"]);
    assert!(
        bad.stderr
            .starts_with("error: --filter: at 1: unknown field 'colour'"),
        "{bad:?}"
    );
    let bad = expect(
        &c,
        "alice",
        2,
        &["list", "--filter", "created < 'not a date-ish'"],
    );
    assert!(bad.stderr.contains("expected a duration"), "{bad:?}");
    // A date the client lets through and the server cannot read: 22007, a usage error.
    expect(
        &c,
        "alice",
        2,
        &["list", "--filter", "created < 2025-13-45"],
    );
    expect(&c, "alice", 2, &["list", "--order-by", "secret_hash"]);
    expect(&c, "alice", 2, &["list", "--page-size", "0"]);
    expect(&c, "alice", 2, &["list", "--page-size", "1001"]);
    expect(&c, "alice", 2, &["list", "--status", "gone"]);

    let after = [
        &show,
        &csv,
        &list,
        &p1,
        &p2,
        &expect(&c, "alice", 0, &["list", "-o", "json"]),
        &expect(&c, "alice", 0, &["show", prefix_of(&staging), "-o", "json"]),
    ];
    assert_no_secret(&after, &keys);
}

#[test]
fn update_follows_the_lifecycle() {
    let c = cluster();
    c.role("bob");
    let key = create_quiet(
        &c,
        "bob",
        &["--name", "worker", "--permissions", "jobs:read"],
    );
    let p = prefix_of(&key);

    let out = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--status",
            "suspended",
            "--reason",
            "investigating",
        ],
    );
    assert!(
        lines(&out.stdout)
            .iter()
            .any(|l| l.starts_with("status:") && l.ends_with(" suspended")),
        "{out:?}"
    );
    assert!(
        lines(&out.stdout)
            .iter()
            .any(|l| l.starts_with("status reason:") && l.ends_with(" investigating")),
        "{out:?}"
    );
    // Suspended twice: an invalid transition (55000).
    let again = expect(&c, "bob", 5, &["update", p, "--status", "suspended"]);
    assert!(
        again
            .stderr
            .starts_with(&format!("error: key {p} is already suspended")),
        "{again:?}"
    );
    expect(&c, "bob", 0, &["update", p, "--status", "active"]);

    // Settings, in one call.
    let edited = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--name",
            "worker 2",
            "--description",
            "queue",
            "--permissions",
            "jobs:read,jobs:write",
            "--allowed-cidrs",
            "10.0.0.0/8",
            "--expires-in",
            "30d",
            "--rate-limit-per-minute",
            "7",
            "--rate-limit-per-hour",
            "70",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(edited["name"], "worker 2");
    assert_eq!(edited["description"], "queue");
    assert_eq!(
        edited["scopes"],
        serde_json::json!(["jobs:read", "jobs:write"])
    );
    assert_eq!(edited["allowed_cidrs"], serde_json::json!(["10.0.0.0/8"]));
    assert!(edited["expires_at"].is_string());
    assert_eq!(
        (
            edited["rate_limit_per_minute"].as_i64(),
            edited["rate_limit_per_hour"].as_i64()
        ),
        (Some(7), Some(70))
    );
    let cleared = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--no-expiry",
            "--allowed-cidrs",
            "",
            "--description",
            "",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(cleared["expires_at"], Value::Null);
    assert_eq!(cleared["description"], Value::Null);
    assert!(
        cleared["allowed_cidrs"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{cleared}"
    );
    let at = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--expires-at",
            "2999-06-01 12:00+00",
            "-o",
            "json",
        ],
    )
    .json();
    assert!(
        at["expires_at"].as_str().unwrap().starts_with("2999-06-01"),
        "{at}"
    );
    // Settings and status together; the status change comes last.
    let both = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--name",
            "worker 3",
            "--status",
            "suspended",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(
        (both["name"].as_str(), both["status"].as_str()),
        (Some("worker 3"), Some("suspended"))
    );
    expect(&c, "bob", 0, &["update", p, "--status", "active"]);

    // Invalid values: 22023 from the server, a usage error, with its hint.
    let bad = expect(&c, "bob", 2, &["update", p, "--permissions", "Not A Scope"]);
    assert!(
        bad.stderr.starts_with("error: ") && bad.stderr.contains("scope"),
        "{bad:?}"
    );
    expect(
        &c,
        "bob",
        2,
        &["update", p, "--allowed-cidrs", "10.0.0.0/33"],
    );
    expect(&c, "bob", 2, &["update", p, "--rate-limit-per-minute", "0"]);
    expect(&c, "bob", 2, &["update", p, "--expires-at", "2000-01-01"]);
    // Nothing to change, a reason without a status, conflicting expiries: clap or us.
    let nothing = expect(&c, "bob", 2, &["update", p]);
    assert!(
        nothing
            .stderr
            .starts_with("error: nothing to change\nhint: "),
        "{nothing:?}"
    );
    expect(&c, "bob", 2, &["update", p, "--reason", "why"]);
    expect(
        &c,
        "bob",
        2,
        &["update", p, "--no-expiry", "--expires-in", "1d"],
    );
    expect(&c, "bob", 2, &["update", p, "--status", "paused"]);

    // Revoking needs a reason (22023 → 2); then revoked is final (55000 → 5).
    let no_reason = expect(&c, "bob", 2, &["update", p, "--status", "revoked"]);
    assert!(
        no_reason
            .stderr
            .starts_with("error: reason is required to revoke a key\nhint: "),
        "{no_reason:?}"
    );
    let revoked = expect(
        &c,
        "bob",
        0,
        &[
            "update",
            p,
            "--status",
            "revoked",
            "--reason",
            "leaked in a CI log",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["status_reason"], "leaked in a CI log");
    let back = expect(&c, "bob", 5, &["update", p, "--status", "active"]);
    assert!(
        back.stderr.contains("revoked") && back.stderr.contains("\nhint: Revocation is final."),
        "{back:?}"
    );
    expect(&c, "bob", 5, &["update", p, "--name", "again"]);
    expect(&c, "bob", 5, &["rotate", p]);

    // Expired is final too.
    let other = create_quiet(&c, "bob", &["--name", "short lived"]);
    expect(
        &c,
        "bob",
        0,
        &["update", prefix_of(&other), "--status", "expired"],
    );
    expect(
        &c,
        "bob",
        5,
        &["update", prefix_of(&other), "--status", "active"],
    );
    let list = expect(&c, "bob", 0, &["list", "--status", "expired", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_no_secret(&[&again, &bad, &back, &no_reason], &[&key, &other]);
}

#[test]
fn rotate_with_and_without_grace() {
    let c = cluster();
    c.role("carol");
    let old = create_quiet(
        &c,
        "carol",
        &["--name", "api", "--permissions", "runs:read"],
    );
    let rotated = expect(
        &c,
        "carol",
        0,
        &["rotate", prefix_of(&old), "--grace", "1h", "-o", "json"],
    );
    let r = rotated.json();
    let new = r["key"].as_str().unwrap().to_owned();
    assert_eq!(r["prefix"], prefix_of(&new));
    assert_eq!(r["old_prefix"], prefix_of(&old));
    assert_eq!(r["old_status"], "active");
    assert!(r["old_expires_at"].is_string(), "{r}");
    // The old key still works for the grace period; the new one has its settings.
    let old_now = expect(&c, "carol", 0, &["show", prefix_of(&old), "-o", "json"]).json();
    assert_eq!(old_now["status"], "active");
    assert_eq!(old_now["expires_at"], r["old_expires_at"]);
    let new_now = expect(&c, "carol", 0, &["show", prefix_of(&new), "-o", "json"]).json();
    assert_eq!(new_now["rotated_from"], old_now["id"]);
    assert_eq!(new_now["scopes"], serde_json::json!(["runs:read"]));

    // Without grace the old key is revoked; --quiet prints the new key only.
    let quiet = expect(
        &c,
        "carol",
        0,
        &["rotate", new_now["id"].as_str().unwrap(), "--quiet"],
    );
    let newer = quiet.stdout.trim_end().to_owned();
    assert_eq!(quiet.stdout, format!("{newer}\n"));
    assert_eq!(quiet.stderr, "");
    let gone = expect(&c, "carol", 0, &["show", prefix_of(&new), "-o", "json"]).json();
    assert_eq!(gone["status"], "revoked");
    assert_eq!(
        gone["status_reason"],
        format!("rotated to {}", prefix_of(&newer))
    );

    let table = expect(
        &c,
        "carol",
        0,
        &["rotate", prefix_of(&newer), "--grace", "30m"],
    );
    assert!(
        table
            .stdout
            .starts_with(&format!("Rotated {} to ", prefix_of(&newer))),
        "{table:?}"
    );
    assert!(
        table.stdout.contains("the old key is valid until"),
        "{table:?}"
    );
    assert!(table.stderr.contains("Store this key now"), "{table:?}");

    expect(
        &c,
        "carol",
        2,
        &["rotate", prefix_of(&newer), "--grace", "soon"],
    );
    expect(
        &c,
        "carol",
        2,
        &["rotate", prefix_of(&newer), "--quiet", "--output", "json"],
    );
    // A suspended key is reactivated before it is rotated.
    let s = create_quiet(&c, "carol", &["--name", "paused"]);
    expect(
        &c,
        "carol",
        0,
        &["update", prefix_of(&s), "--status", "suspended"],
    );
    let refused = expect(&c, "carol", 5, &["rotate", prefix_of(&s)]);
    assert!(
        refused.stderr.contains("reactivate it before rotating"),
        "{refused:?}"
    );

    let listing = expect(&c, "carol", 0, &["list", "-o", "csv"]);
    assert_no_secret(&[&listing, &refused], &[&old, &new, &newer, &s]);
}

#[test]
fn delete_asks_or_needs_yes() {
    let c = cluster();
    c.role("dave");
    let key = create_quiet(&c, "dave", &["--name", "temporary"]);
    let p = prefix_of(&key);
    // No terminal and no --yes: refused before anything happens.
    let refused = expect(&c, "dave", 2, &["delete", p]);
    assert_eq!(
        refused.stderr,
        "error: refusing to delete without confirmation: stdin is not a terminal\n\
         hint: Pass --yes to delete without asking.\n"
    );
    expect(&c, "dave", 0, &["show", p]);
    let deleted = expect(&c, "dave", 0, &["delete", p, "--yes"]);
    assert_eq!(
        deleted.stdout,
        format!("Deleted key {p} (temporary); its audit history stays.\n")
    );
    expect(&c, "dave", 3, &["show", p]);
    expect(&c, "dave", 3, &["delete", p, "--yes"]);
    // The history stays (an admin reads every entry, a deleted key's included).
    let history = expect(&c, "postgres", 0, &["audit", p, "-o", "json"]).json();
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["issued", "deleted"]);
    // --output json prints the deleted row.
    let other = create_quiet(&c, "dave", &["--name", "second"]);
    let row = expect(
        &c,
        "dave",
        0,
        &["delete", prefix_of(&other), "-y", "-o", "json"],
    )
    .json();
    assert_eq!(row["name"], "second");
    assert_no_secret(&[&refused, &deleted], &[&key, &other]);
}

/// `api-keys delete <prefix>` as `user` on a terminal (util-linux `script` lends it
/// one), answering `answer`; its exit code and what the terminal showed.
fn delete_on_a_terminal(c: &Cluster, user: &str, prefix: &str, answer: &str) -> (i32, String) {
    let port = c.port.to_string();
    let mut child = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} delete {prefix}",
            env!("CARGO_BIN_EXE_api-keys")
        ))
        .arg("/dev/null")
        .env_clear()
        .envs([
            ("PGHOST", c.socket_dir()),
            ("PGPORT", &port),
            ("PGUSER", user),
            ("PGDATABASE", DB),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux script, for a terminal");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{answer}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[test]
fn delete_asks_on_a_terminal() {
    let c = cluster();
    c.role("ivan");
    let key = create_quiet(&c, "ivan", &["--name", "asked about"]);
    let p = prefix_of(&key);
    let (code, screen) = delete_on_a_terminal(&c, "ivan", p, "n");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains(&format!("Delete key {p}? [y/N] Not deleted.")),
        "{screen}"
    );
    expect(&c, "ivan", 0, &["show", p]);
    let (code, screen) = delete_on_a_terminal(&c, "ivan", p, "y");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains(&format!(
            "Delete key {p}? [y/N] Deleted key {p} (asked about)"
        )),
        "{screen}"
    );
    expect(&c, "ivan", 3, &["show", p]);
    assert!(!screen.contains(secret(&key)));
}

/// The usage totals of `args` (`usage … -o json`), summed over the hours.
fn usage_totals(c: &Cluster, user: &str, args: &[&str]) -> (i64, i64) {
    let out = expect(c, user, 0, &[&["usage", "-o", "json"][..], args].concat()).json();
    out.as_array().unwrap().iter().fold((0, 0), |(v, r), h| {
        (
            v + h["verified"].as_i64().unwrap(),
            r + h["rejected"].as_i64().unwrap(),
        )
    })
}

#[test]
fn usage_per_key_and_owner() {
    let c = cluster();
    c.role("erin");
    let key = create_quiet(
        &c,
        "erin",
        &["--name", "busy", "--permissions", "runs:read"],
    );
    let idle = create_quiet(&c, "erin", &["--name", "idle"]);
    let p = prefix_of(&key);
    let mut admin = c.admin(DB);
    for scope in ["runs:read", "runs:read", "runs:read", "runs:write"] {
        admin
            .query_one(
                "SELECT valid FROM api_keys.api_key_verify($1::text, NULL, $2::text)",
                &[&key, &scope],
            )
            .unwrap();
    }
    // The worker writes usage within its flush interval (1 s here).
    let start = Instant::now();
    while usage_totals(&c, "erin", &["--key", p]) != (3, 1) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "usage never arrived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = expect(&c, "erin", 0, &["usage", "--key", p, "--hours", "3"]);
    let rows = lines(&table.stdout);
    assert!(
        rows[0].starts_with("HOUR") && rows[0].contains("VERIFIED") && rows[0].contains("REJECTED"),
        "{table:?}"
    );
    assert_eq!(rows.len(), 5, "a header, 3 hours and the total: {table:?}");
    assert!(
        rows[1..4]
            .iter()
            .any(|r| r.contains('█') && r.contains('░')),
        "{table:?}"
    );
    assert_eq!(
        rows[4].split_whitespace().collect::<Vec<_>>(),
        ["total", "3", "1"]
    );
    assert_eq!(usage_totals(&c, "erin", &["--owner", "erin"]), (3, 1));
    assert_eq!(usage_totals(&c, "erin", &[]), (3, 1));
    assert_eq!(
        usage_totals(&c, "erin", &["--key", prefix_of(&idle)]),
        (0, 0)
    );
    let csv = expect(&c, "erin", 0, &["usage", "--owner", "erin", "-o", "csv"]);
    assert_eq!(lines(&csv.stdout)[0], "hour,verified,rejected");
    assert_eq!(lines(&csv.stdout).len(), 25);
    assert!(
        lines(&csv.stdout).iter().any(|l| l.ends_with(",3,1")),
        "{csv:?}"
    );

    // The last use, in listings and filters.
    let listed = expect(&c, "erin", 0, &["list", "--filter", "last_used < 1h"]);
    assert!(
        listed.stdout.contains(p) && listed.stdout.contains("s ago"),
        "{listed:?}"
    );
    assert!(!listed.stdout.contains(prefix_of(&idle)));
    let never = expect(
        &c,
        "erin",
        0,
        &["list", "--filter", "last_used = never", "-o", "json"],
    )
    .json();
    assert_eq!(never.as_array().unwrap().len(), 1);

    expect(&c, "erin", 3, &["usage", "--owner", "nobody"]);
    expect(&c, "erin", 3, &["usage", "--key", "ak_live_AAAAAAAAAAAA"]);
    expect(&c, "erin", 2, &["usage", "--hours", "0"]);
    expect(&c, "erin", 2, &["usage", "--key", p, "--owner", "erin"]);
    assert_no_secret(&[&table, &csv, &listed], &[&key, &idle]);
}

#[test]
fn audit_shows_each_change() {
    let c = cluster();
    c.role("frank");
    let key = create_quiet(&c, "frank", &["--name", "audited"]);
    let p = prefix_of(&key);
    expect(
        &c,
        "frank",
        0,
        &["update", p, "--status", "suspended", "--reason", "checking"],
    );
    expect(&c, "frank", 0, &["update", p, "--status", "active"]);
    let table = expect(&c, "frank", 0, &["audit", p]);
    let rows = lines(&table.stdout);
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["AT", "PREFIX", "ACTION", "ACTOR", "STATUS", "REASON"]
    );
    assert_eq!(rows.len(), 4, "{table:?}");
    assert!(rows[1].contains("issued") && rows[1].contains("frank"));
    assert!(
        rows[2].contains("suspended")
            && rows[2].contains("active → suspended")
            && rows[2].ends_with("checking"),
        "{table:?}"
    );
    assert!(
        rows[3].contains("reactivated") && rows[3].contains("suspended → active"),
        "{table:?}"
    );
    let json = expect(&c, "frank", 0, &["audit", p, "-o", "json"]).json();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["action"], "issued");
    assert_eq!(entries[1]["reason"], "checking");
    // --limit keeps the latest.
    let last = expect(&c, "frank", 0, &["audit", p, "--limit", "1", "-o", "json"]).json();
    assert_eq!(last[0]["action"], "reactivated");
    let csv = expect(&c, "frank", 0, &["audit", "-o", "csv"]);
    assert_eq!(
        lines(&csv.stdout)[0],
        "id,at,key_id,prefix,action,actor,app_actor,old_status,new_status,reason,details"
    );
    // Without a key: every entry this role may see, which are its own keys' only.
    let mine = expect(&c, "frank", 0, &["audit", "-o", "json"]).json();
    assert!(
        mine.as_array().unwrap().iter().all(|e| e["prefix"] == p),
        "{mine}"
    );
    expect(&c, "frank", 2, &["audit", "--limit", "0"]);
    expect(&c, "frank", 3, &["audit", "ak_live_AAAAAAAAAAAA"]);
    assert_no_secret(&[&table, &csv], &[&key]);
}

#[test]
fn not_found_and_not_allowed() {
    let c = cluster();
    c.role("grace");
    c.role("mallory");
    let key = create_quiet(&c, "grace", &["--name", "grace's"]);
    let p = prefix_of(&key);
    let id_text = expect(&c, "grace", 0, &["show", p, "-o", "json"]).json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = id_text.as_str();

    // Unknown keys: 3, from the client (show) and the server (P0002).
    let unknown = expect(&c, "grace", 3, &["show", "ak_live_AAAAAAAAAAAA"]);
    assert_eq!(
        unknown.stderr,
        "error: no API key with prefix ak_live_AAAAAAAAAAAA\n\
         hint: The key does not exist, or it belongs to another owner.\n"
    );
    let nil = "00000000-0000-4000-8000-000000000000";
    expect(&c, "grace", 3, &["show", nil]);
    let server = expect(&c, "grace", 3, &["update", nil, "--status", "suspended"]);
    assert!(
        server.stderr.starts_with("error: no API key with id"),
        "{server:?}"
    );
    expect(&c, "grace", 3, &["rotate", "ak_live_AAAAAAAAAAAA"]);
    // Not a key's name at all: a usage error.
    let garbage = expect(&c, "grace", 2, &["show", "garbage"]);
    assert!(
        garbage
            .stderr
            .starts_with("error: a key must be named by its id (a uuid) or its prefix\nhint: "),
        "{garbage:?}"
    );
    expect(&c, "grace", 2, &["update", "garbage", "--name", "x"]);

    // Another owner's key looks like no key at all (3), whatever the command.
    for args in [
        vec!["show", p],
        vec!["show", id],
        vec!["update", p, "--status", "suspended"],
        vec!["update", id, "--name", "mine now"],
        vec!["rotate", p],
        vec!["delete", p, "--yes"],
        vec!["usage", "--key", p],
        vec!["usage", "--owner", "grace"],
        vec!["audit", p],
    ] {
        expect(&c, "mallory", 3, &args);
    }
    assert_eq!(
        expect(&c, "mallory", 0, &["list", "-o", "json"]).stdout,
        "[]\n"
    );
    assert_eq!(
        expect(
            &c,
            "mallory",
            0,
            &["list", "--owner", "grace", "-o", "json"]
        )
        .stdout,
        "[]\n"
    );
    assert_eq!(
        expect(&c, "grace", 0, &["show", p, "-o", "json"]).json()["status"],
        "active"
    );

    // Keys for another owner: admins only (42501 → 4).
    let denied = expect(
        &c,
        "mallory",
        4,
        &["create", "--name", "for grace", "--owner", "grace"],
    );
    assert!(
        denied
            .stderr
            .starts_with("error: role mallory may only issue keys it owns itself"),
        "{denied:?}"
    );
    assert!(denied.stderr.contains("\nhint: "), "{denied:?}");
    let admin_made = expect(
        &c,
        "postgres",
        0,
        &[
            "create",
            "--name",
            "from admin",
            "--owner",
            "grace",
            "-o",
            "json",
        ],
    )
    .json();
    let listed = expect(
        &c,
        "grace",
        0,
        &["list", "--search", "from admin", "-o", "json"],
    )
    .json();
    assert_eq!(listed[0]["prefix"], admin_made["prefix"]);
    assert_eq!(listed[0]["created_by"], "postgres");
    // An admin sees and manages every owner's keys.
    let seen = expect(
        &c,
        "postgres",
        0,
        &["list", "--owner", "grace", "-o", "json"],
    )
    .json();
    assert_eq!(seen.as_array().unwrap().len(), 2);
    expect(
        &c,
        "postgres",
        0,
        &["update", p, "--status", "suspended", "--reason", "admin"],
    );
    assert_no_secret(
        &[&unknown, &server, &denied],
        &[&key, admin_made["key"].as_str().unwrap()],
    );
}

#[test]
fn whole_keys_name_their_key_without_being_printed() {
    let c = cluster();
    c.role("heidi");
    let key = create_quiet(&c, "heidi", &["--name", "pasted"]);
    let p = prefix_of(&key);
    // The client names the key by its prefix itself (the key never reaches the
    // server), with a warning, for lookups (show) and changes (update, once) alike.
    let warning = format!(
        "warning: that is a whole API key, secret included; its prefix {p} names the key\nhint: "
    );
    let show = expect(&c, "heidi", 0, &["show", &key]);
    assert!(show.stderr.starts_with(&warning), "{show:?}");
    assert!(show.stdout.contains(p));
    let update = expect(
        &c,
        "heidi",
        0,
        &["update", &key, "--name", "renamed", "--status", "suspended"],
    );
    assert!(update.stderr.starts_with(&warning), "{update:?}");
    assert_eq!(update.stderr.matches("warning:").count(), 1, "{update:?}");
    let audit = expect(&c, "heidi", 0, &["audit", &key]);
    // A key among arguments clap rejects is cut to its prefix in the message.
    let clap = expect(&c, "heidi", 2, &["show", p, &key]);
    assert!(clap.stderr.contains(&format!("{p}_…")), "{clap:?}");
    let bad_filter = expect(
        &c,
        "heidi",
        2,
        &["list", "--filter", &format!("prefix = {key} and")],
    );
    assert_no_secret(&[&show, &update, &audit, &clap, &bad_filter], &[&key]);
}

#[test]
fn connection_failures_and_settings() {
    let c = cluster();
    // Nobody listens there: 6, with the reason and the target.
    let none = run_env(
        &[("PGHOST", "/nonexistent"), ("PGPORT", "1"), ("PGUSER", "x")],
        &["list"],
    );
    assert_eq!(none.code, 6, "{none:?}");
    assert!(
        none.stderr.starts_with(
            "error: could not connect to host /nonexistent port 1 as user x to database x: "
        ),
        "{none:?}"
    );
    let dsn = run_env(
        &[],
        &[
            "--dsn",
            "host=127.0.0.1 port=1 user=x password=hunter2",
            "list",
        ],
    );
    assert_eq!(dsn.code, 6, "{dsn:?}");
    assert!(!dsn.stderr.contains("hunter2"), "{dsn:?}");
    let url = run_env(
        &[],
        &["--dsn", "postgresql://x:hunter2@127.0.0.1:1/db", "list"],
    );
    assert_eq!(url.code, 6, "{url:?}");
    assert!(!url.stderr.contains("hunter2"), "{url:?}");
    let tls = run_env(&[("PGSSLMODE", "require"), ("PGUSER", "x")], &["list"]);
    assert_eq!(tls.code, 6);
    assert!(
        tls.stderr.starts_with(
            "error: sslmode=require needs TLS, which api-keys does not support\nhint: "
        ),
        "{tls:?}"
    );
    let bad = run_env(&[], &["--dsn", "nonsense here", "list"]);
    assert_eq!(bad.code, 6, "{bad:?}");
    // The server refuses the login: 6 too.
    let port = c.port.to_string();
    let role = run_env(
        &[
            ("PGHOST", c.socket_dir()),
            ("PGPORT", &port),
            ("PGUSER", "no_such_role"),
        ],
        &["list"],
    );
    assert_eq!(role.code, 6, "{role:?}");
    assert!(
        role.stderr.contains("role \"no_such_role\" does not exist"),
        "{role:?}"
    );

    // --dsn wins over DATABASE_URL, which wins over PG* (here: pointing nowhere).
    let dsn = format!(
        "host={} port={} user=postgres dbname={DB}",
        c.socket_dir(),
        c.port
    );
    let url = format!(
        "postgresql://postgres@{}:{}/{DB}",
        c.socket_dir().replace('/', "%2F"),
        c.port
    );
    let nowhere = [("PGHOST", "/nonexistent"), ("PGPORT", "1"), ("PGUSER", "x")];
    assert_eq!(
        run_env(&nowhere, &["--dsn", &dsn, "list", "-o", "json"]).code,
        0
    );
    let with_url = [nowhere.as_slice(), &[("DATABASE_URL", url.as_str())]].concat();
    assert_eq!(run_env(&with_url, &["list", "-o", "json"]).code, 0);
    assert_eq!(
        run_env(
            &with_url,
            &["--dsn", "host=/nonexistent port=1 user=x", "list"]
        )
        .code,
        6
    );

    // A database without the extension: 1, with a hint.
    let plain = run_env(
        &[
            ("PGHOST", c.socket_dir()),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "postgres"),
        ],
        &["list"],
    );
    assert_eq!(plain.code, 1, "{plain:?}");
    assert!(
        plain.stderr.contains(
            "\nhint: Is the extension installed in this database (CREATE EXTENSION api_keys)"
        ),
        "{plain:?}"
    );
}

#[test]
fn help_has_examples_everywhere() {
    let main = run_env(&[], &["--help"]);
    assert_eq!(main.code, 0);
    assert!(main.stdout.contains("Exit codes: 0 ok"), "{main:?}");
    for command in [
        "list", "create", "show", "update", "rotate", "delete", "usage", "audit",
    ] {
        let help = run_env(&[], &[command, "--help"]);
        assert_eq!(help.code, 0, "{help:?}");
        assert!(
            help.stdout
                .contains(&format!("Examples:\n  api-keys {command}")),
            "{command}: {help:?}"
        );
    }
    let list = run_env(&[], &["list", "--help"]);
    assert!(list.stdout.contains("Filter language (--filter):"));
    assert_eq!(run_env(&[], &["--version"]).code, 0);
    assert_eq!(run_env(&[], &["frobnicate"]).code, 2);
    assert_eq!(run_env(&[], &[]).code, 2);
    assert_eq!(run_env(&[], &["create"]).code, 2, "--name is required");
}

/// Red-team regressions. A role that may create objects in a schema on the search path
/// (`public`, on databases that began before PostgreSQL 15) plants an overload of a
/// built-in the client calls, hoping an admin runs it: the client pins its search path
/// and never calls it. Names, descriptions and reasons with escape sequences are shown
/// escaped; a CSV cell that a spreadsheet would take for a formula is quoted; and a new
/// key that cannot be printed is an error, not a quiet success.
#[test]
fn hostile_names_and_search_paths_do_not_reach_an_admin() {
    let c = cluster();
    c.role("rt_mallory");
    c.admin(DB)
        .batch_execute(
            "GRANT CREATE ON SCHEMA public TO rt_mallory; \
             CREATE TABLE public.rt_loot (who text); \
             GRANT INSERT ON public.rt_loot TO rt_mallory",
        )
        .unwrap();
    let mut mallory = postgres::Client::connect(
        &format!(
            "host={} port={} user=rt_mallory dbname={DB}",
            c.socket_dir(),
            c.port
        ),
        postgres::NoTls,
    )
    .unwrap();
    mallory
        .batch_execute(
            "CREATE FUNCTION public.to_json(r api_keys.key_list) RETURNS json \
             LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO public.rt_loot VALUES (current_user); \
               RETURN pg_catalog.to_json(r); END $$",
        )
        .unwrap();
    let name = "evil\u{1b}[2J\u{202e}=cmd";
    let key = create_quiet(&c, "rt_mallory", &["--name", name]);
    let prefix = prefix_of(&key);
    create_quiet(&c, "rt_mallory", &["--name", "=1+2 evil"]);
    let list = expect(&c, "postgres", 0, &["list", "--search", "evil"]);
    let show = expect(&c, "postgres", 0, &["show", prefix]);
    let csv = expect(
        &c,
        "postgres",
        0,
        &["list", "--search", "evil", "-o", "csv"],
    );
    let loot: i64 = c
        .admin(DB)
        .query_one("SELECT count(*) FROM public.rt_loot", &[])
        .unwrap()
        .get(0);
    assert_eq!(loot, 0, "the planted function ran");
    for out in [&list, &show] {
        assert!(!out.stdout.contains('\u{1b}'), "{out:?}");
        assert!(!out.stdout.contains('\u{202e}'), "{out:?}");
        assert!(
            out.stdout.contains("evil\\u{1b}[2J\\u{202e}=cmd"),
            "{out:?}"
        );
    }
    assert!(csv.stdout.contains(",'=1+2 evil,"), "{csv:?}");
    // Free text options are bounded like --filter's values.
    let long = "x".repeat(201);
    for option in ["--search", "--owner", "--order-by"] {
        expect(&c, "rt_mallory", 2, &["list", option, &long]);
    }
    expect(&c, "rt_mallory", 2, &["usage", "--owner", &long]);

    // stdout closed before the key is printed: the key exists, nobody has it.
    let port = c.port.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_api-keys"))
        .args(["create", "--name", "never delivered", "--quiet"])
        .env_clear()
        .envs([
            ("PGHOST", c.socket_dir()),
            ("PGPORT", port.as_str()),
            ("PGUSER", "rt_mallory"),
            ("PGDATABASE", DB),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            drop(child.stdout.take());
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be printed"), "{stderr}");
}
