//! `pgkeep wal fetch`: restore_command: fetch one WAL file from the archive.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file name to fetch (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: std::path::PathBuf,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("wal fetch"))
}
