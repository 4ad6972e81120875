//! The deployed settings against the CLI's: one `GET configmaps/NAME`, differences named by
//! key, destructive work refused while they differ (nothing else is sent), `--use-deployed`
//! acting with the deployed values, and a missing ConfigMap refusing destructive work only.

mod ops_support;

use ops_support::*;
use pgkeep_engine::settings::{Settings, Target};
use pgkeep_kube::manifests::config::settings_config_map_object;
use pgkeep_kube::ops::OpsError;
use pgkeep_kube::ops::deployed::{Intent, check_deployed};

const CM: &str = "/api/v1/namespaces/record-platform/configmaps/postgres-settings";

fn deployed(s: &Settings) -> serde_json::Value {
    serde_json::to_value(settings_config_map_object(s)).unwrap()
}

/// The local settings of the case: nightly retention raised to 30 in pgkeep.toml,
/// never deployed (the cluster still has 7).
fn local_30() -> Settings {
    let mut s = Settings {
        target: Target::Kube,
        ..Default::default()
    };
    s.retention.nightly = 30;
    s
}

#[tokio::test]
async fn destructive_work_is_refused_while_the_settings_differ_naming_the_keys() {
    let err = run(
        |c| async move {
            check_deployed(
                &c,
                &local_30(),
                &Intent::Destroy("prune backups and WAL".into()),
                false,
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "GET", CM)
                .await
                .ok(deployed(&Settings::default()));
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::SettingsDiffer { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("refusing to prune backups and WAL"),
        "{msg}"
    );
    assert!(
        msg.contains("retention.nightly: here 30, deployed 7"),
        "{msg}"
    );
    assert!(msg.contains("pgkeep --kube deploy"), "{msg}");
    assert!(msg.contains("--use-deployed"), "{msg}");
    // Only the differing key is named.
    assert_eq!(msg.matches(": here ").count(), 1, "{msg}");
}

#[tokio::test]
async fn use_deployed_acts_with_the_deployed_values_and_says_so() {
    let check = run(
        |c| async move {
            check_deployed(
                &c,
                &local_30(),
                &Intent::Destroy("wipe the data volume".into()),
                true,
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "GET", CM)
                .await
                .ok(deployed(&Settings::default()));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(check.settings.retention.nightly, 7);
    assert_eq!(
        check.settings.target,
        Target::Kube,
        "still acts through the API"
    );
    assert_eq!(check.differences.len(), 1);
    assert!(
        check.notes[0].contains("--use-deployed"),
        "{:?}",
        check.notes
    );
    assert!(
        check.notes[0].contains("retention.nightly"),
        "{:?}",
        check.notes
    );
}

#[tokio::test]
async fn a_read_only_command_warns_and_goes_on() {
    let check = run(
        |c| async move { check_deployed(&c, &local_30(), &Intent::Read, false).await },
        |mut h| async move {
            expect(&mut h, "GET", CM)
                .await
                .ok(deployed(&Settings::default()));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(check.settings.retention.nightly, 30);
    assert!(check.notes[0].starts_with("warning: the pods run with the deployed settings"));
    assert!(check.notes[0].contains("retention.nightly: here 30, deployed 7"));
}

#[tokio::test]
async fn equal_settings_pass_silently() {
    let check = run(
        |c| async move {
            check_deployed(
                &c,
                &local_30(),
                &Intent::Destroy("wipe the data volume".into()),
                false,
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "GET", CM).await.ok(deployed(&local_30()));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(check.differences.is_empty() && check.notes.is_empty());
    assert_eq!(check.settings, local_30());
}

#[tokio::test]
async fn a_missing_config_map_refuses_destruction_but_not_reads() {
    let err = run(
        |c| async move {
            check_deployed(
                &c,
                &local_30(),
                &Intent::Destroy("wipe the data volume".into()),
                true,
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "GET", CM)
                .await
                .not_found("configmaps", "postgres-settings");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("configmap/postgres-settings"), "{msg}");
    assert!(msg.contains("is missing"), "{msg}");
    assert!(msg.contains("pgkeep --kube deploy"), "{msg}");
    let check = run(
        |c| async move { check_deployed(&c, &local_30(), &Intent::Read, false).await },
        |mut h| async move {
            expect(&mut h, "GET", CM)
                .await
                .not_found("configmaps", "postgres-settings");
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert!(check.notes[0].starts_with("warning: configmap/postgres-settings"));
}
