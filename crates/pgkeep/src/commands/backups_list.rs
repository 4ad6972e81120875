//! `pgkeep backups list`: the backups in the repository, both kinds: kind, name, time (UTC, from
//! the name), size, database, and whether `backups verify` checked it since it last changed.
//! With off-site copies configured, also where each backup is: `local`, `off-site` or `both`
//! (an off-site-only backup shows the object's size and no database). An incremental base
//! backup's kind is `incr` and its parent is shown after it.

use pgkeep_engine::catalog;
use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::repo::{self, BackupKind};
use pgkeep_engine::settings::Target;
use pgkeep_engine::wal::Archive;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["backups".to_owned(), "list".to_owned()];
        if self.json {
            a.push("--json".to_owned());
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return crate::cluster::run_local_in_loader(&ctx, &super::strs(&args.to_argv())).await;
    }
    let dir = &ctx.settings().paths.backups;
    let s = ctx.settings();
    if !s.offsite.url.is_empty() {
        return list_with_offsite(&args, &ctx).await;
    }
    let entries = catalog::list(dir)?;
    if args.json {
        return crate::output::print_json(&entries);
    }
    if entries.is_empty() {
        println!("no backups in {}", dir.display());
        return Ok(());
    }
    let w = entries.iter().map(|e| e.name.len()).max().unwrap_or(4);
    println!(
        "{:<9} {:<w$} {:<20} {:>14} {:<12} VERIFIED",
        "KIND", "NAME", "TIME", "SIZE", "DATABASE"
    );
    for e in &entries {
        let parent = e
            .parent
            .as_deref()
            .map(|p| format!("  parent {p}"))
            .unwrap_or_default();
        println!(
            "{:<9} {:<w$} {:<20} {:>14} {:<12} {}{parent}",
            if e.parent.is_some() {
                "incr"
            } else {
                e.kind.label()
            },
            e.name,
            e.time,
            e.size,
            e.database.as_deref().unwrap_or("?"),
            e.verified
        );
    }
    Ok(())
}

/// One line when off-site copies are configured.
#[derive(Debug, serde::Serialize)]
struct Row {
    kind: BackupKind,
    name: String,
    time: String,
    size: u64,
    database: Option<String>,
    verified: &'static str,
    /// `local`, `off-site` or `both`.
    location: &'static str,
}

async fn list_with_offsite(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let dir = &s.paths.backups;
    let local = if dir.exists() {
        catalog::list(dir)?
    } else {
        Vec::new()
    };
    let off = Offsite::open(&s.offsite)?;
    let archive = Archive::new(&s.paths.wal_archive);
    let sys = off
        .choose_system(offsite::local_system(&s.paths.pgdata, &archive), None)
        .await;
    let remote = match sys {
        Ok(sys) => sys.list_backups().await?,
        Err(offsite::OffsiteError::NoSystem { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut rows: Vec<Row> = local
        .into_iter()
        .map(|e| Row {
            location: if remote.iter().any(|r| r.name == e.name) {
                "both"
            } else {
                "local"
            },
            kind: e.kind,
            name: e.name,
            time: e.time,
            size: e.size,
            database: e.database,
            verified: e.verified,
        })
        .collect();
    for r in remote {
        if rows.iter().any(|row| row.name == r.name) {
            continue;
        }
        let Some(parsed) = repo::parse_name(&r.name) else {
            continue;
        };
        rows.push(Row {
            kind: parsed.kind,
            time: parsed.time.strftime("%Y-%m-%d %H:%M").to_string(),
            name: r.name,
            size: r.size,
            database: None,
            verified: "-",
            location: "off-site",
        });
    }
    rows.sort_by(|a, b| (&a.time, &a.name).cmp(&(&b.time, &b.name)));
    if args.json {
        return crate::output::print_json(&rows);
    }
    if rows.is_empty() {
        println!("no backups in {} nor in {}", dir.display(), off.url());
        return Ok(());
    }
    let w = rows.iter().map(|e| e.name.len()).max().unwrap_or(4);
    println!(
        "{:<9} {:<w$} {:<20} {:>14} {:<12} {:<8} WHERE",
        "KIND", "NAME", "TIME", "SIZE", "DATABASE", "VERIFIED"
    );
    for e in &rows {
        println!(
            "{:<9} {:<w$} {:<20} {:>14} {:<12} {:<8} {}",
            e.kind.label(),
            e.name,
            e.time,
            e.size,
            e.database.as_deref().unwrap_or("?"),
            e.verified,
            e.location
        );
    }
    Ok(())
}
