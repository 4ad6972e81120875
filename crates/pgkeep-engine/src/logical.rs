//! Logical backups and restores: the seed's nightly bundle, `restore dump` and the restore half of
//! `restore upload`. Both read as a script of named steps ([`LogicalBackup::run`],
//! [`PreparedRestore::run`]).
//!
//! # The nightly bundle `nightly-YYYYMMDD-HHMM.tar.gz`
//!
//! | member | what |
//! |---|---|
//! | `records.dir/` | `pg_dump -Fd -j N` (directory format, the one snapshot everything comes from) |
//! | `globals.sql` | `pg_dumpall --globals-only`: roles (with password hashes), memberships, tablespaces |
//! | `pg_settings.tsv` | the server configuration |
//! | `extensions.tsv` | installed extensions of the database |
//! | `records.sql.gz` | plain SQL, derived from `records.dir` by `pg_restore -f -` (see [`crate::sqlgz`]) |
//! | `MANIFEST.json` | pgkeep and server version, system identifier, database, start/stop time, size and SHA-256 of each member |
//!
//! `records` is the database name: for another database `shop` the members are `shop.dir/` and
//! `shop.sql.gz`. Both TSV files start with a header line and escape tab, newline, carriage return
//! and backslash as `\t`, `\n`, `\r`, `\\` (PostgreSQL's COPY text format):
//!
//! - `pg_settings.tsv`: `name  setting  unit  source  context` (from `pg_settings`).
//! - `extensions.tsv`: `name  version  schema` (from `pg_extension`).
//!
//! Staging happens on the backups volume in a hidden `.NAME.staging` directory (0700, holding a
//! `pid` file), removed on success and on failure; one left behind by a killed run is removed by
//! the next backup once its process is gone. The bundle itself is written by
//! [`BundleWriter`]: hidden `.partial`, fsync, rename, directory fsync,
//! mode 0600. Table data is never compressed twice: pg_dump's `*.dat.gz` and `records.sql.gz` are
//! stored in the outer gzip stream, not compressed again.
//!
//! # Restoring
//!
//! [`LogicalRestore::prepare`] finds the archive, verifies every checksum while extracting it into
//! a fresh staging directory and looks at the target database, all before anything in PostgreSQL
//! is changed. [`PreparedRestore::run`] then applies `globals.sql` (only "already exists" errors
//! are ignored; the role pgkeep connects as is left as it is, its password belongs to the
//! Secret), creates the extensions of `extensions.tsv`, creates the database when missing,
//! restores the directory dump with `pg_restore -j N` (or a custom-format dump, or streams
//! `*.sql` / `*.sql.gz` through psql), runs ANALYZE, refreshes materialized views in dependency
//! order and ends with the [`SanityReport`]. A non-empty target needs `clean`: `pg_restore --clean
//! --if-exists` drops and recreates the dump's objects (for plain SQL the database is dropped and
//! created again).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::ExitClass;
use crate::bundle::{self, BundleError, BundleKind, BundleWriter, Level, Manifest};
use crate::db::{ConnParams, Db, DbError, quote_ident};
use crate::fsutil::{self, FsError, IoContext};
use crate::repo::{self, BackupKind, RepoError};
use crate::runmark;
use crate::sanity::SanityReport;
use crate::sqlgz::{self, SqlGzError};
use crate::tools::{PgBin, ToolError};
use crate::upload::{self, FileKind};

#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    SqlGz(#[from] SqlGzError),
    #[error(
        "pg_dump is version {tool} but the server is version {server}: an older pg_dump cannot dump a newer server reliably\nhint: install the PostgreSQL {server} client tools or point PGKEEP_PG_BIN at them"
    )]
    OldTools { tool: u32, server: u32 },
    #[error(
        "{archive}: nothing to restore; found {found}\nhint: accepted are a pgkeep bundle, a .tar.gz holding a *.dir directory dump or *.sql / *.sql.gz files, a bare .sql, .sql.gz, or a custom-format .dump"
    )]
    NoDump { archive: PathBuf, found: String },
    #[error(
        "{path}: not a dump pgkeep can restore ({found})\nhint: accepted are a pgkeep bundle, a .tar.gz holding a *.dir directory dump or *.sql / *.sql.gz files, a bare .sql, .sql.gz, or a custom-format .dump (pg_dump -Fc)"
    )]
    Unrecognised { path: PathBuf, found: String },
    #[error(
        "{name} is a physical base backup, not a logical dump\nhint: restore it with `pgkeep bootstrap basebackup --from {name}`, or pick a nightly-*.tar.gz (`pgkeep backups list`)"
    )]
    NotLogical { name: String },
    #[error("{path} does not exist\nhint: give the path of a dump file on this machine")]
    NoSuchFile { path: PathBuf },
    #[error(
        "database `{database}` is not empty ({objects} objects); nothing was changed\nhint: pass --clean to drop and recreate the dump's objects (asks for confirmation; --yes to skip it)"
    )]
    NotEmpty { database: String, objects: i64 },
    #[error(
        "{what} failed; the restore stopped at the first error\n{detail}\nhint: fix the cause and run the restore again (with --clean), or pass --keep-going to continue past errors"
    )]
    RestoreFailed { what: &'static str, detail: String },
    #[error(
        "{path} exists with different content (SHA-256 {existing}, upload {upload})\nhint: rename the file you upload, or remove the old one from the backups directory"
    )]
    UploadClash {
        path: PathBuf,
        existing: String,
        upload: String,
    },
    #[error(
        "copy of {from} into {to} does not match the original (SHA-256 {expected} vs {actual}); the copy was removed\nhint: check the backups volume for errors and try again"
    )]
    CopyMismatch {
        from: PathBuf,
        to: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl LogicalError {
    pub fn exit_class(&self) -> ExitClass {
        use LogicalError::*;
        match self {
            OldTools { .. }
            | NoDump { .. }
            | Unrecognised { .. }
            | NotEmpty { .. }
            | NotLogical { .. }
            | UploadClash { .. } => ExitClass::Refused,
            Bundle(
                BundleError::Corrupt { .. }
                | BundleError::UnsafeEntry { .. }
                | BundleError::Checksum { .. }
                | BundleError::Missing { .. }
                | BundleError::Unlisted { .. }
                | BundleError::BadManifest { .. },
            ) => ExitClass::Refused,
            _ => ExitClass::Failed,
        }
    }
}

fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
    move |e| DbError::Query {
        what,
        message: e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Receives progress of the byte-heavy steps (a progress bar on a terminal).
pub trait Progress: Send + Sync {
    /// A new step with `total` bytes (0: unknown).
    fn begin(&self, _step: &str, _total: u64) {}
    /// The current step turned out `more` bytes bigger.
    fn grow(&self, _more: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Number of parallel jobs when none is given: the number of cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Member names for a database: `records` → (`records.dir`, `records.sql.gz`).
pub fn member_names(database: &str) -> (String, String) {
    let safe: String = database
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    (format!("{safe}.dir"), format!("{safe}.sql.gz"))
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// COPY text-format escaping for one TSV field.
fn tsv_field(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\t' => o.push_str("\\t"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

fn tsv_unescape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            o.push(c);
            continue;
        }
        match it.next() {
            Some('t') => o.push('\t'),
            Some('n') => o.push('\n'),
            Some('r') => o.push('\r'),
            Some(other) => o.push(other),
            None => o.push('\\'),
        }
    }
    o
}

fn tsv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = header.join("\t");
    out.push('\n');
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| tsv_field(f)).collect();
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    out
}

/// (name, version, schema) rows of an `extensions.tsv`.
pub fn parse_extensions_tsv(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').map(tsv_unescape).collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| n != "name" && n != "extname"))
        .map(|f| {
            (
                f[0].clone(),
                f.get(1).cloned().unwrap_or_default(),
                f.get(2).cloned().unwrap_or_else(|| "public".into()),
            )
        })
        .collect()
}

impl Db {
    /// `pg_settings.tsv` (see the module docs for the columns).
    async fn settings_tsv(&self) -> Result<String, DbError> {
        let rows = self
            .client()
            .query(
                "select name::text, coalesce(setting, ''), coalesce(unit, ''), coalesce(source, ''), coalesce(context, '') \
                 from pg_settings order by name",
                &[],
            )
            .await
            .map_err(query_err("reading pg_settings"))?;
        Ok(tsv(
            &["name", "setting", "unit", "source", "context"],
            rows.iter()
                .map(|r| (0..5).map(|i| r.get::<_, String>(i)).collect()),
        ))
    }

    /// `extensions.tsv` (see the module docs for the columns).
    async fn extensions_tsv(&self) -> Result<String, DbError> {
        let rows = self
            .client()
            .query(
                "select e.extname::text, e.extversion, n.nspname::text from pg_extension e \
                 join pg_namespace n on n.oid = e.extnamespace order by 1",
                &[],
            )
            .await
            .map_err(query_err("listing extensions"))?;
        Ok(tsv(
            &["name", "version", "schema"],
            rows.iter()
                .map(|r| (0..3).map(|i| r.get::<_, String>(i)).collect()),
        ))
    }

    /// Objects a restore would collide with: relations, sequences and views outside the system
    /// schemas, schemas other than `public`, large objects.
    async fn user_object_count(&self) -> Result<i64, DbError> {
        Ok(self
            .client()
            .query_one(
                "select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                   where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') \
                   and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%') \
                 + (select count(*) from pg_namespace where nspname not in ('public', 'information_schema') \
                   and nspname not like 'pg\\_%') \
                 + (select count(*) from pg_largeobject_metadata)",
                &[],
            )
            .await
            .map_err(query_err("looking at the target database"))?
            .get(0))
    }

    async fn schema_exists(&self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .client()
            .query_one(
                "select exists (select 1 from pg_namespace where nspname = $1)",
                &[&name],
            )
            .await
            .map_err(query_err("looking up a schema"))?
            .get(0))
    }

    async fn create_extension(&self, name: &str, schema: &str) -> Result<bool, DbError> {
        let existed: bool = self
            .client()
            .query_one(
                "select exists (select 1 from pg_extension where extname = $1)",
                &[&name],
            )
            .await
            .map_err(query_err("looking up an extension"))?
            .get(0);
        if existed {
            return Ok(false);
        }
        self.client()
            .batch_execute(&format!(
                "create extension if not exists {} with schema {}",
                quote_ident(name),
                quote_ident(schema)
            ))
            .await
            .map_err(query_err("creating an extension"))?;
        Ok(true)
    }

    async fn analyze(&self) -> Result<(), DbError> {
        self.client()
            .batch_execute("analyze")
            .await
            .map_err(query_err("ANALYZE"))
    }

    /// Materialized views, each after the materialized views it reads (also through views).
    async fn matviews_in_dependency_order(&self) -> Result<Vec<String>, DbError> {
        let c = self.client();
        let rels = c
            .query(
                "select c.oid, c.relkind::text, format('%I.%I', n.nspname, c.relname) \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind in ('m', 'v') and n.nspname not in ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .map_err(query_err("listing materialized views"))?;
        let edges = c
            .query(
                "select distinct r.ev_class, d.refobjid from pg_rewrite r \
                 join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid \
                 where d.refclassid = 'pg_class'::regclass and d.refobjid <> r.ev_class",
                &[],
            )
            .await
            .map_err(query_err("reading view dependencies"))?;
        let kinds: BTreeMap<u32, (String, String)> = rels
            .iter()
            .map(|r| (r.get::<_, u32>(0), (r.get(1), r.get(2))))
            .collect();
        let mut deps: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for e in &edges {
            let from: u32 = e.get(0);
            let to: u32 = e.get(1);
            if kinds.contains_key(&from) && kinds.contains_key(&to) {
                deps.entry(from).or_default().push(to);
            }
        }
        // Materialized views reachable from `oid` through views, stopping at materialized views.
        let mv_deps = |oid: u32| -> BTreeSet<u32> {
            let mut out = BTreeSet::new();
            let mut seen = BTreeSet::new();
            let mut stack: Vec<u32> = deps.get(&oid).cloned().unwrap_or_default();
            while let Some(d) = stack.pop() {
                if !seen.insert(d) {
                    continue;
                }
                match kinds.get(&d).map(|k| k.0.as_str()) {
                    Some("m") => {
                        out.insert(d);
                    }
                    Some(_) => stack.extend(deps.get(&d).cloned().unwrap_or_default()),
                    None => {}
                }
            }
            out
        };
        let mvs: BTreeMap<&str, u32> = kinds
            .iter()
            .filter(|(_, k)| k.0 == "m")
            .map(|(o, k)| (k.1.as_str(), *o))
            .collect();
        let mut waiting: BTreeMap<u32, BTreeSet<u32>> =
            mvs.values().map(|o| (*o, mv_deps(*o))).collect();
        let mut order = Vec::new();
        while !waiting.is_empty() {
            let ready: Vec<u32> = mvs
                .values()
                .copied()
                .filter(|o| waiting.get(o).is_some_and(|d| d.is_empty()))
                .collect();
            // A cycle cannot exist in PostgreSQL; take the rest in name order if it ever does.
            let ready = if ready.is_empty() {
                waiting.keys().copied().collect()
            } else {
                ready
            };
            for o in ready {
                waiting.remove(&o);
                for d in waiting.values_mut() {
                    d.remove(&o);
                }
                order.push(kinds[&o].1.clone());
            }
        }
        Ok(order)
    }
}

/// A hidden staging directory on the backups volume (`.LABEL.staging`, 0700, with a `pid` file),
/// removed on drop.
pub(crate) struct Staging {
    path: PathBuf,
    heartbeat: Option<runmark::Heartbeat>,
}

const STAGING_SUFFIX: &str = ".staging";

impl Staging {
    pub(crate) fn create(dir: &Path, label: &str) -> Result<Staging, FsError> {
        let path = dir.join(format!(".{label}{STAGING_SUFFIX}"));
        if path.exists() {
            if let runmark::Holder::Running(who) = runmark::holder(&path) {
                return Err(FsError::new(
                    "create directory",
                    &path,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("another pgkeep run ({who}) is using it; wait for it to finish"),
                    ),
                ));
            }
            std::fs::remove_dir_all(&path).fs_ctx("remove stale staging", &path)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .fs_ctx("create directory", &path)?;
        fsutil::set_mode(&path, 0o700)?;
        let heartbeat = runmark::mark(&path).fs_ctx("write", &path.join("pid"))?;
        Ok(Staging {
            path,
            heartbeat: Some(heartbeat),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.heartbeat.take());
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Remove staging directories (and their partial bundles) left by pgkeep runs that are gone:
/// on this host, when their process has ended; made on another host (another pod), when they
/// have gone [`runmark::FOREIGN_STALE_AFTER`] without a heartbeat.
pub fn clean_stale(dir: &Path) -> Result<Vec<String>, FsError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).fs_ctx("read directory", dir)? {
        let entry = entry.fs_ctx("read directory", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.ends_with(STAGING_SUFFIX)) {
            continue;
        }
        match runmark::holder(&entry.path()) {
            runmark::Holder::Us | runmark::Holder::Running(_) => continue,
            runmark::Holder::Gone => {}
            runmark::Holder::Unknown => {
                // Without a pid file yet, a directory may be one that is being created now.
                let young = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age.as_secs() < 60);
                if young {
                    continue;
                }
            }
        }
        std::fs::remove_dir_all(entry.path()).fs_ctx("remove stale staging", &entry.path())?;
        tracing::info!(path = %entry.path().display(), "removed what an interrupted run left behind");
        removed.push(name);
    }
    for partial in fsutil::remove_stale_partials(dir) {
        removed.push(
            partial
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------------

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

struct BackupJob {
    pg: PgBin,
    conn: ConnParams,
    dir: PathBuf,
    name: String,
    jobs: usize,
    settings_tsv: String,
    extensions_tsv: String,
    info: BTreeMap<String, serde_json::Value>,
    progress: Arc<dyn Progress>,
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

fn dir_size(dir: &Path) -> Result<u64, FsError> {
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

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/// What to restore.
#[derive(Debug, Clone)]
pub enum RestoreSource {
    /// The newest complete `nightly-*.tar.gz` in the backups directory.
    Newest,
    /// A bundle name in the backups directory.
    Named(String),
    /// A file (an upload already copied into the backups directory).
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub jobs: usize,
    /// Restore over a non-empty database (drop and recreate the dump's objects).
    pub clean: bool,
    /// Continue past errors (counted and reported) instead of stopping at the first.
    pub keep_going: bool,
}

/// `pgkeep restore dump` / the restore half of `pgkeep restore upload`.
pub struct LogicalRestore {
    pub pg: PgBin,
    /// Connection with the target database as `dbname`.
    pub conn: ConnParams,
    pub backups_dir: PathBuf,
    pub source: RestoreSource,
    pub options: RestoreOptions,
    pub progress: Arc<dyn Progress>,
    /// Where to extract the dump: `None` is the backups directory (after removing what
    /// interrupted runs left there); a restore drill gives its scratch directory, so the backups
    /// directory is only read.
    pub staging_in: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum DumpForm {
    Dir(PathBuf),
    Custom(PathBuf),
    Sql(Vec<PathBuf>),
}

impl DumpForm {
    fn method(&self) -> &'static str {
        match self {
            DumpForm::Dir(_) => "pg_restore (directory format)",
            DumpForm::Custom(_) => "pg_restore (custom format)",
            DumpForm::Sql(_) => "psql (plain SQL)",
        }
    }
}

/// A verified, extracted dump and the facts about the target, before anything is changed.
pub struct PreparedRestore {
    req: LogicalRestore,
    archive: PathBuf,
    manifest: Option<Manifest>,
    dump: DumpForm,
    globals: Option<PathBuf>,
    extensions: Option<PathBuf>,
    target_exists: bool,
    target_objects: i64,
    _staging: Staging,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct GlobalsOutcome {
    pub already_exists: usize,
    pub errors: usize,
    /// True when psql's error output was longer than what pgkeep keeps: counts are lower bounds.
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub source: PathBuf,
    pub database: String,
    pub method: &'static str,
    pub created_database: bool,
    pub globals: Option<GlobalsOutcome>,
    pub extensions_created: Vec<String>,
    pub matviews_refreshed: usize,
    /// Errors that did not stop the restore (globals other than "already exists", extensions,
    /// --keep-going, materialized view refreshes).
    pub errors: usize,
    pub error_messages: Vec<String>,
    pub tables: usize,
    pub rows: i64,
    pub duration_secs: f64,
    pub sanity: SanityReport,
}

/// Hide password hashes and literals that may appear in a tool's error text.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(i) = lower.find("password '") else {
            out.push_str(rest);
            break;
        };
        let start = i + "password '".len();
        out.push_str(&rest[..start]);
        out.push_str("***'");
        match rest[start..].find('\'') {
            Some(j) => rest = &rest[start + j + 1..],
            None => break,
        }
    }
    out.split_whitespace()
        .map(|w| {
            if w.contains("SCRAM-SHA-256$")
                || (w.starts_with("md5")
                    && w.len() >= 35
                    && w[3..35].bytes().all(|b| b.is_ascii_hexdigit()))
            {
                "***"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `CREATE ROLE me;` / `ALTER ROLE me WITH ...` lines of pg_dumpall for the role we connect as.
fn is_own_role_line(line: &str, me: &str) -> bool {
    let quoted = quote_ident(me);
    [me, quoted.as_str()].iter().any(|name| {
        line.starts_with(&format!("CREATE ROLE {name};"))
            || line.starts_with(&format!("ALTER ROLE {name} WITH "))
    })
}

impl LogicalRestore {
    /// Find, verify and extract the dump; look at the target. Changes nothing in PostgreSQL.
    pub async fn prepare(self) -> Result<PreparedRestore, LogicalError> {
        tracing::info!(step = "locate", "finding the dump");
        let archive = match &self.source {
            RestoreSource::Newest => repo::newest(&self.backups_dir, BackupKind::Logical)?.path,
            RestoreSource::Named(n) => {
                let b = repo::find(&self.backups_dir, n)?;
                if b.kind != BackupKind::Logical {
                    return Err(LogicalError::NotLogical { name: b.name });
                }
                b.path
            }
            RestoreSource::File(p) => {
                if !p.is_file() {
                    return Err(LogicalError::NoSuchFile { path: p.clone() });
                }
                p.clone()
            }
        };
        let staging_in = match &self.staging_in {
            Some(dir) => dir.clone(),
            None => {
                clean_stale(&self.backups_dir)?;
                self.backups_dir.clone()
            }
        };
        let staging = Staging::create(&staging_in, &runmark::run_label("restore"))?;

        tracing::info!(step = "verify", archive = %archive.display(), "verifying checksums and extracting");
        let kind = upload::sniff(&archive)?;
        let (manifest, dump, globals, extensions) = match kind {
            FileKind::TarGz => {
                let dest = staging.path().join("x");
                let archive2 = archive.clone();
                let dest2 = dest.clone();
                let clock = Instant::now();
                let contents =
                    tokio::task::spawn_blocking(move || bundle::extract(&archive2, &dest2))
                        .await
                        .map_err(|e| LogicalError::Internal(e.to_string()))??;
                tracing::info!(
                    step = "verified",
                    members = contents.members.len(),
                    manifest = contents.manifest.is_some(),
                    seconds = clock.elapsed().as_secs_f64(),
                    "checksums verified and extracted"
                );
                let database = contents
                    .manifest
                    .as_ref()
                    .and_then(|m| m.info_str("database"))
                    .unwrap_or(&self.conn.dbname)
                    .to_owned();
                let found = find_dump(&dest, &database)?;
                let Some(dump) = found.dump else {
                    let names: Vec<String> = contents.top_level().into_iter().collect();
                    return Err(LogicalError::NoDump {
                        archive: archive.clone(),
                        found: if names.is_empty() {
                            "an empty archive".into()
                        } else {
                            names.join(", ")
                        },
                    });
                };
                (contents.manifest, dump, found.globals, found.extensions)
            }
            FileKind::Custom => (None, DumpForm::Custom(archive.clone()), None, None),
            FileKind::Sql | FileKind::SqlGz => {
                (None, DumpForm::Sql(vec![archive.clone()]), None, None)
            }
            FileKind::Other(what) => {
                return Err(LogicalError::Unrecognised {
                    path: archive.clone(),
                    found: what,
                });
            }
        };

        tracing::info!(step = "inspect-target", database = %self.conn.dbname, "looking at the target database");
        let admin = Db::connect(&self.conn.with_db("postgres")).await?;
        let target_exists = admin.database_exists(&self.conn.dbname).await?;
        drop(admin);
        let target_objects = if target_exists {
            Db::connect(&self.conn).await?.user_object_count().await?
        } else {
            0
        };
        Ok(PreparedRestore {
            req: self,
            archive,
            manifest,
            dump,
            globals,
            extensions,
            target_exists,
            target_objects,
            _staging: staging,
        })
    }
}

struct Found {
    dump: Option<DumpForm>,
    globals: Option<PathBuf>,
    extensions: Option<PathBuf>,
}

/// Look for a dump in an extracted tree: `<db>.dir`, any `*.dir` (or other directory) holding a
/// `toc.dat`, a custom-format `*.dump`, then `*.sql` / `*.sql.gz` files.
fn find_dump(root: &Path, database: &str) -> Result<Found, LogicalError> {
    let mut dirs = Vec::new();
    let mut customs = Vec::new();
    let mut sqls = Vec::new();
    let mut globals = None;
    let mut extensions = None;
    fn walk(d: &Path, depth: usize, out: &mut Vec<(PathBuf, bool)>) -> Result<(), FsError> {
        let mut entries: Vec<_> = std::fs::read_dir(d)
            .fs_ctx("read directory", d)?
            .collect::<Result<_, _>>()
            .fs_ctx("read directory", d)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let is_dir = e.file_type().fs_ctx("stat", &e.path())?.is_dir();
            out.push((e.path(), is_dir));
            if is_dir && depth < 4 && !e.path().join("toc.dat").is_file() {
                walk(&e.path(), depth + 1, out)?;
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    walk(root, 0, &mut all)?;
    for (p, is_dir) in all {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_dir {
            if p.join("toc.dat").is_file() {
                dirs.push(p);
            }
            continue;
        }
        match name.as_str() {
            "globals.sql" => {
                globals.get_or_insert(p);
            }
            "extensions.tsv" => {
                extensions.get_or_insert(p);
            }
            n if n.ends_with(".sql") || n.ends_with(".sql.gz") => sqls.push(p),
            n if n.ends_with(".dump") || n.ends_with(".backup") => {
                if matches!(upload::sniff(&p)?, FileKind::Custom) {
                    customs.push(p);
                }
            }
            _ => {}
        }
    }
    let (dir_member, sql_member) = member_names(database);
    let plain_member = sql_member.trim_end_matches(".gz").to_owned();
    let named = |v: &Vec<PathBuf>, want: &str| {
        v.iter()
            .find(|p| p.file_name().is_some_and(|n| n == want))
            .cloned()
    };
    let dump = if let Some(d) = named(&dirs, &dir_member)
        .or_else(|| {
            dirs.iter()
                .find(|p| p.extension().is_some_and(|e| e == "dir"))
                .cloned()
        })
        .or_else(|| dirs.first().cloned())
    {
        Some(DumpForm::Dir(d))
    } else if let Some(c) = customs.first() {
        Some(DumpForm::Custom(c.clone()))
    } else if let Some(s) = named(&sqls, &sql_member).or_else(|| named(&sqls, &plain_member)) {
        Some(DumpForm::Sql(vec![s]))
    } else if !sqls.is_empty() {
        Some(DumpForm::Sql(sqls))
    } else {
        None
    };
    Ok(Found {
        dump,
        globals,
        extensions,
    })
}

impl PreparedRestore {
    /// The archive being restored.
    pub fn archive(&self) -> &Path {
        &self.archive
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The target database name.
    pub fn database(&self) -> &str {
        &self.req.conn.dbname
    }

    /// Objects already in the target database (0 when it does not exist).
    pub fn target_objects(&self) -> i64 {
        self.target_objects
    }

    /// Whether restoring needs `clean` (and the caller's confirmation).
    pub fn target_is_empty(&self) -> bool {
        self.target_objects == 0
    }

    /// The restore proper, as a script of named steps.
    pub async fn run(self) -> Result<RestoreSummary, LogicalError> {
        let clock = Instant::now();
        let opts = self.req.options.clone();
        let database = self.req.conn.dbname.clone();
        if !self.target_is_empty() && !opts.clean {
            return Err(LogicalError::NotEmpty {
                database,
                objects: self.target_objects,
            });
        }
        let mut errors: Vec<String> = Vec::new();

        let globals = match &self.globals {
            Some(g) => {
                tracing::info!(
                    step = "globals",
                    "applying globals.sql (\"already exists\" is fine)"
                );
                let outcome = self.apply_globals(g, &mut errors).await?;
                Some(outcome)
            }
            None => None,
        };

        let mut created_database = false;
        let sql_clean = opts.clean && matches!(self.dump, DumpForm::Sql(_)) && self.target_exists;
        if sql_clean {
            tracing::info!(step = "recreate-database", database = %database, "plain SQL cannot --clean: dropping and creating the database");
            let admin = Db::connect(&self.req.conn.with_db("postgres")).await?;
            admin
                .client()
                .batch_execute(&format!(
                    "drop database {} with (force)",
                    quote_ident(&database)
                ))
                .await
                .map_err(query_err("dropping the database"))?;
            admin.create_database(&database).await?;
            created_database = true;
        } else if !self.target_exists {
            tracing::info!(step = "create-database", database = %database, "creating the database");
            Db::connect(&self.req.conn.with_db("postgres"))
                .await?
                .create_database(&database)
                .await?;
            created_database = true;
        }

        let db = Db::connect(&self.req.conn).await?;
        let mut extensions_created = Vec::new();
        if let Some(ext) = &self.extensions {
            tracing::info!(
                step = "extensions",
                "creating the extensions of extensions.tsv"
            );
            let text = std::fs::read_to_string(ext).fs_ctx("read", ext)?;
            for (name, _version, schema) in parse_extensions_tsv(&text) {
                if !db.schema_exists(&schema).await? {
                    // The dump creates the schema and then the extension in it.
                    continue;
                }
                match db.create_extension(&name, &schema).await {
                    Ok(true) => extensions_created.push(name),
                    Ok(false) => {}
                    Err(e) => errors.push(format!("extension {name}: {e}")),
                }
            }
        }

        tracing::info!(
            step = "data",
            method = self.dump.method(),
            jobs = opts.jobs,
            "restoring"
        );
        self.req.progress.begin("restore", 0);
        let data = self.restore_data(&opts);
        let data_errors = match data {
            Ok(e) => e,
            Err(e) => {
                self.req.progress.end();
                return Err(e);
            }
        };
        self.req.progress.end();
        errors.extend(data_errors);

        tracing::info!(step = "analyze", "ANALYZE");
        db.analyze().await?;

        tracing::info!(
            step = "matviews",
            "refreshing materialized views in dependency order"
        );
        let mut matviews_refreshed = 0;
        for mv in db.matviews_in_dependency_order().await? {
            match db
                .client()
                .batch_execute(&format!("refresh materialized view {mv}"))
                .await
            {
                Ok(()) => matviews_refreshed += 1,
                Err(e) => {
                    let msg = format!(
                        "refresh materialized view {mv}: {}",
                        e.as_db_error()
                            .map(|d| d.message().to_owned())
                            .unwrap_or_else(|| e.to_string())
                    );
                    tracing::warn!("{msg}");
                    errors.push(msg);
                }
            }
        }

        tracing::info!(step = "sanity", "counting rows");
        let sanity = db.sanity(false).await?;
        let summary = RestoreSummary {
            source: self.archive.clone(),
            database,
            method: self.dump.method(),
            created_database,
            globals,
            extensions_created,
            matviews_refreshed,
            errors: errors.len(),
            error_messages: errors,
            tables: sanity.tables,
            rows: sanity.total_rows,
            duration_secs: clock.elapsed().as_secs_f64(),
            sanity,
        };
        tracing::info!(
            step = "done",
            tables = summary.tables,
            rows = summary.rows,
            errors = summary.errors,
            "restore finished"
        );
        Ok(summary)
    }

    async fn apply_globals(
        &self,
        path: &Path,
        errors: &mut Vec<String>,
    ) -> Result<GlobalsOutcome, LogicalError> {
        let me = self.req.conn.user.clone();
        let text = std::fs::read_to_string(path).fs_ctx("read", path)?;
        let filtered: String = text
            .lines()
            .filter(|l| !is_own_role_line(l, &me))
            .flat_map(|l| [l, "\n"])
            .collect();
        let file = path.with_file_name(".globals.filtered.sql");
        fsutil::write_atomic(&file, filtered.as_bytes(), 0o600, true)?;
        let conn = self.req.conn.with_db("postgres");
        let cmd = conn
            .apply(self.req.pg.cmd("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=terse"])
            .arg("-f")
            .arg(&file);
        let (status, stderr) = tokio::task::spawn_blocking(move || cmd.spawn()?.wait_status())
            .await
            .map_err(|e| LogicalError::Internal(e.to_string()))??;
        let _ = std::fs::remove_file(&file);
        if !status.success() {
            return Err(LogicalError::RestoreFailed {
                what: "applying globals.sql",
                detail: redact(stderr.trim()),
            });
        }
        let mut outcome = GlobalsOutcome {
            truncated: stderr.len() >= 16 * 1024,
            ..Default::default()
        };
        for line in stderr.lines().filter(|l| l.contains("ERROR:")) {
            if line.contains("already exists") {
                outcome.already_exists += 1;
            } else {
                outcome.errors += 1;
                // `psql:/staging/path/.globals.filtered.sql:36: ERROR: ...` → `globals.sql line 36: ERROR: ...`
                let shown = match line.strip_prefix("psql:").and_then(|r| {
                    let (_, rest) = r.split_once(".sql:")?;
                    let (n, msg) = rest.split_once(": ")?;
                    Some(format!("line {n}: {msg}"))
                }) {
                    Some(s) => s,
                    None => line.to_owned(),
                };
                let msg = format!("globals.sql {}", redact(&shown));
                tracing::warn!("{msg}");
                errors.push(msg);
            }
        }
        Ok(outcome)
    }

    /// The data step; returns errors passed over with --keep-going.
    fn restore_data(&self, opts: &RestoreOptions) -> Result<Vec<String>, LogicalError> {
        let conn = &self.req.conn;
        let pg = &self.req.pg;
        let run_pg_restore = |path: &Path| -> Result<Vec<String>, LogicalError> {
            let mut cmd = conn
                .apply(pg.cmd("pg_restore"))
                .arg(format!("--dbname={}", conn.dbname))
                .arg(format!("--jobs={}", opts.jobs.max(1)));
            if opts.clean {
                cmd = cmd.args(["--clean", "--if-exists"]);
            }
            if !opts.keep_going {
                cmd = cmd.arg("--exit-on-error");
            }
            let (status, stderr) = cmd.arg(path).spawn()?.wait_status()?;
            if status.success() {
                return Ok(Vec::new());
            }
            let lines: Vec<String> = stderr
                .lines()
                .filter(|l| l.contains("error:") || l.contains("ERROR:"))
                .map(redact)
                .collect();
            if !opts.keep_going || status.code() != Some(1) {
                return Err(LogicalError::RestoreFailed {
                    what: "pg_restore",
                    detail: redact(stderr.trim()),
                });
            }
            let count = stderr
                .lines()
                .find_map(|l| {
                    l.split("errors ignored on restore:")
                        .nth(1)
                        .and_then(|n| n.trim().parse::<usize>().ok())
                })
                .unwrap_or(lines.len().max(1));
            let mut out: Vec<String> = lines
                .into_iter()
                .filter(|l| !l.contains("errors ignored on restore"))
                .map(|l| format!("pg_restore: {l}"))
                .collect();
            while out.len() < count {
                out.push("pg_restore: (error text not kept)".into());
            }
            Ok(out)
        };
        match &self.dump {
            DumpForm::Dir(p) | DumpForm::Custom(p) => run_pg_restore(p),
            DumpForm::Sql(files) => {
                let mut errors = Vec::new();
                for f in files {
                    errors.extend(self.run_sql(f, opts.keep_going)?);
                }
                Ok(errors)
            }
        }
    }

    fn run_sql(&self, file: &Path, keep_going: bool) -> Result<Vec<String>, LogicalError> {
        let gz = upload::sniff(file)? == FileKind::SqlGz;
        let mut cmd = self
            .req
            .conn
            .apply(self.req.pg.cmd("psql"))
            .args(["-X", "-q", "-v", "VERBOSITY=terse"])
            .arg("-v")
            .arg(if keep_going {
                "ON_ERROR_STOP=0"
            } else {
                "ON_ERROR_STOP=1"
            });
        cmd = if gz {
            cmd.stdin_piped()
        } else {
            cmd.stdin_file(file)
        };
        let mut running = cmd.spawn()?;
        if gz {
            let mut stdin = running.take_stdin().expect("stdin is piped");
            let f = std::fs::File::open(file).fs_ctx("open", file)?;
            let mut dec =
                flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 20, f));
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match dec.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(FsError::new("decompress", file, e).into()),
                };
                // psql stopped (ON_ERROR_STOP): its exit status says why.
                if stdin.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            drop(stdin);
        }
        let (status, stderr) = running.wait_status()?;
        let lines: Vec<String> = stderr
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("FATAL:"))
            .map(|l| format!("{}: {}", file.display(), redact(l)))
            .collect();
        if !status.success() {
            return Err(LogicalError::RestoreFailed {
                what: "psql",
                detail: redact(stderr.trim()),
            });
        }
        Ok(lines)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_follow_the_database() {
        assert_eq!(
            member_names("records"),
            ("records.dir".into(), "records.sql.gz".into())
        );
        assert_eq!(
            member_names("shop"),
            ("shop.dir".into(), "shop.sql.gz".into())
        );
    }

    #[test]
    fn tsv_round_trips_awkward_values() {
        let text = tsv(
            &["name", "version", "schema"],
            [vec!["a\tb".to_string(), "1\\2".into(), "x\ny".into()]],
        );
        assert_eq!(text, "name\tversion\tschema\na\\tb\t1\\\\2\tx\\ny\n");
        assert_eq!(
            parse_extensions_tsv(&text),
            vec![("a\tb".into(), "1\\2".into(), "x\ny".into())]
        );
        assert_eq!(
            parse_extensions_tsv("plpgsql\t1.0\n"),
            vec![("plpgsql".into(), "1.0".into(), "public".into())]
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let line = "ERROR:  syntax error in ALTER ROLE app WITH PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi' LOGIN";
        let r = redact(line);
        assert!(!r.contains("SCRAM"), "{r}");
        assert!(!r.contains("abc"), "{r}");
        assert!(r.contains("PASSWORD '***'"), "{r}");
        let r = redact("hash md5a3556571e93b0d20722ba62be61e8c2d here");
        assert!(!r.contains("a3556571"), "{r}");
    }

    #[test]
    fn own_role_lines_are_recognised() {
        assert!(is_own_role_line("CREATE ROLE postgres;", "postgres"));
        assert!(is_own_role_line(
            "ALTER ROLE \"postgres\" WITH SUPERUSER PASSWORD 'x';",
            "postgres"
        ));
        assert!(!is_own_role_line("CREATE ROLE postgres2;", "postgres"));
        assert!(!is_own_role_line("GRANT app TO postgres;", "postgres"));
    }

    #[test]
    fn another_hosts_staging_stays_until_its_heartbeat_stops() {
        let t = tempfile::tempdir().unwrap();
        let foreign = t.path().join(".restore-1.staging");
        std::fs::create_dir(&foreign).unwrap();
        // PID 1 on another pod: not this host's PID 1, whatever runs here as PID 1.
        std::fs::write(foreign.join("pid"), "1 restore-job-x7k2p\n").unwrap();
        assert!(clean_stale(t.path()).unwrap().is_empty());
        let err = Staging::create(t.path(), "restore-1").err().unwrap();
        assert!(
            err.to_string().contains("pid 1 on host restore-job-x7k2p"),
            "{err}"
        );
        assert!(foreign.join("pid").exists(), "left alone");
        // No heartbeat for longer than runmark::FOREIGN_STALE_AFTER: abandoned.
        let old = std::time::SystemTime::now() - runmark::FOREIGN_STALE_AFTER - runmark::HEARTBEAT;
        std::fs::File::options()
            .write(true)
            .open(foreign.join("pid"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(clean_stale(t.path()).unwrap(), [".restore-1.staging"]);
        assert!(!foreign.exists());
    }

    #[test]
    fn stale_staging_is_removed_only_when_its_process_is_gone() {
        let t = tempfile::tempdir().unwrap();
        let dead = t.path().join(".nightly-20260101-0600.tar.gz.staging");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("pid"), "999999999").unwrap();
        let tag = runmark::tag();
        let (host, _) = runmark::parse_tag(&tag).unwrap();
        let partial = format!(".nightly-20260101-0600.tar.gz~{host}~999999999~0.partial");
        std::fs::write(t.path().join(&partial), "x").unwrap();
        let live = Staging::create(t.path(), "nightly-20260102-0600.tar.gz").unwrap();
        let removed = clean_stale(t.path()).unwrap();
        assert_eq!(removed, [".nightly-20260101-0600.tar.gz.staging", &partial]);
        assert!(!dead.exists());
        assert!(!t.path().join(&partial).exists());
        assert!(live.path().exists(), "our own staging stays");
        drop(live);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn demo_round_trip_is_identical() {
        let c = pgkeep_testkit::TempCluster::start();
        c.psql("postgres", "create database shop");
        c.psql_script(
            "shop",
            "create table orders(id int primary key, v text);
             insert into orders select g, md5(g::text) from generate_series(1, 500) g;
             create materialized view totals as select count(*) from orders;",
        );
        let mut conn = ConnParams::from_settings(&crate::settings::Settings::default());
        conn.host = c.run_dir().display().to_string();
        conn.port = c.port();
        let conn = conn.with_db("shop");
        let pg = PgBin::locate().unwrap();
        let rt = round_trip(pg, conn, c.backups(), 2, Arc::new(NoProgress))
            .await
            .unwrap();
        assert!(rt.identical(), "{:?}", rt.differences);
        assert_eq!(rt.restore.rows, 500);
        assert_eq!(rt.backup.database, "shop");
        let members = bundle::verify(&rt.backup.path).unwrap().top_level();
        assert!(
            members.contains("shop.dir") && members.contains("shop.sql.gz"),
            "{members:?}"
        );
        let mut after = rt.before.clone();
        after.schemas[0].tables[0].rows = Some(499);
        assert_eq!(compare(&rt.before, &after).len(), 1);
    }
}
