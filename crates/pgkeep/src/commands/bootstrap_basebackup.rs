//! `pgkeep bootstrap basebackup`: replace PGDATA with a physical bundle and replay WAL from the
//! archive, optionally to a point in time (the seed's `pg.bootstrap.basebackup`).
//!
//! Everything that can be checked is checked before anything is destroyed (`recovery::prepare`:
//! manifest, system identifier, target, WAL for consistency, no running postmaster; every
//! archived segment is read on a thread of its own, waited for before a person is asked); then a
//! confirmation (or `--yes`), then `recovery::execute`, which unpacks the bundle beside PGDATA
//! verifying every checksum, and takes the WAL check's verdict, before PGDATA is given up. With `--scale-up DEPLOYMENT` (what the
//! bootstrap Job runs), once recovery has ended and PostgreSQL has stopped, the Deployment is
//! scaled to 1 with the in-cluster service account (not waited for: this pod still holds the
//! data volume; the CLI that follows the Job waits for the rollout).
//!
//! Off-site: when the bundle is not on the backups volume and off-site copies are configured (or
//! with `--offsite`), the bundle and the WAL the archive lacks are first brought back from the
//! off-site copy onto the local volumes ([`pgkeep_engine::offsite::materialize`]), then the
//! bootstrap runs on them with every usual check.
//!
//! `--kube`: confirmation, then the bootstrap RBAC applied, the Deployment scaled to 0 and the
//! bootstrap Job (this command, locally, in a pod) run and followed; the Job scales the
//! Deployment up again itself, so the flow completes even if this process goes away.

use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::db::ConnParams;
use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::recovery::{self, BootstrapRequest, RecoveryTarget, TimelineChoice};
use pgkeep_engine::repo::{self, BackupKind};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::wal::Archive;

use crate::cli::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A bundle name in the backups directory (default: the newest complete one).
    #[arg(long)]
    pub from: Option<String>,
    /// Bring the base backup and the WAL the archive lacks back from the off-site copy first
    /// (done anyway when the bundle is not on the backups volume and off-site is configured).
    #[arg(long)]
    pub offsite: bool,
    /// Recover up to this time (UTC unless it has an offset), e.g. 2026-11-25T19:30:00Z.
    #[arg(long, group = "target")]
    pub target_time: Option<String>,
    /// Recover up to this WAL location, e.g. 0/5000060.
    #[arg(long, group = "target")]
    pub target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point).
    #[arg(long, group = "target")]
    pub target_name: Option<String>,
    /// The timeline to follow: a number, `latest` (the newest descending from the backup's) or
    /// `current` (the backup's own). Default: latest; a --target-time/--target-lsn past the point
    /// where a newer timeline branched off is then refused as ambiguous until one is chosen.
    #[arg(long, value_name = "N|latest|current", value_parser = parse_timeline)]
    pub target_timeline: Option<TimelineChoice>,
    /// Move PGDATA's current contents to a timestamped sibling directory instead of removing them.
    #[arg(long)]
    pub keep_old: bool,
    /// Leave PostgreSQL running after recovery (default: stop it).
    #[arg(long)]
    pub leave_running: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Give up waiting for recovery after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// After recovery, scale this Deployment to 1 and wait for a Ready pod, with the in-cluster
    /// service account (the last step of the bootstrap Job).
    #[arg(long, value_name = "DEPLOYMENT", conflicts_with = "leave_running")]
    pub scale_up: Option<String>,
    /// The `app` label of the pods of the --scale-up Deployment (default: the kube.app setting).
    #[arg(long, value_name = "APP", requires = "scale_up")]
    pub scale_up_app: Option<String>,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same
    /// command run in a pod; `cli.rs` tests that it parses back to the same arguments. (The
    /// Job's rendered command has the command words; it gets the options alone.)
    #[cfg(test)]
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["bootstrap".to_owned(), "basebackup".to_owned()];
        a.extend(self.options());
        a
    }

    /// The options alone.
    pub fn options(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut value = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                a.extend([flag.to_owned(), v]);
            }
        };
        value("--from", self.from.clone());
        value("--target-time", self.target_time.clone());
        value("--target-lsn", self.target_lsn.clone());
        value("--target-name", self.target_name.clone());
        value(
            "--target-timeline",
            self.target_timeline.map(|t| t.to_string()),
        );
        for (on, flag) in [
            (self.offsite, "--offsite"),
            (self.keep_old, "--keep-old"),
            (self.leave_running, "--leave-running"),
            (self.yes, "--yes"),
        ] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a.extend(["--timeout".to_owned(), self.timeout.to_string()]);
        if self.json {
            a.push("--json".to_owned());
        }
        if let Some(d) = &self.scale_up {
            a.extend(["--scale-up".to_owned(), d.clone()]);
        }
        if let Some(app) = &self.scale_up_app {
            a.extend(["--scale-up-app".to_owned(), app.clone()]);
        }
        a
    }
}

pub async fn run(mut args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return bootstrap_kube(args, ctx).await;
    }
    let s = ctx.settings();
    let local_missing = match &args.from {
        Some(n) => repo::find(&s.paths.backups, n).is_err(),
        None => repo::newest(&s.paths.backups, BackupKind::Physical).is_err(),
    };
    if args.offsite || (local_missing && !s.offsite.url.is_empty()) {
        let off = Offsite::open(&s.offsite)?;
        let archive = Archive::new(&s.paths.wal_archive);
        let sys = off
            .choose_system(
                offsite::local_system(&s.paths.pgdata, &archive),
                Some(pgkeep_engine::repo::BackupKind::Physical),
            )
            .await?;
        let got =
            offsite::materialize(&sys, args.from.as_deref(), &s.paths.backups, &archive).await?;
        tracing::info!(
            bundle = %got.bundle,
            downloaded = got.bundle_downloaded,
            wal_files = got.wal_files,
            wal_older_left = got.wal_older_left,
            "off-site copies are on the local volumes"
        );
        args.from = Some(got.bundle);
    }
    let target = recovery_target(&args)?;
    let (uid, gid) = data_owner(&ctx);
    let req = BootstrapRequest {
        pgroot: s.paths.pgroot.clone(),
        pgdata: s.paths.pgdata.clone(),
        wal_archive: s.paths.wal_archive.clone(),
        backups: s.paths.backups.clone(),
        uid,
        gid,
        run_dir: s.paths.run_dir.clone(),
        port: s.postgres.port,
        from: args.from.clone(),
        target,
        target_timeline: args.target_timeline,
        keep_old: args.keep_old,
        leave_running: args.leave_running,
        pgkeep_exe: std::env::current_exe().context("locating the pgkeep program")?,
        timeout: Duration::from_secs(args.timeout),
        sandbox: None,
    };
    let pg = PgBin::locate()?;
    let plan = recovery::prepare(&req)?;
    pgkeep_engine::major::check_physical(&pg, &plan.bundle.name, &plan.facts)?;
    tracing::info!(
        bundle = %plan.bundle.name,
        start_lsn = %plan.facts.start_lsn,
        stop_lsn = %plan.facts.stop_lsn,
        timeline = plan.facts.timeline,
        system_identifier = %plan.facts.system_identifier,
        "bundle checked (every member's checksum is verified as it is unpacked, before PGDATA is touched)"
    );
    let what = match &plan.keep_old_at {
        Some(at) => format!(
            "This moves the {} entries of PGDATA {} to {}, then restores {}{}.",
            plan.pgdata_entries,
            req.pgdata.display(),
            at.display(),
            plan.bundle.name,
            target_text(&plan.target)
        ),
        None => format!(
            "This REMOVES the {} entries of PGDATA {}, then restores {}{}.",
            plan.pgdata_entries,
            req.pgdata.display(),
            plan.bundle.name,
            target_text(&plan.target)
        ),
    };
    if !args.yes {
        // A person decides: every check, the WAL's too, comes before the question. With --yes
        // the WAL is checked while the bundle is unpacked, still before PGDATA is given up.
        plan.wait_wal_checked()?;
    }
    crate::output::confirm(&what, args.yes)?;
    let conn = ConnParams::from_settings(s);
    let report = recovery::execute(&pg, &conn, &req, &plan).await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        println!("{}", crate::output::bootstrap_summary(&report));
        println!(
            "PostgreSQL {} (server log: {})",
            if report.left_running {
                "is running"
            } else {
                "was stopped"
            },
            report.log_file.display()
        );
    }
    if let Some(deployment) = &args.scale_up {
        let app = args.scale_up_app.as_deref().unwrap_or(&s.kube.app);
        crate::cluster::scale_up_in_job(&ctx, deployment, app)
            .await
            .with_context(|| {
                format!(
                    "{} was restored and recovery has ended, but deployment/{deployment} could not be scaled up; \
                     run `pgkeep --kube scale 1` to start it",
                    report.bundle
                )
            })?;
    }
    Ok(())
}

/// The data owner: PGKEEP_UID / PGKEEP_GID (or postgres.uid/gid in the config file, or a flag)
/// when given, else the owner of the existing PGDATA (of the volume root when PGDATA is empty),
/// so a plain host's cluster stays its account's instead of becoming the image default's.
fn data_owner(ctx: &Ctx) -> (u32, u32) {
    let s = ctx.settings();
    let explicit = |key: &str| {
        ctx.resolved
            .sources
            .get(key)
            .is_some_and(|src| *src != pgkeep_engine::settings::Source::Default)
    };
    let found = recovery::existing_data_owner(&s.paths.pgroot, &s.paths.pgdata);
    let uid = match found {
        Some((uid, _)) if !explicit("postgres.uid") => uid,
        _ => s.postgres.uid,
    };
    let gid = match found {
        Some((_, gid)) if !explicit("postgres.gid") => gid,
        _ => s.postgres.gid,
    };
    if (uid, gid) != (s.postgres.uid, s.postgres.gid) {
        tracing::info!(
            uid,
            gid,
            "the data owner is the owner of the existing data (PGKEEP_UID/PGKEEP_GID not set)"
        );
    }
    (uid, gid)
}

fn parse_timeline(s: &str) -> Result<TimelineChoice, String> {
    s.parse()
        .map_err(|e: recovery::RecoveryError| e.to_string())
}

fn recovery_target(args: &Args) -> anyhow::Result<Option<RecoveryTarget>> {
    Ok(if let Some(t) = &args.target_time {
        Some(RecoveryTarget::Time(recovery::parse_target_time(t)?))
    } else if let Some(l) = &args.target_lsn {
        Some(RecoveryTarget::Lsn(l.parse().map_err(|message| {
            recovery::RecoveryError::BadTarget {
                value: l.clone(),
                message,
            }
        })?))
    } else {
        args.target_name.clone().map(RecoveryTarget::Name)
    })
}

/// The options the bootstrap Job's `pgkeep bootstrap basebackup` gets from this one. The target
/// is passed as parsed here (a time in RFC 3339, UTC), so the pod reads the same instant. Not
/// `--yes` and `--scale-up` (the rendered Job has them), nor `--leave-running` (refused).
fn job_options(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut a = args.clone();
    match recovery_target(args)? {
        Some(RecoveryTarget::Time(t)) => a.target_time = Some(t.to_string()),
        Some(RecoveryTarget::Lsn(l)) => a.target_lsn = Some(l.to_string()),
        Some(RecoveryTarget::Name(_)) | None => {}
    }
    a.yes = false;
    a.leave_running = false;
    a.scale_up = None;
    a.scale_up_app = None;
    Ok(a.options())
}

/// `--kube`: check the options, confirm, then apply the RBAC, scale to 0 and run the bootstrap
/// Job with these options (see the module docs).
async fn bootstrap_kube(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if args.leave_running || args.scale_up.is_some() {
        return Err(crate::exit::Refused(format!(
            "--leave-running and --scale-up are not for --kube: the bootstrap Job stops its PostgreSQL and scales deployment/{} up itself; nothing was changed\nhint: run without them",
            ctx.settings().kube.deployment
        ))
        .into());
    }
    let target = recovery_target(&args)?;
    let k = &ctx.settings().kube;
    crate::output::confirm(
        &format!(
            "This scales deployment/{} in namespace {} to 0, {} its data directory with {}{}, then scales it up again.",
            k.deployment,
            k.namespace,
            if args.keep_old {
                "moves aside and replaces"
            } else {
                "REMOVES and replaces"
            },
            args.from.as_deref().unwrap_or("the newest base backup"),
            target_text(&target)
        ),
        args.yes,
    )?;
    // From the first request on, Ctrl-C aborts before the bootstrap Job exists.
    let mut stop = crate::cluster::Stop::install()?;
    let (cluster, ctx) = crate::cluster::connect_checked_stoppable(
        &ctx,
        pgkeep_kube::ops::deployed::Intent::Destroy("bootstrap from a base backup".into()),
        &mut stop,
    )
    .await?;
    let job = basebackup_job(ctx.settings(), &args)?;
    crate::cluster::bootstrap(&ctx, &cluster, job, stop).await
}

/// The bootstrap Job with this command's options (user input in the args escaped for the
/// kubelet).
pub(crate) fn basebackup_job(
    s: &pgkeep_engine::settings::Settings,
    args: &Args,
) -> anyhow::Result<k8s_openapi::api::batch::v1::Job> {
    Ok(pgkeep_kube::manifests::jobs::bootstrap_from_basebackup(
        s,
        &job_options(args)?,
    ))
}

fn target_text(t: &Option<RecoveryTarget>) -> String {
    match t {
        Some(t) => format!(" and replays WAL up to {t}"),
        None => " and replays all archived WAL".into(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{BootstrapCommand, Cli, Command};

    fn parse(argv: &[&str]) -> Args {
        let mut full = vec!["pgkeep", "bootstrap", "basebackup"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Bootstrap(BootstrapCommand::Basebackup(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn passed(argv: &[&str]) -> Vec<String> {
        job_options(&parse(argv)).unwrap()
    }

    #[test]
    fn the_job_gets_the_bundle_and_the_target_as_parsed_here() {
        assert_eq!(
            passed(&[
                "--from",
                "basebackup-20261125-0620.bundle.tar.gz",
                "--target-time",
                "2026-11-25 19:30:00"
            ]),
            [
                "--from",
                "basebackup-20261125-0620.bundle.tar.gz",
                "--target-time",
                "2026-11-25T19:30:00Z",
                "--timeout",
                "3600"
            ]
        );
        // An offset is resolved here, so the pod (whatever its zone) reads the same instant.
        assert_eq!(
            passed(&["--target-time", "2026-11-25T20:30:00+01:00"])[1],
            "2026-11-25T19:30:00Z"
        );
        assert_eq!(
            passed(&[
                "--target-lsn",
                "0/5000060",
                "--keep-old",
                "--json",
                "--timeout",
                "60"
            ]),
            [
                "--target-lsn",
                "0/5000060",
                "--keep-old",
                "--timeout",
                "60",
                "--json"
            ]
        );
        assert_eq!(
            passed(&["--target-name", "before-migration"]),
            ["--target-name", "before-migration", "--timeout", "3600"]
        );
        assert_eq!(
            passed(&["--target-lsn", "0/5000060", "--target-timeline", "2"]),
            [
                "--target-lsn",
                "0/5000060",
                "--target-timeline",
                "2",
                "--timeout",
                "3600"
            ]
        );
        assert_eq!(
            passed(&["--target-timeline", "current"])[..2],
            ["--target-timeline", "current"]
        );
        let bad = [
            "pgkeep",
            "bootstrap",
            "basebackup",
            "--target-timeline",
            "newest",
        ];
        assert!(Cli::try_parse_from(bad).is_err());
    }

    #[test]
    fn a_bad_target_is_refused_before_anything_happens() {
        let a = parse(&["--target-time", "yesterday-ish"]);
        let e = recovery_target(&a).unwrap_err();
        assert!(e.to_string().contains("yesterday-ish"), "{e}");
        let a = parse(&["--target-lsn", "5000060"]);
        assert!(recovery_target(&a).is_err());
    }

    #[test]
    fn scale_up_is_the_jobs_option_only() {
        let a = parse(&["--scale-up", "postgres", "--scale-up-app", "pg"]);
        assert_eq!(a.scale_up.as_deref(), Some("postgres"));
        assert_eq!(a.scale_up_app.as_deref(), Some("pg"));
        // It never reaches the Job's args twice (the rendered Job has it already).
        assert!(
            !job_options(&a)
                .unwrap()
                .iter()
                .any(|x| x.starts_with("--scale-up"))
        );
        // Leaving the Job's PostgreSQL running and starting the Deployment's would put two
        // postmasters on one data directory.
        let both = [
            "pgkeep",
            "bootstrap",
            "basebackup",
            "--scale-up",
            "postgres",
            "--leave-running",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        let app_alone = ["pgkeep", "bootstrap", "basebackup", "--scale-up-app", "pg"];
        assert!(Cli::try_parse_from(app_alone).is_err());
    }
}
