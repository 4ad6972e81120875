//! The Deployment `postgres` (one replica, Recreate) and its Service.
//!
//! Pod layout, from the seed's "Root-Squash" section made safe: `fix-run` (root, CAP_CHOWN and
//! CAP_FOWNER only, no persistent volume) prepares the socket emptyDir 999:999 0775; `prep-dirs`
//! (uid 999) runs the mount guard and makes PGDATA 0700; `db` (uid 999) runs `pgkeep serve`. The
//! data volume is mounted ONLY at the volume root, PGDATA is its `data` subdirectory. `metrics`
//! (uid 999) serves `pgkeep metrics` on port 9187 (named `metrics`), with read-only mounts of
//! the three volumes and the socket directory it reports on. With `offsite.url` set, `offsite`
//! (uid 999) runs `pgkeep offsite sync --follow`: every new WAL file and bundle goes to object
//! storage within seconds, outside `archive_command` (which stays as fast as without), from
//! read-only mounts; its credentials come from the Secret `offsite.credentials_secret` names.
//! With `wal.stream` = `async` or `sync`, `walstream` (uid 999) runs `pgkeep wal stream` over the
//! shared socket into the WAL archive (`--synchronous` for `sync`, where `serve` names it in
//! `synchronous_standby_names`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgkeep_engine::settings::Settings;

use super::common::*;

/// Seconds the kubelet waits after SIGTERM before SIGKILL. `pgkeep serve` turns SIGTERM into a
/// fast shutdown (roll back, checkpoint, exit); a checkpoint of a busy server can take a while.
pub const TERMINATION_GRACE_SECONDS: i64 = 120;

/// The port's name on the container, used by the Service.
pub const PORT_NAME: &str = "postgres";

/// The db pod's container serving `/metrics` (`pgkeep metrics --listen`).
pub const METRICS_CONTAINER: &str = "metrics";
/// Its port, named `metrics`.
pub const METRICS_PORT: u16 = 9187;
/// The db pod's off-site follower (`pgkeep offsite sync --follow`), when `offsite.url` is set.
pub const OFFSITE_CONTAINER: &str = "offsite";
/// Seconds between the follower's rounds.
pub const OFFSITE_INTERVAL_SECONDS: u32 = 10;
/// The db pod's WAL streamer (`pgkeep wal stream`), when `wal.stream` is not `off`.
pub const WALSTREAM_CONTAINER: &str = "walstream";

/// `pgkeep wal stream [--synchronous]`: pg_receivewal through the replication slot `pgkeep`,
/// connected over the socket directory it shares with the db container (local connections are
/// trusted there, as initdb set them up), writing into the WAL archive's `stream/` spool and
/// handing completed segments to the archive. It reconnects with backoff while the server
/// starts or restarts.
fn walstream_container(s: &Settings) -> k8s_openapi::api::core::v1::Container {
    let mut args = vec!["wal", "stream"];
    if s.wal.stream == pgkeep_engine::settings::StreamMode::Sync {
        args.push("--synchronous");
    }
    let mut e = settings_env(s);
    e.push(env("PGHOST", s.paths.run_dir.display()));
    let mut c = pgkeep_container(
        s,
        WALSTREAM_CONTAINER,
        &args,
        e,
        vec![wal_mount(s), read_only(run_mount(s))],
    );
    c.resources = Some(sidecar_resources("32Mi", "128Mi"));
    c
}

fn pg_isready(s: &Settings) -> ExecAction {
    ExecAction {
        command: Some(vec![
            "pg_isready".to_owned(),
            "-q".to_owned(),
            "-h".to_owned(),
            s.paths.run_dir.display().to_string(),
            "-p".to_owned(),
            s.postgres.port.to_string(),
            "-U".to_owned(),
            s.postgres.user.clone(),
            "-d".to_owned(),
            s.postgres.database.clone(),
        ]),
    }
}

fn probe(s: &Settings, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(pg_isready(s)),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// A small pgkeep sidecar's resources: 10m CPU requested, `request`/`limit` of memory.
fn sidecar_resources(request: &str, limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("10m".to_owned())),
            ("memory".to_owned(), Quantity(request.to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(limit.to_owned()),
        )])),
        ..Default::default()
    }
}

/// `pgkeep metrics --listen 0.0.0.0:9187`: reads PostgreSQL over the socket, pg_wal's
/// archive_status, the WAL archive, the backups volume (bundles and result records) and statvfs
/// of each; writes nothing, so every mount is read-only.
fn metrics_container(s: &Settings) -> k8s_openapi::api::core::v1::Container {
    let listen = format!("0.0.0.0:{METRICS_PORT}");
    let mut e = settings_env(s);
    e.push(env("PGHOST", s.paths.run_dir.display()));
    e.push(env("PGKEEP_WAL_ARCHIVE_TIMEOUT", s.wal.archive_timeout));
    let mut c = pgkeep_container(
        s,
        METRICS_CONTAINER,
        &["metrics", "--listen", &listen],
        e,
        vec![
            read_only(data_mount(s)),
            read_only(wal_mount(s)),
            read_only(backups_mount(s)),
            read_only(run_mount(s)),
        ],
    );
    c.ports = Some(vec![ContainerPort {
        name: Some(METRICS_CONTAINER.to_owned()),
        container_port: METRICS_PORT.into(),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }]);
    c.resources = Some(sidecar_resources("32Mi", "128Mi"));
    c
}

/// `pgkeep offsite sync --follow`: uploads what is new in the WAL archive and the backups
/// volume (both mounted read-only; the data volume too, read-only, for the system identifier in
/// pg_control) and applies off-site retention. It writes its status to the socket directory
/// (the one writable mount), where the metrics container reads it. The credentials Secret is
/// referenced as optional: a missing Secret must not keep the database's pod from starting;
/// the follower then logs the failed uploads and the off-site metrics show it.
fn offsite_container(s: &Settings) -> k8s_openapi::api::core::v1::Container {
    let interval = OFFSITE_INTERVAL_SECONDS.to_string();
    let mut c = pgkeep_container(
        s,
        OFFSITE_CONTAINER,
        &["offsite", "sync", "--follow", "--interval", &interval],
        settings_env(s),
        vec![
            read_only(data_mount(s)),
            read_only(wal_mount(s)),
            read_only(backups_mount(s)),
            run_mount(s),
        ],
    );
    c.env_from = offsite_credentials(s);
    // A few 8 MiB parts in flight, whatever the file size.
    c.resources = Some(sidecar_resources("64Mi", "256Mi"));
    c
}

/// The pod's containers and volumes.
pub fn pod_spec(s: &Settings) -> PodSpec {
    let fix_run = {
        let mut c = pgkeep_container(
            s,
            "fix-run",
            &["prep-dirs", "--run-dir-only"],
            settings_env(s),
            vec![run_mount(s)],
        );
        c.security_context = Some(root_chown_only());
        c
    };
    let prep_dirs = pgkeep_container(
        s,
        "prep-dirs",
        &["prep-dirs", "--data-only"],
        settings_env(s),
        vec![data_mount(s), tmp_mount()],
    );
    let mut db = pgkeep_container(
        s,
        &s.kube.container,
        &["serve"],
        server_env(s),
        vec![
            data_mount(s),
            wal_mount(s),
            run_mount(s),
            tmp_mount(),
            init_mount(),
        ],
    );
    db.ports = Some(vec![ContainerPort {
        name: Some(PORT_NAME.to_owned()),
        container_port: s.postgres.port.into(),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }]);
    // Startup covers initdb, init scripts and a long crash or archive recovery (up to an hour);
    // liveness only starts once it has passed.
    db.startup_probe = Some(probe(s, 10, 5, 360));
    db.readiness_probe = Some(probe(s, 10, 5, 3));
    db.liveness_probe = Some(probe(s, 30, 10, 6));
    db.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(s.kube.cpu_request.clone())),
            ("memory".to_owned(), Quantity(s.kube.memory_request.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(s.kube.memory_limit.clone()),
        )])),
        ..Default::default()
    });
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(s)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        init_containers: Some(vec![fix_run, prep_dirs]),
        containers: {
            let mut c = vec![db, metrics_container(s)];
            if s.wal.stream != pgkeep_engine::settings::StreamMode::Off {
                c.push(walstream_container(s));
            }
            if !s.offsite.url.is_empty() {
                c.push(offsite_container(s));
            }
            c
        },
        volumes: Some(vec![
            data_volume(s),
            wal_volume(s),
            run_volume(),
            tmp_volume(),
            init_volume(s),
            settings_volume(s),
            backups_volume(s),
        ]),
        ..Default::default()
    }
}

/// The Deployment: one replica, `Recreate` (a ReadWriteOnce volume cannot be attached to two
/// pods during a rolling update, and two postmasters must never share a data directory).
pub fn deployment(s: &Settings) -> Deployment {
    Deployment {
        metadata: meta(s, &s.kube.deployment, Component::Database),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(db_selector(s)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(s, Component::Database)),
                    ..Default::default()
                }),
                spec: Some(pod_spec(s)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// ClusterIP Service on the PostgreSQL port, selecting the db pod.
pub fn service(s: &Settings) -> Service {
    Service {
        metadata: meta(s, &s.kube.service, Component::Database),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(db_selector(s)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: s.postgres.port.into(),
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn s() -> Settings {
        Settings::default()
    }

    fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn mounts(c: &Container) -> Vec<(String, String)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    }

    #[test]
    fn one_replica_recreate_app_label_container_db() {
        let d = deployment(&s());
        assert_eq!(d.metadata.name.as_deref(), Some("postgres"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let sel = spec.selector.match_labels.unwrap();
        assert_eq!(sel, BTreeMap::from([("app".into(), "postgres".into())]));
        let tl = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(tl["app"], "postgres");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[0].name, "db");
        assert_eq!(pod.containers[1].name, "metrics");
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["serve".to_owned()][..])
        );
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some(s().kube.image.as_str())
        );
    }

    #[test]
    fn data_volume_only_at_the_root_pgdata_below_it() {
        let pod = pod_spec(&s());
        let data_claim = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOL_DATA)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .unwrap();
        assert_eq!(data_claim.claim_name, "pgdata-big");
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let data: Vec<_> = mounts(c)
                .into_iter()
                .filter(|(n, _)| n == VOL_DATA)
                .collect();
            assert!(data.len() <= 1, "{}: data mounted twice", c.name);
            for (_, p) in &data {
                assert_eq!(p, "/var/lib/postgresql", "{}", c.name);
            }
            assert!(
                !mounts(c)
                    .iter()
                    .any(|(_, p)| p == "/var/lib/postgresql/data"),
                "{}: nothing may be mounted at PGDATA",
                c.name
            );
        }
        let db = container(&pod, "db");
        let env = db.env.as_ref().unwrap();
        let pgdata = env.iter().find(|e| e.name == "PGDATA").unwrap();
        assert_eq!(pgdata.value.as_deref(), Some("/var/lib/postgresql/data"));
        let m = mounts(db);
        assert!(m.contains(&(VOL_WAL.into(), "/wal-archive".into())));
        assert!(m.contains(&(VOL_RUN.into(), "/var/run/postgresql".into())));
        let wal = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOL_WAL)
            .unwrap();
        assert_eq!(
            wal.persistent_volume_claim.as_ref().unwrap().claim_name,
            "pg-wal-archive"
        );
        let run = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == VOL_RUN)
            .unwrap();
        assert!(run.empty_dir.is_some());
        let pw = env.iter().find(|e| e.name == "POSTGRES_PASSWORD").unwrap();
        assert!(pw.value.is_none() && pw.value_from.is_some());
    }

    #[test]
    fn init_containers_fix_run_then_prep_dirs() {
        let pod = pod_spec(&s());
        let names: Vec<_> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["fix-run", "prep-dirs"]);
        let fix = container(&pod, "fix-run");
        assert_eq!(fix.image, Some(s().kube.image));
        assert_eq!(
            fix.args.as_deref().unwrap(),
            ["prep-dirs", "--run-dir-only"]
        );
        let sc = fix.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
        assert_eq!(caps.add.as_deref().unwrap(), ["CHOWN", "FOWNER"]);
        assert_eq!(
            mounts(fix),
            [
                (VOL_RUN.into(), "/var/run/postgresql".into()),
                (VOL_SETTINGS.into(), SETTINGS_DIR.into())
            ]
        );
        let prep = container(&pod, "prep-dirs");
        assert_eq!(prep.image, Some(s().kube.image));
        assert_eq!(prep.args.as_deref().unwrap(), ["prep-dirs", "--data-only"]);
        assert_eq!(
            prep.security_context.as_ref().unwrap().run_as_user,
            Some(999)
        );
    }

    #[test]
    fn pod_and_containers_are_hardened() {
        let pod = pod_spec(&s());
        let ps = pod.security_context.as_ref().unwrap();
        assert_eq!(ps.run_as_user, Some(999));
        assert_eq!(ps.run_as_group, Some(999));
        assert_eq!(ps.fs_group, Some(999));
        assert_eq!(ps.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        assert_eq!(ps.run_as_non_root, Some(true));
        assert_eq!(ps.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
                ["ALL"]
            );
            assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            if c.name != "fix-run" {
                assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
                assert_eq!(sc.run_as_user, Some(999), "{}", c.name);
            }
        }
    }

    #[test]
    fn db_has_probes_resources_and_grace_period() {
        let pod = pod_spec(&s());
        let db = container(&pod, "db");
        for p in [&db.readiness_probe, &db.liveness_probe, &db.startup_probe] {
            let cmd = p
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command
                .clone()
                .unwrap();
            assert_eq!(cmd[0], "pg_isready");
            assert!(cmd.contains(&"/var/run/postgresql".to_owned()));
        }
        let r = db.resources.as_ref().unwrap();
        let req = r.requests.as_ref().unwrap();
        assert_eq!(req["cpu"], Quantity("250m".into()));
        assert_eq!(req["memory"], Quantity("512Mi".into()));
        assert_eq!(r.limits.as_ref().unwrap()["memory"], Quantity("2Gi".into()));
        assert!(pod.termination_grace_period_seconds.unwrap() >= 60);
    }

    #[test]
    fn the_offsite_follower_runs_only_when_configured_reads_only_and_takes_the_named_secret() {
        let pod = pod_spec(&s());
        assert!(
            pod.containers.iter().all(|c| c.name != OFFSITE_CONTAINER),
            "no follower without offsite.url"
        );
        let mut with = s();
        with.offsite.url = "s3://bucket/prefix".into();
        let pod = pod_spec(&with);
        let f = container(&pod, OFFSITE_CONTAINER);
        assert_eq!(
            f.args.as_deref().unwrap(),
            ["offsite", "sync", "--follow", "--interval", "10"]
        );
        // Every volume read-only but the socket directory, where its status goes.
        assert!(
            f.volume_mounts
                .iter()
                .flatten()
                .all(|m| (m.read_only == Some(true)) != (m.name == VOL_RUN)),
            "{:?}",
            f.volume_mounts
        );
        assert!(f.env_from.is_none(), "no Secret unless one is named");
        with.offsite.credentials_secret = "my-s3-keys".into();
        let pod = pod_spec(&with);
        let f = container(&pod, OFFSITE_CONTAINER);
        let from = &f.env_from.as_ref().unwrap()[0];
        let secret = from.secret_ref.as_ref().unwrap();
        assert_eq!(secret.name, "my-s3-keys");
        assert_eq!(
            secret.optional,
            Some(true),
            "a missing Secret never blocks the database"
        );
        // The follower never gets the superuser password.
        assert!(
            f.env.iter().flatten().all(|e| e.value_from.is_none()),
            "{:?}",
            f.env
        );
    }

    #[test]
    fn the_wal_streamer_runs_only_when_streaming_is_on_and_is_synchronous_for_sync() {
        use pgkeep_engine::settings::StreamMode;
        assert!(
            pod_spec(&s())
                .containers
                .iter()
                .all(|c| c.name != WALSTREAM_CONTAINER),
            "no streamer with wal.stream = off"
        );
        for (mode, want) in [
            (StreamMode::Async, vec!["wal", "stream"]),
            (StreamMode::Sync, vec!["wal", "stream", "--synchronous"]),
        ] {
            let mut with = s();
            with.wal.stream = mode;
            let pod = pod_spec(&with);
            let w = container(&pod, WALSTREAM_CONTAINER);
            assert_eq!(w.args.as_deref().unwrap(), want);
            let mounts = w.volume_mounts.as_ref().unwrap();
            let archive = mounts
                .iter()
                .find(|m| m.mount_path == with.paths.wal_archive.display().to_string())
                .expect("the WAL archive is mounted");
            assert_ne!(archive.read_only, Some(true), "it writes the archive");
            assert!(
                mounts
                    .iter()
                    .all(|m| m.mount_path != with.paths.pgroot.display().to_string()),
                "the data volume is not mounted: {mounts:?}"
            );
            let run_as = w.security_context.as_ref().unwrap().run_as_user;
            assert_eq!(run_as, Some(999), "never root (pg_receivewal refuses it)");
        }
    }

    #[test]
    fn metrics_container_serves_9187_and_only_reads() {
        let pod = pod_spec(&s());
        let m = container(&pod, "metrics");
        assert_eq!(m.image, Some(s().kube.image));
        assert_eq!(
            m.args.as_deref().unwrap(),
            ["metrics", "--listen", "0.0.0.0:9187"]
        );
        let port = &m.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9187)
        );
        let mounts: Vec<_> = m.volume_mounts.iter().flatten().collect();
        let paths: Vec<&str> = mounts.iter().map(|v| v.mount_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/var/lib/postgresql",
                "/wal-archive",
                "/backups",
                "/var/run/postgresql",
                "/etc/pgkeep"
            ]
        );
        assert!(
            mounts.iter().all(|v| v.read_only == Some(true)),
            "{mounts:?}"
        );
        let sc = m.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_user, Some(999));
        let env = m.env.as_ref().unwrap();
        assert!(
            !env.iter().any(|e| e.name.contains("PASSWORD")),
            "the metrics container needs no password (peer over the socket)"
        );
    }

    #[test]
    fn service_is_cluster_ip_on_5432() {
        let svc = service(&s());
        assert_eq!(svc.metadata.name.as_deref(), Some("postgres"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 5432);
        assert_eq!(spec.selector.unwrap()["app"], "postgres");
    }

    #[test]
    fn every_value_follows_settings() {
        let mut s = Settings::default();
        s.kube.namespace = "ns2".into();
        s.kube.deployment = "pg".into();
        s.kube.container = "server".into();
        s.kube.image = "registry.example/pgkeep:9".into();
        s.postgres.uid = 70;
        s.postgres.gid = 71;
        s.postgres.port = 6543;
        s.paths.pgroot = "/srv/pg".into();
        s.paths.pgdata = "/srv/pg/main".into();
        s.pvc.data.name = "pgdata-bigger".into();
        s.kube.memory_limit = "8Gi".into();
        let d = deployment(&s);
        assert_eq!(d.metadata.namespace.as_deref(), Some("ns2"));
        assert_eq!(d.metadata.name.as_deref(), Some("pg"));
        let pod = d.spec.unwrap().template.spec.unwrap();
        let db = container(&pod, "server");
        assert_eq!(db.image.as_deref(), Some("registry.example/pgkeep:9"));
        assert_eq!(db.ports.as_ref().unwrap()[0].container_port, 6543);
        assert!(mounts(db).contains(&(VOL_DATA.into(), "/srv/pg".into())));
        let ps = pod.security_context.as_ref().unwrap();
        assert_eq!(
            (ps.run_as_user, ps.run_as_group, ps.fs_group),
            (Some(70), Some(71), Some(71))
        );
        assert!(pod.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == "pgdata-bigger")
        }));
        assert_eq!(
            db.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"],
            Quantity("8Gi".into())
        );
        assert_eq!(service(&s).spec.unwrap().ports.unwrap()[0].port, 6543);
    }
}
