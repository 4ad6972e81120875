//! `pgkeep drill`: restore the newest backups into throwaway servers in a scratch directory and
//! check them, without touching the live cluster, the WAL archive or the backups (the engine's
//! `drill` module does the work); the one thing it writes is its result record in `results/`
//! on the backups volume (`crate::record`). Exits 0 when every drill that ran passed, 1 when one failed.
//!
//! `--offsite` drills the off-site copies instead: the newest bundles and the WAL are downloaded
//! and decrypted into a private directory on the backups volume (nothing local is read or
//! changed), the drill runs on them, and the directory is removed.
//!
//! `--kube` runs the same drill as a one-off Job made from the physical backup CronJob, which
//! mounts the backups volume and the WAL archive, and follows its log.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::drill::{self, DrillOutcome, DrillReport, DrillRequest};
use pgkeep_engine::fsutil;
use pgkeep_engine::logical;
use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::repo::{self, BackupKind};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::wal::Archive;

use pgkeep_engine::results::RunKind;

use crate::cli::Ctx;
use crate::output::BarProgress;
use crate::record::Produced;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not drill the newest logical (nightly) bundle.
    #[arg(long, conflicts_with = "skip_physical")]
    pub skip_logical: bool,
    /// Do not drill the newest base backup (with WAL replay from the archive).
    #[arg(long)]
    pub skip_physical: bool,
    /// Keep the scratch directory (servers stopped) to look at it; it is printed at the end.
    #[arg(long)]
    pub keep: bool,
    /// Seconds a throwaway server may take to start, and WAL replay to end.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Parallel pg_restore jobs for the logical drill (default: the number of cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Drill the off-site copies (downloaded and decrypted into a scratch directory) instead of
    /// the local ones.
    #[arg(long)]
    pub offsite: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec![
            "drill".to_owned(),
            "--timeout".to_owned(),
            self.timeout.to_string(),
        ];
        if let Some(j) = self.jobs {
            a.extend(["--jobs".to_owned(), j.to_string()]);
        }
        for (on, flag) in [
            (self.skip_logical, "--skip-logical"),
            (self.skip_physical, "--skip-physical"),
            (self.keep, "--keep"),
            (self.json, "--json"),
            (self.offsite, "--offsite"),
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
        return drill_kube(&args, &ctx).await;
    }
    let start = pgkeep_engine::clock::now();
    let result = drill_local(&args, &ctx).await;
    crate::record::leave(&ctx, RunKind::Drill, start, &result).await;
    result.map(|_| ())
}

/// The drill here; its result record is written whatever happens.
async fn drill_local(args: &Args, ctx: &Ctx) -> anyhow::Result<Produced> {
    let s = ctx.settings();
    let staged = if args.offsite {
        Some(stage_offsite(args, ctx).await?)
    } else {
        None
    };
    let (backups, wal_archive) = match &staged {
        Some(d) => (d.path().join("b"), d.path().join("w")),
        None => (s.paths.backups.clone(), s.paths.wal_archive.clone()),
    };
    let req = DrillRequest {
        pg: PgBin::locate()?,
        backups,
        wal_archive,
        database: s.postgres.database.clone(),
        user: s.postgres.user.clone(),
        uid: s.postgres.uid,
        gid: s.postgres.gid,
        pgkeep_exe: std::env::current_exe().context("locating the pgkeep program")?,
        logical: !args.skip_logical,
        physical: !args.skip_physical,
        keep: args.keep,
        timeout: Duration::from_secs(args.timeout),
        jobs: args.jobs.unwrap_or_else(logical::default_jobs),
        progress: Arc::new(BarProgress::default()),
    };
    let report = drill::run(&req).await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    let bundles: Vec<&str> = report
        .outcomes()
        .filter_map(|o| o.bundle.as_deref())
        .collect();
    let failures = report.failures();
    if failures.is_empty() {
        return Ok(Produced {
            size: None,
            bundle: (!bundles.is_empty()).then(|| bundles.join(", ")),
        });
    }
    let mut msg = String::new();
    for (which, why) in &failures {
        msg.push_str(&format!("the {which} drill failed: {why}\n"));
    }
    msg.push_str("hint: ");
    msg.push_str(&hint(&failures, report.kept));
    anyhow::bail!(msg)
}

/// Download the newest off-site bundles (and the WAL) into a private directory on the backups
/// volume, laid out as a backups directory and a WAL archive owned by the data owner.
async fn stage_offsite(args: &Args, ctx: &Ctx) -> anyhow::Result<tempfile::TempDir> {
    let s = ctx.settings();
    let off = Offsite::open(&s.offsite)?;
    let archive = Archive::new(&s.paths.wal_archive);
    let sys = off
        .choose_system(offsite::local_system(&s.paths.pgdata, &archive), None)
        .await?;
    let dir = tempfile::Builder::new()
        // Short names: the drill's servers put their sockets below (107 bytes at most).
        .prefix(".od")
        .tempdir_in(&s.paths.backups)
        .with_context(|| format!("create a directory in {}", s.paths.backups.display()))?;
    let (backups, wal) = (dir.path().join("b"), dir.path().join("w"));
    for d in [dir.path(), backups.as_path(), wal.as_path()] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        if fsutil::is_root() {
            fsutil::chown(d, s.postgres.uid, s.postgres.gid)?;
        }
    }
    if !args.skip_logical {
        let newest = sys
            .list_backups()
            .await?
            .into_iter()
            .filter_map(|r| repo::parse_name(&r.name).map(|p| (p, r.name)))
            .filter(|(p, _)| p.kind == BackupKind::Logical)
            .max_by_key(|(p, _)| (p.time, p.seq));
        if let Some((_, name)) = newest {
            tracing::info!(url = %sys.backup_url(&name), "downloading from off-site");
            sys.fetch_backup(&name, &backups).await?;
        }
    }
    if !args.skip_physical {
        match offsite::materialize(&sys, None, &backups, &Archive::new(&wal)).await {
            Ok(got) => {
                tracing::info!(bundle = %got.bundle, wal_files = got.wal_files, wal_older_left = got.wal_older_left, "off-site copies staged")
            }
            // No base backup off-site: the physical drill reports that itself.
            Err(offsite::OffsiteError::Missing { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dir)
}

fn hint(failures: &[(&str, String)], kept: bool) -> String {
    let mut h = Vec::new();
    if failures.iter().any(|(w, _)| *w == "logical") {
        h.push("take a fresh logical backup (`pgkeep backup logical`) and check it with `pgkeep backups verify`; restores from the failing bundle cannot be trusted");
    }
    if failures.iter().any(|(w, _)| *w == "physical") {
        h.push("take a fresh base backup (`pgkeep backup physical`) and check that WAL archiving works (`pgkeep status`); a bootstrap from the failing bundle would end the same way");
    }
    let mut s = h.join("; ");
    s.push_str(if kept {
        "; the scratch directory above was kept, with each server's log"
    } else {
        "; run `pgkeep drill --keep` to keep the scratch directory and each server's log"
    });
    s
}

fn render(r: &DrillReport) -> String {
    let mut out = String::new();
    for o in r.outcomes() {
        render_outcome(&mut out, o);
    }
    if r.kept {
        out.push_str(&format!("scratch kept at {}\n", r.scratch.display()));
    }
    out.push_str(&format!(
        "drill {} in {:.1}s\n",
        if r.passed() { "passed" } else { "FAILED" },
        r.seconds
    ));
    out
}

fn render_outcome(out: &mut String, o: &DrillOutcome) {
    out.push_str(&format!(
        "{:<9} drill  {:<6}  {}\n",
        o.kind.label(),
        if o.passed { "passed" } else { "FAILED" },
        o.bundle.as_deref().unwrap_or("(no bundle)")
    ));
    let secs = |s: Option<f64>| s.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "  verified   {}{}\n",
        if o.verified { "yes" } else { "no" },
        match o.members {
            Some(m) => format!(" ({m} members, {})", secs(o.verify_secs)),
            None if o.verified => format!(" ({})", secs(o.verify_secs)),
            None => String::new(),
        }
    ));
    if let Some(rep) = &o.replay {
        out.push_str(&format!(
            "  replayed   end LSN {}, timeline {}, last transaction {}\n",
            rep.end_lsn.as_deref().unwrap_or("?"),
            rep.timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            rep.last_replayed_xact_time.as_deref().unwrap_or("(none)")
        ));
    }
    if let (Some(db), Some(t), Some(rows)) = (&o.database, o.tables, o.rows) {
        out.push_str(&format!(
            "  restored   `{db}` in {}: {t} tables, {rows} rows\n",
            secs(o.restore_secs)
        ));
    }
    const SHOWN: usize = 20;
    for t in o.table_rows.iter().take(SHOWN) {
        out.push_str(&format!(
            "    {:<40} {:>12}\n",
            t.table,
            t.rows.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
        ));
    }
    if o.table_rows.len() > SHOWN {
        out.push_str(&format!(
            "    ... {} more tables\n",
            o.table_rows.len() - SHOWN
        ));
    }
    for c in &o.checks {
        out.push_str(&format!(
            "  {:<6} {}: {}\n",
            if c.ok { "ok" } else { "FAILED" },
            c.name,
            c.detail
        ));
    }
    if let Some(e) = &o.error {
        out.push_str(&format!("  error: {}\n", e.replace('\n', "\n    ")));
    }
}

/// `--kube`: the drill runs as a one-off Job made from the drill CronJob, which mounts the
/// backups volume and the WAL archive (the physical drill replays from it), runs the same
/// image as the data owner, and with off-site copies has their credentials and identity.
async fn drill_kube(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let argv = args.to_argv();
    let cron = pgkeep_kube::manifests::backup::drill_name(ctx.settings());
    crate::cluster::run_local_from_cronjob(
        ctx,
        &cron,
        "drill",
        &super::strs(&argv),
        pgkeep_kube::ops::deployed::Intent::Read,
    )
    .await
}
