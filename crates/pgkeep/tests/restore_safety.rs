//! Restores that must not hurt: hostile plain SQL, failed `--clean` restores, bundles that do not
//! verify, uploads named like backups, retention over damaged bundles, and materialized views
//! created `WITH NO DATA`. Real PostgreSQL (TempCluster), driving the binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use pgkeep_testkit::{TempCluster, file_names, output_text, pgkeep};

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    out
}

fn fails(cmd: &mut Command, code: i32, needles: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(code), "{all}");
    for n in needles {
        assert!(all.contains(n), "expected {n:?} in:\n{all}");
    }
    all
}

fn backup(c: &TempCluster) -> PathBuf {
    let out = ok(pgkeep(c).args(["backup", "logical", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(report["path"].as_str().unwrap())
}

/// A directory the cluster's `postgres` user can read (for pg_dump output and test files).
fn work_dir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    work
}

fn databases(c: &TempCluster) -> String {
    c.psql(
        "postgres",
        "select string_agg(datname, ',' order by datname) from pg_database",
    )
}

fn records_with_rows(c: &TempCluster) {
    c.psql_script(
        "postgres",
        "create database records; create database other_db;",
    );
    c.psql_script(
        "records",
        "create table t(id int primary key, v text);
         insert into t select g, 'old' from generate_series(1, 100) g;",
    );
    c.psql_script(
        "other_db",
        "create table precious(x int); insert into precious values (1);",
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn uploaded_sql_with_psql_meta_commands_is_refused_before_anything_runs() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let work = work_dir();
    let marker = work.path().join("marker");
    let out_file = work.path().join("written-by-o");
    let include = work.path().join("included.sql");
    std::fs::write(&include, "create table included(x int);\n").unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("\\!", format!("\\! touch {}\n", marker.display())),
        (
            "\\o",
            format!("\\o {}\nselect 'leak';\n", out_file.display()),
        ),
        (
            "\\copy",
            format!("\\copy t from program 'touch {}'\n", marker.display()),
        ),
        (
            "\\connect other_db",
            "\\connect other_db\ndrop table precious;\n".to_owned(),
        ),
        ("\\i", format!("\\i {}\n", include.display())),
    ];
    let before = (
        databases(&c),
        c.psql("records", "select count(*) from t"),
        c.psql("other_db", "select count(*) from precious"),
    );
    for (i, (command, body)) in cases.iter().enumerate() {
        // The meta-command comes after harmless statements: nothing before it may run either.
        let script = format!(
            "create table first_{i}(x int);\ninsert into first_{i} values (1);\n{body}create table last_{i}(x int);\n"
        );
        for (name, bytes) in [
            (format!("evil{i}.sql"), script.clone().into_bytes()),
            (format!("evil{i}.sql.gz"), gzip(script.as_bytes())),
        ] {
            let file = work.path().join(&name);
            std::fs::write(&file, bytes).unwrap();
            let msg = fails(
                pgkeep(&c)
                    .env("PGKEEP_DATABASE", format!("target{i}"))
                    .args(["restore", "upload", "--clean", "--yes"])
                    .arg(&file),
                3,
                &["line 3:", command, "nothing was changed"],
            );
            assert!(!marker.exists(), "{name}: a shell ran\n{msg}");
            assert!(!out_file.exists(), "{name}: \\o wrote a file\n{msg}");
            assert!(
                !databases(&c).contains(&format!("target{i}")),
                "{name}: the target was created\n{msg}"
            );
        }
    }
    assert_eq!(
        (
            databases(&c),
            c.psql("records", "select count(*) from t"),
            c.psql("other_db", "select count(*) from precious"),
        ),
        before
    );
    // A tar holding such a script: refused the same way.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("records.sql"),
        format!("select 1;\n\\! touch {}\n", marker.display()),
    )
    .unwrap();
    let tarball = work.path().join("dump.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg("records.sql")
        .status()
        .unwrap();
    assert!(st.success());
    fails(
        pgkeep(&c)
            .env("PGKEEP_DATABASE", "target_tar")
            .args(["restore", "upload"])
            .arg(&tarball),
        3,
        &["records.sql: line 2:", "\\!"],
    );
    assert!(!marker.exists());
}

#[test]
fn uploaded_pg_dumpall_file_leaves_the_connecting_roles_password_alone() {
    let c = TempCluster::start();
    let hash = |c: &TempCluster| {
        c.psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'postgres'",
        )
    };
    let before = hash(&c);
    assert!(before.starts_with("SCRAM-SHA-256$"), "{before}");
    let work = work_dir();
    let file = work.path().join("all.sql");
    std::fs::write(
        &file,
        "SET default_transaction_read_only = off;\n\
         CREATE ROLE postgres;\n\
         ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'attacker-pw';\n\
         ALTER USER \"postgres\"\n  PASSWORD 'second-try';\n\
         CREATE ROLE app_user;\n\
         ALTER ROLE app_user WITH LOGIN PASSWORD 'app-pw';\n\
         create table t(x int);\ninsert into t values (1), (2);\n",
    )
    .unwrap();
    let out = ok(pgkeep(&c)
        .env("PGKEEP_DATABASE", "restored")
        .args(["restore", "upload", "--json"])
        .arg(&file));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = s["skipped_statements"].to_string();
    assert!(
        skipped.contains("line 2: CREATE ROLE postgres")
            && skipped.contains("line 3: ALTER ROLE postgres")
            && skipped.contains("line 4: ALTER USER \\\"postgres\\\""),
        "{}",
        output_text(&out)
    );
    assert!(!output_text(&out).contains("attacker-pw"));
    assert_eq!(hash(&c), before, "the connecting role's password changed");
    // Other roles' statements ran; the data is there.
    assert_eq!(
        c.psql(
            "postgres",
            "select rolcanlogin from pg_roles where rolname = 'app_user'"
        ),
        "t"
    );
    assert_eq!(c.psql("restored", "select count(*) from t"), "2");
}

#[test]
fn failed_clean_restore_leaves_the_database_as_it_was() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let work = work_dir();
    // A good plain dump and a custom-format dump of another database, with new rows.
    c.psql_script("postgres", "create database src;");
    c.psql_script(
        "src",
        "create table t(id int primary key, v text);
         insert into t select g, 'new' from generate_series(1, 5000) g;
         create table u as select g as x, repeat(md5(g::text), 20) as pad from generate_series(1, 20000) g;",
    );
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
    let sql = work.path().join("good.sql");
    dump(&["-Fp"], &sql);
    let custom = work.path().join("good.dump");
    dump(&["-Fc", "-Z0"], &custom);
    let plain = std::fs::read(&sql).unwrap();

    let broken = work.path().join("broken.sql");
    let text = String::from_utf8_lossy(&plain).replace(
        "CREATE TABLE public.u",
        "select no_such_function();\nCREATE TABLE public.u",
    );
    std::fs::write(&broken, text).unwrap();
    let sqlgz = gzip(&plain);
    let truncated_gz = work.path().join("cut.sql.gz");
    std::fs::write(&truncated_gz, &sqlgz[..sqlgz.len() * 2 / 3]).unwrap();
    let dump_bytes = std::fs::read(&custom).unwrap();
    let truncated_dump = work.path().join("cut.dump");
    std::fs::write(&truncated_dump, &dump_bytes[..dump_bytes.len() * 2 / 3]).unwrap();

    let state = |c: &TempCluster| {
        (
            c.psql("records", "select count(*), min(v), max(v) from t"),
            databases(c),
        )
    };
    let before = state(&c);
    for file in [&broken, &truncated_gz, &truncated_dump] {
        let msg = fails(
            pgkeep(&c)
                .args(["restore", "upload", "--clean", "--yes"])
                .arg(file),
            1,
            &["nothing was changed"],
        );
        assert_eq!(state(&c), before, "{file:?} changed the database:\n{msg}");
        assert!(!databases(&c).contains("__pgkeep_"), "{msg}");
    }
}

#[test]
fn clean_restore_swaps_the_dump_in_and_keep_old_keeps_the_old_database() {
    let c = TempCluster::start();
    records_with_rows(&c);
    c.psql_script(
        "records",
        "create role app_owner; alter database records owner to app_owner;
         alter database records set work_mem = '7MB';
         grant connect on database records to public;",
    );
    let bundle = backup(&c);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    c.psql_script(
        "records",
        "update t set v = 'changed'; create table extra(x int);",
    );
    // A session on the old database does not stop the swap.
    let mut session = c.server_cmd("psql");
    session
        .args(["-X", "-q", "-d", "records", "-c", "select pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut session = session.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = ok(pgkeep(&c).args(["restore", "dump", "--from", &name, "--clean", "--yes"]));
    let _ = session.kill();
    let _ = session.wait();
    assert_eq!(
        c.psql("records", "select count(*), min(v), max(v) from t"),
        "100|old|old",
        "{}",
        output_text(&out)
    );
    assert_eq!(
        c.psql(
            "records",
            "select count(*) from pg_tables where tablename = 'extra'"
        ),
        "0"
    );
    // The database keeps its owner and settings.
    assert_eq!(
        c.psql(
            "postgres",
            "select pg_get_userbyid(datdba) from pg_database where datname = 'records'"
        ),
        "app_owner"
    );
    assert_eq!(
        c.psql(
            "postgres",
            "select array_to_string(setconfig, ',') from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = 'records'"
        ),
        "work_mem=7MB"
    );
    assert!(!databases(&c).contains("__pgkeep_"), "{}", databases(&c));

    // --keep-old keeps the replaced database, connectable.
    c.psql("records", "update t set v = 'second'");
    let out = ok(pgkeep(&c).args([
        "restore",
        "dump",
        "--from",
        &name,
        "--clean",
        "--yes",
        "--keep-old",
        "--json",
    ]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = s["kept_old"].as_str().unwrap().to_owned();
    assert!(kept.starts_with("records__pgkeep_old_"), "{kept}");
    assert_eq!(c.psql(&kept, "select min(v) from t"), "second");
    assert_eq!(c.psql("records", "select min(v) from t"), "old");
    assert!(!databases(&c).contains("__pgkeep_restore"));

    // A database set aside earlier (kept, or left by a restore killed after its swap) is named
    // by the next restore, so it is not forgotten on the volume.
    let out = ok(pgkeep(&c).args(["restore", "dump", "--from", &name, "--clean", "--yes"]));
    let text = output_text(&out);
    assert!(
        text.contains("set aside by earlier restores") && text.contains(&kept),
        "{text}"
    );
}

/// Rewrite a bundle without its MANIFEST.json (the rest as it was).
fn without_manifest(bundle: &Path, out: &Path) {
    let x = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(bundle)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(x.path().join("MANIFEST.json")).unwrap();
    let names: Vec<String> = file_names(x.path());
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(out)
        .arg("-C")
        .arg(x.path())
        .args(&names)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The bundle cut right before its last gzip member (the one holding MANIFEST.json).
fn cut_at_last_member(bundle: &Path, out: &Path) {
    let bytes = std::fs::read(bundle).unwrap();
    let at = (1..bytes.len() - 3)
        .rev()
        .find(|&i| bytes[i..].starts_with(&[0x1f, 0x8b, 0x08]))
        .unwrap();
    // What is left is a complete gzip stream: it decompresses without an error.
    let mut d = flate2::read::MultiGzDecoder::new(&bytes[..at]);
    std::io::copy(&mut d, &mut std::io::sink()).expect("a valid gzip stream");
    std::fs::write(out, &bytes[..at]).unwrap();
}

#[test]
fn bundle_without_manifest_or_cut_at_a_gzip_member_boundary_is_refused() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let bundle = backup(&c);
    std::fs::rename(&bundle, c.root().join("good.tar.gz")).unwrap();
    let good = c.root().join("good.tar.gz");
    c.psql("records", "update t set v = 'current'");
    for (name, make) in [
        (
            "nightly-20300101-0000.tar.gz",
            without_manifest as fn(&Path, &Path),
        ),
        ("nightly-20300102-0000.tar.gz", cut_at_last_member),
    ] {
        let path = c.backups().join(name);
        make(&good, &path);
        for args in [
            vec!["restore", "dump", "--from", name, "--clean", "--yes"],
            vec!["restore", "dump", "--clean", "--yes"],
        ] {
            fails(
                pgkeep(&c).args(&args),
                3,
                &[
                    "fails the verification",
                    "MANIFEST.json",
                    "nothing was changed",
                ],
            );
            assert_eq!(
                c.psql("records", "select min(v), max(v) from t"),
                "current|current"
            );
        }
        // `backups verify` refuses it too.
        fails(pgkeep(&c).args(["backups", "verify", name]), 1, &["FAILED"]);
        // Uploaded under that name: the same refusal.
        let upload = c.root().join(name);
        std::fs::copy(&path, &upload).unwrap();
        fails(
            pgkeep(&c)
                .args(["restore", "upload", "--clean", "--yes"])
                .arg(&upload),
            3,
            &["fails the verification"],
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            c.psql("records", "select min(v), max(v) from t"),
            "current|current"
        );
    }
}

#[test]
fn upload_named_like_a_future_nightly_is_not_the_default_restore_source() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let real = backup(&c);
    let real_name = real.file_name().unwrap().to_string_lossy().into_owned();
    // A genuine bundle of another database, uploaded under a future nightly's name.
    c.psql_script("postgres", "create database shop;");
    c.psql_script(
        "shop",
        "create table t(id int, v text); insert into t values (1, 'shop');",
    );
    let shop = backup_of(&c, "shop");
    let upload = c.root().join("nightly-20991231-2359.tar.gz");
    std::fs::rename(&shop, &upload).unwrap();
    ok(pgkeep(&c)
        .env("PGKEEP_DATABASE", "uploaded")
        .args(["restore", "upload"])
        .arg(&upload));
    assert_eq!(c.psql("uploaded", "select v from t"), "shop");
    let uploads = c.backups().join("uploads");
    assert_eq!(file_names(&uploads), ["nightly-20991231-2359.tar.gz"]);
    assert!(!c.backups().join("nightly-20991231-2359.tar.gz").exists());
    // And among the backups: junk under a future name (no manifest), and a damaged copy of the
    // real bundle under another (its manifest, at the tail, still readable).
    std::fs::write(
        c.backups().join("nightly-20991230-0000.tar.gz"),
        gzip(b"junk"),
    )
    .unwrap();
    let mut damaged = std::fs::read(&real).unwrap();
    let mid = damaged.len() / 3;
    damaged[mid] ^= 0x01;
    std::fs::write(c.backups().join("nightly-20991229-0000.tar.gz"), damaged).unwrap();

    c.psql("records", "update t set v = 'changed'");
    let out = ok(pgkeep(&c).args(["restore", "dump", "--clean", "--yes", "--json"]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        s["source"].as_str().unwrap().ends_with(&real_name),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        s["passed_over"],
        serde_json::json!(["nightly-20991229-0000.tar.gz"]),
        "{}",
        output_text(&out)
    );
    assert_eq!(c.psql("records", "select min(v), max(v) from t"), "old|old");
}

fn backup_of(c: &TempCluster, db: &str) -> PathBuf {
    let out = ok(pgkeep(c)
        .env("PGKEEP_DATABASE", db)
        .args(["backup", "logical", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(report["path"].as_str().unwrap())
}

#[test]
fn prune_keeps_verified_bundles_by_stop_time_and_never_counts_damaged_ones() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let first = backup(&c);
    // A second backup in the same minute gets `-1`; name order and stop-time order agree.
    let second = backup(&c);
    let config = c.root().join("pgkeep.toml");
    std::fs::write(&config, "[retention]\nnightly = 2\nbasebackups = 1\n").unwrap();
    let garbage = [
        "nightly-20991230-0000.tar.gz",
        "nightly-20991231-2359.tar.gz",
    ];
    for g in garbage {
        std::fs::write(c.backups().join(g), gzip(b"not a bundle")).unwrap();
    }
    let out = ok(pgkeep(&c)
        .env("PGKEEP_CONFIG", &config)
        .args(["backups", "prune"]));
    let shown = output_text(&out);
    assert!(first.exists() && second.exists(), "{shown}");
    for g in garbage {
        assert!(
            c.backups().join(g).exists(),
            "damaged bundles stay without --delete-damaged"
        );
        assert!(shown.contains(&format!("damaged {g}")), "{shown}");
    }
    // A third backup: the oldest verified one goes, the damaged ones are not counted.
    let third = backup(&c);
    let out =
        ok(pgkeep(&c)
            .env("PGKEEP_CONFIG", &config)
            .args(["backups", "prune", "--delete-damaged"]));
    let shown = output_text(&out);
    assert!(!first.exists(), "{shown}");
    assert!(second.exists() && third.exists(), "{shown}");
    for g in garbage {
        assert!(!c.backups().join(g).exists(), "{shown}");
    }
}

#[test]
fn matview_with_no_data_at_backup_time_stays_unpopulated_after_restore() {
    let c = TempCluster::start();
    records_with_rows(&c);
    c.psql_script(
        "records",
        "create materialized view filled as select count(*) as n from t;
         create materialized view empty_one as select id from t with no data;
         create materialized view on_filled as select n * 2 as d from filled;",
    );
    let bundle = backup(&c);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    let target = TempCluster::start();
    let out = ok(pgkeep(&target)
        .env("PGKEEP_BACKUPS", c.backups())
        .args(["restore", "dump", "--from", &name, "--json"]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        target.psql(
            "records",
            "select string_agg(matviewname || '=' || ispopulated, ',' order by matviewname) from pg_matviews"
        ),
        "empty_one=false,filled=true,on_filled=true",
        "{}",
        output_text(&out)
    );
    assert_eq!(
        s["matviews_refreshed"],
        serde_json::json!(["public.filled", "public.on_filled"])
    );
    assert_eq!(
        s["matviews_unpopulated"],
        serde_json::json!(["public.empty_one"])
    );
    let out = ok(pgkeep(&target)
        .env("PGKEEP_BACKUPS", c.backups())
        .args(["restore", "dump", "--from", &name, "--clean", "--yes"]));
    assert!(
        output_text(&out).contains("left unpopulated (as at backup time): public.empty_one"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        target.psql(
            "records",
            "select ispopulated from pg_matviews where matviewname = 'empty_one'"
        ),
        "f"
    );
}

#[test]
fn failed_clean_restore_of_a_bundle_leaves_the_database_as_it_was() {
    let c = TempCluster::start();
    records_with_rows(&c);
    let bundle = backup(&c);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    c.psql("records", "update t set v = 'current'");
    // The database's own settings go with it to the scratch database, where this one makes
    // pg_restore fail: the dump does not load.
    c.psql(
        "postgres",
        "alter database records set default_transaction_read_only = on",
    );
    let before = (
        c.psql("records", "select count(*), min(v), max(v) from t"),
        databases(&c),
    );
    fails(
        pgkeep(&c).args(["restore", "dump", "--from", &name, "--clean", "--yes"]),
        1,
        &["records__pgkeep_restore", "nothing was changed"],
    );
    assert_eq!(
        (
            c.psql("records", "select count(*), min(v), max(v) from t"),
            databases(&c),
        ),
        before
    );
}

#[test]
fn psql_without_restrict_is_named_and_nothing_is_changed() {
    let c = TempCluster::start();
    records_with_rows(&c);
    // The real tools, but a psql older than `\restrict` (15.14 and the like).
    let tools = work_dir();
    for e in std::fs::read_dir(c.bin()).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "psql" {
            std::os::unix::fs::symlink(e.path(), tools.path().join(e.file_name())).unwrap();
        }
    }
    let psql = tools.path().join("psql");
    std::fs::write(
        &psql,
        "#!/bin/sh\ncat >/dev/null\nprintf '%s\\n' 'psql:<stdin>:1: error: invalid command \\restrict' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&psql, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = tools.path().join("dump.sql");
    std::fs::write(&file, "create table t2(x int);\n").unwrap();
    let before = (c.psql("records", "select count(*) from t"), databases(&c));
    fails(
        pgkeep(&c)
            .env("PGKEEP_PG_BIN", tools.path())
            .args(["restore", "upload", "--clean", "--yes"])
            .arg(&file),
        1,
        &["does not know `\\restrict`", "nothing was changed"],
    );
    assert_eq!(
        (c.psql("records", "select count(*) from t"), databases(&c)),
        before
    );
}
