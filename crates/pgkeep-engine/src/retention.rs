//! Retention: which backups and which archived WAL to remove (`pgkeep backups prune`).
//!
//! Keep the newest `retention.nightly` logical and `retention.basebackups` physical bundles that
//! verify, newest by the stop time their manifest records (never by file name).
//!
//! Incremental base backups (PostgreSQL 17+) are kept by chain, as pgBackRest keeps them with
//! their full: `retention.basebackups` counts full base backups, and an incremental stays exactly
//! when the full its chain starts from stays and every link of its chain is there and verifies
//! (one with a broken chain cannot be restored: it is reported as damaged). So a bundle a kept
//! incremental needs is never removed, and the WAL kept reaches back to the oldest kept chain's
//! full. A bundle that
//! fails verification (as `backups verify` checks it; a result remembered for an unchanged file is
//! reused) is never counted as kept: it is reported, and removed only when asked to
//! (`--delete-damaged`).
//!
//! WAL is pruned per database system: the archive root holds the current system's WAL and each
//! `superseded/<system>-<time>/` directory an older system's (see [`crate::archive_owner`]); a
//! system's segment names restart at 1 after a wipe, so one system's backups say nothing about
//! another's WAL. In each directory, WAL older than the start of the oldest kept base backup of
//! ITS system is removed; everything from that segment on (on every timeline) is kept, and
//! history files are always kept. A directory no kept base backup of its system anchors keeps all
//! its WAL.
//!
//! Streamed WAL set aside under `stream/superseded/<system>/` (another system or an earlier
//! timeline, see [`crate::walstream`]) is cut by the same rule: a file of a system with a kept
//! base backup goes when its segment is older than that system's oldest kept base backup's
//! start; a file of a system none of the kept base backups belongs to (or of an unreadable one,
//! which no recovery uses) goes too. Nothing of it goes while no base backup is kept or a kept
//! one's system cannot be told. The live spool (`stream/` itself) is never touched.
//!
//! A base backup's start is read cheaply from the `.backup` file PostgreSQL archives for it (its
//! LABEL names the bundle); only when that is missing is the bundle's MANIFEST.json read, which
//! means reading the whole bundle.

use std::collections::BTreeMap;
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
    /// The first WAL file kept in the archive root (the start segment of the oldest kept base
    /// backup of the root's system), when the root's WAL is pruned.
    pub wal_kept_from: Option<String>,
    /// The same for the root and each superseded system's directory.
    pub wal_dirs: Vec<WalDirPlan>,
    pub remove_wal: Vec<ArchivedFile>,
    pub remove_wal_bytes: u64,
    /// Streamed files set aside under `stream/superseded/` that no kept base backup can need.
    pub remove_streamed: Vec<PathBuf>,
    pub remove_streamed_bytes: u64,
}

/// What prune keeps of one WAL directory.
#[derive(Debug, Clone, Serialize)]
pub struct WalDirPlan {
    pub dir: PathBuf,
    pub system: Option<u64>,
    /// The first WAL file kept; None when no kept base backup of this system anchors it (then
    /// nothing in it is removed).
    pub kept_from: Option<String>,
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
        if kind == BackupKind::Physical {
            let chains = by_chain(sound.into_iter().map(|(_, b)| b).collect(), n as usize);
            keep.extend(chains.keep);
            remove.extend(chains.remove);
            for (b, reason) in chains.broken {
                tracing::warn!(bundle = %b.name, "cannot be restored, not counted as a kept backup: {reason}");
                if delete_damaged {
                    remove.push(b.clone());
                }
                damaged.push(Damaged { backup: b, reason });
            }
            continue;
        }
        let cut = (n as usize).min(sound.len());
        keep.extend(sound[..cut].iter().map(|(_, b)| b.clone()));
        remove.extend(sound[cut..].iter().rev().map(|(_, b)| b.clone()));
    }
    let wal_dirs = wal_dirs(wal_archive)?;
    // Each kept base backup anchors the WAL of its own system only: where its `.backup` label
    // lies, else (no label anywhere) the directory of the system its manifest names.
    let mut anchors: Vec<Option<(u64, u64, String)>> = vec![None; wal_dirs.len()];
    // The same per system, for the streamed files set aside; None once a kept base backup's
    // system cannot be told (then none of them is removed).
    let mut system_anchors: Option<BTreeMap<u64, (u64, u64)>> = Some(BTreeMap::new());
    for b in keep.iter().filter(|b| b.kind == BackupKind::Physical) {
        let (dir_ix, start, seg_size, system) = backup_start(b, &wal_dirs)?;
        let start_no = wal::parse_name(&start).map(|w| w.segment_no(seg_size));
        for i in dir_ix {
            let start_no = start_no.expect("a segment name");
            if anchors[i].as_ref().is_none_or(|(n, _, _)| start_no < *n) {
                anchors[i] = Some((start_no, seg_size, start.clone()));
            }
        }
        match (system, start_no, system_anchors.as_mut()) {
            (Some(sys), Some(start_no), Some(map)) => {
                let a = map.entry(sys).or_insert((start_no, seg_size));
                if start_no < a.0 {
                    *a = (start_no, seg_size);
                }
            }
            _ => system_anchors = None,
        }
    }
    let remove_streamed = match system_anchors.filter(|m| !m.is_empty()) {
        Some(map) => streamed_unneeded(wal_archive, &map)?,
        None => Vec::new(),
    };
    let remove_streamed_bytes = remove_streamed
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut remove_wal = Vec::new();
    let mut per_dir = Vec::new();
    for (d, anchor) in wal_dirs.into_iter().zip(anchors) {
        let kept_from = anchor.map(|(start_no, seg_size, start)| {
            remove_wal.extend(
                d.files
                    .iter()
                    .filter(|f| {
                        f.wal.kind != WalKind::History && f.wal.segment_no(seg_size) < start_no
                    })
                    .cloned(),
            );
            start
        });
        per_dir.push(WalDirPlan {
            dir: d.dir,
            system: d.system,
            kept_from,
        });
    }
    let wal_kept_from = per_dir.first().and_then(|d| d.kept_from.clone());
    let remove_wal_bytes = remove_wal.iter().map(|f| f.size).sum();
    Ok(PrunePlan {
        keep,
        remove,
        damaged,
        wal_kept_from,
        wal_dirs: per_dir,
        remove_wal,
        remove_wal_bytes,
        remove_streamed,
        remove_streamed_bytes,
    })
}

/// The segment a file set aside from the spool holds: `NAME`, `NAME.partial`, and either with
/// a `.N` that told apart files of the same name.
fn streamed_segment(file: &str) -> Option<wal::WalName> {
    let (name, rest) = (file.get(..24)?, file.get(24..)?);
    let rest = rest.strip_prefix(".partial").unwrap_or(rest);
    let plain = rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty());
    let w = wal::parse_name(name).filter(|w| w.kind == WalKind::Segment)?;
    plain.then_some(w)
}

/// Files under `stream/superseded/` that no kept base backup can need: `anchors` maps each
/// system with a kept base backup to the start segment number (and segment size) of its
/// oldest one. A directory of a system not in it (or `unreadable`) goes whole; in one that is,
/// the segments before the start go. Names that are not streamed segments stay.
fn streamed_unneeded(
    wal_archive: &Path,
    anchors: &BTreeMap<u64, (u64, u64)>,
) -> Result<Vec<PathBuf>, PruneError> {
    let parent = crate::walstream::spool(wal_archive).join(crate::walstream::SUPERSEDED_DIR);
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("read directory", &parent, e).into()),
    };
    let mut out = Vec::new();
    for dir in entries {
        let dir = dir.fs_ctx("read directory", &parent)?;
        if !dir.file_type().fs_ctx("stat", &dir.path())?.is_dir() {
            continue;
        }
        let anchor = dir
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|sys| anchors.get(&sys));
        let path = dir.path();
        for f in std::fs::read_dir(&path).fs_ctx("read directory", &path)? {
            let f = f.fs_ctx("read directory", &path)?;
            let name = f.file_name();
            let Some(seg) = name.to_str().and_then(streamed_segment) else {
                continue;
            };
            if !f.file_type().fs_ctx("stat", &f.path())?.is_file() {
                continue;
            }
            let needed =
                anchor.is_some_and(|(start_no, seg_size)| seg.segment_no(*seg_size) >= *start_no);
            if !needed {
                out.push(f.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What retention does with the sound physical bundles.
struct ByChain {
    keep: Vec<Backup>,
    /// Oldest first.
    remove: Vec<Backup>,
    /// Incrementals whose chain is broken.
    broken: Vec<(Backup, String)>,
}

/// Keep the `n` newest full base backups of `sound` (newest first) and every incremental whose
/// chain starts at a kept full with all its links among `sound`; the chain of an incremental is
/// read from the manifest in its tail (bundles that verify).
fn by_chain(sound: Vec<Backup>, n: usize) -> ByChain {
    let names: std::collections::BTreeSet<String> = sound.iter().map(|b| b.name.clone()).collect();
    let kept_fulls: Vec<String> = sound
        .iter()
        .filter(|b| !b.incremental)
        .take(n)
        .map(|b| b.name.clone())
        .collect();
    let mut out = ByChain {
        keep: Vec::new(),
        remove: Vec::new(),
        broken: Vec::new(),
    };
    let mut needed = std::collections::BTreeSet::new();
    for b in sound {
        if !b.incremental {
            if kept_fulls.contains(&b.name) {
                out.keep.push(b);
            } else {
                out.remove.push(b);
            }
            continue;
        }
        let info = crate::catalog::peek_manifest(&b.path)
            .ok_or_else(|| "its MANIFEST.json cannot be read".to_owned())
            .and_then(|m| crate::chain::ChainInfo::from_manifest(&m))
            .and_then(|c| c.ok_or_else(|| "its MANIFEST.json records no chain".to_owned()));
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                out.broken.push((b, e));
                continue;
            }
        };
        if let Some(gone) = info.chain.iter().find(|l| !names.contains(&l.name)) {
            let reason = format!(
                "its chain needs {}, which is missing or fails verification",
                gone.name
            );
            out.broken.push((b, reason));
            continue;
        }
        if kept_fulls.contains(&info.chain[0].name) {
            needed.extend(info.chain.iter().map(|l| l.name.clone()));
            out.keep.push(b);
        } else {
            out.remove.push(b);
        }
    }
    // Never remove a link a kept incremental needs (its chain's full is kept, so this only
    // guards against a chain that names a link out of order).
    let (rescued, remove): (Vec<Backup>, Vec<Backup>) = out
        .remove
        .into_iter()
        .partition(|b| needed.contains(&b.name));
    out.keep.extend(rescued);
    out.remove = remove;
    out.remove.reverse();
    out
}

/// One directory of WAL: the archive root or a superseded system's directory.
struct WalDir {
    dir: PathBuf,
    system: Option<u64>,
    files: Vec<ArchivedFile>,
}

/// The archive root (first) and every `superseded/<system>-<time>/` directory, with the system
/// each belongs to: the root's from its newest readable segment, a superseded one's from its name.
fn wal_dirs(wal_archive: &Path) -> Result<Vec<WalDir>, PruneError> {
    let mut out = Vec::new();
    if !wal_archive.is_dir() {
        return Ok(out);
    }
    let root = crate::archive_owner::root_wal(&Archive::new(wal_archive))?;
    out.push(WalDir {
        dir: wal_archive.to_owned(),
        system: root.system,
        files: root.files,
    });
    let parent = wal_archive.join(crate::archive_owner::SUPERSEDED_DIR);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(out);
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let system = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|s| s.parse().ok());
        let files = Archive::new(&dir).list()?;
        out.push(WalDir { dir, system, files });
    }
    Ok(out)
}

/// The WAL directories a base backup's WAL lies in, its start segment, the segment size, and
/// its system (when known).
fn backup_start(
    b: &Backup,
    dirs: &[WalDir],
) -> Result<(Vec<usize>, String, u64, Option<u64>), PruneError> {
    let label = format!("LABEL: pgkeep {}", b.name);
    for (i, d) in dirs.iter().enumerate() {
        for f in d.files.iter().filter(|f| f.wal.kind == WalKind::Backup) {
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
                let archive = Archive::new(&d.dir);
                let seg_size = d
                    .files
                    .iter()
                    .filter(|f| f.wal.kind == WalKind::Segment)
                    .find_map(|f| archive.segment_size(f))
                    .unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
                return Ok((vec![i], start, seg_size, d.system));
            }
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
    let system: Option<u64> = facts.system_identifier.parse().ok();
    let of_system = dirs
        .iter()
        .enumerate()
        .filter(|(_, d)| d.system.is_some() && d.system == system)
        .map(|(i, _)| i)
        .collect();
    Ok((
        of_system,
        facts.start_wal_file,
        facts.wal_segment_size,
        system,
    ))
}

/// What prune removed.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub removed_backups: Vec<PathBuf>,
    pub removed_wal: usize,
    pub removed_wal_bytes: u64,
    pub removed_streamed: usize,
}

/// Remove what the plan says (WAL first, oldest first, then bundles), fsyncing the directories.
pub fn apply(
    plan: &PrunePlan,
    backups: &Path,
    wal_archive: &Path,
) -> Result<PruneReport, PruneError> {
    // What killed pushes, backups and uploads left, by the run-mark rules (never a live writer's).
    fsutil::remove_stale_partials(wal_archive);
    fsutil::remove_stale_partials(backups);
    let mut dirs = std::collections::BTreeSet::new();
    for f in &plan.remove_wal {
        std::fs::remove_file(&f.path).fs_ctx("remove", &f.path)?;
        dirs.insert(f.path.parent().unwrap_or(wal_archive).to_owned());
    }
    for p in &plan.remove_streamed {
        std::fs::remove_file(p).fs_ctx("remove", p)?;
        dirs.insert(p.parent().unwrap_or(wal_archive).to_owned());
    }
    for d in &dirs {
        fsutil::fsync_dir(d)?;
    }
    // A set-aside directory emptied here goes too (a failure leaves an empty directory).
    let superseded = crate::walstream::spool(wal_archive).join(crate::walstream::SUPERSEDED_DIR);
    let mut emptied = false;
    for d in dirs
        .iter()
        .filter(|d| d.parent() == Some(superseded.as_path()))
    {
        emptied |= std::fs::remove_dir(d).is_ok();
    }
    if emptied {
        fsutil::fsync_dir(&superseded)?;
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
        removed_streamed: plan.remove_streamed.len(),
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

    /// A small physical bundle with real facts (and a chain when `on` names links).
    fn physical_bundle(dir: &Path, name: &str, start: &str, on: &[(&str, &str)]) {
        let facts = PhysicalFacts::for_test(1, start, start);
        let mut info: std::collections::BTreeMap<String, serde_json::Value> =
            match serde_json::to_value(&facts).unwrap() {
                serde_json::Value::Object(m) => m.into_iter().collect(),
                _ => unreachable!(),
            };
        info.insert("layout".into(), crate::physical::LAYOUT.into());
        if let Some((parent, _)) = on.last() {
            let chain = crate::chain::ChainInfo {
                parent: (*parent).into(),
                chain: on
                    .iter()
                    .map(|(n, s)| crate::chain::link_of(n, &PhysicalFacts::for_test(1, s, s), "x"))
                    .collect(),
            };
            info.extend(chain.to_info());
        }
        let mut w = bundle::BundleWriter::create(dir, name).unwrap();
        w.append_bytes_at_boundary("backup_manifest", b"{}")
            .unwrap();
        w.finish(bundle::BundleKind::Physical, info).unwrap();
    }

    #[test]
    fn incrementals_are_kept_with_their_chain_and_never_without_a_link_they_need() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let f1 = "basebackup-20261101-0000.bundle.tar.gz";
        let i1a = "basebackup-20261102-0000.incr.bundle.tar.gz";
        let i1b = "basebackup-20261103-0000.incr.bundle.tar.gz";
        let f2 = "basebackup-20261108-0000.bundle.tar.gz";
        let i2a = "basebackup-20261109-0000.incr.bundle.tar.gz";
        let orphan = "basebackup-20261110-0000.incr.bundle.tar.gz";
        physical_bundle(d, f1, "0/2000028", &[]);
        physical_bundle(d, i1a, "0/3000028", &[(f1, "0/2000028")]);
        physical_bundle(
            d,
            i1b,
            "0/4000028",
            &[(f1, "0/2000028"), (i1a, "0/3000028")],
        );
        physical_bundle(d, f2, "0/8000028", &[]);
        physical_bundle(d, i2a, "0/9000028", &[(f2, "0/8000028")]);
        physical_bundle(
            d,
            orphan,
            "0/A000028",
            &[("basebackup-20261020-0000.bundle.tar.gz", "0/1000028")],
        );
        fn names(v: &[Backup]) -> Vec<&str> {
            v.iter().map(|b| b.name.as_str()).collect()
        }
        let none = d.join("no-archive");
        let mut sound = |b: &Backup| -> Result<Verdict, PruneError> { Ok(Ok(name_time(b))) };
        // One full kept: its chain stays, the older chain goes whole (oldest first).
        let p = plan_with(d, &none, 7, 1, false, &mut sound).unwrap();
        assert_eq!(names(&p.keep), [i2a, f2]);
        assert_eq!(names(&p.remove), [f1, i1a, i1b]);
        assert_eq!(p.damaged.len(), 1);
        assert!(
            p.damaged[0].reason.contains("basebackup-20261020-0000"),
            "{}",
            p.damaged[0].reason
        );
        // Two fulls: both chains whole.
        let p = plan_with(d, &none, 7, 2, false, &mut sound).unwrap();
        assert_eq!(names(&p.keep), [i2a, f2, i1b, i1a, f1]);
        assert!(p.remove.is_empty());
        // A damaged middle link: the incremental on top of it cannot be restored; the full stays.
        let mut middle_damaged = |b: &Backup| -> Result<Verdict, PruneError> {
            Ok(if b.name == i1a {
                Err("checksum mismatch".into())
            } else {
                Ok(name_time(b))
            })
        };
        let p = plan_with(d, &none, 7, 2, false, &mut middle_damaged).unwrap();
        assert_eq!(names(&p.keep), [i2a, f2, f1]);
        let damaged: Vec<&str> = p.damaged.iter().map(|x| x.backup.name.as_str()).collect();
        assert!(
            damaged.contains(&i1a) && damaged.contains(&i1b),
            "{damaged:?}"
        );
        assert!(p.remove.is_empty(), "nothing goes without --delete-damaged");
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
    fn each_systems_wal_is_cut_against_its_own_kept_backups() {
        let t = tempfile::tempdir().unwrap();
        let (b, w) = (t.path().join("b"), t.path().join("w"));
        let old = w.join("superseded/111-20261101T000000Z");
        let older = w.join("superseded/99-20261001T000000Z");
        for d in [&b, &old, &older] {
            std::fs::create_dir_all(d).unwrap();
        }
        let label = |dir: &Path, seg: &str, bundle: &str| {
            touch(
                dir,
                &format!("{seg}.00000028.backup"),
                &format!("START WAL LOCATION: 0/0 (file {seg})\nLABEL: pgkeep {bundle}\n"),
            )
        };
        // System 111 (superseded): an old bundle and a kept one; the live system (root): one.
        for n in [
            "basebackup-20261101-0620.bundle.tar.gz",
            "basebackup-20261102-0620.bundle.tar.gz",
            "basebackup-20261202-0620.bundle.tar.gz",
        ] {
            touch(&b, n, "x");
        }
        label(
            &old,
            "000000010000000000000004",
            "basebackup-20261101-0620.bundle.tar.gz",
        );
        label(
            &old,
            "000000010000000000000009",
            "basebackup-20261102-0620.bundle.tar.gz",
        );
        label(
            &w,
            "000000010000000000000002",
            "basebackup-20261202-0620.bundle.tar.gz",
        );
        for n in ["01", "02", "03"] {
            touch(&w, &format!("0000000100000000000000{n}.zst"), "x");
        }
        for n in ["04", "08", "09", "0A"] {
            touch(&old, &format!("0000000100000000000000{n}.zst"), "x");
        }
        // System 99: no kept bundle, so all of its WAL stays.
        touch(&older, "000000010000000000000001.zst", "x");
        let p = plan_with(&b, &w, 7, 2, false, &mut |b: &Backup| Ok(Ok(name_time(b)))).unwrap();
        let mut gone: Vec<String> = p
            .remove_wal
            .iter()
            .map(|f| f.path.strip_prefix(&w).unwrap().display().to_string())
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "000000010000000000000001.zst",
                "superseded/111-20261101T000000Z/000000010000000000000004.00000028.backup",
                "superseded/111-20261101T000000Z/000000010000000000000004.zst",
                "superseded/111-20261101T000000Z/000000010000000000000008.zst",
            ]
        );
        let kept: Vec<Option<&str>> = p.wal_dirs.iter().map(|d| d.kept_from.as_deref()).collect();
        assert_eq!(
            kept,
            [
                Some("000000010000000000000002"),
                Some("000000010000000000000009"),
                None
            ]
        );
        assert_eq!(p.wal_dirs[1].system, Some(111));
    }

    #[test]
    fn without_a_physical_backup_no_wal_is_removed() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "000000010000000000000001.zst", "x");
        let aside = t.path().join("stream/superseded/99");
        std::fs::create_dir_all(&aside).unwrap();
        touch(&aside, "000000010000000000000001.partial", "x");
        let p = plan_with(t.path(), t.path(), 7, 4, false, &mut |b| {
            Ok(Ok(name_time(b)))
        })
        .unwrap();
        assert!(p.remove_wal.is_empty());
        assert!(p.wal_kept_from.is_none());
        assert!(p.remove_streamed.is_empty());
    }

    use crate::walstream::tests::segment;

    #[test]
    fn streamed_files_set_aside_go_when_no_kept_base_backup_needs_them() {
        let t = tempfile::tempdir().unwrap();
        let (b, w) = (t.path().join("b"), t.path().join("w"));
        let old = w.join("superseded/111-20261101T000000Z");
        let spool = w.join("stream");
        let aside = spool.join("superseded");
        for d in [&b, &old, &aside.join("111"), &aside.join("7")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for d in ["99", "unreadable"] {
            std::fs::create_dir_all(aside.join(d)).unwrap();
        }
        let label = |dir: &Path, seg: &str, bundle: &str| {
            touch(
                dir,
                &format!("{seg}.00000028.backup"),
                &format!("START WAL LOCATION: 0/0 (file {seg})\nLABEL: pgkeep {bundle}\n"),
            )
        };
        // System 111 (superseded archive): a kept bundle from segment 9; the live system 7
        // (the root's segments say so): one from segment 2.
        for n in [
            "basebackup-20261102-0620.bundle.tar.gz",
            "basebackup-20261202-0620.bundle.tar.gz",
        ] {
            touch(&b, n, "x");
        }
        label(
            &old,
            "000000010000000000000009",
            "basebackup-20261102-0620.bundle.tar.gz",
        );
        label(
            &w,
            "000000010000000000000002",
            "basebackup-20261202-0620.bundle.tar.gz",
        );
        std::fs::write(w.join("000000010000000000000002"), segment(7)).unwrap();
        for (dir, name) in [
            ("111", "000000010000000000000008.partial"),
            ("111", "000000010000000000000009.partial"),
            ("111", "00000001000000000000000A.partial.1"),
            ("111", "notes.txt"),
            ("7", "000000010000000000000001.partial"),
            ("7", "000000010000000000000001"),
            ("7", "000000010000000000000003.partial"),
            ("99", "000000010000000000000005.partial"),
            ("unreadable", "000000010000000000000001.partial"),
        ] {
            touch(&aside.join(dir), name, "x");
        }
        // The live spool is the stream's, never retention's, however old.
        touch(&spool, "000000010000000000000001.partial", "x");

        let p = plan_with(&b, &w, 7, 2, false, &mut |b: &Backup| Ok(Ok(name_time(b)))).unwrap();
        let rel = |v: &[PathBuf]| {
            v.iter()
                .map(|f| f.strip_prefix(&aside).unwrap().display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rel(&p.remove_streamed),
            [
                "111/000000010000000000000008.partial",
                "7/000000010000000000000001",
                "7/000000010000000000000001.partial",
                "99/000000010000000000000005.partial",
                "unreadable/000000010000000000000001.partial",
            ]
        );
        apply(&p, &b, &w).unwrap();
        let mut left: Vec<String> = walkdir(&aside);
        left.sort();
        assert_eq!(
            left,
            [
                "111/000000010000000000000009.partial",
                "111/00000001000000000000000A.partial.1",
                "111/notes.txt",
                "7/000000010000000000000003.partial",
            ]
        );
        assert!(!aside.join("99").exists(), "an emptied directory goes");
        assert!(spool.join("000000010000000000000001.partial").is_file());
    }

    /// Files under `dir`, one level of directories deep, relative to it.
    fn walkdir(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(dir).unwrap().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                out.push(format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
        out
    }
}
