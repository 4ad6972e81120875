//! `pgkeep bootstrap basebackup`: replace PGDATA with a base backup and replay WAL.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A bundle name in the backups directory (default: the newest complete one).
    #[arg(long)]
    pub from: Option<String>,
    /// Recover up to this time (point-in-time recovery).
    #[arg(long)]
    pub target_time: Option<String>,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("bootstrap basebackup"))
}
