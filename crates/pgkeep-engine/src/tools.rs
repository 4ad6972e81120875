//! The one way pgkeep starts another program.
//!
//! Every external tool (pg_dump, pg_restore, psql, pg_basebackup, initdb, pg_ctl, postgres, ...)
//! runs through [`Cmd`]: stdin is closed unless the caller asks for a pipe, the child gets its
//! own session so no tool can prompt on the terminal, stderr is read on a thread while the child
//! runs (so a chatty tool cannot dead-lock on a full pipe) and its tail is put into the error, and
//! the exit status is always checked. Secrets go to the child through the environment only
//! ([`Cmd::secret_env`]); they are never on argv and never in a rendered command line.
//!
//! No child outlives pgkeep. Each runs in its own session (so its own process group), and the
//! kernel sends it a signal when pgkeep dies, however it dies (kill -9 included): SIGKILL by
//! default, [`Cmd::on_parent_death`] for a server that should shut down its own way. The kernel
//! sends that signal when the *thread* that started the child ends, so every child is started
//! from one thread that lives as long as the process. A dropped [`Running`] kills its child's
//! whole process group (pg_dump's and pg_restore's parallel workers with it).
//!
//! [`PgBin`] finds the PostgreSQL client and server programs.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

/// How much of a tool's stderr is kept for the error message.
const STDERR_TAIL: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} was not found{searched}\nhint: {hint}")]
    NotFound {
        program: String,
        searched: String,
        hint: String,
    },
    #[error("could not start {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}){stderr}")]
    Failed {
        command: String,
        status: String,
        /// Exit code when the tool exited normally.
        code: Option<i32>,
        stderr: String,
    },
    #[error("i/o with {command}: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl ToolError {
    /// The tool's exit code when it ran and failed with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ToolError::Failed { code, .. } => *code,
            _ => None,
        }
    }

    /// The tool's captured stderr, when it ran and failed.
    pub fn stderr(&self) -> &str {
        match self {
            ToolError::Failed { stderr, .. } => stderr.trim_start_matches(":\n"),
            _ => "",
        }
    }
}

/// Where the child's stdin comes from.
#[derive(Debug, Default)]
enum Input {
    #[default]
    Null,
    Piped,
    File(PathBuf),
}

/// A command to run. Build it, then [`Cmd::output`], [`Cmd::run`] or [`Cmd::spawn`].
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    secret_envs: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    cwd: Option<PathBuf>,
    stdin: Input,
    stdout_to: Option<PathBuf>,
    user: Option<(u32, u32)>,
    death_signal: rustix::process::Signal,
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            secret_envs: Vec::new(),
            env_remove: Vec::new(),
            cwd: None,
            stdin: Input::Null,
            stdout_to: None,
            user: None,
            death_signal: rustix::process::Signal::KILL,
        }
    }

    /// The signal the child gets when pgkeep dies (SIGKILL unless set; a postmaster wants
    /// SIGQUIT, its immediate shutdown).
    pub fn on_parent_death(mut self, signal: rustix::process::Signal) -> Self {
        self.death_signal = signal;
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable that may be shown in logs and errors.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// An environment variable whose value is never shown (PGPASSWORD and the like).
    pub fn secret_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.secret_envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Do not pass this variable from pgkeep's own environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_owned());
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Give the child a pipe on stdin ([`Running::take_stdin`]).
    pub fn stdin_piped(mut self) -> Self {
        self.stdin = Input::Piped;
        self
    }

    /// Feed the child this file on stdin.
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin = Input::File(path.into());
        self
    }

    /// Send the child's stdout to this file (created or truncated) instead of capturing it.
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout_to = Some(path.into());
        self
    }

    /// Run the child as this uid/gid (supplementary groups dropped). Only root can do this.
    pub fn as_user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// The command line as it may be shown to a person: secrets are not part of it.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.envs {
            s.push_str(&format!(
                "{}={} ",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            ));
        }
        s.push_str(&shell_quote(&self.program.to_string_lossy()));
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(&a.to_string_lossy()));
        }
        s
    }

    fn program_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.to_string_lossy().into_owned())
    }

    fn build(&self, stdout: Stdio) -> Result<Command, ToolError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.envs(self.secret_envs.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.stdin(match &self.stdin {
            Input::Null => Stdio::null(),
            Input::Piped => Stdio::piped(),
            Input::File(p) => Stdio::from(std::fs::File::open(p).map_err(|e| ToolError::Io {
                command: self.display(),
                source: io::Error::new(e.kind(), format!("{}: {e}", p.display())),
            })?),
        });
        cmd.stdout(stdout);
        cmd.stderr(Stdio::piped());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let parent = rustix::process::getpid();
        let death_signal = self.death_signal;
        // SAFETY: the closure only makes async-signal-safe system calls (setsid, prctl,
        // getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // A new session has no controlling terminal: no tool can prompt for a password.
                rustix::process::setsid().map_err(io::Error::from)?;
                // Die with pgkeep. Set after any uid change (which would clear it); the spawning
                // thread lives as long as the process (see `spawn_kept`).
                rustix::process::set_parent_process_death_signal(Some(death_signal))
                    .map_err(io::Error::from)?;
                // pgkeep may have died before the line above: then nobody would ever signal us.
                if rustix::process::getppid() != Some(parent) {
                    return Err(io::Error::other(
                        "pgkeep exited while starting this program",
                    ));
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Start the child. Stdout is piped unless [`Cmd::stdout_file`] was given.
    pub fn spawn(self) -> Result<Running, ToolError> {
        let stdout = match &self.stdout_to {
            Some(p) => Stdio::from(std::fs::File::create(p).map_err(|e| ToolError::Io {
                command: self.display(),
                source: io::Error::new(e.kind(), format!("{}: {e}", p.display())),
            })?),
            None => Stdio::piped(),
        };
        self.spawn_with(stdout)
    }

    fn spawn_with(self, stdout: Stdio) -> Result<Running, ToolError> {
        let display = self.display();
        let command = self.build(stdout)?;
        tracing::debug!(command = %self.display(), "running");
        let mut child = spawn_kept(command).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ToolError::NotFound {
                    program: self.program_name(),
                    searched: format!(" (tried {})", self.program.display()),
                    hint: "install the PostgreSQL client and server packages, or set PGKEEP_PG_BIN to the directory holding them".into(),
                }
            } else {
                ToolError::Spawn {
                    command: display.clone(),
                    source,
                }
            }
        })?;
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut tail: Vec<u8> = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tail.extend_from_slice(&buf[..n]);
                            if tail.len() > 2 * STDERR_TAIL {
                                tail.drain(..tail.len() - STDERR_TAIL);
                            }
                        }
                    }
                }
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
                tail
            })
        });
        Ok(Running {
            child,
            stderr,
            display,
        })
    }

    /// Run to completion and return stdout. Fails when the exit status is not 0.
    pub fn output(self) -> Result<Vec<u8>, ToolError> {
        self.spawn_with(Stdio::piped())?.output()
    }

    /// Run to completion and return stdout as text (lossy UTF-8, trailing newline trimmed).
    pub fn output_string(self) -> Result<String, ToolError> {
        Ok(stdout_text(&self.output()?))
    }

    /// [`Cmd::output_string`] of several commands that print little, all started before the
    /// first is waited for (e.g. one `postgres -C` per setting: each spends most of its time
    /// starting up). The results come in the order given.
    pub fn output_strings_together(cmds: Vec<Cmd>) -> Vec<Result<String, ToolError>> {
        let started: Vec<_> = cmds
            .into_iter()
            .map(|c| c.spawn_with(Stdio::piped()))
            .collect();
        started
            .into_iter()
            .map(|r| Ok(stdout_text(&r?.output()?)))
            .collect()
    }

    /// Run to completion, discarding stdout.
    pub fn run(self) -> Result<(), ToolError> {
        let running = if self.stdout_to.is_some() {
            self.spawn()?
        } else {
            self.spawn_with(Stdio::null())?
        };
        running.wait()
    }
}

/// A started child. Dropping it without [`Running::wait`] kills it.
pub struct Running {
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    display: String,
}

impl Running {
    /// Read stdout to its end, then wait; an exit status other than 0 is an error.
    fn output(mut self) -> Result<Vec<u8>, ToolError> {
        let mut out = Vec::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout
                .read_to_end(&mut out)
                .map_err(|source| ToolError::Io {
                    command: self.display.clone(),
                    source,
                })?;
        }
        self.wait()?;
        Ok(out)
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn command(&self) -> &str {
        &self.display
    }

    /// Send a signal to the child (e.g. SIGTERM for a clean stop).
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), ToolError> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("child pid > 0");
        rustix::process::kill_process(pid, signal).map_err(|e| ToolError::Io {
            command: self.display.clone(),
            source: e.into(),
        })
    }

    /// Whether the child has exited, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, ToolError> {
        self.child.try_wait().map_err(|source| ToolError::Io {
            command: self.display.clone(),
            source,
        })
    }

    /// Wait for the child and return its raw exit status without judging it.
    pub fn wait_status(mut self) -> Result<(ExitStatus, String), ToolError> {
        drop(self.child.stdin.take());
        let status = self.child.wait().map_err(|source| ToolError::Io {
            command: self.display.clone(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((status, String::from_utf8_lossy(&stderr).into_owned()))
    }

    /// Wait for the child; an exit status other than 0 is an error carrying stderr's tail.
    pub fn wait(self) -> Result<(), ToolError> {
        let display = self.display.clone();
        let (status, stderr) = self.wait_status()?;
        if status.success() {
            return Ok(());
        }
        Err(failed(display, status, &stderr))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The child leads its own process group: take its workers along.
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

type SpawnRequest = (Command, std::sync::mpsc::SyncSender<io::Result<Child>>);

/// Start `command` from the one thread that lives as long as this process, so the parent-death
/// signal set in the child fires when pgkeep dies and never when some worker thread ends (as
/// tokio's idle blocking threads do).
fn spawn_kept(mut command: Command) -> io::Result<Child> {
    use std::sync::{Mutex, OnceLock, mpsc};
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnRequest>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pgkeep-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop (and the thread) never ends.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let Some(spawner) = spawner else {
        return Err(io::Error::other(
            "the thread that starts programs could not be started",
        ));
    };
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let sent = spawner
        .lock()
        .map_err(|_| io::Error::other("the spawner is poisoned"))?
        .send((command, reply));
    if let Err(mpsc::SendError((c, _))) = sent {
        command = c;
        return command.spawn();
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the thread that starts programs has gone")))
}

/// A program's stdout as text: lossy UTF-8, trailing newline trimmed.
fn stdout_text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim_end().to_owned()
}

fn failed(command: String, status: ExitStatus, stderr: &str) -> ToolError {
    let status_text = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    let stderr = stderr.trim();
    ToolError::Failed {
        command,
        status: status_text,
        code: status.code(),
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(":\n{stderr}")
        },
    }
}

/// Quote one word for a POSIX shell (for `display` and for option strings a program hands to
/// `/bin/sh`, like `pg_ctl -o`). `%` is left as it is: the shell gives it no meaning. For a word
/// in a command PostgreSQL runs (`archive_command`, `restore_command`) use
/// [`shell_quote_for_pg_command`].
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,%@+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quote one word for a command PostgreSQL hands to `/bin/sh` after replacing its `%`
/// placeholders (`archive_command`, `restore_command`): [`shell_quote`], then every `%` doubled,
/// since PostgreSQL reads `%%` as one `%` and would otherwise put a path in place of a `%p` or
/// `%f` in the word (and 16+ refuses any other `%x`). The placeholders themselves (`%p`, `%f`)
/// are written next to the quoted words, not through this.
pub fn shell_quote_for_pg_command(s: &str) -> String {
    shell_quote(s).replace('%', "%%")
}

/// Where the PostgreSQL programs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: Option<PathBuf>,
}

impl PgBin {
    /// Find the PostgreSQL programs: `PGKEEP_PG_BIN`, then `pg_config --bindir`, then the highest
    /// `/usr/lib/postgresql/*/bin`, then `PATH`.
    pub fn locate() -> Result<PgBin, ToolError> {
        Self::locate_from(
            std::env::var_os("PGKEEP_PG_BIN").map(PathBuf::from),
            Path::new("/usr/lib/postgresql"),
        )
    }

    fn locate_from(explicit: Option<PathBuf>, versions_root: &Path) -> Result<PgBin, ToolError> {
        if let Some(dir) = explicit {
            if dir.join("pg_dump").is_file() || dir.join("postgres").is_file() {
                return Ok(PgBin { dir: Some(dir) });
            }
            return Err(ToolError::NotFound {
                program: "PostgreSQL programs".into(),
                searched: format!(" in PGKEEP_PG_BIN={}", dir.display()),
                hint: "point PGKEEP_PG_BIN at the directory that holds pg_dump and postgres (e.g. /usr/lib/postgresql/15/bin), or unset it".into(),
            });
        }
        if let Some(dir) = Cmd::new("pg_config")
            .arg("--bindir")
            .output_string()
            .ok()
            .map(PathBuf::from)
            .filter(|d| d.join("pg_dump").is_file())
        {
            // Debian's pg_config belongs to libpq-dev and may name /usr/bin (wrappers only);
            // prefer it only when the server binaries are there too.
            if dir.join("postgres").is_file() {
                return Ok(PgBin { dir: Some(dir) });
            }
        }
        if let Some(dir) = highest_versioned_bin(versions_root) {
            return Ok(PgBin { dir: Some(dir) });
        }
        if let Some(path) = std::env::var_os("PATH")
            && std::env::split_paths(&path).any(|d| d.join("pg_dump").is_file())
        {
            return Ok(PgBin { dir: None });
        }
        Err(ToolError::NotFound {
            program: "PostgreSQL programs (pg_dump, postgres, ...)".into(),
            searched: " via PGKEEP_PG_BIN, pg_config --bindir, /usr/lib/postgresql/*/bin or PATH"
                .into(),
            hint: "install them (Debian: apt-get install -y postgresql) or set PGKEEP_PG_BIN"
                .into(),
        })
    }

    /// The directory, when one was found (None means "use PATH").
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The path of one program, e.g. `pg.path("pg_dump")`.
    pub fn path(&self, program: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(program),
            None => PathBuf::from(program),
        }
    }

    /// A [`Cmd`] for one PostgreSQL program.
    pub fn cmd(&self, program: &str) -> Cmd {
        Cmd::new(self.path(program))
    }

    /// The major version of one program (`pg_dump --version` → 15).
    pub fn major_version(&self, program: &str) -> Result<u32, ToolError> {
        let out = self.cmd(program).arg("--version").output_string()?;
        parse_major(&out).ok_or_else(|| ToolError::Failed {
            command: format!("{} --version", program),
            status: "unexpected output".into(),
            code: None,
            stderr: format!(":\n{out}"),
        })
    }
}

fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("pg_dump").is_file() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, bin));
        }
    }
    best.map(|(_, p)| p)
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15; `... 9.6.24` → 9.
pub fn parse_major(version_output: &str) -> Option<u32> {
    let v = version_output
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("psql (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nothing here"), None);
    }

    #[test]
    fn failure_carries_stderr_and_status() {
        let err = Cmd::new("sh")
            .args(["-c", "printf '%s%s' std out; echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        let msg = err.to_string();
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(
            !msg.contains("stdout"),
            "stdout is not part of the error: {msg}"
        );
    }

    #[test]
    fn secrets_are_passed_but_never_displayed() {
        let cmd = Cmd::new("sh")
            .args(["-c", "printf %s \"$PGPASSWORD\"; exit 1"])
            .env("PGUSER", "app")
            .secret_env("PGPASSWORD", "hunter2-secret");
        let shown = cmd.display();
        assert!(shown.contains("PGUSER=app"));
        assert!(!shown.contains("hunter2"));
        let err = cmd.run().unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let out = Cmd::new("sh")
            .args(["-c", "printf %s \"$PGPASSWORD\""])
            .secret_env("PGPASSWORD", "hunter2-secret")
            .output_string()
            .unwrap();
        assert_eq!(out, "hunter2-secret");
    }

    #[test]
    fn stdin_is_closed_and_there_is_no_terminal() {
        // `cat` on a closed stdin ends at once; /dev/tty cannot be opened in a new session.
        let out = Cmd::new("sh")
            .args([
                "-c",
                "cat; if (exec </dev/tty) 2>/dev/null; then echo tty; else echo notty; fi",
            ])
            .output_string()
            .unwrap();
        assert_eq!(out, "notty");
    }

    #[test]
    fn large_stderr_does_not_deadlock_and_is_truncated() {
        let err = Cmd::new("sh")
            .args(["-c", "i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxx >&2; i=$((i+1)); done; exit 1"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line-4999"), "tail kept");
        assert!(!msg.contains("line-0-"), "head dropped");
        assert!(msg.len() < STDERR_TAIL + 1024);
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let err = Cmd::new("/nonexistent/pg_dump").run().unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("PGKEEP_PG_BIN"));
    }

    #[test]
    fn locate_prefers_explicit_dir_and_rejects_a_wrong_one() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            PgBin::locate_from(Some(dir.path().to_owned()), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("PGKEEP_PG_BIN"), "{err}");
        std::fs::write(dir.path().join("pg_dump"), "").unwrap();
        let found =
            PgBin::locate_from(Some(dir.path().to_owned()), Path::new("/nonexistent")).unwrap();
        assert_eq!(found.path("pg_dump"), dir.path().join("pg_dump"));
    }

    #[test]
    fn locate_picks_the_highest_versioned_dir() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13", "notaversion"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("pg_dump"), "").unwrap();
        }
        assert_eq!(
            highest_versioned_bin(root.path()),
            Some(root.path().join("15").join("bin"))
        );
    }

    #[test]
    fn quoting_is_shell_safe() {
        assert_eq!(shell_quote("plain-arg"), "plain-arg");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("my dir"), "'my dir'");
        // `%` means nothing to the shell.
        assert_eq!(shell_quote("100%"), "100%");
        assert_eq!(shell_quote("a b%p"), "'a b%p'");
    }

    #[test]
    fn quoting_for_a_postgresql_command_doubles_every_percent() {
        let q = shell_quote_for_pg_command;
        assert_eq!(q("/usr/bin/pgkeep"), "/usr/bin/pgkeep");
        assert_eq!(q("it's"), r"'it'\''s'");
        assert_eq!(q("my dir"), "'my dir'");
        assert_eq!(q("/wal%p"), "/wal%%p");
        assert_eq!(q("a b%f 100%"), "'a b%%f 100%%'");
        assert_eq!(q("%%"), "%%%%");
        assert_eq!(q(""), "''");
    }

    #[test]
    fn postgresql_runs_a_quoted_percent_path_as_written() {
        // A directory whose name has a space, a quote, `%p` and a lone `%`, in an
        // archive_command written by pgkeep's own conf writer: unless every `%` is doubled,
        // PostgreSQL puts the segment's path in place of `%p` (cp then fails and the segment is
        // never archived) and 16+ refuses the lone `%`; unless the conf writer escapes the
        // backslash of the quoted quote (`'\''`), the file does not even parse.
        let c = pgkeep_testkit::TempCluster::options()
            .archive_command("/bin/false")
            .start();
        let name = "arch it's %p 100%";
        let dir = c.root().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(c.uid()), Some(c.gid())).unwrap();
        let command = format!(
            "cp %p {}/%f",
            shell_quote_for_pg_command(&format!("../../{name}"))
        );
        let conf = crate::server::ManagedConf::default().set("archive_command", &command);
        let owner = crate::server::RunAs {
            uid: c.uid(),
            gid: c.gid(),
        };
        crate::server::write_managed_conf(&c.pgdata(), &conf, Some(owner)).unwrap();
        c.psql("postgres", "select pg_reload_conf()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while c.psql("postgres", "show archive_command") != command {
            assert!(
                std::time::Instant::now() < deadline,
                "archive_command not reloaded: {}\n{}",
                c.psql("postgres", "show archive_command"),
                c.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let segment = c.switch_wal_and_wait_archived();
        assert!(
            dir.join(&segment).is_file(),
            "{segment} not in {}: {:?}\n{}",
            dir.display(),
            pgkeep_testkit::file_names(&dir),
            c.log()
        );
    }
}
