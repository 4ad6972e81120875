//! The backups-loader pod (up: create if missing, wait Running; down: delete) and the lookup of
//! the Ready db pod.

mod ops_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use ops_support::*;
use pgkeep_kube::ops::Wait;
use pgkeep_kube::ops::pods::{
    LoaderDown, LoaderUp, MountVerdict, loader_down, loader_up, mount_check, ready_pod,
};
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/record-platform/pods";
const LOADER: &str = "/api/v1/namespaces/record-platform/pods/backups-loader";

fn loader() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "backups-loader", "namespace": NS, "labels": { "app": "backups-loader" } },
        "spec": { "containers": [ { "name": "loader", "image": "pgkeep:test", "command": ["sleep", "infinity"],
                    "volumeMounts": [ { "name": "backups", "mountPath": "/backups" } ] } ],
                  "volumes": [ { "name": "backups", "persistentVolumeClaim": { "claimName": "pgbackups" } } ] }
    }))
    .unwrap()
}

fn wait() -> Wait {
    Wait::new(Duration::from_secs(4), Duration::from_secs(2))
}

fn loader_pod(phase: &str) -> serde_json::Value {
    pod(
        "backups-loader",
        json!({ "app": "backups-loader" }),
        phase,
        phase == "Running",
    )
}

#[tokio::test(start_paused = true)]
async fn loader_up_creates_the_missing_pod_and_waits_until_running() {
    let up = run(
        |c| async move { loader_up(&c, &loader(), wait()).await },
        |mut h| async move {
            expect(&mut h, "GET", LOADER)
                .await
                .not_found("pods", "backups-loader");
            let x = expect(&mut h, "POST", PODS).await;
            x.assert_query_is(&[]);
            assert_eq!(x.body["metadata"]["name"], "backups-loader");
            assert_eq!(
                x.body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
                "pgbackups"
            );
            x.created(loader_pod("Pending"));
            expect(&mut h, "GET", LOADER)
                .await
                .ok(loader_pod("Pending"));
            expect(&mut h, "GET", LOADER)
                .await
                .ok(loader_pod("Running"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        up,
        LoaderUp {
            pod: "backups-loader".into(),
            created: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn loader_up_with_a_running_pod_changes_nothing() {
    let up = run(
        |c| async move { loader_up(&c, &loader(), wait()).await },
        |mut h| async move {
            expect(&mut h, "GET", LOADER)
                .await
                .ok(loader_pod("Running"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(!up.created);
}

#[tokio::test(start_paused = true)]
async fn loader_up_waits_for_readiness_not_just_running() {
    let up = run(
        |c| async move { loader_up(&c, &loader(), wait()).await },
        |mut h| async move {
            let crashing = pod(
                "backups-loader",
                json!({ "app": "backups-loader" }),
                "Running",
                false,
            );
            expect(&mut h, "GET", LOADER).await.ok(crashing.clone());
            expect(&mut h, "GET", LOADER).await.ok(crashing);
            expect(&mut h, "GET", LOADER)
                .await
                .ok(loader_pod("Running"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(!up.created);
}

#[tokio::test(start_paused = true)]
async fn loader_up_timeout_shows_the_unbound_claim() {
    let err = run(
        |c| async move { loader_up(&c, &loader(), wait()).await },
        |mut h| async move {
            expect(&mut h, "GET", LOADER)
                .await
                .ok(loader_pod("Pending"));
            for _ in 0..3 {
                expect(&mut h, "GET", LOADER)
                    .await
                    .ok(loader_pod("Pending"));
            }
            expect_events(
                &mut h,
                "Pod",
                "backups-loader",
                vec![event(
                    "Pod",
                    "backups-loader",
                    "Warning",
                    "FailedScheduling",
                    "persistentvolumeclaim \"pgbackups\" not found",
                )],
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
            "timed out after 4s waiting for pod backups-loader to be Running and Ready\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("persistentvolumeclaim \"pgbackups\" not found"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn loader_up_with_an_ended_pod_says_to_delete_it() {
    let err = run(
        |c| async move { loader_up(&c, &loader(), wait()).await },
        |mut h| async move {
            expect(&mut h, "GET", LOADER).await.ok(loader_pod("Failed"));
            expect(&mut h, "GET", LOADER).await.ok(loader_pod("Failed"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("it has already ended (Failed)\nhint: delete it (`pgkeep loader down`"),
        "{err}"
    );
}

#[tokio::test]
async fn loader_down_deletes_and_tolerates_absence() {
    let down = run(
        |c| async move { loader_down(&c, "backups-loader").await },
        |mut h| async move {
            expect(&mut h, "DELETE", LOADER)
                .await
                .ok(loader_pod("Running"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        down,
        LoaderDown::Deleted {
            pod: "backups-loader".into()
        }
    );
    let down = run(
        |c| async move { loader_down(&c, "backups-loader").await },
        |mut h| async move {
            expect(&mut h, "DELETE", LOADER)
                .await
                .not_found("pods", "backups-loader");
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        down,
        LoaderDown::Absent {
            pod: "backups-loader".into()
        }
    );
}

#[tokio::test]
async fn loader_down_forbidden_and_missing_namespace_are_errors() {
    let err = run(
        |c| async move { loader_down(&c, "backups-loader").await },
        |mut h| async move {
            expect(&mut h, "DELETE", LOADER)
                .await
                .forbidden("delete", "pods", "backups-loader");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("forbidden: cannot delete pods in namespace record-platform"),
        "{err}"
    );
    let err = run(
        |c| async move { loader_down(&c, "backups-loader").await },
        |mut h| async move {
            expect(&mut h, "DELETE", LOADER).await.namespace_not_found();
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("namespace record-platform not found"),
        "{err}"
    );
}

#[tokio::test]
async fn ready_pod_finds_the_ready_one_or_says_to_scale_up() {
    let p = run(
        |c| async move { ready_pod(&c, "postgres").await },
        |mut h| async move {
            let x = expect(&mut h, "GET", PODS).await;
            x.assert_query("labelSelector", "app=postgres");
            x.ok(list(
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
    assert_eq!(p.metadata.name.as_deref(), Some("postgres-abc"));
    let err = run(
        |c| async move { ready_pod(&c, "postgres").await },
        |mut h| async move {
            expect(&mut h, "GET", PODS)
                .await
                .ok(list("PodList", vec![]));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ready pod app=postgres not found in namespace record-platform\nhint: no pod runs: `pgkeep scale 1` starts PostgreSQL"
    );
}

fn db_pod(mounts: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "postgres-abc" },
        "spec": { "containers": [ { "name": "db", "image": "pgkeep:test", "volumeMounts": mounts } ] }
    }))
    .unwrap()
}

#[test]
fn mount_check_flags_the_double_mount() {
    let (root, data) = ("/var/lib/postgresql", "/var/lib/postgresql/data");
    let good = db_pod(
        json!([{ "name": "data", "mountPath": "/var/lib/postgresql" }, { "name": "wal-archive", "mountPath": "/wal-archive" }]),
    );
    let (mounts, verdict) = mount_check(&good, "db", root, data);
    assert_eq!(
        mounts,
        [
            ("data".to_string(), root.to_string()),
            ("wal-archive".to_string(), "/wal-archive".to_string())
        ]
    );
    assert_eq!(verdict, MountVerdict::Ok);
    let double = db_pod(
        json!([{ "name": "data", "mountPath": "/var/lib/postgresql" }, { "name": "data", "mountPath": "/var/lib/postgresql/data/" }]),
    );
    assert_eq!(
        mount_check(&double, "db", root, data).1,
        MountVerdict::PgdataIsAMount {
            volumes: vec!["data".into()]
        }
    );
    let only_data = db_pod(json!([{ "name": "data", "mountPath": "/var/lib/postgresql/data" }]));
    assert!(matches!(
        mount_check(&only_data, "db", root, data).1,
        MountVerdict::PgdataIsAMount { .. }
    ));
    let none = db_pod(json!([]));
    assert_eq!(
        mount_check(&none, "db", root, data).1,
        MountVerdict::RootNotMounted
    );
    assert_eq!(
        mount_check(&good, "nope", root, data).1,
        MountVerdict::NoSuchContainer
    );
}
