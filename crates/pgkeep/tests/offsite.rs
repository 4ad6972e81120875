//! Off-site copies against a real S3 server (moto, started by the testkit) and real PostgreSQL:
//! sync, restores with the local copies gone, no plaintext in any object, create-only uploads,
//! damaged objects and wrong identities, and a server frozen in the middle of an upload.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use pgkeep_testkit::s3::S3Server;
use pgkeep_testkit::{TempCluster, archiving_cluster, output_text, pgkeep, pgkeep_bin};

const MARKER: &str = "offsite-marker-7f3a9c-plaintext-must-never-leave";

/// pgkeep against the cluster and the S3 server, objects under `prefix`.
fn pgkeep_s3(c: &TempCluster, s3: &S3Server, prefix: &str) -> Command {
    let mut cmd = pgkeep(c);
    cmd.envs(s3.env(prefix))
        .env_remove("PGKEEP_OFFSITE_RECIPIENTS")
        .env_remove("PGKEEP_OFFSITE_IDENTITY_FILE");
    cmd
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    out
}

fn fails(cmd: &mut Command, needles: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let all = output_text(&out);
    assert!(!out.status.success(), "expected a failure:\n{all}");
    for n in needles {
        assert!(all.contains(n), "expected {n:?} in:\n{all}");
    }
    all
}

/// A new identity file in `dir`; returns (path, recipient).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(Command::cargo_bin("pgkeep")
        .unwrap()
        .args(["offsite", "keygen", "--out"])
        .arg(&path));
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (path, recipient)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `data` shows `needle` to someone holding it: as it is, or after undoing zstd or gzip
/// (the compressions pgkeep stores with).
fn reveals(data: &[u8], needle: &str) -> bool {
    let has = |d: &[u8]| d.windows(needle.len()).any(|w| w == needle.as_bytes());
    if has(data) {
        return true;
    }
    if let Ok(d) = zstd::decode_all(data)
        && has(&d)
    {
        return true;
    }
    let mut d = Vec::new();
    if flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut d)
        .is_ok()
        && has(&d)
    {
        return true;
    }
    false
}

/// A cluster archiving its WAL, with the marker row committed and its segment archived.
fn cluster_with_marker() -> TempCluster {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        &format!(
            "create table t (id int primary key, note text); insert into t values (1, '{MARKER}');"
        ),
    );
    c.psql("records", "select pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let archived = c
            .psql(
                "postgres",
                "select archived_count > 0 and coalesce(last_archived_time > last_failed_time, true) from pg_stat_archiver",
            )
            .trim()
            .to_owned();
        if archived == "t" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the segment with the marker was not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c
}

fn sysid(c: &TempCluster) -> String {
    c.psql(
        "postgres",
        "select system_identifier from pg_control_system()",
    )
    .trim()
    .to_owned()
}

#[test]
fn sync_restore_with_local_copies_gone_no_plaintext_create_only_wrong_identity() {
    let s3 = S3Server::start("pgkeep-offsite");
    let c = cluster_with_marker();
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    let id = sysid(&c);

    // keygen refuses to overwrite, and the identity is private.
    fails(
        Command::cargo_bin("pgkeep")
            .unwrap()
            .args(["offsite", "keygen", "--out"])
            .arg(&id_file),
        &["exists", "never overwritten"],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&id_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Off-site without recipients is refused unless encrypt = false is said.
    fails(
        pgkeep_s3(&c, &s3, "enc").args(["offsite", "sync"]),
        &[
            "offsite.recipients",
            "pgkeep offsite keygen",
            "encrypt = false",
        ],
    );

    ok(pgkeep_s3(&c, &s3, "enc").args(["backup", "logical", "--no-prune"]));
    let bundle = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .find(|n| n.starts_with("nightly-"))
        .unwrap();
    let sync = |prefix: &str| {
        let mut cmd = pgkeep_s3(&c, &s3, prefix);
        cmd.env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["offsite", "sync"]);
        cmd
    };
    let out = ok(&mut sync("enc"));
    assert!(
        stdout(&out).contains("already off-site"),
        "{}",
        output_text(&out)
    );
    let keys = s3.keys();
    let bundle_key = format!("enc/{id}/backups/{bundle}.age");
    assert!(keys.contains(&bundle_key), "{keys:?}");
    let wal_keys: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("enc/{id}/wal/")))
        .collect();
    assert!(wal_keys.iter().any(|k| k.ends_with(".zst.age")), "{keys:?}");

    // No object shows the marker, even decompressed...
    for k in keys.iter().filter(|k| k.starts_with("enc/")) {
        let data = s3.get(k);
        assert!(data.starts_with(b"age-encryption.org/v1\n"), "{k}");
        assert!(!reveals(&data, MARKER), "{k} shows the marker");
    }
    // ...while the same files stored unencrypted do (so the check above can fail).
    let cfg = keys_dir.path().join("plain.toml");
    std::fs::write(&cfg, "[offsite]\nencrypt = false\n").unwrap();
    ok(pgkeep_s3(&c, &s3, "plain")
        .env("PGKEEP_CONFIG", &cfg)
        .args(["offsite", "sync"]));
    assert!(
        s3.keys()
            .iter()
            .filter(|k| k.starts_with("plain/"))
            .any(|k| reveals(&s3.get(k), MARKER)),
        "the unencrypted copy should show the marker"
    );

    // A second sync uploads nothing.
    let out = ok(&mut sync("enc"));
    assert!(
        stdout(&out).contains("uploaded 0 file(s)"),
        "{}",
        output_text(&out)
    );

    // backups list says where each backup is.
    let list = |c: &TempCluster| {
        stdout(&ok(pgkeep_s3(c, &s3, "enc")
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["backups", "list"])))
    };
    let l = list(&c);
    assert!(
        l.lines()
            .any(|line| line.contains(&bundle) && line.ends_with("both")),
        "{l}"
    );

    // Create-only: a different file under the same name is compared and refused, the object
    // stays as it was.
    let before = s3.get(&bundle_key);
    let real = c.backups().join(&bundle);
    let aside = keys_dir.path().join("real-bundle");
    std::fs::rename(&real, &aside).unwrap();
    ok(pgkeep_s3(&c, &s3, "enc").args(["backup", "logical", "--no-prune"]));
    let second = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .find(|n| n.starts_with("nightly-"))
        .unwrap();
    std::fs::rename(c.backups().join(&second), &real).unwrap();
    fails(
        &mut sync("enc"),
        &[
            "already holds a different file",
            "never overwritten",
            &bundle,
        ],
    );
    assert_eq!(s3.get(&bundle_key), before);
    std::fs::remove_file(&real).unwrap();
    drop(aside);

    // The local backups are gone: backups list shows the off-site one, restore dump reads it.
    assert!(
        !pgkeep_testkit::file_names(&c.backups())
            .iter()
            .any(|n| n.starts_with("nightly-"))
    );
    let l = list(&c);
    assert!(
        l.lines()
            .any(|line| line.contains(&bundle) && line.ends_with("off-site")),
        "{l}"
    );
    c.psql("records", "drop table t");
    let restore = |id_file: &Path| {
        let mut cmd = pgkeep_s3(&c, &s3, "enc");
        cmd.env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .env("PGKEEP_OFFSITE_IDENTITY_FILE", id_file)
            .args(["restore", "dump", "--yes"]);
        cmd
    };
    // A wrong identity is named, with the recipient the object was made for.
    let (other_id, _) = keygen(keys_dir.path(), "other.key");
    fails(
        &mut restore(&other_id),
        &[other_id.to_str().unwrap(), &recipient, "cannot decrypt"],
    );
    // No identity at all says which setting is missing.
    fails(
        pgkeep_s3(&c, &s3, "enc")
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["restore", "dump", "--yes"]),
        &["PGKEEP_OFFSITE_IDENTITY_FILE", &recipient],
    );
    ok(&mut restore(&id_file));
    assert_eq!(
        c.psql("records", "select note from t where id = 1").trim(),
        MARKER
    );
    assert!(
        pgkeep_testkit::file_names(&c.backups().join("uploads")).is_empty(),
        "the downloaded copy is removed"
    );

    // backups verify --offsite reads the off-site copy through.
    let verify = || {
        let mut cmd = pgkeep_s3(&c, &s3, "enc");
        cmd.env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
            .args(["backups", "verify", "--offsite"]);
        cmd
    };
    let out = ok(&mut verify());
    assert!(
        stdout(&out).contains(&format!("ok      {bundle}")),
        "{}",
        output_text(&out)
    );

    // A flipped byte in the object: refused, nothing published.
    let mut damaged = before.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    s3.put(&bundle_key, &damaged);
    fails(&mut verify(), &[&format!("FAILED  {bundle}"), "damaged"]);
    c.psql("records", "drop table t");
    fails(&mut restore(&id_file), &["damaged", &bundle]);
    assert!(pgkeep_testkit::file_names(&c.backups().join("uploads")).is_empty());
    // A truncated object, likewise.
    s3.put(&bundle_key, &before[..before.len() - 100]);
    fails(&mut restore(&id_file), &["damaged", &bundle]);
    assert!(pgkeep_testkit::file_names(&c.backups().join("uploads")).is_empty());

    // wal fetch falls back to off-site when the local archive lost the segment.
    let seg = pgkeep_testkit::file_names(&c.wal_archive())
        .into_iter()
        .find(|n| n.ends_with(".zst"))
        .unwrap();
    let name = seg.trim_end_matches(".zst").to_owned();
    let dest_dir = tempfile::tempdir().unwrap();
    let pg_wal = dest_dir.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    ok(pgkeep_s3(&c, &s3, "enc")
        .args(["wal", "fetch", &name])
        .arg(pg_wal.join("local"))
        .args(["--sysid", &id]));
    let local_copy = std::fs::read(pg_wal.join("local")).unwrap();
    std::fs::remove_file(c.wal_archive().join(&seg)).unwrap();
    let fetch = |dest: &str| {
        let mut cmd = pgkeep_s3(&c, &s3, "enc");
        cmd.env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["wal", "fetch", &name])
            .arg(pg_wal.join(dest))
            .args(["--sysid", &id]);
        cmd
    };
    ok(&mut fetch("remote"));
    assert_eq!(std::fs::read(pg_wal.join("remote")).unwrap(), local_copy);
    // Not anywhere: exit 1, the normal end of recovery.
    let out = pgkeep_s3(&c, &s3, "enc")
        .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .args(["wal", "fetch", "0000000100000000000000FE"])
        .arg(pg_wal.join("missing"))
        .args(["--sysid", &id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
}

#[test]
fn a_server_frozen_mid_upload_shows_nothing_and_the_next_sync_completes() {
    let s3 = S3Server::start("pgkeep-frozen");
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    // Enough poorly compressible rows for a bundle of several multipart parts.
    c.psql(
        "records",
        "create table big as select g, md5(random()::text) || md5(random()::text) || md5(random()::text) as a \
         from generate_series(1, 400000) g",
    );
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    ok(pgkeep_s3(&c, &s3, "p").args(["backup", "logical", "--no-prune"]));
    let bundle = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .find(|n| n.starts_with("nightly-"))
        .unwrap();
    let size = std::fs::metadata(c.backups().join(&bundle)).unwrap().len();
    assert!(
        size > 2 * (8 << 20),
        "the bundle ({size} bytes) should need several parts"
    );
    let id = sysid(&c);
    let key = format!("{bundle}.age");

    // Freeze the server while a multipart upload is open, then kill sync (a pod that dies).
    let mut caught = false;
    for round in 0..5 {
        let prefix = format!("r{round}");
        let mut child = std::process::Command::new(pgkeep_bin())
            .envs(c.env())
            .envs(s3.env(&prefix))
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["offsite", "sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut open = false;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            if s3.open_uploads() > 0 {
                s3.freeze(true);
                open = true;
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        s3.freeze(false);
        let visible = s3
            .keys()
            .iter()
            .any(|k| k == &format!("{prefix}/{id}/backups/{key}"));
        if !open || visible {
            // The upload finished before it was caught open: inconclusive, try again.
            continue;
        }
        caught = true;
        assert!(s3.open_uploads() > 0);
        // The next sync completes, and what it uploaded restores.
        let out = ok(pgkeep_s3(&c, &s3, &prefix)
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["offsite", "sync"]));
        assert!(stdout(&out).contains("uploaded"), "{}", output_text(&out));
        assert!(
            s3.keys().contains(&format!("{prefix}/{id}/backups/{key}")),
            "{:?}",
            s3.keys()
        );
        let rows = c.psql(
            "records",
            "select count(*), md5(string_agg(a, ',' order by g)) from big",
        );
        ok(pgkeep_s3(&c, &s3, &prefix)
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
            .args(["restore", "dump", "--offsite", "--clean", "--yes"]));
        assert_eq!(
            c.psql(
                "records",
                "select count(*), md5(string_agg(a, ',' order by g)) from big"
            ),
            rows
        );
        break;
    }
    assert!(caught, "no round caught the upload open (5 tries)");
}

/// Where .ci/run extracts Debian's `age` package.
const AGE_CACHE: &str = "/var/cache/pgkeep-age/root/usr/bin/age";

/// The Go age CLI: `PGKEEP_TEST_AGE`, else Debian's `age` extracted by .ci/run, else `age` on
/// PATH.
fn age_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("PGKEEP_TEST_AGE").map(PathBuf::from) {
        assert!(
            p.is_file(),
            "PGKEEP_TEST_AGE={} is not a file; see .ci/run for how to extract Debian's age",
            p.display()
        );
        return p;
    }
    if Path::new(AGE_CACHE).is_file() {
        return PathBuf::from(AGE_CACHE);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("age"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    panic!(
        "the Go age CLI is needed for the interop test: extract Debian's package (no install) with \
         `mkdir -p /var/cache/pgkeep-age && cd /var/cache/pgkeep-age && apt-get download age && \
         dpkg -x age_*.deb root` (.ci/run does this), or set PGKEEP_TEST_AGE to an age binary"
    )
}

#[test]
fn the_age_cli_decrypts_an_uploaded_bundle() {
    let age = age_cli();
    let s3 = S3Server::start("pgkeep-interop");
    let c = cluster_with_marker();
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    let (_, escrow) = keygen(keys_dir.path(), "escrow.key");
    ok(pgkeep_s3(&c, &s3, "x").args(["backup", "logical", "--no-prune"]));
    let bundle = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .find(|n| n.starts_with("nightly-"))
        .unwrap();
    // Two recipients (rotation, escrow): either identity decrypts.
    ok(pgkeep_s3(&c, &s3, "x")
        .env(
            "PGKEEP_OFFSITE_RECIPIENTS",
            format!("{escrow}, {recipient}"),
        )
        .args(["offsite", "sync"]));
    let obj = keys_dir.path().join("object.age");
    std::fs::write(
        &obj,
        s3.get(&format!("x/{}/backups/{bundle}.age", sysid(&c))),
    )
    .unwrap();
    let out = keys_dir.path().join("decrypted");
    let res = std::process::Command::new(&age)
        .arg("-d")
        .arg("-i")
        .arg(&id_file)
        .arg("-o")
        .arg(&out)
        .arg(&obj)
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", output_text(&res));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(c.backups().join(&bundle)).unwrap()
    );
}

/// Remove everything inside `dir` (the directory itself stays, with its owner and mode).
fn empty_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn point_in_time_bootstrap_from_offsite_with_every_local_volume_emptied() {
    let s3 = S3Server::start("pgkeep-pitr");
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    c.psql(
        "records",
        "create table t (x int); insert into t select generate_series(1, 1000)",
    );
    // An older base backup keeps its WAL off-site (retention), but a restore from the newest
    // never reads what came before the newest's start: it stays there.
    ok(pgkeep_s3(&c, &s3, "p").args(["backup", "physical", "--no-prune"]));
    c.switch_wal_and_wait_archived();
    ok(pgkeep_s3(&c, &s3, "p").args(["backup", "physical", "--no-prune"]));
    c.psql(
        "records",
        "insert into t select generate_series(1001, 2000)",
    );
    let t = c.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(50));
    c.psql("records", "create table written_after_t (x int)");
    c.switch_wal_and_wait_archived();
    let names = pgkeep_testkit::file_names(&c.backups());
    let bases: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("basebackup-"))
        .collect();
    let bases = oldest_first(&bases);
    let start = backup_start_segment(&c, &bases[1]);
    assert!(backup_start_segment(&c, &bases[0]) < start);
    ok(pgkeep_s3(&c, &s3, "p")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .args(["offsite", "sync"]));
    // The drill proves the off-site copy restores (downloaded into a scratch directory that is
    // removed again; nothing local is touched).
    let local_before = pgkeep_testkit::file_names(&c.backups());
    let out = ok(pgkeep_s3(&c, &s3, "p")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
        .args(["drill", "--offsite", "--skip-logical"]));
    assert!(
        stdout(&out).contains("physical  drill  passed"),
        "{}",
        output_text(&out)
    );
    assert_eq!(pgkeep_testkit::file_names(&c.backups()), local_before);
    c.stop();

    // The disaster: data, WAL archive and backups volumes all empty.
    for d in [c.pgdata(), c.wal_archive(), c.backups()] {
        empty_dir(&d);
    }
    // ...and a new system (a fresh initdb after it) archives into the root now.
    let foreign = "000000010000000000000001";
    let seg = c.wal_archive().join(foreign);
    std::fs::write(&seg, pgkeep_testkit::wal_like(foreign, 16 << 20, 9)).unwrap();
    std::os::unix::fs::chown(&seg, Some(c.uid()), Some(c.gid())).unwrap();
    let out = ok(pgkeep_s3(&c, &s3, "p")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
        .args([
            "bootstrap",
            "basebackup",
            "--target-time",
            t.trim(),
            "--yes",
        ]));
    assert!(
        stdout(&out).contains("recovery ended at"),
        "{}",
        output_text(&out)
    );
    let older: Vec<String> = pgkeep_testkit::file_names(&c.wal_archive())
        .into_iter()
        .filter(|n| {
            let seg = n.strip_suffix(".zst").unwrap_or(n);
            seg.len() == 24 && seg[8..] < start[8..]
        })
        .collect();
    assert!(
        older.is_empty(),
        "segments before the backup's start {start} came back from off-site: {older:?}"
    );
    c.restart();
    assert_eq!(c.psql("records", "select count(*) from t").trim(), "2000");
    // The new system's WAL was moved aside, not lost.
    let superseded = c.wal_archive().join("superseded");
    assert!(
        pgkeep_testkit::file_names(&superseded)
            .iter()
            .any(|d| d.starts_with("7-") && superseded.join(d).join(foreign).is_file()),
        "{:?}",
        pgkeep_testkit::file_names(&superseded)
    );
    assert!(
        c.try_psql("records", "select 1 from written_after_t")
            .is_err(),
        "later writes are absent"
    );
}

/// Bundle names oldest first: by the time in the name, then the sequence within a minute
/// (`-1`, `-2`).
/// An incremental base backup restores from off-site alone: the bundles of its chain come back
/// with it. Needs 17+ for an incremental; on an older server `--incremental=auto` takes a full
/// one, and only that one comes back.
#[test]
fn an_incremental_restores_from_off_site_with_the_bundles_of_its_chain() {
    let s3 = S3Server::start("pgkeep-chain");
    let out = std::process::Command::new(pgkeep_testkit::pg_bin().join("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let major = pgkeep_engine::tools::parse_major(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut o = TempCluster::options().archive_command(&format!(
        "{} wal push --archive ../../wal-archive %p",
        pgkeep_bin().display()
    ));
    if major >= 17 {
        o = o.setting("summarize_wal", "on");
    }
    let c = o.start();
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    c.psql(
        "postgres",
        "create table t (x int); insert into t select generate_series(1, 100)",
    );
    ok(pgkeep_s3(&c, &s3, "c").args(["backup", "physical", "--no-prune"]));
    c.psql("postgres", "insert into t select generate_series(101, 200)");
    ok(pgkeep_s3(&c, &s3, "c").args(["backup", "physical", "--incremental=auto", "--no-prune"]));
    c.psql("postgres", "insert into t select generate_series(201, 300)");
    c.switch_wal_and_wait_archived();
    let names = pgkeep_testkit::file_names(&c.backups());
    let incremental = names.iter().any(|n| n.contains(".incr.bundle."));
    assert_eq!(incremental, major >= 17, "{names:?}");
    ok(pgkeep_s3(&c, &s3, "c")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .args(["offsite", "sync"]));
    c.stop();

    for d in [c.pgdata(), c.wal_archive(), c.backups()] {
        empty_dir(&d);
    }
    ok(pgkeep_s3(&c, &s3, "c")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
        .args(["bootstrap", "basebackup", "--yes"]));
    let back: Vec<String> = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with("basebackup-"))
        .collect();
    assert_eq!(back.len(), if incremental { 2 } else { 1 }, "{back:?}");
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from t").trim(), "300");
}

fn oldest_first(names: &[&String]) -> Vec<String> {
    let mut v: Vec<(pgkeep_engine::repo::BackupName, String)> = names
        .iter()
        .map(|n| (pgkeep_engine::repo::parse_name(n).unwrap(), (*n).clone()))
        .collect();
    v.sort_by_key(|(n, _)| (n.time, n.seq));
    v.into_iter().map(|(_, n)| n).collect()
}

/// The start segment a base backup needs, from the `.backup` file PostgreSQL archived for it.
fn backup_start_segment(c: &TempCluster, bundle: &str) -> String {
    let label = format!("LABEL: pgkeep {bundle}");
    for name in pgkeep_testkit::file_names(&c.wal_archive()) {
        if !name.ends_with(".backup") {
            continue;
        }
        let text = std::fs::read_to_string(c.wal_archive().join(&name)).unwrap();
        if text.lines().any(|l| l.trim() == label) {
            return name[..24].to_owned();
        }
    }
    panic!("no .backup file names {bundle}");
}

/// `offsite sync` applies `retention.offsite_*`: the newest N of each kind stay, the others are
/// deleted off-site (the local copies are untouched), WAL older than what the oldest kept base
/// backup needs is deleted, and that oldest kept base backup still restores from off-site alone.
#[test]
fn offsite_retention_keeps_the_newest_bundles_and_the_wal_the_oldest_kept_one_needs() {
    let s3 = S3Server::start("pgkeep-retention");
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    c.psql("records", "create table t (x int)");
    let keys_dir = tempfile::tempdir().unwrap();
    let (id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    let config = keys_dir.path().join("pgkeep.toml");
    std::fs::write(
        &config,
        "[retention]\noffsite_nightly = 2\noffsite_basebackups = 2\n",
    )
    .unwrap();
    let sync = || {
        ok(pgkeep_s3(&c, &s3, "r")
            .env("PGKEEP_CONFIG", &config)
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["offsite", "sync"]))
    };
    for round in 1..=3 {
        c.psql(
            "records",
            &format!("insert into t select generate_series(1, 1000) + {round} * 1000"),
        );
        ok(pgkeep_s3(&c, &s3, "r").args(["backup", "logical", "--no-prune"]));
        ok(pgkeep_s3(&c, &s3, "r").args(["backup", "physical", "--no-prune"]));
        c.switch_wal_and_wait_archived();
        let out = sync();
        assert!(
            stdout(&out).contains("off-site retention"),
            "{}",
            output_text(&out)
        );
    }
    let local = pgkeep_testkit::file_names(&c.backups());
    let bases: Vec<&String> = local
        .iter()
        .filter(|n| n.starts_with("basebackup-"))
        .collect();
    let nightlies: Vec<&String> = local.iter().filter(|n| n.starts_with("nightly-")).collect();
    assert_eq!(
        (bases.len(), nightlies.len()),
        (3, 3),
        "local untouched: {local:?}"
    );

    let id = sysid(&c);
    let keys = s3.keys();
    let stored = |prefix: &str| -> Vec<String> {
        keys.iter()
            .filter_map(|k| k.strip_prefix(&format!("r/{id}/backups/")))
            .filter(|n| n.starts_with(prefix))
            .map(|n| n.trim_end_matches(".age").to_owned())
            .collect()
    };
    let newest = |all: &[&String]| -> Vec<String> { oldest_first(all)[1..].to_vec() };
    let mut want_bases = newest(&bases);
    let mut got_bases = stored("basebackup-");
    want_bases.sort();
    got_bases.sort();
    assert_eq!(
        got_bases, want_bases,
        "the newest 2 base backups stay off-site"
    );
    let mut want_nightlies = newest(&nightlies);
    let mut got_nightlies = stored("nightly-");
    want_nightlies.sort();
    got_nightlies.sort();
    assert_eq!(
        got_nightlies, want_nightlies,
        "the newest 2 nightlies stay off-site"
    );

    // WAL: nothing before the oldest kept base backup's start segment; that segment stays.
    let oldest_kept = oldest_first(&want_bases.iter().collect::<Vec<_>>())[0].clone();
    let start = backup_start_segment(&c, &oldest_kept);
    let wal: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&format!("r/{id}/wal/")))
        .map(|n| n.to_owned())
        .collect();
    assert!(
        wal.iter()
            .filter(|n| !n.contains(".history"))
            .all(|n| n[8..24] >= start[8..24]),
        "off-site WAL before {start} was deleted: {wal:?}"
    );
    assert!(
        wal.iter().any(|n| n.starts_with(&start)),
        "the start segment {start} stays: {wal:?}"
    );
    let local_wal = pgkeep_testkit::file_names(&c.wal_archive());
    assert!(
        local_wal
            .iter()
            .any(|n| n.len() >= 24 && n[8..24] < start[8..24]),
        "older WAL is still local (only off-site is pruned): {local_wal:?}"
    );

    // The oldest kept base backup restores from off-site alone, with the pruned WAL.
    let want = c.psql("records", "select count(*) from t");
    c.stop();
    for d in [c.pgdata(), c.wal_archive(), c.backups()] {
        empty_dir(&d);
    }
    let out = ok(pgkeep_s3(&c, &s3, "r")
        .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
        .env("PGKEEP_OFFSITE_IDENTITY_FILE", &id_file)
        .args(["bootstrap", "basebackup", "--from", &oldest_kept, "--yes"]));
    assert!(
        stdout(&out).contains("recovery ended at"),
        "{}",
        output_text(&out)
    );
    c.restart();
    assert_eq!(c.psql("records", "select count(*) from t"), want);
}

/// One sample of `pgkeep metrics` output (`name` with its labels, as printed), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_backup_copies_its_bundle_off_site_at_once_and_metrics_show_the_followers_status() {
    let s3 = S3Server::start("pgkeep-status");
    let c = cluster_with_marker();
    let keys_dir = tempfile::tempdir().unwrap();
    let (_id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    let id = sysid(&c);
    let with_keys = |cmd: &mut Command| {
        cmd.env("PGKEEP_OFFSITE_RECIPIENTS", &recipient);
    };

    // The store cannot be reached: the backup is still taken, recorded and kept; the upload
    // waits for the follower.
    let mut cmd = pgkeep_s3(&c, &s3, "p");
    with_keys(&mut cmd);
    let out = ok(cmd
        .env("PGKEEP_OFFSITE_ENDPOINT", "http://127.0.0.1:1")
        .args(["backup", "logical", "--no-prune"]));
    assert!(
        output_text(&out).contains("copies it later"),
        "{}",
        output_text(&out)
    );
    let first = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .find(|n| n.starts_with("nightly-"))
        .expect("the backup was kept");
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());

    // Reachable: the new bundle is off-site when the backup returns, without any sync.
    let mut cmd = pgkeep_s3(&c, &s3, "p");
    with_keys(&mut cmd);
    ok(cmd.args(["backup", "logical", "--no-prune"]));
    let second = pgkeep_testkit::file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with("nightly-"))
        .find(|n| *n != first)
        .expect("a second bundle");
    assert_eq!(
        s3.keys(),
        vec![format!("p/{id}/backups/{second}.age")],
        "only the new bundle, encrypted, under its system"
    );

    // No follower round yet: the metrics say so, `status` names the problem.
    let metrics = |c: &TempCluster| stdout(&ok(pgkeep_s3(c, &s3, "p").arg("metrics")));
    let m = metrics(&c);
    assert_eq!(
        sample(&m, "pgkeep_offsite_last_sync_timestamp_seconds"),
        Some(0.0),
        "{m}"
    );
    let status = pgkeep_s3(&c, &s3, "p")
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        stdout(&status).contains("offsite_stale"),
        "{}",
        output_text(&status)
    );

    // A round: everything is off-site, the status file feeds the metrics.
    let before = jiff::Timestamp::now().as_second() as f64;
    let mut cmd = pgkeep_s3(&c, &s3, "p");
    with_keys(&mut cmd);
    ok(cmd.args(["offsite", "sync", "--no-prune"]));
    assert!(c.run_dir().join("pgkeep-offsite.json").is_file());
    let m = metrics(&c);
    let synced = sample(&m, "pgkeep_offsite_last_sync_timestamp_seconds").unwrap();
    assert!(synced >= before - 1.0, "{synced} < {before}\n{m}");
    assert_eq!(sample(&m, "pgkeep_offsite_lag_segments"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "pgkeep_offsite_backups{kind=\"logical\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgkeep_offsite_backups{kind=\"physical\"}"),
        Some(0.0),
        "{m}"
    );

    // WAL archived after the round is lag until the next one.
    let archived = |c: &TempCluster| {
        c.psql("postgres", "select archived_count from pg_stat_archiver")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let was = archived(&c);
    c.psql("records", "insert into t values (2, 'after the round')");
    c.psql("records", "select pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(120);
    while archived(&c) == was {
        assert!(
            Instant::now() < deadline,
            "the switched segment was not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = metrics(&c);
    assert!(
        sample(&m, "pgkeep_offsite_lag_segments").unwrap() >= 1.0,
        "{m}"
    );
    let mut cmd = pgkeep_s3(&c, &s3, "p");
    with_keys(&mut cmd);
    ok(cmd.args(["offsite", "sync", "--no-prune"]));
    assert_eq!(
        sample(&metrics(&c), "pgkeep_offsite_lag_segments"),
        Some(0.0)
    );
}

/// The follower is PID 1 of its container: it must stop on SIGTERM by itself (the kernel does
/// not stop PID 1 on a signal it does not handle, and the kubelet would wait out the grace
/// period), between rounds and in the middle of one.
#[test]
fn the_follower_stops_on_sigterm_between_and_during_rounds() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let s3 = S3Server::start("pgkeep-follow");
    let c = cluster_with_marker();
    let keys_dir = tempfile::tempdir().unwrap();
    let (_id_file, recipient) = keygen(keys_dir.path(), "offsite.key");
    let status = c.run_dir().join("pgkeep-offsite.json");
    let follow = |frozen: bool| {
        let _ = std::fs::remove_file(&status);
        if frozen {
            s3.freeze(true);
        }
        let mut child = pgkeep_testkit::pgkeep_command(&c)
            .envs(s3.env("f"))
            .env("PGKEEP_OFFSITE_RECIPIENTS", &recipient)
            .args(["offsite", "sync", "--follow", "--interval", "3600"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if frozen {
            // A round hangs on the frozen server.
            std::thread::sleep(Duration::from_secs(2));
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !status.is_file() {
                assert!(Instant::now() < deadline, "no round completed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "still following");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the follower ignored SIGTERM (frozen: {frozen})");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        s3.freeze(false);
        assert!(st.success(), "{st:?}");
    };
    follow(false);
    follow(true);
}
