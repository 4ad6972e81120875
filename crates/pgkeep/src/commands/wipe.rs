//! `pgkeep wipe`: the seed's `pgdata-wipe-full` job. Shows the BEFORE listing, removes every
//! entry inside the data volume root (never the mount point itself), recreates PGDATA 0700
//! owned uid:gid, shows the AFTER listing. Refuses while a postmaster runs on PGDATA.

use pgkeep_engine::datadir::{self, Protected};
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return wipe_kube(args, ctx).await;
    }
    let s = ctx.settings();
    let protected = Protected {
        wal_archive: &s.paths.wal_archive,
        backups: &s.paths.backups,
    };
    datadir::check_wipe(&s.paths.pgroot, &s.paths.pgdata, &protected)?;
    println!("BEFORE");
    print!(
        "{}",
        datadir::format_listing(&s.paths.pgroot, &datadir::list(&s.paths.pgroot)?)
    );
    crate::output::confirm(
        &format!(
            "This removes everything inside {} (PGDATA {} included).",
            s.paths.pgroot.display(),
            s.paths.pgdata.display()
        ),
        args.yes,
    )?;
    let report = datadir::wipe(
        &s.paths.pgroot,
        &s.paths.pgdata,
        s.postgres.uid,
        s.postgres.gid,
        &protected,
    )?;
    tracing::info!(
        removed = report.removed,
        "wiped {}",
        s.paths.pgroot.display()
    );
    println!("AFTER");
    print!(
        "{}",
        datadir::format_listing(&s.paths.pgroot, &report.after)
    );
    Ok(())
}

/// `--kube`: confirm, scale the Deployment to 0, run the wipe Job and follow it.
async fn wipe_kube(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let k = &ctx.settings().kube;
    crate::output::confirm(
        &format!(
            "This scales deployment/{} in namespace {} to 0 and deletes everything on its data volume.",
            k.deployment, k.namespace
        ),
        args.yes,
    )?;
    // From the first request on, Ctrl-C aborts before the wipe Job exists (and scales back).
    let mut stop = crate::cluster::Stop::install()?;
    let (cluster, ctx) = crate::cluster::connect_checked_stoppable(
        &ctx,
        pgkeep_kube::ops::deployed::Intent::Destroy("wipe the data volume".into()),
        &mut stop,
    )
    .await?;
    let job = pgkeep_kube::manifests::jobs::wipe(ctx.settings());
    crate::cluster::scale_down_and_run(&ctx, &cluster, job, stop).await
}
