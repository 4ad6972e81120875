//! `pgkeep restore upload FILE` (local meaning of the seed's restore-from-upload job): copy FILE
//! into the backups directory atomically with a checksum check, then restore it. Accepted: a
//! pgkeep bundle, any .tar.gz with a *.dir directory dump or *.sql / *.sql.gz files, a bare
//! .sql, .sql.gz or custom-format .dump; anything else is refused with what was found.

use pgkeep_engine::logical::{LogicalError, RestoreSource};
use pgkeep_engine::settings::Target;
use pgkeep_engine::upload::{self, FileKind};

use crate::cli::Ctx;
use crate::commands::restore_dump::{RestoreArgs, restore};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dump file: a pgkeep bundle, a .tar.gz with a *.dir dump or *.sql files, .sql, .sql.gz or .dump.
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub restore: RestoreArgs,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return Err(crate::exit::not_implemented("restore upload --kube"));
    }
    if !args.file.is_file() {
        return Err(LogicalError::NoSuchFile { path: args.file }.into());
    }
    // Refuse what cannot be restored before copying anything.
    if let FileKind::Other(found) = upload::sniff(&args.file)? {
        return Err(LogicalError::Unrecognised {
            path: args.file,
            found,
        }
        .into());
    }
    let (copied, created) = upload::copy_into(&args.file, &ctx.settings().paths.backups)?;
    tracing::info!(path = %copied.display(), "uploaded");
    // When the upload turns out not to be restorable (checked before the database is touched),
    // the copy is removed again: a refused upload leaves the backups directory as it was.
    let remove_on_refusal = created.then(|| copied.clone());
    restore(
        RestoreSource::File(copied),
        &args.restore,
        &ctx,
        remove_on_refusal.as_deref(),
    )
    .await
}
