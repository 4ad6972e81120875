//! `pgkeep backup logical`: the nightly logical bundle `nightly-YYYYMMDD-HHMM.tar.gz` (what the
//! nightly CronJob runs), then retention as `backups prune` applies it (unless `--no-prune`). The
//! work is [`pgkeep_engine::logical::LogicalBackup`]; this file turns settings into its inputs
//! and shows progress and the result, and leaves a result record (`crate::record`) either way.

use std::sync::Arc;

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::logical::{self, LogicalBackup};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;

use pgkeep_engine::results::RunKind;

use crate::cli::Ctx;
use crate::record::Produced;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Parallel pg_dump jobs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not apply retention (`backups prune`'s rule) after the backup.
    #[arg(long)]
    pub no_prune: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let cron = pgkeep_kube::manifests::backup::logical_name(ctx.settings());
        return crate::cluster::run_cronjob(&ctx, &cron).await;
    }
    let start = pgkeep_engine::clock::now();
    let result = backup(&args, &ctx).await;
    crate::record::leave(&ctx, RunKind::Logical, start, &result).await;
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
    let backup = LogicalBackup {
        pg: PgBin::locate()?,
        conn: ConnParams::from_settings(s),
        backups_dir: s.paths.backups.clone(),
        jobs: args.jobs.unwrap_or_else(logical::default_jobs),
        progress: Arc::new(crate::output::BarProgress::default()),
    };
    let report = backup.run().await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "{}  {} bytes  database {}  {:.1}s",
            report.path.display(),
            report.size,
            report.database,
            report.duration_secs
        );
    }
    Ok(Produced {
        size: Some(report.size),
        bundle: Some(report.name),
    })
}
