//! The command tree and the global options. Each subcommand's own arguments live beside its
//! implementation in `commands/`; this file only names them. Global options are turned into
//! settings (flags > environment > pgkeep.toml > defaults) before any command runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgkeep_engine::settings::{self, Inputs, Resolved, Target};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "pgkeep",
    version,
    about = "Run a hardened single-instance PostgreSQL on Kubernetes and keep it recoverable.",
    long_about = "Run a hardened single-instance PostgreSQL on Kubernetes and keep it recoverable.\n\n\
        Every data command has a local meaning (act on this machine's paths and PostgreSQL) and a \
        kube meaning (run the same command in the cluster). Choose with --local / --kube or PGKEEP_TARGET.\n\n\
        Exit codes: 0 success, 1 failure, 2 usage error or not implemented, 3 refused by a safety check, 130 interrupted by Ctrl-C before a destructive step.",
    after_help = "The seed's Makefile targets map to: pvc ensure (pg.pvc.ensure), deploy (pg.deploy), \
        scale 0|1 (pg.scale0/pg.scale1), restore dump (pg.restore.dump), bootstrap basebackup \
        (pg.bootstrap.basebackup), wipe (pg.wipe), loader up|down (pg.backups.loader/.rm), \
        restore upload FILE (pg.restore.upload), debug perms (pg.debug.perms), sanity (pg.sanity), \
        space (pg.space)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Settings file (default: ./pgkeep.toml when it exists).
    #[arg(long, global = true, env = "PGKEEP_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Act on this machine (paths and a PostgreSQL this process can reach).
    #[arg(long, global = true, conflicts_with = "kube")]
    pub local: bool,
    /// Act through the Kubernetes API (run the command in the cluster).
    #[arg(long, global = true)]
    pub kube: bool,
    /// Kubernetes namespace.
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// kubeconfig context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGKEEP_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// With --kube: act with the settings deployed in the cluster (the ConfigMap the pods read)
    /// where they differ from the local ones, instead of refusing destructive work.
    #[arg(long, global = true)]
    pub use_deployed: bool,
}

/// What every command gets: resolved settings and the output preferences.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub resolved: Resolved,
    pub log_format: LogFormat,
    pub verbose: u8,
    pub quiet: bool,
    /// `--use-deployed`.
    pub use_deployed: bool,
}

impl Ctx {
    pub fn settings(&self) -> &settings::Settings {
        &self.resolved.settings
    }

    pub fn target(&self) -> Target {
        self.resolved.settings.target
    }
}

impl Global {
    pub fn resolve(&self) -> anyhow::Result<Ctx> {
        let mut inputs = Inputs::from_process_env(self.config.clone());
        if self.local {
            inputs = inputs.flag("target", "local", "--local");
        }
        if self.kube {
            inputs = inputs.flag("target", "kube", "--kube");
        }
        if let Some(ns) = &self.namespace {
            inputs = inputs.flag("kube.namespace", ns, "--namespace");
        }
        if let Some(c) = &self.context {
            inputs = inputs.flag("kube.context", c, "--context");
        }
        Ok(Ctx {
            resolved: settings::resolve(&inputs)?,
            log_format: self.log_format,
            verbose: self.verbose,
            quiet: self.quiet,
            use_deployed: self.use_deployed,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the PVCs when missing; never change a bound claim (make pg.pvc.ensure).
    #[command(subcommand)]
    Pvc(PvcCommand),
    /// Apply the whole stack: PVCs, Secret, Deployment, Service, CronJobs (make pg.deploy).
    Deploy(commands::deploy::Args),
    /// Scale PostgreSQL to 0 or 1 replicas and wait (make pg.scale0 / pg.scale1).
    Scale(commands::scale::Args),
    /// Restore a logical backup.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// Bootstrap PGDATA from a physical backup.
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
    /// Empty the data volume and recreate PGDATA 0700 (make pg.wipe). Destructive.
    Wipe(commands::wipe::Args),
    /// The backups-loader helper pod (make pg.backups.loader / pg.backups.loader.rm).
    #[command(subcommand)]
    Loader(LoaderCommand),
    /// Diagnostics.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Schemas, tables and row counts of the database (make pg.sanity).
    Sanity(commands::sanity::Args),
    /// Disk usage of the volumes and the database (make pg.space).
    Space(commands::space::Args),
    /// Take a backup now (what the CronJobs run).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// WAL archiving: archive_command and restore_command.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Prepare the socket dir and PGDATA, behind the mount guard (the init containers).
    PrepDirs(commands::prep_dirs::Args),
    /// Run PostgreSQL in the db container: guard, initdb when empty, managed settings.
    Serve(commands::serve::Args),
    /// Render the Kubernetes manifests as a kustomize tree.
    Render(commands::render::Args),
    /// Check Kubernetes manifests for the pitfalls that lose data.
    Lint(commands::lint::Args),
    /// Server, archiver and backup health at a glance.
    Status(commands::status::Args),
    /// Prometheus metrics: backups, drills, WAL archiving, volumes (stdout, or served with --listen).
    Metrics(commands::metrics::Args),
    /// The backup repository.
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Restore the newest backups into a scratch cluster and check them.
    Drill(commands::drill::Args),
    /// Run the main job on a throwaway local cluster.
    Demo(commands::demo::Args),
    /// Encrypted copies in S3-compatible object storage.
    #[command(subcommand)]
    Offsite(OffsiteCommand),
    /// Settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Receive a file of known size and checksum on stdin (used inside the loader pod).
    #[command(hide = true)]
    Receive(commands::receive::Args),
}

#[derive(Debug, Subcommand)]
pub enum PvcCommand {
    /// Create missing PVCs; report bound ones (make pg.pvc.ensure).
    Ensure(commands::pvc_ensure::Args),
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Restore the newest (or a named) nightly bundle (make pg.restore.dump).
    Dump(commands::restore_dump::Args),
    /// Upload a dump file and restore it (make pg.restore.upload FILE=...).
    Upload(commands::restore_upload::Args),
}

#[derive(Debug, Subcommand)]
pub enum BootstrapCommand {
    /// Replace PGDATA with a base backup and replay WAL (make pg.bootstrap.basebackup). Destructive.
    Basebackup(commands::bootstrap_basebackup::Args),
}

#[derive(Debug, Subcommand)]
pub enum LoaderCommand {
    /// Create the backups-loader pod (make pg.backups.loader).
    Up(commands::loader::UpArgs),
    /// Delete the backups-loader pod (make pg.backups.loader.rm).
    Down(commands::loader::DownArgs),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Uid, mounts and directory permissions, with the mount guard's verdict (make pg.debug.perms).
    Perms(commands::debug_perms::Args),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// The nightly logical bundle: nightly-YYYYMMDD-HHMM.tar.gz.
    Logical(commands::backup_logical::Args),
    /// The weekly physical bundle: basebackup-YYYYMMDD-HHMM.bundle.tar.zst.
    Physical(commands::backup_physical::Args),
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// archive_command: store one WAL file in the archive (`pgkeep wal push %p`).
    Push(commands::wal_push::Args),
    /// restore_command: fetch one WAL file from the archive (`pgkeep wal fetch %f %p`).
    Fetch(commands::wal_fetch::Args),
    /// Stream WAL into the archive as it is written (replication slot; `--synchronous` for a
    /// recovery point of zero), in the foreground until stopped.
    Stream(commands::wal_stream::Args),
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// List backups.
    List(commands::backups_list::Args),
    /// Verify checksums (and that dumps are readable).
    Verify(commands::backups_verify::Args),
    /// Remove old backups and the WAL no kept backup needs.
    Prune(commands::backups_prune::Args),
}

#[derive(Debug, Subcommand)]
pub enum OffsiteCommand {
    /// Write a new age identity (0600) and print its recipient.
    Keygen(commands::offsite_keygen::Args),
    /// Upload every bundle and WAL file that is not off-site yet.
    Sync(commands::offsite_sync::Args),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved settings as a pgkeep.toml, with where each value came from.
    Show(commands::config_show::Args),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_seed_make_target_has_a_command() {
        let help = Cli::command().render_long_help().to_string();
        for target in [
            "pg.pvc.ensure",
            "pg.deploy",
            "pg.scale0",
            "pg.scale1",
            "pg.restore.dump",
            "pg.bootstrap.basebackup",
            "pg.wipe",
            "pg.backups.loader",
            "pg.restore.upload",
            "pg.debug.perms",
            "pg.sanity",
            "pg.space",
        ] {
            assert!(help.contains(target), "{target} missing from --help");
        }
        for argv in [
            &["pgkeep", "pvc", "ensure"][..],
            &["pgkeep", "deploy"],
            &["pgkeep", "scale", "0"],
            &["pgkeep", "scale", "1"],
            &["pgkeep", "restore", "dump"],
            &["pgkeep", "bootstrap", "basebackup"],
            &["pgkeep", "wipe"],
            &["pgkeep", "loader", "up"],
            &["pgkeep", "loader", "down"],
            &["pgkeep", "restore", "upload", "./dump.tar.gz"],
            &["pgkeep", "debug", "perms"],
            &["pgkeep", "sanity"],
            &["pgkeep", "space"],
            &["pgkeep", "backup", "logical"],
            &["pgkeep", "backup", "physical"],
            &["pgkeep", "wal", "push", "pg_wal/000000010000000000000001"],
            &[
                "pgkeep",
                "wal",
                "fetch",
                "000000010000000000000001",
                "pg_wal/RECOVERYXLOG",
            ],
            &["pgkeep", "prep-dirs"],
            &["pgkeep", "serve"],
            &["pgkeep", "render"],
            &["pgkeep", "lint"],
            &["pgkeep", "status"],
            &["pgkeep", "backups", "list"],
            &["pgkeep", "backups", "verify"],
            &["pgkeep", "backups", "prune"],
            &["pgkeep", "drill"],
            &["pgkeep", "demo"],
            &["pgkeep", "config", "show"],
            &["pgkeep", "offsite", "keygen", "--out", "id.txt"],
            &["pgkeep", "offsite", "sync", "--follow"],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    /// Parses `pgkeep ARGV` (one command, every option set but `unset_ok`), parses its
    /// `to_argv()` back and compares: an option `to_argv()` forgets (and a pod would not get)
    /// fails here, and so does a new option this test does not set.
    fn round_trip<A: std::fmt::Debug>(
        argv: &[&str],
        unset_ok: &[&str],
        pick: fn(Command) -> Option<A>,
        to_argv: fn(&A) -> Vec<String>,
    ) {
        let parse = |argv: Vec<String>| {
            let full: Vec<String> = std::iter::once("pgkeep".to_owned()).chain(argv).collect();
            let cli = Cli::try_parse_from(&full).unwrap_or_else(|e| panic!("{full:?}: {e}"));
            pick(cli.command).unwrap_or_else(|| panic!("{full:?} is another command"))
        };
        let a = parse(argv.iter().map(|s| s.to_string()).collect());
        let shown = format!("{a:?}");
        assert_eq!(unset_options(&shown), unset_ok, "set every option: {shown}");
        let back = parse(to_argv(&a));
        assert_eq!(format!("{back:?}"), shown, "{:?}", to_argv(&a));
    }

    /// The fields a derived Debug shows as `false` or `None` (the test values hold no `,{:`).
    fn unset_options(debug: &str) -> Vec<String> {
        debug
            .split([',', '{'])
            .filter_map(|f| {
                let (name, value) = f.split_once(':')?;
                let v = value.trim().trim_end_matches('}').trim();
                (v == "false" || v == "None").then(|| name.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn status_argv_round_trips() {
        round_trip(
            &["status", "--json", "--min-free-percent", "12.5"],
            &[],
            |c| match c {
                Command::Status(a) => Some(a),
                _ => None,
            },
            commands::status::Args::to_argv,
        );
    }

    #[test]
    fn debug_perms_argv_round_trips() {
        round_trip(
            &["debug", "perms", "--json"],
            &[],
            |c| match c {
                Command::Debug(DebugCommand::Perms(a)) => Some(a),
                _ => None,
            },
            commands::debug_perms::Args::to_argv,
        );
    }

    #[test]
    fn space_argv_round_trips() {
        round_trip(
            &["space", "--json"],
            &[],
            |c| match c {
                Command::Space(a) => Some(a),
                _ => None,
            },
            commands::space::Args::to_argv,
        );
    }

    #[test]
    fn sanity_argv_round_trips() {
        round_trip(
            &["sanity", "--estimate", "--json"],
            &[],
            |c| match c {
                Command::Sanity(a) => Some(a),
                _ => None,
            },
            commands::sanity::Args::to_argv,
        );
    }

    #[test]
    fn backups_list_argv_round_trips() {
        round_trip(
            &["backups", "list", "--json"],
            &[],
            |c| match c {
                Command::Backups(BackupsCommand::List(a)) => Some(a),
                _ => None,
            },
            commands::backups_list::Args::to_argv,
        );
    }

    #[test]
    fn backups_verify_argv_round_trips() {
        round_trip(
            &[
                "backups",
                "verify",
                "nightly-20261125-0200.tar.gz",
                "--json",
                "--offsite",
            ],
            &[],
            |c| match c {
                Command::Backups(BackupsCommand::Verify(a)) => Some(a),
                _ => None,
            },
            commands::backups_verify::Args::to_argv,
        );
    }

    #[test]
    fn backups_prune_argv_round_trips() {
        round_trip(
            &[
                "backups",
                "prune",
                "--dry-run",
                "--delete-damaged",
                "--json",
            ],
            &[],
            |c| match c {
                Command::Backups(BackupsCommand::Prune(a)) => Some(a),
                _ => None,
            },
            commands::backups_prune::Args::to_argv,
        );
    }

    #[test]
    fn drill_argv_round_trips() {
        let pick = |c| match c {
            Command::Drill(a) => Some(a),
            _ => None,
        };
        let all = [
            "--keep",
            "--timeout",
            "60",
            "-j",
            "3",
            "--json",
            "--offsite",
        ];
        // --skip-logical and --skip-physical exclude each other.
        for (skip, unset) in [
            ("--skip-logical", "skip_physical"),
            ("--skip-physical", "skip_logical"),
        ] {
            let mut argv = vec!["drill", skip];
            argv.extend(all);
            round_trip(&argv, &[unset], pick, commands::drill::Args::to_argv);
        }
    }

    #[test]
    fn restore_dump_argv_round_trips() {
        round_trip(
            &[
                "restore",
                "dump",
                "--from",
                "nightly-20261125-0200.tar.gz",
                "--offsite",
                "-j",
                "4",
                "--clean",
                "--keep-old",
                "--yes",
                "--keep-going",
                "--json",
            ],
            &[],
            |c| match c {
                Command::Restore(RestoreCommand::Dump(a)) => Some(a),
                _ => None,
            },
            commands::restore_dump::Args::to_argv,
        );
    }

    #[test]
    fn restore_upload_argv_round_trips() {
        round_trip(
            &[
                "restore",
                "upload",
                "./records dump.tar.gz",
                "-j",
                "4",
                "--clean",
                "--keep-old",
                "--yes",
                "--keep-going",
                "--json",
                "--remove-if-refused",
            ],
            &[],
            |c| match c {
                Command::Restore(RestoreCommand::Upload(a)) => Some(a),
                _ => None,
            },
            commands::restore_upload::Args::to_argv,
        );
    }

    #[test]
    fn bootstrap_basebackup_argv_round_trips() {
        let pick = |c| match c {
            Command::Bootstrap(BootstrapCommand::Basebackup(a)) => Some(a),
            _ => None,
        };
        let all = [
            "--from",
            "basebackup-20261125-0620.bundle.tar.gz",
            "--offsite",
            "--target-timeline",
            "current",
            "--keep-old",
            "--yes",
            "--timeout",
            "60",
            "--json",
        ];
        // One target at a time; --leave-running excludes --scale-up (and --scale-up-app needs it).
        for (more, unset) in [
            (
                &["--target-time", "2026-11-25T19:30:00Z", "--leave-running"][..],
                &["target_lsn", "target_name", "scale_up", "scale_up_app"][..],
            ),
            (
                &["--target-lsn", "0/5000060", "--scale-up", "postgres"][..],
                &[
                    "target_time",
                    "target_name",
                    "leave_running",
                    "scale_up_app",
                ][..],
            ),
            (
                &[
                    "--target-name",
                    "before-migration",
                    "--scale-up",
                    "postgres",
                    "--scale-up-app",
                    "pg",
                ][..],
                &["target_time", "target_lsn", "leave_running"][..],
            ),
        ] {
            let mut argv = vec!["bootstrap", "basebackup"];
            argv.extend(all);
            argv.extend(more);
            round_trip(
                &argv,
                unset,
                pick,
                commands::bootstrap_basebackup::Args::to_argv,
            );
        }
    }
}
