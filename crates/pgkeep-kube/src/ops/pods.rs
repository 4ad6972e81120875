//! Pods: lookups by label, readiness, one-line summaries for reports, and the backups-loader
//! helper pod of the seed (`make pg.backups.loader` / `pg.backups.loader.rm`).
//!
//! `loader_up` creates the pod when it is missing and waits until it is Running and Ready (the seed's
//! loader mounts the `pgbackups` claim and sleeps, so uploads can be exec'd into it);
//! `loader_down` deletes it and does not wait (deleting a pod takes 10+ s on 1.20).
//! [`mount_check`] is the seed's jsonpath check of the db container's volume mounts, with a
//! verdict on the double-mount pitfall (for `pgkeep debug perms`).
//! Waiting polls with GET requests, so every request can be asserted in tests; a timeout
//! reports the pod's phase, its container states and its events (e.g. an unbound claim).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use kube::api::{DeleteParams, ListParams, PostParams};
use tokio::time::Instant;

use super::error::{Op, api_code, classify};
use super::events::events_or_note;
use super::{Cluster, OpsError, Wait};

/// The pods matching a label selector (`app=postgres`, `job-name=x`), sorted by creation time.
pub async fn pods_with_labels(cluster: &Cluster, selector: &str) -> Result<Vec<Pod>, OpsError> {
    let list = cluster
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| classify(e, cluster, Op::new("list", "pods", selector)))?;
    let mut pods = list.items;
    pods.sort_by(|a, b| {
        let ka = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let kb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        ka.cmp(&kb)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    Ok(pods)
}

/// The pod's name ("" when unnamed).
pub fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

/// The name of a (rendered) pod's first container: the one to exec into for a one-container
/// helper pod like the backups loader.
pub fn first_container(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
}

/// The pod's phase (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Unknown")
}

/// Whether the pod's `Ready` condition is `True` and the pod is not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `postgres-abc: Pending, PodScheduled=False Unschedulable (0/1 nodes...), db waiting: ContainerCreating`.
pub fn pod_summary(pod: &Pod) -> String {
    let mut parts = vec![pod_phase(pod).to_string()];
    if pod.metadata.deletion_timestamp.is_some() {
        parts.push("terminating".into());
    }
    if let Some(status) = &pod.status {
        for c in status.conditions.iter().flatten() {
            if c.status != "True" && c.reason.is_some() {
                let mut s = format!(
                    "{}={} {}",
                    c.type_,
                    c.status,
                    c.reason.as_deref().unwrap_or("")
                );
                if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
                    s.push_str(&format!(" ({m})"));
                }
                parts.push(s);
            }
        }
        let all = container_statuses(status);
        for (init, c) in all {
            let Some(state) = &c.state else { continue };
            let prefix = if init { "init " } else { "" };
            if let Some(w) = &state.waiting {
                parts.push(format!(
                    "{prefix}{} waiting: {}{}",
                    c.name,
                    w.reason.as_deref().unwrap_or("-"),
                    w.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ));
            } else if let Some(t) = &state.terminated
                && t.exit_code != 0
            {
                parts.push(format!(
                    "{prefix}{} terminated: exit {} {}",
                    c.name,
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("")
                ));
            }
            if c.restart_count > 0 {
                parts.push(format!("{prefix}{} restarts: {}", c.name, c.restart_count));
            }
        }
    }
    format!("{}: {}", pod_name(pod), parts.join(", "))
}

/// Details for a timeout: one summary line and the events of each pod.
pub(crate) async fn pod_details(cluster: &Cluster, pods: &[Pod]) -> String {
    let mut out = String::new();
    for p in pods {
        out.push_str(&format!("pod {}\n", pod_summary(p)));
        for e in events_or_note(cluster, "Pod", pod_name(p)).await {
            out.push_str(&format!("  {e}\n"));
        }
    }
    out
}

/// Result of [`loader_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderUp {
    pub pod: String,
    /// Whether this call created the pod (false: it already existed).
    pub created: bool,
}

/// Make sure the helper pod `pod` exists and is Running: create it when missing, then wait.
///
/// A pod that exists but has ended (Succeeded/Failed) is reported, not replaced: delete it
/// with [`loader_down`] first.
pub async fn loader_up(cluster: &Cluster, pod: &Pod, wait: Wait) -> Result<LoaderUp, OpsError> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| OpsError::InvalidObject {
            message: "the loader pod has no metadata.name".into(),
            hint: "render the pod with its name (settings: the backups-loader pod)".into(),
        })?;
    let api = cluster.api::<Pod>();
    let created = match api.get(&name).await {
        Ok(existing) if is_ready(&existing) => {
            return Ok(LoaderUp {
                pod: name,
                created: false,
            });
        }
        Ok(_) => false,
        Err(e) if api_code(&e) == Some(404) => {
            match api.create(&PostParams::default(), pod).await {
                Ok(_) => true,
                Err(e) if api_code(&e) == Some(409) => false,
                Err(e) => return Err(classify(e, cluster, Op::new("create", "pods", &name))),
            }
        }
        Err(e) => return Err(classify(e, cluster, Op::new("get", "pods", &name))),
    };
    wait_running(cluster, &name, wait).await?;
    Ok(LoaderUp { pod: name, created })
}

/// Wait until pod `name` is Running and Ready (its containers started and, with a readiness
/// probe, passing it; a crash-looping container keeps it not Ready).
pub async fn wait_running(cluster: &Cluster, name: &str, wait: Wait) -> Result<Pod, OpsError> {
    let api = cluster.api::<Pod>();
    let start = Instant::now();
    loop {
        let pod = api
            .get(name)
            .await
            .map_err(|e| classify(e, cluster, Op::new("get", "pods", name)))?;
        match pod_phase(&pod) {
            "Running" if is_ready(&pod) => return Ok(pod),
            phase @ ("Succeeded" | "Failed") => {
                return Err(OpsError::Refused {
                    action: format!("use pod {name}"),
                    why: format!("it has already ended ({phase})"),
                    hint: format!(
                        "delete it (`pgkeep loader down`, or `kubectl -n {} delete pod {name}`) and run the command again",
                        cluster.namespace
                    ),
                });
            }
            _ => {}
        }
        if start.elapsed() >= wait.timeout {
            return Err(OpsError::Timeout {
                what: format!("pod {name} to be Running and Ready"),
                after: wait.timeout,
                details: pod_details(cluster, std::slice::from_ref(&pod)).await,
                hint: "a Pending pod usually waits for its PersistentVolumeClaim to bind or for an image; see the events above".into(),
            });
        }
        tokio::time::sleep(wait.interval).await;
    }
}

/// Result of [`loader_down`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoaderDown {
    /// The pod was asked to terminate (it disappears once its grace period ends).
    Deleted { pod: String },
    /// There was no such pod.
    Absent { pod: String },
}

/// Delete the helper pod `name`; a missing pod is not an error. Does not wait for it to go.
pub async fn loader_down(cluster: &Cluster, name: &str) -> Result<LoaderDown, OpsError> {
    match cluster
        .api::<Pod>()
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(LoaderDown::Deleted { pod: name.into() }),
        Err(e) if api_code(&e) == Some(404) => {
            let err = classify(e, cluster, Op::new("delete", "pods", name));
            match err {
                OpsError::NamespaceNotFound { .. } => Err(err),
                _ => Ok(LoaderDown::Absent { pod: name.into() }),
            }
        }
        Err(e) => Err(classify(e, cluster, Op::new("delete", "pods", name))),
    }
}

/// The first Ready pod with label `app=<app>` (the db pod for exec), or a NotFound error that
/// says to scale up.
pub async fn ready_pod(cluster: &Cluster, app: &str) -> Result<Pod, OpsError> {
    let pods = pods_with_labels(cluster, &format!("app={app}")).await?;
    let summaries: Vec<String> = pods.iter().map(pod_summary).collect();
    pods.into_iter()
        .find(is_ready)
        .ok_or_else(|| OpsError::NotFound {
            resource: "ready pod".into(),
            name: format!("app={app}"),
            namespace: cluster.namespace.clone(),
            hint: if summaries.is_empty() {
                "no pod runs: `pgkeep scale 1` starts PostgreSQL".into()
            } else {
                format!(
                    "pods: {}; wait for them or see `pgkeep debug perms`",
                    summaries.join("; ")
                )
            },
        })
}

/// The verdict on the db container's mounts of the data volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountVerdict {
    /// Mounted only at the root (`/var/lib/postgresql`), PGDATA is a subdirectory.
    Ok,
    /// Something is mounted at PGDATA itself (the double-mount pitfall).
    PgdataIsAMount { volumes: Vec<String> },
    /// Nothing is mounted at the root: PGDATA lives in the container's filesystem (or an image VOLUME).
    RootNotMounted,
    /// The container is not in the pod.
    NoSuchContainer,
}

/// The mounts of `container` (`volume -> path`, in order) and the verdict for `pgroot`/`pgdata`.
pub fn mount_check(
    pod: &Pod,
    container: &str,
    pgroot: &str,
    pgdata: &str,
) -> (Vec<(String, String)>, MountVerdict) {
    let Some(c) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
    else {
        return (Vec::new(), MountVerdict::NoSuchContainer);
    };
    let norm = |p: &str| p.trim_end_matches('/').to_string();
    let mounts: Vec<(String, String)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    let at_pgdata: Vec<String> = mounts
        .iter()
        .filter(|(_, p)| norm(p) == norm(pgdata))
        .map(|(n, _)| n.clone())
        .collect();
    let verdict = if !at_pgdata.is_empty() {
        MountVerdict::PgdataIsAMount { volumes: at_pgdata }
    } else if !mounts.iter().any(|(_, p)| norm(p) == norm(pgroot)) {
        MountVerdict::RootNotMounted
    } else {
        MountVerdict::Ok
    };
    (mounts, verdict)
}

/// Every container status of a pod, init containers first, each with whether it is one.
pub(crate) fn container_statuses(
    status: &PodStatus,
) -> impl Iterator<Item = (bool, &ContainerStatus)> {
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.map(|c| (true, c)).chain(main.map(|c| (false, c)))
}
