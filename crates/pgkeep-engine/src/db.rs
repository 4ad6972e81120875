//! Connecting to PostgreSQL and the typed queries pgkeep needs. There is no general-purpose query
//! function here: each operation is a named method returning a typed value.
//!
//! Connection parameters come from settings (host, port, user, database) and the password from
//! `PGPASSWORD` at the moment of connecting; [`ConnParams::apply`] hands the same parameters to a
//! libpq tool through its environment, the password as a secret variable.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use tokio_postgres::NoTls;

use crate::settings::Settings;
use crate::tools::Cmd;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not connect to PostgreSQL at {target} as {user}: {message}\nhint: {hint}")]
    Connect {
        target: String,
        user: String,
        message: String,
        hint: String,
    },
    #[error("{what} failed: {message}")]
    Query { what: &'static str, message: String },
}

/// A query error as text, with PostgreSQL's severity, DETAIL and HINT: the one way the engine
/// describes a failed statement.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

pub(crate) fn query_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
    move |e| DbError::Query {
        what,
        message: describe(&e),
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnParams {
    /// Host name, IP, or socket directory (absolute path).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    password: Option<String>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnParams {
    /// From settings; an empty host means the socket directory. The password is read from
    /// `PGPASSWORD` (libpq tools also read `PGPASSFILE` themselves).
    pub fn from_settings(s: &Settings) -> ConnParams {
        let host = if s.postgres.host.is_empty() {
            s.paths.run_dir.display().to_string()
        } else {
            s.postgres.host.clone()
        };
        ConnParams {
            host,
            port: s.postgres.port,
            user: s.postgres.user.clone(),
            dbname: s.postgres.database.clone(),
            password: std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
        }
    }

    /// A Unix socket in `socket_dir`, without a password (a throwaway server that trusts its
    /// private socket).
    pub fn socket(socket_dir: &std::path::Path, port: u16, user: &str, dbname: &str) -> ConnParams {
        ConnParams {
            host: socket_dir.display().to_string(),
            port,
            user: user.to_owned(),
            dbname: dbname.to_owned(),
            password: None,
        }
    }

    /// The same parameters for another database.
    pub fn with_db(&self, dbname: &str) -> ConnParams {
        ConnParams {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    pub fn with_password(mut self, password: Option<String>) -> ConnParams {
        self.password = password;
        self
    }

    /// `host:port/db` for messages (no secrets).
    pub fn display(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// Pass these parameters to a libpq tool through its environment.
    pub fn apply(&self, cmd: Cmd) -> Cmd {
        let mut cmd = cmd
            .env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", &self.dbname)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD");
        if let Some(pw) = &self.password {
            cmd = cmd.secret_env("PGPASSWORD", pw);
        }
        cmd
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            c.host_path(PathBuf::from(&self.host));
        } else {
            c.host(&self.host);
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgkeep")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        c
    }
}

/// One open connection.
pub struct Db {
    client: tokio_postgres::Client,
    params: ConnParams,
}

/// Server identity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerInfo {
    /// e.g. 150018
    pub version_num: u32,
    /// e.g. "15.18 (Debian 15.18-0+deb12u1)"
    pub version: String,
    pub system_identifier: String,
    pub in_recovery: bool,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// One table's exact row count.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableCount {
    pub schema: String,
    pub table: String,
    pub rows: i64,
}

impl Db {
    pub async fn connect(params: &ConnParams) -> Result<Db, DbError> {
        let (client, connection) =
            params
                .config()
                .connect(NoTls)
                .await
                .map_err(|e| DbError::Connect {
                    target: params.display(),
                    user: params.user.clone(),
                    message: describe(&e),
                    hint: "is PostgreSQL running? Check PGHOST/PGPORT/PGUSER (or postgres.host/port/user in pgkeep.toml) and PGPASSWORD or PGPASSFILE".into(),
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
        });
        Ok(Db {
            client,
            params: params.clone(),
        })
    }

    pub fn params(&self) -> &ConnParams {
        &self.params
    }

    pub async fn server_info(&self) -> Result<ServerInfo, DbError> {
        let row = self
            .client
            .query_one(
                "select current_setting('server_version_num')::int4, current_setting('server_version'), \
                 (select system_identifier::text from pg_control_system()), pg_is_in_recovery()",
                &[],
            )
            .await
            .map_err(query_err("reading the server version"))?;
        Ok(ServerInfo {
            version_num: row.get::<_, i32>(0) as u32,
            version: row.get(1),
            system_identifier: row.get(2),
            in_recovery: row.get(3),
        })
    }

    /// Ordinary and partitioned-leaf tables outside the system schemas, with exact row counts.
    pub async fn table_counts(&self) -> Result<Vec<TableCount>, DbError> {
        let rows = self
            .client
            .query(
                "select n.nspname, c.relname, format('%I.%I', n.nspname, c.relname) \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') \
                 and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
                 order by 1, 2",
                &[],
            )
            .await
            .map_err(query_err("listing tables"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let qualified: String = r.get(2);
            let count: i64 = self
                .client
                .query_one(&format!("select count(*) from {qualified}"), &[])
                .await
                .map_err(query_err("counting rows"))?
                .get(0);
            out.push(TableCount {
                schema: r.get(0),
                table: r.get(1),
                rows: count,
            });
        }
        Ok(out)
    }

    /// Whether a database exists.
    pub async fn database_exists(&self, name: &str) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one(
                "select exists (select 1 from pg_database where datname = $1)",
                &[&name],
            )
            .await
            .map_err(query_err("looking up the database"))?;
        Ok(row.get(0))
    }

    /// CREATE DATABASE (the name is quoted as an identifier).
    pub async fn create_database(&self, name: &str) -> Result<(), DbError> {
        self.client
            .batch_execute(&format!("create database {}", quote_ident(name)))
            .await
            .map_err(query_err("creating the database"))
    }

    /// The underlying client, for engine modules that add their own typed operations (not for
    /// the binary's commands: they call typed queries).
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

/// Run `statements` on `db` and up to `jobs - 1` more connections to its database, each
/// connection taking the next statement as it finishes one (give them largest first, as
/// `vacuumdb -j` does). Each statement returns no row or one row whose first column is an
/// integer (a `count(*)`). Each statement's outcome comes back in the order given; a failure
/// names its statement. With `stop_on_error` no statement starts after a failure (those left
/// say so); the ones already running finish. An extra connection that cannot be opened is
/// only a warning: `db` alone still works through the queue.
pub(crate) async fn fan_out(
    db: &Db,
    jobs: usize,
    statements: &[String],
    what: &'static str,
    stop_on_error: bool,
) -> Vec<Outcome> {
    let queue = FanOut {
        statements,
        next: Mutex::new(0),
        failed: std::sync::atomic::AtomicBool::new(false),
        stop_on_error,
        results: Mutex::new((0..statements.len()).map(|_| None).collect()),
        what,
    };
    let workers = jobs.clamp(1, statements.len().max(1));
    futures::future::join_all((0..workers).map(|w| queue.work(db, w > 0))).await;
    queue
        .results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(DbError::Query {
                    what,
                    message: "not run: an earlier statement failed".into(),
                })
            })
        })
        .collect()
}

/// One statement's outcome in [`fan_out`]: its integer, if it returned one.
pub(crate) type Outcome = Result<Option<i64>, DbError>;

/// [`fan_out`]'s shared queue.
struct FanOut<'a> {
    statements: &'a [String],
    next: Mutex<usize>,
    failed: std::sync::atomic::AtomicBool,
    stop_on_error: bool,
    /// Per statement: `None` until it has run.
    results: Mutex<Vec<Option<Outcome>>>,
    what: &'static str,
}

impl FanOut<'_> {
    /// One connection's loop: `db` itself, or (`own`) a new connection to its database.
    async fn work(&self, db: &Db, own: bool) {
        let opened;
        let db = if own {
            match Db::connect(db.params()).await {
                Ok(d) => {
                    opened = d;
                    &opened
                }
                Err(e) => {
                    tracing::warn!("{}: one connection fewer: {e}", self.what);
                    return;
                }
            }
        } else {
            db
        };
        use std::sync::atomic::Ordering;
        loop {
            if self.stop_on_error && self.failed.load(Ordering::SeqCst) {
                return;
            }
            let i = {
                let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
                *n += 1;
                *n - 1
            };
            let Some(sql) = self.statements.get(i) else {
                return;
            };
            let outcome = match db.client.simple_query(sql).await {
                Ok(messages) => Ok(messages.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).and_then(|v| v.parse::<i64>().ok())
                    }
                    _ => None,
                })),
                Err(e) => {
                    self.failed.store(true, Ordering::SeqCst);
                    Err(DbError::Query {
                        what: self.what,
                        message: format!("{sql}: {}", describe(&e)),
                    })
                }
            };
            self.results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(outcome);
        }
    }
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgkeep_testkit::TempCluster;

    fn params(c: &TempCluster, db: &str) -> ConnParams {
        ConnParams {
            host: c.run_dir().display().to_string(),
            port: c.port(),
            user: "postgres".into(),
            dbname: db.into(),
            password: None,
        }
    }

    #[tokio::test]
    async fn server_info_and_counts() {
        let c = TempCluster::start();
        c.psql("postgres", "create schema \"Mixed Case\"; create table \"Mixed Case\".t(x int); insert into \"Mixed Case\".t select generate_series(1, 42); create table public.e()");
        let db = Db::connect(&params(&c, "postgres")).await.unwrap();
        let info = db.server_info().await.unwrap();
        assert!(info.major() >= 12, "{info:?}");
        assert!(!info.in_recovery);
        assert!(info.system_identifier.len() >= 15, "{info:?}");
        let counts = db.table_counts().await.unwrap();
        assert_eq!(
            counts,
            vec![
                TableCount {
                    schema: "Mixed Case".into(),
                    table: "t".into(),
                    rows: 42
                },
                TableCount {
                    schema: "public".into(),
                    table: "e".into(),
                    rows: 0
                },
            ]
        );
        assert!(!db.database_exists("records").await.unwrap());
        db.create_database("records").await.unwrap();
        assert!(db.database_exists("records").await.unwrap());
    }

    #[tokio::test]
    async fn tcp_needs_the_right_password() {
        let c = TempCluster::start();
        let tcp = ConnParams {
            host: "127.0.0.1".into(),
            ..params(&c, "postgres")
        };
        let err = Db::connect(&tcp.clone().with_password(Some("wrong".into())))
            .await
            .err()
            .expect("wrong password refused");
        let msg = err.to_string();
        assert!(msg.contains("password authentication failed"), "{msg}");
        assert!(!msg.contains("wrong"), "password not echoed: {msg}");
        let ok = Db::connect(&tcp.with_password(Some(c.password().into())))
            .await
            .unwrap();
        assert!(!ok.server_info().await.unwrap().in_recovery);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
