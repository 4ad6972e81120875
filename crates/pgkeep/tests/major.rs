//! The major-version path, with both majors whatever `PGKEEP_PG_BIN` says: Debian's PostgreSQL
//! 15 (`pg15_bin`) and the PostgreSQL 18 tree `scripts/fetch-pg18.sh` caches (`pg18_bin`).
//! A logical bundle made on 15 restores into an 18 server (the dump/restore upgrade path), with
//! its data, roles and memberships; a base backup made on 15 is refused by an 18 bootstrap and
//! drill before anything is changed, pointing to `restore dump`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use pgkeep_testkit::{TempCluster, output_text, pg15_bin, pg18_bin, pgkeep, pgkeep_output};

/// pgkeep against `c`'s site, with `c`'s PostgreSQL programs (`PGKEEP_PG_BIN`).
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn major(c: &TempCluster) -> String {
    c.psql(
        "postgres",
        "select current_setting('server_version_num')::int / 10000",
    )
}

/// Roles with passwords, memberships, grants, a contrib extension, a sequence, a large object
/// and a materialized view: what a dump must carry across majors.
const GLOBALS: &str = r#"
create role app_owner login password 'owner-secret-pw';
create role app_reader nologin;
grant app_reader to app_owner;
"#;

const DB: &str = r#"
create extension citext;
create schema app authorization app_owner;
create table app.people (id bigserial primary key, name citext not null unique, note text);
insert into app.people (name, note) select 'Person ' || g, md5(g::text) from generate_series(1, 2000) g;
alter table app.people owner to app_owner;
grant usage on schema app to app_reader;
grant select on app.people to app_reader;
create sequence app.counter increment by 5 start with 10;
select setval('app.counter', 4245, true);
create materialized view app.mv as select count(*) as c from app.people;
select lo_from_bytea(515151, convert_to('large object ✓', 'UTF8'));
"#;

/// What the restore must reproduce, read with SQL that means the same on 15 and 18.
fn facts(c: &TempCluster) -> Vec<String> {
    [
        ("postgres", "select string_agg(format('%s login=%s pw=%s', rolname, rolcanlogin, rolpassword), ';' order by rolname) from pg_authid where rolname like 'app\\_%'"),
        ("postgres", "select string_agg(format('%s in %s', m.rolname, r.rolname), ';') from pg_auth_members am join pg_roles r on r.oid = am.roleid join pg_roles m on m.oid = am.member where m.rolname like 'app\\_%'"),
        ("records", "select count(*) || ' ' || md5(string_agg(id || name || note, ',' order by id)) from app.people"),
        ("records", "select tableowner from pg_tables where schemaname = 'app' and tablename = 'people'"),
        ("records", "select has_table_privilege('app_reader', 'app.people', 'select')"),
        ("records", "select (select count(*) from app.people where name = 'PERSON 7') || ' ' || extname from pg_extension where extname = 'citext'"),
        ("records", "select last_value || ' ' || increment_by from pg_sequences where sequencename = 'counter'"),
        ("records", "select c || ' ' || (select ispopulated from pg_matviews where matviewname = 'mv') from app.mv"),
        ("records", "select convert_from(lo_get(515151), 'UTF8')"),
    ]
    .iter()
    .map(|(db, sql)| c.psql(db, sql))
    .collect()
}

#[test]
fn a_logical_bundle_made_on_15_restores_into_18() {
    let old = TempCluster::options().bin(pg15_bin()).start();
    assert_eq!(major(&old), "15");
    old.psql_script("postgres", GLOBALS);
    old.psql("postgres", "create database records");
    old.psql_script("records", DB);
    let before = facts(&old);
    assert!(before[0].contains("SCRAM-SHA-256$"), "{before:?}");
    assert_eq!(before[2].split(' ').next(), Some("2000"), "{before:?}");

    // The nightly bundle, made by 15's pg_dump / pg_dumpall.
    let out = ok(pgkeep_output(
        &old,
        &["backup", "logical", "--json", "--no-prune"],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let name = report["name"].as_str().unwrap();
    assert!(name.starts_with("nightly-"), "{report}");

    // Restored by pgkeep with 18's tools into a fresh 18 server (no roles, no database yet).
    let new = TempCluster::options().bin(pg18_bin()).start();
    assert_eq!(major(&new), "18");
    let out = ok(pgkeep(&new)
        .args(["restore", "dump", "--json", "--from", name])
        .env("PGKEEP_BACKUPS", old.backups())
        .output()
        .unwrap());
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["created_database"], true, "{summary}");
    assert_eq!(
        summary["matviews_refreshed"],
        serde_json::json!(["app.mv"]),
        "{summary}"
    );
    assert_eq!(facts(&new), before, "the 18 server differs from the 15 one");
    // The restored role logs in with its password over TCP (scram-sha-256 in pg_hba).
    let out = new
        .server_cmd("psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-U",
            "app_owner",
            "-d",
            "records",
        ])
        .args(["-c", "select current_user"])
        .env("PGPASSWORD", "owner-secret-pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app_owner");
}

/// Paths, sizes and modification times of everything under `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, u32)> {
    let mut out = BTreeMap::new();
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, (u64, i64, u32)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.insert(
                e.path(),
                (
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    m.mode(),
                ),
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
fn a_base_backup_made_on_15_is_refused_by_18_before_anything_changes() {
    let pgkeep_bin = assert_cmd::cargo::cargo_bin("pgkeep");
    let c = TempCluster::options()
        .bin(pg15_bin())
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep_bin.display()
        ))
        .start();
    c.psql("postgres", "create database records");
    c.psql(
        "postgres",
        "create table precious(x int); insert into precious values (42)",
    );
    let out = ok(pgkeep_output(&c, &["backup", "physical", "--json"]));
    let name = serde_json::from_str::<serde_json::Value>(&out).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    c.switch_wal_and_wait_archived();
    c.stop();
    let pgdata = fingerprint(&c.pgdata());
    let archive = fingerprint(&c.wal_archive());
    let bundle_meta = || {
        let m = std::fs::metadata(c.backups().join(&name)).unwrap();
        (m.len(), m.mtime(), m.mtime_nsec())
    };
    let bundle = bundle_meta();
    let pg18 = pg18_bin();

    // bootstrap with 18's binaries: refused (exit 3), nothing changed, the logical path named.
    let out = pgkeep(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .env("PGKEEP_PG_BIN", &pg18)
        .output()
        .unwrap();
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    for want in [
        name.as_str(),
        "PostgreSQL 15",
        "are PostgreSQL 18",
        "nothing was changed",
        "`pgkeep restore dump`",
    ] {
        assert!(all.contains(want), "{want:?} missing:\n{all}");
    }
    assert_eq!(fingerprint(&c.pgdata()), pgdata, "PGDATA was touched");
    assert_eq!(
        fingerprint(&c.wal_archive()),
        archive,
        "the archive changed"
    );
    assert_eq!(bundle_meta(), bundle, "the bundle changed");

    // The physical drill with 18's binaries fails with the same reason (nothing replayed).
    let out = pgkeep(&c)
        .args(["drill", "--skip-logical"])
        .env("PGKEEP_PG_BIN", &pg18)
        .output()
        .unwrap();
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("are PostgreSQL 18") && all.contains("`pgkeep restore dump`"),
        "{all}"
    );
    assert_eq!(fingerprint(&c.pgdata()), pgdata, "PGDATA was touched");

    // With 15's binaries the same bundle restores: the refusal was about the major only.
    ok(pgkeep_output(&c, &["bootstrap", "basebackup", "--yes"]));
    c.restart();
    assert_eq!(c.psql("postgres", "select x from precious"), "42");
}
