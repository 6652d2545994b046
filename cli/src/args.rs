//! The command line: commands, options, and the examples each `--help` ends with.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration;

const MAIN_HELP: &str = "\
Examples:
  api-keys list --status active --env production
  KEY=$(api-keys create --name 'CI deploy' --permissions runs:read,runs:write --quiet)
  api-keys rotate ak_live_AbCdEf012345 --grace 1h
  api-keys --dsn 'host=db.internal dbname=app user=admin' usage --hours 48

Connection: --dsn (a libpq keyword string or URL), else DATABASE_URL, else the PG*
variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGAPPNAME, PGOPTIONS,
PGCONNECT_TIMEOUT, PGSSLMODE). No TLS: sslmode require and verify-* are refused.

Exit codes: 0 ok, 1 other error, 2 usage error (bad arguments, invalid values),
3 not found, 4 not allowed, 5 invalid status transition, 6 connection failure.";

const LIST_HELP: &str = "\
Examples:
  api-keys list
  api-keys list --status active --env production --order-by 'last_used desc'
  api-keys list --search deploy --output json
  api-keys list --filter 'status = active and (name ~ ci or scope = runs:read)'
  api-keys list --filter 'last_used > 90d or last_used = never' --output csv
  api-keys list --filter 'expires < 30d and env in (production, staging)'
  api-keys list --page-size 20 --page 3

Filter language (--filter):
  condition   field op value, or field [not] in (value, ...)
  combine     and, or, not, parentheses (and binds tighter than or)
  fields      id, prefix, name, description, owner, type, env, status,
              scope, created, last_used, expires
  operators   = != ~ !~ (contains, case-insensitive) in, not in;
              for times < <= > >= and = never / != never
  values      words (runs:read, 2025-01-31) or 'quoted' / \"quoted\" text
  times       a duration from now: last_used < 7d (used in the last 7 days),
              created > 1w (older than a week), expires < 30d (expires within
              30 days; a key that never expires does not); or a date:
              created >= 2025-01-01, expires < '2025-06-30 12:00'
  scope       scope = runs:read (has that scope), scope ~ runs (one contains it)";

const CREATE_HELP: &str = "\
Examples:
  api-keys create --name 'billing worker' --permissions invoices:read,invoices:write
  api-keys create --name 'staging CI' --environment staging --expires-in 90d \\
      --allowed-cidrs 10.0.0.0/8 --rate-limit-per-minute 600
  KEY=$(api-keys create --name 'nightly export' --permissions exports:read --quiet)
  api-keys create --name 'for jane' --type user --owner jane --output json

The key is printed once and can never be read back: store it right away.";

const SHOW_HELP: &str = "\
Examples:
  api-keys show ak_live_AbCdEf012345
  api-keys show 0e8a3a0c-1b2c-4d5e-8f90-a1b2c3d4e5f6 --output json";

const UPDATE_HELP: &str = "\
Examples:
  api-keys update ak_live_AbCdEf012345 --status suspended --reason 'investigating'
  api-keys update ak_live_AbCdEf012345 --status active
  api-keys update ak_live_AbCdEf012345 --status revoked --reason 'leaked in a CI log'
  api-keys update ak_live_AbCdEf012345 --permissions runs:read --allowed-cidrs 10.0.0.0/8
  api-keys update ak_live_AbCdEf012345 --expires-in 30d --rate-limit-per-hour 5000
  api-keys update ak_live_AbCdEf012345 --no-expiry --allowed-cidrs ''

Revoked and expired are final (exit code 5 on any change to such a key); revoking
needs --reason. --allowed-cidrs '' allows every address; --description '' clears it.";

const ROTATE_HELP: &str = "\
Examples:
  api-keys rotate ak_live_AbCdEf012345
  api-keys rotate ak_live_AbCdEf012345 --grace 1h
  NEW=$(api-keys rotate ak_live_AbCdEf012345 --grace 24h --quiet)

The new key has the old one's settings and is printed once. Without --grace the old
key is revoked at once; with it, the old key expires after the grace period.";

const DELETE_HELP: &str = "\
Examples:
  api-keys delete ak_live_AbCdEf012345
  api-keys delete ak_live_AbCdEf012345 --yes

Asks for confirmation on a terminal; elsewhere (scripts, CI) --yes is required.
The audit log keeps the key's history.";

const USAGE_HELP: &str = "\
Examples:
  api-keys usage
  api-keys usage --key ak_live_AbCdEf012345 --hours 48
  api-keys usage --owner billing --output csv

Verifications per hour (accepted and rejected), as written by the extension's
worker (within api_keys.flush_interval, 10 s by default).";

const AUDIT_HELP: &str = "\
Examples:
  api-keys audit
  api-keys audit ak_live_AbCdEf012345
  api-keys audit --limit 200 --output json";

#[derive(Parser, Debug)]
#[command(
    name = "api-keys",
    version,
    about = "Manage the API keys of the api_keys PostgreSQL extension",
    after_help = MAIN_HELP
)]
pub struct Cli {
    /// Connection string: libpq keywords (`host=… dbname=…`) or a postgres:// URL.
    /// Prefer PGPASSWORD to a password here, which other users may see in `ps`.
    #[arg(long, global = true, value_name = "DSN")]
    pub dsn: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List keys, with filters and paging
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
    /// Issue a new key (printed once)
    #[command(after_help = CREATE_HELP)]
    Create(CreateArgs),
    /// Show one key's settings (never its secret)
    #[command(after_help = SHOW_HELP)]
    Show(KeyArgs),
    /// Change a key's status, scopes, networks, expiry or limits
    #[command(after_help = UPDATE_HELP)]
    Update(UpdateArgs),
    /// Replace a key with a new one with the same settings (printed once)
    #[command(after_help = ROTATE_HELP)]
    Rotate(RotateArgs),
    /// Delete a key (its audit history stays)
    #[command(after_help = DELETE_HELP)]
    Delete(DeleteArgs),
    /// Verifications per hour, for a key, an owner or all keys you can see
    #[command(after_help = USAGE_HELP)]
    Usage(UsageArgs),
    /// The audit log: issues, changes, rotations, deletions
    #[command(after_help = AUDIT_HELP)]
    Audit(AuditArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Status {
    Active,
    Suspended,
    Revoked,
    Expired,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Environment {
    Production,
    Staging,
    Development,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum KeyType {
    Service,
    User,
}

/// The SQL label of a clap value (the names agree).
pub fn label(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .expect("no skipped values")
        .get_name()
        .to_owned()
}

#[derive(Args, Debug)]
pub struct OutputArg {
    /// Output format
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Keys in this status (expired: past their expiry too)
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Keys for this environment
    #[arg(long, visible_alias = "env", value_enum)]
    pub environment: Option<Environment>,
    /// Keys of this owner (admins; others see only their own keys)
    #[arg(long, value_parser = bounded_text)]
    pub owner: Option<String>,
    /// Name or prefix contains this text (case-insensitive)
    #[arg(long, value_parser = bounded_text)]
    pub search: Option<String>,
    /// A filter expression (see below)
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Sort by: id, prefix, name, type, env, status, owner, created, last_used,
    /// expires; optionally followed by asc or desc
    #[arg(long, value_name = "COLUMN [asc|desc]", default_value = "created desc", value_parser = bounded_text)]
    pub order_by: String,
    /// Keys per page, 1 to 1000
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub page_size: i64,
    /// Which page, from 1
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub page: i64,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// What the key is for, as listings show it
    #[arg(long)]
    pub name: String,
    /// Free text, as `show` shows it
    #[arg(long)]
    pub description: Option<String>,
    /// A service's key or a person's
    #[arg(long = "type", value_enum, default_value = "service")]
    pub key_type: KeyType,
    /// Which environment the key is for (its prefix says: live, stage, dev)
    #[arg(long, visible_alias = "env", value_enum, default_value = "production")]
    pub environment: Environment,
    /// Owner of the key (admins only; default: you)
    #[arg(long)]
    pub owner: Option<String>,
    #[command(flatten)]
    pub settings: KeySettings,
    /// Print only the key, for KEY=$(api-keys create …)
    #[arg(long, short, conflicts_with = "output")]
    pub quiet: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

/// The settings of a key that create sets and update replaces.
#[derive(Args, Debug)]
pub struct KeySettings {
    /// Comma-separated scopes, e.g. runs:read,projects/42/*:write (create's default:
    /// * = all)
    #[arg(long, visible_alias = "scopes", value_name = "SCOPES")]
    pub permissions: Option<String>,
    /// Comma-separated networks that may use the key, e.g. 10.0.0.0/8,192.0.2.7
    /// ('' or none: any)
    #[arg(long, value_name = "CIDRS")]
    pub allowed_cidrs: Option<String>,
    /// Expire after this long: 90d, 12h, 30m, 2w
    #[arg(long, value_name = "DURATION", value_parser = duration::arg, conflicts_with = "expires_at")]
    pub expires_in: Option<String>,
    /// Expire at this time, e.g. '2026-01-31 12:00+00'
    #[arg(long, value_name = "TIMESTAMP")]
    pub expires_at: Option<String>,
    /// Calls per clock minute (default: setting api_keys.default_rate_limit_per_minute)
    #[arg(long, value_name = "N")]
    pub rate_limit_per_minute: Option<i32>,
    /// Calls per clock hour (default: setting api_keys.default_rate_limit_per_hour)
    #[arg(long, value_name = "N")]
    pub rate_limit_per_hour: Option<i32>,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The key's id or prefix
    #[arg(value_name = "ID|PREFIX")]
    pub key: String,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The key's id or prefix
    #[arg(value_name = "ID|PREFIX")]
    pub key: String,
    /// The new status (revoked and expired are final)
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Why (required to revoke)
    #[arg(long, requires = "status")]
    pub reason: Option<String>,
    /// A new name
    #[arg(long)]
    pub name: Option<String>,
    /// A new description ('' clears it)
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub settings: KeySettings,
    /// Never expire
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    pub no_expiry: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The key's id or prefix
    #[arg(value_name = "ID|PREFIX")]
    pub key: String,
    /// Keep the old key valid this long (0 revokes it at once): 1h, 30m, 2d
    #[arg(long, value_name = "DURATION", value_parser = duration::arg)]
    pub grace: Option<String>,
    /// Print only the new key
    #[arg(long, short, conflicts_with = "output")]
    pub quiet: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key's id or prefix
    #[arg(value_name = "ID|PREFIX")]
    pub key: String,
    /// Do not ask
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// One key's usage (id or prefix)
    #[arg(long, value_name = "ID|PREFIX", conflicts_with = "owner")]
    pub key: Option<String>,
    /// The usage of all keys of one owner
    #[arg(long, value_parser = bounded_text)]
    pub owner: Option<String>,
    /// How many hours back, this one included
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i32).range(1..=720))]
    pub hours: i32,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this key's entries (id or prefix; also of a deleted key)
    #[arg(value_name = "ID|PREFIX")]
    pub key: Option<String>,
    /// The latest N entries
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub limit: i64,
    #[command(flatten)]
    pub output: OutputArg,
}

/// A search text, owner or sort order: at most 200 characters, as the server bounds an
/// owner, and as `--filter` bounds each of its values.
fn bounded_text(text: &str) -> std::result::Result<String, String> {
    if text.chars().count() > crate::filter::MAX_VALUE {
        return Err(format!("at most {} characters", crate::filter::MAX_VALUE));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:\n  api-keys"),
                "{}",
                sub.get_name()
            );
        }
    }
}
