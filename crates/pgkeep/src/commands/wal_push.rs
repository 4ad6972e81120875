//! `pgkeep wal push %p`: PostgreSQL's `archive_command`. Stores one WAL file in the archive
//! (zstd by default), atomically and without ever replacing an archived file; an identical file
//! already there is success, a different one is a loud failure naming it. Exit 0 tells
//! PostgreSQL the file is safe; anything else makes it retry later.
//!
//! Start-up is kept cheap because PostgreSQL waits for every segment: no database connection, no
//! network, only the archive directory (`--archive`, else `paths.wal_archive`).

use std::path::PathBuf;
use std::time::Instant;

use pgkeep_engine::wal::{Archive, Compression, PushOptions, PushOutcome, check_zstd_level};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file to archive (%p, relative to PGDATA).
    pub path: PathBuf,
    /// How to compress segments: none, gzip or zstd (history and backup files stay plain).
    /// Default: the `wal.compress` setting (zstd).
    #[arg(long)]
    pub compress: Option<Compression>,
    /// zstd level: -7..=-1 are zstd's fast modes, 1..=19 store smaller and take longer
    /// (PostgreSQL waits for each segment; 1 stores OLTP WAL ~18% smaller for ~20% more CPU).
    /// Default: the `wal.zstd_level` setting (-2).
    #[arg(long, allow_hyphen_values = true, value_parser = zstd_level)]
    pub zstd_level: Option<i32>,
    /// Threads compressing pieces of a segment in parallel (1 = on the calling thread only).
    /// Default: one per CPU this process may use, at most 4. Any count writes plain zstd.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub zstd_threads: Option<u32>,
    /// The WAL archive directory (default: paths.wal_archive / PGKEEP_WAL_ARCHIVE).
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let wal = &ctx.settings().wal;
    let compression = args.compress.unwrap_or(wal.compress);
    let zstd_level = args.zstd_level.unwrap_or(wal.zstd_level);
    let dir = args
        .archive
        .unwrap_or_else(|| ctx.settings().paths.wal_archive.clone());
    let started = Instant::now();
    let outcome = Archive::new(&dir).push(
        &args.path,
        PushOptions {
            compression,
            zstd_level,
            zstd_threads: args
                .zstd_threads
                .unwrap_or_else(pgkeep_engine::wal::default_zstd_threads),
        },
    )?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        PushOutcome::Stored { read, written } => tracing::debug!(
            file = %args.path.display(),
            read,
            written,
            ms,
            "archived"
        ),
        PushOutcome::AlreadyArchived => tracing::info!(
            file = %args.path.display(),
            "already archived with identical content; nothing to do"
        ),
    }
    Ok(())
}

/// `--zstd-level`: a number in `wal::ZSTD_LEVELS`.
fn zstd_level(s: &str) -> Result<i32, String> {
    check_zstd_level(s.parse().map_err(|e| format!("`{s}`: {e}"))?)
}
