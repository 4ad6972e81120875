//! The seed's `pg.sanity` ("schemas, tables, row counts"), as a typed report: per schema its
//! tables with exact row counts (or the planner's estimates), its materialized views and whether
//! they are populated; the installed extensions; invalid indexes. `pgkeep sanity` prints it, and
//! `pgkeep restore dump` ends with it.
//!
//! Partitioned tables are listed with the total of their partitions; the partitions themselves
//! are listed too, so [`SanityReport::total_rows`] only adds up ordinary tables (kind `table`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::{Db, DbError, fan_out, query_err, quote_ident};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableRows {
    pub name: String,
    /// `table` or `partitioned`.
    pub kind: &'static str,
    /// Exact count, or the planner's estimate with `--estimate` (None: never analyzed).
    pub rows: Option<i64>,
    pub estimated: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Matview {
    pub name: String,
    pub populated: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SchemaReport {
    pub name: String,
    pub tables: Vec<TableRows>,
    pub matviews: Vec<Matview>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Extension {
    pub name: String,
    pub version: String,
    pub schema: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InvalidIndex {
    pub schema: String,
    pub index: String,
    pub table: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SanityReport {
    pub database: String,
    pub server_version: String,
    pub schemas: Vec<SchemaReport>,
    pub extensions: Vec<Extension>,
    pub invalid_indexes: Vec<InvalidIndex>,
    /// Number of ordinary tables.
    pub tables: usize,
    /// Sum of the ordinary tables' rows (known ones).
    pub total_rows: i64,
}

/// `schema.table`, both quoted: what a count is keyed by in [`Rows::Known`].
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The statement that counts a table's own rows: `only` for an ordinary table (a parent of
/// old-style inheritance is listed beside its children, which are counted on their own); a
/// partitioned table is the sum of its partitions.
pub(crate) fn count_statement(qualified: &str, relkind: &str) -> String {
    match relkind {
        "p" => format!("select count(*) from {qualified}"),
        _ => format!("select count(*) from only {qualified}"),
    }
}

/// How [`Db::sanity`] gets each table's rows.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// The planner's estimate (`pg_class.reltuples`).
    Estimated,
    /// `count(*)` of each, over up to `jobs` connections, largest table first.
    Counted { jobs: usize },
    /// Exact counts already taken (by [`crate::logical`] right after loading), keyed by
    /// [`qualified`] name; a table missing from them is counted.
    Known(&'a BTreeMap<String, i64>),
}

pub(crate) const USER_SCHEMAS: &str = "n.nspname not in ('pg_catalog', 'information_schema') \
     and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'";

impl Db {
    /// The sanity report of the connected database, its rows as `rows` says.
    pub async fn sanity(&self, rows: Rows<'_>) -> Result<SanityReport, DbError> {
        let estimate = matches!(rows, Rows::Estimated);
        let c = self.client();
        let version: String = c
            .query_one("select current_setting('server_version')", &[])
            .await
            .map_err(query_err("reading the server version"))?
            .get(0);
        let database: String = c
            .query_one("select current_database()::text", &[])
            .await
            .map_err(query_err("reading the database name"))?
            .get(0);
        let schemas = c
            .query(
                &format!(
                    "select n.nspname::text from pg_namespace n where {USER_SCHEMAS} order by 1"
                ),
                &[],
            )
            .await
            .map_err(query_err("listing schemas"))?;
        let rels = c
            .query(
                &format!(
                    "select n.nspname::text, c.relname::text, c.relkind::text, c.reltuples::float8, c.relispopulated, \
                     case when c.relkind = 'p' then (select coalesce(sum(k.relpages), 0) from pg_inherits i \
                     join pg_class k on k.oid = i.inhrelid where i.inhparent = c.oid) else c.relpages end::int8 \
                     from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                     where c.relkind in ('r', 'p', 'm') and {USER_SCHEMAS} order by 1, 2"
                ),
                &[],
            )
            .await
            .map_err(query_err("listing tables"))?;
        let mut out: Vec<SchemaReport> = schemas
            .iter()
            .map(|r| SchemaReport {
                name: r.get(0),
                tables: vec![],
                matviews: vec![],
            })
            .collect();
        let mut tables = 0usize;
        let mut total = 0i64;
        let counts = match rows {
            Rows::Estimated => Vec::new(),
            Rows::Counted { jobs } => self.count_rows(&rels, jobs, None).await?,
            Rows::Known(known) => self.count_rows(&rels, 1, Some(known)).await?,
        };
        for (i, r) in rels.iter().enumerate() {
            let schema: String = r.get(0);
            let name: String = r.get(1);
            let kind: String = r.get(2);
            let Some(s) = out.iter_mut().find(|s| s.name == schema) else {
                continue;
            };
            if kind == "m" {
                s.matviews.push(Matview {
                    name,
                    populated: r.get(4),
                });
                continue;
            }
            let rows = if estimate {
                let t: f64 = r.get(3);
                (t >= 0.0).then_some(t as i64)
            } else {
                counts.get(i).copied().flatten()
            };
            let kind = if kind == "p" { "partitioned" } else { "table" };
            if kind == "table" {
                tables += 1;
                total += rows.unwrap_or(0);
            }
            s.tables.push(TableRows {
                name,
                kind,
                rows,
                estimated: estimate,
            });
        }
        let extensions = c
            .query(
                "select e.extname::text, e.extversion, n.nspname::text from pg_extension e \
                 join pg_namespace n on n.oid = e.extnamespace order by 1",
                &[],
            )
            .await
            .map_err(query_err("listing extensions"))?
            .into_iter()
            .map(|r| Extension {
                name: r.get(0),
                version: r.get(1),
                schema: r.get(2),
            })
            .collect();
        let invalid_indexes = c
            .query(
                "select n.nspname::text, ci.relname::text, ct.relname::text from pg_index i \
                 join pg_class ci on ci.oid = i.indexrelid join pg_class ct on ct.oid = i.indrelid \
                 join pg_namespace n on n.oid = ci.relnamespace \
                 where not i.indisvalid order by 1, 2",
                &[],
            )
            .await
            .map_err(query_err("listing invalid indexes"))?
            .into_iter()
            .map(|r| InvalidIndex {
                schema: r.get(0),
                index: r.get(1),
                table: r.get(2),
            })
            .collect();
        Ok(SanityReport {
            database,
            server_version: version,
            schemas: out,
            extensions,
            invalid_indexes,
            tables,
            total_rows: total,
        })
    }
}

impl Db {
    /// Exact row count of each table and partitioned table of `rels` (the listing query's rows;
    /// column 5, the catalog's page count, read without taking a lock, orders the work), in
    /// their order, over up to `jobs` connections, largest first; those in `known` are taken
    /// from there.
    async fn count_rows(
        &self,
        rels: &[tokio_postgres::Row],
        jobs: usize,
        known: Option<&BTreeMap<String, i64>>,
    ) -> Result<Vec<Option<i64>>, DbError> {
        let mut out = vec![None; rels.len()];
        let mut todo: Vec<(usize, i64, String)> = Vec::new();
        for (i, r) in rels.iter().enumerate() {
            if r.get::<_, String>(2) == "m" {
                continue;
            }
            let name = qualified(&r.get::<_, String>(0), &r.get::<_, String>(1));
            match known.and_then(|k| k.get(&name)) {
                Some(n) => out[i] = Some(*n),
                None => {
                    let kind = r.get::<_, String>(2);
                    todo.push((i, r.get::<_, i64>(5), count_statement(&name, &kind)));
                }
            }
        }
        todo.sort_by_key(|(_, size, _)| std::cmp::Reverse(*size));
        let statements: Vec<String> = todo.iter().map(|(_, _, sql)| sql.clone()).collect();
        let counted = fan_out(self, jobs, &statements, "counting rows", true).await;
        for ((i, _, _), n) in todo.iter().zip(counted) {
            out[*i] = n?;
        }
        Ok(out)
    }
}

impl SanityReport {
    /// A table for a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "database {} (PostgreSQL {})",
            self.database, self.server_version
        );
        for schema in &self.schemas {
            let _ = writeln!(s, "\nschema {}", schema.name);
            if schema.tables.is_empty() && schema.matviews.is_empty() {
                let _ = writeln!(s, "  (no tables)");
            }
            let width = schema
                .tables
                .iter()
                .map(|t| t.name.chars().count())
                .chain(schema.matviews.iter().map(|m| m.name.chars().count()))
                .max()
                .unwrap_or(0)
                .max(5);
            for t in &schema.tables {
                let rows = match (t.rows, t.estimated) {
                    (Some(n), false) => n.to_string(),
                    (Some(n), true) => format!("~{n}"),
                    (None, _) => "? (never analyzed)".into(),
                };
                let pad = width - t.name.chars().count();
                let kind = if t.kind == "partitioned" {
                    "  (partitioned, all partitions)"
                } else {
                    ""
                };
                let _ = writeln!(s, "  {}{}  {rows:>12} rows{kind}", t.name, " ".repeat(pad));
            }
            for m in &schema.matviews {
                let pad = width - m.name.chars().count();
                let _ = writeln!(
                    s,
                    "  {}{}  materialized view, {}",
                    m.name,
                    " ".repeat(pad),
                    if m.populated {
                        "populated"
                    } else {
                        "NOT populated"
                    }
                );
            }
        }
        let _ = writeln!(s, "\nextensions");
        for e in &self.extensions {
            let _ = writeln!(s, "  {} {} (schema {})", e.name, e.version, e.schema);
        }
        if self.invalid_indexes.is_empty() {
            let _ = writeln!(s, "\ninvalid indexes: none");
        } else {
            let _ = writeln!(s, "\ninvalid indexes");
            for i in &self.invalid_indexes {
                let _ = writeln!(s, "  {}.{} on {}", i.schema, i.index, i.table);
            }
        }
        let _ = writeln!(
            s,
            "\ntotal: {} tables, {} rows",
            self.tables, self.total_rows
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ConnParams;
    use pgkeep_testkit::TempCluster;

    #[tokio::test]
    async fn reports_tables_matviews_extensions_and_invalid_indexes() {
        let c = TempCluster::start();
        c.psql_script(
            "postgres",
            "create schema \"Ünï Case\"; create table \"Ünï Case\".t(x int);
             insert into \"Ünï Case\".t select generate_series(1, 42);
             create table public.p(x int) partition by range (x);
             create table public.p1 partition of public.p for values from (0) to (100);
             insert into public.p select generate_series(0, 9);
             create materialized view public.mv as select 1 as a;
             create materialized view public.mv_empty as select 1 as a with no data;
             create extension pg_trgm;
             create table public.dup(x int); insert into public.dup values (1), (1);
             create table public.inh(x int); create table public.inh_child() inherits (public.inh);
             insert into public.inh values (1); insert into public.inh_child values (2), (3);",
        );
        // An index build that fails leaves an invalid index behind.
        let _ = c.try_psql(
            "postgres",
            "create unique index concurrently dup_x on public.dup(x)",
        );
        let mut params = ConnParams::from_settings(&crate::settings::Settings::default());
        params.host = c.run_dir().display().to_string();
        params.port = c.port();
        let db = Db::connect(&params.with_db("postgres")).await.unwrap();
        let r = db.sanity(Rows::Counted { jobs: 2 }).await.unwrap();
        let names: Vec<_> = r.schemas.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["public", "Ünï Case"]);
        assert_eq!(r.schemas[1].tables[0].rows, Some(42));
        let public = &r.schemas[0];
        let p = public.tables.iter().find(|t| t.name == "p").unwrap();
        assert_eq!((p.kind, p.rows), ("partitioned", Some(10)));
        // An old-style inheritance parent counts its own rows: its child is listed (and
        // counted) on its own, so the total holds each row once.
        let inh = public.tables.iter().find(|t| t.name == "inh").unwrap();
        assert_eq!(inh.rows, Some(1));
        assert_eq!(
            r.tables, 5,
            "t, p1, dup, inh, inh_child and nothing else: {r:?}"
        );
        assert_eq!(r.total_rows, 42 + 10 + 2 + 1 + 2);
        // Counts handed in are used as they are; a table missing from them is counted.
        let known = BTreeMap::from([(qualified("public", "dup"), 7)]);
        let k = db.sanity(Rows::Known(&known)).await.unwrap();
        assert_eq!(k.total_rows, 42 + 10 + 7 + 1 + 2);
        assert_eq!(
            public.matviews,
            vec![
                Matview {
                    name: "mv".into(),
                    populated: true
                },
                Matview {
                    name: "mv_empty".into(),
                    populated: false
                }
            ]
        );
        assert!(r.extensions.iter().any(|e| e.name == "pg_trgm"));
        assert_eq!(r.invalid_indexes.len(), 1, "{r:?}");
        assert_eq!(r.invalid_indexes[0].index, "dup_x");
        let text = r.render();
        assert!(text.contains("NOT populated"), "{text}");
        assert!(text.contains("dup_x"), "{text}");
        let est = db.sanity(Rows::Estimated).await.unwrap();
        assert!(est.schemas[1].tables[0].estimated);
    }
}
