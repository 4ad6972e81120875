//! `pgkeep serve` against a real PostgreSQL: first start initializes (password from the
//! environment or a file, never argv; init scripts once), the second start reuses the data,
//! SIGTERM stops cleanly with exit 0, a wrong password is refused over TCP on 127.0.0.1.
//! When the tests run as root, the server runs as the testkit's non-root account.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

const PASSWORD: &str = "pw-Serve-7f3a9c";

struct Site {
    dir: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    bin: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Site {
    fn new() -> Site {
        let (_, uid, gid) = pgkeep_testkit::server_account();
        let dir = tempfile::Builder::new()
            .prefix("pgkeep-serve-")
            .tempdir()
            .unwrap();
        let site = Site {
            dir,
            port: free_port(),
            uid,
            gid,
            bin: pgkeep_testkit::pg_bin(),
        };
        for d in [
            site.root().to_owned(),
            site.pgroot(),
            site.path("run"),
            site.path("wal"),
            site.path("backups"),
            site.initdb_dir(),
        ] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // The data volume belongs to the data owner, as fsGroup/prep-dirs make it in a pod.
        std::os::unix::fs::chown(site.pgroot(), Some(uid), Some(gid)).unwrap();
        site
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn path(&self, p: &str) -> PathBuf {
        self.root().join(p)
    }
    fn pgroot(&self) -> PathBuf {
        self.path("volume")
    }
    fn pgdata(&self) -> PathBuf {
        self.pgroot().join("data")
    }
    fn initdb_dir(&self) -> PathBuf {
        self.path("initdb.d")
    }
    fn log(&self, n: usize) -> PathBuf {
        self.path(&format!("serve-{n}.log"))
    }

    fn write_script(&self, name: &str, body: &[u8]) {
        let p = self.initdb_dir().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn command(&self) -> Command {
        let mut c = self.pgkeep();
        c.args(["serve", "--listen", "127.0.0.1", "--initdb-dir"])
            .arg(self.initdb_dir());
        c
    }

    /// pgkeep with this site's settings (no password in its environment).
    fn pgkeep(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("pgkeep"));
        for k in [
            "PGHOST",
            "PGDATABASE",
            "PGPASSWORD",
            "PGPASSFILE",
            "POSTGRES_PASSWORD",
            "POSTGRES_PASSWORD_FILE",
            "PGKEEP_TARGET",
            "PGKEEP_NAMESPACE",
        ] {
            c.env_remove(k);
        }
        c.env("PGKEEP_CONFIG", "/dev/null")
            .env("PGKEEP_PGROOT", self.pgroot())
            .env("PGDATA", self.pgdata())
            .env("PGKEEP_RUN_DIR", self.path("run"))
            .env("PGKEEP_WAL_ARCHIVE", self.path("wal"))
            .env("PGKEEP_BACKUPS", self.path("backups"))
            .env("PGKEEP_UID", self.uid.to_string())
            .env("PGKEEP_GID", self.gid.to_string())
            .env("PGKEEP_DATABASE", "records")
            .env("PGUSER", "postgres")
            .env("PGPORT", self.port.to_string())
            .env("PGKEEP_PG_BIN", &self.bin)
            .stdin(Stdio::null());
        c
    }

    /// The postmaster's pid, from postmaster.pid.
    fn postmaster_pid(&self) -> i32 {
        std::fs::read_to_string(self.pgdata().join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Start serve with its output in serve-N.log.
    fn spawn(&self, n: usize, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.log(n)).unwrap();
        let mut c = self.command();
        c.envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        c.spawn().expect("start pgkeep serve")
    }

    fn read_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    /// psql over TCP to 127.0.0.1 with a password.
    fn psql_tcp(&self, password: Option<&str>, sql: &str) -> Output {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "records",
        ])
        .args(["-p", &self.port.to_string(), "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env("PGPASSFILE", "/nonexistent")
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null());
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
        c.output().unwrap()
    }

    fn query(&self, sql: &str) -> String {
        let out = self.psql_tcp(Some(PASSWORD), sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_ready(&self, child: &mut Child, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("pgkeep serve exited early ({st}):\n{}", self.read_log(n));
            }
            if self.psql_tcp(Some(PASSWORD), "select 1").status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready:\n{}",
                self.read_log(n)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&self, child: &mut Child, n: usize) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_exit(child, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("serve did not stop:\n{}", self.read_log(n)))
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// Kills the serve process (and so its postgres, through the parent-death signal) if a test
/// fails half-way.
struct Guard<'a>(&'a mut Child);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = wait_exit(self.0, Duration::from_secs(30));
        }
    }
}

/// Stops a `wal stream` child (SIGTERM, then waits) if a test fails half-way, so no stream is
/// left retrying against a server that is gone.
struct StreamGuard(Child);
impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = wait_exit(&mut self.0, Duration::from_secs(30));
        }
    }
}

fn gz(text: &str) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

#[test]
fn first_start_initializes_second_reuses_and_sigterm_stops_cleanly() {
    let site = Site::new();
    site.write_script(
        "01-schema.sql",
        b"create table seeded(n int primary key);\ninsert into seeded values (1);\n",
    );
    site.write_script("02-more.sql.gz", &gz("insert into seeded values (2);\n"));
    site.write_script(
        "03-shell.sh",
        b"set -e\npsql -X -v ON_ERROR_STOP=1 -q -c 'insert into seeded values (3)'\n",
    );
    site.write_script("04-readme.txt", b"not a script\n");
    let pwfile = site.path("superuser-password");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let pwfile_s = pwfile.display().to_string();

    // First start: password from a file.
    let mut child = site.spawn(1, &[("POSTGRES_PASSWORD_FILE", &pwfile_s)]);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    assert_eq!(
        site.query("select string_agg(n::text, ',' order by n) from seeded"),
        "1,2,3"
    );
    assert_eq!(site.query("show data_checksums"), "on");
    assert_eq!(site.query("show archive_mode"), "on");
    assert_eq!(site.query("show wal_level"), "replica");
    // 17+: WAL summaries for incremental base backups (the setting does not exist before).
    let major: u32 = site
        .query("show server_version_num")
        .parse::<u32>()
        .unwrap()
        / 10000;
    assert_eq!(
        site.query("select coalesce(current_setting('summarize_wal', true), 'absent')"),
        if major >= 17 { "on" } else { "absent" }
    );
    assert_eq!(site.query("show listen_addresses"), "127.0.0.1");
    assert!(site.query("show archive_command").ends_with(" wal push %p"));
    assert_eq!(
        site.query("show archive_timeout"),
        "1min",
        "wal.archive_timeout's default"
    );
    assert_eq!(site.query("select current_database()"), "records");
    // The server runs as the data owner, never root.
    assert_eq!(
        site.query("select pg_read_file('PG_VERSION')").trim(),
        std::fs::read_to_string(site.pgdata().join("PG_VERSION"))
            .unwrap()
            .trim()
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(site.pgdata()).unwrap().uid(), site.uid);
    assert_eq!(
        std::fs::metadata(site.pgdata()).unwrap().mode() & 0o777,
        0o700
    );

    // Wrong or no password over TCP: refused.
    let bad = site.psql_tcp(Some("not-the-password"), "select 1");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!site.psql_tcp(None, "select 1").status.success());

    site.query("insert into seeded values (4)");
    let st = site.stop(g.0, 1);
    let log1 = site.read_log(1);
    assert_eq!(st.code(), Some(0), "exit status {st}:\n{log1}");
    assert!(log1.contains("fast shutdown"), "{log1}");
    assert!(log1.contains("database system is shut down"), "{log1}");
    assert!(!log1.contains(PASSWORD), "the password leaked into the log");
    assert!(!site.pgdata().join("postmaster.pid").exists());
    drop(g);

    // Second start: no password needed, data reused, init scripts not run again.
    let mut child = site.spawn(2, &[]);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 2);
    assert_eq!(
        site.query("select string_agg(n::text, ',' order by n) from seeded"),
        "1,2,3,4"
    );
    let log2 = site.read_log(2);
    assert!(log2.contains("using the existing data directory"), "{log2}");
    assert!(!log2.contains("running init script"), "{log2}");
    let hba = std::fs::read_to_string(site.pgdata().join("pg_hba.conf")).unwrap();
    assert_eq!(
        hba.matches("BEGIN pgkeep managed block").count(),
        1,
        "{hba}"
    );
    let st = site.stop(g.0, 2);
    assert_eq!(st.code(), Some(0), "{}", site.read_log(2));
}

#[test]
fn password_from_the_environment_works_and_never_reaches_argv() {
    let site = Site::new();
    let mut child = site.spawn(1, &[("POSTGRES_PASSWORD", PASSWORD)]);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    // No process of ours carries the password on its command line.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
                "password on the command line of pid {:?}",
                entry.file_name()
            );
        }
    }
    // Nor in postgres's environment.
    let pid: u32 = std::fs::read_to_string(site.pgdata().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(PASSWORD));
    let st = site.stop(g.0, 1);
    assert_eq!(st.code(), Some(0), "{}", site.read_log(1));
}

/// A fresh initdb is a new database system: an earlier system's WAL in the archive (here
/// segment ...01, the first name the new system archives too) is moved aside first, and the new
/// system archives into the root without a clash.
#[test]
fn a_new_system_moves_an_earlier_systems_wal_aside_and_archives() {
    let site = Site::new();
    let wal = site.path("wal");
    std::os::unix::fs::chown(&wal, Some(site.uid), Some(site.gid)).unwrap();
    let mut old = vec![0u8; 16 << 20];
    old[2] = 0x02; // long page header
    old[24..32].copy_from_slice(&4_242_424_242u64.to_le_bytes());
    old[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
    std::fs::write(wal.join("000000010000000000000001"), &old).unwrap();
    std::fs::write(
        wal.join("00000002.history"),
        "1\t0/3000000\tno recovery target\n",
    )
    .unwrap();

    let mut child = site.spawn(1, &[("POSTGRES_PASSWORD", PASSWORD)]);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    let log = site.read_log(1);
    assert!(log.contains("earlier database system"), "{log}");
    let aside: Vec<PathBuf> = std::fs::read_dir(wal.join("superseded"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        aside[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("4242424242-"),
        "{aside:?}"
    );
    assert_eq!(
        std::fs::read(aside[0].join("000000010000000000000001")).unwrap(),
        old,
        "the earlier system's segment is kept, byte for byte"
    );
    assert!(aside[0].join("00000002.history").is_file());

    // The new system archives its first segments into the root without a clash.
    site.query("create table t as select generate_series(1, 1000) n");
    site.query("select pg_switch_wal()");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = site.query(
            "select archived_count::text || '/' || failed_count::text from pg_stat_archiver",
        );
        if st != "0/0" {
            assert!(
                st.ends_with("/0"),
                "archiving failed: {st}\n{}",
                site.read_log(1)
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing archived in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sysid = site.query("select system_identifier::text from pg_control_system()");
    let a = pgkeep_engine::wal::Archive::new(&wal);
    let root = pgkeep_engine::archive_owner::root_wal(&a).unwrap();
    assert_eq!(root.system.map(|s| s.to_string()), Some(sysid));
    let st = site.stop(g.0, 1);
    assert_eq!(st.code(), Some(0), "{}", site.read_log(1));
}

#[test]
fn empty_pgdata_without_a_password_is_refused_and_nothing_is_initialized() {
    let site = Site::new();
    let out = site.command().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POSTGRES_PASSWORD"), "{err}");
    assert!(!site.pgdata().join("PG_VERSION").exists());
}

#[test]
fn foreign_content_in_pgdata_is_refused_with_exit_3() {
    let site = Site::new();
    std::fs::create_dir_all(site.pgdata().join("lost+found")).unwrap();
    let out = site
        .command()
        .env("POSTGRES_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lost+found"), "{err}");
    assert!(!site.pgdata().join("PG_VERSION").exists());
}

#[test]
fn a_failing_init_script_leaves_pgdata_empty_for_the_next_start() {
    let site = Site::new();
    site.write_script("01-bad.sql", b"select * from no_such_table;\n");
    let out = site
        .command()
        .env("POSTGRES_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("01-bad.sql"), "{err}");
    assert!(err.contains("no_such_table"), "{err}");
    assert_eq!(
        std::fs::read_dir(site.pgdata()).unwrap().count(),
        0,
        "PGDATA was reset"
    );
}

#[test]
fn postgres_dying_ends_serve_with_its_status() {
    let site = Site::new();
    let mut child = site.spawn(1, &[("POSTGRES_PASSWORD", PASSWORD)]);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    let pid = site.postmaster_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_exit(g.0, Duration::from_secs(60)).expect("serve exits when postgres dies");
    assert_eq!(st.code(), Some(128 + 9), "{}", site.read_log(1));
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// How WAL leaves the server in [`lose_the_data_volume`].
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// archive_command only, with this archive_timeout (seconds).
    ArchiveTimeout(u64),
    /// `wal stream` next to archive_command (archive_timeout off), synchronous or not.
    Stream { sync: bool },
}

/// What [`lose_the_data_volume`] saw.
struct Loss {
    acked: usize,
    /// For each acknowledged commit that did not come back: how long before the kill it was
    /// acknowledged, oldest first.
    lost: Vec<Duration>,
}

/// `pgkeep wal stream` as the data owner (as in the db pod), logging to stream.log.
fn spawn_stream(site: &Site, sync: bool) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(site.path("stream.log")).unwrap();
    let mut c = site.pgkeep();
    c.args(["wal", "stream"]);
    if sync {
        c.arg("--synchronous");
    }
    c.env("PGHOST", "127.0.0.1")
        .env("PGPASSWORD", PASSWORD)
        .uid(site.uid)
        .gid(site.gid)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    c.spawn().expect("start pgkeep wal stream")
}

/// Wait until `wal stream` streams (in sync mode: as the synchronous standby).
fn wait_streaming(site: &Site, st: &mut Child, sync: bool) {
    let want = if sync { "sync" } else { "async" };
    let deadline = Instant::now() + Duration::from_secs(90);
    while site.query(
        "select coalesce(max(sync_state), '') from pg_stat_replication \
         where application_name = 'pgkeep' and state = 'streaming'",
    ) != want
    {
        let log = || std::fs::read_to_string(site.path("stream.log")).unwrap_or_default();
        if let Some(code) = st.try_wait().unwrap() {
            panic!("wal stream exited ({code}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not connect:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The recovery point of one way of getting WAL off the server, measured: a base backup; a
/// restart (a rollout, a node drain: the base backup's checkpoint woke the first server's
/// checkpointer, and the commits must go to a freshly started one, as after any restart); single-
/// row commits with known ids for 16 s, each acknowledged before the next, with a quiet stretch
/// in the middle; SIGKILL of every server process right after an acknowledged commit, as when
/// the node dies; PGDATA removed as if the data volume were lost; `bootstrap basebackup` from the
/// base backup, the archive and (when streaming) the spool; then which commits came back. What
/// came back must be every commit up to a point, with no gap.
fn lose_the_data_volume(mode: Mode) -> Loss {
    let site = Site::new();
    let wal = site.path("wal");
    std::os::unix::fs::chown(&wal, Some(site.uid), Some(site.gid)).unwrap();
    let (timeout, stream) = match mode {
        Mode::ArchiveTimeout(t) => (t.to_string(), "off"),
        Mode::Stream { sync: false } => ("0".to_owned(), "async"),
        Mode::Stream { sync: true } => ("0".to_owned(), "sync"),
    };
    let env = [
        ("POSTGRES_PASSWORD", PASSWORD),
        ("PGKEEP_WAL_ARCHIVE_TIMEOUT", timeout.as_str()),
        ("PGKEEP_WAL_STREAM", stream),
    ];
    let mut child = site.spawn(1, &env);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    // The stream runs beside the server from the start, as in the db pod; it reconnects by
    // itself across the restart below.
    let mut streamer = match mode {
        Mode::Stream { sync } => {
            let mut st = spawn_stream(&site, sync);
            wait_streaming(&site, &mut st, sync);
            Some(st)
        }
        Mode::ArchiveTimeout(_) => None,
    };
    site.query("create table acked(id int primary key, at timestamptz not null default now())");
    let out = site
        .pgkeep()
        .args(["backup", "physical", "--no-prune"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        pgkeep_testkit::output_text(&out)
    );
    assert_eq!(site.stop(g.0, 1).code(), Some(0), "{}", site.read_log(1));
    drop(g);
    let mut child = site.spawn(2, &env);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 2);

    if let Some(st) = streamer.as_mut() {
        wait_streaming(&site, st, matches!(mode, Mode::Stream { sync: true }));
    }

    let mut acked: Vec<(i32, Instant)> = Vec::new();
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(16) {
        id += 1;
        site.query(&format!("insert into acked(id) values ({id})"));
        acked.push((id, Instant::now()));
        let pause = if (6..8).contains(&started.elapsed().as_secs()) {
            1000
        } else {
            100
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
    let pm = site.postmaster_pid();
    let procs = children_of(pm);
    let killed_at = Instant::now();
    for p in std::iter::once(pm).chain(procs) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let st = wait_exit(g.0, Duration::from_secs(60)).expect("serve exits when postgres dies");
    assert_eq!(st.code(), Some(128 + 9), "{}", site.read_log(2));
    drop(g);
    if let Some(mut st) = streamer.take() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(st.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let code = wait_exit(&mut st, Duration::from_secs(60)).expect("wal stream stops");
        let log = std::fs::read_to_string(site.path("stream.log")).unwrap_or_default();
        assert_eq!(code.code(), Some(0), "{log}");
    }

    // The data volume is gone; the archive volume and the backups volume are what is left.
    std::fs::remove_dir_all(site.pgdata()).unwrap();
    let out = site
        .pgkeep()
        .args(["bootstrap", "basebackup", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        pgkeep_testkit::output_text(&out)
    );
    let mut child = site.spawn(3, &env);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 3);
    let recovered: Vec<i32> = site
        .query("select id from acked order by id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    site.stop(g.0, 3);

    let n = recovered.len();
    assert_eq!(
        recovered,
        (1..=n as i32).collect::<Vec<_>>(),
        "what came back is every commit up to a point, with no gap"
    );
    let lost = acked
        .iter()
        .filter(|(id, _)| *id > n as i32)
        .map(|(_, at)| killed_at.duration_since(*at))
        .collect::<Vec<_>>();
    println!(
        "{mode:?}: {} commits acknowledged, {} lost (the oldest lost one acknowledged {:?} before \
         the kill)",
        acked.len(),
        lost.len(),
        lost.first().copied().unwrap_or_default()
    );
    Loss {
        acked: acked.len(),
        lost,
    }
}

/// archive_command as `serve` configures it: a quiet server archives its commits within
/// `archive_timeout`, also right after a start (PostgreSQL's checkpointer ignores archive_timeout
/// until its first wake-up, up to checkpoint_timeout after a clean start, unless serve wakes
/// it). Every commit acknowledged longer ago than the bound (2 x archive_timeout plus generous
/// slack for a loaded machine) must come back.
#[test]
fn archive_timeout_bounds_what_losing_the_data_volume_costs() {
    const TIMEOUT_S: u64 = 2;
    let loss = lose_the_data_volume(Mode::ArchiveTimeout(TIMEOUT_S));
    let bound = Duration::from_secs(2 * TIMEOUT_S + 6);
    if let Some(age) = loss.lost.first() {
        assert!(
            *age < bound,
            "a commit acknowledged {age:?} before the data volume was lost is missing: \
             archive_timeout={TIMEOUT_S}s did not bound the loss ({} of {} commits lost)",
            loss.lost.len(),
            loss.acked
        );
    }
}

/// `wal stream --synchronous` with `wal.stream = sync`: nothing acknowledged is lost with the
/// data volume (archive_timeout off, so only the stream can deliver the last segment).
#[test]
fn synchronous_streaming_loses_no_acknowledged_commit_with_the_data_volume() {
    let loss = lose_the_data_volume(Mode::Stream { sync: true });
    assert!(
        loss.lost.is_empty(),
        "{} of {} acknowledged commits lost with synchronous streaming",
        loss.lost.len(),
        loss.acked
    );
}

/// `wal stream` without `--synchronous`: at most what was in flight is lost (archive_timeout
/// off, so without the stream every commit since the last full segment would be gone).
#[test]
fn asynchronous_streaming_loses_at_most_what_was_in_flight() {
    let loss = lose_the_data_volume(Mode::Stream { sync: false });
    if let Some(age) = loss.lost.first() {
        assert!(
            *age < Duration::from_secs(3),
            "a commit acknowledged {age:?} before the kill is missing ({} of {} lost)",
            loss.lost.len(),
            loss.acked
        );
    }
}

/// `pgkeep metrics` and `pgkeep status --json` of a site (with serve's settings `env`), over
/// TCP with the password.
fn look(site: &Site, env: &[(&str, &str)]) -> (String, serde_json::Value) {
    let run = |args: &[&str]| {
        site.pgkeep()
            .args(args)
            .envs(env.iter().copied())
            .env("PGHOST", "127.0.0.1")
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let metrics = run(&["metrics"]);
    assert!(
        metrics.status.success(),
        "{}",
        pgkeep_testkit::output_text(&metrics)
    );
    // status exits non-zero when unhealthy (no backups here); its JSON is what counts.
    let status = run(&["status", "--json", "--min-free-percent", "0"]);
    let json = serde_json::from_slice(&status.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}\n{}",
            pgkeep_testkit::output_text(&status)
        )
    });
    (String::from_utf8_lossy(&metrics.stdout).into_owned(), json)
}

/// The value of one unlabelled metric.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The `check` names of `status --json`'s problems.
fn problem_checks(status: &serde_json::Value) -> Vec<String> {
    status["health"]["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array in {status}"))
        .iter()
        .map(|p| p["check"].as_str().unwrap().to_owned())
        .collect()
}

/// `wal.stream = sync` with `wal.sync_fallback_after = 3`: with no stream running a commit
/// first waits (it is in SyncRep and has not returned after a second), then returns once serve
/// has fallen back (synchronous_standby_names '' , `pgkeep_wal_sync_degraded 1`, status says
/// so); a `wal stream --synchronous` that starts makes serve switch back ('pgkeep', commits
/// wait for it again, metric 0).
#[test]
fn sync_mode_falls_back_to_async_after_the_timeout_and_back_when_the_stream_returns() {
    let site = Site::new();
    let wal = site.path("wal");
    std::os::unix::fs::chown(&wal, Some(site.uid), Some(site.gid)).unwrap();
    let env = [
        ("POSTGRES_PASSWORD", PASSWORD),
        ("PGKEEP_WAL_STREAM", "sync"),
        ("PGKEEP_WAL_SYNC_FALLBACK_AFTER", "3"),
    ];
    let mut child = site.spawn(1, &env);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    assert_eq!(site.query("show synchronous_standby_names"), "pgkeep");

    // A commit with no stream: it waits.
    let mut commit = Command::new(site.bin.join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-d", "records", "-p", &site.port.to_string()])
        .args(["-c", "create table waited(id int)"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        commit.try_wait().unwrap().is_none(),
        "the commit returned within a second although no stream runs:\n{}",
        site.read_log(1)
    );
    // It waits for the synchronous standby, unless serve fell back in the meantime (then it
    // has returned or is about to).
    let waiting = site.query("select count(*) from pg_stat_activity where wait_event = 'SyncRep'");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiting == "1" || commit.try_wait().unwrap().is_some(),
        "the commit is neither waiting for the stream (SyncRep) nor done ({waiting} waiters)"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let st = loop {
        if let Some(st) = commit.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the commit never returned: serve did not fall back (SyncRep waiters at 1 s: \
             {waiting}):\n{}",
            site.read_log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = commit.wait_with_output().unwrap();
    assert!(st.success(), "{}", pgkeep_testkit::output_text(&out));
    assert_eq!(site.query("show synchronous_standby_names"), "");
    let log = site.read_log(1);
    assert!(log.contains("COMMITS NO LONGER WAIT"), "{log}");
    let (metrics, status) = look(&site, &env);
    assert_eq!(
        metric(&metrics, "pgkeep_wal_sync_degraded"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "pgkeep_wal_stream_connected"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        problem_checks(&status).contains(&"stream_down".to_owned()),
        "{status}"
    );
    assert!(status.to_string().contains("FELL BACK"), "{status}");
    // Commits go on without waiting.
    site.query("insert into waited values (1)");

    // The stream comes back: serve makes commits wait for it again.
    let mut streamer = StreamGuard(spawn_stream(&site, true));
    wait_streaming(&site, &mut streamer.0, true);
    assert_eq!(site.query("show synchronous_standby_names"), "pgkeep");
    let log = site.read_log(1);
    assert!(log.contains("commits wait for it again"), "{log}");
    let (metrics, status) = look(&site, &env);
    assert_eq!(
        metric(&metrics, "pgkeep_wal_sync_degraded"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "pgkeep_wal_stream_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !problem_checks(&status).contains(&"stream_down".to_owned()),
        "{status}"
    );
    site.query("insert into waited values (2)");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(streamer.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_exit(&mut streamer.0, Duration::from_secs(60)).expect("wal stream stops");
    assert_eq!(site.stop(g.0, 1).code(), Some(0), "{}", site.read_log(1));
}

/// A running `wal stream` (async mode) is seen as connected: `pgkeep_wal_stream_connected 1`
/// and no `stream_down` problem in `status`; once it stops, both say so.
#[test]
fn a_connected_stream_is_healthy_in_metrics_and_status() {
    let site = Site::new();
    let wal = site.path("wal");
    std::os::unix::fs::chown(&wal, Some(site.uid), Some(site.gid)).unwrap();
    let env = [
        ("POSTGRES_PASSWORD", PASSWORD),
        ("PGKEEP_WAL_STREAM", "async"),
    ];
    let mut child = site.spawn(1, &env);
    let g = Guard(&mut child);
    site.wait_ready(g.0, 1);
    let mut streamer = StreamGuard(spawn_stream(&site, false));
    wait_streaming(&site, &mut streamer.0, false);
    let (metrics, status) = look(&site, &env);
    assert_eq!(
        metric(&metrics, "pgkeep_wal_stream_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "pgkeep_wal_stream_flush_lag_bytes").is_some(),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "pgkeep_wal_sync_degraded"),
        None,
        "async: {metrics}"
    );
    assert!(
        !problem_checks(&status).contains(&"stream_down".to_owned()),
        "{status}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(streamer.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_exit(&mut streamer.0, Duration::from_secs(60)).expect("wal stream stops");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (metrics, status) = look(&site, &env);
        if metric(&metrics, "pgkeep_wal_stream_connected") == Some(0.0) {
            assert!(
                problem_checks(&status).contains(&"stream_down".to_owned()),
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still connected after stopping: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(site.stop(g.0, 1).code(), Some(0), "{}", site.read_log(1));
}
