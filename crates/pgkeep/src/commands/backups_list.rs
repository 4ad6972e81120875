//! `pgkeep backups list`: the backups in the repository, both kinds: kind, name, time (UTC, from
//! the name), size, database, and whether `backups verify` checked it since it last changed.

use pgkeep_engine::catalog;
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let mut a = vec!["backups", "list"];
        if args.json {
            a.push("--json");
        }
        return crate::kube::run_local_in_loader(&ctx, &a).await;
    }
    let dir = &ctx.settings().paths.backups;
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
        println!(
            "{:<9} {:<w$} {:<20} {:>14} {:<12} {}",
            e.kind.label(),
            e.name,
            e.time,
            e.size,
            e.database.as_deref().unwrap_or("?"),
            e.verified
        );
    }
    Ok(())
}
