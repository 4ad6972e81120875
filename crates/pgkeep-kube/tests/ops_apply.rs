//! Server-side apply: exact requests (discovery, GET, PATCH with fieldManager=pgkeep and
//! force=true, dryRun=All), created/configured/unchanged, clear errors for APIs and fields the
//! server lacks, and the adaptation of CronJobs to Kubernetes 1.20.

mod ops_support;

use ops_support::*;
use pgkeep_kube::ops::OpsError;
use pgkeep_kube::ops::apply::{
    ApplyAction, ApplyOptions, ServerVersion, adapt_cronjob, adapt_for_server, apply_objects,
    apply_typed,
};
use serde_json::{Value, json};

fn resources(group_version: &str, items: &[(&str, &str, bool)]) -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": items.iter().map(|(name, kind, namespaced)| json!({
            "name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "patch"]
        })).collect::<Vec<_>>()
    })
}

fn version(minor: &str, git: &str) -> Value {
    json!({ "major": "1", "minor": minor, "gitVersion": git, "gitCommit": "", "gitTreeState": "",
            "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64" })
}

fn service() -> Value {
    json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "postgres", "namespace": NS },
            "spec": { "selector": { "app": "postgres" }, "ports": [ { "port": 5432 } ] } })
}

fn deployment(image: &str) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "postgres", "namespace": NS },
            "spec": { "replicas": 1, "template": { "spec": { "containers": [ { "name": "db", "image": image } ] } } } })
}

fn configmap() -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "pgkeep" }, "data": { "a": "1" } })
}

/// The object as the server returns it: `obj` plus server-set metadata.
fn served(obj: &Value, rv: &str) -> Value {
    let mut o = obj.clone();
    o["metadata"]["resourceVersion"] = rv.into();
    o["metadata"]["uid"] = "u-1".into();
    o["metadata"]["managedFields"] = json!([{ "manager": format!("m{rv}") }]);
    o
}

fn cronjob(api_version: &str, tz: bool) -> Value {
    let mut cj = json!({
        "apiVersion": api_version, "kind": "CronJob",
        "metadata": { "name": "pgkeep-backup-logical", "namespace": NS },
        "spec": { "schedule": "0 6 * * *", "concurrencyPolicy": "Forbid",
                  "jobTemplate": { "spec": { "template": { "spec": { "restartPolicy": "Never",
                      "containers": [ { "name": "backup", "image": "pgkeep:test" } ] } } } } }
    });
    if tz {
        cj["spec"]["timeZone"] = "America/New_York".into();
    }
    cj
}

const SVC: &str = "/api/v1/namespaces/record-platform/services/postgres";
const DEPLOY: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres";
const CM: &str = "/api/v1/namespaces/record-platform/configmaps/pgkeep";

#[tokio::test]
async fn reports_created_configured_unchanged_with_exact_requests() {
    let objects = vec![service(), deployment("pgkeep:2"), configmap()];
    let applied = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        |mut h| async move {
            let apply_query = [("fieldManager", "pgkeep"), ("force", "true")];
            // Service: discovery of v1, absent, applied → created.
            expect(&mut h, "GET", "/api/v1").await.ok(resources(
                "v1",
                &[
                    ("services", "Service", true),
                    ("configmaps", "ConfigMap", true),
                    ("services/status", "Service", true),
                ],
            ));
            expect(&mut h, "GET", SVC)
                .await
                .not_found("services", "postgres");
            let x = expect(&mut h, "PATCH", SVC).await;
            x.assert_query_is(&apply_query);
            assert_eq!(
                x.headers.get("content-type").unwrap(),
                "application/apply-patch+yaml"
            );
            assert_eq!(x.body, service());
            x.ok(served(&service(), "10"));
            // Deployment: discovery of apps/v1, present with another image → configured.
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(resources(
                "apps/v1",
                &[
                    ("deployments", "Deployment", true),
                    ("deployments/scale", "Scale", true),
                ],
            ));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(served(&deployment("pgkeep:1"), "20"));
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            x.assert_query_is(&apply_query);
            assert_eq!(
                x.body["spec"]["template"]["spec"]["containers"][0]["image"],
                "pgkeep:2"
            );
            x.ok(served(&deployment("pgkeep:2"), "21"));
            // ConfigMap: v1 already discovered; the same content comes back → unchanged
            // (managedFields differ and do not count).
            let mut before = served(&configmap(), "30");
            before["metadata"]["namespace"] = NS.into();
            expect(&mut h, "GET", CM).await.ok(before.clone());
            let x = expect(&mut h, "PATCH", CM).await;
            x.assert_query_is(&apply_query);
            let mut after = before;
            after["metadata"]["managedFields"] = json!([{ "manager": "pgkeep" }]);
            x.ok(after);
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    let actions: Vec<ApplyAction> = applied.iter().map(|a| a.action).collect();
    assert_eq!(
        actions,
        [
            ApplyAction::Created,
            ApplyAction::Configured,
            ApplyAction::Unchanged
        ]
    );
    let lines: Vec<String> = applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "service/postgres created",
            "deployment.apps/postgres configured",
            "configmap/pgkeep unchanged"
        ]
    );
}

#[tokio::test]
async fn dry_run_sends_dry_run_all() {
    let objects = vec![deployment("pgkeep:2")];
    let applied = run(
        |c| async move {
            apply_objects(
                &c,
                &objects,
                ApplyOptions {
                    dry_run: true,
                    force: true,
                },
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "GET", "/apis/apps/v1")
                .await
                .ok(resources("apps/v1", &[("deployments", "Deployment", true)]));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(served(&deployment("pgkeep:1"), "20"));
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            x.assert_query_is(&[
                ("fieldManager", "pgkeep"),
                ("force", "true"),
                ("dryRun", "All"),
            ]);
            // A dry run does not bump resourceVersion: the content decides.
            x.ok(served(&deployment("pgkeep:2"), "20"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        applied[0].to_string(),
        "deployment.apps/postgres configured (server dry run)"
    );
}

#[tokio::test]
async fn batch_v1_cronjob_on_1_20_is_a_clear_error_and_nothing_is_patched() {
    let objects = vec![cronjob("batch/v1", false)];
    let err = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        |mut h| async move {
            // 1.20 serves batch/v1, but only Jobs there.
            expect(&mut h, "GET", "/apis/batch/v1")
                .await
                .ok(resources("batch/v1", &[("jobs", "Job", true)]));
            expect(&mut h, "GET", "/version")
                .await
                .ok(version("20", "v1.20.2"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::ApiNotServed { .. }));
    let text = err.to_string();
    assert!(
        text.starts_with(
            "the server (Kubernetes v1.20.2) does not serve CronJob in batch/v1\nhint: "
        ),
        "{text}"
    );
    assert!(
        text.contains("batch/v1beta1") && text.contains("adapt_for_server"),
        "{text}"
    );
}

#[tokio::test]
async fn group_version_not_served_at_all_is_a_clear_error() {
    let pdb = json!({ "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": { "name": "postgres" },
                      "spec": { "maxUnavailable": 0 } });
    let err = run(
        |c| async move { apply_objects(&c, &[pdb], ApplyOptions::default()).await },
        |mut h| async move {
            expect(&mut h, "GET", "/apis/policy/v1")
                .await
                .reply(404, json!("404 page not found"));
            expect(&mut h, "GET", "/version")
                .await
                .ok(version("20", "v1.20.2"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not serve PodDisruptionBudget in policy/v1"),
        "{text}"
    );
    assert!(text.contains("policy/v1beta1"), "{text}");
}

#[tokio::test]
async fn cronjob_time_zone_on_a_server_older_than_1_27_is_refused() {
    let objects = vec![cronjob("batch/v1", true)];
    let err = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        |mut h| async move {
            expect(&mut h, "GET", "/apis/batch/v1").await.ok(resources(
                "batch/v1",
                &[("jobs", "Job", true), ("cronjobs", "CronJob", true)],
            ));
            expect(&mut h, "GET", "/version")
                .await
                .ok(version("25", "v1.25.16"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string().lines().next().unwrap(),
        "CronJob pgkeep-backup-logical: spec.timeZone needs Kubernetes 1.27 or newer, the server is Kubernetes v1.25.16"
    );
}

#[tokio::test]
async fn cronjob_time_zone_on_1_27_is_applied() {
    let objects = vec![cronjob("batch/v1", true)];
    let path = "/apis/batch/v1/namespaces/record-platform/cronjobs/pgkeep-backup-logical";
    let applied = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        |mut h| async move {
            expect(&mut h, "GET", "/apis/batch/v1").await.ok(resources(
                "batch/v1",
                &[("jobs", "Job", true), ("cronjobs", "CronJob", true)],
            ));
            expect(&mut h, "GET", "/version")
                .await
                .ok(version("27", "v1.27.3"));
            expect(&mut h, "GET", path)
                .await
                .not_found("cronjobs.batch", "pgkeep-backup-logical");
            let x = expect(&mut h, "PATCH", path).await;
            assert_eq!(x.body["spec"]["timeZone"], "America/New_York");
            x.ok(served(&cronjob("batch/v1", true), "5"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        applied[0].to_string(),
        "cronjob.batch/pgkeep-backup-logical created"
    );
}

#[tokio::test]
async fn forbidden_patch_names_verb_resource_and_namespace() {
    let objects = vec![deployment("pgkeep:2")];
    let err = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        |mut h| async move {
            expect(&mut h, "GET", "/apis/apps/v1")
                .await
                .ok(resources("apps/v1", &[("deployments", "Deployment", true)]));
            expect(&mut h, "GET", DEPLOY)
                .await
                .ok(served(&deployment("pgkeep:1"), "20"));
            expect(&mut h, "PATCH", DEPLOY)
                .await
                .forbidden("patch", "deployments", "postgres");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "forbidden: cannot patch deployments in namespace record-platform\nhint: "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn claims_secrets_foreign_namespaces_and_nameless_objects_are_refused_without_requests() {
    let pvc = json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "pgdata-big" } });
    let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "postgres-superuser" } });
    let mut foreign = service();
    foreign["metadata"]["namespace"] = "other".into();
    let nameless = json!({ "apiVersion": "v1", "kind": "Service", "metadata": {} });
    for (obj, expected) in [
        (
            pvc,
            "refusing to server-side apply PersistentVolumeClaim pgdata-big",
        ),
        (
            secret,
            "refusing to server-side apply Secret postgres-superuser",
        ),
        (
            foreign,
            "its metadata.namespace is other, but pgkeep acts in namespace record-platform",
        ),
        (
            nameless,
            "invalid object: an object lacks apiVersion, kind or metadata.name",
        ),
    ] {
        let err = run(
            |c| async move { apply_objects(&c, &[obj], ApplyOptions::default()).await },
            |mut h| async move { done(&mut h).await },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert!(err.to_string().contains("\nhint: "), "{err}");
    }
}

fn v(minor: u32) -> ServerVersion {
    ServerVersion {
        major: 1,
        minor,
        git_version: format!("v1.{minor}.0"),
    }
}

#[test]
fn adapt_cronjob_for_1_20_uses_v1beta1_and_drops_time_zone() {
    let (cj, notes) = adapt_cronjob(cronjob("batch/v1", true), &v(20));
    assert_eq!(cj["apiVersion"], "batch/v1beta1");
    assert!(cj["spec"].get("timeZone").is_none());
    // Everything else is kept.
    assert_eq!(cj["spec"]["schedule"], "0 6 * * *");
    assert_eq!(
        cj["spec"]["jobTemplate"],
        cronjob("batch/v1", true)["spec"]["jobTemplate"]
    );
    assert_eq!(notes.len(), 2);
    assert!(notes[0].contains("batch/v1beta1"), "{notes:?}");
    assert!(
        notes[1].contains("America/New_York") && notes[1].contains("UTC"),
        "{notes:?}"
    );
}

#[test]
fn adapt_for_server_by_version() {
    // 1.24: batch/v1 exists, timeZone does not (before 1.27 as far as pgkeep is concerned).
    let a = adapt_for_server(vec![cronjob("batch/v1", true), service()], &v(24));
    assert_eq!(a.objects[0]["apiVersion"], "batch/v1");
    assert!(a.objects[0]["spec"].get("timeZone").is_none());
    assert_eq!(a.objects[1], service());
    assert_eq!(a.notes.len(), 1);
    // 1.27: nothing to do.
    let a = adapt_for_server(vec![cronjob("batch/v1", true)], &v(27));
    assert_eq!(a.objects[0], cronjob("batch/v1", true));
    assert!(a.notes.is_empty());
    // 1.20: PodDisruptionBudget policy/v1 → policy/v1beta1.
    let pdb = json!({ "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": { "name": "postgres" } });
    let a = adapt_for_server(vec![pdb], &v(20));
    assert_eq!(a.objects[0]["apiVersion"], "policy/v1beta1");
}

#[test]
fn server_version_reads_provider_minor_versions() {
    let info: k8s_openapi::apimachinery::pkg::version::Info =
        serde_json::from_value(version("20+", "v1.20.2-gke.1")).unwrap();
    let sv = ServerVersion::from_info(&info).unwrap();
    assert_eq!((sv.major, sv.minor), (1, 20));
    assert!(sv.at_least(1, 20) && !sv.at_least(1, 21));
    assert_eq!(sv.to_string(), "Kubernetes v1.20.2-gke.1");
}

#[tokio::test]
async fn typed_objects_are_applied_with_their_api_version_and_kind() {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(service()).unwrap();
    let applied = run(
        |c| async move { apply_typed(&c, &[svc], ApplyOptions::default()).await },
        |mut h| async move {
            expect(&mut h, "GET", "/api/v1")
                .await
                .ok(resources("v1", &[("services", "Service", true)]));
            expect(&mut h, "GET", SVC)
                .await
                .ok(served(&service(), "10"));
            let x = expect(&mut h, "PATCH", SVC).await;
            assert_eq!(x.body["apiVersion"], "v1");
            assert_eq!(x.body["kind"], "Service");
            x.ok(served(&service(), "10"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(applied[0].to_string(), "service/postgres unchanged");
}

#[tokio::test]
async fn an_existing_deployments_replicas_are_never_applied_a_new_one_starts_at_one() {
    let apps = || {
        resources(
            "apps/v1",
            &[
                ("deployments", "Deployment", true),
                ("deployments/scale", "Scale", true),
            ],
        )
    };
    // Scaled to 0 by a wipe or bootstrap in progress: the apply must not scale it back to 1.
    let objects = vec![deployment("pgkeep:2")];
    let applied = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        move |mut h| async move {
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(apps());
            let mut found = served(&deployment("pgkeep:1"), "20");
            found["spec"]["replicas"] = 0.into();
            expect(&mut h, "GET", DEPLOY).await.ok(found.clone());
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true")]);
            assert!(x.body["spec"].get("replicas").is_none(), "{}", x.body);
            assert_eq!(
                x.body["spec"]["template"]["spec"]["containers"][0]["image"],
                "pgkeep:2"
            );
            let mut after = found;
            after["spec"]["template"]["spec"]["containers"][0]["image"] = "pgkeep:2".into();
            x.ok(after);
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(applied[0].replicas_kept, Some(0));
    assert_eq!(
        applied[0].to_string(),
        "deployment.apps/postgres configured (replicas kept at 0, as found; `pgkeep scale` changes them)"
    );

    // Not there yet: created with the rendered single replica.
    let objects = vec![deployment("pgkeep:2")];
    let applied = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        move |mut h| async move {
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(apps());
            expect(&mut h, "GET", DEPLOY)
                .await
                .not_found("deployments.apps", "postgres");
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            assert_eq!(x.body, deployment("pgkeep:2"));
            assert_eq!(x.body["spec"]["replicas"], 1);
            x.ok(served(&deployment("pgkeep:2"), "1"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(applied[0].action, ApplyAction::Created);
    assert_eq!(applied[0].replicas_kept, None);

    // pgkeep's apply still owns the field (a scale subresource that did not record its writer):
    // leaving it out would reset it to 1, so the 0 found is sent.
    let objects = vec![deployment("pgkeep:2")];
    let applied = run(
        |c| async move { apply_objects(&c, &objects, ApplyOptions::default()).await },
        move |mut h| async move {
            expect(&mut h, "GET", "/apis/apps/v1").await.ok(apps());
            let mut found = served(&deployment("pgkeep:2"), "20");
            found["spec"]["replicas"] = 0.into();
            found["metadata"]["managedFields"] = json!([
                { "manager": "pgkeep", "operation": "Apply", "fieldsType": "FieldsV1",
                  "fieldsV1": { "f:spec": { "f:replicas": {}, "f:template": {} } } }
            ]);
            expect(&mut h, "GET", DEPLOY).await.ok(found.clone());
            let x = expect(&mut h, "PATCH", DEPLOY).await;
            assert_eq!(x.body["spec"]["replicas"], 0, "{}", x.body);
            x.ok(found);
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(applied[0].action, ApplyAction::Unchanged);
    assert_eq!(applied[0].replicas_kept, Some(0));
}
