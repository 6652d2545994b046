//! `api-keys create`: `api_key_issue`, with only the arguments given (the server's
//! defaults for the rest), the key printed once.

use postgres::Client;
use serde_json::json;

use super::{print_new_key, Call};
use crate::args::{label, CreateArgs};
use crate::errors::Result;

pub fn run(client: &mut Client, args: CreateArgs) -> Result<()> {
    let mut call = Call::default();
    call.arg("name", "{}::text", args.name);
    call.arg(
        "key_type",
        "{}::text::api_keys.key_type",
        label(args.key_type),
    );
    call.arg(
        "environment",
        "{}::text::api_keys.environment",
        label(args.environment),
    );
    call.arg_opt("description", "{}::text", args.description);
    call.arg_opt("owner", "{}::text", args.owner);
    call.settings(args.settings);

    let sql = format!(
        "SELECT id::text, key, prefix, to_json(expires_at) FROM api_keys.api_key_issue({})",
        call.args.join(", ")
    );
    let row = client.query_one(&sql, &call.refs())?;
    let (id, key, prefix): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    // to_json(NULL) is NULL: a key that never expires.
    let expires_at: serde_json::Value = row.get::<_, Option<_>>(3).unwrap_or_default();
    let summary = format!(
        "Created {} key {prefix} ({}, id {id}){}:",
        label(args.key_type),
        label(args.environment),
        if expires_at.is_null() {
            String::new()
        } else {
            format!(", expires {}", crate::output::timestamp(&expires_at))
        }
    );
    print_new_key(
        args.output.output,
        args.quiet,
        json!({ "id": id, "prefix": prefix, "expires_at": expires_at }),
        &key,
        &summary,
    )
}
