//! `pgkeep sanity` (the seed's pg.sanity): per schema its tables with row counts, materialized
//! views and whether they are populated, installed extensions, invalid indexes. A table on a
//! terminal, `--json` for scripts; exits 1 when the database cannot be reached.

use pgkeep_engine::db::{ConnParams, Db};
use pgkeep_engine::sanity::Rows;
use pgkeep_engine::settings::Target;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use the planner's row estimates instead of counting (for very large tables).
    #[arg(long)]
    pub estimate: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in a pod; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["sanity".to_owned()];
        for (on, flag) in [(self.estimate, "--estimate"), (self.json, "--json")] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return crate::cluster::run_local_in_db(&ctx, &super::strs(&args.to_argv())).await;
    }
    let db = Db::connect(&ConnParams::from_settings(ctx.settings())).await?;
    let rows = if args.estimate {
        Rows::Estimated
    } else {
        Rows::Counted { jobs: 1 }
    };
    let report = db.sanity(rows).await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
