//! `pgkeep backup physical`, `bootstrap basebackup` (with PITR) and `backups prune` against a
//! real PostgreSQL archiving through `pgkeep wal push`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use pgkeep_engine::bundle::{self, BundleKind, BundleWriter};
use pgkeep_testkit::{TempCluster, archiving_cluster, pgkeep_bin, pgkeep_output};

/// Output of `pgkeep status`, which exits 1 here: the site is not healthy (no restore drill is
/// recorded, among others), and says so.
fn unhealthy(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "status should exit 1:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

fn pgbench(c: &TempCluster, args: &[&str]) {
    let out = c
        .server_cmd("pgbench")
        .args(args)
        .arg("postgres")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A checksum of everything pgbench writes.
fn checksum(c: &TempCluster) -> String {
    c.psql(
        "postgres",
        "select md5(string_agg(aid || ':' || abalance, ',' order by aid)) \
         || '/' || (select count(*) from pgbench_history) from pgbench_accounts",
    )
}

fn backup(c: &TempCluster) -> String {
    let out = ok(pgkeep_output(c, &["backup", "physical", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["name"].as_str().unwrap().to_owned()
}

/// Paths, sizes and modification times of everything in PGDATA (the cluster is stopped).
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, i64)> {
    let mut out = BTreeMap::new();
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
    walk(dir, &mut out);
    out
}

#[test]
fn point_in_time_recovery_to_a_target_time() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    let bundle = c.backups().join(&name);
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().mode() & 0o777,
        0o600,
        "bundles are 0600"
    );
    let m = bundle::verify(&bundle).unwrap().manifest.unwrap();
    assert_eq!(m.kind, BundleKind::Physical);
    for key in [
        "start_lsn",
        "stop_lsn",
        "system_identifier",
        "server_version",
    ] {
        assert!(m.info_str(key).is_some(), "{key} in MANIFEST.json");
    }
    assert!(m.members.iter().any(|x| x.path == "backup_manifest"));
    assert!(
        m.members
            .iter()
            .any(|x| x.path.starts_with("data/pg_wal/0000"))
    );

    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let at_t = checksum(&c);
    let t = c.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    c.psql("postgres", "create table written_after_t(x int)");
    assert_ne!(checksum(&c), at_t);
    c.switch_wal_and_wait_archived();
    c.stop();

    let out = pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--target-time", &t, "--yes"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = ok(out);
    assert!(out.contains("recovery ended at"), "{out}");
    assert!(out.contains("timeline 2"), "{out}");
    assert!(
        !stderr.contains("after the last commit"),
        "commits after {t} were read from the archive: {stderr}"
    );
    c.restart();
    assert_eq!(checksum(&c), at_t, "the data is exactly as it was at {t}");
    assert!(
        c.try_psql("postgres", "select 1 from written_after_t")
            .is_err(),
        "later writes are absent"
    );
    assert_eq!(c.psql("postgres", "select pg_is_in_recovery()"), "f");
    let owner = std::fs::metadata(c.pgdata()).unwrap();
    assert_eq!((owner.uid(), owner.mode() & 0o777), (c.uid(), 0o700));
    assert!(
        !std::fs::read_to_string(c.pgdata().join("postgresql.auto.conf"))
            .unwrap()
            .contains("restore_command"),
        "recovery settings are removed after recovery"
    );
}

#[test]
fn full_replay_keeps_every_commit_and_a_second_restore_crosses_the_timeline_switch() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    pgbench(&c, &["-n", "-t", "300", "-c", "2"]);
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();

    ok(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]));
    c.restart();
    assert_eq!(checksum(&c), all, "every committed write is there");

    // Writes on the new timeline, then restore the same (timeline 1) bundle again.
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    c.psql(
        "postgres",
        "create table on_timeline_2(x int); insert into on_timeline_2 values (2)",
    );
    let all2 = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();
    let out = ok(pgkeep_output(
        &c,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &name,
            "--yes",
            "--keep-old",
            "--json",
        ],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["timeline"], 3, "{out}");
    // Replay (across the switch to timeline 2) took segments from the prefetch spool (started
    // before the server, it has the first ready long before PostgreSQL asks), which is gone afterwards,
    // and everything in pg_wal belongs to the data owner (PostgreSQL recycles those files).
    let archived = report["archived_segments"].as_u64().unwrap();
    let prefetched = report["prefetched_segments"].as_u64().unwrap();
    assert!(archived >= 3 && prefetched >= 1, "{out}");
    assert!(prefetched <= archived, "{out}");
    let pg_wal = c.pgdata().join("pg_wal");
    assert!(!pg_wal.join(".pgkeep-prefetch").exists());
    for e in std::fs::read_dir(&pg_wal).unwrap() {
        let e = e.unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(e.metadata().unwrap().uid(), c.uid(), "{:?}", e.path());
    }
    let old = PathBuf::from(report["old_contents_at"].as_str().unwrap());
    assert!(old.join("PG_VERSION").is_file(), "old contents moved aside");
    c.restart();
    assert_eq!(checksum(&c), all2);
    assert_eq!(c.psql("postgres", "select x from on_timeline_2"), "2");

    // A target that can never be reached is refused before anything changes, not a promotion
    // at the end of the WAL; a bootstrap without that target afterwards still works.
    c.stop();
    let err = failed(
        pgkeep_output(
            &c,
            &[
                "bootstrap",
                "basebackup",
                "--target-name",
                "no_such_point",
                "--yes",
            ],
        ),
        3,
    );
    assert!(
        err.contains("restore point `no_such_point` is not in the archived WAL"),
        "{err}"
    );
    ok(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]));
    c.restart();
    assert_eq!(checksum(&c), all2);
}

/// The seed's wipe → fresh initdb → bootstrap-from-an-older-base-backup path: the fresh system
/// took the archive's root over (its WAL there, the old system's moved aside by `serve`), and a
/// bootstrap from the old system's bundle hands the root back: the fresh system's WAL aside, the
/// old one's back, every committed write of the old system replayed.
#[test]
fn bootstrap_hands_the_archive_back_from_a_newer_system() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    let old_system = c.psql(
        "postgres",
        "select system_identifier::text from pg_control_system()",
    );
    c.stop();

    // A new system over the same archive, as `serve` starts one after a wipe.
    let archive = pgkeep_engine::wal::Archive::new(c.wal_archive());
    let aside = pgkeep_engine::archive_owner::supersede(&archive, jiff::Timestamp::now())
        .unwrap()
        .expect("the old system's WAL was in the root");
    let fresh = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive {} %p",
            pgkeep_bin().display(),
            c.wal_archive().display()
        ))
        .start();
    fresh.switch_wal_and_wait_archived();
    let fresh_system = fresh.psql(
        "postgres",
        "select system_identifier::text from pg_control_system()",
    );
    drop(fresh);
    let root = pgkeep_engine::archive_owner::root_wal(&archive).unwrap();
    assert_eq!(
        root.system.map(|s| s.to_string()),
        Some(fresh_system.clone())
    );

    let out = pgkeep_output(&c, &["bootstrap", "basebackup", "--from", &name, "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        stderr.contains(&format!("from {}", aside.to.display())),
        "the hand-over is logged: {stderr}"
    );
    c.restart();
    assert_eq!(
        checksum(&c),
        all,
        "every committed write of the old system is there"
    );
    let root = pgkeep_engine::archive_owner::root_wal(&archive).unwrap();
    assert_eq!(root.system.map(|s| s.to_string()), Some(old_system));
    assert!(
        !aside.to.exists(),
        "the old system's directory was emptied back into the root"
    );
    let fresh_aside =
        pgkeep_engine::archive_owner::find_superseded(&archive, fresh_system.parse().unwrap())
            .unwrap()
            .expect("the fresh system's WAL is kept aside");
    assert!(std::fs::read_dir(fresh_aside).unwrap().count() > 0);
}

/// Base backups are zstd now; a gzip one written before (here: one gzip stream, manifest last,
/// not at a frame of its own, so it cannot be read from the tail and is verified in a pass of
/// its own first) is still listed, verified and restored.
#[test]
fn a_gzip_base_backup_from_before_zstd_still_lists_verifies_and_restores() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    // Text that does not compress much: the bundle is larger than the 256 KiB tail a listing
    // reads, so an old layout's manifest cannot be found there.
    c.psql(
        "postgres",
        "create table noise as select md5(random()::text) as t from generate_series(1, 60000)",
    );
    let name = backup(&c);
    assert!(name.ends_with(".bundle.tar.zst"), "{name}");
    let zst = c.backups().join(&name);
    assert!(
        std::fs::read(&zst)
            .unwrap()
            .starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
    );
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x");
    let contents = bundle::extract(&zst, &out).unwrap();
    let legacy = name.replace(".bundle.tar.zst", ".bundle.tar.gz");
    let f = std::fs::File::create(c.backups().join(&legacy)).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    for d in &contents.dirs {
        tar.append_dir(d, out.join(d)).unwrap();
    }
    for m in &contents.manifest.as_ref().unwrap().members {
        tar.append_path_with_name(out.join(&m.path), &m.path)
            .unwrap();
    }
    tar.append_path_with_name(out.join(bundle::MANIFEST_NAME), bundle::MANIFEST_NAME)
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    std::fs::remove_file(&zst).unwrap();
    assert!(std::fs::metadata(c.backups().join(&legacy)).unwrap().len() > 512 << 10);

    let list = ok(pgkeep_output(&c, &["backups", "list"]));
    assert!(list.contains(&legacy), "{list}");
    ok(pgkeep_output(&c, &["backups", "verify", &legacy]));
    let out = pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(log.contains("verifying every member's checksum"), "{log}");
    c.restart();
    assert_eq!(checksum(&c), all, "every committed write is there");
}

/// Re-pack a bundle without its WAL (same manifest facts, valid checksums).
fn without_wal(src: &Path, dir: &Path, name: &str) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("x");
    let contents = bundle::extract(src, &out).unwrap();
    let m = contents.manifest.unwrap();
    let mut w = BundleWriter::create(dir, name).unwrap();
    for member in &m.members {
        if member.path.starts_with("data/pg_wal/0000") {
            continue;
        }
        w.append_file(&member.path, &out.join(&member.path), None)
            .unwrap();
    }
    w.finish(BundleKind::Physical, m.info.clone()).unwrap();
}

#[test]
fn bad_input_destroys_nothing() {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql(
        "postgres",
        "create table precious(x int); insert into precious values (42)",
    );
    let name = backup(&c);
    let bundle = c.backups().join(&name);
    c.switch_wal_and_wait_archived();

    // A running postmaster is refused.
    let err = failed(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]), 3);
    assert!(err.contains("postmaster"), "{err}");
    c.stop();
    let before = fingerprint(&c.pgdata());

    // Without a terminal and without --yes: refused.
    failed(pgkeep_output(&c, &["bootstrap", "basebackup"]), 3);

    // A flipped byte and a truncated copy.
    let bytes = std::fs::read(&bundle).unwrap();
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    std::fs::write(
        c.backups().join("basebackup-20200101-0000.bundle.tar.gz"),
        &flipped,
    )
    .unwrap();
    std::fs::write(
        c.backups().join("basebackup-20200102-0000.bundle.tar.gz"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    for bad in [
        "basebackup-20200101-0000.bundle.tar.gz",
        "basebackup-20200102-0000.bundle.tar.gz",
    ] {
        let err = failed(
            pgkeep_output(&c, &["bootstrap", "basebackup", "--from", bad, "--yes"]),
            3,
        );
        assert!(err.contains(bad), "{err}");
        assert!(err.contains("hint:"), "{err}");
        // Refused before PGDATA was given up: not marked as a bootstrap in progress, and the
        // unpacked part beside PGDATA is gone again.
        assert!(!c.pgroot().join(pgkeep_engine::bootmark::FILE_NAME).exists());
        assert!(bootstrap_staging(&c).is_empty(), "{bad}");
    }
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");

    // A target before the backup ended.
    let err = failed(
        pgkeep_output(
            &c,
            &[
                "bootstrap",
                "basebackup",
                "--target-time",
                "2001-01-01 00:00:00",
                "--yes",
            ],
        ),
        3,
    );
    assert!(err.contains("before the end of backup"), "{err}");
    let err = failed(
        pgkeep_output(
            &c,
            &["bootstrap", "basebackup", "--target-lsn", "0/1", "--yes"],
        ),
        3,
    );
    assert!(err.contains("before the end of backup"), "{err}");

    // A bundle of another cluster.
    let other = TempCluster::start();
    let foreign = ok(Command::cargo_bin("pgkeep")
        .unwrap()
        .envs(other.env())
        .args(["backup", "physical", "--json"])
        .output()
        .unwrap());
    let foreign: serde_json::Value = serde_json::from_str(&foreign).unwrap();
    std::fs::copy(
        other.backups().join(foreign["name"].as_str().unwrap()),
        c.backups().join("basebackup-20200103-0000.bundle.tar.gz"),
    )
    .unwrap();
    let err = failed(
        pgkeep_output(
            &c,
            &[
                "bootstrap",
                "basebackup",
                "--from",
                "basebackup-20200103-0000.bundle.tar.gz",
                "--yes",
            ],
        ),
        3,
    );
    assert!(err.contains("another cluster"), "{err}");
    assert!(
        err.contains(foreign["facts"]["system_identifier"].as_str().unwrap()),
        "{err}"
    );

    // A gap in the archive after the backup: replay would silently stop there.
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched so far");
    let start = foreign_free_start(&bundle);
    c.restart();
    for _ in 0..3 {
        c.switch_wal_and_wait_archived();
    }
    c.stop();
    let before = fingerprint(&c.pgdata());
    let start_no = u64::from_str_radix(&start[16..], 16).unwrap();
    let gap = format!("{}{:08X}", &start[..16], start_no + 1);
    let gap_file = c.wal_archive().join(format!("{gap}.zst"));
    let kept = c.root().join("gap.zst");
    std::fs::rename(&gap_file, &kept).unwrap();
    let err = failed(
        pgkeep_output(&c, &["bootstrap", "basebackup", "--from", &name, "--yes"]),
        3,
    );
    assert!(err.contains(&format!("lacks segment {gap}")), "{err}");
    std::fs::rename(&kept, &gap_file).unwrap();

    // Missing WAL needed for consistency: not in the bundle, not in the archive.
    without_wal(
        &bundle,
        &c.backups(),
        "basebackup-20200104-0000.bundle.tar.gz",
    );
    let hidden = c.root().join("hidden-wal");
    std::fs::create_dir(&hidden).unwrap();
    for e in std::fs::read_dir(c.wal_archive()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(&start) {
            std::fs::rename(e.path(), hidden.join(e.file_name())).unwrap();
        }
    }
    let err = failed(
        pgkeep_output(
            &c,
            &[
                "bootstrap",
                "basebackup",
                "--from",
                "basebackup-20200104-0000.bundle.tar.gz",
                "--yes",
            ],
        ),
        3,
    );
    assert!(err.contains(&format!("WAL segment {start}")), "{err}");

    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    c.restart();
    assert_eq!(c.psql("postgres", "select x from precious"), "42");
}

/// The backup's start WAL file, from its MANIFEST.json.
fn foreign_free_start(bundle: &Path) -> String {
    let m = bundle::verify(bundle).unwrap().manifest.unwrap();
    m.info_str("start_wal_file").unwrap().to_owned()
}

#[test]
fn prune_keeps_what_the_oldest_kept_backup_needs() {
    let c = archiving_cluster(&pgkeep_bin());
    let config = c.root().join("pgkeep.toml");
    std::fs::write(&config, "[retention]\nbasebackups = 2\nnightly = 7\n").unwrap();
    let run = |args: &[&str]| {
        Command::cargo_bin("pgkeep")
            .unwrap()
            .envs(c.env())
            .env("PGKEEP_CONFIG", &config)
            .args(args)
            .output()
            .unwrap()
    };
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(backup(&c));
        pgbench(&c, &["-n", "-t", "100"]);
        c.switch_wal_and_wait_archived();
    }
    let archived = |c: &TempCluster| {
        let mut v: Vec<String> = std::fs::read_dir(c.wal_archive())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = archived(&c);
    let out = ok(run(&["backups", "prune", "--dry-run"]));
    assert!(out.contains(&format!("would remove {}", names[0])), "{out}");
    assert_eq!(archived(&c), before, "dry run removes nothing");
    assert!(c.backups().join(&names[0]).exists());

    ok(run(&["backups", "prune"]));
    assert!(!c.backups().join(&names[0]).exists());
    assert!(c.backups().join(&names[1]).exists() && c.backups().join(&names[2]).exists());
    let after = archived(&c);
    assert!(
        after.len() < before.len(),
        "old WAL removed: {before:?} -> {after:?}"
    );
    let kept_start = foreign_free_start(&c.backups().join(&names[1]));
    assert!(
        after.iter().any(|n| n.starts_with(&kept_start)),
        "{kept_start} kept: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|n| n.as_str() >= kept_start.as_str() || n.ends_with(".history"))
    );

    let all = checksum(&c);
    c.stop();
    ok(run(&[
        "bootstrap",
        "basebackup",
        "--from",
        &names[1],
        "--yes",
        "--leave-running",
    ]));
    // Left running by pgkeep (as the data owner), out of recovery, recovery settings gone.
    assert_eq!(c.psql("postgres", "select pg_is_in_recovery()"), "f");
    assert_eq!(checksum(&c), all);
    assert_eq!(c.psql("postgres", "show restore_command"), "");
    let pid = std::fs::read_to_string(c.pgdata().join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().to_owned();
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(
        owner,
        c.uid(),
        "the server runs as the data owner, never root"
    );
}

#[test]
fn space_and_status_report_the_site() {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        "create table big(x text); insert into big select repeat('x', 5000) from generate_series(1, 200)",
    );
    let name = backup(&c);
    c.switch_wal_and_wait_archived();

    let space: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["space", "--json"]))).unwrap();
    let vols: Vec<&str> = space["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vols, ["data", "wal-archive", "backups"]);
    assert!(space["volumes"][0]["percent"].as_f64().unwrap() > 0.0);
    assert!(space["pg_wal_bytes"].as_u64().unwrap() >= 16 << 20);
    assert!(space["wal_archive"]["segments"].as_u64().unwrap() >= 1);
    assert!(
        space["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "records")
    );
    let big = &space["largest_tables"][0];
    assert_eq!(big["table"], "big");
    assert!(big["toast_bytes"].as_u64().unwrap() > 0 || big["table_bytes"].as_u64().unwrap() > 0);
    let text = ok(pgkeep_output(&c, &["space"]));
    assert!(text.contains("Largest tables in records"), "{text}");

    let status: serde_json::Value =
        serde_json::from_str(&unhealthy(pgkeep_output(&c, &["status", "--json"]))).unwrap();
    assert_eq!(status["server"]["up"], true);
    assert_eq!(status["server"]["in_recovery"], false);
    assert_eq!(status["archiver"]["verdict"], "ok", "{status}");
    assert_eq!(status["newest_physical"]["name"], name.as_str());
    assert!(status["newest_logical"].is_null());

    c.stop();
    let status: serde_json::Value =
        serde_json::from_str(&unhealthy(pgkeep_output(&c, &["status", "--json"]))).unwrap();
    assert_eq!(status["server"]["up"], false);
    assert!(status["wal_archive"]["files"].as_u64().unwrap() >= 1);
    let text = unhealthy(pgkeep_output(&c, &["status"]));
    assert!(text.contains("DOWN"), "{text}");
}

/// What the bootstrap Job runs: `--scale-up` comes only after recovery has ended and the
/// Job's PostgreSQL has stopped; when the scale-up cannot be done (here: no cluster), the
/// restore stands, and the error says so and what to run.
#[test]
fn scale_up_comes_after_recovery_and_a_failed_one_keeps_the_restore() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    backup(&c);
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: deadctx\n\
         clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: deadctx, context: {cluster: dead, user: nobody}}]\n\
         users: [{name: nobody, user: {token: not-a-real-token}}]\n",
    )
    .unwrap();
    let out = Command::cargo_bin("pgkeep")
        .unwrap()
        .envs(c.env())
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["bootstrap", "basebackup", "--yes", "--scale-up", "postgres"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = failed(out, 1);
    assert!(stdout.contains("recovery ended at"), "{stdout}");
    assert!(stdout.contains("was stopped"), "{stdout}");
    assert!(
        stderr.contains("recovery has ended, but deployment/postgres could not be scaled up"),
        "{stderr}"
    );
    assert!(stderr.contains("pgkeep --kube scale 1"), "{stderr}");
    assert!(stderr.contains("no cluster reachable"), "{stderr}");
    assert!(!c.pgdata().join("postmaster.pid").exists());
    c.restart();
    assert_eq!(checksum(&c), all, "the restore stands");
}

/// A real recovery replays archived segments in every form pgkeep writes or reads: zstd split
/// into 2 MiB frames compressed in parallel (`--zstd-threads 4`), one zstd frame per segment
/// (as pgkeep wrote before it split segments), gzip, and the seed's plain `cp` copies.
#[test]
fn recovery_replays_segments_archived_in_every_form() {
    let c = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --zstd-threads 4 --archive ../../wal-archive %p",
            pgkeep_bin().display()
        ))
        .start();
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    backup(&c);
    let before: Vec<String> = zst_segments(&c.wal_archive());
    for _ in 0..4 {
        pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
        c.switch_wal_and_wait_archived();
    }
    let all = checksum(&c);
    c.stop();

    let archive = c.wal_archive();
    // The segments the four switches finished (the backup's own last segment may have been
    // archived after `before` was listed).
    let mut after: Vec<String> = zst_segments(&archive)
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    assert!(after.len() >= 4, "{after:?}");
    after.drain(..after.len() - 4);
    for s in &after {
        let z = std::fs::read(archive.join(format!("{s}.zst"))).unwrap();
        let magics = z
            .windows(4)
            .filter(|w| w == &[0x28, 0xB5, 0x2F, 0xFD])
            .count();
        assert!(magics >= 2, "{s}: written as several zstd frames");
    }
    let work = tempfile::tempdir().unwrap();
    let plain = |s: &str| {
        let dest = work.path().join(s);
        ok(pgkeep_output(
            &c,
            &["wal", "fetch", s, dest.to_str().unwrap()],
        ));
        std::fs::remove_file(archive.join(format!("{s}.zst"))).unwrap();
        dest
    };
    let give_to_server =
        |p: &Path| std::os::unix::fs::chown(p, Some(c.uid()), Some(c.gid())).unwrap();
    // gzip
    let seg = plain(&after[0]);
    let gz = archive.join(format!("{}.gz", after[0]));
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut enc, &std::fs::read(&seg).unwrap()).unwrap();
    enc.finish().unwrap();
    give_to_server(&gz);
    // plain `cp`
    let seg = plain(&after[1]);
    std::fs::copy(&seg, archive.join(&after[1])).unwrap();
    give_to_server(&archive.join(&after[1]));
    // one zstd frame for the whole segment, streamed (as pgkeep wrote before it split segments)
    let seg = plain(&after[2]);
    let one = archive.join(format!("{}.zst", after[2]));
    let mut enc =
        zstd::stream::write::Encoder::new(std::fs::File::create(&one).unwrap(), 1).unwrap();
    enc.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut enc, &std::fs::read(&seg).unwrap()).unwrap();
    enc.finish().unwrap();
    give_to_server(&one);

    ok(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]));
    c.restart();
    assert_eq!(checksum(&c), all, "every write in every form was replayed");
}

fn zst_segments(archive: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(archive)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let s = n.strip_suffix(".zst")?.to_owned();
            (s.len() == 24).then_some(s)
        })
        .collect();
    v.sort();
    v
}

/// Decompress an archived `.zst` segment.
fn unzstd(path: &Path) -> Vec<u8> {
    zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap()
}

/// The first WAL segment in a cluster's pg_wal.
fn first_segment_in(pg_wal: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(pg_wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    v.sort();
    v.remove(0)
}

/// A segment in the middle of the archive that is another system's, zero-filled, truncated, or
/// missing: PostgreSQL would take it as the end of the WAL and promote there (exit 0, the later
/// commits gone). Bootstrap refuses before PGDATA is touched and the drill fails; so for a
/// segment whose headers are right but one of whose records is damaged (its CRC fails).
#[test]
fn a_bad_segment_in_the_middle_of_the_archive_is_refused_before_pgdata_is_touched() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    let at_backup = zst_segments(&c.wal_archive());
    for _ in 0..4 {
        pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
        c.switch_wal_and_wait_archived();
    }
    let all = checksum(&c);
    c.stop();
    let before = fingerprint(&c.pgdata());
    let archive = c.wal_archive();
    let later: Vec<String> = zst_segments(&archive)
        .into_iter()
        .filter(|s| !at_backup.contains(s))
        .collect();
    assert!(later.len() >= 4, "{later:?}");
    let mid = later[later.len() / 2].clone();
    let zst = archive.join(format!("{mid}.zst"));
    let original = unzstd(&zst);
    let aside = c.root().join("mid.zst");
    std::fs::rename(&zst, &aside).unwrap();

    let other = TempCluster::start();
    let foreign = std::fs::read(first_segment_in(&other.pgdata().join("pg_wal"))).unwrap();
    drop(other);
    let gap = format!("lacks segment {mid}");
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("foreign", Some(foreign), "not of system"),
        ("zero-filled", Some(vec![0u8; 16 << 20]), "all zeros"),
        (
            "truncated",
            Some(original[..original.len() / 2].to_vec()),
            "truncated",
        ),
        ("gap", None, &gap),
    ];
    let plain = archive.join(&mid);
    for (what, content, says) in &cases {
        if let Some(bytes) = content {
            std::fs::write(&plain, bytes).unwrap();
            std::os::unix::fs::chown(&plain, Some(c.uid()), Some(c.gid())).unwrap();
        }
        let err = failed(
            pgkeep_output(&c, &["bootstrap", "basebackup", "--from", &name, "--yes"]),
            3,
        );
        assert!(err.contains(says), "{what}: {err}");
        assert!(err.contains(&mid), "{what}: {err}");
        assert!(err.contains("nothing was changed"), "{what}: {err}");
        assert_eq!(fingerprint(&c.pgdata()), before, "{what}: PGDATA untouched");
        let out = pgkeep_output(&c, &["drill", "--skip-logical"]);
        let text = pgkeep_testkit::output_text(&out);
        assert!(!out.status.success(), "{what}: the drill passed:\n{text}");
        assert!(text.contains("physical drill failed"), "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
        let _ = std::fs::remove_file(&plain);
    }

    // Headers right, a record damaged (a flipped bit): its CRC gives it away, before PGDATA is
    // touched too.
    let mut damaged = original.clone();
    damaged[3 * 8192 + 1000] ^= 0x10;
    std::fs::write(&plain, &damaged).unwrap();
    std::os::unix::fs::chown(&plain, Some(c.uid()), Some(c.gid())).unwrap();
    let err = failed(
        pgkeep_output(&c, &["bootstrap", "basebackup", "--from", &name, "--yes"]),
        3,
    );
    assert!(err.contains("would take it as the end of the WAL"), "{err}");
    assert!(err.contains(&mid), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    let out = pgkeep_output(&c, &["drill", "--skip-logical"]);
    let text = pgkeep_testkit::output_text(&out);
    assert!(!out.status.success(), "the drill passed:\n{text}");
    assert!(
        text.contains("would take it as the end of the WAL"),
        "{text}"
    );
    std::fs::remove_file(&plain).unwrap();

    std::fs::rename(&aside, &zst).unwrap();
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    c.restart();
    assert_eq!(checksum(&c), all, "the live data is intact");
    c.stop();
    ok(pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--from", &name, "--yes"],
    ));
    c.restart();
    assert_eq!(checksum(&c), all, "with the archive repaired, every commit");
}

/// After a wipe and a fresh start (a new system whose segment names restart at 1), the old
/// system's bundles are still kept. Prune cuts each system's WAL against that system's own
/// bundles: the live system's WAL stays (it used to be cut at the old system's oldest kept
/// backup, taking the live system's PITR with it), the old system's superseded WAL is pruned
/// against its kept bundle, and every kept bundle restores to its end and to a point inside.
#[test]
fn prune_cuts_each_systems_wal_against_its_own_kept_backups() {
    // System A: an early backup (pruned), WAL, a kept backup.
    let a = archiving_cluster(&pgkeep_bin());
    let config = a.root().join("pgkeep.toml");
    std::fs::write(&config, "[retention]\nbasebackups = 2\nnightly = 7\n").unwrap();
    pgbench(&a, &["-i", "-s", "1", "-q"]);
    let a0 = backup(&a);
    for _ in 0..6 {
        pgbench(&a, &["-n", "-t", "50"]);
        a.switch_wal_and_wait_archived();
    }
    let a1 = backup(&a);
    pgbench(&a, &["-n", "-t", "200", "-c", "2"]);
    let all_a = checksum(&a);
    a.switch_wal_and_wait_archived();
    a.stop();
    let archive = pgkeep_engine::wal::Archive::new(a.wal_archive());
    let aside = pgkeep_engine::archive_owner::supersede(&archive, jiff::Timestamp::now())
        .unwrap()
        .unwrap()
        .to;

    // System B takes the archive over and backs up into the same backups directory.
    let b = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive {} %p",
            pgkeep_bin().display(),
            a.wal_archive().display()
        ))
        .start();
    let site = |c: &TempCluster, args: &[&str]| {
        Command::cargo_bin("pgkeep")
            .unwrap()
            .envs(c.env())
            .env("PGKEEP_WAL_ARCHIVE", a.wal_archive())
            .env("PGKEEP_BACKUPS", a.backups())
            .env("PGKEEP_CONFIG", &config)
            .args(args)
            .output()
            .unwrap()
    };
    pgbench(&b, &["-i", "-s", "1", "-q"]);
    let out = ok(site(&b, &["backup", "physical", "--json"]));
    let b1: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b1 = b1["name"].as_str().unwrap().to_owned();
    pgbench(&b, &["-n", "-t", "100", "-c", "2"]);
    let at_t_b = checksum(&b);
    let t = b.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    pgbench(&b, &["-n", "-t", "100", "-c", "2"]);
    let all_b = checksum(&b);
    b.switch_wal_and_wait_archived();
    let b_start = foreign_free_start(&a.backups().join(&b1));
    let a1_start = foreign_free_start(&a.backups().join(&a1));
    assert!(
        b_start[8..] < a1_start[8..],
        "the scenario needs B's WAL below A's kept start: {b_start} {a1_start}"
    );
    let root_before = pgkeep_testkit::file_names(&a.wal_archive());

    let out = ok(site(&b, &["backups", "prune"]));
    assert!(!a.backups().join(&a0).exists(), "{out}");
    assert!(a.backups().join(&a1).exists() && a.backups().join(&b1).exists());
    let root_after = pgkeep_testkit::file_names(&a.wal_archive());
    let needed: Vec<&String> = root_before
        .iter()
        .filter(|n| n.as_str() >= b_start.as_str())
        .collect();
    assert!(
        needed.iter().any(|n| n.starts_with(&b_start)),
        "{root_before:?}"
    );
    assert!(
        needed.iter().all(|n| root_after.contains(n)),
        "the WAL B's kept backup needs stays: {root_before:?} -> {root_after:?}\n{out}"
    );
    let a_left = pgkeep_testkit::file_names(&aside);
    assert!(
        a_left.iter().any(|n| n.starts_with(&a1_start)),
        "{a1_start} kept: {a_left:?}"
    );
    assert!(
        a_left
            .iter()
            .all(|n| n.as_str() >= a1_start.as_str() || n.ends_with(".history")),
        "A's WAL older than its kept backup is pruned: {a_left:?}"
    );

    // Every kept bundle restores: B's to its end, then to a point inside; A's to its end.
    b.stop();
    ok(site(
        &b,
        &["bootstrap", "basebackup", "--from", &b1, "--yes"],
    ));
    b.restart();
    assert_eq!(checksum(&b), all_b, "every commit of the live system");
    b.stop();
    ok(site(
        &b,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &b1,
            "--target-time",
            &t,
            "--yes",
        ],
    ));
    b.restart();
    assert_eq!(checksum(&b), at_t_b, "the live system's PITR window");
    b.stop();
    drop(b);
    ok(site(
        &a,
        &["bootstrap", "basebackup", "--from", &a1, "--yes"],
    ));
    a.restart();
    assert_eq!(checksum(&a), all_a, "every commit of the old system");
}

/// A PITR made timeline 2; with 00000002.history gone from the archive, recovery from the
/// timeline-1 backup would follow timeline 1 to its end and bring back its abandoned future
/// (exit 0). Bootstrap refuses naming the missing file, before PGDATA is touched, and the
/// drill fails; with the file back, the bootstrap follows timeline 2.
#[test]
fn a_missing_history_file_is_refused_not_followed_down_the_wrong_timeline() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    let t = c.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    c.psql("postgres", "create table abandoned_future(x int)");
    c.switch_wal_and_wait_archived();
    c.stop();
    let out = ok(pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--target-time", &t, "--yes"],
    ));
    assert!(out.contains("timeline 2"), "{out}");
    c.restart();
    c.psql(
        "postgres",
        "create table on_timeline_2(x int); insert into on_timeline_2 values (2)",
    );
    pgbench(&c, &["-n", "-t", "50"]);
    let tl2 = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();
    let before = fingerprint(&c.pgdata());

    let history = c.wal_archive().join("00000002.history");
    let aside = c.root().join("00000002.history");
    std::fs::rename(&history, &aside).unwrap();
    let err = failed(
        pgkeep_output(&c, &["bootstrap", "basebackup", "--from", &name, "--yes"]),
        3,
    );
    assert!(err.contains("00000002.history"), "{err}");
    assert!(err.contains("timeline 2"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    let out = pgkeep_output(&c, &["drill", "--skip-logical"]);
    let text = pgkeep_testkit::output_text(&out);
    assert!(!out.status.success(), "the drill passed:\n{text}");
    assert!(text.contains("00000002.history"), "{text}");

    std::fs::rename(&aside, &history).unwrap();
    ok(pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--from", &name, "--yes"],
    ));
    c.restart();
    assert_eq!(checksum(&c), tl2, "timeline 2's commits");
    assert_eq!(c.psql("postgres", "select x from on_timeline_2"), "2");
    assert!(
        c.try_psql("postgres", "select 1 from abandoned_future")
            .is_err(),
        "timeline 1's abandoned future stays abandoned"
    );
}

/// With an LSN target, every segment up to the target's is checked before PGDATA is touched (a
/// gap before it used to be found only after PGDATA was emptied); damage after the target's
/// segment does not stand in the way, and the data is exactly as at the target.
#[test]
fn an_lsn_target_needs_exactly_the_segments_up_to_it() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    let start = foreign_free_start(&c.backups().join(&name));
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    c.switch_wal_and_wait_archived();
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    let at_l = checksum(&c);
    let l = c.psql("postgres", "select pg_current_wal_lsn()::text");
    c.switch_wal_and_wait_archived();
    for _ in 0..2 {
        pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
        c.switch_wal_and_wait_archived();
    }
    let all = checksum(&c);
    c.stop();
    let before = fingerprint(&c.pgdata());
    let segs = zst_segments(&c.wal_archive());
    let l_seg = {
        let lsn: pgkeep_engine::wal::Lsn = l.parse().unwrap();
        pgkeep_engine::wal::segment_file_name(1, lsn.segment(16 << 20), 16 << 20)
    };
    assert!(
        segs.iter().any(|s| *s > l_seg),
        "WAL after the target: {segs:?}"
    );
    let before_l = segs
        .iter()
        .find(|s| s.as_str() > start.as_str() && s.as_str() < l_seg.as_str())
        .unwrap_or_else(|| panic!("a segment between {start} and {l_seg}: {segs:?}"))
        .clone();
    let after_l = segs
        .iter()
        .filter(|s| s.as_str() > l_seg.as_str())
        .nth_back(1)
        .unwrap_or_else(|| panic!("two segments after {l_seg}: {segs:?}"))
        .clone();
    let hide = |s: &str| {
        let from = c.wal_archive().join(format!("{s}.zst"));
        let to = c.root().join(format!("{s}.zst"));
        std::fs::rename(&from, &to).unwrap();
        (from, to)
    };

    // A gap before the target: refused, PGDATA untouched.
    let (back, kept) = hide(&before_l);
    let err = failed(
        pgkeep_output(
            &c,
            &["bootstrap", "basebackup", "--target-lsn", &l, "--yes"],
        ),
        3,
    );
    assert!(err.contains(&format!("lacks segment {before_l}")), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    std::fs::rename(&kept, &back).unwrap();

    // A gap after the target's segment: no obstacle, the data is exactly as at the target.
    let (back, kept) = hide(&after_l);
    let out = ok(pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--target-lsn", &l, "--yes"],
    ));
    assert!(out.contains("recovery ended"), "{out}");
    c.restart();
    assert_eq!(checksum(&c), at_l, "exactly as at {l}");
    assert_ne!(at_l, all);
    c.stop();
    std::fs::rename(&kept, &back).unwrap();
}

/// A `--target-name` is looked up in the archived WAL before PGDATA is touched: a name that is
/// not there is refused (it used to be found only after PGDATA was emptied), a name that occurs
/// twice is warned about (PostgreSQL stops at the first), and an existing one is reached exactly.
#[test]
fn a_restore_point_target_is_looked_up_in_the_archive_before_pgdata_is_touched() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let name = backup(&c);
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    c.switch_wal_and_wait_archived();
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    let at_rp = checksum(&c);
    c.psql(
        "postgres",
        "select pg_create_restore_point('before-migration')",
    );
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    c.psql("postgres", "select pg_create_restore_point('twice')");
    pgbench(&c, &["-n", "-t", "50"]);
    c.psql("postgres", "select pg_create_restore_point('twice')");
    c.switch_wal_and_wait_archived();
    pgbench(&c, &["-n", "-t", "100", "-c", "2"]);
    c.switch_wal_and_wait_archived();
    let all = checksum(&c);
    c.stop();
    let before = fingerprint(&c.pgdata());

    let err = failed(
        pgkeep_output(
            &c,
            &[
                "bootstrap",
                "basebackup",
                "--target-name",
                "before-migratoin",
                "--yes",
            ],
        ),
        3,
    );
    assert!(
        err.contains("`before-migratoin` is not in the archived WAL"),
        "{err}"
    );
    assert!(err.contains("before-migration, twice, twice"), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");

    // A time after the last archived commit is warned about before PGDATA is given up
    // (PostgreSQL then refuses to promote: exit 1, the old contents kept aside here).
    std::thread::sleep(Duration::from_millis(1100));
    let late = jiff::Timestamp::now().to_string();
    let out = pgkeep_output(
        &c,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &name,
            "--target-time",
            &late,
            "--keep-old",
            "--yes",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("after the last commit or abort"),
        "{stderr}"
    );
    // The WAL is checked beside the unpack; its warning comes before PGDATA is given up.
    let warned = stderr.find("after the last commit").unwrap();
    for given_up in ["PGDATA contents aside", "emptied PGDATA"] {
        assert!(
            stderr.find(given_up).is_none_or(|p| p > warned),
            "warned before PGDATA was touched: {stderr}"
        );
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");

    let out = pgkeep_output(
        &c,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &name,
            "--target-name",
            "twice",
            "--yes",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(stderr.contains("`twice` occurs 2 times"), "{stderr}");

    ok(pgkeep_output(
        &c,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &name,
            "--target-name",
            "before-migration",
            "--yes",
        ],
    ));
    c.restart();
    assert_eq!(checksum(&c), at_rp, "exactly as at the restore point");
    assert_ne!(at_rp, all);
}

/// pgkeep without the settings that name the data owner (a plain host: PGKEEP_UID/GID unset).
fn pgkeep_plain_host(c: &TempCluster, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = c
        .env()
        .into_iter()
        .filter(|(k, _)| k != "PGKEEP_UID" && k != "PGKEEP_GID")
        .collect();
    Command::cargo_bin("pgkeep")
        .unwrap()
        .env_remove("PGKEEP_UID")
        .env_remove("PGKEEP_GID")
        .envs(env)
        .envs(extra_env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// Issue 12 item 6: a cluster that `serve` did not configure (its socket directory given only
/// on the server's command line, owned by `postgres`, not uid 999). The replay server listens on
/// the run dir whatever the restored configuration says, the data keeps its owner, and a run dir
/// the owner cannot write is refused before PGDATA is touched.
#[test]
fn a_plain_host_cluster_is_replayed_on_the_run_dir_socket_and_keeps_its_owner() {
    let c = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep_bin().display()
        ))
        .socket_on_command_line()
        .start();
    assert_ne!(
        c.uid(),
        999,
        "the test needs an owner other than the default"
    );
    let conf = std::fs::read_to_string(c.pgdata().join("postgresql.conf")).unwrap();
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().starts_with("unix_socket_directories")),
        "{conf}"
    );
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    backup(&c);
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    c.psql(
        "postgres",
        "create table after_backup(x int); insert into after_backup values (42)",
    );
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();

    // A run dir the data owner cannot write: refused (exit 3) before PGDATA is touched.
    let locked = c.root().join("root-only-run");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = fingerprint(&c.pgdata());
    let err = failed(
        pgkeep_plain_host(
            &c,
            &[("PGKEEP_RUN_DIR", locked.to_str().unwrap())],
            &["bootstrap", "basebackup", "--yes", "--timeout", "60"],
        ),
        3,
    );
    assert!(
        err.contains(&format!("is not writable by uid {}", c.uid())),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");
    assert!(!c.pgroot().join(".pgkeep-bootstrap-in-progress").exists());

    let out = ok(pgkeep_plain_host(
        &c,
        &[],
        &["bootstrap", "basebackup", "--yes", "--timeout", "120"],
    ));
    assert!(out.contains("recovery ended at"), "{out}");
    for p in [
        c.pgdata(),
        c.pgdata().join("PG_VERSION"),
        c.pgdata().join("base"),
        c.pgdata().join("postgresql.auto.conf"),
    ] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (c.uid(), c.gid()),
            "{} keeps its owner",
            p.display()
        );
    }
    c.restart();
    assert_eq!(checksum(&c), all, "every committed write is back");
    assert_eq!(c.psql("postgres", "select x from after_backup"), "42");
}

/// The `.pgkeep-bootstrap-*` staging directories beside PGDATA.
fn bootstrap_staging(c: &TempCluster) -> Vec<PathBuf> {
    std::fs::read_dir(c.pgroot())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".pgkeep-bootstrap-")
                && e.file_type().unwrap().is_dir()
        })
        .map(|e| e.path())
        .collect()
}

/// Spawn `bootstrap basebackup --yes`, wait until `ready` says so, then SIGKILL it.
fn kill_bootstrap_when(c: &TempCluster, what: &str, ready: impl Fn() -> bool) {
    let mut child = std::process::Command::new(pgkeep_bin())
        .envs(c.env())
        .args(["bootstrap", "basebackup", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    pgkeep_testkit::wait_while_running(&mut child, what, Duration::from_secs(120), ready);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Issue 19 item 6: a bootstrap killed with SIGKILL while it extracts leaves its staging
/// directory (as large as the database); the next bootstrap removes it. One killed while its
/// replay server runs takes that server with it (the server is pgkeep's child, so nothing keeps
/// replaying into a PGDATA the next run empties), and the next bootstrap recovers every commit.
#[test]
fn a_killed_bootstraps_staging_is_removed_and_its_replay_server_dies_with_it() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "3", "-q"]);
    backup(&c);
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let all = checksum(&c);
    c.switch_wal_and_wait_archived();
    c.stop();

    // Killed while extracting: its staging directory stays behind.
    kill_bootstrap_when(&c, "a staging directory", || {
        bootstrap_staging(&c)
            .iter()
            .any(|d| d.join("bundle").exists() || d.join("data").exists())
    });
    let left = bootstrap_staging(&c);
    assert_eq!(left.len(), 1, "{left:?}");

    // The next one removes it; killed once its replay server runs.
    kill_bootstrap_when(&c, "the replay server", || {
        c.pgdata().join("postmaster.pid").exists()
    });
    assert!(!left[0].exists(), "a dead run's staging is removed");

    // The replay server died with it (an immediate shutdown from the kernel's parent-death
    // signal): nothing runs on PGDATA, and the marker says the bootstrap is unfinished.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.pgdata().join("postmaster.pid").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay server outlived the killed bootstrap"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        c.pgroot()
            .join(pgkeep_engine::bootmark::FILE_NAME)
            .is_file()
    );

    // The next bootstrap starts over from the base backup and recovers every commit.
    ok(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]));
    assert!(bootstrap_staging(&c).is_empty());
    c.restart();
    assert_eq!(checksum(&c), all);
}

fn utc_now(c: &TempCluster) -> String {
    c.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// Issue 19 item 4: after a PITR to A (timeline 2), a "corrected" PITR to a later B on
/// timeline 1 used to follow `latest` into timeline 2 and silently return A. Without a chosen
/// timeline it is refused (branch point and timelines named, PGDATA untouched); with
/// `--target-timeline 1` timeline 1's state at B comes back.
#[test]
fn a_target_past_a_newer_timelines_branch_point_needs_the_timeline_chosen() {
    let c = archiving_cluster(&pgkeep_bin());
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    backup(&c);
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let at_a = checksum(&c);
    let a = utc_now(&c);
    std::thread::sleep(Duration::from_millis(50));
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    let at_b = checksum(&c);
    let b = utc_now(&c);
    std::thread::sleep(Duration::from_millis(50));
    pgbench(&c, &["-n", "-t", "200", "-c", "2"]);
    c.switch_wal_and_wait_archived();
    c.stop();

    let out = ok(pgkeep_output(
        &c,
        &["bootstrap", "basebackup", "--target-time", &a, "--yes"],
    ));
    assert!(out.contains("timeline 2"), "{out}");
    c.restart();
    assert_eq!(checksum(&c), at_a);
    c.switch_wal_and_wait_archived();
    c.stop();
    assert!(c.wal_archive().join("00000002.history").exists());

    let before = fingerprint(&c.pgdata());
    let err = failed(
        pgkeep_output(
            &c,
            &["bootstrap", "basebackup", "--target-time", &b, "--yes"],
        ),
        3,
    );
    assert!(
        err.contains("where timeline 2 branched off timeline 1"),
        "{err}"
    );
    assert!(err.contains("--target-timeline 1"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fingerprint(&c.pgdata()), before, "PGDATA untouched");

    let out = ok(pgkeep_output(
        &c,
        &[
            "bootstrap",
            "basebackup",
            "--target-time",
            &b,
            "--target-timeline",
            "1",
            "--yes",
        ],
    ));
    assert!(out.contains("timeline 3"), "{out}");
    c.restart();
    assert_eq!(checksum(&c), at_b, "timeline 1's state at B");
}
