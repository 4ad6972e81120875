//! `pgkeep pvc ensure`: create the PVCs when missing, report bound ones, never change them.
//!
//! Kubernetes only (`--kube`): the claims come from the rendered manifests; each is reported on
//! its own line. Exits 1 when an existing claim differs from the settings (it is left as is).

use anyhow::bail;
use pgkeep_engine::settings::Target;
use pgkeep_kube::ops::pvc::ensure_pvcs;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ask the API server for a dry run: nothing is created.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() != Target::Kube {
        return Err(crate::exit::not_implemented("pvc ensure (without --kube)"));
    }
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let pvcs = crate::cluster::base_pvcs(ctx.settings());
    let reports = ensure_pvcs(&cluster, &pvcs, args.dry_run).await?;
    for r in &reports {
        println!("{r}");
    }
    let differing: Vec<&str> = reports
        .iter()
        .filter(|r| r.differs())
        .map(|r| r.name.as_str())
        .collect();
    if !differing.is_empty() {
        bail!(
            "existing claim(s) differ from the settings: {}\nhint: see the differences above; pgkeep never changes an existing claim",
            differing.join(", ")
        );
    }
    Ok(())
}
