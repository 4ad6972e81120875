//! The data volume and PGDATA: preparing directories (the seed's `fix-run` and `prep-dirs` init
//! containers), wiping (the seed's `pgdata-wipe-full` job), listing, and telling whether a
//! postmaster is running on a data directory.
//!
//! Ownership: PGDATA is 0700 and the socket directory 0775, both owned by the configured uid:gid.
//! pgkeep chowns only when it runs as root; as the data owner (uid 999 on a root-squash volume)
//! it must and does work without chown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fsutil::{self, FsError, IoContext};
use crate::mountinfo::{self, GuardError};

#[derive(Debug, thiserror::Error)]
pub enum DatadirError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(
        "{path} is owned by uid {owner}, not {want} (this process runs as uid {euid}) and only root may change that\nhint: {hint}"
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        want: u32,
        euid: u32,
        hint: &'static str,
    },
    #[error(
        "PGDATA {path} is not empty but is not a PostgreSQL data directory (no PG_VERSION); it holds: {entries}\nhint: {hint}"
    )]
    ForeignContent {
        path: PathBuf,
        entries: String,
        hint: String,
    },
    #[error(
        "a postmaster (pid {pid}) is running on {pgdata}\nhint: stop PostgreSQL first (in Kubernetes: pgkeep scale 0), then try again"
    )]
    PostmasterRunning { pid: i32, pgdata: PathBuf },
    #[error("refusing to wipe {path}: {reason}\nhint: {hint}")]
    UnsafeWipe {
        path: PathBuf,
        reason: String,
        hint: String,
    },
}

/// What `prep-dirs` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepMode {
    /// Only the socket directory (the root `fix-run` step).
    RunDirOnly,
    /// Only the data volume and PGDATA (the uid-999 `prep-dirs` step).
    DataOnly,
    /// Both (a plain host).
    All,
}

/// One step taken (or found already done), for the log.
#[derive(Debug, Clone, Serialize)]
pub struct PrepStep {
    pub path: PathBuf,
    pub action: String,
}

/// Prepare the socket dir and PGDATA; idempotent. The mount guard runs before anything is
/// written to the data volume.
pub fn prep_dirs(
    pgroot: &Path,
    pgdata: &Path,
    run_dir: &Path,
    uid: u32,
    gid: u32,
    mode: PrepMode,
) -> Result<Vec<PrepStep>, DatadirError> {
    let mut steps = Vec::new();
    if mode == PrepMode::RunDirOnly {
        ensure_dir(run_dir, 0o775, uid, gid, &mut steps)?;
        return Ok(steps);
    }
    // The guard runs before anything at all is written.
    if !pgroot.exists() {
        return Err(FsError::new(
            "find volume root",
            pgroot,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "does not exist (is the data volume mounted there?)",
            ),
        )
        .into());
    }
    let report = mountinfo::guard(pgroot, pgdata)?;
    steps.push(PrepStep {
        path: pgdata.to_owned(),
        action: report.verdict(),
    });
    if pgdata.exists() {
        check_contents(pgdata)?;
    }
    if mode == PrepMode::All {
        ensure_dir(run_dir, 0o775, uid, gid, &mut steps)?;
    }
    ensure_dir(pgdata, 0o700, uid, gid, &mut steps)?;
    Ok(steps)
}

/// Create `dir` if missing, then make it `mode`, owned by uid:gid (chown only as root).
fn ensure_dir(
    dir: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    steps: &mut Vec<PrepStep>,
) -> Result<(), DatadirError> {
    let step = |action: String| PrepStep {
        path: dir.to_owned(),
        action,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).fs_ctx("create directory", dir)?;
        steps.push(step("created".into()));
    }
    let meta = std::fs::metadata(dir).fs_ctx("stat", dir)?;
    if meta.uid() != uid || meta.gid() != gid {
        if fsutil::is_root() {
            fsutil::chown(dir, uid, gid)?;
            steps.push(step(format!(
                "chown {uid}:{gid} (was {}:{})",
                meta.uid(),
                meta.gid()
            )));
        } else if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(DatadirError::WrongOwner {
                path: dir.to_owned(),
                owner: meta.uid(),
                want: uid,
                euid: rustix::process::geteuid().as_raw(),
                hint: "run the root `fix-run` step first (pgkeep prep-dirs --run-dir-only as root), or give the volume to this uid (fsGroup, or chown on the storage side)",
            });
        }
    }
    let current = meta.permissions().mode() & 0o7777;
    if current != mode {
        fsutil::set_mode(dir, mode)?;
        steps.push(step(format!("chmod {mode:04o} (was {current:04o})")));
    } else {
        steps.push(step(format!(
            "ok ({mode:04o} {}:{})",
            meta.uid(),
            meta.gid()
        )));
    }
    Ok(())
}

/// A non-empty PGDATA must be a PostgreSQL data directory.
fn check_contents(pgdata: &Path) -> Result<(), DatadirError> {
    let mut names: Vec<String> = std::fs::read_dir(pgdata)
        .fs_ctx("read directory", pgdata)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() || names.iter().any(|n| n == "PG_VERSION") {
        return Ok(());
    }
    names.sort();
    let hint = if names.iter().any(|n| n == "lost+found") {
        "`lost+found` means a filesystem's root is mounted at PGDATA: mount the volume at the parent directory and keep PGDATA a subdirectory. If the contents are yours, move them away; `pgkeep wipe` empties the volume.".to_owned()
    } else {
        "initdb needs an empty directory. Move these files away, or run `pgkeep wipe` to empty the data volume.".to_owned()
    };
    let shown: Vec<String> = names.iter().take(10).cloned().collect();
    Err(DatadirError::ForeignContent {
        path: pgdata.to_owned(),
        entries: shown.join(", ") + if names.len() > 10 { ", ..." } else { "" },
        hint,
    })
}

/// The pid of a live postmaster on `pgdata`, from `postmaster.pid`.
pub fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let p = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::test_kill_process(p) {
        Ok(()) => Some(pid),
        // Alive but not ours to signal.
        Err(e) if e == rustix::io::Errno::PERM => Some(pid),
        Err(_) => None,
    }
}

/// Refuse when a postmaster runs on `pgdata`.
pub fn ensure_stopped(pgdata: &Path) -> Result<(), DatadirError> {
    match running_postmaster(pgdata) {
        Some(pid) => Err(DatadirError::PostmasterRunning {
            pid,
            pgdata: pgdata.to_owned(),
        }),
        None => Ok(()),
    }
}

/// One directory entry in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: char,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// `ls -la`-like listing of one directory (sorted; empty when it does not exist).
pub fn list(dir: &Path) -> Result<Vec<Entry>, FsError> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).fs_ctx("read directory", dir)? {
        let entry = entry.fs_ctx("read directory", dir)?;
        let meta = entry.metadata().fs_ctx("stat", &entry.path())?;
        let ft = meta.file_type();
        out.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                '-'
            } else {
                '?'
            },
            mode: format!("{:04o}", meta.permissions().mode() & 0o7777),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Render a listing like `ls -la`.
pub fn format_listing(dir: &Path, entries: &[Entry]) -> String {
    let mut s = format!("{}:\n", dir.display());
    if entries.is_empty() {
        s.push_str("  (empty)\n");
    }
    for e in entries {
        s.push_str(&format!(
            "  {}{} {:>5}:{:<5} {:>12}  {}\n",
            e.kind, e.mode, e.uid, e.gid, e.size, e.name
        ));
    }
    s
}

/// What a wipe did.
#[derive(Debug, Clone, Serialize)]
pub struct WipeReport {
    pub before: Vec<Entry>,
    pub removed: usize,
    pub after: Vec<Entry>,
}

/// Paths that must survive a wipe of the data volume.
pub struct Protected<'a> {
    pub wal_archive: &'a Path,
    pub backups: &'a Path,
}

/// Check that wiping `pgroot` is safe, without changing anything.
pub fn check_wipe(
    pgroot: &Path,
    pgdata: &Path,
    protected: &Protected<'_>,
) -> Result<(), DatadirError> {
    let root = mountinfo::resolve_path(pgroot);
    let unsafe_wipe = |reason: String, hint: &str| DatadirError::UnsafeWipe {
        path: root.clone(),
        reason,
        hint: hint.to_owned(),
    };
    if root.components().count() < 3 {
        return Err(unsafe_wipe(
            "it is too close to / to be a data volume".into(),
            "set PGKEEP_PGROOT to the data volume's mount point",
        ));
    }
    if !root.is_dir() {
        return Err(unsafe_wipe(
            "it is not a directory".into(),
            "check PGKEEP_PGROOT",
        ));
    }
    for (what, p) in [
        ("WAL archive", protected.wal_archive),
        ("backups", protected.backups),
    ] {
        let p = mountinfo::resolve_path(p);
        if p.starts_with(&root) {
            return Err(unsafe_wipe(
                format!("the {what} directory {} is inside it", p.display()),
                "keep the WAL archive and backups on their own volumes",
            ));
        }
    }
    ensure_stopped(pgdata)
}

/// Empty the data volume root (never the mount point itself) and recreate PGDATA 0700 owned by
/// uid:gid. Call [`check_wipe`] and get confirmation first.
pub fn wipe(
    pgroot: &Path,
    pgdata: &Path,
    uid: u32,
    gid: u32,
    protected: &Protected<'_>,
) -> Result<WipeReport, DatadirError> {
    check_wipe(pgroot, pgdata, protected)?;
    let before = list(pgroot)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(pgroot).fs_ctx("read directory", pgroot)? {
        let entry = entry.fs_ctx("read directory", pgroot)?;
        let path = entry.path();
        let ft = entry.file_type().fs_ctx("stat", &path)?;
        if ft.is_dir() {
            std::fs::remove_dir_all(&path).fs_ctx("remove", &path)?;
        } else {
            std::fs::remove_file(&path).fs_ctx("remove", &path)?;
        }
        removed += 1;
    }
    fsutil::fsync_dir(pgroot)?;
    let mut steps = Vec::new();
    ensure_dir(pgdata, 0o700, uid, gid, &mut steps)?;
    fsutil::fsync_dir(pgroot)?;
    let after = list(pgroot)?;
    Ok(WipeReport {
        before,
        removed,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> (u32, u32) {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }

    #[test]
    fn prep_creates_dirs_with_modes_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        let (uid, gid) = me();
        for _ in 0..2 {
            prep_dirs(
                &root,
                &root.join("data"),
                &t.path().join("run"),
                uid,
                gid,
                PrepMode::All,
            )
            .unwrap();
            let m = std::fs::metadata(root.join("data")).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700);
            let m = std::fs::metadata(t.path().join("run")).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o775);
        }
    }

    #[test]
    fn prep_refuses_foreign_content_and_names_it() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("lost+found")).unwrap();
        let (uid, gid) = me();
        let err = prep_dirs(
            t.path(),
            &data,
            &t.path().join("run"),
            uid,
            gid,
            PrepMode::DataOnly,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lost+found"), "{msg}");
        assert!(msg.contains("mount the volume at the parent"), "{msg}");
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        prep_dirs(
            t.path(),
            &data,
            &t.path().join("run"),
            uid,
            gid,
            PrepMode::DataOnly,
        )
        .unwrap();
    }

    #[test]
    fn run_dir_only_does_not_touch_the_volume() {
        let t = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let steps = prep_dirs(
            &t.path().join("missing-volume"),
            &t.path().join("missing-volume/data"),
            &t.path().join("run"),
            uid,
            gid,
            PrepMode::RunDirOnly,
        )
        .unwrap();
        assert!(t.path().join("run").is_dir());
        assert!(!t.path().join("missing-volume").exists());
        assert!(steps.iter().all(|s| s.path == t.path().join("run")));
    }

    #[test]
    fn missing_volume_root_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let err = prep_dirs(
            &t.path().join("nope"),
            &t.path().join("nope/data"),
            &t.path().join("run"),
            uid,
            gid,
            PrepMode::DataOnly,
        )
        .unwrap_err();
        assert!(err.to_string().contains("mounted"), "{err}");
    }

    #[test]
    fn wipe_empties_the_root_and_recreates_data() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/b/vol");
        std::fs::create_dir_all(root.join("data/base/1")).unwrap();
        std::fs::write(root.join("data/PG_VERSION"), "15").unwrap();
        std::fs::write(root.join("stray.txt"), "x").unwrap();
        std::fs::create_dir_all(root.join("old-cluster")).unwrap();
        let (uid, gid) = me();
        let wal = t.path().join("wal");
        let backups = t.path().join("backups");
        let p = Protected {
            wal_archive: &wal,
            backups: &backups,
        };
        let r = wipe(&root, &root.join("data"), uid, gid, &p).unwrap();
        assert_eq!(r.removed, 3);
        assert_eq!(r.before.len(), 3);
        assert_eq!(r.after.len(), 1);
        assert_eq!(r.after[0].name, "data");
        assert_eq!(r.after[0].mode, "0700");
        assert_eq!(std::fs::read_dir(root.join("data")).unwrap().count(), 0);
    }

    #[test]
    fn wipe_refuses_when_backups_live_on_the_volume() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/b/vol");
        std::fs::create_dir_all(root.join("backups")).unwrap();
        std::fs::write(root.join("backups/nightly-20260101-0600.tar.gz"), "x").unwrap();
        let wal = t.path().join("wal");
        let backups = root.join("backups");
        let p = Protected {
            wal_archive: &wal,
            backups: &backups,
        };
        let (uid, gid) = me();
        let err = wipe(&root, &root.join("data"), uid, gid, &p).unwrap_err();
        assert!(err.to_string().contains("backups"), "{err}");
        assert!(root.join("backups/nightly-20260101-0600.tar.gz").exists());
        let err = check_wipe(Path::new("/"), Path::new("/data"), &p).unwrap_err();
        assert!(err.to_string().contains("too close"), "{err}");
    }

    #[test]
    fn stale_postmaster_pid_is_not_running() {
        let t = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22; this pid cannot exist.
        std::fs::write(t.path().join("postmaster.pid"), "99999999\n/x\n").unwrap();
        assert_eq!(running_postmaster(t.path()), None);
        std::fs::write(
            t.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(
            running_postmaster(t.path()),
            Some(std::process::id() as i32)
        );
        assert!(ensure_stopped(t.path()).is_err());
    }
}
