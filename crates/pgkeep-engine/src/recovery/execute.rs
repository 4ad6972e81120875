//! Phase 2 ([`execute`]): the bootstrap's steps: clear PGDATA (or keep it aside), extract,
//! ownership and modes, replay, and the stale staging directories a killed run left.

use super::*;

// ---------------------------------------------------------------------------------------------
// Phase 2: the bootstrap itself
// ---------------------------------------------------------------------------------------------

/// Run the bootstrap planned by [`prepare`]. Call it only after confirmation.
pub async fn execute(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
) -> Result<BootstrapReport, RecoveryError> {
    let started = Instant::now();
    let run_as = RunAs::data_owner(req.uid, req.gid)?;
    let replayed = replay(pg, conn, req, plan, run_as).await?;
    let report = replayed.report(req, plan, started);
    replayed.server.stop()?;
    // Recovery is over and PGDATA is a whole, stopped database again.
    if req.sandbox.is_none() {
        crate::bootmark::clear(&req.pgroot)?;
    }
    if req.leave_running && req.sandbox.is_none() {
        // The replay server listened only on pgkeep's socket: start the database again as
        // configured, detached (pg_ctl), since it is meant to outlive this run.
        if start_postgres(pg, &req.pgdata, &replayed.log_file, run_as).is_err()
            || !wait_started(&req.pgdata).await
        {
            return Err(RecoveryError::RestartFailed {
                log_file: replayed.log_file.clone(),
                log: crate::server::log_tail(&replayed.log_file, 15),
            });
        }
    }
    Ok(BootstrapReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// [`execute`] for a sandbox (a restore drill's scratch directory, `req.sandbox` set): the
/// replay server is handed back still running, as pgkeep's child, for the caller to check and
/// then stop; it never outlives this process.
pub async fn execute_in_sandbox(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
) -> Result<(BootstrapReport, ChildServer), RecoveryError> {
    let started = Instant::now();
    let run_as = RunAs::data_owner(req.uid, req.gid)?;
    let replayed = replay(pg, conn, req, plan, run_as).await?;
    let db = Db::connect(&replayed.conn.with_db("postgres")).await?;
    db.reload_conf().await?;
    drop(db);
    let report = replayed.report(req, plan, started);
    Ok((report, replayed.server))
}

/// What [`replay`] leaves: recovery ended, its settings removed, the replay server still up.
pub(super) struct Replayed {
    pub(super) server: ChildServer,
    pub(super) conn: ConnParams,
    pub(super) ended: Ended,
    pub(super) log_file: PathBuf,
    pub(super) old_at: Option<PathBuf>,
    /// Segments recovery took from the prefetch spool.
    pub(super) prefetched: usize,
    /// This run's hold on the data volume ([`lock_volume`]), until the caller is done.
    pub(super) _lock: std::fs::File,
}

impl Replayed {
    fn report(&self, req: &BootstrapRequest, plan: &Plan, started: Instant) -> BootstrapReport {
        BootstrapReport {
            bundle: plan.bundle.name.clone(),
            end_lsn: self.ended.end_lsn.clone(),
            timeline: self.ended.timeline,
            last_replayed_xact_time: self.ended.last_xact_time.clone(),
            stop_reason: stop_reason(&self.log_file),
            left_running: req.leave_running,
            old_contents_at: self.old_at.clone(),
            archived_segments: plan.replay_segments.len(),
            prefetched_segments: self.prefetched,
            log_file: self.log_file.clone(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The steps up to the end of recovery.
pub(super) async fn replay(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
    run_as: Option<RunAs>,
) -> Result<Replayed, RecoveryError> {
    mountinfo::guard(&req.pgroot, &req.pgdata)?;
    let lock = lock_volume(&req.pgroot)?;
    check_not_running(&req.pgdata)?;
    clean_stale_staging(&req.pgdata)?;
    let staging = Staging::create(&req.pgdata)?;
    let (data, old_at) = if room_for_both(&req.pgroot, plan) {
        unpack_then_clear(pg, req, plan, &staging)?
    } else {
        verify_clear_unpack(pg, req, plan, &staging)?
    };
    move_into_pgdata(&data, &req.pgdata)?;
    // The replaced contents and the bundle's leftovers go while the server replays.
    let _cleanup = staging.remove_in_background();
    set_ownership_and_modes(&req.pgdata, req.uid, req.gid)?;
    hand_over_archive(req, plan)?;
    let overrides = required_parameter_overrides(pg, &req.pgdata, run_as)?;
    // Segments are decompressed and checked ahead of replay, on the cores replay leaves idle;
    // stopped (and its spool removed) when this step ends, however it ends.
    let prefetch = start_prefetch(req, plan, run_as)?;
    write_recovery_settings(req, plan, &overrides, prefetch.as_ref().map(|p| p.dir()))?;
    let log_file = open_log_file(req, run_as)?;
    let (socket_dir, port) = replay_socket(req);
    // The replay server is our child: should this run be killed, the kernel stops it, and the
    // next run (the bootmark says PGDATA is partial) starts over from the base backup.
    let mut server = ChildServer::start(
        pg,
        &req.pgdata,
        &log_file,
        run_as,
        &replay_server_settings(&socket_dir, port),
    )?;
    let mut replay_conn = conn.clone();
    replay_conn.host = socket_dir.display().to_string();
    replay_conn.port = port;
    // On an error the server is stopped (dropped) and the recovery settings stay, so a person
    // can look at the state; the error says what happened.
    let ended = wait_for_recovery_end(&replay_conn, req, plan, &log_file, &mut server).await?;
    check_replayed_to_the_end(plan, &ended, &log_file)?;
    remove_recovery_settings(&req.pgdata)?;
    // Stopped and its spool removed here: recovery asks for nothing more.
    let prefetched = prefetch.map_or(0, |p| p.taken());
    Ok(Replayed {
        server,
        conn: replay_conn,
        ended,
        log_file,
        old_at,
        prefetched,
        _lock: lock,
    })
}

/// Step: start the replay prefetcher ([`crate::wal::prefetch`]) on the segments recovery will
/// read, one thread per two cores (replay itself is one process).
fn start_prefetch(
    req: &BootstrapRequest,
    plan: &Plan,
    run_as: Option<RunAs>,
) -> Result<Option<crate::wal::prefetch::Prefetcher>, RecoveryError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spec = crate::wal::prefetch::Spec {
        archive: plan.restore_from.clone(),
        pg_wal: req.pgdata.join("pg_wal"),
        segments: plan.replay_segments.clone(),
        expect: crate::walcheck::Expect {
            system_identifier: plan.facts.system_identifier.parse().ok(),
            major: Some(plan.facts.server_version_num / 10000),
        },
        segment_size: plan.facts.wal_segment_size,
        owner: run_as.map(|r| (r.uid, r.gid)),
    };
    Ok(crate::wal::prefetch::Prefetcher::start(
        spec,
        (cores / 2).clamp(1, 4),
    )?)
}

/// The lock file on the data volume that one bootstrap at a time holds.
pub(super) const LOCK_FILE: &str = ".pgkeep-bootstrap.lock";

/// Step: hold the data volume's bootstrap lock (`flock` on [`LOCK_FILE`], released by the
/// kernel when this process ends, however it ends), or refuse: a second bootstrap running now
/// would empty PGDATA under the first one's server or move its data away.
fn lock_volume(pgroot: &Path) -> Result<std::fs::File, RecoveryError> {
    let path = pgroot.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .fs_ctx("open", &path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RecoveryError::BootstrapRunning { lock: path }),
        Err(e) => Err(FsError::new("lock", &path, e.into()).into()),
    }
}

/// Whether the volume holds the unpacked bundle beside today's PGDATA (a chain: its links and
/// the combined copy), with 5 % and 64 MiB to spare.
fn room_for_both(volume: &Path, plan: &Plan) -> bool {
    let st = match rustix::fs::statvfs(volume) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(volume = %volume.display(), error = %e, "cannot tell the free space: verifying the bundle in a pass of its own, then emptying PGDATA before unpacking");
            return false;
        }
    };
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    let copies = if plan.chain.is_empty() { 1 } else { 2 };
    let needed = plan
        .data_bytes
        .saturating_mul(copies)
        .saturating_add(plan.data_bytes / 20)
        .saturating_add(64 << 20);
    if available < needed {
        tracing::warn!(
            volume = %volume.display(),
            available,
            needed,
            "no room to unpack the bundle beside PGDATA: verifying it in a pass of its own, then emptying PGDATA before unpacking"
        );
    }
    available >= needed
}

/// Steps with room for both copies: unpack and verify beside PGDATA, and only then give PGDATA
/// up (its contents into the staging directory, or aside with keep_old). Returns the data
/// directory to move in and the keep-old directory.
fn unpack_then_clear(
    pg: &PgBin,
    req: &BootstrapRequest,
    plan: &Plan,
    staging: &Staging,
) -> Result<(PathBuf, Option<PathBuf>), RecoveryError> {
    let data = staging.unpack(pg, plan, NOTHING_CHANGED)?;
    // The archived WAL was checked meanwhile, on a thread of its own.
    plan.wal_scan.wait()?;
    // The unpack takes a while: nothing may have started a server on PGDATA meanwhile.
    check_not_running(&req.pgdata)?;
    mark_unfinished(req, plan)?;
    let old_at = clear_pgdata(req, plan, Some(staging.trash()))?;
    Ok((data, old_at))
}

/// Steps without room for both copies: verify every member (every link of a chain) in a pass
/// of its own, empty PGDATA, then unpack (verifying again).
fn verify_clear_unpack(
    pg: &PgBin,
    req: &BootstrapRequest,
    plan: &Plan,
    staging: &Staging,
) -> Result<(PathBuf, Option<PathBuf>), RecoveryError> {
    for (b, expected) in plan.links() {
        tracing::info!(bundle = %b.name, "verifying every member's checksum");
        let contents = bundle::verify(&b.path)?;
        same_manifest(b, expected, &contents, NOTHING_CHANGED)?;
    }
    plan.wal_scan.wait()?;
    check_not_running(&req.pgdata)?;
    mark_unfinished(req, plan)?;
    let old_at = clear_pgdata(req, plan, None)?;
    let state = "; PGDATA was emptied already: run the bootstrap again with a good bundle";
    let data = staging.unpack(pg, plan, state)?;
    Ok((data, old_at))
}

/// What a refusal before PGDATA was given up says about it.
const NOTHING_CHANGED: &str = "; nothing was changed";

/// Step: until recovery has ended, an empty or partial PGDATA is not a new database (bootmark).
fn mark_unfinished(req: &BootstrapRequest, plan: &Plan) -> Result<(), RecoveryError> {
    if req.sandbox.is_none() {
        crate::bootmark::set(&req.pgroot, &plan.bundle.name)?;
    }
    Ok(())
}

/// The manifest read while unpacking or verifying must be the one the bootstrap was planned
/// with (the file was not replaced meanwhile, and has the manifest its end promised).
fn same_manifest(
    b: &Backup,
    expected: &bundle::Manifest,
    contents: &bundle::Contents,
    state: &'static str,
) -> Result<(), RecoveryError> {
    if contents.manifest.as_ref() == Some(expected) {
        Ok(())
    } else {
        Err(RecoveryError::BundleChanged {
            bundle: b.path.clone(),
            state,
        })
    }
}

/// Step: without a target, replay must have reached the newest archived segment on the path;
/// ending before it means a segment could not be replayed and commits are missing.
pub(super) fn check_replayed_to_the_end(
    plan: &Plan,
    ended: &Ended,
    log_file: &Path,
) -> Result<(), RecoveryError> {
    if plan.target.is_some() {
        return Ok(());
    }
    let Some((newest, start)) = &plan.newest_archived else {
        return Ok(());
    };
    let end: Option<Lsn> = ended.end_lsn.as_deref().and_then(|l| l.parse().ok());
    if end.is_some_and(|e| e >= *start) {
        return Ok(());
    }
    Err(RecoveryError::EndedShort {
        end: ended.end_lsn.clone().unwrap_or_else(|| "?".into()),
        newest: newest.clone(),
        newest_start: start.to_string(),
        history: ended
            .timeline
            .map(|t| format!("{t:08X}.history"))
            .unwrap_or_else(|| "the newest .history file".into()),
        log: crate::server::log_tail(log_file, 15),
    })
}

/// [`prepare`] then [`execute`] without asking: for callers that own the site they restore into
/// (`pgkeep demo`, restore drills). Everything `prepare` refuses is still refused.
pub async fn bootstrap(
    pg: &PgBin,
    conn: &ConnParams,
    req: &BootstrapRequest,
) -> Result<BootstrapReport, RecoveryError> {
    let plan = prepare(req)?;
    execute(pg, conn, req, &plan).await
}

/// Step: empty PGDATA (never PGDATA itself, never the volume root), or move its contents aside:
/// to the keep-old directory, or into `trash` (this run's staging directory, removed while the
/// server replays). Returns the keep-old directory.
pub(super) fn clear_pgdata(
    req: &BootstrapRequest,
    plan: &Plan,
    trash: Option<PathBuf>,
) -> Result<Option<PathBuf>, RecoveryError> {
    let pgdata = &req.pgdata;
    if !pgdata.exists() {
        std::fs::create_dir_all(pgdata).fs_ctx("create directory", pgdata)?;
    }
    let kept = plan.keep_old_at.clone();
    if let Some(dir) = &kept {
        std::fs::create_dir(dir).fs_ctx("create directory", dir)?;
        fsutil::set_mode(dir, 0o700)?;
        if fsutil::is_root() {
            fsutil::chown(dir, req.uid, req.gid)?;
        }
    } else if let Some(dir) = &trash {
        std::fs::create_dir(dir).fs_ctx("create directory", dir)?;
    }
    let aside = kept.clone().or(trash);
    for entry in std::fs::read_dir(pgdata).fs_ctx("read directory", pgdata)? {
        let entry = entry.fs_ctx("read directory", pgdata)?;
        let path = entry.path();
        match &aside {
            Some(dir) => {
                let to = dir.join(entry.file_name());
                std::fs::rename(&path, &to).fs_ctx("move aside", &path)?;
            }
            None => {
                let ft = entry.file_type().fs_ctx("stat", &path)?;
                if ft.is_dir() {
                    std::fs::remove_dir_all(&path).fs_ctx("remove", &path)?;
                } else {
                    std::fs::remove_file(&path).fs_ctx("remove", &path)?;
                }
            }
        }
    }
    fsutil::fsync_dir(pgdata)?;
    if let Some(dir) = &kept {
        fsutil::fsync_dir(dir)?;
        tracing::info!(to = %dir.display(), "moved the old PGDATA contents aside");
    } else {
        tracing::info!(pgdata = %pgdata.display(), "emptied PGDATA");
    }
    Ok(kept)
}

/// The name prefix of a bootstrap's staging directory beside PGDATA (`.pgkeep-bootstrap-HOST-PID`,
/// earlier versions `.pgkeep-bootstrap-PID`); the bootstrap marker shares the prefix but is a file.
pub(super) const STAGING_PREFIX: &str = ".pgkeep-bootstrap-";

/// Step: remove the staging directories that killed bootstraps left beside PGDATA (each as large
/// as the database), by the run-mark rules: only when their run is known to be gone, never a
/// live one's. Returns what was removed.
pub fn clean_stale_staging(pgdata: &Path) -> Result<Vec<PathBuf>, RecoveryError> {
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Ok(removed);
    };
    for entry in rd {
        let entry = entry.fs_ctx("read directory", parent)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        let path = entry.path();
        if name == crate::bootmark::FILE_NAME
            || !entry
                .file_type()
                .is_ok_and(|t| t.is_dir() && !t.is_symlink())
        {
            continue;
        }
        let gone = match crate::runmark::holder(&path) {
            crate::runmark::Holder::Gone => true,
            crate::runmark::Holder::Us | crate::runmark::Holder::Running(_) => false,
            // No pid file (yet): the name tells the run (`HOST-PID`, or an earlier version's
            // `PID`); a run on another host, or a name that does not parse, only by its age.
            crate::runmark::Holder::Unknown => {
                let (host, pid) = match rest.rsplit_once('-') {
                    Some((host, pid)) => (Some(host), pid),
                    None => (None, rest),
                };
                let here = host.is_none_or(|h| h == crate::runmark::this_host());
                match pid.parse::<u32>() {
                    Ok(pid) if here => {
                        crate::runmark::judge(pid, None, Duration::default)
                            == crate::runmark::Holder::Gone
                    }
                    _ => crate::runmark::quiet_for(&path) > crate::runmark::FOREIGN_STALE_AFTER,
                }
            }
        };
        if !gone {
            tracing::info!(path = %path.display(), "leaving a staging directory a running bootstrap uses");
            continue;
        }
        std::fs::remove_dir_all(&path).fs_ctx("remove stale staging", &path)?;
        tracing::info!(path = %path.display(), "removed the staging directory an interrupted bootstrap left behind");
        removed.push(path);
    }
    Ok(removed)
}

/// This run's staging directory beside PGDATA (same volume, so everything in it is renamed into
/// place), marked as this run's (a `pid` file with a heartbeat, so a later run can tell it was
/// left by a killed one): the unpacked bundle (`bundle/`; a chain: `link-N/` and `combined/`),
/// then PGDATA's replaced contents (`old/`).
struct Staging {
    dir: PathBuf,
    heartbeat: Option<crate::runmark::Heartbeat>,
}

impl Staging {
    fn create(pgdata: &Path) -> Result<Staging, RecoveryError> {
        let parent = pgdata.parent().unwrap_or(Path::new("/"));
        let label = crate::runmark::run_label("pgkeep-bootstrap");
        let dir = parent.join(format!(".{label}"));
        if dir.exists() {
            // Our own label: left by an earlier run with this PID on this host, which is gone.
            std::fs::remove_dir_all(&dir).fs_ctx("remove", &dir)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .fs_ctx("create directory", &dir)?;
        let heartbeat = crate::runmark::mark(&dir).fs_ctx("write", &dir.join("pid"))?;
        Ok(Staging {
            dir,
            heartbeat: Some(heartbeat),
        })
    }

    fn trash(&self) -> PathBuf {
        self.dir.join("old")
    }

    /// Step: unpack the bundle (a chain: every link, combined with pg_combinebackup) here,
    /// verifying every member against the planned manifest; returns the data directory, which
    /// must hold a data directory's `PG_VERSION` and `global/pg_control`.
    fn unpack(
        &self,
        pg: &PgBin,
        plan: &Plan,
        state: &'static str,
    ) -> Result<PathBuf, RecoveryError> {
        tracing::info!(bundle = %plan.bundle.name, staging = %self.dir.display(), "extracting and verifying");
        let data = if plan.chain.is_empty() {
            let unpacked = self.dir.join("bundle");
            let contents = bundle::extract(&plan.bundle.path, &unpacked)?;
            same_manifest(&plan.bundle, &plan.manifest, &contents, state)?;
            unpacked.join(DATA_PREFIX.trim_end_matches('/'))
        } else {
            combine_chain(pg, plan, &self.dir, state)?
        };
        for needed in ["PG_VERSION", "global/pg_control"] {
            if !data.join(needed).is_file() {
                return Err(RecoveryError::NotPhysical {
                    bundle: plan.bundle.path.clone(),
                    reason: format!("it holds no data directory (no {DATA_PREFIX}{needed}){state}"),
                });
            }
        }
        Ok(data)
    }

    /// Remove the staging directory on a thread of its own; the returned guard waits for it
    /// when dropped. The heartbeat goes on until it is gone, so no other run takes it for a
    /// killed run's meanwhile.
    fn remove_in_background(mut self) -> Cleanup {
        let heartbeat = self.heartbeat.take();
        let dir = self.dir.clone();
        let thread = std::thread::Builder::new()
            .name("pgkeep-staging-rm".into())
            .spawn(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(path = %dir.display(), error = %e, "could not remove the staging directory; the next bootstrap removes it");
                }
                drop(heartbeat);
            });
        Cleanup(thread.ok())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Still holding its heartbeat: not handed over to the background removal (an error).
        if self.heartbeat.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for the staging directory's removal when dropped.
struct Cleanup(Option<std::thread::JoinHandle<()>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Step: move the unpacked data directory's entries into PGDATA and make them durable.
fn move_into_pgdata(data: &Path, pgdata: &Path) -> Result<(), RecoveryError> {
    for entry in std::fs::read_dir(data).fs_ctx("read directory", data)? {
        let entry = entry.fs_ctx("read directory", data)?;
        let to = pgdata.join(entry.file_name());
        std::fs::rename(entry.path(), &to).fs_ctx("move into PGDATA", &to)?;
    }
    for sub in ["pg_wal/archive_status", "pg_tblspc", "pg_replslot"] {
        let p = pgdata.join(sub);
        std::fs::create_dir_all(&p).fs_ctx("create directory", &p)?;
    }
    fsutil::fsync_dir(pgdata)?;
    Ok(())
}

/// Extract every link of the chain (full first, the incremental last) into `staging`, each
/// verified against its planned manifest, and combine them with pg_combinebackup; returns the
/// combined data directory.
fn combine_chain(
    pg: &PgBin,
    plan: &Plan,
    staging: &Path,
    state: &'static str,
) -> Result<PathBuf, RecoveryError> {
    let mut inputs = Vec::new();
    for (i, (b, expected)) in plan.links().enumerate() {
        let unpacked = staging.join(format!("link-{i}"));
        tracing::info!(bundle = %b.name, "extracting chain link {} of {}", i + 1, plan.chain.len() + 1);
        let contents = bundle::extract(&b.path, &unpacked)?;
        same_manifest(b, expected, &contents, state)?;
        // pg_combinebackup reads each backup's backup_manifest inside its directory.
        let data = unpacked.join(DATA_PREFIX.trim_end_matches('/'));
        let from = unpacked.join(crate::physical::PG_MANIFEST);
        let to = data.join(crate::physical::PG_MANIFEST);
        std::fs::rename(&from, &to).fs_ctx("move into place", &from)?;
        inputs.push(data);
    }
    let out = staging.join("combined");
    let mut cmd = pg.cmd("pg_combinebackup").arg("-o").arg(&out);
    if pg.major_version("pg_combinebackup")? >= 18 {
        cmd = cmd.arg("--link");
    }
    tracing::info!(
        links = inputs.len(),
        "combining the chain with pg_combinebackup"
    );
    cmd.args(&inputs).run()?;
    Ok(out)
}

/// Step: PGDATA and everything in it owned by the data owner, directories 0700, files 0600.
pub(super) fn set_ownership_and_modes(
    pgdata: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), RecoveryError> {
    fn walk(p: &Path, uid: u32, gid: u32, root: bool) -> Result<(), FsError> {
        let meta = std::fs::symlink_metadata(p).fs_ctx("stat", p)?;
        if root && (meta.uid() != uid || meta.gid() != gid) {
            fsutil::chown(p, uid, gid)?;
        }
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o7777 != want {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(want))
                .fs_ctx("chmod", p)?;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(p).fs_ctx("read directory", p)? {
                walk(&e.fs_ctx("read directory", p)?.path(), uid, gid, root)?;
            }
        }
        Ok(())
    }
    walk(pgdata, uid, gid, fsutil::is_root())?;
    Ok(())
}
