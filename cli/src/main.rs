//! `api-keys`: the keys of the api_keys PostgreSQL extension from a terminal or a CI
//! step. It calls only the extension's functions and views, as the connecting role.

mod args;
mod commands;
mod connect;
mod duration;
mod errors;
mod filter;
mod keyref;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error
            // (2), printed with any key in the arguments cut to its prefix.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprint!("{}", keyref::redact(&e.render().to_string()));
            return ExitCode::from(errors::Class::Usage as u8);
        }
    };
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
