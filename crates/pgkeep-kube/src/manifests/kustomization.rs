//! The two kustomization files: the base (Deployment, Service, CronJobs; no PVCs, no Secret)
//! and the dev overlay (the base; the on-demand Jobs stay out, applying one would run it).

use serde::{Deserialize, Serialize};

/// The subset of `kustomize.config.k8s.io/v1beta1` Kustomization that pgkeep writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub resources: Vec<String>,
}

impl Kustomization {
    pub fn new(namespace: &str, resources: &[&str]) -> Self {
        Kustomization {
            api_version: "kustomize.config.k8s.io/v1beta1".to_owned(),
            kind: "Kustomization".to_owned(),
            namespace: Some(namespace.to_owned()),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}
