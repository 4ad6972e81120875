//! `pgkeep offsite keygen --out FILE`: a new age identity for off-site copies. The identity (the
//! private key, needed only to restore) goes to FILE, mode 0600, never over an existing file;
//! the recipient (`age1...`, the public key that `offsite.recipients` lists) is printed.

use std::path::PathBuf;

use anyhow::Context;
use pgkeep_engine::fsutil;
use pgkeep_engine::offsite;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the identity (refused when the file exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub async fn run(args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    let name = args
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} names no file", args.out.display()))?
        .to_owned();
    if args.out.symlink_metadata().is_ok() {
        anyhow::bail!(
            "{} exists; an identity is never overwritten (objects encrypted to it could no longer be restored)\nhint: choose another --out, or move the old file away first",
            args.out.display()
        );
    }
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let (text, recipient) = offsite::generate_identity();
    let mut f = fsutil::AtomicFile::create(&dir, &name, 0o600)?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("write {}", f.partial_path().display()))?;
    f.commit()?;
    eprintln!(
        "wrote the identity to {} (0600): keep it safe and away from the cluster; restores need it",
        args.out.display()
    );
    println!("{recipient}");
    Ok(())
}
