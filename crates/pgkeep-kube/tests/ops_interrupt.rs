//! Ctrl-C before the destructive Job exists: the stop signal is delivered between two requests
//! of a flow (the scenario fires it just before it answers one); the flow must then send no Job,
//! undo what it did (scale back to the replicas it found) and say what state the cluster is in.
//! Time is virtual (paused tokio clock).

mod ops_support;

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use ops_support::*;
use pgkeep_kube::ops::exec::UploadRequest;
use pgkeep_kube::ops::fake::{FakeExec, FakeLogStream};
use pgkeep_kube::ops::flows::{
    FlowCtx, UploadInput, bootstrap_basebackup, restore_upload, scale_down_and_run,
};
use pgkeep_kube::ops::job::JobRunOptions;
use pgkeep_kube::ops::{OpsError, Wait};
use serde_json::json;
use tokio::sync::oneshot;

const SCALE: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale";
const PODS: &str = "/api/v1/namespaces/record-platform/pods";

fn wipe_job() -> Job {
    serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "pgdata-wipe-full" },
        "spec": { "backoffLimit": 0, "template": { "spec": { "restartPolicy": "Never", "containers": [ { "name": "wipe", "image": "pgkeep:test" } ] } } } }))
    .unwrap()
}

fn scale_is(replicas: i32) -> serde_json::Value {
    json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": replicas } })
}

/// A stop future and the trigger the scenario pulls.
fn stop_signal() -> (oneshot::Sender<()>, impl Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn wipe_flow(c: pgkeep_kube::ops::Cluster, stop: impl Future<Output = ()>) -> OpsError {
    let logs = FakeLogStream::new();
    let mut sink = Vec::new();
    scale_down_and_run(
        &c,
        "postgres",
        "postgres",
        Wait::new(Duration::from_secs(60), Duration::from_secs(2)),
        wipe_job(),
        FlowCtx {
            logs: &logs,
            sink: &mut sink,
            stop,
            opts: &JobRunOptions::default(),
        },
    )
    .await
    .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_while_the_pods_go_scales_back_and_creates_no_job() {
    let (tx, stop) = stop_signal();
    let err = run(
        |c| wipe_flow(c, stop),
        |mut h| async move {
            expect(&mut h, "GET", SCALE).await.ok(scale_is(1));
            let x = expect(&mut h, "PATCH", SCALE).await;
            assert_eq!(x.body, json!({ "spec": { "replicas": 0 } }));
            x.ok(scale_is(0));
            // The db pod is still terminating when Ctrl-C comes.
            let x = expect(&mut h, "GET", PODS).await;
            tx.send(()).unwrap();
            x.ok(list(
                "PodList",
                vec![pod(
                    "postgres-abc",
                    json!({"app": "postgres"}),
                    "Running",
                    true,
                )],
            ));
            // Undo: back to the one replica it had; no wait, and no Job.
            let x = expect(&mut h, "PATCH", SCALE).await;
            assert_eq!(x.body, json!({ "spec": { "replicas": 1 } }));
            x.ok(scale_is(1));
            done(&mut h).await;
        },
    )
    .await;
    assert!(matches!(err, OpsError::Interrupted { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("interrupted (Ctrl-C) before the pgdata-wipe-full Job was created: no Job was created and the data volume was not touched; deployment/postgres was scaled back to 1 replica(s)"), "{text}");
    assert!(text.contains("hint: `pgkeep --kube scale 1`"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_before_anything_changed_changes_nothing() {
    let (tx, stop) = stop_signal();
    let err = run(
        |c| wipe_flow(c, stop),
        |mut h| async move {
            let x = expect(&mut h, "GET", SCALE).await;
            tx.send(()).unwrap();
            x.ok(scale_is(1));
            done(&mut h).await;
        },
    )
    .await;
    assert!(err.to_string().contains("nothing was changed"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_on_a_deployment_found_at_zero_leaves_it_at_zero() {
    let (tx, stop) = stop_signal();
    let err = run(
        |c| wipe_flow(c, stop),
        |mut h| async move {
            expect(&mut h, "GET", SCALE).await.ok(scale_is(0));
            let x = expect(&mut h, "PATCH", SCALE).await;
            tx.send(()).unwrap();
            x.ok(scale_is(0));
            done(&mut h).await;
        },
    )
    .await;
    assert!(
        err.to_string().contains("stays at 0 replicas, as it was"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_while_the_bootstrap_rbac_is_applied_touches_nothing_else() {
    let (tx, stop) = stop_signal();
    let job: Job = serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "bootstrap-from-basebackup" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [] } } } }))
    .unwrap();
    let rbac = vec![json!({ "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "bootstrap-from-basebackup", "namespace": NS } })];
    let err = run(
        |c| async move {
            let logs = FakeLogStream::new();
            let mut sink = Vec::new();
            bootstrap_basebackup(&c, &rbac, "postgres", "postgres", Wait::default(), job, FlowCtx { logs: &logs, sink: &mut sink, stop, opts: &JobRunOptions::default() })
            .await
            .unwrap_err()
        },
        |mut h| async move {
            let x = expect(&mut h, "GET", "/api/v1").await;
            tx.send(()).unwrap();
            x.ok(json!({ "kind": "APIResourceList", "groupVersion": "v1",
                "resources": [ { "name": "serviceaccounts", "singularName": "", "namespaced": true, "kind": "ServiceAccount", "verbs": [] } ] }));
            done(&mut h).await;
        },
    )
    .await;
    let text = err.to_string();
    assert!(text.starts_with("interrupted (Ctrl-C) before the bootstrap-from-basebackup Job was created: deployment/postgres and its data were not touched"), "{text}");
}

fn loader() -> Pod {
    serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "backups-loader" },
        "spec": { "containers": [ { "name": "loader", "image": "pgkeep:test" } ] } }),
    )
    .unwrap()
}

fn upload_job() -> Job {
    serde_json::from_value(json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "restore-from-upload" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [] } } } }))
    .unwrap()
}

fn no_such_file() -> pgkeep_kube::ops::exec::ExecOutput {
    pgkeep_kube::ops::exec::ExecOutput {
        stdout: Vec::new(),
        stderr: b"sha256sum: /backups/uploads/d.sql: No such file or directory\n".to_vec(),
        exit_code: Some(1),
        message: String::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_during_the_upload_restores_nothing_and_leaves_no_upload() {
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"select 1;\n").unwrap();
    let path = file.path().to_path_buf();
    let exec = FakeExec::new();
    exec.answer(no_such_file());
    let upload = UploadRequest {
        pod: "backups-loader".into(),
        container: Some("loader".into()),
        program: "pgkeep".into(),
        dest: "/backups/uploads/d.sql".into(),
    };
    let (tx, stop) = stop_signal();
    // Ctrl-C comes while the file is being sent (from the progress callback).
    let tx = Mutex::new(Some(tx));
    let (err, exec) = run(
        |c| async move {
            let logs = FakeLogStream::new();
            let mut sink = Vec::new();
            let mut progress = |_| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            };
            let err = restore_upload(
                &c,
                &UploadInput {
                    loader: &loader(),
                    loader_wait: Wait::default(),
                    local: &path,
                    upload: &upload,
                },
                &exec,
                &mut progress,
                upload_job(),
                FlowCtx {
                    logs: &logs,
                    sink: &mut sink,
                    stop,
                    opts: &JobRunOptions::default(),
                },
            )
            .await
            .unwrap_err();
            (err, exec)
        },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PODS}/backups-loader"))
                .await
                .ok(pod("backups-loader", json!({}), "Running", true));
            // No restore Job.
            done(&mut h).await;
        },
    )
    .await;
    let text = err.to_string();
    assert!(
        text.starts_with(
            "interrupted (Ctrl-C) before the restore Job was created: nothing was restored"
        ),
        "{text}"
    );
    // Whether the stop cut the transfer or came right after it: nothing stays published.
    let published = exec
        .files
        .lock()
        .unwrap()
        .contains_key("/backups/uploads/d.sql");
    let removed = exec
        .calls()
        .iter()
        .any(|c| c.request.command == ["rm", "-f", "--", "/backups/uploads/d.sql"]);
    assert!(!published || removed, "{:?}", exec.calls());
}
