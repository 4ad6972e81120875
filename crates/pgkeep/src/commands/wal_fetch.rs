//! `pgkeep wal fetch %f %p`: PostgreSQL's `restore_command`. Finds the file in the archive in
//! any form pgkeep writes (zstd, gzip) or the seed's plain `cp` copies, and writes it to %p
//! through a temporary name.
//!
//! Exit codes follow what PostgreSQL expects: 0 restored; 1, quietly, when the file is not in
//! the archive (normal at the end of recovery); 126 when the archived file is damaged or cannot
//! be read. PostgreSQL treats an exit code above 125 as fatal and stops recovery, which is what
//! we want: a damaged segment must never look like "the end of the WAL" and end recovery early.

use std::path::PathBuf;

use pgkeep_engine::wal::{Archive, FetchOutcome};

use crate::cli::Ctx;

/// The exit code that makes PostgreSQL abort recovery instead of treating the file as missing.
const FATAL_FOR_POSTGRES: i32 = 126;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file name to fetch (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// The WAL archive directory (default: paths.wal_archive / PGKEEP_WAL_ARCHIVE).
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let dir = args
        .archive
        .unwrap_or_else(|| ctx.settings().paths.wal_archive.clone());
    match Archive::new(&dir).fetch(&args.name, &args.dest) {
        Ok(FetchOutcome::Restored { bytes }) => {
            tracing::debug!(name = %args.name, bytes, "restored from the archive");
            Ok(())
        }
        Ok(FetchOutcome::Missing) => {
            tracing::debug!(name = %args.name, "not in the archive");
            std::process::exit(1);
        }
        Err(e) => {
            crate::output::report_error(&e.into());
            std::process::exit(FATAL_FOR_POSTGRES);
        }
    }
}
