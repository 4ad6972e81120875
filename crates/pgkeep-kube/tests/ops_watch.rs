//! No silent waits: a watched wait looks at each pod's events while it waits and ends at once,
//! with the container's last log lines, when a container crash-loops or its image cannot be
//! pulled, instead of waiting out the timeout. Time is virtual (paused tokio clock).

mod ops_support;

use std::time::Duration;

use ops_support::*;
use pgkeep_kube::ops::fake::FakeLogStream;
use pgkeep_kube::ops::job::{JobRunOptions, run_job};
use pgkeep_kube::ops::scale::{scale, wait_rollout};
use pgkeep_kube::ops::{OpsError, Wait};
use serde_json::json;

const SCALE: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale";
const DEPLOY: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres";
const PODS: &str = "/api/v1/namespaces/record-platform/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/record-platform/jobs";

fn watched() -> Wait {
    Wait::new(Duration::from_secs(300), Duration::from_secs(2)).watched()
}

fn with_db_state(
    mut p: serde_json::Value,
    state: serde_json::Value,
    restarts: i32,
) -> serde_json::Value {
    p["status"]["containerStatuses"] = json!([{ "name": "db", "ready": false, "restartCount": restarts,
        "image": "pgkeep:test", "imageID": "", "state": state }]);
    p
}

fn crash_looping() -> serde_json::Value {
    with_db_state(
        pod("postgres-abc", json!({"app": "postgres"}), "Running", false),
        json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=db" } }),
        3,
    )
}

async fn expect_log_tail(h: &mut Handle, pod: &str, container: &str) -> Exchange {
    let x = expect(h, "GET", &format!("{PODS}/{pod}/log")).await;
    x.assert_query_is(&[("container", container), ("tailLines", "20")]);
    x
}

#[tokio::test(start_paused = true)]
async fn scale_up_ends_early_on_crash_loop_with_the_reason_and_the_log() {
    let err = run(
        |c| async move { scale(&c, "postgres", "postgres", 1, Some(watched())).await },
        |mut h| async move {
            expect(&mut h, "PATCH", SCALE).await.ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": { "name": "postgres" }, "spec": { "replicas": 1 } }));
            // First look: starting; its events are read (and reported).
            let starting = with_db_state(
                pod("postgres-abc", json!({"app": "postgres"}), "Pending", false),
                json!({ "waiting": { "reason": "ContainerCreating" } }),
                0,
            );
            expect(&mut h, "GET", PODS).await.ok(list("PodList", vec![starting]));
            expect_events(&mut h, "Pod", "postgres-abc", vec![event("Pod", "postgres-abc", "Normal", "Pulled", "image present")]).await;
            // Second look: crash-looping; events, then the db container's last lines.
            expect(&mut h, "GET", PODS).await.ok(list("PodList", vec![crash_looping()]));
            expect_events(&mut h, "Pod", "postgres-abc", vec![event("Pod", "postgres-abc", "Warning", "BackOff", "Back-off restarting failed container db")]).await;
            expect_log_tail(&mut h, "postgres-abc", "db")
                .await
                .send_text("pgkeep serve: starting\nerror: POSTGRES_PASSWORD is empty in secret/postgres-superuser\n");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::PodFailing(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("pod postgres-abc: container db is in CrashLoopBackOff (back-off 40s"),
        "{text}"
    );
    assert!(text.contains("--- last 2 log lines of db ---\npgkeep serve: starting\nerror: POSTGRES_PASSWORD is empty"), "{text}");
    assert!(text.contains("Warning BackOff pod/postgres-abc"), "{text}");
    assert!(
        text.contains("hint: the container exits right after it starts"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn scale_down_does_not_stop_for_a_crash_looping_pod_it_removes() {
    let scaled = run(
        |c| async move { scale(&c, "postgres", "postgres", 0, Some(watched())).await },
        |mut h| async move {
            expect(&mut h, "PATCH", SCALE)
                .await
                .ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": { "name": "postgres" }, "spec": { "replicas": 0 } }));
            expect(&mut h, "GET", PODS)
                .await
                .ok(list("PodList", vec![crash_looping()]));
            expect_events(&mut h, "Pod", "postgres-abc", vec![]).await;
            expect(&mut h, "GET", PODS)
                .await
                .ok(list("PodList", vec![]));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(scaled.replicas, 0);
}

#[tokio::test(start_paused = true)]
async fn deploy_wait_ends_early_when_the_image_cannot_be_pulled() {
    let err = run(
        |c| async move { wait_rollout(&c, "postgres", "postgres", watched()).await },
        |mut h| async move {
            expect(&mut h, "GET", DEPLOY).await.ok(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "postgres", "namespace": NS, "generation": 2 },
                "spec": { "replicas": 1, "selector": {}, "template": {} },
                "status": { "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0 }
            }));
            let pulling = with_db_state(
                pod("postgres-abc", json!({"app": "postgres"}), "Pending", false),
                json!({ "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"pgkeep:nope\"" } }),
                0,
            );
            expect(&mut h, "GET", PODS).await.ok(list("PodList", vec![pulling]));
            expect_events(&mut h, "Pod", "postgres-abc", vec![]).await;
            expect_log_tail(&mut h, "postgres-abc", "db").await.fail(
                400, "BadRequest",
                "container \"db\" in pod \"postgres-abc\" is waiting to start: trying and failing to pull image",
                "pods", "postgres-abc",
            );
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("container db is in ImagePullBackOff"),
        "{text}"
    );
    assert!(text.contains("(no log: "), "{text}");
    assert!(
        text.contains("hint: the node cannot pull the image"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_pod_cannot_pull_its_image_fails_at_once() {
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "pgdata-wipe-full" },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [ { "name": "wipe", "image": "pgkeep:nope" } ] } } }
    }))
    .unwrap();
    let logs = FakeLogStream::new();
    let mut sink = Vec::new();
    let opts = JobRunOptions {
        wait: watched(),
        ..JobRunOptions::default()
    };
    let err = run(
        |c| async move { run_job(&c, job, &logs, &mut sink, std::future::pending(), &opts).await },
        |mut h| async move {
            let x = expect(&mut h, "POST", JOBS).await;
            let name = x.body["metadata"]["name"].as_str().unwrap().to_owned();
            x.created(x_body(&name));
            let mut p = pod(&format!("{name}-x"), json!({"job-name": name}), "Pending", false);
            p["status"]["containerStatuses"] = json!([{ "name": "wipe", "ready": false, "restartCount": 0,
                "image": "pgkeep:nope", "imageID": "", "state": { "waiting": { "reason": "ErrImagePull" } } }]);
            let x = expect(&mut h, "GET", PODS).await;
            x.assert_query("labelSelector", &format!("job-name={name}"));
            x.ok(list("PodList", vec![p]));
            expect_events(&mut h, "Pod", &format!("{name}-x"), vec![]).await;
            expect(&mut h, "GET", &format!("{PODS}/{name}-x/log")).await.send_text("");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("container wipe is in ErrImagePull"),
        "{err}"
    );
}

fn x_body(name: &str) -> serde_json::Value {
    json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name, "namespace": NS } })
}
