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
//! custom-format dump, or streams `*.sql` / `*.sql.gz` through the scanner's filter into psql)
//! while it counts and ANALYZEs each table whose data is in on one more connection
//! ([`early`]), ANALYZEs and counts the rest, refreshes the materialized views MANIFEST.json
//! records as populated that the dump left empty, and only then swaps the scratch database in for the target (the replaced one
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
use crate::db::{ConnParams, Db, DbError, query_err, quote_ident};
use crate::fsutil::{self, FsError, IoContext};
use crate::repo::{self, BackupKind, RepoError};
use crate::runmark;
use crate::sanity::{Rows, SanityReport};
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
    /// An incremental base backup whose chain does not hold (`backups verify`).
    #[error(transparent)]
    Chain(#[from] crate::chain::ChainError),
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
            | NotVerified { .. }
            | Chain(_) => ExitClass::Refused,
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
    crate::clock::now()
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

    /// Right after loading, over up to `jobs` connections, largest relation first: what a
    /// database-wide `ANALYZE` covers (every table, partitioned table and materialized view,
    /// system catalogs included, each once: a partitioned table is named with its whole tree,
    /// which ANALYZE of it covers, so its partitions are not named again; from PostgreSQL 18
    /// on, when ANALYZE of a table also takes its inheritance children, an ordinary table is
    /// named `only`), and the exact row count of every user table and partitioned table, keyed
    /// by [`crate::sanity::qualified`] name. One queue for both keeps both connections busy to
    /// the end: the biggest table's count and its ANALYZE run side by side. An ANALYZE that
    /// fails fails the restore, as the database-wide one did; a count that fails is only
    /// missing from the result (the report counts it again, after the swap). What `early`
    /// holds (taken beside pg_restore, see [`early`]) is not taken again.
    async fn analyze_and_count(
        &self,
        jobs: usize,
        early: early::Early,
    ) -> Result<BTreeMap<String, i64>, DbError> {
        let rels = self
            .client()
            .query(
                &format!(
                    "select n.nspname::text, c.relname::text, c.relkind::text, \
                     not c.relispartition, c.relkind in ('r', 'p') and {users}, \
                     coalesce(case when c.relkind = 'p' then (select sum(pg_relation_size(t.relid)) \
                     from pg_partition_tree(c.oid) t) else pg_relation_size(c.oid) end, 0)::int8, \
                     current_setting('server_version_num')::int >= 180000 \
                     from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                     where c.relkind in ('r', 'p', 'm') \
                     and n.nspname not like 'pg\\_temp\\_%' and n.nspname not like 'pg\\_toast\\_temp\\_%'",
                    users = crate::sanity::USER_SCHEMAS
                ),
                &[],
            )
            .await
            .map_err(query_err("listing the tables to ANALYZE and count"))?;
        // (size, statement, the name when it is a count)
        let mut todo: Vec<(i64, String, Option<String>)> = Vec::new();
        for r in &rels {
            let name = crate::sanity::qualified(r.get(0), r.get(1));
            let kind: String = r.get(2);
            let size: i64 = r.get(5);
            if r.get::<_, bool>(4) && !early.counts.contains_key(&name) {
                let count = crate::sanity::count_statement(&name, &kind);
                todo.push((size, count, Some(name.clone())));
            }
            if r.get::<_, bool>(3) && !early.analyzed.contains(&name) {
                let only = if kind == "r" && r.get::<_, bool>(6) {
                    "only "
                } else {
                    ""
                };
                todo.push((size, format!("analyze {only}{name}"), None));
            }
        }
        todo.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let statements: Vec<String> = todo.iter().map(|(_, sql, _)| sql.clone()).collect();
        let results =
            crate::db::fan_out(self, jobs, &statements, "ANALYZE and row counts", false).await;
        let mut counts = early.counts;
        for ((_, _, counted), result) in todo.into_iter().zip(results) {
            match (counted, result) {
                (Some(name), Ok(Some(n))) => {
                    counts.insert(name, n);
                }
                (Some(_), Err(e)) => tracing::warn!("{e} (counted again after the swap)"),
                (None, Err(e)) => return Err(e),
                _ => {}
            }
        }
        Ok(counts)
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

mod apply;
mod backup;
mod early;
mod restore;
mod roundtrip;
mod staging;

pub use backup::*;
pub use restore::*;
pub use roundtrip::*;
pub use staging::*;

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
    fn an_unmarked_staging_of_a_dead_run_on_this_host_is_removed_at_once() {
        // Killed between creating its directory and writing the pid file: the name says which
        // process made it (seen on a loaded machine: the next backup left it for 60 s).
        let t = tempfile::tempdir().unwrap();
        let host = runmark::this_host();
        let dead = t.path().join(format!(".backup-{host}-999999999.staging"));
        std::fs::create_dir(&dead).unwrap();
        let ours = t
            .path()
            .join(format!(".{}.staging", runmark::run_label("backup")));
        std::fs::create_dir(&ours).unwrap();
        let other_host = t.path().join(".backup-another-pod-999999999.staging");
        std::fs::create_dir(&other_host).unwrap();
        let removed = clean_stale(t.path()).unwrap();
        assert_eq!(removed, [format!(".backup-{host}-999999999.staging")]);
        assert!(ours.exists(), "this run's own, being created, stays");
        assert!(other_host.exists(), "another pod's young directory stays");
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
