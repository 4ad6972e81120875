//! Building blocks shared by every object: metadata and labels, the security contexts, the
//! environment that carries settings into pods, the volumes and their mounts, and the pgkeep
//! container itself. Each is a pure function of the settings.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, SeccompProfile,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgkeep_engine::settings::Settings;

/// The key of the superuser password in the Secret.
pub const SECRET_PASSWORD_KEY: &str = "password";

/// Volume names (the seed's `data`, `wal-archive`, `init`; plus ours).
pub const VOL_DATA: &str = "data";
pub const VOL_WAL: &str = "wal-archive";
pub const VOL_BACKUPS: &str = "backups";
pub const VOL_RUN: &str = "run";
pub const VOL_TMP: &str = "tmp";
pub const VOL_INIT: &str = "init";
pub const VOL_SETTINGS: &str = "settings";
pub const VOL_OFFSITE_IDENTITY: &str = "offsite-identity";

/// Where the pods that read off-site copies find the age identity (the Secret
/// `offsite.identity_secret` names, key [`OFFSITE_IDENTITY_KEY`]).
pub const OFFSITE_IDENTITY_DIR: &str = "/etc/pgkeep-offsite";
pub const OFFSITE_IDENTITY_KEY: &str = "identity";

/// Where every pgkeep container finds the deployed settings (the ConfigMap of
/// [`super::config`]), and the variable that points the settings loader at them.
pub const SETTINGS_DIR: &str = "/etc/pgkeep";
pub const SETTINGS_FILE: &str = "pgkeep.toml";
pub const CONFIG_ENV: &str = "PGKEEP_CONFIG";

/// Where the db container finds its one-time init scripts (the official image's convention).
pub const INITDB_DIR: &str = "/docker-entrypoint-initdb.d";

/// The component label of an object (`app.kubernetes.io/component`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Database,
    Storage,
    BackupLogical,
    BackupPhysical,
    Restore,
    Bootstrap,
    Wipe,
    Loader,
    Drill,
    Monitoring,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Database => "database",
            Component::Storage => "storage",
            Component::BackupLogical => "backup-logical",
            Component::BackupPhysical => "backup-physical",
            Component::Restore => "restore",
            Component::Bootstrap => "bootstrap",
            Component::Wipe => "wipe",
            Component::Loader => "backups-loader",
            Component::Drill => "drill",
            Component::Monitoring => "monitoring",
        }
    }
}

/// Labels of an object. Only the database's own objects (Deployment and its pods, Service,
/// PVCs, Secret) carry `app=<app>`: the seed finds the db pod with `-l app=postgres`, and the
/// Service selects on it, so Job and loader pods must not match it.
pub fn labels(s: &Settings, c: Component) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if matches!(c, Component::Database | Component::Storage) {
        l.insert("app".to_owned(), s.kube.app.clone());
    }
    l.insert("app.kubernetes.io/part-of".to_owned(), s.kube.app.clone());
    l.insert(
        "app.kubernetes.io/component".to_owned(),
        c.as_str().to_owned(),
    );
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "pgkeep".to_owned(),
    );
    l
}

/// The selector of the db pods.
pub fn db_selector(s: &Settings) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), s.kube.app.clone())])
}

pub fn meta(s: &Settings, name: &str, c: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(s.kube.namespace.clone()),
        labels: Some(labels(s, c)),
        ..Default::default()
    }
}

/// Pod-level security: everything runs as the data owner unless a container says otherwise.
pub fn pod_security(s: &Settings) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(s.postgres.uid.into()),
        run_as_group: Some(s.postgres.gid.into()),
        fs_group: Some(s.postgres.gid.into()),
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        run_as_non_root: Some(s.postgres.uid != 0),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container that runs as the data owner with no capabilities at all.
pub fn restricted(s: &Settings) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(s.postgres.uid.into()),
        run_as_group: Some(s.postgres.gid.into()),
        run_as_non_root: Some(s.postgres.uid != 0),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The one root container (`fix-run`): only what chown and chmod of a directory it does not
/// own need (CAP_CHOWN, CAP_FOWNER), and it mounts no persistent volume.
pub fn root_chown_only() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: Some(vec!["CHOWN".to_owned(), "FOWNER".to_owned()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `value` as the kubelet must pass it through: every `$` doubled. The kubelet expands
/// `$(VAR)` in a container's env values, command and args (`$$` is its escape for one `$`), so
/// data written there unescaped (an upload named `x$(PGPASSWORD).sql`, a path from the settings)
/// could pull another variable, the superuser password included, into the pod's command line,
/// errors and logs. Every env value and arg pgkeep builds from data goes through this; only
/// pgkeep's own `$(PGKEEP_UPLOAD_FILE)` reference is written as a reference.
pub fn kube_literal(value: &str) -> String {
    value.replace('$', "$$")
}

/// The variable references the kubelet would expand in `value` (`$(NAME)`, not `$$(NAME)`), as
/// its expansion reads them; for tests and checks that data cannot reach another variable.
pub fn kubelet_references(value: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b[i + 1] {
            b'$' => i += 2,
            b'(' => match value[i + 2..].find(')') {
                Some(end) => {
                    refs.push(&value[i + 2..i + 2 + end]);
                    i += 3 + end;
                }
                None => break,
            },
            _ => i += 1,
        }
    }
    refs
}

/// An env var whose value is `value` exactly as written (see [`kube_literal`]).
pub fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(kube_literal(&value.to_string())),
        value_from: None,
    }
}

fn secret_env(s: &Settings, name: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.kube.secret.clone(),
                key: SECRET_PASSWORD_KEY.to_owned(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// Settings every pgkeep container gets (see `settings::ENV_KEYS`); inside pods the target is
/// always local: the command acts on its own mounts.
pub fn settings_env(s: &Settings) -> Vec<EnvVar> {
    vec![
        env("PGKEEP_TARGET", "local"),
        env("PGKEEP_PGROOT", s.paths.pgroot.display()),
        env("PGDATA", s.paths.pgdata.display()),
        env("PGKEEP_WAL_ARCHIVE", s.paths.wal_archive.display()),
        env("PGKEEP_BACKUPS", s.paths.backups.display()),
        env("PGKEEP_RUN_DIR", s.paths.run_dir.display()),
        env("PGKEEP_UID", s.postgres.uid),
        env("PGKEEP_GID", s.postgres.gid),
        env("PGKEEP_DATABASE", &s.postgres.database),
        env("PGPORT", s.postgres.port),
        env("PGUSER", &s.postgres.user),
    ]
}

/// The db container's environment: the socket directory as PGHOST, and the superuser password
/// for initdb from the Secret.
pub fn server_env(s: &Settings) -> Vec<EnvVar> {
    let mut e = settings_env(s);
    e.push(env("PGHOST", s.paths.run_dir.display()));
    // For archive_command (`pgkeep wal push`), which PostgreSQL runs in this container.
    e.push(env("PGKEEP_WAL_COMPRESS", s.wal.compress));
    e.push(env("PGKEEP_WAL_ZSTD_LEVEL", s.wal.zstd_level));
    // For `serve`, which manages archive_timeout.
    e.push(env("PGKEEP_WAL_ARCHIVE_TIMEOUT", s.wal.archive_timeout));
    e.push(secret_env(s, "POSTGRES_PASSWORD"));
    e
}

/// A Job's environment: the database through the Service, the password from the Secret.
pub fn client_env(s: &Settings) -> Vec<EnvVar> {
    let mut e = settings_env(s);
    e.push(env("PGHOST", &s.kube.service));
    e.push(secret_env(s, "PGPASSWORD"));
    e
}

/// The off-site credentials Secret (`offsite.credentials_secret`) as a container's environment.
/// Referenced as optional: a missing Secret must not keep the database or a local backup from
/// running; the uploads then fail with the store's error and the off-site metrics show it.
pub fn offsite_credentials(s: &Settings) -> Option<Vec<EnvFromSource>> {
    (!s.offsite.url.is_empty() && !s.offsite.credentials_secret.is_empty()).then(|| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.offsite.credentials_secret.clone(),
                optional: Some(true),
            }),
            ..Default::default()
        }]
    })
}

/// A pod whose pgkeep uploads to off-site (the backup Jobs): the credentials.
pub fn offsite_uploader(s: &Settings, pod: &mut PodSpec) {
    if let Some(from) = offsite_credentials(s) {
        pod.containers[0].env_from = Some(from);
    }
}

/// A pod whose pgkeep reads off-site copies (restore, bootstrap, drill): the credentials, and
/// the identity Secret mounted read-only (0440, group = the data owner's through fsGroup) with
/// `PGKEEP_OFFSITE_IDENTITY_FILE` pointing at it. No other pod ever sees the identity.
pub fn offsite_reader(s: &Settings, pod: &mut PodSpec) {
    offsite_uploader(s, pod);
    if s.offsite.url.is_empty() || s.offsite.identity_secret.is_empty() {
        return;
    }
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: VOL_OFFSITE_IDENTITY.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(s.offsite.identity_secret.clone()),
            default_mode: Some(0o440),
            // A drill or restore from local copies needs no identity.
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = &mut pod.containers[0];
    c.volume_mounts.get_or_insert_with(Vec::new).push(mount(
        VOL_OFFSITE_IDENTITY,
        OFFSITE_IDENTITY_DIR,
        true,
    ));
    c.env.get_or_insert_with(Vec::new).push(env(
        "PGKEEP_OFFSITE_IDENTITY_FILE",
        format!("{OFFSITE_IDENTITY_DIR}/{OFFSITE_IDENTITY_KEY}"),
    ));
}

fn pvc_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_owned(),
            read_only: None,
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

pub fn data_volume(s: &Settings) -> Volume {
    pvc_volume(VOL_DATA, &s.pvc.data.name)
}
pub fn wal_volume(s: &Settings) -> Volume {
    pvc_volume(VOL_WAL, &s.pvc.wal_archive.name)
}
pub fn backups_volume(s: &Settings) -> Volume {
    pvc_volume(VOL_BACKUPS, &s.pvc.backups.name)
}
pub fn run_volume() -> Volume {
    empty_dir(VOL_RUN)
}
pub fn tmp_volume() -> Volume {
    empty_dir(VOL_TMP)
}

/// The name of the (optional) ConfigMap holding init scripts.
pub fn initdb_config_map(s: &Settings) -> String {
    format!("{}-initdb", s.kube.deployment)
}

/// Init scripts from an optional ConfigMap: absent, the directory is empty.
pub fn init_volume(s: &Settings) -> Volume {
    Volume {
        name: VOL_INIT.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: initdb_config_map(s),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The name of the ConfigMap holding the settings the pods read (`pgkeep.toml`).
pub fn settings_config_map(s: &Settings) -> String {
    format!("{}-settings", s.kube.deployment)
}

/// The settings ConfigMap as a volume. Not optional: a pod without its settings would run on
/// built-in defaults (e.g. retention 7 where the operator set 30), so it waits, with an event
/// naming the missing ConfigMap, until `pgkeep deploy` creates it.
pub fn settings_volume(s: &Settings) -> Volume {
    Volume {
        name: VOL_SETTINGS.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: settings_config_map(s),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `m`, read-only (what the metrics container reports on it only reads).
pub fn read_only(mut m: VolumeMount) -> VolumeMount {
    m.read_only = Some(true);
    m
}

fn mount(name: &str, path: impl std::fmt::Display, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The data volume, mounted ONLY at the volume root (PGDATA is a subdirectory of it).
pub fn data_mount(s: &Settings) -> VolumeMount {
    mount(VOL_DATA, s.paths.pgroot.display(), false)
}
pub fn wal_mount(s: &Settings) -> VolumeMount {
    mount(VOL_WAL, s.paths.wal_archive.display(), false)
}
pub fn backups_mount(s: &Settings) -> VolumeMount {
    mount(VOL_BACKUPS, s.paths.backups.display(), false)
}
pub fn run_mount(s: &Settings) -> VolumeMount {
    mount(VOL_RUN, s.paths.run_dir.display(), false)
}
pub fn tmp_mount() -> VolumeMount {
    mount(VOL_TMP, "/tmp", false)
}
pub fn init_mount() -> VolumeMount {
    mount(VOL_INIT, INITDB_DIR, true)
}

pub fn settings_mount() -> VolumeMount {
    mount(VOL_SETTINGS, SETTINGS_DIR, true)
}

/// A container of the pgkeep image running `pgkeep ARGS...` as the data owner. It reads its
/// settings from the deployed ConfigMap ([`settings_mount`], `PGKEEP_CONFIG`; the pod spec
/// must carry [`settings_volume`]).
pub fn pgkeep_container(
    s: &Settings,
    name: &str,
    args: &[&str],
    mut env: Vec<EnvVar>,
    mut mounts: Vec<VolumeMount>,
) -> Container {
    env.push(self::env(
        CONFIG_ENV,
        format!("{SETTINGS_DIR}/{SETTINGS_FILE}"),
    ));
    mounts.push(settings_mount());
    Container {
        name: name.to_owned(),
        image: Some(s.kube.image.clone()),
        image_pull_policy: Some(s.kube.image_pull_policy.clone()),
        command: Some(vec!["pgkeep".to_owned()]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        env: Some(env),
        volume_mounts: Some(mounts),
        security_context: Some(restricted(s)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_literal_doubles_every_dollar_so_no_variable_expands() {
        for (raw, escaped) in [
            ("plain.sql", "plain.sql"),
            ("x$(PGPASSWORD).sql", "x$$(PGPASSWORD).sql"),
            ("$$(A)", "$$$$(A)"),
            ("$", "$$"),
            ("a$b$(", "a$$b$$("),
        ] {
            assert_eq!(kube_literal(raw), escaped);
            assert!(kubelet_references(escaped).is_empty(), "{escaped}");
        }
        assert_eq!(kubelet_references("x$(PGPASSWORD).sql"), ["PGPASSWORD"]);
        assert_eq!(kubelet_references("$$$(A)"), ["A"]);
        assert_eq!(kubelet_references("$(A"), Vec::<&str>::new());
        assert_eq!(
            env("PGKEEP_UPLOAD_FILE", "/backups/x$(PGPASSWORD).sql").value,
            Some("/backups/x$$(PGPASSWORD).sql".to_owned())
        );
    }

    #[test]
    fn only_database_objects_carry_the_app_label() {
        let s = Settings::default();
        assert_eq!(labels(&s, Component::Database)["app"], "postgres");
        assert_eq!(labels(&s, Component::Storage)["app"], "postgres");
        for c in [
            Component::BackupLogical,
            Component::Restore,
            Component::Bootstrap,
            Component::Wipe,
            Component::Loader,
        ] {
            assert!(!labels(&s, c).contains_key("app"), "{c:?}");
        }
    }

    #[test]
    fn restricted_containers_drop_everything() {
        let s = Settings::default();
        let c = restricted(&s);
        assert_eq!(c.run_as_user, Some(999));
        assert_eq!(c.run_as_non_root, Some(true));
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
        let r = root_chown_only();
        assert_eq!(r.run_as_user, Some(0));
        assert_eq!(
            r.capabilities.unwrap().add.unwrap(),
            vec!["CHOWN", "FOWNER"]
        );
    }

    #[test]
    fn passwords_come_from_the_secret_never_a_literal() {
        let s = Settings::default();
        for (env, name) in [
            (server_env(&s), "POSTGRES_PASSWORD"),
            (client_env(&s), "PGPASSWORD"),
        ] {
            let pw = env.iter().find(|e| e.name == name).unwrap();
            assert!(pw.value.is_none());
            let r = pw
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(r.name, "postgres-superuser");
            assert_eq!(r.key, SECRET_PASSWORD_KEY);
        }
        let host = |e: &[EnvVar]| {
            e.iter()
                .find(|e| e.name == "PGHOST")
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(host(&client_env(&s)), "postgres");
        assert_eq!(host(&server_env(&s)), "/var/run/postgresql");
    }

    #[test]
    fn the_db_container_archives_as_the_wal_settings_say() {
        let mut s = Settings::default();
        s.wal.compress = pgkeep_engine::wal::Compression::Gzip;
        s.wal.zstd_level = 3;
        let e = server_env(&s);
        let get = |n: &str| e.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(get("PGKEEP_WAL_COMPRESS").as_deref(), Some("gzip"));
        assert_eq!(get("PGKEEP_WAL_ZSTD_LEVEL").as_deref(), Some("3"));
        // And what is written there reads back as the same settings.
        let r = pgkeep_engine::settings::resolve(&pgkeep_engine::settings::Inputs {
            env: e
                .iter()
                .filter_map(|v| Some((v.name.clone(), v.value.clone()?)))
                .collect(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.settings.wal, s.wal);
    }

    #[test]
    fn settings_reach_the_environment() {
        let mut s = Settings::default();
        s.postgres.uid = 70;
        s.paths.wal_archive = "/srv/wal".into();
        let e = settings_env(&s);
        let get = |n: &str| e.iter().find(|e| e.name == n).unwrap().value.clone();
        assert_eq!(get("PGKEEP_UID").as_deref(), Some("70"));
        assert_eq!(get("PGKEEP_WAL_ARCHIVE").as_deref(), Some("/srv/wal"));
        assert_eq!(get("PGKEEP_TARGET").as_deref(), Some("local"));
        // Every name is one pgkeep reads as a setting.
        for v in &e {
            assert!(
                pgkeep_engine::settings::ENV_KEYS
                    .iter()
                    .any(|(n, _)| *n == v.name),
                "{} is not a settings variable",
                v.name
            );
        }
    }
}
