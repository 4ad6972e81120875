//! `pgkeep status --local`: server up/down, version, recovery, `pg_stat_archiver` interpreted,
//! the WAL archive, the newest logical and physical backups with their age, and an unfinished
//! bootstrap's marker on the data volume.

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::inspect::{self, human_age, human_bytes};
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let mut a = vec!["status"];
        if args.json {
            a.push("--json");
        }
        return crate::kube::run_local_in_db(&ctx, &a).await;
    }
    let s = ctx.settings();
    let r = inspect::status(
        &ConnParams::from_settings(s),
        &s.paths.pgroot,
        &s.paths.wal_archive,
        &s.paths.backups,
    )
    .await;
    if args.json {
        return crate::output::print_json(&r);
    }
    match (&r.server.up, &r.server.version) {
        (true, Some(v)) => println!(
            "server:      up, PostgreSQL {v}{}",
            if r.server.in_recovery == Some(true) {
                ", IN RECOVERY"
            } else {
                ", primary"
            }
        ),
        _ => println!(
            "server:      DOWN ({})",
            r.server
                .error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("unreachable")
        ),
    }
    if let Some(m) = &r.bootstrap_unfinished {
        println!(
            "bootstrap:   UNFINISHED ({} is there): the server will not initialize an empty \
             database; run `pgkeep bootstrap basebackup` again, or remove the file knowingly",
            m.display()
        );
    }
    if let Some(a) = &r.archiver {
        println!("archiver:    {} ({})", a.verdict, a.explanation);
        println!(
            "  archived:  {} files, last {} {}",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or("-"),
            a.last_archived_age_seconds
                .map(|s| format!("{} ago", human_age(s as i64)))
                .unwrap_or_default()
        );
        println!(
            "  failed:    {} times{}",
            a.failed_count,
            match (&a.last_failed_wal, &a.last_failed_time) {
                (Some(w), Some(t)) => format!(", last {w} at {t}"),
                _ => String::new(),
            }
        );
        if let Some(n) = a.ready {
            println!("  waiting:   {n} segments ready to archive");
        }
    }
    let w = &r.wal_archive;
    println!(
        "WAL archive: {} in {} files ({} segments), newest {}",
        human_bytes(w.bytes),
        w.files,
        w.segments,
        w.newest.as_deref().unwrap_or("-")
    );
    for (label, b) in [
        ("logical:    ", &r.newest_logical),
        ("physical:   ", &r.newest_physical),
    ] {
        match b {
            Some(b) => println!(
                "{label} {} ({}, {} old)",
                b.name,
                human_bytes(b.size),
                human_age(b.age_seconds)
            ),
            None if !ctx.settings().paths.backups.is_dir() => println!(
                "{label} - (the backups volume is not mounted here; in Kubernetes the backup Jobs \
                 and the loader pod mount it: `pgkeep --kube backups list`)"
            ),
            None => println!("{label} none"),
        }
    }
    Ok(())
}
