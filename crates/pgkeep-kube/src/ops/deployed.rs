//! The deployed settings (the `pgkeep.toml` in the settings ConfigMap that every pod reads)
//! against the settings of this CLI. A `--kube` command runs [`check_deployed`] after
//! connecting: differing keys are named; destructive work (prune, wipe, bootstrap, restore) is
//! refused until `deploy` is rerun, unless the caller chose to act with the deployed settings.
//!
//! Requests: `GET .../configmaps/NAME` only.

use k8s_openapi::api::core::v1::ConfigMap;
use pgkeep_engine::settings::{Settings, Target};

use super::error::{Op, api_code, classify};
use super::{Cluster, OpsError};
use crate::manifests::common::{SETTINGS_FILE, settings_config_map};
use crate::manifests::config::{KeyDiff, drift, parse_deployed};

/// What the caller is about to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Reads only, or work whose pods read the deployed settings anyway: differences are
    /// reported and the command goes on.
    Read,
    /// Destructive work, described for the refusal (`wipe the data volume`).
    Destroy(String),
}

/// The outcome of [`check_deployed`]: the settings to act with and what to tell the user.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsCheck {
    /// The local settings, or with `use_deployed` the deployed ones (target, namespace and
    /// context kept from the local settings: they say where this CLI acts).
    pub settings: Settings,
    /// The keys that differ (empty when the deployed settings are the local ones).
    pub differences: Vec<KeyDiff>,
    /// Lines to print (warnings, "using the deployed settings").
    pub notes: Vec<String>,
}

/// `GET configmaps/NAME`: the deployed `pgkeep.toml`, or None when the ConfigMap (or the key)
/// is missing.
pub async fn deployed_text(cluster: &Cluster, name: &str) -> Result<Option<String>, OpsError> {
    match cluster.api::<ConfigMap>().get(name).await {
        Ok(cm) => Ok(cm.data.and_then(|mut d| d.remove(SETTINGS_FILE))),
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(classify(e, cluster, Op::new("get", "configmaps", name))),
    }
}

/// Compare `local` with the settings deployed in the cluster; see the module docs.
pub async fn check_deployed(
    cluster: &Cluster,
    local: &Settings,
    intent: &Intent,
    use_deployed: bool,
) -> Result<SettingsCheck, OpsError> {
    let name = settings_config_map(local);
    let text = deployed_text(cluster, &name).await?;
    let deploy_hint = "run `pgkeep --kube deploy` with these settings first (it writes them to the ConfigMap every pod reads)";
    let problem = match text.as_deref().map(parse_deployed) {
        None => Some(format!(
            "configmap/{name} with the settings the pods read is missing in namespace {} (deployed by an older pgkeep, or never)",
            cluster.namespace
        )),
        Some(Err(e)) => Some(format!(
            "the settings in configmap/{name} cannot be read ({})",
            e.lines().next().unwrap_or_default()
        )),
        Some(Ok(_)) => None,
    };
    if let Some(why) = problem {
        return match intent {
            Intent::Read => Ok(SettingsCheck {
                settings: local.clone(),
                differences: Vec::new(),
                notes: vec![format!("warning: {why}; {deploy_hint}")],
            }),
            Intent::Destroy(action) => Err(OpsError::Refused {
                action: action.clone(),
                why,
                hint: deploy_hint.into(),
            }),
        };
    }
    let deployed = parse_deployed(text.as_deref().unwrap_or_default()).expect("parsed above");
    let differences = drift(local, &deployed);
    if differences.is_empty() {
        return Ok(SettingsCheck {
            settings: local.clone(),
            differences,
            notes: Vec::new(),
        });
    }
    let listed: String = differences.iter().map(|d| format!("\n  {d}")).collect();
    if use_deployed {
        let mut settings = deployed;
        settings.target = Target::Kube;
        settings.kube.namespace = local.kube.namespace.clone();
        settings.kube.context = local.kube.context.clone();
        return Ok(SettingsCheck {
            settings,
            notes: vec![format!(
                "using the deployed settings (--use-deployed), not the local ones, for:{listed}"
            )],
            differences,
        });
    }
    match intent {
        Intent::Read => Ok(SettingsCheck {
            settings: local.clone(),
            notes: vec![format!(
                "warning: the pods run with the deployed settings, which differ from these:{listed}\nhint: {deploy_hint}, or pass --use-deployed"
            )],
            differences,
        }),
        Intent::Destroy(action) => Err(OpsError::SettingsDiffer {
            action: action.clone(),
            configmap: name,
            keys: listed,
        }),
    }
}
