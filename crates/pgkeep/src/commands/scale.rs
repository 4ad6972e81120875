//! `pgkeep scale`: scale the Deployment to 0 or 1 replica and wait.
//!
//! Kubernetes only (`--kube`): 0 waits until the db pods are gone, 1 until one is Ready.

use pgkeep_engine::settings::Target;
use tracing::Instrument as _;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replicas: 0 or 1.
    #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
    pub replicas: u8,
    /// How long to wait for the pods to go (0) or become Ready (1), in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() != Target::Kube {
        return Err(crate::exit::not_implemented("scale (without --kube)"));
    }
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let k = &ctx.settings().kube;
    // The span is the spinner on a terminal; the wait logs pod states and events under it.
    let scaled = pgkeep_kube::ops::scale::scale(
        &cluster,
        &k.deployment,
        &k.app,
        i32::from(args.replicas),
        Some(crate::cluster::wait_secs(args.timeout)),
    )
    .instrument(tracing::info_span!(
        "scale",
        deployment = %k.deployment,
        replicas = args.replicas
    ))
    .await?;
    match &scaled.ready_pod {
        Some(pod) => println!(
            "deployment/{} scaled to {}: pod {pod} Ready after {}s",
            scaled.deployment,
            scaled.replicas,
            scaled.waited.as_secs()
        ),
        None => println!(
            "deployment/{} scaled to {} after {}s",
            scaled.deployment,
            scaled.replicas,
            scaled.waited.as_secs()
        ),
    }
    Ok(())
}
