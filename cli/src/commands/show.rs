//! `api-keys show`: one row of `api_keys.key_list`.

use postgres::Client;

use super::find_key;
use crate::args::KeyArgs;
use crate::errors::Result;
use crate::keyref::KeyRef;

pub fn run(client: &mut Client, args: KeyArgs) -> Result<()> {
    let key = KeyRef::parse(&args.key)?;
    find_key(client, &key)?.print(args.output.output)
}
