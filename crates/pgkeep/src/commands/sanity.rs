//! `pgkeep sanity` (the seed's pg.sanity): per schema its tables with row counts, materialized
//! views and whether they are populated, installed extensions, invalid indexes. A table on a
//! terminal, `--json` for scripts; exits 1 when the database cannot be reached.

use pgkeep_engine::db::{ConnParams, Db};
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

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        let mut a = vec!["sanity"];
        if args.estimate {
            a.push("--estimate");
        }
        if args.json {
            a.push("--json");
        }
        return crate::kube::run_local_in_db(&ctx, &a).await;
    }
    let db = Db::connect(&ConnParams::from_settings(ctx.settings())).await?;
    let report = db.sanity(args.estimate).await?;
    if args.json {
        crate::output::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
