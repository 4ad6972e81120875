//! `pvc ensure`: absent claims are created (or dry-run created), existing ones are reported and
//! never patched, replaced or deleted; 403/404/409 give clear errors.

mod ops_support;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use ops_support::*;
use pgkeep_kube::ops::OpsError;
use pgkeep_kube::ops::pvc::{PvcState, ensure_pvc, ensure_pvcs};
use serde_json::{Value, json};

const PVCS: &str = "/api/v1/namespaces/record-platform/persistentvolumeclaims";

fn desired(name: &str, size: &str, class: Option<&str>) -> PersistentVolumeClaim {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": NS, "labels": { "app": "postgres" } },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": size } } }
    });
    if let Some(c) = class {
        v["spec"]["storageClassName"] = c.into();
    }
    serde_json::from_value(v).unwrap()
}

fn existing(name: &str, size: &str, class: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": NS, "resourceVersion": "7" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": size } },
                  "storageClassName": class, "volumeName": format!("pv-{name}") },
        "status": { "phase": phase, "accessModes": ["ReadWriteOnce"], "capacity": { "storage": size } }
    })
}

#[tokio::test]
async fn absent_claims_are_created() {
    let want = vec![
        desired("pgdata-big", "100Gi", None),
        desired("pg-wal-archive", "20Gi", Some("local")),
    ];
    let reports = run(
        |c| async move { ensure_pvcs(&c, &want, false).await },
        |mut h| async move {
            for (name, size) in [("pgdata-big", "100Gi"), ("pg-wal-archive", "20Gi")] {
                expect(&mut h, "GET", &format!("{PVCS}/{name}"))
                    .await
                    .not_found("persistentvolumeclaims", name);
                let x = expect(&mut h, "POST", PVCS).await;
                x.assert_query_is(&[]);
                assert_eq!(x.body["metadata"]["name"], name);
                assert_eq!(x.body["spec"]["resources"]["requests"]["storage"], size);
                let body = x.body.clone();
                x.created(body);
            }
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[0].state,
        PvcState::Created {
            size: "100Gi".into(),
            storage_class: None
        }
    );
    assert_eq!(
        reports[1].to_string(),
        "persistentvolumeclaim/pg-wal-archive created: 20Gi, storage class local"
    );
}

#[tokio::test]
async fn dry_run_creates_with_server_dry_run() {
    let want = desired("pgdata-big", "100Gi", None);
    let report = run(
        |c| async move { ensure_pvc(&c, &want, true).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .not_found("persistentvolumeclaims", "pgdata-big");
            let x = expect(&mut h, "POST", PVCS).await;
            x.assert_query_is(&[("dryRun", "All")]);
            let body = x.body.clone();
            x.created(body);
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(report.dry_run);
    assert!(
        report
            .to_string()
            .ends_with("(dry run): 100Gi, storage class (cluster default)"),
        "{report}"
    );
}

#[tokio::test]
async fn bound_claim_with_different_size_is_reported_and_not_patched() {
    let want = desired("pgdata-big", "100Gi", None);
    let report = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .ok(existing("pgdata-big", "50Gi", "standard", "Bound"));
            // No PATCH, PUT, POST or DELETE may follow.
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    let PvcState::Existing {
        phase,
        capacity,
        storage_class,
        differences,
        ..
    } = &report.state
    else {
        panic!("expected an existing claim: {report:?}");
    };
    assert_eq!(phase, "Bound");
    assert_eq!(capacity.as_deref(), Some("50Gi"));
    assert_eq!(storage_class.as_deref(), Some("standard"));
    assert_eq!(differences.len(), 1);
    assert_eq!(differences[0].field, "size");
    let text = report.to_string();
    assert!(
        text.contains("exists, left unchanged: Bound, capacity 50Gi, storage class standard"),
        "{text}"
    );
    assert!(
        text.contains("size: wanted 100Gi, the claim has 50Gi"),
        "{text}"
    );
    assert!(text.contains("bound claims are immutable"), "{text}");
    assert!(
        text.contains("create a new claim with a different name"),
        "{text}"
    );
    assert!(text.contains("migrate the data"), "{text}");
}

#[tokio::test]
async fn existing_claim_with_equal_quantity_and_default_class_has_no_differences() {
    let want = desired("pgdata-big", "100Gi", None);
    let report = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .ok(existing("pgdata-big", "107374182400", "standard", "Bound"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(!report.differs(), "{report}");
    assert!(!report.to_string().contains("immutable"));
}

#[tokio::test]
async fn storage_class_and_access_mode_differences_are_listed() {
    let mut want = desired("pgbackups", "200Gi", Some("fast"));
    want.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
    let report = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgbackups"))
                .await
                .ok(existing("pgbackups", "200Gi", "standard", "Pending"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    let text = report.to_string();
    assert!(
        text.contains("storage class: wanted fast, the claim has standard"),
        "{text}"
    );
    assert!(
        text.contains("access modes: wanted ReadWriteMany, the claim has ReadWriteOnce"),
        "{text}"
    );
    assert!(text.contains("Pending"), "{text}");
}

#[tokio::test]
async fn create_conflict_reports_the_claim_created_meanwhile() {
    let want = desired("pgdata-big", "100Gi", None);
    let report = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .not_found("persistentvolumeclaims", "pgdata-big");
            expect(&mut h, "POST", PVCS)
                .await
                .conflict("persistentvolumeclaims", "pgdata-big");
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .ok(existing("pgdata-big", "100Gi", "standard", "Pending"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(report.state, PvcState::Existing { .. }),
        "{report:?}"
    );
}

#[tokio::test]
async fn forbidden_names_verb_resource_and_namespace() {
    let want = desired("pgdata-big", "100Gi", None);
    let err = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .forbidden("get", "persistentvolumeclaims", "pgdata-big");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "forbidden: cannot get persistentvolumeclaims in namespace record-platform\nhint: "
        ),
        "{text}"
    );
    assert!(matches!(err, OpsError::Forbidden { .. }));
}

#[tokio::test]
async fn missing_namespace_is_named() {
    let want = desired("pgdata-big", "100Gi", None);
    let err = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{PVCS}/pgdata-big"))
                .await
                .not_found("persistentvolumeclaims", "pgdata-big");
            expect(&mut h, "POST", PVCS).await.namespace_not_found();
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "namespace record-platform not found\nhint: create it (`kubectl create namespace record-platform`) or pass --namespace with an existing one"
    );
}

#[tokio::test]
async fn unnamed_claim_is_refused_without_requests() {
    let mut want = desired("x", "1Gi", None);
    want.metadata.name = None;
    let err = run(
        |c| async move { ensure_pvc(&c, &want, false).await },
        |mut h| async move { done(&mut h).await },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no metadata.name\nhint: "),
        "{err}"
    );
}
