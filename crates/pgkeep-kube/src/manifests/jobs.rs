//! The on-demand Jobs of `infra/k8s/overlays/dev/jobs/` and the bootstrap RBAC: restore from a
//! dump, bootstrap from a base backup, wipe PGDATA (`pgdata-wipe-full`), restore an uploaded
//! dump, and the `backups-loader` pod. None of them is in a kustomization: applying one runs it.
//!
//! Jobs that touch the data volume mount it ONLY at the volume root, run as the data owner,
//! and are not retried (`backoffLimit: 0`): a destructive step is never repeated blindly.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use pgkeep_engine::settings::Settings;

use super::backup::{client_pod, job_spec};
use super::common::*;

pub const RESTORE_FROM_DUMP: &str = "restore-from-dump";
pub const BOOTSTRAP_FROM_BASEBACKUP: &str = "bootstrap-from-basebackup";
pub const WIPE: &str = "pgdata-wipe-full";
pub const RESTORE_FROM_UPLOAD: &str = "restore-from-upload";
pub const LOADER: &str = "backups-loader";

/// The env var naming the uploaded file in the restore-from-upload Job; `pgkeep restore upload
/// --kube` sets it to the file it uploaded. The args refer to it as `$(PGKEEP_UPLOAD_FILE)`,
/// which the kubelet expands.
pub const UPLOAD_FILE_ENV: &str = "PGKEEP_UPLOAD_FILE";

/// The option [`crate::ops::flows::restore_upload`] adds to the restore-from-upload Job's
/// command when it uploaded the file for this restore (not when it found an identical one
/// there): `pgkeep restore upload` then removes the file when the restore is refused, as a local
/// upload's copy is removed, so a refused upload does not stay on the backups volume.
pub const REMOVE_IF_REFUSED: &str = "--remove-if-refused";

/// The settings variable of `kube.namespace` (see `settings::ENV_KEYS`): the bootstrap Job gets
/// its own namespace there from the downward API, for the scale-up.
pub const NAMESPACE_ENV: &str = "PGKEEP_NAMESPACE";

/// Seconds the loader pod gets to stop (it only sleeps).
pub const LOADER_GRACE_SECONDS: i64 = 5;

/// Appends the options the user gave (`pgkeep ... --kube`, each Args' `options()`) to the pod's
/// command, escaped for the kubelet so a `$(NAME)` in them stays text. Rendered Jobs have none.
fn with_options(mut pod: PodSpec, options: &[String]) -> PodSpec {
    if !options.is_empty() {
        pod.containers[0]
            .args
            .get_or_insert_with(Vec::new)
            .extend(options.iter().map(|o| kube_literal(o)));
    }
    pod
}

fn job(s: &Settings, name: &str, c: Component, pod: PodSpec) -> Job {
    Job {
        metadata: meta(s, name, c),
        spec: Some(job_spec(s, c, pod, 0)),
        status: None,
    }
}

/// The seed's `pg.restore.dump`: newest nightly bundle into the running database; `options`
/// are `pgkeep restore dump`'s (none when rendered). With off-site copies configured it can
/// read them (credentials and identity, [`offsite_reader`]).
pub fn restore_from_dump(s: &Settings, options: &[String]) -> Job {
    let mut pod = client_pod(
        s,
        "restore",
        &["restore", "dump"],
        vec![backups_mount(s)],
        vec![backups_volume(s)],
    );
    offsite_reader(s, &mut pod);
    job(
        s,
        RESTORE_FROM_DUMP,
        Component::Restore,
        with_options(pod, options),
    )
}

/// The seed's `pg.restore.upload`: restore a dump file uploaded to the backups volume: `file`
/// in the pod (default, when rendered: `uploads/upload.tar.gz` there), with `pgkeep restore
/// upload`'s `options` (none when rendered).
pub fn restore_from_upload(s: &Settings, file: Option<&str>, options: &[String]) -> Job {
    let file_arg = format!("$({UPLOAD_FILE_ENV})");
    let mut pod = client_pod(
        s,
        "restore",
        &["restore", "upload", &file_arg],
        vec![backups_mount(s)],
        vec![backups_volume(s)],
    );
    let env = pod.containers[0].env.get_or_insert_with(Vec::new);
    let file = match file {
        Some(f) => f.to_owned(),
        None => format!("{}/uploads/upload.tar.gz", s.paths.backups.display()),
    };
    env.push(super::common::env(UPLOAD_FILE_ENV, file));
    job(
        s,
        RESTORE_FROM_UPLOAD,
        Component::Restore,
        with_options(pod, options),
    )
}

/// The seed's `pgdata-wipe-full`: empties the data volume (mounted at the root only) and
/// recreates PGDATA 0700, as the data owner. Needs the Deployment scaled to 0 first.
pub fn wipe(s: &Settings) -> Job {
    let pod = client_pod(
        s,
        "wipe",
        &["wipe", "--yes"],
        vec![data_mount(s)],
        vec![data_volume(s)],
    );
    job(s, WIPE, Component::Wipe, pod)
}

/// The seed's `pg.bootstrap.basebackup`: replace PGDATA with the newest base backup, replay WAL
/// from the archive with a PostgreSQL of its own, stop it, then scale the Deployment up
/// (`--scale-up`; without waiting, since this pod holds the data volume until it ends), so the
/// flow completes without the laptop that started it.
/// `pgkeep bootstrap basebackup --kube` scales the Deployment to 0 before creating it and
/// passes its --from / --target-* options as `options` (none when rendered).
///
/// The only pod with an API token (the ServiceAccount of [`bootstrap_rbac`]). Its PostgreSQL is
/// reached over the socket directory, an emptyDir (the root filesystem is read-only), not
/// through the Service; the namespace it scales in comes from the downward API.
pub fn bootstrap_from_basebackup(s: &Settings, options: &[String]) -> Job {
    let mut pod = client_pod(
        s,
        "bootstrap",
        &[
            "bootstrap",
            "basebackup",
            "--yes",
            "--scale-up",
            &kube_literal(&s.kube.deployment),
            "--scale-up-app",
            &kube_literal(&s.kube.app),
        ],
        vec![data_mount(s), wal_mount(s), backups_mount(s), run_mount(s)],
        vec![
            data_volume(s),
            wal_volume(s),
            backups_volume(s),
            run_volume(),
        ],
    );
    let env = pod.containers[0].env.get_or_insert_with(Vec::new);
    for e in env.iter_mut().filter(|e| e.name == "PGHOST") {
        *e = super::common::env("PGHOST", s.paths.run_dir.display());
    }
    env.push(EnvVar {
        name: NAMESPACE_ENV.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: "metadata.namespace".to_owned(),
            }),
            ..Default::default()
        }),
    });
    offsite_reader(s, &mut pod);
    pod.service_account_name = Some(BOOTSTRAP_FROM_BASEBACKUP.to_owned());
    pod.automount_service_account_token = Some(true);
    job(
        s,
        BOOTSTRAP_FROM_BASEBACKUP,
        Component::Bootstrap,
        with_options(pod, options),
    )
}

/// The bootstrap Job's identity: a ServiceAccount, a Role with only what it needs (get/patch the
/// Deployment's scale subresource, read the pods; never the Deployment itself, whose template
/// holds the pod spec), and the RoleBinding.
///
/// What its `--scale-up` sends (`ops::scale`): `PATCH deployments/NAME/scale` (the pod list
/// `GET pods?labelSelector=app=APP` is allowed too, for a scale-up that waits). Connecting first asks
/// `GET /version` (allowed to every authenticated account) and `GET namespaces/NS`, whose 403
/// is accepted.
pub fn bootstrap_rbac(s: &Settings) -> (ServiceAccount, Role, RoleBinding) {
    let name = BOOTSTRAP_FROM_BASEBACKUP;
    let sa = ServiceAccount {
        metadata: meta(s, name, Component::Bootstrap),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let strs = |v: &[&str]| Some(v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>());
    let role = Role {
        metadata: meta(s, name, Component::Bootstrap),
        rules: Some(vec![
            PolicyRule {
                api_groups: strs(&["apps"]),
                resources: strs(&["deployments/scale"]),
                resource_names: strs(&[&s.kube.deployment]),
                verbs: vec!["get".to_owned(), "patch".to_owned()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: strs(&[""]),
                resources: strs(&["pods"]),
                verbs: vec!["get".to_owned(), "list".to_owned()],
                ..Default::default()
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(s, name, Component::Bootstrap),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(s.kube.namespace.clone()),
            api_group: None,
        }]),
    };
    (sa, role, binding)
}

/// The seed's `backups-loader`: a pod with the backups volume that stays up for uploads
/// (`kubectl cp`, `pgkeep restore upload`).
pub fn backups_loader(s: &Settings) -> Pod {
    let mut c = pgkeep_container(
        s,
        "loader",
        &[],
        settings_env(s),
        vec![backups_mount(s), tmp_mount()],
    );
    c.command = Some(vec!["sleep".to_owned(), "infinity".to_owned()]);
    c.args = None;
    Pod {
        metadata: meta(s, LOADER, Component::Loader),
        spec: Some(PodSpec {
            restart_policy: Some("Always".to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(pod_security(s)),
            termination_grace_period_seconds: Some(LOADER_GRACE_SECONDS),
            containers: vec![c],
            volumes: Some(vec![backups_volume(s), tmp_volume(), settings_volume(s)]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_of(j: &Job) -> PodSpec {
        j.spec.clone().unwrap().template.spec.unwrap()
    }

    fn args(p: &PodSpec) -> Vec<String> {
        p.containers[0].args.clone().unwrap_or_default()
    }

    #[test]
    fn jobs_run_the_matching_commands() {
        let s = Settings::default();
        assert_eq!(
            args(&pod_of(&restore_from_dump(&s, &[]))),
            ["restore", "dump"]
        );
        assert_eq!(
            args(&pod_of(&bootstrap_from_basebackup(&s, &[]))),
            [
                "bootstrap",
                "basebackup",
                "--yes",
                "--scale-up",
                "postgres",
                "--scale-up-app",
                "postgres"
            ]
        );
        assert_eq!(args(&pod_of(&wipe(&s))), ["wipe", "--yes"]);
        assert_eq!(
            args(&pod_of(&restore_from_upload(&s, None, &[]))),
            ["restore", "upload", "$(PGKEEP_UPLOAD_FILE)"]
        );
        for j in [
            restore_from_dump(&s, &[]),
            bootstrap_from_basebackup(&s, &[]),
            wipe(&s),
            restore_from_upload(&s, None, &[]),
        ] {
            assert_eq!(j.spec.as_ref().unwrap().backoff_limit, Some(0));
            let p = pod_of(&j);
            assert_eq!(p.restart_policy.as_deref(), Some("Never"));
            let sc = p.containers[0].security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_user, Some(999));
            let pw = p.containers[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "PGPASSWORD")
                .unwrap();
            assert!(pw.value.is_none());
        }
    }

    #[test]
    fn only_the_pods_that_read_off_site_get_the_identity_and_backups_get_the_credentials() {
        use super::super::backup::tests::pod as cron_pod;
        use super::super::backup::{drill_cronjob, logical_cronjob, physical_cronjob};
        let identity = |p: &PodSpec| {
            let mounted = p.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == VOL_OFFSITE_IDENTITY && m.read_only == Some(true));
            let env = p.containers[0]
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "PGKEEP_OFFSITE_IDENTITY_FILE");
            assert_eq!(mounted, env, "mount and variable go together");
            mounted
        };
        let credentials = |p: &PodSpec| {
            p.containers[0]
                .env_from
                .iter()
                .flatten()
                .any(|f| f.secret_ref.as_ref().is_some_and(|r| r.name == "s3-keys"))
        };
        // Off by default: nothing of it anywhere.
        let off = Settings::default();
        for p in [
            pod_of(&restore_from_dump(&off, &[])),
            pod_of(&bootstrap_from_basebackup(&off, &[])),
            cron_pod(&drill_cronjob(&off)),
            cron_pod(&logical_cronjob(&off)),
        ] {
            assert!(!identity(&p) && !credentials(&p));
        }
        assert_eq!(args(&cron_pod(&drill_cronjob(&off))), ["drill"]);

        let mut s = Settings::default();
        s.offsite.url = "s3://bucket/p".into();
        s.offsite.credentials_secret = "s3-keys".into();
        s.offsite.identity_secret = "offsite-key".into();
        for p in [
            pod_of(&restore_from_dump(&s, &[])),
            pod_of(&bootstrap_from_basebackup(&s, &[])),
            cron_pod(&drill_cronjob(&s)),
        ] {
            assert!(identity(&p), "a reader gets the identity");
            assert!(credentials(&p));
            let v = p
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == VOL_OFFSITE_IDENTITY)
                .unwrap();
            let secret = v.secret.as_ref().unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some("offsite-key"));
            assert_eq!(secret.default_mode, Some(0o440));
        }
        for p in [
            cron_pod(&logical_cronjob(&s)),
            cron_pod(&physical_cronjob(&s)),
        ] {
            assert!(credentials(&p), "a backup uploads its bundle");
            assert!(!identity(&p), "a backup never sees the identity");
        }
        for p in [
            pod_of(&wipe(&s)),
            pod_of(&restore_from_upload(&s, None, &[])),
        ] {
            assert!(!identity(&p) && !credentials(&p));
        }
        // The weekly drill drills the off-site copies when it can read them.
        assert_eq!(args(&cron_pod(&drill_cronjob(&s))), ["drill", "--offsite"]);
        s.offsite.identity_secret.clear();
        assert_eq!(args(&cron_pod(&drill_cronjob(&s))), ["drill"]);
    }

    #[test]
    fn only_bootstrap_gets_an_api_token() {
        let s = Settings::default();
        for j in [
            restore_from_dump(&s, &[]),
            wipe(&s),
            restore_from_upload(&s, None, &[]),
        ] {
            assert_eq!(pod_of(&j).automount_service_account_token, Some(false));
            assert_eq!(pod_of(&j).service_account_name, None);
        }
        let b = pod_of(&bootstrap_from_basebackup(&s, &[]));
        assert_eq!(b.automount_service_account_token, Some(true));
        assert_eq!(
            b.service_account_name.as_deref(),
            Some(BOOTSTRAP_FROM_BASEBACKUP)
        );
        assert_eq!(
            backups_loader(&s)
                .spec
                .unwrap()
                .automount_service_account_token,
            Some(false)
        );
    }

    #[test]
    fn wipe_and_bootstrap_mount_the_data_volume_only_at_the_root() {
        let s = Settings::default();
        for j in [wipe(&s), bootstrap_from_basebackup(&s, &[])] {
            let p = pod_of(&j);
            let data: Vec<_> = p.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == VOL_DATA)
                .map(|m| m.mount_path.as_str())
                .collect();
            assert_eq!(data, ["/var/lib/postgresql"]);
        }
    }

    #[test]
    fn bootstrap_scales_up_its_own_deployment_in_its_own_namespace() {
        let mut s = Settings::default();
        s.kube.deployment = "pg-main".into();
        s.kube.app = "pg".into();
        let p = pod_of(&bootstrap_from_basebackup(&s, &[]));
        let a = args(&p);
        let after = |flag: &str| {
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1].clone()
        };
        assert_eq!(after("--scale-up"), "pg-main");
        assert_eq!(after("--scale-up-app"), "pg");
        let env = p.containers[0].env.clone().unwrap();
        let ns = env.iter().find(|e| e.name == NAMESPACE_ENV).unwrap();
        assert!(ns.value.is_none());
        let field = ns.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "metadata.namespace");
        assert!(
            pgkeep_engine::settings::ENV_KEYS
                .iter()
                .any(|(n, key)| *n == NAMESPACE_ENV && *key == "kube.namespace")
        );
        // Its own PostgreSQL, over the socket directory, not the (scaled-down) Service.
        let host: Vec<_> = env.iter().filter(|e| e.name == "PGHOST").collect();
        assert_eq!(host.len(), 1);
        assert_eq!(host[0].value.as_deref(), Some("/var/run/postgresql"));
    }

    #[test]
    fn bootstrap_has_every_path_recovery_writes_on_a_volume() {
        // The root filesystem is read-only: PGDATA and the server log beside it (data volume),
        // pushed WAL after promotion (archive), the socket and its lock file (emptyDir), /tmp.
        let s = Settings::default();
        let p = pod_of(&bootstrap_from_basebackup(&s, &[]));
        let c = &p.containers[0];
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        for want in [
            (VOL_DATA, "/var/lib/postgresql"),
            (VOL_WAL, "/wal-archive"),
            (VOL_BACKUPS, "/backups"),
            (VOL_RUN, "/var/run/postgresql"),
            (VOL_TMP, "/tmp"),
        ] {
            assert!(mounts.contains(&want), "{want:?} not in {mounts:?}");
        }
        let run = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOL_RUN)
            .unwrap();
        assert!(run.empty_dir.is_some());
    }

    #[test]
    fn rbac_is_limited_to_the_deployment_and_pods() {
        let s = Settings::default();
        let (sa, role, rb) = bootstrap_rbac(&s);
        assert_eq!(sa.metadata.name.as_deref(), Some(BOOTSTRAP_FROM_BASEBACKUP));
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].resources.as_deref().unwrap(),
            ["deployments/scale"]
        );
        assert_eq!(rules[0].resource_names.as_deref().unwrap(), ["postgres"]);
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        assert_eq!(rules[1].resources.as_deref().unwrap(), ["pods"]);
        assert_eq!(rules[1].verbs, ["get", "list"]);
        for r in &rules {
            assert!(
                !r.verbs
                    .iter()
                    .any(|v| v == "*" || v == "delete" || v == "create")
            );
        }
        assert_eq!(rb.role_ref.name, BOOTSTRAP_FROM_BASEBACKUP);
        let subj = &rb.subjects.unwrap()[0];
        assert_eq!(subj.kind, "ServiceAccount");
        assert_eq!(subj.namespace.as_deref(), Some("record-platform"));
    }

    #[test]
    fn loader_mounts_backups() {
        let s = Settings::default();
        let p = backups_loader(&s);
        assert_eq!(p.metadata.name.as_deref(), Some("backups-loader"));
        let spec = p.spec.unwrap();
        let m = spec.containers[0].volume_mounts.clone().unwrap();
        assert!(m.iter().any(|m| m.mount_path == "/backups"));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(s.kube.image.as_str())
        );
    }
}
