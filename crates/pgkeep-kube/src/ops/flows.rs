//! The seed's multi-step Makefile flows composed from the operations, each as one function that
//! reads as a script of named steps (pgBackRest style). The commands call these and print the
//! reports; the steps stay individually callable for commands that need a different order.
//!
//! - [`deploy`] (`pg.deploy`): server version → adapt objects to it → ensure PVCs → ensure the
//!   superuser Secret → server-side apply → optionally wait for the rollout.
//! - [`scale_down_and_run`] (`pg.wipe`, `pg.bootstrap.basebackup`): scale to 0 and wait (a RWO
//!   volume cannot attach to the Job's pod while PostgreSQL holds it), then run the Job.
//! - [`restore_upload`] (`pg.restore.upload`): loader up → upload with checksum → run the
//!   restore Job.
//!
//! Confirmation prompts (`--yes`) belong to the commands, before these are called.

use std::future::Future;
use std::io::Write;
use std::path::Path;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use serde_json::Value;

use super::apply::{
    Applied, ApplyOptions, ServerVersion, adapt_for_server, apply_objects, server_version,
};
use super::exec::{Exec, LogStream, UploadProgress, UploadRequest, Uploaded, upload_file};
use super::job::{JobOutcome, JobRunOptions, run_job};
use super::pods::{LoaderUp, loader_up};
use super::pvc::{PvcReport, ensure_pvcs};
use super::scale::{RolledOut, Scaled, scale, wait_rollout};
use super::secret::{SecretOutcome, ensure_secret_with_password};
use super::{Cluster, OpsError, Wait};

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

/// `pg.wipe` / `pg.bootstrap.basebackup`: scale `deployment` to 0, wait until its pods
/// (`app=<app>`) are gone, then [`run_job`]. Returns the scale report and the Job's outcome.
#[allow(clippy::too_many_arguments)]
pub async fn scale_down_and_run<L, W, S>(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    scale_wait: Wait,
    job: Job,
    logs: &L,
    sink: &mut W,
    stop: S,
    opts: &JobRunOptions,
) -> Result<(Scaled, JobOutcome), OpsError>
where
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let scaled = scale(cluster, deployment, app, 0, Some(scale_wait)).await?;
    let outcome = run_job(cluster, job, logs, sink, stop, opts).await?;
    Ok((scaled, outcome))
}

/// Reports of [`restore_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreUploadReport {
    pub loader: LoaderUp,
    pub uploaded: Uploaded,
    pub job: JobOutcome,
}

/// `pg.restore.upload FILE`: loader pod up, `local` uploaded to `upload.dest` (checksum
/// verified in the pod before anything is restored), then the restore Job, followed.
#[allow(clippy::too_many_arguments)]
pub async fn restore_upload<E, L, W, S>(
    cluster: &Cluster,
    loader: &Pod,
    loader_wait: Wait,
    exec: &E,
    local: &Path,
    upload: &UploadRequest,
    progress: &mut (dyn FnMut(UploadProgress) + Send),
    job: Job,
    logs: &L,
    sink: &mut W,
    stop: S,
    opts: &JobRunOptions,
) -> Result<RestoreUploadReport, OpsError>
where
    E: Exec,
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let loader = loader_up(cluster, loader, loader_wait).await?;
    let uploaded = upload_file(exec, local, upload, progress).await?;
    let job = run_job(cluster, job, logs, sink, stop, opts).await?;
    Ok(RestoreUploadReport {
        loader,
        uploaded,
        job,
    })
}
