//! `api-keys update`: settings through `api_key_update`, then the status through
//! `api_key_set_status`, in one transaction (a revoked key could not be edited after).

use postgres::Client;

use super::{Call, KeyRow, KEY_COLUMNS};
use crate::args::{label, UpdateArgs};
use crate::errors::{Error, Result};
use crate::keyref::KeyRef;

pub fn run(client: &mut Client, args: UpdateArgs) -> Result<()> {
    // Named here, so that a pasted whole key never leaves this machine.
    let key_ref = KeyRef::parse(&args.key)?;
    let mut call = Call::default();
    call.arg("key_id", "{}::text", key_ref.as_str().to_owned());
    call.arg_opt("name", "{}::text", args.name);
    call.arg_opt("description", "{}::text", args.description);
    call.settings(args.settings);
    if args.no_expiry {
        call.arg("expires_at", "{}::text::timestamptz", "infinity");
    }
    let edits = call.args.len() > 1;
    if !edits && args.status.is_none() {
        return Err(Error::usage("nothing to change")
            .with_hint("Give --status, or a setting to change (api-keys update --help)."));
    }

    let mut tx = client.transaction()?;
    let mut key = None;
    if edits {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys.api_key_update({}) l",
            call.args.join(", ")
        );
        key = Some(KeyRow::from_row(&tx.query_one(&sql, &call.refs())?));
    }
    if let Some(status) = args.status {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys.api_key_set_status($1::text, \
             $2::text::api_keys.key_status, $3::text) l"
        );
        key = Some(KeyRow::from_row(&tx.query_one(
            &sql,
            &[&key_ref.as_str(), &label(status), &args.reason],
        )?));
    }
    tx.commit()?;
    key.expect("an edit or a status change ran")
        .print(args.output.output)
}
