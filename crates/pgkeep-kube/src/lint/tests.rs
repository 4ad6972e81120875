//! Each rule against a real YAML case, the rendered tree against all rules, and the outputs.

use std::path::{Path, PathBuf};

use pgkeep_engine::settings::Settings;

use super::*;

fn lint_yaml(text: &str) -> Report {
    lint(&[Source::parse("case.yaml", text).unwrap()])
}

fn ids(r: &Report) -> Vec<&'static str> {
    let mut v: Vec<_> = r.findings.iter().map(|f| f.rule).collect();
    v.dedup();
    v
}

/// A Deployment in the seed's style; `mounts`, `env`, `image` and `security` are spliced in.
fn deployment(image: &str, mounts: &str, env: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: postgres
  namespace: record-platform
spec:
  replicas: 1
  strategy:
    type: Recreate
{extra_spec}  selector:
    matchLabels: {{app: postgres}}
  template:
    metadata:
      labels: {{app: postgres}}
    spec:
      securityContext:
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        runAsNonRoot: true
        seccompProfile: {{type: RuntimeDefault}}
      containers:
        - name: db
          image: {image}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {{drop: [ALL]}}
          env:
{env}          volumeMounts:
{mounts}      volumes:
        - name: data
          persistentVolumeClaim: {{claimName: pgdata-big}}
        - name: wal-archive
          persistentVolumeClaim: {{claimName: pg-wal-archive}}
"#
    )
}

const PGDATA_ENV: &str = "            - {name: PGDATA, value: /var/lib/postgresql/data}\n";
const GOOD_MOUNTS: &str = "            - {name: data, mountPath: /var/lib/postgresql}\n            - {name: wal-archive, mountPath: /wal-archive}\n";

#[test]
fn a_correct_hand_written_deployment_is_clean() {
    let r = lint_yaml(&deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, ""));
    assert!(r.findings.is_empty(), "{}", report::human(&r));
}

#[test]
fn seed_incorrect_configuration_is_flagged() {
    // "PVC mounted at: /var/lib/postgresql/data ❌"
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql/data}\n";
    let r = lint_yaml(&deployment("postgres:16", mounts, PGDATA_ENV, ""));
    assert_eq!(ids(&r), ["PGK001"], "{}", report::human(&r));
    let f = &r.findings[0];
    // A crash loop on first start, not data loss: a warning that says why.
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("lost+found"), "{}", f.message);
    assert!(f.message.contains("crash-loops"), "{}", f.message);
    assert_eq!(f.object.kind, "Deployment");
    assert_eq!(f.object.namespace.as_deref(), Some("record-platform"));
    assert_eq!(f.object.name, "postgres");
    assert_eq!(f.container.as_deref(), Some("db"));
    assert_eq!(f.file, Path::new("case.yaml"));
    assert_eq!(f.line, 1);
    assert!(f.message.contains("pgdata-big"), "{}", f.message);
}

#[test]
fn double_mount_is_flagged() {
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql}\n            - {name: data, mountPath: /var/lib/postgresql/data}\n            - {name: wal-archive, mountPath: /wal-archive}\n";
    let r = lint_yaml(&deployment("postgres:18", mounts, PGDATA_ENV, ""));
    assert!(ids(&r).contains(&"PGK002"), "{}", report::human(&r));
    assert!(ids(&r).contains(&"PGK001"));
    let f = r.findings.iter().find(|f| f.rule == "PGK002").unwrap();
    assert!(
        f.message.contains("/var/lib/postgresql/data"),
        "{}",
        f.message
    );
}

#[test]
fn the_same_claim_through_two_volumes_is_a_double_mount() {
    let text = deployment(
        "postgres:18",
        "            - {name: data, mountPath: /var/lib/postgresql}\n            - {name: data2, mountPath: /var/lib/postgresql/data}\n",
        "",
        "",
    )
    .replace(
        "      volumes:\n",
        "      volumes:\n        - name: data2\n          persistentVolumeClaim: {claimName: pgdata-big}\n",
    );
    assert!(ids(&lint_yaml(&text)).contains(&"PGK002"));
}

#[test]
fn image_volume_shadowing_is_flagged_for_17_and_older() {
    for image in [
        "postgres:16",
        "postgres:16.4-bookworm",
        "docker.io/library/postgres:17-alpine",
        "postgres:15.8-alpine3.20",
    ] {
        let mut mounts = GOOD_MOUNTS.to_owned();
        let sec = if image.contains("alpine") {
            "70"
        } else {
            "999"
        };
        let text = deployment(image, &mounts, "", "")
            .replace("runAsUser: 999", &format!("runAsUser: {sec}"));
        let r = lint_yaml(&text);
        assert_eq!(ids(&r), ["PGK003"], "{image}: {}", report::human(&r));
        assert!(r.findings[0].message.contains("anonymous volume"));
        mounts.clear();
    }
    // 18 declares VOLUME /var/lib/postgresql: fine. A PGDATA elsewhere on the volume: fine.
    assert!(
        lint_yaml(&deployment("postgres:18-bookworm", GOOD_MOUNTS, "", ""))
            .findings
            .is_empty()
    );
    let other = "            - {name: PGDATA, value: /var/lib/postgresql/pgdata}\n";
    let r = lint_yaml(&deployment("postgres:16", GOOD_MOUNTS, other, ""));
    assert!(r.findings.is_empty(), "{}", report::human(&r));
}

#[test]
fn root_containers_are_flagged() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "").replace(
        "            allowPrivilegeEscalation: false\n",
        "            allowPrivilegeEscalation: false\n            runAsUser: 0\n            runAsNonRoot: false\n",
    );
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK004"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("persistent volume"));
    // No user at all: the postgres image's user is root.
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("        runAsUser: 999\n        runAsGroup: 999\n", "")
        .replace("        runAsNonRoot: true\n", "");
    assert_eq!(ids(&lint_yaml(&text)), ["PGK004"]);
}

#[test]
fn a_root_chown_step_without_volumes_is_allowed_but_not_with_more_capabilities() {
    let init = r#"      initContainers:
        - name: fix-run
          image: busybox
          command: [sh, -c, "chown 999:999 /var/run/postgresql"]
          securityContext:
            runAsUser: 0
            runAsNonRoot: false
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL], add: [CHOWN]}
          volumeMounts:
            - {name: run, mountPath: /var/run/postgresql}
"#;
    let base = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("      containers:\n", &format!("{init}      containers:\n"))
        .replace(
            "      volumes:\n",
            "      volumes:\n        - {name: run, emptyDir: {}}\n",
        );
    let r = lint_yaml(&base);
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    let r = lint_yaml(&base.replace("add: [CHOWN]", "add: [CHOWN, SYS_ADMIN]"));
    assert_eq!(ids(&r), ["PGK004"]);
    assert!(r.findings[0].message.contains("SYS_ADMIN"));
}

#[test]
fn uid_must_match_the_image_family() {
    let r = lint_yaml(&deployment(
        "postgres:18-alpine",
        GOOD_MOUNTS,
        PGDATA_ENV,
        "",
    ));
    assert_eq!(ids(&r), ["PGK005"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("70"));
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("runAsUser: 999", "runAsUser: 1000");
    assert_eq!(ids(&lint_yaml(&text)), ["PGK005"]);
    // runAsNonRoot without a uid on the official image (USER root): the kubelet refuses it.
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("        runAsUser: 999\n", "");
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK005"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("kubelet refuses"));
}

#[test]
fn rolling_update_and_replicas_are_flagged() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("  strategy:\n    type: Recreate\n", "");
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK007"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("default"));
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("replicas: 1", "replicas: 2");
    assert_eq!(ids(&lint_yaml(&text)), ["PGK008"]);
}

#[test]
fn rolling_update_with_a_known_rwx_claim_is_fine() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("  strategy:\n    type: Recreate\n", "")
        + "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: pgdata-big}\nspec: {accessModes: [ReadWriteMany]}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: pg-wal-archive}\nspec: {accessModes: [ReadWriteMany]}\n";
    assert!(lint_yaml(&text).findings.is_empty());
}

const CRON: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: record-platform}
spec:
  schedule: "0 6 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          securityContext: {runAsUser: 999, runAsGroup: 999, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
          containers:
            - name: backup
              image: postgres:18
              command: [pg_dump]
              securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"#;

#[test]
fn cronjob_without_timezone_is_a_warning() {
    let r = lint_yaml(CRON);
    assert_eq!(ids(&r), ["PGK009"], "{}", report::human(&r));
    assert_eq!(r.findings[0].severity, Severity::Warning);
    assert_eq!(r.errors(), 0);
    let with_tz = CRON.replace("  schedule:", "  timeZone: America/New_York\n  schedule:");
    assert!(lint_yaml(&with_tz).findings.is_empty());
}

#[test]
fn archiving_without_an_archive_volume_is_flagged() {
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql}\n";
    let text = deployment("postgres:18", mounts, PGDATA_ENV, "").replace(
        "          env:\n",
        "          args: [postgres, -c, archive_mode=on, -c, \"archive_command=cp %p /wal-archive/%f\"]\n          env:\n",
    );
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK010"], "{}", report::human(&r));
    // With the archive volume mounted: clean.
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "").replace(
        "          env:\n",
        "          args: [postgres, -c, archive_mode=on]\n          env:\n",
    );
    assert!(lint_yaml(&text).findings.is_empty());
}

#[test]
fn archiving_set_in_a_mounted_config_map_is_seen() {
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql}\n            - {name: conf, mountPath: /etc/postgresql}\n";
    let text = deployment("postgres:18", mounts, PGDATA_ENV, "").replace(
        "      volumes:\n",
        "      volumes:\n        - name: conf\n          configMap: {name: pg-conf}\n",
    ) + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: pg-conf}\ndata:\n  postgresql.conf: |\n    wal_level = replica\n    archive_mode = 'on'   # archive\n";
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK010"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("pg-conf"));
}

#[test]
fn literal_passwords_are_flagged_without_showing_them() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: postgres-superuser, namespace: record-platform}\nstringData:\n  POSTGRES_PASSWORD: hunter2-literal\n  username: postgres\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: other}\ndata:\n  password: aHVudGVyMg==\n";
    let r = lint_yaml(text);
    assert_eq!(r.findings.len(), 2, "{}", report::human(&r));
    assert!(r.findings.iter().all(|f| f.rule == "PGK011"));
    assert_eq!(
        r.findings[1].line, 8,
        "the second document starts after the --- on line 7"
    );
    for out in [
        report::human(&r),
        report::json(&r).to_string(),
        report::sarif(&r, "0").to_string(),
    ] {
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!out.contains("aHVudGVyMg"), "{out}");
    }
    let template =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: postgres-superuser}\ntype: Opaque\n";
    assert!(lint_yaml(template).findings.is_empty());
}

#[test]
fn missing_hardening_is_a_warning_naming_what_is_missing() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "")
        .replace("            allowPrivilegeEscalation: false\n            capabilities: {drop: [ALL]}\n", "            privileged: true\n")
        .replace("        seccompProfile: {type: RuntimeDefault}\n", "");
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK012"], "{}", report::human(&r));
    let m = &r.findings[0].message;
    for want in [
        "allowPrivilegeEscalation",
        "drop ALL",
        "seccomp",
        "privileged",
    ] {
        assert!(m.contains(want), "{m}");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn pvc_in_a_kustomization_is_flagged() {
    let t = tempdir();
    let d = t.path();
    std::fs::write(
        d.join("pvc-big.yaml"),
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: pgdata-big}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 100Gi}}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - pvc-big.yaml\n",
    )
    .unwrap();
    let r = lint_paths(&[d.to_owned()]).unwrap();
    assert_eq!(ids(&r), ["PGK006"], "{}", report::human(&r));
    assert!(r.findings[0].file.ends_with("kustomization.yaml"));
    assert!(r.findings[0].message.contains("pgdata-big"));
    // Through an overlay that lists the base directory, linting only the overlay file.
    let overlay = d.join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(overlay.join("kustomization.yaml"), "resources: [\"..\"]\n").unwrap();
    let r = lint_paths(&[overlay.join("kustomization.yaml")]).unwrap();
    assert_eq!(ids(&r), ["PGK006"], "{}", report::human(&r));
}

#[test]
fn rendered_tree_lints_clean() {
    let t = tempdir();
    let s = Settings::default();
    crate::manifests::render(&s).write_to(t.path()).unwrap();
    let r = lint_paths(&[t.path().to_owned()]).unwrap();
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    assert_eq!(r.files, crate::manifests::render(&s).files.len());
    assert!(r.objects >= 17);
}

#[test]
fn synchronous_streaming_onto_the_data_volume_is_an_error() {
    let mut s = Settings::default();
    s.wal.stream = pgkeep_engine::settings::StreamMode::Sync;
    let t = tempdir();
    crate::manifests::render(&s).write_to(t.path()).unwrap();
    let r = lint_paths(&[t.path().to_owned()]).unwrap();
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    // The WAL archive volume pointed at the data claim.
    let deploy = t.path().join("infra/k8s/base/postgres/deploy.yaml");
    let text = std::fs::read_to_string(&deploy).unwrap();
    let bad = text.replace("claimName: pg-wal-archive", "claimName: pgdata-big");
    assert_ne!(bad, text, "the rendered Deployment names the archive claim");
    std::fs::write(&deploy, &bad).unwrap();
    let r = lint_paths(&[t.path().to_owned()]).unwrap();
    assert!(ids(&r).contains(&"PGK016"), "{}", report::human(&r));
    let f = r.findings.iter().find(|f| f.rule == "PGK016").unwrap();
    assert_eq!(f.container.as_deref(), Some("walstream"));
    assert!(f.message.contains("PGDATA"), "{}", f.message);
    // Asynchronous streaming promises no recovery point of zero: not this rule.
    s.wal.stream = pgkeep_engine::settings::StreamMode::Async;
    let t = tempdir();
    crate::manifests::render(&s).write_to(t.path()).unwrap();
    let deploy = t.path().join("infra/k8s/base/postgres/deploy.yaml");
    let text = std::fs::read_to_string(&deploy).unwrap();
    std::fs::write(
        &deploy,
        text.replace("claimName: pg-wal-archive", "claimName: pgdata-big"),
    )
    .unwrap();
    let r = lint_paths(&[t.path().to_owned()]).unwrap();
    assert!(!ids(&r).contains(&"PGK016"), "{}", report::human(&r));
}

#[test]
fn committed_deploy_tree_lints_clean() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let r = lint_paths(&[dir]).unwrap();
    assert!(r.findings.is_empty(), "{}", report::human(&r));
}

#[test]
fn outputs_carry_rule_object_file_and_fix() {
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql/data}\n";
    let r = lint_yaml(&deployment("postgres:16", mounts, PGDATA_ENV, ""));
    let h = report::human(&r);
    assert!(h.starts_with("warning[PGK001 data-volume-at-pgdata]: Deployment record-platform/postgres, container db:"), "{h}");
    assert!(h.contains("--> case.yaml:1"), "{h}");
    assert!(
        h.contains("fix: Keep PGDATA a subdirectory of the volume"),
        "{h}"
    );
    assert!(h.contains("0 error(s), 1 warning(s)"), "{h}");
    let j = report::json(&r);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["warnings"], 1);
    assert_eq!(j["findings"][0]["rule"], "PGK001");
    assert_eq!(j["findings"][0]["severity"], "warning");
    assert_eq!(j["findings"][0]["object"]["kind"], "Deployment");
    assert_eq!(j["findings"][0]["file"], "case.yaml");
    let s = report::sarif(&r, "1.2.3");
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["version"], "1.2.3");
    assert_eq!(
        run["tool"]["driver"]["rules"].as_array().unwrap().len(),
        RULES.len()
    );
    assert_eq!(run["results"][0]["ruleId"], "PGK001");
    assert_eq!(run["results"][0]["level"], "warning");
    assert_eq!(
        run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "case.yaml"
    );
    let idx = run["results"][0]["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(run["tool"]["driver"]["rules"][idx]["id"], "PGK001");
}

#[test]
fn rule_ids_are_unique_and_every_rule_has_a_fix() {
    let mut seen = std::collections::BTreeSet::new();
    for r in RULES {
        assert!(seen.insert(r.id), "duplicate {}", r.id);
        assert!(r.fix.len() > 100, "{} needs a real fix paragraph", r.id);
    }
}

#[test]
fn missing_paths_and_empty_dirs_are_errors() {
    let err = lint_paths(&[PathBuf::from("/nonexistent/x.yaml")]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.yaml"));
    let t = tempdir();
    let err = lint_paths(&[t.path().to_owned()]).unwrap_err();
    assert!(err.to_string().contains("no YAML files"), "{err}");
}

#[test]
fn severities_mean_data_loss_or_blocked_recovery() {
    let errors: Vec<&str> = RULES
        .iter()
        .filter(|r| r.severity == Severity::Error)
        .map(|r| r.name)
        .collect();
    assert_eq!(
        errors,
        [
            "data-volume-mounted-twice",
            "image-volume-shadowing",
            "pvc-in-kustomization",
            "rwo-rolling-update",
            "multiple-replicas",
            "archive-without-volume",
            "data-not-persistent",
            "sync-stream-on-data-volume",
        ]
    );
}

#[test]
fn a_subpath_mount_at_pgdata_is_safe() {
    let mounts = "            - {name: data, mountPath: /var/lib/postgresql/data, subPath: postgres}\n            - {name: wal-archive, mountPath: /wal-archive}\n";
    let r = lint_yaml(&deployment("postgres:16", mounts, PGDATA_ENV, ""));
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    // Without the subPath: the volume root.
    let r = lint_yaml(&deployment(
        "postgres:16",
        &mounts.replace(", subPath: postgres", ""),
        PGDATA_ENV,
        "",
    ));
    assert_eq!(ids(&r), ["PGK001"], "{}", report::human(&r));
}

const STATEFULSET: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: pg}
spec:
  serviceName: pg
  replicas: 1
  selector: {matchLabels: {app: pg}}
  template:
    metadata: {labels: {app: pg}}
    spec:
      securityContext: {runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: postgres
          image: postgres:17
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          env:
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          volumeMounts:
            - {name: pgdata, mountPath: /var/lib/postgresql/data}
  volumeClaimTemplates:
    - metadata: {name: pgdata}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 10Gi}}
"#;

#[test]
fn pgdata_in_a_subdirectory_of_a_claim_template_is_safe() {
    let r = lint_yaml(STATEFULSET);
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    // PGDATA at the template's mount point: the claim is seen through the template.
    let r = lint_yaml(&STATEFULSET.replace(
        "/var/lib/postgresql/data/pgdata",
        "/var/lib/postgresql/data",
    ));
    assert_eq!(ids(&r), ["PGK001"], "{}", report::human(&r));
    assert!(
        r.findings[0].message.contains("claim pgdata"),
        "{}",
        r.findings[0].message
    );
}

#[test]
fn the_official_entrypoint_as_root_is_a_warning_that_names_nfs() {
    let text = STATEFULSET.replace(
        "runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true, ",
        "",
    );
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK004"], "{}", report::human(&r));
    let f = &r.findings[0];
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.message.contains("official image's entrypoint"),
        "{}",
        f.message
    );
    assert!(f.message.contains("root-squashed NFS"), "{}", f.message);
    // On an NFS storage class the concrete breakage is named.
    let nfs = text.replace(
        "accessModes: [ReadWriteOnce]",
        "storageClassName: nfs-client\n        accessModes: [ReadWriteOnce]",
    );
    let r = lint_yaml(&nfs);
    assert_eq!(ids(&r), ["PGK004"], "{}", report::human(&r));
    assert!(
        r.findings[0].message.contains("is NFS"),
        "{}",
        r.findings[0].message
    );
    assert_eq!(r.errors(), 0);
}

#[test]
fn a_sidecar_reading_the_data_volume_is_not_the_server() {
    let sidecar = r#"        - name: backup
          image: postgres:17
          command: [sh, -c, "while true; do pg_dump -h 127.0.0.1 -U postgres app > /backups/app.sql; sleep 86400; done"]
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          volumeMounts:
            - {name: pgdata, mountPath: /var/lib/postgresql/data, readOnly: true}
  volumeClaimTemplates:
"#;
    let text = STATEFULSET
        .replace(
            "/var/lib/postgresql/data/pgdata",
            "/var/lib/postgresql/data",
        )
        .replace("  volumeClaimTemplates:\n", sidecar);
    let r = lint_yaml(&text);
    // Only the server's own mount: the read-only sidecar mount is neither PGK001 nor PGK002.
    assert_eq!(ids(&r), ["PGK001"], "{}", report::human(&r));
    assert_eq!(r.findings[0].container.as_deref(), Some("postgres"));
    // As root the read-only sidecar leaves nothing behind on the volume: no PGK004 for it.
    let root = text.replace(
        "runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true, ",
        "",
    );
    let r = lint_yaml(&root);
    assert!(
        r.findings
            .iter()
            .all(|f| f.container.as_deref() != Some("backup")),
        "{}",
        report::human(&r)
    );
    // Written to as root, it is.
    let r = lint_yaml(&root.replace(", readOnly: true", ""));
    assert!(
        r.findings
            .iter()
            .any(|f| f.rule == "PGK004" && f.container.as_deref() == Some("backup")),
        "{}",
        report::human(&r)
    );
}

#[test]
fn data_on_an_empty_dir_or_on_no_volume_is_an_error() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "").replace(
        "          persistentVolumeClaim: {claimName: pgdata-big}\n",
        "          emptyDir: {}\n",
    );
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK013"], "{}", report::human(&r));
    assert_eq!(r.findings[0].severity, Severity::Error);
    assert!(
        r.findings[0].message.contains("emptyDir"),
        "{}",
        r.findings[0].message
    );
    assert!(r.findings[0].message.contains("deleted with the pod"));
    let only_archive = "            - {name: wal-archive, mountPath: /wal-archive}\n";
    let r = lint_yaml(&deployment("postgres:18", only_archive, PGDATA_ENV, ""));
    assert_eq!(ids(&r), ["PGK013"], "{}", report::human(&r));
    assert!(r.findings[0].message.contains("no volume"));
    // The postgres 17 habit on an 18 image: the volume at .../data, PGDATA elsewhere.
    let old_habit = "            - {name: data, mountPath: /var/lib/postgresql/data}\n            - {name: wal-archive, mountPath: /wal-archive}\n";
    let r = lint_yaml(&deployment("postgres:18.1", old_habit, "", ""));
    assert_eq!(ids(&r), ["PGK013"], "{}", report::human(&r));
    assert!(
        r.findings[0]
            .message
            .contains("/var/lib/postgresql/18/docker"),
        "{}",
        r.findings[0].message
    );
    // Options for the image's entrypoint still run the server.
    let r = lint_yaml(
        &deployment("postgres:18", only_archive, PGDATA_ENV, "").replace(
            "          env:\n",
            "          args: [-c, shared_buffers=256MB]\n          env:\n",
        ),
    );
    assert_eq!(ids(&r), ["PGK013"], "{}", report::human(&r));
    // A Job (a client or a scratch restore) is not the server.
    let r = lint_yaml(CRON);
    assert!(!ids(&r).contains(&"PGK013"), "{}", report::human(&r));
}

#[test]
fn host_path_data_needs_a_node_pin() {
    let text = deployment("postgres:18", GOOD_MOUNTS, PGDATA_ENV, "").replace(
        "          persistentVolumeClaim: {claimName: pgdata-big}\n",
        "          hostPath: {path: /srv/pg, type: DirectoryOrCreate}\n",
    );
    let r = lint_yaml(&text);
    assert_eq!(ids(&r), ["PGK014"], "{}", report::human(&r));
    assert_eq!(r.findings[0].severity, Severity::Warning);
    let pinned = text.replace(
        "      containers:\n",
        "      nodeSelector: {kubernetes.io/hostname: node-a}\n      containers:\n",
    );
    let r = lint_yaml(&pinned);
    assert!(r.findings.is_empty(), "{}", report::human(&r));
    // A host directory at PGDATA itself is not a volume root with lost+found.
    let at_pgdata = pinned.replace(
        "{name: data, mountPath: /var/lib/postgresql}",
        "{name: data, mountPath: /var/lib/postgresql/data}",
    );
    let r = lint_yaml(&at_pgdata);
    assert!(r.findings.is_empty(), "{}", report::human(&r));
}

#[test]
fn floating_postgres_images_are_a_warning() {
    for image in [
        "postgres",
        "postgres:latest",
        "docker.io/library/postgres:alpine",
    ] {
        let r = lint_yaml(&deployment(image, GOOD_MOUNTS, PGDATA_ENV, ""));
        let f = r.findings.iter().find(|f| f.rule == "PGK015");
        let f = f.unwrap_or_else(|| panic!("{image}: {}", report::human(&r)));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.message.contains("new major"), "{}", f.message);
    }
    for image in ["postgres:18.1", "postgres:latest@sha256:0123abcd"] {
        let r = lint_yaml(&deployment(image, GOOD_MOUNTS, PGDATA_ENV, ""));
        assert!(
            !ids(&r).contains(&"PGK015"),
            "{image}: {}",
            report::human(&r)
        );
    }
}
