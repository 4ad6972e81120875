//! Restore, first half: what to restore from (a bundle, an upload, a file), opening and
//! checking it, finding the dump in it ([`LogicalRestore::prepare`]).

use super::*;

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
pub(super) enum DumpForm {
    Dir(PathBuf),
    Custom(PathBuf),
    Sql(Vec<PathBuf>),
}

impl DumpForm {
    pub(super) fn method(&self) -> &'static str {
        match self {
            DumpForm::Dir(_) => "pg_restore (directory format)",
            DumpForm::Custom(_) => "pg_restore (custom format)",
            DumpForm::Sql(_) => "psql (plain SQL)",
        }
    }
}

/// A verified, extracted dump and the facts about the target, before anything is changed.
pub struct PreparedRestore {
    pub(super) req: LogicalRestore,
    pub(super) archive: PathBuf,
    pub(super) manifest: Option<Manifest>,
    pub(super) dump: DumpForm,
    pub(super) globals: Option<PathBuf>,
    pub(super) extensions: Option<PathBuf>,
    pub(super) target_exists: bool,
    pub(super) target_objects: i64,
    /// What the scans of the plain SQL scripts found (statements skipped).
    pub(super) scans: Vec<ScanReport>,
    /// Bundles passed over for "newest" because they failed verification.
    pub(super) passed_over: Vec<String>,
    pub(super) _staging: Staging,
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
pub(super) fn admin_db(database: &str) -> &'static str {
    if database == "postgres" {
        "template1"
    } else {
        "postgres"
    }
}

/// Read a plain SQL script (`.sql` or `.sql.gz`, by content) as a stream.
pub(super) fn open_script(file: &Path) -> Result<Box<dyn io::BufRead + Send>, LogicalError> {
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
pub(super) fn check_script(file: &Path, policy: &Policy) -> Result<ScanReport, LogicalError> {
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
pub(super) fn check_toc(pg: &PgBin, dump: &Path) -> Result<(), LogicalError> {
    match pg.cmd("pg_restore").arg("--list").arg(dump).output_string() {
        Ok(_) => Ok(()),
        Err(e) => Err(LogicalError::DamagedInput {
            path: dump.to_owned(),
            detail: format!("pg_restore --list cannot read it: {e}"),
        }),
    }
}

/// A verification failure (the candidate is damaged), as opposed to a failure to look at it.
pub(super) fn is_damage(e: &LogicalError) -> bool {
    matches!(
        e,
        LogicalError::NotVerified { .. }
            | LogicalError::DamagedInput { .. }
            | LogicalError::NoDump { .. }
            | LogicalError::Bundle(_)
    )
}

/// What [`LogicalRestore::open`] found in one archive.
pub(super) struct Opened {
    pub(super) manifest: Option<Manifest>,
    pub(super) dump: DumpForm,
    pub(super) globals: Option<PathBuf>,
    pub(super) extensions: Option<PathBuf>,
    pub(super) scans: Vec<ScanReport>,
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
                    // A pgkeep bundle is restored from its directory dump: its plain-SQL
                    // twin is verified with every other member but not written.
                    let keep = |member: &str| {
                        !(bundle_named && !member.contains('/') && member.ends_with(".sql.gz"))
                    };
                    let contents = match bundle::extract_only(&archive2, &dest2, &keep) {
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

pub(super) struct Found {
    pub(super) dump: Option<DumpForm>,
    pub(super) globals: Option<PathBuf>,
    pub(super) extensions: Option<PathBuf>,
}

/// Look for a dump in an extracted tree: `<db>.dir`, any `*.dir` (or other directory) holding a
/// `toc.dat`, a custom-format `*.dump`, then `*.sql` / `*.sql.gz` files.
pub(super) fn find_dump(root: &Path, database: &str) -> Result<Found, LogicalError> {
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
