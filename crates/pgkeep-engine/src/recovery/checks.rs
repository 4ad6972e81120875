//! Phase 1 ([`prepare`]): the checks before anything changes: the bundle and its system, the
//! target, PGDATA, the run directory and port, the archive handover.

use super::*;

// ---------------------------------------------------------------------------------------------
// Phase 1: checks, nothing changed
// ---------------------------------------------------------------------------------------------

/// Check everything that can be checked without changing anything. See the module docs.
pub fn prepare(req: &BootstrapRequest) -> Result<Plan, RecoveryError> {
    check_not_running(&req.pgdata)?;
    mountinfo::guard(&req.pgroot, &req.pgdata)?;
    check_pgdata_contents(&req.pgdata)?;
    let bundle = match &req.from {
        Some(name) => repo::find(&req.backups, name)?,
        None => repo::newest(&req.backups, BackupKind::Physical)?,
    };
    if bundle.kind != BackupKind::Physical {
        return Err(RecoveryError::NotPhysical {
            bundle: bundle.path.clone(),
            reason: "it is a logical (nightly) bundle; use `pgkeep restore dump`".into(),
        });
    }
    // The manifest from the bundle's tail plans the bootstrap; every member is verified against
    // it while it is extracted beside PGDATA, before PGDATA is touched (execute). A bundle whose
    // manifest is not at its tail (not written by this pgkeep) is verified here, in full.
    let manifest = match crate::catalog::peek_manifest(&bundle.path) {
        Some(m) => Some(m),
        None => {
            tracing::info!(bundle = %bundle.name, "verifying every member's checksum");
            bundle::verify(&bundle.path)?.manifest
        }
    };
    let manifest = manifest.ok_or_else(|| RecoveryError::NotPhysical {
        bundle: bundle.path.clone(),
        reason: format!("it has no {}", bundle::MANIFEST_NAME),
    })?;
    let facts =
        PhysicalFacts::from_manifest(&manifest).map_err(|reason| RecoveryError::NotPhysical {
            bundle: bundle.path.clone(),
            reason,
        })?;
    let chain = check_chain(&req.backups, &bundle, &manifest, &facts)?;
    let root = Archive::new(&req.wal_archive);
    let found = plan_handover(&root, &facts)?;
    // The checks look where the WAL will be: the root, or the directory moved back into it (in
    // a sandbox: read where it lies, the archive is never changed).
    let restore_from = match (&found, &req.sandbox) {
        (Some(dir), Some(_)) => dir.clone(),
        _ => req.wal_archive.clone(),
    };
    let archive = Archive::new(found.as_deref().unwrap_or(&req.wal_archive));
    let archive_handover = if req.sandbox.is_some() { None } else { found };
    check_same_system(&bundle, &facts, &archive)?;
    if let Some(t) = &req.target {
        check_target(t, &facts, &bundle.name)?;
    }
    check_consistency_wal(&manifest.members, &facts, &archive, &bundle.name)?;
    let archive_wal = check_archive_wal(
        &manifest.members,
        &facts,
        &archive,
        req.target.as_ref(),
        req.target_timeline,
    )?;
    // Sizes from a manifest not verified yet: saturating, never overflowing.
    let data_bytes = manifest
        .members
        .iter()
        .filter(|m| m.path.starts_with(DATA_PREFIX))
        .fold(0u64, |sum, m| sum.saturating_add(m.size))
        .saturating_add(
            chain
                .iter()
                .fold(0u64, |sum, (_, _, bytes)| sum.saturating_add(*bytes)),
        );
    let (chain, chain_manifests) = chain.into_iter().map(|(b, m, _)| (b, m)).unzip();
    let keep_old_at = if req.keep_old {
        let at = keep_old_path(&req.pgdata);
        check_room(&req.pgroot, data_bytes)?;
        Some(at)
    } else {
        None
    };
    let pgdata_entries = std::fs::read_dir(&req.pgdata)
        .map(|rd| rd.count())
        .unwrap_or(0);
    RunAs::data_owner(req.uid, req.gid)?;
    if req.sandbox.is_none() {
        check_run_dir(&req.run_dir, req.uid, req.gid)?;
        check_port_free(&req.run_dir, req.port)?;
    }
    check_not_running(&req.pgdata)?;
    Ok(Plan {
        bundle,
        manifest,
        chain,
        chain_manifests,
        facts,
        target: req.target.clone(),
        data_bytes,
        keep_old_at,
        pgdata_entries,
        archive_handover,
        restore_from,
        newest_archived: archive_wal.newest,
        replay_segments: archive_wal.segments,
        wal_scan: WalScanHandle::start(archive_wal.scan),
        target_timeline: req.target_timeline.unwrap_or(TimelineChoice::Latest),
    })
}

/// When `bundle` is an incremental: every bundle of its chain, full first, verified (every
/// checksum) and checked against the links the incremental recorded (system, LSNs lining up,
/// the SHA-256 of each `backup_manifest`), with its verified manifest and its data bytes.
/// Nothing is changed.
pub fn check_chain(
    dir: &Path,
    bundle: &Backup,
    manifest: &bundle::Manifest,
    facts: &PhysicalFacts,
) -> Result<Vec<(Backup, bundle::Manifest, u64)>, RecoveryError> {
    use crate::chain::{ChainError, ChainInfo};
    let bad = |message: String| ChainError::BadInfo {
        bundle: bundle.name.clone(),
        message,
    };
    let Some(info) = ChainInfo::from_manifest(manifest).map_err(bad)? else {
        return Ok(vec![]);
    };
    let links = crate::chain::resolve(dir, &bundle.name, &info)?;
    let mut out = Vec::new();
    for (i, link) in links.iter().enumerate() {
        tracing::info!(bundle = %link.name, "verifying every member's checksum (chain link {} of {})", i + 1, links.len());
        let contents = bundle::verify(&link.path)?;
        let m = contents
            .manifest
            .ok_or_else(|| RecoveryError::NotPhysical {
                bundle: link.path.clone(),
                reason: format!("it has no {}", bundle::MANIFEST_NAME),
            })?;
        let child = match info.chain.get(i + 1) {
            Some(next) => (next.name.clone(), next.start_lsn.clone()),
            None => (bundle.name.clone(), facts.start_lsn.to_string()),
        };
        crate::chain::check_link(&bundle.name, &info.chain[i], &m, Some((&child.0, &child.1)))?;
        // Each link's own chain is the part of this one before it (the first is a full one).
        let own = ChainInfo::from_manifest(&m).map_err(bad)?;
        let expected = &info.chain[..i];
        if own.as_ref().map(|c| c.chain.as_slice()).unwrap_or(&[]) != expected {
            return Err(ChainError::Broken {
                bundle: bundle.name.clone(),
                link: link.name.clone(),
                problem: if i == 0 {
                    "should be a full base backup but is an incremental one".into()
                } else {
                    "records a different chain below it".into()
                },
            }
            .into());
        }
        let bytes = m
            .members
            .iter()
            .filter(|d| d.path.starts_with(DATA_PREFIX))
            .fold(0u64, |sum, d| sum.saturating_add(d.size));
        out.push((link.clone(), m, bytes));
    }
    Ok(out)
}

/// The owner a bootstrap should give the data when the settings do not name one: the owner of
/// PGDATA when it holds anything, else of the data volume root (a plain host's cluster belongs
/// to `postgres`, whatever uid the image default says). None when neither can be read.
pub fn existing_data_owner(pgroot: &Path, pgdata: &Path) -> Option<(u32, u32)> {
    let has_entries = std::fs::read_dir(pgdata).is_ok_and(|mut rd| rd.next().is_some());
    let from = if has_entries { pgdata } else { pgroot };
    std::fs::metadata(from).ok().map(|m| (m.uid(), m.gid()))
}

/// No postmaster runs on PGDATA; when one does and pgkeep's recovery block is still in
/// postgresql.auto.conf, an earlier bootstrap was killed after it started its server: say so.
pub(super) fn check_not_running(pgdata: &Path) -> Result<(), RecoveryError> {
    let Some(pid) = datadir::running_postmaster(pgdata) else {
        return Ok(());
    };
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap_or_default();
    if !auto.lines().any(|l| l == BLOCK_BEGIN) {
        return Err(datadir::DatadirError::PostmasterRunning {
            pid,
            pgdata: pgdata.to_owned(),
        }
        .into());
    }
    let d = pgdata.display();
    let (state, hint) = if pgdata.join("recovery.signal").exists() {
        (
            "still replaying WAL: it has not been promoted",
            format!(
                "stop it (`pg_ctl -D {d} stop -m fast`, as the data owner) and run the bootstrap again; it starts over from the base backup"
            ),
        )
    } else {
        (
            "recovery has ended and it was promoted, but the bootstrap did not finish its cleanup",
            format!(
                "to keep what it recovered: stop it (`pg_ctl -D {d} stop -m fast`, as the data owner), delete the lines from `{BLOCK_BEGIN}` to `{BLOCK_END}` in {d}/postgresql.auto.conf, remove {} beside PGDATA, and start it normally; or stop it and run the bootstrap again to start over",
                crate::bootmark::FILE_NAME
            ),
        )
    };
    Err(RecoveryError::InterruptedBootstrap {
        pgdata: pgdata.to_owned(),
        pid,
        state,
        hint,
    })
}

/// The replay server's socket directory exists and the data owner can create its socket there.
pub(super) fn check_run_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), RecoveryError> {
    let unusable = |reason: String| RecoveryError::RunDirUnusable {
        dir: dir.to_owned(),
        uid,
        gid,
        reason,
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Err(unusable(format!("cannot be used ({e})"))),
    };
    if !meta.is_dir() {
        return Err(unusable("is not a directory".into()));
    }
    let writable = if !fsutil::is_root() {
        rustix::fs::access(
            dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
    } else {
        let mode = meta.mode();
        if uid == 0 {
            true
        } else if meta.uid() == uid {
            mode & 0o300 == 0o300
        } else if meta.gid() == gid || in_supplementary_group(uid, meta.gid()) {
            mode & 0o030 == 0o030
        } else {
            mode & 0o003 == 0o003
        }
    };
    if !writable {
        return Err(unusable(format!(
            "is not writable by uid {uid}, the data owner (it belongs to {}:{} with mode {:o})",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Whether the account `uid` is a member of group `gid` by /etc/group.
pub(super) fn in_supplementary_group(uid: u32, gid: u32) -> bool {
    let Some(name) = crate::server::account_name(uid) else {
        return false;
    };
    std::fs::read_to_string("/etc/group").is_ok_and(|text| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() >= 4
                && f[2].parse::<u32>().ok() == Some(gid)
                && f[3].split(',').any(|m| m == name)
        })
    })
}

/// No live PostgreSQL holds the socket `PORT` in `dir` (its lock file names a running process).
pub(super) fn check_port_free(dir: &Path, port: u16) -> Result<(), RecoveryError> {
    let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    let alive = rustix::process::Pid::from_raw(pid.abs()).is_some_and(|p| {
        match rustix::process::test_kill_process(p) {
            Ok(()) => true,
            Err(e) => e == rustix::io::Errno::PERM,
        }
    });
    if alive {
        return Err(RecoveryError::PortInUse {
            port,
            dir: dir.to_owned(),
            pid: pid.abs().to_string(),
        });
    }
    Ok(())
}

/// Where the replay server listens: the sandbox's private socket, else the run dir.
pub(super) fn replay_socket(req: &BootstrapRequest) -> (PathBuf, u16) {
    match &req.sandbox {
        Some(sb) => (sb.socket_dir.clone(), sb.port),
        None => (req.run_dir.clone(), req.port),
    }
}

/// The settings the replay server gets on its command line (`-c`, no shell in between): its
/// socket directory and port, and no TCP, whatever the restored configuration says.
pub fn replay_server_settings(socket_dir: &Path, port: u16) -> Vec<(&'static str, String)> {
    let dir = socket_dir.display().to_string();
    // unix_socket_directories is a comma-separated list: a name with a separator is quoted.
    let dir = if dir.contains([',', '"', ' ', '\t']) {
        format!("\"{}\"", dir.replace('"', "\"\""))
    } else {
        dir
    };
    vec![
        ("listen_addresses", String::new()),
        ("unix_socket_directories", dir),
        ("port", port.to_string()),
    ]
}

/// When the archive root does not hold the bundle's system's WAL but a superseded directory of
/// that system exists (a fresh initdb took the archive over since the backup), that directory.
pub(super) fn plan_handover(
    root: &Archive,
    facts: &PhysicalFacts,
) -> Result<Option<PathBuf>, RecoveryError> {
    let Ok(system) = facts.system_identifier.parse::<u64>() else {
        return Ok(None);
    };
    if !root.dir().is_dir() {
        return Ok(None);
    }
    let root_system = crate::archive_owner::root_wal(root)?.system;
    if root_system == Some(system) {
        return Ok(None);
    }
    let found = crate::archive_owner::find_superseded(root, system)?;
    if let Some(dir) = &found {
        tracing::info!(
            aside = %dir.display(),
            root_system = ?root_system,
            "the WAL archive's root belongs to another system; this bundle's WAL was moved aside \
             and will be moved back (the root's WAL goes aside in turn, nothing is deleted)"
        );
    }
    Ok(found)
}

/// Carry out [`Plan::archive_handover`]: the root's WAL aside, the bundle's system's back.
pub(super) fn hand_over_archive(req: &BootstrapRequest, plan: &Plan) -> Result<(), RecoveryError> {
    let Some(dir) = &plan.archive_handover else {
        return Ok(());
    };
    let root = Archive::new(&req.wal_archive);
    if let Some(moved) = crate::archive_owner::supersede(&root, crate::clock::now())? {
        tracing::warn!("{moved}");
    }
    let back = crate::archive_owner::reinstate(&root, dir)?;
    tracing::info!("{back}");
    Ok(())
}

/// Whether a name can be part of a PostgreSQL data directory (or of a half-done bootstrap).
pub fn is_data_directory_entry(name: &str) -> bool {
    const NAMES: [&str; 15] = [
        "PG_VERSION",
        "base",
        "global",
        "log",
        "pg_hba.conf",
        "pg_ident.conf",
        "postgresql.conf",
        "postgresql.auto.conf",
        "postmaster.opts",
        "postmaster.pid",
        "current_logfiles",
        "recovery.signal",
        "standby.signal",
        "pgkeep.conf",
        "backup_manifest",
    ];
    NAMES.contains(&name)
        || name.starts_with("pg_")
        || name.starts_with("backup_label")
        || name.starts_with("tablespace_map")
}

/// PGDATA must be empty or look like a data directory: a wrong PGDATA must not be emptied.
pub(super) fn check_pgdata_contents(pgdata: &Path) -> Result<(), RecoveryError> {
    let Ok(rd) = std::fs::read_dir(pgdata) else {
        return Ok(());
    };
    let mut foreign: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_data_directory_entry(n))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let more = if foreign.len() > 8 { ", ..." } else { "" };
    foreign.truncate(8);
    Err(RecoveryError::ForeignContent {
        pgdata: pgdata.to_owned(),
        entries: foreign.join(", ") + more,
    })
}

/// The bundle and the WAL archive must belong to the same system.
pub(super) fn check_same_system(
    bundle: &Backup,
    facts: &PhysicalFacts,
    archive: &Archive,
) -> Result<(), RecoveryError> {
    let Ok(files) = archive.list() else {
        return Ok(());
    };
    let seg = facts.wal_segment_size;
    let start = facts.start_lsn.segment(seg);
    let candidates: Vec<_> = files
        .iter()
        .filter(|f| matches!(f.wal.kind, WalKind::Segment | WalKind::Partial))
        .collect();
    // The first segment the recovery would read, else the newest one in the archive.
    let probe = candidates
        .iter()
        .find(|f| f.wal.segment_no(seg) >= start)
        .into_iter()
        .chain(candidates.last());
    for f in probe {
        if let Some(sysid) = archive.system_identifier(f)
            && sysid.to_string() != facts.system_identifier
        {
            return Err(RecoveryError::ForeignSystem {
                bundle: bundle.path.clone(),
                bundle_system: facts.system_identifier.clone(),
                archive: archive.dir().to_owned(),
                archive_system: sysid.to_string(),
            });
        }
    }
    Ok(())
}

pub(super) fn parse_pg_time(s: &str) -> Option<jiff::Timestamp> {
    parse_target_time(s).ok()
}

/// An explicit target must lie after the backup's end, and a time target in the past.
pub(super) fn check_target(
    t: &RecoveryTarget,
    facts: &PhysicalFacts,
    bundle: &str,
) -> Result<(), RecoveryError> {
    match t {
        RecoveryTarget::Time(time) => {
            if *time > jiff::Timestamp::now() {
                return Err(RecoveryError::TargetInFuture {
                    target: time.to_string(),
                });
            }
            if let Some(end) = parse_pg_time(&facts.stop_time)
                && *time < end
            {
                return Err(RecoveryError::TargetBeforeBackupEnd {
                    target: time.to_string(),
                    end: format!("ended at {end}"),
                    bundle: bundle.to_owned(),
                });
            }
        }
        RecoveryTarget::Lsn(l) => {
            if *l < facts.stop_lsn {
                return Err(RecoveryError::TargetBeforeBackupEnd {
                    target: format!("LSN {l}"),
                    end: format!("stop LSN {}", facts.stop_lsn),
                    bundle: bundle.to_owned(),
                });
            }
        }
        RecoveryTarget::Name(_) => {}
    }
    Ok(())
}

/// Every segment from the backup's start to its stop must be in the bundle or the archive.
pub(super) fn check_consistency_wal(
    members: &[MemberDigest],
    facts: &PhysicalFacts,
    archive: &Archive,
    bundle: &str,
) -> Result<(), RecoveryError> {
    for seg in facts.needed_segments() {
        let member = format!("{DATA_PREFIX}pg_wal/{seg}");
        if members.iter().any(|m| m.path == member) || archive.find(&seg).is_some() {
            continue;
        }
        return Err(RecoveryError::MissingWalBeforeStart {
            segment: seg,
            bundle: bundle.to_owned(),
            archive: archive.dir().to_owned(),
        });
    }
    Ok(())
}
