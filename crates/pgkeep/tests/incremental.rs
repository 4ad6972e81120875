//! Incremental base backups (PostgreSQL 17+): `backup physical --incremental[=auto]`, bootstrap
//! and drill from a chain, `backups verify`/`list` of chains, chain-aware prune. Every test reads
//! the server's major first and asserts what that major must do: on 15 the refusal ("server <
//! 17") and the full backup `--incremental=auto` takes instead.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use pgkeep_engine::bundle;
use pgkeep_testkit::TempCluster;

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pgkeep")
}

/// The major of the server binaries the tests run (`PGKEEP_PG_BIN` or the Debian ones).
fn major() -> u32 {
    let out = std::process::Command::new(pgkeep_testkit::pg_bin().join("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    pgkeep_engine::tools::parse_major(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

/// An archiving cluster; with WAL summaries on 17+ when `summaries`.
fn cluster(summaries: bool) -> TempCluster {
    let mut o = TempCluster::options().archive_command(&format!(
        "{} wal push --archive ../../wal-archive %p",
        bin().display()
    ));
    if summaries && major() >= 17 {
        o = o.setting("summarize_wal", "on");
    }
    o.start()
}

fn pgkeep(c: &TempCluster, args: &[&str]) -> Output {
    pgkeep_with(c, None, args)
}

fn pgkeep_with(c: &TempCluster, config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::cargo_bin("pgkeep").unwrap();
    cmd.envs(c.env());
    if let Some(config) = config {
        cmd.env("PGKEEP_CONFIG", config);
    }
    cmd.args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "pgkeep failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: Output, code: i32) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "{text}");
    text
}

/// `backup physical --json [extra]`: (name, parent).
fn backup(c: &TempCluster, extra: &[&str]) -> (String, Option<String>, String) {
    let mut args = vec!["backup", "physical", "--json"];
    args.extend_from_slice(extra);
    let out = pgkeep(c, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    (
        v["name"].as_str().unwrap().to_owned(),
        v["parent"].as_str().map(str::to_owned),
        stderr,
    )
}

fn manifest(c: &TempCluster, name: &str) -> bundle::Manifest {
    bundle::verify(&c.backups().join(name))
        .unwrap()
        .manifest
        .unwrap()
}

fn chain_names(m: &bundle::Manifest) -> Vec<String> {
    m.info["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Paths, sizes and modification times of everything under `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, i64)> {
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, (u64, i64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.insert(
                e.path(),
                (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            );
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

fn insert(c: &TempCluster, x: i32) {
    c.psql(
        "records",
        &format!("insert into t select {x}, repeat('x', 200) from generate_series(1, 2000)"),
    );
}

#[test]
fn a_chain_of_three_restores_what_each_link_and_the_wal_after_it_hold() {
    let c = cluster(true);
    c.psql("postgres", "create database records");
    c.psql("records", "create table t(x int, pad text)");
    insert(&c, 1);
    if major() < 17 {
        let text = failed(pgkeep(&c, &["backup", "physical", "--incremental"]), 3);
        assert!(text.contains("server < 17"), "{text}");
        assert!(text.contains("nothing was written"), "{text}");
        let bundles = pgkeep_testkit::file_names(&c.backups());
        assert!(
            !bundles.iter().any(|n| n.starts_with("basebackup-")),
            "{bundles:?}"
        );
        return;
    }
    // No base backup yet: nothing to take an incremental on.
    let text = failed(pgkeep(&c, &["backup", "physical", "--incremental"]), 3);
    assert!(text.contains("no usable parent"), "{text}");

    let (full, parent, _) = backup(&c, &[]);
    assert!(
        full.ends_with(".bundle.tar.zst") && !full.contains(".incr."),
        "{full}"
    );
    assert_eq!(parent, None);
    insert(&c, 2);
    let (incr1, parent, _) = backup(&c, &["--incremental"]);
    assert!(incr1.ends_with(".incr.bundle.tar.zst"), "{incr1}");
    assert_eq!(parent.as_deref(), Some(full.as_str()));
    let m1 = manifest(&c, &incr1);
    assert_eq!(m1.info_str("parent"), Some(full.as_str()));
    assert_eq!(m1.info["incremental"], true);
    assert_eq!(chain_names(&m1), std::slice::from_ref(&full));
    let full_m = manifest(&c, &full);
    assert_eq!(
        m1.info["chain"][0]["start_lsn"].as_str(),
        full_m.info_str("start_lsn")
    );
    insert(&c, 3);
    let (incr2, parent, _) = backup(&c, &["--incremental"]);
    assert_eq!(parent.as_deref(), Some(incr1.as_str()));
    assert_eq!(
        chain_names(&manifest(&c, &incr2)),
        [full.clone(), incr1.clone()]
    );
    // An incremental is smaller than the full it rests on.
    let size = |n: &str| std::fs::metadata(c.backups().join(n)).unwrap().len();
    assert!(
        size(&incr2) < size(&full),
        "{} vs {}",
        size(&incr2),
        size(&full)
    );
    insert(&c, 4);
    c.switch_wal_and_wait_archived();

    let list = ok(pgkeep(&c, &["backups", "list"]));
    let line = list.lines().find(|l| l.contains(&incr2)).unwrap();
    assert!(line.starts_with("incr"), "{list}");
    assert!(line.contains(&format!("parent {incr1}")), "{list}");
    let verified = ok(pgkeep(&c, &["backups", "verify"]));
    assert!(verified.contains(&format!("ok      {incr2}")), "{verified}");

    // The drill restores the newest chain.
    let out = ok(pgkeep(&c, &["drill", "--skip-logical", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["physical"]["passed"], true, "{v:#}");
    assert_eq!(v["physical"]["bundle"], incr2.as_str(), "{v:#}");

    c.stop();
    // A damaged middle link: refused before PGDATA is touched.
    let middle = c.backups().join(&incr1);
    let good = std::fs::read(&middle).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    std::fs::write(&middle, &bad).unwrap();
    let before = fingerprint(&c.pgdata());
    let text = failed(pgkeep(&c, &["bootstrap", "basebackup", "--yes"]), 3);
    assert!(text.contains(&incr1), "{text}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA was changed");
    let text = failed(pgkeep(&c, &["backups", "verify"]), 1);
    assert!(text.contains(&format!("FAILED  {incr1}")), "{text}");
    // A missing middle link: refused the same way, and `backups verify` says what is missing.
    std::fs::remove_file(&middle).unwrap();
    let text = failed(pgkeep(&c, &["bootstrap", "basebackup", "--yes"]), 3);
    assert!(text.contains(&format!("needs {incr1}")), "{text}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA was changed");
    let text = failed(pgkeep(&c, &["backups", "verify", &incr2]), 1);
    assert!(text.contains(&format!("needs {incr1}")), "{text}");
    std::fs::write(&middle, &good).unwrap();

    // The whole chain, then the archived WAL after its last link.
    ok(pgkeep(&c, &["bootstrap", "basebackup", "--yes"]));
    c.restart();
    assert_eq!(
        c.psql(
            "records",
            "select string_agg(distinct x::text, ',' order by x::text) || '/' || count(*) from t"
        ),
        "1,2,3,4/8000"
    );
    // The first incremental alone brings the data up to where it ended, then the WAL.
    c.stop();
    ok(pgkeep(
        &c,
        &["bootstrap", "basebackup", "--from", &incr1, "--yes"],
    ));
    c.restart();
    assert_eq!(
        c.psql("records", "select count(*) from t"),
        "8000",
        "replay goes on to the newest WAL"
    );
}

#[test]
fn auto_takes_a_full_backup_when_no_incremental_can_be_had() {
    // WAL summaries off (on 15 there are none at all).
    let c = cluster(false);
    c.psql("postgres", "create database records");
    c.psql("records", "create table t(x int, pad text)");
    insert(&c, 1);
    let (first, parent, stderr) = backup(&c, &["--incremental=auto"]);
    assert!(!first.contains(".incr."), "{first}");
    assert_eq!(parent, None);
    assert!(stderr.contains("full base backup instead"), "{stderr}");
    let (second, _, stderr) = backup(&c, &["--incremental=auto"]);
    assert!(!second.contains(".incr."), "{second}");
    let why = if major() < 17 {
        "server < 17"
    } else {
        "summarize_wal is off"
    };
    assert!(stderr.contains(why), "{stderr}");
    let text = failed(pgkeep(&c, &["backup", "physical", "--incremental"]), 3);
    assert!(text.contains(why), "{text}");
    assert!(text.contains("hint:"), "{text}");
}

#[test]
fn prune_keeps_every_link_a_kept_incremental_needs() {
    let c = cluster(true);
    if major() < 17 {
        // No incrementals here: prune counts full base backups as before.
        let config = c.root().join("pgkeep.toml");
        std::fs::write(&config, "[retention]\nbasebackups = 1\nnightly = 7\n").unwrap();
        let (a, _, _) = backup(&c, &["--no-prune"]);
        let (b, _, _) = backup(&c, &["--no-prune"]);
        ok(pgkeep_with(&c, Some(&config), &["backups", "prune"]));
        let left = pgkeep_testkit::file_names(&c.backups());
        assert!(left.contains(&b) && !left.contains(&a), "{left:?}");
        return;
    }
    let config = c.root().join("pgkeep.toml");
    std::fs::write(&config, "[retention]\nbasebackups = 1\nnightly = 7\n").unwrap();
    c.psql("postgres", "create database records");
    c.psql("records", "create table t(x int, pad text)");
    let (full1, _, _) = backup(&c, &["--no-prune"]);
    insert(&c, 1);
    let (i1, _, _) = backup(&c, &["--incremental", "--no-prune"]);
    insert(&c, 2);
    let (i2, _, _) = backup(&c, &["--incremental", "--no-prune"]);
    // One full kept: its whole chain stays (counting bundles would have removed the full).
    ok(pgkeep_with(&c, Some(&config), &["backups", "prune"]));
    let left = pgkeep_testkit::file_names(&c.backups());
    for n in [&full1, &i1, &i2] {
        assert!(left.contains(n), "{n} removed: {left:?}");
    }
    // A newer full and an incremental on it: the older chain goes whole, the WAL from the
    // kept full's start stays.
    let (full2, _, _) = backup(&c, &["--no-prune"]);
    insert(&c, 3);
    let (i3, parent, _) = backup(&c, &["--incremental", "--no-prune"]);
    assert_eq!(parent.as_deref(), Some(full2.as_str()));
    let out = ok(pgkeep_with(
        &c,
        Some(&config),
        &["backups", "prune", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let left = pgkeep_testkit::file_names(&c.backups());
    assert!(left.contains(&full2) && left.contains(&i3), "{left:?}");
    for n in [&full1, &i1, &i2] {
        assert!(!left.contains(n), "{n} kept: {left:?}");
    }
    let start = manifest(&c, &full2)
        .info_str("start_wal_file")
        .unwrap()
        .to_owned();
    assert_eq!(
        v["plan"]["wal_kept_from"].as_str(),
        Some(start.as_str()),
        "{v:#}"
    );
}
