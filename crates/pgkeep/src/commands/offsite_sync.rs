//! `pgkeep offsite sync [--follow]`: upload every bundle and WAL file of the local repository
//! that is not off-site yet ([`pgkeep_engine::offsite::sync`]): each verified before it leaves,
//! encrypted, create-only. `--follow` keeps going (the db pod's off-site follower), one round
//! every `--interval` seconds, and a failed round is retried in the next. After a round that
//! uploaded a bundle (and after the first), off-site retention runs
//! ([`pgkeep_engine::offsite_retention`], `retention.offsite_*`) unless `--no-prune`.

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
    loop {
        let round = offsite::sync(
            &off,
            &s.paths.pgdata,
            &s.paths.backups,
            &archive,
            &mut known,
            progress.clone(),
        )
        .await;
        match round {
            Ok(report) => {
                let uploaded_bundle = report
                    .uploaded
                    .iter()
                    .any(|n| pgkeep_engine::repo::parse_name(n).is_some());
                if !args.no_prune && (first || uploaded_bundle) {
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
        tokio::time::sleep(Duration::from_secs(args.interval.max(1))).await;
    }
}
