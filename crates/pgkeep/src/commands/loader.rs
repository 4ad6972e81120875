//! `pgkeep loader up|down`: the backups-loader helper pod.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct UpArgs {}

#[derive(Debug, clap::Args)]
pub struct DownArgs {}

pub async fn up(_args: UpArgs, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("loader up"))
}

pub async fn down(_args: DownArgs, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("loader down"))
}
