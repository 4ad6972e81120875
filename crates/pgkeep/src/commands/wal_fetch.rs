//! `pgkeep wal fetch %f %p`: PostgreSQL's `restore_command`. Finds the file in the archive in
//! any form pgkeep writes (zstd, gzip) or the seed's plain `cp` copies, and writes it to %p
//! through a temporary name.
//!
//! Exit codes follow what PostgreSQL expects: 0 restored; 1, quietly, when the file is not in
//! the archive (normal at the end of recovery); 126 when the archived file is damaged or cannot
//! be read. PostgreSQL treats an exit code above 125 as fatal and stops recovery, which is what
//! we want: a damaged segment must never look like "the end of the WAL" and end recovery early.
//!
//! A segment is checked before it is handed over (`pgkeep_engine::walcheck`): page magic of the
//! server's major, timeline and page addresses matching the name, the system identifier of the
//! cluster being recovered. That system is `--sysid` (bootstrap and drills write it into
//! restore_command), else the one in the data directory's global/pg_control: PostgreSQL runs
//! restore_command in PGDATA and %p is `pg_wal/...`, so PGDATA is the directory above %p's.
//!
//! With `--spool DIR` (bootstrap and drills write it), a segment the replay prefetcher has
//! already decompressed and checked there is handed over by one rename; a miss reads the
//! archive as always (`pgkeep_engine::wal::prefetch`).
//!
//! When the file is not in the local archive and off-site copies are configured (or with
//! `--offsite`, which skips the local archive), it is downloaded from off-site, decrypted into a
//! private directory beside %p and handed over through the same checks.

use std::path::{Path, PathBuf};

use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::wal::{Archive, FetchOutcome, prefetch};
use pgkeep_engine::walcheck::{self, Expect};

use crate::cli::Ctx;

/// The exit code that makes PostgreSQL abort recovery instead of treating the file as missing.
const FATAL_FOR_POSTGRES: u8 = 126;
/// The exit code that tells PostgreSQL the file is not in the archive.
const MISSING: u8 = 1;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAL file name to fetch (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// The WAL archive directory (default: paths.wal_archive / PGKEEP_WAL_ARCHIVE).
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
    /// The system identifier every segment must carry (default: the one in global/pg_control
    /// of the data directory %p lies in).
    #[arg(long, value_name = "ID")]
    pub sysid: Option<u64>,
    /// Read the off-site copy only (not the local archive).
    #[arg(long)]
    pub offsite: bool,
    /// The replay prefetcher's spool: take the segment from there when it is ready.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
}

/// What a fetched segment must match: `--sysid`, else the data directory's system, and the
/// data directory's major.
fn expect(args: &Args) -> Expect {
    let pgdata = match args.dest.parent().and_then(Path::parent) {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut e = walcheck::expect_from_pgdata(&pgdata);
    if args.sysid.is_some() {
        e.system_identifier = args.sysid;
    }
    e
}

/// The exit code for PostgreSQL: 0 restored, 1 missing, 126 damaged or unreadable (reported).
pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<u8> {
    if let Some(spool) = &args.spool {
        match prefetch::take(spool, &args.name, &args.dest) {
            Ok(true) => {
                tracing::debug!(name = %args.name, "handed over from the prefetch spool");
                return Ok(crate::exit::SUCCESS);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the prefetch spool failed; reading the archive"),
        }
    }
    let expect = expect(&args);
    let dir = args
        .archive
        .clone()
        .unwrap_or_else(|| ctx.settings().paths.wal_archive.clone());
    let local = if args.offsite {
        Ok(FetchOutcome::Missing)
    } else {
        Archive::new(&dir).fetch_checked(&args.name, &args.dest, Some(expect))
    };
    let local = match local {
        Ok(FetchOutcome::Missing) if args.offsite || !ctx.settings().offsite.url.is_empty() => {
            match fetch_offsite(&args, &ctx, expect).await {
                Ok(Some(bytes)) => Ok(FetchOutcome::Restored { bytes }),
                Ok(None) => Ok(FetchOutcome::Missing),
                Err(e) => {
                    crate::output::report_error(&e);
                    return Ok(FATAL_FOR_POSTGRES);
                }
            }
        }
        other => other,
    };
    match local {
        Ok(FetchOutcome::Restored { bytes }) => {
            tracing::debug!(name = %args.name, bytes, "restored from the archive");
            Ok(crate::exit::SUCCESS)
        }
        Ok(FetchOutcome::Missing) => {
            tracing::debug!(name = %args.name, "not in the archive");
            Ok(MISSING)
        }
        Err(e) => {
            crate::output::report_error(&e.into());
            Ok(FATAL_FOR_POSTGRES)
        }
    }
}

/// The file from off-site (None when it is not there either).
async fn fetch_offsite(args: &Args, ctx: &Ctx, expect: Expect) -> anyhow::Result<Option<u64>> {
    let off = Offsite::open(&ctx.settings().offsite)?;
    let sys = off.choose_system(expect.system_identifier, None).await?;
    Ok(offsite::fetch_wal_checked(&sys, &args.name, &args.dest, Some(expect)).await?)
}
