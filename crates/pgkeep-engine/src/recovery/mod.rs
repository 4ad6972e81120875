//! Bootstrap from a physical bundle, with WAL replay and point-in-time recovery (the seed's
//! `pg.bootstrap.basebackup` job, made safe).
//!
//! Two phases. [`prepare`] changes nothing: it picks the bundle (newest or named), reads its
//! manifest (from the tail; a bundle without one there is verified in full here), checks that
//! the bundle belongs to the same system as the WAL archive, that
//! an explicit target lies after the backup's end, that the WAL needed for consistency is in the
//! bundle or the archive, that every archived segment recovery will read (up to the newest on the
//! timeline path, or an LSN target) is there and belongs there ([`crate::walcheck`]) and that
//! its records' CRCs hold ([`crate::walscan`]), that a named restore point is there, that no
//! higher timeline lacks its history file, and that no postmaster runs on PGDATA. The reading
//! of every archived segment (the deep WAL check) runs on a thread of its own from `prepare` on,
//! beside the confirmation and the unpack; [`execute`] waits for its verdict before PGDATA is
//! given up (a caller asking a person waits before asking: [`Plan::wait_wal_checked`]). An
//! incremental bundle (PostgreSQL 17+) brings its chain: every bundle of it is verified and
//! checked against what the incremental recorded ([`crate::chain`]) before anything changes, and
//! extraction unpacks each link and combines them with `pg_combinebackup`. Only then does the caller ask for
//! confirmation and call [`execute`], a script of named steps: unpack the bundle beside PGDATA
//! on the same volume, verifying every member's size and SHA-256 against the manifest as it is
//! written (nothing is read twice, and a damaged bundle stops here with PGDATA untouched; without
//! room for both copies, a verification pass comes first and PGDATA is emptied before
//! unpacking), clear PGDATA (or move its contents aside with `keep_old`), rename the new data
//! in (the old contents are removed while the server replays), set ownership and modes, start
//! the replay prefetcher ([`crate::wal::prefetch`]), write the recovery settings, start
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
use crate::tools::{Cmd, PgBin, ToolError};
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
    #[error(transparent)]
    Chain(#[from] crate::chain::ChainError),
    #[error(
        "{bundle}: not a usable physical bundle: {reason}\nhint: pick another with --from (`pgkeep backups list`)"
    )]
    NotPhysical { bundle: PathBuf, reason: String },
    #[error(
        "{bundle}: the MANIFEST.json read while unpacking is not the one the bootstrap was planned with (the manifest at the bundle's end){state}\nhint: the file changed meanwhile, or it was not written by pgkeep in one piece; check it with `pgkeep backups verify`, or pick another with --from"
    )]
    BundleChanged {
        bundle: PathBuf,
        /// What became of PGDATA: "; nothing was changed", or what was done already.
        state: &'static str,
    },
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
        "another bootstrap is running on this data volume ({lock} is locked); nothing was changed\nhint: wait for it to finish (`pgkeep status`), then run this one again if it is still needed"
    )]
    BootstrapRunning { lock: PathBuf },
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
            | Chain(_)
            | NotPhysical { .. }
            | BundleChanged { .. }
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
            | BootstrapRunning { .. }
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
    /// The bundle's manifest as planned with; extraction verifies every member against the
    /// manifest it reads and requires that one to be this one.
    pub manifest: bundle::Manifest,
    /// When `bundle` is an incremental: the bundles of its chain, full first (each verified and
    /// checked against what the incremental recorded); they are combined with pg_combinebackup.
    pub chain: Vec<Backup>,
    /// The verified manifest of each bundle of `chain`: unpacking a link must read the same.
    pub chain_manifests: Vec<bundle::Manifest>,
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
    /// The archived segments recovery will read, in order (what the replay prefetcher fetches).
    pub replay_segments: Vec<String>,
    /// The deep check of that WAL, running beside the unpack; [`execute`] waits for it before
    /// PGDATA is given up.
    #[serde(skip)]
    pub wal_scan: WalScanHandle,
    /// The timeline recovery follows (written as recovery_target_timeline).
    pub target_timeline: TimelineChoice,
}

impl Plan {
    /// Wait for the deep check of the archived WAL (otherwise [`execute`] waits for it before
    /// PGDATA is given up): a caller about to ask a person to confirm shows its warnings and
    /// refusals first.
    pub fn wait_wal_checked(&self) -> Result<(), RecoveryError> {
        self.wal_scan.wait()
    }

    /// Every bundle to unpack with the manifest it must have: the chain's, full first, then
    /// the bundle itself.
    pub fn links(&self) -> impl Iterator<Item = (&Backup, &bundle::Manifest)> {
        self.chain
            .iter()
            .zip(&self.chain_manifests)
            .chain([(&self.bundle, &self.manifest)])
    }
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
    /// Archived segments on recovery's path (from the backup's start on).
    pub archived_segments: usize,
    /// Of those, the segments recovery took already decompressed and checked from the replay
    /// prefetcher's spool.
    pub prefetched_segments: usize,
    pub log_file: PathBuf,
    pub seconds: f64,
}

mod checks;
mod execute;
mod replay;
mod timelines;

pub use checks::*;
pub use execute::*;
pub use replay::*;
pub use timelines::*;

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
    fn overrides_come_from_the_real_control_file_and_settings() {
        // The server ran with max_connections 40 and max_wal_senders at most 10 (pg_control
        // keeps them); the configuration left behind asks for less of one and more of the
        // other: only the one below pg_control's value is raised, each read by its own
        // `postgres -C`.
        let c = pgkeep_testkit::TempCluster::options()
            .setting("max_connections", "40")
            .setting("max_wal_senders", "10")
            .start();
        c.stop();
        let auto = c.pgdata().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap();
        text.push_str("max_connections = 20\nmax_wal_senders = 12\n");
        std::fs::write(&auto, text).unwrap();
        let pg = PgBin::locate().unwrap();
        let run_as = crate::server::RunAs::data_owner(c.uid(), c.gid()).unwrap();
        let needed = replay::required_parameter_overrides(&pg, &c.pgdata(), run_as).unwrap();
        assert_eq!(needed, vec![("max_connections", 40)]);
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
                incremental: false,
                size: 1,
                path: "b".into(),
            },
            manifest: bundle::Manifest {
                format: bundle::MANIFEST_FORMAT,
                kind: bundle::BundleKind::Physical,
                pgkeep_version: "test".into(),
                info: Default::default(),
                members: vec![],
            },
            chain: vec![],
            chain_manifests: vec![],
            facts: PhysicalFacts::for_test(1, "0/2000028", "0/2000100"),
            target: None,
            data_bytes: 0,
            keep_old_at: None,
            pgdata_entries: 0,
            archive_handover: None,
            restore_from: "w".into(),
            newest_archived: Some(("000000010000000000000007".into(), Lsn(0x700_0000))),
            replay_segments: Vec::new(),
            wal_scan: WalScanHandle::default(),
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
        // PostgreSQL expands `%` before the shell runs: the path's own are doubled.
        assert_eq!(
            restore_command(Path::new("/usr/bin/pgkeep"), Path::new("/wal%p 100%"), "1"),
            "/usr/bin/pgkeep wal fetch --archive '/wal%%p 100%%' --sysid 1 %f %p"
        );
        assert_eq!(
            spooled_restore_command(
                Path::new("/usr/bin/pgkeep"),
                Path::new("/wal"),
                "1",
                Some(Path::new("/pg data/pg_wal/.pgkeep-prefetch"))
            ),
            "/usr/bin/pgkeep wal fetch --archive /wal --sysid 1 --spool '/pg data/pg_wal/.pgkeep-prefetch' %f %p"
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
