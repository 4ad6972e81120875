//! `pgkeep scale`: scale the Deployment to 0 or 1 replica and wait.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replicas: 0 or 1.
    #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
    pub replicas: u8,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("scale"))
}
