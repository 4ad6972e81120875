//! `pgkeep offsite sync [--follow]`: upload every bundle and WAL file of the local repository
//! that is not off-site yet ([`pgkeep_engine::offsite::sync`]): each verified before it leaves,
//! encrypted, create-only. `--follow` keeps going (the db pod's off-site follower), one round
//! every `--interval` seconds, and a failed round is retried in the next. After a round that
//! saw a new bundle (and after the first), off-site retention runs
//! ([`pgkeep_engine::offsite_retention`], `retention.offsite_*`) unless `--no-prune`. After every
//! round that completed, the round's outcome goes to the status file in the socket directory
//! ([`pgkeep_engine::offsite::status`]), which `pgkeep metrics` turns into the off-site metrics.
//!
//! [`after_backup`] is the upload `backup logical` and `backup physical` do right after their
//! bundle is published, when off-site copies are on: the new bundle does not wait for the
//! follower's next round (and a backup Job on another node needs no follower at all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::ProgressBar;
use pgkeep_engine::offsite::{self, Known, Offsite, PutOutcome, SyncProgress};
use pgkeep_engine::offsite_retention;
use pgkeep_engine::wal::Archive;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep running: sync again every --interval seconds until stopped.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between rounds with --follow.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub interval: u64,
    /// Print each round's report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not apply off-site retention (`retention.offsite_nightly`, `retention.offsite_basebackups`).
    #[arg(long)]
    pub no_prune: bool,
}

/// A progress bar per file on a terminal (hidden otherwise).
#[derive(Default)]
struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl SyncProgress for Bar {
    fn start(&self, name: &str, bytes: u64) {
        let pb = crate::output::progress(bytes, name, true);
        if let Some(old) = self.bar.lock().expect("bar lock").replace(pb) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, done: u64) {
        if let Some(pb) = &*self.bar.lock().expect("bar lock") {
            pb.set_position(done);
        }
    }
    fn done(&self, name: &str, outcome: PutOutcome) {
        if let Some(pb) = self.bar.lock().expect("bar lock").take() {
            pb.finish_and_clear();
        }
        match outcome {
            PutOutcome::Uploaded(bytes) => tracing::info!(name, bytes, "uploaded"),
            PutOutcome::AlreadyThere => tracing::debug!(name, "already off-site"),
        }
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let off = Offsite::open(&s.offsite)?;
    let archive = Archive::new(&s.paths.wal_archive);
    let mut known = Known::default();
    let progress: Arc<dyn SyncProgress> = Arc::new(Bar::default());
    let mut first = true;
    let status_path = offsite::status::path(&s.paths.run_dir);
    let mut stored: Option<std::collections::BTreeMap<String, u64>> = None;
    // SIGTERM or SIGINT ends a --follow at once, even mid-upload: an upload that did not
    // complete is never visible (see `offsite`), and the next start begins over.
    // Only a follower catches them: a one-shot sync keeps the default (a signal ends it).
    let mut stop = args.follow.then(crate::stop::Stop::install);
    loop {
        let round = tokio::select! {
            r = offsite::sync(
                &off,
                &s.paths.pgdata,
                &s.paths.backups,
                &archive,
                &mut known,
                progress.clone(),
            ) => r,
            _ = requested(&mut stop) => {
                tracing::info!("stopping: a signal arrived during a round");
                return Ok(());
            }
        };
        match round {
            Ok(report) => {
                let new_bundles = first || report.new_bundles > 0;
                if !args.no_prune && new_bundles {
                    let sys = off.system(report.system_identifier);
                    let pruned = async {
                        let plan = offsite_retention::plan(
                            &sys,
                            s.retention.offsite_nightly,
                            s.retention.offsite_basebackups,
                        )
                        .await?;
                        offsite_retention::apply(&sys, &plan).await?;
                        Ok::<_, offsite::OffsiteError>(plan)
                    }
                    .await;
                    match pruned {
                        Ok(plan) if !args.json => {
                            println!(
                                "off-site retention: kept {} bundle(s), deleted {}{}; WAL {}",
                                plan.keep.len(),
                                plan.remove.len(),
                                if plan.remove.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", plan.remove.join(", "))
                                },
                                match (&plan.wal_kept_from, &plan.wal_kept_all_because) {
                                    (Some(from), _) => format!(
                                        "kept from {from}, deleted {} file(s), {} bytes",
                                        plan.remove_wal.len(),
                                        plan.remove_wal_bytes
                                    ),
                                    (None, Some(why)) => format!("all kept: {why}"),
                                    (None, None) => "all kept".into(),
                                }
                            );
                        }
                        Ok(_) => {}
                        Err(e) if args.follow => crate::output::report_error(&e.into()),
                        Err(e) => return Err(e.into()),
                    }
                }
                if new_bundles || stored.is_none() {
                    stored = count_stored(&off, report.system_identifier).await;
                }
                let st = offsite::status::Status {
                    synced_at: pgkeep_engine::clock::now(),
                    system_identifier: report.system_identifier,
                    newest_segment: report.newest_segment.clone(),
                    // Until a listing succeeds the counts are unknown: none are reported.
                    backups: stored.clone().unwrap_or_default(),
                };
                if let Err(e) = offsite::status::write(&status_path, &st) {
                    tracing::warn!(error = %e, "cannot write the off-site status for `pgkeep metrics`");
                }
                first = false;
                if args.json {
                    crate::output::print_json(&report)?;
                } else if !args.follow || !report.uploaded.is_empty() {
                    println!(
                        "{}/{}: uploaded {} file(s), {} bytes; {} already off-site",
                        off.url(),
                        report.system_identifier,
                        report.uploaded.len(),
                        report.uploaded_bytes,
                        report.already
                    );
                }
            }
            Err(e) if args.follow => {
                crate::output::report_error(&e.into());
            }
            Err(e) => return Err(e.into()),
        }
        if !args.follow {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval.max(1))) => {}
            _ = requested(&mut stop) => {
                tracing::info!("stopping: a signal arrived");
                return Ok(());
            }
        }
    }
}

/// Resolves when the follower's signals arrived; never without them.
async fn requested(stop: &mut Option<crate::stop::Stop>) {
    match stop {
        Some(s) => s.requested().await,
        None => std::future::pending().await,
    }
}

/// Bundles stored off-site per kind (None, logged, when the listing fails: the next round
/// tries again).
async fn count_stored(
    off: &Offsite,
    system: u64,
) -> Option<std::collections::BTreeMap<String, u64>> {
    match off.system(system).list_backups().await {
        Ok(files) => {
            let mut counts = std::collections::BTreeMap::from([
                ("logical".to_owned(), 0),
                ("physical".to_owned(), 0),
            ]);
            for f in files {
                if let Some(b) = pgkeep_engine::repo::parse_name(&f.name) {
                    *counts.entry(b.kind.label().to_owned()).or_default() += 1;
                }
            }
            Some(counts)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the off-site bundles");
            None
        }
    }
}

/// Upload the bundle a backup just published, when off-site copies are configured. A failure
/// is logged, not returned: the local bundle is whole and recorded, and the follower (or the
/// next `offsite sync`) uploads it later; the off-site metrics show the lag meanwhile.
pub(crate) async fn after_backup(ctx: &Ctx, bundle: Option<&str>) {
    let s = ctx.settings();
    let Some(name) = bundle.filter(|_| !s.offsite.url.is_empty()) else {
        return;
    };
    let uploaded = async {
        let off = Offsite::open(&s.offsite)?;
        offsite::upload_bundle(&off, &s.paths.backups, name, Arc::new(Bar::default())).await
    }
    .await;
    match uploaded {
        // Logged, not printed: stdout may be the backup's JSON report.
        Ok(PutOutcome::Uploaded(bytes)) => {
            tracing::info!(bundle = name, bytes, url = %s.offsite.url, "copied off-site")
        }
        Ok(PutOutcome::AlreadyThere) => tracing::info!(bundle = name, "off-site already"),
        Err(e) => tracing::warn!(
            bundle = name,
            error = %e,
            "the new bundle was not copied off-site now; `pgkeep offsite sync` (the db pod's follower) copies it later"
        ),
    }
}
