//! `pgkeep space` (make pg.space; the seed's `scripts/pg/space-check.sh`): size, used, available
//! and percent of the data, WAL-archive and backups volumes (warning at 80%, error line at 90%),
//! database sizes, the ten largest tables with indexes and TOAST, pg_wal, and the WAL archive;
//! and per volume the time until it is full at the growth of the last 7 days (the engine's
//! `observe` forecast, from the usage samples in the result records).

use pgkeep_engine::db::ConnParams;
use std::collections::BTreeMap;

use pgkeep_engine::inspect::{self, Site, human_age, human_bytes};
use pgkeep_engine::observe;
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["space".to_owned()];
        if self.json {
            a.push("--json".to_owned());
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return crate::cluster::run_local_in_db(&ctx, &super::strs(&args.to_argv())).await;
    }
    let s = ctx.settings();
    let site = Site::of(s);
    let r = inspect::space(&site, &ConnParams::from_settings(s)).await;
    let o = observe::observe(&site, &ConnParams::from_settings(s), &s.wal).await;
    // Volume name (as `space` spells it) -> seconds until full, None when not growing.
    let forecast: BTreeMap<String, Option<f64>> = o
        .volumes
        .iter()
        .filter(|v| v.error.is_none())
        .map(|v| (v.name.replace('_', "-"), v.forecast_seconds))
        .collect();
    if args.json {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            space: &'a inspect::SpaceReport,
            full_forecast_seconds: &'a BTreeMap<String, Option<f64>>,
        }
        return crate::output::print_json(&Json {
            space: &r,
            full_forecast_seconds: &forecast,
        });
    }
    println!("== Volumes");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>6}  path",
        "volume", "size", "used", "avail", "use%"
    );
    for v in &r.volumes {
        match &v.error {
            Some(e) => {
                println!("{:<12} unavailable: {e}  {}", v.name, v.path.display());
                if v.name == "backups" && !v.path.exists() {
                    // The db pod mounts data and WAL archive only.
                    println!(
                        "             (in Kubernetes the backups volume is mounted by the backup \
                         Jobs and the loader pod: `pgkeep --kube loader up`, then `kubectl exec \
                         backups-loader -- df -h {}`)",
                        v.path.display()
                    );
                }
            }
            None => println!(
                "{:<12} {:>10} {:>10} {:>10} {:>5.1}%  {}",
                v.name,
                human_bytes(v.total),
                human_bytes(v.used),
                human_bytes(v.available),
                v.percent,
                v.path.display()
            ),
        }
    }
    for (name, f) in &forecast {
        match f {
            Some(secs) => println!(
                "{name:<12} full in about {} at the growth of the last 7 days{}",
                human_age(*secs as i64),
                if *secs < observe::MIN_FORECAST_SECS {
                    " (less than 3 days: act now)"
                } else {
                    ""
                }
            ),
            None => println!(
                "{name:<12} no full-volume forecast (not growing, or less than an hour of history in the backup and drill records)"
            ),
        }
    }
    for v in &r.volumes {
        match v.level {
            "error" => println!(
                "ERROR: the {} volume is {:.1}% full (>= {}%): act now (see `Out of Space` in the runbook)",
                v.name,
                v.percent,
                inspect::ERROR_PERCENT
            ),
            "warning" => println!(
                "WARNING: the {} volume is {:.1}% full (>= {}%)",
                v.name,
                v.percent,
                inspect::WARN_PERCENT
            ),
            _ => {}
        }
    }
    println!("\n== Databases");
    if let Some(e) = &r.database_error {
        println!("(note: {})", e.lines().next().unwrap_or(e));
    }
    for d in &r.databases {
        println!("{:<30} {:>10}", d.name, human_bytes(d.bytes));
    }
    if !r.largest_tables.is_empty() {
        println!("\n== Largest tables in {}", r.database);
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10}",
            "table", "total", "table", "indexes", "toast"
        );
        for t in &r.largest_tables {
            println!(
                "{:<40} {:>10} {:>10} {:>10} {:>10}",
                format!("{}.{}", t.schema, t.table),
                human_bytes(t.total_bytes),
                human_bytes(t.table_bytes),
                human_bytes(t.index_bytes),
                human_bytes(t.toast_bytes)
            );
        }
    }
    println!("\n== WAL");
    match (r.pg_wal_bytes, r.pg_wal_files) {
        (Some(b), Some(n)) => println!("pg_wal: {} in {n} files", human_bytes(b)),
        _ => println!("pg_wal: unavailable"),
    }
    let a = &r.wal_archive;
    match &a.error {
        Some(e) => println!("WAL archive {}: unavailable: {e}", a.path.display()),
        None => println!(
            "WAL archive {}: {} in {} files ({} segments, {} history); oldest {}, newest {}",
            a.path.display(),
            human_bytes(a.bytes),
            a.files,
            a.segments,
            a.history_files,
            a.oldest.as_deref().unwrap_or("-"),
            a.newest.as_deref().unwrap_or("-")
        ),
    }
    Ok(())
}
