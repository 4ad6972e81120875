//! The checks a restore takes while pg_restore is still running: each ordinary table's exact
//! row count and its ANALYZE, on one extra connection, in the CPU time a parallel pg_restore
//! leaves idle (its one-connection schema step, the tail of its index builds).
//!
//! **When a table's data is in** is read from the catalog, never from pg_restore's output (a
//! dump's names are untrusted text): a parallel pg_restore loads each table it created in one
//! transaction that truncates it first, which gives the table a new relfilenode, so a
//! relfilenode other than the table's oid means its rows are committed. A table qualifies when
//! that is so, it is no partition (rows routed through a partitioned table may arrive in it from
//! another table's data), no extension's member (pg_restore appends an extension's
//! configuration rows without truncating) and no pg_restore session has held a lock on it at
//! two polls in a row, nor does one when its check starts (its index builds, which start as
//! soon as its data is in, should not find a check in their way).
//!
//! **What counts afterwards.** Just before each check the table's name, relfilenode and size
//! are read, and for ANALYZE its indexes on expressions and its extended statistics (ANALYZE
//! builds statistics for both). When pg_restore is done, a check stands only if those are
//! unchanged: nothing was loaded into the table or rewritten since, it was not renamed, and no
//! object ANALYZE covers was created after it. Statistics a dump carries (PostgreSQL 18's
//! `pg_dump --statistics`) are not restored (see `pg_restore` in `apply.rs`), so none replace
//! an ANALYZE. Everything else (failed, cancelled or outdated checks, partitions, partitioned
//! tables and inheritance parents for ANALYZE, materialized views, catalogs) is taken after
//! pg_restore, as before. A table's rows come from its one data item: a hand-made dump whose
//! later items insert into a table already loaded, within its existing pages, would be
//! reported with the rows its data item loaded.
//!
//! **The checks give way to pg_restore.** The connection waits at most 50 ms for a lock
//! (`lock_timeout`), starts no parallel workers, reads with `row_security = off` (a count sees
//! every row or fails and is taken again), and a check that a pg_restore session waits behind
//! is cancelled at the next poll and left for afterwards. A poll that takes long (many
//! tables) spaces the next ones out, so the watching never takes more than a fifth of a core.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::*;

/// How often the catalog is read while pg_restore runs.
const POLL: Duration = Duration::from_millis(25);

/// The checks taken while pg_restore ran that still hold after it.
#[derive(Debug, Default)]
pub(super) struct Early {
    /// Exact row counts, keyed by [`crate::sanity::qualified`] name.
    pub(super) counts: BTreeMap<String, i64>,
    /// Tables ANALYZEd, by [`crate::sanity::qualified`] name.
    pub(super) analyzed: BTreeSet<String>,
}

/// A table's state that a check depends on, read just before the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    relfilenode: i64,
    size: i64,
    expr_indexes: i64,
    ext_stats: i64,
}

#[derive(Debug, Clone)]
struct Table {
    oid: i64,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Count,
    Analyze,
}

/// One check taken, with the table's state just before it.
#[derive(Debug)]
struct Taken {
    table: Table,
    check: Check,
    mark: Mark,
    /// The count (`Check::Count`).
    rows: i64,
}

/// An oid read as `int8` back to its type (oids are 32-bit; out of range reads as 0, no table's).
fn oid(oid: i64) -> u32 {
    u32::try_from(oid).unwrap_or(0)
}

/// Run `restore` (pg_restore with `jobs` connections, into `db`'s database) and take the checks
/// beside it. With fewer than two jobs pg_restore loads no table into a new relfilenode, so
/// nothing is taken early.
pub(super) async fn beside<T>(
    db: &Db,
    jobs: usize,
    restore: impl Future<Output = Result<T, LogicalError>>,
) -> (Result<T, LogicalError>, Early) {
    if jobs < 2 {
        return (restore.await, Early::default());
    }
    let work = match open_work(db.params()).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("the checks wait for pg_restore to finish: {e}");
            return (restore.await, Early::default());
        }
    };
    let mut watch = Watch::default();
    let mut taken: Vec<Taken> = Vec::new();
    let mut next_poll = tokio::time::Instant::now() + POLL;
    let mut running: Option<Running<'_>> = None;
    tokio::pin!(restore);
    let outcome = loop {
        tokio::select! {
            biased;
            out = &mut restore => break out,
            done = async { running.as_mut().expect("guarded by is_some").await }, if running.is_some() => {
                match done {
                    Ok(t) => taken.push(t),
                    Err(e) => tracing::debug!("a check beside pg_restore is left for afterwards: {e}"),
                }
                running = watch.next(&work);
            }
            _ = tokio::time::sleep_until(next_poll) => {
                let clock = tokio::time::Instant::now();
                let step = if running.is_some() {
                    give_way(db, work.pid).await
                } else {
                    let polled = watch.poll(db, work.pid).await;
                    running = watch.next(&work);
                    polled
                };
                if let Err(e) = step {
                    tracing::warn!("the checks wait for pg_restore to finish: {e}");
                    if running.take().is_some() {
                        // Dropping the future leaves the statement running in the server.
                        work.cancel().await;
                    }
                    break restore.await;
                }
                next_poll = tokio::time::Instant::now() + POLL.max(clock.elapsed() * 4);
            }
        }
    };
    if outcome.is_err() {
        if running.take().is_some() {
            work.cancel().await;
        }
        return (outcome, Early::default());
    }
    // The check in flight is finished: its work is done either way.
    if let Some(r) = running.take()
        && let Ok(t) = r.await
    {
        taken.push(t);
    }
    let early = match keep(db, taken).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("the checks taken beside pg_restore are taken again: {e}");
            Early::default()
        }
    };
    (outcome, early)
}

/// The extra connection and its backend's pid.
struct Work {
    db: Db,
    pid: i32,
}

impl Work {
    /// Cancel the statement running on the connection, if any.
    async fn cancel(&self) {
        let token = self.db.client().cancel_token();
        if let Err(e) = token.cancel_query(tokio_postgres::NoTls).await {
            tracing::debug!("could not cancel a check beside pg_restore: {e}");
        }
    }
}

async fn open_work(params: &ConnParams) -> Result<Work, DbError> {
    let db = Db::connect(params).await?;
    db.client()
        .batch_execute(
            "set lock_timeout = '50ms'; set max_parallel_workers_per_gather = 0; \
             set row_security = off; set application_name = 'pgkeep checks'",
        )
        .await
        .map_err(query_err("setting up the checks' connection"))?;
    let pid = db
        .client()
        .query_one("select pg_backend_pid()", &[])
        .await
        .map_err(query_err("setting up the checks' connection"))?
        .get(0);
    Ok(Work { db, pid })
}

/// Cancel the check when a pg_restore session waits behind it.
async fn give_way(db: &Db, work_pid: i32) -> Result<(), DbError> {
    let cancelled = db
        .client()
        .query(
            "select pg_cancel_backend($1) from pg_stat_activity a \
             where a.datname = current_database() and a.backend_type = 'client backend' \
             and a.wait_event_type = 'Lock' and $1 = any(pg_blocking_pids(a.pid)) limit 1",
            &[&work_pid],
        )
        .await
        .map_err(query_err(
            "looking for pg_restore sessions waiting behind a check",
        ))?;
    if !cancelled.is_empty() {
        tracing::debug!("a check gave way to pg_restore");
    }
    Ok(())
}

/// A check under way on the checks' connection.
type Running<'a> = Pin<Box<dyn Future<Output = Result<Taken, DbError>> + Send + 'a>>;

/// Which tables are loaded and quiet, and the checks waiting for the connection.
#[derive(Default)]
struct Watch {
    /// Loaded tables seen without a pg_restore lock at the last poll.
    quiet: BTreeSet<i64>,
    /// Tables whose checks are queued or taken.
    queued: BTreeSet<i64>,
    queue: VecDeque<(Table, Check)>,
}

impl Watch {
    /// Start the next queued check, if any.
    fn next<'a>(&mut self, work: &'a Work) -> Option<Running<'a>> {
        let (table, check) = self.queue.pop_front()?;
        Some(Box::pin(take(work, table, check)))
    }

    async fn poll(&mut self, db: &Db, work_pid: i32) -> Result<(), DbError> {
        let rows = db
            .client()
            .query(
                &format!(
                    "select c.oid::int8, n.nspname::text, c.relname::text, c.relhassubclass, \
                     c.oid in ({LOCKED_BY_OTHERS}) \
                     from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                     where c.relkind = 'r' and not c.relispartition and c.relfilenode <> c.oid \
                     and {users} and not exists (select 1 from pg_depend d \
                       where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')",
                    users = crate::sanity::USER_SCHEMAS
                ),
                &[&work_pid],
            )
            .await
            .map_err(query_err("looking for tables pg_restore has loaded"))?;
        let mut quiet = BTreeSet::new();
        for r in rows {
            let oid: i64 = r.get(0);
            if self.queued.contains(&oid) || r.get::<_, bool>(4) {
                continue;
            }
            if !self.quiet.contains(&oid) {
                quiet.insert(oid);
                continue;
            }
            let table = Table {
                oid,
                name: crate::sanity::qualified(r.get(1), r.get(2)),
            };
            self.queued.insert(oid);
            self.queue.push_back((table.clone(), Check::Count));
            // ANALYZE of a parent of old-style inheritance covers its children too: after.
            if !r.get::<_, bool>(3) {
                self.queue.push_back((table, Check::Analyze));
            }
        }
        self.quiet = quiet;
        Ok(())
    }
}

/// Each table's [`Mark`] (columns 0-3), its oid, name and whether it has inheritance children.
const MARK: &str = "select c.relfilenode::int8, coalesce(pg_relation_size(c.oid), -1), \
     (select count(*) from pg_index i where i.indrelid = c.oid and i.indexprs is not null), \
     (select count(*) from pg_statistic_ext s where s.stxrelid = c.oid), c.oid::int8, \
     n.nspname::text, c.relname::text, c.relhassubclass \
     from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = any($1::oid[])";

/// The state a check depends on, and whether the table is still the one checked: its name,
/// whether it has inheritance children.
fn mark(r: &tokio_postgres::Row) -> (Mark, String, bool) {
    (
        Mark {
            relfilenode: r.get(0),
            size: r.get(1),
            expr_indexes: r.get(2),
            ext_stats: r.get(3),
        },
        crate::sanity::qualified(r.get(5), r.get(6)),
        r.get(7),
    )
}

/// The relations of this database that a client session other than the asking one and `$1`
/// (the checks' connection, when the watcher asks) holds a lock on: pg_restore is at them.
/// The watcher holds none on a user table.
const LOCKED_BY_OTHERS: &str = "select l.relation from pg_locks l \
     join pg_stat_activity a on a.pid = l.pid \
     where l.locktype = 'relation' and l.relation is not null \
     and l.database = (select oid from pg_database where datname = current_database()) \
     and a.backend_type = 'client backend' and a.pid <> pg_backend_pid() and a.pid <> $1";

/// One check on the extra connection, the table's state read just before it.
async fn take(work: &Work, table: Table, check: Check) -> Result<Taken, DbError> {
    let c = work.db.client();
    let clock = std::time::Instant::now();
    let oid = oid(table.oid);
    let busy: bool = c
        .query_one(
            &format!("select $2::oid in ({LOCKED_BY_OTHERS})"),
            &[&work.pid, &oid],
        )
        .await
        .map_err(query_err("looking at a table's locks before a check"))?
        .get(0);
    if busy {
        return Err(DbError::Query {
            what: "a check beside pg_restore",
            message: format!("{} is in use by pg_restore again", table.name),
        });
    }
    let before = c
        .query_one(MARK, &[&vec![oid]])
        .await
        .map_err(query_err("reading a table's state before a check"))?;
    let (mark, _, _) = mark(&before);
    let rows = match check {
        Check::Count => c
            .query_one(&crate::sanity::count_statement(&table.name, "r"), &[])
            .await
            .map_err(query_err("counting rows beside pg_restore"))?
            .get(0),
        Check::Analyze => {
            c.batch_execute(&format!("analyze {}", table.name))
                .await
                .map_err(query_err("ANALYZE beside pg_restore"))?;
            0
        }
    };
    tracing::debug!(
        table = %table.name,
        ?check,
        seconds = clock.elapsed().as_secs_f64(),
        "check taken beside pg_restore"
    );
    Ok(Taken {
        table,
        check,
        mark,
        rows,
    })
}

/// The checks that still hold now that pg_restore is done (see the module docs).
async fn keep(db: &Db, taken: Vec<Taken>) -> Result<Early, DbError> {
    let oids: Vec<u32> = taken.iter().map(|t| oid(t.table.oid)).collect();
    let now: BTreeMap<i64, (Mark, String, bool)> = db
        .client()
        .query(MARK, &[&oids])
        .await
        .map_err(query_err("reading the tables' state after pg_restore"))?
        .iter()
        .map(|r| (r.get::<_, i64>(4), mark(r)))
        .collect();
    let mut early = Early::default();
    let mut outdated = 0;
    for t in taken {
        let holds = now.get(&t.table.oid).is_some_and(|(m, name, parent)| {
            *name == t.table.name
                && t.mark.relfilenode != t.table.oid
                && m.relfilenode == t.mark.relfilenode
                && m.size == t.mark.size
                && (t.check == Check::Count
                    || (!parent
                        && m.expr_indexes == t.mark.expr_indexes
                        && m.ext_stats == t.mark.ext_stats))
        });
        match (holds, t.check) {
            (false, _) => outdated += 1,
            (true, Check::Count) => {
                early.counts.insert(t.table.name, t.rows);
            }
            (true, Check::Analyze) => {
                early.analyzed.insert(t.table.name);
            }
        }
    }
    tracing::info!(
        counts = early.counts.len(),
        analyzed = early.analyzed.len(),
        outdated,
        "checks taken beside pg_restore"
    );
    Ok(early)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(c: &pgkeep_testkit::TempCluster) -> ConnParams {
        let mut conn = ConnParams::from_settings(&crate::settings::Settings::default());
        conn.host = c.run_dir().display().to_string();
        conn.port = c.port();
        conn.with_db("postgres")
    }

    /// Create `name` with `rows` rows loaded the way a parallel pg_restore loads a table it
    /// created: truncated and filled in one transaction (a new relfilenode).
    fn loaded(c: &pgkeep_testkit::TempCluster, name: &str, rows: u32) {
        c.psql_script(
            "postgres",
            &format!(
                "create table {name}(id int, v text) with (autovacuum_enabled = off);
                 begin; truncate {name};
                 insert into {name} select g, md5(g::text) from generate_series(1, {rows}) g;
                 commit;"
            ),
        );
    }

    async fn table(db: &Db, name: &str) -> Table {
        let oid: i64 = db
            .client()
            .query_one(&format!("select '{name}'::regclass::oid::int8"), &[])
            .await
            .unwrap()
            .get(0);
        Table {
            oid,
            name: crate::sanity::qualified("public", name),
        }
    }

    #[tokio::test]
    async fn a_check_stands_only_while_its_table_is_as_it_was() {
        let c = pgkeep_testkit::TempCluster::start();
        for t in ["kept", "grown", "reloaded", "indexed", "extended"] {
            loaded(&c, t, 100);
        }
        // Filled without a new relfilenode: nothing says its data is in.
        c.psql_script(
            "postgres",
            "create table unmarked(id int, v text); insert into unmarked select g, 'x' from generate_series(1, 100) g;",
        );
        let db = Db::connect(&conn(&c)).await.unwrap();
        let work = open_work(db.params()).await.unwrap();
        let mut taken = Vec::new();
        for t in [
            "kept", "grown", "reloaded", "indexed", "extended", "unmarked",
        ] {
            for check in [Check::Count, Check::Analyze] {
                taken.push(take(&work, table(&db, t).await, check).await.unwrap());
            }
        }
        assert!(
            taken
                .iter()
                .all(|t| t.check == Check::Analyze || t.rows == 100)
        );
        c.psql_script(
            "postgres",
            "insert into grown select g, md5(g::text) from generate_series(1, 1000) g;
             begin; truncate reloaded; insert into reloaded select g, 'x' from generate_series(1, 100) g; commit;
             create index on indexed (lower(v));
             create index on extended (id);
             create statistics extended_s on id, v from extended;",
        );
        let early = keep(&db, taken).await.unwrap();
        let q = |t: &str| crate::sanity::qualified("public", t);
        assert_eq!(
            early.counts,
            BTreeMap::from([(q("extended"), 100), (q("indexed"), 100), (q("kept"), 100)]),
            "a count stands while the table has its relfilenode and size"
        );
        assert_eq!(
            early.analyzed,
            BTreeSet::from([q("kept")]),
            "ANALYZE also needs the expression indexes and extended statistics it saw"
        );
    }

    #[tokio::test]
    async fn checks_are_taken_beside_the_restore_on_quiet_loaded_tables() {
        let c = pgkeep_testkit::TempCluster::start();
        loaded(&c, "first", 5000);
        loaded(&c, "second", 10);
        loaded(&c, "busy", 10);
        c.psql_script(
            "postgres",
            "create table partitioned(id int) partition by range (id);
             create table part1 partition of partitioned for values from (0) to (100);
             begin; truncate part1; insert into part1 values (1); commit;",
        );
        let db = Db::connect(&conn(&c)).await.unwrap();
        // A pg_restore session holding a lock on `busy` for the whole restore.
        let restorer = Db::connect(&conn(&c)).await.unwrap();
        restorer
            .client()
            .batch_execute("begin; lock table busy in access share mode")
            .await
            .unwrap();
        let watcher = Db::connect(&conn(&c)).await.unwrap();
        // "pg_restore" runs until both quiet tables have been analyzed by the checks.
        let restore = async {
            for _ in 0..600 {
                let n: i64 = watcher
                    .client()
                    .query_one(
                        "select count(*) from pg_stat_user_tables where relname in ('first', 'second') and last_analyze is not null",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n == 2 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(LogicalError::Internal(
                "no ANALYZE beside the restore in 30 s".into(),
            ))
        };
        let (out, early) = beside(&db, 2, restore).await;
        out.unwrap();
        let q = |t: &str| crate::sanity::qualified("public", t);
        assert_eq!(
            early.counts,
            BTreeMap::from([(q("first"), 5000), (q("second"), 10)]),
            "not the locked table, not a partition"
        );
        assert_eq!(early.analyzed, BTreeSet::from([q("first"), q("second")]));
        restorer.client().batch_execute("commit").await.unwrap();
        // One job: pg_restore loads nothing into a new relfilenode, nothing is watched.
        let (out, early) = beside(&db, 1, async { Ok(()) }).await;
        out.unwrap();
        assert!(early.counts.is_empty() && early.analyzed.is_empty());
    }
    #[tokio::test]
    async fn a_check_a_restore_session_waits_behind_is_cancelled() {
        let c = pgkeep_testkit::TempCluster::start();
        loaded(&c, "shared", 10);
        let db = Db::connect(&conn(&c)).await.unwrap();
        let work = open_work(db.params()).await.unwrap();
        // A check that holds its lock on `shared` for long.
        let check = work
            .db
            .client()
            .query("select pg_sleep(60) from only shared limit 1", &[]);
        let restorer = Db::connect(&conn(&c)).await.unwrap();
        let wait_for = |sql: &'static str| {
            let db = &db;
            async move {
                for _ in 0..400 {
                    let n: i64 = db.client().query_one(sql, &[]).await.unwrap().get(0);
                    if n > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                panic!("timed out waiting for: {sql}");
            }
        };
        let steps = async {
            wait_for("select count(*) from pg_stat_activity where application_name = 'pgkeep checks' and state = 'active'").await;
            // A pg_restore session wants `shared` for itself (an ADD PRIMARY KEY, say).
            let lock = restorer
                .client()
                .batch_execute("begin; lock table shared in access exclusive mode");
            let nudge = async {
                wait_for("select count(*) from pg_stat_activity where wait_event_type = 'Lock'")
                    .await;
                give_way(&db, work.pid).await.unwrap();
            };
            let (locked, ()) = tokio::join!(lock, nudge);
            locked.unwrap();
        };
        let (checked, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(check, steps)
        })
        .await
        .expect("the waiting session got its lock");
        let err = checked.expect_err("the check was cancelled");
        assert!(
            crate::db::describe(&err).contains("canceling statement"),
            "{err}"
        );
        // Nothing is cancelled while nobody waits.
        restorer.client().batch_execute("commit").await.unwrap();
        let quiet_check = work
            .db
            .client()
            .query("select pg_sleep(0.5) from only shared limit 1", &[]);
        let nudge = async {
            wait_for("select count(*) from pg_stat_activity where application_name = 'pgkeep checks' and state = 'active'").await;
            give_way(&db, work.pid).await.unwrap();
        };
        let (quiet, ()) = tokio::join!(quiet_check, nudge);
        assert_eq!(quiet.unwrap().len(), 1, "not cancelled");
    }
}
