//! `api-keys rotate`: `api_key_rotate`, the new key printed once, and what became of
//! the old one.

use postgres::Client;
use serde_json::{json, Value};

use super::print_new_key;
use crate::args::RotateArgs;
use crate::errors::Result;
use crate::keyref::KeyRef;
use crate::output::timestamp;

pub fn run(client: &mut Client, args: RotateArgs) -> Result<()> {
    let grace = args.grace.unwrap_or_else(|| "0 seconds".into());
    // A bad key argument is refused before anything is sent.
    let key = KeyRef::parse(&args.key)?;
    let mut tx = client.transaction()?;
    let row = tx.query_one(
        "SELECT id::text, key, prefix, to_json(expires_at) \
           FROM api_keys.api_key_rotate($1::text, $2::text::interval)",
        &[&key.as_str(), &grace],
    )?;
    let (id, key, prefix): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    // to_json(NULL) is NULL: no expiry.
    let expires_at: Value = row.get::<_, Option<_>>(3).unwrap_or_default();
    // The old key, as the rotation left it.
    let old = tx.query_one(
        "SELECT o.prefix, o.status::text, to_json(o.expires_at) \
           FROM api_keys.key_list n JOIN api_keys.key_list o ON o.id = n.rotated_from \
          WHERE n.id = $1::text::uuid",
        &[&id],
    )?;
    tx.commit()?;
    let (old_prefix, old_status): (String, String) = (old.get(0), old.get(1));
    let old_expires: Value = old.get::<_, Option<_>>(2).unwrap_or_default();
    let fate = if old_status == "revoked" {
        "revoked".to_owned()
    } else {
        format!("valid until {}", timestamp(&old_expires))
    };
    print_new_key(
        args.output.output,
        args.quiet,
        json!({
            "id": id,
            "prefix": prefix,
            "expires_at": expires_at,
            "old_prefix": old_prefix,
            "old_status": old_status,
            "old_expires_at": old_expires,
        }),
        &key,
        &format!("Rotated {old_prefix} to {prefix} (id {id}); the old key is {fate}. The new key:"),
    )
}
