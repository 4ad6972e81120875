//! `pgkeep restore upload`: copy a dump file into the backups directory and restore it.
//!
//! Not implemented yet: exits with code 2 and says so.

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dump file: a pgkeep bundle, a .tar.gz with a *.dir dump or *.sql files, .sql, .sql.gz or .dump.
    pub file: std::path::PathBuf,
}

pub async fn run(_args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    Err(crate::exit::not_implemented("restore upload"))
}
