//! Kills and concurrency, with real processes and real signals: kill -9 and SIGTERM of pgkeep
//! while its tools run, and two writers of one WAL segment. After each: nothing partial under a
//! final name, no child process left running, and a rerun succeeds.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgkeep_testkit::{
    TempCluster, archiving_cluster, bootstrap_staging_exists, file_names, output_text, pgkeep,
    pgkeep_bin, wait_while_running, wal_like,
};

fn spawn_pgkeep(c: &TempCluster, args: &[&str]) -> Child {
    std::process::Command::new(pgkeep_bin())
        .envs(c.env())
        .env("PGKEEP_DATABASE", "records")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One process as /proc shows it.
struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    cmdline: String,
}

/// Every live (not zombie) process.
fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').unwrap_or(0) + 1..close].to_owned();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("");
        let ppid = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid,
            comm,
            cmdline,
        });
    }
    out
}

/// Wait until `parent` runs a child called `comm`; its PID, or None when `parent` ended first.
fn wait_for_child(parent: &mut Child, comm: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = processes()
            .into_iter()
            .find(|p| p.ppid == parent.id() as i32 && p.comm == comm)
        {
            return Some(p.pid);
        }
        if parent.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "{comm} never started");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether process `pid` is stopped (state T), not running, gone or a zombie.
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let close = stat.rfind(')')?;
            stat[close + 1..]
                .split_whitespace()
                .next()
                .map(|st| st == "T")
        })
        .unwrap_or(false)
}

/// Processes whose command line mentions `needle`, after giving the kernel a moment to deliver
/// the parent-death signals.
fn survivors(needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(needle))
            .map(|p| format!("{} {}", p.pid, p.cmdline))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

/// Kill pgkeep with `sig` while its tool `comm` is frozen mid-run (SIGSTOP, so the moment is
/// exact), and check that the tool does not outlive it. A tool can finish before it is caught
/// (small data, a fast machine): that round proves nothing, so `after_miss` undoes what the
/// finished run published and the run starts again.
fn kill_while_running(
    spawn: &dyn Fn() -> Child,
    comm: &str,
    sig: Signal,
    needle: &str,
    after_miss: &dyn Fn(),
) {
    for _ in 0..20 {
        let mut child = spawn();
        let caught = wait_for_child(&mut child, comm).filter(|&tool| {
            kill(Pid::from_raw(tool), Signal::SIGSTOP).is_ok() && {
                // A zombie takes the signal too; only a stopped tool is caught mid-run.
                std::thread::sleep(Duration::from_millis(20));
                is_stopped(tool)
            }
        });
        if caught.is_none() {
            let _ = child.wait();
            after_miss();
            continue;
        }
        signal(child.id() as i32, sig);
        let status = child.wait().unwrap();
        assert!(!status.success(), "pgkeep was killed by {sig}");
        let left = survivors(needle);
        // Leave nothing behind for the rest of the suite, whatever the verdict.
        for l in &left {
            if let Some(pid) = l.split(' ').next().and_then(|p| p.parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        assert!(
            left.is_empty(),
            "{comm} outlived pgkeep killed by {sig}: {left:?}"
        );
        return;
    }
    panic!("{comm} finished before it could be caught, 20 times");
}

/// Remove the bundles named `prefix*` a run that was not caught published.
fn remove_published(dir: &Path, prefix: &str) {
    for n in file_names(dir) {
        if n.starts_with(prefix) {
            std::fs::remove_file(dir.join(n)).unwrap();
        }
    }
}

/// Directory entries less the verification results retention remembers (`.pgkeep-verified.json`).
/// The names without the verification catalog and the result records' directory (every backup
/// run, whatever its outcome, leaves a record there).
fn without_catalog(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| n != pgkeep_engine::catalog::VERIFIED_FILE && n != pgkeep_engine::results::DIR)
        .collect()
}

/// The names that are not hidden, without the result records' directory.
fn published(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && n != pgkeep_engine::results::DIR)
        .collect()
}

fn records_cluster() -> TempCluster {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        "create table big as select g as id, md5(g::text) as t from generate_series(1, 200000) g",
    );
    c
}

#[test]
fn killed_logical_backup_takes_pg_dump_with_it_and_the_rerun_succeeds() {
    let c = records_cluster();
    let backups = c.backups().display().to_string();
    for sig in [Signal::SIGKILL, Signal::SIGTERM] {
        kill_while_running(
            &|| spawn_pgkeep(&c, &["backup", "logical", "-j", "2", "--no-prune"]),
            "pg_dump",
            sig,
            &backups,
            &|| remove_published(&c.backups(), "nightly-"),
        );
        assert!(
            published(&c.backups()).is_empty(),
            "nothing under a final name after {sig}: {:?}",
            file_names(&c.backups())
        );
    }
    let out = pgkeep(&c).args(["backup", "logical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let left = without_catalog(file_names(&c.backups()));
    assert_eq!(left.len(), 1, "the rerun cleaned up: {left:?}");
    assert!(left[0].starts_with("nightly-"), "{left:?}");
}

#[test]
fn killed_physical_backup_takes_pg_basebackup_with_it_and_its_partial_goes_at_the_next_run() {
    let c = records_cluster();
    for sig in [Signal::SIGKILL, Signal::SIGTERM] {
        kill_while_running(
            &|| spawn_pgkeep(&c, &["backup", "physical", "--no-prune"]),
            "pg_basebackup",
            sig,
            "pgkeep basebackup-",
            &|| remove_published(&c.backups(), "basebackup-"),
        );
        assert!(
            published(&c.backups()).is_empty(),
            "nothing under a final name after {sig}: {:?}",
            file_names(&c.backups())
        );
    }
    let out = pgkeep(&c).args(["backup", "physical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    // The killed runs' partial bundles are gone at once (their writers are dead), not after
    // a quarter of an hour.
    let left = without_catalog(file_names(&c.backups()));
    assert_eq!(left.len(), 1, "the rerun cleaned up: {left:?}");
    assert!(left[0].starts_with("basebackup-"), "{left:?}");
}

#[test]
fn killed_restore_takes_pg_restore_with_it_and_the_rerun_succeeds() {
    let c = records_cluster();
    let out = pgkeep(&c).args(["backup", "logical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let want = c.psql("records", "select count(*), sum(id) from big");
    let backups = c.backups().display().to_string();
    for sig in [Signal::SIGKILL, Signal::SIGTERM] {
        kill_while_running(
            &|| spawn_pgkeep(&c, &["restore", "dump", "--clean", "--yes"]),
            "pg_restore",
            sig,
            &backups,
            &|| {},
        );
    }
    let out = pgkeep(&c)
        .args(["restore", "dump", "--clean", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.psql("records", "select count(*), sum(id) from big"), want);
    let left = file_names(&c.backups());
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".staging") && !n.ends_with(".partial")),
        "no staging left: {left:?}"
    );
}

/// 16 MiB that zstd cannot shrink (so level 19 takes seconds), headed like the segment its
/// file name says, so `wal fetch` takes it as that segment.
fn noise_segment(path: &Path) -> Vec<u8> {
    let name = path.file_name().unwrap().to_str().unwrap();
    let data = wal_like(name, 16 << 20, 0x9E37_79B9_7F4A_7C15);
    std::fs::write(path, &data).unwrap();
    data
}

fn push(archive: &Path, seg: &Path, level: &str) -> Child {
    std::process::Command::new(pgkeep_bin())
        .args(["wal", "push", "--zstd-level", level, "--archive"])
        .arg(archive)
        .arg(seg)
        .env("PGKEEP_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn partials(archive: &Path) -> Vec<String> {
    file_names(archive)
        .into_iter()
        .filter(|n| n.starts_with('.') && n.ends_with(".partial"))
        .collect()
}

#[test]
fn concurrent_pushes_of_one_segment_never_publish_a_truncated_copy() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let name = "000000010000000000000042";
    let seg = t.path().join(name);
    let original = noise_segment(&seg);

    // The first push starts writing; a second push of the same segment (a retried
    // archive_command, a second pod) starts writing too and is frozen, then killed, while the
    // first one finishes.
    let mut first = push(&archive, &seg, "19");
    let deadline = Instant::now() + Duration::from_secs(30);
    while partials(&archive).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first push never started writing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut second = push(&archive, &seg, "19");
    let left = deadline.saturating_duration_since(Instant::now());
    wait_while_running(&mut first, "the second push started writing", left, || {
        partials(&archive).len() >= 2
    });
    signal(second.id() as i32, Signal::SIGSTOP);
    let out = first.wait_with_output().unwrap();
    signal(second.id() as i32, Signal::SIGKILL);
    second.wait().unwrap();
    assert!(
        out.status.success(),
        "the first push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Exit 0 means the archive holds the whole segment.
    let fetched = t.path().join("fetched");
    let mut fetch = Command::cargo_bin("pgkeep").unwrap();
    fetch
        .env("PGKEEP_CONFIG", "/dev/null")
        .args(["wal", "fetch", "--archive"])
        .arg(&archive)
        .arg(name)
        .arg(&fetched)
        .assert()
        .success();
    assert!(
        std::fs::read(&fetched).unwrap() == original,
        "the archived copy is the segment, byte for byte"
    );
    // PostgreSQL retries the killed one: accepted as already archived.
    let retry = push(&archive, &seg, "1").wait_with_output().unwrap();
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert_eq!(published(&archive), vec![format!("{name}.zst")]);
    // The killed writer's partial file goes with the next sweep, the archived copy stays.
    assert_eq!(
        pgkeep_engine::fsutil::remove_stale_partials(&archive).len(),
        1
    );
    assert_eq!(file_names(&archive), vec![format!("{name}.zst")]);
}

#[test]
fn the_loser_of_a_push_race_with_different_content_is_refused_and_names_the_cause() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let name = "000000010000000000000043";
    let seg = t.path().join(name);
    noise_segment(&seg);
    let other_dir = t.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = other_dir.join(name);
    let mut data = std::fs::read(&seg).unwrap();
    data[100_000] ^= 0xff;
    std::fs::write(&other, &data).unwrap();
    let a = push(&archive, &seg, "19");
    let b = push(&archive, &other, "19");
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // Exactly one of the two wins; the other is told about DIFFERENT content, never a
    // file-system error from a partial file that another writer removed.
    assert!(
        oa.status.success() != ob.status.success(),
        "{} / {}",
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr)
    );
    let loser = if oa.status.success() { &ob } else { &oa };
    let text = String::from_utf8_lossy(&loser.stderr);
    assert!(text.contains("DIFFERENT content"), "{text}");
    assert!(!text.contains("No such file"), "{text}");
    assert!(partials(&archive).is_empty(), "{:?}", file_names(&archive));
}

#[test]
fn two_logical_backups_at_once_both_land_under_their_own_names() {
    let c = records_cluster();
    let runs: Vec<Child> = (0..2)
        .map(|_| {
            std::process::Command::new(pgkeep_bin())
                .envs(c.env())
                .env("PGKEEP_DATABASE", "records")
                .args(["backup", "logical"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let names = published(&c.backups());
    assert_eq!(names.len(), 2, "two bundles: {names:?}");
    assert_ne!(names[0], names[1]);
    let out = pgkeep(&c).args(["backups", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let left = file_names(&c.backups());
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".staging") && !n.ends_with(".partial")),
        "{left:?}"
    );
}

#[test]
fn a_push_stopped_by_sigterm_publishes_nothing_and_the_retry_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let name = "000000010000000000000044";
    let seg = t.path().join(name);
    let original = noise_segment(&seg);
    let mut p = push(&archive, &seg, "19");
    let deadline = Instant::now() + Duration::from_secs(30);
    while partials(&archive).is_empty() {
        assert!(Instant::now() < deadline, "the push never started writing");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(p.id() as i32, Signal::SIGTERM);
    let status = p.wait().unwrap();
    assert!(!status.success(), "stopped by SIGTERM");
    assert!(
        published(&archive).is_empty(),
        "nothing under a final name: {:?}",
        file_names(&archive)
    );
    // PostgreSQL retries: the segment lands whole.
    let retry = push(&archive, &seg, "1").wait_with_output().unwrap();
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let fetched = t.path().join("fetched");
    Command::cargo_bin("pgkeep")
        .unwrap()
        .env("PGKEEP_CONFIG", "/dev/null")
        .args(["wal", "fetch", "--archive"])
        .arg(&archive)
        .arg(name)
        .arg(&fetched)
        .assert()
        .success();
    assert!(std::fs::read(&fetched).unwrap() == original);
}

#[test]
fn a_bootstrap_stopped_by_sigterm_mid_extraction_leaves_the_old_database_whole() {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql(
        "postgres",
        "create table kept(x text); \
         insert into kept select repeat('x', 400) || g from generate_series(1, 100000) g",
    );
    let out = pgkeep(&c).args(["backup", "physical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    c.psql("postgres", "insert into kept values ('after the backup')");
    let count = c.psql("postgres", "select count(*) from kept");
    c.switch_wal_and_wait_archived();
    c.stop();

    let mut child = spawn_pgkeep(&c, &["bootstrap", "basebackup", "--yes"]);
    let pid = child.id();
    wait_while_running(
        &mut child,
        "the bootstrap extracted",
        Duration::from_secs(120),
        || bootstrap_staging_exists(&c.pgroot(), pid),
    );
    signal(child.id() as i32, Signal::SIGTERM);
    assert!(!child.wait().unwrap().success(), "stopped by SIGTERM");
    // The bundle is unpacked and verified beside PGDATA before PGDATA is given up: stopped
    // there, PGDATA is the old database, whole (not marked as an unfinished bootstrap), and no
    // server runs; the rerun cleans up and recovers every row.
    assert!(
        !c.pgroot().join(pgkeep_engine::bootmark::FILE_NAME).exists(),
        "PGDATA was never given up"
    );
    assert!(
        !c.pgdata().join("postmaster.pid").exists(),
        "no server runs"
    );
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from kept"), count);
    c.stop();
    let out = pgkeep(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from kept"), count);
    let left: Vec<String> = file_names(&c.pgroot())
        .into_iter()
        .filter(|n| n.starts_with(".pgkeep-bootstrap-"))
        .collect();
    assert!(
        left.is_empty(),
        "the stopped run's staging is gone: {left:?}"
    );
}

/// Two bootstraps at once: the second is refused before it changes anything (the first holds
/// the data volume's lock), and the first finishes with every row.
#[test]
fn a_second_bootstrap_while_one_runs_is_refused_and_changes_nothing() {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql(
        "postgres",
        "create table kept(x text); \
         insert into kept select repeat('x', 400) || g from generate_series(1, 50000) g",
    );
    let out = pgkeep(&c).args(["backup", "physical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let count = c.psql("postgres", "select count(*) from kept");
    c.switch_wal_and_wait_archived();
    c.stop();

    // The first one, frozen (SIGSTOP) once it unpacks beside PGDATA: it holds the lock then.
    let mut first = spawn_pgkeep(&c, &["bootstrap", "basebackup", "--yes"]);
    let pid = first.id();
    wait_while_running(
        &mut first,
        "the first bootstrap unpacked",
        Duration::from_secs(120),
        || bootstrap_staging_exists(&c.pgroot(), pid),
    );
    signal(first.id() as i32, Signal::SIGSTOP);
    let before = file_names(&c.pgdata());
    let second = pgkeep(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .output()
        .unwrap();
    let text = output_text(&second);
    assert_eq!(second.status.code(), Some(3), "{text}");
    assert!(text.contains("another bootstrap is running"), "{text}");
    assert_eq!(
        file_names(&c.pgdata()),
        before,
        "the second changed nothing"
    );
    signal(first.id() as i32, Signal::SIGCONT);
    assert!(
        first.wait().unwrap().success(),
        "the first bootstrap finishes"
    );
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from kept"), count);
}

/// SIGKILL or SIGTERM (alternating: odd points SIGKILL, even ones SIGTERM) of pgkeep at `points`
/// moments spread evenly over a normal run of `args` (measured first), so every step is hit, not
/// only the one where a tool runs: writing and fsyncing the bundle, the rename, verification,
/// retention. After each kill: no child outlives pgkeep
/// (`needle` in a command line), and `check` holds; `reset` undoes what a run that finished
/// before its kill published. Returns how many kills landed before the run would have ended.
fn kill_sweep(
    c: &TempCluster,
    args: &[&str],
    points: u32,
    needle: &str,
    check: &dyn Fn(u32),
    reset: &dyn Fn(),
) -> u32 {
    let started = Instant::now();
    let out = pgkeep(c).args(args).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let whole = started.elapsed();
    reset();
    let mut landed = 0;
    for k in 1..=points {
        let mut child = spawn_pgkeep(c, args);
        std::thread::sleep(whole * k / (points + 1));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            let sig = if k % 2 == 1 {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            signal(child.id() as i32, sig);
            landed += 1;
        }
        let _ = child.wait();
        let left = survivors(needle);
        for l in &left {
            if let Some(pid) = l.split(' ').next().and_then(|p| p.parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        assert!(
            left.is_empty(),
            "a child outlived pgkeep killed at {k}/{} of {args:?}: {left:?}",
            points + 1
        );
        check(k);
        if !killed {
            reset();
        }
    }
    landed
}

/// Every file under a final name in the backups directory verifies (none at all is fine).
fn published_bundles_verify(c: &TempCluster, at: u32) {
    if file_names(&c.backups())
        .iter()
        .all(|n| !(n.starts_with("nightly-") || n.starts_with("basebackup-")))
    {
        return;
    }
    let out = pgkeep(c).args(["backups", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "after a kill at point {at}, a published bundle does not verify: {}\n{:?}",
        output_text(&out),
        file_names(&c.backups())
    );
}

/// A backup (`kind`: logical or physical) SIGKILLed at 8 moments of its run: after each, every
/// published bundle verifies; the rerun succeeds and sweeps the killed runs' partial files.
/// Children are found by `needle` in their command line (default: the backups directory).
fn backup_killed_at_any_step(kind: &str, needle: Option<&str>) {
    let c = records_cluster();
    let prefix = if kind == "logical" {
        "nightly-"
    } else {
        "basebackup-"
    };
    let backups = c.backups().display().to_string();
    let landed = kill_sweep(
        &c,
        &["backup", kind, "--no-prune"],
        8,
        needle.unwrap_or(&backups),
        &|at| published_bundles_verify(&c, at),
        &|| remove_published(&c.backups(), prefix),
    );
    assert!(landed >= 4, "only {landed} of 8 kills landed mid-run");
    let out = pgkeep(&c).args(["backup", kind]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    published_bundles_verify(&c, 0);
    assert!(
        file_names(&c.backups())
            .iter()
            .all(|n| !n.ends_with(".partial")),
        "the rerun swept the killed runs' partial files: {:?}",
        file_names(&c.backups())
    );
}

#[test]
fn a_logical_backup_killed_at_any_step_publishes_nothing_damaged_and_the_rerun_succeeds() {
    backup_killed_at_any_step("logical", None);
}

#[test]
fn a_physical_backup_killed_at_any_step_publishes_nothing_damaged_and_the_rerun_succeeds() {
    backup_killed_at_any_step("physical", Some("pgkeep basebackup-"));
}

/// `restore dump --clean` killed at any step (verifying the bundle, restoring into the scratch
/// database, checking it, swapping it in, dropping the old one): the database is always whole
/// (the old content or the restored one), and the rerun succeeds.
#[test]
fn a_restore_killed_at_any_step_never_leaves_the_database_missing_or_partial() {
    let c = records_cluster();
    let out = pgkeep(&c).args(["backup", "logical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let want = c.psql("records", "select count(*), sum(id) from big");
    let backups = c.backups().display().to_string();
    let landed = kill_sweep(
        &c,
        &["restore", "dump", "--clean", "--yes"],
        8,
        &backups,
        &|at| {
            assert_eq!(
                c.try_psql("records", "select count(*), sum(id) from big"),
                Ok(want.clone()),
                "after a kill at point {at} the database is not whole"
            )
        },
        &|| {},
    );
    assert!(landed >= 4, "only {landed} of 8 kills landed mid-run");
    let out = pgkeep(&c)
        .args(["restore", "dump", "--clean", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.psql("records", "select count(*), sum(id) from big"), want);
    let dbs = c.psql(
        "postgres",
        "select string_agg(datname, ',' order by datname) from pg_database",
    );
    // (A kill between the swap and the drop of the replaced database can leave it as
    // `records__pgkeep_old_*`: data the user meant to drop, never data lost.)
    assert!(
        !dbs.contains(pgkeep_engine::logical::SCRATCH_SUFFIX),
        "no scratch database left after the rerun: {dbs}"
    );
}

/// The swap step of `restore dump --clean`, pinned down: a session on the database that cannot
/// end (its backend frozen with SIGSTOP, so pg_terminate_backend waits for it) holds the swap
/// after the old database was closed to new connections; pgkeep is killed right then. Once
/// the session goes away, the database must be open and whole: a killed restore never leaves
/// it closed with nothing swapped in.
#[test]
fn a_restore_killed_while_swapping_never_leaves_the_database_closed() {
    let c = records_cluster();
    let out = pgkeep(&c).args(["backup", "logical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let want = c.psql("records", "select count(*), sum(id) from big");
    let mut holder = c
        .server_cmd("psql")
        .args(["-X", "-d", "records", "-c", "select pg_sleep(600)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let backend: i32 = loop {
        let pid = c.psql(
            "postgres",
            "select coalesce(max(pid), 0) from pg_stat_activity \
             where datname = 'records' and query like 'select pg_sleep%'",
        );
        if pid != "0" {
            break pid.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the holding session never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(backend, Signal::SIGSTOP);
    let log = c.root().join("restore.log");
    let mut child = std::process::Command::new(pgkeep_bin())
        .envs(c.env())
        .env("PGKEEP_DATABASE", "records")
        .args(["restore", "dump", "--clean", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    // The swap has begun once the old database is closed to new connections (what earlier
    // versions did first) or the swap statement runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let swapping = c.psql(
            "postgres",
            "select (select not datallowconn from pg_database where datname = 'records') \
             or exists (select 1 from pg_stat_activity where query like 'do $pgkeep_swap$%')",
        );
        if swapping == "t" {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "restore ended before its swap was held:\n{}",
            log()
        );
        assert!(
            Instant::now() < deadline,
            "the swap never started:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id() as i32, Signal::SIGKILL);
    let _ = child.wait();
    signal(backend, Signal::SIGCONT);
    let _ = holder.wait();
    // The server finishes what it was sent: the swap, or the old database reopened.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.try_psql("records", "select count(*), sum(id) from big") {
            Ok(got) => {
                assert_eq!(got, want);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the database stays unusable after a restore killed while swapping: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = pgkeep(&c)
        .args(["restore", "dump", "--clean", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.psql("records", "select count(*), sum(id) from big"), want);
}

/// `bootstrap basebackup` SIGKILLed at 8 moments of its run (verifying, emptying PGDATA,
/// extracting, replaying, stopping the replay server, clearing the marker): no server outlives
/// it on PGDATA (the replay server is pgkeep's child, not a pg_ctl daemon), PGDATA is either
/// marked as an unfinished bootstrap or a whole database with every row, and the rerun recovers
/// every row.
#[test]
fn a_bootstrap_killed_at_any_step_leaves_no_server_running_and_the_rerun_recovers_every_row() {
    let c = archiving_cluster(&pgkeep_bin());
    c.psql(
        "postgres",
        "create table kept(x text); \
         insert into kept select repeat('x', 400) || g from generate_series(1, 60000) g",
    );
    let out = pgkeep(&c).args(["backup", "physical"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    c.psql(
        "postgres",
        "insert into kept select 'after the backup ' || g from generate_series(1, 5000) g",
    );
    let want = c.psql("postgres", "select count(*) from kept");
    c.switch_wal_and_wait_archived();
    c.stop();
    let pgdata = c.pgdata().display().to_string();
    let marker = c.pgroot().join(pgkeep_engine::bootmark::FILE_NAME);
    let landed = kill_sweep(
        &c,
        &["bootstrap", "basebackup", "--yes"],
        8,
        &pgdata,
        &|at| {
            if marker.is_file() {
                return; // an unfinished bootstrap: nothing starts it as a database (bootmark)
            }
            c.restart();
            assert_eq!(
                c.try_psql("postgres", "select count(*) from kept"),
                Ok(want.clone()),
                "after a kill at point {at}, PGDATA is unmarked but not the whole database"
            );
            c.stop();
        },
        &|| {},
    );
    assert!(landed >= 4, "only {landed} of 8 kills landed mid-run");
    let out = pgkeep(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!marker.exists(), "the rerun cleared the marker");
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from kept"), want);
    let left: Vec<String> = file_names(&c.pgroot())
        .into_iter()
        .filter(|n| n.starts_with(".pgkeep-bootstrap-"))
        .collect();
    assert!(
        left.is_empty(),
        "the killed runs' staging is gone: {left:?}"
    );
}

/// `drill` SIGKILLed at 8 moments (verifying, initdb and restore of the logical drill, extraction
/// and replay of the physical one, checks, clean-up): no throwaway server outlives it in its
/// scratch directory, the live database is untouched, and the next drill passes and removes the
/// killed drills' scratch directories.
#[test]
fn a_drill_killed_at_any_step_leaves_no_server_running_and_the_next_drill_passes() {
    let c = records_cluster();
    for kind in ["logical", "physical"] {
        let out = pgkeep(&c).args(["backup", kind]).output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    c.switch_wal_and_wait_archived();
    let want = c.psql("records", "select count(*), sum(id) from big");
    let backups = c.backups().display().to_string();
    let landed = kill_sweep(
        &c,
        &["drill"],
        8,
        &backups,
        &|at| {
            assert_eq!(
                c.try_psql("records", "select count(*), sum(id) from big"),
                Ok(want.clone()),
                "after a kill at point {at} the live database changed"
            )
        },
        &|| {},
    );
    assert!(landed >= 4, "only {landed} of 8 kills landed mid-run");
    let out = pgkeep(&c).args(["drill"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let scratch: Vec<String> = file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with(".drill-"))
        .collect();
    assert!(
        scratch.is_empty(),
        "the killed drills' scratch directories are gone: {scratch:?}"
    );
}
