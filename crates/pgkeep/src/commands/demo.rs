//! `pgkeep demo`: the main job on a throwaway local site.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("demo"))
}
