//! `api-keys audit`: the latest entries of `api_keys.key_audit` (the entries of the
//! keys this role may see; admins all), oldest first.

use postgres::Client;
use serde_json::Value;

use super::not_found;
use crate::args::{AuditArgs, Format};
use crate::errors::Result;
use crate::keyref::KeyRef;
use crate::output;

const COLUMNS: &[&str] = &[
    "id",
    "at",
    "key_id",
    "prefix",
    "action",
    "actor",
    "app_actor",
    "old_status",
    "new_status",
    "reason",
    "details",
];

pub fn run(client: &mut Client, args: AuditArgs) -> Result<()> {
    let key = args.key.as_deref().map(KeyRef::parse).transpose()?;
    // By the entries' own key_id and prefix: a deleted key's history stays readable.
    let (condition, value) = match &key {
        None => ("true", None),
        Some(KeyRef::Id(id)) => ("a.key_id = $2::text::uuid", Some(id)),
        Some(KeyRef::Prefix(p)) => ("a.prefix = $2::text", Some(p)),
    };
    let sql = format!(
        "SELECT to_json(a) FROM api_keys.key_audit a \
          WHERE ($2::text IS NULL OR {condition}) ORDER BY a.id DESC LIMIT $1::int8"
    );
    let mut entries: Vec<Value> = client
        .query(&sql, &[&args.limit, &value])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    entries.reverse();
    if let (Some(key), true) = (&key, entries.is_empty()) {
        return Err(not_found(key));
    }
    match args.output.output {
        Format::Json => output::json(&Value::Array(entries)),
        Format::Csv => output::csv(
            COLUMNS,
            &entries
                .iter()
                .map(|e| COLUMNS.iter().map(|c| output::cell(&e[*c])).collect())
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            if entries.is_empty() {
                eprintln!("No audit entries.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries.iter().map(table_row).collect();
            output::table(
                &["AT", "PREFIX", "ACTION", "ACTOR", "STATUS", "REASON"],
                &rows,
            )
        }
    }
}

fn table_row(e: &Value) -> Vec<String> {
    let text = |c: &str| output::cell(&e[c]);
    let actor = match text("app_actor").as_str() {
        "" => text("actor"),
        app => format!("{} ({app})", text("actor")),
    };
    let status = match (text("old_status").as_str(), text("new_status").as_str()) {
        ("", new) => new.to_owned(),
        // A deletion: the status the key had.
        (old, "") => format!("{old} → deleted"),
        (old, new) if old == new => old.to_owned(),
        (old, new) => format!("{old} → {new}"),
    };
    vec![
        output::timestamp(&e["at"]),
        text("prefix"),
        text("action"),
        actor,
        status,
        text("reason"),
    ]
}
