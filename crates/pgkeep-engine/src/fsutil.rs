//! Durable file-system primitives: atomic publication of files, directory fsync, modes and
//! ownership, and the "is this process root" question.
//!
//! A file that looks like a backup appears only when it is complete: it is written under a hidden
//! partial name in the destination directory (same filesystem, so the rename is atomic),
//! fsynced, renamed without replacing anything, and the directory is fsynced. An [`AtomicFile`]
//! dropped before [`AtomicFile::commit`] removes its partial file.
//!
//! Every writer has a partial name of its own, `.NAME~HOST~PID~N.partial`, created exclusively:
//! two writers of one name (a retried archive_command, a second pod during a rollout) never
//! share, remove or publish each other's unfinished file. What a killed writer left is removed
//! by [`remove_stale_partials`] under the run-mark rules of [`crate::runmark`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}{hint}")]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
    pub hint: String,
}

impl FsError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::PermissionDenied => format!(
                "\nhint: this process runs as uid {}; the path must be writable by it (root-squash volumes deny root, so run as the data owner)",
                rustix::process::geteuid().as_raw()
            ),
            io::ErrorKind::StorageFull => {
                "\nhint: the volume is full; see `pgkeep space`".to_owned()
            }
            _ => String::new(),
        };
        FsError {
            op,
            path: path.into(),
            source,
            hint,
        }
    }
}

/// Extension to turn `io::Result` into `FsError` with the path attached.
pub trait IoContext<T> {
    fn fs_ctx(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn fs_ctx(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|e| FsError::new(op, path, e))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Ask the kernel to start writing `file`'s dirty pages back now, without waiting (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Not durability: an fsync is still needed; it only
/// moves the disk writes earlier, beside the work that follows (a restore's unpack, before the
/// server fsyncs the whole data directory at start). Best effort, errors ignored.
pub fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open for the call's duration;
    // no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// fsync a directory, so a rename or a new entry in it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).fs_ctx("open directory", dir)?;
    d.sync_all().fs_ctx("fsync directory", dir)
}

/// The hidden partial name this process uses for its `n`-th file being written as `name`.
fn partial_name(name: &str, n: u64) -> String {
    format!(".{name}~{}~{n}.partial", crate::runmark::tag())
}

/// Whether a directory entry is an unfinished file of ours (any writer, any version).
pub fn is_partial_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".partial")
}

/// A partial file name taken apart: the final name it is written for and, for names written
/// since writers have their own partial names, the writer's host (as tagged) and PID. Earlier
/// versions wrote `.NAME.partial`, which has no writer.
pub fn parse_partial_name(file: &str) -> Option<(&str, Option<(&str, u32)>)> {
    let inner = file.strip_prefix('.')?.strip_suffix(".partial")?;
    let mut parts = inner.rsplitn(4, '~');
    let (n, pid, host, name) = (parts.next()?, parts.next(), parts.next(), parts.next());
    match (
        n.parse::<u64>(),
        pid.and_then(|p| p.parse::<u32>().ok()),
        host,
        name,
    ) {
        (Ok(_), Some(pid), Some(host), Some(name)) if !name.is_empty() => {
            Some((name, Some((host, pid))))
        }
        _ => Some((inner, None)),
    }
}

/// Partial files (of any writer) for the final name `name` in `dir`.
pub fn partials_of(dir: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(parse_partial_name)
                .is_some_and(|(n, _)| n == name)
        })
        .map(|e| e.path())
        .collect()
}

/// A partial file of the old, writer-less form untouched this long belongs to a killed writer
/// (a running writer writes continuously).
pub const UNTAGGED_PARTIAL_STALE_AFTER: std::time::Duration =
    std::time::Duration::from_secs(15 * 60);

/// Remove the partial files in `dir` whose writers are gone: on this host, when the process
/// has ended; written on another host (another pod), when untouched for
/// [`crate::runmark::FOREIGN_STALE_AFTER`]; old writer-less ones when untouched for
/// [`UNTAGGED_PARTIAL_STALE_AFTER`]. Partial files of live writers are never touched. Returns
/// what was removed.
pub fn remove_stale_partials(dir: &Path) -> Vec<PathBuf> {
    use crate::runmark::{Holder, judge, quiet_for};
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let file = e.file_name();
        let Some((_, writer)) = file.to_str().and_then(parse_partial_name) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let gone = match writer {
            Some((host, pid)) => judge(pid, Some(host), || quiet_for(&path)) == Holder::Gone,
            None => quiet_for(&path) >= UNTAGGED_PARTIAL_STALE_AFTER,
        };
        if gone && std::fs::remove_file(&path).is_ok() {
            tracing::warn!(file = %path.display(), "removed a partial file left by a killed writer");
            removed.push(path);
        }
    }
    removed
}

/// A file being written that becomes visible under its final name only on [`commit`].
///
/// [`commit`]: AtomicFile::commit
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    partial: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Create this writer's own partial file for `dir/name` with `mode` (0600 for backups),
    /// exclusively: no other writer's file is ever opened or removed. The final name is
    /// checked only at [`AtomicFile::commit`].
    pub fn create(dir: &Path, name: &str, mode: u32) -> Result<AtomicFile, FsError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let target = dir.join(name);
        let (partial, file) = loop {
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let partial = dir.join(partial_name(name, n));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&partial)
            {
                Ok(f) => break (partial, f),
                // Left by an earlier process that had this PID: never ours to reuse.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FsError::new("create", &partial, e)),
            }
        };
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .fs_ctx("chmod", &partial)?;
        Ok(AtomicFile {
            file: Some(file),
            partial,
            target,
            committed: false,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not committed")
    }

    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    pub fn target_path(&self) -> &Path {
        &self.target
    }

    /// fsync, then rename over the final name (refusing to replace an existing file unless
    /// `replace`), then fsync the directory.
    pub fn commit_with(mut self, replace: bool) -> Result<PathBuf, FsError> {
        let file = self.file.take().expect("commit once");
        file.sync_all().fs_ctx("fsync", &self.partial)?;
        drop(file);
        if replace {
            std::fs::rename(&self.partial, &self.target).fs_ctx("rename", &self.target)?;
        } else {
            rename_noreplace(&self.partial, &self.target)?;
        }
        self.committed = true;
        let dir = self.target.parent().unwrap_or(Path::new("."));
        fsync_dir(dir)?;
        Ok(self.target.clone())
    }

    /// [`AtomicFile::commit_with`] that never replaces an existing file.
    pub fn commit(self) -> Result<PathBuf, FsError> {
        self.commit_with(false)
    }

    /// fsync, then publish under the first of `names` that is free (never replacing a file),
    /// then fsync the directory: for files whose name only has to be unique, such as a second
    /// backup in the same minute. Fails only when every name is taken or on an I/O error.
    pub fn commit_first_free(
        mut self,
        names: impl IntoIterator<Item = String>,
    ) -> Result<PathBuf, FsError> {
        let file = self.file.take().expect("commit once");
        file.sync_all().fs_ctx("fsync", &self.partial)?;
        drop(file);
        let dir = self.target.parent().unwrap_or(Path::new(".")).to_owned();
        let mut last = None;
        for name in names {
            let target = dir.join(&name);
            match rename_noreplace(&self.partial, &target) {
                Ok(()) => {
                    self.committed = true;
                    self.target = target;
                    fsync_dir(&dir)?;
                    return Ok(self.target.clone());
                }
                Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            FsError::new(
                "rename",
                &self.target,
                io::Error::other("no name to publish under"),
            )
        }))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// rename(2) that fails with `AlreadyExists` instead of replacing the target.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), FsError> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            // Filesystems without RENAME_NOREPLACE: link + unlink is equally exclusive.
            std::fs::hard_link(from, to).fs_ctx("link", to)?;
            std::fs::remove_file(from).fs_ctx("remove", from)
        }
        Err(e) => Err(FsError::new("rename", to, e.into())),
    }
}

/// Write `bytes` to `path` atomically (partial name, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FsError::new("write", path, io::Error::other("not a file name")))?;
    let mut f = AtomicFile::create(dir, name, mode)?;
    f.write_all(bytes).fs_ctx("write", path)?;
    f.commit_with(replace)?;
    Ok(())
}

/// chmod a path to exactly `mode`.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FsError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).fs_ctx("chmod", path)
}

/// chown a path (not following symlinks).
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), FsError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).fs_ctx("chown", path)
}

/// chown a tree (not following symlinks).
pub fn chown_recursive(path: &Path, uid: u32, gid: u32) -> Result<(), FsError> {
    chown(path, uid, gid)?;
    let meta = std::fs::symlink_metadata(path).fs_ctx("stat", path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).fs_ctx("read directory", path)? {
            let entry = entry.fs_ctx("read directory", path)?;
            chown_recursive(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_file_is_invisible_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(dir.path(), "nightly-20260101-0600.tar.gz", 0o600).unwrap();
        f.write_all(b"data").unwrap();
        assert!(!dir.path().join("nightly-20260101-0600.tar.gz").exists());
        assert!(f.partial_path().exists());
        let path = f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no partial left: {names:?}");
    }

    #[test]
    fn two_writers_of_one_name_have_their_own_partials_and_the_loser_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AtomicFile::create(dir.path(), "seg", 0o600).unwrap();
        let mut b = AtomicFile::create(dir.path(), "seg", 0o600).unwrap();
        assert_ne!(a.partial_path(), b.partial_path());
        assert_eq!(partials_of(dir.path(), "seg").len(), 2);
        a.write_all(b"whole segment").unwrap();
        b.write_all(b"half").unwrap();
        a.commit().unwrap();
        let err = b.commit().unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("seg")).unwrap(),
            b"whole segment"
        );
        assert!(partials_of(dir.path(), "seg").is_empty());
    }

    #[test]
    fn partial_names_carry_their_writer() {
        let tag = crate::runmark::tag();
        let name = partial_name("nightly-20260101-0600.tar.gz", 7);
        let (target, writer) = parse_partial_name(&name).unwrap();
        assert_eq!(target, "nightly-20260101-0600.tar.gz");
        let (host, pid) = writer.unwrap();
        assert_eq!(format!("{host}~{pid}"), tag);
        assert_eq!(
            parse_partial_name(".000000010000000000000003.zst.partial"),
            Some(("000000010000000000000003.zst", None))
        );
        assert_eq!(parse_partial_name("seg"), None);
    }

    #[test]
    fn only_partials_of_gone_writers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let here = crate::runmark::tag();
        let (host, _) = crate::runmark::parse_tag(&here).unwrap();
        // A live writer (this process), a dead one on this host (a PID no process has), a
        // writer in another pod heard from recently, and a writer-less one from an old version.
        let live = AtomicFile::create(dir.path(), "a", 0o600).unwrap();
        let dead = format!(".b~{host}~{}~0.partial", i32::MAX as u32);
        let foreign = ".c~other-pod~1~0.partial".to_owned();
        let untagged = ".d.partial".to_owned();
        for n in [&dead, &foreign, &untagged] {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        assert_eq!(
            remove_stale_partials(dir.path()),
            vec![dir.path().join(&dead)]
        );
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(4 * 3600);
        for n in [&foreign, &untagged] {
            File::options()
                .write(true)
                .open(dir.path().join(n))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let mut removed = remove_stale_partials(dir.path());
        removed.sort();
        assert_eq!(
            removed,
            vec![dir.path().join(&foreign), dir.path().join(&untagged)]
        );
        assert!(
            live.partial_path().exists(),
            "a live writer's file is never swept"
        );
    }

    #[test]
    fn commit_first_free_takes_the_next_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n"), b"first").unwrap();
        let mut f = AtomicFile::create(dir.path(), "n", 0o600).unwrap();
        f.write_all(b"second").unwrap();
        let path = f
            .commit_first_free(["n".to_owned(), "n-1".to_owned()])
            .unwrap();
        assert_eq!(path, dir.path().join("n-1"));
        assert_eq!(std::fs::read(dir.path().join("n")).unwrap(), b"first");
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = AtomicFile::create(dir.path(), "x", 0o600).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seg"), b"old").unwrap();
        let mut f = AtomicFile::create(dir.path(), "seg", 0o600).unwrap();
        f.write_all(b"new").unwrap();
        let err = f.commit().unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(dir.path().join("seg")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn partial_names() {
        assert!(is_partial_name(&partial_name("a.tar.gz", 0)));
        assert!(is_partial_name(".a.tar.gz.partial"));
        assert!(!is_partial_name("a.tar.gz"));
    }
}
