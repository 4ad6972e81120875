//! `pgkeep receive --size N --sha256 H DEST`: the receiving end of `pgkeep restore upload --kube`,
//! run inside the loader pod. Reads exactly N bytes from stdin, checks the SHA-256, and only then
//! publishes DEST (never overwriting). Prints `received DEST N SHA256` on success.

use std::path::PathBuf;

use pgkeep_engine::transfer;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exact number of bytes that follow on stdin.
    #[arg(long)]
    pub size: u64,
    /// SHA-256 of those bytes (hex).
    #[arg(long)]
    pub sha256: String,
    /// Where to write the file.
    pub dest: PathBuf,
}

pub async fn run(args: Args, _ctx: Ctx) -> anyhow::Result<()> {
    let path = tokio::task::spawn_blocking(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        transfer::receive(&mut lock, &args.dest, args.size, &args.sha256, |_| {})
            .map(|p| (p, args.size, args.sha256))
    })
    .await??;
    println!("received {} {} {}", path.0.display(), path.1, path.2);
    Ok(())
}
