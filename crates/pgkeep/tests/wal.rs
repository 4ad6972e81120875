//! `pgkeep wal push` / `wal fetch` against a real PostgreSQL whose archive_command is pgkeep.

use std::path::Path;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use pgkeep_testkit::{archiving_cluster, noise, pgkeep, pgkeep_bin, wal_like};

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn postgres_archives_through_pgkeep_and_pushes_are_idempotent_or_refused() {
    let c = archiving_cluster(&pgkeep_bin());
    let name = c.switch_wal_and_wait_archived();
    let archived = c.wal_archive().join(format!("{name}.zst"));
    assert!(archived.is_file(), "compressed with zstd by default");
    assert!(
        std::fs::metadata(&archived).unwrap().len() < 16 << 20,
        "and smaller than the segment"
    );
    assert_eq!(
        c.psql("postgres", "select failed_count from pg_stat_archiver"),
        "0"
    );

    // fetch gives back the whole segment.
    let work = tempfile::tempdir().unwrap();
    let fetched = work.path().join("RECOVERYXLOG");
    pgkeep(&c)
        .args(["wal", "fetch", &name])
        .arg(&fetched)
        .assert()
        .success();
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 16 << 20);

    // Pushing the same content again (PostgreSQL retrying after a crash) succeeds, changes nothing.
    let again = work.path().join(&name);
    std::fs::copy(&fetched, &again).unwrap();
    let before = listing(&c.wal_archive());
    pgkeep(&c)
        .args(["wal", "push"])
        .arg(&again)
        .assert()
        .success();
    assert_eq!(listing(&c.wal_archive()), before);

    // Different content under the same name: refused loudly, archive unchanged.
    let mut bytes = std::fs::read(&again).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&again, &bytes).unwrap();
    let out = pgkeep(&c)
        .args(["wal", "push"])
        .arg(&again)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{name}.zst")), "{stderr}");
    assert!(stderr.contains("DIFFERENT"), "{stderr}");
    assert_eq!(listing(&c.wal_archive()), before);
}

/// The hidden partial files of pushes of `name` (each writer has its own).
fn partials(archive: &std::path::Path, name: &str) -> Vec<String> {
    std::fs::read_dir(archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.zst~")) && n.ends_with(".partial"))
        .collect()
}

#[test]
fn a_killed_push_leaves_no_truncated_segment_and_the_next_push_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let pg_wal = t.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let name = "000000010000000000000042";
    let seg = pg_wal.join(name);
    std::fs::write(&seg, wal_like(name, 64 << 20, 7)).unwrap();

    // zstd level 19 on 64 MiB of noise takes many seconds: kill it half-way.
    let mut child = std::process::Command::new(pgkeep_bin())
        .args(["wal", "push", "--zstd-level", "19", "--archive"])
        .arg(&archive)
        .arg(&seg)
        .env("PGKEEP_CONFIG", "/dev/null")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while partials(&archive, name).is_empty() {
        assert!(Instant::now() < deadline, "push never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before it finished");
    let names: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with('.')),
        "only a hidden partial file may remain: {names:?}"
    );

    let mut cmd = Command::cargo_bin("pgkeep").unwrap();
    cmd.env("PGKEEP_CONFIG", "/dev/null")
        .args(["wal", "push", "--archive"])
        .arg(&archive)
        .arg(&seg)
        .assert()
        .success();
    let names: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names, vec![format!("{name}.zst")]);
    // The killed push's own partial file is swept once its writer is gone.
    assert_eq!(
        pgkeep_engine::fsutil::remove_stale_partials(&archive).len(),
        1
    );
    assert!(partials(&archive, name).is_empty());
    let out = t.path().join("out");
    let mut cmd = Command::cargo_bin("pgkeep").unwrap();
    cmd.env("PGKEEP_CONFIG", "/dev/null")
        .args(["wal", "fetch", "--archive"])
        .arg(&archive)
        .arg(name)
        .arg(&out)
        .assert()
        .success();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&seg).unwrap());
}

#[test]
fn fetch_reads_plain_cp_copies_misses_quietly_and_refuses_damaged_files() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    // What the seed's `cp %p /wal-archive/%f` archive_command leaves behind.
    let plain = wal_like("000000010000000000000005", 16 << 20, 3);
    std::fs::write(archive.join("000000010000000000000005"), &plain).unwrap();
    std::fs::write(
        archive.join("00000002.history"),
        "1\t0/5000000\tbefore 2026\n",
    )
    .unwrap();
    let fetch = |name: &str, dest: &Path| {
        let mut cmd = Command::cargo_bin("pgkeep").unwrap();
        cmd.env("PGKEEP_CONFIG", "/dev/null")
            .args(["wal", "fetch", "--archive"])
            .arg(&archive)
            .arg(name)
            .arg(dest)
            .output()
            .unwrap()
    };
    let dest = t.path().join("RECOVERYXLOG");
    let out = fetch("000000010000000000000005", &dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&dest).unwrap() == plain);
    let out = fetch("00000002.history", &t.path().join("RECOVERYHISTORY"));
    assert!(out.status.success());

    // Missing: exit 1, nothing on stderr, quickly (it happens at the end of every recovery).
    let started = Instant::now();
    let out = fetch("000000010000000000000006", &t.path().join("nothing"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!t.path().join("nothing").exists());

    // A truncated copy must stop recovery (exit > 125), never look like the end of the WAL.
    std::fs::write(archive.join("000000010000000000000007"), &plain[..4096]).unwrap();
    let out = fetch("000000010000000000000007", &t.path().join("bad"));
    assert_eq!(out.status.code(), Some(126));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("000000010000000000000007"), "{stderr}");
    assert!(!t.path().join("bad").exists());
}

#[test]
fn push_stores_as_the_wal_settings_say_and_flags_win() {
    let t = tempfile::tempdir().unwrap();
    let seg = t.path().join("000000010000000000000007");
    std::fs::write(&seg, noise(1 << 20, 3)).unwrap();
    let push = |dir: &str, env: &[(&str, &str)], flags: &[&str]| {
        let archive = t.path().join(dir);
        std::fs::create_dir(&archive).unwrap();
        let mut cmd = Command::cargo_bin("pgkeep").unwrap();
        cmd.env("PGKEEP_CONFIG", "/dev/null")
            .envs(env.iter().copied())
            .args(["wal", "push", "--archive"])
            .arg(&archive)
            .args(flags)
            .arg(&seg);
        let out = cmd.output().unwrap();
        (out, pgkeep_testkit::file_names(&archive))
    };
    let (out, names) = push("gz", &[("PGKEEP_WAL_COMPRESS", "gzip")], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(names, ["000000010000000000000007.gz"]);
    let (out, names) = push(
        "flag",
        &[("PGKEEP_WAL_COMPRESS", "gzip")],
        &["--compress", "none"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(names, ["000000010000000000000007"]);
    let (out, names) = push("bad", &[("PGKEEP_WAL_ZSTD_LEVEL", "42")], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wal.zstd_level"), "{stderr}");
    assert!(names.is_empty(), "nothing archived: {names:?}");
    let (out, names) = push("badflag", &[], &["--zstd-level", "-9"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("-9"));
    assert!(names.is_empty(), "nothing archived: {names:?}");
}

/// A segment that does not belong where its name puts it (zero-filled, another segment's
/// content, another system's) stops recovery (126), never looks like the end of the WAL; the
/// system is `--sysid`, else the one in pg_control of the data directory %p lies in.
#[test]
fn fetch_refuses_segments_that_do_not_belong_with_126() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let good = "000000010000000000000009";
    std::fs::write(archive.join(good), wal_like(good, 16 << 20, 5)).unwrap();
    std::fs::write(
        archive.join("00000001000000000000000A"),
        vec![0u8; 16 << 20],
    )
    .unwrap();
    std::fs::write(
        archive.join("00000001000000000000000B"),
        wal_like(good, 16 << 20, 6),
    )
    .unwrap();
    // A data directory of system 7 and one of system 8.
    let pgdata = |sys: u64| {
        let d = t.path().join(format!("data{sys}"));
        std::fs::create_dir_all(d.join("global")).unwrap();
        std::fs::create_dir_all(d.join("pg_wal")).unwrap();
        let mut control = sys.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(d.join("global/pg_control"), control).unwrap();
        std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
        d
    };
    let (d7, d8) = (pgdata(7), pgdata(8));
    let fetch = |name: &str, cwd: &Path, flags: &[&str]| {
        let mut cmd = Command::cargo_bin("pgkeep").unwrap();
        cmd.env("PGKEEP_CONFIG", "/dev/null")
            .current_dir(cwd)
            .args(["wal", "fetch", "--archive"])
            .arg(&archive)
            .args(flags)
            .arg(name)
            .arg("pg_wal/RECOVERYXLOG")
            .output()
            .unwrap()
    };
    let out = fetch(good, &d7, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: &[(&str, &Path, &[&str], &str)] = &[
        ("00000001000000000000000A", &d7, &[], "all zeros"),
        (
            "00000001000000000000000B",
            &d7,
            &[],
            "WAL location 0/9000000",
        ),
        (good, &d8, &[], "database system 7, not of system 8"),
        (good, &d7, &["--sysid", "9"], "not of system 9"),
    ];
    for (name, dir, flags, says) in cases {
        std::fs::remove_file(dir.join("pg_wal/RECOVERYXLOG")).ok();
        let out = fetch(name, dir, flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(126), "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
        assert!(!dir.join("pg_wal/RECOVERYXLOG").exists(), "{name}");
    }
}
