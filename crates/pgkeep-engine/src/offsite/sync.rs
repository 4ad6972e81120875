//! `offsite sync` (the local repository and WAL archive copied up), and reading back: a WAL
//! file for `wal fetch`, bundles and WAL materialized for a restore or drill.

use super::*;

// ---------------------------------------------------------------------------------------------
// sync

/// What `offsite sync` should say as it goes.
pub trait SyncProgress: Send + Sync {
    /// A file starts uploading (`bytes`: its local size).
    fn start(&self, name: &str, bytes: u64);
    /// Bytes of the current file read so far.
    fn advance(&self, done: u64);
    /// The current file is done.
    fn done(&self, name: &str, outcome: PutOutcome);
}

/// What one sync round did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncReport {
    pub system_identifier: u64,
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    /// Files that were off-site already (compared when seen for the first time).
    pub already: usize,
    /// Bundles this round looked at for the first time (uploaded or found off-site): off-site
    /// retention has something new to judge.
    pub new_bundles: usize,
    /// The newest WAL segment the round saw off-site (every local file older is off-site too).
    pub newest_segment: Option<String>,
}

/// The system the local files belong to: the data directory's, else the WAL archive's newest
/// segment's.
pub fn local_system(pgdata: &Path, archive: &Archive) -> Option<u64> {
    if let Some(id) = crate::walcheck::expect_from_pgdata(pgdata).system_identifier {
        return Some(id);
    }
    let files = archive.list().ok()?;
    files
        .iter()
        .rev()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .find_map(|f| archive.system_identifier(f))
}

/// Remembers what is known to be off-site, so `--follow` compares each file once.
#[derive(Debug, Default)]
pub struct Known {
    pub(super) names: BTreeSet<String>,
}

/// Upload every bundle and WAL file in `backups` / `archive` that is not off-site yet, each
/// verified before it leaves. Stops at the first failure (the next round starts over).
pub async fn sync(
    off: &Offsite,
    pgdata: &Path,
    backups: &Path,
    archive: &Archive,
    known: &mut Known,
    progress: Arc<dyn SyncProgress>,
) -> Result<SyncReport> {
    off.require_recipients()?;
    let id = local_system(pgdata, archive).ok_or_else(|| OffsiteError::UnknownSystem {
        pgdata: pgdata.to_owned(),
    })?;
    let sys = off.system(id);
    let mut report = SyncReport {
        system_identifier: id,
        ..Default::default()
    };
    let backups_list = match crate::repo::list(backups) {
        Ok(l) => l,
        Err(crate::repo::RepoError::Fs(e)) if !backups.exists() => {
            tracing::debug!(error = %e, "no backups directory");
            Vec::new()
        }
        Err(e) => {
            return Err(OffsiteError::Verify {
                path: backups.to_owned(),
                message: e.to_string(),
            });
        }
    };
    for b in backups_list {
        let key = format!("backups/{}", b.name);
        if known.names.contains(&key) {
            continue;
        }
        let outcome = put_verified_bundle(&sys, &b, &progress).await?;
        record(&mut report, &b.name, b.size, outcome);
        report.new_bundles += 1;
        known.names.insert(key);
    }
    let files = if archive.dir().exists() {
        archive.list().map_err(|e| OffsiteError::Verify {
            path: archive.dir().to_owned(),
            message: e.to_string(),
        })?
    } else {
        Vec::new()
    };
    let newest_segment = status::newest_segment(&files);
    for f in files {
        let file = file_name(&f.path)?;
        let key = format!("wal/{file}");
        if known.names.contains(&key) {
            continue;
        }
        if f.wal.kind == WalKind::Segment {
            let ff = f.clone();
            let expect = crate::walcheck::Expect {
                system_identifier: Some(id),
                major: None,
            };
            tokio::task::spawn_blocking(move || crate::walcheck::check_archived(&ff, expect))
                .await
                .expect("check does not panic")
                .map_err(|e| OffsiteError::Verify {
                    path: f.path.clone(),
                    message: e.to_string(),
                })?;
        }
        let outcome = put_with_progress(&sys, &f.path, f.size, &file, &progress, None).await?;
        record(&mut report, &file, f.size, outcome);
        known.names.insert(key);
    }
    report.newest_segment = newest_segment;
    Ok(report)
}

/// Verify a local bundle (every member's checksum against MANIFEST.json).
async fn verify_bundle(b: &crate::repo::Backup) -> Result<crate::bundle::Contents> {
    let path = b.path.clone();
    tokio::task::spawn_blocking(move || crate::bundle::verify(&path))
        .await
        .expect("verify does not panic")
        .map_err(|e| OffsiteError::Verify {
            path: b.path.clone(),
            message: e.to_string(),
        })
}

/// Verify a local bundle, then upload it create-only with its WAL start as metadata.
async fn put_verified_bundle(
    sys: &System,
    b: &crate::repo::Backup,
    progress: &Arc<dyn SyncProgress>,
) -> Result<PutOutcome> {
    let contents = verify_bundle(b).await?;
    let metadata = wal_start_metadata(b, contents.manifest.as_ref());
    put_with_progress(sys, &b.path, b.size, &b.name, progress, Some(&metadata)).await
}

/// Upload one bundle of `backups` now, under the system its manifest names: what a backup
/// Job does right after writing it, so the copy does not wait for the follower's next round.
/// Verified first, create-only like [`sync`].
pub async fn upload_bundle(
    off: &Offsite,
    backups: &Path,
    name: &str,
    progress: Arc<dyn SyncProgress>,
) -> Result<PutOutcome> {
    off.require_recipients()?;
    let b = crate::repo::find(backups, name).map_err(|e| OffsiteError::Verify {
        path: backups.join(name),
        message: e.to_string(),
    })?;
    let contents = verify_bundle(&b).await?;
    let id = contents
        .manifest
        .as_ref()
        .and_then(|m| m.info_str("system_identifier"))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| OffsiteError::Verify {
            path: b.path.clone(),
            message: "its MANIFEST.json names no system_identifier".into(),
        })?;
    let metadata = wal_start_metadata(&b, contents.manifest.as_ref());
    put_with_progress(
        &off.system(id),
        &b.path,
        b.size,
        &b.name,
        &progress,
        Some(&metadata),
    )
    .await
}

/// A base backup's WAL start, from its verified manifest, as object metadata (none for a logical
/// bundle, or a manifest without the facts).
pub(super) fn wal_start_metadata(
    b: &crate::repo::Backup,
    manifest: Option<&crate::bundle::Manifest>,
) -> Vec<(&'static str, String)> {
    if b.kind != crate::repo::BackupKind::Physical {
        return Vec::new();
    }
    let mut meta = match manifest.map(crate::physical::PhysicalFacts::from_manifest) {
        Some(Ok(f)) => vec![
            (META_WAL_START, f.start_wal_file),
            (META_SEGMENT_SIZE, f.wal_segment_size.to_string()),
        ],
        _ => Vec::new(),
    };
    if let Some(Ok(Some(c))) = manifest.map(crate::chain::ChainInfo::from_manifest) {
        let names: Vec<&str> = c.chain.iter().map(|l| l.name.as_str()).collect();
        meta.push((super::META_CHAIN, names.join(" ")));
    }
    meta
}

pub(super) fn record(report: &mut SyncReport, name: &str, size: u64, outcome: PutOutcome) {
    match outcome {
        PutOutcome::Uploaded(_) => {
            report.uploaded.push(name.to_owned());
            report.uploaded_bytes += size;
        }
        PutOutcome::AlreadyThere => report.already += 1,
    }
}

pub(super) async fn put_with_progress(
    sys: &System,
    path: &Path,
    size: u64,
    name: &str,
    progress: &Arc<dyn SyncProgress>,
    bundle_metadata: Option<&[(&'static str, String)]>,
) -> Result<PutOutcome> {
    progress.start(name, size);
    let p = progress.clone();
    let cb: Progress = Arc::new(move |n| p.advance(n));
    let outcome = match bundle_metadata {
        Some(m) => sys.put_backup(path, cb, m).await?,
        None => sys.put_wal(path, cb).await?,
    };
    progress.done(name, outcome);
    Ok(outcome)
}

/// `wal fetch` from off-site: download `name` into a private directory beside `dest`, then hand
/// it over through the same checked fetch as the local archive. None when not off-site.
pub async fn fetch_wal_checked(
    sys: &System,
    name: &str,
    dest: &Path,
    expect: Option<crate::walcheck::Expect>,
) -> Result<Option<u64>, FetchError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stage = tempfile::Builder::new()
        .prefix(".pgkeep-offsite-wal-")
        .tempdir_in(dir)
        .map_err(|e| FetchError::Offsite(FsError::new("create a directory in", dir, e).into()))?;
    let Some(_) = sys
        .fetch_wal(name, stage.path())
        .await
        .map_err(FetchError::Offsite)?
    else {
        return Ok(None);
    };
    match Archive::new(stage.path()).fetch_checked(name, dest, expect) {
        Ok(wal::FetchOutcome::Restored { bytes }) => Ok(Some(bytes)),
        Ok(wal::FetchOutcome::Missing) => Ok(None),
        Err(e) => Err(FetchError::Wal(e)),
    }
}

/// What [`materialize`] brought back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Materialized {
    /// The physical bundle, now in the backups directory.
    pub bundle: String,
    /// Whether the bundle was downloaded (false: it was local already).
    pub bundle_downloaded: bool,
    /// Bundles of an incremental's chain downloaded because they were not local.
    pub links_downloaded: Vec<String>,
    /// WAL files downloaded into the archive.
    pub wal_files: usize,
    /// Off-site segments older than the bundle's first one, left there (no recovery from it
    /// reads them; off-site retention keeps them for older base backups).
    pub wal_older_left: usize,
}

/// Put the off-site copies a bootstrap needs back on the local volumes: the physical bundle
/// `from` (default: the newest off-site) into `backups` unless it is there (an incremental with
/// every bundle of its chain its manifest names that is not there), and every off-site
/// WAL file that the archive lacks (in any compression) into `archive`, but no segment older
/// than the bundle's start (its `pgkeep-wal-start` metadata; all of them for a bundle uploaded
/// without it). Each file is published
/// only when whole and authentic, segments only when they check out as this system's; nothing
/// local is replaced. The bootstrap then runs on the local copies with every usual check.
pub async fn materialize(
    sys: &System,
    from: Option<&str>,
    backups: &Path,
    archive: &Archive,
) -> Result<Materialized> {
    let bundle = match from {
        Some(n) => n.to_owned(),
        None => sys
            .list_backups()
            .await?
            .into_iter()
            .filter_map(|r| crate::repo::parse_name(&r.name).map(|p| (p, r.name)))
            .filter(|(p, _)| p.kind == crate::repo::BackupKind::Physical)
            .max_by_key(|(p, _)| (p.time, p.seq))
            .map(|(_, n)| n)
            .ok_or_else(|| OffsiteError::Missing {
                url: format!("{}/{}/backups/basebackup-*", sys.off.url, sys.id),
            })?,
    };
    let bundle_downloaded = if backups.join(&bundle).is_file() {
        false
    } else {
        std::fs::create_dir_all(backups).fs_ctx("create", backups)?;
        tracing::info!(url = %sys.backup_url(&bundle), "downloading the base backup from off-site");
        sys.fetch_backup(&bundle, backups).await?;
        true
    };
    // An incremental restores only with its chain; the bootstrap checks every link as usual.
    let mut links_downloaded = Vec::new();
    let chain = crate::catalog::peek_manifest(&backups.join(&bundle))
        .and_then(|m| crate::chain::ChainInfo::from_manifest(&m).ok().flatten());
    for link in chain.map(|c| c.chain).unwrap_or_default() {
        if !backups.join(&link.name).is_file() {
            tracing::info!(url = %sys.backup_url(&link.name), "downloading a base backup of the incremental's chain from off-site");
            sys.fetch_backup(&link.name, backups).await?;
            links_downloaded.push(link.name);
        }
    }
    std::fs::create_dir_all(archive.dir()).fs_ctx("create", archive.dir())?;
    // The archive root belongs to one system. When another one (a fresh initdb after the
    // disaster) archives there now, this system's WAL goes where bootstrap looks for a
    // superseded system's: `superseded/<system>-<time>/`, which it moves back into the root.
    let root = crate::archive_owner::root_wal(archive).map_err(|e| OffsiteError::Verify {
        path: archive.dir().to_owned(),
        message: e.to_string(),
    })?;
    let dest = match root.system {
        Some(other) if other != sys.id => {
            let existing = crate::archive_owner::find_superseded(archive, sys.id).map_err(|e| {
                OffsiteError::Verify {
                    path: archive.dir().to_owned(),
                    message: e.to_string(),
                }
            })?;
            match existing {
                Some(d) => d,
                None => {
                    let parent = archive.dir().join(crate::archive_owner::SUPERSEDED_DIR);
                    let d = parent.join(format!(
                        "{}-{}",
                        sys.id,
                        crate::clock::now().strftime("%Y%m%dT%H%M%SZ")
                    ));
                    std::fs::create_dir_all(&d).fs_ctx("create", &d)?;
                    for dir in [&parent, &d] {
                        own_like(archive.dir(), dir)?;
                    }
                    d
                }
            }
        }
        _ => archive.dir().to_owned(),
    };
    let local = Archive::new(&dest);
    let first_needed = first_needed_segment(sys, &bundle).await?;
    let mut wal_files = 0;
    let mut wal_older_left = 0;
    for r in sys.list_wal().await? {
        let walname = r
            .name
            .strip_suffix(".zst")
            .or_else(|| r.name.strip_suffix(".gz"))
            .unwrap_or(&r.name);
        let Some(w) = wal::parse_name(walname) else {
            continue;
        };
        let older = first_needed.is_some_and(|(no, seg_size)| {
            w.kind != WalKind::History && w.segment_no(seg_size) < no
        });
        if older {
            wal_older_left += 1;
            continue;
        }
        if local.find(walname).is_some() {
            continue;
        }
        let stage = tempfile::Builder::new()
            .prefix(".pgkeep-offsite-wal-")
            .tempdir_in(&dest)
            .fs_ctx("create a directory in", &dest)?;
        let Some(got) = sys.fetch_wal(walname, stage.path()).await? else {
            continue;
        };
        if w.kind == WalKind::Segment {
            let bad = |message: String| OffsiteError::Verify {
                path: got.clone(),
                message,
            };
            let file = Archive::new(stage.path())
                .list()
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| bad("vanished after download".into()))?;
            let expect = crate::walcheck::Expect {
                system_identifier: Some(sys.id),
                major: None,
            };
            crate::walcheck::check_archived(&file, expect).map_err(|e| bad(e.to_string()))?;
        }
        own_like(archive.dir(), &got)?;
        let to = dest.join(got.file_name().expect("a file name"));
        crate::fsutil::rename_noreplace(&got, &to)?;
        crate::fsutil::fsync_dir(&dest)?;
        wal_files += 1;
    }
    Ok(Materialized {
        bundle,
        bundle_downloaded,
        links_downloaded,
        wal_files,
        wal_older_left,
    })
}

/// The first segment (number, segment size) a recovery from the off-site `bundle` reads, from
/// its object metadata; None when it was uploaded without it (or is not off-site).
async fn first_needed_segment(sys: &System, bundle: &str) -> Result<Option<(u64, u64)>> {
    let mut meta = sys
        .backup_metadata_all(bundle, &[META_WAL_START, META_SEGMENT_SIZE])
        .await?
        .into_iter();
    let (start, size) = (meta.next().flatten(), meta.next().flatten());
    Ok(start
        .as_deref()
        .and_then(wal::parse_name)
        .zip(size.and_then(|s| s.parse::<u64>().ok()))
        .map(|(w, seg_size)| (w.segment_no(seg_size), seg_size)))
}

/// As root, give `path` the owner of `like` (the archive's), so the data owner can read and
/// move what was downloaded.
pub(super) fn own_like(like: &Path, path: &Path) -> Result<()> {
    if crate::fsutil::is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(like).fs_ctx("stat", like)?;
        crate::fsutil::chown(path, meta.uid(), meta.gid())?;
    }
    Ok(())
}

/// Why an off-site WAL fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Offsite(#[from] OffsiteError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}
