//! `pgkeep serve`: the db container's command. Mount guard and directories, initdb on an empty
//! PGDATA (data checksums; superuser password from `POSTGRES_PASSWORD` or
//! `POSTGRES_PASSWORD_FILE`, never argv; then the init scripts once), pgkeep's managed settings
//! and pg_hba block, then PostgreSQL as a child: SIGTERM becomes a fast shutdown, and pgkeep
//! exits with PostgreSQL's status. Works with any image that has the server binaries and pgkeep.
//! No initdb while an unfinished bootstrap's marker is in the volume root (exit 3; see
//! `pgkeep_engine::bootmark`). With `wal.stream = sync` and `wal.sync_fallback_after`, a watcher
//! beside the server lets commits stop waiting for a stream that stays away (see
//! `pgkeep_engine::syncfallback`).

use std::path::PathBuf;
use std::time::Duration;

use pgkeep_engine::postmaster::{self, Postmaster, ServeConfig, Signals};
use pgkeep_engine::syncfallback;
use pgkeep_engine::tools::{PgBin, shell_quote_for_pg_command};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// listen_addresses for PostgreSQL (`*` in a pod; e.g. 127.0.0.1 on a workstation).
    #[arg(long, default_value = "*", value_name = "ADDRESSES")]
    pub listen: String,
    /// Directory of one-time init scripts (*.sql, *.sql.gz, *.sh), run after the first initdb.
    #[arg(
        long,
        default_value = "/docker-entrypoint-initdb.d",
        value_name = "DIR"
    )]
    pub initdb_dir: PathBuf,
}

/// `archive_command`: this very binary, so PostgreSQL archives with the same pgkeep.
fn archive_command() -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "pgkeep".to_owned());
    archive_command_of(&exe)
}

/// `EXE wal push %p`, with EXE quoted for PostgreSQL's `%` expansion and for the shell.
fn archive_command_of(exe: &str) -> String {
    format!("{} wal push %p", shell_quote_for_pg_command(exe))
}

/// PostgreSQL's own exit code once it stopped (0 when it stopped cleanly).
pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<u8> {
    let s = ctx.settings();
    // Before anything else, so a SIGTERM during initialization is not lost.
    let mut signals = Signals::install()?;
    let pg = PgBin::locate()?;
    let cfg = ServeConfig {
        pgroot: s.paths.pgroot.clone(),
        pgdata: s.paths.pgdata.clone(),
        run_dir: s.paths.run_dir.clone(),
        uid: s.postgres.uid,
        gid: s.postgres.gid,
        port: s.postgres.port,
        listen: args.listen,
        superuser: s.postgres.user.clone(),
        database: s.postgres.database.clone(),
        initdb_dir: args.initdb_dir,
        archive_command: archive_command(),
        archive_timeout: s.wal.archive_timeout,
        synchronous_stream: s.wal.stream == pgkeep_engine::settings::StreamMode::Sync,
        wal_archive: s.paths.wal_archive.clone(),
        summarize_wal: pg.major_version("postgres")? >= 17,
    };
    let password = postmaster::password_from(|k| std::env::var(k).ok())?;
    // A guard refusal or an unfinished bootstrap's marker exits with 3 (PostmasterError's class).
    let prepared = postmaster::prepare(&pg, &cfg, password.as_deref())?;
    drop(password);
    if prepared.initialized {
        tracing::info!(database = %cfg.database, "initialized a new cluster");
    }
    if signals.stop_requested().await {
        tracing::info!("stop requested during preparation; not starting postgres");
        return Ok(crate::exit::SUCCESS);
    }
    // Spawned here, on the main thread, never on a blocking-pool thread: a parent-death signal
    // (when the runner sets one) follows the spawning thread, not the process.
    let mut pm = Postmaster::spawn(&pg, &cfg.pgdata, prepared.run_as)?;
    if cfg.archive_timeout > 0 {
        pm = pm.arm_archive_timeout(&cfg.pgdata);
    }
    // `wal.sync_fallback_after`: commits stop waiting for a stream that stays away that long.
    let fallback = (cfg.synchronous_stream && s.wal.sync_fallback_after > 0).then(|| {
        tokio::spawn(syncfallback::watch(
            cfg.clone(),
            prepared.run_as,
            Duration::from_secs(s.wal.sync_fallback_after.into()),
        ))
    });
    let status = pm.supervise(&mut signals).await;
    if let Some(task) = fallback {
        task.abort();
    }
    let status = status?;
    let code = postmaster::exit_code(status);
    if code == 0 {
        tracing::info!("postgres stopped cleanly");
    } else {
        tracing::error!(code, "postgres exited with {status}");
    }
    // A code outside 0..=255 cannot come from a wait status; if it did, it is a failure.
    Ok(u8::try_from(code).unwrap_or(crate::exit::FAILED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_command_quotes_the_binary_for_postgresql_and_the_shell() {
        assert_eq!(
            archive_command_of("/usr/local/bin/pgkeep"),
            "/usr/local/bin/pgkeep wal push %p"
        );
        assert_eq!(
            archive_command_of("/opt/it's here/pgkeep"),
            r"'/opt/it'\''s here/pgkeep' wal push %p"
        );
        // A `%` of the path is doubled, or PostgreSQL would expand `%p` in it.
        assert_eq!(
            archive_command_of("/opt/100%p/pgkeep"),
            "/opt/100%%p/pgkeep wal push %p"
        );
    }
}
