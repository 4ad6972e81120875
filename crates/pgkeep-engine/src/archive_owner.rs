//! Which database system the WAL archive's root belongs to, and moving one system's WAL out of
//! the way when another takes over the archive.
//!
//! The archive root holds the WAL of exactly one database system: the one that archives into it.
//! A wipe followed by a fresh initdb makes a NEW system (new system identifier) whose segment
//! names start again at `000000010000000000000001`: with the old system's segments still in the
//! root, its archive_command would hit "already archived with different content" on the first
//! switch and never archive again (found by the e2e run: wipe → scale 1 → restore dump). So:
//!
//! - before initdb, `serve` calls [`supersede`]: every WAL file of the root moves (rename, same
//!   volume, never overwriting) into `superseded/<system id>-<UTC time>/`; nothing is deleted;
//! - bootstrap from a base backup of system S when the root belongs to another system moves the
//!   root aside the same way and [`reinstate`]s S's newest superseded directory, so recovery and
//!   the recovered server find S's WAL in the root again.

use std::path::{Path, PathBuf};

use crate::fsutil::{FsError, fsync_dir, rename_noreplace};
use crate::wal::{Archive, ArchivedFile, WalError, WalKind};

/// The subdirectory of the archive that holds superseded systems' WAL.
pub const SUPERSEDED_DIR: &str = "superseded";

/// The root's WAL files and the system they belong to.
#[derive(Debug, Clone)]
pub struct RootWal {
    /// From the newest readable segment's page header; None when no segment is readable.
    pub system: Option<u64>,
    pub files: Vec<ArchivedFile>,
}

/// A move of WAL files between the root and a superseded directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub system: Option<u64>,
    pub from: PathBuf,
    pub to: PathBuf,
    pub files: usize,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let system = self
            .system
            .map(|s| format!("system {s}"))
            .unwrap_or_else(|| "an unknown system".into());
        write!(
            f,
            "moved {} WAL file(s) of {system} from {} to {}",
            self.files,
            self.from.display(),
            self.to.display()
        )
    }
}

/// The root's WAL files and their system.
pub fn root_wal(archive: &Archive) -> Result<RootWal, WalError> {
    let files = archive.list()?;
    let system = files
        .iter()
        .rev()
        .filter(|f| matches!(f.wal.kind, WalKind::Segment | WalKind::Partial))
        .find_map(|f| archive.system_identifier(f));
    Ok(RootWal { system, files })
}

/// Move every WAL file of the root into `superseded/<system>-<now>/`. None when the root holds
/// no WAL. The directory is fsynced before the root, so a crash leaves each file in one of the
/// two places.
pub fn supersede(archive: &Archive, now: jiff::Timestamp) -> Result<Option<Moved>, WalError> {
    let root = root_wal(archive)?;
    if root.files.is_empty() {
        return Ok(None);
    }
    let system = root
        .system
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    let parent = archive.dir().join(SUPERSEDED_DIR);
    let to = parent.join(format!("{system}-{}", now.strftime("%Y%m%dT%H%M%SZ")));
    std::fs::create_dir_all(&to).map_err(|e| FsError::new("create directory", &to, e))?;
    if crate::fsutil::is_root() {
        // Owned like the archive, so the data owner can move them back later.
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(archive.dir()).map_err(|e| FsError::new("stat", archive.dir(), e))?;
        for d in [&parent, &to] {
            crate::fsutil::chown(d, meta.uid(), meta.gid())?;
        }
    }
    for f in &root.files {
        let name = f.path.file_name().expect("listed files have names");
        rename_noreplace(&f.path, &to.join(name))?;
    }
    fsync_dir(&to)?;
    fsync_dir(&parent)?;
    fsync_dir(archive.dir())?;
    Ok(Some(Moved {
        system: root.system,
        from: archive.dir().to_owned(),
        to,
        files: root.files.len(),
    }))
}

/// The newest superseded directory of `system`, if any.
pub fn find_superseded(archive: &Archive, system: u64) -> Result<Option<PathBuf>, WalError> {
    let parent = archive.dir().join(SUPERSEDED_DIR);
    let prefix = format!("{system}-");
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::new("read directory", &parent, e).into()),
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    // The stamp sorts by time.
    found.sort();
    Ok(found.pop())
}

/// Move the WAL files of a superseded directory back into the root, which must hold no WAL
/// (call [`supersede`] first). The emptied directory is removed.
pub fn reinstate(archive: &Archive, dir: &Path) -> Result<Moved, WalError> {
    let source = Archive::new(dir);
    let src = root_wal(&source)?;
    // Refuse before moving anything when a name is taken in the root.
    for f in &src.files {
        let name = f.path.file_name().expect("listed files have names");
        let target = archive.dir().join(name);
        if target.symlink_metadata().is_ok() {
            return Err(FsError::new(
                "move back (the root already has it)",
                target,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            )
            .into());
        }
    }
    for f in &src.files {
        let name = f.path.file_name().expect("listed files have names");
        rename_noreplace(&f.path, &archive.dir().join(name))?;
    }
    fsync_dir(archive.dir())?;
    // Only WAL files were moved; anything else stays, and so does the directory then.
    if std::fs::remove_dir(dir).is_ok()
        && let Some(parent) = dir.parent()
    {
        fsync_dir(parent)?;
    }
    Ok(Moved {
        system: src.system,
        from: dir.to_owned(),
        to: archive.dir().to_owned(),
        files: src.files.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment-sized file whose first page has a long header naming `system`.
    fn test_segment(system: u64, size: usize) -> Vec<u8> {
        let mut data = vec![0u8; size];
        data[2] = 0x02; // XLP_LONG_HEADER
        data[24..32].copy_from_slice(&system.to_le_bytes());
        data[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        data[40..1000].fill(0x5a);
        data
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn supersede_moves_every_wal_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::new(dir.path());
        std::fs::write(
            dir.path().join("000000010000000000000001"),
            test_segment(7_000_001, 16 << 20),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("00000002.history"),
            "1\t0/3000000\tno reason\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not WAL").unwrap();
        let moved = supersede(&a, ts("2026-11-25T22:00:00Z")).unwrap().unwrap();
        assert_eq!(moved.system, Some(7_000_001));
        assert_eq!(moved.files, 2);
        let to = dir.path().join("superseded/7000001-20261125T220000Z");
        assert_eq!(moved.to, to);
        assert!(to.join("000000010000000000000001").is_file());
        assert!(to.join("00000002.history").is_file());
        assert!(dir.path().join("README").is_file(), "non-WAL files stay");
        assert!(a.list().unwrap().is_empty(), "the root holds no WAL");
        // Nothing to move the second time.
        assert_eq!(supersede(&a, ts("2026-11-25T22:00:01Z")).unwrap(), None);
    }

    #[test]
    fn reinstate_brings_back_the_newest_directory_of_a_system() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::new(dir.path());
        let seg = test_segment(42, 16 << 20);
        std::fs::write(dir.path().join("000000010000000000000003"), &seg).unwrap();
        supersede(&a, ts("2026-11-25T10:00:00Z")).unwrap();
        // A newer system took over, then is superseded in turn.
        std::fs::write(
            dir.path().join("000000010000000000000001"),
            test_segment(43, 16 << 20),
        )
        .unwrap();
        supersede(&a, ts("2026-11-25T11:00:00Z")).unwrap();
        assert_eq!(find_superseded(&a, 44).unwrap(), None);
        let found = find_superseded(&a, 42).unwrap().unwrap();
        assert!(
            found.ends_with("42-20261125T100000Z"),
            "{}",
            found.display()
        );
        let moved = reinstate(&a, &found).unwrap();
        assert_eq!((moved.system, moved.files), (Some(42), 1));
        assert_eq!(root_wal(&a).unwrap().system, Some(42));
        assert_eq!(
            std::fs::read(dir.path().join("000000010000000000000003")).unwrap(),
            seg
        );
        assert!(!found.exists(), "the emptied directory is removed");
        assert!(
            find_superseded(&a, 43).unwrap().is_some(),
            "the other system stays aside"
        );
    }

    #[test]
    fn reinstate_never_overwrites_a_root_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::new(dir.path());
        std::fs::write(
            dir.path().join("000000010000000000000001"),
            test_segment(1, 1 << 20),
        )
        .unwrap();
        let moved = supersede(&a, ts("2026-11-25T10:00:00Z")).unwrap().unwrap();
        let clash = test_segment(2, 1 << 20);
        std::fs::write(dir.path().join("000000010000000000000001"), &clash).unwrap();
        assert!(reinstate(&a, &moved.to).is_err());
        assert_eq!(
            std::fs::read(dir.path().join("000000010000000000000001")).unwrap(),
            clash,
            "the root's file is untouched"
        );
        assert!(moved.to.join("000000010000000000000001").is_file());
    }
}
