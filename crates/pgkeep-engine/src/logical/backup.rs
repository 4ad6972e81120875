//! The logical backup: the nightly bundle (directory dump, `records.sql.gz`, globals,
//! extensions, MANIFEST.json).

use super::*;

// ---------------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------------

/// The MANIFEST.json key recording each materialized view and whether it was populated.
pub const MATVIEWS_KEY: &str = "matviews_populated";

/// `pgkeep backup logical`.
pub struct LogicalBackup {
    pub pg: PgBin,
    /// Connection to the database to dump.
    pub conn: ConnParams,
    pub backups_dir: PathBuf,
    /// pg_dump -j.
    pub jobs: usize,
    pub progress: Arc<dyn Progress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub database: String,
    pub server_version: String,
    pub members: usize,
    /// Table-data files reused verbatim in the `.sql.gz`.
    pub spliced_tables: usize,
    pub started_at: String,
    pub finished_at: String,
    pub duration_secs: f64,
}

pub(super) struct BackupJob {
    pub(super) pg: PgBin,
    pub(super) conn: ConnParams,
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) jobs: usize,
    pub(super) settings_tsv: String,
    pub(super) extensions_tsv: String,
    pub(super) info: BTreeMap<String, serde_json::Value>,
    pub(super) progress: Arc<dyn Progress>,
}

impl LogicalBackup {
    pub async fn run(&self) -> Result<BackupReport, LogicalError> {
        let clock = Instant::now();
        let started = now();
        let database = self.conn.dbname.clone();

        tracing::info!(step = "connect", database = %database, "connecting to {}", self.conn.display());
        let db = Db::connect(&self.conn).await?;
        let server = db.server_info().await?;

        tracing::info!(
            step = "check-tools",
            "pg_dump must not be older than the server"
        );
        let tool = self.pg.major_version("pg_dump")?;
        if tool < server.major() {
            return Err(LogicalError::OldTools {
                tool,
                server: server.major(),
            });
        }

        tracing::info!(step = "describe", "reading pg_settings and extensions");
        let settings_tsv = db.settings_tsv().await?;
        let extensions_tsv = db.extensions_tsv().await?;
        // Which materialized views hold data: a restore leaves the others unpopulated.
        let matviews = db.matviews_populated().await?;
        drop(db);

        let removed = clean_stale(&self.backups_dir)?;
        if !removed.is_empty() {
            tracing::info!(
                step = "clean-stale",
                removed = removed.len(),
                "removed leftovers"
            );
        }
        let name = repo::free_name(&self.backups_dir, BackupKind::Logical, started);
        let mut info = BTreeMap::new();
        info.insert("database".into(), database.clone().into());
        info.insert("server_version".into(), server.version.clone().into());
        info.insert("server_version_num".into(), server.version_num.into());
        info.insert(
            "system_identifier".into(),
            server.system_identifier.clone().into(),
        );
        info.insert("started_at".into(), started.to_string().into());
        info.insert("pg_dump_major".into(), tool.into());
        info.insert("jobs".into(), self.jobs.into());
        info.insert(
            MATVIEWS_KEY.into(),
            serde_json::to_value(&matviews).expect("a map of bools serialises"),
        );
        let job = BackupJob {
            pg: self.pg.clone(),
            conn: self.conn.clone(),
            dir: self.backups_dir.clone(),
            name: name.clone(),
            jobs: self.jobs.max(1),
            settings_tsv,
            extensions_tsv,
            info,
            progress: self.progress.clone(),
        };
        let (path, manifest, spliced) = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| LogicalError::Internal(e.to_string()))??;
        let size = std::fs::metadata(&path).fs_ctx("stat", &path)?.len();
        let report = BackupReport {
            // Another run may have published under the chosen name first.
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(name),
            path,
            size,
            database,
            server_version: server.version,
            members: manifest.members.len(),
            spliced_tables: spliced,
            started_at: started.to_string(),
            finished_at: manifest
                .info_str("finished_at")
                .unwrap_or_default()
                .to_owned(),
            duration_secs: clock.elapsed().as_secs_f64(),
        };
        tracing::info!(step = "done", name = %report.name, size = report.size, seconds = report.duration_secs, "logical backup written");
        Ok(report)
    }
}

impl BackupJob {
    fn run(mut self) -> Result<(PathBuf, Manifest, usize), LogicalError> {
        // The staging directory is this run's alone; the bundle's name only has to be free when
        // it is published (a second backup in the same minute gets `-2`).
        let staging = Staging::create(&self.dir, &runmark::run_label("backup"))?;
        let (dir_member, sql_member) = member_names(&self.conn.dbname);
        let dump_dir = staging.path().join(&dir_member);
        let globals = staging.path().join("globals.sql");

        std::thread::scope(|s| -> Result<(PathBuf, Manifest, usize), LogicalError> {
            let clock = Instant::now();
            tracing::info!(
                step = "dump",
                jobs = self.jobs,
                "pg_dump -Fd and pg_dumpall --globals-only"
            );
            self.progress.begin("pg_dump", 0);
            let globals_thread = s.spawn(|| {
                self.conn
                    .apply(self.pg.cmd("pg_dumpall"))
                    .args(["--globals-only", "--no-sync", "--quote-all-identifiers"])
                    .arg(format!("--file={}", globals.display()))
                    .run()
            });
            let dumped = self
                .conn
                .apply(self.pg.cmd("pg_dump"))
                .args(["--format=directory", "--no-sync"])
                .arg(format!("--jobs={}", self.jobs))
                .arg(format!("--file={}", dump_dir.display()))
                .run();
            let globals_done = globals_thread
                .join()
                .map_err(|_| LogicalError::Internal("pg_dumpall thread panicked".into()))?;
            dumped?;
            globals_done?;
            fsutil::set_mode(&globals, 0o600)?;
            self.progress.end();
            self.info
                .insert("finished_at".into(), now().to_string().into());

            tracing::info!(
                step = "bundle",
                dump_seconds = clock.elapsed().as_secs_f64(),
                "writing the bundle ({sql_member} derived from {dir_member})"
            );
            let clock = Instant::now();
            let plan_thread = s.spawn(|| sqlgz::prepare(&self.pg, &dump_dir, staging.path()));
            let dir_bytes = dir_size(&dump_dir)?;
            self.progress.begin("bundle", dir_bytes);
            let mut w = BundleWriter::create(&self.dir, &self.name)?;
            let p = self.progress.clone();
            w.on_progress(move |n| p.advance(n));
            w.append_dir(&dir_member, &dump_dir)?;
            w.append_file("globals.sql", &globals, Some(Level::Fast))?;
            w.append_bytes("pg_settings.tsv", self.settings_tsv.as_bytes())?;
            w.append_bytes("extensions.tsv", self.extensions_tsv.as_bytes())?;
            let plan = plan_thread
                .join()
                .map_err(|_| LogicalError::Internal("records.sql.gz thread panicked".into()))??;
            self.progress.grow(plan.size());
            w.append_reader(&sql_member, plan.size(), Level::Store, plan.reader()?)?;
            let spliced = plan.spliced();
            let (path, manifest) = w.finish(BundleKind::Logical, std::mem::take(&mut self.info))?;
            self.progress.end();
            tracing::info!(
                step = "bundle-written",
                bundle_seconds = clock.elapsed().as_secs_f64(),
                spliced,
                "bundle written, fsynced and renamed"
            );
            Ok((path, manifest, spliced))
        })
    }
}

pub(super) fn dir_size(dir: &Path) -> Result<u64, FsError> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).fs_ctx("read directory", dir)? {
        let e = e.fs_ctx("read directory", dir)?;
        let m = e.metadata().fs_ctx("stat", &e.path())?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
