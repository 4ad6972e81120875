//! The `--kube` commands without a cluster: each must fail fast and clearly (exit 1, naming
//! the kubeconfig context and cluster, with a hint) when the API server is unreachable.
//! Only a loopback address that refuses connections (https://127.0.0.1:1) is used.

use std::path::PathBuf;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;

fn dead_kubeconfig(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1
kind: Config
clusters:
- name: deadcluster
  cluster:
    server: https://127.0.0.1:1
contexts:
- name: deadctx
  context:
    cluster: deadcluster
    user: nobody
current-context: deadctx
users:
- name: nobody
  user:
    token: not-a-real-token
",
    )
    .unwrap();
    path
}

/// pgkeep pointed at a kubeconfig whose only cluster (https://127.0.0.1:1) refuses connections.
fn against_dead_cluster(dir: &tempfile::TempDir) -> Command {
    let kc = dead_kubeconfig(dir);
    let mut c = Command::cargo_bin("pgkeep").unwrap();
    c.env("PGKEEP_CONFIG", "/dev/null")
        .env("KUBECONFIG", &kc)
        .env("HOME", dir.path());
    c
}

fn assert_unreachable(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    against_dead_cluster(&dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--kube")
        .args(args)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("deadctx"))
        .stderr(predicate::str::contains("https://127.0.0.1:1"))
        .stderr(predicate::str::contains("no cluster reachable"))
        .stderr(predicate::str::contains("hint:"))
        .stderr(predicate::str::contains("not-a-real-token").not());
}

/// `pgkeep --kube ARGS` against the dead kubeconfig, stdin empty: it must end with `code` (any
/// failure when `None`), say `says`, and never have tried to connect.
fn assert_refused_before_connecting(args: &[&str], code: Option<i32>, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let assert = against_dead_cluster(&dir)
        .arg("--kube")
        .args(args)
        .write_stdin("")
        .timeout(Duration::from_secs(30))
        .assert();
    let assert = match code {
        Some(c) => assert.code(c),
        None => assert.failure(),
    };
    assert
        .stderr(predicate::str::contains(says.to_owned()))
        .stderr(predicate::str::contains("no cluster reachable").not());
}

#[test]
fn pvc_ensure_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["pvc", "ensure"]);
    assert_unreachable(&["pvc", "ensure", "--dry-run"]);
}

#[test]
fn deploy_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["deploy", "--dry-run", "--wait"]);
}

#[test]
fn scale_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["scale", "0", "--timeout", "5"]);
    assert_unreachable(&["scale", "1"]);
}

#[test]
fn loader_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["loader", "up"]);
    assert_unreachable(&["loader", "down"]);
}

#[test]
fn backups_list_verify_and_prune_without_cluster_fail_with_context_and_hint() {
    assert_unreachable(&["backups", "list"]);
    assert_unreachable(&["backups", "verify", "--json"]);
    assert_unreachable(&["backups", "prune", "--dry-run"]);
}

#[test]
fn drill_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["drill"]);
    assert_unreachable(&["drill", "--skip-logical", "--json"]);
}

#[test]
fn backup_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["backup", "logical"]);
    assert_unreachable(&["backup", "physical"]);
}

#[test]
fn restore_dump_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["restore", "dump"]);
    assert_unreachable(&["restore", "dump", "--clean", "--yes"]);
}

#[test]
fn wipe_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["wipe", "--yes"]);
}

#[test]
fn wipe_without_yes_refuses_before_connecting() {
    assert_refused_before_connecting(&["wipe"], Some(3), "--yes");
}

#[test]
fn unknown_context_fails_naming_it_with_hint() {
    let dir = tempfile::tempdir().unwrap();
    against_dead_cluster(&dir)
        .args(["--kube", "--context", "nosuchctx", "pvc", "ensure"])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nosuchctx"))
        .stderr(predicate::str::contains("hint:"));
}

#[test]
fn namespace_flag_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    against_dead_cluster(&dir)
        .args(["--kube", "--namespace", "elsewhere", "scale", "1"])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("namespace elsewhere"))
        .stderr(predicate::str::contains("deadctx"));
}

#[test]
fn read_only_commands_in_the_db_pod_fail_with_context_and_hint() {
    assert_unreachable(&["sanity"]);
    assert_unreachable(&["sanity", "--json", "--estimate"]);
    assert_unreachable(&["space", "--json"]);
    assert_unreachable(&["status"]);
}

#[test]
fn restore_upload_without_cluster_fails_with_context_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("records_dump_20251102.sql");
    std::fs::write(&dump, "create table t (x int);\n").unwrap();
    let dump = dump.to_str().unwrap();
    assert_unreachable(&["restore", "upload", dump]);
    assert_unreachable(&["restore", "upload", dump, "--clean", "--yes"]);
}

#[test]
fn restore_upload_refuses_an_unrecognisable_file_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("photo.tar.gz");
    std::fs::write(&junk, [0u8, 1, 2, 3, 4, 5]).unwrap();
    let junk = junk.to_str().unwrap();
    assert_refused_before_connecting(&["restore", "upload", junk], Some(3), "photo.tar.gz");
    let missing = dir.path().join("missing.sql");
    let missing = missing.to_str().unwrap();
    assert_refused_before_connecting(&["restore", "upload", missing], None, "missing.sql");
}

#[test]
fn restore_upload_clean_without_yes_refuses_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("records.sql");
    std::fs::write(&dump, "create table t (x int);\n").unwrap();
    let dump = dump.to_str().unwrap();
    assert_refused_before_connecting(&["restore", "upload", "--clean", dump], Some(3), "--yes");
}

#[test]
fn bootstrap_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["bootstrap", "basebackup", "--yes"]);
    assert_unreachable(&[
        "bootstrap",
        "basebackup",
        "--yes",
        "--target-time",
        "2026-11-25T19:30:00Z",
    ]);
}

#[test]
fn bootstrap_refuses_before_connecting() {
    let bootstrap = |extra: &[&str], code: Option<i32>, says: &str| {
        let mut args = vec!["bootstrap", "basebackup"];
        args.extend_from_slice(extra);
        assert_refused_before_connecting(&args, code, says);
    };
    // No confirmation.
    bootstrap(&[], Some(3), "--yes");
    // The Job stops its own PostgreSQL and scales the Deployment up itself.
    bootstrap(&["--yes", "--leave-running"], Some(3), "not for --kube");
    // A target that cannot be parsed is refused before anything is scaled down.
    bootstrap(&["--yes", "--target-time", "soonish"], None, "soonish");
}

#[test]
fn debug_perms_without_cluster_fails_with_context_and_hint() {
    assert_unreachable(&["debug", "perms"]);
    assert_unreachable(&["debug", "perms", "--json"]);
}
