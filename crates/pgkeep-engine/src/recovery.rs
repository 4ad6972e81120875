//! Bootstrap from a physical bundle, with WAL replay and point-in-time recovery (the seed's
//! `pg.bootstrap.basebackup` job, made safe).
//!
//! Two phases. [`prepare`] changes nothing: it picks the bundle (newest or named), verifies every
//! member's checksum, checks that the bundle belongs to the same system as the WAL archive, that
//! an explicit target lies after the backup's end, that the WAL needed for consistency is in the
//! bundle or the archive, that every archived segment recovery will read (up to the newest on the
//! timeline path, or an LSN target) is there and belongs there ([`crate::walcheck`]) and that
//! its records' CRCs hold ([`crate::walscan`]), that a named restore point is there, that no
//! higher timeline lacks its history file, and that no postmaster runs on PGDATA. Only then does the caller ask for
//! confirmation and call [`execute`], a script of named steps: clear PGDATA (or move its contents
//! aside with `keep_old`), extract, set ownership and modes, write the recovery settings, start
//! PostgreSQL as the data owner, wait for recovery to end (resuming a pause), report where it
//! ended, clean the recovery settings up, and stop unless asked to leave it running.
//!
//! PostgreSQL's own verdicts are turned into clear errors: a target never reached, a target
//! before the consistent point, WAL missing before consistency, a damaged archived segment; and
//! without a target, replay that ended before the newest archived segment is a failure too.
//!
//! With a [`Sandbox`] (restore drills, `crate::drill`) the same steps recover into a scratch
//! PGDATA: the server listens only on a socket in a private directory, never archives (a promote
//! writes a `.history` file that must not reach the archive), trusts only that socket, and the
//! WAL archive is only read: a superseded directory is read where it lies instead of being moved
//! back into the archive root.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bundle::{self, BundleError, MemberDigest};
use crate::datadir::{self, DatadirError};
use crate::db::{ConnParams, Db, DbError};
use crate::fsutil::{self, FsError, IoContext};
use crate::mountinfo;
use crate::physical::{DATA_PREFIX, PhysicalFacts};
use crate::repo::{self, Backup, BackupKind, RepoError};
use crate::server::{ChildServer, RunAs, ServerError};
use crate::tools::{PgBin, ToolError};
use crate::wal::{self, Archive, Lsn, WalKind};
use crate::{Classified, ExitClass};

const BLOCK_BEGIN: &str =
    "# pgkeep bootstrap: recovery settings (removed by pgkeep when recovery has ended)";
const BLOCK_END: &str = "# end of pgkeep bootstrap recovery settings";

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Datadir(#[from] DatadirError),
    #[error(transparent)]
    Guard(#[from] mountinfo::GuardError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "{bundle}: not a usable physical bundle: {reason}\nhint: pick another with --from (`pgkeep backups list`)"
    )]
    NotPhysical { bundle: PathBuf, reason: String },
    #[error(
        "{bundle} is a backup of system {bundle_system}, but the WAL archive {archive} holds WAL of system {archive_system}; nothing was changed\nhint: this bundle comes from another cluster; restore a bundle of this cluster, or point PGKEEP_WAL_ARCHIVE at that cluster's archive"
    )]
    ForeignSystem {
        bundle: PathBuf,
        bundle_system: String,
        archive: PathBuf,
        archive_system: String,
    },
    #[error(
        "recovery target {target} is before the end of backup {bundle} ({end}); nothing was changed\nhint: choose a later target, or an older backup with --from"
    )]
    TargetBeforeBackupEnd {
        target: String,
        end: String,
        bundle: String,
    },
    #[error(
        "recovery target time {target} is in the future, so it can never be reached; nothing was changed\nhint: give a time in the past (UTC unless it carries an offset)"
    )]
    TargetInFuture { target: String },
    #[error(
        "PGDATA {pgdata} holds files that do not belong to a PostgreSQL data directory ({entries}); nothing was changed\nhint: PGDATA may be set wrongly; check PGDATA / paths.pgdata, or move those files away (`pgkeep wipe` empties the data volume)"
    )]
    ForeignContent { pgdata: PathBuf, entries: String },
    #[error("invalid recovery target `{value}`: {message}")]
    BadTarget { value: String, message: String },
    #[error(
        "WAL segment {segment}, needed to make {bundle} consistent, is neither in the bundle nor in the WAL archive {archive}; nothing was changed\nhint: restore the segment into the archive, or use another backup"
    )]
    MissingWalBeforeStart {
        segment: String,
        bundle: String,
        archive: PathBuf,
    },
    #[error(
        "the WAL archive {archive} lacks segment {segment} but holds later WAL (up to {newest}); replay would stop at the gap and promote there, losing every later commit; nothing was changed\nhint: restore {segment} into the archive, or give an explicit --target-time/--target-lsn before the gap"
    )]
    ArchiveGap {
        archive: PathBuf,
        segment: String,
        newest: String,
    },
    #[error(
        "the archived WAL record at {at} (in {segment}, {archive}) {what}: PostgreSQL would take it as the end of the WAL and stop replaying there, losing every later commit; nothing was changed\nhint: replace {segment} with an intact copy (from the server's pg_wal or another copy of the archive), or recover to a target before {at} (--target-lsn)"
    )]
    DamagedRecord {
        at: String,
        what: &'static str,
        segment: String,
        archive: PathBuf,
    },
    #[error(
        "restore point `{name}` is not in the archived WAL recovery would replay ({range} in {archive}), so recovery could never stop there; nothing was changed\nhint: check the name given to pg_create_restore_point (restore points found: {known}), or restore the WAL that holds it into the archive"
    )]
    RestorePointMissing {
        name: String,
        range: String,
        archive: PathBuf,
        known: String,
    },
    #[error("the WAL archive cannot be replayed to its end; nothing was changed\n{0}")]
    BadSegment(crate::walcheck::SegmentError),
    #[error(
        "the WAL archive {archive} holds WAL of timeline {timeline} ({example}) but not {missing}, so recovery would follow timeline {follow} and silently leave the later timeline's commits out; nothing was changed\nhint: restore {missing} into the archive (from the promoted server's pg_wal or another copy of the archive); if that timeline is meant to be abandoned, move its files out of the archive"
    )]
    MissingHistory {
        archive: PathBuf,
        timeline: u32,
        example: String,
        missing: String,
        follow: u32,
    },
    #[error(
        "recovery ended at {end}, before the newest archived WAL segment {newest} (from {newest_start}): replay stopped early and the recovered cluster lacks the commits after that point; PostgreSQL was stopped\nhint: the archived WAL after {end} could not be replayed (see the server log); repair the archive, move the history file of the timeline this promotion started ({history}) out of the archive if it was archived (else recovery would follow that timeline), and run the bootstrap again, or give an explicit target{log}"
    )]
    EndedShort {
        end: String,
        newest: String,
        newest_start: String,
        history: String,
        log: String,
    },
    #[error(
        "--keep-old needs room for both copies: {needed} bytes free on {volume}, {available} available; nothing was changed\nhint: free space, or run without --keep-old (PGDATA's contents are then removed)"
    )]
    NoRoomToKeepOld {
        volume: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error(
        "recovery ended before the target {target} was reached (the WAL archive ends earlier); PostgreSQL was not promoted\nhint: choose an earlier target, or restore the missing WAL into the archive and run the bootstrap again{log}"
    )]
    TargetNotReached { target: String, log: String },
    #[error(
        "the target {target} lies before the point where the backup becomes consistent; PostgreSQL was not promoted\nhint: choose a later target, or an older backup with --from{log}"
    )]
    TargetBeforeConsistency { target: String, log: String },
    #[error(
        "WAL needed to make the backup consistent is missing{segment}; PostgreSQL was not promoted\nhint: restore that segment into the WAL archive and run the bootstrap again{log}"
    )]
    MissingWal { segment: String, log: String },
    #[error(
        "recovery stopped because an archived WAL file could not be restored (damaged or unreadable){log}\nhint: see the error above; repair or restore the file in the archive, then run the bootstrap again"
    )]
    ArchiveDamaged { log: String },
    #[error(
        "the replay server's socket directory {dir} (paths.run_dir / PGKEEP_RUN_DIR) {reason}; nothing was changed\nhint: create it and make it writable by uid {uid} (e.g. `install -d -o {uid} -g {gid} -m 2775 {dir}`), or point PGKEEP_RUN_DIR at a directory that uid {uid} can write"
    )]
    RunDirUnusable {
        dir: PathBuf,
        uid: u32,
        gid: u32,
        reason: String,
    },
    #[error(
        "port {port} is taken in {dir}: another PostgreSQL (pid {pid}) listens there, so the replay server could not start; nothing was changed\nhint: stop that server, or give the bootstrap another port (PGPORT / postgres.port)"
    )]
    PortInUse {
        port: u16,
        dir: PathBuf,
        pid: String,
    },
    #[error(
        "the recovery target {target} lies after {branch}, where timeline {child} branched off timeline {parent}{when}: timeline {parent} went on past that point until timeline {child} replaced it, so it is not clear which history you mean; nothing was changed\nhint: --target-timeline {parent} recovers timeline {parent}'s own history at that target (what it was before timeline {child} began); --target-timeline {child} or latest follows timeline {child} (and what branched from it later)"
    )]
    TargetAfterBranch {
        target: String,
        branch: String,
        when: String,
        parent: u32,
        child: u32,
    },
    #[error("--target-timeline {timeline}: {reason}; nothing was changed\nhint: {hint}")]
    BadTimeline {
        timeline: String,
        reason: String,
        hint: String,
    },
    #[error(
        "an earlier bootstrap was interrupted: PostgreSQL (pid {pid}) is still running on {pgdata} with pgkeep's recovery settings in postgresql.auto.conf ({state}); nothing was changed\nhint: {hint}"
    )]
    InterruptedBootstrap {
        pgdata: PathBuf,
        pid: i32,
        state: &'static str,
        hint: String,
    },
    #[error(
        "recovery ended and the recovery settings were removed, but PostgreSQL did not start again with its own configuration (the replay server had pgkeep's socket directory and no TCP); PGDATA holds the recovered data\nhint: read the server log {log_file}, fix the configuration and start it (pg_ctl -D PGDATA start){log}"
    )]
    RestartFailed { log_file: PathBuf, log: String },
    #[error("PostgreSQL stopped during recovery{log}\nhint: read the server log named above")]
    ServerDied { log: String },
    #[error(
        "recovery did not end within {seconds}s; PostgreSQL is still replaying (log: {log_file})\nhint: raise --timeout, or watch the log and stop it with pg_ctl"
    )]
    Timeout { seconds: u64, log_file: PathBuf },
}

impl Classified for RecoveryError {
    fn exit_class(&self) -> ExitClass {
        use RecoveryError::*;
        match self {
            Datadir(e) => e.exit_class(),
            Guard(e) => e.exit_class(),
            Bundle(_)
            | NotPhysical { .. }
            | ForeignSystem { .. }
            | TargetBeforeBackupEnd { .. }
            | TargetInFuture { .. }
            | MissingWalBeforeStart { .. }
            | ArchiveGap { .. }
            | BadSegment(_)
            | MissingHistory { .. }
            | RestorePointMissing { .. }
            | DamagedRecord { .. }
            | NoRoomToKeepOld { .. }
            | BadTarget { .. }
            | ForeignContent { .. }
            | RunDirUnusable { .. }
            | PortInUse { .. }
            | InterruptedBootstrap { .. }
            | TargetAfterBranch { .. }
            | BadTimeline { .. }
            | Repo(_) => ExitClass::Refused,
            _ => ExitClass::Failed,
        }
    }
}

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum RecoveryTarget {
    Time(jiff::Timestamp),
    Lsn(Lsn),
    Name(String),
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Time(t) => write!(f, "time {t}"),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point `{n}`"),
        }
    }
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimelineChoice {
    /// The newest timeline whose history descends from the backup's (PostgreSQL's `latest`).
    Latest,
    /// The backup's own timeline: later branches are not followed.
    Current,
    /// This timeline (the backup's or one descending from it).
    Id(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = RecoveryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => match n.parse::<u32>() {
                Ok(id) if id >= 1 => Ok(TimelineChoice::Id(id)),
                _ => Err(RecoveryError::BadTimeline {
                    timeline: s.to_owned(),
                    reason: "not a timeline".into(),
                    hint: "give a timeline number (1, 2, ...), `latest` or `current`".into(),
                }),
            },
        }
    }
}

impl std::fmt::Display for TimelineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimelineChoice::Latest => f.write_str("latest"),
            TimelineChoice::Current => f.write_str("current"),
            TimelineChoice::Id(n) => write!(f, "{n}"),
        }
    }
}

/// Parse a target time: RFC 3339 / ISO 8601 with an offset, or a plain date-time taken as UTC.
pub fn parse_target_time(s: &str) -> Result<jiff::Timestamp, RecoveryError> {
    let s = s.trim();
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let normalized = s.trim_end_matches(" UTC").trim_end_matches(" utc");
    if let Ok(t) = normalized.replace(' ', "T").parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    match normalized.parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|e| RecoveryError::BadTarget {
                value: s.to_owned(),
                message: e.to_string(),
            }),
        Err(e) => Err(RecoveryError::BadTarget {
            value: s.to_owned(),
            message: format!(
                "{e} (expected e.g. 2026-11-25T19:30:00Z or 2026-11-25 19:30:00, UTC)"
            ),
        }),
    }
}

/// A timestamp as PostgreSQL's recovery_target_time accepts it: `2026-11-25 19:30:00.123456+00`.
pub fn pg_timestamp(t: jiff::Timestamp) -> String {
    let d = t.to_zoned_datetime(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.subsec_nanosecond() / 1000
    )
}

impl RecoveryTarget {
    /// The postgresql.conf lines for this target.
    fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            RecoveryTarget::Time(t) => {
                vec![("recovery_target_time", pg_timestamp(*t))]
            }
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            RecoveryTarget::Name(n) => vec![("recovery_target_name", n.clone())],
        }
    }
}

/// What bootstrap is asked to do.
#[derive(Debug, Clone)]
pub struct BootstrapRequest {
    pub pgroot: PathBuf,
    pub pgdata: PathBuf,
    pub wal_archive: PathBuf,
    pub backups: PathBuf,
    /// The data owner (see [`existing_data_owner`] for the default a caller should use).
    pub uid: u32,
    pub gid: u32,
    /// The replay server's socket directory (paths.run_dir): it listens there only, whatever the
    /// restored configuration says, until recovery has ended. Ignored with a [`Sandbox`].
    pub run_dir: PathBuf,
    /// The replay server's port (postgres.port). Ignored with a [`Sandbox`].
    pub port: u16,
    pub from: Option<String>,
    pub target: Option<RecoveryTarget>,
    /// `--target-timeline`; None: `latest`, not chosen (a time or LSN target after a later
    /// timeline's branch point is then refused as ambiguous).
    pub target_timeline: Option<TimelineChoice>,
    pub keep_old: bool,
    pub leave_running: bool,
    /// The pgkeep program PostgreSQL runs as restore_command.
    pub pgkeep_exe: PathBuf,
    /// How long to wait for recovery to end.
    pub timeout: Duration,
    /// Recover into a throwaway server instead of the live one (restore drills).
    pub sandbox: Option<Sandbox>,
}

/// A throwaway recovery: PGDATA is a scratch directory and the server must not be reachable from
/// outside, nor write anywhere but there. See the module docs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The only place the server listens (a Unix socket; private, inside the scratch directory).
    pub socket_dir: PathBuf,
    pub port: u16,
}

impl Sandbox {
    /// The settings that make a restored configuration safe to start beside the live server,
    /// whatever it says: no TCP, no archiving, no synchronous standbys to wait for, no files
    /// written outside PGDATA (logging collector, external pid file), and the restored pg_hba.conf
    /// replaced by one that trusts the private socket only.
    pub fn settings(&self, pgdata: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("listen_addresses", String::new()),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                self.socket_dir.display().to_string(),
            ),
            ("unix_socket_permissions", "0700".into()),
            ("archive_mode", "off".into()),
            ("archive_command", String::new()),
            ("archive_library", String::new()),
            ("archive_cleanup_command", String::new()),
            ("recovery_end_command", String::new()),
            ("primary_conninfo", String::new()),
            ("primary_slot_name", String::new()),
            ("synchronous_standby_names", String::new()),
            ("external_pid_file", String::new()),
            ("logging_collector", "off".into()),
            ("ssl", "off".into()),
            ("hba_file", pgdata.join("pg_hba.conf").display().to_string()),
        ]
    }

    /// pg_hba.conf of a sandbox: the private socket only.
    pub const HBA: &'static str =
        "# pgkeep restore drill: only the private socket, nothing over TCP\nlocal all all trust\n";
}

/// Everything checked before anything is changed.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub bundle: Backup,
    pub facts: PhysicalFacts,
    pub target: Option<RecoveryTarget>,
    /// Bytes of data-directory content in the bundle.
    pub data_bytes: u64,
    /// Where the old contents go with keep_old.
    pub keep_old_at: Option<PathBuf>,
    /// What PGDATA holds now (entries), shown before confirmation.
    pub pgdata_entries: usize,
    /// When the archive root belongs to another system and the bundle's system's WAL was moved
    /// aside (a fresh initdb took the archive over): the directory to move back into the root,
    /// after moving the root's WAL aside. See [`crate::archive_owner`].
    pub archive_handover: Option<PathBuf>,
    /// The directory restore_command reads: the archive root, or in a sandbox the superseded
    /// directory holding the bundle's system's WAL (read where it lies).
    pub restore_from: PathBuf,
    /// The newest archived segment on the timeline path recovery follows, and its start: without
    /// a target, replay must get at least that far.
    pub newest_archived: Option<(String, Lsn)>,
    /// The timeline recovery follows (written as recovery_target_timeline).
    pub target_timeline: TimelineChoice,
}

/// Where recovery ended.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapReport {
    pub bundle: String,
    pub end_lsn: Option<String>,
    pub timeline: Option<u32>,
    pub last_replayed_xact_time: Option<String>,
    /// PostgreSQL's "recovery stopping ..." line, when a target stopped it.
    pub stop_reason: Option<String>,
    pub left_running: bool,
    pub old_contents_at: Option<PathBuf>,
    pub log_file: PathBuf,
    pub seconds: f64,
}

// ---------------------------------------------------------------------------------------------
// Phase 1: checks, nothing changed
// ---------------------------------------------------------------------------------------------

/// Check everything that can be checked without changing anything. See the module docs.
pub fn prepare(req: &BootstrapRequest) -> Result<Plan, RecoveryError> {
    check_not_running(&req.pgdata)?;
    mountinfo::guard(&req.pgroot, &req.pgdata)?;
    check_pgdata_contents(&req.pgdata)?;
    let bundle = match &req.from {
        Some(name) => repo::find(&req.backups, name)?,
        None => repo::newest(&req.backups, BackupKind::Physical)?,
    };
    if bundle.kind != BackupKind::Physical {
        return Err(RecoveryError::NotPhysical {
            bundle: bundle.path.clone(),
            reason: "it is a logical (nightly) bundle; use `pgkeep restore dump`".into(),
        });
    }
    tracing::info!(bundle = %bundle.name, "verifying every member's checksum");
    let contents = bundle::verify(&bundle.path)?;
    let manifest = contents
        .manifest
        .ok_or_else(|| RecoveryError::NotPhysical {
            bundle: bundle.path.clone(),
            reason: format!("it has no {}", bundle::MANIFEST_NAME),
        })?;
    let facts =
        PhysicalFacts::from_manifest(&manifest).map_err(|reason| RecoveryError::NotPhysical {
            bundle: bundle.path.clone(),
            reason,
        })?;
    let root = Archive::new(&req.wal_archive);
    let found = plan_handover(&root, &facts)?;
    // The checks look where the WAL will be: the root, or the directory moved back into it (in
    // a sandbox: read where it lies, the archive is never changed).
    let restore_from = match (&found, &req.sandbox) {
        (Some(dir), Some(_)) => dir.clone(),
        _ => req.wal_archive.clone(),
    };
    let archive = Archive::new(found.as_deref().unwrap_or(&req.wal_archive));
    let archive_handover = if req.sandbox.is_some() { None } else { found };
    check_same_system(&bundle, &facts, &archive)?;
    if let Some(t) = &req.target {
        check_target(t, &facts, &bundle.name)?;
    }
    check_consistency_wal(&manifest.members, &facts, &archive, &bundle.name)?;
    let newest_archived = check_archive_wal(
        &manifest.members,
        &facts,
        &archive,
        req.target.as_ref(),
        req.target_timeline,
    )?;
    let data_bytes = manifest
        .members
        .iter()
        .filter(|m| m.path.starts_with(DATA_PREFIX))
        .map(|m| m.size)
        .sum();
    let keep_old_at = if req.keep_old {
        let at = keep_old_path(&req.pgdata);
        check_room(&req.pgroot, data_bytes)?;
        Some(at)
    } else {
        None
    };
    let pgdata_entries = std::fs::read_dir(&req.pgdata)
        .map(|rd| rd.count())
        .unwrap_or(0);
    RunAs::data_owner(req.uid, req.gid)?;
    if req.sandbox.is_none() {
        check_run_dir(&req.run_dir, req.uid, req.gid)?;
        check_port_free(&req.run_dir, req.port)?;
    }
    check_not_running(&req.pgdata)?;
    Ok(Plan {
        bundle,
        facts,
        target: req.target.clone(),
        data_bytes,
        keep_old_at,
        pgdata_entries,
        archive_handover,
        restore_from,
        newest_archived,
        target_timeline: req.target_timeline.unwrap_or(TimelineChoice::Latest),
    })
}

/// The owner a bootstrap should give the data when the settings do not name one: the owner of
/// PGDATA when it holds anything, else of the data volume root (a plain host's cluster belongs
/// to `postgres`, whatever uid the image default says). None when neither can be read.
pub fn existing_data_owner(pgroot: &Path, pgdata: &Path) -> Option<(u32, u32)> {
    let has_entries = std::fs::read_dir(pgdata).is_ok_and(|mut rd| rd.next().is_some());
    let from = if has_entries { pgdata } else { pgroot };
    std::fs::metadata(from).ok().map(|m| (m.uid(), m.gid()))
}

/// No postmaster runs on PGDATA; when one does and pgkeep's recovery block is still in
/// postgresql.auto.conf, an earlier bootstrap was killed after it started its server: say so.
fn check_not_running(pgdata: &Path) -> Result<(), RecoveryError> {
    let Some(pid) = datadir::running_postmaster(pgdata) else {
        return Ok(());
    };
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap_or_default();
    if !auto.lines().any(|l| l == BLOCK_BEGIN) {
        return Err(datadir::DatadirError::PostmasterRunning {
            pid,
            pgdata: pgdata.to_owned(),
        }
        .into());
    }
    let d = pgdata.display();
    let (state, hint) = if pgdata.join("recovery.signal").exists() {
        (
            "still replaying WAL: it has not been promoted",
            format!(
                "stop it (`pg_ctl -D {d} stop -m fast`, as the data owner) and run the bootstrap again; it starts over from the base backup"
            ),
        )
    } else {
        (
            "recovery has ended and it was promoted, but the bootstrap did not finish its cleanup",
            format!(
                "to keep what it recovered: stop it (`pg_ctl -D {d} stop -m fast`, as the data owner), delete the lines from `{BLOCK_BEGIN}` to `{BLOCK_END}` in {d}/postgresql.auto.conf, remove {} beside PGDATA, and start it normally; or stop it and run the bootstrap again to start over",
                crate::bootmark::FILE_NAME
            ),
        )
    };
    Err(RecoveryError::InterruptedBootstrap {
        pgdata: pgdata.to_owned(),
        pid,
        state,
        hint,
    })
}

/// The replay server's socket directory exists and the data owner can create its socket there.
fn check_run_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), RecoveryError> {
    let unusable = |reason: String| RecoveryError::RunDirUnusable {
        dir: dir.to_owned(),
        uid,
        gid,
        reason,
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Err(unusable(format!("cannot be used ({e})"))),
    };
    if !meta.is_dir() {
        return Err(unusable("is not a directory".into()));
    }
    let writable = if !fsutil::is_root() {
        rustix::fs::access(
            dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
    } else {
        let mode = meta.mode();
        if uid == 0 {
            true
        } else if meta.uid() == uid {
            mode & 0o300 == 0o300
        } else if meta.gid() == gid || in_supplementary_group(uid, meta.gid()) {
            mode & 0o030 == 0o030
        } else {
            mode & 0o003 == 0o003
        }
    };
    if !writable {
        return Err(unusable(format!(
            "is not writable by uid {uid}, the data owner (it belongs to {}:{} with mode {:o})",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Whether the account `uid` is a member of group `gid` by /etc/group.
fn in_supplementary_group(uid: u32, gid: u32) -> bool {
    let Some(name) = crate::server::account_name(uid) else {
        return false;
    };
    std::fs::read_to_string("/etc/group").is_ok_and(|text| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() >= 4
                && f[2].parse::<u32>().ok() == Some(gid)
                && f[3].split(',').any(|m| m == name)
        })
    })
}

/// No live PostgreSQL holds the socket `PORT` in `dir` (its lock file names a running process).
fn check_port_free(dir: &Path, port: u16) -> Result<(), RecoveryError> {
    let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    let alive = rustix::process::Pid::from_raw(pid.abs()).is_some_and(|p| {
        match rustix::process::test_kill_process(p) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        }
    });
    if alive {
        return Err(RecoveryError::PortInUse {
            port,
            dir: dir.to_owned(),
            pid: pid.abs().to_string(),
        });
    }
    Ok(())
}

/// Where the replay server listens: the sandbox's private socket, else the run dir.
fn replay_socket(req: &BootstrapRequest) -> (PathBuf, u16) {
    match &req.sandbox {
        Some(sb) => (sb.socket_dir.clone(), sb.port),
        None => (req.run_dir.clone(), req.port),
    }
}

/// The settings the replay server gets on its command line (`-c`, no shell in between): its
/// socket directory and port, and no TCP, whatever the restored configuration says.
pub fn replay_server_settings(socket_dir: &Path, port: u16) -> Vec<(&'static str, String)> {
    let dir = socket_dir.display().to_string();
    // unix_socket_directories is a comma-separated list: a name with a separator is quoted.
    let dir = if dir.contains([',', '"', ' ', '\t']) {
        format!("\"{}\"", dir.replace('"', "\"\""))
    } else {
        dir
    };
    vec![
        ("listen_addresses", String::new()),
        ("unix_socket_directories", dir),
        ("port", port.to_string()),
    ]
}

/// When the archive root does not hold the bundle's system's WAL but a superseded directory of
/// that system exists (a fresh initdb took the archive over since the backup), that directory.
fn plan_handover(root: &Archive, facts: &PhysicalFacts) -> Result<Option<PathBuf>, RecoveryError> {
    let Ok(system) = facts.system_identifier.parse::<u64>() else {
        return Ok(None);
    };
    if !root.dir().is_dir() {
        return Ok(None);
    }
    let root_system = crate::archive_owner::root_wal(root)?.system;
    if root_system == Some(system) {
        return Ok(None);
    }
    let found = crate::archive_owner::find_superseded(root, system)?;
    if let Some(dir) = &found {
        tracing::info!(
            aside = %dir.display(),
            root_system = ?root_system,
            "the WAL archive's root belongs to another system; this bundle's WAL was moved aside \
             and will be moved back (the root's WAL goes aside in turn, nothing is deleted)"
        );
    }
    Ok(found)
}

/// Carry out [`Plan::archive_handover`]: the root's WAL aside, the bundle's system's back.
fn hand_over_archive(req: &BootstrapRequest, plan: &Plan) -> Result<(), RecoveryError> {
    let Some(dir) = &plan.archive_handover else {
        return Ok(());
    };
    let root = Archive::new(&req.wal_archive);
    if let Some(moved) = crate::archive_owner::supersede(&root, jiff::Timestamp::now())? {
        tracing::warn!("{moved}");
    }
    let back = crate::archive_owner::reinstate(&root, dir)?;
    tracing::info!("{back}");
    Ok(())
}

/// Whether a name can be part of a PostgreSQL data directory (or of a half-done bootstrap).
pub fn is_data_directory_entry(name: &str) -> bool {
    const NAMES: [&str; 15] = [
        "PG_VERSION",
        "base",
        "global",
        "log",
        "pg_hba.conf",
        "pg_ident.conf",
        "postgresql.conf",
        "postgresql.auto.conf",
        "postmaster.opts",
        "postmaster.pid",
        "current_logfiles",
        "recovery.signal",
        "standby.signal",
        "pgkeep.conf",
        "backup_manifest",
    ];
    NAMES.contains(&name)
        || name.starts_with("pg_")
        || name.starts_with("backup_label")
        || name.starts_with("tablespace_map")
}

/// PGDATA must be empty or look like a data directory: a wrong PGDATA must not be emptied.
fn check_pgdata_contents(pgdata: &Path) -> Result<(), RecoveryError> {
    let Ok(rd) = std::fs::read_dir(pgdata) else {
        return Ok(());
    };
    let mut foreign: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_data_directory_entry(n))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = if foreign.len() > 8 { ", ..." } else { "" };
    foreign.truncate(8);
    Err(RecoveryError::ForeignContent {
        pgdata: pgdata.to_owned(),
        entries: foreign.join(", ") + more,
    })
}

/// The bundle and the WAL archive must belong to the same system.
fn check_same_system(
    bundle: &Backup,
    facts: &PhysicalFacts,
    archive: &Archive,
) -> Result<(), RecoveryError> {
    let Ok(files) = archive.list() else {
        return Ok(());
    };
    let seg = facts.wal_segment_size;
    let start = facts.start_lsn.segment(seg);
    let candidates: Vec<_> = files
        .iter()
        .filter(|f| matches!(f.wal.kind, WalKind::Segment | WalKind::Partial))
        .collect();
    // The first segment the recovery would read, else the newest one in the archive.
    let probe = candidates
        .iter()
        .find(|f| f.wal.segment_no(seg) >= start)
        .into_iter()
        .chain(candidates.last());
    for f in probe {
        if let Some(sysid) = archive.system_identifier(f)
            && sysid.to_string() != facts.system_identifier
        {
            return Err(RecoveryError::ForeignSystem {
                bundle: bundle.path.clone(),
                bundle_system: facts.system_identifier.clone(),
                archive: archive.dir().to_owned(),
                archive_system: sysid.to_string(),
            });
        }
    }
    Ok(())
}

fn parse_pg_time(s: &str) -> Option<jiff::Timestamp> {
    parse_target_time(s).ok()
}

/// An explicit target must lie after the backup's end, and a time target in the past.
fn check_target(
    t: &RecoveryTarget,
    facts: &PhysicalFacts,
    bundle: &str,
) -> Result<(), RecoveryError> {
    match t {
        RecoveryTarget::Time(time) => {
            if *time > jiff::Timestamp::now() {
                return Err(RecoveryError::TargetInFuture {
                    target: time.to_string(),
                });
            }
            if let Some(end) = parse_pg_time(&facts.stop_time)
                && *time < end
            {
                return Err(RecoveryError::TargetBeforeBackupEnd {
                    target: time.to_string(),
                    end: format!("ended at {end}"),
                    bundle: bundle.to_owned(),
                });
            }
        }
        RecoveryTarget::Lsn(l) => {
            if *l < facts.stop_lsn {
                return Err(RecoveryError::TargetBeforeBackupEnd {
                    target: format!("LSN {l}"),
                    end: format!("stop LSN {}", facts.stop_lsn),
                    bundle: bundle.to_owned(),
                });
            }
        }
        RecoveryTarget::Name(_) => {}
    }
    Ok(())
}

/// Every segment from the backup's start to its stop must be in the bundle or the archive.
fn check_consistency_wal(
    members: &[MemberDigest],
    facts: &PhysicalFacts,
    archive: &Archive,
    bundle: &str,
) -> Result<(), RecoveryError> {
    for seg in facts.needed_segments() {
        let member = format!("{DATA_PREFIX}pg_wal/{seg}");
        if members.iter().any(|m| m.path == member) || archive.find(&seg).is_some() {
            continue;
        }
        return Err(RecoveryError::MissingWalBeforeStart {
            segment: seg,
            bundle: bundle.to_owned(),
            archive: archive.dir().to_owned(),
        });
    }
    Ok(())
}

/// The timeline that owns each segment number: `(timeline, first segment)` pairs from a history
/// file's lines (`parent_tli<TAB>switch_lsn<TAB>reason`) plus the latest timeline itself.
pub fn timeline_chain(history: &str, latest: u32, seg_size: u64) -> Vec<(u32, u64)> {
    let mut chain = Vec::new();
    let mut from = 0u64;
    for line in history.lines() {
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(tli), Ok(lsn)) = (tli.parse::<u32>(), lsn.parse::<Lsn>()) else {
            continue;
        };
        chain.push((tli, from));
        from = lsn.segment(seg_size);
    }
    chain.push((latest, from));
    chain
}

/// The timeline a segment number belongs to on a chain.
fn timeline_of(chain: &[(u32, u64)], segno: u64) -> u32 {
    chain
        .iter()
        .rev()
        .find(|(_, from)| segno >= *from)
        .map(|(t, _)| *t)
        .unwrap_or(chain[0].0)
}

/// What the archive holds on the timeline path recovery will follow.
#[derive(Debug, Clone)]
struct ArchivePath {
    /// The timeline `recovery_target_timeline = 'latest'` ends on.
    latest: u32,
    chain: Vec<(u32, u64)>,
    /// Archived segments on the path, by segment number.
    on_path: std::collections::BTreeMap<u64, wal::ArchivedFile>,
}

/// The timeline PostgreSQL will follow (history files probed upward from the backup's, as
/// PostgreSQL's `latest` does), refusing when the archive holds WAL of a higher timeline whose
/// history file is missing: recovery would silently stay on the lower timeline.
fn archive_path(
    facts: &PhysicalFacts,
    archive: &Archive,
    files: &[wal::ArchivedFile],
    choice: TimelineChoice,
) -> Result<ArchivePath, RecoveryError> {
    let seg = facts.wal_segment_size;
    let mut latest = facts.timeline;
    match choice {
        TimelineChoice::Latest => {
            while archive
                .find(&format!("{:08X}.history", latest + 1))
                .is_some()
            {
                latest += 1;
            }
        }
        TimelineChoice::Current => {}
        TimelineChoice::Id(n) => latest = chosen_timeline(facts, archive, n)?,
    }
    if choice == TimelineChoice::Latest
        && let Some(above) = files
            .iter()
            .filter(|f| f.wal.timeline > latest)
            .min_by_key(|f| (f.wal.timeline, f.name.clone()))
    {
        return Err(RecoveryError::MissingHistory {
            archive: archive.dir().to_owned(),
            timeline: above.wal.timeline,
            example: above.name.clone(),
            missing: format!("{:08X}.history", latest + 1),
            follow: latest,
        });
    }
    let history = match archive.find(&format!("{latest:08X}.history")) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => String::new(),
    };
    let chain = timeline_chain(&history, latest, seg);
    let on_path = files
        .iter()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .filter(|f| timeline_of(&chain, f.wal.segment_no(seg)) == f.wal.timeline)
        .map(|f| (f.wal.segment_no(seg), f.clone()))
        .collect();
    Ok(ArchivePath {
        latest,
        chain,
        on_path,
    })
}

/// An explicit `--target-timeline N`: the backup's timeline, or one whose history file is in the
/// archive and descends from it.
fn chosen_timeline(facts: &PhysicalFacts, archive: &Archive, n: u32) -> Result<u32, RecoveryError> {
    let bad = |reason: String, hint: String| RecoveryError::BadTimeline {
        timeline: n.to_string(),
        reason,
        hint,
    };
    if n == facts.timeline {
        return Ok(n);
    }
    if n < facts.timeline {
        return Err(bad(
            format!(
                "the backup was taken on timeline {}, after timeline {n} ended",
                facts.timeline
            ),
            format!(
                "pick a backup taken on timeline {n} with --from (`pgkeep backups list`), or a timeline from {} up",
                facts.timeline
            ),
        ));
    }
    let history = match archive.find(&format!("{n:08X}.history")) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => {
            return Err(bad(
                format!(
                    "the WAL archive {} has no {n:08X}.history, so timeline {n} is unknown",
                    archive.dir().display()
                ),
                "check the number (timelines in the archive: the NNNNNNNN.history files), or use latest".into(),
            ));
        }
    };
    let branches = history_branches(&history);
    match branches
        .iter()
        .find(|(parent, _)| *parent == facts.timeline)
    {
        Some((_, at)) if *at >= facts.stop_lsn => Ok(n),
        Some((_, at)) => Err(bad(
            format!(
                "timeline {n} left timeline {} at {at}, before the backup's end ({})",
                facts.timeline, facts.stop_lsn
            ),
            "use an older backup (--from) that ends before that point".into(),
        )),
        None => Err(bad(
            format!(
                "timeline {n} does not descend from timeline {}, the backup's",
                facts.timeline
            ),
            format!("use a backup taken on timeline {n}'s path (--from), or another timeline"),
        )),
    }
}

/// The switch points of a history file: (parent timeline, LSN where the next one began).
fn history_branches(history: &str) -> Vec<(u32, Lsn)> {
    history
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// The time a history line's reason names (`before 2026-11-25 19:30:00.123+00`), if any: the
/// time target of the recovery that started the next timeline.
fn history_branch_time(history: &str, parent: u32) -> Option<jiff::Timestamp> {
    history.lines().find_map(|line| {
        let mut f = line.splitn(3, char::is_whitespace);
        if f.next()?.parse::<u32>().ok()? != parent {
            return None;
        }
        let reason = f.nth(1)?.trim();
        let t = reason
            .strip_prefix("before ")
            .or_else(|| reason.strip_prefix("after "))?;
        parse_pg_time(t)
    })
}

/// Without a chosen timeline, a time or LSN target past the point where a timeline newer than the
/// backup's branched off the path is ambiguous (the parent went on past it; `latest` would
/// silently take the child's history): refused, naming the branch and both timelines.
fn check_target_before_branches(
    facts: &PhysicalFacts,
    archive: &Archive,
    path: &ArchivePath,
    target: &RecoveryTarget,
) -> Result<(), RecoveryError> {
    if path.latest == facts.timeline {
        return Ok(());
    }
    let history = match archive.find(&format!("{:08X}.history", path.latest)) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => return Ok(()),
    };
    let branches = history_branches(&history);
    for (i, (parent, at)) in branches.iter().enumerate() {
        if *parent < facts.timeline || *at < facts.start_lsn {
            continue;
        }
        let child = branches.get(i + 1).map_or(path.latest, |(t, _)| *t);
        let after = match target {
            RecoveryTarget::Lsn(l) => *l > *at,
            RecoveryTarget::Time(t) => {
                history_branch_time(&history, *parent).is_some_and(|b| *t > b)
            }
            RecoveryTarget::Name(_) => false,
        };
        if after {
            return Err(RecoveryError::TargetAfterBranch {
                target: target.to_string(),
                branch: at.to_string(),
                when: history_branch_time(&history, *parent)
                    .map(|b| format!(" (by a recovery to time {b})"))
                    .unwrap_or_default(),
                parent: *parent,
                child,
            });
        }
    }
    Ok(())
}

/// Every segment recovery will read, from the backup's start to the newest archived segment on
/// the path (to an LSN target's segment with one: time and name targets have no known place in
/// the WAL yet), must be in the archive or the bundle, and every archived one must belong where
/// its name puts it ([`crate::walcheck`]): PostgreSQL takes a missing or foreign segment as the
/// end of the WAL and promotes there, losing every later commit. A restore point named as the
/// target must be in that WAL ([`crate::walscan`]); a time target after the last archived commit
/// is warned about. Returns the newest archived segment on the path.
fn check_archive_wal(
    members: &[MemberDigest],
    facts: &PhysicalFacts,
    archive: &Archive,
    target: Option<&RecoveryTarget>,
    choice: Option<TimelineChoice>,
) -> Result<Option<(String, Lsn)>, RecoveryError> {
    let until = match target {
        Some(RecoveryTarget::Lsn(l)) => Some(l.segment(facts.wal_segment_size)),
        _ => None,
    };
    let mut scanner = Some(crate::walscan::RecordScanner::new());
    let mut fed_previous = false;
    let Ok(files) = archive.list() else {
        return Ok(None);
    };
    let seg = facts.wal_segment_size;
    let path = archive_path(
        facts,
        archive,
        &files,
        choice.unwrap_or(TimelineChoice::Latest),
    )?;
    if choice.is_none()
        && let Some(t) = target
    {
        check_target_before_branches(facts, archive, &path, t)?;
    }
    let Some((&newest, newest_file)) = path.on_path.iter().next_back() else {
        return Ok(None);
    };
    let newest_name = newest_file.name.clone();
    let expect = crate::walcheck::Expect {
        system_identifier: facts.system_identifier.parse().ok(),
        major: Some(facts.server_version_num / 10000),
    };
    let last = until.map_or(newest, |u| u.min(newest));
    let start = facts.start_lsn.segment(seg);
    tracing::info!(
        from = %wal::segment_file_name(timeline_of(&path.chain, start), start, seg),
        to = %wal::segment_file_name(timeline_of(&path.chain, last), last, seg),
        timeline = path.latest,
        "checking every archived WAL segment recovery will read"
    );
    for n in start..=last {
        let tli = timeline_of(&path.chain, n);
        let name = wal::segment_file_name(tli, n, seg);
        match path.on_path.get(&n) {
            Some(f) => {
                if let Some(s) = scanner.as_mut() {
                    s.begin_segment(fed_previous);
                }
                let observe = |b: &[u8]| {
                    if let Some(s) = scanner.as_mut() {
                        s.feed(b);
                    }
                };
                crate::walcheck::check_archived_observed(f, expect, observe).map_err(
                    |e| match e {
                        crate::wal::WalError::Segment(e) => RecoveryError::BadSegment(e),
                        other => RecoveryError::Wal(other),
                    },
                )?;
                fed_previous = true;
            }
            None => {
                fed_previous = false;
                let in_bundle = members
                    .iter()
                    .any(|m| m.path == format!("{DATA_PREFIX}pg_wal/{name}"));
                if !in_bundle && n < newest {
                    return Err(RecoveryError::ArchiveGap {
                        archive: archive.dir().to_owned(),
                        segment: name,
                        newest: newest_name,
                    });
                }
            }
        }
    }
    if let Some(found) = scanner.as_ref().map(|s| s.found()) {
        let range = format!(
            "{} to {newest_name}",
            wal::segment_file_name(timeline_of(&path.chain, start), start, seg)
        );
        // Where recovery will stop reading, when known before it starts.
        let stops_at = match target {
            Some(RecoveryTarget::Lsn(l)) => Some(*l),
            Some(RecoveryTarget::Name(name)) => found
                .restore_points
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, at)| *at),
            _ => None,
        };
        if let Some((at, what)) = found.damaged
            && stops_at.is_none_or(|s| at < s)
        {
            return Err(RecoveryError::DamagedRecord {
                at: at.to_string(),
                what,
                segment: wal::segment_file_name(
                    timeline_of(&path.chain, at.segment(seg)),
                    at.segment(seg),
                    seg,
                ),
                archive: archive.dir().to_owned(),
            });
        }
        match target {
            Some(RecoveryTarget::Name(name)) => {
                let times = found
                    .restore_points
                    .iter()
                    .filter(|(n, _)| n == name)
                    .count();
                if times == 0 {
                    return Err(RecoveryError::RestorePointMissing {
                        name: name.clone(),
                        range,
                        archive: archive.dir().to_owned(),
                        known: found
                            .restore_points
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                if times > 1 {
                    tracing::warn!(
                        "restore point `{name}` occurs {times} times in the archived WAL ({range}); \
                         PostgreSQL stops at the first"
                    );
                }
            }
            Some(RecoveryTarget::Time(t)) => match found.last_xact_end {
                Some(last) if last >= *t => {}
                last => tracing::warn!(
                    "the target time {t} is after the last commit or abort in the archived WAL \
                     ({range}: {}), the records PostgreSQL compares it with; it will replay to the \
                     end of the WAL and refuse to promote (\"recovery ended before configured \
                     recovery target was reached\")",
                    last.map(|l| format!("the last at {l}"))
                        .unwrap_or_else(|| "none".into())
                ),
            },
            _ => {}
        }
    }
    Ok(Some((newest_name, Lsn(newest * seg))))
}

fn keep_old_path(pgdata: &Path) -> PathBuf {
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    pgdata.with_file_name(format!("{name}.old-{}", now.strftime("%Y%m%d-%H%M%S")))
}

fn check_room(volume: &Path, data_bytes: u64) -> Result<(), RecoveryError> {
    let st = rustix::fs::statvfs(volume).map_err(|e| FsError::new("statvfs", volume, e.into()))?;
    let available = st.f_bavail * st.f_frsize;
    let needed = data_bytes + data_bytes / 20 + (64 << 20);
    if available < needed {
        return Err(RecoveryError::NoRoomToKeepOld {
            volume: volume.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the bootstrap itself
// ---------------------------------------------------------------------------------------------

/// Run the bootstrap planned by [`prepare`]. Call it only after confirmation.
pub async fn execute(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
) -> Result<BootstrapReport, RecoveryError> {
    let started = Instant::now();
    let run_as = RunAs::data_owner(req.uid, req.gid)?;
    let replayed = replay(pg, conn, req, plan, run_as).await?;
    let report = replayed.report(req, plan, started);
    replayed.server.stop()?;
    // Recovery is over and PGDATA is a whole, stopped database again.
    if req.sandbox.is_none() {
        crate::bootmark::clear(&req.pgroot)?;
    }
    if req.leave_running && req.sandbox.is_none() {
        // The replay server listened only on pgkeep's socket: start the database again as
        // configured, detached (pg_ctl), since it is meant to outlive this run.
        if start_postgres(pg, &req.pgdata, &replayed.log_file, run_as).is_err()
            || !wait_started(&req.pgdata).await
        {
            return Err(RecoveryError::RestartFailed {
                log_file: replayed.log_file.clone(),
                log: crate::server::log_tail(&replayed.log_file, 15),
            });
        }
    }
    Ok(BootstrapReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// [`execute`] for a sandbox (a restore drill's scratch directory, `req.sandbox` set): the
/// replay server is handed back still running, as pgkeep's child, for the caller to check and
/// then stop; it never outlives this process.
pub async fn execute_in_sandbox(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
) -> Result<(BootstrapReport, ChildServer), RecoveryError> {
    let started = Instant::now();
    let run_as = RunAs::data_owner(req.uid, req.gid)?;
    let replayed = replay(pg, conn, req, plan, run_as).await?;
    let db = Db::connect(&replayed.conn.with_db("postgres")).await?;
    db.reload_conf().await?;
    drop(db);
    let report = replayed.report(req, plan, started);
    Ok((report, replayed.server))
}

/// What [`replay`] leaves: recovery ended, its settings removed, the replay server still up.
struct Replayed {
    server: ChildServer,
    conn: ConnParams,
    ended: Ended,
    log_file: PathBuf,
    old_at: Option<PathBuf>,
}

impl Replayed {
    fn report(&self, req: &BootstrapRequest, plan: &Plan, started: Instant) -> BootstrapReport {
        BootstrapReport {
            bundle: plan.bundle.name.clone(),
            end_lsn: self.ended.end_lsn.clone(),
            timeline: self.ended.timeline,
            last_replayed_xact_time: self.ended.last_xact_time.clone(),
            stop_reason: stop_reason(&self.log_file),
            left_running: req.leave_running,
            old_contents_at: self.old_at.clone(),
            log_file: self.log_file.clone(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The steps up to the end of recovery.
async fn replay(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
    run_as: Option<RunAs>,
) -> Result<Replayed, RecoveryError> {
    mountinfo::guard(&req.pgroot, &req.pgdata)?;
    check_not_running(&req.pgdata)?;
    // Until recovery has ended, an empty or partial PGDATA is not a new database (bootmark).
    if req.sandbox.is_none() {
        crate::bootmark::set(&req.pgroot, &plan.bundle.name)?;
    }
    clean_stale_staging(&req.pgdata)?;
    let old_at = clear_pgdata(req, plan)?;
    extract_into_pgdata(req, plan)?;
    set_ownership_and_modes(&req.pgdata, req.uid, req.gid)?;
    hand_over_archive(req, plan)?;
    let overrides = required_parameter_overrides(pg, &req.pgdata, run_as)?;
    write_recovery_settings(req, plan, &overrides)?;
    let log_file = open_log_file(req, run_as)?;
    let (socket_dir, port) = replay_socket(req);
    // The replay server is our child: should this run be killed, the kernel stops it, and the
    // next run (the bootmark says PGDATA is partial) starts over from the base backup.
    let mut server = ChildServer::start(
        pg,
        &req.pgdata,
        &log_file,
        run_as,
        &replay_server_settings(&socket_dir, port),
    )?;
    let mut replay_conn = conn.clone();
    replay_conn.host = socket_dir.display().to_string();
    replay_conn.port = port;
    // On an error the server is stopped (dropped) and the recovery settings stay, so a person
    // can look at the state; the error says what happened.
    let ended = wait_for_recovery_end(&replay_conn, req, plan, &log_file, &mut server).await?;
    check_replayed_to_the_end(plan, &ended, &log_file)?;
    remove_recovery_settings(&req.pgdata)?;
    Ok(Replayed {
        server,
        conn: replay_conn,
        ended,
        log_file,
        old_at,
    })
}

/// Step: without a target, replay must have reached the newest archived segment on the path;
/// ending before it means a segment could not be replayed and commits are missing.
fn check_replayed_to_the_end(
    plan: &Plan,
    ended: &Ended,
    log_file: &Path,
) -> Result<(), RecoveryError> {
    if plan.target.is_some() {
        return Ok(());
    }
    let Some((newest, start)) = &plan.newest_archived else {
        return Ok(());
    };
    let end: Option<Lsn> = ended.end_lsn.as_deref().and_then(|l| l.parse().ok());
    if end.is_some_and(|e| e >= *start) {
        return Ok(());
    }
    Err(RecoveryError::EndedShort {
        end: ended.end_lsn.clone().unwrap_or_else(|| "?".into()),
        newest: newest.clone(),
        newest_start: start.to_string(),
        history: ended
            .timeline
            .map(|t| format!("{t:08X}.history"))
            .unwrap_or_else(|| "the newest .history file".into()),
        log: crate::server::log_tail(log_file, 15),
    })
}

/// [`prepare`] then [`execute`] without asking: for callers that own the site they restore into
/// (`pgkeep demo`, restore drills). Everything `prepare` refuses is still refused.
pub async fn bootstrap(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
) -> Result<BootstrapReport, RecoveryError> {
    let plan = prepare(req)?;
    execute(pg, conn, req, &plan).await
}

/// Step: empty PGDATA (never PGDATA itself, never the volume root), or move its contents aside.
fn clear_pgdata(req: &BootstrapRequest, plan: &Plan) -> Result<Option<PathBuf>, RecoveryError> {
    let pgdata = &req.pgdata;
    if !pgdata.exists() {
        std::fs::create_dir_all(pgdata).fs_ctx("create directory", pgdata)?;
    }
    let aside = plan.keep_old_at.clone();
    if let Some(dir) = &aside {
        std::fs::create_dir(dir).fs_ctx("create directory", dir)?;
        fsutil::set_mode(dir, 0o700)?;
        if fsutil::is_root() {
            fsutil::chown(dir, req.uid, req.gid)?;
        }
    }
    for entry in std::fs::read_dir(pgdata).fs_ctx("read directory", pgdata)? {
        let entry = entry.fs_ctx("read directory", pgdata)?;
        let path = entry.path();
        match &aside {
            Some(dir) => {
                let to = dir.join(entry.file_name());
                std::fs::rename(&path, &to).fs_ctx("move aside", &path)?;
            }
            None => {
                let ft = entry.file_type().fs_ctx("stat", &path)?;
                if ft.is_dir() {
                    std::fs::remove_dir_all(&path).fs_ctx("remove", &path)?;
                } else {
                    std::fs::remove_file(&path).fs_ctx("remove", &path)?;
                }
            }
        }
    }
    fsutil::fsync_dir(pgdata)?;
    if let Some(dir) = &aside {
        fsutil::fsync_dir(dir)?;
        tracing::info!(to = %dir.display(), "moved the old PGDATA contents aside");
    } else {
        tracing::info!(pgdata = %pgdata.display(), "emptied PGDATA");
    }
    Ok(aside)
}

/// The name prefix of a bootstrap's staging directory beside PGDATA (`.pgkeep-bootstrap-HOST-PID`,
/// earlier versions `.pgkeep-bootstrap-PID`); the bootstrap marker shares the prefix but is a file.
const STAGING_PREFIX: &str = ".pgkeep-bootstrap-";

/// Step: remove the staging directories that killed bootstraps left beside PGDATA (each as large
/// as the database), by the run-mark rules: only when their run is known to be gone, never a
/// live one's. Returns what was removed.
pub fn clean_stale_staging(pgdata: &Path) -> Result<Vec<PathBuf>, RecoveryError> {
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Ok(removed);
    };
    for entry in rd {
        let entry = entry.fs_ctx("read directory", parent)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        let path = entry.path();
        if name == crate::bootmark::FILE_NAME
            || !entry
                .file_type()
                .is_ok_and(|t| t.is_dir() && !t.is_symlink())
        {
            continue;
        }
        let gone = match crate::runmark::holder(&path) {
            crate::runmark::Holder::Gone => true,
            crate::runmark::Holder::Us | crate::runmark::Holder::Running(_) => false,
            // No pid file (yet): the name tells the run (`HOST-PID`, or an earlier version's
            // `PID`); a run on another host, or a name that does not parse, only by its age.
            crate::runmark::Holder::Unknown => {
                let (host, pid) = match rest.rsplit_once('-') {
                    Some((host, pid)) => (Some(host), pid),
                    None => (None, rest),
                };
                let here = host.is_none_or(|h| h == crate::runmark::this_host());
                match pid.parse::<u32>() {
                    Ok(pid) if here => {
                        crate::runmark::judge(pid, None, Duration::default)
                            == crate::runmark::Holder::Gone
                    }
                    _ => crate::runmark::quiet_for(&path) > crate::runmark::FOREIGN_STALE_AFTER,
                }
            }
        };
        if !gone {
            tracing::info!(path = %path.display(), "leaving a staging directory a running bootstrap uses");
            continue;
        }
        std::fs::remove_dir_all(&path).fs_ctx("remove stale staging", &path)?;
        tracing::info!(path = %path.display(), "removed the staging directory an interrupted bootstrap left behind");
        removed.push(path);
    }
    Ok(removed)
}

/// Step: extract the bundle next to PGDATA (same volume) into a staging directory marked as this
/// run's (a `pid` file with a heartbeat, so a later run can tell it was left by a killed one),
/// then move the data directory in.
fn extract_into_pgdata(req: &BootstrapRequest, plan: &Plan) -> Result<(), RecoveryError> {
    let parent = req.pgdata.parent().unwrap_or(Path::new("/"));
    let label = crate::runmark::run_label("pgkeep-bootstrap");
    let staging = parent.join(format!(".{label}"));
    if staging.exists() {
        // Our own label: left by an earlier run with this PID on this host, which is gone.
        std::fs::remove_dir_all(&staging).fs_ctx("remove", &staging)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .fs_ctx("create directory", &staging)?;
    let heartbeat = crate::runmark::mark(&staging).fs_ctx("write", &staging.join("pid"))?;
    tracing::info!(bundle = %plan.bundle.name, staging = %staging.display(), "extracting");
    let result = (|| {
        let unpacked = staging.join("bundle");
        bundle::extract(&plan.bundle.path, &unpacked)?;
        let data = unpacked.join(DATA_PREFIX.trim_end_matches('/'));
        for entry in std::fs::read_dir(&data).fs_ctx("read directory", &data)? {
            let entry = entry.fs_ctx("read directory", &data)?;
            let to = req.pgdata.join(entry.file_name());
            std::fs::rename(entry.path(), &to).fs_ctx("move into PGDATA", &to)?;
        }
        for sub in ["pg_wal/archive_status", "pg_tblspc", "pg_replslot"] {
            let p = req.pgdata.join(sub);
            std::fs::create_dir_all(&p).fs_ctx("create directory", &p)?;
        }
        fsutil::fsync_dir(&req.pgdata)?;
        Ok::<_, RecoveryError>(())
    })();
    drop(heartbeat);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Step: PGDATA and everything in it owned by the data owner, directories 0700, files 0600.
fn set_ownership_and_modes(pgdata: &Path, uid: u32, gid: u32) -> Result<(), RecoveryError> {
    fn walk(p: &Path, uid: u32, gid: u32, root: bool) -> Result<(), FsError> {
        let meta = std::fs::symlink_metadata(p).fs_ctx("stat", p)?;
        if root && (meta.uid() != uid || meta.gid() != gid) {
            fsutil::chown(p, uid, gid)?;
        }
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))
                .fs_ctx("chmod", p)?;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(p).fs_ctx("read directory", p)? {
                walk(&e.fs_ctx("read directory", p)?.path(), uid, gid, root)?;
            }
        }
        Ok(())
    }
    walk(pgdata, uid, gid, fsutil::is_root())?;
    Ok(())
}

/// Settings that must be at least the values the backed-up server ran with.
const REQUIRED_PARAMETERS: [(&str, &str); 5] = [
    ("max_connections", "max_connections setting:"),
    ("max_worker_processes", "max_worker_processes setting:"),
    ("max_wal_senders", "max_wal_senders setting:"),
    ("max_prepared_transactions", "max_prepared_xacts setting:"),
    ("max_locks_per_transaction", "max_locks_per_xact setting:"),
];

/// The values pg_controldata reports for the settings hot standby needs, by setting name.
pub fn parse_controldata(text: &str) -> Vec<(&'static str, i64)> {
    REQUIRED_PARAMETERS
        .iter()
        .filter_map(|(name, label)| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|v| v.trim().parse().ok())
                .map(|v| (*name, v))
        })
        .collect()
}

/// Which settings to raise: (name, value) where the configured value is below pg_control's.
pub fn overrides_needed(
    control: &[(&'static str, i64)],
    configured: impl Fn(&str) -> Option<i64>,
) -> Vec<(&'static str, i64)> {
    control
        .iter()
        .filter(|(name, want)| configured(name).is_none_or(|have| have < *want))
        .copied()
        .collect()
}

/// Step: compare pg_controldata's values with the restored configuration.
fn required_parameter_overrides(
    pg: &PgBin,
    pgdata: &Path,
    run_as: Option<RunAs>,
) -> Result<Vec<(&'static str, i64)>, RecoveryError> {
    let text = RunAs::apply(run_as, pg.cmd("pg_controldata").arg(pgdata))
        .env("LC_ALL", "C")
        .output_string()?;
    let control = parse_controldata(&text);
    let configured = |name: &str| {
        RunAs::apply(
            run_as,
            pg.cmd("postgres").arg("-D").arg(pgdata).arg("-C").arg(name),
        )
        .output_string()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let needed = overrides_needed(&control, configured);
    for (name, v) in &needed {
        tracing::info!("raising {name} to {v}, the value the backed-up server ran with");
    }
    Ok(needed)
}

/// The restore_command pgkeep writes: every segment is checked to belong to `system`.
pub fn restore_command(pgkeep: &Path, archive: &Path, system: &str) -> String {
    format!(
        "{} wal fetch --archive {} --sysid {} %f %p",
        crate::tools::shell_quote(&pgkeep.to_string_lossy()),
        crate::tools::shell_quote(&archive.to_string_lossy()),
        crate::tools::shell_quote(system)
    )
}

fn conf_line(k: &str, v: &str) -> String {
    format!("{k} = '{}'\n", v.replace('\'', "''"))
}

/// Step: recovery.signal and the recovery settings (a marked block in postgresql.auto.conf,
/// read last, so it wins over the restored configuration).
fn write_recovery_settings(
    req: &BootstrapRequest,
    plan: &Plan,
    overrides: &[(&'static str, i64)],
) -> Result<(), RecoveryError> {
    let mut block = format!("{BLOCK_BEGIN}\n");
    block.push_str(&conf_line(
        "restore_command",
        &restore_command(
            &req.pgkeep_exe,
            &plan.restore_from,
            &plan.facts.system_identifier,
        ),
    ));
    block.push_str(&conf_line("recovery_target_action", "promote"));
    block.push_str(&conf_line(
        "recovery_target_timeline",
        &plan.target_timeline.to_string(),
    ));
    block.push_str(&conf_line("hot_standby", "on"));
    if let Some(t) = &plan.target {
        for (k, v) in t.settings() {
            block.push_str(&conf_line(k, &v));
        }
        block.push_str(&conf_line("recovery_target_inclusive", "on"));
    }
    for (k, v) in overrides {
        block.push_str(&conf_line(k, &v.to_string()));
    }
    block.push_str(BLOCK_END);
    block.push('\n');
    let auto = req.pgdata.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text = strip_block(&text);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut written = vec![auto.clone()];
    if let Some(sandbox) = &req.sandbox {
        // Outside the recovery block: these stay for as long as the throwaway server runs.
        text.push_str(SANDBOX_HEADER);
        text.push('\n');
        for (k, v) in sandbox.settings(&req.pgdata) {
            text.push_str(&conf_line(k, &v));
        }
        let hba = req.pgdata.join("pg_hba.conf");
        fsutil::write_atomic(&hba, Sandbox::HBA.as_bytes(), 0o600, true)?;
        written.push(hba);
    }
    text.push_str(&block);
    fsutil::write_atomic(&auto, text.as_bytes(), 0o600, true)?;
    let signal = req.pgdata.join("recovery.signal");
    fsutil::write_atomic(&signal, b"", 0o600, true)?;
    written.push(signal);
    if fsutil::is_root() {
        for p in &written {
            fsutil::chown(p, req.uid, req.gid)?;
        }
    }
    Ok(())
}

const SANDBOX_HEADER: &str =
    "# pgkeep restore drill: a throwaway server (private socket only, never archives)";

/// postgresql.auto.conf without pgkeep's recovery block.
pub fn strip_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BLOCK_BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if line == BLOCK_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Step (after recovery): remove the recovery block again.
fn remove_recovery_settings(pgdata: &Path) -> Result<(), RecoveryError> {
    let auto = pgdata.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).fs_ctx("read", &auto)?;
    let stripped = strip_block(&text);
    if stripped != text {
        let meta = std::fs::metadata(&auto).fs_ctx("stat", &auto)?;
        fsutil::write_atomic(&auto, stripped.as_bytes(), 0o600, true)?;
        if fsutil::is_root() {
            fsutil::chown(&auto, meta.uid(), meta.gid())?;
        }
    }
    Ok(())
}

/// Step: the server log for this bootstrap, beside PGDATA (else in the temp dir), owned by the
/// data owner so pg_ctl can append to it. Always a new, empty file: the outcome is read from
/// this log, so two bootstraps in the same second must not share one (the second would read the
/// first one's verdict). `pgkeep-bootstrap-STAMP.log`, then `-2`, `-3`, ... when taken.
fn open_log_file(req: &BootstrapRequest, run_as: Option<RunAs>) -> Result<PathBuf, RecoveryError> {
    let stamp = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    let name = |n: u32| match n {
        1 => format!("pgkeep-bootstrap-{stamp}.log"),
        n => format!("pgkeep-bootstrap-{stamp}-{n}.log"),
    };
    let parent = req.pgdata.parent().unwrap_or(Path::new("/")).to_owned();
    for dir in [parent, std::env::temp_dir()] {
        for n in 1..=100 {
            let path = dir.join(name(n));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {
                    if let Some(r) = run_as {
                        fsutil::chown(&path, r.uid, r.gid)?;
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => break,
            }
        }
    }
    Err(FsError::new(
        "create log file",
        req.pgdata.join(name(1)),
        std::io::Error::other("no writable directory"),
    )
    .into())
}

/// Step: start the recovered database as configured, detached with pg_ctl (it outlives this
/// run), as the data owner, without waiting (see [`wait_started`]).
fn start_postgres(
    pg: &PgBin,
    pgdata: &Path,
    log_file: &Path,
    run_as: Option<RunAs>,
) -> Result<(), RecoveryError> {
    tracing::info!(log = %log_file.display(), "starting PostgreSQL");
    let cmd = pg
        .cmd("pg_ctl")
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log_file);
    RunAs::apply(run_as, cmd.args(["-W", "start"])).run()?;
    Ok(())
}

/// After a start without waiting: whether the postmaster came up and accepts connections
/// (postmaster.pid's status line says `ready`) within a minute.
async fn wait_started(pgdata: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap_or_default();
        if datadir::running_postmaster(pgdata).is_some()
            && pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready")
        {
            return true;
        }
        if datadir::running_postmaster(pgdata).is_none()
            && started.elapsed() > Duration::from_secs(10)
        {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

struct Ended {
    end_lsn: Option<String>,
    timeline: Option<u32>,
    last_xact_time: Option<String>,
}

struct RecoveryState {
    in_recovery: bool,
    paused: bool,
    replay_lsn: Option<String>,
    xact_time: Option<String>,
    timeline: Option<u32>,
}

impl Db {
    async fn recovery_state(&self) -> Result<RecoveryState, DbError> {
        let row = self
            .client()
            .query_one(
                "select pg_is_in_recovery(), \
                 case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end, \
                 pg_last_wal_replay_lsn()::text, \
                 to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                 case when pg_is_in_recovery() then null \
                      else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 end",
                &[],
            )
            .await
            .map_err(|e| DbError::Query {
                what: "reading the recovery state",
                message: e.to_string(),
            })?;
        Ok(RecoveryState {
            in_recovery: row.get(0),
            paused: row.get(1),
            replay_lsn: row.get(2),
            xact_time: row.get(3),
            timeline: row.get::<_, Option<i32>>(4).map(|t| t as u32),
        })
    }

    async fn resume_replay(&self) -> Result<(), DbError> {
        self.client()
            .batch_execute("select pg_wal_replay_resume()")
            .await
            .map_err(|e| DbError::Query {
                what: "resuming WAL replay",
                message: e.to_string(),
            })
    }

    async fn reload_conf(&self) -> Result<(), DbError> {
        self.client()
            .batch_execute("select pg_reload_conf()")
            .await
            .map_err(|e| DbError::Query {
                what: "reloading the configuration",
                message: e.to_string(),
            })
    }
}

/// Step: wait until PostgreSQL has left recovery; turn its failures into clear errors.
async fn wait_for_recovery_end(
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
    log_file: &Path,
    server: &mut ChildServer,
) -> Result<Ended, RecoveryError> {
    let deadline = Instant::now() + req.timeout;
    let params = conn.with_db("postgres");
    let mut db: Option<Db> = None;
    let mut last_note = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err(RecoveryError::Timeout {
                seconds: req.timeout.as_secs(),
                log_file: log_file.to_owned(),
            });
        }
        // Our own child: an exit is seen at once (and reaped), never mistaken for a live pid.
        if server.exited() {
            return Err(classify_failure(log_file, plan));
        }
        if db.is_none() {
            db = Db::connect(&params).await.ok();
        }
        if let Some(d) = &db {
            match d.recovery_state().await {
                Ok(s) if !s.in_recovery => {
                    return Ok(Ended {
                        end_lsn: s.replay_lsn,
                        timeline: s.timeline,
                        last_xact_time: s.xact_time,
                    });
                }
                Ok(s) => {
                    if s.paused {
                        tracing::info!(
                            "recovery paused at the target; resuming so it ends and promotes"
                        );
                        d.resume_replay().await?;
                    }
                    if last_note.elapsed() > Duration::from_secs(10) {
                        tracing::info!(replayed = ?s.replay_lsn, "replaying WAL");
                        last_note = Instant::now();
                    }
                }
                Err(_) => db = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Turn PostgreSQL's last words into an error.
fn classify_failure(log_file: &Path, plan: &Plan) -> RecoveryError {
    let text = std::fs::read_to_string(log_file).unwrap_or_default();
    let log = crate::server::log_tail(log_file, 25);
    let target = plan
        .target
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "(none)".into());
    if text.contains("recovery ended before configured recovery target was reached") {
        return RecoveryError::TargetNotReached { target, log };
    }
    if text.contains("requested recovery stop point is before consistent recovery point") {
        return RecoveryError::TargetBeforeConsistency { target, log };
    }
    if text.contains("could not restore file") && text.contains("from archive") {
        return RecoveryError::ArchiveDamaged { log };
    }
    if text.contains("WAL ends before consistent recovery point")
        || text.contains("WAL ends before end of online backup")
        || text.contains("could not locate required checkpoint record")
    {
        let segment = next_needed_segment(&text, &plan.facts)
            .map(|s| format!(" (segment {s})"))
            .unwrap_or_default();
        return RecoveryError::MissingWal { segment, log };
    }
    RecoveryError::ServerDied { log }
}

/// The segment after the last one PostgreSQL restored, within the backup's range.
fn next_needed_segment(log: &str, facts: &PhysicalFacts) -> Option<String> {
    let seg = facts.wal_segment_size;
    let last = log
        .lines()
        .filter_map(|l| l.split("restored log file \"").nth(1))
        .filter_map(|r| r.split('"').next())
        .filter_map(wal::parse_name)
        .map(|w| w.segment_no(seg))
        .max();
    let next = match last {
        Some(n) => n + 1,
        None => facts.start_lsn.segment(seg),
    };
    Some(wal::segment_file_name(facts.timeline, next, seg))
}

/// PostgreSQL's "recovery stopping ..." line from the log.
fn stop_reason(log_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log_file).ok()?;
    text.lines()
        .rfind(|l| l.contains("recovery stopping"))
        .map(|l| l.split("LOG:  ").nth(1).unwrap_or(l).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bootstrap_gets_a_new_empty_log_even_within_one_second() {
        let t = tempfile::tempdir().unwrap();
        let req = BootstrapRequest {
            pgroot: t.path().to_owned(),
            pgdata: t.path().join("data"),
            wal_archive: t.path().join("wal"),
            backups: t.path().join("backups"),
            uid: 0,
            gid: 0,
            run_dir: t.path().join("run"),
            port: 5432,
            from: None,
            target: None,
            target_timeline: None,
            keep_old: false,
            leave_running: false,
            pgkeep_exe: "pgkeep".into(),
            timeout: Duration::from_secs(1),
            sandbox: None,
        };
        let first = open_log_file(&req, None).unwrap();
        std::fs::write(
            &first,
            "FATAL:  recovery ended before configured recovery target\n",
        )
        .unwrap();
        let second = open_log_file(&req, None).unwrap();
        let third = open_log_file(&req, None).unwrap();
        assert_ne!(first, second);
        assert_ne!(second, third);
        for p in [&second, &third] {
            assert_eq!(std::fs::read(p).unwrap(), b"", "{}", p.display());
            assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o777, 0o600);
            assert_eq!(p.parent(), Some(t.path()), "beside PGDATA");
        }
    }

    #[test]
    fn target_times_parse() {
        let want: jiff::Timestamp = "2026-11-25T19:30:00Z".parse().unwrap();
        for s in [
            "2026-11-25T19:30:00Z",
            "2026-11-25 19:30:00",
            "2026-11-25T19:30:00",
            "2026-11-25 19:30:00 UTC",
            "2026-11-25T14:30:00-05:00",
            "2026-11-25 20:30:00+01:00",
        ] {
            assert_eq!(parse_target_time(s).unwrap(), want, "{s}");
        }
        assert!(parse_target_time("yesterday").is_err());
        let t = RecoveryTarget::Time("2026-11-25T19:30:00.123456789Z".parse().unwrap());
        assert_eq!(
            t.settings(),
            vec![(
                "recovery_target_time",
                "2026-11-25 19:30:00.123456+00".to_owned()
            )]
        );
    }

    #[test]
    fn controldata_values_and_overrides() {
        let text = "pg_control version number:            1300\n\
                    max_connections setting:              100\n\
                    max_worker_processes setting:         8\n\
                    max_wal_senders setting:              10\n\
                    max_prepared_xacts setting:           0\n\
                    max_locks_per_xact setting:           64\n";
        let c = parse_controldata(text);
        assert_eq!(
            c,
            vec![
                ("max_connections", 100),
                ("max_worker_processes", 8),
                ("max_wal_senders", 10),
                ("max_prepared_transactions", 0),
                ("max_locks_per_transaction", 64)
            ]
        );
        let configured = |n: &str| match n {
            "max_connections" => Some(30),
            "max_wal_senders" => Some(10),
            "max_worker_processes" => Some(16),
            "max_prepared_transactions" => Some(0),
            _ => None,
        };
        assert_eq!(
            overrides_needed(&c, configured),
            vec![("max_connections", 100), ("max_locks_per_transaction", 64)]
        );
    }

    #[test]
    fn recovery_block_is_added_and_removed_cleanly() {
        let original = "# Do not edit this file manually!\nwork_mem = '8MB'\n";
        let with = format!("{original}{BLOCK_BEGIN}\nrestore_command = 'x'\n{BLOCK_END}\n");
        assert_eq!(strip_block(&with), original);
        assert_eq!(strip_block(original), original);
    }

    #[test]
    fn a_wrong_pgdata_is_not_emptied() {
        let t = tempfile::tempdir().unwrap();
        check_pgdata_contents(t.path()).unwrap();
        check_pgdata_contents(&t.path().join("missing")).unwrap();
        for n in [
            "PG_VERSION",
            "base",
            "pg_wal",
            "backup_label.old",
            "postgresql.conf",
        ] {
            std::fs::write(t.path().join(n), "").unwrap();
        }
        check_pgdata_contents(t.path()).unwrap();
        std::fs::write(t.path().join("thesis.tex"), "").unwrap();
        std::fs::create_dir(t.path().join("lost+found")).unwrap();
        let err = check_pgdata_contents(t.path()).unwrap_err();
        assert!(err.to_string().contains("lost+found, thesis.tex"), "{err}");
        assert_eq!(err.exit_class(), ExitClass::Refused);
    }

    #[test]
    fn timeline_chains_from_history_files() {
        let seg = wal::DEFAULT_SEGMENT_SIZE;
        assert_eq!(timeline_chain("", 1, seg), vec![(1, 0)]);
        let h = "1\t0/5000A28\tno recovery target specified\n\n2\t0/9000000\tbefore 2026-11-25\n";
        let c = timeline_chain(h, 3, seg);
        assert_eq!(c, vec![(1, 0), (2, 5), (3, 9)]);
        assert_eq!(timeline_of(&c, 4), 1);
        assert_eq!(timeline_of(&c, 5), 2);
        assert_eq!(timeline_of(&c, 8), 2);
        assert_eq!(timeline_of(&c, 9), 3);
        assert_eq!(timeline_of(&c, 100), 3);
    }

    #[test]
    fn a_higher_timeline_without_its_history_file_is_refused_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let a = Archive::new(t.path());
        let facts = PhysicalFacts::for_test(1, "0/2000028", "0/3000100");
        let touch = |n: &str| std::fs::write(t.path().join(n), "x").unwrap();
        let path =
            |a: &Archive| archive_path(&facts, a, &a.list().unwrap(), TimelineChoice::Latest);
        for n in [
            "000000010000000000000002",
            "000000010000000000000003.zst",
            "000000010000000000000004.zst",
        ] {
            touch(n);
        }
        assert_eq!(path(&a).unwrap().latest, 1);
        // Timeline 2's WAL without 00000002.history: recovery would stay on timeline 1.
        touch("000000020000000000000004.zst");
        let err = path(&a).unwrap_err();
        assert!(
            matches!(&err, RecoveryError::MissingHistory { missing, timeline: 2, follow: 1, .. } if missing == "00000002.history"),
            "{err}"
        );
        assert_eq!(err.exit_class(), ExitClass::Refused);
        touch("00000002.history");
        assert_eq!(path(&a).unwrap().latest, 2);
        // Timeline 3's history file missing, a .partial of it is there: recovery would stay on 2.
        touch("000000030000000000000005.partial.zst");
        let err = path(&a).unwrap_err().to_string();
        assert!(err.contains("00000003.history"), "{err}");
        assert!(err.contains("follow timeline 2"), "{err}");
        touch("00000003.history");
        assert_eq!(path(&a).unwrap().latest, 3);
    }

    #[test]
    fn without_a_target_replay_must_reach_the_newest_archived_segment() {
        let mut plan = Plan {
            bundle: Backup {
                name: "basebackup-20261201-1200.bundle.tar.gz".into(),
                kind: BackupKind::Physical,
                time: jiff::civil::date(2026, 12, 1).at(12, 0, 0, 0),
                seq: 0,
                size: 1,
                path: "b".into(),
            },
            facts: PhysicalFacts::for_test(1, "0/2000028", "0/2000100"),
            target: None,
            data_bytes: 0,
            keep_old_at: None,
            pgdata_entries: 0,
            archive_handover: None,
            restore_from: "w".into(),
            newest_archived: Some(("000000010000000000000007".into(), Lsn(0x700_0000))),
            target_timeline: TimelineChoice::Latest,
        };
        let ended = |end: &str| Ended {
            end_lsn: Some(end.into()),
            timeline: Some(2),
            last_xact_time: None,
        };
        let log = Path::new("/nonexistent/pgkeep-test.log");
        // Into the newest segment (its records end there, or run on into the next one).
        check_replayed_to_the_end(&plan, &ended("0/7000000"), log).unwrap();
        check_replayed_to_the_end(&plan, &ended("0/7A00128"), log).unwrap();
        // Short of it: commits are missing.
        let err = check_replayed_to_the_end(&plan, &ended("0/5FFFF28"), log).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("000000010000000000000007"), "{text}");
        assert!(text.contains("00000002.history"), "{text}");
        assert_eq!(err.exit_class(), ExitClass::Failed);
        // An unknown end is short too.
        let mut unknown = ended("x");
        unknown.end_lsn = None;
        assert!(check_replayed_to_the_end(&plan, &unknown, log).is_err());
        // With a target, ending before the newest segment is what was asked for.
        plan.target = Some(RecoveryTarget::Lsn(Lsn(0x500_0000)));
        check_replayed_to_the_end(&plan, &ended("0/5000028"), log).unwrap();
    }

    #[test]
    fn restore_command_is_shell_quoted() {
        assert_eq!(
            restore_command(
                Path::new("/usr/bin/pgkeep"),
                Path::new("/wal-archive"),
                "7300"
            ),
            "/usr/bin/pgkeep wal fetch --archive /wal-archive --sysid 7300 %f %p"
        );
        assert_eq!(
            restore_command(Path::new("/opt/my tools/pgkeep"), Path::new("/a'b"), "1"),
            r"'/opt/my tools/pgkeep' wal fetch --archive '/a'\''b' --sysid 1 %f %p"
        );
    }

    #[test]
    fn next_needed_segment_follows_the_last_restored() {
        let facts = PhysicalFacts::for_test(1, "0/2000028", "0/3000100");
        let log = "LOG:  restored log file \"000000010000000000000002\" from archive\n";
        assert_eq!(
            next_needed_segment(log, &facts).unwrap(),
            "000000010000000000000003"
        );
        assert_eq!(
            next_needed_segment("", &facts).unwrap(),
            "000000010000000000000002"
        );
    }

    #[test]
    fn stale_staging_of_dead_runs_is_removed_never_a_live_ones_nor_the_marker() {
        let t = tempfile::tempdir().unwrap();
        let pgdata = t.path().join("data");
        std::fs::create_dir(&pgdata).unwrap();
        let host = crate::runmark::this_host();
        let mk = |name: &str, pid_file: Option<String>| {
            let d = t.path().join(name);
            std::fs::create_dir_all(d.join("bundle")).unwrap();
            if let Some(text) = pid_file {
                std::fs::write(d.join("pid"), text).unwrap();
            }
            d
        };
        let dead = mk(
            ".pgkeep-bootstrap-dead",
            Some(format!("999999999 {host}\n")),
        );
        let old_version = mk(".pgkeep-bootstrap-999999998", None);
        let ours = mk(
            &format!(".pgkeep-bootstrap-{host}-{}", std::process::id()),
            Some(crate::runmark::pid_file_text()),
        );
        let elsewhere = mk(
            ".pgkeep-bootstrap-other-pod-1",
            Some("1 other-pod\n".into()),
        );
        let unmarked_here = mk(&format!(".pgkeep-bootstrap-{host}-999999997"), None);
        let marker = t.path().join(crate::bootmark::FILE_NAME);
        std::fs::write(&marker, "bundle\n").unwrap();
        let removed = clean_stale_staging(&pgdata).unwrap();
        assert!(!dead.exists() && !old_version.exists() && !unmarked_here.exists());
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(ours.exists(), "a live run's staging stays");
        assert!(elsewhere.exists(), "another host's fresh staging stays");
        assert!(marker.exists() && pgdata.exists());
    }

    #[test]
    fn the_replay_server_gets_its_socket_and_no_tcp_on_the_command_line() {
        let kv = |v: Vec<(&str, String)>| {
            v.into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kv(replay_server_settings(Path::new("/run/pg"), 5433)),
            [
                "listen_addresses=",
                "unix_socket_directories=/run/pg",
                "port=5433"
            ]
        );
        // The GUC is a comma-separated list: a name with a separator is double-quoted.
        assert_eq!(
            kv(replay_server_settings(Path::new("/tmp/it's, here"), 5432))[1],
            r#"unix_socket_directories="/tmp/it's, here""#
        );
    }

    #[test]
    fn the_run_dir_and_port_are_checked_before_anything_changes() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("missing");
        let e = check_run_dir(&missing, 101, 104).unwrap_err();
        assert!(matches!(e, RecoveryError::RunDirUnusable { .. }), "{e}");
        assert_eq!(e.exit_class(), ExitClass::Refused);
        check_port_free(t.path(), 5432).unwrap();
        let lock = t.path().join(".s.PGSQL.5432.lock");
        std::fs::write(&lock, "999999999\n/data\n").unwrap();
        check_port_free(t.path(), 5432).unwrap();
        std::fs::write(&lock, format!("{}\n/data\n", std::process::id())).unwrap();
        let e = check_port_free(t.path(), 5432).unwrap_err();
        assert!(e.to_string().contains("port 5432 is taken"), "{e}");
    }

    #[test]
    fn timelines_are_chosen_and_ambiguous_targets_refused_naming_the_branch() {
        assert_eq!(
            "latest".parse::<TimelineChoice>().unwrap(),
            TimelineChoice::Latest
        );
        assert_eq!(
            "current".parse::<TimelineChoice>().unwrap(),
            TimelineChoice::Current
        );
        assert_eq!(
            "3".parse::<TimelineChoice>().unwrap(),
            TimelineChoice::Id(3)
        );
        assert!("0".parse::<TimelineChoice>().is_err());
        assert!("newest".parse::<TimelineChoice>().is_err());

        let t = tempfile::tempdir().unwrap();
        let a = Archive::new(t.path());
        let facts = PhysicalFacts::for_test(1, "0/2000028", "0/3000100");
        std::fs::write(
            t.path().join("00000002.history"),
            "1\t0/5000100\tbefore 2026-11-25 19:30:00.000000+00\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("00000003.history"),
            "1\t0/5000100\tbefore 2026-11-25 19:30:00.000000+00\n2\t0/7000200\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(
            history_branch_time(
                &std::fs::read_to_string(t.path().join("00000003.history")).unwrap(),
                1
            ),
            Some("2026-11-25T19:30:00Z".parse().unwrap())
        );
        let files = a.list().unwrap();
        let path = archive_path(&facts, &a, &files, TimelineChoice::Latest).unwrap();
        assert_eq!(path.latest, 3);
        let check =
            |target: RecoveryTarget| check_target_before_branches(&facts, &a, &path, &target);
        check(RecoveryTarget::Lsn("0/5000000".parse().unwrap())).unwrap();
        let e = check(RecoveryTarget::Lsn("0/6000000".parse().unwrap())).unwrap_err();
        assert!(
            e.to_string()
                .contains("0/5000100, where timeline 2 branched off timeline 1"),
            "{e}"
        );
        let e = check(RecoveryTarget::Lsn("0/8000000".parse().unwrap())).unwrap_err();
        assert!(
            e.to_string().contains("timeline 2 branched off timeline 1"),
            "{e}"
        );
        check(RecoveryTarget::Time(
            "2026-11-25T19:00:00Z".parse().unwrap(),
        ))
        .unwrap();
        let e = check(RecoveryTarget::Time(
            "2026-11-25T20:00:00Z".parse().unwrap(),
        ))
        .unwrap_err();
        assert_eq!(e.exit_class(), ExitClass::Refused);

        // Chosen timelines: the backup's, a descendant, not an older or unknown one.
        assert_eq!(
            archive_path(&facts, &a, &files, TimelineChoice::Current)
                .unwrap()
                .latest,
            1
        );
        assert_eq!(
            archive_path(&facts, &a, &files, TimelineChoice::Id(2))
                .unwrap()
                .latest,
            2
        );
        let e = archive_path(&facts, &a, &files, TimelineChoice::Id(4)).unwrap_err();
        assert!(e.to_string().contains("no 00000004.history"), "{e}");
        let late = PhysicalFacts::for_test(1, "0/6000028", "0/6000100");
        let e = archive_path(&late, &a, &files, TimelineChoice::Id(2)).unwrap_err();
        assert!(e.to_string().contains("before the backup's end"), "{e}");
        let on2 = PhysicalFacts::for_test(2, "0/6000028", "0/6000100");
        let e = archive_path(&on2, &a, &files, TimelineChoice::Id(1)).unwrap_err();
        assert!(e.to_string().contains("after timeline 1 ended"), "{e}");
    }
}
