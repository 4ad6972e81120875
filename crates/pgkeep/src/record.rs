//! Leaving a result record (the engine's `results` module) at the end of `backup logical`,
//! `backup physical` and `drill`, whatever their outcome. A record that cannot be written is a
//! warning, never the command's error: the run's own outcome decides the exit code, and a
//! missing record shows up as a stale backup in `status` and the alerts.

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::inspect::Site;
use pgkeep_engine::results::{self, Outcome, Record, RunKind};

use crate::cli::Ctx;

/// What a run produced, for its record.
#[derive(Debug, Default)]
pub struct Produced {
    pub size: Option<u64>,
    pub bundle: Option<String>,
}

/// Write the record of a run of `kind` that started at `start` and ended with `result`.
pub async fn leave(
    ctx: &Ctx,
    kind: RunKind,
    start: jiff::Timestamp,
    result: &anyhow::Result<Produced>,
) {
    let s = ctx.settings();
    let (outcome, produced, error) = match result {
        Ok(p) => (Outcome::Success, Some(p), None),
        Err(e) => (Outcome::Failure, None, Some(format!("{e:#}"))),
    };
    let mut rec = Record::finish(kind, start, outcome);
    if let Some(p) = produced {
        rec.size = p.size;
        rec.bundle = p.bundle.clone();
    }
    if let Some(e) = error {
        rec = rec.with_error(&e);
    }
    let site = Site::of(s);
    rec.usage = results::sample_site(&site, &ConnParams::from_settings(s)).await;
    let backups = s.paths.backups.clone();
    let written = tokio::task::spawn_blocking(move || results::write(&backups, &rec)).await;
    match written {
        Ok(Ok(path)) => tracing::info!(record = %path.display(), "result record written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "no result record"),
        Err(e) => tracing::warn!(error = %e, "no result record"),
    }
}
