//! `pgkeep backup physical`: the weekly physical bundle, `basebackup-YYYYMMDD-HHMM.bundle.tar.gz`
//! (UTC) in the backups directory: pg_basebackup with a fast checkpoint and the WAL needed for
//! consistency, its backup_manifest, and MANIFEST.json. Written atomically, 0600; a progress bar
//! on a terminal. The engine's `physical::take` does the work. Then retention as `backups prune`
//! applies it, WAL included (unless `--no-prune`). A result record (`crate::record`) is left
//! either way.

use pgkeep_engine::bundle::Level;
use pgkeep_engine::db::ConnParams;
use pgkeep_engine::physical::{self, BackupRequest};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;

use pgkeep_engine::results::RunKind;

use crate::cli::Ctx;
use crate::record::Produced;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// gzip level 1: fast, and PostgreSQL data compresses well at it.
    Fast,
    /// gzip level 6: smaller, several times slower.
    Best,
    /// No compression (stored gzip blocks).
    None,
}

#[derive(Debug, clap::Args)]
pub struct Args {
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
        let cron = pgkeep_kube::manifests::backup::physical_name(ctx.settings());
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
    if args.json {
        crate::output::print_json(&report)?;
    } else {
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
