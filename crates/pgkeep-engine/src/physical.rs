//! Physical base backups: `basebackup-YYYYMMDD-HHMM.bundle.tar.zst`.
//!
//! [`take`] reads as a script of named steps (pgBackRest's `backup.c` style): check the
//! repository, identify the server, reserve WAL, stream the base backup into the bundle, read the
//! backup's own facts, publish. pg_basebackup writes one tar to its stdout (`-D - -Ft -X fetch
//! -c fast`, with its backup_manifest injected at the end) and pgkeep re-packs that stream member
//! by member into the bundle while it arrives: no staging copy, and pg_basebackup, the server and
//! pgkeep's zstd + SHA-256 run in parallel. A temporary physical replication slot held on
//! pgkeep's own connection keeps the server from recycling the WAL that `-X fetch` collects at
//! the end.
//!
//! Bundle layout (`layout = "pgdata-v1"` in MANIFEST.json): the data directory under `data/`
//! (its `pg_wal/` holding the WAL needed for consistency), pg_basebackup's `backup_manifest` at
//! the top, and `MANIFEST.json` last (start/stop LSN, timeline, system identifier, server version,
//! and size + SHA-256 of every member). The bundle is written as a hidden partial file on the
//! backups volume and renamed into place only when complete (0600); on any failure it is removed.
//!
//! Incremental base backups (PostgreSQL 17+, [`Incremental`]): the same stream with
//! `--incremental=<the parent's backup_manifest>`, on top of the newest base backup (full or
//! incremental) of the same system, major and timeline history that verifies ([`pick_parent`]);
//! named `basebackup-YYYYMMDD-HHMM.incr.bundle.tar.zst`, its MANIFEST.json naming the parent and
//! the chain down to the full ([`crate::chain`]). The parent's `backup_manifest` is read from the
//! tail of its bundle (it starts a compressed frame of its own) and checked against the SHA-256 its
//! MANIFEST.json records. When no incremental can be taken (server < 17, `summarize_wal` off or
//! its summaries not reaching back to the parent, no usable parent) the backup is refused
//! ([`PhysicalError::NoIncremental`], exit 3), or with `auto` a full one is taken instead.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::{BundleError, BundleKind, BundleWriter, Level, Manifest};
use crate::chain::ChainInfo;
use crate::db::{ConnParams, Db, DbError, query_err};
use crate::fsutil::{FsError, IoContext};
use crate::repo::{self, BackupKind};
use crate::tools::{PgBin, ToolError};
use crate::wal::{self, Lsn};

/// The bundle layout this module writes and [`crate::recovery`] reads.
pub const LAYOUT: &str = "pgdata-v1";
/// Prefix of data-directory members in the bundle.
pub const DATA_PREFIX: &str = "data/";
/// pg_basebackup's manifest, at the top of the bundle.
pub const PG_MANIFEST: &str = "backup_manifest";

#[derive(Debug, thiserror::Error)]
pub enum PhysicalError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what}\nhint: {hint}")]
    Unsupported { what: String, hint: String },
    #[error("the base backup stream is not what pgkeep expects: {0}")]
    Stream(String),
    #[error("an incremental base backup cannot be taken: {why}; nothing was written\nhint: {hint}")]
    NoIncremental { why: String, hint: String },
    #[error("backups directory {dir} is not usable: {message}\nhint: {hint}")]
    Repo {
        dir: PathBuf,
        message: String,
        hint: &'static str,
    },
}

impl crate::Classified for PhysicalError {
    fn exit_class(&self) -> crate::ExitClass {
        match self {
            PhysicalError::NoIncremental { .. } => crate::ExitClass::Refused,
            _ => crate::ExitClass::Failed,
        }
    }
}

/// Full or incremental (`--incremental[=auto]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Incremental {
    /// A full base backup.
    #[default]
    Off,
    /// An incremental one, or a refusal saying why not.
    On,
    /// An incremental one when possible, else a full one (saying why).
    Auto,
}

/// What to back up and where.
pub struct BackupRequest<'a> {
    pub incremental: Incremental,
    pub pg: &'a PgBin,
    pub conn: &'a ConnParams,
    pub backups_dir: &'a Path,
    pub level: Level,
    /// Called with the number of bytes added after each chunk (progress bars).
    pub on_progress: Option<Box<dyn FnMut(u64) + Send>>,
    /// Called once with the estimated total size, before streaming starts.
    pub on_estimate: Option<Box<dyn FnOnce(u64) + Send>>,
}

/// What a finished backup is.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub name: String,
    /// Bundle size on disk.
    pub size: u64,
    /// Bytes of data-directory content (uncompressed).
    pub data_bytes: u64,
    pub members: usize,
    pub facts: PhysicalFacts,
    /// The bundle an incremental was taken on top of (None: a full base backup).
    pub parent: Option<String>,
    /// Why `auto` took a full base backup instead of an incremental one.
    pub full_because: Option<String>,
    pub seconds: f64,
}

/// The facts about a base backup, as stored in MANIFEST.json.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhysicalFacts {
    pub system_identifier: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal_file: String,
    pub stop_wal_file: String,
    pub wal_segment_size: u64,
    pub start_time: String,
    pub stop_time: String,
    pub label: String,
}

impl PhysicalFacts {
    /// Facts with only the timeline and LSNs set (unit tests of WAL arithmetic).
    #[cfg(test)]
    pub(crate) fn for_test(timeline: u32, start_lsn: &str, stop_lsn: &str) -> PhysicalFacts {
        PhysicalFacts {
            system_identifier: "1".into(),
            server_version: "15".into(),
            server_version_num: 150000,
            timeline,
            start_lsn: start_lsn.parse().expect("valid LSN"),
            stop_lsn: stop_lsn.parse().expect("valid LSN"),
            start_wal_file: String::new(),
            stop_wal_file: String::new(),
            wal_segment_size: wal::DEFAULT_SEGMENT_SIZE,
            start_time: String::new(),
            stop_time: String::new(),
            label: String::new(),
        }
    }

    fn to_info(&self, data_bytes: u64) -> BTreeMap<String, serde_json::Value> {
        let mut info = match serde_json::to_value(self).expect("facts serialise") {
            serde_json::Value::Object(m) => m.into_iter().collect::<BTreeMap<_, _>>(),
            _ => unreachable!(),
        };
        info.insert("layout".into(), LAYOUT.into());
        info.insert("data_bytes".into(), data_bytes.into());
        info
    }

    /// Read the facts back from a physical bundle's manifest.
    pub fn from_manifest(m: &Manifest) -> Result<PhysicalFacts, String> {
        if m.kind != BundleKind::Physical {
            return Err("it is a logical bundle, not a physical one".into());
        }
        if m.info_str("layout") != Some(LAYOUT) {
            return Err(format!(
                "unknown layout {:?} (this pgkeep reads {LAYOUT})",
                m.info_str("layout")
            ));
        }
        let s = |k: &str| {
            m.info_str(k)
                .map(str::to_owned)
                .ok_or_else(|| format!("MANIFEST.json lacks `{k}`"))
        };
        let n = |k: &str| {
            m.info
                .get(k)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| format!("MANIFEST.json lacks `{k}`"))
        };
        Ok(PhysicalFacts {
            system_identifier: s("system_identifier")?,
            server_version: s("server_version")?,
            server_version_num: n("server_version_num")? as u32,
            timeline: n("timeline")? as u32,
            start_lsn: s("start_lsn")?.parse()?,
            stop_lsn: s("stop_lsn")?.parse()?,
            start_wal_file: s("start_wal_file")?,
            stop_wal_file: s("stop_wal_file")?,
            wal_segment_size: n("wal_segment_size")?,
            start_time: s("start_time")?,
            stop_time: s("stop_time")?,
            label: s("label")?,
        })
    }

    /// The WAL segments (names on the backup's timeline) needed to make the backup consistent.
    pub fn needed_segments(&self) -> Vec<String> {
        let seg = self.wal_segment_size;
        (self.start_lsn.segment(seg)..=self.stop_lsn.segment(seg))
            .map(|n| wal::segment_file_name(self.timeline, n, seg))
            .collect()
    }
}

/// What the server says before a backup.
#[derive(Debug, Clone)]
struct Preflight {
    version: String,
    version_num: u32,
    system_identifier: String,
    wal_segment_size: u64,
    wal_level: String,
    max_wal_senders: i32,
    tablespaces: Vec<String>,
    database_bytes: u64,
    in_recovery: bool,
}

impl Db {
    async fn backup_preflight(&self) -> Result<Preflight, DbError> {
        let info = self.server_info().await?;
        let row = self
            .client()
            .query_one(
                "select (select setting::int8 from pg_settings where name = 'wal_segment_size'), \
                 current_setting('wal_level'), current_setting('max_wal_senders')::int4, \
                 (select coalesce(sum(pg_database_size(oid)), 0)::int8 from pg_database), \
                 array(select spcname::text from pg_tablespace \
                       where spcname not in ('pg_default', 'pg_global') order by 1)",
                &[],
            )
            .await
            .map_err(query_err("reading the server's backup settings"))?;
        Ok(Preflight {
            version: info.version,
            version_num: info.version_num,
            system_identifier: info.system_identifier,
            in_recovery: info.in_recovery,
            wal_segment_size: row.get::<_, i64>(0) as u64,
            wal_level: row.get(1),
            max_wal_senders: row.get(2),
            database_bytes: row.get::<_, i64>(3) as u64,
            tablespaces: row.get(4),
        })
    }

    /// A temporary physical slot that reserves WAL from now until this session ends.
    async fn reserve_wal(&self, slot: &str) -> Result<(), DbError> {
        self.client()
            .query_one(
                "select pg_create_physical_replication_slot($1, true, true)",
                &[&slot],
            )
            .await
            .map(|_| ())
            .map_err(query_err("reserving WAL with a temporary replication slot"))
    }
}

/// Take a physical backup into the repository. See the module docs for the steps.
pub async fn take(mut req: BackupRequest<'_>) -> Result<BackupReport, PhysicalError> {
    let started = std::time::Instant::now();
    check_repository(req.backups_dir)?;
    // The maintenance database: a physical backup does not depend on the application database.
    let db = Db::connect(&req.conn.with_db("postgres")).await?;
    let server = identify_server(&db).await?;
    let mut full_because = None;
    let parent = match req.incremental {
        Incremental::Off => None,
        mode => match pick_parent(&db, &server, req.pg, req.backups_dir).await {
            Ok(p) => Some(p),
            Err(PhysicalError::NoIncremental { why, .. }) if mode == Incremental::Auto => {
                tracing::warn!("taking a full base backup instead of an incremental one: {why}");
                full_because = Some(why);
                None
            }
            Err(e) => return Err(e),
        },
    };
    reserve_wal(&db).await;
    if let Some(f) = req.on_estimate.take() {
        f(server.database_bytes);
    }
    let mut result = stream_and_publish(&mut req, &server, parent.as_ref()).await;
    if let (Err(PhysicalError::NoIncremental { why, .. }), Incremental::Auto) =
        (&result, req.incremental)
    {
        // The server refused (its WAL summaries do not cover the parent): a full one instead.
        tracing::warn!("taking a full base backup instead of an incremental one: {why}");
        full_because = Some(why.clone());
        result = stream_and_publish(&mut req, &server, None).await;
    }
    drop(db); // ends the session: the temporary slot and its WAL reservation go away
    let (path, data_bytes, members, facts) = result?;
    let size = std::fs::metadata(&path).fs_ctx("stat", &path)?.len();
    Ok(BackupReport {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path,
        size,
        data_bytes,
        members,
        parent: parent
            .filter(|_| full_because.is_none())
            .map(|p| p.chain.parent),
        full_because,
        facts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Steps: stream the base backup (incremental on top of `parent` when given) into a bundle,
/// read its facts, publish it.
async fn stream_and_publish(
    req: &mut BackupRequest<'_>,
    server: &Preflight,
    parent: Option<&Parent>,
) -> Result<(PathBuf, u64, usize, PhysicalFacts), PhysicalError> {
    let name = repo::free_name_of(
        req.backups_dir,
        BackupKind::Physical,
        parent.is_some(),
        crate::clock::now(),
    );
    let label = format!("pgkeep {name}");
    let mut cmd = req
        .conn
        .apply(req.pg.cmd("pg_basebackup"))
        .args(["-D", "-", "-F", "t", "-X", "fetch", "-c", "fast", "-w"])
        .arg("-l")
        .arg(&label);
    if let Some(p) = parent {
        cmd = cmd.arg(format!("--incremental={}", p.manifest_file.display()));
    }
    let dir = req.backups_dir.to_owned();
    let level = req.level;
    let progress = req.on_progress.take();
    let server2 = server.clone();
    let streamed = tokio::task::spawn_blocking(move || {
        stream_base_backup(cmd, &dir, &name, level, progress, &server2)
    })
    .await
    .map_err(|e| PhysicalError::Stream(format!("the copying thread failed: {e}")))?;
    let (writer, stream) = match streamed {
        Err(PhysicalError::Tool(e)) if parent.is_some() && e.stderr().contains("WAL summar") => {
            return Err(PhysicalError::NoIncremental {
                why: format!(
                    "the server has no WAL summaries for the range the incremental needs: {}",
                    e.stderr().trim()
                ),
                hint: SUMMARY_HINT.into(),
            });
        }
        other => other?,
    };
    let facts = read_facts(&stream, server, &label)?;
    check_wal_included(&stream, &facts)?;
    let data_bytes = stream.data_bytes;
    let members = writer.members().len() + 1;
    let mut info = facts.to_info(data_bytes);
    if let Some(p) = parent {
        info.extend(p.chain.to_info());
    }
    let (path, _manifest) =
        tokio::task::spawn_blocking(move || writer.finish(BundleKind::Physical, info))
            .await
            .map_err(|e| PhysicalError::Stream(format!("the copying thread failed: {e}")))??;
    Ok((path, data_bytes, members, facts))
}

const SUMMARY_HINT: &str = "pgkeep serve sets summarize_wal = on for PostgreSQL 17+ (elsewhere: ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()); summaries start when it is turned on, so take a full base backup after that (`pgkeep backup physical`), then incrementals on top of it";

/// The base backup an incremental is taken on top of.
struct Parent {
    /// Its chain with it as the last link: what the incremental's MANIFEST.json records.
    chain: ChainInfo,
    /// Its `backup_manifest`, for `pg_basebackup --incremental`.
    manifest_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Step: whether this server can take an incremental, and on top of which bundle: the newest
/// (by the stop time its manifest records) of the same system and major, on a timeline in the
/// server's history, that verifies with every link of its chain.
async fn pick_parent(
    db: &Db,
    server: &Preflight,
    pg: &PgBin,
    dir: &Path,
) -> Result<Parent, PhysicalError> {
    let refuse = |why: String, hint: &str| PhysicalError::NoIncremental {
        why,
        hint: hint.to_owned(),
    };
    if server.version_num < 170000 {
        return Err(refuse(
            format!(
                "server < 17: PostgreSQL {} has no incremental base backups (they came with 17)",
                server.version
            ),
            "take a full base backup (`pgkeep backup physical`, or --incremental=auto takes one when an incremental cannot be had)",
        ));
    }
    let state = db.summarizer_state().await?;
    if !state.summarize_wal {
        return Err(refuse(
            "summarize_wal is off, so the server keeps no WAL summaries to find the changed blocks"
                .into(),
            SUMMARY_HINT,
        ));
    }
    if !state.running {
        return Err(refuse(
            "the WAL summarizer is not running (summarize_wal is on but no summarizer process is up, so summaries fall behind)".into(),
            "check the server log for the WAL summarizer; a restart of PostgreSQL starts it again",
        ));
    }
    let mut skipped = Vec::new();
    let candidates = crate::catalog::newest_first(dir, BackupKind::Physical)
        .map_err(|e| PhysicalError::Stream(e.to_string()))?;
    for (b, _) in candidates {
        match usable_parent(db, server, pg, dir, &b, &state).await? {
            Ok(p) => {
                if !skipped.is_empty() {
                    tracing::warn!(parent = %b.name, "newer base backups were not usable as a parent: {}", skipped.join("; "));
                }
                return Ok(p);
            }
            Err(why) => skipped.push(format!("{}: {why}", b.name)),
        }
    }
    Err(refuse(
        if skipped.is_empty() {
            format!(
                "no usable parent: there is no base backup in {}",
                dir.display()
            )
        } else {
            format!("no usable parent: {}", skipped.join("; "))
        },
        "take a full base backup first (`pgkeep backup physical`); incrementals go on top of it",
    ))
}

/// One candidate parent: Ok(parent) or why it is not usable.
async fn usable_parent(
    db: &Db,
    server: &Preflight,
    pg: &PgBin,
    dir: &Path,
    b: &crate::repo::Backup,
    state: &SummarizerState,
) -> Result<Result<Parent, String>, PhysicalError> {
    let Some(m) = crate::catalog::peek_manifest(&b.path) else {
        return Ok(Err("its MANIFEST.json cannot be read".into()));
    };
    let facts = match PhysicalFacts::from_manifest(&m) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    if facts.system_identifier != server.system_identifier {
        return Ok(Err(format!(
            "a backup of system {}, the server is system {}",
            facts.system_identifier, server.system_identifier
        )));
    }
    if facts.server_version_num / 10000 != server.version_num / 10000 {
        return Ok(Err(format!("taken on PostgreSQL {}", facts.server_version)));
    }
    if let Err(why) = timeline_in_history(db, &facts).await? {
        return Ok(Err(why));
    }
    if let Some(first) = state.first_summary_on(facts.timeline)
        && first > facts.start_lsn
    {
        return Ok(Err(format!(
            "the server's WAL summaries on timeline {} start at {first}, after its start {} (summarize_wal was turned on after it, or old summaries were removed)",
            facts.timeline, facts.start_lsn
        )));
    }
    let chain = match ChainInfo::from_manifest(&m) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    // The parent and every link it needs must verify (a remembered result counts).
    let mut links = vec![b.clone()];
    if let Some(c) = &chain {
        match crate::chain::resolve(dir, &b.name, c) {
            Ok(found) => links.extend(found),
            Err(e) => return Ok(Err(e.to_string())),
        }
    }
    for l in &links {
        let v = crate::catalog::verify_cached(pg, dir, l)
            .map_err(|e| PhysicalError::Stream(e.to_string()))?;
        if !v.ok {
            return Ok(Err(format!(
                "{} fails verification: {}",
                l.name,
                v.message.unwrap_or_default()
            )));
        }
    }
    let Some(sha) = crate::chain::backup_manifest_sha256(&m).map(str::to_owned) else {
        return Ok(Err("it has no backup_manifest".into()));
    };
    let size = m
        .members
        .iter()
        .find(|d| d.path == PG_MANIFEST)
        .map(|d| d.size)
        .unwrap_or(0);
    let bytes = match crate::catalog::peek_member(&b.path, PG_MANIFEST, size + (1 << 20), size) {
        Some(bytes) => bytes,
        // Bundles written before the manifest started a frame of its own: read through.
        None => crate::bundle::read_member(&b.path, PG_MANIFEST, size)?.unwrap_or_default(),
    };
    if crate::bundle::sha256_hex(&bytes) != sha {
        return Ok(Err(
            "its backup_manifest does not match the SHA-256 its MANIFEST.json records".into(),
        ));
    }
    let tmp = tempfile::tempdir().fs_ctx("create temp dir", &std::env::temp_dir())?;
    let manifest_file = tmp.path().join(PG_MANIFEST);
    std::fs::write(&manifest_file, &bytes).fs_ctx("write", &manifest_file)?;
    Ok(Ok(Parent {
        chain: ChainInfo::on_top_of(&b.name, &facts, &sha, chain.as_ref()),
        manifest_file,
        _dir: tmp,
    }))
}

/// Whether the parent's timeline is the server's, or one its history went through after the
/// parent ended. Ok(Err(why)) when not; a history file the server will not show is left to
/// the server to judge.
async fn timeline_in_history(
    db: &Db,
    facts: &PhysicalFacts,
) -> Result<Result<(), String>, PhysicalError> {
    let current = db.current_timeline().await?;
    if facts.timeline == current {
        return Ok(Ok(()));
    }
    if facts.timeline > current {
        return Ok(Err(format!(
            "it is on timeline {}, after the server's timeline {current}",
            facts.timeline
        )));
    }
    let Some(history) = db.timeline_history(current).await else {
        return Ok(Ok(()));
    };
    let switch = history.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let tli: u32 = f.next()?.parse().ok()?;
        let lsn: Lsn = f.next()?.parse().ok()?;
        (tli == facts.timeline).then_some(lsn)
    });
    Ok(match switch {
        Some(at) if at >= facts.stop_lsn => Ok(()),
        Some(at) => Err(format!(
            "timeline {} ended at {at}, before it ended ({}): the server's history branched off earlier",
            facts.timeline, facts.stop_lsn
        )),
        None => Err(format!(
            "timeline {} is not in the server's history (timeline {current})",
            facts.timeline
        )),
    })
}

/// What the server says about WAL summarization (PostgreSQL 17+).
#[derive(Debug, Clone)]
struct SummarizerState {
    summarize_wal: bool,
    running: bool,
    /// (timeline, earliest start LSN) of the summaries on disk.
    first_summaries: Vec<(u32, Lsn)>,
}

impl SummarizerState {
    fn first_summary_on(&self, tli: u32) -> Option<Lsn> {
        self.first_summaries
            .iter()
            .find(|(t, _)| *t == tli)
            .map(|(_, l)| *l)
    }
}

impl Db {
    async fn summarizer_state(&self) -> Result<SummarizerState, DbError> {
        let row = self
            .client()
            .query_one(
                "select current_setting('summarize_wal')::bool, \
                 (select summarizer_pid is not null from pg_get_wal_summarizer_state())",
                &[],
            )
            .await
            .map_err(crate::db::query_err("reading the WAL summarizer's state"))?;
        let rows = self
            .client()
            .query(
                "select tli::int8, min(start_lsn)::text from pg_available_wal_summaries() group by 1",
                &[],
            )
            .await
            .map_err(crate::db::query_err("listing the WAL summaries"))?;
        Ok(SummarizerState {
            summarize_wal: row.get(0),
            running: row.get::<_, Option<bool>>(1).unwrap_or(false),
            first_summaries: rows
                .iter()
                .filter_map(|r| {
                    let lsn: String = r.get(1);
                    Some((r.get::<_, i64>(0) as u32, lsn.parse().ok()?))
                })
                .collect(),
        })
    }

    async fn current_timeline(&self) -> Result<u32, DbError> {
        let row = self
            .client()
            .query_one("select timeline_id::int8 from pg_control_checkpoint()", &[])
            .await
            .map_err(crate::db::query_err("reading the server's timeline"))?;
        Ok(row.get::<_, i64>(0) as u32)
    }

    /// The server's history file of `tli`, when it will show it (superuser or
    /// pg_read_server_files).
    async fn timeline_history(&self, tli: u32) -> Option<String> {
        self.client()
            .query_one(
                "select pg_read_file($1)",
                &[&format!("pg_wal/{tli:08X}.history")],
            )
            .await
            .ok()
            .map(|r| r.get(0))
    }
}

/// Step: the backups directory exists and takes files.
fn check_repository(dir: &Path) -> Result<(), PhysicalError> {
    let meta = std::fs::metadata(dir).map_err(|e| PhysicalError::Repo {
        dir: dir.to_owned(),
        message: e.to_string(),
        hint: "mount the backups volume there, or set PGKEEP_BACKUPS / paths.backups",
    })?;
    if !meta.is_dir() {
        return Err(PhysicalError::Repo {
            dir: dir.to_owned(),
            message: "not a directory".into(),
            hint: "set PGKEEP_BACKUPS / paths.backups to the backups volume",
        });
    }
    // What killed backups (and uploads) left: by the run-mark rules, never a live writer's.
    crate::fsutil::remove_stale_partials(dir);
    Ok(())
}

/// Step: what the server is, and whether it can be backed up this way.
async fn identify_server(db: &Db) -> Result<Preflight, PhysicalError> {
    let p = db.backup_preflight().await?;
    if p.wal_level == "minimal" {
        return Err(PhysicalError::Unsupported {
            what: "wal_level is `minimal`: a base backup cannot be taken".into(),
            hint: "set wal_level = replica (pgkeep serve does) and restart PostgreSQL".into(),
        });
    }
    if p.max_wal_senders < 1 {
        return Err(PhysicalError::Unsupported {
            what: "max_wal_senders is 0: pg_basebackup needs a replication connection".into(),
            hint: "set max_wal_senders to at least 2 and restart PostgreSQL".into(),
        });
    }
    if !p.tablespaces.is_empty() {
        return Err(PhysicalError::Unsupported {
            what: format!(
                "the cluster has tablespaces outside PGDATA ({}); one bundle holds one data directory",
                p.tablespaces.join(", ")
            ),
            hint: "move the tables back to pg_default (ALTER TABLE ... SET TABLESPACE pg_default), or back up with pg_basebackup -Ft yourself".into(),
        });
    }
    if !wal::valid_segment_size(p.wal_segment_size) {
        return Err(PhysicalError::Stream(format!(
            "the server reports wal_segment_size = {}",
            p.wal_segment_size
        )));
    }
    tracing::info!(
        version = %p.version,
        system_identifier = %p.system_identifier,
        standby = p.in_recovery,
        "backing up"
    );
    Ok(p)
}

/// Step: keep the server's WAL from being recycled until the backup has collected it.
async fn reserve_wal(db: &Db) {
    let slot = format!("pgkeep_backup_{}", std::process::id());
    if let Err(e) = db.reserve_wal(&slot).await {
        // Without a slot the backup still works unless the server recycles WAL meanwhile, in
        // which case pg_basebackup fails clearly ("requested WAL segment has been removed").
        tracing::warn!(
            "{e}; continuing without a WAL reservation (raise max_replication_slots to avoid this)"
        );
    }
}

/// What the stream showed besides the bytes.
#[derive(Debug, Default)]
struct StreamFacts {
    backup_label: Option<String>,
    pg_manifest: Option<Vec<u8>>,
    pg_control: Option<Vec<u8>>,
    wal_files: Vec<String>,
    data_bytes: u64,
}

/// Step: run pg_basebackup and re-pack its tar stream into the bundle as it arrives.
fn stream_base_backup(
    cmd: crate::tools::Cmd,
    dir: &Path,
    name: &str,
    level: Level,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
    server: &Preflight,
) -> Result<(BundleWriter, StreamFacts), PhysicalError> {
    let mut writer = BundleWriter::create(dir, name)?;
    if let Some(p) = progress {
        writer.on_progress(p);
    }
    let empty = tempfile::tempdir().fs_ctx("create temp dir", &std::env::temp_dir())?;
    let mut running = cmd.spawn()?;
    let stdout = running
        .take_stdout()
        .ok_or_else(|| PhysicalError::Stream("pg_basebackup has no stdout".into()))?;
    let mut facts = StreamFacts::default();
    let copy_result = (|| -> Result<(), PhysicalError> {
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, stdout));
        {
            let entries = archive
                .entries()
                .map_err(|e| PhysicalError::Stream(e.to_string()))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| PhysicalError::Stream(e.to_string()))?;
                let path = entry
                    .path()
                    .map_err(|e| PhysicalError::Stream(e.to_string()))?
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .trim_start_matches("./")
                    .to_owned();
                let kind = entry.header().entry_type();
                let size = entry.size();
                match kind {
                    tar::EntryType::Directory => {
                        writer.append_dir(&format!("{DATA_PREFIX}{path}"), empty.path())?;
                    }
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        if path == PG_MANIFEST {
                            // The manifest pg_basebackup injects comes last; an earlier file of
                            // that name is a stray file in the data directory.
                            if let Some(prev) = facts.pg_manifest.take() {
                                writer
                                    .append_bytes(&format!("{DATA_PREFIX}{PG_MANIFEST}"), &prev)?;
                            }
                            let mut buf = Vec::with_capacity(size as usize);
                            entry
                                .read_to_end(&mut buf)
                                .map_err(|e| PhysicalError::Stream(e.to_string()))?;
                            facts.pg_manifest = Some(buf);
                            continue;
                        }
                        let member = format!("{DATA_PREFIX}{path}");
                        facts.data_bytes += size;
                        if path == "backup_label" || path == "global/pg_control" {
                            let mut buf = Vec::with_capacity(size as usize);
                            entry
                                .read_to_end(&mut buf)
                                .map_err(|e| PhysicalError::Stream(e.to_string()))?;
                            writer.append_reader(&member, size, level, buf.as_slice())?;
                            if path == "backup_label" {
                                facts.backup_label =
                                    Some(String::from_utf8_lossy(&buf).into_owned());
                            } else {
                                facts.pg_control = Some(buf);
                            }
                            continue;
                        }
                        if let Some(f) = path.strip_prefix("pg_wal/")
                            && wal::parse_name(f).is_some()
                        {
                            facts.wal_files.push(f.to_owned());
                        }
                        writer.append_reader(&member, size, level, &mut entry)?;
                    }
                    other => {
                        return Err(PhysicalError::Unsupported {
                            what: format!(
                                "the data directory holds `{path}`, a {other:?} entry; bundles hold only files and directories"
                            ),
                            hint: "remove the link (tablespaces and a symlinked pg_wal are not supported)".into(),
                        });
                    }
                }
            }
        }
        // Read whatever follows the end-of-archive marker so pg_basebackup never blocks.
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|e| PhysicalError::Stream(e.to_string()))?;
        Ok(())
    })();
    match copy_result {
        Ok(()) => running.wait()?,
        Err(e) => {
            // pg_basebackup's own error usually says more than a broken stream.
            drop(running);
            return Err(e);
        }
    }
    let manifest = facts
        .pg_manifest
        .as_ref()
        .ok_or_else(|| PhysicalError::Stream("no backup_manifest in the stream".into()))?;
    writer.append_bytes_at_boundary(PG_MANIFEST, manifest)?;
    let _ = server;
    Ok((writer, facts))
}

/// Step: the backup's own facts: its label, pg_basebackup's manifest, and pg_control.
fn read_facts(
    s: &StreamFacts,
    server: &Preflight,
    label: &str,
) -> Result<PhysicalFacts, PhysicalError> {
    let text = s
        .backup_label
        .as_deref()
        .ok_or_else(|| PhysicalError::Stream("no backup_label in the stream".into()))?;
    let label_facts = parse_backup_label(text).map_err(PhysicalError::Stream)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(s.pg_manifest.as_deref().unwrap_or_default())
            .map_err(|e| PhysicalError::Stream(format!("backup_manifest is not JSON: {e}")))?;
    let (timeline, stop_lsn) = manifest_wal_end(&manifest).map_err(PhysicalError::Stream)?;
    let control = s
        .pg_control
        .as_deref()
        .ok_or_else(|| PhysicalError::Stream("no global/pg_control in the stream".into()))?;
    let sysid = control
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| PhysicalError::Stream("global/pg_control is too short".into()))?;
    if sysid.to_string() != server.system_identifier {
        return Err(PhysicalError::Stream(format!(
            "pg_control says system identifier {sysid}, the server said {}",
            server.system_identifier
        )));
    }
    let seg = server.wal_segment_size;
    Ok(PhysicalFacts {
        system_identifier: server.system_identifier.clone(),
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        timeline,
        start_lsn: label_facts.start_lsn,
        stop_lsn,
        start_wal_file: wal::segment_file_name(
            label_facts.timeline,
            label_facts.start_lsn.segment(seg),
            seg,
        ),
        stop_wal_file: wal::segment_file_name(timeline, stop_lsn.segment(seg), seg),
        wal_segment_size: seg,
        start_time: label_facts.start_time,
        stop_time: crate::clock::now().to_string(),
        label: label.to_owned(),
    })
}

/// Step: the WAL needed for consistency is in the bundle.
fn check_wal_included(s: &StreamFacts, f: &PhysicalFacts) -> Result<(), PhysicalError> {
    for needed in f.needed_segments() {
        if !s.wal_files.contains(&needed) {
            return Err(PhysicalError::Stream(format!(
                "WAL segment {needed}, needed to make the backup consistent, is not in the stream"
            )));
        }
    }
    Ok(())
}

/// What backup_label says.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFacts {
    pub start_lsn: Lsn,
    pub timeline: u32,
    pub start_time: String,
}

/// Parse a backup_label file.
pub fn parse_backup_label(text: &str) -> Result<LabelFacts, String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .ok_or_else(|| format!("backup_label has no `{key}` line"))
    };
    let start = field("START WAL LOCATION:")?;
    let start_lsn = start
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()?;
    let timeline = field("START TIMELINE:")?
        .parse()
        .map_err(|_| "bad START TIMELINE in backup_label".to_owned())?;
    Ok(LabelFacts {
        start_lsn,
        timeline,
        start_time: field("START TIME:")?.to_owned(),
    })
}

/// The last WAL range of a backup_manifest: (timeline, end LSN).
pub fn manifest_wal_end(m: &serde_json::Value) -> Result<(u32, Lsn), String> {
    let ranges = m
        .get("WAL-Ranges")
        .and_then(|r| r.as_array())
        .ok_or("backup_manifest has no WAL-Ranges")?;
    // Ranges are listed newest timeline first.
    let r = ranges.first().ok_or("backup_manifest has no WAL range")?;
    let tli = r
        .get("Timeline")
        .and_then(|t| t.as_u64())
        .ok_or("WAL range without Timeline")? as u32;
    let end = r
        .get("End-LSN")
        .and_then(|t| t.as_str())
        .ok_or("WAL range without End-LSN")?
        .parse()?;
    Ok((tli, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_label_is_parsed() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                    START TIME: 2026-11-25 19:30:00 UTC\nLABEL: pgkeep x\nSTART TIMELINE: 1\n";
        let f = parse_backup_label(text).unwrap();
        assert_eq!(f.start_lsn, "0/2000028".parse().unwrap());
        assert_eq!(f.timeline, 1);
        assert_eq!(f.start_time, "2026-11-25 19:30:00 UTC");
        assert!(parse_backup_label("LABEL: x\n").is_err());
    }

    #[test]
    fn manifest_wal_range_is_read() {
        let m: serde_json::Value = serde_json::from_str(
            r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
                "WAL-Ranges": [{"Timeline": 2, "Start-LSN": "0/5000028", "End-LSN": "0/6000100"}]}"#,
        )
        .unwrap();
        assert_eq!(
            manifest_wal_end(&m).unwrap(),
            (2, "0/6000100".parse().unwrap())
        );
        assert!(manifest_wal_end(&serde_json::json!({})).is_err());
    }

    #[test]
    fn needed_segments_span_start_to_stop() {
        let f = PhysicalFacts::for_test(2, "0/2000028", "0/4000100");
        assert_eq!(
            f.needed_segments(),
            vec![
                "000000020000000000000002",
                "000000020000000000000003",
                "000000020000000000000004"
            ]
        );
        let mut m = Manifest {
            format: 1,
            kind: BundleKind::Physical,
            pgkeep_version: "x".into(),
            info: f.to_info(5),
            members: vec![],
        };
        assert_eq!(PhysicalFacts::from_manifest(&m).unwrap(), f);
        m.kind = BundleKind::Logical;
        assert!(PhysicalFacts::from_manifest(&m).is_err());
    }
}
