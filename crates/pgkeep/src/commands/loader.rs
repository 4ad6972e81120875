//! `pgkeep loader up|down`: the backups-loader helper pod.
//!
//! Kubernetes only (`--kube`): `up` creates the pod (mounting the backups claim) when missing
//! and waits until it runs; `down` deletes it (a missing pod is fine).

use pgkeep_engine::settings::Target;
use pgkeep_kube::manifests::jobs::backups_loader;
use pgkeep_kube::ops::pods::{LoaderDown, loader_down, loader_up};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// How long to wait for the pod to run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {}

pub async fn up(args: UpArgs, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() != Target::Kube {
        return Err(crate::exit::not_implemented("loader up (without --kube)"));
    }
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let pod = backups_loader(ctx.settings());
    let up = loader_up(&cluster, &pod, crate::cluster::wait_secs(args.timeout)).await?;
    println!(
        "pod/{} {}",
        up.pod,
        if up.created {
            "created and running"
        } else {
            "already running"
        }
    );
    Ok(())
}

pub async fn down(_args: DownArgs, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() != Target::Kube {
        return Err(crate::exit::not_implemented("loader down (without --kube)"));
    }
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let pod = backups_loader(ctx.settings());
    let name = pod.metadata.name.as_deref().unwrap_or("backups-loader");
    match loader_down(&cluster, name).await? {
        LoaderDown::Deleted { pod } => println!("pod/{pod} deleted"),
        LoaderDown::Absent { pod } => println!("pod/{pod} not found, nothing to delete"),
    }
    Ok(())
}
