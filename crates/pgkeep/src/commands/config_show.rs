//! `pgkeep config show`: the resolved settings as a `pgkeep.toml` (each line says where its value
//! came from), or as JSON with the sources. Secrets are not settings and never shown.

use serde::Serialize;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON for scripts: {"settings": ..., "sources": {...}}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Shown<'a> {
    settings: &'a pgkeep_engine::settings::Settings,
    sources: &'a std::collections::BTreeMap<String, pgkeep_engine::settings::Source>,
    config_file: Option<&'a std::path::Path>,
    password: &'static str,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let r = &ctx.resolved;
    let password = if std::env::var_os("PGPASSWORD").is_some() {
        "<redacted> (from PGPASSWORD)"
    } else if std::env::var_os("PGPASSFILE").is_some() {
        "<redacted> (from PGPASSFILE)"
    } else {
        "not set"
    };
    if args.json {
        return crate::output::print_json(&Shown {
            settings: &r.settings,
            sources: &r.sources,
            config_file: r.file.as_deref(),
            password,
        });
    }
    print!("{}", r.to_annotated_toml());
    println!("\n# superuser password: {password}");
    Ok(())
}
