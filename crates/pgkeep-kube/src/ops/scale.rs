//! `pg.scale0` / `pg.scale1`: patch the Deployment's scale subresource, then wait until the pods
//! with the app label are gone (0) or one is Ready (1).
//!
//! Requests: `PATCH apis/apps/v1/namespaces/NS/deployments/NAME/scale` (merge patch
//! `{"spec":{"replicas":N}}`), then `GET api/v1/namespaces/NS/pods?labelSelector=app=APP`
//! every `wait.interval`. On timeout the error lists each pod's state and recent events, which
//! is where an unbound PersistentVolumeClaim or a crash-looping init container shows up.
//! A 403 names the subresource: "forbidden: cannot patch deployments/scale in namespace NS".
//!
//! [`wait_rollout`] is `kubectl rollout status` for `pgkeep deploy --wait`: it polls
//! `GET .../deployments/NAME` until the new template is rolled out and available, fails early
//! when the Deployment reports `ProgressDeadlineExceeded`, and on timeout reports the pods and
//! their events.
//!
//! With [`Wait::watch`] both report pod states and events while they wait and end early on a
//! container that cannot start ([`super::watch`]): after each look at the pods (each
//! `GET .../deployments/NAME` for a rollout, followed by the pod list), the watch's requests.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;

use super::error::{Op, classify};
use super::pods::{is_ready, pod_details, pod_name, pods_with_labels};
use super::watch::PodWatch;
use super::{Cluster, OpsError, Wait};

/// What [`scale`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaled {
    pub deployment: String,
    pub replicas: i32,
    /// The Ready pod (scale 1), when waited for.
    pub ready_pod: Option<String>,
    /// How long the wait took (zero without a wait).
    pub waited: Duration,
}

/// Scale `deployment` to `replicas` (0 or 1) and, with `wait`, wait for the pods labelled
/// `app=<app>` to be gone (0) or Ready (1).
pub async fn scale(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    replicas: i32,
    wait: Option<Wait>,
) -> Result<Scaled, OpsError> {
    if !(0..=1).contains(&replicas) {
        return Err(OpsError::Refused {
            action: format!("scale {deployment} to {replicas}"),
            why: "PostgreSQL here is single-instance: a second pod would share the data volume"
                .into(),
            hint: "use 0 (stop) or 1 (start)".into(),
        });
    }
    let api = cluster.api::<Deployment>();
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            classify(
                e,
                cluster,
                Op::new("patch", "deployments/scale", deployment)
                    .hint_404("deploy it first with `pgkeep deploy`, or check --namespace"),
            )
        })?;
    let Some(wait) = wait else {
        return Ok(Scaled {
            deployment: deployment.into(),
            replicas,
            ready_pod: None,
            waited: Duration::ZERO,
        });
    };
    let selector = format!("app={app}");
    let start = Instant::now();
    let mut watch = PodWatch::new();
    loop {
        let pods = pods_with_labels(cluster, &selector).await?;
        let done = if replicas == 0 {
            pods.is_empty().then_some(None)
        } else {
            pods.iter()
                .find(|p| is_ready(p))
                .map(|p| Some(pod_name(p).to_string()))
        };
        if let Some(ready_pod) = done {
            return Ok(Scaled {
                deployment: deployment.into(),
                replicas,
                ready_pod,
                waited: start.elapsed(),
            });
        }
        if wait.watch {
            // A crash-looping pod that is being scaled away is no reason to stop waiting.
            watch.observe(cluster, &pods, replicas == 1).await?;
        }
        if start.elapsed() >= wait.timeout {
            let (what, hint) = if replicas == 0 {
                (
                    format!("the pods of {deployment} ({selector}) to be gone"),
                    "a pod that does not stop is usually stuck terminating; see its events above, and `kubectl describe pod`".to_string(),
                )
            } else {
                (
                    format!("a Ready pod of {deployment} ({selector})"),
                    "see the pods' events above (an unbound PersistentVolumeClaim keeps a pod Pending); `pgkeep debug perms` shows the init containers' logs".to_string(),
                )
            };
            let mut details = pod_details(cluster, &pods).await;
            if pods.is_empty() {
                details.push_str(&format!("no pods with label {selector}\n"));
            }
            return Err(OpsError::Timeout {
                what,
                after: wait.timeout,
                details,
                hint,
            });
        }
        tokio::time::sleep(wait.interval).await;
    }
}

/// What [`wait_rollout`] saw at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledOut {
    pub deployment: String,
    pub replicas: i32,
    pub waited: Duration,
}

/// Wait until `deployment`'s latest template is rolled out and available (like
/// `kubectl rollout status`). The pods labelled `app=<app>` are reported on timeout.
pub async fn wait_rollout(
    cluster: &Cluster,
    deployment: &str,
    app: &str,
    wait: Wait,
) -> Result<RolledOut, OpsError> {
    let api = cluster.api::<Deployment>();
    let start = Instant::now();
    let mut watch = PodWatch::new();
    loop {
        let d = api.get(deployment).await.map_err(|e| {
            classify(
                e,
                cluster,
                Op::new("get", "deployments", deployment)
                    .hint_404("deploy it first with `pgkeep deploy`"),
            )
        })?;
        let state = rollout_state(&d);
        match state {
            Rollout::Done(replicas) => {
                return Ok(RolledOut {
                    deployment: deployment.into(),
                    replicas,
                    waited: start.elapsed(),
                });
            }
            Rollout::Failed(message) => {
                let pods = pods_with_labels(cluster, &format!("app={app}")).await?;
                return Err(OpsError::Timeout {
                    what: format!("deployment {deployment} to roll out (its progress deadline passed: {message})"),
                    after: start.elapsed(),
                    details: pod_details(cluster, &pods).await,
                    hint: "see the pods' events above; `pgkeep debug perms` shows the init containers' logs".into(),
                });
            }
            Rollout::Waiting(_) => {}
        }
        if wait.watch {
            let pods = pods_with_labels(cluster, &format!("app={app}")).await?;
            watch.observe(cluster, &pods, true).await?;
        }
        if start.elapsed() >= wait.timeout {
            let Rollout::Waiting(progress) = state else {
                unreachable!()
            };
            let pods = pods_with_labels(cluster, &format!("app={app}")).await?;
            let mut details = format!("deployment {deployment}: {progress}\n");
            details.push_str(&pod_details(cluster, &pods).await);
            return Err(OpsError::Timeout {
                what: format!("deployment {deployment} to roll out"),
                after: wait.timeout,
                details,
                hint: "see the pods' events above (an unbound PersistentVolumeClaim keeps a pod Pending); `pgkeep debug perms` shows the init containers' logs".into(),
            });
        }
        tokio::time::sleep(wait.interval).await;
    }
}

enum Rollout {
    Done(i32),
    Waiting(String),
    Failed(String),
}

/// The logic of `kubectl rollout status` for Deployments.
fn rollout_state(d: &Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else {
        return Rollout::Waiting("no status yet".into());
    };
    if st.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting("waiting for the controller to see the new spec".into());
    }
    if let Some(c) = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed(c.message.clone().unwrap_or_default());
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if updated < want {
        Rollout::Waiting(format!("{updated} of {want} replicas updated"))
    } else if total > updated {
        Rollout::Waiting(format!(
            "{} old replicas pending termination",
            total - updated
        ))
    } else if available < updated {
        Rollout::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ))
    } else {
        Rollout::Done(want)
    }
}
