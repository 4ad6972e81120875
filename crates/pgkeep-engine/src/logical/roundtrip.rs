//! The demo's round trip: a backup restored into a scratch database, compared table by table.

use super::*;

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
    let before = Db::connect(&conn).await?.sanity(false).await?;
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
