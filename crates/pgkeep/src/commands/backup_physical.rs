//! `pgkeep backup physical`: the weekly physical bundle, `basebackup-YYYYMMDD-HHMM.bundle.tar.zst`
//! (UTC) in the backups directory: pg_basebackup with a fast checkpoint and the WAL needed for
//! consistency, its backup_manifest, and MANIFEST.json. Written atomically, 0600; a progress bar
//! on a terminal. The engine's `physical::take` does the work. Then retention as `backups prune`
//! applies it, WAL included (unless `--no-prune`). A result record (`crate::record`) is left
//! either way.
//!
//! `--incremental` (PostgreSQL 17+) takes `basebackup-YYYYMMDD-HHMM.incr.bundle.tar.zst` on top of
//! the newest base backup of the same system, or refuses saying why (exit 3);
//! `--incremental=auto` takes a full one instead and says so.

use pgkeep_engine::bundle::Level;
use pgkeep_engine::db::ConnParams;
use pgkeep_engine::physical::{self, BackupRequest, Incremental};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;

use pgkeep_engine::results::RunKind;

use crate::cli::Ctx;
use crate::record::Produced;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// zstd level 3 on every core: fast, and PostgreSQL data compresses well at it.
    Fast,
    /// zstd level 9: smaller, several times slower.
    Best,
    /// zstd level 1, the least CPU (zstd has no stored mode; data that does not compress is
    /// kept as raw blocks).
    None,
}

/// `--incremental` / `--incremental=auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IncrementalArg {
    /// An incremental base backup, or a refusal saying why not.
    On,
    /// An incremental base backup when one can be taken, else a full one.
    Auto,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Take an incremental base backup (PostgreSQL 17+) on top of the newest base backup;
    /// `=auto` takes a full one when an incremental cannot be taken.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "on")]
    pub incremental: Option<IncrementalArg>,
    /// Compression of the bundle.
    #[arg(long, value_enum, default_value_t = Compress::Fast)]
    pub compress: Compress,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not apply retention (`backups prune`'s rule) after the backup.
    #[arg(long)]
    pub no_prune: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        // `--incremental` in the cluster: a Job from the incremental CronJob (which runs
        // `--incremental=auto`).
        let cron = match args.incremental {
            Some(_) => pgkeep_kube::manifests::backup::incremental_name(ctx.settings()),
            None => pgkeep_kube::manifests::backup::physical_name(ctx.settings()),
        };
        return crate::cluster::run_cronjob(&ctx, &cron).await;
    }
    let start = pgkeep_engine::clock::now();
    let result = backup(&args, &ctx).await;
    crate::record::leave(&ctx, RunKind::Physical, start, &result).await;
    let produced = result?;
    super::offsite_sync::after_backup(&ctx, produced.bundle.as_deref()).await;
    if !args.no_prune {
        super::backups_prune::after_backup(&ctx).await?;
    }
    Ok(())
}

/// The backup itself; its result record is written whatever happens here.
async fn backup(args: &Args, ctx: &Ctx) -> anyhow::Result<Produced> {
    let s = ctx.settings();
    let pg = PgBin::locate()?;
    let conn = ConnParams::from_settings(s);
    let bar = crate::output::progress(0, "base backup", true);
    let (b1, b2) = (bar.clone(), bar.clone());
    let report = physical::take(BackupRequest {
        incremental: match args.incremental {
            None => Incremental::Off,
            Some(IncrementalArg::On) => Incremental::On,
            Some(IncrementalArg::Auto) => Incremental::Auto,
        },
        pg: &pg,
        conn: &conn,
        backups_dir: &s.paths.backups,
        level: match args.compress {
            Compress::Fast => Level::Fast,
            Compress::Best => Level::Default,
            Compress::None => Level::Store,
        },
        on_progress: Some(Box::new(move |n| b1.inc(n))),
        on_estimate: Some(Box::new(move |n| b2.set_length(n))),
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(why) = &report.full_because {
        eprintln!("took a full base backup instead of an incremental one: {why}");
    }
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        if let Some(parent) = &report.parent {
            println!("incremental on top of {parent}");
        }
        tracing::info!(
            start_lsn = %report.facts.start_lsn,
            stop_lsn = %report.facts.stop_lsn,
            timeline = report.facts.timeline,
            system_identifier = %report.facts.system_identifier,
            "backup complete"
        );
        println!(
            "{}  {} bytes ({} bytes of data, {} members) in {:.1}s",
            report.path.display(),
            report.size,
            report.data_bytes,
            report.members,
            report.seconds
        );
    }
    Ok(Produced {
        size: Some(report.size),
        bundle: Some(report.name),
    })
}
