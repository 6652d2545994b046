//! One module a command. Each calls only the extension's functions and views
//! (`api_keys.key_list`, `api_key_*`, `usage_by_*`, `key_audit`), as the role it
//! connects as: what that role may see and do is the server's to decide.

mod audit;
mod create;
mod delete;
mod list;
mod rotate;
mod show;
mod update;
mod usage;

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use serde_json::{json, Value};

use crate::args::{Cli, Command, Format, KeySettings};
use crate::connect::connect;
use crate::errors::{Class, Error, Result};
use crate::keyref::KeyRef;
use crate::output;

pub fn run(cli: Cli) -> Result<()> {
    // Refused before connecting: nothing to ask, nobody to ask.
    if let Command::Delete(args) = &cli.command {
        delete::check_confirmable(args)?;
    }
    let mut client = connect(cli.dsn.as_deref())?;
    match cli.command {
        Command::List(args) => list::run(&mut client, args),
        Command::Create(args) => create::run(&mut client, args),
        Command::Show(args) => show::run(&mut client, args),
        Command::Update(args) => update::run(&mut client, args),
        Command::Rotate(args) => rotate::run(&mut client, args),
        Command::Delete(args) => delete::run(&mut client, args),
        Command::Usage(args) => usage::run(&mut client, args),
        Command::Audit(args) => audit::run(&mut client, args),
    }
}

/// Boxed parameters of mixed types, and `name => $n::type` arguments for a call.
#[derive(Default)]
struct Call {
    args: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync>>,
}

impl Call {
    /// Adds a parameter; returns its placeholder.
    fn bind<T: ToSql + Sync + 'static>(&mut self, value: T) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// A named argument `name => <expr>`, where `expr` may use `{}` for the value.
    fn arg<T: ToSql + Sync + 'static>(&mut self, name: &str, expr: &str, value: T) {
        let placeholder = self.bind(value);
        self.args
            .push(format!("{name} => {}", expr.replace("{}", &placeholder)));
    }

    fn arg_opt<T: ToSql + Sync + 'static>(&mut self, name: &str, expr: &str, value: Option<T>) {
        if let Some(v) = value {
            self.arg(name, expr, v);
        }
    }

    /// The settings create and update share, as arguments of issue and update (an
    /// expiry as a time or from now).
    fn settings(&mut self, s: KeySettings) {
        self.arg_opt(
            "scopes",
            "{}::text[]",
            s.permissions.as_deref().map(comma_list),
        );
        // '' is an empty list, which allows every address.
        self.arg_opt(
            "allowed_cidrs",
            "{}::text[]::cidr[]",
            s.allowed_cidrs.as_deref().map(comma_list),
        );
        self.arg_opt("expires_at", "{}::text::timestamptz", s.expires_at);
        self.arg_opt(
            "expires_at",
            "statement_timestamp() + {}::text::interval",
            s.expires_in,
        );
        self.arg_opt("rate_limit_per_minute", "{}::int4", s.rate_limit_per_minute);
        self.arg_opt("rate_limit_per_hour", "{}::int4", s.rate_limit_per_hour);
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref()).collect()
    }
}

/// `a,b , c` as `[a, b, c]`; empty for empty text.
fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The columns of a key row: the whole `key_list` row as JSON (column order kept), and
/// how long ago it was last used.
const KEY_COLUMNS: &str =
    "to_json(l), extract(epoch FROM statement_timestamp() - l.last_used_at)::float8";

/// A row of `api_keys.key_list`. It never holds a secret: the view has none.
pub struct KeyRow {
    pub json: Value,
    pub used_ago: Option<f64>,
}

impl KeyRow {
    fn from_row(row: &Row) -> KeyRow {
        KeyRow {
            json: row.get(0),
            used_ago: row.get(1),
        }
    }

    fn get(&self, column: &str) -> &Value {
        self.json.get(column).unwrap_or(&Value::Null)
    }

    pub fn text(&self, column: &str) -> String {
        output::cell(self.get(column))
    }

    fn last_used(&self) -> String {
        self.used_ago.map_or_else(|| "never".into(), output::ago)
    }

    /// The cells of `list`'s table.
    fn list_cells(&self) -> Vec<String> {
        vec![
            self.text("id"),
            self.text("prefix"),
            self.text("name"),
            self.text("key_type"),
            self.text("environment"),
            self.text("status"),
            self.text("scopes"),
            self.last_used(),
        ]
    }

    /// Every column, labelled, for `show` and the commands that change a key.
    fn detail(&self) -> Vec<(&'static str, String)> {
        let limit = |column| match self.get(column) {
            Value::Null => "default (server setting)".to_owned(),
            v => output::cell(v),
        };
        let mut last_used = self.last_used();
        if self.used_ago.is_some() {
            let from = match self.text("last_used_ip") {
                ip if ip.is_empty() => String::new(),
                ip => format!(", from {ip}"),
            };
            last_used = format!(
                "{} ({last_used}{from})",
                output::timestamp(self.get("last_used_at"))
            );
        }
        let or = |v: String, default: &str| if v.is_empty() { default.to_owned() } else { v };
        vec![
            ("id", self.text("id")),
            ("prefix", self.text("prefix")),
            ("name", self.text("name")),
            ("description", self.text("description")),
            ("type", self.text("key_type")),
            ("environment", self.text("environment")),
            ("owner", self.text("owner")),
            ("status", self.text("status")),
            ("status reason", self.text("status_reason")),
            ("permissions", self.text("scopes")),
            ("allowed cidrs", or(self.text("allowed_cidrs"), "any")),
            (
                "expires",
                or(output::timestamp(self.get("expires_at")), "never"),
            ),
            ("created", output::timestamp(self.get("created_at"))),
            ("created by", self.text("created_by")),
            ("last used", last_used),
            ("rotated from", self.text("rotated_from")),
            ("rate limit/minute", limit("rate_limit_per_minute")),
            ("rate limit/hour", limit("rate_limit_per_hour")),
            ("metadata", self.text("metadata")),
        ]
    }

    /// One key in the chosen format.
    fn print(&self, format: Format) -> Result<()> {
        match format {
            Format::Json => output::json(&self.json),
            Format::Table => output::fields(&self.detail()),
            Format::Csv => {
                let columns: Vec<&str> = self
                    .json
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let cells = columns.iter().map(|c| self.text(c)).collect();
                output::csv(&columns, &[cells])
            }
        }
    }
}

/// The key `key` names, as `key_list` shows it to this role; not found (3) when there
/// is none, or none this role may see (the same, by design).
fn find_key(client: &mut impl GenericClient, key: &KeyRef) -> Result<KeyRow> {
    let (condition, value) = match key {
        KeyRef::Id(id) => ("l.id = $1::text::uuid", id),
        KeyRef::Prefix(p) => ("l.prefix = $1::text", p),
    };
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys.key_list l WHERE {condition}");
    match client.query_opt(&sql, &[value])? {
        Some(row) => Ok(KeyRow::from_row(&row)),
        None => Err(not_found(key)),
    }
}

fn not_found(key: &KeyRef) -> Error {
    Error::new(
        Class::NotFound,
        format!("no API key with {}", key.describe()),
    )
    .with_hint("The key does not exist, or it belongs to another owner.")
}

/// Prints a new key (create, rotate): the only place a secret is ever printed.
fn print_new_key(
    format: Format,
    quiet: bool,
    fields: Value,
    key: &str,
    summary: &str,
) -> Result<()> {
    output::NEW_KEY.store(true, std::sync::atomic::Ordering::Relaxed);
    let prefix = fields["prefix"].as_str().unwrap_or_default().to_owned();
    print_key(format, quiet, fields, key, summary).map_err(|e| {
        Error::new(
            Class::Other,
            format!("key {prefix} was made, but it could not be printed: {}", e.message),
        )
        .with_hint(format!(
            "Nobody has the key: rotate it (api-keys rotate {prefix}), which revokes it and makes one with the same settings."
        ))
    })
}

fn print_key(format: Format, quiet: bool, fields: Value, key: &str, summary: &str) -> Result<()> {
    if quiet {
        return output::out(&format!("{key}\n"));
    }
    match format {
        Format::Json => {
            let mut fields = fields;
            fields["key"] = json!(key);
            output::json(&fields)
        }
        Format::Csv => {
            let obj = fields.as_object().cloned().unwrap_or_default();
            let mut headers: Vec<&str> = obj.keys().map(String::as_str).collect();
            let mut cells: Vec<String> = obj.values().map(output::cell).collect();
            headers.push("key");
            cells.push(key.to_owned());
            output::csv(&headers, &[cells])
        }
        Format::Table => {
            output::out(&format!("{summary}\n\n    {key}\n\n"))?;
            eprintln!("Store this key now: it is shown only once and cannot be read back.");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(comma_list(" a:b, c:d ,,"), ["a:b", "c:d"]);
        assert!(comma_list("").is_empty());
    }

    #[test]
    fn calls_name_their_arguments() {
        let mut call = Call::default();
        call.arg("name", "{}::text", "x".to_owned());
        call.arg_opt::<i32>("limit", "{}::int4", None);
        call.arg(
            "expires_at",
            "statement_timestamp() + {}::text::interval",
            "1 days",
        );
        assert_eq!(
            call.args,
            [
                "name => $1::text",
                "expires_at => statement_timestamp() + $2::text::interval"
            ]
        );
        assert_eq!(call.refs().len(), 2);
    }
}
