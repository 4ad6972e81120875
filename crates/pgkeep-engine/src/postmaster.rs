//! `pgkeep serve`'s engine: get a data directory ready (mount guard, directories, initdb on an
//! empty PGDATA with the one-time init scripts, pgkeep's managed settings and pg_hba block),
//! then run `postgres` as a child, turn SIGTERM/SIGINT into a fast shutdown and SIGQUIT into an
//! immediate one, forward its log to our stderr, and report its exit status.
//!
//! The child is spawned through the engine's runner ([`Cmd`]) in its own session, so signals
//! reach it only through [`Postmaster::supervise`]; a dropped [`Postmaster`] kills it. In a
//! container `pgkeep serve` is PID 1, so when it exits the kernel stops postgres with it.
//!
//! Secrets: the superuser password reaches initdb through server.rs's 0600 password file; it is
//! removed from the environment of every child (postgres, psql, init scripts).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::datadir::{self, DatadirError, PrepMode};
use crate::fsutil::{self, FsError, IoContext};
use crate::server::{self, InitDb, ManagedConf, RunAs, ServerError};
use crate::tools::{Cmd, PgBin, Running, ToolError};

/// Environment variables that carry the superuser password into `serve`; never passed on.
pub const SECRET_ENV: &[&str] = &["POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE", "PGPASSWORD"];

#[derive(Debug, thiserror::Error)]
pub enum PostmasterError {
    #[error(transparent)]
    Datadir(#[from] DatadirError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Bootmark(#[from] crate::bootmark::BootmarkError),
    #[error(
        "PGDATA {pgdata} is empty and no superuser password was given\nhint: set POSTGRES_PASSWORD, or POSTGRES_PASSWORD_FILE to a file holding it (in Kubernetes: from the Secret); it is never read from the command line"
    )]
    NoPassword { pgdata: PathBuf },
    #[error("{0}\nhint: set only one of POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE")]
    PasswordSource(String),
    #[error(
        "PGDATA {pgdata} holds a PostgreSQL {data} cluster but the server binaries are PostgreSQL {server}\nhint: use an image with PostgreSQL {data}, or upgrade the data (pg_upgrade, or a logical dump restored into a new cluster)"
    )]
    VersionMismatch {
        pgdata: PathBuf,
        data: String,
        server: u32,
    },
    #[error(
        "first-start initialization failed at {step}: {source}\nhint: PGDATA was emptied again, so the next start initializes from scratch; fix the init script or setting and restart"
    )]
    Init {
        step: String,
        #[source]
        source: Box<PostmasterError>,
    },
    #[error("could not set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
}

/// What `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub pgroot: PathBuf,
    pub pgdata: PathBuf,
    pub run_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub port: u16,
    /// `listen_addresses` (`*` in a pod; a loopback address in tests).
    pub listen: String,
    pub superuser: String,
    /// The application database, created at first start.
    pub database: String,
    /// One-time init scripts (`*.sql`, `*.sql.gz`, `*.sh`).
    pub initdb_dir: PathBuf,
    /// `archive_command`, e.g. `pgkeep wal push %p`.
    pub archive_command: String,
    /// `archive_timeout` in seconds (0: off): the bound on how long a commit can wait in an
    /// unfinished segment before it is archived.
    pub archive_timeout: u32,
    /// `wal.stream = sync`: commits wait for `pgkeep wal stream` (application_name `pgkeep`).
    pub synchronous_stream: bool,
    /// The WAL archive archive_command writes to: a new system (initdb) takes its root over
    /// ([`crate::archive_owner::supersede`]).
    pub wal_archive: PathBuf,
    /// PostgreSQL 17+: `summarize_wal = on`, which incremental base backups need.
    pub summarize_wal: bool,
}

/// The superuser password from `POSTGRES_PASSWORD` or the file named by
/// `POSTGRES_PASSWORD_FILE` (trailing newline removed), from the given environment.
pub fn password_from(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, PostmasterError> {
    match (get("POSTGRES_PASSWORD"), get("POSTGRES_PASSWORD_FILE")) {
        (Some(_), Some(_)) => Err(PostmasterError::PasswordSource(
            "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set".into(),
        )),
        (Some(p), None) if !p.is_empty() => Ok(Some(p)),
        (Some(_), None) => Ok(None),
        (None, Some(f)) => {
            let path = PathBuf::from(f);
            let text = std::fs::read_to_string(&path).fs_ctx("read password file", &path)?;
            let pw = text.trim_end_matches(['\n', '\r']).to_owned();
            Ok((!pw.is_empty()).then_some(pw))
        }
        (None, None) => Ok(None),
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// True when this start ran initdb (and the init scripts).
    pub initialized: bool,
    pub run_as: Option<RunAs>,
}

/// The settings pgkeep manages in `pgkeep.conf`.
pub fn managed_conf(cfg: &ServeConfig) -> ManagedConf {
    let conf = ManagedConf::default()
        .set("listen_addresses", &cfg.listen)
        .set("port", cfg.port)
        .set("unix_socket_directories", cfg.run_dir.display())
        .set("wal_level", "replica")
        .set("archive_mode", "on")
        .set("archive_command", &cfg.archive_command)
        // A quiet server would otherwise keep its last commits in an unfinished segment for
        // hours: switch (and archive) at least this often. An idle switch costs little in the
        // archive (the rest of the segment is zeros, which zstd stores in a few hundred bytes).
        .set("archive_timeout", format!("{}s", cfg.archive_timeout))
        // `wal.stream = sync`: a commit is acknowledged once `pgkeep wal stream` has flushed its
        // WAL on the archive volume (and waits while the stream is down); otherwise no
        // synchronous standby, whatever an earlier start set.
        .set(
            "synchronous_standby_names",
            if cfg.synchronous_stream {
                crate::walstream::APPLICATION_NAME
            } else {
                ""
            },
        )
        // The container's log is stderr (`kubectl logs`).
        .set("logging_collector", "off")
        .set("log_destination", "stderr");
    // 17+: WAL summaries, so `backup physical --incremental` can find the changed blocks (a
    // background process reading WAL once; the GUC does not exist before 17).
    if cfg.summarize_wal {
        conf.set("summarize_wal", "on")
    } else {
        conf
    }
}

const HBA_BEGIN: &str = "# BEGIN pgkeep managed block (rewritten at every start)";
const HBA_END: &str = "# END pgkeep managed block";

/// pg_hba lines pgkeep owns: password (scram-sha-256) for every TCP connection, replication
/// included. Lines a person adds above the block match first.
pub fn managed_hba() -> String {
    format!(
        "{HBA_BEGIN}\n\
         host    all             all             all                     scram-sha-256\n\
         host    replication     all             all                     scram-sha-256\n\
         {HBA_END}\n"
    )
}

/// Replace (or append) the managed block of pg_hba.conf text.
pub fn with_managed_hba(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == HBA_BEGIN {
            inside = true;
            continue;
        }
        if line == HBA_END {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&managed_hba());
    out
}

fn write_hba(pgdata: &Path, run_as: Option<RunAs>) -> Result<(), PostmasterError> {
    let path = pgdata.join("pg_hba.conf");
    let text = std::fs::read_to_string(&path).fs_ctx("read", &path)?;
    let new = with_managed_hba(&text);
    if new != text {
        fsutil::write_atomic(&path, new.as_bytes(), 0o600, true)?;
        if let Some(r) = run_as {
            fsutil::chown(&path, r.uid, r.gid)?;
        }
    }
    Ok(())
}

/// Guard, directories, initdb when PGDATA is empty, managed settings. Nothing is written
/// before the mount guard has passed.
pub fn prepare(
    pg: &PgBin,
    cfg: &ServeConfig,
    password: Option<&str>,
) -> Result<Prepared, PostmasterError> {
    // An unfinished bootstrap gave PGDATA up: whatever is there now (nothing, a partly emptied
    // old database, the new data before its recovery ended) is not a database to start or to
    // initdb over (see bootmark). Checked first: only reads.
    crate::bootmark::refuse_initdb(&cfg.pgroot, &cfg.pgdata)?;
    datadir::prep_dirs(
        &cfg.pgroot,
        &cfg.pgdata,
        &cfg.run_dir,
        cfg.uid,
        cfg.gid,
        PrepMode::All,
    )?;
    let run_as = RunAs::data_owner(cfg.uid, cfg.gid)?;
    let version_file = cfg.pgdata.join("PG_VERSION");
    if version_file.exists() {
        let data = std::fs::read_to_string(&version_file)
            .fs_ctx("read", &version_file)?
            .trim()
            .to_owned();
        let server = pg.major_version("postgres")?;
        if data != server.to_string() {
            return Err(PostmasterError::VersionMismatch {
                pgdata: cfg.pgdata.clone(),
                data,
                server,
            });
        }
        tracing::info!(pgdata = %cfg.pgdata.display(), version = %data, "using the existing data directory");
        server::write_managed_conf(&cfg.pgdata, &managed_conf(cfg), run_as)?;
        write_hba(&cfg.pgdata, run_as)?;
        return Ok(Prepared {
            initialized: false,
            run_as,
        });
    }
    let Some(password) = password else {
        return Err(PostmasterError::NoPassword {
            pgdata: cfg.pgdata.clone(),
        });
    };
    // A new database system is about to be born: WAL of an earlier one in the archive root would
    // clash with its segment names (see archive_owner). Moved aside, never deleted.
    if cfg.wal_archive.is_dir() {
        let archive = crate::wal::Archive::new(&cfg.wal_archive);
        if let Some(moved) = crate::archive_owner::supersede(&archive, crate::clock::now())? {
            tracing::warn!(
                "the WAL archive held an earlier database system's WAL and a new system is being \
                 initialized: {moved} (kept for bootstraps from that system's base backups)"
            );
        }
    }
    tracing::info!(pgdata = %cfg.pgdata.display(), "PGDATA is empty: initializing (initdb with data checksums)");
    server::initdb(
        pg,
        &InitDb {
            pgdata: &cfg.pgdata,
            superuser: &cfg.superuser,
            password: Some(password),
            data_checksums: true,
            run_as,
        },
    )?;
    if let Err(e) = first_start(pg, cfg, run_as) {
        reset_pgdata(&cfg.pgdata);
        return Err(e);
    }
    Ok(Prepared {
        initialized: true,
        run_as,
    })
}

fn step<T>(name: &str, r: Result<T, impl Into<PostmasterError>>) -> Result<T, PostmasterError> {
    r.map_err(|e| PostmasterError::Init {
        step: name.to_owned(),
        source: Box::new(e.into()),
    })
}

/// After initdb: managed settings, then a socket-only server for creating the database and
/// running the init scripts, stopped again.
fn first_start(
    pg: &PgBin,
    cfg: &ServeConfig,
    run_as: Option<RunAs>,
) -> Result<(), PostmasterError> {
    step(
        "writing pgkeep.conf",
        server::write_managed_conf(&cfg.pgdata, &managed_conf(cfg), run_as),
    )?;
    step("writing pg_hba.conf", write_hba(&cfg.pgdata, run_as))?;
    let log = cfg.run_dir.join("pgkeep-first-start.log");
    let start = RunAs::apply(
        run_as,
        pg.cmd("pg_ctl")
            .arg("-D")
            .arg(&cfg.pgdata)
            .arg("-l")
            .arg(&log)
            // Socket only, no archiving and no synchronous standby (no stream runs yet, and
            // the init scripts' commits must not wait for one): nobody else can connect.
            .args([
                "-o",
                "-c listen_addresses='' -c archive_mode=off -c synchronous_standby_names=''",
            ])
            .args(["-w", "-t", "300", "start"]),
    );
    let started = start.run();
    let result = started.map_err(PostmasterError::from).and_then(|()| {
        let r = create_database(pg, cfg, run_as).and_then(|()| run_init_scripts(pg, cfg, run_as));
        let stopped = server::pg_ctl_stop(pg, &cfg.pgdata, run_as);
        r.and(stopped.map_err(PostmasterError::from))
    });
    if let Ok(text) = std::fs::read_to_string(&log) {
        for line in text.lines() {
            eprintln!("{line}");
        }
    }
    let _ = std::fs::remove_file(&log);
    result
}

fn client(pg: &PgBin, program: &str, cfg: &ServeConfig, run_as: Option<RunAs>) -> Cmd {
    let mut cmd = pg
        .cmd(program)
        .env("PGHOST", cfg.run_dir.as_os_str())
        .env("PGPORT", cfg.port.to_string())
        .env("PGUSER", &cfg.superuser);
    for k in SECRET_ENV {
        cmd = cmd.env_remove(k);
    }
    RunAs::apply(run_as, cmd)
}

fn create_database(
    pg: &PgBin,
    cfg: &ServeConfig,
    run_as: Option<RunAs>,
) -> Result<(), PostmasterError> {
    if cfg.database == "postgres" || cfg.database.is_empty() {
        return Ok(());
    }
    tracing::info!(database = %cfg.database, "creating the database");
    step(
        &format!("creating database {}", cfg.database),
        client(pg, "createdb", cfg, run_as)
            .args(["--maintenance-db", "postgres", "--"])
            .arg(&cfg.database)
            .run(),
    )
}

/// The init scripts, in name order: `*.sql` and `*.sql.gz` through psql (stop at the first
/// error), `*.sh` with sh (or directly when executable); other files are skipped.
pub fn run_init_scripts(
    pg: &PgBin,
    cfg: &ServeConfig,
    run_as: Option<RunAs>,
) -> Result<(), PostmasterError> {
    let dir = &cfg.initdb_dir;
    if !dir.is_dir() {
        return Ok(());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .fs_ctx("read directory", dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let psql = || {
            client(pg, "psql", cfg, run_as)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(&cfg.database)
        };
        let r: Result<(), PostmasterError> = if name.ends_with(".sql") {
            tracing::info!(script = %f.display(), "running init script");
            psql().arg("-f").arg(&f).run().map_err(Into::into)
        } else if name.ends_with(".sql.gz") {
            tracing::info!(script = %f.display(), "running init script");
            gunzip_to_temp(&f)
                .and_then(|tmp| psql().stdin_file(tmp.path()).run().map_err(Into::into))
        } else if name.ends_with(".sh") {
            tracing::info!(script = %f.display(), "running init script");
            let executable = std::fs::metadata(&f)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            let cmd = if executable {
                Cmd::new(&f)
            } else {
                Cmd::new("sh").arg(&f)
            };
            let mut cmd = cmd
                .env("PGHOST", cfg.run_dir.as_os_str())
                .env("PGPORT", cfg.port.to_string())
                .env("PGUSER", &cfg.superuser)
                .env("PGDATABASE", &cfg.database)
                .env("POSTGRES_USER", &cfg.superuser)
                .env("POSTGRES_DB", &cfg.database)
                .env("PGDATA", cfg.pgdata.as_os_str());
            if let Some(bin) = pg.dir() {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![bin.to_owned()];
                paths.extend(std::env::split_paths(&path));
                if let Ok(joined) = std::env::join_paths(paths) {
                    cmd = cmd.env("PATH", joined);
                }
            }
            for k in SECRET_ENV {
                cmd = cmd.env_remove(k);
            }
            RunAs::apply(run_as, cmd).run().map_err(Into::into)
        } else {
            tracing::info!(file = %f.display(), "ignoring (not *.sql, *.sql.gz or *.sh)");
            Ok(())
        };
        step(&format!("init script {name}"), r)?;
    }
    Ok(())
}

fn gunzip_to_temp(path: &Path) -> Result<tempfile::NamedTempFile, PostmasterError> {
    let input = std::fs::File::open(path).fs_ctx("open", path)?;
    let mut tmp = tempfile::NamedTempFile::new().fs_ctx("create temporary file for", path)?;
    let mut dec = flate2::read::GzDecoder::new(input);
    std::io::copy(&mut dec, tmp.as_file_mut()).fs_ctx("decompress", path)?;
    tmp.as_file_mut().flush().fs_ctx("write", tmp.path())?;
    Ok(tmp)
}

/// Empty PGDATA after a failed first start (only what this start created).
fn reset_pgdata(pgdata: &Path) {
    if let Ok(entries) = std::fs::read_dir(pgdata) {
        for e in entries.flatten() {
            let p = e.path();
            let r = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::warn!(path = %p.display(), "could not remove after failed initialization: {err}");
            }
        }
    }
}

/// Signal handlers, installed before the child exists so no signal is lost in between.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, PostmasterError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(PostmasterError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(PostmasterError::Signals)?,
            quit: signal(SignalKind::quit()).map_err(PostmasterError::Signals)?,
        })
    }

    /// Whether a stop signal already arrived (without waiting).
    pub async fn stop_requested(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.term.recv() => true,
            _ = self.int.recv() => true,
            _ = self.quit.recv() => true,
            _ = std::future::ready(()) => false,
        }
    }
}

/// A running postmaster.
pub struct Postmaster {
    running: Running,
    log_copier: Option<std::thread::JoinHandle<()>>,
    /// PGDATA, while the checkpointer still has to be woken once the server is ready (see
    /// [`Postmaster::arm_archive_timeout`]).
    wake_when_ready: Option<PathBuf>,
}

impl Postmaster {
    /// Start `postgres -D PGDATA` as the data owner. Its stderr (the server log) is merged into
    /// stdout by a `sh -c 'exec ... 2>&1'` wrapper and copied to our stderr as it comes.
    pub fn spawn(
        pg: &PgBin,
        pgdata: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Postmaster, PostmasterError> {
        let mut cmd = Cmd::new("sh")
            .args(["-c", "exec \"$0\" \"$@\" 2>&1"])
            .arg(pg.path("postgres"))
            .arg("-D")
            .arg(pgdata)
            // Should pgkeep die without stopping it: an immediate shutdown (crash-safe).
            .on_parent_death(rustix::process::Signal::QUIT);
        for k in SECRET_ENV {
            cmd = cmd.env_remove(k);
        }
        let mut running = RunAs::apply(run_as, cmd).spawn()?;
        let log_copier = running.take_stdout().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let stderr = std::io::stderr();
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut e = stderr.lock();
                    let _ = e.write_all(&buf[..n]);
                    let _ = e.flush();
                }
            })
        });
        tracing::info!(pid = running.id(), "postgres started");
        Ok(Postmaster {
            running,
            log_copier,
            wake_when_ready: None,
        })
    }

    /// Make `archive_timeout` hold from the moment the server accepts connections. After a
    /// start without crash recovery, PostgreSQL's checkpointer computes its first sleep while
    /// the startup process still runs, ignores `archive_timeout` for it (it does not apply during
    /// recovery) and so sleeps up to `checkpoint_timeout` (5 min by default) before its first
    /// look: a quiet server started a minute ago does not switch segments, and its last commits
    /// stay off the archive (measured on 15 and 18). One SIGHUP to the postmaster once
    /// `postmaster.pid` says `ready` reloads the (unchanged) configuration, which wakes the
    /// checkpointer and makes it recompute its sleep with recovery over.
    pub fn arm_archive_timeout(mut self, pgdata: &Path) -> Postmaster {
        self.wake_when_ready = Some(pgdata.to_owned());
        self
    }

    /// If armed and the server is now ready: wake the checkpointer (once).
    fn wake_checkpointer_if_ready(&mut self) {
        let Some(pgdata) = &self.wake_when_ready else {
            return;
        };
        // postmaster.pid's 8th line is the server's state ("ready" once it accepts connections).
        let ready = std::fs::read_to_string(pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().nth(7).map(|l| l.trim() == "ready"))
            .unwrap_or(false);
        if !ready {
            return;
        }
        self.wake_when_ready = None;
        match self.running.signal(rustix::process::Signal::HUP) {
            Ok(()) => tracing::info!(
                "server ready: reloaded its configuration so archive_timeout applies from now"
            ),
            Err(e) => tracing::warn!(
                "could not signal postgres to apply archive_timeout ({e}); it applies after the \
                 first checkpoint_timeout instead"
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.running.id()
    }

    /// Wait for postgres to exit, forwarding SIGTERM and SIGINT as a fast shutdown (SIGINT to
    /// the postmaster) and SIGQUIT as an immediate one.
    pub async fn supervise(mut self, signals: &mut Signals) -> Result<ExitStatus, PostmasterError> {
        use rustix::process::Signal;
        loop {
            let forward = tokio::select! {
                _ = signals.term.recv() => Some(("SIGTERM", Signal::INT)),
                _ = signals.int.recv() => Some(("SIGINT", Signal::INT)),
                _ = signals.quit.recv() => Some(("SIGQUIT", Signal::QUIT)),
                _ = tokio::time::sleep(Duration::from_millis(200)) => None,
            };
            if let Some((got, sig)) = forward {
                tracing::info!(
                    "{got} received: asking postgres for a {} shutdown",
                    if sig == Signal::QUIT {
                        "immediate"
                    } else {
                        "fast"
                    }
                );
                // The child may just have exited; the status check below tells.
                let _ = self.running.signal(sig);
            }
            if let Some(status) = self.running.try_status()? {
                if let Some(h) = self.log_copier.take() {
                    let _ = h.join();
                }
                return Ok(status);
            }
            self.wake_checkpointer_if_ready();
        }
    }
}

/// The process exit code for a child's status: its code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_block_is_replaced_not_duplicated_and_user_lines_stay() {
        let original = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let once = with_managed_hba(original);
        let twice = with_managed_hba(&once);
        assert_eq!(once, twice);
        assert!(once.starts_with(original));
        assert_eq!(once.matches(HBA_BEGIN).count(), 1);
        assert!(once.contains(
            "host    all             all             all                     scram-sha-256"
        ));
        assert!(!once.contains("trust\nhost    all"), "no trust for TCP");
    }

    #[test]
    fn managed_settings_archive_and_listen() {
        let cfg = ServeConfig {
            pgroot: "/v".into(),
            pgdata: "/v/data".into(),
            run_dir: "/run/pg".into(),
            uid: 999,
            gid: 999,
            port: 5433,
            listen: "*".into(),
            superuser: "postgres".into(),
            database: "records".into(),
            initdb_dir: "/docker-entrypoint-initdb.d".into(),
            archive_command: "pgkeep wal push %p".into(),
            archive_timeout: 60,
            synchronous_stream: false,
            wal_archive: "/wal-archive".into(),
            summarize_wal: false,
        };
        let text = managed_conf(&cfg).render();
        assert!(text.contains("synchronous_standby_names = ''"), "{text}");
        assert!(!text.contains("summarize_wal"), "not before 17: {text}");
        let on17 = managed_conf(&ServeConfig {
            summarize_wal: true,
            ..cfg.clone()
        })
        .render();
        assert!(on17.contains("summarize_wal = 'on'"), "{on17}");
        let sync = managed_conf(&ServeConfig {
            synchronous_stream: true,
            ..cfg.clone()
        })
        .render();
        assert!(
            sync.contains("synchronous_standby_names = 'pgkeep'"),
            "{sync}"
        );
        for want in [
            "listen_addresses = '*'",
            "port = '5433'",
            "unix_socket_directories = '/run/pg'",
            "wal_level = 'replica'",
            "archive_mode = 'on'",
            "archive_command = 'pgkeep wal push %p'",
            "archive_timeout = '60s'",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn password_sources() {
        let none = |_: &str| None;
        assert_eq!(password_from(none).unwrap(), None);
        let env = |k: &str| (k == "POSTGRES_PASSWORD").then(|| "s3cret".to_owned());
        assert_eq!(password_from(env).unwrap().as_deref(), Some("s3cret"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let fp = f.display().to_string();
        let file = |k: &str| (k == "POSTGRES_PASSWORD_FILE").then(|| fp.clone());
        assert_eq!(password_from(file).unwrap().as_deref(), Some("from-file"));
        let both = |k: &str| match k {
            "POSTGRES_PASSWORD" => Some("a".to_owned()),
            "POSTGRES_PASSWORD_FILE" => Some(fp.clone()),
            _ => None,
        };
        let err = password_from(both).unwrap_err().to_string();
        assert!(err.contains("only one"), "{err}");
        assert!(!err.contains("from-file"));
    }

    #[test]
    fn exit_codes_follow_the_child() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
