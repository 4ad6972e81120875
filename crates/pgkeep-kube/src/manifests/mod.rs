//! The manifests: pure functions from [`Settings`] to k8s-openapi objects (no API calls), laid
//! out as the seed's kustomize tree ([`render`]). One module per object family, each with its
//! tests beside it.

pub mod backup;
pub mod common;
pub mod config;
pub mod deployment;
pub mod jobs;
pub mod kustomization;
pub mod monitoring;
pub mod storage;

use std::path::{Path, PathBuf};

use pgkeep_engine::settings::Settings;
use serde::Serialize;

use crate::yaml::{self, YamlError};

pub use kustomization::Kustomization;

pub const BASE_DIR: &str = "infra/k8s/base/postgres";
pub const OVERLAY_DIR: &str = "infra/k8s/overlays/dev";
pub const JOBS_DIR: &str = "infra/k8s/overlays/dev/jobs";
/// The optional overlay for the Prometheus operator (PrometheusRule, PodMonitor).
pub const OPERATOR_DIR: &str = "infra/k8s/overlays/prometheus-operator";
/// Not Kubernetes objects: the Prometheus rules file, for Prometheus's `rule_files`.
pub const PROMETHEUS_DIR: &str = "infra/prometheus";

/// One rendered object, typed. (Not boxed: a render holds a handful of them.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Pvc(k8s_openapi::api::core::v1::PersistentVolumeClaim),
    Secret(k8s_openapi::api::core::v1::Secret),
    ConfigMap(k8s_openapi::api::core::v1::ConfigMap),
    Deployment(k8s_openapi::api::apps::v1::Deployment),
    Service(k8s_openapi::api::core::v1::Service),
    CronJob(k8s_openapi::api::batch::v1::CronJob),
    Job(k8s_openapi::api::batch::v1::Job),
    Pod(k8s_openapi::api::core::v1::Pod),
    ServiceAccount(k8s_openapi::api::core::v1::ServiceAccount),
    Role(k8s_openapi::api::rbac::v1::Role),
    RoleBinding(k8s_openapi::api::rbac::v1::RoleBinding),
    Kustomization(Kustomization),
    /// A Prometheus rule file (not a Kubernetes object).
    PrometheusRules(monitoring::RuleFile),
    PrometheusRule(monitoring::PrometheusRule),
    PodMonitor(monitoring::PodMonitor),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pvc(_) => "PersistentVolumeClaim",
            Object::Secret(_) => "Secret",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::CronJob(_) => "CronJob",
            Object::Job(_) => "Job",
            Object::Pod(_) => "Pod",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Kustomization(_) => "Kustomization",
            Object::PrometheusRules(_) => "PrometheusRules",
            Object::PrometheusRule(_) => "PrometheusRule",
            Object::PodMonitor(_) => "PodMonitor",
        }
    }

    /// The object as the JSON value it serialises to (apiVersion and kind included).
    pub fn to_value(&self) -> serde_json::Value {
        fn v<T: Serialize>(t: &T) -> serde_json::Value {
            serde_json::to_value(t).expect("k8s objects serialise")
        }
        match self {
            Object::Pvc(o) => v(o),
            Object::Secret(o) => v(o),
            Object::ConfigMap(o) => v(o),
            Object::Deployment(o) => v(o),
            Object::Service(o) => v(o),
            Object::CronJob(o) => v(o),
            Object::Job(o) => v(o),
            Object::Pod(o) => v(o),
            Object::ServiceAccount(o) => v(o),
            Object::Role(o) => v(o),
            Object::RoleBinding(o) => v(o),
            Object::Kustomization(o) => v(o),
            Object::PrometheusRules(o) => v(o),
            Object::PrometheusRule(o) => v(o),
            Object::PodMonitor(o) => v(o),
        }
    }

    /// Every pod spec in the object (Deployment and Job templates, CronJob job templates, Pods).
    pub fn pod_spec(&self) -> Option<&k8s_openapi::api::core::v1::PodSpec> {
        match self {
            Object::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
            Object::Job(j) => j.spec.as_ref()?.template.spec.as_ref(),
            Object::CronJob(c) => c
                .spec
                .as_ref()?
                .job_template
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref(),
            Object::Pod(p) => p.spec.as_ref(),
            _ => None,
        }
    }
}

/// One file of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// Relative to the tree's root, `/`-separated.
    pub path: String,
    /// Comment lines put above the YAML (without `# `).
    pub notes: Vec<String>,
    pub objects: Vec<Object>,
}

impl File {
    fn new(dir: &str, name: &str, notes: &[&str], objects: Vec<Object>) -> File {
        File {
            path: format!("{dir}/{name}"),
            notes: notes.iter().map(|n| (*n).to_owned()).collect(),
            objects,
        }
    }

    /// The file's text: a header, then one YAML document per object.
    pub fn to_yaml(&self) -> Result<String, YamlError> {
        let mut out = String::from(
            "# Rendered by `pgkeep render` from pgkeep's settings. Do not edit: change the settings\n\
             # (pgkeep.toml) and render again.\n",
        );
        for n in &self.notes {
            out.push_str(&format!("# {n}\n"));
        }
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&yaml::to_yaml(
                &format!("{} in {}", o.kind(), self.path),
                &o.to_value(),
            )?);
        }
        Ok(out)
    }
}

/// The whole rendered tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub files: Vec<File>,
}

/// Errors writing the tree.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("could not write {path}: {source}\nhint: check that the directory is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// File names in the base directory.
pub mod files {
    pub const PVC_DATA: &str = "pvc-big.yaml";
    pub const PVC_WAL: &str = "wal-archive-pvc.yaml";
    pub const PVC_BACKUPS: &str = "backups-pvc.yaml";
    pub const SECRET: &str = "secret.superuser.yaml";
    pub const SETTINGS: &str = "configmap-settings.yaml";
    pub const DEPLOY: &str = "deploy.yaml";
    pub const SERVICE: &str = "service.yaml";
    pub const CRON_LOGICAL: &str = "cronjob-backup-logical.yaml";
    pub const CRON_PHYSICAL: &str = "cronjob-backup-physical.yaml";
    pub const CRON_INCREMENTAL: &str = "cronjob-backup-incremental.yaml";
    pub const CRON_DRILL: &str = "cronjob-drill.yaml";
    pub const KUSTOMIZATION: &str = "kustomization.yaml";
    pub const RESTORE_FROM_DUMP: &str = "restore-from-dump.yaml";
    pub const BOOTSTRAP: &str = "bootstrap-from-basebackup.yaml";
    pub const BOOTSTRAP_RBAC: &str = "bootstrap-rbac.yaml";
    pub const WIPE: &str = "pgdata-wipe-full.yaml";
    pub const RESTORE_FROM_UPLOAD: &str = "restore-from-upload.yaml";
    pub const LOADER: &str = "backups-loader.yaml";
    pub const RULES: &str = "pgkeep-rules.yaml";
    pub const PROMETHEUS_RULE: &str = "prometheusrule.yaml";
    pub const POD_MONITOR: &str = "podmonitor.yaml";
}

/// Render the whole stack for these settings.
pub fn render(s: &Settings) -> Tree {
    use files::*;
    let pvc_note = "Not in kustomization.yaml: created only when missing by `pgkeep pvc ensure` (part of \
                    `pgkeep deploy`); a bound claim is never changed. To resize, create a new claim and migrate.";
    let job_note = "Not in a kustomization: applying this file runs it. Run it with pgkeep (see the command below).";
    let (sa, role, rb) = jobs::bootstrap_rbac(s);
    let ns = s.kube.namespace.as_str();
    let files = vec![
        File::new(
            BASE_DIR,
            PVC_DATA,
            &[pvc_note],
            vec![Object::Pvc(storage::data_pvc(s))],
        ),
        File::new(
            BASE_DIR,
            PVC_WAL,
            &[pvc_note],
            vec![Object::Pvc(storage::wal_archive_pvc(s))],
        ),
        File::new(
            BASE_DIR,
            PVC_BACKUPS,
            &[pvc_note],
            vec![Object::Pvc(storage::backups_pvc(s))],
        ),
        File::new(
            BASE_DIR,
            SECRET,
            &[
                "A template without a password. `pgkeep deploy` creates the real Secret with a random password",
                "when it is missing; it is not in kustomization.yaml, so applying the base can never create an",
                "empty Secret that would stop pgkeep from generating one.",
            ],
            vec![Object::Secret(storage::superuser_secret_template(s))],
        ),
        File::new(
            BASE_DIR,
            SETTINGS,
            &["The settings every pgkeep container reads (PGKEEP_CONFIG); no secret is in it."],
            vec![Object::ConfigMap(config::settings_config_map_object(s))],
        ),
        File::new(
            BASE_DIR,
            DEPLOY,
            &[],
            vec![Object::Deployment(deployment::deployment(s))],
        ),
        File::new(
            BASE_DIR,
            SERVICE,
            &[],
            vec![Object::Service(deployment::service(s))],
        ),
        File::new(
            BASE_DIR,
            CRON_LOGICAL,
            &[],
            vec![Object::CronJob(backup::logical_cronjob(s))],
        ),
        File::new(
            BASE_DIR,
            CRON_PHYSICAL,
            &[],
            vec![Object::CronJob(backup::physical_cronjob(s))],
        ),
        File::new(
            BASE_DIR,
            CRON_INCREMENTAL,
            &[
                "Incremental base backups (PostgreSQL 17+) between the weekly full ones; suspended unless",
                "schedule.incremental_enabled (README: Incremental base backups).",
            ],
            vec![Object::CronJob(backup::incremental_cronjob(s))],
        ),
        File::new(
            BASE_DIR,
            CRON_DRILL,
            &[],
            vec![Object::CronJob(backup::drill_cronjob(s))],
        ),
        File::new(
            BASE_DIR,
            KUSTOMIZATION,
            &["PVCs and the Secret are deliberately not listed (see their files)."],
            vec![Object::Kustomization(Kustomization::new(
                ns,
                &[
                    SETTINGS,
                    DEPLOY,
                    SERVICE,
                    CRON_LOGICAL,
                    CRON_PHYSICAL,
                    CRON_INCREMENTAL,
                    CRON_DRILL,
                ],
            ))],
        ),
        File::new(
            OVERLAY_DIR,
            KUSTOMIZATION,
            &[
                "The jobs/ directory is not listed: each Job runs when applied; pgkeep runs them on demand.",
            ],
            vec![Object::Kustomization(Kustomization::new(
                ns,
                &["../../base/postgres"],
            ))],
        ),
        File::new(
            JOBS_DIR,
            RESTORE_FROM_DUMP,
            &[job_note, "pgkeep restore dump --kube"],
            vec![Object::Job(jobs::restore_from_dump(s, &[]))],
        ),
        File::new(
            JOBS_DIR,
            BOOTSTRAP,
            &[
                job_note,
                "pgkeep bootstrap basebackup --kube (scales the Deployment to 0 first). Needs bootstrap-rbac.yaml.",
            ],
            vec![Object::Job(jobs::bootstrap_from_basebackup(s, &[]))],
        ),
        File::new(
            JOBS_DIR,
            BOOTSTRAP_RBAC,
            &[
                "The bootstrap Job's ServiceAccount, Role and RoleBinding: get/patch the Deployment and its scale, watch pods.",
            ],
            vec![
                Object::ServiceAccount(sa),
                Object::Role(role),
                Object::RoleBinding(rb),
            ],
        ),
        File::new(
            JOBS_DIR,
            WIPE,
            &[
                job_note,
                "pgkeep wipe --kube (scales the Deployment to 0 first)",
            ],
            vec![Object::Job(jobs::wipe(s))],
        ),
        File::new(
            JOBS_DIR,
            RESTORE_FROM_UPLOAD,
            &[
                job_note,
                "pgkeep restore upload --kube FILE (uploads FILE through backups-loader, sets PGKEEP_UPLOAD_FILE)",
            ],
            vec![Object::Job(jobs::restore_from_upload(s, None, &[]))],
        ),
        File::new(
            JOBS_DIR,
            LOADER,
            &["pgkeep loader up --kube / pgkeep loader down --kube"],
            vec![Object::Pod(jobs::backups_loader(s))],
        ),
        File::new(
            PROMETHEUS_DIR,
            RULES,
            &[
                "Prometheus alerting rules on `pgkeep metrics` (the db pod's `metrics` port): list this file",
                "under `rule_files`. Each alert is explained in pgkeep's README, \"Running unattended\".",
            ],
            vec![Object::PrometheusRules(monitoring::rules(s))],
        ),
        File::new(
            OPERATOR_DIR,
            KUSTOMIZATION,
            &[
                "Optional: the base plus the same alerts as a PrometheusRule and a PodMonitor for the",
                "Prometheus operator (its CRDs must be installed; its ruleSelector and podMonitorSelector",
                "must match these objects' labels). Apply with `kubectl apply -k` instead of the dev overlay.",
            ],
            vec![Object::Kustomization(Kustomization::new(
                ns,
                &["../../base/postgres", PROMETHEUS_RULE, POD_MONITOR],
            ))],
        ),
        File::new(
            OPERATOR_DIR,
            PROMETHEUS_RULE,
            &["The alerts of infra/prometheus/pgkeep-rules.yaml, for the Prometheus operator."],
            vec![Object::PrometheusRule(monitoring::prometheus_rule(s))],
        ),
        File::new(
            OPERATOR_DIR,
            POD_MONITOR,
            &["Scrapes `pgkeep metrics` on the db pod's `metrics` port."],
            vec![Object::PodMonitor(monitoring::pod_monitor(s))],
        ),
    ];
    Tree { files }
}

impl Tree {
    /// Every file's path and text.
    pub fn texts(&self) -> Result<Vec<(String, String)>, YamlError> {
        self.files
            .iter()
            .map(|f| Ok((f.path.clone(), f.to_yaml()?)))
            .collect()
    }

    /// All Kubernetes documents as one multi-document stream (for stdout, e.g. into `kubectl
    /// apply -f -`); files that hold no Kubernetes object (the Prometheus rules) are only
    /// written with `--out`.
    pub fn to_stream(&self) -> Result<String, YamlError> {
        let mut out = String::new();
        for f in &self.files {
            if f.objects
                .iter()
                .any(|o| matches!(o, Object::PrometheusRules(_)))
            {
                continue;
            }
            let (path, text) = (f.path.clone(), f.to_yaml()?);
            out.push_str(&format!("# Source: {path}\n"));
            out.push_str(&text);
        }
        Ok(out)
    }

    /// Write the tree under `dir` (directories created as needed; other files left alone).
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
        let mut written = Vec::new();
        for (path, text) in self.texts()? {
            let full = dir.join(&path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(|source| RenderError::Write {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            std::fs::write(&full, text).map_err(|source| RenderError::Write {
                path: full.clone(),
                source,
            })?;
            written.push(full);
        }
        Ok(written)
    }

    /// Every object with its file.
    pub fn objects(&self) -> impl Iterator<Item = (&File, &Object)> {
        self.files
            .iter()
            .flat_map(|f| f.objects.iter().map(move |o| (f, o)))
    }
}

#[cfg(test)]
mod tests;
