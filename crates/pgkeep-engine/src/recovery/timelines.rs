//! Phase 1, the WAL side: timeline chains and history files, which archived segments recovery
//! will read and that they are there and belong, room for the data.

use super::*;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The timeline that owns each segment number: `(timeline, first segment)` pairs from a history
/// file's lines (`parent_tli<TAB>switch_lsn<TAB>reason`) plus the latest timeline itself.
pub fn timeline_chain(history: &str, latest: u32, seg_size: u64) -> Vec<(u32, u64)> {
    let mut chain = Vec::new();
    let mut from = 0u64;
    for line in history.lines() {
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            continue;
        };
        let (Ok(tli), Ok(lsn)) = (tli.parse::<u32>(), lsn.parse::<Lsn>()) else {
            continue;
        };
        chain.push((tli, from));
        from = lsn.segment(seg_size);
    }
    chain.push((latest, from));
    chain
}

/// The timeline a segment number belongs to on a chain.
pub(super) fn timeline_of(chain: &[(u32, u64)], segno: u64) -> u32 {
    chain
        .iter()
        .rev()
        .find(|(_, from)| segno >= *from)
        .map(|(t, _)| *t)
        .unwrap_or(chain[0].0)
}

/// What the archive holds on the timeline path recovery will follow.
#[derive(Debug, Clone)]
pub(super) struct ArchivePath {
    /// The timeline `recovery_target_timeline = 'latest'` ends on.
    pub(super) latest: u32,
    pub(super) chain: Vec<(u32, u64)>,
    /// Archived segments on the path, by segment number.
    pub(super) on_path: std::collections::BTreeMap<u64, wal::ArchivedFile>,
}

/// The timeline PostgreSQL will follow (history files probed upward from the backup's, as
/// PostgreSQL's `latest` does), refusing when the archive holds WAL of a higher timeline whose
/// history file is missing: recovery would silently stay on the lower timeline.
pub(super) fn archive_path(
    facts: &PhysicalFacts,
    archive: &Archive,
    files: &[wal::ArchivedFile],
    choice: TimelineChoice,
) -> Result<ArchivePath, RecoveryError> {
    let seg = facts.wal_segment_size;
    let mut latest = facts.timeline;
    match choice {
        TimelineChoice::Latest => {
            while archive
                .find(&format!("{:08X}.history", latest + 1))
                .is_some()
            {
                latest += 1;
            }
        }
        TimelineChoice::Current => {}
        TimelineChoice::Id(n) => latest = chosen_timeline(facts, archive, n)?,
    }
    if choice == TimelineChoice::Latest
        && let Some(above) = files
            .iter()
            .filter(|f| f.wal.timeline > latest)
            .min_by_key(|f| (f.wal.timeline, f.name.clone()))
    {
        return Err(RecoveryError::MissingHistory {
            archive: archive.dir().to_owned(),
            timeline: above.wal.timeline,
            example: above.name.clone(),
            missing: format!("{:08X}.history", latest + 1),
            follow: latest,
        });
    }
    let history = match archive.find(&format!("{latest:08X}.history")) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => String::new(),
    };
    let chain = timeline_chain(&history, latest, seg);
    let on_path = files
        .iter()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .filter(|f| timeline_of(&chain, f.wal.segment_no(seg)) == f.wal.timeline)
        .map(|f| (f.wal.segment_no(seg), f.clone()))
        .collect();
    Ok(ArchivePath {
        latest,
        chain,
        on_path,
    })
}

/// An explicit `--target-timeline N`: the backup's timeline, or one whose history file is in the
/// archive and descends from it.
pub(super) fn chosen_timeline(
    facts: &PhysicalFacts,
    archive: &Archive,
    n: u32,
) -> Result<u32, RecoveryError> {
    let bad = |reason: String, hint: String| RecoveryError::BadTimeline {
        timeline: n.to_string(),
        reason,
        hint,
    };
    if n == facts.timeline {
        return Ok(n);
    }
    if n < facts.timeline {
        return Err(bad(
            format!(
                "the backup was taken on timeline {}, after timeline {n} ended",
                facts.timeline
            ),
            format!(
                "pick a backup taken on timeline {n} with --from (`pgkeep backups list`), or a timeline from {} up",
                facts.timeline
            ),
        ));
    }
    let history = match archive.find(&format!("{n:08X}.history")) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => {
            return Err(bad(
                format!(
                    "the WAL archive {} has no {n:08X}.history, so timeline {n} is unknown",
                    archive.dir().display()
                ),
                "check the number (timelines in the archive: the NNNNNNNN.history files), or use latest".into(),
            ));
        }
    };
    let branches = history_branches(&history);
    match branches
        .iter()
        .find(|(parent, _)| *parent == facts.timeline)
    {
        Some((_, at)) if *at >= facts.stop_lsn => Ok(n),
        Some((_, at)) => Err(bad(
            format!(
                "timeline {n} left timeline {} at {at}, before the backup's end ({})",
                facts.timeline, facts.stop_lsn
            ),
            "use an older backup (--from) that ends before that point".into(),
        )),
        None => Err(bad(
            format!(
                "timeline {n} does not descend from timeline {}, the backup's",
                facts.timeline
            ),
            format!("use a backup taken on timeline {n}'s path (--from), or another timeline"),
        )),
    }
}

/// The switch points of a history file: (parent timeline, LSN where the next one began).
pub(super) fn history_branches(history: &str) -> Vec<(u32, Lsn)> {
    history
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// The time a history line's reason names (`before 2026-11-25 19:30:00.123+00`), if any: the
/// time target of the recovery that started the next timeline.
pub(super) fn history_branch_time(history: &str, parent: u32) -> Option<jiff::Timestamp> {
    history.lines().find_map(|line| {
        let mut f = line.splitn(3, char::is_whitespace);
        if f.next()?.parse::<u32>().ok()? != parent {
            return None;
        }
        let reason = f.nth(1)?.trim();
        let t = reason
            .strip_prefix("before ")
            .or_else(|| reason.strip_prefix("after "))?;
        parse_pg_time(t)
    })
}

/// Without a chosen timeline, a time or LSN target past the point where a timeline newer than the
/// backup's branched off the path is ambiguous (the parent went on past it; `latest` would
/// silently take the child's history): refused, naming the branch and both timelines.
pub(super) fn check_target_before_branches(
    facts: &PhysicalFacts,
    archive: &Archive,
    path: &ArchivePath,
    target: &RecoveryTarget,
) -> Result<(), RecoveryError> {
    if path.latest == facts.timeline {
        return Ok(());
    }
    let history = match archive.find(&format!("{:08X}.history", path.latest)) {
        Some((p, _)) => std::fs::read_to_string(&p).unwrap_or_default(),
        None => return Ok(()),
    };
    let branches = history_branches(&history);
    for (i, (parent, at)) in branches.iter().enumerate() {
        if *parent < facts.timeline || *at < facts.start_lsn {
            continue;
        }
        let child = branches.get(i + 1).map_or(path.latest, |(t, _)| *t);
        let after = match target {
            RecoveryTarget::Lsn(l) => *l > *at,
            RecoveryTarget::Time(t) => {
                history_branch_time(&history, *parent).is_some_and(|b| *t > b)
            }
            RecoveryTarget::Name(_) => false,
        };
        if after {
            return Err(RecoveryError::TargetAfterBranch {
                target: target.to_string(),
                branch: at.to_string(),
                when: history_branch_time(&history, *parent)
                    .map(|b| format!(" (by a recovery to time {b})"))
                    .unwrap_or_default(),
                parent: *parent,
                child,
            });
        }
    }
    Ok(())
}

/// Every segment recovery will read, from the backup's start to the newest archived segment on
/// the path (to an LSN target's segment with one: time and name targets have no known place in
/// the WAL yet), must be in the archive or the bundle, and every archived one must belong where
/// its name puts it ([`crate::walcheck`]): PostgreSQL takes a missing or foreign segment as the
/// end of the WAL and promotes there, losing every later commit. A restore point named as the
/// target must be in that WAL ([`crate::walscan`]); a time target after the last archived commit
/// is warned about. Returns the newest archived segment on the path, the segments recovery will
/// read and the deep check of their contents ([`WalScan`], run on a thread of its own).
pub(super) fn check_archive_wal(
    members: &[MemberDigest],
    facts: &PhysicalFacts,
    archive: &Archive,
    target: Option<&RecoveryTarget>,
    choice: Option<TimelineChoice>,
) -> Result<ArchiveWal, RecoveryError> {
    let until = match target {
        Some(RecoveryTarget::Lsn(l)) => Some(l.segment(facts.wal_segment_size)),
        _ => None,
    };
    let Ok(files) = archive.list() else {
        return Ok(ArchiveWal::default());
    };
    let seg = facts.wal_segment_size;
    let path = archive_path(
        facts,
        archive,
        &files,
        choice.unwrap_or(TimelineChoice::Latest),
    )?;
    if choice.is_none()
        && let Some(t) = target
    {
        check_target_before_branches(facts, archive, &path, t)?;
    }
    let Some((&newest, newest_file)) = path.on_path.iter().next_back() else {
        return Ok(ArchiveWal::default());
    };
    let newest_name = newest_file.name.clone();
    let expect = crate::walcheck::Expect {
        system_identifier: facts.system_identifier.parse().ok(),
        major: Some(facts.server_version_num / 10000),
    };
    let last = until.map_or(newest, |u| u.min(newest));
    let start = facts.start_lsn.segment(seg);
    let mut segments = Vec::new();
    let mut files = Vec::new();
    for n in start..=last {
        match path.on_path.get(&n) {
            Some(f) => {
                segments.push(f.name.clone());
                files.push(Some(f.clone()));
            }
            None => {
                let name = wal::segment_file_name(timeline_of(&path.chain, n), n, seg);
                let in_bundle = members
                    .iter()
                    .any(|m| m.path == format!("{DATA_PREFIX}pg_wal/{name}"));
                if !in_bundle && n < newest {
                    return Err(RecoveryError::ArchiveGap {
                        archive: archive.dir().to_owned(),
                        segment: name,
                        newest: newest_name,
                    });
                }
                files.push(None);
            }
        }
    }
    Ok(ArchiveWal {
        newest: Some((newest_name.clone(), Lsn(newest * seg))),
        segments,
        scan: Some(WalScan {
            files,
            start,
            last,
            seg,
            chain: path.chain,
            latest: path.latest,
            newest_name,
            expect,
            target: target.cloned(),
            archive: archive.dir().to_owned(),
        }),
    })
}

/// What [`check_archive_wal`] found.
#[derive(Debug, Default)]
pub(super) struct ArchiveWal {
    /// The newest archived segment on the path and its start.
    pub(super) newest: Option<(String, Lsn)>,
    /// The archived segments recovery will read, in order.
    pub(super) segments: Vec<String>,
    /// The deep check still to run (None when there is no archived WAL to read).
    pub(super) scan: Option<WalScan>,
}

/// The deep check of the archived WAL recovery will read: every segment decompressed and
/// checked to belong where its name puts it, its records' CRCs checked across segments, a named
/// restore point looked up, a time target compared with the last commit. It reads only the
/// archive, so it runs on a thread of its own beside the unpack ([`WalScanHandle`]).
#[derive(Debug)]
pub(super) struct WalScan {
    /// From the backup's start segment to `last`: the archived file on the path, or None.
    files: Vec<Option<wal::ArchivedFile>>,
    start: u64,
    last: u64,
    seg: u64,
    chain: Vec<(u32, u64)>,
    latest: u32,
    newest_name: String,
    expect: crate::walcheck::Expect,
    target: Option<RecoveryTarget>,
    archive: PathBuf,
}

impl WalScan {
    pub(super) fn run(self) -> Result<(), RecoveryError> {
        let WalScan {
            files,
            start,
            last,
            seg,
            chain,
            latest,
            newest_name,
            expect,
            target,
            archive,
        } = self;
        let target = target.as_ref();
        tracing::info!(
            from = %wal::segment_file_name(timeline_of(&chain, start), start, seg),
            to = %wal::segment_file_name(timeline_of(&chain, last), last, seg),
            timeline = latest,
            "checking every archived WAL segment recovery will read"
        );
        let mut scanner = Some(crate::walscan::RecordScanner::new());
        let mut fed_previous = false;
        for f in &files {
            match f {
                Some(f) => {
                    if let Some(s) = scanner.as_mut() {
                        s.begin_segment(fed_previous);
                    }
                    let observe = |b: &[u8]| {
                        if let Some(s) = scanner.as_mut() {
                            s.feed(b);
                        }
                    };
                    crate::walcheck::check_archived_observed(f, expect, observe).map_err(|e| {
                        match e {
                            crate::wal::WalError::Segment(e) => RecoveryError::BadSegment(e),
                            other => RecoveryError::Wal(other),
                        }
                    })?;
                    fed_previous = true;
                }
                None => fed_previous = false,
            }
        }
        if let Some(found) = scanner.as_ref().map(|s| s.found()) {
            let range = format!(
                "{} to {newest_name}",
                wal::segment_file_name(timeline_of(&chain, start), start, seg)
            );
            // Where recovery will stop reading, when known before it starts.
            let stops_at = match target {
                Some(RecoveryTarget::Lsn(l)) => Some(*l),
                Some(RecoveryTarget::Name(name)) => found
                    .restore_points
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, at)| *at),
                _ => None,
            };
            if let Some((at, what)) = found.damaged
                && stops_at.is_none_or(|s| at < s)
            {
                return Err(RecoveryError::DamagedRecord {
                    at: at.to_string(),
                    what,
                    segment: wal::segment_file_name(
                        timeline_of(&chain, at.segment(seg)),
                        at.segment(seg),
                        seg,
                    ),
                    archive: archive.clone(),
                });
            }
            match target {
                Some(RecoveryTarget::Name(name)) => {
                    let times = found
                        .restore_points
                        .iter()
                        .filter(|(n, _)| n == name)
                        .count();
                    if times == 0 {
                        return Err(RecoveryError::RestorePointMissing {
                            name: name.clone(),
                            range,
                            archive: archive.clone(),
                            known: found
                                .restore_points
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                    if times > 1 {
                        tracing::warn!(
                            "restore point `{name}` occurs {times} times in the archived WAL ({range}); \
                             PostgreSQL stops at the first"
                        );
                    }
                }
                Some(RecoveryTarget::Time(t)) => match found.last_xact_end {
                    Some(last) if last >= *t => {}
                    last => tracing::warn!(
                        "the target time {t} is after the last commit or abort in the archived WAL \
                         ({range}: {}), the records PostgreSQL compares it with; it will replay to the \
                         end of the WAL and refuse to promote (\"recovery ended before configured \
                         recovery target was reached\")",
                        last.map(|l| format!("the last at {l}"))
                            .unwrap_or_else(|| "none".into())
                    ),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// The deep WAL check ([`WalScan`]) running on its own thread: started by [`prepare`] (so it
/// runs while the caller confirms and the bundle is unpacked), waited for by [`execute`] before
/// PGDATA is given up: a failing check refuses with nothing changed, as it did when it ran in
/// `prepare` itself.
#[derive(Clone, Default)]
pub struct WalScanHandle(Arc<Mutex<Option<WalScanThread>>>);

/// The thread running a [`WalScan`].
type WalScanThread = JoinHandle<Result<(), RecoveryError>>;

impl std::fmt::Debug for WalScanHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalScanHandle")
    }
}

impl WalScanHandle {
    pub(super) fn start(scan: Option<WalScan>) -> WalScanHandle {
        WalScanHandle(Arc::new(Mutex::new(
            scan.map(|s| std::thread::spawn(move || s.run())),
        )))
    }

    /// Wait for the check and return its outcome (the first caller gets it; later calls, and a
    /// plan without archived WAL, return Ok).
    pub(super) fn wait(&self) -> Result<(), RecoveryError> {
        let handle = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match handle {
            None => Ok(()),
            Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        }
    }
}

pub(super) fn keep_old_path(pgdata: &Path) -> PathBuf {
    let now = crate::clock::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    pgdata.with_file_name(format!("{name}.old-{}", now.strftime("%Y%m%d-%H%M%S")))
}

pub(super) fn check_room(volume: &Path, data_bytes: u64) -> Result<(), RecoveryError> {
    let st = rustix::fs::statvfs(volume).map_err(|e| FsError::new("statvfs", volume, e.into()))?;
    let available = st.f_bavail * st.f_frsize;
    let needed = data_bytes + data_bytes / 20 + (64 << 20);
    if available < needed {
        return Err(RecoveryError::NoRoomToKeepOld {
            volume: volume.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}
