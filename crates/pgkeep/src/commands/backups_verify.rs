//! `pgkeep backups verify [NAME]`: read every backup (or one) completely and check each member
//! against its manifest; for logical bundles also `pg_restore --list` on the dump. Exits 1 when
//! any backup fails.
//!
//! `--offsite` verifies the off-site copies instead: each is downloaded and decrypted (which
//! authenticates every byte) into a private directory on the backups volume, verified there the
//! same way, and removed.

use anyhow::Context;
use pgkeep_engine::offsite::{self, Offsite};
use pgkeep_engine::settings::Target;
use pgkeep_engine::tools::PgBin;
use pgkeep_engine::wal::Archive;
use pgkeep_engine::{catalog, repo};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One backup name (default: all).
    pub name: Option<String>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Verify the off-site copies (downloaded and decrypted one at a time) instead of the local ones.
    #[arg(long)]
    pub offsite: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["backups".to_owned(), "verify".to_owned()];
        if let Some(n) = &self.name {
            a.push(n.clone());
        }
        for (on, flag) in [(self.json, "--json"), (self.offsite, "--offsite")] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return crate::cluster::run_local_in_loader(&ctx, &super::strs(&args.to_argv())).await;
    }
    if args.offsite {
        return verify_offsite(&args, &ctx).await;
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
    report(&args, &results)
}

fn report(args: &Args, results: &[catalog::Verified]) -> anyhow::Result<()> {
    if args.json {
        crate::output::print_json(&results)?;
    } else {
        for r in results {
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

/// Each off-site backup (or the named one): download into a private directory, verify, remove.
async fn verify_offsite(args: &Args, ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let off = Offsite::open(&s.offsite)?;
    let archive = Archive::new(&s.paths.wal_archive);
    let sys = off
        .choose_system(offsite::local_system(&s.paths.pgdata, &archive), None)
        .await?;
    let names: Vec<String> = match &args.name {
        Some(n) => vec![n.clone()],
        None => sys
            .list_backups()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect(),
    };
    if names.is_empty() {
        anyhow::bail!(
            "no backups off-site in {}/{}\nhint: `pgkeep offsite sync` uploads them",
            off.url(),
            sys.id
        );
    }
    let pg = PgBin::locate()?;
    let mut results = Vec::new();
    for name in names {
        let stage = tempfile::Builder::new()
            .prefix(".ov")
            .tempdir_in(&s.paths.backups)
            .with_context(|| format!("create a directory in {}", s.paths.backups.display()))?;
        let result = match sys.fetch_backup(&name, stage.path()).await {
            Ok(_) => {
                let dir = stage.path().to_owned();
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || {
                    let b = repo::find(&dir, &name)?;
                    catalog::verify(&pg, &dir, &b).map_err(anyhow::Error::from)
                })
                .await??
            }
            Err(e @ offsite::OffsiteError::Corrupt { .. }) => catalog::Verified {
                kind: repo::parse_name(&name)
                    .map(|p| p.kind)
                    .unwrap_or(repo::BackupKind::Logical),
                name,
                ok: false,
                members: 0,
                toc_entries: None,
                message: Some(e.to_string()),
            },
            Err(e) => return Err(e.into()),
        };
        results.push(result);
    }
    report(args, &results)
}
