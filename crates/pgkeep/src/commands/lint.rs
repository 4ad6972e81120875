//! `pgkeep lint`: check Kubernetes manifests for the pitfalls that lose data.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML files or directories to check.
    pub paths: Vec<std::path::PathBuf>,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("lint"))
}
