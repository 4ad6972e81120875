//! Restore drills (`pgkeep drill`): prove that the newest backups restore, without touching the
//! live cluster, its PGDATA, the WAL archive or the backups.
//!
//! Everything is written into one scratch directory, hidden on the backups volume
//! (`.drill-YYYYMMDD-HHMMSS/`, 0700, owned by the data owner) and removed at the end, on success
//! and on failure, unless the caller keeps it. While a drill works, the directory carries its
//! [`runmark`] (`pid` file and heartbeat), so the next drill removes what a killed one left
//! behind, and leaves kept and live ones alone. Each throwaway server listens only on a Unix
//! socket inside it and never archives (see [`recovery::Sandbox`]).
//!
//! - The logical drill (`logical`) picks the newest nightly bundle, verifies it the way
//!   `pgkeep backups verify` does (without recording the result: the backups directory is only
//!   read), initdbs a throwaway cluster, restores the bundle with the engine of `restore dump`
//!   and checks the result.
//! - The physical drill (`physical`) recovers the newest base backup with the steps of
//!   `bootstrap basebackup` in a [`recovery::Sandbox`]: WAL comes from the real archive through
//!   `pgkeep wal fetch`, the archive is never written (archive_mode is off, so the promote's
//!   `.history` file stays in the scratch pg_wal), then the same kind of checks run.
//!
//! A drill that fails does not stop the other one: each ends in a [`DrillOutcome`] that says
//! which step failed and why, and [`DrillReport::failures`] lists them for the caller.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bundle::BundleError;
use crate::catalog;
use crate::db::{ConnParams, Db, DbError};
use crate::fsutil::{self, FsError, IoContext};
use crate::logical::{LogicalError, LogicalRestore, Progress, RestoreOptions, RestoreSource};
use crate::recovery::{self, BootstrapRequest, RecoveryError, Sandbox};
use crate::repo::{self, Backup, BackupKind, RepoError};
use crate::runmark;
use crate::sanity::SanityReport;
use crate::server::{self, ChildServer, InitDb, ManagedConf, RunAs, ServerError};
use crate::tools::{PgBin, ToolError};

/// The port the throwaway servers use. Only the name of the socket file in the private socket
/// directory: nothing listens on TCP, so it cannot clash with the live server.
const SANDBOX_PORT: u16 = 5432;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Logical(#[from] LogicalError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Major(#[from] crate::major::MajorError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What to drill, and where the site is.
pub struct DrillRequest {
    pub pg: PgBin,
    pub backups: PathBuf,
    pub wal_archive: PathBuf,
    /// The database the physical drill checks (the live one's name).
    pub database: String,
    /// The role pgkeep connects as (the throwaway cluster's superuser).
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The pgkeep program the physical drill's server runs as restore_command.
    pub pgkeep_exe: PathBuf,
    pub logical: bool,
    pub physical: bool,
    /// Leave the scratch directory (and nothing running) instead of removing it.
    pub keep: bool,
    /// How long a server may take to start, and recovery to end.
    pub timeout: Duration,
    pub jobs: usize,
    pub progress: Arc<dyn Progress>,
}

/// One check of a restored database.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// Where a physical drill's recovery ended.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Replay {
    pub end_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub last_replayed_xact_time: Option<String>,
}

/// One table's rows in the restored database.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableRows {
    pub table: String,
    pub rows: Option<i64>,
}

/// The result of one drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub kind: BackupKind,
    pub bundle: Option<String>,
    pub passed: bool,
    /// The step that failed and why (None when every step ran; see `checks` for their verdicts).
    pub error: Option<String>,
    pub verified: bool,
    pub members: Option<usize>,
    pub verify_secs: Option<f64>,
    /// Logical: initdb, restore and checks; physical: extraction, WAL replay and checks.
    pub restore_secs: Option<f64>,
    pub database: Option<String>,
    pub tables: Option<usize>,
    pub rows: Option<i64>,
    pub table_rows: Vec<TableRows>,
    pub replay: Option<Replay>,
    pub checks: Vec<Check>,
}

impl DrillOutcome {
    fn new(kind: BackupKind) -> DrillOutcome {
        DrillOutcome {
            kind,
            bundle: None,
            passed: false,
            error: None,
            verified: false,
            members: None,
            verify_secs: None,
            restore_secs: None,
            database: None,
            tables: None,
            rows: None,
            table_rows: Vec::new(),
            replay: None,
            checks: Vec::new(),
        }
    }

    /// Record the restored database's contents (from its sanity report).
    fn contents(&mut self, sanity: &SanityReport) {
        self.database = Some(sanity.database.clone());
        self.tables = Some(sanity.tables);
        self.rows = Some(sanity.total_rows);
        self.table_rows = sanity
            .schemas
            .iter()
            .flat_map(|s| {
                s.tables
                    .iter()
                    .filter(|t| t.kind == "table")
                    .map(move |t| TableRows {
                        table: format!("{}.{}", s.name, t.name),
                        rows: t.rows,
                    })
            })
            .collect();
        self.checks.push(Check::new(
            "has tables",
            sanity.tables > 0,
            format!(
                "{} tables, {} rows in `{}`",
                sanity.tables, sanity.total_rows, sanity.database
            ),
        ));
        self.checks.push(Check::new(
            "valid indexes",
            sanity.invalid_indexes.is_empty(),
            if sanity.invalid_indexes.is_empty() {
                "no invalid index".to_owned()
            } else {
                sanity
                    .invalid_indexes
                    .iter()
                    .map(|i| format!("{}.{} on {}", i.schema, i.index, i.table))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ));
    }

    /// Close the outcome: passed when no step failed and every check holds.
    fn finish(mut self, result: Result<(), DrillError>, what: &str) -> DrillOutcome {
        if let Err(e) = result {
            let on = self
                .bundle
                .as_deref()
                .map(|b| format!(" on {b}"))
                .unwrap_or_default();
            self.error = Some(format!("{what}{on}: {e}"));
        }
        self.passed = self.error.is_none() && self.checks.iter().all(|c| c.ok);
        self
    }

    /// Why the drill failed, for the caller's error (None when it passed).
    pub fn failure(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        Some(format!(
            "{} restored, but checks failed: {}",
            self.bundle.as_deref().unwrap_or("the bundle"),
            failed.join("; ")
        ))
    }
}

/// The result of `pgkeep drill`.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub scratch: PathBuf,
    /// Whether the scratch directory was left in place.
    pub kept: bool,
    pub logical: Option<DrillOutcome>,
    pub physical: Option<DrillOutcome>,
    pub seconds: f64,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.outcomes().all(|o| o.passed)
    }

    pub fn outcomes(&self) -> impl Iterator<Item = &DrillOutcome> {
        self.logical.iter().chain(self.physical.iter())
    }

    /// (drill, why) for each drill that failed.
    pub fn failures(&self) -> Vec<(&'static str, String)> {
        self.outcomes()
            .filter_map(|o| o.failure().map(|f| (o.kind.label(), f)))
            .collect()
    }
}

/// Run the drills asked for. Errors here are the ones that stop before any drill could run
/// (no account to run PostgreSQL as, no scratch directory); a drill's own failure is in its
/// [`DrillOutcome`].
pub async fn run(req: &DrillRequest) -> Result<DrillReport, DrillError> {
    let started = Instant::now();
    let run_as = RunAs::data_owner(req.uid, req.gid)?;
    clean_leftovers(&req.backups);
    let mut scratch = Scratch::create(&req.backups, req.uid, req.gid)?;
    tracing::info!(scratch = %scratch.path.display(), "scratch directory created");
    let logical = if req.logical {
        Some(logical(req, &scratch.path, run_as).await)
    } else {
        None
    };
    let physical = if req.physical {
        Some(physical(req, &scratch.path).await)
    } else {
        None
    };
    scratch.keep = req.keep;
    let path = scratch.path.clone();
    drop(scratch);
    Ok(DrillReport {
        scratch: path,
        kept: req.keep,
        logical,
        physical,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The scratch directory: marked as this run's (see [`runmark`]) while it works, removed on
/// drop unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
    heartbeat: Option<runmark::Heartbeat>,
}

const SCRATCH_PREFIX: &str = ".drill-";
const THROWAWAY_SERVERS: [&str; 2] = ["logical", "physical"];

/// Remove the scratch directories that drills killed half-way left behind: their `pid` file
/// names a run that is gone. A directory kept with `--keep` has no `pid` file and stays; so does
/// one whose throwaway server still runs here (a live `postmaster.pid`), with a warning that
/// says how to stop it, since nothing is deleted under a running server. Failures are only
/// logged: a leftover never stops a new drill.
fn clean_leftovers(backups: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(backups) else {
        return removed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_scratch = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        if !is_scratch || runmark::holder(&path) != runmark::Holder::Gone {
            continue;
        }
        let running: Vec<PathBuf> = THROWAWAY_SERVERS
            .iter()
            .map(|w| path.join(w).join("data"))
            .filter(|d| postmaster_runs(d))
            .collect();
        if let Some(d) = running.first() {
            tracing::warn!(
                dir = %path.display(),
                "an earlier drill was killed and its throwaway server still runs; stop it with `pg_ctl stop -m immediate -D {}` (as the data owner), the next drill then removes the directory",
                d.display()
            );
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed the scratch directory of a drill that was killed");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), "could not remove a killed drill's scratch directory: {e}")
            }
        }
    }
    removed
}

/// Whether a PostgreSQL server runs on `pgdata` on this host: its `postmaster.pid` names a
/// `postgres` process that has not exited (`/proc/PID/stat`: `PID (postgres) STATE ...`, a
/// zombie's state is `Z`).
fn postmaster_runs(pgdata: &Path) -> bool {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .is_some_and(|stat| {
            let (name, rest) = match (stat.find('('), stat.rfind(')')) {
                (Some(a), Some(b)) if a < b => (&stat[a + 1..b], &stat[b + 1..]),
                _ => return false,
            };
            name == "postgres" && !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
        })
}

impl Scratch {
    fn create(backups: &Path, uid: u32, gid: u32) -> Result<Scratch, FsError> {
        let stamp = crate::clock::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .strftime("%Y%m%d-%H%M%S")
            .to_string();
        let mut n = 1;
        loop {
            let name = match n {
                1 => format!("{SCRATCH_PREFIX}{stamp}"),
                _ => format!("{SCRATCH_PREFIX}{stamp}-{n}"),
            };
            let path = backups.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let mut s = Scratch {
                        path,
                        keep: false,
                        heartbeat: None,
                    };
                    fsutil::set_mode(&s.path, 0o700)?;
                    if fsutil::is_root() {
                        fsutil::chown(&s.path, uid, gid)?;
                    }
                    s.heartbeat =
                        Some(runmark::mark(&s.path).fs_ctx("write", &s.path.join("pid"))?);
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(FsError::new("create scratch directory", &path, e)),
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.heartbeat.take());
        if self.keep {
            // Unmarked, so later drills leave it for the person who asked to keep it.
            let _ = std::fs::remove_file(self.path.join("pid"));
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), "could not remove the scratch directory: {e}");
        }
    }
}

/// A directory for one throwaway server (`logical/` or `physical/`) and its socket directory,
/// both owned by the data owner.
fn server_dirs(scratch: &Path, which: &str, uid: u32, gid: u32) -> Result<PathBuf, FsError> {
    let dir = scratch.join(which);
    for d in [dir.clone(), dir.join("run")] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .fs_ctx("create directory", &d)?;
        if fsutil::is_root() {
            fsutil::chown(&d, uid, gid)?;
        }
    }
    Ok(dir)
}

fn sandbox_conn(dir: &Path, user: &str, dbname: &str) -> ConnParams {
    ConnParams::socket(&dir.join("run"), SANDBOX_PORT, user, dbname)
}

// ---------------------------------------------------------------------------------------------
// The logical drill
// ---------------------------------------------------------------------------------------------

/// Pick, verify, initdb, start, restore, check, stop.
async fn logical(req: &DrillRequest, scratch: &Path, run_as: Option<RunAs>) -> DrillOutcome {
    let mut out = DrillOutcome::new(BackupKind::Logical);
    let clock = Instant::now();
    let result = logical_steps(req, scratch, run_as, &mut out).await;
    if out.verified {
        out.restore_secs = Some(clock.elapsed().as_secs_f64() - out.verify_secs.unwrap_or(0.0));
    }
    out.finish(result, "logical drill")
}

async fn logical_steps(
    req: &DrillRequest,
    scratch: &Path,
    run_as: Option<RunAs>,
    out: &mut DrillOutcome,
) -> Result<(), DrillError> {
    tracing::info!(step = "logical-pick", "finding the newest logical bundle");
    let bundle = repo::newest(&req.backups, BackupKind::Logical)?;
    out.bundle = Some(bundle.name.clone());

    tracing::info!(step = "logical-verify", bundle = %bundle.name, "verifying every checksum and the dump's table of contents");
    let clock = Instant::now();
    let checked = {
        let (pg, scratch, b) = (req.pg.clone(), scratch.to_owned(), bundle.clone());
        tokio::task::spawn_blocking(move || catalog::check(&pg, &scratch, &b))
            .await
            .map_err(|e| DrillError::Internal(e.to_string()))??
    };
    out.verified = true;
    out.members = Some(checked.members);
    out.verify_secs = Some(clock.elapsed().as_secs_f64());
    let manifest = catalog::peek_manifest(&bundle.path);
    let database = manifest
        .as_ref()
        .and_then(|m| m.info_str("database"))
        .unwrap_or(&req.database)
        .to_owned();
    out.database = Some(database.clone());

    tracing::info!(
        step = "logical-initdb",
        "initdb a throwaway cluster in the scratch directory"
    );
    let dir = server_dirs(scratch, "logical", req.uid, req.gid)?;
    let pgdata = dir.join("data");
    server::initdb(
        &req.pg,
        &InitDb {
            pgdata: &pgdata,
            superuser: &req.user,
            password: None,
            data_checksums: false,
            run_as,
        },
    )?;
    let sandbox = Sandbox {
        socket_dir: dir.join("run"),
        port: SANDBOX_PORT,
    };
    let mut conf = ManagedConf::default();
    for (k, v) in sandbox.settings(&pgdata) {
        conf = conf.set(k, v);
    }
    server::write_managed_conf(&pgdata, &conf, run_as)?;
    let hba = pgdata.join("pg_hba.conf");
    fsutil::write_atomic(&hba, Sandbox::HBA.as_bytes(), 0o600, true)?;
    if let Some(r) = run_as {
        fsutil::chown(&hba, r.uid, r.gid)?;
    }

    tracing::info!(step = "logical-start", "starting the throwaway server");
    let log_file = dir.join("postgresql.log");
    // pgkeep's child: a drill killed half-way never leaves it running in its scratch directory.
    let mut throwaway = ChildServer::start(&req.pg, &pgdata, &log_file, run_as, &[])?;
    throwaway.wait_ready(req.timeout).await?;
    let result =
        logical_restore_and_check(req, &dir, &bundle, &database, &checked, manifest, out).await;
    tracing::info!(step = "logical-stop", "stopping the throwaway server");
    let stopped = throwaway.stop();
    result?;
    stopped?;
    Ok(())
}

async fn logical_restore_and_check(
    req: &DrillRequest,
    dir: &Path,
    bundle: &Backup,
    database: &str,
    checked: &catalog::Checked,
    manifest: Option<crate::bundle::Manifest>,
    out: &mut DrillOutcome,
) -> Result<(), DrillError> {
    tracing::info!(step = "logical-restore", bundle = %bundle.name, "restoring with the engine of `restore dump`");
    let conn = sandbox_conn(dir, &req.user, database);
    let summary = LogicalRestore {
        pg: req.pg.clone(),
        conn: conn.clone(),
        backups_dir: req.backups.clone(),
        source: RestoreSource::Named(bundle.name.clone()),
        options: RestoreOptions {
            jobs: req.jobs.max(1),
            clean: false,
            keep_going: false,
            keep_old: false,
        },
        progress: req.progress.clone(),
        staging_in: Some(dir.to_owned()),
    }
    .prepare()
    .await?
    .run()
    .await?;

    tracing::info!(step = "logical-check", "checking the restored database");
    let admin = Db::connect(&conn.with_db("postgres")).await?;
    let exists = admin.database_exists(database).await?;
    let server = admin.server_info().await?;
    drop(admin);
    out.checks.push(Check::new(
        "database exists",
        exists,
        format!("`{database}`"),
    ));
    out.contents(&summary.sanity);
    out.checks.push(Check::new(
        "restore without errors",
        summary.errors == 0,
        if summary.errors == 0 {
            format!("{} restored it", summary.method)
        } else {
            summary.error_messages.join("; ")
        },
    ));
    if let Some(with_data) = checked.table_data_entries {
        out.checks.push(Check::new(
            "every dumped table restored",
            summary.sanity.tables >= with_data,
            format!(
                "{with_data} tables with data in the dump, {} in the restored database",
                summary.sanity.tables
            ),
        ));
    }
    if let Some(m) = &manifest {
        if let Some(db) = m.info_str("database") {
            out.checks.push(Check::new(
                "manifest database",
                db == database && exists,
                format!("MANIFEST.json names `{db}`"),
            ));
        }
        if let Some(num) = m.info.get("server_version_num").and_then(|v| v.as_u64()) {
            let dumped = (num / 10000) as u32;
            out.checks.push(Check::new(
                "server version",
                server.major() >= dumped,
                format!(
                    "dumped from PostgreSQL {dumped}, restored into {}",
                    server.major()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The physical drill
// ---------------------------------------------------------------------------------------------

/// Pick, verify and plan, extract, replay WAL from the real archive, check, stop.
async fn physical(req: &DrillRequest, scratch: &Path) -> DrillOutcome {
    let mut out = DrillOutcome::new(BackupKind::Physical);
    let result = physical_steps(req, scratch, &mut out).await;
    out.finish(result, "physical drill")
}

async fn physical_steps(
    req: &DrillRequest,
    scratch: &Path,
    out: &mut DrillOutcome,
) -> Result<(), DrillError> {
    tracing::info!(step = "physical-pick", "finding the newest base backup");
    let bundle = repo::newest(&req.backups, BackupKind::Physical)?;
    out.bundle = Some(bundle.name.clone());
    let dir = server_dirs(scratch, "physical", req.uid, req.gid)?;
    let breq = BootstrapRequest {
        pgroot: dir.clone(),
        pgdata: dir.join("data"),
        wal_archive: req.wal_archive.clone(),
        backups: req.backups.clone(),
        uid: req.uid,
        gid: req.gid,
        run_dir: dir.join("run"),
        port: SANDBOX_PORT,
        from: Some(bundle.name.clone()),
        target: None,
        target_timeline: None,
        keep_old: false,
        leave_running: true,
        pgkeep_exe: req.pgkeep_exe.clone(),
        timeout: req.timeout,
        sandbox: Some(Sandbox {
            socket_dir: dir.join("run"),
            port: SANDBOX_PORT,
        }),
    };

    tracing::info!(step = "physical-verify", bundle = %bundle.name, "checking the bundle and the WAL it needs (every checksum is verified as the bundle is unpacked)");
    let clock = Instant::now();
    let plan = {
        let breq = breq.clone();
        tokio::task::spawn_blocking(move || recovery::prepare(&breq))
            .await
            .map_err(|e| DrillError::Internal(e.to_string()))??
    };
    crate::major::check_physical(&req.pg, &plan.bundle.name, &plan.facts)?;
    out.verify_secs = Some(clock.elapsed().as_secs_f64());

    tracing::info!(step = "physical-replay", bundle = %bundle.name, "extracting and replaying WAL from the archive (read only)");
    let clock = Instant::now();
    let conn = sandbox_conn(&dir, &req.user, "postgres");
    let (report, replay_server) =
        recovery::execute_in_sandbox(&req.pg, &conn, &breq, &plan).await?;
    // Unpacking verified every member against the manifest, or the replay step failed.
    out.verified = true;
    out.replay = Some(Replay {
        end_lsn: report.end_lsn.clone(),
        timeline: report.timeline,
        last_replayed_xact_time: report.last_replayed_xact_time.clone(),
    });
    let checked = physical_check(req, &conn, &plan, &report, out).await;
    out.restore_secs = Some(clock.elapsed().as_secs_f64());
    tracing::info!(step = "physical-stop", "stopping the throwaway server");
    let stopped = replay_server.stop();
    checked?;
    stopped?;
    Ok(())
}

async fn physical_check(
    req: &DrillRequest,
    conn: &ConnParams,
    plan: &recovery::Plan,
    report: &recovery::BootstrapReport,
    out: &mut DrillOutcome,
) -> Result<(), DrillError> {
    tracing::info!(step = "physical-check", "checking the recovered cluster");
    let facts = &plan.facts;
    let admin = Db::connect(&conn.with_db("postgres")).await?;
    let info = admin.server_info().await?;
    let exists = admin.database_exists(&req.database).await?;
    drop(admin);
    out.checks.push(Check::new(
        "recovery ended",
        !info.in_recovery,
        format!(
            "promoted at {} on timeline {}",
            report.end_lsn.as_deref().unwrap_or("?"),
            report
                .timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into())
        ),
    ));
    out.checks.push(Check::new(
        "same system",
        info.system_identifier == facts.system_identifier,
        format!(
            "bundle {}, recovered cluster {}",
            facts.system_identifier, info.system_identifier
        ),
    ));
    let end: Option<crate::wal::Lsn> = report.end_lsn.as_deref().and_then(|l| l.parse().ok());
    out.checks.push(Check::new(
        "replayed past the backup's end",
        end.is_some_and(|e| e >= facts.stop_lsn),
        format!(
            "backup stop LSN {}, replay ended at {}",
            facts.stop_lsn,
            report.end_lsn.as_deref().unwrap_or("?")
        ),
    ));
    out.checks.push(Check::new(
        "database exists",
        exists,
        format!("`{}`", req.database),
    ));
    out.database = Some(req.database.clone());
    if exists {
        let sanity = Db::connect(&conn.with_db(&req.database))
            .await?
            .sanity(crate::sanity::Rows::Counted {
                jobs: req.jobs.max(1),
            })
            .await?;
        out.contents(&sanity);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_fails_the_drill_and_says_which() {
        let mut o = DrillOutcome::new(BackupKind::Logical);
        o.bundle = Some("nightly-20260101-0600.tar.gz".into());
        o.checks
            .push(Check::new("database exists", true, "`records`"));
        o.checks.push(Check::new("has tables", false, "0 tables"));
        let o = o.finish(Ok(()), "logical drill");
        assert!(!o.passed);
        let why = o.failure().unwrap();
        assert!(why.contains("nightly-20260101-0600.tar.gz"), "{why}");
        assert!(why.contains("has tables: 0 tables"), "{why}");
        assert!(!why.contains("database exists"), "{why}");
    }

    #[test]
    fn a_failed_step_names_the_bundle() {
        let mut o = DrillOutcome::new(BackupKind::Physical);
        o.bundle = Some("basebackup-20260101-0600.bundle.tar.gz".into());
        let o = o.finish(Err(DrillError::Internal("boom".into())), "physical drill");
        assert!(!o.passed);
        assert_eq!(
            o.failure().unwrap(),
            "physical drill on basebackup-20260101-0600.bundle.tar.gz: internal error: boom"
        );
        let ok = DrillOutcome::new(BackupKind::Physical).finish(Ok(()), "physical drill");
        assert!(ok.passed && ok.failure().is_none());
    }

    #[test]
    fn the_scratch_directory_is_private_and_removed_unless_kept() {
        let t = tempfile::tempdir().unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let a = Scratch::create(t.path(), uid, gid).unwrap();
        let b = Scratch::create(t.path(), uid, gid).unwrap();
        assert_ne!(a.path, b.path);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(
            a.path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".drill-")
        );
        assert!(repo::list(t.path()).unwrap().is_empty(), "not a backup");
        let (pa, pb) = (a.path.clone(), b.path.clone());
        drop(a);
        let mut b = b;
        b.keep = true;
        drop(b);
        assert!(!pa.exists());
        assert!(pb.exists());
        assert!(!pb.join("pid").exists(), "a kept directory is unmarked");
    }

    #[test]
    fn leftovers_of_killed_drills_go_unless_kept_live_or_under_a_running_server() {
        let c = pgkeep_testkit::TempCluster::start();
        let t = tempfile::tempdir().unwrap();
        let dir = |name: &str, pid: Option<String>| {
            let d = t.path().join(name);
            std::fs::create_dir_all(d.join("logical/data")).unwrap();
            if let Some(p) = pid {
                std::fs::write(d.join("pid"), p).unwrap();
            }
            d
        };
        let dead = format!("999999999 {}\n", runmark::this_host());
        let killed = dir(".drill-20260101-000000", Some(dead.clone()));
        let kept = dir(".drill-20260101-000001", None);
        let ours = dir(".drill-20260101-000002", Some(runmark::pid_file_text()));
        let serving = dir(".drill-20260101-000003", Some(dead));
        let postmaster = std::fs::read_to_string(c.pgdata().join("postmaster.pid")).unwrap();
        std::fs::write(serving.join("logical/data/postmaster.pid"), postmaster).unwrap();
        let not_a_drill = dir(".staging-x", Some("999999999".into()));

        assert_eq!(clean_leftovers(t.path()), vec![killed.clone()]);
        assert!(!killed.exists());
        for d in [&kept, &ours, &serving, &not_a_drill] {
            assert!(d.exists(), "{} stays", d.display());
        }
        c.stop();
        assert_eq!(
            clean_leftovers(t.path()),
            vec![serving.clone()],
            "its server is gone now"
        );
    }
}
