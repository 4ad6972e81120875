//! Tree-level tests: YAML snapshots of every file, the round trip through the k8s-openapi
//! types, the layout, properties every pod shares, and the committed `deploy/` tree.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use pgkeep_engine::settings::Settings;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

fn tree() -> Tree {
    render(&Settings::default())
}

#[test]
fn snapshot_every_file() {
    for (path, text) in tree().texts().unwrap() {
        let name = path.replace('/', "__");
        insta::assert_snapshot!(name, text);
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(
    file: &str,
    index: usize,
    doc: &str,
) -> serde_json::Value {
    let typed: T = crate::yaml::from_yaml(file, doc)
        .unwrap_or_else(|e| panic!("{file} document {index}: {e}"));
    serde_json::to_value(&typed).unwrap()
}

#[test]
fn every_object_round_trips_through_its_type() {
    let t = tree();
    let mut kinds = BTreeSet::new();
    for f in &t.files {
        let text = f.to_yaml().unwrap();
        // Split the file exactly as written.
        let docs: Vec<&str> = text.split("\n---\n").skip(1).collect();
        assert_eq!(docs.len(), f.objects.len(), "{}", f.path);
        for (i, (doc, obj)) in docs.iter().zip(&f.objects).enumerate() {
            let expected = obj.to_value();
            // YAML -> untyped equals the object (nothing lost in YAML).
            let untyped: serde_json::Value = crate::yaml::from_yaml(&f.path, doc).unwrap();
            assert_eq!(untyped, expected, "{} document {i} changed in YAML", f.path);
            // YAML -> typed -> JSON equals the object (no field unknown to the type).
            let back = match obj {
                Object::Pvc(_) => round_trip::<PersistentVolumeClaim>(&f.path, i, doc),
                Object::Secret(_) => round_trip::<Secret>(&f.path, i, doc),
                Object::ConfigMap(_) => round_trip::<ConfigMap>(&f.path, i, doc),
                Object::Deployment(_) => round_trip::<Deployment>(&f.path, i, doc),
                Object::Service(_) => round_trip::<Service>(&f.path, i, doc),
                Object::CronJob(_) => round_trip::<CronJob>(&f.path, i, doc),
                Object::Job(_) => round_trip::<Job>(&f.path, i, doc),
                Object::Pod(_) => round_trip::<Pod>(&f.path, i, doc),
                Object::ServiceAccount(_) => round_trip::<ServiceAccount>(&f.path, i, doc),
                Object::Role(_) => round_trip::<Role>(&f.path, i, doc),
                Object::RoleBinding(_) => round_trip::<RoleBinding>(&f.path, i, doc),
                Object::Kustomization(_) => round_trip::<Kustomization>(&f.path, i, doc),
                Object::PrometheusRules(_) => {
                    round_trip::<super::monitoring::RuleFile>(&f.path, i, doc)
                }
                Object::PrometheusRule(_) => {
                    round_trip::<super::monitoring::PrometheusRule>(&f.path, i, doc)
                }
                Object::PodMonitor(_) => {
                    round_trip::<super::monitoring::PodMonitor>(&f.path, i, doc)
                }
            };
            assert_eq!(
                back, expected,
                "{} document {i} did not survive its type",
                f.path
            );
            kinds.insert(obj.kind());
        }
    }
    assert_eq!(kinds.len(), 15, "every kind is exercised: {kinds:?}");
}

#[test]
fn a_misspelt_field_is_caught_by_the_round_trip() {
    // The check above is only worth something if a typo changes the result.
    let doc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  typo: ClusterIP\n";
    let untyped: serde_json::Value = crate::yaml::from_yaml("t", doc).unwrap();
    let typed = round_trip::<Service>("t", 0, doc);
    assert_ne!(typed, untyped);
}

#[test]
fn layout_is_the_seeds() {
    let paths: BTreeSet<String> = tree().files.iter().map(|f| f.path.clone()).collect();
    for p in [
        "infra/k8s/base/postgres/pvc-big.yaml",
        "infra/k8s/base/postgres/wal-archive-pvc.yaml",
        "infra/k8s/base/postgres/secret.superuser.yaml",
        "infra/k8s/base/postgres/deploy.yaml",
        "infra/k8s/base/postgres/kustomization.yaml",
        "infra/k8s/overlays/dev/kustomization.yaml",
        "infra/k8s/overlays/dev/jobs/restore-from-dump.yaml",
        "infra/k8s/overlays/dev/jobs/bootstrap-from-basebackup.yaml",
        "infra/k8s/overlays/dev/jobs/bootstrap-rbac.yaml",
        "infra/k8s/overlays/dev/jobs/pgdata-wipe-full.yaml",
        "infra/k8s/overlays/dev/jobs/restore-from-upload.yaml",
        "infra/k8s/overlays/dev/jobs/backups-loader.yaml",
    ] {
        assert!(paths.contains(p), "missing {p}");
    }
}

#[test]
fn base_kustomization_lists_no_pvc_and_no_secret() {
    let t = tree();
    let kust = t
        .files
        .iter()
        .find(|f| f.path == format!("{BASE_DIR}/kustomization.yaml"))
        .unwrap();
    let Object::Kustomization(k) = &kust.objects[0] else {
        panic!("not a kustomization")
    };
    assert_eq!(k.namespace.as_deref(), Some("record-platform"));
    for r in &k.resources {
        let f = t
            .files
            .iter()
            .find(|f| f.path == format!("{BASE_DIR}/{r}"))
            .unwrap_or_else(|| panic!("{r} listed but not rendered"));
        for o in &f.objects {
            assert!(
                !matches!(o, Object::Pvc(_) | Object::Secret(_)),
                "{r} holds a {}",
                o.kind()
            );
        }
    }
    for needed in [
        files::DEPLOY,
        files::SERVICE,
        files::CRON_LOGICAL,
        files::CRON_PHYSICAL,
        files::CRON_INCREMENTAL,
    ] {
        assert!(
            k.resources.iter().any(|r| r == needed),
            "{needed} not listed"
        );
    }
}

#[test]
fn every_object_is_in_the_namespace_and_every_pod_is_hardened() {
    let s = Settings::default();
    for (f, o) in tree().objects() {
        let v = o.to_value();
        if !matches!(o, Object::Kustomization(_) | Object::PrometheusRules(_)) {
            assert_eq!(v["metadata"]["namespace"], "record-platform", "{}", f.path);
        }
        let Some(pod) = o.pod_spec() else { continue };
        let is_bootstrap = f.path.ends_with(files::BOOTSTRAP);
        assert_eq!(
            pod.automount_service_account_token,
            Some(is_bootstrap),
            "{}: token only for bootstrap",
            f.path
        );
        let ps = pod.security_context.as_ref().unwrap();
        assert_eq!(ps.run_as_user, Some(999), "{}", f.path);
        assert_eq!(ps.fs_group, Some(999), "{}", f.path);
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            assert_eq!(
                c.image.as_deref(),
                Some(s.kube.image.as_str()),
                "{} {}",
                f.path,
                c.name
            );
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
            let root = sc.run_as_user == Some(0);
            assert_eq!(
                root,
                c.name == "fix-run",
                "{} {}: only fix-run is root",
                f.path,
                c.name
            );
            // No literal password anywhere.
            for e in c.env.iter().flatten() {
                if e.name.contains("PASSWORD") {
                    assert!(
                        e.value.is_none(),
                        "{} {}: literal {}",
                        f.path,
                        c.name,
                        e.name
                    );
                }
            }
        }
    }
}

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn list_files(dir: &std::path::Path, root: &std::path::Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            list_files(&p, root, out);
        } else {
            out.insert(
                p.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}

#[test]
fn committed_deploy_tree_matches_render() {
    const REGEN: &str = "regenerate it with: cargo run -p pgkeep -- render --defaults --out deploy";
    let dir = deploy_dir();
    let mut on_disk = BTreeSet::new();
    list_files(&dir, &dir, &mut on_disk);
    let rendered = tree().texts().unwrap();
    let expected: BTreeSet<String> = rendered.iter().map(|(p, _)| p.clone()).collect();
    let extra: Vec<_> = on_disk.difference(&expected).collect();
    assert!(
        extra.is_empty(),
        "deploy/ has files render does not produce: {extra:?}\nremove them, then {REGEN}"
    );
    for (path, text) in rendered {
        let got = std::fs::read_to_string(dir.join(&path)).unwrap_or_default();
        assert!(
            got == text,
            "deploy/{path} differs from what `pgkeep render` produces now; {REGEN}"
        );
    }
}

#[test]
fn every_value_comes_from_settings() {
    // Change every setting the manifests use; no default value may survive anywhere.
    let d = Settings::default();
    let mut s = Settings::default();
    s.kube.namespace = "ns-x".into();
    s.kube.app = "db-x".into();
    s.kube.deployment = "dep-x".into();
    s.kube.container = "ctr-x".into();
    s.kube.service = "svc-x".into();
    s.kube.secret = "sec-x".into();
    s.kube.image = "reg.example/img-x:1".into();
    s.kube.image_pull_policy = "Always".into();
    s.kube.storage_class = "class-x".into();
    s.kube.cpu_request = "7m".into();
    s.kube.memory_request = "7Mi".into();
    s.kube.memory_limit = "77Mi".into();
    s.pvc.data.name = "pvc-data-x".into();
    s.pvc.data.size = "1Ti".into();
    s.pvc.wal_archive.name = "pvc-wal-x".into();
    s.pvc.wal_archive.size = "2Ti".into();
    s.pvc.backups.name = "pvc-bk-x".into();
    s.pvc.backups.size = "3Ti".into();
    s.paths.pgroot = "/srv/pg".into();
    s.paths.pgdata = "/srv/pg/main".into();
    s.paths.wal_archive = "/srv/wal".into();
    s.paths.backups = "/srv/bk".into();
    s.paths.run_dir = "/srv/sock".into();
    s.postgres.uid = 1234;
    s.postgres.gid = 4321;
    s.postgres.port = 6543;
    s.postgres.database = "db-name-x".into();
    s.postgres.user = "su-x".into();
    s.schedule.logical = "1 2 * * *".into();
    s.schedule.physical = "3 4 * * 5".into();
    s.schedule.timezone = "Europe/Berlin".into();
    let texts = render(&s).texts().unwrap();
    let defaults = [
        d.kube.namespace.as_str(),
        &d.kube.secret,
        &d.kube.image,
        &d.kube.image_pull_policy,
        &d.kube.cpu_request,
        &d.kube.memory_request,
        &d.kube.memory_limit,
        &d.pvc.data.name,
        &d.pvc.data.size,
        &d.pvc.wal_archive.name,
        &d.pvc.wal_archive.size,
        &d.pvc.backups.name,
        &d.pvc.backups.size,
        "/var/lib/postgresql",
        "/wal-archive",
        "/backups",
        "/var/run/postgresql",
        "999",
        "5432",
        &d.postgres.database,
        &d.schedule.logical,
        &d.schedule.physical,
        &d.schedule.timezone,
        "name: db\n",
        "app: postgres\n",
        // (`name: postgres` stays: it is the fixed name of the container port.)
        "postgres-",
    ];
    for (path, text) in &texts {
        for v in defaults {
            assert!(
                !text.contains(v),
                "{path} still contains the default {v:?}:\n{text}"
            );
        }
    }
    let all: String = texts.iter().map(|(_, t)| t.as_str()).collect();
    for v in [
        "ns-x",
        "db-x",
        "dep-x",
        "ctr-x",
        "svc-x",
        "sec-x",
        "reg.example/img-x:1",
        "Always",
        "class-x",
        "7m",
        "7Mi",
        "77Mi",
        "pvc-data-x",
        "1Ti",
        "pvc-wal-x",
        "2Ti",
        "pvc-bk-x",
        "3Ti",
        "/srv/pg/main",
        "/srv/wal",
        "/srv/bk",
        "/srv/sock",
        "1234",
        "4321",
        "6543",
        "db-name-x",
        "su-x",
        "1 2 * * *",
        "3 4 * * 5",
        "Europe/Berlin",
    ] {
        assert!(all.contains(v), "{v} does not reach the manifests");
    }
}

#[test]
fn dockerfile_base_matches_the_image_settings() {
    let dockerfile =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile"))
            .unwrap();
    let base = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG POSTGRES_IMAGE="))
        .expect("Dockerfile has ARG POSTGRES_IMAGE=");
    let major = |image: &str| crate::lint::workload_image_major(image);
    let d = Settings::default();
    assert!(
        major(base).is_some_and(|m| m >= 18),
        "{base}: must be 18+ (VOLUME shadowing)"
    );
    assert_eq!(
        major(base),
        major(&d.kube.postgres_image),
        "Dockerfile base vs kube.postgres_image"
    );
    assert!(
        d.kube
            .image
            .ends_with(&format!("-pg{}", major(base).unwrap())),
        "kube.image {} is not built from {base}",
        d.kube.image
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("COPY --from=build"));
}

/// Every env value, command and arg of every container (init containers included) in `tree`,
/// with the variable references the kubelet would expand in it.
fn kubelet_expansions(tree: &Tree) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (f, o) in tree.objects() {
        let Some(pod) = o.pod_spec() else { continue };
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for c in containers {
            let values = c
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value.as_deref())
                .chain(c.command.iter().flatten().map(String::as_str))
                .chain(c.args.iter().flatten().map(String::as_str));
            for v in values {
                for r in common::kubelet_references(v) {
                    found.push((format!("{} {}", f.path, c.name), r.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn no_setting_expands_into_another_variable_in_any_container() {
    let hostile = "$(PGPASSWORD)";
    let mut s = Settings::default();
    s.paths.pgroot = format!("/var/lib/{hostile}").into();
    s.paths.pgdata = format!("/var/lib/{hostile}/data").into();
    s.paths.wal_archive = format!("/wal-{hostile}").into();
    s.paths.backups = format!("/backups-{hostile}").into();
    s.paths.run_dir = format!("/run-{hostile}").into();
    s.postgres.database = format!("db{hostile}");
    s.postgres.user = format!("u{hostile}");
    s.kube.service = format!("svc{hostile}");
    s.kube.deployment = format!("dep{hostile}");
    s.kube.app = format!("app{hostile}");
    let found = kubelet_expansions(&render(&s));
    // The one reference pgkeep writes itself: the upload Job's file argument.
    let upload = format!("{JOBS_DIR}/{}.yaml restore", jobs::RESTORE_FROM_UPLOAD);
    assert_eq!(
        found,
        [(upload, jobs::UPLOAD_FILE_ENV.to_owned())],
        "only $(PGKEEP_UPLOAD_FILE) may expand"
    );
}
