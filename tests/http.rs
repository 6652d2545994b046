//! The PostgREST example (examples/postgrest) over real HTTP: its schema.sql in a real
//! cluster, served by postrust, a PostgREST-compatible server (`make test` installs it;
//! the test runs $POSTRUST_BIN, or `postrust` from PATH), with `api_keys.authenticate`
//! as the pre-request function. The README's curl transcripts are run as written, with
//! bash and curl, and must print exactly what the README shows.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::{forge_secret, free_port, issue, shared_cluster, Client, Cluster, DB};
use postgres::SimpleQueryMessage;

fn shared() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    shared_cluster(&SHARED, || {
        let c = Cluster::start_with("http", &["listen_addresses = '127.0.0.1'"]);
        // The example in a first database: every test's own database then loads it
        // again into a cluster where its roles exist and hold privileges elsewhere.
        load_example(&c, DB);
        // Authenticators as if postrust sat behind a reverse proxy on 127.0.0.1, and
        // behind proxies elsewhere (10.0.0.0/8): role-level settings, for their own
        // connections only.
        c.connect(DB)
            .batch_execute(
                "CREATE ROLE proxied_authenticator LOGIN NOINHERIT IN ROLE web_anon; \
                 ALTER ROLE proxied_authenticator SET api_keys.trusted_proxies = '127.0.0.1'; \
                 CREATE ROLE elsewhere_authenticator LOGIN NOINHERIT IN ROLE web_anon; \
                 ALTER ROLE elsewhere_authenticator SET api_keys.trusted_proxies = '10.0.0.0/8'",
            )
            .unwrap();
        c
    })
}

fn example_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/postgrest")
        .join(name)
}

/// Run schema.sql in `db`, as the README says; a run after the first is quiet too. One
/// run at a time: two at once race on the cluster-wide roles (creating or granting them).
fn load_example(cluster: &Cluster, db: &str) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let schema = example_file("schema.sql");
    let out = cluster.run_tool(
        "psql",
        &["-X", "-q", "-d", db, "-f", schema.to_str().unwrap()],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.is_empty(), "schema.sql in {db} was not quiet:\n{said}");
}

/// A new database of the shared cluster with the example loaded.
fn example_db(cluster: &Cluster, name: &str) -> String {
    cluster
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    load_example(cluster, name);
    name.to_string()
}

/// postrust serving the example API of one database on a free 127.0.0.1 port, logged
/// in as an authenticator role; killed when dropped, also when a test panics.
struct Server {
    child: Child,
    authority: String,
    log: PathBuf,
}

impl Server {
    fn start(cluster: &Cluster, db: &str, authenticator: &str) -> Server {
        let port = free_port();
        let log = cluster.dir.join(format!("postrust_{port}.log"));
        let out = File::create(&log).unwrap();
        let bin = std::env::var("POSTRUST_BIN").unwrap_or_else(|_| "postrust".into());
        let mut cmd = Command::new(&bin);
        // Configured by what is set here only (DATABASE_URL would override the URI).
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("PGRST_") || text.starts_with("POSTRUST_") {
                cmd.env_remove(name);
            }
        }
        let uri = format!("postgres://{authenticator}@127.0.0.1:{}/{db}", cluster.port);
        let child = cmd
            .env_remove("DATABASE_URL")
            .env("PGRST_DB_URI", uri)
            .env("PGRST_DB_SCHEMAS", "api")
            .env("PGRST_DB_ANON_ROLE", "web_anon")
            .env("PGRST_DB_PRE_REQUEST", "api_keys.authenticate")
            .env("PGRST_COMPAT_MODE", "true")
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", port.to_string())
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start {bin} ({e}): `make postrust` installs it, or set POSTRUST_BIN"
                )
            });
        let mut server = Server {
            child,
            authority: format!("127.0.0.1:{port}"),
            log,
        };
        server.wait_until_it_answers();
        server
    }

    fn wait_until_it_answers(&mut self) {
        let agent = agent();
        let start = Instant::now();
        while agent.get(self.url("/")).call().is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("postrust exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postrust did not answer in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Status and body of `GET path`, with an `X-API-Key` header when `key` is given.
    fn get(&self, agent: &ureq::Agent, path: &str, key: Option<&str>) -> (u16, String) {
        self.get_with(agent, path, key.map(|k| ("X-API-Key", k)).as_slice())
    }

    /// Status, the headers named `wanted` (lowercase; absent ones left out) and body of
    /// `GET path` with `key`.
    fn get_headers(
        &self,
        agent: &ureq::Agent,
        path: &str,
        key: &str,
        wanted: &[&str],
    ) -> (u16, Vec<(String, String)>, String) {
        let mut response = agent
            .get(self.url(path))
            .header("X-API-Key", key)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\npostrust log:\n{}", self.log()));
        let headers = wanted
            .iter()
            .filter_map(|name| {
                let value = response.headers().get(*name)?.to_str().ok()?;
                Some((name.to_string(), value.to_string()))
            })
            .collect();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), headers, body)
    }

    fn get_with(&self, agent: &ureq::Agent, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = agent.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\npostrust log:\n{}", self.log()));
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that answers 4xx as responses, not errors, and never goes through a
/// proxy from the environment: every request stays on the loopback address.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

// The seed runs of schema.sql, as postrust renders them (keys in alphabetical order).
const RUN_1: &str = r#"{"created_by":"alice","id":1,"project_id":42,"status":"passed"}"#;
const RUN_2: &str = r#"{"created_by":"bob","id":2,"project_id":42,"status":"failed"}"#;
const RUN_3: &str = r#"{"created_by":"bob","id":3,"project_id":43,"status":"passed"}"#;

/// The body of a GET that returns these rows.
fn rows(rows: &[&str]) -> String {
    format!("[{}]", rows.join(","))
}

/// PostgREST's error body for the refusal `authenticate()` raises as SQLSTATE
/// PT<status>: the reason and what to do, never the key.
fn refusal(status: u16, reason: &str) -> (u16, String) {
    let hint = match reason {
        "malformed" => {
            "The key is not in this installation's key format; check that it was copied whole."
        }
        "not_found" => "No key has this prefix; it may have been deleted.",
        "invalid_secret" => "The key's secret does not match; check that it was copied whole.",
        "suspended" => "The key is suspended; its owner or an admin can reactivate it.",
        "revoked" => "The key is revoked; use another key.",
        "ip_not_allowed" => "The client address is outside the key's allowed_cidrs.",
        "rate_limited" => "The key is over its rate limit; retry in the next minute or hour.",
        "usage_exceeded" => {
            "The key has no uses left; wait for its refill, or ask its owner or an admin for more."
        }
        other => panic!("no hint known for {other}"),
    };
    let body = format!(
        r#"{{"code":"PT{status}","details":null,"hint":"{hint}","message":"API key rejected: {reason}"}}"#
    );
    (status, body)
}

/// The fenced code blocks of a markdown text: (info string, lines).
fn code_blocks(markdown: &str) -> Vec<(&str, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(&str, Vec<&str>)> = None;
    for line in markdown.lines() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(info), None) => open = Some((info, Vec::new())),
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some((info, mut lines))) => {
                lines.push(line);
                open = Some((info, lines));
            }
            (None, None) => {}
        }
    }
    blocks
}

/// A `$ curl …` command of the README (continuation lines included) and what it prints.
#[derive(Debug)]
struct Transcript {
    command: String,
    output: String,
}

fn transcripts(block: &[&str]) -> Vec<Transcript> {
    let mut out: Vec<Transcript> = Vec::new();
    let mut continued = false;
    for line in block {
        let prompt = line.strip_prefix("$ ");
        match (continued, prompt, out.last_mut()) {
            (true, _, Some(t)) => t.command = format!("{}\n{line}", t.command),
            (false, Some(command), _) => out.push(Transcript {
                command: command.to_string(),
                output: String::new(),
            }),
            (false, None, Some(t)) if t.output.is_empty() => t.output = line.to_string(),
            (false, None, Some(t)) => t.output = format!("{}\n{line}", t.output),
            _ => {}
        }
        continued = line.ends_with('\\') && (continued || prompt.is_some());
    }
    out.retain(|t| t.command.starts_with("curl "));
    out
}

/// Run the README's SQL block (issuing the keys) in `db`; the keys it returns, in order.
fn issue_readme_keys(admin: &mut Client, readme: &str) -> Vec<String> {
    let (_, sql) = code_blocks(readme)
        .into_iter()
        .find(|(info, _)| *info == "sql")
        .expect("the README issues its keys in a sql block");
    admin
        .simple_query(&sql.join("\n"))
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get("key").unwrap().to_string()),
            _ => None,
        })
        .collect()
}

/// What a README command prints, run by bash against `server` instead of localhost:3000.
fn run_transcript(t: &Transcript, server: &Server, keys: &[(&str, &str)]) -> String {
    let command = t.command.replace("localhost:3000", &server.authority);
    let out = Command::new("bash")
        .args(["-c", &command])
        .envs(keys.iter().copied())
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .output()
        .expect("could not run bash");
    assert!(
        out.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Every curl transcript of examples/postgrest/README.md, in order, against a fresh copy
/// of the example with the README's two keys. Before the transcript that shows a
/// revocation, alice's key is revoked in SQL; before the one that shows bob's rate
/// limit, bob makes the rest of his requests of the minute.
#[test]
fn the_readme_transcripts_are_what_the_server_answers() {
    let cluster = shared();
    let db = example_db(&cluster, "readme");
    let server = Server::start(&cluster, &db, "authenticator");
    let mut admin = cluster.connect_fast(&db);
    let readme = std::fs::read_to_string(example_file("README.md")).unwrap();
    // Bob's requests, up to his 61st, within one clock minute.
    common::wait_for_room_in_window(&mut admin, 15.0);
    let issued = issue_readme_keys(&mut admin, &readme);
    let [alice, bob] = issued.as_slice() else {
        panic!("the README issues two keys, alice's and bob's: {issued:?}")
    };
    let keys = [("ALICE", alice.as_str()), ("BOB", bob.as_str())];
    let agent = agent();
    let (mut revoked, mut limited, mut bob_requests) = (false, false, 0);
    let all: Vec<Transcript> = code_blocks(&readme)
        .iter()
        .flat_map(|(_, lines)| transcripts(lines))
        .collect();
    for t in &all {
        if t.output.contains("API key rejected: revoked") {
            admin
                .batch_execute(
                    "SELECT api_keys.api_key_revoke(id, 'laptop lost') \
                       FROM api_keys.keys WHERE owner = 'alice'",
                )
                .unwrap();
            revoked = true;
        }
        if t.output.contains("API key rejected: rate_limited") {
            let limit: i32 = admin
                .query_one(
                    "SELECT rate_limit_per_minute FROM api_keys.keys WHERE owner = 'bob'",
                    &[],
                )
                .unwrap()
                .get(0);
            for n in bob_requests..limit {
                let (status, body) = server.get(&agent, "/runs", Some(bob));
                assert_eq!(status, 200, "bob's request {} of {limit}: {body}", n + 1);
            }
            limited = true;
        }
        assert_eq!(run_transcript(t, &server, &keys), t.output, "{}", t.command);
        bob_requests += i32::from(t.command.contains("$BOB"));
    }
    assert!(
        revoked && limited,
        "the README shows a revoked key and a rate-limited one ({} transcripts)",
        all.len()
    );
}

#[test]
fn refusals_name_the_reason_and_never_the_key() {
    let cluster = shared();
    let db = example_db(&cluster, "refusals");
    let server = Server::start(&cluster, &db, "authenticator");
    let mut a = cluster.connect_fast(&db);
    let key = |a: &mut Client, args: &str, then: &str| {
        let k = issue(a, args);
        if !then.is_empty() {
            a.execute(&format!("SELECT {then}($1::text::uuid)"), &[&k.id])
                .unwrap();
        }
        k.key
    };
    let suspended = key(
        &mut a,
        "'s', 'service', 'production'",
        "api_keys.api_key_suspend",
    );
    let deleted = key(
        &mut a,
        "'d', 'service', 'production'",
        "api_keys.api_key_delete",
    );
    let revoked = issue(&mut a, "'r', 'service', 'production'");
    a.execute(
        "SELECT api_keys.api_key_revoke($1::text::uuid, 'leaked')",
        &[&revoked.id],
    )
    .unwrap();
    // Its network is not 127.0.0.1, where postrust connects from.
    let fenced = key(
        &mut a,
        "'f', 'service', 'production', allowed_cidrs => '{198.51.100.0/24}'",
        "",
    );
    let (body, last) = suspended.split_at(suspended.len() - 1);
    let mistyped = format!("{body}{}", if last == "x" { "y" } else { "x" });
    let cases = [
        ("hello", refusal(401, "malformed")),
        (mistyped.as_str(), refusal(401, "malformed")),
        (&forge_secret(&suspended), refusal(401, "invalid_secret")),
        (&deleted, refusal(401, "not_found")),
        (&revoked.key, refusal(401, "revoked")),
        (&suspended, refusal(401, "suspended")),
        (&fenced, refusal(403, "ip_not_allowed")),
    ];
    // Exact bodies: none of them contains a key.
    let agent = agent();
    for (key, expected) in &cases {
        assert_eq!(&server.get(&agent, "/runs", Some(key)), expected, "{key}");
    }

    let limited = key(
        &mut a,
        "'l', 'service', 'production', ARRAY['runs:read'], rate_limit_per_minute => 2",
        "",
    );
    common::wait_for_room_in_window(&mut a, 5.0);
    let all_runs = (200, rows(&[RUN_1, RUN_2, RUN_3]));
    for _ in 0..2 {
        assert_eq!(server.get(&agent, "/runs", Some(&limited)), all_runs);
    }
    assert_eq!(
        server.get(&agent, "/runs", Some(&limited)),
        refusal(429, "rate_limited")
    );
}

/// Every answer carries the key's tightest window as `RateLimit-*` headers; a 429 for
/// the rate or for want of uses carries `Retry-After` when waiting helps.
#[test]
fn limits_reach_the_client_as_headers() {
    let cluster = shared();
    let db = example_db(&cluster, "limit_headers");
    let server = Server::start(&cluster, &db, "authenticator");
    let mut a = cluster.connect_fast(&db);
    let agent = agent();
    let names = [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
    ];
    let seconds = |headers: &[(String, String)], name: &str| -> Option<i64> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.parse().unwrap())
    };
    let limited = issue(
        &mut a,
        "'headers', 'service', 'production', ARRAY['runs:read'], rate_limit_per_minute => 3",
    );
    common::wait_for_room_in_window(&mut a, 10.0);
    for left in ["2", "1", "0"] {
        let (status, headers, _) = server.get_headers(&agent, "/runs", &limited.key, &names);
        assert_eq!(status, 200);
        assert_eq!(
            &headers[..2],
            &[
                ("ratelimit-limit".to_string(), "3".to_string()),
                ("ratelimit-remaining".to_string(), left.to_string()),
            ]
        );
        let reset = seconds(&headers, "ratelimit-reset").unwrap();
        assert!((1..=60).contains(&reset), "reset in {reset} s");
        assert_eq!(seconds(&headers, "retry-after"), None);
    }
    let (status, headers, body) = server.get_headers(&agent, "/runs", &limited.key, &names);
    assert_eq!((status, body), refusal(429, "rate_limited"));
    let retry = seconds(&headers, "retry-after").expect("Retry-After with a 429");
    assert!((1..=60).contains(&retry), "retry after {retry} s");
    assert_eq!(seconds(&headers, "ratelimit-remaining"), Some(0));

    // Out of uses: Retry-After until the refill at midnight UTC, none without one.
    let refilled = issue(
        &mut a,
        "'refilled', 'service', 'production', ARRAY['runs:read'], remaining_uses => 1, \
         refill_amount => 5, refill_interval => 'daily'",
    );
    let spent = issue(
        &mut a,
        "'spent', 'service', 'production', ARRAY['runs:read'], remaining_uses => 1",
    );
    let to_midnight: i64 = a
        .query_one(
            "SELECT ceil(extract(epoch FROM date_trunc('day', now(), 'UTC') + interval '1 day' - now()))::int8",
            &[],
        )
        .unwrap()
        .get(0);
    for key in [&refilled, &spent] {
        assert_eq!(server.get_headers(&agent, "/runs", &key.key, &names).0, 200);
        let (status, headers, body) = server.get_headers(&agent, "/runs", &key.key, &names);
        assert_eq!((status, body), refusal(429, "usage_exceeded"));
        let retry = seconds(&headers, "retry-after");
        if std::ptr::eq(key, &refilled) {
            let retry = retry.expect("Retry-After until the refill");
            assert!(
                (to_midnight - 5..=to_midnight + 1).contains(&retry),
                "{retry} vs {to_midnight}"
            );
        } else {
            assert_eq!(retry, None, "waiting gives no uses back");
        }
    }
}

/// Behind a trusted proxy the client is the right-most hop of X-Forwarded-For that is
/// not a trusted proxy; from anywhere else the header is ignored.
#[test]
fn x_forwarded_for_counts_behind_a_trusted_proxy_only() {
    let cluster = shared();
    let db = example_db(&cluster, "forwarded");
    let proxied = Server::start(&cluster, &db, "proxied_authenticator");
    let direct = Server::start(&cluster, &db, "authenticator");
    let elsewhere = Server::start(&cluster, &db, "elsewhere_authenticator");
    let mut a = cluster.connect_fast(&db);
    let fenced = issue(
        &mut a,
        "'fenced', 'service', 'production', ARRAY['runs:read'], allowed_cidrs => '{198.51.100.0/24}'",
    );
    let allowed = (200, rows(&[RUN_1, RUN_2, RUN_3]));
    let refused = refusal(403, "ip_not_allowed");
    let cases = [
        (&proxied, Some("198.51.100.7"), &allowed),
        // A forged left-most hop is never reached.
        (&proxied, Some("203.0.113.5, 198.51.100.7"), &allowed),
        (&proxied, Some("198.51.100.7, 203.0.113.5"), &refused),
        // No header, or trusted hops only: the client is unknown.
        (&proxied, None, &refused),
        (&proxied, Some("127.0.0.1"), &refused),
        // Not connecting from a trusted proxy: the header is ignored.
        (&direct, Some("198.51.100.7"), &refused),
        (&elsewhere, Some("198.51.100.7"), &refused),
    ];
    let agent = agent();
    for (server, xff, expected) in cases {
        let mut headers = vec![("X-API-Key", fenced.key.as_str())];
        headers.extend(xff.map(|h| ("X-Forwarded-For", h)));
        let answer = server.get_with(&agent, "/runs", &headers);
        assert_eq!(&answer, expected, "{xff:?} via {}", server.authority);
    }
}

/// 1,000 requests from 16 threads, mixing keys of different owners and scopes, a bad
/// key and no key: each answer is exactly its own key's rows, so nothing of one
/// request's context reaches another on postrust's pooled connections.
#[test]
fn concurrent_requests_each_see_their_own_rows() {
    let cluster = shared();
    let db = example_db(&cluster, "concurrent");
    let server = Server::start(&cluster, &db, "authenticator");
    let mut a = cluster.connect_fast(&db);
    // Limits above the ~170 requests each key makes (the defaults are 100 a minute).
    let mut key = |scope: &str, owner: &str| {
        let args = format!(
            "'{owner}', 'service', 'production', ARRAY['{scope}'], owner => '{owner}', \
             rate_limit_per_minute => 1000, rate_limit_per_hour => 1000"
        );
        Some(issue(&mut a, &args).key)
    };
    let clients = [
        (
            key("projects/42/*:read", "alice"),
            (200, rows(&[RUN_1, RUN_2])),
        ),
        (key("runs:write", "bob"), (200, rows(&[RUN_2, RUN_3]))),
        (
            key("runs:read", "carol"),
            (200, rows(&[RUN_1, RUN_2, RUN_3])),
        ),
        (key("projects/43/*:read", "erin"), (200, rows(&[RUN_3]))),
        (Some("hello".to_string()), refusal(401, "malformed")),
        (None, (200, rows(&[]))),
    ];
    std::thread::scope(|s| {
        for thread in 0..16 {
            let (server, clients) = (&server, &clients);
            s.spawn(move || {
                let agent = agent();
                for i in (thread..1000).step_by(16) {
                    let (key, expected) = &clients[i % clients.len()];
                    let answer = server.get(&agent, "/runs", key.as_deref());
                    assert_eq!(&answer, expected, "request {i} with {key:?}");
                }
            });
        }
    });
}

/// schema.sql in two databases, then again in each: the second runs find the roles in
/// place (with privileges in the other database) and succeed, and the example works.
#[test]
fn schema_sql_runs_again_in_any_database_of_the_cluster() {
    let cluster = shared();
    let dbs = [
        example_db(&cluster, "again_a"),
        example_db(&cluster, "again_b"),
    ];
    for db in &dbs {
        load_example(&cluster, db);
    }
    let agent = agent();
    for db in &dbs {
        let server = Server::start(&cluster, db, "authenticator");
        let mut a = cluster.connect_fast(db);
        let alice = issue(
            &mut a,
            "'alice', 'service', 'production', ARRAY['projects/42/*:read'], owner => 'alice'",
        );
        let answer = server.get(&agent, "/runs", Some(&alice.key));
        assert_eq!(answer, (200, rows(&[RUN_1, RUN_2])), "{db}");
        assert_eq!(server.get(&agent, "/runs", None), (200, rows(&[])), "{db}");
    }
}
