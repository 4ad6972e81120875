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
//! [`LogicalRestore::prepare`] finds the archive (for "newest": the newest bundle by the stop
//! time its manifest records that verifies), verifies every checksum while extracting it into a
//! fresh staging directory, and reads everything the restore will read before anything in
//! PostgreSQL is changed: a file with a pgkeep bundle name must pass what `backups verify` checks
//! ([`crate::catalog::check_logical_extracted`]); gzip streams are read to their end; dumps'
//! tables of contents are read (`pg_restore --list`); plain SQL scripts and `globals.sql` are
//! scanned ([`crate::sqlscan`]). [`PreparedRestore::run`] then applies `globals.sql` (only
//! "already exists" errors are ignored; statements touching the role pgkeep connects as are
//! skipped, its password belongs to the Secret), creates an empty scratch database
//! `<db>__pgkeep_restore` with the target's properties, creates the extensions of
//! `extensions.tsv` in it, restores the directory dump with `pg_restore -j N` (or a
//! custom-format dump, or streams `*.sql` / `*.sql.gz` through the scanner's filter into psql),
//! runs ANALYZE, refreshes the materialized views MANIFEST.json records as populated that the
//! dump left empty, and only then swaps the scratch database in for the target (the replaced one
//! dropped, or kept with `keep_old`). A failure before the swap drops the scratch database: the
//! target is as it was. A non-empty target needs `clean`. The summary ends with the
//! [`SanityReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::bundle::{self, BundleError, BundleKind, BundleWriter, Level, Manifest};
use crate::db::{ConnParams, Db, DbError, quote_ident};
use crate::fsutil::{self, FsError, IoContext};
use crate::repo::{self, BackupKind, RepoError};
use crate::runmark;
use crate::sanity::SanityReport;
use crate::sqlgz::{self, SqlGzError};
use crate::sqlscan::{self, FilterError, Policy, ScanError, ScanReport};
use crate::tools::{PgBin, ToolError};
use crate::upload::{self, FileKind};
use crate::{Classified, ExitClass};

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
    #[error("{path}: {error}")]
    UnsafeSql { path: PathBuf, error: ScanError },
    #[error(
        "{path} is damaged: {detail}; nothing was changed\nhint: copy the complete file again (compare its size or SHA-256 with the original), or use another dump"
    )]
    DamagedInput { path: PathBuf, detail: String },
    #[error(
        "{cause}\nthe restore ran into the scratch database `{scratch}`, which was dropped again: `{database}` was not touched, nothing was changed{roles}"
    )]
    ScratchFailed {
        database: String,
        scratch: String,
        /// Set when globals.sql had been applied (roles are cluster-wide).
        roles: &'static str,
        cause: Box<LogicalError>,
    },
    #[error(
        "another restore into `{database}` is running; nothing was changed\nhint: wait for it to finish"
    )]
    RestoreBusy { database: String },
    #[error(
        "{name} has the name of a pgkeep bundle but fails the verification `pgkeep backups verify` makes; nothing was changed\n{cause}\nhint: restore another backup (`pgkeep backups list`); a dump from elsewhere comes in through `pgkeep restore upload` under a name of its own"
    )]
    NotVerified {
        name: String,
        cause: Box<LogicalError>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classified for LogicalError {
    fn exit_class(&self) -> ExitClass {
        use LogicalError::*;
        match self {
            OldTools { .. }
            | NoDump { .. }
            | Unrecognised { .. }
            | NotEmpty { .. }
            | NotLogical { .. }
            | UploadClash { .. }
            | UnsafeSql { .. }
            | RestoreBusy { .. }
            | NotVerified { .. } => ExitClass::Refused,
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

    /// Every materialized view (`schema.name`, quoted as needed) and whether it is populated.
    async fn matviews_populated(&self) -> Result<BTreeMap<String, bool>, DbError> {
        Ok(self
            .client()
            .query(
                "select format('%I.%I', schemaname, matviewname), ispopulated from pg_matviews",
                &[],
            )
            .await
            .map_err(query_err("listing materialized views"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
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
    /// After a swap, keep the replaced database as `<db>__pgkeep_old_<stamp>`.
    pub keep_old: bool,
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
    /// What the scans of the plain SQL scripts found (statements skipped).
    scans: Vec<ScanReport>,
    /// Bundles passed over for "newest" because they failed verification.
    passed_over: Vec<String>,
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
    /// Materialized views populated by the restore (pg_restore's or the script's REFRESH, or
    /// pgkeep's when the dump left one empty that MANIFEST.json records as populated).
    pub matviews_refreshed: Vec<String>,
    /// Materialized views left unpopulated, as they were at backup time (`WITH NO DATA`).
    pub matviews_unpopulated: Vec<String>,
    /// Statements of plain SQL scripts left out (they touched the role pgkeep connects as).
    pub skipped_statements: Vec<String>,
    /// Newer bundles passed over because they failed verification.
    pub passed_over: Vec<String>,
    /// The replaced database, kept with --keep-old.
    pub kept_old: Option<String>,
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

/// Suffix of the scratch database a restore loads into before it is swapped in.
pub const SCRATCH_SUFFIX: &str = "__pgkeep_restore";
/// Infix of the replaced database's name while it is set aside (`<db>__pgkeep_old_<stamp>`).
pub const OLD_INFIX: &str = "__pgkeep_old_";

/// `<database><suffix>`, the database part shortened to fit PostgreSQL's 63 bytes.
pub fn side_name(database: &str, suffix: &str) -> String {
    let mut cut = database.len().min(63usize.saturating_sub(suffix.len()));
    while !database.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &database[..cut])
}

/// The database to run admin statements from while `database` is swapped.
fn admin_db(database: &str) -> &'static str {
    if database == "postgres" {
        "template1"
    } else {
        "postgres"
    }
}

/// Read a plain SQL script (`.sql` or `.sql.gz`, by content) as a stream.
fn open_script(file: &Path) -> Result<Box<dyn io::BufRead + Send>, LogicalError> {
    let gz = upload::sniff(file)? == FileKind::SqlGz;
    let f = std::fs::File::open(file).fs_ctx("open", file)?;
    let r = io::BufReader::with_capacity(1 << 20, f);
    Ok(if gz {
        Box::new(io::BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(r),
        ))
    } else {
        Box::new(r)
    })
}

/// Read the whole script (every gzip member and its CRC) and scan it (see [`crate::sqlscan`]).
fn check_script(file: &Path, policy: &Policy) -> Result<ScanReport, LogicalError> {
    let input = open_script(file)?;
    match sqlscan::filter(input, io::sink(), policy) {
        Ok(r) => Ok(r),
        Err(FilterError::Scan(source)) => Err(LogicalError::UnsafeSql {
            path: file.to_owned(),
            error: source,
        }),
        Err(FilterError::Read(e) | FilterError::Write(e)) => Err(LogicalError::DamagedInput {
            path: file.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// `pg_restore --list` of a custom-format or directory dump: its table of contents is readable.
fn check_toc(pg: &PgBin, dump: &Path) -> Result<(), LogicalError> {
    match pg.cmd("pg_restore").arg("--list").arg(dump).output_string() {
        Ok(_) => Ok(()),
        Err(e) => Err(LogicalError::DamagedInput {
            path: dump.to_owned(),
            detail: format!("pg_restore --list cannot read it: {e}"),
        }),
    }
}

/// A verification failure (the candidate is damaged), as opposed to a failure to look at it.
fn is_damage(e: &LogicalError) -> bool {
    matches!(
        e,
        LogicalError::NotVerified { .. }
            | LogicalError::DamagedInput { .. }
            | LogicalError::NoDump { .. }
            | LogicalError::Bundle(_)
    )
}

/// What [`LogicalRestore::open`] found in one archive.
struct Opened {
    manifest: Option<Manifest>,
    dump: DumpForm,
    globals: Option<PathBuf>,
    extensions: Option<PathBuf>,
    scans: Vec<ScanReport>,
}

impl LogicalRestore {
    /// Find, verify and extract the dump; look at the target. Changes nothing in PostgreSQL.
    pub async fn prepare(self) -> Result<PreparedRestore, LogicalError> {
        tracing::info!(step = "locate", "finding the dump");
        let candidates: Vec<PathBuf> = match &self.source {
            RestoreSource::Newest => {
                // Newest by the stop time the manifests record; bundles without a readable
                // manifest come last (they fail verification, and say why when nothing else is
                // there). A bundle that fails verification is passed over for the next one.
                repo::newest(&self.backups_dir, BackupKind::Logical)?;
                let dated = crate::catalog::newest_first(&self.backups_dir, BackupKind::Logical)?;
                let mut c: Vec<PathBuf> = dated.into_iter().map(|(b, _)| b.path).collect();
                let undated: Vec<PathBuf> = repo::list(&self.backups_dir)?
                    .into_iter()
                    .rev()
                    .filter(|b| b.kind == BackupKind::Logical && !c.contains(&b.path))
                    .map(|b| b.path)
                    .collect();
                c.extend(undated);
                c
            }
            RestoreSource::Named(n) => {
                let b = repo::find(&self.backups_dir, n)?;
                if b.kind != BackupKind::Logical {
                    return Err(LogicalError::NotLogical { name: b.name });
                }
                vec![b.path]
            }
            RestoreSource::File(p) => {
                if !p.is_file() {
                    return Err(LogicalError::NoSuchFile { path: p.clone() });
                }
                vec![p.clone()]
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

        let mut passed_over = Vec::new();
        let mut opened = None;
        let count = candidates.len();
        for (i, archive) in candidates.into_iter().enumerate() {
            let dest = staging.path().join(format!("x{i}"));
            match self.open(&archive, &dest).await {
                Ok(o) => {
                    opened = Some((archive, o));
                    break;
                }
                Err(e)
                    if matches!(self.source, RestoreSource::Newest)
                        && i + 1 < count
                        && is_damage(&e) =>
                {
                    let name = archive
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    tracing::warn!("passing over {name}: {e}");
                    passed_over.push(name);
                    let _ = std::fs::remove_dir_all(&dest);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((archive, o)) = opened else {
            return Err(LogicalError::Internal("no candidate to restore".into()));
        };

        tracing::info!(step = "inspect-target", database = %self.conn.dbname, "looking at the target database");
        let admin = Db::connect(&self.conn.with_db(admin_db(&self.conn.dbname))).await?;
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
            manifest: o.manifest,
            dump: o.dump,
            globals: o.globals,
            extensions: o.extensions,
            target_exists,
            target_objects,
            scans: o.scans,
            passed_over,
            _staging: staging,
        })
    }

    /// Verify and extract one archive into `dest` and check everything a restore will read: a
    /// file with a pgkeep bundle name passes what `backups verify` checks; every gzip stream is
    /// read to its end; dumps' tables of contents are read; SQL scripts are scanned.
    async fn open(&self, archive: &Path, dest: &Path) -> Result<Opened, LogicalError> {
        tracing::info!(step = "verify", archive = %archive.display(), "verifying checksums and extracting");
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bundle_named = repo::parse_name(&name).is_some();
        let pg = self.req_pg();
        let data_policy = Policy {
            database: self.conn.dbname.clone(),
            role: self.conn.user.clone(),
        };
        let globals_policy = Policy {
            database: admin_db(&self.conn.dbname).to_owned(),
            role: self.conn.user.clone(),
        };
        let archive2 = archive.to_owned();
        let dest2 = dest.to_owned();
        let fallback_db = self.conn.dbname.clone();
        tokio::task::spawn_blocking(move || -> Result<Opened, LogicalError> {
            let kind = upload::sniff(&archive2)?;
            if bundle_named && kind != FileKind::TarGz {
                return Err(LogicalError::NotVerified {
                    name,
                    cause: Box::new(LogicalError::Unrecognised {
                        path: archive2.clone(),
                        found: "not a gzip-compressed tar, which every pgkeep bundle is".into(),
                    }),
                });
            }
            let mut scans = Vec::new();
            let opened = match kind {
                FileKind::TarGz => {
                    let clock = Instant::now();
                    let contents = match bundle::extract(&archive2, &dest2) {
                        Ok(c) => c,
                        Err(e) if bundle_named => {
                            return Err(LogicalError::NotVerified {
                                name,
                                cause: Box::new(e.into()),
                            });
                        }
                        Err(e) => return Err(e.into()),
                    };
                    tracing::info!(
                        step = "verified",
                        members = contents.members.len(),
                        manifest = contents.manifest.is_some(),
                        seconds = clock.elapsed().as_secs_f64(),
                        "checksums verified and extracted"
                    );
                    if bundle_named
                        && let Err(e) = crate::catalog::check_logical_extracted(
                            &pg, &archive2, &contents, &dest2,
                        )
                    {
                        return Err(LogicalError::NotVerified {
                            name,
                            cause: Box::new(e),
                        });
                    }
                    let database = contents
                        .manifest
                        .as_ref()
                        .and_then(|m| m.info_str("database"))
                        .unwrap_or(&fallback_db)
                        .to_owned();
                    let found = find_dump(&dest2, &database)?;
                    let Some(dump) = found.dump else {
                        let names: Vec<String> = contents.top_level().into_iter().collect();
                        return Err(LogicalError::NoDump {
                            archive: archive2.clone(),
                            found: if names.is_empty() {
                                "an empty archive".into()
                            } else {
                                names.join(", ")
                            },
                        });
                    };
                    if let Some(g) = &found.globals {
                        scans.push(check_script(g, &globals_policy)?);
                    }
                    Opened {
                        manifest: contents.manifest,
                        dump,
                        globals: found.globals,
                        extensions: found.extensions,
                        scans: Vec::new(),
                    }
                }
                FileKind::Custom => Opened {
                    manifest: None,
                    dump: DumpForm::Custom(archive2.clone()),
                    globals: None,
                    extensions: None,
                    scans: Vec::new(),
                },
                FileKind::Sql | FileKind::SqlGz => Opened {
                    manifest: None,
                    dump: DumpForm::Sql(vec![archive2.clone()]),
                    globals: None,
                    extensions: None,
                    scans: Vec::new(),
                },
                FileKind::Other(what) => {
                    return Err(LogicalError::Unrecognised {
                        path: archive2.clone(),
                        found: what,
                    });
                }
            };
            tracing::info!(
                step = "validate",
                "reading the whole dump before anything is changed"
            );
            match &opened.dump {
                DumpForm::Dir(p) | DumpForm::Custom(p) => check_toc(&pg, p)?,
                DumpForm::Sql(files) => {
                    for f in files {
                        scans.push(check_script(f, &data_policy)?);
                    }
                }
            }
            Ok(Opened { scans, ..opened })
        })
        .await
        .map_err(|e| LogicalError::Internal(e.to_string()))?
    }

    fn req_pg(&self) -> PgBin {
        self.pg.clone()
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

    /// The restore proper, as a script of named steps. Everything is loaded into a scratch
    /// database (`<db>__pgkeep_restore`); only when that succeeded is it swapped in for the
    /// target, so a failed restore leaves the target as it was.
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
        let admin = Db::connect(&self.req.conn.with_db(admin_db(&database))).await?;
        tracing::info!(step = "lock", database = %database, "one restore per database at a time");
        let locked: bool = admin
            .client()
            .query_one(
                "select pg_try_advisory_lock(hashtext('pgkeep restore ' || $1::text))",
                &[&database],
            )
            .await
            .map_err(query_err("taking the restore lock"))?
            .get(0);
        if !locked {
            return Err(LogicalError::RestoreBusy { database });
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

        let scratch = side_name(&database, SCRATCH_SUFFIX);
        tracing::info!(step = "scratch", scratch = %scratch, "creating the scratch database the dump is loaded into");
        drop_database(&admin, &scratch).await?;
        let loaded = match self.create_scratch(&admin, &scratch).await {
            Ok(()) => self.load(&scratch, &opts, &mut errors).await,
            Err(e) => Err(e),
        };
        let (extensions_created, matviews_refreshed, matviews_unpopulated) = match loaded {
            Ok(l) => l,
            Err(e) => {
                self.req.progress.end();
                if let Err(d) = drop_database(&admin, &scratch).await {
                    tracing::warn!("could not drop the scratch database {scratch}: {d}");
                }
                return Err(LogicalError::ScratchFailed {
                    database,
                    scratch,
                    roles: if globals.is_some() {
                        " (roles created from globals.sql stay)"
                    } else {
                        ""
                    },
                    cause: Box::new(e),
                });
            }
        };

        tracing::info!(step = "swap", database = %database, "swapping the restored database in");
        let kept_old = match swap(
            &admin,
            &scratch,
            &database,
            self.target_exists,
            opts.keep_old,
        )
        .await
        {
            Ok(k) => k,
            Err(e) => {
                if let Err(d) = drop_database(&admin, &scratch).await {
                    tracing::warn!("could not drop the scratch database {scratch}: {d}");
                }
                return Err(LogicalError::ScratchFailed {
                    database,
                    scratch,
                    roles: "",
                    cause: Box::new(e.into()),
                });
            }
        };
        drop(admin);

        tracing::info!(step = "sanity", "counting rows");
        let db = Db::connect(&self.req.conn).await?;
        let sanity = db.sanity(false).await?;
        let skipped_statements = self
            .scans
            .iter()
            .flat_map(|s| &s.skipped)
            .map(|s| format!("line {}: {}", s.line, s.statement))
            .collect();
        let summary = RestoreSummary {
            source: self.archive.clone(),
            database,
            method: self.dump.method(),
            created_database: !self.target_exists,
            globals,
            extensions_created,
            matviews_refreshed,
            matviews_unpopulated,
            skipped_statements,
            passed_over: self.passed_over.clone(),
            kept_old,
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

    /// Create the scratch database: empty (from template0), with the target's owner, encoding,
    /// locale, connection limit, privileges, settings and comment when the target exists.
    async fn create_scratch(&self, admin: &Db, scratch: &str) -> Result<(), LogicalError> {
        let database = &self.req.conn.dbname;
        if !self.target_exists {
            return Ok(admin.create_database(scratch).await?);
        }
        let c = admin.client();
        let row = c
            .query_one(
                "select (to_jsonb(d) - 'datacl')::text, pg_get_userbyid(d.datdba)::text, \
                 pg_encoding_to_char(d.encoding)::text, shobj_description(d.oid, 'pg_database'), \
                 d.datacl is not null \
                 from pg_database d where d.datname = $1",
                &[database],
            )
            .await
            .map_err(query_err("reading the target database's properties"))?;
        let props: serde_json::Value =
            serde_json::from_str(row.get::<_, &str>(0)).unwrap_or_default();
        let owner: String = row.get(1);
        let encoding: String = row.get(2);
        let comment: Option<String> = row.get(3);
        let has_acl: bool = row.get(4);
        let text = |k: &str| props.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let mut create = format!(
            "create database {} owner {} template template0 encoding {}",
            quote_ident(scratch),
            quote_ident(&owner),
            crate::db::quote_literal(&encoding)
        );
        for (key, opt) in [("datcollate", "lc_collate"), ("datctype", "lc_ctype")] {
            if let Some(v) = text(key) {
                create.push_str(&format!(" {opt} {}", crate::db::quote_literal(&v)));
            }
        }
        let icu = text("daticulocale").or_else(|| text("datlocale"));
        match (text("datlocprovider").as_deref(), icu) {
            (Some("i"), Some(l)) => create.push_str(&format!(
                " locale_provider icu icu_locale {}",
                crate::db::quote_literal(&l)
            )),
            (Some("b"), Some(l)) => create.push_str(&format!(
                " locale_provider builtin builtin_locale {}",
                crate::db::quote_literal(&l)
            )),
            _ => {}
        }
        if let Some(n) = props.get("datconnlimit").and_then(|v| v.as_i64()) {
            create.push_str(&format!(" connection limit {n}"));
        }
        c.batch_execute(&create)
            .await
            .map_err(query_err("creating the scratch database"))?;
        let q = quote_ident(scratch);
        let mut extra = Vec::new();
        if has_acl {
            extra.push(format!("revoke all on database {q} from public"));
            let grants = c
                .query(
                    "select case when a.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(a.grantee)) end, \
                     a.privilege_type, a.is_grantable \
                     from pg_database d, aclexplode(d.datacl) a where d.datname = $1",
                    &[database],
                )
                .await
                .map_err(query_err("reading the target database's privileges"))?;
            for g in grants {
                let (who, what, grantable): (String, String, bool) = (g.get(0), g.get(1), g.get(2));
                extra.push(format!(
                    "grant {what} on database {q} to {who}{}",
                    if grantable { " with grant option" } else { "" }
                ));
            }
        }
        let settings = c
            .query(
                "select coalesce(quote_ident(pg_get_userbyid(nullif(s.setrole, 0))), ''), unnest(s.setconfig) \
                 from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = $1",
                &[database],
            )
            .await
            .map_err(query_err("reading the target database's settings"))?;
        for r in settings {
            let (role, setting): (String, String) = (r.get(0), r.get(1));
            let Some((name, value)) = setting.split_once('=') else {
                continue;
            };
            let target = if role.is_empty() {
                format!("alter database {q}")
            } else {
                format!("alter role {role} in database {q}")
            };
            extra.push(format!(
                "{target} set {} to {}",
                guc_name(name),
                guc_value(name, value)
            ));
        }
        if let Some(text) = comment {
            extra.push(format!(
                "comment on database {q} is {}",
                crate::db::quote_literal(&text)
            ));
        }
        for stmt in extra {
            c.batch_execute(&stmt)
                .await
                .map_err(query_err("copying the target database's properties"))?;
        }
        Ok(())
    }

    /// Extensions, data, ANALYZE and materialized views, into the scratch database.
    async fn load(
        &self,
        scratch: &str,
        opts: &RestoreOptions,
        errors: &mut Vec<String>,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>), LogicalError> {
        let conn = self.req.conn.with_db(scratch);
        let db = Db::connect(&conn).await?;
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
        let data_errors = self.restore_data(&conn, opts)?;
        self.req.progress.end();
        errors.extend(data_errors);

        tracing::info!(step = "analyze", "ANALYZE");
        db.analyze().await?;

        // pg_restore and pg_dump's scripts refresh the materialized views that held data, in
        // dependency order, and leave `WITH NO DATA` ones empty. MANIFEST.json records which
        // were populated: one the dump left empty although it was populated is refreshed here.
        let recorded: Option<BTreeMap<String, bool>> = self
            .manifest
            .as_ref()
            .and_then(|m| m.info.get(MATVIEWS_KEY))
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let now = db.matviews_populated().await?;
        let mut refreshed = Vec::new();
        let mut unpopulated = Vec::new();
        for mv in db.matviews_in_dependency_order().await? {
            let populated = now.get(&mv).copied().unwrap_or(false);
            let wanted = recorded
                .as_ref()
                .and_then(|r| r.get(&mv).copied())
                .unwrap_or(populated);
            if populated {
                refreshed.push(mv);
                continue;
            }
            if !wanted {
                unpopulated.push(mv);
                continue;
            }
            tracing::info!(step = "matviews", matview = %mv, "refreshing (populated at backup time)");
            match db
                .client()
                .batch_execute(&format!("refresh materialized view {mv}"))
                .await
            {
                Ok(()) => refreshed.push(mv),
                Err(e) => {
                    let msg = format!(
                        "refresh materialized view {mv}: {}",
                        e.as_db_error()
                            .map(|d| d.message().to_owned())
                            .unwrap_or_else(|| e.to_string())
                    );
                    tracing::warn!("{msg}");
                    errors.push(msg);
                    unpopulated.push(mv);
                }
            }
        }
        Ok((extensions_created, refreshed, unpopulated))
    }

    async fn apply_globals(
        &self,
        path: &Path,
        errors: &mut Vec<String>,
    ) -> Result<GlobalsOutcome, LogicalError> {
        // The same scan and filter as any plain SQL: statements touching the role pgkeep
        // connects as are left out (its password belongs to the Secret).
        let policy = Policy {
            database: admin_db(&self.req.conn.dbname).to_owned(),
            role: self.req.conn.user.clone(),
        };
        let mut filtered = Vec::new();
        let input = open_script(path)?;
        if let Err(e) = sqlscan::filter(input, &mut filtered, &policy) {
            return Err(match e {
                FilterError::Scan(error) => LogicalError::UnsafeSql {
                    path: path.to_owned(),
                    error,
                },
                FilterError::Read(e) | FilterError::Write(e) => LogicalError::DamagedInput {
                    path: path.to_owned(),
                    detail: e.to_string(),
                },
            });
        }
        let file = path.with_file_name(".globals.filtered.sql");
        fsutil::write_atomic(&file, &filtered, 0o600, true)?;
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
                    // The filter's `\restrict` line comes first: psql counts one line more.
                    let n = n.parse::<u64>().ok()?.saturating_sub(1);
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
    fn restore_data(
        &self,
        conn: &ConnParams,
        opts: &RestoreOptions,
    ) -> Result<Vec<String>, LogicalError> {
        let pg = &self.req.pg;
        let run_pg_restore = |path: &Path| -> Result<Vec<String>, LogicalError> {
            let mut cmd = conn
                .apply(pg.cmd("pg_restore"))
                .arg(format!("--dbname={}", conn.dbname))
                .arg(format!("--jobs={}", opts.jobs.max(1)));
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
                    errors.extend(self.run_sql(conn, f, opts.keep_going)?);
                }
                Ok(errors)
            }
        }
    }

    /// Stream a script through the filter of [`crate::sqlscan`] into psql (it was scanned in
    /// full before anything ran).
    fn run_sql(
        &self,
        conn: &ConnParams,
        file: &Path,
        keep_going: bool,
    ) -> Result<Vec<String>, LogicalError> {
        let policy = Policy {
            database: self.req.conn.dbname.clone(),
            role: self.req.conn.user.clone(),
        };
        let mut running = conn
            .apply(self.req.pg.cmd("psql"))
            .args(["-X", "-q", "-v", "VERBOSITY=terse"])
            .arg("-v")
            .arg(if keep_going {
                "ON_ERROR_STOP=0"
            } else {
                "ON_ERROR_STOP=1"
            })
            .stdin_piped()
            .spawn()?;
        let stdin = running.take_stdin().expect("stdin is piped");
        let input = open_script(file)?;
        match sqlscan::filter(input, io::BufWriter::with_capacity(1 << 16, stdin), &policy) {
            // psql stopped (ON_ERROR_STOP): its exit status says why.
            Ok(_) | Err(FilterError::Write(_)) => {}
            Err(FilterError::Scan(error)) => {
                return Err(LogicalError::UnsafeSql {
                    path: file.to_owned(),
                    error,
                });
            }
            Err(FilterError::Read(e)) => {
                return Err(LogicalError::DamagedInput {
                    path: file.to_owned(),
                    detail: e.to_string(),
                });
            }
        }
        let (status, stderr) = running.wait_status()?;
        if stderr.contains("invalid command \\restrict") {
            return Err(LogicalError::RestoreFailed {
                what: "psql",
                detail: "this psql does not know `\\restrict` (PostgreSQL 13.22, 14.19, 15.14, 16.10, 17.6 and 18 have it), which pgkeep runs uploaded scripts under; install newer client tools or point PGKEEP_PG_BIN at them".into(),
            });
        }
        let lines: Vec<String> = stderr
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("FATAL:"))
            .map(|l| format!("{}: {}", file.display(), redact(&script_line(l))))
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

/// `psql:<stdin>:N: ERROR: ...` → `line N-1: ERROR: ...` (psql counts the filter's `\restrict`
/// line too); other lines as they are.
fn script_line(l: &str) -> String {
    l.strip_prefix("psql:<stdin>:")
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, msg)| {
            Some(format!(
                "line {}: {msg}",
                n.parse::<u64>().ok()?.saturating_sub(1)
            ))
        })
        .unwrap_or_else(|| l.to_owned())
}

/// Drop a database when it exists, whoever is connected to it.
async fn drop_database(admin: &Db, name: &str) -> Result<(), LogicalError> {
    admin
        .client()
        .batch_execute(&format!(
            "drop database if exists {} with (force)",
            quote_ident(name)
        ))
        .await
        .map_err(query_err("dropping a database"))?;
    Ok(())
}

/// Put `scratch` in the place of `database`: the sessions of both ended and both renamed in one
/// transaction (retried while a session holds on), then the old one dropped, or kept as
/// `<db>__pgkeep_old_<stamp>`. Returns the kept name. When it fails, the old
/// database is as it was.
async fn swap(
    admin: &Db,
    scratch: &str,
    database: &str,
    exists: bool,
    keep_old: bool,
) -> Result<Option<String>, DbError> {
    let c = admin.client();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
    // A name no database has: an earlier restore killed after its swap (before it dropped the
    // old database) may have left one with the same stamp.
    let mut old = side_name(database, &format!("{OLD_INFIX}{stamp}"));
    for n in 2.. {
        let taken: bool = c
            .query_one(
                "select exists (select 1 from pg_database where datname = $1)",
                &[&old],
            )
            .await
            .map_err(query_err("choosing a name for the replaced database"))?
            .get(0);
        if !taken {
            break;
        }
        old = side_name(database, &format!("{OLD_INFIX}{stamp}_{n}"));
    }
    let q_old = quote_ident(&old);
    // One statement, one transaction: end the sessions of both databases (again and again
    // until none is left, for a pool that reconnects), then both renames. All or nothing: if a
    // session will not end, or pgkeep dies and the server ends the statement (it does so when it
    // cannot write to a dead client), the old database is as it was, open to connections. A
    // separately committed "no new connections" step would be left behind by a kill at the
    // wrong moment (found by tests/faults.rs).
    let (l_db, l_scratch) = (
        crate::db::quote_literal(database),
        crate::db::quote_literal(scratch),
    );
    let renames = if exists {
        format!(
            "execute format('alter database %I rename to %I', {l_db}, {}); \
             execute format('alter database %I rename to %I', {l_scratch}, {l_db});",
            crate::db::quote_literal(&old)
        )
    } else {
        format!("execute format('alter database %I rename to %I', {l_scratch}, {l_db});")
    };
    let swap = format!(
        "do $pgkeep_swap$ declare left_over int; begin \
         for i in 1..500 loop \
         perform pg_stat_clear_snapshot(); \
         perform pg_terminate_backend(pid) from pg_stat_activity \
         where datname in ({l_db}, {l_scratch}) and pid <> pg_backend_pid(); \
         perform pg_stat_clear_snapshot(); \
         select count(*) into left_over from pg_stat_activity \
         where datname in ({l_db}, {l_scratch}) and pid <> pg_backend_pid(); \
         exit when left_over = 0; \
         perform pg_sleep(0.01); \
         end loop; \
         {renames} \
         end $pgkeep_swap$"
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        match c.batch_execute(&swap).await {
            Ok(()) => break,
            Err(e) if attempt < 10 => {
                tracing::debug!("swap attempt {attempt} failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(query_err("swapping the restored database in")(e)),
        }
    }
    if !exists {
        return Ok(None);
    }
    if keep_old {
        tracing::info!(old = %old, "the replaced database is kept");
        return Ok(Some(old));
    }
    if let Err(e) = c
        .batch_execute(&format!("drop database {q_old} with (force)"))
        .await
    {
        tracing::warn!(
            "the restore is in place, but the replaced database {old} could not be dropped: {e}; drop it by hand"
        );
        return Ok(Some(old));
    }
    Ok(None)
}

/// A setting name for `SET`: each dotted part quoted.
fn guc_name(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// A setting's value as stored in pg_db_role_setting, for `SET name TO ...`: list settings
/// (search_path and the like) as a list of literals, the others as one literal.
fn guc_value(name: &str, value: &str) -> String {
    let lists = [
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "local_preload_libraries",
        "shared_preload_libraries",
    ];
    if !lists.contains(&name.to_ascii_lowercase().as_str()) {
        return crate::db::quote_literal(value);
    }
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() && !quoted => {}
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
        .iter()
        .map(|i| crate::db::quote_literal(i))
        .collect::<Vec<_>>()
        .join(", ")
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
