//! One look at the whole site, taken when asked (a scrape, `status`, `space`): PostgreSQL
//! (`pg_stat_archiver`, the current WAL file), the `.ready` backlog in pg_wal, the WAL archive,
//! the bundles kept, the result records ([`crate::results`]) and the volumes (statvfs), with
//! the full-volume forecast. Nothing is remembered between looks: the history behind the
//! forecast is the usage samples that the result records carry, so there is no daemon state to
//! lose.
//!
//! This module also owns the health rules that `status` applies ([`problems`]) and the
//! forecast arithmetic ([`forecast_seconds`]). The thresholds are the alert rules' own (the
//! rules file in the rendered tree uses the same numbers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::db::{ConnParams, Db, DbError, query_err};
use crate::inspect::{ArchiverStatus, Site};
use crate::repo::{self, BackupKind};
use crate::results::{self, KindSummary, Record, RunKind};
use crate::wal::{Archive, WalKind};

/// A logical backup older than this is too old (nightly schedule plus two hours).
pub const LOGICAL_MAX_AGE_SECS: i64 = 26 * 3600;
/// A physical backup older than this is too old (weekly schedule plus a day).
pub const PHYSICAL_MAX_AGE_SECS: i64 = 8 * 86400;
/// A passing drill older than this is too old (weekly schedule plus a day).
pub const DRILL_MAX_AGE_SECS: i64 = 8 * 86400;
/// Less free space than this percentage of a volume is a problem.
pub const MIN_FREE_PERCENT: f64 = 10.0;
/// A volume forecast to be full sooner than this is a problem.
pub const MIN_FORECAST_SECS: f64 = 3.0 * 86400.0;
/// The forecast looks at samples this far back.
pub const FORECAST_WINDOW_SECS: i64 = 7 * 86400;
/// A forecast needs history spanning at least this long (shorter is noise).
pub const FORECAST_MIN_SPAN_SECS: i64 = 3600;
/// More `.ready` segments than this in pg_wal: archiving does not keep up.
pub const READY_BACKLOG_MAX: u64 = 8;

/// The archiver's counters, with times as Unix seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Archiver {
    pub status: ArchiverStatus,
    pub last_archived_epoch: Option<f64>,
    pub last_failed_epoch: Option<f64>,
    /// The WAL file being written now (None in recovery).
    pub current_wal: Option<String>,
}

/// One volume now.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    pub name: &'static str,
    pub path: PathBuf,
    pub size: u64,
    pub used: u64,
    pub free: u64,
    /// Seconds until full at the growth of the last 7 days; None when not growing or without
    /// enough history.
    pub forecast_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Volume {
    /// Free bytes as a percentage of the size: what the `PgkeepVolumeLow` alert computes from
    /// `pgkeep_volume_free_bytes / pgkeep_volume_size_bytes`.
    pub fn free_percent(&self) -> Option<f64> {
        (self.error.is_none() && self.size > 0).then(|| self.free as f64 * 100.0 / self.size as f64)
    }
}

/// Everything `metrics` and `status` report.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub at: jiff::Timestamp,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_error: Option<String>,
    pub archiver: Option<Archiver>,
    /// `.ready` files in pg_wal/archive_status (from the file system, else from the server).
    pub ready_segments: Option<u64>,
    /// The newest segment in the WAL archive and its age (seconds since it was written).
    pub archive_newest: Option<String>,
    /// Age of the newest WAL known safe in the archive: 0 when the server has written nothing
    /// past it, else the seconds since it was archived (None without a segment).
    pub archive_lag_seconds: Option<f64>,
    /// Bundles kept per kind (None when the backups volume is not readable here).
    pub backups_kept: Option<BTreeMap<&'static str, u64>>,
    /// The earliest point a point-in-time recovery can reach: the stop time of the oldest kept
    /// base backup (where its restore becomes consistent).
    pub recovery_window_start: Option<jiff::Timestamp>,
    /// The records per kind; a kind with bundles but no success record (bundles taken before
    /// records existed) gets its newest bundle as the last success (start = stop = the
    /// bundle's stop time).
    pub runs: BTreeMap<RunKind, KindSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_error: Option<String>,
    pub volumes: Vec<Volume>,
    /// `wal.archive_timeout` (seconds; 0 = off), for the lag rule.
    pub archive_timeout: u32,
    /// The off-site copy, when off-site copies are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteLook>,
    /// The WAL stream (`wal.stream` async or sync) as the server sees it; None when off or the
    /// server does not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamLook>,
}

/// `pgkeep wal stream` as PostgreSQL sees it (`pg_stat_replication`).
#[derive(Debug, Clone, Serialize)]
pub struct StreamLook {
    pub mode: crate::settings::StreamMode,
    /// A walsender with application_name `pgkeep` is streaming.
    pub connected: bool,
    /// Bytes the server has written that the stream has not flushed yet (None when not
    /// connected).
    pub flush_lag_bytes: Option<u64>,
    /// `sync` mode, but the server's `synchronous_standby_names` is empty: `serve` fell back to
    /// asynchronous commits after `wal.sync_fallback_after` (commits no longer wait).
    pub sync_degraded: bool,
}

/// The off-site copy as the follower last reported it ([`crate::offsite::status`]).
#[derive(Debug, Clone, Serialize)]
pub struct OffsiteLook {
    /// When the follower last completed a round (None: none since its pod started).
    pub last_sync: Option<jiff::Timestamp>,
    /// Segments in the local WAL archive newer than the newest one off-site.
    pub lag_segments: Option<u64>,
    /// Bundles stored off-site per kind (empty until the follower could list them).
    pub backups: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// More segments than this only in the local archive, for longer than the alert's `for`, is
/// a problem (the follower uploads every 10 s; a burst of WAL is allowed to catch up).
pub const OFFSITE_LAG_SEGMENTS_MAX: u64 = 16;
/// No completed off-site round for this long is a problem.
pub const OFFSITE_MAX_SYNC_AGE_SECS: i64 = 3600;

/// The follower's status against this look's archive listing (None: it could not be read).
fn look_offsite(status: &Path, files: Option<&[crate::wal::ArchivedFile]>) -> OffsiteLook {
    match crate::offsite::status::read(status) {
        Ok(st) => {
            let newest = st.as_ref().and_then(|s| s.newest_segment.clone());
            OffsiteLook {
                last_sync: st.as_ref().map(|s| s.synced_at),
                lag_segments: files
                    .map(|f| crate::offsite::status::lag_segments(f, newest.as_deref())),
                backups: st.map(|s| s.backups).unwrap_or_default(),
                error: files
                    .is_none()
                    .then(|| "the WAL archive cannot be listed".to_owned()),
            }
        }
        Err(e) => OffsiteLook {
            last_sync: None,
            lag_segments: None,
            backups: BTreeMap::new(),
            error: Some(e),
        },
    }
}

impl Db {
    /// The stream's walsender, if connected: (connected, bytes written but not flushed by it),
    /// and whether the server makes commits wait for a synchronous standby.
    async fn stream_state(&self) -> Result<(bool, Option<u64>, bool), DbError> {
        let names: String = self
            .client()
            .query_one("select current_setting('synchronous_standby_names')", &[])
            .await
            .map_err(crate::db::query_err("reading synchronous_standby_names"))?
            .get(0);
        let waits = !names.trim().is_empty();
        let rows = self
            .client()
            .query(
                "select (pg_current_wal_lsn() - flush_lsn)::int8 from pg_stat_replication \
                 where application_name = $1 and state = 'streaming'",
                &[&crate::walstream::APPLICATION_NAME],
            )
            .await
            .map_err(crate::db::query_err("reading pg_stat_replication"))?;
        Ok(match rows.first() {
            Some(r) => (
                true,
                r.get::<_, Option<i64>>(0).map(|b| b.max(0) as u64),
                waits,
            ),
            None => (false, None, waits),
        })
    }

    /// Archive times as Unix seconds and the current WAL file name (None in recovery).
    async fn archive_epochs(&self) -> Result<(Option<f64>, Option<f64>, Option<String>), DbError> {
        let r = self
            .client()
            .query_one(
                "select extract(epoch from last_archived_time)::float8, \
                 extract(epoch from last_failed_time)::float8, \
                 case when pg_is_in_recovery() then null \
                 else pg_walfile_name(pg_current_wal_lsn()) end \
                 from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(query_err("reading pg_stat_archiver"))?;
        Ok((r.get(0), r.get(1), r.get(2)))
    }
}

fn ready_on_disk(pgdata: &Path) -> Option<u64> {
    let rd = std::fs::read_dir(pgdata.join("pg_wal").join("archive_status")).ok()?;
    Some(
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            .count() as u64,
    )
}

/// Seconds since a path was last modified.
fn age_of(path: &Path, now: jiff::Timestamp) -> Option<f64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let t = jiff::Timestamp::try_from(m).ok()?;
    Some(now.duration_since(t).as_secs_f64().max(0.0))
}

/// Seconds until `free` bytes are used up, at the growth rate fitted (least squares) through
/// `samples` from the last [`FORECAST_WINDOW_SECS`] and `(now, used_now)`. None when the samples
/// span less than [`FORECAST_MIN_SPAN_SECS`] or the volume is not growing.
pub fn forecast_seconds(
    samples: &[(jiff::Timestamp, u64)],
    now: jiff::Timestamp,
    used_now: u64,
    free: u64,
) -> Option<f64> {
    let from = now.as_second() - FORECAST_WINDOW_SECS;
    let mut pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| t.as_second() >= from && *t <= now)
        .map(|(t, u)| ((t.as_second() - now.as_second()) as f64, *u as f64))
        .collect();
    pts.push((0.0, used_now as f64));
    let oldest = pts.iter().map(|p| p.0).fold(0.0, f64::min);
    if -oldest < FORECAST_MIN_SPAN_SECS as f64 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let rate = sxy / sxx; // bytes per second
    (rate > 0.0).then(|| free as f64 / rate)
}

fn samples_of(records: &[Record], key: &str) -> Vec<(jiff::Timestamp, u64)> {
    records
        .iter()
        .filter_map(|r| r.usage.get(key).map(|u| (r.stop, *u)))
        .collect()
}

fn volume(
    name: &'static str,
    path: &Path,
    records: &[Record],
    now: jiff::Timestamp,
    sql_now: Option<u64>,
) -> Volume {
    match rustix::fs::statvfs(path) {
        Ok(st) => {
            let f = st.f_frsize;
            let size = st.f_blocks * f;
            let used = (st.f_blocks - st.f_bfree) * f;
            let free = st.f_bavail * f;
            let own = samples_of(records, name);
            // The backup Jobs do not mount the data volume; their samples of it are the
            // server's own account (`data_sql`), compared with the same account now.
            let forecast = if name == "data" && own.is_empty() {
                sql_now
                    .and_then(|s| forecast_seconds(&samples_of(records, "data_sql"), now, s, free))
            } else {
                forecast_seconds(&own, now, used, free)
            };
            Volume {
                name,
                path: path.to_owned(),
                size,
                used,
                free,
                forecast_seconds: forecast,
                error: None,
            }
        }
        Err(e) => Volume {
            name,
            path: path.to_owned(),
            size: 0,
            used: 0,
            free: 0,
            forecast_seconds: None,
            error: Some(e.to_string()),
        },
    }
}

/// When a base backup became consistent: its own record's stop (written right after the bundle
/// was published, so a little late, never early), else the stop time in its manifest, else the
/// time in its name (when it started).
fn bundle_stop(b: &repo::Backup, records: &[Record]) -> Option<jiff::Timestamp> {
    records
        .iter()
        .rev()
        .find(|r| r.succeeded() && r.bundle.as_deref() == Some(b.name.as_str()))
        .map(|r| r.stop)
        .or_else(|| crate::catalog::stop_time(&b.path))
        .or_else(|| {
            b.time
                .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                .ok()
                .map(|z| z.timestamp())
        })
}

/// Take the look. Never fails: what cannot be read is missing, with the reason where it helps.
pub async fn observe(
    site: &Site<'_>,
    conn: &ConnParams,
    wal: &crate::settings::Wal,
) -> Observation {
    let archive_timeout = wal.archive_timeout;
    let now = crate::clock::now();
    let (mut up, mut server_error, mut archiver, mut sql_now) = (false, None, None, None);
    let mut stream = None;
    match Db::connect(&conn.with_db("postgres")).await {
        Ok(db) => {
            up = true;
            if wal.stream != crate::settings::StreamMode::Off {
                match db.stream_state().await {
                    Ok((connected, flush_lag_bytes, waits)) => {
                        stream = Some(StreamLook {
                            mode: wal.stream,
                            connected,
                            flush_lag_bytes,
                            sync_degraded: wal.stream == crate::settings::StreamMode::Sync
                                && !waits,
                        })
                    }
                    Err(e) => server_error = Some(e.to_string()),
                }
            }
            match (db.archiver_status().await, db.archive_epochs().await) {
                (Ok(status), Ok((a, f, cur))) => {
                    archiver = Some(Archiver {
                        status,
                        last_archived_epoch: a,
                        last_failed_epoch: f,
                        current_wal: cur,
                    })
                }
                (Err(e), _) | (_, Err(e)) => server_error = Some(e.to_string()),
            }
            sql_now = db.footprint().await.ok();
        }
        Err(e) => server_error = Some(e.to_string()),
    }
    let ready_segments = ready_on_disk(site.pgdata).or_else(|| {
        archiver
            .as_ref()
            .and_then(|a| a.status.ready)
            .map(|r| r.max(0) as u64)
    });

    // One listing of the archive serves the lag and the off-site look.
    let archive_files = Archive::new(site.wal_archive).list().ok();
    let newest = archive_files.as_ref().and_then(|files| {
        files
            .iter()
            .rfind(|f| f.wal.kind == WalKind::Segment)
            .cloned()
    });
    let archive_lag_seconds = newest.as_ref().and_then(|f| {
        let caught_up = archiver
            .as_ref()
            .and_then(|a| a.current_wal.as_deref())
            .is_some_and(|cur| cur <= f.name.as_str());
        if caught_up {
            Some(0.0)
        } else {
            age_of(&f.path, jiff::Timestamp::now()) // an mtime: the real clock (see clock)
        }
    });

    let (records, records_error) = match results::read_all(site.backups) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (mut backups_kept, mut recovery_window_start) = (None, None);
    if let Ok(all) = repo::list(site.backups) {
        let count = |k: BackupKind| all.iter().filter(|b| b.kind == k).count() as u64;
        backups_kept = Some(BTreeMap::from([
            ("logical", count(BackupKind::Logical)),
            ("physical", count(BackupKind::Physical)),
        ]));
        recovery_window_start = all
            .iter()
            .filter(|b| b.kind == BackupKind::Physical)
            .filter_map(|b| bundle_stop(b, &records))
            .min();
    }
    let mut runs = results::summarize(&records);
    // Bundles taken before records existed (an upgrade) still count as successes.
    if let Ok(all) = repo::list(site.backups) {
        for (kind, bk) in [
            (RunKind::Logical, BackupKind::Logical),
            (RunKind::Physical, BackupKind::Physical),
        ] {
            let sum = runs.entry(kind).or_default();
            if sum.last_success.is_some() {
                continue;
            }
            if let Some(b) = all.iter().rev().find(|b| b.kind == bk)
                && let Some(stop) = bundle_stop(b, &records)
            {
                let mut r = Record::finish(kind, stop, results::Outcome::Success);
                r.stop = stop;
                r.size = Some(b.size);
                r.bundle = Some(b.name.clone());
                sum.last_success = Some(r.clone());
                if sum.last.as_ref().is_none_or(|l| l.stop < stop) {
                    sum.last = Some(r);
                }
            }
        }
    }
    let volumes = vec![
        volume("data", site.pgroot, &records, now, sql_now),
        volume("wal_archive", site.wal_archive, &records, now, None),
        volume("backups", site.backups, &records, now, None),
    ];
    let offsite = site
        .offsite_status
        .as_deref()
        .map(|p| look_offsite(p, archive_files.as_deref()));
    Observation {
        at: now,
        up,
        server_error,
        archiver,
        ready_segments,
        archive_newest: newest.map(|f| f.name),
        archive_lag_seconds,
        backups_kept,
        recovery_window_start,
        runs,
        records_error,
        volumes,
        archive_timeout,
        offsite,
        stream,
    }
}

/// One reason the site is not healthy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// A stable name (`backup_too_old`, `backup_failed`, `server_down`, `archiving_failing`,
    /// `wal_backlog`, `archive_lag`, `drill_failed`, `drill_too_old`, `volume_low`,
    /// `volume_forecast`, `offsite_stale`, `offsite_lag`, `stream_down`).
    pub check: &'static str,
    pub message: String,
}

fn ago(now: jiff::Timestamp, t: jiff::Timestamp) -> String {
    crate::inspect::human_age(now.as_second() - t.as_second())
}

/// What is wrong, by the same rules as the alerts; empty when healthy.
pub fn problems(o: &Observation) -> Vec<Problem> {
    problems_with(o, MIN_FREE_PERCENT)
}

/// [`problems`] with another free-space floor (percent).
pub fn problems_with(o: &Observation, min_free_percent: f64) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |check: &'static str, message: String| out.push(Problem { check, message });
    if !o.up {
        add(
            "server_down",
            format!(
                "PostgreSQL does not answer ({}); `pgkeep status` and the db pod's logs say why",
                o.server_error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or("unreachable")
            ),
        );
    }
    for (kind, max, cmd) in [
        (
            RunKind::Logical,
            LOGICAL_MAX_AGE_SECS,
            "pgkeep backup logical",
        ),
        (
            RunKind::Physical,
            PHYSICAL_MAX_AGE_SECS,
            "pgkeep backup physical",
        ),
    ] {
        let s = o.runs.get(&kind).cloned().unwrap_or_default();
        match &s.last_success {
            None => add(
                "backup_too_old",
                format!(
                    "no successful {} backup is recorded; take one with `{cmd}`",
                    kind.label()
                ),
            ),
            Some(r) if o.at.as_second() - r.stop.as_second() > max => add(
                "backup_too_old",
                format!(
                    "the newest successful {} backup finished {} ago (limit {}); check the CronJob and take one with `{cmd}`",
                    kind.label(),
                    ago(o.at, r.stop),
                    crate::inspect::human_age(max)
                ),
            ),
            _ => {}
        }
        if let Some(r) = s.last.as_ref().filter(|r| !r.succeeded()) {
            add(
                "backup_failed",
                format!(
                    "the last {} backup failed {} ago: {}",
                    kind.label(),
                    ago(o.at, r.stop),
                    r.error
                        .as_deref()
                        .and_then(|e| e.lines().next())
                        .unwrap_or("(no message)")
                ),
            );
        }
    }
    if let Some(a) = &o.archiver
        && matches!(a.status.verdict, "failing" | "disabled")
    {
        add(
            "archiving_failing",
            format!(
                "WAL archiving is {}: {}",
                a.status.verdict, a.status.explanation
            ),
        );
    }
    if let Some(n) = o.ready_segments.filter(|n| *n > READY_BACKLOG_MAX) {
        add(
            "wal_backlog",
            format!(
                "{n} WAL segments wait in pg_wal to be archived (more than {READY_BACKLOG_MAX}): archiving does not keep up or fails"
            ),
        );
    }
    if o.archive_timeout > 0
        && let Some(lag) = o
            .archive_lag_seconds
            .filter(|l| *l > 2.0 * o.archive_timeout as f64)
    {
        add(
            "archive_lag",
            format!(
                "the newest WAL known safe in the archive is {} old (limit twice archive_timeout, {}s): commits since then would be lost with the data volume",
                crate::inspect::human_age(lag as i64),
                2 * o.archive_timeout
            ),
        );
    }
    let d = o.runs.get(&RunKind::Drill).cloned().unwrap_or_default();
    if let Some(r) = d.last.as_ref().filter(|r| !r.succeeded()) {
        add(
            "drill_failed",
            format!(
                "the last restore drill failed {} ago: {}",
                ago(o.at, r.stop),
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or("(no message)")
            ),
        );
    }
    match &d.last_success {
        None => add(
            "drill_too_old",
            "no passing restore drill is recorded; run `pgkeep drill`".into(),
        ),
        Some(r) if o.at.as_second() - r.stop.as_second() > DRILL_MAX_AGE_SECS => add(
            "drill_too_old",
            format!(
                "the last passing restore drill finished {} ago (limit 8d); run `pgkeep drill`",
                ago(o.at, r.stop)
            ),
        ),
        _ => {}
    }
    if let Some(st) = o
        .stream
        .as_ref()
        .filter(|st| !st.connected || st.sync_degraded)
    {
        add(
            "stream_down",
            match st.mode {
                crate::settings::StreamMode::Sync if st.sync_degraded => "the synchronous WAL stream (`pgkeep wal stream`) was down longer than wal.sync_fallback_after and serve FELL BACK to asynchronous commits: commits no longer wait for it, and a commit acknowledged now is lost with the data volume until the stream is back (serve restores waiting by itself then); see the walstream container's log".to_owned(),
                crate::settings::StreamMode::Sync => "the synchronous WAL stream (`pgkeep wal stream`) is not connected: commits wait until it is back; see the walstream container's log".to_owned(),
                _ => "the WAL stream (`pgkeep wal stream`) is not connected: recent commits are only in pg_wal until it is back or their segment is archived".to_owned(),
            },
        );
    }
    if let Some(off) = &o.offsite {
        match off.last_sync {
            None => add(
                "offsite_stale",
                format!(
                    "no off-site round has completed{}; the `offsite` container's logs (or `pgkeep offsite sync`) say why",
                    off.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            ),
            Some(t) if o.at.as_second() - t.as_second() > OFFSITE_MAX_SYNC_AGE_SECS => add(
                "offsite_stale",
                format!(
                    "the last completed off-site round was {} ago (limit 1h); the `offsite` container's logs say why",
                    ago(o.at, t)
                ),
            ),
            _ => {}
        }
        if let Some(n) = off.lag_segments.filter(|n| *n > OFFSITE_LAG_SEGMENTS_MAX) {
            add(
                "offsite_lag",
                format!(
                    "{n} WAL segments are only in the local archive (limit {OFFSITE_LAG_SEGMENTS_MAX}): they would be lost with the cluster"
                ),
            );
        }
    }
    for v in &o.volumes {
        if let Some(p) = v.free_percent().filter(|p| *p < min_free_percent) {
            add(
                "volume_low",
                format!(
                    "the {} volume has {p:.1}% free (less than {min_free_percent}%); see `pgkeep space`",
                    v.name
                ),
            );
        }
        if let Some(f) = v.forecast_seconds.filter(|f| *f < MIN_FORECAST_SECS) {
            add(
                "volume_forecast",
                format!(
                    "the {} volume will be full in about {} at the growth of the last 7 days; grow it or lower retention",
                    v.name,
                    crate::inspect::human_age(f as i64)
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn healthy(now: jiff::Timestamp) -> Observation {
        let ok = |kind, age: i64| {
            let mut r = Record::finish(kind, now, results::Outcome::Success);
            r.stop = now - jiff::SignedDuration::from_secs(age);
            KindSummary {
                last: Some(r.clone()),
                last_success: Some(r),
                last_failure: None,
            }
        };
        Observation {
            at: now,
            up: true,
            server_error: None,
            archiver: None,
            ready_segments: Some(0),
            archive_newest: None,
            archive_lag_seconds: Some(0.0),
            backups_kept: None,
            recovery_window_start: None,
            runs: BTreeMap::from([
                (RunKind::Logical, ok(RunKind::Logical, 3600)),
                (RunKind::Physical, ok(RunKind::Physical, 86400)),
                (RunKind::Drill, ok(RunKind::Drill, 86400)),
            ]),
            records_error: None,
            volumes: vec![Volume {
                name: "backups",
                path: "/backups".into(),
                size: 1000,
                used: 500,
                free: 500,
                forecast_seconds: None,
                error: None,
            }],
            archive_timeout: 60,
            offsite: None,
            stream: None,
        }
    }

    fn checks(o: &Observation) -> Vec<&'static str> {
        problems(o).into_iter().map(|p| p.check).collect()
    }

    #[test]
    fn health_rules() {
        let now = t(0);
        assert_eq!(checks(&healthy(now)), Vec::<&str>::new());
        let mut o = healthy(now);
        o.volumes[0].free = 99; // 9.9% of the size
        o.volumes[0].forecast_seconds = Some(2.0 * 86400.0);
        assert_eq!(checks(&o), ["volume_low", "volume_forecast"]);
        assert_eq!(
            problems_with(&o, 5.0)
                .into_iter()
                .map(|p| p.check)
                .collect::<Vec<_>>(),
            ["volume_forecast"]
        );
        let mut o = healthy(now);
        o.volumes[0].forecast_seconds = Some(4.0 * 86400.0);
        o.archive_lag_seconds = Some(121.0);
        o.ready_segments = Some(9);
        o.up = false;
        assert_eq!(checks(&o), ["server_down", "wal_backlog", "archive_lag"]);
        o.archive_timeout = 0;
        assert!(
            !checks(&o).contains(&"archive_lag"),
            "no bound without a timeout"
        );
        // Too old: logical past 26 h, drill past 8 days; the last physical failed.
        let mut o = healthy(now);
        let s = o.runs.get_mut(&RunKind::Logical).unwrap();
        s.last_success.as_mut().unwrap().stop = now - jiff::SignedDuration::from_secs(27 * 3600);
        let d = o.runs.get_mut(&RunKind::Drill).unwrap();
        d.last_success.as_mut().unwrap().stop = now - jiff::SignedDuration::from_secs(9 * 86400);
        let p = o.runs.get_mut(&RunKind::Physical).unwrap();
        let mut failed = Record::finish(RunKind::Physical, now, results::Outcome::Failure);
        failed.stop = now;
        p.last = Some(failed.with_error("disk full"));
        assert_eq!(
            checks(&o),
            ["backup_too_old", "backup_failed", "drill_too_old"]
        );
        assert!(problems(&o)[1].message.contains("disk full"));
        // Nothing recorded at all.
        let mut o = healthy(now);
        o.runs.clear();
        assert_eq!(
            checks(&o),
            ["backup_too_old", "backup_too_old", "drill_too_old"]
        );
    }

    #[test]
    fn a_stream_that_is_down_is_a_problem() {
        let mut o = healthy(t(0));
        o.stream = Some(StreamLook {
            mode: crate::settings::StreamMode::Sync,
            connected: true,
            flush_lag_bytes: Some(0),
            sync_degraded: false,
        });
        assert_eq!(checks(&o), Vec::<&str>::new());
        o.stream.as_mut().unwrap().connected = false;
        assert_eq!(checks(&o), ["stream_down"]);
        assert!(problems(&o)[0].message.contains("commits wait"));
        // Fallen back to asynchronous commits: said, also in the moment the stream is back
        // before serve restores waiting.
        o.stream.as_mut().unwrap().sync_degraded = true;
        assert_eq!(checks(&o), ["stream_down"]);
        assert!(problems(&o)[0].message.contains("FELL BACK"));
        o.stream.as_mut().unwrap().connected = true;
        assert_eq!(checks(&o), ["stream_down"]);
    }

    #[test]
    fn offsite_rules() {
        let now = t(0);
        let mut o = healthy(now);
        o.offsite = Some(OffsiteLook {
            last_sync: Some(now - jiff::SignedDuration::from_secs(30)),
            lag_segments: Some(OFFSITE_LAG_SEGMENTS_MAX),
            backups: BTreeMap::new(),
            error: None,
        });
        assert_eq!(checks(&o), Vec::<&str>::new());
        let off = o.offsite.as_mut().unwrap();
        off.lag_segments = Some(OFFSITE_LAG_SEGMENTS_MAX + 1);
        off.last_sync = Some(now - jiff::SignedDuration::from_secs(OFFSITE_MAX_SYNC_AGE_SECS + 1));
        assert_eq!(checks(&o), ["offsite_stale", "offsite_lag"]);
        let off = o.offsite.as_mut().unwrap();
        off.last_sync = None;
        off.lag_segments = Some(0);
        assert_eq!(checks(&o), ["offsite_stale"]);
    }

    #[test]
    fn forecast_from_steady_growth() {
        // 1 GB a day for three days; 10 GB free: 10 days.
        let day = 86400;
        let s = [(t(-3 * day), 0), (t(-2 * day), 1 << 30), (t(-day), 2 << 30)];
        let f = forecast_seconds(&s, t(0), 3 << 30, 10 << 30).unwrap();
        assert!((f - 10.0 * day as f64).abs() < 1.0, "{f}");
    }

    #[test]
    fn no_forecast_when_shrinking_flat_short_or_stale() {
        let day = 86400;
        assert_eq!(
            forecast_seconds(&[(t(-day), 5)], t(0), 3, 100),
            None,
            "shrinking"
        );
        assert_eq!(
            forecast_seconds(&[(t(-day), 5)], t(0), 5, 100),
            None,
            "flat"
        );
        assert_eq!(
            forecast_seconds(&[(t(-60), 0)], t(0), 5, 100),
            None,
            "an hour is the least"
        );
        assert_eq!(forecast_seconds(&[], t(0), 5, 100), None, "no history");
        assert_eq!(
            forecast_seconds(&[(t(-8 * day), 0)], t(0), 5, 100),
            None,
            "older than the 7-day window"
        );
    }
}
