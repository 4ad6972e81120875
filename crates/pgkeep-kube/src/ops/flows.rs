//! The seed's multi-step Makefile flows composed from the operations, each as one function that
//! reads as a script of named steps (pgBackRest style). The commands call these and print the
//! reports; the steps stay individually callable for commands that need a different order.
//!
//! - [`deploy`] (`pg.deploy`): server version → adapt objects to it → ensure PVCs → ensure the
//!   superuser Secret → server-side apply → optionally wait for the rollout.
//! - [`scale_down_and_run`] (`pg.wipe`, `pg.bootstrap.basebackup`): scale to 0 and wait (a RWO
//!   volume cannot attach to the Job's pod while PostgreSQL holds it), then run the Job.
//! - [`bootstrap_basebackup`] (`pg.bootstrap.basebackup`): server-side apply the bootstrap
//!   RBAC → scale to 0 and wait → run the bootstrap Job, which scales the Deployment up again
//!   itself ([`scale_up_in_job`], with its ServiceAccount), so the flow completes even when the
//!   laptop that started it goes away.
//! - [`restore_upload`] (`pg.restore.upload`): loader up → is the file already there? (an
//!   identical one is reused, a different one refused, never overwritten) → upload with
//!   checksum → run the restore Job.
//!
//! - [`debug_perms`] (`pg.debug.perms`): the db container's mounts with the double-mount
//!   verdict, `pgkeep debug perms --local` run in it, the init containers' last 100 lines, and
//!   the pod's events; works on a crash-looping pod (each part reports its own failure).
//! - [`wait_bootstrapped`]: after a bootstrap Job that succeeded, wait for the db pod its
//!   scale-up started (the laptop's last step of `pg.bootstrap.basebackup`).
//! - [`exec_in_db`] (`pg.sanity`, `pg.space`, status): a command in the Ready db pod.
//! - [`exec_in_loader`] (`backups list|verify`): loader up (`pg.backups.loader`), then a
//!   command in it.
//!
//! The Job-running flows take a [`FlowCtx`]: the Job's log source and sink, the stop signal and
//! how the Job is followed.
//!
//! Confirmation prompts (`--yes`) belong to the commands, before these are called.
//!
//! **The stop signal (Ctrl-C) is watched from the first request of every destructive flow.**
//! Before the destructive Job exists, it aborts the flow with [`OpsError::Interrupted`]: what
//! was changed is undone where it can be (the Deployment is scaled back to the replicas it had
//! when the flow began) and the error says what state the cluster is in. Once the Job exists,
//! the stop signal only stops following it ([`JobOutcome::Detached`]): the Job runs on.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt as _;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use serde_json::Value;

use super::apply::{
    Applied, ApplyOptions, ServerVersion, adapt_for_server, apply_objects, server_version,
};
use super::events::events_or_note;
use super::exec::{
    Exec, ExecOutput, ExecRequest, LogStream, UploadProgress, UploadRequest, Uploaded, hash_file,
    upload_file,
};
use super::job::{JobOutcome, JobRunOptions, run_job};
use super::pods::{
    LoaderUp, MountVerdict, first_container, loader_up, mount_check, pod_name, pod_phase,
    pods_with_labels, ready_pod,
};
use super::pvc::{PvcReport, ensure_pvcs};
use super::scale::{RolledOut, Scaled, scale, wait_rollout};
use super::secret::{SecretOutcome, ensure_secret_with_password};
use super::{Cluster, OpsError, Wait};

/// What every flow that runs a Job takes besides its own inputs: where the Job's pod log is read
/// from (`logs`) and copied to (`sink`), the stop signal (`stop`: Ctrl-C, see the module docs)
/// and how the Job is followed (`opts`).
pub struct FlowCtx<'a, L, W, S> {
    pub logs: &'a L,
    pub sink: &'a mut W,
    pub stop: S,
    pub opts: &'a JobRunOptions,
}

/// What [`deploy`] deploys (rendered by the manifests).
#[derive(Debug, Clone)]
pub struct DeployInput {
    /// Claims: created when missing, never changed.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// The superuser Secret without its password: created when missing, never overwritten.
    pub secret: Secret,
    /// The key the random password goes under (e.g. `POSTGRES_PASSWORD`).
    pub password_key: String,
    /// Everything else, server-side applied in order.
    pub objects: Vec<Value>,
}

/// Options of [`deploy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOptions {
    /// Server dry run for every write.
    pub dry_run: bool,
    /// Wait for the Deployment's rollout (ignored in a dry run).
    pub wait: Option<Wait>,
    /// Adapt objects to an older server ([`adapt_for_server`]); without it, an object the
    /// server cannot take is an error.
    pub adapt: bool,
    /// The Deployment and its `app` label, for the rollout wait.
    pub deployment: String,
    pub app: String,
}

/// Everything [`deploy`] did, to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReport {
    pub server: ServerVersion,
    /// Adaptations made for the server (print them: a CronJob's schedule zone may have changed).
    pub notes: Vec<String>,
    pub pvcs: Vec<PvcReport>,
    pub secret: SecretOutcome,
    pub applied: Vec<Applied>,
    pub rollout: Option<RolledOut>,
}

/// `pg.deploy`; see the module docs.
pub async fn deploy(
    cluster: &Cluster,
    input: &DeployInput,
    opts: &DeployOptions,
) -> Result<DeployReport, OpsError> {
    let server = server_version(cluster).await?;
    let (objects, notes) = if opts.adapt {
        let a = adapt_for_server(input.objects.clone(), &server);
        (a.objects, a.notes)
    } else {
        (input.objects.clone(), Vec::new())
    };
    let pvcs = ensure_pvcs(cluster, &input.pvcs, opts.dry_run).await?;
    let secret =
        ensure_secret_with_password(cluster, &input.secret, &input.password_key, opts.dry_run)
            .await?;
    let applied = apply_objects(
        cluster,
        &objects,
        ApplyOptions {
            dry_run: opts.dry_run,
            force: true,
        },
    )
    .await?;
    let rollout = match opts.wait {
        Some(w) if !opts.dry_run => {
            Some(wait_rollout(cluster, &opts.deployment, &opts.app, w).await?)
        }
        _ => None,
    };
    Ok(DeployReport {
        server,
        notes,
        pvcs,
        secret,
        applied,
        rollout,
    })
}

/// The name a Job is created under (its prefix), for messages.
fn job_label(job: &Job) -> String {
    job.metadata
        .name
        .clone()
        .or_else(|| job.metadata.generate_name.clone())
        .unwrap_or_else(|| "destructive".into())
}

/// Whether the stop signal has arrived (without waiting for it).
fn stopped<S: Future<Output = ()>>(stop: &mut Pin<&mut S>) -> bool {
    stop.as_mut().now_or_never().is_some()
}

/// `GET deployments/NAME/scale`: the replicas the Deployment has now.
pub async fn current_replicas(cluster: &Cluster, deployment: &str) -> Result<i32, OpsError> {
    use super::error::{Op, classify};
    let s = cluster
        .api::<k8s_openapi::api::apps::v1::Deployment>()
        .get_scale(deployment)
        .await
        .map_err(|e| {
            classify(
                e,
                cluster,
                Op::new("get", "deployments/scale", deployment)
                    .hint_404("deploy it first with `pgkeep deploy`, or check --namespace"),
            )
        })?;
    Ok(s.spec.and_then(|s| s.replicas).unwrap_or(0))
}

/// Interrupted before `job` was created, after the Deployment may have been scaled down:
/// scale it back to `found` replicas (not waiting) and say where things stand.
async fn interrupted_after_scale(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    found: i32,
    job: &str,
) -> OpsError {
    let when = format!("(Ctrl-C) before the {job} Job was created");
    let untouched = "no Job was created and the data volume was not touched";
    let (state, hint) = if found == 0 {
        (
            format!("{untouched}; deployment/{deployment} stays at 0 replicas, as it was"),
            "run the command again when you are ready".to_owned(),
        )
    } else {
        match scale(cluster, deployment, app, found, None).await {
            Ok(_) => (
                format!(
                    "{untouched}; deployment/{deployment} was scaled back to {found} replica(s), as it was, and its pod is starting again"
                ),
                format!(
                    "`pgkeep --kube scale {found}` waits until it is Ready; run the command again when you are ready"
                ),
            ),
            Err(e) => (
                format!(
                    "{untouched}; deployment/{deployment} may be left at 0 replicas: scaling it back to {found} failed: {}",
                    e.to_string().lines().next().unwrap_or_default()
                ),
                format!("run `pgkeep --kube scale {found}` to start the database again"),
            ),
        }
    };
    OpsError::Interrupted { when, state, hint }
}

/// `pg.wipe` / `pg.bootstrap.basebackup`: read the replicas the Deployment has, scale it to 0,
/// wait until its pods (`app=<app>`) are gone, then [`run_job`]. Returns the scale report and
/// the Job's outcome. `stop` is watched throughout (see the module docs).
pub async fn scale_down_and_run<L, W, S>(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    scale_wait: Wait,
    job: Job,
    run: FlowCtx<'_, L, W, S>,
) -> Result<(Scaled, JobOutcome), OpsError>
where
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let FlowCtx {
        logs,
        sink,
        stop,
        opts,
    } = run;
    let mut stop = std::pin::pin!(stop);
    let label = job_label(&job);
    // `biased`: a stop that arrived together with an answer wins (tests rely on it).
    let found = tokio::select! {
        biased;
        _ = stop.as_mut() => return Err(OpsError::Interrupted {
            when: format!("(Ctrl-C) before the {label} Job was created"),
            state: "nothing was changed".into(),
            hint: "run the command again when you are ready".into(),
        }),
        r = current_replicas(cluster, deployment) => r?,
    };
    let scaled = tokio::select! {
        biased;
        _ = stop.as_mut() => {
            return Err(interrupted_after_scale(cluster, deployment, app, found, &label).await)
        }
        r = scale(cluster, deployment, app, 0, Some(scale_wait)) => r,
    };
    let scaled = scaled?;
    if stopped(&mut stop) {
        return Err(interrupted_after_scale(cluster, deployment, app, found, &label).await);
    }
    let outcome = run_job(cluster, job, logs, sink, stop, opts).await?;
    Ok((scaled, outcome))
}

/// Reports of [`bootstrap_basebackup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    /// The ServiceAccount, Role and RoleBinding, as applied.
    pub rbac: Vec<Applied>,
    pub scaled: Scaled,
    pub job: JobOutcome,
}

/// `pg.bootstrap.basebackup`: server-side apply `rbac` (the rendered bootstrap-rbac.yaml, field
/// manager `pgkeep`), then [`scale_down_and_run`] the bootstrap `job`. The Job's own
/// `--scale-up` brings the Deployment back ([`scale_up_in_job`]); this flow does not.
pub async fn bootstrap_basebackup<L, W, S>(
    cluster: &Cluster,
    rbac: &[Value],
    deployment: &str,
    app: &str,
    scale_wait: Wait,
    job: Job,
    run: FlowCtx<'_, L, W, S>,
) -> Result<BootstrapReport, OpsError>
where
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let FlowCtx {
        logs,
        sink,
        stop,
        opts,
    } = run;
    let mut stop = std::pin::pin!(stop);
    let rbac = tokio::select! {
        biased;
        _ = stop.as_mut() => return Err(OpsError::Interrupted {
            when: format!("(Ctrl-C) before the {} Job was created", job_label(&job)),
            state: format!("deployment/{deployment} and its data were not touched (the bootstrap ServiceAccount, Role and RoleBinding may have been applied; they are harmless)"),
            hint: "run the command again when you are ready".into(),
        }),
        r = apply_objects(cluster, rbac, ApplyOptions::default()) => r?,
    };
    for a in &rbac {
        tracing::info!("{a}");
    }
    tracing::info!("scaling deployment/{deployment} to 0 before the bootstrap Job");
    let run = FlowCtx {
        logs,
        sink,
        stop,
        opts,
    };
    let (scaled, job) = scale_down_and_run(cluster, deployment, app, scale_wait, job, run).await?;
    Ok(BootstrapReport { rbac, scaled, job })
}

/// The last step of the bootstrap Job, run in its pod with the in-cluster ServiceAccount once
/// recovery has ended and its PostgreSQL has stopped: scale `deployment` to 1, and with `wait`
/// wait for a Ready pod labelled `app=<app>`. The Job itself passes no wait: its pod still holds
/// the ReadWriteOnce data volume, which on a multi-node cluster the new db pod can attach only
/// once the Job's pod has ended (the CLI waits for the rollout instead). Every request it sends
/// is one the rendered bootstrap Role allows (`PATCH deployments/NAME/scale`,
/// `GET pods?labelSelector=app=APP`).
pub async fn scale_up_in_job(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    wait: Option<Wait>,
) -> Result<Scaled, OpsError> {
    scale(cluster, deployment, app, 1, wait).await
}

/// What [`restore_upload`] uploads, and to where.
#[derive(Debug, Clone, Copy)]
pub struct UploadInput<'a> {
    /// The backups-loader pod (rendered): created when missing, left running.
    pub loader: &'a Pod,
    /// How long to wait for the loader pod to be Ready.
    pub loader_wait: Wait,
    /// The local file.
    pub local: &'a Path,
    /// Where in the loader pod it goes, and the program that receives it.
    pub upload: &'a UploadRequest,
}

/// How long to wait for the db pod after a bootstrap Job succeeded ([`wait_bootstrapped`]): a
/// clean start after recovery. The startup probe allows longer, but a pod that is not Ready by
/// then needs a person's look.
pub const BOOTSTRAP_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

/// What [`wait_bootstrapped`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBootstrap {
    /// The db pod the Job's scale-up started is Ready.
    Ready(RolledOut),
    /// The stop signal came first: the Deployment stays scaled up and its pod keeps starting.
    Stopped,
}

/// The step after a bootstrap Job that succeeded: the Job scaled the Deployment up itself
/// ([`scale_up_in_job`]) without waiting (its pod held the data volume), so wait here for the
/// rollout ([`wait_rollout`]) within `wait`, until `stop` comes.
pub async fn wait_bootstrapped<S: Future<Output = ()>>(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    wait: Wait,
    stop: S,
) -> Result<AfterBootstrap, OpsError> {
    tokio::select! {
        biased;
        _ = stop => Ok(AfterBootstrap::Stopped),
        r = wait_rollout(cluster, deployment, app, wait) => r.map(AfterBootstrap::Ready),
    }
}

/// Reports of [`restore_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreUploadReport {
    pub loader: LoaderUp,
    pub uploaded: Uploaded,
    /// An identical file (same SHA-256) was already at the destination: nothing was sent.
    pub reused: bool,
    pub job: JobOutcome,
}

/// `pg.restore.upload FILE`: loader pod up; when `upload.dest` already exists in the pod
/// (`sha256sum DEST`, run in the loader), an identical file is reused and a different one
/// refused (an upload never overwrites); otherwise `local` is uploaded to `upload.dest`
/// (checksum verified in the pod before anything is restored). Then the restore Job, followed;
/// told [`REMOVE_IF_REFUSED`](crate::manifests::jobs::REMOVE_IF_REFUSED) when the file was
/// uploaded here (not reused), so a refused restore leaves no upload behind.
pub async fn restore_upload<E, L, W, S>(
    cluster: &Cluster,
    input: &UploadInput<'_>,
    exec: &E,
    progress: &mut (dyn FnMut(UploadProgress) + Send),
    job: Job,
    run: FlowCtx<'_, L, W, S>,
) -> Result<RestoreUploadReport, OpsError>
where
    E: Exec,
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let UploadInput {
        loader,
        loader_wait,
        local,
        upload,
    } = *input;
    let FlowCtx {
        logs,
        sink,
        stop,
        opts,
    } = run;
    let mut stop = std::pin::pin!(stop);
    let when = "(Ctrl-C) before the restore Job was created";
    let loader = tokio::select! {
        biased;
        _ = stop.as_mut() => return Err(OpsError::Interrupted {
            when: when.into(),
            state: "nothing was uploaded or restored; the backups-loader pod may be left running".into(),
            hint: "`pgkeep --kube loader down` removes the loader pod; run the command again when you are ready".into(),
        }),
        r = loader_up(cluster, loader, loader_wait) => r?,
    };
    let interrupted_upload = || {
        OpsError::Interrupted {
        when: when.into(),
        state: format!(
            "nothing was restored; the upload was cut off before it finished, and the receiver in pod/{} publishes {} only once all of it has arrived with the right checksum",
            upload.pod, upload.dest
        ),
        hint: "run the command again when you are ready (`pgkeep --kube loader down` removes the loader pod)".into(),
    }
    };
    let theirs = tokio::select! {
        biased;
        _ = stop.as_mut() => return Err(interrupted_upload()),
        r = remote_sha256(exec, upload) => r?,
    };
    let (uploaded, reused) = match theirs {
        None => {
            let sent = tokio::select! {
                biased;
                _ = stop.as_mut() => return Err(interrupted_upload()),
                r = upload_file(exec, local, upload, progress) => r?,
            };
            (sent, false)
        }
        Some(theirs) => {
            let (size, ours) = tokio::select! {
                biased;
                _ = stop.as_mut() => return Err(interrupted_upload()),
                r = hash_file(local, progress) => r?,
            };
            if theirs != ours {
                return Err(OpsError::Upload {
                    path: local.display().to_string(),
                    pod: upload.pod.clone(),
                    dest: upload.dest.clone(),
                    message: format!(
                        "a different file is already there (sha256 {theirs}; this one is {ours})"
                    ),
                    hint: "nothing was uploaded or restored; rename the local file, or remove the one in the pod (`kubectl exec` into it) if it is not needed".into(),
                });
            }
            let uploaded = Uploaded {
                dest: upload.dest.clone(),
                size,
                sha256: ours,
                receiver_output: String::new(),
            };
            (uploaded, true)
        }
    };
    if stopped(&mut stop) {
        // Uploaded for this restore and not restored: removed again, like a refused upload.
        let removed = if reused {
            "it was there before and stays".to_owned()
        } else {
            let rm = ExecRequest {
                pod: upload.pod.clone(),
                container: upload.container.clone(),
                command: vec!["rm".into(), "-f".into(), "--".into(), upload.dest.clone()],
            };
            match exec.exec(&rm, None).await {
                Ok(out) if out.success() => "it was removed again".to_owned(),
                _ => format!(
                    "removing it failed; remove it with `kubectl -n {} exec {} -- rm {}`",
                    cluster.namespace, upload.pod, uploaded.dest
                ),
            }
        };
        return Err(OpsError::Interrupted {
            when: when.into(),
            state: format!(
                "nothing was restored; {} had been uploaded: {removed}",
                uploaded.dest
            ),
            hint: "run the command again when you are ready (`pgkeep --kube loader down` removes the loader pod)".into(),
        });
    }
    let mut job = job;
    if !reused {
        // Uploaded for this restore: the Job removes it again when the restore is refused.
        if let Some(c) = job
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|p| p.containers.first_mut())
        {
            c.args
                .get_or_insert_with(Vec::new)
                .push(crate::manifests::jobs::REMOVE_IF_REFUSED.to_owned());
        }
    }
    let job = run_job(cluster, job, logs, sink, stop, opts).await?;
    Ok(RestoreUploadReport {
        loader,
        uploaded,
        reused,
        job,
    })
}

/// The SHA-256 of `upload.dest` in the pod (`sha256sum -- DEST`), or `None` when there is no
/// such file (the command fails).
async fn remote_sha256<E: Exec>(
    exec: &E,
    upload: &UploadRequest,
) -> Result<Option<String>, OpsError> {
    let req = ExecRequest {
        pod: upload.pod.clone(),
        container: upload.container.clone(),
        command: vec!["sha256sum".into(), "--".into(), upload.dest.clone()],
    };
    let out = exec.exec(&req, None).await?;
    if !out.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text.split_whitespace().next().unwrap_or("");
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Some(digest.to_ascii_lowercase()))
    } else {
        Err(OpsError::Exec {
            pod: upload.pod.clone(),
            command: req.command.join(" "),
            message: format!("unexpected output: {}", text.trim()),
            hint: "the loader pod runs the pgkeep image, which has coreutils; check the kube.image setting".into(),
        })
    }
}

/// A command in the Ready db pod (`app=<app>`, container `container`). A command that ran and
/// failed is `Ok` with its exit code (the caller passes `--json` output and the code through).
pub async fn exec_in_db<E: Exec>(
    cluster: &Cluster,
    app: &str,
    container: &str,
    exec: &E,
    command: Vec<String>,
) -> Result<ExecOutput, OpsError> {
    let pod = ready_pod(cluster, app).await?;
    let req = ExecRequest {
        pod: pod_name(&pod).to_string(),
        container: Some(container.to_string()),
        command,
    };
    exec.exec(&req, None).await
}

/// What [`exec_in_loader`] did.
#[derive(Debug)]
pub struct LoaderExec {
    /// The loader pod, and whether this call created it (it is left running either way).
    pub loader: LoaderUp,
    /// The command's output (a command that ran and failed is `Ok` with its exit code), or why
    /// it could not run.
    pub output: Result<ExecOutput, OpsError>,
}

/// A command in the backups-loader pod (`backups list|verify --kube`: the one long-running pod
/// that mounts the backups volume): [`loader_up`] (created from the rendered `loader` when
/// missing, and left running), then `command` in its container. Fails only when the loader
/// cannot be brought up; once it is, the exec's own result is in the report, so that the caller
/// can say the pod was created even when the command could not run.
pub async fn exec_in_loader<E: Exec>(
    cluster: &Cluster,
    loader: &Pod,
    wait: Wait,
    exec: &E,
    command: Vec<String>,
) -> Result<LoaderExec, OpsError> {
    let up = loader_up(cluster, loader, wait).await?;
    let req = ExecRequest {
        pod: up.pod.clone(),
        container: first_container(loader),
        command,
    };
    let output = exec.exec(&req, None).await;
    Ok(LoaderExec { loader: up, output })
}

/// Everything `debug perms` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugPermsReport {
    pub pod: String,
    pub phase: String,
    /// The db container's mounts, `volume -> path`.
    pub mounts: Vec<(String, String)>,
    pub verdict: MountVerdict,
    /// `pgkeep debug perms --local` in the db container, or why it could not run.
    pub local: Result<ExecOutput, String>,
    /// Per init container: its last lines, or why they could not be read.
    pub init_logs: Vec<(String, Result<Vec<String>, String>)>,
    pub events: Vec<String>,
}

/// Which pod [`debug_perms`] looks at, and what it checks there.
#[derive(Debug, Clone)]
pub struct DebugPermsInput<'a> {
    /// The pods labelled `app=<app>` (the newest is looked at).
    pub app: &'a str,
    /// The db container, and the init containers whose last lines are shown.
    pub container: &'a str,
    pub init_containers: &'a [&'a str],
    /// The data volume's mount path and PGDATA, for the double-mount verdict.
    pub pgroot: &'a str,
    pub pgdata: &'a str,
    /// `pgkeep debug perms --local` (with its flags), run in the db container.
    pub local_command: Vec<String>,
}

/// `pg.debug.perms` for the newest pod labelled `app=<app>`, Ready or not.
pub async fn debug_perms<E: Exec, L: LogStream>(
    cluster: &Cluster,
    input: DebugPermsInput<'_>,
    exec: &E,
    logs: &L,
) -> Result<DebugPermsReport, OpsError> {
    let DebugPermsInput {
        app,
        container,
        init_containers,
        pgroot,
        pgdata,
        local_command,
    } = input;
    let pods = pods_with_labels(cluster, &format!("app={app}")).await?;
    let Some(pod) = pods.last() else {
        return Err(OpsError::NotFound {
            resource: "pod".into(),
            name: format!("app={app}"),
            namespace: cluster.namespace.clone(),
            hint:
                "no pod runs: `pgkeep scale 1` starts PostgreSQL (and `pgkeep deploy` creates it)"
                    .into(),
        });
    };
    let name = pod_name(pod).to_string();
    let (mounts, verdict) = mount_check(pod, container, pgroot, pgdata);
    let first_line = |e: OpsError| e.to_string().lines().next().unwrap_or_default().to_string();
    let local = if pod_phase(pod) == "Running" {
        let req = ExecRequest {
            pod: name.clone(),
            container: Some(container.to_string()),
            command: local_command,
        };
        exec.exec(&req, None).await.map_err(first_line)
    } else {
        Err(format!(
            "the pod is {}, so nothing can run in it",
            pod_phase(pod)
        ))
    };
    let mut init_logs = Vec::new();
    for c in init_containers {
        let r = logs.tail(&name, Some(c), 100).await.map_err(first_line);
        init_logs.push((c.to_string(), r));
    }
    let events = events_or_note(cluster, "Pod", &name).await;
    Ok(DebugPermsReport {
        pod: name,
        phase: pod_phase(pod).to_string(),
        mounts,
        verdict,
        local,
        init_logs,
        events,
    })
}
