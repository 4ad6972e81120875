//! `pgkeep restore dump`: restore the newest (or a named) nightly logical bundle.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A bundle name in the backups directory (default: the newest complete one).
    #[arg(long)]
    pub from: Option<String>,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("restore dump"))
}
