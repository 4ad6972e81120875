//! `pgkeep bootstrap basebackup --kube` against a recorded API: the rendered bootstrap RBAC is
//! server-side applied (field manager `pgkeep`), the Deployment scaled to 0 and its pods waited
//! out, then the bootstrap Job created with the passed-through options and followed. And the
//! Job's own last step (`--scale-up`, in its pod): every request it sends is one the rendered
//! Role allows.

mod ops_support;

use std::time::Duration;

use k8s_openapi::api::rbac::v1::Role;
use ops_support::*;
use pgkeep_engine::settings::Settings;
use pgkeep_kube::manifests::jobs::{bootstrap_from_basebackup, bootstrap_rbac};
use pgkeep_kube::ops::fake::FakeLogStream;
use pgkeep_kube::ops::flows::{FlowCtx, bootstrap_basebackup, scale_up_in_job};
use pgkeep_kube::ops::job::{JobOutcome, JobRunOptions};
use pgkeep_kube::ops::{OpsError, Wait};
use serde_json::{Value, json};

const SA: &str = "/api/v1/namespaces/record-platform/serviceaccounts/bootstrap-from-basebackup";
const ROLE: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/record-platform/roles/bootstrap-from-basebackup";
const BINDING: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/record-platform/rolebindings/bootstrap-from-basebackup";
const SCALE: &str = "/apis/apps/v1/namespaces/record-platform/deployments/postgres/scale";
const PODS: &str = "/api/v1/namespaces/record-platform/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/record-platform/jobs";

fn rbac_values() -> Vec<Value> {
    let (sa, role, rb) = bootstrap_rbac(&Settings::default());
    vec![
        serde_json::to_value(sa).unwrap(),
        serde_json::to_value(role).unwrap(),
        serde_json::to_value(rb).unwrap(),
    ]
}

fn resources(gv: &str, items: &[(&str, &str)]) -> Value {
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": items.iter().map(|(n, k)| json!({ "name": n, "singularName": "", "namespaced": true, "kind": k, "verbs": [] })).collect::<Vec<_>>() })
}

fn echo(x: Exchange) {
    let mut body = x.body.clone();
    body["metadata"]["resourceVersion"] = "2".into();
    x.ok(body);
}

/// The rendered Job with what the CLI appends for `--from B --target-time T`.
fn job_with_options() -> k8s_openapi::api::batch::v1::Job {
    let mut job = bootstrap_from_basebackup(&Settings::default(), &[]);
    let c = &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.args.as_mut().unwrap().extend(
        [
            "--from",
            "basebackup-20261125-0620.bundle.tar.gz",
            "--target-time",
            "2026-11-25T19:30:00Z",
        ]
        .map(String::from),
    );
    job
}

#[tokio::test(start_paused = true)]
async fn bootstrap_applies_rbac_scales_down_then_runs_the_job_with_its_options() {
    let logs = FakeLogStream::new().with_lines(
        "bootstrap-1",
        [
            "restored basebackup-20261125-0620.bundle.tar.gz: recovery ended at 0/5000060 on timeline 2; last replayed transaction 2026-11-25T19:29:58.000000Z",
            "deployment/postgres scaled to 1: pod postgres-new Ready after 14s",
        ],
    );
    let (report, sink) = run(
        |c| async move {
            let mut sink = Vec::new();
            let r = bootstrap_basebackup(&c, &rbac_values(), "postgres", "postgres", Wait::new(Duration::from_secs(60), Duration::from_secs(2)), job_with_options(), FlowCtx { logs: &logs, sink: &mut sink, stop: std::future::pending(), opts: &JobRunOptions::default() })
            .await
            .unwrap();
            (r, sink)
        },
        |mut h| async move {
            // ServiceAccount: missing, created by apply.
            expect(&mut h, "GET", "/api/v1").await.ok(resources("v1", &[("serviceaccounts", "ServiceAccount")]));
            expect(&mut h, "GET", SA).await.not_found("serviceaccounts", "bootstrap-from-basebackup");
            let x = expect(&mut h, "PATCH", SA).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true")]);
            assert_eq!(x.body["kind"], "ServiceAccount");
            echo(x);
            // Role: missing, created; its rules as rendered.
            expect(&mut h, "GET", "/apis/rbac.authorization.k8s.io/v1").await.ok(resources(
                "rbac.authorization.k8s.io/v1",
                &[("roles", "Role"), ("rolebindings", "RoleBinding")],
            ));
            expect(&mut h, "GET", ROLE).await.not_found("roles.rbac.authorization.k8s.io", "bootstrap-from-basebackup");
            let x = expect(&mut h, "PATCH", ROLE).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true")]);
            assert_eq!(x.body["rules"][0]["resources"], json!(["deployments/scale"]));
            echo(x);
            // RoleBinding: already there and the same.
            let mut existing = rbac_values()[2].clone();
            existing["metadata"]["resourceVersion"] = "2".into();
            expect(&mut h, "GET", BINDING).await.ok(existing);
            let x = expect(&mut h, "PATCH", BINDING).await;
            x.assert_query_is(&[("fieldManager", "pgkeep"), ("force", "true")]);
            echo(x);
            // Only then: read the replicas (to scale back to on Ctrl-C), scale to 0 and wait for
            // the pods to go.
            expect(&mut h, "GET", SCALE).await.ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": 1 } }));
            let x = expect(&mut h, "PATCH", SCALE).await;
            assert_eq!(x.body, json!({ "spec": { "replicas": 0 } }));
            x.ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": 0 } }));
            expect(&mut h, "GET", PODS).await.ok(list("PodList", vec![pod("postgres-old", json!({ "app": "postgres" }), "Running", false)]));
            expect(&mut h, "GET", PODS).await.ok(list("PodList", vec![]));
            // The Job: its options, its ServiceAccount, its own scale-up.
            let x = expect(&mut h, "POST", JOBS).await;
            let name = x.body["metadata"]["name"].as_str().unwrap().to_string();
            assert!(name.starts_with("bootstrap-from-basebackup-"), "{name}");
            let spec = &x.body["spec"]["template"]["spec"];
            assert_eq!(spec["serviceAccountName"], "bootstrap-from-basebackup");
            assert_eq!(
                spec["containers"][0]["args"],
                json!(["bootstrap", "basebackup", "--yes", "--scale-up", "postgres", "--scale-up-app", "postgres",
                       "--from", "basebackup-20261125-0620.bundle.tar.gz", "--target-time", "2026-11-25T19:30:00Z"])
            );
            let body = x.body.clone();
            x.created(body);
            let x = expect(&mut h, "GET", PODS).await;
            x.assert_query("labelSelector", &format!("job-name={name}"));
            x.ok(list("PodList", vec![pod("bootstrap-1", json!({ "job-name": name }), "Succeeded", false)]));
            expect(&mut h, "GET", &format!("{JOBS}/{name}")).await.ok(json!({
                "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name }, "spec": { "template": {} },
                "status": { "conditions": [ { "type": "Complete", "status": "True" } ] } }));
            // No scale-up from here: the Job did it.
            done(&mut h).await;
        },
    )
    .await;
    let applied: Vec<String> = report.rbac.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            "serviceaccount/bootstrap-from-basebackup created",
            "role.rbac.authorization.k8s.io/bootstrap-from-basebackup created",
            "rolebinding.rbac.authorization.k8s.io/bootstrap-from-basebackup unchanged",
        ]
    );
    assert_eq!(report.scaled.replicas, 0);
    assert!(matches!(report.job, JobOutcome::Succeeded { .. }));
    let out = String::from_utf8(sink).unwrap();
    assert!(out.contains("recovery ended at 0/5000060"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn bootstrap_stops_before_scaling_when_rbac_is_forbidden() {
    let err = run(
        |c| async move {
            bootstrap_basebackup(
                &c,
                &rbac_values(),
                "postgres",
                "postgres",
                Wait::default(),
                job_with_options(),
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
            expect(&mut h, "GET", "/api/v1")
                .await
                .ok(resources("v1", &[("serviceaccounts", "ServiceAccount")]));
            expect(&mut h, "GET", SA)
                .await
                .not_found("serviceaccounts", "bootstrap-from-basebackup");
            expect(&mut h, "PATCH", SA).await.forbidden(
                "patch",
                "serviceaccounts",
                "bootstrap-from-basebackup",
            );
            // Nothing is scaled down and no Job is created.
            done(&mut h).await;
        },
    )
    .await;
    let msg = err.to_string();
    assert!(matches!(err, OpsError::Forbidden { .. }), "{err:?}");
    assert!(msg.contains("serviceaccounts"), "{msg}");
    assert!(msg.contains("hint:"), "{msg}");
}

/// Whether the Role allows `verb` on `group`/`resource` (with `name`).
fn allows(role: &Role, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
    role.rules.iter().flatten().any(|r| {
        let has = |v: &Option<Vec<String>>, x: &str| v.iter().flatten().any(|s| s == x || s == "*");
        (r.verbs.iter().any(|v| v == verb || v == "*"))
            && has(&r.api_groups, group)
            && has(&r.resources, resource)
            && match (&r.resource_names, name) {
                (None, _) => true,
                (Some(names), Some(n)) => names.is_empty() || names.iter().any(|x| x == n),
                (Some(names), None) => names.is_empty(),
            }
    })
}

/// Check an API request against the Role: `(verb, group, resource, name)` from method and path.
fn assert_allowed(role: &Role, x: &Exchange) {
    let path = x.path.as_str();
    let (group, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", r)
    } else {
        let r = path.strip_prefix("/apis/").expect("an API path");
        let mut parts = r.splitn(3, '/');
        let g = parts.next().unwrap();
        let _version = parts.next();
        (g, parts.next().unwrap())
    };
    let segs: Vec<&str> = rest.split('/').collect();
    assert_eq!(segs[0], "namespaces", "{x:?}");
    assert_eq!(segs[1], NS, "{x:?}");
    let (resource, name) = match &segs[2..] {
        [res] => (res.to_string(), None),
        [res, name] => (res.to_string(), Some(*name)),
        [res, name, sub] => (format!("{res}/{sub}"), Some(*name)),
        _ => panic!("unexpected path {path}"),
    };
    let verb = match (x.method.as_str(), name) {
        ("GET", None) if x.query.get("watch").is_some_and(|w| w == "true") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("PATCH", _) => "patch",
        ("POST", _) => "create",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    assert!(
        allows(role, verb, group, &resource, name),
        "the bootstrap Role does not allow {verb} {group}/{resource} {name:?} ({x:?})"
    );
}

#[tokio::test(start_paused = true)]
async fn the_jobs_scale_up_needs_only_what_the_rendered_role_allows() {
    let (_, role, _) = bootstrap_rbac(&Settings::default());
    let scaled = run(
        |c| async move {
            // What `bootstrap basebackup --scale-up` does in the pod: connect (probe), scale up.
            pgkeep_kube::ops::connect::probe(&c).await.unwrap();
            scale_up_in_job(&c, "postgres", "postgres", Some(Wait::new(Duration::from_secs(600), Duration::from_secs(2))))
                .await
                .unwrap()
        },
        move |mut h| async move {
            // Non-resource URL, open to every authenticated account.
            expect(&mut h, "GET", "/version").await.ok(json!({ "major": "1", "minor": "20", "gitVersion": "v1.20.2" }));
            // Namespaces are cluster-scoped: a Role cannot grant this; the 403 is accepted.
            let x = expect(&mut h, "GET", "/api/v1/namespaces/record-platform").await;
            x.forbidden("get", "namespaces", NS);
            let x = expect(&mut h, "PATCH", SCALE).await;
            assert_allowed(&role, &x);
            assert_eq!(x.body, json!({ "spec": { "replicas": 1 } }));
            x.ok(json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "postgres" }, "spec": { "replicas": 1 } }));
            let x = expect(&mut h, "GET", PODS).await;
            assert_allowed(&role, &x);
            x.assert_query("labelSelector", "app=postgres");
            x.ok(list("PodList", vec![pod("postgres-new", json!({ "app": "postgres" }), "Pending", false)]));
            let x = expect(&mut h, "GET", PODS).await;
            assert_allowed(&role, &x);
            x.ok(list("PodList", vec![pod("postgres-new", json!({ "app": "postgres" }), "Running", true)]));
            done(&mut h).await;
        },
    )
    .await;
    assert_eq!(scaled.replicas, 1);
    assert_eq!(scaled.ready_pod.as_deref(), Some("postgres-new"));
}

#[test]
fn the_bootstrap_role_cannot_touch_the_deployment_itself_only_its_scale() {
    // A patch of the Deployment (even a server-side dry run) could rewrite its pod template or
    // print it; the Job needs only the scale subresource.
    let (_, role, _) = bootstrap_rbac(&Settings::default());
    for verb in ["get", "patch", "update", "list", "watch"] {
        assert!(
            !allows(&role, verb, "apps", "deployments", Some("postgres")),
            "{verb} deployments"
        );
    }
    assert!(allows(
        &role,
        "get",
        "apps",
        "deployments/scale",
        Some("postgres")
    ));
    assert!(allows(
        &role,
        "patch",
        "apps",
        "deployments/scale",
        Some("postgres")
    ));
    assert!(!allows(&role, "watch", "", "pods", None));
    assert!(allows(&role, "get", "", "pods", Some("postgres-abc")));
}

#[test]
fn the_role_check_itself_refuses_what_the_role_does_not_grant() {
    // The checker used above must be able to fail: other deployments, other verbs, other kinds.
    let (_, role, _) = bootstrap_rbac(&Settings::default());
    assert!(allows(
        &role,
        "patch",
        "apps",
        "deployments/scale",
        Some("postgres")
    ));
    assert!(!allows(
        &role,
        "patch",
        "apps",
        "deployments/scale",
        Some("other")
    ));
    assert!(!allows(
        &role,
        "delete",
        "apps",
        "deployments",
        Some("postgres")
    ));
    assert!(!allows(&role, "create", "batch", "jobs", None));
    assert!(!allows(
        &role,
        "get",
        "",
        "secrets",
        Some("postgres-superuser")
    ));
    assert!(allows(&role, "list", "", "pods", None));
}
