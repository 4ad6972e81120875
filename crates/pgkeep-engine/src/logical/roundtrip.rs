//! The demo's round trip: a backup restored into a scratch database, compared table by table.

use super::*;

/// The demo's own typed queries (`pgkeep demo`: a table written after the base backup, which
/// WAL replay must bring back).
impl Db {
    /// Writes `audit.after_backup` (1,234 rows); its row count.
    pub async fn demo_write_after_backup(&self) -> Result<i64, DbError> {
        self.client()
            .batch_execute(
                "create table audit.after_backup as \
                 select g as id, md5(g::text) as payload from generate_series(1, 1234) g",
            )
            .await
            .map_err(query_err("writing the demo's table after the backup"))?;
        self.demo_count_after_backup().await
    }

    /// Switches to a new WAL file; the name of the one just closed.
    pub async fn demo_switch_wal(&self) -> Result<String, DbError> {
        Ok(self
            .client()
            .query_one("select pg_walfile_name(pg_switch_wal())", &[])
            .await
            .map_err(query_err("switching WAL"))?
            .get(0))
    }

    /// `pg_stat_archiver.last_archived_wal`.
    pub async fn demo_last_archived(&self) -> Result<Option<String>, DbError> {
        Ok(self
            .client()
            .query_one("select last_archived_wal from pg_stat_archiver", &[])
            .await
            .map_err(query_err("reading pg_stat_archiver"))?
            .get(0))
    }

    /// Rows of `audit.after_backup`.
    pub async fn demo_count_after_backup(&self) -> Result<i64, DbError> {
        Ok(self
            .client()
            .query_one("select count(*) from audit.after_backup", &[])
            .await
            .map_err(query_err("counting the demo's table"))?
            .get(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Demo
// ---------------------------------------------------------------------------------------------

/// What [`round_trip`] found.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    pub backup: BackupReport,
    pub before: SanityReport,
    pub restore: RestoreSummary,
    /// Tables, row counts, materialized views and extensions, before vs after.
    pub differences: Vec<String>,
}

impl RoundTrip {
    pub fn identical(&self) -> bool {
        self.differences.is_empty() && self.restore.errors == 0
    }
}

/// For `pgkeep demo`: take a logical backup of `conn.dbname`, drop the database, restore the
/// bundle just written and compare the sanity reports (tables, exact row counts, materialized
/// views, extensions) before and after. Destructive: the caller confirms first.
pub async fn round_trip(
    pg: PgBin,
    conn: ConnParams,
    backups_dir: PathBuf,
    jobs: usize,
    progress: Arc<dyn Progress>,
) -> Result<RoundTrip, LogicalError> {
    let before = Db::connect(&conn)
        .await?
        .sanity(Rows::Counted { jobs })
        .await?;
    let backup = LogicalBackup {
        pg: pg.clone(),
        conn: conn.clone(),
        backups_dir: backups_dir.clone(),
        jobs,
        progress: progress.clone(),
    }
    .run()
    .await?;
    tracing::info!(step = "drop-database", database = %conn.dbname, "dropping the database");
    Db::connect(&conn.with_db("postgres"))
        .await?
        .client()
        .batch_execute(&format!(
            "drop database {} with (force)",
            quote_ident(&conn.dbname)
        ))
        .await
        .map_err(query_err("dropping the database"))?;
    let restore = LogicalRestore {
        pg,
        conn,
        backups_dir,
        source: RestoreSource::Named(backup.name.clone()),
        options: RestoreOptions {
            jobs,
            clean: false,
            keep_going: false,
            keep_old: false,
        },
        progress,
        staging_in: None,
    }
    .prepare()
    .await?
    .run()
    .await?;
    let differences = compare(&before, &restore.sanity);
    Ok(RoundTrip {
        backup,
        before,
        restore,
        differences,
    })
}

/// Differences between two sanity reports (tables, rows, materialized views, extensions).
pub fn compare(before: &SanityReport, after: &SanityReport) -> Vec<String> {
    let flat = |r: &SanityReport| -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for s in &r.schemas {
            for t in &s.tables {
                m.insert(
                    format!("table {}.{}", s.name, t.name),
                    format!("{:?} rows", t.rows),
                );
            }
            for v in &s.matviews {
                m.insert(
                    format!("materialized view {}.{}", s.name, v.name),
                    format!("populated={}", v.populated),
                );
            }
        }
        for e in &r.extensions {
            m.insert(format!("extension {}", e.name), e.version.clone());
        }
        m
    };
    let (a, b) = (flat(before), flat(after));
    let mut out = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => out.push(format!("{k}: missing after the restore")),
            Some(w) if w != v => out.push(format!("{k}: {v} before, {w} after")),
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("{k}: only after the restore"));
    }
    out
}
