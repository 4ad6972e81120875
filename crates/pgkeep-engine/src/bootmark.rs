//! The bootstrap-in-progress marker: a file in the data volume root, beside PGDATA, that says
//! "PGDATA is being replaced by a base backup; an empty or partial PGDATA here is not a new
//! database".
//!
//! A bootstrap empties PGDATA before it extracts and replays. Killed in between (a pod evicted,
//! a Job deleted, an OOM), it leaves an empty or half-filled PGDATA, and `serve` would run initdb
//! on the former and start an empty database that accepts writes. So the bootstrap writes this
//! marker (atomically, fsynced) before it changes PGDATA and removes it only when recovery has
//! ended and the server was promoted and stopped (or left running) cleanly; `serve` refuses to
//! initialize while it is there ([`refuse_initdb`]), and `status` / `debug perms` show it. A wipe
//! removes it with the rest of the volume: its next step is meant to be a fresh initdb.

use std::path::{Path, PathBuf};

use crate::fsutil::{self, FsError};

/// The marker's file name in the data volume root.
pub const FILE_NAME: &str = ".pgkeep-bootstrap-in-progress";

#[derive(Debug, thiserror::Error)]
pub enum BootmarkError {
    #[error(
        "PGDATA {pgdata} holds no finished database: a bootstrap from a base backup did not finish ({marker} is there); refusing to start a server on it or to initdb a new, empty database in its place\nhint: run the bootstrap again (`pgkeep bootstrap basebackup`); only if you mean to give the old data up for an empty database, remove {marker} (or run `pgkeep wipe`) and start again"
    )]
    Unfinished { pgdata: PathBuf, marker: PathBuf },
}

impl crate::Classified for BootmarkError {
    fn exit_class(&self) -> crate::ExitClass {
        crate::ExitClass::Refused
    }
}

/// The marker's path for the data volume mounted at `pgroot`.
pub fn path(pgroot: &Path) -> PathBuf {
    pgroot.join(FILE_NAME)
}

/// The marker, when one is there.
pub fn present(pgroot: &Path) -> Option<PathBuf> {
    let p = path(pgroot);
    p.symlink_metadata().is_ok().then_some(p)
}

/// Write the marker durably (before PGDATA is changed). `what` (bundle, target) goes into it
/// for a person who finds it.
pub fn set(pgroot: &Path, what: &str) -> Result<PathBuf, FsError> {
    let p = path(pgroot);
    let text = format!(
        "pgkeep bootstrap basebackup started {} (pid {}): {what}\nPGDATA is being replaced; `pgkeep serve` will not initialize a new database while this file is here.\n",
        crate::clock::now(),
        std::process::id()
    );
    fsutil::write_atomic(&p, text.as_bytes(), 0o600, true)?;
    Ok(p)
}

/// Remove the marker (after recovery ended cleanly) and make the removal durable.
pub fn clear(pgroot: &Path) -> Result<(), FsError> {
    let p = path(pgroot);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::new("remove", &p, e)),
    }
    fsutil::fsync_dir(pgroot)?;
    Ok(())
}

/// `serve`'s first check: refuse to start or initdb while a bootstrap is unfinished.
pub fn refuse_initdb(pgroot: &Path, pgdata: &Path) -> Result<(), BootmarkError> {
    match present(pgroot) {
        Some(marker) => Err(BootmarkError::Unfinished {
            pgdata: pgdata.to_owned(),
            marker,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classified;

    #[test]
    fn the_marker_is_set_durably_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(present(dir.path()).is_none());
        assert!(refuse_initdb(dir.path(), &dir.path().join("data")).is_ok());
        let p = set(dir.path(), "basebackup-20261201-1200.bundle.tar.gz").unwrap();
        assert_eq!(p, dir.path().join(FILE_NAME));
        assert_eq!(present(dir.path()), Some(p.clone()));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("basebackup-20261201-1200"), "{text}");
        let err = refuse_initdb(dir.path(), &dir.path().join("data")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(FILE_NAME) && msg.contains("hint: run the bootstrap again"));
        assert_eq!(err.exit_class(), crate::ExitClass::Refused);
        clear(dir.path()).unwrap();
        assert!(present(dir.path()).is_none());
        clear(dir.path()).unwrap();
    }
}
