//! Glue shared by the `--kube` meaning of the commands: a [`Cluster`] from the settings (and
//! the check of the local settings against the deployed ones, [`connect_checked`]), the
//! Ctrl-C stop of the destructive flows ([`Stop`]) and of followed Jobs, and stdout as the log
//! sink. The local code paths use
//! nothing here except [`scale_up_in_job`], the last step of `bootstrap basebackup --scale-up`
//! in the bootstrap Job's pod (in-cluster service account).

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use pgkeep_engine::settings::Settings;
use pgkeep_kube::manifests::{self, BASE_DIR, JOBS_DIR, Object};
use pgkeep_kube::ops::apply::ServerVersion;
use pgkeep_kube::ops::connect::{ConnectOptions, connect as ops_connect};
use pgkeep_kube::ops::deployed::{Intent, check_deployed};
use pgkeep_kube::ops::exec::KubeLogs;
use pgkeep_kube::ops::flows::{self, FlowCtx};
use pgkeep_kube::ops::job::{self as ops_job, JobRunOptions};
use pgkeep_kube::ops::{Cluster, Wait};
use serde_json::Value;

use crate::cli::Ctx;

/// The context and API server a kubeconfig points at, best effort, for messages.
struct Where {
    context: Option<String>,
    server: Option<String>,
}

fn kubeconfig_where(wanted: Option<&str>) -> Where {
    let Ok(kc) = kube::config::Kubeconfig::read() else {
        return Where {
            context: None,
            server: None,
        };
    };
    let context = wanted
        .map(str::to_owned)
        .or_else(|| kc.current_context.clone());
    let server = context.as_ref().and_then(|name| {
        let ctx = kc.contexts.iter().find(|c| &c.name == name)?;
        let cluster_name = &ctx.context.as_ref()?.cluster;
        let cluster = kc.clusters.iter().find(|c| &c.name == cluster_name)?;
        cluster.cluster.as_ref()?.server.clone()
    });
    Where { context, server }
}

/// Connect to the cluster of the settings (`kube.context`, else the kubeconfig's current
/// context, else the in-cluster service account) and probe it.
pub async fn connect(ctx: &Ctx) -> anyhow::Result<(Cluster, ServerVersion)> {
    let mut opts = ConnectOptions::from_settings(&ctx.settings().kube);
    let at = kubeconfig_where(opts.context.as_deref());
    if opts.context.is_none() {
        // Name the current context so that messages say which one was used.
        opts.context = at.context.clone();
    }
    let describe = match (&at.context, &at.server) {
        (Some(c), Some(s)) => format!(" (context \"{c}\", cluster {s})"),
        (Some(c), None) => format!(" (context \"{c}\")"),
        _ => String::new(),
    };
    ops_connect(&opts).await.with_context(|| {
        format!(
            "connecting to Kubernetes{describe}, namespace {}",
            opts.namespace
        )
    })
}

/// [`connect`], then compare the local settings with the deployed ones (the ConfigMap every
/// pod reads; see `ops::deployed`): print the differences, refuse `Intent::Destroy` work while
/// they differ, or with `--use-deployed` return a context holding the deployed settings.
pub async fn connect_checked(ctx: &Ctx, intent: Intent) -> anyhow::Result<(Cluster, Ctx)> {
    let (cluster, _server) = connect(ctx).await?;
    let check = check_deployed(&cluster, ctx.settings(), &intent, ctx.use_deployed).await?;
    for n in &check.notes {
        eprintln!("{n}");
    }
    let mut ctx = ctx.clone();
    ctx.resolved.settings = check.settings;
    Ok((cluster, ctx))
}

/// The stop signal of a destructive flow (SIGINT: Ctrl-C), registered when it is installed, so
/// that a Ctrl-C at any later moment is seen, even while no one is waiting for it (and even
/// when SIGINT was ignored, as for a background job of a script). Install it right after the
/// confirmation prompt, before the first request: from then on Ctrl-C aborts the flow before
/// its Job exists (undoing what it can, `ops::flows`), and only stops following it after.
pub struct Stop(tokio::signal::unix::Signal);

impl Stop {
    pub fn install() -> anyhow::Result<Stop> {
        let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("installing the Ctrl-C (SIGINT) handler")?;
        Ok(Stop(sig))
    }

    /// Resolves at the next Ctrl-C (or at once for one that came already).
    pub async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// The signal as the stop future the flows take.
    pub async fn into_future(mut self) {
        self.recv().await
    }
}

/// [`connect_checked`] for a destructive flow, with `stop` watched: a Ctrl-C here aborts before
/// anything was changed.
pub async fn connect_checked_stoppable(
    ctx: &Ctx,
    intent: Intent,
    stop: &mut Stop,
) -> anyhow::Result<(Cluster, Ctx)> {
    tokio::select! {
        biased;
        _ = stop.recv() => Err(pgkeep_kube::ops::OpsError::Interrupted {
            when: "(Ctrl-C) while connecting to the cluster".into(),
            state: "nothing was changed".into(),
            hint: "run the command again when you are ready".into(),
        }
        .into()),
        r = connect_checked(ctx, intent) => r,
    }
}

/// Resolves when Ctrl-C is pressed (never, if the handler cannot be installed).
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Where streamed Job logs go.
pub fn stdout_sink() -> std::io::Stdout {
    std::io::stdout()
}

/// What the CLI gives a Job-running flow ([`FlowCtx`]): the Job's log streamed from the
/// cluster to stdout, the Job followed with [`job_options`].
struct Follow {
    logs: KubeLogs,
    sink: std::io::Stdout,
    opts: JobRunOptions,
}

impl Follow {
    fn new(cluster: &Cluster) -> Follow {
        Follow {
            logs: KubeLogs {
                cluster: cluster.clone(),
            },
            sink: stdout_sink(),
            opts: job_options(),
        }
    }

    /// The flow's context, with `stop` (Ctrl-C) watched.
    fn ctx(
        &mut self,
        stop: Stop,
    ) -> FlowCtx<'_, KubeLogs, std::io::Stdout, impl Future<Output = ()>> {
        FlowCtx {
            logs: &self.logs,
            sink: &mut self.sink,
            stop: stop.into_future(),
            opts: &self.opts,
        }
    }
}

fn print_scaled_down(scaled: &pgkeep_kube::ops::scale::Scaled) {
    println!(
        "deployment/{} scaled to {} (pods gone after {}s)",
        scaled.deployment,
        scaled.replicas,
        scaled.waited.as_secs()
    );
}

/// A wait of `secs` seconds, polling every two seconds, that shows pod states and new events
/// and ends early on a crash loop or an image that cannot be pulled (`ops::watch`).
pub fn wait_secs(secs: u64) -> Wait {
    Wait::new(Duration::from_secs(secs), Duration::from_secs(2)).watched()
}

/// How the CLI runs Jobs: the default options, with the wait for the Job's pod watched.
pub fn job_options() -> JobRunOptions {
    let mut o = JobRunOptions::default();
    o.wait = o.wait.watched();
    o
}

/// The base objects `deploy` applies: everything in the rendered base except the PVCs and the
/// Secret template (ensured separately) and the kustomization.
pub fn base_objects(s: &Settings) -> Vec<Value> {
    let tree = manifests::render(s);
    tree.objects()
        .filter(|(f, _)| f.path.starts_with(&format!("{BASE_DIR}/")))
        .filter(|(_, o)| {
            !matches!(
                o,
                Object::Pvc(_) | Object::Secret(_) | Object::Kustomization(_)
            )
        })
        .map(|(_, o)| o.to_value())
        .collect()
}

/// The PVCs of the rendered base, in order.
pub fn base_pvcs(s: &Settings) -> Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
    let tree = manifests::render(s);
    tree.objects()
        .filter_map(|(_, o)| match o {
            Object::Pvc(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Run `job` (its name is a prefix made unique), streaming its logs to stdout; Ctrl-C stops
/// following (the Job keeps running). Prints the outcome.
pub async fn run_job(cluster: &Cluster, job: Job) -> anyhow::Result<()> {
    let logs = KubeLogs {
        cluster: cluster.clone(),
    };
    let mut sink = stdout_sink();
    let outcome =
        ops_job::run_job(cluster, job, &logs, &mut sink, ctrl_c(), &job_options()).await?;
    println!("{outcome}");
    Ok(())
}

/// `kubectl create job --from=cronjob/NAME`: a Job from the CronJob as it is on the server,
/// run as [`run_job`].
pub async fn run_cronjob(ctx: &Ctx, cronjob: &str) -> anyhow::Result<()> {
    run_from_cronjob(
        ctx,
        cronjob,
        &format!("{cronjob}-manual"),
        None,
        Intent::Read,
    )
    .await
}

/// A one-off Job made from a CronJob as it is on the server (its image, volumes and
/// environment) that runs `pgkeep ARGS --local` instead of the CronJob's own command, run as
/// [`run_job`]. For work that needs exactly the volumes a backup CronJob mounts. The Job reads
/// the deployed settings; `intent` says whether differing local ones only warn or refuse.
pub async fn run_local_from_cronjob(
    ctx: &Ctx,
    cronjob: &str,
    job_name: &str,
    args: &[&str],
    intent: Intent,
) -> anyhow::Result<()> {
    run_from_cronjob(ctx, cronjob, job_name, Some(args), intent).await
}

/// A Job from the CronJob on the server, with its command replaced when `args` are given.
async fn run_from_cronjob(
    ctx: &Ctx,
    cronjob: &str,
    job_name: &str,
    args: Option<&[&str]>,
    intent: Intent,
) -> anyhow::Result<()> {
    let (cluster, _ctx) = connect_checked(ctx, intent).await?;
    let cron = ops_job::fetch_cronjob(&cluster, cronjob).await?;
    let mut job = ops_job::job_from_cronjob(&cron, job_name)?;
    if let Some(args) = args {
        set_local_command(&mut job, args)
            .with_context(|| format!("cronjob/{cronjob} has no container to run in"))?;
    }
    run_job(&cluster, job).await
}

/// Make a Job's (first) container run `pgkeep ARGS --local`; None when it has no container.
fn set_local_command(job: &mut Job, args: &[&str]) -> Option<()> {
    let c = job_container(job)?;
    let mut command: Vec<String> = local_command(args)
        .iter()
        .map(|a| pgkeep_kube::manifests::common::kube_literal(a))
        .collect();
    c.args = Some(command.split_off(1));
    c.command = Some(command);
    Some(())
}

/// The objects of one rendered file of the overlay's jobs directory (e.g. `bootstrap-rbac.yaml`),
/// as applied: exactly what `pgkeep render` writes there.
pub fn overlay_job_objects(s: &Settings, file: &str) -> Vec<Value> {
    let tree = manifests::render(s);
    let path = format!("{JOBS_DIR}/{file}");
    tree.objects()
        .filter(|(f, _)| f.path == path)
        .map(|(_, o)| o.to_value())
        .collect()
}

/// `bootstrap basebackup --kube`: apply the rendered bootstrap RBAC, scale the Deployment to 0
/// (waiting for its pods to go), run the bootstrap Job and follow it ([`flows::bootstrap_basebackup`]),
/// then wait for the db pod the Job scaled up ([`flows::wait_bootstrapped`]). The Job scales the
/// Deployment up itself when recovery has ended, so no "scale up again" hint here.
pub async fn bootstrap(ctx: &Ctx, cluster: &Cluster, job: Job, stop: Stop) -> anyhow::Result<()> {
    let k = &ctx.settings().kube;
    let rbac = overlay_job_objects(ctx.settings(), manifests::files::BOOTSTRAP_RBAC);
    let mut follow = Follow::new(cluster);
    let report = flows::bootstrap_basebackup(
        cluster,
        &rbac,
        &k.deployment,
        &k.app,
        Wait::default().watched(),
        job,
        follow.ctx(stop),
    )
    .await?;
    print_scaled_down(&report.scaled);
    println!("{}", report.job);
    match &report.job {
        ops_job::JobOutcome::Succeeded { .. } => {
            // The flow's own SIGINT handler stays installed: Ctrl-C must still end this wait.
            let wait =
                Wait::new(flows::BOOTSTRAP_ROLLOUT_TIMEOUT, Duration::from_secs(2)).watched();
            let after = flows::wait_bootstrapped(cluster, &k.deployment, &k.app, wait, ctrl_c())
                .await
                .with_context(|| {
                    format!(
                        "the bootstrap Job succeeded and scaled deployment/{} up, but no pod became Ready",
                        k.deployment
                    )
                })?;
            match after {
                flows::AfterBootstrap::Ready(rolled) => println!(
                    "deployment/{} scaled up again by the Job: {} replica(s) ready after {}s",
                    rolled.deployment,
                    rolled.replicas,
                    rolled.waited.as_secs()
                ),
                flows::AfterBootstrap::Stopped => println!(
                    "stopped waiting (Ctrl-C); deployment/{} is scaled up and its pod keeps starting (`pgkeep --kube scale 1` waits for it)",
                    k.deployment
                ),
            }
        }
        ops_job::JobOutcome::Detached { .. } => println!(
            "the Job scales deployment/{} up itself once recovery has ended",
            k.deployment
        ),
    }
    Ok(())
}

/// In the bootstrap Job's pod (`bootstrap basebackup --scale-up`): connect with the in-cluster
/// service account (namespace from the downward API) and scale `deployment` to 1. It does not
/// wait for the pod: this Job's pod holds the ReadWriteOnce data volume until it ends (see
/// [`flows::scale_up_in_job`]); the CLI that follows the Job waits for the rollout.
pub async fn scale_up_in_job(ctx: &Ctx, deployment: &str, app: &str) -> anyhow::Result<()> {
    let (cluster, _server) = connect(ctx).await?;
    tracing::info!("scaling deployment/{deployment} to 1");
    let scaled = flows::scale_up_in_job(&cluster, deployment, app, None).await?;
    println!(
        "deployment/{} scaled to {}; its pod starts once this Job's pod has released the data volume",
        scaled.deployment, scaled.replicas,
    );
    Ok(())
}

/// Scale the Deployment to 0 (waiting for its pods to go), then [`run_job`]; `stop` watched
/// throughout (Ctrl-C before the Job exists scales back and fails with what state things are in).
pub async fn scale_down_and_run(
    ctx: &Ctx,
    cluster: &Cluster,
    job: Job,
    stop: Stop,
) -> anyhow::Result<()> {
    let k = &ctx.settings().kube;
    let mut follow = Follow::new(cluster);
    let (scaled, outcome) = flows::scale_down_and_run(
        cluster,
        &k.deployment,
        &k.app,
        Wait::default().watched(),
        job,
        follow.ctx(stop),
    )
    .await?;
    print_scaled_down(&scaled);
    println!("{outcome}");
    println!("hint: scale the database up again with `pgkeep --kube scale 1` when you are done");
    Ok(())
}

/// Run `pgkeep ARGS --local` in the db container of the ready PostgreSQL pod (the local meaning
/// of a read-only command, executed where the data is), copy its stdout and stderr through, and
/// end with its exit code.
pub async fn run_local_in_db(ctx: &Ctx, args: &[&str]) -> anyhow::Result<()> {
    let (cluster, _) = connect(ctx).await?;
    let s = ctx.settings();
    let exec = pgkeep_kube::ops::exec::KubeExec {
        cluster: cluster.clone(),
    };
    let out = flows::exec_in_db(
        &cluster,
        &s.kube.app,
        &s.kube.container,
        &exec,
        local_command(args),
    )
    .await
    .with_context(|| format!("running `pgkeep {}` in the db pod", args.join(" ")))?;
    pass_through(out, args, "the db pod")
}

/// Like [`run_local_in_db`], in another container of the db pod (the `metrics` container, which
/// mounts the backups volume as well).
pub async fn run_local_in_container(
    ctx: &Ctx,
    container: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let (cluster, _) = connect(ctx).await?;
    let s = ctx.settings();
    let exec = pgkeep_kube::ops::exec::KubeExec {
        cluster: cluster.clone(),
    };
    let out = flows::exec_in_db(&cluster, &s.kube.app, container, &exec, local_command(args))
        .await
        .with_context(|| {
            format!(
                "running `pgkeep {}` in the db pod's {container} container",
                args.join(" ")
            )
        })?;
    pass_through(out, args, "the db pod")
}

/// Like [`run_local_in_db`], in the backups-loader pod (the one long-running pod that mounts
/// the backups volume), which is created first when missing and left running.
pub async fn run_local_in_loader(ctx: &Ctx, args: &[&str]) -> anyhow::Result<()> {
    let (cluster, _) = connect(ctx).await?;
    let pod = manifests::jobs::backups_loader(ctx.settings());
    let exec = pgkeep_kube::ops::exec::KubeExec {
        cluster: cluster.clone(),
    };
    let done =
        flows::exec_in_loader(&cluster, &pod, Wait::default(), &exec, local_command(args)).await?;
    let up = done.loader;
    if up.created {
        eprintln!(
            "pod/{} created: it mounts the backups volume (`pgkeep --kube loader down` removes it)",
            up.pod
        );
    }
    let out = done
        .output
        .with_context(|| format!("running `pgkeep {}` in pod/{}", args.join(" "), up.pod))?;
    pass_through(out, args, &format!("pod/{}", up.pod))
}

/// The container of a rendered Job's pod (they have one), to add args or env to.
pub fn job_container(job: &mut Job) -> Option<&mut k8s_openapi::api::core::v1::Container> {
    job.spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
}

fn local_command(args: &[&str]) -> Vec<String> {
    let mut command = vec!["pgkeep".to_owned()];
    command.extend(args.iter().map(|a| a.to_string()));
    command.push("--local".into());
    command
}

/// Copy a remote pgkeep's output through and end with its exit code.
fn pass_through(
    out: pgkeep_kube::ops::exec::ExecOutput,
    args: &[&str],
    place: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    match out.exit_code {
        Some(0) => Ok(()),
        Some(code) => Err(crate::exit::RemoteExit(code).into()),
        None => anyhow::bail!(
            "`pgkeep {}` in {place} did not report an exit status: {}",
            args.join(" "),
            out.message
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_applies_the_base_without_pvcs_secret_or_kustomization() {
        let s = Settings::default();
        let kinds: Vec<String> = base_objects(&s)
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "Deployment",
                "Service",
                // logical, physical, incremental (suspended unless turned on), drill
                "CronJob",
                "CronJob",
                "CronJob",
                "CronJob"
            ]
        );
        let pvcs: Vec<String> = base_pvcs(&s)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(pvcs.len(), 3, "{pvcs:?}");
    }

    #[test]
    fn bootstrap_applies_the_rendered_rbac_file() {
        let s = Settings::default();
        let objs = overlay_job_objects(&s, manifests::files::BOOTSTRAP_RBAC);
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding"]);
        for o in &objs {
            assert_eq!(o["metadata"]["name"], "bootstrap-from-basebackup");
            assert_eq!(o["metadata"]["namespace"], "record-platform");
        }
    }

    #[test]
    fn prune_runs_in_a_job_with_both_volumes_of_the_physical_cronjob() {
        let s = Settings::default();
        let cron_name = manifests::backup::physical_name(&s);
        let cron = base_objects(&s)
            .into_iter()
            .find(|o| o["kind"] == "CronJob" && o["metadata"]["name"] == cron_name.as_str())
            .unwrap();
        let mut job = ops_job::job_from_cronjob(&cron, "backups-prune").unwrap();
        set_local_command(&mut job, &["backups", "prune", "--dry-run"]).unwrap();
        let c = job_container(&mut job).unwrap();
        assert_eq!(c.command.as_deref(), Some(&["pgkeep".to_owned()][..]));
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["backups", "prune", "--dry-run", "--local"]
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/backups"), "{mounts:?}");
        assert!(mounts.contains(&"/wal-archive"), "{mounts:?}");
        let mut empty = Job::default();
        assert!(set_local_command(&mut empty, &["backups", "prune"]).is_none());
    }

    #[test]
    fn no_input_expands_into_another_variable_in_any_job_the_cli_builds() {
        use crate::cli::{BootstrapCommand, Cli, Command, RestoreCommand};
        use clap::Parser;
        use pgkeep_kube::manifests::common::kubelet_references;
        let hostile = "x$(PGPASSWORD).sql";
        let s = Settings::default();
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().command;
        let mut built: Vec<(&str, Job)> = Vec::new();
        let Command::Restore(RestoreCommand::Upload(up)) =
            parse(&["pgkeep", "restore", "upload", hostile])
        else {
            unreachable!()
        };
        let dest = format!("/backups/{}", up.file.display());
        built.push((
            "restore upload",
            crate::commands::restore_upload::upload_job(&s, &dest, &up.restore),
        ));
        let Command::Restore(RestoreCommand::Dump(dump)) =
            parse(&["pgkeep", "restore", "dump", "--from", hostile])
        else {
            unreachable!()
        };
        built.push((
            "restore dump",
            crate::commands::restore_dump::dump_job(&s, &dump, true),
        ));
        for target in [["--from", hostile], ["--target-name", hostile]] {
            let mut argv = vec!["pgkeep", "bootstrap", "basebackup"];
            argv.extend(target);
            let Command::Bootstrap(BootstrapCommand::Basebackup(b)) = parse(&argv) else {
                unreachable!()
            };
            built.push((
                "bootstrap basebackup",
                crate::commands::bootstrap_basebackup::basebackup_job(&s, &b).unwrap(),
            ));
        }
        let mut from_cron = ops_job::job_from_cronjob(
            &base_objects(&s)
                .into_iter()
                .find(|o| o["kind"] == "CronJob")
                .unwrap(),
            "drill",
        )
        .unwrap();
        set_local_command(&mut from_cron, &["backups", "verify", hostile]).unwrap();
        built.push(("from a cronjob", from_cron));
        for (what, mut job) in built {
            let c = job_container(&mut job).unwrap();
            let values: Vec<&str> = c
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value.as_deref())
                .chain(c.command.iter().flatten().map(String::as_str))
                .chain(c.args.iter().flatten().map(String::as_str))
                .collect();
            assert!(
                values.iter().any(|v| v.contains("x$$(PGPASSWORD).sql")),
                "{what}: the input is passed on, escaped: {values:?}"
            );
            let refs: Vec<&str> = values.iter().flat_map(|v| kubelet_references(v)).collect();
            let allowed: &[&str] = if what == "restore upload" {
                &[manifests::jobs::UPLOAD_FILE_ENV]
            } else {
                &[]
            };
            assert_eq!(refs, allowed, "{what}: {values:?}");
        }
    }
}
