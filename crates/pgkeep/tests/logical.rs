//! Logical backups and restores against real PostgreSQL (TempCluster), driving the binary.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use pgkeep_testkit::{TempCluster, output_text, pgkeep};

/// The backups directory's names, without the result records' directory (every backup run
/// leaves a record there; tests/unattended.rs checks them).
fn file_names(dir: &Path) -> Vec<String> {
    pgkeep_testkit::file_names(dir)
        .into_iter()
        .filter(|n| n != pgkeep_engine::results::DIR)
        .collect()
}

/// What breaks dump/restore: roles with passwords and memberships, grants, contrib extensions,
/// quoted mixed-case and non-ASCII schema names, a partitioned table, a materialized view on a
/// materialized view, sequences with advanced values, large objects, comments, a few thousand rows.
const FIXTURE: &str = r#"
create role app_owner login password 'owner-secret-pw';
create role app_reader nologin;
create role "Mixed Role" login password 'mixed-secret-pw' valid until '2030-01-01';
grant app_reader to app_owner;
grant app_reader to "Mixed Role" with admin option;
"#;

const FIXTURE_DB: &str = r#"
create extension citext;
create extension hstore;
create extension pg_trgm;
create schema app authorization app_owner;
create schema "MixedCase";
create schema "données";
comment on schema "données" is 'accents et ünïcode';
create table app.people (id bigserial primary key, name citext not null unique, tags hstore, bio text);
comment on table app.people is 'People — with ünïcode';
comment on column app.people.bio is 'free text';
create index people_bio_trgm on app.people using gin (bio gin_trgm_ops);
insert into app.people (name, tags, bio)
  select 'Person ' || g, hstore('n', g::text), md5(g::text) || ' tab	and newline\n and \\ backslash'
  from generate_series(1, 3000) g;
alter table app.people owner to app_owner;
create table "MixedCase"."Events" (id int generated always as identity, at date not null, payload jsonb)
  partition by range (at);
create table "MixedCase"."Events_2025" partition of "MixedCase"."Events" for values from ('2025-01-01') to ('2026-01-01');
create table "MixedCase"."Events_2026" partition of "MixedCase"."Events" for values from ('2026-01-01') to ('2027-01-01');
insert into "MixedCase"."Events" (at, payload)
  select date '2025-06-01' + (g % 400), jsonb_build_object('g', g) from generate_series(1, 2500) g;
create table "données"."élèves" (id int primary key, nom text, note numeric(4,1));
insert into "données"."élèves" select g, 'élève ' || g, g % 20 from generate_series(1, 120) g;
create materialized view app.mv_counts as select count(*) as c from app.people;
create materialized view app.mv_double as select c * 2 as d from app.mv_counts;
create view app.v_people as select id, name from app.people;
create sequence app.seq_adv increment by 7 minvalue -100 maxvalue 1000000 start with 13 cycle cache 3;
select setval('app.seq_adv', 4242, true);
create sequence app.seq_fresh;
select setval('app.seq_fresh', 99, false);
grant usage on schema app to app_reader;
grant select on app.people, app.v_people to app_reader;
grant select (name) on app.people to "Mixed Role";
alter default privileges in schema app grant select on tables to app_reader;
select lo_from_bytea(424242, convert_to('large object payload ✓', 'UTF8'));
comment on large object 424242 is 'a large object';
alter large object 424242 owner to app_owner;
create function app.shout(t text) returns text language sql immutable as $$ select upper(t) || '!' $$;
comment on function app.shout(text) is 'loud';
"#;

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    out
}

fn fails(cmd: &mut Command, code: i32, needle: &str) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", output_text(&out));
    let all = output_text(&out);
    assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
    out
}

/// pg_dump's output without its per-run `\restrict` key lines.
fn strip_restrict(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn schema_dump(c: &TempCluster, db: &str) -> String {
    let out = c
        .server_cmd("pg_dump")
        .args(["--schema-only", "-d", db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    strip_restrict(&String::from_utf8_lossy(&out.stdout))
}

/// Everything the fidelity test compares.
#[derive(Debug, PartialEq)]
struct Snapshot {
    schema: String,
    counts: String,
    sequences: String,
    roles: String,
    memberships: String,
    large_objects: String,
    matviews: String,
}

fn snapshot(c: &TempCluster, db: &str) -> Snapshot {
    // Row counts per table, built from the table list (no xpath: a server without libxml,
    // like the PostgreSQL 18 the suite also runs on, has no query_to_xml).
    let counting = c.psql(
        db,
        "select string_agg(format('select %L || count(*) from %I.%I', \
           format('%I.%I=', table_schema, table_name), table_schema, table_name), ' union all ' \
           order by table_schema, table_name) \
         from information_schema.tables where table_type = 'BASE TABLE' \
         and table_schema not in ('pg_catalog', 'information_schema')",
    );
    let counts = if counting.is_empty() {
        String::new()
    } else {
        c.psql(
            db,
            &format!("select string_agg(x, ',' order by x) from ({counting}) t(x)"),
        )
    };
    let sequences = c.psql(
        db,
        "select string_agg(format('%s.%s last=%s start=%s inc=%s min=%s max=%s cycle=%s cache=%s', \
           schemaname, sequencename, last_value, start_value, increment_by, min_value, max_value, cycle, cache_size), ';' order by schemaname, sequencename) \
         from pg_sequences",
    );
    let seq_called = c.psql(db, "select is_called, last_value from app.seq_fresh");
    let roles = c.psql(
        "postgres",
        "select string_agg(format('%s login=%s pw=%s until=%s', rolname, rolcanlogin, rolpassword, rolvaliduntil), ';' order by rolname) \
         from pg_authid where rolname !~ '^pg_' and rolname <> 'postgres'",
    );
    let memberships = c.psql(
        "postgres",
        "select string_agg(format('%s in %s admin=%s', m.rolname, r.rolname, am.admin_option), ';' order by m.rolname, r.rolname) \
         from pg_auth_members am join pg_roles r on r.oid = am.roleid join pg_roles m on m.oid = am.member",
    );
    let large_objects = c.psql(
        db,
        "select string_agg(format('%s %s %s %s', m.oid, pg_get_userbyid(m.lomowner), \
           convert_from(lo_get(m.oid), 'UTF8'), obj_description(m.oid, 'pg_largeobject')), ';') \
         from pg_largeobject_metadata m",
    );
    let matviews = c.psql(
        db,
        "select string_agg(format('%s %s', matviewname, ispopulated), ';' order by matviewname) from pg_matviews",
    );
    Snapshot {
        schema: schema_dump(c, db),
        counts,
        sequences: format!("{sequences} fresh={seq_called}"),
        roles,
        memberships,
        large_objects,
        matviews,
    }
}

fn fixture_cluster() -> TempCluster {
    let c = TempCluster::start();
    c.psql_script("postgres", FIXTURE);
    c.psql("postgres", "create database records");
    c.psql_script("records", FIXTURE_DB);
    c
}

fn tar_list(path: &Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("tzf")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn backup(c: &TempCluster) -> PathBuf {
    // Retention after the backup has its own test (tests/retention.rs).
    let out = ok(pgkeep(c).args(["backup", "logical", "--json", "--no-prune"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(report["path"].as_str().unwrap())
}

#[test]
fn round_trip_fidelity_fresh_cluster_existing_roles_and_clean() {
    let a = fixture_cluster();
    let before = snapshot(&a, "records");
    assert!(
        before.large_objects.contains("large object payload ✓"),
        "{before:?}"
    );
    assert!(before.sequences.contains("last=4242"), "{before:?}");

    // Backup: exactly the seed's members plus MANIFEST.json, 0600, nothing else left behind.
    let bundle = backup(&a);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("nightly-") && name.ends_with(".tar.gz"),
        "{name}"
    );
    assert_eq!(
        file_names(&a.backups()),
        std::slice::from_ref(&name),
        "no staging or partial left"
    );
    assert_eq!(std::fs::metadata(&bundle).unwrap().mode() & 0o777, 0o600);
    let members = tar_list(&bundle);
    let top: std::collections::BTreeSet<&str> = members
        .iter()
        .map(|m| m.split('/').next().unwrap())
        .collect();
    assert_eq!(
        top.into_iter().collect::<Vec<_>>(),
        [
            "MANIFEST.json",
            "extensions.tsv",
            "globals.sql",
            "pg_settings.tsv",
            "records.dir",
            "records.sql.gz"
        ]
    );
    assert!(
        members.iter().any(|m| m == "records.dir/toc.dat"),
        "{members:?}"
    );

    // records.sql.gz is exactly what `pg_restore -f -` makes of records.dir.
    let x = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.path().join("MANIFEST.json")).unwrap()).unwrap();
    assert_eq!(manifest["database"], "records");
    assert_eq!(manifest["kind"], "logical");
    assert!(manifest["system_identifier"].as_str().unwrap().len() > 10);
    assert!(manifest["members"].as_array().unwrap().len() > 6);
    let plain = std::process::Command::new(a.bin().join("pg_restore"))
        .arg("-f")
        .arg("-")
        .arg(x.path().join("records.dir"))
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", output_text(&plain));
    let gunzip = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(x.path().join("records.sql.gz"))
        .output()
        .unwrap();
    assert!(gunzip.status.success(), "{}", output_text(&gunzip));
    assert_eq!(
        strip_restrict(&String::from_utf8_lossy(&gunzip.stdout)),
        strip_restrict(&String::from_utf8_lossy(&plain.stdout)),
        "records.sql.gz must equal pg_restore -f - of records.dir"
    );
    let ext = std::fs::read_to_string(x.path().join("extensions.tsv")).unwrap();
    assert!(ext.starts_with("name\tversion\tschema\n"), "{ext}");
    assert!(ext.contains("citext\t"), "{ext}");
    let settings = std::fs::read_to_string(x.path().join("pg_settings.tsv")).unwrap();
    assert!(
        settings.starts_with("name\tsetting\tunit\tsource\tcontext\n"),
        "{settings}"
    );
    let globals = std::fs::read_to_string(x.path().join("globals.sql")).unwrap();
    assert!(globals.contains("app_owner"), "{globals}");

    // list and verify see it.
    let out = ok(pgkeep(&a).args(["backups", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], name.as_str());
    assert_eq!(list[0]["kind"], "logical");
    assert_eq!(list[0]["database"], "records");
    assert_eq!(list[0]["verified"], "no");
    let out = ok(pgkeep(&a).args(["backups", "verify"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dump entries"),
        "{}",
        output_text(&out)
    );
    let out = ok(pgkeep(&a).args(["backups", "list"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("yes") && shown.contains("records"),
        "{shown}"
    );

    // 1. Into a fresh cluster (no roles yet).
    let b = TempCluster::start();
    let out = ok(pgkeep(&b)
        .env("PGKEEP_BACKUPS", a.backups())
        .args(["restore", "dump", "--json"]));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["errors"], 0, "{}", output_text(&out));
    assert_eq!(summary["created_database"], true);
    assert_eq!(
        summary["matviews_refreshed"],
        serde_json::json!(["app.mv_counts", "app.mv_double"])
    );
    assert_eq!(summary["rows"], 3000 + 2500 + 120);
    assert_eq!(snapshot(&b, "records"), before, "fresh cluster differs");
    // The restore's ANALYZE (spread over its connections) reached every table, partition and
    // materialized view. Its backends' statistics arrive as they exit, hence the wait.
    let mut unanalyzed = String::new();
    for _ in 0..50 {
        unanalyzed = b.psql(
            "records",
            "select coalesce(string_agg(relname, ',' order by relname), '') \
             from pg_stat_user_tables where last_analyze is null",
        );
        if unanalyzed.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(unanalyzed.trim().is_empty(), "not analyzed: {unanalyzed}");
    drop(b);

    // 2. Into the same cluster after dropping the database: the roles already exist.
    a.psql("postgres", "drop database records");
    let out = ok(pgkeep(&a).args(["restore", "dump", "--from", &name]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("\"already exists\" (ignored), 0 other errors"),
        "{}",
        output_text(&out)
    );
    assert!(shown.contains("5620 rows"), "{shown}");
    assert_eq!(
        snapshot(&a, "records"),
        before,
        "restore over existing roles differs"
    );

    // 3. Over a non-empty database: refused without --clean, nothing changed.
    a.psql("records", "create table public.extra(x int)");
    fails(pgkeep(&a).args(["restore", "dump"]), 3, "--clean");
    fails(pgkeep(&a).args(["restore", "dump", "--clean"]), 3, "--yes");
    assert_eq!(a.psql("records", "select count(*) from app.people"), "3000");
    a.psql(
        "records",
        "delete from app.people where id <= 10; drop table public.extra",
    );
    ok(pgkeep(&a).args(["restore", "dump", "--clean", "--yes"]));
    assert_eq!(snapshot(&a, "records"), before, "--clean restore differs");

    // sanity: a table on a terminal, JSON for scripts, non-zero when unreachable.
    let out = ok(pgkeep(&a).args(["sanity"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "schema données",
        "élèves",
        "schema MixedCase",
        "mv_double",
        "populated",
        "citext",
    ] {
        assert!(shown.contains(want), "{want} missing:\n{shown}");
    }
    let out = ok(pgkeep(&a).args(["sanity", "--json", "--estimate"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["database"], "records");
    assert_eq!(r["invalid_indexes"].as_array().unwrap().len(), 0);
    fails(
        pgkeep(&a).env("PGPORT", "1").args(["sanity"]),
        1,
        "could not connect",
    );
    assert_eq!(
        file_names(&a.backups())
            .iter()
            .filter(|n| !n.starts_with(".pgkeep-verified"))
            .count(),
        1
    );
}

#[test]
fn upload_accepts_sql_sqlgz_custom_and_foreign_tarballs() {
    let c = TempCluster::start();
    c.psql_script("postgres", "create database src;");
    c.psql_script(
        "src",
        "create schema s; create table s.t(id int primary key, v text);
         insert into s.t select g, 'v' || g from generate_series(1, 1234) g;
         create materialized view s.mv as select count(*) from s.t;",
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let dump = |args: &[&str], out: &Path| {
        let o = c
            .server_cmd("pg_dump")
            .args(args)
            .arg("-f")
            .arg(out)
            .arg("src")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", output_text(&o));
    };
    let sql = work.path().join("records_dump_20251102.sql");
    dump(&["-Fp"], &sql);
    let custom = work.path().join("records_20251102.dump");
    dump(&["-Fc"], &custom);
    let sqlgz = work.path().join("plain.sql.gz");
    let gz = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", sql.display(), sqlgz.display()))
        .status()
        .unwrap();
    assert!(gz.success());
    // A foreign tarball: dump/records.dir plus a README, made with tar.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("dump")).unwrap();
    std::fs::set_permissions(
        tree.join("dump"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    dump(&["-Fd"], &tree.join("dump/records.dir"));
    std::fs::write(tree.join("README.txt"), "hello").unwrap();
    let tarball = work.path().join("records_dump_20251103.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .args(["dump", "README.txt"])
        .status()
        .unwrap();
    assert!(st.success());
    // A tarball of SQL files only.
    let sqltree = work.path().join("sqltree");
    std::fs::create_dir_all(&sqltree).unwrap();
    std::fs::copy(&sql, sqltree.join("records.sql")).unwrap();
    let sqltar = work.path().join("sqls.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&sqltar)
        .arg("-C")
        .arg(&sqltree)
        .arg("records.sql")
        .status()
        .unwrap();
    assert!(st.success());

    for (i, (file, method)) in [
        (&sql, "psql"),
        (&sqlgz, "psql"),
        (&custom, "custom format"),
        (&tarball, "directory format"),
        (&sqltar, "psql"),
    ]
    .into_iter()
    .enumerate()
    {
        let db = format!("target{i}");
        let out = ok(pgkeep(&c)
            .env("PGKEEP_DATABASE", &db)
            .args(["restore", "upload", "--json"])
            .arg(file));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            s["method"].as_str().unwrap().contains(method),
            "{file:?}: {}",
            output_text(&out)
        );
        assert_eq!(s["rows"], 1234, "{file:?}");
        assert_eq!(s["errors"], 0, "{file:?}");
        assert_eq!(c.psql(&db, "select count from s.mv"), "1234");
        let copy = c.backups().join("uploads").join(file.file_name().unwrap());
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(file).unwrap());
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o600);
    }
    // Plain SQL over a non-empty database with --clean: the dump replaces the database.
    c.psql("target0", "create table public.junk(x int)");
    ok(pgkeep(&c)
        .env("PGKEEP_DATABASE", "target0")
        .args(["restore", "upload", "--clean", "--yes"])
        .arg(&sql));
    assert_eq!(
        c.psql(
            "target0",
            "select count(*) from pg_tables where tablename = 'junk'"
        ),
        "0"
    );
    // A failing SQL statement stops the restore (exit 1) unless --keep-going; the scratch
    // database it ran into is dropped, so the target is not created at all.
    let bad = work.path().join("bad.sql");
    std::fs::write(
        &bad,
        "create table ok1(x int);\nselect nonsense_function();\ncreate table ok2(x int);\n",
    )
    .unwrap();
    let out = fails(
        pgkeep(&c)
            .env("PGKEEP_DATABASE", "bad1")
            .args(["restore", "upload"])
            .arg(&bad),
        1,
        "nonsense_function",
    );
    assert!(
        output_text(&out).contains("nothing was changed"),
        "{}",
        output_text(&out)
    );
    assert!(c.try_psql("bad1", "select 1").is_err(), "bad1 was created");
    let out = fails(
        pgkeep(&c)
            .env("PGKEEP_DATABASE", "bad2")
            .args(["restore", "upload", "--keep-going"])
            .arg(&bad),
        1,
        "1 error",
    );
    assert!(
        output_text(&out).contains("nonsense_function"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        c.psql(
            "bad2",
            "select count(*) from pg_tables where tablename like 'ok_'"
        ),
        "2"
    );
}

fn raw_tar_gz(path: &Path, entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = TempCluster::start();
    c.psql_script("postgres", "create database records; create role keepme;");
    c.psql_script(
        "records",
        "create table t(x int); insert into t values (1), (2);",
    );
    let state = |c: &TempCluster| {
        (
            schema_dump(c, "records"),
            c.psql("records", "select count(*) from t"),
            c.psql(
                "postgres",
                "select string_agg(rolname, ',' order by rolname) from pg_roles",
            ),
            c.psql(
                "postgres",
                "select string_agg(datname, ',' order by datname) from pg_database",
            ),
        )
    };
    let before = state(&c);

    // Empty backups directory.
    fails(pgkeep(&c).args(["restore", "dump"]), 1, "no logical backup");
    // A physical backup's name is not a logical dump.
    let physical = c.backups().join("basebackup-20200101-0620.bundle.tar.gz");
    std::fs::write(&physical, b"x").unwrap();
    fails(
        pgkeep(&c).args([
            "restore",
            "dump",
            "--from",
            "basebackup-20200101-0620.bundle.tar.gz",
        ]),
        3,
        "bootstrap basebackup",
    );
    std::fs::remove_file(&physical).unwrap();
    // A FILE that does not exist.
    fails(
        pgkeep(&c).args(["restore", "upload", "/nonexistent/dump.tar.gz"]),
        1,
        "does not exist",
    );
    // Something that is not a dump at all.
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("dump.zip");
    std::fs::write(&zip, b"PK\x03\x04 not really").unwrap();
    fails(
        pgkeep(&c).args(["restore", "upload"]).arg(&zip),
        3,
        "a zip archive",
    );

    // A good bundle to damage.
    let good = backup(&c);
    let good_name = good.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::remove_file(&good).unwrap();
    let listing = file_names(&c.backups());

    let truncated = c.backups().join("nightly-20200101-0600.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails(
        pgkeep(&c).args(["restore", "dump"]),
        3,
        "truncated or corrupt",
    );
    std::fs::remove_file(&truncated).unwrap();

    // Flip a byte in the middle of stored data: the checksum (or gzip's CRC) catches it.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let flipped_path = c.backups().join("nightly-20200102-0600.tar.gz");
    std::fs::write(&flipped_path, &flipped).unwrap();
    let out = pgkeep(&c).args(["restore", "dump"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    let msg = output_text(&out);
    assert!(
        msg.contains("checksum mismatch") || msg.contains("corrupt"),
        "{msg}"
    );
    let out = pgkeep(&c).args(["backups", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "{}",
        output_text(&out)
    );
    std::fs::remove_file(&flipped_path).unwrap();
    std::fs::remove_file(c.backups().join(".pgkeep-verified.json")).unwrap();

    // `../` and symlink entries.
    let evil = c.backups().join("nightly-20200103-0600.tar.gz");
    raw_tar_gz(
        &evil,
        &[(
            "../escaped.sql",
            tar::EntryType::Regular,
            None,
            b"select 1;",
        )],
    );
    fails(pgkeep(&c).args(["restore", "dump"]), 3, "unsafe entry");
    raw_tar_gz(
        &evil,
        &[("records.dir", tar::EntryType::Symlink, Some("/etc"), b"")],
    );
    fails(
        pgkeep(&c).args(["restore", "dump"]),
        3,
        "links are not accepted",
    );
    assert!(!c.backups().parent().unwrap().join("escaped.sql").exists());
    std::fs::remove_file(&evil).unwrap();

    // A bundle without dump members.
    let nodump = c.backups().join("nightly-20200104-0600.tar.gz");
    raw_tar_gz(
        &nodump,
        &[
            (
                "globals.sql",
                tar::EntryType::Regular,
                None,
                b"create role x;\n",
            ),
            ("notes.txt", tar::EntryType::Regular, None, b"hi"),
        ],
    );
    // Named like a bundle, it must verify like one: no MANIFEST.json, refused.
    fails(pgkeep(&c).args(["restore", "dump"]), 3, "no MANIFEST.json");
    std::fs::remove_file(&nodump).unwrap();
    // The same as an upload: refused, and the copy is not kept.
    let up = work.path().join("records_dump_20251102.tar.gz");
    raw_tar_gz(&up, &[("notes.txt", tar::EntryType::Regular, None, b"hi")]);
    fails(
        pgkeep(&c).args(["restore", "upload"]).arg(&up),
        3,
        "nothing to restore",
    );

    let left: Vec<String> = file_names(&c.backups())
        .into_iter()
        .filter(|n| n != "uploads")
        .collect();
    assert_eq!(left, listing, "nothing left on disk");
    assert!(file_names(&c.backups().join("uploads")).is_empty());
    assert_eq!(state(&c), before, "nothing changed in PostgreSQL");
    assert!(!good_name.is_empty());

    // pg_dump older than the server: refused before anything is written.
    let fake = tempfile::tempdir().unwrap();
    let script = fake.path().join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fails(
        pgkeep(&c)
            .env("PGKEEP_PG_BIN", fake.path())
            .args(["backup", "logical"]),
        3,
        &format!(
            "pg_dump is version 9 but the server is version {}",
            c.psql(
                "postgres",
                "select current_setting('server_version_num')::int / 10000"
            )
        ),
    );
    assert_eq!(
        file_names(&c.backups())
            .into_iter()
            .filter(|n| n != "uploads")
            .collect::<Vec<_>>(),
        listing
    );
}

#[test]
fn killed_backup_leaves_nothing_to_pick_and_secrets_stay_out_of_sight() {
    let c = TempCluster::start();
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        "create table big as select g as id, md5(g::text) || md5((g * 7)::text) as t \
         from generate_series(1, 300000) g",
    );
    for marker in [".staging", ".partial"] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("pgkeep"))
            .envs(c.env())
            .env("PGKEEP_DATABASE", "records")
            .args(["backup", "logical", "-j", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        pgkeep_testkit::wait_while_running(
            &mut child,
            &format!("{marker} appeared"),
            std::time::Duration::from_secs(60),
            || file_names(&c.backups()).iter().any(|n| n.ends_with(marker)),
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let left = file_names(&c.backups());
        assert!(
            left.iter().all(|n| n.starts_with('.')),
            "only hidden leftovers: {left:?}"
        );
        let out = ok(pgkeep(&c).args(["backups", "list", "--json"]));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
        fails(pgkeep(&c).args(["restore", "dump"]), 1, "no logical backup");
    }

    // The next backup cleans up and works; over TCP with a password that never shows.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = ok(pgkeep(&c)
        .env("PGHOST", "127.0.0.1")
        .env("PGPASSWORD", c.password())
        .args(["backup", "logical", "-v", "--log-format", "json"]));
    let all = output_text(&out);
    assert!(!all.contains(c.password()), "password leaked:\n{all}");
    // Structured log lines: one JSON object per line, naming the step.
    let steps: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter_map(|v| v["step"].as_str().map(str::to_owned))
        .collect();
    for want in ["connect", "dump", "bundle", "bundle-written", "done"] {
        assert!(
            steps.iter().any(|s| s == want),
            "{want} missing from {steps:?}"
        );
    }
    let left: Vec<String> = file_names(&c.backups())
        .into_iter()
        .filter(|n| n != pgkeep_engine::catalog::VERIFIED_FILE)
        .collect();
    assert_eq!(left.len(), 1, "stale staging and partial removed: {left:?}");
    assert!(left[0].starts_with("nightly-"), "{left:?}");
}

#[test]
fn globals_errors_other_than_already_exists_are_counted_and_reported() {
    use pgkeep_engine::bundle::{self, BundleKind, BundleWriter};
    let c = TempCluster::start();
    c.psql_script(
        "postgres",
        "create role app login password 'app-secret-pw'; create database records;",
    );
    c.psql_script(
        "records",
        "create table t(x int); insert into t select generate_series(1, 77); alter table t owner to app;",
    );
    let good = backup(&c);
    // Rewrite the bundle with a globals.sql that also holds a statement that fails for another
    // reason than "already exists" (and carries a password hash that must not be shown).
    let x = tempfile::tempdir().unwrap();
    let dest = x.path().join("x");
    bundle::extract(&good, &dest).unwrap();
    let mut globals = std::fs::read_to_string(dest.join("globals.sql")).unwrap();
    globals.push_str(
        "ALTER ROLE \"app\" WITH PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$aGFzaA==:a2V5' NOSUCHOPTION;\n",
    );
    // Errors name the line of globals.sql itself (skipped statements keep their lines).
    let bad_line = globals.lines().count();
    std::fs::write(dest.join("globals.sql"), globals).unwrap();
    let mut w = BundleWriter::create(&c.backups(), "nightly-20991231-2359.tar.gz").unwrap();
    w.append_dir("records.dir", &dest.join("records.dir"))
        .unwrap();
    for f in [
        "globals.sql",
        "pg_settings.tsv",
        "extensions.tsv",
        "records.sql.gz",
    ] {
        w.append_file(f, &dest.join(f), None).unwrap();
    }
    let mut info = std::collections::BTreeMap::new();
    info.insert("database".to_string(), serde_json::json!("records"));
    w.finish(BundleKind::Logical, info).unwrap();

    c.psql("postgres", "drop database records");
    let out = fails(
        pgkeep(&c).args(["restore", "dump", "--from", "nightly-20991231-2359.tar.gz"]),
        1,
        "finished with 1 error",
    );
    let all = output_text(&out);
    assert!(
        all.contains(&format!(
            "globals.sql line {bad_line}: ERROR: unrecognized role option \"nosuchoption\""
        )),
        "{all}"
    );
    assert!(
        all.contains("\"already exists\" (ignored), 1 other errors"),
        "{all}"
    );
    assert!(
        !all.contains("SCRAM-SHA-256$4096:c2FsdA"),
        "hash shown:\n{all}"
    );
    assert!(!all.contains("app-secret-pw"), "{all}");
    // The data was restored all the same.
    assert_eq!(c.psql("records", "select count(*) from t"), "77");
    assert_eq!(
        c.psql(
            "records",
            "select tableowner from pg_tables where tablename = 't'"
        ),
        "app"
    );
}
