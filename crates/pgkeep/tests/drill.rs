//! `pgkeep drill` against a real PostgreSQL archiving through `pgkeep wal push`: the drills pass
//! on sound backups, fail naming a damaged bundle, and never change the live cluster, the WAL
//! archive or the backups (only their scratch directory is written, and it is removed).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use pgkeep_testkit::{TempCluster, file_names, output_text, pgkeep_bin, pgkeep_output};

fn ok(out: Output) -> String {
    assert!(out.status.success(), "pgkeep failed: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A site with a logical and a physical backup of `records` (1000 + 250 rows), then 500 more
/// rows in a new table written after the base backup and archived.
struct Site {
    c: TempCluster,
    logical: String,
    physical: String,
}

fn site() -> Site {
    let c = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep_bin().display()
        ))
        .start();
    c.psql("postgres", "create database records");
    c.psql_script(
        "records",
        "create schema app;
         create table app.people (id int primary key, name text);
         insert into app.people select g, 'p' || g from generate_series(1, 1000) g;
         create table public.orders (id int primary key, person int references app.people);
         insert into public.orders select g, g from generate_series(1, 250) g;",
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["backup", "logical", "--json"]))).unwrap();
    let logical = v["name"].as_str().unwrap().to_owned();
    let v: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["backup", "physical", "--json"]))).unwrap();
    let physical = v["name"].as_str().unwrap().to_owned();
    c.psql_script(
        "records",
        "create table public.later (id int); insert into public.later select generate_series(1, 500);",
    );
    c.switch_wal_and_wait_archived();
    Site {
        c,
        logical,
        physical,
    }
}

/// Every entry below `dir` with its size, modification time and (files) content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, (u64, i64, Option<Vec<u8>>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let body = m.is_file().then(|| std::fs::read(e.path()).unwrap());
            out.insert(e.path(), (m.len(), mtime, body));
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    walk(dir, &mut out);
    out
}

fn no_scratch_left(c: &TempCluster) {
    let left: Vec<String> = file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with('.') && n != ".pgkeep-verified.json")
        .collect();
    assert!(left.is_empty(), "left behind in the backups dir: {left:?}");
}

#[test]
fn drill_restores_both_backups_and_changes_nothing() {
    let s = site();
    let c = &s.c;
    // Stopped, so that PGDATA is stable enough to compare byte for byte.
    c.stop();
    let pgdata = snapshot(&c.pgdata());
    let archive = snapshot(&c.wal_archive());
    // The drill's one write is its result record in results/ (checked in tests/unattended.rs).
    let records = c.backups().join("results");
    let backups_but_records = || {
        let mut m = snapshot(&c.backups());
        m.retain(|p, _| !p.starts_with(&records));
        m
    };
    let backups = backups_but_records();

    let out = ok(pgkeep_output(c, &["drill", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();

    let l = &v["logical"];
    assert_eq!(l["passed"], true, "{v:#}");
    assert_eq!(l["bundle"], s.logical.as_str());
    assert_eq!(l["verified"], true);
    assert_eq!(l["database"], "records");
    assert_eq!(l["tables"], 2, "{v:#}");
    assert_eq!(l["rows"], 1250, "{v:#}");
    let rows: BTreeMap<String, i64> = l["table_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_owned(),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        BTreeMap::from([("app.people".into(), 1000), ("public.orders".into(), 250)])
    );
    let checks: Vec<&str> = l["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "database exists",
        "has tables",
        "restore without errors",
        "every dumped table restored",
        "manifest database",
        "server version",
    ] {
        assert!(checks.contains(&want), "{want} missing from {checks:?}");
    }

    let p = &v["physical"];
    assert_eq!(p["passed"], true, "{v:#}");
    assert_eq!(p["bundle"], s.physical.as_str());
    assert_eq!(p["verified"], true);
    // The rows written after the base backup came back through WAL replay from the archive.
    assert_eq!(p["tables"], 3, "{v:#}");
    assert_eq!(p["rows"], 1750, "{v:#}");
    assert_eq!(p["replay"]["timeline"], 2, "{v:#}");
    assert!(p["replay"]["end_lsn"].as_str().unwrap().contains('/'));
    assert!(
        p["replay"]["last_replayed_xact_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v:#}"
    );
    assert!(
        p["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
    assert_eq!(v["kept"], false);

    // Nothing changed: the live PGDATA, the WAL archive (names, sizes, contents), the backups.
    assert_eq!(snapshot(&c.pgdata()), pgdata, "the live PGDATA changed");
    assert_eq!(
        snapshot(&c.wal_archive()),
        archive,
        "the WAL archive changed"
    );
    assert_eq!(backups_but_records(), backups, "the backups dir changed");
    no_scratch_left(c);
    assert!(!Path::new(v["scratch"].as_str().unwrap()).exists());

    // The live cluster starts as it was: same timeline, same rows.
    c.restart();
    assert_eq!(
        c.psql("records", "select count(*) from public.later"),
        "500"
    );
    assert_eq!(
        c.psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()"
        ),
        "1"
    );
}

#[test]
fn a_damaged_newest_bundle_fails_the_drill_naming_it() {
    let s = site();
    let c = &s.c;
    // Newer (by name) copies of both bundles, cut in half.
    let bad_logical = "nightly-20991231-2359.tar.gz";
    let bad_physical = "basebackup-20991231-2359.bundle.tar.gz";
    for (good, bad) in [(&s.logical, bad_logical), (&s.physical, bad_physical)] {
        let bytes = std::fs::read(c.backups().join(good)).unwrap();
        std::fs::write(c.backups().join(bad), &bytes[..bytes.len() / 2]).unwrap();
    }
    let archive = snapshot(&c.wal_archive());
    // The drill's one write is its result record in results/ (checked in tests/unattended.rs).
    let records = c.backups().join("results");
    let backups_but_records = || {
        let mut m = snapshot(&c.backups());
        m.retain(|p, _| !p.starts_with(&records));
        m
    };
    let backups = backups_but_records();

    let out = pgkeep_output(c, &["drill"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the logical drill failed"),
        "{}",
        output_text(&out)
    );
    assert!(
        stderr.contains("the physical drill failed"),
        "{}",
        output_text(&out)
    );
    assert!(stderr.contains(bad_logical), "{}", output_text(&out));
    assert!(stderr.contains(bad_physical), "{}", output_text(&out));
    assert!(stderr.contains("hint:"), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{}", output_text(&out));

    assert_eq!(
        snapshot(&c.wal_archive()),
        archive,
        "the WAL archive changed"
    );
    assert_eq!(backups_but_records(), backups, "the backups dir changed");
    no_scratch_left(c);
    // The live server was left alone and still runs.
    assert_eq!(c.psql("records", "select count(*) from app.people"), "1000");
}

#[test]
fn the_physical_drill_promotes_without_writing_into_the_archive() {
    let s = site();
    let c = &s.c;
    let before = file_names(&c.wal_archive());
    assert!(!before.iter().any(|n| n.contains(".history")), "{before:?}");
    let archive = snapshot(&c.wal_archive());

    let out = ok(pgkeep_output(c, &["drill", "--skip-logical", "--keep"]));
    assert!(out.contains("physical  drill  passed"), "{out}");
    assert!(out.contains("timeline 2"), "{out}");
    assert!(!out.contains("logical"), "{out}");
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("scratch kept at "))
        .unwrap_or_else(|| panic!("no kept scratch dir in:\n{out}"));
    let kept = PathBuf::from(kept);

    // It promoted: the new timeline's history file is in the scratch pg_wal, not the archive.
    let pg_wal = kept.join("physical/data/pg_wal");
    assert!(
        pg_wal.join("00000002.history").is_file(),
        "{:?}",
        file_names(&pg_wal)
    );
    assert_eq!(
        file_names(&c.wal_archive()),
        before,
        "new files in the archive"
    );
    assert_eq!(
        snapshot(&c.wal_archive()),
        archive,
        "the WAL archive changed"
    );
    let auto = std::fs::read_to_string(kept.join("physical/data/postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive_mode = 'off'"), "{auto}");
    assert!(auto.contains("listen_addresses = ''"), "{auto}");
    assert!(
        !kept.join("physical/data/postmaster.pid").exists(),
        "left running"
    );

    // Archiving of the live cluster goes on as before, on timeline 1.
    c.switch_wal_and_wait_archived();
    assert!(
        !file_names(&c.wal_archive())
            .iter()
            .any(|n| n.contains(".history"))
    );
    std::fs::remove_dir_all(&kept).unwrap();
    no_scratch_left(c);
}
