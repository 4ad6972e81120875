//! The error type of every operation, and the mapping from a raw `kube::Error` to it.
//!
//! A raw API error ("ApiError: ... (Status { ... })") does not tell an operator what to do.
//! `classify` turns it into an [`OpsError`] naming the verb, the resource, the namespace and
//! the cluster, with a `hint:` line: 403 → [`OpsError::Forbidden`], 404 on the namespace →
//! [`OpsError::NamespaceNotFound`], other 404 → [`OpsError::NotFound`], 409 →
//! [`OpsError::AlreadyExists`], 401 → [`OpsError::Unauthorized`], transport failures →
//! [`OpsError::NoCluster`]. No message ever carries a secret: request bodies are never quoted.

use std::fmt;
use std::time::Duration;

use super::Cluster;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(
        "no cluster reachable via {via}: {message}\nhint: check that the cluster is running and that `kubectl get namespaces` works with the same kubeconfig; pick another context with --context"
    )]
    NoCluster { via: String, message: String },

    #[error(
        "could not load the Kubernetes configuration ({via}): {message}\nhint: set KUBECONFIG or pass --context with a context from `kubectl config get-contexts`; inside a pod, mount a service account token"
    )]
    Config { via: String, message: String },

    #[error(
        "unauthorized: the cluster rejected the credentials of {via}\nhint: log in again or refresh the kubeconfig's token, or pick another context with --context"
    )]
    Unauthorized { via: String },

    #[error(
        "namespace {namespace} not found\nhint: create it (`kubectl create namespace {namespace}`) or pass --namespace with an existing one"
    )]
    NamespaceNotFound { namespace: String },

    #[error(
        "forbidden: cannot {verb} {resource} in namespace {namespace}\nhint: grant `{verb}` on `{resource}` with a Role and RoleBinding for this user or service account, or use a context whose user may (server said: {message})"
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
        message: String,
    },

    #[error("{resource} {name} not found in namespace {namespace}\nhint: {hint}")]
    NotFound {
        resource: String,
        name: String,
        namespace: String,
        hint: String,
    },

    #[error("{resource} {name} already exists in namespace {namespace}\nhint: {hint}")]
    AlreadyExists {
        resource: String,
        name: String,
        namespace: String,
        hint: String,
    },

    #[error("the server ({server}) does not serve {kind} in {api_version}\nhint: {hint}")]
    ApiNotServed {
        api_version: String,
        kind: String,
        server: String,
        hint: String,
    },

    #[error(
        "{object}: {field} needs Kubernetes {needs} or newer, the server is {server}\nhint: {hint}"
    )]
    TooOld {
        /// `CronJob pgkeep-backup-logical`.
        object: String,
        field: &'static str,
        needs: &'static str,
        server: String,
        hint: String,
    },

    #[error(
        "the server rejected `{request}` in namespace {namespace}: {code} {message}\nhint: {hint}"
    )]
    Api {
        /// `patch deployments/scale postgres`.
        request: String,
        namespace: String,
        code: u16,
        /// The server's reason and message.
        message: String,
        hint: String,
    },

    #[error("timed out after {}s waiting for {what}\n{details}hint: {hint}", after.as_secs())]
    Timeout {
        what: String,
        after: Duration,
        /// Pod states and recent events, one per line, each line ending in '\n'.
        details: String,
        hint: String,
    },

    #[error("{0}")]
    JobFailed(Box<JobFailure>),

    /// The stop signal (Ctrl-C) arrived before the destructive Job was created; what was
    /// undone and the state the cluster is in.
    #[error("interrupted {when}: {state}\nhint: {hint}")]
    Interrupted {
        /// `before the wipe Job was created`.
        when: String,
        state: String,
        hint: String,
    },

    /// A waited-for pod has a container that will not start by waiting (see `ops::watch`).
    #[error("{0}")]
    PodFailing(Box<super::watch::PodFailure>),

    #[error("refusing to {action}: {why}\nhint: {hint}")]
    Refused {
        action: String,
        why: String,
        hint: String,
    },

    #[error(
        "refusing to {action}: the local settings differ from the deployed ones (configmap/{configmap}), which the pods read:{keys}\nhint: nothing was changed; run `pgkeep --kube deploy` to deploy these settings, or pass --use-deployed to act with the deployed ones"
    )]
    SettingsDiffer {
        action: String,
        configmap: String,
        /// One `\n  key: here X, deployed Y` per differing key.
        keys: String,
    },

    #[error("invalid object: {message}\nhint: {hint}")]
    InvalidObject { message: String, hint: String },

    #[error("`{command}` in pod {pod} failed: {message}\nhint: {hint}")]
    Exec {
        pod: String,
        command: String,
        message: String,
        hint: String,
    },

    #[error("upload of {path} to pod {pod}:{dest} failed: {message}\nhint: {hint}")]
    Upload {
        path: String,
        pod: String,
        dest: String,
        message: String,
        hint: String,
    },

    #[error("following the logs of pod {pod} failed: {message}\nhint: {hint}")]
    Logs {
        pod: String,
        message: String,
        hint: String,
    },

    #[error("could not read {path}: {source}\nhint: check the path and that this user may read it")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything known about a failed Job: its name, its last pod, the reason Kubernetes gives,
/// the last log lines, and the events of the pod and the Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub job: String,
    pub namespace: String,
    pub pod: Option<String>,
    pub reason: String,
    pub last_lines: Vec<String>,
    pub events: Vec<String>,
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} failed: {}", self.job, self.reason)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod})")?;
        }
        writeln!(f)?;
        if self.last_lines.is_empty() {
            writeln!(f, "--- no log lines ---")?;
        } else {
            writeln!(f, "--- last {} log lines ---", self.last_lines.len())?;
            for l in &self.last_lines {
                writeln!(f, "{l}")?;
            }
        }
        if self.events.is_empty() {
            writeln!(f, "--- no events ---")?;
        } else {
            writeln!(f, "--- events ---")?;
            for e in &self.events {
                writeln!(f, "{e}")?;
            }
        }
        write!(
            f,
            "hint: the Job is kept for inspection: `kubectl -n {} describe job/{}`, `kubectl -n {} logs job/{}`; delete it when done",
            self.namespace, self.job, self.namespace, self.job
        )
    }
}

/// The operation a request was part of, for [`classify`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    /// `get`, `create`, `patch`, `list`, `delete`, ...
    pub verb: &'a str,
    /// Resource (plural, optionally with subresource): `deployments/scale`.
    pub resource: &'a str,
    pub name: &'a str,
    /// Hint for a 404 on the object itself.
    pub not_found_hint: &'a str,
}

impl<'a> Op<'a> {
    pub fn new(verb: &'a str, resource: &'a str, name: &'a str) -> Self {
        Op {
            verb,
            resource,
            name,
            not_found_hint: "check the name and the namespace (--namespace)",
        }
    }

    /// `verb resource name`.
    pub fn request(&self) -> String {
        format!("{} {} {}", self.verb, self.resource, self.name)
    }

    pub fn hint_404(mut self, hint: &'a str) -> Self {
        self.not_found_hint = hint;
        self
    }
}

/// The HTTP status code of an API error, if it is one.
pub(crate) fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Map a kube error to an [`OpsError`] naming the operation.
pub(crate) fn classify(err: kube::Error, cluster: &Cluster, op: Op<'_>) -> OpsError {
    classify_in(err, cluster, &cluster.namespace, op)
}

pub(crate) fn classify_in(
    err: kube::Error,
    cluster: &Cluster,
    namespace: &str,
    op: Op<'_>,
) -> OpsError {
    match err {
        kube::Error::Api(status) => {
            let is_namespace = status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces" && (d.name == namespace || d.name.is_empty()))
                || status.message == format!("namespaces \"{namespace}\" not found");
            match status.code {
                401 => OpsError::Unauthorized {
                    via: cluster.via.clone(),
                },
                403 => OpsError::Forbidden {
                    verb: op.verb.into(),
                    resource: op.resource.into(),
                    namespace: namespace.into(),
                    message: status.message.clone(),
                },
                404 if is_namespace => OpsError::NamespaceNotFound {
                    namespace: namespace.into(),
                },
                404 => OpsError::NotFound {
                    resource: op.resource.into(),
                    name: op.name.into(),
                    namespace: namespace.into(),
                    hint: op.not_found_hint.into(),
                },
                409 => OpsError::AlreadyExists {
                    resource: op.resource.into(),
                    name: op.name.into(),
                    namespace: namespace.into(),
                    hint: "another client created it at the same time; run the command again".into(),
                },
                code => OpsError::Api {
                    request: op.request(),
                    namespace: namespace.into(),
                    code,
                    message: format!("{}: {}", status.reason, status.message),
                    hint: match code {
                        422 => "the object is invalid for this server; check the field named above (`pgkeep lint`)".into(),
                        500..=599 => "the API server failed; retry, and check the control plane's health".into(),
                        _ => "see the server's message above".into(),
                    },
                },
            }
        }
        kube::Error::Auth(e) => OpsError::Config {
            via: cluster.via.clone(),
            message: e.to_string(),
        },
        kube::Error::InferConfig(e) => OpsError::Config {
            via: cluster.via.clone(),
            message: e.to_string(),
        },
        kube::Error::InferKubeconfig(e) => OpsError::Config {
            via: cluster.via.clone(),
            message: e.to_string(),
        },
        kube::Error::SerdeError(e) => OpsError::Api {
            request: op.request(),
            namespace: namespace.into(),
            code: 0,
            message: format!("UnreadableResponse: {e}"),
            hint: "the server's answer did not have the expected shape; is this a Kubernetes API server?".into(),
        },
        kube::Error::UpgradeConnection(e) => OpsError::Api {
            request: op.request(),
            namespace: namespace.into(),
            code: 0,
            message: format!("the websocket upgrade failed: {}", error_chain(&e)),
            hint: "exec and logs need websockets: a proxy between pgkeep and the API server may not pass them".into(),
        },
        other => OpsError::NoCluster {
            via: cluster.via.clone(),
            message: error_chain(&other),
        },
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}
