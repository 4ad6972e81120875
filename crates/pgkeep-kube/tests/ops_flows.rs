//! The composed flows against a Kubernetes 1.20 API: `deploy` (adapts the CronJob to
//! batch/v1beta1 without timeZone, creates claims and Secret only when missing, applies, waits
//! for the rollout), scale down + Job (`wipe`), and `restore upload`.

mod ops_support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use ops_support::*;
use pgkeep_kube::ops::Wait;
use pgkeep_kube::ops::exec::{ExecOutput, UploadRequest};
use pgkeep_kube::ops::fake::{FakeExec, FakeLogStream};
use pgkeep_kube::ops::flows::{
    AfterBootstrap, DebugPermsInput, DeployInput, DeployOptions, FlowCtx, UploadInput, debug_perms,
    deploy, exec_in_db, exec_in_loader, restore_upload, scale_down_and_run, wait_bootstrapped,
};
use pgkeep_kube::ops::job::{JobOutcome, JobRunOptions};
use pgkeep_kube::ops::pods::MountVerdict;
use pgkeep_kube::ops::pvc::PvcState;
use pgkeep_kube::ops::secret::SecretOutcome;
use serde_json::{Value, json};

fn input() -> DeployInput {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "pgdata-big" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "100Gi" } } }
    }))
    .unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "postgres-superuser" },
        "stringData": { "POSTGRES_USER": "postgres" }
    }))
    .unwrap();
    DeployInput {
        pvcs: vec![pvc],
        secret,
        password_key: "POSTGRES_PASSWORD".into(),
        objects: vec![
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "postgres", "namespace": NS },
                    "spec": { "replicas": 1, "template": { "spec": { "containers": [ { "name": "db", "image": "pgkeep:test" } ] } } } }),
            json!({ "apiVersion": "batch/v1", "kind": "CronJob", "metadata": { "name": "pgkeep-backup-logical", "namespace": NS },
                    "spec": { "schedule": "0 6 * * *", "timeZone": "America/New_York",
                              "jobTemplate": { "spec": { "template": { "spec": { "containers": [] } } } } } }),
        ],
    }
}

fn opts(dry_run: bool) -> DeployOptions {
    DeployOptions {
        dry_run,
        wait: Some(Wait::new(Duration::from_secs(60), Duration::from_secs(2))),
        adapt: true,
        deployment: "postgres".into(),
        app: "postgres".into(),
    }
}

fn resources(gv: &str, items: &[(&str, &str)]) -> Value {
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": items.iter().map(|(n, k)| json!({ "name": n, "singularName": "", "namespaced": true, "kind": k, "verbs": [] })).collect::<Vec<_>>() })
}

fn echo(x: Exchange) {
    let mut body = x.body.clone();
    body["metadata"]["resourceVersion"] = "1".into();
    x.ok(body);
}

const DEPLOY: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres";
const CRONJOB_V1BETA1: &str =
    "/apis/batch/v1beta1/namespaces/record-platform/cronjobs/pgkeep-backup-logical";

#[tokio::test(start_paused = true)]
async fn deploy_on_kubernetes_1_20() {
    let report = run(
        |c| async move { deploy(&c, &input(), &opts(false)).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.ok(json!({ "major": "1", "minor": "20", "gitVersion": "v1.20.2" }));
            // Claims and Secret: created when missing.
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/persistentvolumeclaims/pgdata-big").await.not_found("persistentvolumeclaims", "pgdata-big");
            echo(expect(&mut h, "POST", "/api/v1/namespaces/record-platform/persistentvolumeclaims").await);
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/secrets/postgres-superuser").await.not_found("secrets", "postgres-superuser");
            let x = expect(&mut h, "POST", "/api/v1/namespaces/record-platform/secrets").await;
            assert_eq!(x.body["stringData"]["POSTGRES_PASSWORD"].as_str().unwrap().len(), 32);
            x.created(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "postgres-superuser" } }));
            // Deployment.
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(resources("apps/v1", &[("deployments", "Deployment")]));
            expect(&mut h, "GET", DEPLOY).await.not_found("deployments.apps", "postgres");
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true")]);
            echo(x);
            // CronJob: sent as batch/v1beta1 without timeZone.
            expect(&mut h, "GET", "/apis/batch/v1beta1").await.ok(resources("batch/v1beta1", &[("cronjobs", "CronJob")]));
            expect(&mut h, "GET", CRONJOB_V1BETA1).await.not_found("cronjobs.batch", "pgkeep-backup-logical");
            let x = expect(&mut h, "PATCH", CRONJOB_V1BETA1).await;
            assert_eq!(x.body["apiVersion"], "batch/v1beta1");
            assert!(x.body["spec"].get("timeZone").is_none(), "{}", x.body);
            echo(x);
            // Rollout.
            expect(&mut h, "GET", DEPLOY).await.ok(json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "postgres", "generation": 1 }, "spec": { "replicas": 1, "selector": {}, "template": {} },
                "status": { "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 } }));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(report.server.minor, 20);
    assert_eq!(report.notes.len(), 2, "{:?}", report.notes);
    assert!(matches!(report.pvcs[0].state, PvcState::Created { .. }));
    assert_eq!(
        report.secret,
        SecretOutcome::Created {
            name: "postgres-superuser".into(),
            dry_run: false
        }
    );
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            "deployment.apps/postgres created",
            "cronjob.batch/pgkeep-backup-logical created"
        ]
    );
    assert_eq!(report.rollout.unwrap().replicas, 1);
}

#[tokio::test(start_paused = true)]
async fn deploy_dry_run_writes_nothing_and_does_not_wait() {
    let mut input = input();
    input.objects.truncate(1);
    let report = run(
        |c| async move { deploy(&c, &input, &opts(true)).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.ok(json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.1" }));
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/persistentvolumeclaims/pgdata-big").await.not_found("persistentvolumeclaims", "pgdata-big");
            let x = expect(&mut h, "POST", "/api/v1/namespaces/record-platform/persistentvolumeclaims").await;
            x.assert_query_is(&[("dryRun", "All")]);
            echo(x);
            // The Secret exists: kept, no POST even as a dry run.
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/secrets/postgres-superuser")
                .await
                .ok(json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": { "name": "postgres-superuser" } }));
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(resources("apps/v1", &[("deployments", "Deployment")]));
            expect(&mut h, "GET", DEPLOY).await.not_found("deployments.apps", "postgres");
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true"), ("dryRun", "All")]);
            echo(x);
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(report.notes.is_empty());
    assert_eq!(
        report.secret,
        SecretOutcome::Exists {
            name: "postgres-superuser".into()
        }
    );
    assert_eq!(
        report.applied[0].to_string(),
        "deployment.apps/postgres created (server dry run)"
    );
    assert!(report.rollout.is_none());
}

fn wipe_job() -> Job {
    serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "pgdata-wipe-full" },
        "spec": { "backoffLimit": 0, "template": { "spec": { "restartPolicy": "Never", "containers": [ { "name": "wipe", "image": "pgkeep:test" } ] } } } }))
    .unwrap()
}

async fn job_succeeds(h: &mut Handle, prefix: &str, pod_name: &str) {
    let x = expect(h, "POST", "/apis/batch/v1/namespaces/record-platform/jobs").await;
    let name = x.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with(prefix), "{name}");
    let body = x.body.clone();
    x.created(body);
    let x = expect(h, "GET", "/api/v1/namespaces/record-platform/pods").await;
    x.assert_query("labelSelector", &format!("job-name={name}"));
    x.ok(list(
        "PodList",
        vec![pod(
            pod_name,
            json!({ "job-name": name }),
            "Succeeded",
            false,
        )],
    ));
    expect(h, "GET", &format!("/apis/batch/v1/namespaces/record-platform/jobs/{name}")).await.ok(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name }, "spec": { "template": {} },
        "status": { "conditions": [ { "type": "Complete", "status": "True" } ] } }));
}

#[tokio::test(start_paused = true)]
async fn wipe_scales_down_first_then_runs_the_job_with_its_complete_log() {
    let logs = FakeLogStream::new()
        .with_lines("wipe-1", ["BEFORE:", "data  lost+found", "AFTER:", "data"]);
    let ((scaled, outcome), sink) = run(
        |c| async move {
            let mut sink = Vec::new();
            let r = scale_down_and_run(&c, "postgres", "postgres", Wait::new(Duration::from_secs(60), Duration::from_secs(2)), wipe_job(), FlowCtx { logs: &logs, sink: &mut sink, stop: std::future::pending(), opts: &JobRunOptions::default() }).await.unwrap();
            (r, sink)
        },
        |mut h| async move {
            // The replicas it has are read first (to scale back to on Ctrl-C).
            expect(&mut h, "GET", "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale").await
                .ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": 1 } }));
            let x = expect(&mut h, "PATCH", "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale").await;
            assert_eq!(x.body, json!({ "spec": { "replicas": 0 } }));
            x.ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": 0 } }));
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/pods").await.ok(list("PodList", vec![]));
            job_succeeds(&mut h, "pgdata-wipe-full-", "wipe-1").await;
            done(&mut h).await;
        },
    )
    .await;
    assert_eq!(scaled.replicas, 0);
    assert!(matches!(outcome, JobOutcome::Succeeded { .. }));
    assert_eq!(
        String::from_utf8(sink).unwrap(),
        "BEFORE:\ndata  lost+found\nAFTER:\ndata\n"
    );
}

#[tokio::test(start_paused = true)]
async fn restore_upload_uploads_with_checksum_before_the_restore_job() {
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"not really a dump").unwrap();
    let loader: Pod = serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "backups-loader" },
        "spec": { "containers": [ { "name": "loader", "image": "pgkeep:test" } ] } }),
    )
    .unwrap();
    let exec = FakeExec::new();
    exec.answer(no_such_file("/backups/dump.tar.gz"));
    let logs = FakeLogStream::new().with_lines("restore-1", ["restored"]);
    let job: Job = serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "restore-from-upload" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [] } } } })).unwrap();
    let upload = UploadRequest {
        pod: "backups-loader".into(),
        container: None,
        program: "pgkeep".into(),
        dest: "/backups/dump.tar.gz".into(),
    };
    let path = file.path().to_path_buf();
    let (report, exec) = run(
        |c| async move {
            let mut sink = Vec::new();
            let r = restore_upload(
                &c,
                &UploadInput {
                    loader: &loader,
                    loader_wait: Wait::default(),
                    local: &path,
                    upload: &upload,
                },
                &exec,
                &mut |_| {},
                job,
                FlowCtx {
                    logs: &logs,
                    sink: &mut sink,
                    stop: std::future::pending(),
                    opts: &JobRunOptions::default(),
                },
            )
            .await
            .unwrap();
            (r, exec)
        },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/backups-loader",
            )
            .await
            .ok(pod("backups-loader", json!({}), "Running", true));
            job_succeeds(&mut h, "restore-from-upload-", "restore-1").await;
            done(&mut h).await;
        },
    )
    .await;
    assert!(!report.loader.created);
    assert!(!report.reused);
    assert_eq!(report.uploaded.size, 17);
    // First a look for the file in the pod (nothing there), then the upload.
    let calls = exec.calls();
    assert_eq!(
        calls[0].request.command,
        ["sha256sum", "--", "/backups/dump.tar.gz"]
    );
    assert_eq!(calls[1].request.command[1], "receive");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        exec.files
            .lock()
            .unwrap()
            .get("/backups/dump.tar.gz")
            .unwrap(),
        b"not really a dump"
    );
    let JobOutcome::Succeeded { last_lines, .. } = &report.job else {
        panic!()
    };
    assert_eq!(last_lines, &["restored"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_upload_runs_no_restore_job() {
    let loader: Pod = serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "backups-loader" },
        "spec": { "containers": [ { "name": "loader", "image": "pgkeep:test" } ] } }),
    )
    .unwrap();
    let exec = FakeExec::new();
    exec.answer(no_such_file("/backups/dump.tar.gz"));
    let logs = FakeLogStream::new();
    let job: Job = serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "restore-from-upload" },
        "spec": { "template": { "spec": { "containers": [] } } } })).unwrap();
    let upload = UploadRequest {
        pod: "backups-loader".into(),
        container: None,
        program: "pgkeep".into(),
        dest: "/backups/dump.tar.gz".into(),
    };
    let err = run(
        |c| async move {
            let mut sink = Vec::new();
            restore_upload(
                &c,
                &UploadInput {
                    loader: &loader,
                    loader_wait: Wait::default(),
                    local: std::path::Path::new("/nonexistent/dump.tar.gz"),
                    upload: &upload,
                },
                &exec,
                &mut |_| {},
                job,
                FlowCtx {
                    logs: &logs,
                    sink: &mut sink,
                    stop: std::future::pending(),
                    opts: &JobRunOptions::default(),
                },
            )
            .await
        },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/backups-loader",
            )
            .await
            .ok(pod("backups-loader", json!({}), "Running", true));
            // No Job is created.
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("could not read /nonexistent/dump.tar.gz"),
        "{err}"
    );
}

fn no_such_file(path: &str) -> ExecOutput {
    ExecOutput {
        stderr: format!("sha256sum: {path}: No such file or directory\n").into_bytes(),
        exit_code: Some(1),
        message: "command terminated with non-zero exit code: exit status 1".into(),
        ..ExecOutput::default()
    }
}

fn sha256sum_says(digest: &str, path: &str) -> ExecOutput {
    ExecOutput {
        stdout: format!("{digest}  {path}\n").into_bytes(),
        exit_code: Some(0),
        ..ExecOutput::default()
    }
}

/// The digest of some other file (not of the local one).
const OTHER_SHA256: &str = "0c8e3a4fbd1d6a0d7fb7d1ac1cbd4bb1d8ddfc2b2e0b0ffb8ea2d3c0bd2c1c48";

fn loader_pod() -> Pod {
    serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "backups-loader" },
        "spec": { "containers": [ { "name": "loader", "image": "pgkeep:test" } ] } }),
    )
    .unwrap()
}

fn upload_to(dest: &str) -> UploadRequest {
    UploadRequest {
        pod: "backups-loader".into(),
        container: Some("loader".into()),
        program: "pgkeep".into(),
        dest: dest.into(),
    }
}

fn upload_job() -> Job {
    serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "restore-from-upload" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [] } } } })).unwrap()
}

#[tokio::test(start_paused = true)]
async fn restore_upload_reuses_an_identical_file_already_in_the_pod() {
    use sha2::Digest as _;
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"not really a dump").unwrap();
    let digest = hex::encode(sha2::Sha256::digest(b"not really a dump"));
    let exec = FakeExec::new();
    exec.answer(sha256sum_says(&digest, "/backups/dump.tar.gz"));
    let logs = FakeLogStream::new().with_lines("restore-1", ["restored"]);
    let path = file.path().to_path_buf();
    let (report, exec) = run(
        |c| async move {
            let r = restore_upload(
                &c,
                &UploadInput {
                    loader: &loader_pod(),
                    loader_wait: Wait::default(),
                    local: &path,
                    upload: &upload_to("/backups/dump.tar.gz"),
                },
                &exec,
                &mut |_| {},
                upload_job(),
                FlowCtx {
                    logs: &logs,
                    sink: &mut Vec::new(),
                    stop: std::future::pending(),
                    opts: &JobRunOptions::default(),
                },
            )
            .await
            .unwrap();
            (r, exec)
        },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/backups-loader",
            )
            .await
            .ok(pod("backups-loader", json!({}), "Running", true));
            job_succeeds(&mut h, "restore-from-upload-", "restore-1").await;
            done(&mut h).await;
        },
    )
    .await;
    assert!(report.reused);
    assert_eq!(report.uploaded.sha256, digest);
    assert_eq!(report.uploaded.size, 17);
    // Nothing was sent: only the look, in the loader container.
    let calls = exec.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].request.container.as_deref(), Some("loader"));
    assert!(exec.files.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn restore_upload_never_overwrites_a_different_file_and_restores_nothing() {
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"not really a dump").unwrap();
    let exec = FakeExec::new();
    exec.answer(sha256sum_says(OTHER_SHA256, "/backups/dump.tar.gz"));
    let logs = FakeLogStream::new();
    let path = file.path().to_path_buf();
    let (err, exec) = run(
        |c| async move {
            let r = restore_upload(
                &c,
                &UploadInput {
                    loader: &loader_pod(),
                    loader_wait: Wait::default(),
                    local: &path,
                    upload: &upload_to("/backups/dump.tar.gz"),
                },
                &exec,
                &mut |_| {},
                upload_job(),
                FlowCtx {
                    logs: &logs,
                    sink: &mut Vec::new(),
                    stop: std::future::pending(),
                    opts: &JobRunOptions::default(),
                },
            )
            .await
            .unwrap_err();
            (r, exec)
        },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/backups-loader",
            )
            .await
            .ok(pod("backups-loader", json!({}), "Running", true));
            // No Job is created.
            done(&mut h).await;
        },
    )
    .await;
    let msg = err.to_string();
    assert!(msg.contains("a different file is already there"), "{msg}");
    assert!(msg.contains(OTHER_SHA256), "{msg}");
    assert!(
        msg.contains("hint: nothing was uploaded or restored"),
        "{msg}"
    );
    assert_eq!(exec.calls().len(), 1);
    assert!(exec.files.lock().unwrap().is_empty());
}

#[tokio::test]
async fn debug_perms_on_a_double_mounted_crash_looping_pod() {
    let exec = FakeExec::new();
    exec.answer(ExecOutput {
        stdout: b"uid=999 gid=999\n".to_vec(),
        exit_code: Some(0),
        ..ExecOutput::default()
    });
    let logs = FakeLogStream::new()
        .with_lines(
            "postgres-abc/fix-run",
            ["chown 999:999 /var/run/postgresql"],
        )
        .with_lines(
            "postgres-abc/prep-dirs",
            ["mkdir: /var/lib/postgresql/data: exists"],
        );
    let (report, exec) = run(
        |c| async move {
            let r = debug_perms(
                &c,
                DebugPermsInput {
                    app: "postgres",
                    container: "db",
                    init_containers: &["fix-run", "prep-dirs"],
                    pgroot: "/var/lib/postgresql",
                    pgdata: "/var/lib/postgresql/data",
                    local_command: vec![
                        "pgkeep".into(),
                        "debug".into(),
                        "perms".into(),
                        "--local".into(),
                    ],
                },
                &exec,
                &logs,
            )
            .await
            .unwrap();
            (r, exec)
        },
        |mut h| async move {
            let x = expect(&mut h, "GET", "/api/v1/namespaces/record-platform/pods").await;
            x.assert_query("labelSelector", "app=postgres");
            let mut p = pod(
                "postgres-abc",
                json!({ "app": "postgres" }),
                "Running",
                false,
            );
            p["spec"]["containers"][0]["volumeMounts"] = json!([
                { "name": "data", "mountPath": "/var/lib/postgresql" },
                { "name": "data", "mountPath": "/var/lib/postgresql/data" } ]);
            x.ok(list("PodList", vec![p]));
            expect_events(
                &mut h,
                "Pod",
                "postgres-abc",
                vec![event(
                    "Pod",
                    "postgres-abc",
                    "Warning",
                    "BackOff",
                    "Back-off restarting failed container",
                )],
            )
            .await;
            done(&mut h).await;
        },
    )
    .await;
    assert_eq!(report.pod, "postgres-abc");
    assert_eq!(
        report.verdict,
        MountVerdict::PgdataIsAMount {
            volumes: vec!["data".into()]
        }
    );
    assert_eq!(report.local.as_ref().unwrap().stdout, b"uid=999 gid=999\n");
    assert_eq!(exec.calls()[0].request.container.as_deref(), Some("db"));
    assert_eq!(
        exec.calls()[0].request.command,
        ["pgkeep", "debug", "perms", "--local"]
    );
    assert_eq!(
        report.init_logs[0],
        (
            "fix-run".to_string(),
            Ok(vec!["chown 999:999 /var/run/postgresql".to_string()])
        )
    );
    assert_eq!(
        report.init_logs[1].1.as_ref().unwrap()[0],
        "mkdir: /var/lib/postgresql/data: exists"
    );
    assert_eq!(report.events.len(), 1);
}

#[tokio::test]
async fn exec_in_db_runs_in_the_ready_pod_and_passes_the_exit_code() {
    let exec = FakeExec::new();
    exec.answer(ExecOutput {
        stdout: b"{}".to_vec(),
        exit_code: Some(1),
        ..ExecOutput::default()
    });
    let (out, exec) = run(
        |c| async move {
            let r = exec_in_db(
                &c,
                "postgres",
                "db",
                &exec,
                vec!["pgkeep".into(), "sanity".into(), "--json".into()],
            )
            .await
            .unwrap();
            (r, exec)
        },
        |mut h| async move {
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/pods")
                .await
                .ok(list(
                    "PodList",
                    vec![
                        pod("postgres-old", json!({"app": "postgres"}), "Running", false),
                        pod("postgres-abc", json!({"app": "postgres"}), "Running", true),
                    ],
                ));
            done(&mut h).await;
        },
    )
    .await;
    assert_eq!(out.exit_code, Some(1));
    assert_eq!(exec.calls()[0].request.pod, "postgres-abc");
}

#[tokio::test(start_paused = true)]
async fn a_file_uploaded_for_the_restore_is_removed_by_the_job_when_refused_a_reused_one_is_not() {
    use sha2::Digest as _;
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"not really a dump").unwrap();
    let digest = hex::encode(sha2::Sha256::digest(b"not really a dump"));
    let job: Job = serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "restore-from-upload" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [
            { "name": "restore", "image": "pgkeep:test", "args": ["restore", "upload", "$(PGKEEP_UPLOAD_FILE)"] } ] } } } }))
    .unwrap();
    let base = ["restore", "upload", "$(PGKEEP_UPLOAD_FILE)"];
    for (there, expected) in [
        // Uploaded now: the Job is told to remove it when the restore is refused.
        (
            no_such_file("/backups/dump.tar.gz"),
            [
                &base[..],
                &[pgkeep_kube::manifests::jobs::REMOVE_IF_REFUSED],
            ]
            .concat(),
        ),
        // An identical file was already there: it is not this restore's to remove.
        (
            sha256sum_says(&digest, "/backups/dump.tar.gz"),
            base.to_vec(),
        ),
    ] {
        let exec = FakeExec::new();
        exec.answer(there);
        let path = file.path().to_path_buf();
        let job = job.clone();
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        let err = run(
            |c| async move {
                restore_upload(
                    &c,
                    &UploadInput {
                        loader: &loader_pod(),
                        loader_wait: Wait::default(),
                        local: &path,
                        upload: &upload_to("/backups/dump.tar.gz"),
                    },
                    &exec,
                    &mut |_| {},
                    job,
                    FlowCtx {
                        logs: &FakeLogStream::new(),
                        sink: &mut Vec::new(),
                        stop: std::future::pending(),
                        opts: &JobRunOptions::default(),
                    },
                )
                .await
                .unwrap_err()
            },
            |mut h| async move {
                expect(
                    &mut h,
                    "GET",
                    "/api/v1/namespaces/record-platform/pods/backups-loader",
                )
                .await
                .ok(pod("backups-loader", json!({}), "Running", true));
                let x = expect(
                    &mut h,
                    "POST",
                    "/apis/batch/v1/namespaces/record-platform/jobs",
                )
                .await;
                let args: Vec<String> = serde_json::from_value(
                    x.body["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
                )
                .unwrap();
                assert_eq!(args, expected);
                x.forbidden("create", "jobs", "");
                done(&mut h).await;
            },
        )
        .await;
        assert!(err.to_string().contains("forbidden"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn exec_in_loader_creates_the_loader_then_runs_the_command_in_its_container() {
    let exec = FakeExec::new();
    exec.answer(ExecOutput {
        stdout: b"nightly-20261125-0600.tar.gz\n".to_vec(),
        exit_code: Some(0),
        ..ExecOutput::default()
    });
    let command: Vec<String> = ["pgkeep", "backups", "list", "--local"]
        .map(String::from)
        .to_vec();
    let sent = command.clone();
    let (done_, exec) = run(
        |c| async move {
            let r = exec_in_loader(&c, &loader_pod(), Wait::default(), &exec, sent)
                .await
                .unwrap();
            (r, exec)
        },
        |mut h| async move {
            let loader = "/api/v1/namespaces/record-platform/pods/backups-loader";
            expect(&mut h, "GET", loader)
                .await
                .not_found("pods", "backups-loader");
            let x = expect(&mut h, "POST", "/api/v1/namespaces/record-platform/pods").await;
            assert_eq!(x.body["metadata"]["name"], "backups-loader");
            x.created(pod("backups-loader", json!({}), "Pending", false));
            expect(&mut h, "GET", loader).await.ok(pod(
                "backups-loader",
                json!({}),
                "Running",
                true,
            ));
            // The command runs only once the loader is Ready: no more requests.
            done(&mut h).await;
        },
    )
    .await;
    assert!(done_.loader.created);
    assert_eq!(done_.loader.pod, "backups-loader");
    let out = done_.output.unwrap();
    assert_eq!(out.stdout, b"nightly-20261125-0600.tar.gz\n");
    let calls = exec.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].request.pod, "backups-loader");
    assert_eq!(calls[0].request.container.as_deref(), Some("loader"));
    assert_eq!(calls[0].request.command, command);
}

fn rolled_out(available: i32) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "postgres", "generation": 3 }, "spec": { "replicas": 1, "selector": {}, "template": {} },
        "status": { "observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "availableReplicas": available } })
}

#[tokio::test(start_paused = true)]
async fn after_a_bootstrap_the_cli_waits_for_the_pod_the_job_scaled_up() {
    let after = run(
        |c| async move {
            wait_bootstrapped(
                &c,
                "postgres",
                "postgres",
                Wait::new(Duration::from_secs(600), Duration::from_secs(2)),
                std::future::pending(),
            )
            .await
            .unwrap()
        },
        |mut h| async move {
            expect(&mut h, "GET", DEPLOY).await.ok(rolled_out(0));
            expect(&mut h, "GET", DEPLOY).await.ok(rolled_out(1));
            done(&mut h).await;
        },
    )
    .await;
    let AfterBootstrap::Ready(rolled) = after else {
        panic!("{after:?}")
    };
    assert_eq!(rolled.deployment, "postgres");
    assert_eq!(rolled.replicas, 1);
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_after_a_bootstrap_stops_the_wait_not_the_pod() {
    let after = run(
        |c| async move {
            wait_bootstrapped(
                &c,
                "postgres",
                "postgres",
                Wait::new(Duration::from_secs(600), Duration::from_secs(2)),
                std::future::ready(()),
            )
            .await
            .unwrap()
        },
        // No request: the stop came first, and nothing is scaled or deleted.
        |mut h| async move { done(&mut h).await },
    )
    .await;
    assert_eq!(after, AfterBootstrap::Stopped);
}
