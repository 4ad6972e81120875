//! `pgkeep wal push`: archive_command: store one WAL file in the archive.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file to archive (%p).
    pub path: std::path::PathBuf,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("wal push"))
}
