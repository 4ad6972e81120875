//! The pgkeep binary: parses the command line, resolves settings before any I/O, sets up
//! logging, runs one command, and exits with its code or its error's (`exit::code`): the only
//! place the process exits.
//!
//! Exit codes: 0 success; 1 failure; 2 usage error or a command that is not implemented yet;
//! 3 refused by a safety check (nothing was changed).

mod cli;
mod cluster;
mod commands;
mod exit;
mod output;
mod record;
mod stop;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let ctx = match cli.global.resolve() {
        Ok(ctx) => ctx,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    output::init_logging(&ctx);
    // `wal push` / `wal fetch` run once per WAL segment as archive_command / restore_command
    // and do their work on their own threads: a current-thread runtime spares them starting
    // worker threads (about 2 ms a segment).
    let mut builder = if matches!(cli.command, cli::Command::Wal(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command, ctx)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            output::report_error(&err);
            ExitCode::from(exit::code(&err))
        }
    }
}
