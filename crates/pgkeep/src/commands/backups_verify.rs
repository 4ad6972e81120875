//! `pgkeep backups verify`: verify backups' checksums and readability.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One backup name (default: all).
    pub name: Option<String>,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("backups verify"))
}
