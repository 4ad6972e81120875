//! The foundation commands driven as a user would: prep-dirs and its mount guard in real mount
//! namespaces, wipe against a real (running, then stopped) PostgreSQL, debug perms, config show,
//! the not-implemented exit code, and the demo as root and as a non-root account.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;
use pgkeep_testkit::TempCluster;

fn pgkeep() -> Command {
    let mut c = Command::cargo_bin("pgkeep").expect("binary built");
    c.env("PGKEEP_CONFIG", "/dev/null")
        .env_remove("PGKEEP_TARGET")
        .env_remove("PGDATA")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    c
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create mount namespaces and need root (CI runs as root)"
    );
}

/// A site directory: volume root (with PGDATA below it) and a socket dir.
struct Site {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Site {
    fn new() -> Site {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_owned();
        std::fs::create_dir_all(root.join("volume")).unwrap();
        Site { _t: t, root }
    }
    fn volume(&self) -> PathBuf {
        self.root.join("volume")
    }
    fn pgdata(&self) -> PathBuf {
        self.root.join("volume/data")
    }
    fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGKEEP_PGROOT", self.volume().display().to_string()),
            ("PGDATA", self.pgdata().display().to_string()),
            ("PGKEEP_RUN_DIR", self.run_dir().display().to_string()),
            (
                "PGKEEP_WAL_ARCHIVE",
                self.root.join("wal").display().to_string(),
            ),
            (
                "PGKEEP_BACKUPS",
                self.root.join("backups").display().to_string(),
            ),
            ("PGKEEP_UID", "999".into()),
            ("PGKEEP_GID", "999".into()),
        ]
    }
    /// Every path below the site with its mode and owner, to prove nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, u32, u32, u32)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, u32, u32, u32)>) {
            let m = std::fs::symlink_metadata(p).unwrap();
            out.push((p.to_owned(), m.mode(), m.uid(), m.gid()));
            if m.is_dir() {
                let mut names: Vec<_> = std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                names.sort();
                for n in names {
                    walk(&n, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// Run `pgkeep ARGS` inside a new mount namespace after `setup` (shell commands with $VOL,
/// $PGDATA set).
fn in_namespace(site: &Site, setup: &str, args: &str) -> std::process::Output {
    let bin = assert_cmd::cargo::cargo_bin("pgkeep");
    let script = format!("set -e; {setup}; exec \"$PGKEEP_BIN\" {args}");
    let mut cmd = StdCommand::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PGKEEP_BIN", bin)
        .env("VOL", site.volume())
        .env("PGKEEP_CONFIG", "/dev/null");
    for (k, v) in site.env() {
        cmd.env(k, v);
    }
    cmd.output().expect("run unshare")
}

#[test]
fn prep_dirs_refuses_the_double_mount_and_writes_nothing() {
    require_root();
    let site = Site::new();
    std::fs::create_dir(site.pgdata()).unwrap();
    std::fs::write(site.volume().join("marker"), "x").unwrap();
    let before = site.snapshot();
    // The seed's pitfall: the data volume mounted at its root and again at PGDATA.
    let out = in_namespace(&site, "mount --bind \"$VOL\" \"$PGDATA\"", "prep-dirs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "refused: {stderr}");
    assert!(stderr.contains("is a mount point of its own"), "{stderr}");
    assert!(
        stderr.contains("volume root"),
        "names the root's mount: {stderr}"
    );
    assert!(
        stderr.contains("mounted at PGDATA"),
        "names the PGDATA mount: {stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
    assert_eq!(site.snapshot(), before, "nothing was written");
    assert!(!site.run_dir().exists());
}

#[test]
fn prep_dirs_refuses_an_anonymous_volume_on_pgdata() {
    require_root();
    let site = Site::new();
    std::fs::create_dir(site.pgdata()).unwrap();
    let before = site.snapshot();
    // What containerd does for an image that declares VOLUME /var/lib/postgresql/data.
    let out = in_namespace(
        &site,
        "mount -t tmpfs anon \"$PGDATA\"",
        "prep-dirs --data-only",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("tmpfs"), "{stderr}");
    assert!(stderr.contains("VOLUME"), "{stderr}");
    assert_eq!(site.snapshot(), before);
}

#[test]
fn prep_dirs_refuses_a_pgdata_on_another_mount_below_the_root() {
    require_root();
    let site = Site::new();
    std::fs::create_dir_all(site.volume().join("sub")).unwrap();
    let out = StdCommand::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("set -e; mount -t tmpfs other \"$VOL/sub\"; exec \"$PGKEEP_BIN\" prep-dirs")
        .env("PGKEEP_BIN", assert_cmd::cargo::cargo_bin("pgkeep"))
        .env("VOL", site.volume())
        .env("PGKEEP_CONFIG", "/dev/null")
        .envs(site.env())
        .env("PGDATA", site.volume().join("sub/data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("different mount"), "{stderr}");
}

#[test]
fn prep_dirs_without_the_double_mount_leaves_pgdata_0700() {
    require_root();
    let site = Site::new();
    // Inside a namespace with the volume mounted once at its root (like the pod).
    let out = in_namespace(&site, "mount -t tmpfs datavol \"$VOL\"", "prep-dirs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Outside the namespace, on the plain directory, twice (idempotent).
    for _ in 0..2 {
        pgkeep()
            .envs(site.env())
            .arg("prep-dirs")
            .assert()
            .success();
    }
    let m = std::fs::metadata(site.pgdata()).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    assert_eq!((m.uid(), m.gid()), (999, 999));
    let r = std::fs::metadata(site.run_dir()).unwrap();
    assert_eq!(r.permissions().mode() & 0o777, 0o775);
    assert_eq!((r.uid(), r.gid()), (999, 999));
}

#[test]
fn prep_dirs_as_the_data_owner_works_without_chown() {
    require_root();
    let site = Site::new();
    let (_, uid, gid) = pgkeep_testkit::server_account();
    std::os::unix::fs::chown(site.volume(), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&site.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root-squash style: the socket dir was prepared by `fix-run` as root.
    pgkeep()
        .envs(site.env())
        .env("PGKEEP_UID", uid.to_string())
        .env("PGKEEP_GID", gid.to_string())
        .args(["prep-dirs", "--run-dir-only"])
        .assert()
        .success();
    let bin = staged_binary(&site.root);
    let out = StdCommand::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ])
        .arg(&bin)
        .args(["prep-dirs", "--data-only"])
        .envs(site.env())
        .env("PGKEEP_UID", uid.to_string())
        .env("PGKEEP_GID", gid.to_string())
        .env("PGKEEP_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = std::fs::metadata(site.pgdata()).unwrap();
    assert_eq!((m.uid(), m.permissions().mode() & 0o777), (uid, 0o700));
}

#[test]
fn prep_dirs_refuses_lost_and_found_in_pgdata() {
    let site = Site::new();
    std::fs::create_dir_all(site.pgdata().join("lost+found")).unwrap();
    let out = pgkeep()
        .envs(site.env())
        .args(["prep-dirs", "--data-only"])
        .assert()
        .code(3);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("lost+found"), "{stderr}");
}

/// Copy the binary somewhere a non-root account can execute it (the checkout may be private).
fn staged_binary(dir: &Path) -> PathBuf {
    let dest = dir.join("pgkeep-bin");
    std::fs::copy(assert_cmd::cargo::cargo_bin("pgkeep"), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

#[test]
fn wipe_refuses_while_postgres_runs_then_wipes_when_stopped() {
    let cluster = TempCluster::start();
    cluster.psql("postgres", "create table keep_me(x int)");
    let out = pgkeep()
        .envs(cluster.env())
        .args(["wipe", "--yes"])
        .assert()
        .code(3);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("postmaster"), "{stderr}");
    assert!(stderr.contains("pgkeep scale 0"), "{stderr}");
    assert!(
        cluster.pgdata().join("PG_VERSION").exists(),
        "nothing removed"
    );
    assert_eq!(
        cluster.psql("postgres", "select count(*) from keep_me"),
        "0"
    );

    cluster.stop();
    std::fs::write(cluster.pgroot().join("stray"), "x").unwrap();
    // Without --yes and without a terminal: refused, nothing removed.
    pgkeep().envs(cluster.env()).arg("wipe").assert().code(3);
    assert!(cluster.pgdata().join("PG_VERSION").exists());

    let out = pgkeep()
        .envs(cluster.env())
        .args(["wipe", "--yes"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let (before, after) = stdout.split_once("AFTER").expect("AFTER listing");
    assert!(
        before.contains("BEFORE") && before.contains("data") && before.contains("stray"),
        "{stdout}"
    );
    assert!(!after.contains("stray"), "{stdout}");
    assert!(after.contains("d0700"), "{stdout}");
    assert_eq!(std::fs::read_dir(cluster.pgroot()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(cluster.pgdata()).unwrap().count(), 0);
    let m = std::fs::metadata(cluster.pgdata()).unwrap();
    assert_eq!(
        (m.uid(), m.permissions().mode() & 0o777),
        (cluster.uid(), 0o700)
    );
    assert!(
        cluster.wal_archive().exists() && cluster.backups().exists(),
        "other volumes untouched"
    );
}

#[test]
fn debug_perms_reports_owners_modes_and_the_guard() {
    let site = Site::new();
    pgkeep()
        .envs(site.env())
        .arg("prep-dirs")
        .assert()
        .success();
    let out = pgkeep()
        .envs(site.env())
        .args(["debug", "perms", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["guard_ok"], true, "{v}");
    assert_eq!(v["uid"], rustix::process::geteuid().as_raw());
    let dirs = v["dirs"].as_array().unwrap();
    let pgdata = dirs.iter().find(|d| d["role"] == "PGDATA").unwrap();
    assert_eq!(pgdata["mode"], "0700");
    assert!(pgdata["mount"]["mount_point"].is_string());
    let run = dirs.iter().find(|d| d["role"] == "socket dir").unwrap();
    assert_eq!(run["mode"], "0775");
    let wal = dirs.iter().find(|d| d["role"] == "WAL archive").unwrap();
    assert_eq!(wal["exists"], false);

    if rustix::process::geteuid().is_root() {
        let out = in_namespace(&site, "mount --bind \"$VOL\" \"$PGDATA\"", "debug perms");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(stdout.contains("mount guard: refused"), "{stdout}");
    }
}

#[test]
fn config_show_round_trips_and_names_sources() {
    let t = tempfile::tempdir().unwrap();
    let out = pgkeep()
        .env("PGKEEP_NAMESPACE", "ns-from-env")
        .env("PGPASSWORD", "s3cret-never-shown")
        .args(["config", "show"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("namespace = \"ns-from-env\""), "{text}");
    assert!(text.contains("# env PGKEEP_NAMESPACE"), "{text}");
    assert!(text.contains("name = \"pgdata-big\""), "{text}");
    assert!(!text.contains("s3cret"), "secret redacted");
    assert!(text.contains("<redacted> (from PGPASSWORD)"));
    let file = t.path().join("pgkeep.toml");
    std::fs::write(&file, &text).unwrap();
    let out = pgkeep()
        .env("PGKEEP_CONFIG", &file)
        .args(["config", "show", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["settings"]["kube"]["namespace"], "ns-from-env");
    assert_eq!(v["sources"]["kube.namespace"]["kind"], "file");
    assert_eq!(v["settings"]["pvc"]["wal_archive"]["size"], "20Gi");

    std::fs::write(&file, "[pvc.data]\nsize = \"1Gi\"\nbogus = 1\n").unwrap();
    let out = pgkeep()
        .env("PGKEEP_CONFIG", &file)
        .args(["config", "show"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("pvc.data.bogus") && stderr.contains("pgkeep.toml"),
        "{stderr}"
    );
}

#[test]
fn flags_beat_the_environment() {
    let out = pgkeep()
        .env("PGKEEP_NAMESPACE", "from-env")
        .env("PGKEEP_TARGET", "local")
        .args([
            "--kube",
            "--namespace",
            "from-flag",
            "config",
            "show",
            "--json",
        ])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["settings"]["kube"]["namespace"], "from-flag");
    assert_eq!(v["settings"]["target"], "kube");
    assert_eq!(v["sources"]["target"]["name"], "--kube");
}

#[test]
fn unimplemented_targets_say_so_with_exit_2() {
    let out = pgkeep().args(["--local", "scale", "0"]).assert().code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("not implemented yet"), "{stderr}");
}

#[test]
fn drill_needs_at_least_one_drill() {
    pgkeep()
        .args(["drill", "--skip-logical", "--skip-physical"])
        .assert()
        .code(2);
}

fn check_demo_output(stdout: &str) {
    assert!(stdout.contains("PostgreSQL is up"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("records") && l.contains(" record "))
        .unwrap_or_else(|| panic!("no records.record row count in:\n{stdout}"));
    assert!(line.trim_end().ends_with("5000"), "{line}");
    assert!(
        stdout.contains("identical: tables, row counts"),
        "logical round trip: {stdout}"
    );
    assert!(
        stdout.contains("1234 rows written after the base backup are back"),
        "bootstrap with WAL replay: {stdout}"
    );
    assert!(stdout.contains("demo finished"), "{stdout}");
}

#[test]
fn demo_runs_as_root_and_as_a_non_root_account() {
    let t = tempfile::tempdir().unwrap();
    let out = pgkeep()
        .arg("demo")
        .arg("--dir")
        .arg(t.path().join("site"))
        .assert()
        .success();
    check_demo_output(&String::from_utf8_lossy(&out.get_output().stdout));
    assert!(
        !t.path().join("site/volume/data/postmaster.pid").exists(),
        "stopped cleanly"
    );

    if rustix::process::geteuid().is_root() {
        let (_, uid, gid) = pgkeep_testkit::server_account();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = staged_binary(t.path());
        let site = t.path().join("as-user");
        std::fs::create_dir(&site).unwrap();
        std::os::unix::fs::chown(&site, Some(uid), Some(gid)).unwrap();
        let out = StdCommand::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &gid.to_string(),
                "--clear-groups",
            ])
            .arg(&bin)
            .arg("demo")
            .arg("--dir")
            .arg(&site)
            .env("PGKEEP_CONFIG", "/dev/null")
            .env("HOME", &site)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_demo_output(&String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn receive_checks_size_and_checksum_before_publishing() {
    use sha2::Digest;
    let t = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let dest = t.path().join("upload.tar.gz");
    let mut input = data.clone();
    input.extend_from_slice(b"ignored trailer");
    pgkeep()
        .args([
            "receive",
            "--size",
            &data.len().to_string(),
            "--sha256",
            &sha,
        ])
        .arg(&dest)
        .write_stdin(input)
        .assert()
        .success()
        .stdout(predicates::str::contains("received"));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let other = t.path().join("other.tar.gz");
    pgkeep()
        .args([
            "receive",
            "--size",
            &data.len().to_string(),
            "--sha256",
            &sha,
        ])
        .arg(&other)
        .write_stdin(&data[..1000])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("stream ended"));
    assert!(!other.exists());
}
