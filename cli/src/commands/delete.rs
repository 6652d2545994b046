//! `api-keys delete`: `api_key_delete`, after a yes on a terminal, or with `--yes`.

use std::io::{BufRead, IsTerminal, Write};

use postgres::Client;

use super::{find_key, KeyRow, KEY_COLUMNS};
use crate::args::{DeleteArgs, Format};
use crate::errors::{Error, Result};
use crate::keyref::KeyRef;

/// Without `--yes` there must be someone to ask.
pub fn check_confirmable(args: &DeleteArgs) -> Result<()> {
    if args.yes || std::io::stdin().is_terminal() {
        return Ok(());
    }
    Err(
        Error::usage("refusing to delete without confirmation: stdin is not a terminal")
            .with_hint("Pass --yes to delete without asking."),
    )
}

fn confirmed(prefix: &str) -> Result<bool> {
    eprint!("Delete key {prefix}? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn run(client: &mut Client, args: DeleteArgs) -> Result<()> {
    let key = find_key(client, &KeyRef::parse(&args.key)?)?;
    let prefix = key.text("prefix");
    if !args.yes && !confirmed(&prefix)? {
        eprintln!("Not deleted.");
        return Ok(());
    }
    let row = client.query_one(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys.api_key_delete($1::text) l"),
        &[&key.text("id")],
    )?;
    let deleted = KeyRow::from_row(&row);
    match args.output.output {
        Format::Table => crate::output::out(&format!(
            "Deleted key {prefix} ({}); its audit history stays.\n",
            deleted.text("name")
        )),
        format => deleted.print(format),
    }
}
