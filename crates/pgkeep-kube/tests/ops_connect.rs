//! Connecting: kubeconfig contexts, and the probe's clear errors (no cluster, missing namespace,
//! bad credentials), with a 403 on the namespace tolerated.

mod ops_support;

use std::io::Write;

use ops_support::*;
use pgkeep_kube::ops::OpsError;
use pgkeep_kube::ops::connect::{ConnectOptions, client, connect, probe};
use serde_json::json;

fn version() -> serde_json::Value {
    json!({ "major": "1", "minor": "20", "gitVersion": "v1.20.2", "gitCommit": "", "gitTreeState": "",
            "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64" })
}

#[tokio::test]
async fn probe_checks_version_and_namespace() {
    let v = run(
        |c| async move { probe(&c).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.ok(version());
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform")
                .await
                .ok(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (v.major, v.minor, v.git_version.as_str()),
        (1, 20, "v1.20.2")
    );
}

#[tokio::test]
async fn probe_missing_namespace() {
    let err = run(
        |c| async move { probe(&c).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.ok(version());
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform")
                .await
                .not_found("namespaces", NS);
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::NamespaceNotFound { .. }));
    assert!(
        err.to_string()
            .starts_with("namespace record-platform not found\nhint: "),
        "{err}"
    );
}

#[tokio::test]
async fn probe_tolerates_a_user_who_may_not_read_namespaces() {
    let v = run(
        |c| async move { probe(&c).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.ok(version());
            expect(&mut h, "GET", "/api/v1/namespaces/record-platform")
                .await
                .forbidden("get", "namespaces", NS);
            done(&mut h).await;
        },
    )
    .await;
    assert!(v.is_ok(), "{v:?}");
}

#[tokio::test]
async fn probe_without_a_cluster_names_the_context() {
    let err = run(
        |c| async move { probe(&c).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version")
                .await
                .transport_error("tcp connect error: Connection refused (os error 111)");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpsError::NoCluster { .. }), "{err:?}");
    assert!(
        text.starts_with("no cluster reachable via kubeconfig context \"test\": "),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(text.contains("\nhint: "), "{text}");
}

#[tokio::test]
async fn probe_with_rejected_credentials() {
    let err = run(
        |c| async move { probe(&c).await },
        |mut h| async move {
            expect(&mut h, "GET", "/version").await.fail(
                401,
                "Unauthorized",
                "Unauthorized",
                "",
                "",
            );
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("unauthorized: the cluster rejected the credentials of kubeconfig context \"test\"\nhint: "), "{err}");
}

fn kubeconfig(server: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        r#"apiVersion: v1
kind: Config
clusters:
- name: kubebox
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: not-a-real-token
contexts:
- name: kubebox
  context:
    cluster: kubebox
    user: admin
    namespace: default
current-context: kubebox
"#
    )
    .unwrap();
    f
}

#[tokio::test]
async fn an_unknown_context_is_a_config_error_naming_it() {
    let kc = kubeconfig("https://127.0.0.1:1");
    let opts = ConnectOptions {
        context: Some("prod".into()),
        kubeconfig: Some(kc.path().into()),
        namespace: NS.into(),
    };
    let err = client(&opts).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpsError::Config { .. }), "{err:?}");
    assert!(
        text.starts_with(
            "could not load the Kubernetes configuration (kubeconfig context \"prod\" in "
        ),
        "{text}"
    );
    assert!(text.contains("prod"), "{text}");
}

#[tokio::test]
async fn an_unreachable_cluster_names_the_context_and_the_namespace_comes_from_the_caller() {
    // Port 1 on loopback: the connection is refused at once.
    let kc = kubeconfig("https://127.0.0.1:1");
    let opts = ConnectOptions {
        context: Some("kubebox".into()),
        kubeconfig: Some(kc.path().into()),
        namespace: NS.into(),
    };
    let cluster = client(&opts).await.unwrap();
    assert_eq!(cluster.namespace, NS);
    assert_eq!(cluster.client.default_namespace(), NS);
    let err = connect(&opts).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "no cluster reachable via kubeconfig context \"kubebox\" in {}: ",
            kc.path().display()
        )),
        "{text}"
    );
}

#[test]
fn options_from_settings() {
    let mut kube = pgkeep_engine::settings::Settings::default().kube;
    let o = ConnectOptions::from_settings(&kube);
    assert_eq!(o.context, None);
    assert_eq!(o.namespace, "record-platform");
    assert_eq!(
        o.describe(),
        "the current kubeconfig context (or the in-cluster service account)"
    );
    kube.context = "kubebox".into();
    assert_eq!(
        ConnectOptions::from_settings(&kube).describe(),
        "kubeconfig context \"kubebox\""
    );
}
