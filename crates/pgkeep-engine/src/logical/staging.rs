//! Staging directories of logical backups and restores on the backups volume, and removing
//! the stale ones a killed run left.

use super::*;

/// A hidden staging directory on the backups volume (`.LABEL.staging`, 0700, with a `pid` file),
/// removed on drop.
pub(crate) struct Staging {
    pub(super) path: PathBuf,
    pub(super) heartbeat: Option<runmark::Heartbeat>,
}

pub(super) const STAGING_SUFFIX: &str = ".staging";

impl Staging {
    pub(crate) fn create(dir: &Path, label: &str) -> Result<Staging, FsError> {
        let path = dir.join(format!(".{label}{STAGING_SUFFIX}"));
        if path.exists() {
            if let runmark::Holder::Running(who) = runmark::holder(&path) {
                return Err(FsError::new(
                    "create directory",
                    &path,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("another pgkeep run ({who}) is using it; wait for it to finish"),
                    ),
                ));
            }
            std::fs::remove_dir_all(&path).fs_ctx("remove stale staging", &path)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .fs_ctx("create directory", &path)?;
        fsutil::set_mode(&path, 0o700)?;
        let heartbeat = runmark::mark(&path).fs_ctx("write", &path.join("pid"))?;
        Ok(Staging {
            path,
            heartbeat: Some(heartbeat),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.heartbeat.take());
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Remove staging directories (and their partial bundles) left by pgkeep runs that are gone:
/// on this host, when their process has ended; made on another host (another pod), when they
/// have gone [`runmark::FOREIGN_STALE_AFTER`] without a heartbeat.
pub fn clean_stale(dir: &Path) -> Result<Vec<String>, FsError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).fs_ctx("read directory", dir)? {
        let entry = entry.fs_ctx("read directory", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.ends_with(STAGING_SUFFIX)) {
            continue;
        }
        match runmark::holder(&entry.path()) {
            runmark::Holder::Us | runmark::Holder::Running(_) => continue,
            runmark::Holder::Gone => {}
            // No pid file: a run killed between creating the directory and marking it (its
            // name says which process made it), or one that is being created right now.
            runmark::Holder::Unknown
                if runmark::label_holder(
                    name.trim_start_matches('.')
                        .trim_end_matches(STAGING_SUFFIX),
                ) == runmark::Holder::Gone => {}
            runmark::Holder::Unknown => {
                let young = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age.as_secs() < 60);
                if young {
                    continue;
                }
            }
        }
        std::fs::remove_dir_all(entry.path()).fs_ctx("remove stale staging", &entry.path())?;
        tracing::info!(path = %entry.path().display(), "removed what an interrupted run left behind");
        removed.push(name);
    }
    for partial in fsutil::remove_stale_partials(dir) {
        removed.push(
            partial
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(removed)
}
