//! `pgkeep deploy`: apply the whole stack through the Kubernetes API.
//!
//! Kubernetes only (`--kube`), the seed's `pg.deploy`: PVCs ensured (never changed), the
//! superuser Secret created with a random password when missing (never printed), then the
//! rendered base (Deployment, Service, CronJobs) server-side applied, adapted to the server's
//! version (e.g. 1.20: CronJobs as batch/v1beta1 without `timeZone`; the notes say so).

use pgkeep_engine::settings::Target;
use pgkeep_kube::manifests::common::SECRET_PASSWORD_KEY;
use pgkeep_kube::manifests::storage::superuser_secret_template;
use pgkeep_kube::ops::flows::{DeployInput, DeployOptions, deploy};
use tracing::Instrument as _;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ask the API server for a dry run of every write: nothing is changed.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for the Deployment's rollout (ignored with --dry-run).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() != Target::Kube {
        return Err(crate::exit::not_implemented("deploy (without --kube)"));
    }
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let s = ctx.settings();
    let input = DeployInput {
        pvcs: crate::cluster::base_pvcs(ctx.settings()),
        secret: superuser_secret_template(s),
        password_key: SECRET_PASSWORD_KEY.to_owned(),
        objects: crate::cluster::base_objects(s),
    };
    let opts = DeployOptions {
        dry_run: args.dry_run,
        wait: args.wait.then(|| crate::cluster::wait_secs(args.timeout)),
        adapt: true,
        deployment: s.kube.deployment.clone(),
        app: s.kube.app.clone(),
    };
    // The span is the spinner on a terminal while --wait watches the rollout.
    let report = deploy(&cluster, &input, &opts)
        .instrument(tracing::info_span!("deploy", deployment = %s.kube.deployment))
        .await?;
    println!("server: {}", report.server);
    for n in &report.notes {
        println!("note: {n}");
    }
    for p in &report.pvcs {
        println!("{p}");
    }
    println!("{}", report.secret);
    for a in &report.applied {
        println!("{a}");
    }
    if let Some(r) = &report.rollout {
        println!(
            "deployment/{} rolled out: {} replica(s) ready after {}s",
            r.deployment,
            r.replicas,
            r.waited.as_secs()
        );
    }
    if report.pvcs.iter().any(|p| p.differs()) {
        println!(
            "warning: an existing claim differs from the settings (see above); it was left unchanged"
        );
    }
    Ok(())
}
