//! `pgkeep backups verify [NAME]`: read every backup (or one) completely and check each member
//! against its manifest; for logical bundles also `pg_restore --list` on the dump. Exits 1 when
//! any backup fails.

use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::{catalog, repo};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One backup name (default: all).
    pub name: Option<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let mut a = vec!["backups", "verify"];
        if let Some(n) = &args.name {
            a.push(n);
        }
        if args.json {
            a.push("--json");
        }
        return crate::kube::run_local_in_loader(&ctx, &a).await;
    }
    let dir = ctx.settings().paths.backups.clone();
    let backups = match &args.name {
        Some(n) => vec![repo::find(&dir, n)?],
        None => repo::list(&dir)?,
    };
    if backups.is_empty() {
        anyhow::bail!(
            "no backups in {}\nhint: take one with `pgkeep backup logical`",
            dir.display()
        );
    }
    let pg = PgBin::locate()?;
    let results = tokio::task::spawn_blocking(move || {
        backups
            .iter()
            .map(|b| catalog::verify(&pg, &dir, b))
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    if args.json {
        crate::output::print_json(&results)?;
    } else {
        for r in &results {
            match (&r.message, r.toc_entries) {
                (None, Some(t)) => println!(
                    "ok      {}  ({} members, {} dump entries)",
                    r.name, r.members, t
                ),
                (None, None) => println!("ok      {}  ({} members)", r.name, r.members),
                (Some(m), _) => println!("FAILED  {}\n  {}", r.name, m.replace('\n', "\n  ")),
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} backups failed verification", results.len());
    }
    Ok(())
}
