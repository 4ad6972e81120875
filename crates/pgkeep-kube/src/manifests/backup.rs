//! The backup CronJobs (batch/v1): nightly `pgkeep backup logical` and weekly
//! `pgkeep backup physical`, the incremental base backups between them (`pgkeep backup physical
//! --incremental=auto`, suspended unless `schedule.incremental_enabled`), and the weekly restore
//! drill (`pgkeep drill`), on the settings' schedules in the settings' time zone.
//!
//! Kubernetes 1.20 (the e2e cluster) serves CronJob only as batch/v1beta1 and has no
//! `timeZone` (1.25+). The API layer, not this module, adapts: on a server older than 1.21 it
//! submits the same spec as batch/v1beta1 without `timeZone` and with the schedule shifted to
//! the controller manager's zone (UTC), logging that it did. Rendering stays batch/v1.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgkeep_engine::settings::Settings;

use super::common::*;

/// History kept of finished backup Jobs (their logs are the backup log).
pub const SUCCESSFUL_HISTORY: i32 = 3;
pub const FAILED_HISTORY: i32 = 3;
/// Retries of a failed backup run within one schedule slot.
pub const BACKUP_BACKOFF_LIMIT: i32 = 2;
/// A run that could not start within this many seconds of its slot is skipped, not piled up.
pub const STARTING_DEADLINE_SECONDS: i64 = 3600;

pub fn logical_name(s: &Settings) -> String {
    format!("{}-backup-logical", s.kube.deployment)
}

pub fn physical_name(s: &Settings) -> String {
    format!("{}-backup-physical", s.kube.deployment)
}

pub fn incremental_name(s: &Settings) -> String {
    format!("{}-backup-incremental", s.kube.deployment)
}

pub fn drill_name(s: &Settings) -> String {
    format!("{}-drill", s.kube.deployment)
}

/// A pod spec for a one-shot pgkeep container connecting to the database through the Service.
pub(crate) fn client_pod(
    s: &Settings,
    container: &str,
    args: &[&str],
    mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
    volumes: Vec<k8s_openapi::api::core::v1::Volume>,
) -> PodSpec {
    let mut all_mounts = mounts;
    all_mounts.push(tmp_mount());
    let mut all_volumes = volumes;
    all_volumes.push(tmp_volume());
    all_volumes.push(settings_volume(s));
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(s)),
        containers: vec![pgkeep_container(
            s,
            container,
            args,
            client_env(s),
            all_mounts,
        )],
        volumes: Some(all_volumes),
        ..Default::default()
    }
}

pub(crate) fn job_spec(s: &Settings, c: Component, pod: PodSpec, backoff: i32) -> JobSpec {
    JobSpec {
        backoff_limit: Some(backoff),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(s, c)),
                ..Default::default()
            }),
            spec: Some(pod),
        },
        ..Default::default()
    }
}

/// A CronJob running `pod` on `schedule`. Its pgkeep gets the off-site credentials when
/// off-site copies are on: a backup uploads its new bundle right after writing it.
fn cron(s: &Settings, name: String, c: Component, schedule: &str, mut pod: PodSpec) -> CronJob {
    offsite_uploader(s, &mut pod);
    CronJob {
        metadata: meta(s, &name, c),
        spec: Some(CronJobSpec {
            schedule: schedule.to_owned(),
            time_zone: Some(s.schedule.timezone.clone()),
            concurrency_policy: Some("Forbid".to_owned()),
            starting_deadline_seconds: Some(STARTING_DEADLINE_SECONDS),
            successful_jobs_history_limit: Some(SUCCESSFUL_HISTORY),
            failed_jobs_history_limit: Some(FAILED_HISTORY),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(s, c)),
                    ..Default::default()
                }),
                spec: Some(job_spec(s, c, pod, BACKUP_BACKOFF_LIMIT)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Nightly logical bundle (`nightly-YYYYMMDD-HHMM.tar.gz`) into the backups volume.
pub fn logical_cronjob(s: &Settings) -> CronJob {
    let pod = client_pod(
        s,
        "backup",
        &["backup", "logical"],
        vec![backups_mount(s)],
        vec![backups_volume(s)],
    );
    cron(
        s,
        logical_name(s),
        Component::BackupLogical,
        &s.schedule.logical,
        pod,
    )
}

/// Weekly physical bundle (`basebackup-YYYYMMDD-HHMM.bundle.tar.zst`); mounts the WAL archive
/// too (the bundle's consistency point and pruning of WAL no kept backup needs).
pub fn physical_cronjob(s: &Settings) -> CronJob {
    let pod = client_pod(
        s,
        "backup",
        &["backup", "physical"],
        vec![backups_mount(s), wal_mount(s)],
        vec![backups_volume(s), wal_volume(s)],
    );
    cron(
        s,
        physical_name(s),
        Component::BackupPhysical,
        &s.schedule.physical,
        pod,
    )
}

/// Incremental base backups (`basebackup-YYYYMMDD-HHMM.incr.bundle.tar.zst`, PostgreSQL 17+)
/// between the weekly full ones: the physical backup's pod running `backup physical
/// --incremental=auto` (a full one when no incremental can be taken, saying why). Suspended
/// unless `schedule.incremental_enabled`.
pub fn incremental_cronjob(s: &Settings) -> CronJob {
    let pod = client_pod(
        s,
        "backup",
        &["backup", "physical", "--incremental=auto"],
        vec![backups_mount(s), wal_mount(s)],
        vec![backups_volume(s), wal_volume(s)],
    );
    let mut c = cron(
        s,
        incremental_name(s),
        Component::BackupPhysical,
        &s.schedule.incremental,
        pod,
    );
    if let Some(spec) = c.spec.as_mut() {
        spec.suspend = Some(!s.schedule.incremental_enabled);
    }
    c
}

/// Weekly restore drill (`pgkeep drill`), a few hours after the physical backup: the same pod
/// as the physical backup's (backups volume for the bundles, its scratch directory and its
/// result record; the WAL archive for the replay), running `drill`.
pub fn drill_cronjob(s: &Settings) -> CronJob {
    // With off-site copies and the identity to read them, the weekly drill restores the
    // off-site copies: the same bundles (compared by checksum when uploaded) plus the download
    // and decryption a disaster recovery depends on.
    let offsite = !s.offsite.url.is_empty() && !s.offsite.identity_secret.is_empty();
    let args: &[&str] = if offsite {
        &["drill", "--offsite"]
    } else {
        &["drill"]
    };
    let mut pod = client_pod(
        s,
        "drill",
        args,
        vec![backups_mount(s), wal_mount(s)],
        vec![backups_volume(s), wal_volume(s)],
    );
    offsite_reader(s, &mut pod);
    cron(s, drill_name(s), Component::Drill, &s.schedule.drill, pod)
}

/// A Job created from a CronJob's template (what `kubectl create job --from=cronjob/...` does).
pub fn job_from_cronjob(cron: &CronJob, name: &str) -> Job {
    let spec = cron.spec.as_ref().expect("rendered CronJobs have a spec");
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cron.metadata.namespace.clone(),
            labels: spec
                .job_template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: spec.job_template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The pod a CronJob's Jobs run (also for the Job tests beside this module).
    pub(in crate::manifests) fn pod(c: &CronJob) -> PodSpec {
        c.spec
            .clone()
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn mount_paths(p: &PodSpec) -> Vec<String> {
        p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect()
    }

    #[test]
    fn schedules_zone_and_policy() {
        let s = Settings::default();
        for (c, sched, args) in [
            (logical_cronjob(&s), "0 6 * * *", ["backup", "logical"]),
            (physical_cronjob(&s), "20 6 * * 0", ["backup", "physical"]),
        ] {
            let spec = c.spec.clone().unwrap();
            assert_eq!(spec.schedule, sched);
            assert_eq!(spec.time_zone.as_deref(), Some("America/New_York"));
            assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
            assert!(spec.successful_jobs_history_limit.is_some());
            assert!(spec.failed_jobs_history_limit.is_some());
            let job = spec.job_template.spec.unwrap();
            assert!(job.backoff_limit.is_some());
            let p = pod(&c);
            assert_eq!(p.containers[0].args.as_deref().unwrap(), args);
            assert_eq!(p.restart_policy.as_deref(), Some("Never"));
            assert_eq!(p.automount_service_account_token, Some(false));
            assert!(mount_paths(&p).contains(&"/backups".to_owned()));
            let claims: Vec<_> = p
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.as_str())
                .collect();
            assert!(claims.contains(&"pgbackups"));
            assert!(
                !claims.contains(&"pgdata-big"),
                "backups never mount PGDATA"
            );
        }
        assert!(mount_paths(&pod(&physical_cronjob(&s))).contains(&"/wal-archive".to_owned()));
        // The drill: Sunday, three hours after the physical backup, same zone, both volumes.
        let d = drill_cronjob(&s);
        let spec = d.spec.clone().unwrap();
        assert_eq!(spec.schedule, "20 9 * * 0");
        assert_eq!(spec.time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(pod(&d).containers[0].args.as_deref().unwrap(), ["drill"]);
        let paths = mount_paths(&pod(&d));
        assert!(
            paths.contains(&"/backups".to_owned()) && paths.contains(&"/wal-archive".to_owned())
        );
        assert!(!mount_paths(&pod(&logical_cronjob(&s))).contains(&"/wal-archive".to_owned()));
    }

    #[test]
    fn the_incremental_cronjob_is_suspended_until_turned_on() {
        let mut s = Settings::default();
        let c = incremental_cronjob(&s);
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.schedule, "20 6 * * 1-6");
        let p = pod(&c);
        assert_eq!(
            p.containers[0].args.as_ref().unwrap()[..],
            ["backup", "physical", "--incremental=auto"]
        );
        assert_eq!(mount_paths(&p), mount_paths(&pod(&physical_cronjob(&s))));
        s.schedule.incremental_enabled = true;
        s.schedule.incremental = "0 3 * * 1-6".into();
        let c = incremental_cronjob(&s);
        assert_eq!(c.spec.as_ref().unwrap().suspend, Some(false));
        assert_eq!(c.spec.as_ref().unwrap().schedule, "0 3 * * 1-6");
        assert_eq!(
            c.metadata.name.as_deref(),
            Some(incremental_name(&s).as_str())
        );
    }

    #[test]
    fn schedules_follow_settings() {
        let mut s = Settings::default();
        s.schedule.logical = "15 2 * * *".into();
        s.schedule.timezone = "Europe/Berlin".into();
        let spec = logical_cronjob(&s).spec.unwrap();
        assert_eq!(spec.schedule, "15 2 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
    }

    #[test]
    fn job_from_cronjob_copies_the_template() {
        let s = Settings::default();
        let c = logical_cronjob(&s);
        let j = job_from_cronjob(&c, "manual-1");
        assert_eq!(j.metadata.name.as_deref(), Some("manual-1"));
        assert_eq!(j.metadata.namespace.as_deref(), Some("record-platform"));
        assert_eq!(j.spec, c.spec.unwrap().job_template.spec);
    }
}
