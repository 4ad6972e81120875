//! The backup repository: a directory (the backups volume) of bundles named as the seed names
//! them, `nightly-YYYYMMDD-HHMM.tar.gz` and `basebackup-YYYYMMDD-HHMM.bundle.tar.zst`, in UTC;
//! an incremental base backup (PostgreSQL 17+) is `basebackup-YYYYMMDD-HHMM.incr.bundle.tar.zst`,
//! a physical backup too (its MANIFEST.json names its parent, see [`crate::chain`]). Base
//! backups written before bundles were zstd are `….bundle.tar.gz` and stay what they were:
//! listed, verified, restored and pruned like the others.
//!
//! Names are parsed strictly, so unrelated files and partial files (`.NAME.partial`) are never
//! taken for backups. When a name is already taken (two backups in one minute) a `-N` suffix is
//! added before the extension; the seed's `nightly-*.tar.gz` glob still matches it.

use std::path::{Path, PathBuf};

use jiff::civil::DateTime;
use serde::Serialize;

use crate::fsutil::{self, FsError, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("no {kind} backup in {dir}{found}\nhint: {hint}")]
    Empty {
        kind: &'static str,
        dir: PathBuf,
        found: String,
        hint: &'static str,
    },
    #[error("{name} not found in {dir}\nhint: `pgkeep backups list` shows what is there")]
    NotFound { name: String, dir: PathBuf },
    #[error(
        "`{name}` is not a backup name\nhint: give a file name in the backups directory, like nightly-20260101-0600.tar.gz or basebackup-20260104-0620.bundle.tar.zst"
    )]
    BadName { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// `nightly-*.tar.gz`
    Logical,
    /// `basebackup-*.bundle.tar.zst` (`.bundle.tar.gz` when written before zstd)
    Physical,
}

impl BackupKind {
    fn prefix(self) -> &'static str {
        match self {
            BackupKind::Logical => "nightly-",
            BackupKind::Physical => "basebackup-",
        }
    }

    fn suffix(self, legacy: bool) -> &'static str {
        match self {
            BackupKind::Logical => ".tar.gz",
            BackupKind::Physical if legacy => LEGACY_PHYSICAL_SUFFIX,
            BackupKind::Physical => ".bundle.tar.zst",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
        }
    }
}

/// A parsed backup name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupName {
    pub kind: BackupKind,
    /// UTC, minute precision, from the name.
    pub time: DateTime,
    /// The `-N` suffix for a second backup in the same minute (0 when absent).
    pub seq: u32,
    /// `.incr.bundle.tar.zst`: an incremental base backup (physical only).
    pub incremental: bool,
    /// A base backup with the gzip name (`.bundle.tar.gz`), written before bundles were zstd.
    pub legacy: bool,
}

/// The name ending of base backups written before they were zstd.
pub const LEGACY_PHYSICAL_SUFFIX: &str = ".bundle.tar.gz";

/// Parse `nightly-YYYYMMDD-HHMM[-N].tar.gz` or `basebackup-YYYYMMDD-HHMM[-N][.incr].bundle.tar.zst`
/// (or `.bundle.tar.gz`).
pub fn parse_name(name: &str) -> Option<BackupName> {
    let forms = [
        (BackupKind::Physical, false),
        (BackupKind::Physical, true),
        (BackupKind::Logical, false),
    ];
    for (kind, legacy) in forms {
        let Some(rest) = name
            .strip_prefix(kind.prefix())
            .and_then(|r| r.strip_suffix(kind.suffix(legacy)))
        else {
            continue;
        };
        // A logical name must not swallow a physical one's `.bundle`.
        if kind == BackupKind::Logical && rest.ends_with(".bundle") {
            return None;
        }
        let (rest, incremental) = match rest.strip_suffix(INCR_INFIX) {
            Some(r) if kind == BackupKind::Physical => (r, true),
            _ => (rest, false),
        };
        let (stamp, seq) = match rest.get(13..) {
            Some("") => (rest, 0),
            Some(s) if s.starts_with('-') => (&rest[..13], s[1..].parse().ok()?),
            _ => return None,
        };
        let b = stamp.as_bytes();
        if b.len() != 13
            || b[8] != b'-'
            || !stamp[..8]
                .bytes()
                .chain(stamp[9..].bytes())
                .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let num = |r: std::ops::Range<usize>| stamp[r].parse::<i16>().ok();
        let time = DateTime::new(
            num(0..4)?,
            num(4..6)? as i8,
            num(6..8)? as i8,
            num(9..11)? as i8,
            num(11..13)? as i8,
            0,
            0,
        )
        .ok()?;
        return Some(BackupName {
            kind,
            time,
            seq,
            incremental,
            legacy,
        });
    }
    None
}

/// What sits between the stamp and `.bundle.tar.zst` in an incremental base backup's name.
pub const INCR_INFIX: &str = ".incr";

/// The name for a backup taken at `at` (UTC), with sequence `seq` (0 = none).
pub fn format_name(kind: BackupKind, at: jiff::Timestamp, seq: u32) -> String {
    format_name_at(
        kind,
        at.to_zoned_datetime(jiff::tz::TimeZone::UTC).datetime(),
        seq,
        false,
        false,
    )
}

fn format_name_at(
    kind: BackupKind,
    t: DateTime,
    seq: u32,
    incremental: bool,
    legacy: bool,
) -> String {
    let seq = if seq == 0 {
        String::new()
    } else {
        format!("-{seq}")
    };
    let incr = if incremental && kind == BackupKind::Physical {
        INCR_INFIX
    } else {
        ""
    };
    format!(
        "{}{:04}{:02}{:02}-{:02}{:02}{seq}{incr}{}",
        kind.prefix(),
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        kind.suffix(legacy)
    )
}

/// A free name in `dir` for a backup taken at `at`: no backup, no partial file and no staging
/// directory of that name. Another run may still take it first; the bundle is then published
/// under the next free name (see [`names_after`]).
pub fn free_name(dir: &Path, kind: BackupKind, at: jiff::Timestamp) -> String {
    free_name_of(dir, kind, false, at)
}

/// [`free_name`] for a full or an incremental base backup: a minute and sequence number that
/// neither form of the name takes yet (so the two never share one).
pub fn free_name_of(
    dir: &Path,
    kind: BackupKind,
    incremental: bool,
    at: jiff::Timestamp,
) -> String {
    let t = at.to_zoned_datetime(jiff::tz::TimeZone::UTC).datetime();
    let taken = |n: &str| {
        dir.join(n).exists()
            || !fsutil::partials_of(dir, n).is_empty()
            || dir.join(format!(".{n}.staging")).exists()
    };
    // Nor the gzip name of an older base backup of the same minute.
    let forms = [(false, false), (true, false), (false, true), (true, true)];
    (0..)
        .find(|&seq| {
            forms
                .iter()
                .all(|&(incr, legacy)| !taken(&format_name_at(kind, t, seq, incr, legacy)))
        })
        .map(|seq| format_name_at(kind, t, seq, incremental, false))
        .expect("some sequence number is free")
}

/// `name` and, when it is a backup name, the same-minute names after it (`-2`, `-3`, ...): where
/// a bundle may be published when another run took its name meanwhile.
pub fn names_after(name: &str) -> Box<dyn Iterator<Item = String> + Send> {
    match parse_name(name) {
        Some(b) => Box::new(
            (b.seq..b.seq + 1000)
                .map(move |seq| format_name_at(b.kind, b.time, seq, b.incremental, b.legacy)),
        ),
        None => Box::new(std::iter::once(name.to_owned())),
    }
}

/// One backup in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub name: String,
    pub kind: BackupKind,
    pub time: DateTime,
    pub seq: u32,
    /// An incremental base backup (`.incr.bundle.tar.zst`).
    #[serde(default)]
    pub incremental: bool,
    pub size: u64,
    pub path: PathBuf,
}

/// Every backup in `dir`, oldest first. Partial and unrelated files are ignored.
pub fn list(dir: &Path) -> Result<Vec<Backup>, RepoError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FsError::new("read backups directory", dir, e).into());
        }
        Err(e) => return Err(FsError::new("read backups directory", dir, e).into()),
    };
    for entry in rd {
        let entry = entry.fs_ctx("read directory", dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(parsed) = parse_name(&name) else {
            continue;
        };
        let meta = entry.metadata().fs_ctx("stat", &entry.path())?;
        if !meta.is_file() {
            continue;
        }
        out.push(Backup {
            name,
            kind: parsed.kind,
            time: parsed.time,
            seq: parsed.seq,
            incremental: parsed.incremental,
            size: meta.len(),
            path: entry.path(),
        });
    }
    out.sort_by_key(|b| (b.time, b.seq, b.kind));
    Ok(out)
}

/// The newest backup of a kind, by the time in its name.
pub fn newest(dir: &Path, kind: BackupKind) -> Result<Backup, RepoError> {
    let all = list(dir)?;
    let newest = all.iter().rev().find(|b| b.kind == kind).cloned();
    newest.ok_or_else(|| {
        let others: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .take(8)
                    .collect()
            })
            .unwrap_or_default();
        RepoError::Empty {
            kind: kind.label(),
            dir: dir.to_owned(),
            found: if others.is_empty() {
                " (the directory is empty)".into()
            } else {
                format!(" (found only: {})", others.join(", "))
            },
            hint: match kind {
                BackupKind::Logical => {
                    "take one with `pgkeep backup logical`, or name a file with --from"
                }
                BackupKind::Physical => {
                    "take one with `pgkeep backup physical`, or name a file with --from"
                }
            },
        }
    })
}

/// A named backup in `dir` (a bare file name; no paths).
pub fn find(dir: &Path, name: &str) -> Result<Backup, RepoError> {
    if name.contains('/') || parse_name(name).is_none() {
        return Err(RepoError::BadName {
            name: name.to_owned(),
        });
    }
    list(dir)?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| RepoError::NotFound {
            name: name.to_owned(),
            dir: dir.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_names() {
        let n = parse_name("nightly-20251102-1100.tar.gz").unwrap();
        assert_eq!(n.kind, BackupKind::Logical);
        assert_eq!(n.time.to_string(), "2025-11-02T11:00:00");
        let n = parse_name("basebackup-20251102-1120.bundle.tar.zst").unwrap();
        assert_eq!(
            (n.kind, n.incremental, n.legacy),
            (BackupKind::Physical, false, false)
        );
        let n = parse_name("basebackup-20251102-1120-2.incr.bundle.tar.zst").unwrap();
        assert_eq!(
            (n.kind, n.seq, n.incremental),
            (BackupKind::Physical, 2, true)
        );
        // Base backups written before bundles were zstd keep their gzip name.
        let n = parse_name("basebackup-20251102-1120.bundle.tar.gz").unwrap();
        assert_eq!(
            (n.kind, n.incremental, n.legacy),
            (BackupKind::Physical, false, true)
        );
        let n = parse_name("basebackup-20251102-1120-2.incr.bundle.tar.gz").unwrap();
        assert_eq!((n.seq, n.incremental, n.legacy), (2, true, true));
        let n = parse_name("nightly-20251102-1100-2.tar.gz").unwrap();
        assert_eq!(n.seq, 2);
        for bad in [
            ".nightly-20251102-1100.tar.gz.partial",
            "nightly-20251102-1100.tar.gz.partial",
            "nightly-2025110-1100.tar.gz",
            "nightly-20251302-1100.tar.gz",
            "nightly-20251102-2500.tar.gz",
            "nightly-latest.tar.gz",
            "nightly-20251102-1100.bundle.tar.gz",
            "records_dump_20251102.tar.gz",
            "basebackup-20251102-1100.tar.gz",
            "nightly-20251102-1100.incr.tar.gz",
            "basebackup-20251102-1100.incr.tar.gz",
            "basebackup-20251102-1100.incr.incr.bundle.tar.gz",
            "nightly-20251102-1100.tar.zst",
            "basebackup-20251102-1100.tar.zst",
            "basebackup-20251102-1100.bundle.tar.zst.partial",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_in_utc() {
        let at: jiff::Timestamp = "2026-11-25T06:00:59-05:00".parse().unwrap();
        assert_eq!(
            format_name(BackupKind::Logical, at, 0),
            "nightly-20261125-1100.tar.gz"
        );
        assert_eq!(
            format_name(BackupKind::Physical, at, 3),
            "basebackup-20261125-1100-3.bundle.tar.zst"
        );
        for kind in [BackupKind::Logical, BackupKind::Physical] {
            let name = format_name(kind, at, 0);
            assert_eq!(parse_name(&name).unwrap().kind, kind);
        }
    }

    #[test]
    fn newest_ignores_partials_and_strangers() {
        let t = tempfile::tempdir().unwrap();
        for n in [
            "nightly-20260101-0600.tar.gz",
            "nightly-20260103-0600.tar.gz",
            "nightly-20260102-0600.tar.gz",
            ".nightly-20260104-0600.tar.gz.partial",
            "nightly-notes.txt",
            "basebackup-20260105-0620.bundle.tar.gz",
        ] {
            std::fs::write(t.path().join(n), "x").unwrap();
        }
        assert_eq!(
            newest(t.path(), BackupKind::Logical).unwrap().name,
            "nightly-20260103-0600.tar.gz"
        );
        assert_eq!(
            newest(t.path(), BackupKind::Physical).unwrap().name,
            "basebackup-20260105-0620.bundle.tar.gz"
        );
        assert_eq!(list(t.path()).unwrap().len(), 4);
        let at: jiff::Timestamp = "2026-01-03T06:00:00Z".parse().unwrap();
        assert_eq!(
            free_name(t.path(), BackupKind::Logical, at),
            "nightly-20260103-0600-1.tar.gz"
        );
        // A full and an incremental never share a minute and sequence number.
        let at: jiff::Timestamp = "2026-01-05T06:20:00Z".parse().unwrap();
        // (The full one there has the older gzip name: a new zstd name does not take its
        // minute and sequence number either.)
        let incr = free_name_of(t.path(), BackupKind::Physical, true, at);
        assert_eq!(incr, "basebackup-20260105-0620-1.incr.bundle.tar.zst");
        assert_eq!(
            free_name_of(t.path(), BackupKind::Physical, false, at),
            "basebackup-20260105-0620-1.bundle.tar.zst"
        );
        assert_eq!(
            names_after(&incr).nth(1).unwrap(),
            "basebackup-20260105-0620-2.incr.bundle.tar.zst"
        );
        assert_eq!(
            names_after("basebackup-20260105-0620.bundle.tar.gz")
                .nth(1)
                .unwrap(),
            "basebackup-20260105-0620-1.bundle.tar.gz"
        );
    }

    #[test]
    fn empty_repo_says_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let err = newest(t.path(), BackupKind::Logical).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("empty"), "{msg}");
        assert!(msg.contains("pgkeep backup logical"), "{msg}");
        assert!(matches!(
            find(t.path(), "../etc/passwd"),
            Err(RepoError::BadName { .. })
        ));
        assert!(matches!(
            find(t.path(), "nightly-20260101-0600.tar.gz"),
            Err(RepoError::NotFound { .. })
        ));
    }
}
