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
    let key_ref = KeyRef::parse(&args.key)?;
    // Asking shows the key's prefix first; with --yes the server names the key itself
    // (an id or a prefix; P0002 when there is none the caller may see).
    let target = if args.yes {
        key_ref.as_str().to_owned()
    } else {
        let key = find_key(client, &key_ref)?;
        if !confirmed(&key.text("prefix"))? {
            eprintln!("Not deleted.");
            return Ok(());
        }
        key.text("id")
    };
    let row = client.query_one(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys.api_key_delete($1::text) l"),
        &[&target],
    )?;
    let deleted = KeyRow::from_row(&row);
    let prefix = deleted.text("prefix");
    match args.output.output {
        Format::Table => crate::output::out(&format!(
            "Deleted key {prefix} ({}); its audit history stays.\n",
            deleted.text("name")
        )),
        format => deleted.print(format),
    }
}
