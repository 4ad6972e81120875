//! `scale 0|1`: the scale subresource is patched, then pods are polled until gone / Ready;
//! a timeout reports the pods and their events. Time is virtual (paused tokio clock).

mod ops_support;

use std::time::Duration;

use ops_support::*;
use pgkeep_kube::ops::Wait;
use pgkeep_kube::ops::scale::{scale, wait_rollout};
use serde_json::json;

const SCALE: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale";
const PODS: &str = "/api/v1/namespaces/record-platform/pods";

fn wait() -> Option<Wait> {
    Some(Wait::new(Duration::from_secs(10), Duration::from_secs(2)))
}

fn scale_answer(replicas: i32) -> serde_json::Value {
    json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": { "name": "postgres", "namespace": NS },
            "spec": { "replicas": replicas }, "status": { "replicas": 1 } })
}

async fn expect_scale_patch(h: &mut Handle, replicas: i32) -> Exchange {
    let x = expect(h, "PATCH", SCALE).await;
    x.assert_query_is(&[]);
    assert_eq!(
        x.headers.get("content-type").unwrap(),
        "application/merge-patch+json"
    );
    assert_eq!(x.body, json!({ "spec": { "replicas": replicas } }));
    x
}

async fn expect_pods(h: &mut Handle) -> Exchange {
    let x = expect(h, "GET", PODS).await;
    x.assert_query("labelSelector", "app=postgres");
    x
}

#[tokio::test(start_paused = true)]
async fn scale_to_zero_waits_until_the_pods_are_gone() {
    let scaled = run(
        |c| async move { scale(&c, "postgres", "postgres", 0, wait()).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 0).await.ok(scale_answer(0));
            let mut terminating = pod("postgres-abc", json!({"app": "postgres"}), "Running", true);
            terminating["metadata"]["deletionTimestamp"] = "2026-11-25T10:01:00Z".into();
            expect_pods(&mut h)
                .await
                .ok(list("PodList", vec![terminating]));
            expect_pods(&mut h).await.ok(list("PodList", vec![]));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(scaled.replicas, 0);
    assert_eq!(scaled.ready_pod, None);
    assert_eq!(scaled.waited, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn scale_to_one_waits_for_a_ready_pod() {
    let scaled = run(
        |c| async move { scale(&c, "postgres", "postgres", 1, wait()).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 1).await.ok(scale_answer(1));
            expect_pods(&mut h).await.ok(list("PodList", vec![]));
            expect_pods(&mut h).await.ok(list(
                "PodList",
                vec![pod(
                    "postgres-abc",
                    json!({"app": "postgres"}),
                    "Running",
                    false,
                )],
            ));
            expect_pods(&mut h).await.ok(list(
                "PodList",
                vec![pod(
                    "postgres-abc",
                    json!({"app": "postgres"}),
                    "Running",
                    true,
                )],
            ));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(scaled.ready_pod.as_deref(), Some("postgres-abc"));
    assert_eq!(scaled.waited, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn timeout_shows_the_pods_and_their_events() {
    let err = run(
        |c| async move { scale(&c, "postgres", "postgres", 1, wait()).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 1).await.ok(scale_answer(1));
            let mut pending = pod("postgres-abc", json!({"app": "postgres"}), "Pending", false);
            pending["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims." }]);
            // Polls at t = 0, 2, 4, 6, 8, 10 s; at 10 s the timeout is reached.
            for _ in 0..6 {
                expect_pods(&mut h).await.ok(list("PodList", vec![pending.clone()]));
            }
            expect_events(
                &mut h,
                "Pod",
                "postgres-abc",
                vec![event("Pod", "postgres-abc", "Warning", "FailedScheduling",
                    "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims.")],
            )
            .await;
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "timed out after 10s waiting for a Ready pod of postgres (app=postgres)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("pod postgres-abc: Pending, PodScheduled=False Unschedulable"),
        "{text}"
    );
    assert!(
        text.contains("Warning FailedScheduling pod/postgres-abc (x3): 0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims."),
        "{text}"
    );
    assert!(text.contains("\nhint: "), "{text}");
}

#[tokio::test(start_paused = true)]
async fn timeout_with_events_forbidden_still_reports_the_pods() {
    let err = run(
        |c| async move {
            scale(
                &c,
                "postgres",
                "postgres",
                0,
                Some(Wait::new(Duration::from_secs(2), Duration::from_secs(2))),
            )
            .await
        },
        |mut h| async move {
            expect_scale_patch(&mut h, 0).await.ok(scale_answer(0));
            let stuck = pod("postgres-abc", json!({"app": "postgres"}), "Running", true);
            expect_pods(&mut h)
                .await
                .ok(list("PodList", vec![stuck.clone()]));
            expect_pods(&mut h).await.ok(list("PodList", vec![stuck]));
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform/events")
                .await
                .forbidden("list", "events", "");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("waiting for the pods of postgres (app=postgres) to be gone"),
        "{text}"
    );
    assert!(text.contains("pod postgres-abc: Running"), "{text}");
    assert!(
        text.contains("(events of pod/postgres-abc unavailable: forbidden: cannot list events"),
        "{text}"
    );
}

#[tokio::test]
async fn forbidden_scale_names_the_subresource() {
    let err = run(
        |c| async move { scale(&c, "postgres", "postgres", 0, wait()).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 0)
                .await
                .forbidden("patch", "deployments/scale", "postgres");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "forbidden: cannot patch deployments/scale in namespace record-platform\nhint: "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn missing_deployment_says_to_deploy() {
    let err = run(
        |c| async move { scale(&c, "postgres", "postgres", 1, wait()).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 1)
                .await
                .not_found("deployments.apps", "postgres");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployments/scale postgres not found in namespace record-platform\nhint: deploy it first with `pgkeep deploy`, or check --namespace"
    );
}

#[tokio::test]
async fn without_wait_only_the_patch_is_sent_and_two_replicas_are_refused() {
    let scaled = run(
        |c| async move { scale(&c, "postgres", "postgres", 1, None).await },
        |mut h| async move {
            expect_scale_patch(&mut h, 1).await.ok(scale_answer(1));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(scaled.waited, Duration::ZERO);
    let err = run(
        |c| async move { scale(&c, "postgres", "postgres", 2, None).await },
        |mut h| async move { done(&mut h).await },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("refusing to scale postgres to 2"),
        "{err}"
    );
}

const DEPLOY: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres";

fn deploy_status(
    generation: i64,
    observed: i64,
    updated: i32,
    total: i32,
    available: i32,
) -> serde_json::Value {
    json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "postgres", "namespace": NS, "generation": generation },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "postgres" } },
                      "template": { "spec": { "containers": [ { "name": "db", "image": "pgkeep:2" } ] } } },
            "status": { "observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                        "availableReplicas": available } })
}

#[tokio::test(start_paused = true)]
async fn rollout_waits_for_the_new_template_to_be_available() {
    let done_ = run(
        |c| async move {
            wait_rollout(
                &c,
                "postgres",
                "postgres",
                Wait::new(Duration::from_secs(60), Duration::from_secs(2)),
            )
            .await
        },
        |mut h| async move {
            // Not observed yet; old pod still there; new one not available; done.
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(deploy_status(2, 1, 0, 1, 1));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(deploy_status(2, 2, 1, 2, 1));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(deploy_status(2, 2, 1, 1, 0));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(deploy_status(2, 2, 1, 1, 1));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(done_.replicas, 1);
    assert_eq!(done_.waited, Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn rollout_timeout_reports_progress_pods_and_events() {
    let err = run(
        |c| async move { wait_rollout(&c, "postgres", "postgres", Wait::new(Duration::from_secs(2), Duration::from_secs(2))).await },
        |mut h| async move {
            expect(&mut h, "GET", DEPLOY).await.ok(deploy_status(2, 2, 1, 1, 0));
            expect(&mut h, "GET", DEPLOY).await.ok(deploy_status(2, 2, 1, 1, 0));
            let mut crashing = pod("postgres-new", json!({"app": "postgres"}), "Running", false);
            crashing["status"]["initContainerStatuses"] = json!([{ "name": "prep-dirs", "ready": false, "restartCount": 4,
                "image": "pgkeep:2", "imageID": "", "state": { "waiting": { "reason": "CrashLoopBackOff" } } }]);
            expect_pods(&mut h).await.ok(list("PodList", vec![crashing]));
            expect_events(&mut h, "Pod", "postgres-new", vec![event("Pod", "postgres-new", "Warning", "BackOff", "Back-off restarting failed container")]).await;
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("timed out after 2s waiting for deployment postgres to roll out\ndeployment postgres: 0 of 1 updated replicas available\n"), "{text}");
    assert!(
        text.contains("init prep-dirs waiting: CrashLoopBackOff"),
        "{text}"
    );
    assert!(text.contains("init prep-dirs restarts: 4"), "{text}");
    assert!(text.contains("Warning BackOff pod/postgres-new"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn rollout_stops_at_the_progress_deadline() {
    let err = run(
        |c| async move { wait_rollout(&c, "postgres", "postgres", Wait::new(Duration::from_secs(600), Duration::from_secs(2))).await },
        |mut h| async move {
            let mut d = deploy_status(2, 2, 1, 1, 0);
            d["status"]["conditions"] = json!([{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"postgres-7d9\" has timed out progressing." }]);
            expect(&mut h, "GET", DEPLOY).await.ok(d);
            expect_pods(&mut h).await.ok(list("PodList", vec![]));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "its progress deadline passed: ReplicaSet \"postgres-7d9\" has timed out progressing."
        ),
        "{err}"
    );
}
