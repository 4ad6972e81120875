//! Restore, second half: loading a prepared dump into a scratch database and swapping it in
//! for the target ([`PreparedRestore`]).

use super::*;

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

        report_replaced_databases(&admin, &database).await?;
        let scratch = side_name(&database, SCRATCH_SUFFIX);
        tracing::info!(step = "scratch", scratch = %scratch, "creating the scratch database the dump is loaded into");
        drop_database(&admin, &scratch).await?;
        let loaded = match self.create_scratch(&admin, &scratch).await {
            Ok(()) => self.load(&scratch, &opts, &mut errors).await,
            Err(e) => Err(e),
        };
        let Loaded {
            extensions_created,
            matviews_refreshed,
            matviews_unpopulated,
            counts,
        } = match loaded {
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

        // The rows as restored: counted in the scratch database right after the load (the
        // swap only renamed it); any count missing from there is taken now.
        tracing::info!(step = "sanity", "the restored database's report");
        let db = Db::connect(&self.req.conn).await?;
        let sanity = db.sanity(Rows::Known(&counts)).await?;
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
    ) -> Result<Loaded, LogicalError> {
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
        let (data_errors, early) = match &self.dump {
            DumpForm::Dir(p) | DumpForm::Custom(p) => {
                let (pg, c, o, path) = (self.req.pg.clone(), conn.clone(), opts.clone(), p.clone());
                let restore = async move {
                    tokio::task::spawn_blocking(move || pg_restore(&pg, &c, &o, &path))
                        .await
                        .map_err(|e| LogicalError::Internal(e.to_string()))?
                };
                early::beside(&db, opts.jobs, restore).await
            }
            DumpForm::Sql(files) => {
                let run = || -> Result<Vec<String>, LogicalError> {
                    let mut errors = Vec::new();
                    for f in files {
                        errors.extend(self.run_sql(&conn, f, opts.keep_going)?);
                    }
                    Ok(errors)
                };
                (run(), early::Early::default())
            }
        };
        self.req.progress.end();
        errors.extend(data_errors?);

        tracing::info!(
            step = "analyze",
            jobs = opts.jobs,
            "ANALYZE and exact row counts"
        );
        let counts = db.analyze_and_count(opts.jobs, early).await?;

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
                        crate::db::describe(&e)
                    );
                    tracing::warn!("{msg}");
                    errors.push(msg);
                    unpopulated.push(mv);
                }
            }
        }
        Ok(Loaded {
            extensions_created,
            matviews_refreshed: refreshed,
            matviews_unpopulated: unpopulated,
            counts,
        })
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

/// `pg_restore -j N` of a directory or custom-format dump into `conn`'s database; returns the
/// errors passed over with --keep-going.
fn pg_restore(
    pg: &PgBin,
    conn: &ConnParams,
    opts: &RestoreOptions,
    path: &Path,
) -> Result<Vec<String>, LogicalError> {
    let mut cmd = conn
        .apply(pg.cmd("pg_restore"))
        .arg(format!("--dbname={}", conn.dbname))
        .arg(format!("--jobs={}", opts.jobs.max(1)));
    if !opts.keep_going {
        cmd = cmd.arg("--exit-on-error");
    }
    // Every table is ANALYZEd after loading, which replaces statistics a dump carries
    // (PostgreSQL 18's `pg_dump --statistics`): restoring them would be work for nothing, and
    // restored after a table's ANALYZE beside pg_restore ([`super::early`]) they would replace
    // it.
    if pg.major_version("pg_restore")? >= 18 {
        cmd = cmd.arg("--no-statistics");
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
}

/// What loading the scratch database did, for the summary.
struct Loaded {
    extensions_created: Vec<String>,
    matviews_refreshed: Vec<String>,
    matviews_unpopulated: Vec<String>,
    /// Each user table's exact row count, taken right after the load.
    counts: BTreeMap<String, i64>,
}

/// `psql:<stdin>:N: ERROR: ...` → `line N-1: ERROR: ...` (psql counts the filter's `\restrict`
/// line too); other lines as they are.
pub(super) fn script_line(l: &str) -> String {
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
pub(super) async fn drop_database(admin: &Db, name: &str) -> Result<(), LogicalError> {
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

/// Say which databases earlier restores set aside and left (`--keep-old`, or a restore killed
/// between its swap and the drop of the replaced database): each holds the data as it was before
/// that restore, and nothing but a person drops it.
pub(super) async fn report_replaced_databases(admin: &Db, database: &str) -> Result<(), DbError> {
    // Cut as `swap` cuts a long name (to make room for the 15-character stamp).
    let stamp_room = side_name(database, &format!("{OLD_INFIX}{:015}", 0));
    let prefix = &stamp_room[..stamp_room.len() - 15];
    let names: Vec<String> = admin
        .client()
        .query(
            "select datname::text from pg_database where starts_with(datname, $1) order by 1",
            &[&prefix],
        )
        .await
        .map_err(query_err("listing replaced databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !names.is_empty() {
        tracing::warn!(
            "databases set aside by earlier restores of {database} are still here: {}; each holds \
             {database} as it was before that restore. Drop them when they are no longer needed \
             (DROP DATABASE <name>)",
            names.join(", ")
        );
    }
    Ok(())
}

/// Put `scratch` in the place of `database`: the sessions of both ended and both renamed in one
/// transaction (retried while a session holds on), then the old one dropped, or kept as
/// `<db>__pgkeep_old_<stamp>`. Returns the kept name. When it fails, the old
/// database is as it was.
pub(super) async fn swap(
    admin: &Db,
    scratch: &str,
    database: &str,
    exists: bool,
    keep_old: bool,
) -> Result<Option<String>, DbError> {
    let c = admin.client();
    let stamp = crate::clock::now().strftime("%Y%m%dT%H%M%S").to_string();
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
pub(super) fn guc_name(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// A setting's value as stored in pg_db_role_setting, for `SET name TO ...`: list settings
/// (search_path and the like) as a list of literals, the others as one literal.
pub(super) fn guc_value(name: &str, value: &str) -> String {
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
