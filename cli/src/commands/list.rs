//! `api-keys list`: a page of `api_keys.key_list`, filtered. The view shows each role
//! its own keys (admins all); the filters narrow that down.

use postgres::Client;
use serde_json::Value;

use super::{KeyRow, KEY_COLUMNS};
use crate::args::{label, Format, ListArgs};
use crate::errors::{Error, Result};
use crate::filter::{self, contains_pattern, Params};
use crate::output;

/// What `--order-by` accepts, and the column each name sorts by.
const SORTABLE: &[(&str, &str)] = &[
    ("id", "id"),
    ("prefix", "prefix"),
    ("name", "name"),
    ("type", "key_type"),
    ("key_type", "key_type"),
    ("env", "environment"),
    ("environment", "environment"),
    ("status", "status"),
    ("owner", "owner"),
    ("created", "created_at"),
    ("created_at", "created_at"),
    ("last_used", "last_used_at"),
    ("last_used_at", "last_used_at"),
    ("expires", "expires_at"),
    ("expires_at", "expires_at"),
];

const HEADERS: &[&str] = &[
    "ID",
    "PREFIX",
    "NAME",
    "TYPE",
    "ENV",
    "STATUS",
    "PERMISSIONS",
    "LAST USED",
];

/// `column [asc|desc]` as ORDER BY SQL, from the fixed list only.
fn order_by(text: &str) -> Result<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let direction = match words.get(1).map(String::as_str) {
        None | Some("asc") => "ASC",
        Some("desc") => "DESC",
        Some(_) => return Err(order_by_error(text)),
    };
    let column = match (words.len(), words.first()) {
        (1 | 2, Some(w)) => SORTABLE.iter().find(|(name, _)| name == w),
        _ => None,
    };
    match column {
        // Ties broken by id, so that pages neither repeat nor skip a key.
        Some((_, column)) => Ok(format!("l.{column} {direction} NULLS LAST, l.id")),
        None => Err(order_by_error(text)),
    }
}

fn order_by_error(text: &str) -> Error {
    let names: Vec<&str> = SORTABLE
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.ends_with("_at") && *n != "key_type" && *n != "environment")
        .collect();
    Error::usage(format!(
        "--order-by: {text:?} is not a column with optional asc or desc"
    ))
    .with_hint(format!("Columns: {}.", names.join(", ")))
}

/// The statement and its parameters (all text).
fn query(args: &ListArgs) -> Result<(String, Params)> {
    let mut params = Params::default();
    let mut conditions = Vec::new();
    if let Some(s) = args.status {
        conditions.push(format!(
            "l.status = {}::api_keys.key_status",
            params.bind(label(s))
        ));
    }
    if let Some(e) = args.environment {
        conditions.push(format!(
            "l.environment = {}::api_keys.environment",
            params.bind(label(e))
        ));
    }
    if let Some(owner) = &args.owner {
        conditions.push(format!("l.owner = {}", params.bind(owner.as_str())));
    }
    if let Some(search) = &args.search {
        // As api_key_list's search: name or prefix, literally, any case.
        let p = params.bind(contains_pattern(search));
        conditions.push(format!("(l.name ILIKE {p} OR l.prefix ILIKE {p})"));
    }
    if let Some(text) = &args.filter {
        let expr = filter::parse(text).map_err(|e| {
            Error::usage(format!("--filter: {e}"))
                .with_hint("See `api-keys list --help` for the filter language.")
        })?;
        conditions.push(expr.to_sql(&mut params));
    }
    let order = order_by(&args.order_by)?;
    let limit = params.bind(args.page_size.to_string());
    let offset = params.bind(((args.page - 1) * args.page_size).to_string());
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    Ok((
        format!(
            "SELECT {KEY_COLUMNS} FROM api_keys.key_list l{where_clause} \
             ORDER BY {order} LIMIT {limit}::int8 OFFSET {offset}::int8"
        ),
        params,
    ))
}

pub fn run(client: &mut Client, args: ListArgs) -> Result<()> {
    let (sql, params) = query(&args)?;
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
        .0
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let keys: Vec<KeyRow> = client
        .query(&sql, &refs)?
        .iter()
        .map(KeyRow::from_row)
        .collect();
    match args.output.output {
        Format::Json => output::json(&Value::Array(keys.into_iter().map(|k| k.json).collect())),
        Format::Csv => {
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    let mut cells = k.list_cells();
                    // Machine-readable times: the timestamp, not "5m ago".
                    cells[7] = k.text("last_used_at");
                    cells.push(k.text("owner"));
                    cells.push(k.text("expires_at"));
                    cells.push(k.text("created_at"));
                    cells
                })
                .collect();
            output::csv(
                &[
                    "id",
                    "prefix",
                    "name",
                    "type",
                    "environment",
                    "status",
                    "permissions",
                    "last_used_at",
                    "owner",
                    "expires_at",
                    "created_at",
                ],
                &rows,
            )
        }
        Format::Table => {
            if keys.is_empty() {
                eprintln!("No keys found.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys.iter().map(KeyRow::list_cells).collect();
            output::table(HEADERS, &rows)?;
            if keys.len() as i64 == args.page_size {
                eprintln!(
                    "Page {} ({} keys); there may be more: --page {}",
                    args.page,
                    keys.len(),
                    args.page + 1
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn list_args(argv: &[&str]) -> ListArgs {
        let argv = [&["api-keys", "list"][..], argv].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::List(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn order_by_takes_listed_columns_only() {
        assert_eq!(order_by("name").unwrap(), "l.name ASC NULLS LAST, l.id");
        assert_eq!(
            order_by(" Last_Used  DESC ").unwrap(),
            "l.last_used_at DESC NULLS LAST, l.id"
        );
        for bad in [
            "",
            "secret_hash",
            "name sideways",
            "name asc extra",
            "name; drop",
        ] {
            let e = order_by(bad).unwrap_err();
            assert_eq!(e.class, crate::errors::Class::Usage, "{bad}");
        }
    }

    #[test]
    fn options_and_filter_are_bound() {
        let (sql, params) = query(&list_args(&[
            "--status",
            "active",
            "--env",
            "staging",
            "--search",
            "o'brien",
            "--filter",
            "scope = runs:read",
            "--page-size",
            "20",
            "--page",
            "3",
        ]))
        .unwrap();
        assert_eq!(
            sql,
            format!(
                "SELECT {KEY_COLUMNS} FROM api_keys.key_list l WHERE \
                 l.status = $1::text::api_keys.key_status AND \
                 l.environment = $2::text::api_keys.environment AND \
                 (l.name ILIKE $3::text OR l.prefix ILIKE $3::text) AND \
                 coalesce($4::text = ANY (l.scopes), false) \
                 ORDER BY l.created_at DESC NULLS LAST, l.id LIMIT $5::text::int8 OFFSET $6::text::int8"
            )
        );
        assert_eq!(
            params.0,
            ["active", "staging", "%o'brien%", "runs:read", "20", "40"]
        );
    }

    #[test]
    fn a_bad_filter_is_a_usage_error_with_its_position() {
        let e = query(&list_args(&["--filter", "status ="])).unwrap_err();
        assert_eq!(e.class, crate::errors::Class::Usage);
        assert_eq!(
            e.message,
            "--filter: at 9: expected a value after '=', got the end of the filter"
        );
    }
}
