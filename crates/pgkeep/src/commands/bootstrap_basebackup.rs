//! `pgkeep bootstrap basebackup`: replace PGDATA with a physical bundle and replay WAL from the
//! archive, optionally to a point in time (the seed's `pg.bootstrap.basebackup`).
//!
//! Everything that can be checked is checked before anything is destroyed (`recovery::prepare`:
//! checksums, system identifier, target, WAL for consistency, no running postmaster); then a
//! confirmation (or `--yes`), then `recovery::execute`.

use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::db::ConnParams;
use pgkeep_engine::recovery::{self, BootstrapRequest, RecoveryTarget};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A bundle name in the backups directory (default: the newest complete one).
    #[arg(long)]
    pub from: Option<String>,
    /// Recover up to this time (UTC unless it has an offset), e.g. 2026-11-25T19:30:00Z.
    #[arg(long, group = "target")]
    pub target_time: Option<String>,
    /// Recover up to this WAL location, e.g. 0/5000060.
    #[arg(long, group = "target")]
    pub target_lsn: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point).
    #[arg(long, group = "target")]
    pub target_name: Option<String>,
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
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return Err(crate::exit::not_implemented("bootstrap basebackup --kube"));
    }
    let s = ctx.settings();
    let target = if let Some(t) = &args.target_time {
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
    };
    let req = BootstrapRequest {
        pgroot: s.paths.pgroot.clone(),
        pgdata: s.paths.pgdata.clone(),
        wal_archive: s.paths.wal_archive.clone(),
        backups: s.paths.backups.clone(),
        uid: s.postgres.uid,
        gid: s.postgres.gid,
        from: args.from.clone(),
        target,
        keep_old: args.keep_old,
        leave_running: args.leave_running,
        pgkeep_exe: std::env::current_exe().context("locating the pgkeep program")?,
        timeout: Duration::from_secs(args.timeout),
    };
    let pg = PgBin::locate()?;
    let plan = recovery::prepare(&req)?;
    tracing::info!(
        bundle = %plan.bundle.name,
        start_lsn = %plan.facts.start_lsn,
        stop_lsn = %plan.facts.stop_lsn,
        timeline = plan.facts.timeline,
        system_identifier = %plan.facts.system_identifier,
        "bundle verified"
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
    crate::output::confirm(&what, args.yes)?;
    let conn = ConnParams::from_settings(s);
    let report = recovery::execute(&pg, &conn, &req, &plan).await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "restored {}: recovery ended at {} on timeline {}; last replayed transaction {}{}",
            report.bundle,
            report.end_lsn.as_deref().unwrap_or("?"),
            report
                .timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            report
                .last_replayed_xact_time
                .as_deref()
                .unwrap_or("(none)"),
            report
                .stop_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
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
    Ok(())
}

fn target_text(t: &Option<RecoveryTarget>) -> String {
    match t {
        Some(t) => format!(" and replays WAL up to {t}"),
        None => " and replays all archived WAL".into(),
    }
}
