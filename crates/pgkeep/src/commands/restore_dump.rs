//! `pgkeep restore dump`: restore the newest (or a named) nightly logical bundle (the seed's
//! restore-from-dump job). Checksums are verified and the target looked at before anything is
//! changed; a non-empty target needs `--clean` and a confirmation. Exits 1 when the restore
//! finished but counted errors (they are listed in the summary).
//!
//! When the bundle is not on the backups volume and off-site copies are configured (or with
//! `--offsite`), it is downloaded from off-site into a private directory under `uploads/`,
//! decrypted (whole and authentic, or not at all), restored the same way, and removed again.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::api::batch::v1::Job;
use pgkeep_engine::db::ConnParams;
use pgkeep_engine::logical::{
    self, LogicalError, LogicalRestore, RestoreOptions, RestoreSource, RestoreSummary,
};
use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::repo::{self, BackupKind};
use pgkeep_engine::settings::{Settings, Target};
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::upload;
use pgkeep_engine::wal::Archive;

use crate::cli::Ctx;
use crate::output::BarProgress;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A bundle name in the backups directory (default: the newest complete one).
    #[arg(long)]
    pub from: Option<String>,
    /// Restore from the off-site copy even when the bundle is on the backups volume.
    #[arg(long)]
    pub offsite: bool,
    #[command(flatten)]
    pub restore: RestoreArgs,
}

/// Options shared by `restore dump` and `restore upload`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Parallel pg_restore jobs (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Restore over a non-empty database: the dump is loaded into a scratch database and, only
    /// when that succeeded, swapped in for the old one (which is then dropped).
    #[arg(long)]
    pub clean: bool,
    /// With --clean: keep the replaced database as `<db>__pgkeep_old_<stamp>`.
    #[arg(long)]
    pub keep_old: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Continue past errors (they are counted and listed) instead of stopping at the first.
    #[arg(long)]
    pub keep_going: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same
    /// command run in a pod; `cli.rs` tests that it parses back to the same arguments. (The
    /// Job's rendered command has the command words; it gets the options alone.)
    #[cfg(test)]
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["restore".to_owned(), "dump".to_owned()];
        a.extend(self.options());
        a
    }

    /// The options alone (what the restore-from-dump Job's command gets).
    pub fn options(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(from) = &self.from {
            a.extend(["--from".to_owned(), from.clone()]);
        }
        if self.offsite {
            a.push("--offsite".to_owned());
        }
        a.extend(self.restore.options());
        a
    }
}

impl RestoreArgs {
    /// These options as a command line (part of `restore dump`'s and `restore upload`'s).
    pub fn options(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(j) = self.jobs {
            a.extend(["--jobs".to_owned(), j.to_string()]);
        }
        for (on, flag) in [
            (self.clean, "--clean"),
            (self.keep_old, "--keep-old"),
            (self.yes, "--yes"),
            (self.keep_going, "--keep-going"),
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
    if ctx.target() == Target::Kube {
        return restore_kube(args, ctx).await;
    }
    let s = ctx.settings();
    let local_missing = match &args.from {
        Some(n) => repo::find(&s.paths.backups, n).is_err(),
        None => repo::newest(&s.paths.backups, BackupKind::Logical).is_err(),
    };
    if args.offsite || (local_missing && !s.offsite.url.is_empty()) {
        return restore_offsite(&args, &ctx).await;
    }
    let source = match args.from {
        Some(n) => RestoreSource::Named(n),
        None => RestoreSource::Newest,
    };
    restore(source, &args.restore, &ctx, None).await
}

/// Download the named (or newest) nightly bundle from off-site, restore it, remove the copy.
async fn restore_offsite(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let off = Offsite::open(&s.offsite)?;
    let archive = Archive::new(&s.paths.wal_archive);
    let sys = off
        .choose_system(
            offsite::local_system(&s.paths.pgdata, &archive),
            Some(pgkeep_engine::repo::BackupKind::Logical),
        )
        .await?;
    let name = match &args.from {
        Some(n) => n.clone(),
        None => sys
            .list_backups()
            .await?
            .into_iter()
            .filter_map(|r| repo::parse_name(&r.name).map(|p| (p, r.name)))
            .filter(|(p, _)| p.kind == BackupKind::Logical)
            .max_by_key(|(p, _)| (p.time, p.seq))
            .map(|(_, n)| n)
            .with_context(|| {
                format!(
                    "no nightly bundle off-site in {}/{}\nhint: `pgkeep backups list` shows what is where",
                    off.url(),
                    sys.id
                )
            })?,
    };
    let uploads = upload::uploads_dir(&s.paths.backups)?;
    let stage = tempfile::Builder::new()
        .prefix(".offsite-")
        .tempdir_in(&uploads)
        .with_context(|| format!("create a directory in {}", uploads.display()))?;
    tracing::info!(url = %sys.backup_url(&name), "downloading from off-site");
    let path = sys.fetch_backup(&name, stage.path()).await?;
    restore(RestoreSource::File(path), &args.restore, ctx, None).await
}

/// Prepare (verify, extract, inspect), confirm when needed, restore, print the summary.
/// `remove_on_refusal`: a file to delete when the restore stops before changing anything.
pub async fn restore(
    source: RestoreSource,
    args: &RestoreArgs,
    ctx: &Ctx,
    remove_on_refusal: Option<&Path>,
) -> anyhow::Result<()> {
    let refused = |e: anyhow::Error| {
        if let Some(p) = remove_on_refusal {
            let _ = std::fs::remove_file(p);
        }
        e
    };
    let s = ctx.settings();
    let req = LogicalRestore {
        pg: PgBin::locate()?,
        conn: ConnParams::from_settings(s),
        backups_dir: s.paths.backups.clone(),
        source,
        options: RestoreOptions {
            jobs: args.jobs.unwrap_or_else(logical::default_jobs),
            clean: args.clean,
            keep_going: args.keep_going,
            keep_old: args.keep_old,
        },
        progress: Arc::new(BarProgress::default()),
        staging_in: None,
    };
    let prepared = req.prepare().await.map_err(|e| refused(e.into()))?;
    tracing::info!(archive = %prepared.archive().display(), "verified");
    if !prepared.target_is_empty() {
        if !args.clean {
            return Err(refused(
                LogicalError::NotEmpty {
                    database: prepared.database().to_owned(),
                    objects: prepared.target_objects(),
                }
                .into(),
            ));
        }
        crate::output::confirm(
            &format!(
                "Database `{}` holds {} objects. --clean replaces it with {} (loaded into a scratch database first, swapped in only when that succeeded).",
                prepared.database(),
                prepared.target_objects(),
                prepared.archive().display()
            ),
            args.yes,
        )
        .map_err(refused)?;
    }
    let summary = prepared.run().await?;
    if args.json {
        crate::output::print_json(&summary)?;
    } else {
        print!("{}", render(&summary));
    }
    if summary.errors > 0 {
        anyhow::bail!(
            "the restore finished with {} error(s): {}",
            summary.errors,
            summary.error_messages.join("; ")
        );
    }
    Ok(())
}

fn render(s: &RestoreSummary) -> String {
    let mut out = s.sanity.render();
    out.push_str(&format!(
        "\nrestored {} into `{}` with {}{}\n",
        s.source.display(),
        s.database,
        s.method,
        if s.created_database {
            " (database created)"
        } else {
            ""
        }
    ));
    if let Some(g) = &s.globals {
        out.push_str(&format!(
            "globals.sql: {} \"already exists\" (ignored), {} other errors{}\n",
            g.already_exists,
            g.errors,
            if g.truncated { " (at least)" } else { "" }
        ));
    }
    if !s.extensions_created.is_empty() {
        out.push_str(&format!(
            "extensions created: {}\n",
            s.extensions_created.join(", ")
        ));
    }
    let names = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    out.push_str(&format!(
        "materialized views refreshed: {}\n",
        names(&s.matviews_refreshed)
    ));
    if !s.matviews_unpopulated.is_empty() {
        out.push_str(&format!(
            "materialized views left unpopulated (as at backup time): {}\n",
            names(&s.matviews_unpopulated)
        ));
    }
    for k in &s.skipped_statements {
        out.push_str(&format!(
            "skipped {k} (the role pgkeep connects as is left as it is)\n"
        ));
    }
    for p in &s.passed_over {
        out.push_str(&format!("passed over {p}: it fails verification\n"));
    }
    if let Some(old) = &s.kept_old {
        out.push_str(&format!("the replaced database is kept as `{old}`\n"));
    }
    out.push_str(&format!(
        "{} tables, {} rows, {} errors, {:.1}s\n",
        s.tables, s.rows, s.errors, s.duration_secs
    ));
    for e in &s.error_messages {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

/// The restore-from-dump Job with these options (`--yes` when `yes`; user input in the args
/// is escaped for the kubelet).
pub(crate) fn dump_job(s: &Settings, args: &Args, yes: bool) -> Job {
    let mut args = args.clone();
    args.restore.yes = yes;
    pgkeep_kube::manifests::jobs::restore_from_dump(s, &args.options())
}

/// `--kube`: run the restore-from-dump Job (the options passed on to `pgkeep restore dump` in
/// its pod) and follow it. With `--clean`, confirm here first.
async fn restore_kube(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let r = &args.restore;
    let mut yes = r.yes;
    if r.clean {
        let k = &ctx.settings().kube;
        crate::output::confirm(
            &format!(
                "This restores a dump with --clean into the database of deployment/{} in namespace {}, replacing the database once the dump has loaded.",
                k.deployment, k.namespace
            ),
            r.yes,
        )?;
        yes = true;
    }
    let (cluster, ctx) = crate::cluster::connect_checked(
        &ctx,
        pgkeep_kube::ops::deployed::Intent::Destroy("restore a dump into the database".into()),
    )
    .await?;
    let job = dump_job(ctx.settings(), &args, yes);
    crate::cluster::run_job(&cluster, job).await
}
