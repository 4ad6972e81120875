//! `pgkeep debug perms`: the seed's pg.debug.perms on this machine: effective uid/gid, the mount
//! covering each of the volume root, PGDATA, WAL archive, backups and socket dir, each
//! directory's owner and mode, and the mount guard's verdict.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgkeep_engine::mountinfo::{self, Mount};
use pgkeep_engine::settings::Target;
use serde::Serialize;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct DirInfo {
    role: &'static str,
    path: PathBuf,
    exists: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<String>,
    mount: Option<Mount>,
}

#[derive(Debug, Serialize)]
struct Report {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    dirs: Vec<DirInfo>,
    guard_ok: bool,
    guard: String,
}

fn dir_info(role: &'static str, path: &Path, mounts: &[Mount]) -> DirInfo {
    let meta = std::fs::metadata(path).ok();
    let resolved = mountinfo::resolve_path(path);
    DirInfo {
        role,
        path: path.to_owned(),
        exists: meta.is_some(),
        uid: meta.as_ref().map(|m| m.uid()),
        gid: meta.as_ref().map(|m| m.gid()),
        mode: meta
            .as_ref()
            .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777)),
        mount: mountinfo::covering(mounts, &resolved).cloned(),
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return Err(crate::exit::not_implemented("debug perms --kube"));
    }
    let s = ctx.settings();
    let mounts = mountinfo::read_self()?;
    let (guard_ok, guard) = match mountinfo::check(&mounts, &s.paths.pgroot, &s.paths.pgdata) {
        Ok(r) => (r.ok(), r.to_string()),
        Err(e) => (false, format!("refused: {e}")),
    };
    let report = Report {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        groups: rustix::process::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        dirs: vec![
            dir_info("volume root", &s.paths.pgroot, &mounts),
            dir_info("PGDATA", &s.paths.pgdata, &mounts),
            dir_info("WAL archive", &s.paths.wal_archive, &mounts),
            dir_info("backups", &s.paths.backups, &mounts),
            dir_info("socket dir", &s.paths.run_dir, &mounts),
        ],
        guard_ok,
        guard,
    };
    if args.json {
        return crate::output::print_json(&report);
    }
    println!(
        "running as uid {} gid {} (groups {:?}); expected data owner {}:{}",
        report.uid, report.gid, report.groups, s.postgres.uid, s.postgres.gid
    );
    println!();
    println!(
        "{:<12} {:<36} {:>9} {:>6}  mount",
        "role", "path", "owner", "mode"
    );
    for d in &report.dirs {
        let owner = match (d.uid, d.gid) {
            (Some(u), Some(g)) => format!("{u}:{g}"),
            _ => "-".into(),
        };
        let mount = d
            .mount
            .as_ref()
            .map(|m| format!("{} on {} ({})", m.source, m.mount_point.display(), m.fstype))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<36} {:>9} {:>6}  {}",
            d.role,
            d.path.display().to_string() + if d.exists { "" } else { " (missing)" },
            owner,
            d.mode.as_deref().unwrap_or("-"),
            mount
        );
    }
    println!();
    println!("mount guard: {}", report.guard.trim_end());
    Ok(())
}
