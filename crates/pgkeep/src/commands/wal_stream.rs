//! `pgkeep wal stream`: stream WAL into the WAL archive's spool as the server writes it,
//! through a physical replication slot, until SIGTERM/SIGINT (see `pgkeep_engine::walstream`).
//! With `--synchronous` a server whose `synchronous_standby_names` names `pgkeep` acknowledges
//! a commit only once its WAL is flushed on the archive volume. Runs as the data owner.

use std::path::PathBuf;

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::postmaster::Signals;
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::wal::PushOptions;
use pgkeep_engine::walstream::{self, StreamConfig, StreamError};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report the flush position after every write, so a server naming `pgkeep` in
    /// synchronous_standby_names waits for the archive volume before acknowledging a commit.
    #[arg(long)]
    pub synchronous: bool,
    /// The physical replication slot (created when missing) that keeps WAL on the server until
    /// the stream has it.
    #[arg(long, default_value = walstream::DEFAULT_SLOT, value_name = "NAME")]
    pub slot: String,
    /// The WAL archive directory (default: paths.wal_archive / PGKEEP_WAL_ARCHIVE).
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    // Before anything else, so a stop during start-up is not lost.
    let mut signals = Signals::install()?;
    if rustix::process::geteuid().is_root() {
        return Err(StreamError::Root {
            uid: s.postgres.uid,
        }
        .into());
    }
    let cfg = StreamConfig {
        archive: args.archive.unwrap_or_else(|| s.paths.wal_archive.clone()),
        slot: args.slot,
        synchronous: args.synchronous,
        push: PushOptions {
            compression: s.wal.compress,
            zstd_level: s.wal.zstd_level,
            ..PushOptions::default()
        },
        conn: ConnParams::from_settings(s),
        pg: PgBin::locate()?,
    };
    walstream::stream(&cfg, &mut signals).await?;
    Ok(())
}
