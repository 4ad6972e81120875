//! `pgkeep render` and `pgkeep lint` as a user runs them: files and stdout, output formats and
//! exit codes.

use std::process::Command;

fn pgkeep() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("pgkeep"));
    c.env("PGKEEP_CONFIG", "/dev/null");
    c
}

const SEED_INCORRECT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres, namespace: record-platform}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      securityContext: {runAsUser: 999, runAsGroup: 999, fsGroup: 999, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: db
          image: postgres:16
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          env: [{name: PGDATA, value: /var/lib/postgresql/data}]
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql}
            - {name: data, mountPath: /var/lib/postgresql/data}
      volumes:
        - {name: data, persistentVolumeClaim: {claimName: pgdata-big}}
"#;

#[test]
fn rendered_tree_is_written_and_lints_clean() {
    let t = tempfile::tempdir().unwrap();
    let out = pgkeep()
        .args(["render", "--out"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deploy = t.path().join("infra/k8s/base/postgres/deploy.yaml");
    assert!(
        std::fs::read_to_string(&deploy)
            .unwrap()
            .contains("kind: Deployment")
    );
    let out = pgkeep()
        .args(["lint", "--strict"])
        .arg(t.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("no findings in 23 file(s)"), "{stdout}");
    assert!(
        t.path()
            .join("infra/prometheus/pgkeep-rules.yaml")
            .is_file()
    );
}

#[test]
fn render_without_out_prints_one_stream_and_follows_the_environment() {
    let out = pgkeep()
        .arg("render")
        .env("PGKEEP_NAMESPACE", "from-env")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = pgkeep_kube::yaml::parse_documents("stdout", &text).unwrap();
    assert_eq!(docs.len(), 24, "every Kubernetes object of every file");
    assert!(docs.iter().all(|d| d.value["kind"].is_string()));
    assert!(text.contains("namespace: from-env"));
    // --defaults ignores the environment (what deploy/ holds).
    let out = pgkeep()
        .args(["render", "--defaults"])
        .env("PGKEEP_NAMESPACE", "from-env")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("from-env") && text.contains("namespace: record-platform"));
}

#[test]
fn lint_reports_errors_in_every_format_and_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("deploy.yaml");
    std::fs::write(&f, SEED_INCORRECT).unwrap();

    let out = pgkeep().arg("lint").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains(
            "error[PGK002 data-volume-mounted-twice]: Deployment record-platform/postgres, container db"
        ),
        "{human}"
    );
    assert!(
        human.contains("warning[PGK001 data-volume-at-pgdata]"),
        "{human}"
    );
    assert!(human.contains("fix: "), "{human}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lint found 1 error(s);"));

    let out = pgkeep()
        .args(["lint", "--format", "json"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["errors"], 1);
    assert_eq!(j["warnings"], 1);
    assert_eq!(j["findings"][1]["rule"], "PGK002");
    assert_eq!(j["findings"][1]["severity"], "error");
    assert_eq!(j["findings"][1]["file"], f.display().to_string());

    let out = pgkeep()
        .args(["lint", "--format", "sarif"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    assert_eq!(s["runs"][0]["results"][1]["ruleId"], "PGK002");
    assert_eq!(s["runs"][0]["results"][1]["level"], "error");
}

#[test]
fn warnings_alone_exit_0() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("cron.yaml");
    std::fs::write(
        &f,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: \"0 6 * * *\"\n  jobTemplate: {spec: {template: {spec: {containers: []}}}}\n",
    )
    .unwrap();
    let out = pgkeep().arg("lint").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning[PGK009"));
}

#[test]
fn strict_fails_on_warnings_from_the_flag_the_environment_or_the_config() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("cron.yaml");
    std::fs::write(
        &f,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: \"0 6 * * *\"\n  jobTemplate: {spec: {template: {spec: {containers: []}}}}\n",
    )
    .unwrap();
    let strict_failure = |out: std::process::Output| {
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "lint found 0 error(s) and 1 warning(s), and strict mode fails on warnings"
            ),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("warning[PGK009"));
    };
    strict_failure(
        pgkeep()
            .args(["lint", "--strict"])
            .arg(&f)
            .output()
            .unwrap(),
    );
    strict_failure(
        pgkeep()
            .arg("lint")
            .arg(&f)
            .env("PGKEEP_LINT_STRICT", "true")
            .output()
            .unwrap(),
    );
    let config = t.path().join("pgkeep.toml");
    std::fs::write(&config, "[lint]\nstrict = true\n").unwrap();
    strict_failure(
        pgkeep()
            .arg("lint")
            .arg(&f)
            .env("PGKEEP_CONFIG", &config)
            .output()
            .unwrap(),
    );
    // A value that is not a boolean is refused, naming the setting.
    let out = pgkeep()
        .arg("lint")
        .arg(&f)
        .env("PGKEEP_LINT_STRICT", "yes please")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lint.strict"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn corpus_safe_patterns_exit_0_and_data_loss_exits_1_naming_it() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pgkeep-kube/tests/lint-corpus");
    for name in [
        "1-pod-subpath",
        "2-statefulset-pgdata-subdir",
        "3-statefulset-volume-root",
        "6-statefulset-backup-sidecar",
    ] {
        let out = pgkeep()
            .arg("lint")
            .arg(corpus.join(format!("{name}.yaml")))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
        assert!(stdout.contains("0 error(s)"), "{name}: {stdout}");
    }
    for (name, want) in [
        (
            "4-deployment-rolling-rwo",
            "error[PGK007 rwo-rolling-update]: Deployment postgres: strategy is RollingUpdate (the default) with ReadWriteOnce claim(s) pg-pvc",
        ),
        (
            "5-deployment-emptydir",
            "error[PGK013 data-not-persistent]: Deployment postgres, container postgres: PGDATA /var/lib/postgresql/data is on volume `storage` (emptyDir)",
        ),
    ] {
        let out = pgkeep()
            .arg("lint")
            .arg(corpus.join(format!("{name}.yaml")))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}");
        assert!(stdout.contains(want), "{name}: {stdout}");
    }
}
