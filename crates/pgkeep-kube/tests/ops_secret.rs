//! Superuser Secret: created with a random password only when missing; an existing Secret is
//! never overwritten (not even read for its data); the password never shows up in output.

mod ops_support;

use k8s_openapi::api::core::v1::Secret;
use ops_support::*;
use pgkeep_kube::ops::secret::{
    PASSWORD_LEN, SecretOutcome, ensure_secret_with_password, random_password,
};
use serde_json::json;

const SECRETS: &str = "/api/v1/namespaces/record-platform/secrets";

fn template() -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "postgres-superuser", "namespace": NS, "labels": { "app": "postgres" } },
        "type": "Opaque",
        "stringData": { "POSTGRES_USER": "postgres" }
    }))
    .unwrap()
}

#[tokio::test]
async fn missing_secret_is_created_with_a_random_password() {
    let (outcome, sent) = {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s2 = sent.clone();
        let outcome = run(
            |c| async move { ensure_secret_with_password(&c, &template(), "POSTGRES_PASSWORD", false).await },
            |mut h| async move {
                let x = expect(&mut h, "GET", &format!("{SECRETS}/postgres-superuser")).await;
                // Metadata only: the password of an existing Secret never reaches pgkeep.
                let accept = x.headers.get("accept").unwrap().to_str().unwrap().to_string();
                assert!(accept.contains("as=PartialObjectMetadata"), "{accept}");
                x.not_found("secrets", "postgres-superuser");
                let x = expect(&mut h, "POST", SECRETS).await;
                x.assert_query_is(&[]);
                *s2.lock().unwrap() = Some(x.body.clone());
                x.created(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "postgres-superuser"}}));
                done(&mut h).await;
            },
        )
        .await
        .unwrap();
        let body = sent.lock().unwrap().take().unwrap();
        (outcome, body)
    };
    assert_eq!(
        outcome,
        SecretOutcome::Created {
            name: "postgres-superuser".into(),
            dry_run: false
        }
    );
    assert_eq!(sent["metadata"]["name"], "postgres-superuser");
    assert_eq!(sent["stringData"]["POSTGRES_USER"], "postgres");
    let pw = sent["stringData"]["POSTGRES_PASSWORD"].as_str().unwrap();
    assert_eq!(pw.len(), PASSWORD_LEN);
    assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()), "{pw}");
    // Neither the report nor its Debug form carries the password.
    assert!(!outcome.to_string().contains(pw));
    assert!(!format!("{outcome:?}").contains(pw));
}

#[tokio::test]
async fn existing_secret_is_not_overwritten() {
    let outcome = run(
        |c| async move { ensure_secret_with_password(&c, &template(), "POSTGRES_PASSWORD", false).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{SECRETS}/postgres-superuser")).await.ok(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": { "name": "postgres-superuser", "namespace": NS, "resourceVersion": "3" }
            }));
            // No POST, PUT or PATCH.
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        SecretOutcome::Exists {
            name: "postgres-superuser".into()
        }
    );
    assert_eq!(
        outcome.to_string(),
        "secret/postgres-superuser exists, left unchanged"
    );
}

#[tokio::test]
async fn dry_run_uses_server_dry_run() {
    let outcome = run(
        |c| async move { ensure_secret_with_password(&c, &template(), "POSTGRES_PASSWORD", true).await },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{SECRETS}/postgres-superuser")).await.not_found("secrets", "postgres-superuser");
            let x = expect(&mut h, "POST", SECRETS).await;
            x.assert_query_is(&[("dryRun", "All")]);
            x.created(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "postgres-superuser"}}));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome.to_string(),
        "secret/postgres-superuser created with a random password (dry run)"
    );
}

#[tokio::test]
async fn conflict_on_create_means_it_exists_and_is_kept() {
    let outcome = run(
        |c| async move {
            ensure_secret_with_password(&c, &template(), "POSTGRES_PASSWORD", false).await
        },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{SECRETS}/postgres-superuser"))
                .await
                .not_found("secrets", "postgres-superuser");
            expect(&mut h, "POST", SECRETS)
                .await
                .conflict("secrets", "postgres-superuser");
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        SecretOutcome::Exists {
            name: "postgres-superuser".into()
        }
    );
}

#[tokio::test]
async fn forbidden_create_names_the_verb_and_hides_the_password() {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = sent.clone();
    let err = run(
        |c| async move {
            ensure_secret_with_password(&c, &template(), "POSTGRES_PASSWORD", false).await
        },
        |mut h| async move {
            expect(&mut h, "GET", &format!("{SECRETS}/postgres-superuser"))
                .await
                .not_found("secrets", "postgres-superuser");
            let x = expect(&mut h, "POST", SECRETS).await;
            *s2.lock().unwrap() = x.body["stringData"]["POSTGRES_PASSWORD"]
                .as_str()
                .unwrap()
                .to_string();
            x.forbidden("create", "secrets", "postgres-superuser");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("forbidden: cannot create secrets in namespace record-platform\nhint: "),
        "{text}"
    );
    let pw = sent.lock().unwrap().clone();
    assert_eq!(pw.len(), PASSWORD_LEN);
    assert!(!text.contains(&pw));
    assert!(!format!("{err:?}").contains(&pw));
}

#[test]
fn passwords_are_random_and_alphanumeric() {
    let a = random_password(32).unwrap();
    let b = random_password(32).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 32);
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    // All 62 symbols show up over enough draws (a biased or truncated alphabet would not).
    let many = random_password(20_000).unwrap();
    let distinct: std::collections::BTreeSet<char> = many.chars().collect();
    assert_eq!(distinct.len(), 62);
}
