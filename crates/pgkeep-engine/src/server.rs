//! Running the PostgreSQL server itself: initdb, the pgkeep-managed settings file, starting and
//! stopping a postmaster with pg_ctl, and [`ChildServer`], a postmaster that lives only as long as
//! the pgkeep run that needs it; always as the data owner (never as root).
//!
//! Which to use: a server that must outlive pgkeep (a bootstrap that leaves the recovered
//! database running on a plain host) starts with pg_ctl, which detaches it. A server that only
//! does a job for this run (the replay server of a bootstrap, a drill's throwaway server) is a
//! [`ChildServer`]: pgkeep's own child, which the kernel shuts down (SIGQUIT, an immediate
//! shutdown) when pgkeep dies however it dies, so a killed run never leaves a server replaying
//! into a directory the next run is about to empty.
//!
//! The managed settings live in `PGDATA/pgkeep.conf`, included from `postgresql.conf` by one
//! `include_if_exists` line that pgkeep adds once; a person's own edits to `postgresql.conf` stay
//! theirs. The superuser password reaches initdb through a 0600 password file that is removed
//! right after, never through argv.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fsutil::{self, FsError, IoContext};
use crate::tools::{Cmd, PgBin, Running, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "PostgreSQL refuses to run as root, and uid {uid} has no account on this machine (initdb needs one)\nhint: {hint}"
    )]
    NoAccount { uid: u32, hint: String },
    #[error(
        "{pgdata} already holds a data directory (PG_VERSION exists)\nhint: use it as is, or empty it first with `pgkeep wipe`"
    )]
    AlreadyInitialized { pgdata: PathBuf },
    #[error(
        "PostgreSQL did not start: {why} (log: {log_file}){log}\nhint: the log lines above say why; fix that and run again"
    )]
    NotStarted {
        log_file: PathBuf,
        log: String,
        why: String,
    },
}

/// Who runs server programs: when this process is root, the data owner; otherwise ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// The data owner, checked to have an account when we must switch to it.
    pub fn data_owner(uid: u32, gid: u32) -> Result<Option<RunAs>, ServerError> {
        if !fsutil::is_root() {
            return Ok(None);
        }
        if uid == 0 {
            return Err(ServerError::NoAccount {
                uid,
                hint: "set PGKEEP_UID/PGKEEP_GID (or postgres.uid/gid) to a non-root account"
                    .into(),
            });
        }
        if account_name(uid).is_none() {
            return Err(ServerError::NoAccount {
                uid,
                hint: format!(
                    "create it (useradd --system --uid {uid} postgres) or point PGKEEP_UID at an existing non-root account"
                ),
            });
        }
        Ok(Some(RunAs { uid, gid }))
    }

    pub fn apply(this: Option<RunAs>, cmd: Cmd) -> Cmd {
        match this {
            Some(r) => cmd.as_user(r.uid, r.gid),
            None => cmd,
        }
    }
}

/// The account name of a uid, from /etc/passwd.
pub fn account_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// (uid, gid) of an account name, from /etc/passwd.
pub fn account_ids(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// What initdb should do.
#[derive(Debug, Clone)]
pub struct InitDb<'a> {
    pub pgdata: &'a Path,
    pub superuser: &'a str,
    /// The superuser's password (set through a temporary 0600 file).
    pub password: Option<&'a str>,
    pub data_checksums: bool,
    pub run_as: Option<RunAs>,
}

/// Run initdb on an empty (or missing) PGDATA. Local connections use peer/trust as the
/// distribution does; TCP connections need scram-sha-256.
pub fn initdb(pg: &PgBin, opts: &InitDb<'_>) -> Result<(), ServerError> {
    if opts.pgdata.join("PG_VERSION").exists() {
        return Err(ServerError::AlreadyInitialized {
            pgdata: opts.pgdata.to_owned(),
        });
    }
    let mut cmd = pg
        .cmd("initdb")
        .arg("-D")
        .arg(opts.pgdata)
        .args(["-U", opts.superuser, "-E", "UTF8", "--locale=C.UTF-8"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .env_remove("PGPASSWORD");
    if opts.data_checksums {
        cmd = cmd.arg("--data-checksums");
    }
    let parent = opts.pgdata.parent().unwrap_or(Path::new("/"));
    let mut pwfile = None;
    if let Some(pw) = opts.password {
        // On the data volume, beside PGDATA: writable by the data owner, never in argv.
        let f = tempfile::Builder::new()
            .prefix(".pgkeep-pw-")
            .tempfile_in(parent)
            .fs_ctx("create password file in", parent)?;
        let mut file = f.as_file();
        file.write_all(pw.as_bytes())
            .and_then(|_| file.write_all(b"\n"))
            .fs_ctx("write", f.path())?;
        if let Some(r) = opts.run_as {
            fsutil::chown(f.path(), r.uid, r.gid)?;
        }
        cmd = cmd.arg(format!("--pwfile={}", f.path().display()));
        pwfile = Some(f);
    }
    let result = RunAs::apply(opts.run_as, cmd).run();
    drop(pwfile);
    result?;
    Ok(())
}

/// The settings pgkeep manages, written to `PGDATA/pgkeep.conf`.
#[derive(Debug, Clone, Default)]
pub struct ManagedConf {
    pub entries: Vec<(String, String)>,
}

impl ManagedConf {
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Managed by pgkeep: rewritten at every start. Put your own settings in postgresql.conf\n\
             # (above the include line) or with ALTER SYSTEM.\n",
        );
        for (k, v) in &self.entries {
            s.push_str(&conf_line(k, v));
        }
        s
    }
}

/// One `key = 'value'` line of a PostgreSQL configuration file. Inside the quotes PostgreSQL
/// reads `''` as a quote and a backslash as the start of an escape (`\n`, `\'`, `\\`), so both
/// are escaped: a shell-quoted word's `'\''` would otherwise end the string early.
pub fn conf_line(key: &str, value: &str) -> String {
    format!(
        "{key} = '{}'\n",
        value.replace('\\', "\\\\").replace('\'', "''")
    )
}

/// The include line pgkeep adds to postgresql.conf.
pub const INCLUDE_LINE: &str = "include_if_exists = 'pgkeep.conf'\t# added by pgkeep";

/// Write `pgkeep.conf` atomically and make sure postgresql.conf includes it (once).
pub fn write_managed_conf(
    pgdata: &Path,
    conf: &ManagedConf,
    run_as: Option<RunAs>,
) -> Result<(), ServerError> {
    let path = pgdata.join("pgkeep.conf");
    fsutil::write_atomic(&path, conf.render().as_bytes(), 0o600, true)?;
    let main = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&main).fs_ctx("read", &main)?;
    if !text.lines().any(|l| {
        l.trim_start()
            .starts_with("include_if_exists = 'pgkeep.conf'")
    }) {
        let mut new = text;
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(INCLUDE_LINE);
        new.push('\n');
        fsutil::write_atomic(&main, new.as_bytes(), 0o600, true)?;
    }
    if let Some(r) = run_as {
        fsutil::chown(&path, r.uid, r.gid)?;
        fsutil::chown(&main, r.uid, r.gid)?;
    }
    Ok(())
}

/// Start a postmaster with pg_ctl and wait until it accepts connections (or `timeout`).
pub fn pg_ctl_start(
    pg: &PgBin,
    pgdata: &Path,
    log_file: &Path,
    timeout: Duration,
    run_as: Option<RunAs>,
) -> Result<(), ServerError> {
    let cmd = pg
        .cmd("pg_ctl")
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log_file)
        .args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "start"]);
    RunAs::apply(run_as, cmd).run().map_err(|e| {
        // pg_ctl's own message says little; the server log says why.
        let log = std::fs::read_to_string(log_file).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        match e {
            ToolError::Failed {
                command,
                status,
                code,
                stderr,
            } => ServerError::Tool(ToolError::Failed {
                command,
                status,
                code,
                stderr: format!(
                    "{stderr}\n--- {} (last lines) ---\n{}",
                    log_file.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            }),
            other => ServerError::Tool(other),
        }
    })
}

/// A postmaster started as pgkeep's own child for one job; see the module header.
///
/// Its log (stderr) goes to a file the caller chose. [`ChildServer::stop`] asks for a fast
/// shutdown and waits; a dropped one that still runs gets an immediate shutdown and then SIGKILL
/// for its process group.
pub struct ChildServer {
    running: Option<Running>,
    pgdata: PathBuf,
    log_file: PathBuf,
}

impl std::fmt::Debug for ChildServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildServer")
            .field("pgdata", &self.pgdata)
            .field("pid", &self.running.as_ref().map(|r| r.id()))
            .finish()
    }
}

impl ChildServer {
    /// Start `postgres -D PGDATA -c KEY=VALUE...` as the data owner, appending its log to
    /// `log_file` (which must exist and be writable by the data owner). Returns at once: the
    /// caller waits for what it needs (readiness, the end of recovery).
    pub fn start(
        pg: &PgBin,
        pgdata: &Path,
        log_file: &Path,
        run_as: Option<RunAs>,
        settings: &[(&str, String)],
    ) -> Result<ChildServer, ServerError> {
        // `sh -c 'exec postgres ... >>LOG 2>&1'`: the shell opens the log as the data owner (so
        // a root pgkeep never hands it a file it could not open itself) and is replaced by
        // postgres, which keeps the parent-death signal set for it.
        let mut cmd = Cmd::new("sh")
            .args(["-c", "log=$1; shift; exec \"$@\" >>\"$log\" 2>&1", "sh"])
            .arg(log_file)
            .arg(pg.path("postgres"))
            .arg("-D")
            .arg(pgdata)
            .on_parent_death(rustix::process::Signal::QUIT);
        for (k, v) in settings {
            cmd = cmd.arg("-c").arg(format!("{k}={v}"));
        }
        for k in ["PGPASSWORD", "POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"] {
            cmd = cmd.env_remove(k);
        }
        let running = RunAs::apply(run_as, cmd).spawn()?;
        tracing::info!(pid = running.id(), log = %log_file.display(), "postgres started as pgkeep's child");
        Ok(ChildServer {
            running: Some(running),
            pgdata: pgdata.to_owned(),
            log_file: log_file.to_owned(),
        })
    }

    /// Whether the postmaster has exited (it is reaped here, so a dead one is never taken for a
    /// live one by a pid check).
    pub fn exited(&mut self) -> bool {
        match self.running.as_mut() {
            Some(r) => !matches!(r.try_status(), Ok(None)),
            None => true,
        }
    }

    /// Wait until the server accepts connections (`postmaster.pid` says `ready`). An exit or
    /// `timeout` is an error carrying the log's tail.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let started = std::time::Instant::now();
        loop {
            let pid_file =
                std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap_or_default();
            if pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready") && !self.exited() {
                return Ok(());
            }
            if self.exited() || started.elapsed() > timeout {
                return Err(ServerError::NotStarted {
                    log_file: self.log_file.clone(),
                    log: log_tail(&self.log_file, 20),
                    why: if self.exited() {
                        "it exited".into()
                    } else {
                        format!(
                            "it did not accept connections within {}s",
                            timeout.as_secs()
                        )
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown (SIGINT: roll back sessions, checkpoint or restartpoint, exit) and wait up
    /// to 5 minutes; then an immediate one. The exit status is not judged (a server stopped by
    /// a signal during recovery may exit non-zero); that it is gone is what counts.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shut_down(Duration::from_secs(300))
    }

    fn shut_down(&mut self, patience: Duration) -> Result<(), ServerError> {
        let Some(mut running) = self.running.take() else {
            return Ok(());
        };
        if matches!(running.try_status(), Ok(None)) {
            let _ = running.signal(rustix::process::Signal::INT);
            let started = std::time::Instant::now();
            while matches!(running.try_status(), Ok(None)) {
                if started.elapsed() > patience {
                    tracing::warn!(pgdata = %self.pgdata.display(), "postgres did not stop in time: immediate shutdown");
                    let _ = running.signal(rustix::process::Signal::QUIT);
                    std::thread::sleep(Duration::from_secs(5));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Reaps it; a postmaster still there after the immediate shutdown is killed with its
        // process group by Running's drop.
        drop(running);
        Ok(())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.as_ref() {
            let _ = r.signal(rustix::process::Signal::QUIT);
        }
        let _ = self.shut_down(Duration::from_secs(10));
    }
}

/// The last `n` lines of a server log, under a line naming the file (for an error message).
pub fn log_tail(log_file: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log_file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "\n--- {} (last lines) ---\n{}",
        log_file.display(),
        lines[start..].join("\n")
    )
}

/// Stop a postmaster with pg_ctl (`fast` mode: roll back open transactions, checkpoint, exit).
pub fn pg_ctl_stop(pg: &PgBin, pgdata: &Path, run_as: Option<RunAs>) -> Result<(), ServerError> {
    let cmd = pg
        .cmd("pg_ctl")
        .arg("-D")
        .arg(pgdata)
        .args(["-w", "-t", "300", "-m", "fast", "stop"]);
    RunAs::apply(run_as, cmd).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_lines_escape_quotes_and_backslashes() {
        assert_eq!(conf_line("port", "5432"), "port = '5432'\n");
        assert_eq!(conf_line("a", "it's"), "a = 'it''s'\n");
        // A shell-quoted quote: PostgreSQL would read `\'` as an escaped quote.
        assert_eq!(
            conf_line("archive_command", r"'/opt/it'\''s/pgkeep' wal push %p"),
            "archive_command = '''/opt/it''\\\\''''s/pgkeep'' wal push %p'\n"
        );
    }

    #[test]
    fn managed_conf_quotes_values() {
        let c = ManagedConf::default()
            .set("archive_command", "pgkeep wal push '%p'")
            .set("port", 5432)
            .set("port", 5433);
        let text = c.render();
        assert!(
            text.contains("archive_command = 'pgkeep wal push ''%p'''"),
            "{text}"
        );
        assert!(text.contains("port = '5433'"));
        assert!(!text.contains("5432"));
    }

    #[test]
    fn include_line_is_added_once() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("postgresql.conf"), "max_connections = 100").unwrap();
        for _ in 0..2 {
            write_managed_conf(t.path(), &ManagedConf::default().set("port", 1), None).unwrap();
        }
        let main = std::fs::read_to_string(t.path().join("postgresql.conf")).unwrap();
        assert_eq!(
            main.matches("include_if_exists = 'pgkeep.conf'").count(),
            1,
            "{main}"
        );
        assert!(main.starts_with("max_connections = 100\n"));
    }

    #[test]
    fn passwd_lookups() {
        assert_eq!(account_name(0).as_deref(), Some("root"));
        assert_eq!(account_ids("root"), Some((0, 0)));
        assert_eq!(account_ids("no-such-account-here"), None);
    }
}
