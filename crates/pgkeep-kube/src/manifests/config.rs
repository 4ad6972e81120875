//! The settings ConfigMap: the one place the pods read their settings from. `deploy` renders
//! the resolved settings into a `pgkeep.toml` in it, every pgkeep container mounts it and
//! points `PGKEEP_CONFIG` at it ([`super::common::pgkeep_container`]). Also the comparison of a
//! laptop's settings with the deployed ones ([`drift`]), which `--kube` commands run before
//! destructive work. Secrets are not settings and never appear here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use pgkeep_engine::settings::{Settings, Target};

use super::common::{Component, SETTINGS_FILE, meta, settings_config_map};

/// Keys that describe where the CLI runs, not what the pods do: never compared, never deployed
/// as the laptop has them (inside a pod the target is always local, the context empty).
pub const LOCAL_ONLY_KEYS: &[&str] = &["target", "kube.context"];

/// The settings as the pods get them: the target is local (a pod acts on its own mounts) and
/// the kubeconfig context means nothing in a pod.
pub fn pod_settings(s: &Settings) -> Settings {
    let mut p = s.clone();
    p.target = Target::Local;
    p.kube.context = String::new();
    p
}

/// The `pgkeep.toml` the pods read: every setting, with a header saying where it came from.
pub fn settings_toml(s: &Settings) -> String {
    let body = toml::to_string(&pod_settings(s)).expect("settings serialise to TOML");
    format!(
        "# Written by `pgkeep deploy` from the settings it was run with. Do not edit: change\n\
         # pgkeep.toml where you run pgkeep and deploy again.\n{body}"
    )
}

/// The ConfigMap holding [`settings_toml`] under `pgkeep.toml`.
pub fn settings_config_map_object(s: &Settings) -> ConfigMap {
    ConfigMap {
        metadata: meta(s, &settings_config_map(s), Component::Database),
        data: Some(BTreeMap::from([(
            SETTINGS_FILE.to_owned(),
            settings_toml(s),
        )])),
        ..Default::default()
    }
}

/// The settings in a deployed `pgkeep.toml` (every key present, none unknown), or why not.
pub fn parse_deployed(text: &str) -> Result<Settings, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// One setting whose value differs between two sets of settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDiff {
    /// Dotted key, e.g. `retention.nightly`.
    pub key: String,
    pub local: String,
    pub deployed: String,
}

impl std::fmt::Display for KeyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: here {}, deployed {}",
            self.key, self.local, self.deployed
        )
    }
}

fn leaves(v: &toml::Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn flat(s: &Settings) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    leaves(
        &toml::Value::try_from(s).expect("settings serialise to TOML"),
        "",
        &mut out,
    );
    out
}

/// The settings whose values differ between `local` and `deployed`, by key, without the
/// [`LOCAL_ONLY_KEYS`]. Empty when the pods run with what this CLI would render.
pub fn drift(local: &Settings, deployed: &Settings) -> Vec<KeyDiff> {
    let (a, b) = (flat(local), flat(deployed));
    a.iter()
        .filter(|(k, _)| !LOCAL_ONLY_KEYS.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let d = b.get(k).cloned().unwrap_or_else(|| "(missing)".into());
            (*v != d).then(|| KeyDiff {
                key: k.clone(),
                local: v.clone(),
                deployed: d,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_file_reads_back_as_the_same_settings() {
        let mut s = Settings::default();
        s.retention.nightly = 30;
        s.target = Target::Kube;
        s.kube.context = "laptop".into();
        let back = parse_deployed(&settings_toml(&s)).unwrap();
        assert_eq!(back, pod_settings(&s));
        assert_eq!(back.retention.nightly, 30);
        assert!(drift(&s, &back).is_empty());
    }

    #[test]
    fn drift_names_each_differing_key_but_not_where_the_cli_runs() {
        let deployed = Settings::default();
        let mut local = Settings::default();
        local.retention.nightly = 30;
        local.wal.archive_timeout = 5;
        local.target = Target::Kube;
        local.kube.context = "elsewhere".into();
        let d = drift(&local, &deployed);
        let keys: Vec<&str> = d.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["retention.nightly", "wal.archive_timeout"]);
        assert_eq!(d[0].to_string(), "retention.nightly: here 30, deployed 7");
    }

    #[test]
    fn a_file_with_unknown_or_missing_keys_is_not_read_as_settings() {
        let text = settings_toml(&Settings::default());
        assert!(parse_deployed(&format!("{text}\n[extra]\nx = 1\n")).is_err());
        let without_wal: String = text.split("[wal]").next().unwrap().to_owned();
        assert!(parse_deployed(&without_wal).is_err());
    }

    #[test]
    fn the_config_map_holds_no_secret() {
        let s = Settings::default();
        let cm = settings_config_map_object(&s);
        let text = &cm.data.as_ref().unwrap()[SETTINGS_FILE];
        assert!(!text.to_lowercase().contains("password"), "{text}");
        assert_eq!(cm.metadata.name.as_deref(), Some("postgres-settings"));
    }
}
