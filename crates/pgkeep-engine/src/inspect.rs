//! Looking at the site without changing it: `pgkeep space` (the seed's `space-check.sh`: volume
//! usage by statvfs with thresholds, database and table sizes, pg_wal, the WAL archive) and
//! `pgkeep status` (server, archiver health interpreted, archive, newest backups and their age).
//!
//! Both work when PostgreSQL is down: the file-system parts are always reported and the database
//! parts say why they are missing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::db::{ConnParams, Db, DbError, query_err};
use crate::repo::{self, BackupKind};
use crate::wal::{Archive, WalKind};

/// Warn at this percentage of a volume used.
pub const WARN_PERCENT: f64 = 80.0;
/// Error line at this percentage.
pub const ERROR_PERCENT: f64 = 90.0;

/// How full a volume is.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeUsage {
    pub name: &'static str,
    pub path: PathBuf,
    pub total: u64,
    pub used: u64,
    pub available: u64,
    pub percent: f64,
    /// ok, warning (>= 80%), error (>= 90%), or unavailable.
    pub level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Classify a percentage.
pub fn level_for(percent: f64) -> &'static str {
    if percent >= ERROR_PERCENT {
        "error"
    } else if percent >= WARN_PERCENT {
        "warning"
    } else {
        "ok"
    }
}

/// statvfs of one volume (df's arithmetic: used / (used + available)).
pub fn volume_usage(name: &'static str, path: &Path) -> VolumeUsage {
    match rustix::fs::statvfs(path) {
        Ok(st) => {
            let f = st.f_frsize;
            let total = st.f_blocks * f;
            let used = (st.f_blocks - st.f_bfree) * f;
            let available = st.f_bavail * f;
            let percent = if used + available == 0 {
                0.0
            } else {
                (used as f64 * 100.0 / (used + available) as f64 * 10.0).round() / 10.0
            };
            VolumeUsage {
                name,
                path: path.to_owned(),
                total,
                used,
                available,
                percent,
                level: level_for(percent),
                error: None,
            }
        }
        Err(e) => VolumeUsage {
            name,
            path: path.to_owned(),
            total: 0,
            used: 0,
            available: 0,
            percent: 0.0,
            level: "unavailable",
            error: Some(if e.kind() == std::io::ErrorKind::NotFound {
                "no such directory here (not mounted in this container?)".to_owned()
            } else {
                e.to_string()
            }),
        },
    }
}

/// The WAL archive's size and contents.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ArchiveUsage {
    pub path: PathBuf,
    pub bytes: u64,
    pub files: usize,
    pub segments: usize,
    pub history_files: usize,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn archive_usage(dir: &Path) -> ArchiveUsage {
    let mut u = ArchiveUsage {
        path: dir.to_owned(),
        ..Default::default()
    };
    match Archive::new(dir).list() {
        Ok(files) => {
            u.files = files.len();
            u.bytes = files.iter().map(|f| f.size).sum();
            let segs: Vec<_> = files
                .iter()
                .filter(|f| f.wal.kind == WalKind::Segment)
                .collect();
            u.segments = segs.len();
            u.history_files = files
                .iter()
                .filter(|f| f.wal.kind == WalKind::History)
                .count();
            u.oldest = segs.first().map(|f| f.name.clone());
            u.newest = segs.last().map(|f| f.name.clone());
        }
        Err(e) => u.error = Some(e.to_string()),
    }
    u
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSize {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSize {
    pub schema: String,
    pub table: String,
    pub total_bytes: u64,
    pub table_bytes: u64,
    pub index_bytes: u64,
    pub toast_bytes: u64,
}

/// `pgkeep space`.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceReport {
    pub volumes: Vec<VolumeUsage>,
    pub databases: Vec<DatabaseSize>,
    /// The ten largest tables of the application database.
    pub largest_tables: Vec<TableSize>,
    pub database: String,
    pub pg_wal_bytes: Option<u64>,
    pub pg_wal_files: Option<u64>,
    pub wal_archive: ArchiveUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
}

impl Db {
    pub async fn database_sizes(&self) -> Result<Vec<DatabaseSize>, DbError> {
        let rows = self
            .client()
            .query(
                "select datname::text, pg_database_size(oid)::int8 from pg_database \
                 where datallowconn order by 2 desc",
                &[],
            )
            .await
            .map_err(query_err("reading database sizes"))?;
        Ok(rows
            .iter()
            .map(|r| DatabaseSize {
                name: r.get(0),
                bytes: r.get::<_, i64>(1) as u64,
            })
            .collect())
    }

    /// The largest tables (with their indexes and TOAST).
    pub async fn largest_tables(&self, limit: i64) -> Result<Vec<TableSize>, DbError> {
        let rows = self
            .client()
            .query(
                "select n.nspname::text, c.relname::text, pg_total_relation_size(c.oid)::int8, \
                 pg_relation_size(c.oid)::int8, pg_indexes_size(c.oid)::int8, \
                 coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)::int8 \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('r', 'm', 'p') \
                 and n.nspname not in ('pg_catalog', 'information_schema') \
                 and n.nspname not like 'pg\\_toast%' \
                 order by 3 desc limit $1",
                &[&limit],
            )
            .await
            .map_err(query_err("reading table sizes"))?;
        Ok(rows
            .iter()
            .map(|r| TableSize {
                schema: r.get(0),
                table: r.get(1),
                total_bytes: r.get::<_, i64>(2) as u64,
                table_bytes: r.get::<_, i64>(3) as u64,
                index_bytes: r.get::<_, i64>(4) as u64,
                toast_bytes: r.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    /// Size and number of files in pg_wal.
    pub async fn pg_wal_size(&self) -> Result<(u64, u64), DbError> {
        let r = self
            .client()
            .query_one(
                "select coalesce(sum(size), 0)::int8, count(*)::int8 from pg_ls_waldir()",
                &[],
            )
            .await
            .map_err(query_err("reading the size of pg_wal"))?;
        Ok((r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
    }
}

/// Paths `space` looks at.
pub struct Site<'a> {
    pub pgroot: &'a Path,
    pub pgdata: &'a Path,
    pub wal_archive: &'a Path,
    pub backups: &'a Path,
    /// The off-site follower's status file ([`crate::offsite::status`]) when off-site copies
    /// are configured.
    pub offsite_status: Option<std::path::PathBuf>,
}

impl<'a> Site<'a> {
    /// The site the settings describe.
    pub fn of(s: &'a crate::settings::Settings) -> Site<'a> {
        Site {
            pgroot: &s.paths.pgroot,
            pgdata: &s.paths.pgdata,
            wal_archive: &s.paths.wal_archive,
            backups: &s.paths.backups,
            offsite_status: (!s.offsite.url.is_empty())
                .then(|| crate::offsite::status::path(&s.paths.run_dir)),
        }
    }
}

/// Gather `pgkeep space`.
pub async fn space(site: &Site<'_>, conn: &ConnParams) -> SpaceReport {
    let volumes = vec![
        volume_usage("data", site.pgroot),
        volume_usage("wal-archive", site.wal_archive),
        volume_usage("backups", site.backups),
    ];
    let mut report = SpaceReport {
        volumes,
        databases: vec![],
        largest_tables: vec![],
        database: conn.dbname.clone(),
        pg_wal_bytes: None,
        pg_wal_files: None,
        wal_archive: archive_usage(site.wal_archive),
        database_error: None,
    };
    let result: Result<(), DbError> = async {
        // The application database for its tables; when it is missing, the maintenance
        // database still gives the database sizes and pg_wal.
        let db = match Db::connect(conn).await {
            Ok(db) => {
                report.largest_tables = db.largest_tables(10).await?;
                db
            }
            Err(e) => {
                let db = Db::connect(&conn.with_db("postgres"))
                    .await
                    .map_err(|_| e)?;
                report.database_error = Some(format!(
                    "database {} is not reachable; its tables are not listed",
                    conn.dbname
                ));
                db
            }
        };
        report.databases = db.database_sizes().await?;
        let (b, n) = db.pg_wal_size().await?;
        report.pg_wal_bytes = Some(b);
        report.pg_wal_files = Some(n);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        report.database_error = Some(e.to_string());
        // Without the server, pg_wal can still be measured on disk when readable.
        if let Ok(rd) = std::fs::read_dir(site.pgdata.join("pg_wal")) {
            let (mut b, mut n) = (0, 0);
            for e in rd.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    b += m.len();
                    n += 1;
                }
            }
            report.pg_wal_bytes = Some(b);
            report.pg_wal_files = Some(n);
        }
    }
    report
}

/// `pg_stat_archiver`, interpreted.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiverStatus {
    pub archive_mode: String,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub last_archived_age_seconds: Option<f64>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    /// Segments waiting in pg_wal/archive_status/*.ready (None when not readable).
    pub ready: Option<i64>,
    /// ok, failing, lagging, idle or disabled.
    pub verdict: &'static str,
    pub explanation: String,
}

/// Interpret the archiver's counters.
pub fn archiver_verdict(
    archive_mode: &str,
    archived_count: i64,
    failing_now: bool,
    ready: Option<i64>,
) -> (&'static str, String) {
    if archive_mode == "off" {
        return (
            "disabled",
            "archive_mode is off: no WAL is archived, point-in-time recovery is impossible".into(),
        );
    }
    if failing_now {
        return (
            "failing",
            "the last archive attempt failed and none succeeded since: WAL piles up in pg_wal; see the server log for archive_command's error".into(),
        );
    }
    if let Some(r) = ready
        && r > 8
    {
        return (
            "lagging",
            format!(
                "{r} segments wait to be archived: archive_command is slower than WAL is written"
            ),
        );
    }
    if archived_count == 0 {
        return (
            "idle",
            "nothing archived yet since the statistics were reset".into(),
        );
    }
    ("ok", "archiving keeps up".into())
}

impl Db {
    /// What the server occupies on the data volume by its own account: every database plus
    /// pg_wal (the forecast's stand-in where the data volume is not mounted).
    pub async fn footprint(&self) -> Result<u64, DbError> {
        let r = self
            .client()
            .query_one(
                "select ((select coalesce(sum(pg_database_size(oid)), 0) from pg_database) \
                 + (select coalesce(sum(size), 0) from pg_ls_waldir()))::int8",
                &[],
            )
            .await
            .map_err(query_err("reading database and pg_wal sizes"))?;
        Ok(r.get::<_, i64>(0).max(0) as u64)
    }

    pub async fn archiver_status(&self) -> Result<ArchiverStatus, DbError> {
        let r = self
            .client()
            .query_one(
                "select current_setting('archive_mode'), archived_count, last_archived_wal, \
                 to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 extract(epoch from now() - last_archived_time)::float8, failed_count, last_failed_wal, \
                 to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
                 from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(query_err("reading pg_stat_archiver"))?;
        let ready = self
            .client()
            .query_one(
                "select count(*)::int8 from pg_ls_archive_statusdir() where name like '%.ready'",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0));
        let mode: String = r.get(0);
        let archived_count: i64 = r.get(1);
        let (verdict, explanation) = archiver_verdict(&mode, archived_count, r.get(8), ready);
        Ok(ArchiverStatus {
            archive_mode: mode,
            archived_count,
            last_archived_wal: r.get(2),
            last_archived_time: r.get(3),
            last_archived_age_seconds: r.get(4),
            failed_count: r.get(5),
            last_failed_wal: r.get(6),
            last_failed_time: r.get(7),
            ready,
            verdict,
            explanation,
        })
    }
}

/// The newest backup of a kind.
#[derive(Debug, Clone, Serialize)]
pub struct NewestBackup {
    pub name: String,
    pub size: u64,
    pub age_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub up: bool,
    pub version: Option<String>,
    pub in_recovery: Option<bool>,
    pub system_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `pgkeep status --local`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub server: ServerStatus,
    pub archiver: Option<ArchiverStatus>,
    pub wal_archive: ArchiveUsage,
    pub newest_logical: Option<NewestBackup>,
    pub newest_physical: Option<NewestBackup>,
    /// The marker of a bootstrap that did not finish (see [`crate::bootmark`]), when the data
    /// volume is mounted here and holds one.
    pub bootstrap_unfinished: Option<PathBuf>,
}

fn newest(dir: &Path, kind: BackupKind) -> Option<NewestBackup> {
    let b = repo::newest(dir, kind).ok()?;
    let at = b
        .time
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp();
    Some(NewestBackup {
        name: b.name,
        size: b.size,
        age_seconds: crate::clock::now().as_second() - at.as_second(),
    })
}

/// Gather `pgkeep status`.
pub async fn status(
    conn: &ConnParams,
    pgroot: &Path,
    wal_archive: &Path,
    backups: &Path,
) -> StatusReport {
    let mut server = ServerStatus {
        up: false,
        version: None,
        in_recovery: None,
        system_identifier: None,
        error: None,
    };
    let mut archiver = None;
    match Db::connect(&conn.with_db("postgres")).await {
        Ok(db) => {
            server.up = true;
            match db.server_info().await {
                Ok(i) => {
                    server.version = Some(i.version);
                    server.in_recovery = Some(i.in_recovery);
                    server.system_identifier = Some(i.system_identifier);
                }
                Err(e) => server.error = Some(e.to_string()),
            }
            match db.archiver_status().await {
                Ok(a) => archiver = Some(a),
                Err(e) => server.error = Some(e.to_string()),
            }
        }
        Err(e) => server.error = Some(e.to_string()),
    }
    StatusReport {
        server,
        archiver,
        wal_archive: archive_usage(wal_archive),
        newest_logical: newest(backups, BackupKind::Logical),
        newest_physical: newest(backups, BackupKind::Physical),
        bootstrap_unfinished: crate::bootmark::present(pgroot),
    }
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// 93784 → "1d 2h".
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        for (p, want) in [
            (0.0, "ok"),
            (79.9, "ok"),
            (80.0, "warning"),
            (89.9, "warning"),
            (90.0, "error"),
            (100.0, "error"),
        ] {
            assert_eq!(level_for(p), want, "{p}");
        }
    }

    #[test]
    fn archiver_verdicts() {
        assert_eq!(archiver_verdict("off", 0, false, None).0, "disabled");
        assert_eq!(archiver_verdict("on", 10, true, Some(0)).0, "failing");
        assert_eq!(archiver_verdict("on", 10, false, Some(20)).0, "lagging");
        assert_eq!(archiver_verdict("on", 0, false, Some(0)).0, "idle");
        assert_eq!(archiver_verdict("on", 5, false, Some(1)).0, "ok");
    }

    #[test]
    fn humans() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3661), "1h 1m");
        assert_eq!(human_age(93784), "1d 2h");
    }

    #[test]
    fn volume_usage_of_a_real_directory() {
        let t = tempfile::tempdir().unwrap();
        let u = volume_usage("data", t.path());
        assert!(
            u.total > 0 && u.percent >= 0.0 && u.percent <= 100.0,
            "{u:?}"
        );
        let missing = volume_usage("data", &t.path().join("nope"));
        assert_eq!(missing.level, "unavailable");
    }

    #[test]
    fn archive_usage_counts() {
        let t = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000001.zst",
            "000000010000000000000002",
            "00000002.history",
            "junk",
        ] {
            std::fs::write(t.path().join(n), "xx").unwrap();
        }
        let u = archive_usage(t.path());
        assert_eq!(
            (u.files, u.segments, u.history_files, u.bytes),
            (3, 2, 1, 6)
        );
        assert_eq!(u.newest.as_deref(), Some("000000010000000000000002"));
    }
}
