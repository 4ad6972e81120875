//! Retention: which backups and which archived WAL to remove (`pgkeep backups prune`).
//!
//! Keep the newest `retention.nightly` logical and `retention.basebackups` physical bundles that
//! verify, newest by the stop time their manifest records (never by file name). A bundle that
//! fails verification (as `backups verify` checks it; a result remembered for an unchanged file is
//! reused) is never counted as kept: it is reported, and removed only when asked to
//! (`--delete-damaged`). WAL older than the start of the oldest kept base backup is not needed by any kept backup and
//! is removed; everything from that segment on (on every timeline) is kept, and history files are
//! always kept. With no physical backup left to anchor it, no WAL is removed.
//!
//! A base backup's start is read cheaply from the `.backup` file PostgreSQL archives for it (its
//! LABEL names the bundle); only when that is missing is the bundle's MANIFEST.json read, which
//! means reading the whole bundle.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::{self, BundleError};
use crate::fsutil::{self, FsError, IoContext};
use crate::logical::LogicalError;
use crate::physical::PhysicalFacts;
use crate::repo::{self, Backup, BackupKind, RepoError};
use crate::tools::PgBin;
use crate::wal::{self, Archive, ArchivedFile, WalError, WalKind};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Verify(#[from] Box<LogicalError>),
    #[error(
        "cannot tell where the WAL needed by {bundle} starts: {reason}; no WAL was removed\nhint: check the bundle with `pgkeep backups verify {bundle}`"
    )]
    UnknownStart { bundle: String, reason: String },
}

/// A bundle's stop time when it verifies, or why it does not.
pub type Verdict = Result<jiff::Timestamp, String>;

/// A bundle that fails verification.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub backup: Backup,
    pub reason: String,
}

/// What prune will do (or did).
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub keep: Vec<Backup>,
    pub remove: Vec<Backup>,
    /// Bundles that fail verification: not counted as kept; in `remove` only with
    /// `delete_damaged`.
    pub damaged: Vec<Damaged>,
    /// The first WAL file kept (the oldest kept base backup's start segment), when WAL is pruned.
    pub wal_kept_from: Option<String>,
    pub remove_wal: Vec<ArchivedFile>,
    pub remove_wal_bytes: u64,
}

/// Decide what to remove. Nothing is changed, except that verification results are remembered
/// (as `backups verify` remembers them).
pub fn plan(
    pg: &PgBin,
    backups: &Path,
    wal_archive: &Path,
    keep_nightly: u32,
    keep_basebackups: u32,
    delete_damaged: bool,
) -> Result<PrunePlan, PruneError> {
    let mut verdict = |b: &Backup| -> Result<Verdict, PruneError> {
        let v = crate::catalog::verify_cached(pg, backups, b).map_err(Box::new)?;
        if !v.ok {
            return Ok(Err(v
                .message
                .unwrap_or_else(|| "verification failed".into())));
        }
        Ok(Ok(
            crate::catalog::stop_time(&b.path).unwrap_or_else(|| name_time(b))
        ))
    };
    plan_with(
        backups,
        wal_archive,
        keep_nightly,
        keep_basebackups,
        delete_damaged,
        &mut verdict,
    )
}

/// The time in a backup's name, as a timestamp (UTC).
fn name_time(b: &Backup) -> jiff::Timestamp {
    jiff::tz::TimeZone::UTC
        .to_timestamp(b.time)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// [`plan`] with the verification given: `verdict` says a bundle's stop time, or why it is
/// damaged.
pub fn plan_with(
    backups: &Path,
    wal_archive: &Path,
    keep_nightly: u32,
    keep_basebackups: u32,
    delete_damaged: bool,
    verdict: &mut dyn FnMut(&Backup) -> Result<Verdict, PruneError>,
) -> Result<PrunePlan, PruneError> {
    let all = repo::list(backups)?;
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    let mut damaged = Vec::new();
    for (kind, n) in [
        (BackupKind::Logical, keep_nightly),
        (BackupKind::Physical, keep_basebackups),
    ] {
        let mut sound: Vec<(jiff::Timestamp, Backup)> = Vec::new();
        for b in all.iter().filter(|b| b.kind == kind) {
            match verdict(b)? {
                Ok(stop) => sound.push((stop, b.clone())),
                Err(reason) => {
                    tracing::warn!(bundle = %b.name, "fails verification, not counted as a kept backup: {reason}");
                    if delete_damaged {
                        remove.push(b.clone());
                    }
                    damaged.push(Damaged {
                        backup: b.clone(),
                        reason,
                    });
                }
            }
        }
        // Newest first by stop time; the name's time and sequence break ties (stop times may
        // have whole seconds).
        sound.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| (b.1.time, b.1.seq).cmp(&(a.1.time, a.1.seq)))
        });
        let cut = (n as usize).min(sound.len());
        keep.extend(sound[..cut].iter().map(|(_, b)| b.clone()));
        remove.extend(sound[cut..].iter().rev().map(|(_, b)| b.clone()));
    }
    let archive = Archive::new(wal_archive);
    let files = if wal_archive.is_dir() {
        archive.list()?
    } else {
        Vec::new()
    };
    let oldest_kept = keep
        .iter()
        .filter(|b| b.kind == BackupKind::Physical)
        .min_by_key(|b| (b.time, b.seq));
    let mut wal_kept_from = None;
    let mut remove_wal = Vec::new();
    if let Some(oldest) = oldest_kept {
        let (start, seg_size) = backup_start(oldest, &archive, &files)?;
        let start_no = wal::parse_name(&start)
            .expect("a segment name")
            .segment_no(seg_size);
        remove_wal = files
            .into_iter()
            .filter(|f| f.wal.kind != WalKind::History && f.wal.segment_no(seg_size) < start_no)
            .collect();
        wal_kept_from = Some(start);
    }
    let remove_wal_bytes = remove_wal.iter().map(|f| f.size).sum();
    Ok(PrunePlan {
        keep,
        remove,
        damaged,
        wal_kept_from,
        remove_wal,
        remove_wal_bytes,
    })
}

/// The start segment of a base backup, and the WAL segment size.
fn backup_start(
    b: &Backup,
    archive: &Archive,
    files: &[ArchivedFile],
) -> Result<(String, u64), PruneError> {
    let label = format!("LABEL: pgkeep {}", b.name);
    for f in files.iter().filter(|f| f.wal.kind == WalKind::Backup) {
        let Ok(text) = std::fs::read_to_string(&f.path) else {
            continue;
        };
        if !text.lines().any(|l| l.trim() == label) {
            continue;
        }
        let start = text.lines().find_map(|l| {
            l.strip_prefix("START WAL LOCATION:")
                .and_then(|r| r.split("(file ").nth(1))
                .and_then(|r| r.split(')').next())
                .map(str::to_owned)
        });
        if let Some(start) = start.filter(|s| wal::parse_name(s).is_some()) {
            let seg_size = files
                .iter()
                .filter(|f| f.wal.kind == WalKind::Segment)
                .find_map(|f| archive.segment_size(f))
                .unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
            return Ok((start, seg_size));
        }
    }
    // No label in the archive (archiving was off, or a bundle from elsewhere): read the bundle.
    let contents = bundle::verify(&b.path)?;
    let m = contents.manifest.ok_or_else(|| PruneError::UnknownStart {
        bundle: b.name.clone(),
        reason: "it has no MANIFEST.json".into(),
    })?;
    let facts = PhysicalFacts::from_manifest(&m).map_err(|reason| PruneError::UnknownStart {
        bundle: b.name.clone(),
        reason,
    })?;
    Ok((facts.start_wal_file, facts.wal_segment_size))
}

/// What prune removed.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub removed_backups: Vec<PathBuf>,
    pub removed_wal: usize,
    pub removed_wal_bytes: u64,
}

/// Remove what the plan says (WAL first, oldest first, then bundles), fsyncing the directories.
pub fn apply(
    plan: &PrunePlan,
    backups: &Path,
    wal_archive: &Path,
) -> Result<PruneReport, PruneError> {
    for f in &plan.remove_wal {
        std::fs::remove_file(&f.path).fs_ctx("remove", &f.path)?;
    }
    if !plan.remove_wal.is_empty() {
        fsutil::fsync_dir(wal_archive)?;
    }
    let mut removed = Vec::new();
    for b in &plan.remove {
        std::fs::remove_file(&b.path).fs_ctx("remove", &b.path)?;
        removed.push(b.path.clone());
    }
    if !removed.is_empty() {
        fsutil::fsync_dir(backups)?;
    }
    Ok(PruneReport {
        removed_backups: removed,
        removed_wal: plan.remove_wal.len(),
        removed_wal_bytes: plan.remove_wal_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn keeps_the_newest_and_the_wal_the_oldest_kept_backup_needs() {
        let t = tempfile::tempdir().unwrap();
        let (b, w) = (t.path().join("b"), t.path().join("w"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::create_dir_all(&w).unwrap();
        for n in [
            "basebackup-20260101-0620.bundle.tar.gz",
            "basebackup-20260108-0620.bundle.tar.gz",
            "basebackup-20260115-0620.bundle.tar.gz",
            "nightly-20260114-0600.tar.gz",
            "nightly-20260115-0600.tar.gz",
        ] {
            touch(&b, n, "x");
        }
        for (seg, label) in [
            (
                "000000010000000000000002",
                "basebackup-20260101-0620.bundle.tar.gz",
            ),
            (
                "000000010000000000000005",
                "basebackup-20260108-0620.bundle.tar.gz",
            ),
            (
                "000000020000000000000009",
                "basebackup-20260115-0620.bundle.tar.gz",
            ),
        ] {
            touch(
                &w,
                &format!("{seg}.00000028.backup"),
                &format!(
                    "START WAL LOCATION: 0/0 (file {seg})\nSTOP WAL LOCATION: 0/0 (file {seg})\nLABEL: pgkeep {label}\n"
                ),
            );
        }
        for n in [
            "000000010000000000000001.zst",
            "000000010000000000000002.zst",
            "000000010000000000000004",
            "000000010000000000000005.zst",
            "000000010000000000000006.partial.zst",
            "000000020000000000000004.zst",
            "000000020000000000000006.zst",
            "00000002.history",
            ".000000010000000000000003.zst.partial",
        ] {
            touch(&w, n, "x");
        }
        let p = plan_with(&b, &w, 1, 2, false, &mut |b| Ok(Ok(name_time(b)))).unwrap();
        let names = |v: &[Backup]| v.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&p.remove),
            vec![
                "nightly-20260114-0600.tar.gz",
                "basebackup-20260101-0620.bundle.tar.gz"
            ]
        );
        assert_eq!(p.wal_kept_from.as_deref(), Some("000000010000000000000005"));
        let mut gone: Vec<&str> = p.remove_wal.iter().map(|f| f.name.as_str()).collect();
        gone.sort();
        assert_eq!(
            gone,
            vec![
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000004",
                "000000020000000000000004",
            ]
        );
        apply(&p, &b, &w).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&w)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                ".000000010000000000000003.zst.partial",
                "000000010000000000000005.00000028.backup",
                "000000010000000000000005.zst",
                "000000010000000000000006.partial.zst",
                "00000002.history",
                "000000020000000000000006.zst",
                "000000020000000000000009.00000028.backup",
            ]
        );
        assert_eq!(repo::list(&b).unwrap().len(), 3);
    }

    #[test]
    fn damaged_bundles_are_never_kept_and_go_only_when_asked() {
        let t = tempfile::tempdir().unwrap();
        for n in [
            "nightly-20260101-0600.tar.gz",
            "nightly-20260102-0600.tar.gz",
            "nightly-20260103-0600.tar.gz",
            "nightly-20991231-2359.tar.gz",
        ] {
            touch(t.path(), n, "x");
        }
        // The future-named one is damaged; the 01-03 one stopped first although named last.
        let mut verdict = |b: &Backup| -> Result<Verdict, PruneError> {
            Ok(match b.name.as_str() {
                "nightly-20991231-2359.tar.gz" => Err("no MANIFEST.json".into()),
                "nightly-20260103-0600.tar.gz" => Ok("2025-12-31T00:00:00Z".parse().unwrap()),
                _ => Ok(name_time(b)),
            })
        };
        let names = |v: &[Backup]| v.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        let p = plan_with(t.path(), t.path(), 2, 1, false, &mut verdict).unwrap();
        assert_eq!(
            names(&p.keep),
            [
                "nightly-20260102-0600.tar.gz",
                "nightly-20260101-0600.tar.gz"
            ]
        );
        assert_eq!(names(&p.remove), ["nightly-20260103-0600.tar.gz"]);
        assert_eq!(p.damaged.len(), 1);
        assert_eq!(p.damaged[0].backup.name, "nightly-20991231-2359.tar.gz");
        let p = plan_with(t.path(), t.path(), 2, 1, true, &mut verdict).unwrap();
        assert_eq!(
            names(&p.remove),
            [
                "nightly-20991231-2359.tar.gz",
                "nightly-20260103-0600.tar.gz"
            ]
        );
    }

    #[test]
    fn without_a_physical_backup_no_wal_is_removed() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "000000010000000000000001.zst", "x");
        let p = plan_with(t.path(), t.path(), 7, 4, false, &mut |b| {
            Ok(Ok(name_time(b)))
        })
        .unwrap();
        assert!(p.remove_wal.is_empty());
        assert!(p.wal_kept_from.is_none());
    }
}
