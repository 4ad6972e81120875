//! Durable file-system primitives: atomic publication of files, directory fsync, modes and
//! ownership, and the "is this process root" question.
//!
//! A file that looks like a backup appears only when it is complete: it is written under a hidden
//! `.NAME.partial` name in the destination directory (same filesystem, so the rename is atomic),
//! fsynced, renamed, and the directory is fsynced. An [`AtomicFile`] dropped before
//! [`AtomicFile::commit`] removes its partial file.

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

/// fsync a directory, so a rename or a new entry in it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    let d = File::open(dir).fs_ctx("open directory", dir)?;
    d.sync_all().fs_ctx("fsync directory", dir)
}

/// The hidden partial name used while `name` is being written.
pub fn partial_name(name: &str) -> String {
    format!(".{name}.partial")
}

/// Whether a directory entry is an unfinished file of ours.
pub fn is_partial_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".partial")
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
    /// Create `dir/.name.partial` with `mode` (0600 for backups). An existing partial file from
    /// an earlier crash is replaced; an existing final file is refused unless `overwrite`.
    pub fn create(dir: &Path, name: &str, mode: u32) -> Result<AtomicFile, FsError> {
        let target = dir.join(name);
        let partial = dir.join(partial_name(name));
        let _ = std::fs::remove_file(&partial);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&partial)
            .fs_ctx("create", &partial)?;
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
        assert_eq!(partial_name("a.tar.gz"), ".a.tar.gz.partial");
        assert!(is_partial_name(".a.tar.gz.partial"));
        assert!(!is_partial_name("a.tar.gz"));
    }
}
