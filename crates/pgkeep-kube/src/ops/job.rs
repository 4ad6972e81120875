//! The Job runner shared by `restore dump`, `restore upload`, `wipe`, `bootstrap basebackup`
//! and `backup logical|physical`: create a Job under a unique name, wait for its pod, stream the
//! pod's log lines to a sink as they come, and finish with the Job's result.
//!
//! Requests: `POST apis/batch/v1/namespaces/NS/jobs`; then, every `wait.interval`,
//! `GET api/v1/namespaces/NS/pods?labelSelector=job-name=NAME` (a started pod's log is followed
//! through [`LogStream`] until its container exits) and `GET .../jobs/NAME` until the Job has a
//! `Complete` or `Failed` condition. A failure is an [`OpsError::JobFailed`] carrying the last
//! [`JobRunOptions::tail_lines`] (50) log lines and the events of the pod and the Job. A pod
//! that does not start within `wait.timeout` is an [`OpsError::Timeout`] with the pod's state
//! and events. The Job is never deleted: it stays for inspection.
//!
//! **Ctrl-C stops following, not the Job.** [`run_job`] takes a `stop` future (the binary passes
//! `tokio::signal::ctrl_c()`); when it resolves, the runner returns [`JobOutcome::Detached`]
//! and the Job keeps running in the cluster; the caller should say so and print how to follow
//! it again (`kubectl -n NS logs -f job/NAME`, see `JobOutcome`'s `Display`).
//!
//! [`job_from_cronjob`] builds a Job from a CronJob's `jobTemplate`, like
//! `kubectl create job --from=cronjob/NAME`, for `batch/v1` and `batch/v1beta1` CronJobs alike
//! (their `jobTemplate` is the same); [`fetch_cronjob`] reads a CronJob from whichever of the
//! two versions the server serves.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::Value;
use tokio::time::Instant;

use super::error::{JobFailure, Op, api_code, classify};
use super::events::events_or_note;
use super::exec::LogStream;
use super::pods::{pod_details, pod_name, pod_phase, pods_with_labels};
use super::watch::PodWatch;
use super::{Cluster, OpsError, Wait};

/// Options of [`run_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRunOptions {
    /// How long to wait for a pod to start (and, after a pod ended, for the Job's final
    /// condition), and how often to look. A running pod's log is followed without a limit.
    pub wait: Wait,
    /// Log lines kept for the failure report.
    pub tail_lines: usize,
    /// The container whose log is followed; `None` for the pod's only container.
    pub container: Option<String>,
}

impl Default for JobRunOptions {
    fn default() -> Self {
        JobRunOptions {
            wait: Wait::default(),
            tail_lines: 50,
            container: None,
        }
    }
}

/// How a followed Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The Job completed; `pods` are the pods whose logs were streamed, `last_lines` the last
    /// [`JobRunOptions::tail_lines`] of them (for "show the last 50 lines" without streaming).
    Succeeded {
        job: String,
        namespace: String,
        pods: Vec<String>,
        last_lines: Vec<String>,
    },
    /// Following was stopped (Ctrl-C); the Job keeps running.
    Detached { job: String, namespace: String },
}

impl JobOutcome {
    pub fn job(&self) -> &str {
        match self {
            JobOutcome::Succeeded { job, .. } | JobOutcome::Detached { job, .. } => job,
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobOutcome::Succeeded { job, .. } => write!(f, "job {job} completed"),
            JobOutcome::Detached { job, namespace } => write!(
                f,
                "stopped following job {job}; the Job keeps running in the cluster\n\
                 hint: follow it again with `kubectl -n {namespace} logs -f job/{job}`; stop it with `kubectl -n {namespace} delete job {job}`"
            ),
        }
    }
}

/// `PREFIX-SUFFIX`: the suffix is the time (base 36 seconds, so names sort by creation) plus
/// four random characters; the whole name stays within 63 characters (a label value).
pub fn unique_name(prefix: &str) -> String {
    const B36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut t = Vec::new();
    while secs > 0 {
        t.push(B36[(secs % 36) as usize]);
        secs /= 36;
    }
    t.reverse();
    let mut rnd = [0u8; 4];
    if getrandom::fill(&mut rnd).is_err() {
        rnd = [0, 1, 2, 3];
    }
    let suffix: String = t
        .iter()
        .copied()
        .chain(rnd.iter().map(|b| B36[(*b % 36) as usize]))
        .map(char::from)
        .collect();
    let max_prefix = 63 - 1 - suffix.len();
    let prefix: String = prefix.chars().take(max_prefix).collect();
    let prefix = prefix.trim_end_matches('-');
    let prefix = if prefix.is_empty() { "pgkeep" } else { prefix };
    format!("{prefix}-{suffix}")
}

/// How long a finished Job that pgkeep ran stays for inspection: a week.
pub const JOB_TTL_SECONDS: i32 = 7 * 24 * 3600;

/// Create `job` under a unique name derived from its `metadata.name` (or `generateName`), follow
/// its pod's log into `sink`, and return how it ended; see the module docs. `stop` resolving
/// (e.g. `tokio::signal::ctrl_c()`) stops following and leaves the Job running.
pub async fn run_job<L, W, S>(
    cluster: &Cluster,
    mut job: Job,
    logs: &L,
    sink: &mut W,
    stop: S,
    opts: &JobRunOptions,
) -> Result<JobOutcome, OpsError>
where
    L: LogStream,
    W: Write + Send,
    S: Future<Output = ()>,
{
    let prefix = job
        .metadata
        .name
        .clone()
        .or_else(|| job.metadata.generate_name.clone())
        .unwrap_or_else(|| "pgkeep-job".into());
    let name = unique_name(&prefix);
    job.metadata.name = Some(name.clone());
    job.metadata.generate_name = None;
    job.metadata.namespace = Some(cluster.namespace.clone());
    // One-off Jobs would otherwise pile up (CronJobs have history limits, these do not): the
    // TTL controller removes each a week after it finished, leaving time to inspect a failure.
    // Servers before 1.21 (TTL alpha, off) drop the field; the Job then stays until deleted.
    if let Some(spec) = job.spec.as_mut()
        && spec.ttl_seconds_after_finished.is_none()
    {
        spec.ttl_seconds_after_finished = Some(JOB_TTL_SECONDS);
    }
    let jobs = cluster.api::<Job>();
    jobs.create(&PostParams::default(), &job)
        .await
        .map_err(|e| classify(e, cluster, Op::new("create", "jobs", &name)))?;

    let detached = || JobOutcome::Detached {
        job: name.clone(),
        namespace: cluster.namespace.clone(),
    };
    let selector = format!("job-name={name}");
    let mut stop = std::pin::pin!(stop);
    let mut followed: Vec<String> = Vec::new();
    let mut ring: VecDeque<String> = VecDeque::with_capacity(opts.tail_lines + 1);
    let mut since = Instant::now();
    let mut watch = PodWatch::new();
    loop {
        let pods = tokio::select! {
            r = pods_with_labels(cluster, &selector) => r?,
            _ = &mut stop => return Ok(detached()),
        };
        if opts.wait.watch {
            // The pods not followed yet: a pod that cannot pull its image ends the wait.
            let waiting: Vec<Pod> = pods
                .iter()
                .filter(|p| !started(p) && !followed.iter().any(|f| f == pod_name(p)))
                .cloned()
                .collect();
            tokio::select! {
                r = watch.observe(cluster, &waiting, true) => r?,
                _ = &mut stop => return Ok(detached()),
            }
        }
        for pod in &pods {
            let pname = pod_name(pod).to_string();
            if followed.contains(&pname) || !started(pod) {
                continue;
            }
            followed.push(pname.clone());
            let mut on_line = |line: &str| {
                let _ = writeln!(sink, "{line}");
                let _ = sink.flush();
                if opts.tail_lines > 0 {
                    if ring.len() == opts.tail_lines {
                        ring.pop_front();
                    }
                    ring.push_back(line.to_string());
                }
            };
            let r = tokio::select! {
                r = logs.follow(&pname, opts.container.as_deref(), &mut on_line) => r,
                _ = &mut stop => return Ok(detached()),
            };
            if let Err(e) = r {
                let _ = writeln!(
                    sink,
                    "(log stream of pod {pname} ended early: {})",
                    e.to_string().lines().next().unwrap_or_default()
                );
            }
            since = Instant::now();
        }

        // A pod still running (e.g. its log stream was cut by a proxy) means the Job is
        // progressing: only a Job without a running pod can time out.
        if pods.iter().any(|p| pod_phase(p) == "Running") {
            since = Instant::now();
        }

        let current = tokio::select! {
            r = jobs.get(&name) => r.map_err(|e| classify(e, cluster, Op::new("get", "jobs", &name)))?,
            _ = &mut stop => return Ok(detached()),
        };
        if has_condition(&current, "Complete") {
            return Ok(JobOutcome::Succeeded {
                job: name,
                namespace: cluster.namespace.clone(),
                pods: followed,
                last_lines: ring.into_iter().collect(),
            });
        }
        if has_condition(&current, "Failed") {
            let last_pod = pods.last().map(|p| pod_name(p).to_string());
            let mut last_lines: Vec<String> = ring.into_iter().collect();
            if last_lines.is_empty()
                && let Some(p) = &last_pod
            {
                last_lines = logs
                    .tail(p, opts.container.as_deref(), opts.tail_lines as i64)
                    .await
                    .unwrap_or_default();
            }
            let mut events = Vec::new();
            if let Some(p) = &last_pod {
                events.extend(events_or_note(cluster, "Pod", p).await);
            }
            events.extend(events_or_note(cluster, "Job", &name).await);
            return Err(OpsError::JobFailed(Box::new(JobFailure {
                job: name.clone(),
                namespace: cluster.namespace.clone(),
                pod: last_pod,
                reason: failure_reason(&current),
                last_lines,
                events,
            })));
        }
        if since.elapsed() >= opts.wait.timeout {
            let mut details = pod_details(cluster, &pods).await;
            if pods.is_empty() {
                details.push_str(&format!("no pod with label {selector} yet\n"));
            }
            for e in events_or_note(cluster, "Job", &name).await {
                details.push_str(&format!("job: {e}\n"));
            }
            return Err(OpsError::Timeout {
                what: format!("job {name} to start a pod (or to finish after its pod ended)"),
                after: opts.wait.timeout,
                details,
                hint: format!(
                    "the Job is left in place: `kubectl -n {ns} describe job/{name}`; delete it with `kubectl -n {ns} delete job {name}`",
                    ns = cluster.namespace
                ),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.wait.interval) => {}
            _ = &mut stop => return Ok(detached()),
        }
    }
}

/// A pod whose containers have started, so its log can be read.
fn started(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Running" | "Succeeded" | "Failed")
}

fn has_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

fn failure_reason(job: &Job) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
        .map(|c| {
            let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
            match c.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => format!("{reason}: {m}"),
                None => reason,
            }
        })
        .unwrap_or_else(|| "Failed".into())
}

/// A Job from a CronJob's `jobTemplate` (a JSON `batch/v1` or `batch/v1beta1` CronJob), like
/// `kubectl create job --from=cronjob/NAME NAME`: the template's labels and annotations, the
/// annotation `cronjob.kubernetes.io/instantiate: manual`, and, when the CronJob came from the
/// server (it has a uid), an owner reference to it. `name` is the Job's name, or the prefix
/// [`run_job`] makes unique.
pub fn job_from_cronjob(cronjob: &Value, name: &str) -> Result<Job, OpsError> {
    let api_version = cronjob
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = cronjob.get("kind").and_then(Value::as_str).unwrap_or("");
    let cj_name = cronjob
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "CronJob" || !matches!(api_version, "batch/v1" | "batch/v1beta1") {
        return Err(OpsError::InvalidObject {
            message: format!(
                "expected a batch/v1 or batch/v1beta1 CronJob, got {api_version} {kind} {cj_name}"
            ),
            hint: "pass the CronJob as rendered or as read with ops::job::fetch_cronjob".into(),
        });
    }
    let template = cronjob
        .pointer("/spec/jobTemplate")
        .ok_or_else(|| OpsError::InvalidObject {
            message: format!("CronJob {cj_name} has no spec.jobTemplate"),
            hint: "render the CronJob again (`pgkeep render`)".into(),
        })?;
    let spec: JobSpec = serde_json::from_value(
        template.get("spec").cloned().unwrap_or(Value::Null),
    )
    .map_err(|e| OpsError::InvalidObject {
        message: format!("CronJob {cj_name}: spec.jobTemplate.spec is not a Job spec: {e}"),
        hint: "render the CronJob again (`pgkeep render`)".into(),
    })?;
    let tmeta: ObjectMeta = template
        .get("metadata")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| OpsError::InvalidObject {
            message: format!("CronJob {cj_name}: spec.jobTemplate.metadata: {e}"),
            hint: "render the CronJob again (`pgkeep render`)".into(),
        })?
        .unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    let owner = cronjob
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(|uid| OwnerReference {
            api_version: api_version.into(),
            kind: "CronJob".into(),
            name: cj_name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cronjob
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(Into::into),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// Read CronJob `name` as JSON: `batch/v1` first, then `batch/v1beta1` (Kubernetes < 1.21).
pub async fn fetch_cronjob(cluster: &Cluster, name: &str) -> Result<Value, OpsError> {
    let mut last = None;
    for version in ["v1", "v1beta1"] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("batch", version, "CronJob"),
            "cronjobs",
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
        match api.get(name).await {
            Ok(o) => {
                let mut v = serde_json::to_value(&o).map_err(|e| OpsError::InvalidObject {
                    message: format!("CronJob {name}: {e}"),
                    hint: "report this as a bug".into(),
                })?;
                v["apiVersion"] = format!("batch/{version}").into();
                v["kind"] = "CronJob".into();
                return Ok(v);
            }
            Err(e) if api_code(&e) == Some(404) => {
                let err = classify(
                    e,
                    cluster,
                    Op::new("get", "cronjobs", name)
                        .hint_404("`pgkeep deploy` creates the backup CronJobs"),
                );
                if matches!(err, OpsError::NamespaceNotFound { .. }) {
                    return Err(err);
                }
                last = Some(err);
            }
            Err(e) => return Err(classify(e, cluster, Op::new("get", "cronjobs", name))),
        }
    }
    Err(last.expect("two attempts"))
}
