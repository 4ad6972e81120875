//! `pgkeep backups prune [--dry-run] [--delete-damaged]`: keep the newest `retention.nightly`
//! logical and `retention.basebackups` physical bundles that verify (newest by the stop time in
//! their manifests), report bundles that fail verification (never counted as kept; removed only
//! with `--delete-damaged`), and remove archived WAL older than what the oldest
//! kept base backup needs (history files are always kept). The engine's `retention` module
//! decides; this command shows the plan and applies it. With `--kube` it runs as a one-off Job
//! made from the physical backup CronJob, which mounts both volumes.
//!
//! [`after_backup`] is the same rule applied by `backup logical` and `backup physical` right
//! after their bundle is published (unless `--no-prune`), so the CronJobs keep the volumes
//! bounded without anyone running prune.

use pgkeep_engine::retention;
use pgkeep_kube::ops::deployed::Intent;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove bundles that fail verification (by default they are only reported).
    #[arg(long)]
    pub delete_damaged: bool,
    /// Print the plan (and result) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["backups".to_owned(), "prune".to_owned()];
        for (on, flag) in [
            (self.dry_run, "--dry-run"),
            (self.delete_damaged, "--delete-damaged"),
            (self.json, "--json"),
        ] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == pgkeep_engine::settings::Target::Kube {
        // The physical backup CronJob mounts both the backups volume and the WAL archive (the
        // loader pod has only the former), so the prune runs as a Job made from it.
        let cron = pgkeep_kube::manifests::backup::physical_name(ctx.settings());
        let argv = args.to_argv();
        // The Job applies the deployed retention; a dry run shows it, a real prune is refused
        // while the local settings (what the user believes) differ.
        let intent = if args.dry_run {
            Intent::Read
        } else {
            Intent::Destroy("prune backups and WAL".into())
        };
        return crate::cluster::run_local_from_cronjob(
            &ctx,
            &cron,
            "backups-prune",
            &super::strs(&argv),
            intent,
        )
        .await;
    }
    let s = ctx.settings();
    let pg = pgkeep_engine::tools::PgBin::locate()?;
    let (backups, wal_archive) = (s.paths.backups.clone(), s.paths.wal_archive.clone());
    let (nightly, basebackups) = (s.retention.nightly, s.retention.basebackups);
    let delete_damaged = args.delete_damaged;
    let plan = tokio::task::spawn_blocking(move || {
        retention::plan(
            &pg,
            &backups,
            &wal_archive,
            nightly,
            basebackups,
            delete_damaged,
        )
    })
    .await??;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removing"
    };
    if !args.json {
        for d in &plan.damaged {
            println!(
                "damaged {}: fails verification, not counted as kept{}: {}",
                d.backup.name,
                if args.delete_damaged {
                    ""
                } else {
                    " (--delete-damaged removes it)"
                },
                d.reason.lines().next().unwrap_or_default()
            );
        }
        for b in &plan.remove {
            println!("{verb} {}", b.name);
        }
        match &plan.wal_kept_from {
            Some(first) => println!(
                "{verb} {} WAL files ({} bytes) older than {first}, the start of the oldest kept base backup",
                plan.remove_wal.len(),
                plan.remove_wal_bytes
            ),
            None => {
                println!("no kept base backup of the archive's system: none of its WAL is removed")
            }
        }
        for d in plan.wal_dirs.iter().skip(1) {
            match &d.kept_from {
                Some(first) => println!(
                    "{verb} WAL of superseded system {} in {} older than {first}",
                    d.system
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "?".into()),
                    d.dir.display()
                ),
                None => println!(
                    "keeping all WAL in {}: no kept base backup of its system",
                    d.dir.display()
                ),
            }
        }
        if !plan.remove_streamed.is_empty() {
            println!(
                "{verb} {} streamed files ({} bytes) set aside in stream/superseded/ that no kept base backup needs",
                plan.remove_streamed.len(),
                plan.remove_streamed_bytes
            );
        }
        println!(
            "keeping {} backups (retention: {} nightly, {} basebackups)",
            plan.keep.len(),
            s.retention.nightly,
            s.retention.basebackups
        );
    }
    if args.dry_run {
        if args.json {
            crate::output::print_json(&plan)?;
        }
        return Ok(());
    }
    let report = retention::apply(&plan, &s.paths.backups, &s.paths.wal_archive)?;
    if args.json {
        crate::output::print_json(&serde_json::json!({"plan": plan, "result": report}))?;
    }
    Ok(())
}

/// Retention right after a successful backup: the rule of `backups prune`, applied (damaged
/// bundles reported, never removed here). A failure says that the new backup itself is fine.
pub(crate) async fn after_backup(ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let pg = pgkeep_engine::tools::PgBin::locate()?;
    let (backups, wal_archive) = (s.paths.backups.clone(), s.paths.wal_archive.clone());
    let (nightly, basebackups) = (s.retention.nightly, s.retention.basebackups);
    let result = tokio::task::spawn_blocking(move || {
        let plan = retention::plan(&pg, &backups, &wal_archive, nightly, basebackups, false)?;
        let report = retention::apply(&plan, &backups, &wal_archive)?;
        Ok::<_, retention::PruneError>((plan, report))
    })
    .await?;
    let (plan, report) = result.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nnote: the new backup itself was written and is complete; only retention failed (run `pgkeep backups prune --dry-run` to see why, or pass --no-prune)"
        )
    })?;
    for d in &plan.damaged {
        tracing::warn!(bundle = %d.backup.name, "fails verification, not counted as kept (`pgkeep backups prune --delete-damaged` removes it)");
    }
    tracing::info!(
        step = "prune",
        nightly,
        basebackups,
        "retention: kept {} backups, removed {} backups, {} WAL files ({} bytes) and {} streamed files set aside",
        plan.keep.len(),
        report.removed_backups.len(),
        report.removed_wal,
        report.removed_wal_bytes,
        report.removed_streamed
    );
    Ok(())
}
