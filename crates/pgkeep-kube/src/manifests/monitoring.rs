//! The Prometheus rules file (`infra/prometheus/pgkeep-rules.yaml`): alerts on the metrics that
//! `pgkeep metrics` serves from the db pod's `metrics` container. The thresholds are the
//! engine's (`pgkeep_engine::observe`), so `pgkeep status` and the alerts judge alike; the
//! archive-lag limit follows `wal.archive_timeout`.
//!
//! Typed (serde, unknown fields refused) so the snapshot round-trips through the type like the
//! Kubernetes objects do; `promtool check rules` and `promtool test rules` validate it in
//! `crates/pgkeep/tests/rules.rs`.
//!
//! For the Prometheus operator, the optional overlay `infra/k8s/overlays/prometheus-operator`
//! holds the same rules as a `PrometheusRule` and a `PodMonitor` scraping the db pod's
//! `metrics` port ([`prometheus_rule`], [`pod_monitor`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use pgkeep_engine::observe;
use pgkeep_engine::settings::{Settings, StreamMode};
use serde::{Deserialize, Serialize};

use super::common::{Component, db_selector, meta};

/// The operator's API group and version.
pub const OPERATOR_API: &str = "monitoring.coreos.com/v1";

/// `monitoring.coreos.com/v1` PrometheusRule: the rule file as a custom resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RuleFile,
}

/// `monitoring.coreos.com/v1` PodMonitor (the subset pgkeep writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMetricsEndpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
}

/// The object name of both operator resources.
pub fn operator_name(s: &Settings) -> String {
    format!("{}-pgkeep", s.kube.deployment)
}

/// [`rules`] as a PrometheusRule.
pub fn prometheus_rule(s: &Settings) -> PrometheusRule {
    PrometheusRule {
        api_version: OPERATOR_API.to_owned(),
        kind: "PrometheusRule".to_owned(),
        metadata: meta(s, &operator_name(s), Component::Monitoring),
        spec: rules(s),
    }
}

/// A PodMonitor scraping `/metrics` on the db pod's `metrics` port every 30 seconds.
pub fn pod_monitor(s: &Settings) -> PodMonitor {
    PodMonitor {
        api_version: OPERATOR_API.to_owned(),
        kind: "PodMonitor".to_owned(),
        metadata: meta(s, &operator_name(s), Component::Monitoring),
        spec: PodMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(db_selector(s)),
                ..Default::default()
            },
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: super::deployment::METRICS_CONTAINER.to_owned(),
                path: "/metrics".to_owned(),
                interval: "30s".to_owned(),
            }],
        },
    }
}

/// A Prometheus rule file (`groups:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// One alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

fn rule(
    alert: &str,
    expr: String,
    for_: &str,
    severity: &str,
    summary: &str,
    action: &str,
) -> Rule {
    Rule {
        alert: alert.to_owned(),
        expr,
        for_: for_.to_owned(),
        labels: BTreeMap::from([("severity".to_owned(), severity.to_owned())]),
        annotations: BTreeMap::from([
            ("summary".to_owned(), summary.to_owned()),
            ("description".to_owned(), action.to_owned()),
        ]),
    }
}

/// The alerts, by name (each is explained in the README's "Running unattended").
pub fn rules(s: &Settings) -> RuleFile {
    let logical = observe::LOGICAL_MAX_AGE_SECS;
    let physical = observe::PHYSICAL_MAX_AGE_SECS;
    let drill = observe::DRILL_MAX_AGE_SECS;
    let free = observe::MIN_FREE_PERCENT / 100.0;
    let forecast = observe::MIN_FORECAST_SECS;
    let backlog = observe::READY_BACKLOG_MAX;
    // A scrape target that reports but has no success of a kind yet.
    let never = |metric: &str, kind: &str| {
        format!(
            "pgkeep_backups{{kind=\"{kind}\"}} unless on(job, instance, kind) {metric}{{kind=\"{kind}\"}}"
        )
    };
    let mut rules = vec![
        rule(
            "PgkeepPostgresDown",
            "pgkeep_up == 0".into(),
            "5m",
            "critical",
            "PostgreSQL does not answer the metrics container",
            "Check the db pod (`pgkeep --kube status`, its events and logs).",
        ),
        rule(
            "PgkeepBackupTooOld",
            format!(
                "time() - pgkeep_backup_last_success_timestamp_seconds{{kind=\"logical\"}} > {logical} \
                 or time() - pgkeep_backup_last_success_timestamp_seconds{{kind=\"physical\"}} > {physical}"
            ),
            "10m",
            "critical",
            "The newest successful {{ $labels.kind }} backup is too old",
            "Logical backups run nightly, physical ones weekly. Check the backup CronJob's last Jobs and their logs, then take one with `pgkeep --kube backup {{ $labels.kind }}`.",
        ),
        rule(
            "PgkeepNoLogicalBackup",
            never("pgkeep_backup_last_success_timestamp_seconds", "logical"),
            &format!("{}h", logical / 3600),
            "critical",
            "No successful logical backup is recorded",
            "Take one with `pgkeep --kube backup logical` and check the nightly CronJob.",
        ),
        rule(
            "PgkeepNoPhysicalBackup",
            never("pgkeep_backup_last_success_timestamp_seconds", "physical"),
            &format!("{}h", physical / 3600),
            "critical",
            "No successful physical backup is recorded",
            "Take one with `pgkeep --kube backup physical` and check the weekly CronJob.",
        ),
        rule(
            "PgkeepBackupFailed",
            "pgkeep_backup_last_failure_timestamp_seconds > on(job, instance, kind) pgkeep_backup_last_success_timestamp_seconds \
             or (pgkeep_backup_last_failure_timestamp_seconds unless on(job, instance, kind) pgkeep_backup_last_success_timestamp_seconds)"
                .into(),
            "0m",
            "warning",
            "The last {{ $labels.kind }} backup failed",
            "Read the failed Job's log (`kubectl logs job/...`) or the error in `pgkeep --kube status`; fix it and run `pgkeep --kube backup {{ $labels.kind }}`.",
        ),
        rule(
            "PgkeepWalArchivingFailing",
            "increase(pgkeep_wal_failed_total[10m]) > 0 and on(job, instance) increase(pgkeep_wal_archived_total[10m]) == 0"
                .into(),
            "5m",
            "critical",
            "WAL archiving fails and nothing was archived for 10 minutes",
            "archive_command's error is in the db container's log. Until it works, WAL piles up in pg_wal and point-in-time recovery stops at the last archived segment.",
        ),
        rule(
            "PgkeepWalBacklogGrowing",
            format!(
                "pgkeep_wal_ready_segments > {backlog} and deriv(pgkeep_wal_ready_segments[30m]) > 0"
            ),
            "15m",
            "warning",
            "WAL segments pile up in pg_wal waiting to be archived",
            "Archiving is slower than WAL is written or fails; see PgkeepWalArchivingFailing and the WAL archive volume's free space.",
        ),
        rule(
            "PgkeepVolumeLow",
            format!("pgkeep_volume_free_bytes / pgkeep_volume_size_bytes < {free}"),
            "10m",
            "critical",
            "The {{ $labels.volume }} volume has less than 10% free",
            "See `pgkeep --kube space`. Lower retention, prune (`pgkeep --kube backups prune`) or grow the volume.",
        ),
        rule(
            "PgkeepVolumeFullSoon",
            format!("pgkeep_volume_full_forecast_seconds < {forecast}"),
            "30m",
            "warning",
            "The {{ $labels.volume }} volume will be full within 3 days at the growth of the last 7 days",
            "Grow the volume or lower retention before it fills; a full WAL archive stops archiving, a full data volume stops PostgreSQL.",
        ),
        rule(
            "PgkeepDrillFailed",
            "pgkeep_drill_last_result == 0".into(),
            "0m",
            "critical",
            "The last restore drill failed",
            "The newest backups did not restore. Read the drill Job's log, take fresh backups and run `pgkeep --kube drill`.",
        ),
        rule(
            "PgkeepDrillTooOld",
            format!("time() - pgkeep_drill_last_success_timestamp_seconds > {drill}"),
            "10m",
            "warning",
            "No restore drill passed in the last 8 days",
            "Check the drill CronJob; run `pgkeep --kube drill`.",
        ),
        rule(
            "PgkeepNoDrill",
            "pgkeep_up unless on(job, instance) pgkeep_drill_last_success_timestamp_seconds".into(),
            &format!("{}h", drill / 3600),
            "warning",
            "No passing restore drill is recorded",
            "Run `pgkeep --kube drill`; the drill CronJob runs it weekly.",
        ),
    ];
    if s.wal.archive_timeout > 0 {
        rules.push(rule(
            "PgkeepWalArchiveLag",
            format!(
                "pgkeep_wal_archive_lag_seconds > {}",
                2 * s.wal.archive_timeout
            ),
            "5m",
            "critical",
            "The newest WAL safe in the archive is older than twice archive_timeout",
            "Commits since then would be lost with the data volume. Check archiving (PgkeepWalArchivingFailing) and the WAL archive volume.",
        ));
    }
    match s.wal.stream {
        StreamMode::Sync if s.wal.sync_fallback_after > 0 => rules.push(rule(
            "PgkeepWalStreamDown",
            "pgkeep_wal_stream_connected == 0 or pgkeep_wal_sync_degraded == 1".into(),
            "1m",
            "critical",
            "The synchronous WAL stream is down: commits wait, then stop waiting",
            &format!(
                "wal.stream = sync makes every commit wait for `pgkeep wal stream`; after {} s without it (wal.sync_fallback_after) serve falls back to asynchronous commits (pgkeep_wal_sync_degraded 1): commits no longer wait, and what is acknowledged then is lost with the data volume until the stream is back. Check the db pod's walstream container (its log, restarts) and the WAL archive volume; serve makes commits wait again when it reconnects.",
                s.wal.sync_fallback_after
            ),
        )),
        StreamMode::Sync => rules.push(rule(
            "PgkeepWalStreamDown",
            "pgkeep_wal_stream_connected == 0".into(),
            "1m",
            "critical",
            "The synchronous WAL stream is down: commits wait",
            "wal.stream = sync makes every commit wait for `pgkeep wal stream` (wal.sync_fallback_after = 0: no fallback). Check the db pod's walstream container (its log, restarts) and the WAL archive volume; commits resume when it reconnects.",
        )),
        StreamMode::Async => rules.push(rule(
            "PgkeepWalStreamDown",
            "pgkeep_wal_stream_connected == 0".into(),
            "10m",
            "warning",
            "The WAL stream is down",
            "Recent commits are only in pg_wal until the stream is back or their segment is archived. Check the db pod's walstream container (its log, restarts).",
        )),
        StreamMode::Off => {}
    }
    if !s.offsite.url.is_empty() {
        rules.push(rule(
            "PgkeepOffsiteStale",
            format!(
                "time() - pgkeep_offsite_last_sync_timestamp_seconds > {}",
                observe::OFFSITE_MAX_SYNC_AGE_SECS
            ),
            "10m",
            "critical",
            "No off-site round completed in the last hour",
            "The `offsite` container of the db pod cannot upload: its log says why (credentials Secret, endpoint, bucket). Until it works, losing the cluster loses everything since the last upload.",
        ));
        rules.push(rule(
            "PgkeepOffsiteLagging",
            format!(
                "pgkeep_offsite_lag_segments > {}",
                observe::OFFSITE_LAG_SEGMENTS_MAX
            ),
            "30m",
            "warning",
            "WAL piles up in the local archive without an off-site copy",
            "The off-site follower uploads slower than WAL is written, or fails; see its log and PgkeepOffsiteStale.",
        ));
    }
    RuleFile {
        groups: vec![RuleGroup {
            name: "pgkeep".to_owned(),
            rules,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_monitor_selects_the_db_pod_and_its_metrics_port() {
        let s = Settings::default();
        let m = pod_monitor(&s);
        let pod_labels = super::super::common::labels(&s, Component::Database);
        for (k, v) in m.spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "{k}");
        }
        assert_eq!(m.spec.pod_metrics_endpoints[0].port, "metrics");
        assert_eq!(m.metadata.namespace.as_deref(), Some("record-platform"));
        assert_eq!(prometheus_rule(&s).spec, rules(&s));
    }

    #[test]
    fn every_alert_the_issue_asks_for_is_there() {
        let r = rules(&Settings::default());
        let names: Vec<&str> = r.groups[0].rules.iter().map(|r| r.alert.as_str()).collect();
        for want in [
            "PgkeepBackupTooOld",
            "PgkeepWalArchivingFailing",
            "PgkeepWalBacklogGrowing",
            "PgkeepVolumeLow",
            "PgkeepVolumeFullSoon",
            "PgkeepDrillFailed",
            "PgkeepDrillTooOld",
            "PgkeepWalArchiveLag",
        ] {
            assert!(names.contains(&want), "{want} missing: {names:?}");
        }
        let lag = r.groups[0]
            .rules
            .iter()
            .find(|r| r.alert == "PgkeepWalArchiveLag")
            .unwrap();
        assert_eq!(lag.expr, "pgkeep_wal_archive_lag_seconds > 120");
        let mut s = Settings::default();
        s.wal.archive_timeout = 0;
        assert!(
            !rules(&s).groups[0]
                .rules
                .iter()
                .any(|r| r.alert == "PgkeepWalArchiveLag"),
            "no lag bound without archive_timeout"
        );
    }
}
