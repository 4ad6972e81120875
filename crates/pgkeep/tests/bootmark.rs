//! The bootstrap-in-progress marker against a real PostgreSQL: `serve` runs no initdb on an
//! empty PGDATA while the marker of an unfinished bootstrap is in the volume root; a bootstrap
//! killed after it emptied PGDATA leaves the marker (and `status` / `debug perms` show it); a
//! bootstrap that finishes removes it.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgkeep_engine::bootmark;
use pgkeep_testkit::{TempCluster, pgkeep_bin, pgkeep_command, wait_while_running};

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

/// `pgkeep serve` on the cluster's (stopped) site, as the db container runs it. Killed after
/// `timeout` if it is still running (it would be serving a database then).
fn serve(c: &TempCluster, timeout: Duration) -> Output {
    let initdb_dir = c.root().join("initdb.d");
    std::fs::create_dir_all(&initdb_dir).unwrap();
    let mut child = pgkeep_command(c)
        .args(["serve", "--listen", "127.0.0.1", "--initdb-dir"])
        .arg(&initdb_dir)
        .env("POSTGRES_PASSWORD", "pw-Bootmark-31c7")
        .env_remove("POSTGRES_PASSWORD_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    child.wait_with_output().unwrap()
}

fn assert_serve_refuses(c: &TempCluster) {
    let before = entries(&c.pgdata());
    let out = serve(c, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "serve must refuse:\n{stderr}");
    assert!(stderr.contains(bootmark::FILE_NAME), "{stderr}");
    assert!(stderr.contains("run the bootstrap again"), "{stderr}");
    // No initdb, no server: PGDATA holds what it held (empty, partly emptied, or the new data
    // before its recovery ended).
    assert_eq!(entries(&c.pgdata()), before, "PGDATA untouched:\n{stderr}");
    assert!(!c.pgdata().join("postmaster.pid").exists(), "{stderr}");
}

fn entries(dir: &Path) -> Vec<String> {
    pgkeep_testkit::file_names(dir)
}

#[test]
fn serve_runs_no_initdb_on_an_empty_pgdata_while_the_bootstrap_marker_is_there() {
    let c = TempCluster::start();
    c.stop();
    for e in std::fs::read_dir(c.pgdata()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    std::fs::write(c.pgroot().join(bootmark::FILE_NAME), "test\n").unwrap();
    assert_serve_refuses(&c);
    assert!(
        entries(&c.pgdata()).is_empty(),
        "{:?}",
        entries(&c.pgdata())
    );
    assert!(c.pgroot().join(bootmark::FILE_NAME).exists());
}

#[test]
fn a_bootstrap_killed_once_pgdata_is_given_up_leaves_the_marker_and_a_finished_one_removes_it() {
    let c = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep_bin().display()
        ))
        .start();
    c.psql(
        "postgres",
        "create table kept(x text); insert into kept select repeat('x', 400) || g from generate_series(1, 100000) g",
    );
    ok(pgkeep_command(&c)
        .args(["backup", "physical"])
        .output()
        .unwrap());
    c.psql("postgres", "insert into kept values ('after the backup')");
    let count = c.psql("postgres", "select count(*) from kept");
    c.switch_wal_and_wait_archived();
    c.stop();

    // Kill the bootstrap once it has given PGDATA up: the bundle is unpacked and verified beside
    // PGDATA first, then the marker is written, then PGDATA emptied and the new data moved in.
    let mut child = pgkeep_command(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = c.pgroot().join(bootmark::FILE_NAME);
    wait_while_running(
        &mut child,
        "the bootstrap gave PGDATA up",
        Duration::from_secs(120),
        || marker.is_file(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(marker.is_file(), "the killed bootstrap left its marker");

    let status = unhealthy(pgkeep_command(&c).args(["status"]).output().unwrap());
    assert!(status.contains("UNFINISHED"), "{status}");
    let perms: serde_json::Value = serde_json::from_str(&ok(pgkeep_command(&c)
        .args(["debug", "perms", "--json"])
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(
        perms["bootstrap_unfinished"],
        marker.display().to_string(),
        "{perms}"
    );

    assert_serve_refuses(&c);

    ok(pgkeep_command(&c)
        .args(["bootstrap", "basebackup", "--yes"])
        .output()
        .unwrap());
    assert!(!marker.exists(), "a finished bootstrap removes the marker");
    c.restart();
    assert_eq!(c.psql("postgres", "select count(*) from kept"), count);
}
