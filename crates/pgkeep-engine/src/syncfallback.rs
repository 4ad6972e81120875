//! `wal.sync_fallback_after`: with `wal.stream = sync`, `serve` watches `pg_stat_replication`
//! and, once no `pgkeep wal stream` (application_name `pgkeep`, state `streaming`) has been
//! seen for that many seconds, stops making commits wait for it: it rewrites the managed
//! settings file with `synchronous_standby_names = ''` and reloads the server, logging loudly
//! that commits no longer wait. As soon as the stream streams again it writes `'pgkeep'` back
//! and reloads. 0 (the default) never falls back: commits wait, which is what a recovery point
//! of zero means.
//!
//! The clock starts when the server first answers (a server still starting or in crash
//! recovery has no stream to wait for and no commit waiting). Whether the server currently
//! waits is read back from the server itself (`current_setting`), which is what `observe`
//! reports as `pgkeep_wal_sync_degraded`; nothing else is kept.

use std::time::{Duration, Instant};

use crate::db::{ConnParams, Db, DbError, query_err};
use crate::postmaster::{ServeConfig, managed_conf};
use crate::server::{RunAs, ServerError, write_managed_conf};
use crate::walstream::APPLICATION_NAME;

/// How often the watcher looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the watcher must do after one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// The stream has been away for the whole delay: commits stop waiting.
    FallBack,
    /// The stream streams again: commits wait for it again.
    Restore,
}

/// The watcher's memory between looks.
#[derive(Debug, Clone)]
pub struct Watch {
    after: Duration,
    /// When the stream was last seen streaming (or the server first answered).
    last_seen: Option<Instant>,
    degraded: bool,
}

impl Watch {
    pub fn new(after: Duration) -> Watch {
        Watch {
            after,
            last_seen: None,
            degraded: false,
        }
    }

    /// Whether commits currently do not wait for the stream (as this watcher set it).
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// One look at `now`: is the stream streaming? Returns what to do; the caller reports back
    /// with [`Watch::done`] once the server has the new setting.
    pub fn look(&mut self, now: Instant, streaming: bool) -> Action {
        let since = *self.last_seen.get_or_insert(now);
        if streaming {
            self.last_seen = Some(now);
            return if self.degraded {
                Action::Restore
            } else {
                Action::Nothing
            };
        }
        if !self.degraded && now.duration_since(since) >= self.after {
            Action::FallBack
        } else {
            Action::Nothing
        }
    }

    /// `action` took effect.
    pub fn done(&mut self, action: Action) {
        match action {
            Action::FallBack => self.degraded = true,
            Action::Restore => self.degraded = false,
            Action::Nothing => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Whether a `pgkeep wal stream` is streaming from the server.
async fn streaming(db: &Db) -> Result<bool, DbError> {
    let row = db
        .client()
        .query_one(
            "select count(*) from pg_stat_replication \
             where application_name = $1 and state = 'streaming'",
            &[&APPLICATION_NAME],
        )
        .await
        .map_err(query_err("reading pg_stat_replication"))?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Write the managed settings with commits waiting (`wait`) or not, and reload the server.
async fn apply(
    db: &Db,
    cfg: &ServeConfig,
    run_as: Option<RunAs>,
    wait: bool,
) -> Result<(), ApplyError> {
    let conf = managed_conf(&ServeConfig {
        synchronous_stream: wait,
        ..cfg.clone()
    });
    write_managed_conf(&cfg.pgdata, &conf, run_as)?;
    db.client()
        .query_one("select pg_reload_conf()", &[])
        .await
        .map_err(query_err("reloading the server's configuration"))?;
    Ok(())
}

/// Watch until the task is dropped (serve aborts it when postgres exits). Connects over the
/// server's socket as the superuser (local connections are trusted, as initdb set them up).
pub async fn watch(cfg: ServeConfig, run_as: Option<RunAs>, after: Duration) {
    let conn = ConnParams::socket(&cfg.run_dir, cfg.port, &cfg.superuser, "postgres");
    let mut w = Watch::new(after);
    let mut db: Option<Db> = None;
    let mut last_problem: Option<String> = None;
    tracing::info!(
        "wal.stream = sync with wal.sync_fallback_after = {} s: commits stop waiting for the \
         stream once it has been away that long, and wait again when it is back",
        after.as_secs()
    );
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if db.as_ref().is_none_or(|d| d.client().is_closed()) {
            db = Db::connect(&conn).await.ok();
        }
        let Some(d) = db.as_ref() else { continue };
        let seen = match streaming(d).await {
            Ok(s) => s,
            Err(e) => {
                db = None;
                let text = e.to_string();
                if last_problem.as_deref() != Some(&text) {
                    tracing::debug!(error = %text, "sync fallback: could not look at the stream");
                    last_problem = Some(text);
                }
                continue;
            }
        };
        let action = w.look(Instant::now(), seen);
        if action == Action::Nothing {
            continue;
        }
        match apply(d, &cfg, run_as, action == Action::Restore).await {
            Ok(()) => {
                w.done(action);
                last_problem = None;
                if action == Action::FallBack {
                    tracing::error!(
                        "WAL STREAM DOWN FOR {} s: COMMITS NO LONGER WAIT for `pgkeep wal \
                         stream` (synchronous_standby_names = '', wal.sync_fallback_after = {}): \
                         commits acknowledged from now on are lost with the data volume until \
                         the stream is back (the recovery point is no longer zero); check the \
                         walstream container's log",
                        after.as_secs(),
                        after.as_secs()
                    );
                } else {
                    tracing::warn!(
                        "the WAL stream is streaming again: commits wait for it again \
                         (synchronous_standby_names = '{APPLICATION_NAME}')"
                    );
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_problem.as_deref() != Some(&text) {
                    tracing::error!(
                        error = %text,
                        "sync fallback: could not change synchronous_standby_names; trying again"
                    );
                    last_problem = Some(text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_after_the_delay_and_restores_when_streaming() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = Watch::new(Duration::from_secs(3));
        // The clock starts at the first look.
        assert_eq!(w.look(s(0), false), Action::Nothing);
        assert_eq!(w.look(s(2), false), Action::Nothing);
        assert_eq!(w.look(s(3), false), Action::FallBack);
        // Not applied yet (the reload failed): asked again.
        assert_eq!(w.look(s(4), false), Action::FallBack);
        w.done(Action::FallBack);
        assert!(w.degraded());
        assert_eq!(w.look(s(5), false), Action::Nothing);
        assert_eq!(w.look(s(6), true), Action::Restore);
        w.done(Action::Restore);
        assert!(!w.degraded());
        // Streaming resets the clock.
        assert_eq!(w.look(s(8), false), Action::Nothing);
        assert_eq!(w.look(s(9), true), Action::Nothing);
        assert_eq!(w.look(s(11), false), Action::Nothing);
        assert_eq!(w.look(s(12), false), Action::FallBack);
    }
}
