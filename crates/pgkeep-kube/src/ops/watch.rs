//! No silent waits: while a flow waits for pods (`scale 1`, `deploy --wait`, a Job's pod), a
//! [`PodWatch`] reports each pod's phase and container states when they change, and the
//! pod's new events, as `info` log lines (target `pgkeep::wait`: plain lines on stderr, above
//! the spinner on a terminal). A container that cannot get better by waiting
//! ([`HOPELESS`]: CrashLoopBackOff, ImagePullBackOff, ErrImagePull, ...) ends the wait at once
//! with [`OpsError::PodFailing`], carrying the container's last log lines and the pod's events.
//!
//! Switched on by [`Wait::watch`](super::Wait); requests per look, for each pod that is not
//! Ready: `GET .../events?fieldSelector=involvedObject.kind=Pod,involvedObject.name=POD`, and
//! for a hopeless container `GET .../pods/POD/log?container=C&tailLines=20`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;

use super::error::{Op, classify};
use super::events::events_or_note;
use super::pods::{container_statuses, is_ready, pod_name, pod_summary};
use super::{Cluster, OpsError};

/// Waiting reasons after which a container does not start by itself.
pub const HOPELESS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// Log lines of a failing container shown in the error.
pub const FAILING_TAIL_LINES: i64 = 20;

/// A container stuck in one of the [`HOPELESS`] states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hopeless {
    pub container: String,
    pub init: bool,
    pub reason: String,
    pub message: String,
}

/// The first container of `pod` (init containers first) waiting in a [`HOPELESS`] state.
pub fn hopeless_container(pod: &Pod) -> Option<Hopeless> {
    let status = pod.status.as_ref()?;
    let all = container_statuses(status);
    for (init, c) in all {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or("");
        if HOPELESS.contains(&reason) {
            return Some(Hopeless {
                container: c.name.clone(),
                init,
                reason: reason.to_owned(),
                message: w.message.clone().unwrap_or_default(),
            });
        }
    }
    None
}

/// What a wait has reported so far.
#[derive(Debug, Default)]
pub struct PodWatch {
    summaries: BTreeMap<String, String>,
    events: BTreeSet<String>,
}

impl PodWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Report what changed in `pods` since the last look and their new events; with
    /// `fail_early`, a hopeless container ends the wait with [`OpsError::PodFailing`].
    pub async fn observe(
        &mut self,
        cluster: &Cluster,
        pods: &[Pod],
        fail_early: bool,
    ) -> Result<(), OpsError> {
        for pod in pods {
            let name = pod_name(pod).to_string();
            let summary = pod_summary(pod);
            if self.summaries.get(&name) != Some(&summary) {
                tracing::info!(target: "pgkeep::wait", "pod {summary}");
                self.summaries.insert(name.clone(), summary);
            }
            if is_ready(pod) {
                continue;
            }
            let events = events_or_note(cluster, "Pod", &name).await;
            for e in &events {
                // An event that repeats (`(x2)`, `(x3)`, ...) is reported once.
                if self.events.insert(without_count(e)) {
                    tracing::info!(target: "pgkeep::wait", "{e}");
                }
            }
            if !fail_early {
                continue;
            }
            if let Some(h) = hopeless_container(pod) {
                let last_lines = last_lines(cluster, &name, &h.container).await;
                return Err(OpsError::PodFailing(Box::new(PodFailure {
                    pod: name,
                    namespace: cluster.namespace.clone(),
                    hopeless: h,
                    last_lines,
                    events,
                })));
            }
        }
        Ok(())
    }
}

/// An event line without its repeat count (`Warning BackOff pod/x (x3): m` → `... pod/x: m`).
fn without_count(line: &str) -> String {
    if let Some(start) = line.find(" (x")
        && let Some(len) = line[start + 3..].find("):")
        && line[start + 3..start + 3 + len]
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return format!("{}{}", &line[..start], &line[start + 4 + len..]);
    }
    line.to_owned()
}

/// The container's last lines (its last run's, for a crash-looping one), or one line saying
/// why there are none (an image that was never pulled has no log).
async fn last_lines(cluster: &Cluster, pod: &str, container: &str) -> Vec<String> {
    let lp = LogParams {
        container: Some(container.to_owned()),
        tail_lines: Some(FAILING_TAIL_LINES),
        ..LogParams::default()
    };
    match cluster.api::<Pod>().logs(pod, &lp).await {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) => vec![format!(
            "(no log: {})",
            classify(e, cluster, Op::new("get", "pods/log", pod))
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
        )],
    }
}

/// Everything [`OpsError::PodFailing`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub pod: String,
    pub namespace: String,
    pub hopeless: Hopeless,
    pub last_lines: Vec<String>,
    pub events: Vec<String>,
}

impl std::fmt::Display for PodFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.hopeless;
        write!(
            f,
            "pod {}: {}container {} is in {}",
            self.pod,
            if h.init { "init " } else { "" },
            h.container,
            h.reason
        )?;
        if !h.message.is_empty() {
            write!(f, " ({})", h.message)?;
        }
        writeln!(f, "; waiting longer will not help")?;
        writeln!(
            f,
            "--- last {} log lines of {} ---",
            self.last_lines.len(),
            h.container
        )?;
        for l in &self.last_lines {
            writeln!(f, "{l}")?;
        }
        if !self.events.is_empty() {
            writeln!(f, "--- events ---")?;
            for e in &self.events {
                writeln!(f, "{e}")?;
            }
        }
        let hint = if h.reason == "CrashLoopBackOff" {
            format!(
                "the container exits right after it starts; its log above says why (e.g. an empty password in a hand-made Secret). Fix that and try again; `kubectl -n {} logs {} -c {} --previous` and `pgkeep --kube debug perms` show more",
                self.namespace, self.pod, h.container
            )
        } else if h.reason.contains("Image") {
            "the node cannot pull the image: check the kube.image setting (PGKEEP_IMAGE) and that the cluster can reach its registry (or that the image was loaded into the node)".to_string()
        } else {
            format!(
                "the container cannot be created: `kubectl -n {} describe pod {}` shows why (a missing Secret or ConfigMap: `pgkeep --kube deploy` creates them)",
                self.namespace, self.pod
            )
        };
        write!(f, "hint: {hint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_is_the_same_event() {
        assert_eq!(
            without_count("Warning FailedCreatePodSandBox pod/p (x12): no pause image"),
            "Warning FailedCreatePodSandBox pod/p: no pause image"
        );
        assert_eq!(
            without_count("Warning FailedCreatePodSandBox pod/p: no pause image"),
            "Warning FailedCreatePodSandBox pod/p: no pause image"
        );
        assert_eq!(
            without_count("Normal Pulled pod/p: image (xyz): present"),
            "Normal Pulled pod/p: image (xyz): present"
        );
    }
}
