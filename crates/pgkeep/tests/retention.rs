//! Retention after every backup: `backup logical` and `backup physical` apply the rule of
//! `backups prune` once their bundle is published (so the CronJobs keep the volumes bounded),
//! `--no-prune` skips it, and a failed backup removes nothing.

use std::process::Output;

use assert_cmd::Command;
use pgkeep_testkit::{TempCluster, archiving_cluster, file_names, output_text, pgkeep_bin};

fn run(c: &TempCluster, config: &std::path::Path, args: &[&str]) -> Output {
    Command::cargo_bin("pgkeep")
        .unwrap()
        .envs(c.env())
        .env("PGKEEP_CONFIG", config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", output_text(&out));
    output_text(&out)
}

fn bundles(c: &TempCluster, prefix: &str) -> Vec<String> {
    file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn every_successful_backup_applies_retention_and_a_failed_one_removes_nothing() {
    let c = archiving_cluster(&pgkeep_bin());
    let config = c.root().join("pgkeep.toml");
    std::fs::write(&config, "[retention]\nnightly = 2\nbasebackups = 1\n").unwrap();
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        "create table t as select g from generate_series(1, 1000) g",
    );

    // Nightly bundles: the third backup leaves the newest two. Each run's minute may repeat,
    // so names get -1, -2: retention goes by the manifests' stop times, not names.
    for n in 1..=3 {
        let out = ok(run(&c, &config, &["backup", "logical"]));
        assert!(out.contains("retention: kept"), "{out}");
        assert_eq!(bundles(&c, "nightly-").len(), n.min(2), "after backup {n}");
    }
    ok(run(&c, &config, &["backup", "logical", "--no-prune"]));
    assert_eq!(bundles(&c, "nightly-").len(), 3, "--no-prune keeps all");

    // Base backups: the second one's retention removes the first and the WAL only it needed.
    ok(run(&c, &config, &["backup", "physical"]));
    let first = bundles(&c, "basebackup-");
    assert_eq!(first.len(), 1);
    c.psql(
        "records",
        "insert into t select g from generate_series(1, 1000) g",
    );
    c.switch_wal_and_wait_archived();
    let wal_before = file_names(&c.wal_archive());
    let out = ok(run(&c, &config, &["backup", "physical"]));
    assert!(out.contains("retention: kept"), "{out}");
    let second = bundles(&c, "basebackup-");
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "the older base backup went");
    let wal_after = file_names(&c.wal_archive());
    assert!(
        wal_after.len() < wal_before.len(),
        "WAL older than the kept base backup removed: {wal_before:?} -> {wal_after:?}"
    );

    // A backup that fails (the server is down) removes nothing.
    let before = file_names(&c.backups());
    c.stop();
    let out = run(&c, &config, &["backup", "logical"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let out = run(&c, &config, &["backup", "physical"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert_eq!(file_names(&c.backups()), before, "nothing removed");
}
