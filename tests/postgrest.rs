//! PostgREST's per-request transaction, replayed over a real TCP connection against the
//! example schema (examples/postgrest/schema.sql): log in as `authenticator`, start a
//! transaction (READ ONLY for GET), set role and request settings with
//! `set_config(..., true)`, call the pre-request function `api_keys.authenticate()`,
//! run the query, commit. Checks which rows each key sees and which HTTP status
//! (PostgREST answers SQLSTATE PTxyz with status xyz) each bad key gets.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use common::{issue, shared_cluster, Client, Cluster, Issued, NoTls, DB};
use postgres::IsolationLevel;
use serde_json::{json, Value};

fn shared() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    shared_cluster(&SHARED, || {
        let c = Cluster::start_with("pgrst", &["listen_addresses = '127.0.0.1'"]);
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/postgrest/schema.sql");
        c.run_tool(
            "psql",
            &["-X", "-q", "-d", DB, "-f", schema.to_str().unwrap()],
        );
        // A second authenticator, as if PostgREST sat behind a proxy on 127.0.0.1.
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

/// PostgREST's connection: TCP from 127.0.0.1, as the authenticator role.
fn postgrest(cluster: &Cluster, role: &str) -> Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={role} dbname={DB}",
        cluster.port
    );
    Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("connect as {role}: {e:?}"))
}

fn admin(cluster: &Cluster) -> Client {
    cluster.connect_fast(DB)
}

/// An HTTP answer: status and JSON body (PostgREST's error body on failure).
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    body: Value,
}

/// One request, in PostgREST's order. `query` returns the JSON body as text.
fn request(c: &mut Client, method: &str, path: &str, headers: Value, query: &str) -> Response {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .read_only(method == "GET")
        .start()
        .unwrap();
    let outcome = (|| -> Result<String, postgres::Error> {
        tx.query_one(
            "SELECT set_config('search_path', $1, true), set_config('role', $2, true), \
                    set_config('request.jwt.claims', $3, true), \
                    set_config('request.method', $4, true), set_config('request.path', $5, true), \
                    set_config('request.headers', $6, true), \
                    set_config('request.cookies', $7, true)",
            &[
                &"\"api\", \"public\"",
                &"web_anon",
                &"{\"role\":\"web_anon\"}",
                &method,
                &path,
                &headers.to_string(),
                &"{}",
            ],
        )?;
        tx.execute("SELECT api_keys.authenticate()", &[])?;
        tx.query_one(query, &[]).map(|r| r.get(0))
    })();
    match outcome {
        Ok(body) => {
            tx.commit().unwrap();
            let status = if method == "POST" { 201 } else { 200 };
            Response {
                status,
                body: serde_json::from_str(&body).unwrap(),
            }
        }
        Err(e) => {
            drop(tx);
            let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
            let code = db.code().code();
            // PostgREST: PTxyz is status xyz; insufficient privilege is 401 for the
            // anonymous role (no JWT), which is how API-key requests run.
            let status = match code.strip_prefix("PT") {
                Some(status) => status.parse().unwrap(),
                None if code == "42501" => 401,
                None => 400,
            };
            Response {
                status,
                body: json!({"code": code, "message": db.message(), "hint": db.hint()}),
            }
        }
    }
}

const GET_RUNS: &str = "WITH pgrst_source AS (SELECT \"api\".\"runs\".* FROM \"api\".\"runs\") \
     SELECT coalesce(json_agg(_postgrest_t ORDER BY _postgrest_t.id), '[]')::text \
       FROM (SELECT * FROM pgrst_source) _postgrest_t";
const GET_PROJECTS: &str = "SELECT coalesce(json_agg(p.id ORDER BY p.id), '[]')::text \
       FROM (SELECT * FROM \"api\".\"projects\") p";

fn post_run(project: i32) -> String {
    format!(
        "WITH pgrst_source AS (INSERT INTO \"api\".\"runs\"(\"project_id\", \"status\") \
             SELECT b.project_id, b.status \
               FROM json_to_record('{{\"project_id\": {project}, \"status\": \"queued\"}}') \
                    AS b(project_id int, status text) \
             RETURNING \"api\".\"runs\".*) \
         SELECT coalesce(json_agg(t), '[]')::text FROM pgrst_source t"
    )
}

fn x_api_key(k: &Issued) -> Value {
    json!({"accept": "application/json", "x-api-key": k.key})
}

fn run_projects(body: &Value) -> Vec<i64> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|r| r["project_id"].as_i64().unwrap())
        .collect()
}

#[test]
fn each_key_sees_the_rows_its_scopes_and_owner_allow() {
    let cluster = shared();
    let mut a = admin(&cluster);
    let p42 = issue(
        &mut a,
        "'p42 reader', 'service', 'production', ARRAY['projects/42/*:read'], owner => 'alice'",
    );
    let all = issue(&mut a, "'everything', 'service', 'production', ARRAY['runs:read', 'projects:read'], owner => 'carol'");
    let bob = issue(
        &mut a,
        "'bob', 'user', 'production', ARRAY['runs:write'], owner => 'bob'",
    );
    let mut web = postgrest(&cluster, "authenticator");

    // projects/42/*:read: both runs of project 42, including one alice did not create.
    let r = request(&mut web, "GET", "/runs", x_api_key(&p42), GET_RUNS);
    assert_eq!((r.status, run_projects(&r.body)), (200, vec![42, 42]));
    let r = request(&mut web, "GET", "/projects", x_api_key(&p42), GET_PROJECTS);
    assert_eq!(
        r,
        Response {
            status: 200,
            body: json!([42])
        },
        "alice owns 42"
    );

    let r = request(&mut web, "GET", "/runs", x_api_key(&all), GET_RUNS);
    assert_eq!(run_projects(&r.body), vec![42, 42, 43]);
    let r = request(&mut web, "GET", "/projects", x_api_key(&all), GET_PROJECTS);
    assert_eq!(r.body, json!([42, 43]));

    // Bearer works like x-api-key; bob has no read scope but reads the runs he created,
    // and owns project 43.
    let bearer = json!({"authorization": format!("Bearer {}", bob.key)});
    let r = request(&mut web, "GET", "/runs", bearer.clone(), GET_RUNS);
    assert_eq!((r.status, run_projects(&r.body)), (200, vec![42, 43]));
    let r = request(&mut web, "GET", "/projects", bearer.clone(), GET_PROJECTS);
    assert_eq!(r.body, json!([43]));

    // No key, or a JWT (ours to ignore): anonymous, nothing visible, no error.
    for headers in [
        json!({"accept": "application/json"}),
        json!({"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoid2ViX2Fub24ifQ.c2ln"}),
    ] {
        let r = request(&mut web, "GET", "/runs", headers.clone(), GET_RUNS);
        assert_eq!(
            r,
            Response {
                status: 200,
                body: json!([])
            },
            "{headers}"
        );
    }

    // Writing: bob may add runs, stamped with his name; p42 (read-only) may not.
    let r = request(&mut web, "POST", "/runs", bearer, &post_run(43));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body[0]["created_by"], json!("bob"));
    let r = request(&mut web, "POST", "/runs", x_api_key(&p42), &post_run(42));
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("42501")),
        "{r:?}"
    );
}

#[test]
fn bad_keys_get_401_403_or_429_naming_the_reason() {
    let cluster = shared();
    let mut a = admin(&cluster);
    let revoked = issue(&mut a, "'revoked', 'service', 'production'");
    a.execute(
        "SELECT api_keys.api_key_revoke($1::text::uuid, 'leaked')",
        &[&revoked.id],
    )
    .unwrap();
    let suspended = issue(&mut a, "'suspended', 'service', 'production'");
    a.execute(
        "SELECT api_keys.api_key_suspend($1::text::uuid)",
        &[&suspended.id],
    )
    .unwrap();
    let fenced = issue(
        &mut a,
        "'fenced', 'service', 'production', allowed_cidrs => '{198.51.100.0/24}'",
    );
    let limited = issue(
        &mut a,
        "'limited', 'service', 'production', ARRAY['runs:read'], rate_limit_per_hour => 2",
    );
    let mut web = postgrest(&cluster, "authenticator");

    // The last checksum character changed (to one it is not).
    let (body, last) = revoked.key.split_at(revoked.key.len() - 1);
    let mistyped = format!("{body}{}", if last == "x" { "y" } else { "x" });
    let cases = [
        (json!({"x-api-key": "hello"}), 401, "malformed"),
        (
            json!({"authorization": format!("Bearer {mistyped}")}),
            401,
            "malformed",
        ),
        (
            json!({"x-api-key": common::forge_secret(&suspended.key)}),
            401,
            "invalid_secret",
        ),
        (x_api_key(&revoked), 401, "revoked"),
        (x_api_key(&suspended), 401, "suspended"),
        // The connection comes from 127.0.0.1, outside the key's network.
        (x_api_key(&fenced), 403, "ip_not_allowed"),
    ];
    for (headers, status, reason) in cases {
        let r = request(&mut web, "GET", "/runs", headers.clone(), GET_RUNS);
        assert_eq!(r.status, status, "{headers}: {r:?}");
        assert_eq!(r.body["code"], json!(format!("PT{status}")), "{r:?}");
        assert_eq!(
            r.body["message"],
            json!(format!("API key rejected: {reason}"))
        );
        let text = r.body.to_string();
        for k in [&revoked.key, &suspended.key, &fenced.key] {
            assert!(
                !text.contains(k.as_str()),
                "the response echoes a key: {text}"
            );
        }
    }

    for _ in 0..2 {
        let r = request(&mut web, "GET", "/runs", x_api_key(&limited), GET_RUNS);
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = request(&mut web, "GET", "/runs", x_api_key(&limited), GET_RUNS);
    assert_eq!(
        (r.status, r.body["message"].as_str()),
        (429, Some("API key rejected: rate_limited"))
    );
}

#[test]
fn client_address_comes_from_trusted_proxies_only() {
    let cluster = shared();
    let mut a = admin(&cluster);
    let fenced = issue(&mut a, "'fenced', 'service', 'production', ARRAY['runs:read'], allowed_cidrs => '{198.51.100.0/24}'");
    let through = |xff: &str| json!({"x-api-key": fenced.key, "x-forwarded-for": xff});

    // Behind a trusted proxy (127.0.0.1): the right-most untrusted hop is the client.
    let mut proxied = postgrest(&cluster, "proxied_authenticator");
    let r = request(
        &mut proxied,
        "GET",
        "/runs",
        through("198.51.100.7"),
        GET_RUNS,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(
        &mut proxied,
        "GET",
        "/runs",
        through("203.0.113.5, 198.51.100.7"),
        GET_RUNS,
    );
    assert_eq!(
        r.status, 200,
        "a forged left-most hop is never reached: {r:?}"
    );
    let r = request(
        &mut proxied,
        "GET",
        "/runs",
        through("198.51.100.7, 203.0.113.5"),
        GET_RUNS,
    );
    assert_eq!(r.status, 403, "the client is 203.0.113.5: {r:?}");

    // The connection does not come from a trusted proxy: the header is ignored and the
    // client is 127.0.0.1.
    let mut direct = postgrest(&cluster, "elsewhere_authenticator");
    let r = request(
        &mut direct,
        "GET",
        "/runs",
        through("198.51.100.7"),
        GET_RUNS,
    );
    assert_eq!(r.status, 403, "{r:?}");
    let mut plain = postgrest(&cluster, "authenticator");
    let r = request(
        &mut plain,
        "GET",
        "/runs",
        through("198.51.100.7"),
        GET_RUNS,
    );
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn the_context_ends_with_each_request() {
    let cluster = shared();
    let mut a = admin(&cluster);
    let reader = issue(
        &mut a,
        "'reader', 'service', 'production', ARRAY['runs:read'], owner => 'dave'",
    );
    let mut web = postgrest(&cluster, "authenticator");
    let context =
        "SELECT json_build_array(api_keys.current_owner(), api_keys.has_scope('runs:read'))::text";

    let r = request(&mut web, "GET", "/ctx", x_api_key(&reader), context);
    assert_eq!(r.body, json!(["dave", true]));
    // The next request on the same pooled connection, without a key, is anonymous...
    let r = request(&mut web, "GET", "/ctx", json!({}), context);
    assert_eq!(r.body, json!([null, false]));
    // ... and a refused request leaves nothing behind either.
    let r = request(
        &mut web,
        "GET",
        "/ctx",
        json!({"x-api-key": "bad"}),
        context,
    );
    assert_eq!(r.status, 401);
    let r = request(&mut web, "GET", "/ctx", json!({}), context);
    assert_eq!(r.body, json!([null, false]));
    // Outside any request transaction, too.
    let row = web.query_one(context, &[]).unwrap();
    let body: Value = serde_json::from_str(row.get(0)).unwrap();
    assert_eq!(body, json!([null, false]));
}
