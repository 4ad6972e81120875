//! `pgkeep status --local`: server up/down, version, recovery, `pg_stat_archiver` interpreted,
//! the WAL archive, the newest logical and physical backups with their age, and an unfinished
//! bootstrap's marker on the data volume; then the health verdict (the engine's `observe`
//! rules, the same as the alerts): exits 1 with the reasons listed (and in `--json`, under
//! `health`) when anything is unhealthy, 0 when healthy, so a probe, a cron or CI can use it.
//! `--kube` runs it in the db pod's `metrics` container, which mounts all three volumes.

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::inspect::{self, human_age, human_bytes};
use pgkeep_engine::observe;
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A volume with less free space than this percentage is unhealthy.
    #[arg(long, default_value_t = observe::MIN_FREE_PERCENT, value_name = "PERCENT")]
    pub min_free_percent: f64,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec![
            "status".to_owned(),
            "--min-free-percent".to_owned(),
            self.min_free_percent.to_string(),
        ];
        if self.json {
            a.push("--json".to_owned());
        }
        a
    }
}

/// The verdict in `--json`.
#[derive(Debug, serde::Serialize)]
struct Health<'a> {
    healthy: bool,
    problems: &'a [observe::Problem],
}

#[derive(Debug, serde::Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    status: &'a inspect::StatusReport,
    health: Health<'a>,
    observation: &'a observe::Observation,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let argv = args.to_argv();
        return crate::cluster::run_local_in_container(
            &ctx,
            super::metrics::METRICS_CONTAINER,
            &super::strs(&argv),
        )
        .await;
    }
    let s = ctx.settings();
    let r = inspect::status(
        &ConnParams::from_settings(s),
        &s.paths.pgroot,
        &s.paths.wal_archive,
        &s.paths.backups,
    )
    .await;
    let site = inspect::Site::of(s);
    let o = observe::observe(&site, &ConnParams::from_settings(s), &s.wal).await;
    let problems = observe::problems_with(&o, args.min_free_percent);
    if args.json {
        crate::output::print_json(&Json {
            status: &r,
            health: Health {
                healthy: problems.is_empty(),
                problems: &problems,
            },
            observation: &o,
        })?;
        return verdict(&problems);
    }
    print_text(&r, &ctx);
    print_runs(&o);
    if problems.is_empty() {
        println!("health:      ok");
    } else {
        println!("health:      UNHEALTHY");
        for p in &problems {
            println!("  - {}: {}", p.check, p.message);
        }
    }
    verdict(&problems)
}

fn verdict(problems: &[observe::Problem]) -> anyhow::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let checks: Vec<&str> = problems.iter().map(|p| p.check).collect();
    anyhow::bail!(
        "unhealthy: {}\nhint: the reasons are listed above; `pgkeep status --json` has them under `health`",
        checks.join(", ")
    )
}

fn print_runs(o: &observe::Observation) {
    for (kind, sum) in &o.runs {
        let Some(last) = &sum.last else { continue };
        println!(
            "last {:<9} {} {} ago{}",
            format!("{}:", kind.label()),
            if last.succeeded() { "ok    " } else { "FAILED" },
            human_age(o.at.as_second() - last.stop.as_second()),
            last.bundle
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default()
        );
    }
}

fn print_text(r: &inspect::StatusReport, ctx: &Ctx) {
    match (&r.server.up, &r.server.version) {
        (true, Some(v)) => println!(
            "server:      up, PostgreSQL {v}{}",
            if r.server.in_recovery == Some(true) {
                ", IN RECOVERY"
            } else {
                ", primary"
            }
        ),
        _ => println!(
            "server:      DOWN ({})",
            r.server
                .error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("unreachable")
        ),
    }
    if let Some(m) = &r.bootstrap_unfinished {
        println!(
            "bootstrap:   UNFINISHED ({} is there): the server will not initialize an empty \
             database; run `pgkeep bootstrap basebackup` again, or remove the file knowingly",
            m.display()
        );
    }
    if let Some(a) = &r.archiver {
        println!("archiver:    {} ({})", a.verdict, a.explanation);
        println!(
            "  archived:  {} files, last {} {}",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or("-"),
            a.last_archived_age_seconds
                .map(|s| format!("{} ago", human_age(s as i64)))
                .unwrap_or_default()
        );
        println!(
            "  failed:    {} times{}",
            a.failed_count,
            match (&a.last_failed_wal, &a.last_failed_time) {
                (Some(w), Some(t)) => format!(", last {w} at {t}"),
                _ => String::new(),
            }
        );
        if let Some(n) = a.ready {
            println!("  waiting:   {n} segments ready to archive");
        }
    }
    let w = &r.wal_archive;
    println!(
        "WAL archive: {} in {} files ({} segments), newest {}",
        human_bytes(w.bytes),
        w.files,
        w.segments,
        w.newest.as_deref().unwrap_or("-")
    );
    for (label, b) in [
        ("logical:    ", &r.newest_logical),
        ("physical:   ", &r.newest_physical),
    ] {
        match b {
            Some(b) => println!(
                "{label} {} ({}, {} old)",
                b.name,
                human_bytes(b.size),
                human_age(b.age_seconds)
            ),
            None if !ctx.settings().paths.backups.is_dir() => println!(
                "{label} - (the backups volume is not mounted here; in Kubernetes the backup Jobs \
                 and the loader pod mount it: `pgkeep --kube backups list`)"
            ),
            None => println!("{label} none"),
        }
    }
}
