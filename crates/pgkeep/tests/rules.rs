//! The Prometheus rules file that `pgkeep render` writes: `promtool check rules` accepts it, and
//! `promtool test rules` fires (and does not fire) alerts on input series as the README says.
//!
//! promtool comes from Debian's `prometheus` package, extracted without installing it (what
//! `.ci/run` does); `PGKEEP_PROMTOOL` points at another one.

use std::path::{Path, PathBuf};
use std::process::Command;

const CACHED: &str = "/var/cache/pgkeep-promtool/root/usr/bin/promtool";

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PGKEEP_PROMTOOL") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PGKEEP_PROMTOOL={} is not a file", p.display());
        return p;
    }
    if Path::new(CACHED).is_file() {
        return CACHED.into();
    }
    if let Ok(out) = Command::new("promtool").arg("--version").output()
        && out.status.success()
    {
        return "promtool".into();
    }
    panic!(
        "promtool not found: these tests validate the rendered Prometheus rules with it.\n\
         Extract it from Debian's prometheus package without installing it:\n  \
         mkdir -p /var/cache/pgkeep-promtool && cd /var/cache/pgkeep-promtool && \
         apt-get download prometheus && dpkg -x prometheus_*.deb root\n\
         (or set PGKEEP_PROMTOOL to a promtool binary)"
    );
}

/// Render the default tree into a temp dir; the rules file's path.
fn rendered(dir: &Path) -> PathBuf {
    rendered_with(dir, None)
}

/// Render into a temp dir with `config` as pgkeep.toml (the defaults without); the rules
/// file's path.
fn rendered_with(dir: &Path, config: Option<&str>) -> PathBuf {
    let mut cmd = assert_cmd::Command::cargo_bin("pgkeep").unwrap();
    match config {
        None => {
            cmd.env("PGKEEP_CONFIG", "/dev/null")
                .args(["render", "--defaults", "--out"]);
        }
        Some(text) => {
            let file = dir.join("pgkeep.toml");
            std::fs::write(&file, text).unwrap();
            cmd.env("PGKEEP_CONFIG", &file).args(["render", "--out"]);
        }
    }
    let out = cmd.arg(dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let p = dir.join("infra/prometheus/pgkeep-rules.yaml");
    assert!(p.is_file(), "render wrote no rules file");
    p
}

fn promtool_ok(args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rendered_rules() {
    let t = tempfile::tempdir().unwrap();
    let rules = rendered(t.path());
    let out = promtool_ok(&["check", "rules", rules.to_str().unwrap()], t.path());
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Series as one scrape target reports them (`job`, `instance`), minutes from time 0.
const TESTS: &str = r#"
rule_files:
  - infra/prometheus/pgkeep-rules.yaml
evaluation_interval: 1m
tests:
  # A logical backup finished at t=0 and none since: too old after 26 h (+10m for), not before.
  - interval: 1m
    input_series:
      - series: 'pgkeep_backup_last_success_timestamp_seconds{job="pg",instance="db:9187",kind="logical"}'
        values: '0+0x1700'
      - series: 'pgkeep_backup_last_success_timestamp_seconds{job="pg",instance="db:9187",kind="physical"}'
        values: '0+60x1700'
      - series: 'pgkeep_up{job="pg",instance="db:9187"}'
        values: '1+0x1700'
      - series: 'pgkeep_drill_last_success_timestamp_seconds{job="pg",instance="db:9187"}'
        values: '0+60x1700'
      - series: 'pgkeep_drill_last_result{job="pg",instance="db:9187"}'
        values: '1+0x1000 0+0x700'
    alert_rule_test:
      - eval_time: 25h
        alertname: PgkeepBackupTooOld
        exp_alerts: []
      - eval_time: 27h
        alertname: PgkeepBackupTooOld
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
              kind: logical
      # The drill passed until t=1000m, then failed.
      - eval_time: 990m
        alertname: PgkeepDrillFailed
        exp_alerts: []
      - eval_time: 1010m
        alertname: PgkeepDrillFailed
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
  # The backups volume fills within two days; the data volume does not grow.
  - interval: 1m
    input_series:
      - series: 'pgkeep_volume_full_forecast_seconds{job="pg",instance="db:9187",volume="backups"}'
        values: '172800+0x60'
      - series: 'pgkeep_volume_free_bytes{job="pg",instance="db:9187",volume="data"}'
        values: '50+0x60'
      - series: 'pgkeep_volume_size_bytes{job="pg",instance="db:9187",volume="data"}'
        values: '100+0x60'
      - series: 'pgkeep_volume_free_bytes{job="pg",instance="db:9187",volume="backups"}'
        values: '5+0x60'
      - series: 'pgkeep_volume_size_bytes{job="pg",instance="db:9187",volume="backups"}'
        values: '100+0x60'
    alert_rule_test:
      - eval_time: 45m
        alertname: PgkeepVolumeFullSoon
        exp_alerts:
          - exp_labels:
              severity: warning
              job: pg
              instance: db:9187
              volume: backups
      - eval_time: 20m
        alertname: PgkeepVolumeLow
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
              volume: backups
  # Archiving fails for good at t=10m: failures rise, archived stays.
  - interval: 1m
    input_series:
      - series: 'pgkeep_wal_failed_total{job="pg",instance="db:9187"}'
        values: '0+0x10 1+1x50'
      - series: 'pgkeep_wal_archived_total{job="pg",instance="db:9187"}'
        values: '0+1x10 10+0x50'
      - series: 'pgkeep_wal_archive_lag_seconds{job="pg",instance="db:9187"}'
        values: '0+0x10 60+60x50'
    alert_rule_test:
      - eval_time: 10m
        alertname: PgkeepWalArchivingFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: PgkeepWalArchivingFailing
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
      - eval_time: 30m
        alertname: PgkeepWalArchiveLag
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
"#;

/// `TESTS` with each expected alert's annotations (as the rules file words them, templates
/// filled from its labels) added after its labels: promtool compares them too.
fn with_annotations(tests: &str) -> String {
    with_annotations_of(tests, &Default::default())
}

fn with_annotations_of(tests: &str, settings: &pgkeep_engine::settings::Settings) -> String {
    let rules = pgkeep_kube::manifests::monitoring::rules(settings);
    let mut out = String::new();
    let mut alert = String::new();
    let mut labels: Vec<(String, String)> = Vec::new();
    let flush = |out: &mut String, alert: &str, labels: &mut Vec<(String, String)>| {
        if labels.is_empty() {
            return;
        }
        let r = rules.groups[0]
            .rules
            .iter()
            .find(|r| r.alert == alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        out.push_str("            exp_annotations:\n");
        for (k, v) in &r.annotations {
            let mut v = v.clone();
            for (lk, lv) in labels.iter() {
                v = v.replace(&format!("{{{{ $labels.{lk} }}}}"), lv);
            }
            out.push_str(&format!(
                "              {k}: {}\n",
                serde_json::to_string(&v).unwrap()
            ));
        }
        labels.clear();
    };
    for line in tests.lines() {
        let trimmed = line.trim();
        let in_labels = line.starts_with("              ") && !trimmed.starts_with('-');
        if !in_labels {
            flush(&mut out, &alert, &mut labels);
        }
        if let Some(a) = trimmed.strip_prefix("alertname: ") {
            alert = a.to_owned();
        }
        if in_labels && let Some((k, v)) = trimmed.split_once(": ") {
            labels.push((k.to_owned(), v.to_owned()));
        }
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut out, &alert, &mut labels);
    out
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let t = tempfile::tempdir().unwrap();
    rendered(t.path());
    std::fs::write(t.path().join("rules_test.yaml"), with_annotations(TESTS)).unwrap();
    promtool_ok(&["test", "rules", "rules_test.yaml"], t.path());
}

/// promtool's unit tests `tests` against the rules rendered from `config` (a pgkeep.toml),
/// whose parsed form `settings` words the expected annotations.
fn promtool_test_rendered_with(
    config: &str,
    settings: &pgkeep_engine::settings::Settings,
    tests: &str,
) {
    let t = tempfile::tempdir().unwrap();
    rendered_with(t.path(), Some(config));
    std::fs::write(
        t.path().join("rules_test.yaml"),
        with_annotations_of(tests, settings),
    )
    .unwrap();
    promtool_ok(&["test", "rules", "rules_test.yaml"], t.path());
}

/// The off-site alerts (rendered only with `offsite.url` set): the follower completed rounds
/// until t=30m, then none; WAL waiting for it grows by one segment a minute from then on.
const OFFSITE_TESTS: &str = r#"
rule_files:
  - infra/prometheus/pgkeep-rules.yaml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pgkeep_offsite_last_sync_timestamp_seconds{job="pg",instance="db:9187"}'
        values: '0+60x30 1800+0x150'
      - series: 'pgkeep_offsite_lag_segments{job="pg",instance="db:9187"}'
        values: '0+0x30 1+1x150'
    alert_rule_test:
      - eval_time: 95m
        alertname: PgkeepOffsiteStale
        exp_alerts: []
      - eval_time: 105m
        alertname: PgkeepOffsiteStale
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
      - eval_time: 70m
        alertname: PgkeepOffsiteLagging
        exp_alerts: []
      - eval_time: 90m
        alertname: PgkeepOffsiteLagging
        exp_alerts:
          - exp_labels:
              severity: warning
              job: pg
              instance: db:9187
"#;

#[test]
fn promtool_unit_tests_of_the_offsite_alerts_pass() {
    let mut settings = pgkeep_engine::settings::Settings::default();
    settings.offsite.url = "s3://bucket/p".into();
    settings.offsite.encrypt = false;
    promtool_test_rendered_with(
        "[offsite]\nurl = \"s3://bucket/p\"\nencrypt = false\n",
        &settings,
        OFFSITE_TESTS,
    );
}

/// The stream alert with `wal.stream = sync`: the stream drops at t=20m and stays down.
const STREAM_TESTS: &str = r#"
rule_files:
  - infra/prometheus/pgkeep-rules.yaml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pgkeep_wal_stream_connected{job="pg",instance="db:9187"}'
        values: '1+0x20 0+0x20'
    alert_rule_test:
      - eval_time: 20m
        alertname: PgkeepWalStreamDown
        exp_alerts: []
      - eval_time: 23m
        alertname: PgkeepWalStreamDown
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
"#;

#[test]
fn promtool_unit_tests_of_the_sync_stream_alert_pass() {
    let mut settings = pgkeep_engine::settings::Settings::default();
    settings.wal.stream = pgkeep_engine::settings::StreamMode::Sync;
    promtool_test_rendered_with("[wal]\nstream = \"sync\"\n", &settings, STREAM_TESTS);
}

/// With `wal.sync_fallback_after`: the stream is back at t=20m but serve has not restored
/// waiting yet (degraded until t=30m): the alert stays until both are fine.
const FALLBACK_TESTS: &str = r#"
rule_files:
  - infra/prometheus/pgkeep-rules.yaml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pgkeep_wal_stream_connected{job="pg",instance="db:9187"}'
        values: '0+0x20 1+0x20'
      - series: 'pgkeep_wal_sync_degraded{job="pg",instance="db:9187"}'
        values: '1+0x30 0+0x10'
    alert_rule_test:
      - eval_time: 25m
        alertname: PgkeepWalStreamDown
        exp_alerts:
          - exp_labels:
              severity: critical
              job: pg
              instance: db:9187
      - eval_time: 35m
        alertname: PgkeepWalStreamDown
        exp_alerts: []
"#;

#[test]
fn promtool_unit_tests_of_the_sync_fallback_alert_pass() {
    let mut settings = pgkeep_engine::settings::Settings::default();
    settings.wal.stream = pgkeep_engine::settings::StreamMode::Sync;
    settings.wal.sync_fallback_after = 30;
    let rules = pgkeep_kube::manifests::monitoring::rules(&settings);
    let down = rules.groups[0]
        .rules
        .iter()
        .find(|r| r.alert == "PgkeepWalStreamDown")
        .unwrap();
    assert!(
        down.annotations["description"].contains("after 30 s without it"),
        "{:?}",
        down.annotations
    );
    promtool_test_rendered_with(
        "[wal]\nstream = \"sync\"\nsync_fallback_after = 30\n",
        &settings,
        FALLBACK_TESTS,
    );
}
