//! `pgkeep render`: the Kubernetes manifests as a kustomize tree in the seed's layout
//! (`infra/k8s/base/postgres`, `infra/k8s/overlays/dev`), written under `--out DIR`, or as one
//! multi-document YAML stream on stdout. Pure: no API calls.

use std::path::PathBuf;

use pgkeep_engine::settings::Settings;
use pgkeep_kube::manifests;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the tree under this directory instead of printing one YAML stream.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Render for the built-in defaults, ignoring pgkeep.toml and the environment (what the
    /// committed deploy/ tree holds).
    #[arg(long)]
    pub defaults: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let settings = if args.defaults {
        Settings::default()
    } else {
        ctx.settings().clone()
    };
    let tree = manifests::render(&settings);
    match args.out {
        Some(dir) => {
            let written = tree.write_to(&dir)?;
            for p in &written {
                tracing::debug!(path = %p.display(), "written");
            }
            tracing::info!(files = written.len(), dir = %dir.display(), "rendered");
        }
        None => print!("{}", tree.to_stream()?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use pgkeep_engine::settings::Settings;
    use pgkeep_kube::manifests;

    use crate::cli::Cli;

    /// Every container that runs pgkeep, as `command + args`, from the rendered objects.
    fn pgkeep_invocations() -> Vec<(String, String, Vec<String>)> {
        let tree = manifests::render(&Settings::default());
        let mut out = Vec::new();
        for (file, obj) in tree.objects() {
            let Some(pod) = obj.pod_spec() else { continue };
            for c in pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
            {
                let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
                argv.extend(c.args.clone().unwrap_or_default());
                if argv.first().map(String::as_str) == Some("pgkeep") {
                    out.push((file.path.clone(), c.name.clone(), argv));
                }
            }
        }
        out
    }

    #[test]
    fn every_container_command_parses_with_the_cli() {
        let all = pgkeep_invocations();
        // db, fix-run, prep-dirs, 2 CronJobs, 4 Jobs.
        assert!(all.len() >= 9, "{all:?}");
        for (file, container, argv) in &all {
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!(
                    "{file} container {container}: `{}` does not parse:\n{e}",
                    argv.join(" ")
                );
            }
        }
        let commands: Vec<String> = all.iter().map(|(_, _, a)| a[1..].join(" ")).collect();
        for want in [
            "serve",
            "prep-dirs --data-only",
            "prep-dirs --run-dir-only",
            "backup logical",
            "backup physical",
            "restore dump",
            "bootstrap basebackup --yes --scale-up postgres --scale-up-app postgres",
            "wipe --yes",
            "restore upload $(PGKEEP_UPLOAD_FILE)",
            "metrics --listen 0.0.0.0:9187",
            "drill",
        ] {
            assert!(
                commands.iter().any(|c| c == want),
                "no container runs `pgkeep {want}`: {commands:?}"
            );
        }
    }

    #[test]
    fn a_drifted_command_is_caught() {
        assert!(Cli::try_parse_from(["pgkeep", "backup", "logicl"]).is_err());
        assert!(Cli::try_parse_from(["pgkeep", "prep-dirs", "--data-onyl"]).is_err());
    }
}
