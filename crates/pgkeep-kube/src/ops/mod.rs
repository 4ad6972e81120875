//! Operations against a live cluster through the Kubernetes API: every seed Makefile flow
//! (`pg.pvc.ensure`, `pg.deploy`, `pg.scale0/1`, the restore/wipe Jobs, the backups-loader pod,
//! `kubectl cp`) as a library call.
//!
//! Every operation takes a [`Cluster`]: an injected [`kube::Client`] plus the namespace to act in
//! and a description of where the client came from (for error messages). There is no global
//! client; tests build a `Cluster` around a `tower_test` mock service and assert the exact
//! requests. Errors are [`OpsError`]: each message names what is missing or refused and ends
//! with a `hint:` line saying what to do.
//!
//! One file per concern:
//! - [`connect`]: kubeconfig (current or named context), in-cluster config, reachability probe.
//! - [`deployed`]: the deployed settings (ConfigMap) against the CLI's; refusal on drift.
//! - [`pvc`]: create missing PersistentVolumeClaims, report existing ones, never change them.
//! - [`secret`]: the superuser Secret, created with a random password only when missing.
//! - [`apply`]: server-side apply (field manager `pgkeep`) and adaptation to old servers.
//! - [`scale`]: the Deployment's scale subresource, waiting for pods to go or become Ready;
//!   waiting for a rollout.
//! - [`job`]: run a Job, stream its logs, return its result; Jobs from CronJob templates.
//! - [`pods`]: pod lookups, readiness, the backups-loader pod.
//! - [`events`]: the events of an object, for error reports.
//! - [`exec`]: the [`exec::Exec`] and [`exec::LogStream`] traits, their kube implementations,
//!   and the upload protocol (`pgkeep receive --size N --sha256 H DEST`).
//! - [`flows`]: the seed's multi-step flows (deploy, scale down + Job, restore upload, debug
//!   perms, a command in the db pod).
//! - [`watch`]: what a wait shows (pod states, new events) and its early end on a crash loop.
//! - `fake`: recording fakes of those traits, for tests of the flows without a kubelet (feature
//!   `fake`, on for this crate's tests; not in the binary).

pub mod apply;
pub mod connect;
pub mod deployed;
pub mod error;
pub mod events;
pub mod exec;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod flows;
pub mod job;
pub mod pods;
pub mod pvc;
pub mod scale;
pub mod secret;
pub mod watch;

use std::time::Duration;

pub use error::{JobFailure, OpsError};

/// The field manager of every server-side apply pgkeep does.
pub const FIELD_MANAGER: &str = "pgkeep";

/// A cluster to act on: the injected client, the namespace, and how the client was configured.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    /// Where the client came from, for messages: e.g. `kubeconfig context "kubebox"`.
    pub via: String,
}

impl Cluster {
    /// Wrap an existing client (e.g. a test's mock) to act in `namespace`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        Cluster {
            client,
            namespace: namespace.into(),
            via: "the configured client".into(),
        }
    }

    /// Describe where the client came from (used in "no cluster reachable via ..." messages).
    pub fn with_via(mut self, via: impl Into<String>) -> Self {
        self.via = via.into();
        self
    }

    pub(crate) fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("via", &self.via)
            .finish()
    }
}

/// How long to wait for a condition, and how often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub timeout: Duration,
    pub interval: Duration,
    /// Report pod states and events while waiting and end early on a crash loop or an image
    /// that cannot be pulled ([`watch`]); off by default (no extra requests).
    pub watch: bool,
}

impl Default for Wait {
    /// Five minutes, polling every two seconds (the seed waits `--timeout=300s`).
    fn default() -> Self {
        Wait {
            timeout: Duration::from_secs(300),
            interval: Duration::from_secs(2),
            watch: false,
        }
    }
}

impl Wait {
    pub fn new(timeout: Duration, interval: Duration) -> Self {
        Wait {
            timeout,
            interval,
            watch: false,
        }
    }

    /// The same wait, watched ([`Wait::watch`]).
    pub fn watched(self) -> Self {
        Wait {
            watch: true,
            ..self
        }
    }
}
