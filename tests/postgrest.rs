//! PostgREST's per-request transaction, replayed over a real TCP connection against the
//! example schema (examples/postgrest/schema.sql): log in as `authenticator`, start a
//! transaction (READ ONLY for GET), set role and request settings with
//! `set_config(..., true)`, call the pre-request function `api_keys.authenticate()`,
//! run the query, commit. tests/http.rs checks the example over real HTTP; this file
//! keeps what HTTP cannot reach: `Authorization: Bearer` in `request.headers` (the
//! servers take that header for themselves, as a JWT) and the connection's state after
//! a request.

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

/// authenticate() reads `Authorization: Bearer <key>` like `X-API-Key`, and leaves a
/// JWT there alone (anonymous, no error), for callers that set `request.headers`
/// themselves.
#[test]
fn bearer_keys_are_read_and_jwts_left_alone() {
    let cluster = shared();
    let mut a = admin(&cluster);
    let bob = issue(
        &mut a,
        "'bob', 'user', 'production', ARRAY['runs:write'], owner => 'bob'",
    );
    let mut web = postgrest(&cluster, "authenticator");
    let bearer = |key: &str| json!({"authorization": format!("Bearer {key}")});

    // Bob has no read scope but reads the runs he created, owns project 43, and may
    // add runs, stamped with his name.
    let r = request(&mut web, "GET", "/runs", bearer(&bob.key), GET_RUNS);
    assert_eq!((r.status, run_projects(&r.body)), (200, vec![42, 43]));
    let r = request(&mut web, "GET", "/projects", bearer(&bob.key), GET_PROJECTS);
    assert_eq!(r.body, json!([43]));
    let r = request(&mut web, "POST", "/runs", bearer(&bob.key), &post_run(43));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body[0]["created_by"], json!("bob"));

    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoid2ViX2Fub24ifQ.c2ln";
    let r = request(&mut web, "GET", "/runs", bearer(jwt), GET_RUNS);
    assert_eq!(
        r,
        Response {
            status: 200,
            body: json!([])
        }
    );
    let r = request(&mut web, "GET", "/runs", bearer("ak_live_x"), GET_RUNS);
    assert_eq!(
        (r.status, r.body["message"].as_str()),
        (401, Some("API key rejected: malformed"))
    );
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
