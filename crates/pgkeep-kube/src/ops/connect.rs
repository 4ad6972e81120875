//! Connecting: a [`Cluster`] from the kubeconfig (its current context or a named one, from
//! `KUBECONFIG`/`~/.kube/config` or an explicit file) or, inside a pod, from the service
//! account (in-cluster config); the namespace always comes from the caller (settings /
//! `--namespace`), never from the kubeconfig.
//!
//! [`connect`] also probes the cluster ([`probe`]): `GET /version` (no cluster reachable →
//! [`OpsError::NoCluster`] naming the context) and `GET /api/v1/namespaces/NS` (404 →
//! [`OpsError::NamespaceNotFound`]; 403 is accepted, since a namespaced user may not read
//! namespaces).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::apply::{ServerVersion, server_version};
use super::error::{Op, api_code, classify, error_chain};
use super::{Cluster, OpsError};

/// Where to find the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The kubeconfig context; `None` for the current context (or in-cluster config in a pod).
    pub context: Option<String>,
    /// An explicit kubeconfig file instead of `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The namespace to act in.
    pub namespace: String,
}

impl ConnectOptions {
    /// From the settings' `kube.context` (empty: current) and `kube.namespace`.
    pub fn from_settings(kube: &pgkeep_engine::settings::Kube) -> Self {
        ConnectOptions {
            context: Some(kube.context.clone()).filter(|c| !c.is_empty()),
            kubeconfig: None,
            namespace: kube.namespace.clone(),
        }
    }

    /// How the client is configured, for messages.
    pub fn describe(&self) -> String {
        let file = self
            .kubeconfig
            .as_ref()
            .map(|p| format!(" in {}", p.display()))
            .unwrap_or_default();
        match &self.context {
            Some(c) => format!("kubeconfig context \"{c}\"{file}"),
            None => {
                format!("the current kubeconfig context{file} (or the in-cluster service account)")
            }
        }
    }
}

/// Build the client (no request is made).
pub async fn client(opts: &ConnectOptions) -> Result<Cluster, OpsError> {
    let via = opts.describe();
    let cfg_err = |message: String| OpsError::Config {
        via: via.clone(),
        message,
    };
    let kube_opts = KubeConfigOptions {
        context: opts.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match (&opts.kubeconfig, &opts.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| cfg_err(error_chain(&e)))?;
            Config::from_custom_kubeconfig(kc, &kube_opts)
                .await
                .map_err(|e| cfg_err(error_chain(&e)))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&kube_opts)
            .await
            .map_err(|e| cfg_err(error_chain(&e)))?,
        // Kubeconfig first, then the in-cluster service account.
        (None, None) => Config::infer()
            .await
            .map_err(|e| cfg_err(error_chain(&e)))?,
    };
    config.default_namespace = opts.namespace.clone();
    let client = Client::try_from(config).map_err(|e| cfg_err(error_chain(&e)))?;
    Ok(Cluster::new(client, opts.namespace.clone()).with_via(via))
}

/// Build the client and [`probe`] the cluster.
pub async fn connect(opts: &ConnectOptions) -> Result<(Cluster, ServerVersion), OpsError> {
    let cluster = client(opts).await?;
    let version = probe(&cluster).await?;
    Ok((cluster, version))
}

/// Check that the cluster answers and the namespace exists.
pub async fn probe(cluster: &Cluster) -> Result<ServerVersion, OpsError> {
    let version = server_version(cluster).await?;
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    match api.get(&cluster.namespace).await {
        Ok(_) => Ok(version),
        Err(e) if api_code(&e) == Some(404) => Err(OpsError::NamespaceNotFound {
            namespace: cluster.namespace.clone(),
        }),
        // A user limited to its namespace may not read namespace objects: not an error.
        Err(e) if api_code(&e) == Some(403) => Ok(version),
        Err(e) => Err(classify(
            e,
            cluster,
            Op::new("get", "namespaces", &cluster.namespace),
        )),
    }
}
