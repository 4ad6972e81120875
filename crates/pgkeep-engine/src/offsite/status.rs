//! What the off-site follower last got done, for `pgkeep metrics` and `status`: after every
//! round that completed, `offsite sync --follow` writes [`Status`] (when, which system, the
//! newest WAL file it knows to be off-site, the bundles stored per kind) to
//! [`STATUS_FILE`] in the socket directory, which every container of the db pod shares. The
//! look ([`crate::observe`]) reads it and counts the segments of the local WAL archive newer
//! than that file: the off-site lag.
//!
//! The file is a cache of the follower's last success, not state anyone relies on: it lives on
//! the pod's emptyDir (lost with the pod, rewritten by the first round after a restart) and is
//! replaced atomically, so a reader sees the old or the new record, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wal::{ArchivedFile, WalKind};

/// The file's name in the socket directory (`paths.run_dir`).
pub const STATUS_FILE: &str = "pgkeep-offsite.json";

/// The follower's last completed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When the round completed.
    pub synced_at: jiff::Timestamp,
    pub system_identifier: u64,
    /// The newest WAL segment (24-hex name) known to be off-site; None before the first one.
    pub newest_segment: Option<String>,
    /// Bundles stored off-site per kind (`logical`, `physical`) after retention.
    pub backups: BTreeMap<String, u64>,
}

/// Where the status of the follower sharing `run_dir` is written.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATUS_FILE)
}

/// Replace the status file (a unique partial name, fsync, rename).
pub fn write(path: &Path, status: &Status) -> Result<(), crate::fsutil::FsError> {
    let json = serde_json::to_vec_pretty(status).expect("a status serializes");
    crate::fsutil::write_atomic(path, &json, 0o644, true)
}

/// The status file's record: Ok(None) when there is none yet (no round completed since the pod
/// started), Err with the reason when it cannot be read or parsed.
pub fn read(path: &Path) -> Result<Option<Status>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The newest segment in an archive listing (after a completed round: the newest one
/// off-site). Taken from the listing the round uploaded, never from a fresh look, which could
/// name a segment that arrived after the round and is not off-site yet.
pub fn newest_segment(files: &[ArchivedFile]) -> Option<String> {
    files
        .iter()
        .rfind(|f| f.wal.kind == WalKind::Segment)
        .map(|f| f.name.clone())
}

/// Segments in an archive listing that are newer than `newest_off_site` (all of them when
/// nothing is off-site yet): what losing the cluster now would lose beyond the off-site copy.
pub fn lag_segments(files: &[ArchivedFile], newest_off_site: Option<&str>) -> u64 {
    files
        .iter()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .filter(|f| newest_off_site.is_none_or(|n| f.name.as_str() > n))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_status_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(read(&p).unwrap(), None);
        let s = Status {
            synced_at: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            system_identifier: 7,
            newest_segment: Some("000000010000000000000003".into()),
            backups: BTreeMap::from([("logical".into(), 2), ("physical".into(), 1)]),
        };
        write(&p, &s).unwrap();
        assert_eq!(read(&p).unwrap(), Some(s.clone()));
        std::fs::write(&p, b"{not json").unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains(STATUS_FILE), "{e}");
    }

    #[test]
    fn the_lag_counts_segments_newer_than_the_newest_off_site() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "00000002.history",
        ] {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let files = crate::wal::Archive::new(dir.path()).list().unwrap();
        assert_eq!(lag_segments(&files, None), 3);
        assert_eq!(lag_segments(&files, Some("000000010000000000000001")), 2);
        assert_eq!(lag_segments(&files, Some("000000010000000000000003")), 0);
        assert_eq!(
            newest_segment(&files).as_deref(),
            Some("000000010000000000000003")
        );
    }
}
