//! Result records: every `backup logical`, `backup physical` and `drill` run, successful or not,
//! leaves one small JSON file in `results/` on the backups volume (kind, start, stop, outcome,
//! size, bundle, error, and the volumes' use at the end as a forecast sample). `status` and
//! `metrics` read them at the time they are asked, so no process has state to lose.
//!
//! This module owns the format, the names (`KIND-YYYYMMDDTHHMMSSZ[-N].json`, UTC), publishing
//! (private partial name, fsync, rename: [`crate::fsutil::AtomicFile`]) and the bound: after each
//! write the newest [`KEEP_PER_KIND`] records of that kind are kept, plus the newest successful
//! one however old it is. Records are parsed as untrusted: files with other names, larger than
//! [`MAX_RECORD_BYTES`] or not valid records are skipped (and named in a warning), never trusted.
//! Error texts are stored as the command reported them (commands never put secrets in errors),
//! cut to [`MAX_ERROR_CHARS`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError, IoContext};

/// The records' directory, below the backups volume.
pub const DIR: &str = "results";
/// Records kept per kind (about two months of nightly backups, a year of weekly ones).
pub const KEEP_PER_KIND: usize = 64;
/// A record file larger than this is not a record.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// Error messages are cut to this many characters.
pub const MAX_ERROR_CHARS: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(
        "{0}\nhint: the result record could not be written to the backups volume; check that it is mounted, writable by this account and not full (`pgkeep space`)"
    )]
    Fs(#[from] FsError),
    #[error("encoding a result record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Logical,
    Physical,
    Drill,
}

impl RunKind {
    pub const ALL: [RunKind; 3] = [RunKind::Logical, RunKind::Physical, RunKind::Drill];

    pub fn label(self) -> &'static str {
        match self {
            RunKind::Logical => "logical",
            RunKind::Physical => "physical",
            RunKind::Drill => "drill",
        }
    }

    fn parse(s: &str) -> Option<RunKind> {
        RunKind::ALL.into_iter().find(|k| k.label() == s)
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

/// One run's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: RunKind,
    pub start: jiff::Timestamp,
    pub stop: jiff::Timestamp,
    pub outcome: Outcome,
    /// The bundle's size in bytes (backups that published one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The bundle written (backups) or drilled (drills; several joined by ", ").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Used bytes per volume (`data`, `wal_archive`, `backups`) at `stop`, for the volumes
    /// mounted where the run ran: the samples behind the full-volume forecast. `data_sql` is the
    /// server's own account of the data volume (databases plus pg_wal) where the data volume is
    /// not mounted (the backup Jobs).
    #[serde(default)]
    pub usage: BTreeMap<String, u64>,
}

impl Record {
    /// A record of a run that started at `start` and ends now.
    pub fn finish(kind: RunKind, start: jiff::Timestamp, outcome: Outcome) -> Record {
        Record {
            kind,
            start,
            stop: crate::clock::now(),
            outcome,
            size: None,
            bundle: None,
            error: None,
            usage: BTreeMap::new(),
        }
    }

    /// Set the error text (cut to [`MAX_ERROR_CHARS`]).
    pub fn with_error(mut self, error: &str) -> Record {
        let mut e: String = error.chars().take(MAX_ERROR_CHARS).collect();
        if e.len() < error.len() {
            e.push_str(" …");
        }
        self.error = Some(e);
        self
    }

    pub fn duration_secs(&self) -> f64 {
        self.stop.duration_since(self.start).as_secs_f64().max(0.0)
    }

    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Success
    }
}

/// `KIND-YYYYMMDDTHHMMSSZ` (the stem; publishing adds `.json` or `-N.json`).
fn stem(r: &Record) -> String {
    format!("{}-{}", r.kind.label(), r.stop.strftime("%Y%m%dT%H%M%SZ"))
}

/// The kind of a record file name, when it is one.
pub fn parse_name(name: &str) -> Option<RunKind> {
    let body = name.strip_suffix(".json")?;
    let (kind, rest) = body.split_once('-')?;
    let kind = RunKind::parse(kind)?;
    let (ts, seq) = match rest.split_once('-') {
        Some((ts, seq)) => (ts, Some(seq)),
        None => (rest, None),
    };
    let ok_ts = ts.len() == 16
        && ts.as_bytes()[8] == b'T'
        && ts.ends_with('Z')
        && ts[..8].bytes().all(|b| b.is_ascii_digit())
        && ts[9..15].bytes().all(|b| b.is_ascii_digit());
    let ok_seq = seq.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    (ok_ts && ok_seq).then_some(kind)
}

/// The records directory of a backups volume.
pub fn dir(backups: &Path) -> PathBuf {
    backups.join(DIR)
}

/// Publish `rec` atomically under `backups/results/`, then drop the oldest records of its
/// kind beyond the bound. Returns the record's path.
pub fn write(backups: &Path, rec: &Record) -> Result<PathBuf, ResultsError> {
    let d = dir(backups);
    match std::fs::create_dir(&d) {
        Ok(()) => {
            fsutil::set_mode(&d, 0o700)?;
            fsutil::fsync_dir(backups)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(FsError::new("create directory", &d, e).into()),
    }
    let body = serde_json::to_vec_pretty(rec)?;
    let s = stem(rec);
    let mut f = fsutil::AtomicFile::create(&d, &format!("{s}.json"), 0o600)?;
    std::io::Write::write_all(&mut f, &body).fs_ctx("write", f.partial_path())?;
    let names =
        std::iter::once(format!("{s}.json")).chain((1..1000).map(|n| format!("{s}-{n}.json")));
    let path = f.commit_first_free(names)?;
    prune(&d, rec.kind)?;
    Ok(path)
}

/// Keep the newest [`KEEP_PER_KIND`] records of `kind` and the newest successful one.
fn prune(d: &Path, kind: RunKind) -> Result<(), FsError> {
    let mut mine: Vec<(PathBuf, Option<Record>)> = list_files(d)?
        .into_iter()
        .filter(|(_, k)| *k == kind)
        .map(|(p, _)| {
            let r = read_one(&p);
            (p, r)
        })
        .collect();
    // Oldest first by stop time; unreadable ones first (they go first).
    mine.sort_by_key(|(p, r)| (r.as_ref().map(|r| r.stop), p.clone()));
    let newest_success = mine
        .iter()
        .rposition(|(_, r)| r.as_ref().is_some_and(|r| r.succeeded()));
    let excess = mine.len().saturating_sub(KEEP_PER_KIND);
    let mut removed = false;
    for (i, (p, _)) in mine.iter().enumerate().take(excess) {
        if Some(i) == newest_success {
            continue;
        }
        std::fs::remove_file(p).fs_ctx("remove", p)?;
        removed = true;
    }
    if removed {
        fsutil::fsync_dir(d)?;
    }
    Ok(())
}

fn list_files(d: &Path) -> Result<Vec<(PathBuf, RunKind)>, FsError> {
    let rd = match std::fs::read_dir(d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("read directory", d, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.fs_ctx("read directory", d)?;
        let name = e.file_name();
        if let Some(kind) = name.to_str().and_then(parse_name) {
            out.push((e.path(), kind));
        }
    }
    Ok(out)
}

/// One record file, or None (with a warning) when it is not a valid record.
fn read_one(p: &Path) -> Option<Record> {
    let parsed = (|| -> Result<Record, String> {
        let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
        let meta = f.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "not a regular file of at most {MAX_RECORD_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        f.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<Record>(&body).map_err(|e| e.to_string())
    })();
    match parsed {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable result record");
            None
        }
    }
}

/// Every valid record on the backups volume, oldest first (by stop time). An absent directory
/// is no records; an unreadable directory is an error.
pub fn read_all(backups: &Path) -> Result<Vec<Record>, FsError> {
    let mut out: Vec<Record> = list_files(&dir(backups))?
        .into_iter()
        .filter_map(|(p, kind)| read_one(&p).filter(|r| r.kind == kind))
        .collect();
    out.sort_by_key(|r| (r.stop, r.kind));
    Ok(out)
}

/// What the records say about one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindSummary {
    pub last: Option<Record>,
    pub last_success: Option<Record>,
    pub last_failure: Option<Record>,
}

/// The newest, newest successful and newest failed record per kind.
pub fn summarize(records: &[Record]) -> BTreeMap<RunKind, KindSummary> {
    let mut out: BTreeMap<RunKind, KindSummary> = RunKind::ALL
        .into_iter()
        .map(|k| (k, KindSummary::default()))
        .collect();
    for r in records {
        let s = out.entry(r.kind).or_default();
        s.last = Some(r.clone());
        match r.outcome {
            Outcome::Success => s.last_success = Some(r.clone()),
            Outcome::Failure => s.last_failure = Some(r.clone()),
        }
    }
    out
}

/// Used bytes per volume for a record, by statvfs, for the volumes mounted here: the WAL
/// archive and backups directories when they exist, the data volume only when it holds PGDATA
/// (so an unmounted path on a container's root file system is never sampled).
pub fn sample_usage(
    pgroot: &Path,
    pgdata: &Path,
    wal_archive: &Path,
    backups: &Path,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, p: &Path| {
        if let Ok(st) = rustix::fs::statvfs(p) {
            out.insert(name.to_owned(), (st.f_blocks - st.f_bfree) * st.f_frsize);
        }
    };
    if pgdata.join("PG_VERSION").is_file() {
        add("data", pgroot);
    }
    if wal_archive.is_dir() {
        add("wal_archive", wal_archive);
    }
    if backups.is_dir() {
        add("backups", backups);
    }
    out
}

/// [`sample_usage`], plus `data_sql` (the server's databases and pg_wal, by SQL) when the data
/// volume is not mounted here and the server answers.
pub async fn sample_site(
    site: &crate::inspect::Site<'_>,
    conn: &crate::db::ConnParams,
) -> BTreeMap<String, u64> {
    let mut out = sample_usage(site.pgroot, site.pgdata, site.wal_archive, site.backups);
    if !out.contains_key("data")
        && let Ok(db) = crate::db::Db::connect(&conn.with_db("postgres")).await
        && let Ok(bytes) = db.footprint().await
    {
        out.insert("data_sql".to_owned(), bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RunKind, stop: i64, outcome: Outcome) -> Record {
        let stop = jiff::Timestamp::from_second(stop).unwrap();
        Record {
            kind,
            start: stop - jiff::SignedDuration::from_secs(5),
            stop,
            outcome,
            size: Some(10),
            bundle: Some("nightly-20260101-0600.tar.gz".into()),
            error: None,
            usage: BTreeMap::from([("backups".into(), 100)]),
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_name("logical-20261201T184253Z.json"),
            Some(RunKind::Logical)
        );
        assert_eq!(
            parse_name("drill-20261201T184253Z-3.json"),
            Some(RunKind::Drill)
        );
        for bad in [
            "logical-20261201T184253Z.json.partial",
            ".logical-20261201T184253Z.json",
            "backup-20261201T184253Z.json",
            "logical-2026120T184253Z.json",
            "logical-20261201T184253Z-.json",
            "logical-20261201T184253Z-x.json",
            "logical-20261201X184253Z.json",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        let r = rec(RunKind::Physical, 1_800_000_000, Outcome::Success);
        assert!(parse_name(&format!("{}.json", stem(&r))).is_some());
    }

    #[test]
    fn write_read_and_bound_keeping_the_newest_success() {
        let t = tempfile::tempdir().unwrap();
        // One old success, then many failures: the bound drops old failures but never the
        // newest success.
        write(
            t.path(),
            &rec(RunKind::Logical, 1_000_000_000, Outcome::Success),
        )
        .unwrap();
        for i in 0..(KEEP_PER_KIND as i64 + 5) {
            write(
                t.path(),
                &rec(RunKind::Logical, 1_000_001_000 + i, Outcome::Failure),
            )
            .unwrap();
        }
        write(
            t.path(),
            &rec(RunKind::Drill, 1_000_000_500, Outcome::Success),
        )
        .unwrap();
        // Same second twice: a -1 name, both kept.
        write(
            t.path(),
            &rec(RunKind::Drill, 1_000_000_500, Outcome::Failure),
        )
        .unwrap();
        // Junk is ignored: another name, a bad body, a huge file.
        std::fs::write(dir(t.path()).join("notes.txt"), "x").unwrap();
        std::fs::write(
            dir(t.path()).join("physical-20260101T000000Z.json"),
            "{nope",
        )
        .unwrap();
        std::fs::write(
            dir(t.path()).join("physical-20260101T000001Z.json"),
            vec![b' '; MAX_RECORD_BYTES as usize + 1],
        )
        .unwrap();
        let all = read_all(t.path()).unwrap();
        let logical: Vec<_> = all.iter().filter(|r| r.kind == RunKind::Logical).collect();
        assert_eq!(logical.len(), KEEP_PER_KIND + 1);
        assert!(logical[0].succeeded());
        assert_eq!(all.iter().filter(|r| r.kind == RunKind::Drill).count(), 2);
        assert_eq!(
            all.iter().filter(|r| r.kind == RunKind::Physical).count(),
            0
        );
        let sum = summarize(&all);
        let l = &sum[&RunKind::Logical];
        assert_eq!(
            l.last_success.as_ref().unwrap().stop.as_second(),
            1_000_000_000
        );
        assert_eq!(
            l.last_failure.as_ref().unwrap().stop.as_second(),
            1_000_001_000 + KEEP_PER_KIND as i64 + 4
        );
        assert!(sum[&RunKind::Physical].last.is_none());
        // Published 0600, no partial left.
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(dir(t.path())).unwrap() {
            let e = e.unwrap();
            let n = e.file_name().into_string().unwrap();
            assert!(!fsutil::is_partial_name(&n), "{n}");
            if n.ends_with(".json") && n.starts_with("logical") {
                assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn long_errors_are_cut() {
        let r = rec(RunKind::Logical, 1, Outcome::Failure).with_error(&"x".repeat(10_000));
        assert!(r.error.unwrap().chars().count() <= MAX_ERROR_CHARS + 2);
    }
}
