//! `pgkeep prep-dirs`: the seed's two init containers in one command. As root with
//! `--run-dir-only` it is `fix-run` (socket dir 0775 owned uid:gid); as the data owner it is
//! `prep-dirs` (mount guard, then PGDATA 0700). Without a flag it does both.

use pgkeep_engine::datadir::{self, PrepMode};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the socket directory (the root `fix-run` init container).
    #[arg(long, conflicts_with = "data_only")]
    pub run_dir_only: bool,
    /// Only the data volume and PGDATA (the uid-999 `prep-dirs` init container).
    #[arg(long)]
    pub data_only: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let mode = match (args.run_dir_only, args.data_only) {
        (true, _) => PrepMode::RunDirOnly,
        (_, true) => PrepMode::DataOnly,
        _ => PrepMode::All,
    };
    tracing::info!(
        uid = rustix::process::geteuid().as_raw(),
        gid = rustix::process::getegid().as_raw(),
        pgroot = %s.paths.pgroot.display(),
        pgdata = %s.paths.pgdata.display(),
        "preparing directories"
    );
    let steps = datadir::prep_dirs(
        &s.paths.pgroot,
        &s.paths.pgdata,
        &s.paths.run_dir,
        s.postgres.uid,
        s.postgres.gid,
        mode,
    )?;
    for step in steps {
        tracing::info!(path = %step.path.display(), "{}", step.action);
    }
    Ok(())
}
