//! One file per command, one `run` function per command; this module only dispatches.

pub mod backup_logical;
pub mod backup_physical;
pub mod backups_list;
pub mod backups_prune;
pub mod backups_verify;
pub mod bootstrap_basebackup;
pub mod config_show;
pub mod debug_perms;
pub mod demo;
pub mod deploy;
pub mod drill;
pub mod lint;
pub mod loader;
pub mod metrics;
pub mod offsite_keygen;
pub mod offsite_sync;
pub mod prep_dirs;
pub mod pvc_ensure;
pub mod receive;
pub mod render;
pub mod restore_dump;
pub mod restore_upload;
pub mod sanity;
pub mod scale;
pub mod serve;
pub mod space;
pub mod status;
pub mod wal_fetch;
pub mod wal_push;
pub mod wal_stream;
pub mod wipe;

use crate::cli::{
    BackupCommand, BackupsCommand, BootstrapCommand, Command, ConfigCommand, Ctx, DebugCommand,
    LoaderCommand, OffsiteCommand, PvcCommand, RestoreCommand, WalCommand,
};
use crate::exit;

/// `argv` as the `&[&str]` the in-cluster runners take.
fn strs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

/// Runs one command; its exit code when it did not fail. Most commands succeed with 0; `wal
/// fetch` answers PostgreSQL's restore_command contract (1: not there, 126: damaged) and `serve`
/// passes PostgreSQL's own exit code through.
pub async fn run(command: Command, ctx: Ctx) -> anyhow::Result<u8> {
    match command {
        Command::Wal(WalCommand::Fetch(a)) => wal_fetch::run(a, ctx).await,
        Command::Serve(a) => serve::run(a, ctx).await,
        other => run_to_success(other, ctx).await.map(|()| exit::SUCCESS),
    }
}

async fn run_to_success(command: Command, ctx: Ctx) -> anyhow::Result<()> {
    match command {
        Command::Pvc(PvcCommand::Ensure(a)) => pvc_ensure::run(a, ctx).await,
        Command::Deploy(a) => deploy::run(a, ctx).await,
        Command::Scale(a) => scale::run(a, ctx).await,
        Command::Restore(RestoreCommand::Dump(a)) => restore_dump::run(a, ctx).await,
        Command::Restore(RestoreCommand::Upload(a)) => restore_upload::run(a, ctx).await,
        Command::Bootstrap(BootstrapCommand::Basebackup(a)) => {
            bootstrap_basebackup::run(a, ctx).await
        }
        Command::Wipe(a) => wipe::run(a, ctx).await,
        Command::Loader(LoaderCommand::Up(a)) => loader::up(a, ctx).await,
        Command::Loader(LoaderCommand::Down(a)) => loader::down(a, ctx).await,
        Command::Debug(DebugCommand::Perms(a)) => debug_perms::run(a, ctx).await,
        Command::Sanity(a) => sanity::run(a, ctx).await,
        Command::Space(a) => space::run(a, ctx).await,
        Command::Backup(BackupCommand::Logical(a)) => backup_logical::run(a, ctx).await,
        Command::Backup(BackupCommand::Physical(a)) => backup_physical::run(a, ctx).await,
        Command::Wal(WalCommand::Push(a)) => wal_push::run(a, ctx).await,
        Command::Wal(WalCommand::Fetch(_)) | Command::Serve(_) => {
            unreachable!("answered with their own exit codes in `run`")
        }
        Command::Wal(WalCommand::Stream(a)) => wal_stream::run(a, ctx).await,
        Command::PrepDirs(a) => prep_dirs::run(a, ctx).await,
        Command::Render(a) => render::run(a, ctx).await,
        Command::Lint(a) => lint::run(a, ctx).await,
        Command::Status(a) => status::run(a, ctx).await,
        Command::Metrics(a) => metrics::run(a, ctx).await,
        Command::Backups(BackupsCommand::List(a)) => backups_list::run(a, ctx).await,
        Command::Backups(BackupsCommand::Verify(a)) => backups_verify::run(a, ctx).await,
        Command::Backups(BackupsCommand::Prune(a)) => backups_prune::run(a, ctx).await,
        Command::Drill(a) => drill::run(a, ctx).await,
        Command::Demo(a) => demo::run(a, ctx).await,
        Command::Config(ConfigCommand::Show(a)) => config_show::run(a, ctx).await,
        Command::Offsite(OffsiteCommand::Keygen(a)) => offsite_keygen::run(a, ctx).await,
        Command::Offsite(OffsiteCommand::Sync(a)) => offsite_sync::run(a, ctx).await,
        Command::Receive(a) => receive::run(a, ctx).await,
    }
}
