//! WAL streamed into the archive volume as it is written (`pgkeep wal stream`): the spool
//! directory `pg_receivewal` writes into, what the spool hands to the archive, and how a
//! recovery finds the streamed tail of the WAL.
//!
//! Layout, inside the WAL archive: `stream/` is pg_receivewal's directory. It holds the segment
//! being received as `NAME.partial` (pg_receivewal pads it to the full segment size with zeros,
//! fsyncs what it receives, and in synchronous mode reports the flush position only after the
//! fsync, so a server naming it in `synchronous_standby_names` acknowledges a commit only once
//! its WAL is on this volume), and completed segments and history files as `NAME` until
//! [`hand_over_completed`] stores them in the archive root exactly as `wal push` does (same
//! compression and names; an archive_command copy of the same segment is accepted when
//! identical and refused loudly when not) and removes them from the spool.
//!
//! Files that do not continue the streaming server's history (another system after a wipe, an
//! earlier timeline after a bootstrap) would make pg_receivewal resume from a position the server
//! no longer has, so [`set_aside_foreign`] moves them to `stream/superseded/<system id>/` before
//! a stream starts. Nothing streamed is ever deleted except after the archive holds it.
//!
//! `wal fetch` asks [`find_streamed`] for a segment the archive root does not hold: the
//! completed or partial copy in `stream/`, else in `stream/superseded/<system>/`, and only when
//! its first page says it belongs to the system being recovered. Replaying a `.partial` ends
//! recovery at the last record streamed, which is what makes the recovery point zero.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::db::{ConnParams, Db, DbError, query_err};
use crate::fsutil::{FsError, IoContext, fsync_dir, rename_noreplace};
use crate::postmaster::Signals;
use crate::tools::{PgBin, Running, ToolError};
use crate::wal::{self, Archive, PushOptions, PushOutcome, WalError, WalKind};

/// The application_name the stream connects with: what `synchronous_standby_names` names.
pub const APPLICATION_NAME: &str = "pgkeep";
/// The default replication slot.
pub const DEFAULT_SLOT: &str = "pgkeep";

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "`wal stream` runs as root, but PostgreSQL's restore_command (`wal fetch`) runs as the \
         data owner and must read what it writes\nhint: run it as the data owner (uid {uid}), as \
         the db pod's containers do"
    )]
    Root { uid: u32 },
    #[error(
        "replication slot name `{0}` is not valid\nhint: use 1 to 63 lower-case letters, digits \
         and underscores"
    )]
    SlotName(String),
    #[error(
        "the replication slot `{slot}` has lost WAL the stream had not received yet (its \
         wal_status is `lost`, max_slot_wal_keep_size was exceeded), so the stream has a gap\n\
         hint: archive_command still archives every segment; drop the slot (select \
         pg_drop_replication_slot('{slot}')) and start `wal stream` again, then take a base \
         backup: the streamed recovery point applies again from there"
    )]
    SlotLost { slot: String },
    #[error("the server is in recovery: stream from the primary")]
    InRecovery,
    #[error("pg_receivewal stopped ({status}): {stderr}")]
    Receiver { status: String, stderr: String },
}

impl StreamError {
    /// Worth another try after a pause (the server restarting, a network blip).
    fn transient(&self) -> bool {
        matches!(
            self,
            StreamError::Db(DbError::Connect { .. })
                | StreamError::Receiver { .. }
                | StreamError::InRecovery
        )
    }
}

/// What `pgkeep wal stream` needs.
pub struct StreamConfig {
    pub archive: PathBuf,
    pub slot: String,
    pub synchronous: bool,
    pub push: PushOptions,
    pub conn: ConnParams,
    pub pg: PgBin,
}

/// Whether `slot` is a valid replication slot name.
pub fn valid_slot_name(slot: &str) -> bool {
    (1..=63).contains(&slot.len())
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The streaming server: system identifier and current timeline.
async fn server_position(db: &Db) -> Result<(u64, u32), StreamError> {
    let info = db.server_info().await?;
    if info.in_recovery {
        return Err(StreamError::InRecovery);
    }
    let file: String = db
        .client()
        .query_one("select pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(query_err("reading the current WAL position"))?
        .get(0);
    let timeline = u32::from_str_radix(file.get(..8).unwrap_or("1"), 16).unwrap_or(1);
    let system = info.system_identifier.parse().unwrap_or_default();
    Ok((system, timeline))
}

/// Create the physical slot (reserving WAL now) unless it exists; refuse a slot that lost WAL.
async fn ensure_slot(db: &Db, slot: &str) -> Result<(), StreamError> {
    let row = db
        .client()
        .query_opt(
            "select slot_type, coalesce(wal_status, '') from pg_replication_slots \
             where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_err("looking up the replication slot"))?;
    match row {
        Some(r) => {
            let status: String = r.get(1);
            if status == "lost" {
                return Err(StreamError::SlotLost {
                    slot: slot.to_owned(),
                });
            }
            Ok(())
        }
        None => {
            db.client()
                .query_one(
                    "select 1 from pg_create_physical_replication_slot($1, true)",
                    &[&slot],
                )
                .await
                .map_err(query_err("creating the replication slot"))?;
            tracing::warn!(
                slot,
                "created replication slot `{slot}`: the stream starts at the server's current \
                 position; WAL before it is in the archive only through archive_command"
            );
            Ok(())
        }
    }
}

/// How a streaming session ended without an error.
enum Ended {
    Stopped,
}

/// Stream until a stop signal: reconnect with backoff (1 s doubling to 30 s) after the server
/// or the receiver goes away; give up only on errors a retry cannot fix.
pub async fn stream(cfg: &StreamConfig, signals: &mut Signals) -> Result<(), StreamError> {
    if !valid_slot_name(&cfg.slot) {
        return Err(StreamError::SlotName(cfg.slot.clone()));
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match session(cfg, signals).await {
            Ok(Ended::Stopped) => return Ok(()),
            Err(e) if e.transient() => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(
                    error = %e,
                    "streaming stopped; trying again in {} s",
                    backoff.as_secs()
                );
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if signals.stop_requested().await {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hand completed files over, logging (once per distinct problem) instead of stopping the stream.
fn hand_over_logged(archive: &Archive, opts: PushOptions, last_problem: &mut Option<String>) {
    match hand_over_completed(archive, opts) {
        Ok(done) => {
            for name in &done.stored {
                tracing::debug!(name, "streamed file stored in the archive");
            }
            *last_problem = None;
        }
        Err(e) => {
            let text = e.to_string();
            if last_problem.as_deref() != Some(text.as_str()) {
                tracing::error!(error = %text, "could not hand a streamed file to the archive; it stays in the spool");
                *last_problem = Some(text);
            }
        }
    }
}

async fn session(cfg: &StreamConfig, signals: &mut Signals) -> Result<Ended, StreamError> {
    let (system, timeline) = {
        let db = Db::connect(&cfg.conn).await?;
        let pos = server_position(&db).await?;
        ensure_slot(&db, &cfg.slot).await?;
        pos
    };
    let dir = spool(&cfg.archive);
    std::fs::create_dir_all(&dir).fs_ctx("create directory", &dir)?;
    for name in set_aside_foreign(&cfg.archive, system, timeline)? {
        tracing::info!(
            name,
            "streamed file of another system or timeline moved to {SPOOL_DIR}/{SUPERSEDED_DIR}/"
        );
    }
    let archive = Archive::new(&cfg.archive);
    let mut last_problem = None;
    hand_over_logged(&archive, cfg.push, &mut last_problem);
    let mut cmd = cfg
        .pg
        .cmd("pg_receivewal")
        .arg("--directory")
        .arg(&dir)
        .args(["--slot", &cfg.slot, "--no-loop", "--no-password"]);
    if cfg.synchronous {
        cmd = cmd.arg("--synchronous");
    }
    let cmd = cfg.conn.apply(cmd).env("PGAPPNAME", APPLICATION_NAME);
    let mut child: Running = cmd.spawn()?;
    tracing::info!(
        slot = %cfg.slot,
        synchronous = cfg.synchronous,
        timeline,
        "streaming WAL into {}",
        dir.display()
    );
    loop {
        if signals.stop_requested().await {
            let _ = child.signal(rustix::process::Signal::INT);
            let (status, _) = child.wait_status()?;
            hand_over_logged(&archive, cfg.push, &mut last_problem);
            tracing::info!("stream stopped ({status})");
            return Ok(Ended::Stopped);
        }
        if child.try_status()?.is_some() {
            let (status, stderr) = child.wait_status()?;
            hand_over_logged(&archive, cfg.push, &mut last_problem);
            return Err(StreamError::Receiver {
                status: status.to_string(),
                stderr: stderr.trim().to_owned(),
            });
        }
        hand_over_logged(&archive, cfg.push, &mut last_problem);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The spool directory inside the WAL archive.
pub const SPOOL_DIR: &str = "stream";
/// Where spool files of other systems and timelines go, under the spool.
pub const SUPERSEDED_DIR: &str = "superseded";

/// The spool directory of an archive.
pub fn spool(archive: &Path) -> PathBuf {
    archive.join(SPOOL_DIR)
}

/// A file in the spool.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    pub path: PathBuf,
    /// The WAL name (without `.partial`).
    pub name: String,
    pub partial: bool,
    pub wal: wal::WalName,
}

/// The WAL files directly in `dir` (pg_receivewal's temporary and foreign files ignored).
pub fn list(dir: &Path) -> Result<Vec<SpoolFile>, FsError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).fs_ctx("read directory", dir),
    };
    for entry in entries {
        let entry = entry.fs_ctx("read directory", dir)?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let (name, partial) = match file.strip_suffix(".partial") {
            Some(n) => (n, true),
            None => (file, false),
        };
        let Some(w) = wal::parse_name(name) else {
            continue;
        };
        if !entry.file_type().fs_ctx("stat", &entry.path())?.is_file() {
            continue;
        }
        out.push(SpoolFile {
            path: entry.path(),
            name: name.to_owned(),
            partial,
            wal: w,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.partial.cmp(&b.partial)));
    Ok(out)
}

/// The system identifier in a spooled segment's first page, when readable.
fn spooled_system(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; crate::walcheck::LONG_HEADER_LEN];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    wal::page_header_sysid(&head)
}

/// Move spool files that do not continue the history of the server about to be streamed
/// (system `system`, current timeline `timeline`) to `stream/superseded/<their system>/`.
/// Returns the names moved.
pub fn set_aside_foreign(
    archive: &Path,
    system: u64,
    timeline: u32,
) -> Result<Vec<String>, FsError> {
    let dir = spool(archive);
    let mut moved = Vec::new();
    for f in list(&dir)? {
        if f.wal.kind != WalKind::Segment {
            continue;
        }
        let theirs = spooled_system(&f.path);
        if theirs == Some(system) && f.wal.timeline == timeline {
            continue;
        }
        let label = theirs.map_or_else(|| "unreadable".to_owned(), |s| s.to_string());
        let to_dir = dir.join(SUPERSEDED_DIR).join(&label);
        std::fs::create_dir_all(&to_dir).fs_ctx("create directory", &to_dir)?;
        let file = f.path.file_name().expect("listed files have names");
        let mut to = to_dir.join(file);
        let mut n = 1;
        while to.exists() {
            to = to_dir.join(format!("{}.{n}", file.to_string_lossy()));
            n += 1;
        }
        rename_noreplace(&f.path, &to)?;
        fsync_dir(&to_dir)?;
        moved.push(file.to_string_lossy().into_owned());
    }
    if !moved.is_empty() {
        fsync_dir(&dir)?;
    }
    Ok(moved)
}

/// What [`hand_over_completed`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandOver {
    /// Files stored in the archive root by this call.
    pub stored: Vec<String>,
    /// Files the archive already held with the same content (archive_command was first).
    pub already: Vec<String>,
}

/// Store every completed segment and history file of the spool in the archive root (as
/// `wal push` would) and remove it from the spool once the archive holds it. A file the archive
/// holds with DIFFERENT content stays in the spool and is an error.
pub fn hand_over_completed(archive: &Archive, opts: PushOptions) -> Result<HandOver, WalError> {
    let dir = spool(archive.dir());
    let mut done = HandOver::default();
    for f in list(&dir)? {
        if f.partial || !matches!(f.wal.kind, WalKind::Segment | WalKind::History) {
            continue;
        }
        match archive.push(&f.path, opts)? {
            PushOutcome::Stored { .. } => done.stored.push(f.name.clone()),
            PushOutcome::AlreadyArchived => done.already.push(f.name.clone()),
        }
        std::fs::remove_file(&f.path).fs_ctx("remove", &f.path)?;
    }
    if !(done.stored.is_empty() && done.already.is_empty()) {
        fsync_dir(&dir)?;
    }
    Ok(done)
}

/// The streamed copy of segment `name` for a recovery of system `system` (when known): the
/// completed or partial file in the spool, else in the spool's superseded directory of that
/// system. A file whose first page names another system is not it.
pub fn find_streamed(archive: &Path, name: &str, system: Option<u64>) -> Option<PathBuf> {
    let dir = spool(archive);
    let mut dirs = vec![dir.clone()];
    if let Some(s) = system {
        dirs.push(dir.join(SUPERSEDED_DIR).join(s.to_string()));
    }
    for d in dirs {
        for file in [name.to_owned(), format!("{name}.partial")] {
            let p = d.join(&file);
            if !p.is_file() {
                continue;
            }
            match (system, spooled_system(&p)) {
                (Some(want), Some(got)) if want != got => continue,
                (Some(_), None) => continue,
                _ => return Some(p),
            }
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A WAL segment's first page naming system `sysid` (the rest zeros).
    pub(crate) fn segment(sysid: u64) -> Vec<u8> {
        let mut s = vec![0u8; 16 << 20];
        s[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        s[2] = 0x02; // long header
        s[24..32].copy_from_slice(&sysid.to_le_bytes());
        s[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        s
    }

    #[test]
    fn foreign_systems_and_timelines_are_set_aside_and_still_found_for_their_system() {
        let d = tempfile::tempdir().unwrap();
        let sp = spool(d.path());
        std::fs::create_dir_all(&sp).unwrap();
        std::fs::write(sp.join("000000010000000000000003.partial"), segment(7)).unwrap();
        std::fs::write(sp.join("000000020000000000000005.partial"), segment(9)).unwrap();
        std::fs::write(sp.join("000000030000000000000006.partial"), segment(9)).unwrap();
        let mut moved = set_aside_foreign(d.path(), 9, 3).unwrap();
        moved.sort();
        assert_eq!(
            moved,
            [
                "000000010000000000000003.partial",
                "000000020000000000000005.partial"
            ]
        );
        assert!(sp.join("000000030000000000000006.partial").is_file());
        assert_eq!(
            find_streamed(d.path(), "000000010000000000000003", Some(7)),
            Some(sp.join("superseded/7/000000010000000000000003.partial"))
        );
        // Another system's file is never handed to a recovery of system 9.
        assert_eq!(
            find_streamed(d.path(), "000000010000000000000003", Some(9)),
            None
        );
        assert_eq!(
            find_streamed(d.path(), "000000030000000000000006", Some(9)),
            Some(sp.join("000000030000000000000006.partial"))
        );
    }
}
