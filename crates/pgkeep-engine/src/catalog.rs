//! What `pgkeep backups list` and `pgkeep backups verify` know about the bundles in the backups
//! directory, of both kinds (logical `nightly-*` and physical `basebackup-*`).
//!
//! Listing must be cheap, but `MANIFEST.json` is the last member of a bundle. pgkeep bundles end
//! with a compressed frame of their own holding the manifest (a gzip member or a zstd frame), so
//! [`peek_manifest`] reads only the last 256 KiB of the file and tries each frame header found
//! there. What it finds is only shown, never trusted: verification reads everything.
//!
//! Verification results are remembered in `.pgkeep-verified.json` in the backups directory
//! (hidden, so never taken for a backup), keyed by name, size and modification time: a replaced
//! or changed file counts as not verified again.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, MANIFEST_NAME, Manifest};
use crate::fsutil::{self, FsError};
use crate::logical::LogicalError;
use crate::repo::{self, Backup, BackupKind};
use crate::tools::PgBin;

pub const VERIFIED_FILE: &str = ".pgkeep-verified.json";
const TAIL: u64 = 256 * 1024;

/// Find the manifest in the tail of a bundle without reading all of it: from each gzip or zstd
/// frame header in the last 256 KiB (nearest the end first), read the tar entries that follow
/// until `MANIFEST.json` turns up. Tar members start at frame boundaries in pgkeep bundles.
pub fn peek_manifest(path: &Path) -> Option<Manifest> {
    let body = peek_member(path, MANIFEST_NAME, TAIL, 16 << 20)?;
    serde_json::from_slice(&body).ok()
}

/// One member near the end of a pgkeep bundle (the manifest, or pg_basebackup's
/// `backup_manifest` just before it), read from the last `tail` bytes as [`peek_manifest`] does;
/// at most `limit` bytes of it. Only a hint: a caller checks what it got against a digest.
pub fn peek_member(path: &Path, member: &str, tail_len: u64, limit: u64) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(tail_len);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let mut pos = tail.len();
    while pos > 0 {
        pos -= 1;
        let Some(codec) = bundle::Codec::sniff(&tail[pos..]) else {
            continue;
        };
        if let Some(m) = member_from(codec, &tail[pos..], member, limit) {
            return Some(m);
        }
    }
    None
}

fn member_from(codec: bundle::Codec, stream: &[u8], member: &str, limit: u64) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(codec.decoder(stream).ok()?);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.as_ref() != Path::new(member) {
            continue;
        }
        let mut body = Vec::new();
        entry.by_ref().take(limit).read_to_end(&mut body).ok()?;
        return Some(body);
    }
    None
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    pub size: u64,
    pub mtime: i64,
    pub ok: bool,
    pub at: String,
    pub message: Option<String>,
}

fn mtime(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.mtime()).unwrap_or(0)
}

fn load_records(dir: &Path) -> BTreeMap<String, VerifyRecord> {
    std::fs::read(dir.join(VERIFIED_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_record(dir: &Path, name: &str, rec: VerifyRecord) -> Result<(), FsError> {
    let mut all = load_records(dir);
    all.insert(name.to_owned(), rec);
    // Forget backups that are gone.
    all.retain(|n, _| dir.join(n).exists());
    let json = serde_json::to_vec_pretty(&all).expect("records serialise");
    fsutil::write_atomic(&dir.join(VERIFIED_FILE), &json, 0o600, true)
}

/// One line of `pgkeep backups list`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub kind: BackupKind,
    pub name: String,
    /// UTC, from the name.
    pub time: String,
    pub size: u64,
    pub database: Option<String>,
    /// An incremental base backup's parent (from its manifest; None for a full one).
    pub parent: Option<String>,
    /// `yes`, `no` (never verified, or changed since) or `FAILED`.
    pub verified: &'static str,
    pub verified_at: Option<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Every backup in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Entry>, LogicalError> {
    let records = load_records(dir);
    Ok(repo::list(dir)?
        .into_iter()
        .map(|b: Backup| {
            let manifest = peek_manifest(&b.path);
            let rec = records
                .get(&b.name)
                .filter(|r| r.size == b.size && r.mtime == mtime(&b.path));
            Entry {
                kind: b.kind,
                time: format!("{}Z", b.time),
                size: b.size,
                database: manifest
                    .as_ref()
                    .and_then(|m| m.info_str("database").map(str::to_owned)),
                parent: manifest
                    .as_ref()
                    .filter(|_| b.incremental)
                    .map(|m| m.info_str("parent").unwrap_or("?").to_owned()),
                verified: match rec {
                    Some(r) if r.ok => "yes",
                    Some(_) => "FAILED",
                    None => "no",
                },
                verified_at: rec.map(|r| r.at.clone()),
                name: b.name,
                path: b.path,
            }
        })
        .collect())
}

/// The result of verifying one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub name: String,
    pub kind: BackupKind,
    pub ok: bool,
    pub members: usize,
    /// Entries in the dump's table of contents (`pg_restore --list`), for logical bundles.
    pub toc_entries: Option<usize>,
    pub message: Option<String>,
}

/// Verify one backup: every checksum; for a logical bundle also `pg_restore --list` on the
/// extracted dump. The result is remembered for `backups list`.
pub fn verify(pg: &PgBin, dir: &Path, backup: &Backup) -> Result<Verified, LogicalError> {
    let outcome = check(pg, dir, backup);
    let (ok, members, toc, message) = match &outcome {
        Ok(c) => (true, c.members, c.toc_entries, None),
        Err(e) => (false, 0, None, Some(e.to_string())),
    };
    save_record(
        dir,
        &backup.name,
        VerifyRecord {
            size: backup.size,
            mtime: mtime(&backup.path),
            ok,
            at: crate::clock::now().to_string(),
            message: message.clone(),
        },
    )?;
    Ok(Verified {
        name: backup.name.clone(),
        kind: backup.kind,
        ok,
        members,
        toc_entries: toc,
        message,
    })
}

/// [`verify`], unless a remembered result for the unchanged file (same size and modification
/// time) says already whether it is sound.
pub fn verify_cached(pg: &PgBin, dir: &Path, backup: &Backup) -> Result<Verified, LogicalError> {
    let records = load_records(dir);
    if let Some(r) = records
        .get(&backup.name)
        .filter(|r| r.size == backup.size && r.mtime == mtime(&backup.path))
    {
        return Ok(Verified {
            name: backup.name.clone(),
            kind: backup.kind,
            ok: r.ok,
            members: 0,
            toc_entries: None,
            message: r.message.clone(),
        });
    }
    verify(pg, dir, backup)
}

/// What [`check`] found in a sound backup.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub members: usize,
    /// Entries in the dump's table of contents (logical bundles).
    pub toc_entries: Option<usize>,
    /// `TABLE DATA` entries among them: the tables whose rows the dump holds.
    pub table_data_entries: Option<usize>,
}

/// Verify one backup without recording the result (restore drills leave the backups directory
/// as it is): every checksum; for a logical bundle also `pg_restore --list` on the dump, which is
/// extracted into a hidden staging directory in `staging_in` (removed again).
pub fn check(pg: &PgBin, staging_in: &Path, backup: &Backup) -> Result<Checked, LogicalError> {
    if backup.kind == BackupKind::Physical {
        let c = bundle::verify(&backup.path)?;
        let Some(m) = &c.manifest else {
            return Err(BundleError::BadManifest {
                archive: backup.path.clone(),
                message: "no MANIFEST.json in the bundle".into(),
            }
            .into());
        };
        check_chain_links(backup.path.parent().unwrap_or(Path::new(".")), backup, m)?;
        return Ok(Checked {
            members: c.members.len(),
            toc_entries: None,
            table_data_entries: None,
        });
    }
    let staging_dir =
        crate::logical::Staging::create(staging_in, &crate::runmark::run_label("verify"))?;
    let staging = staging_dir.path().join("x");
    // Every member is read and checked; only the table of contents `pg_restore --list`
    // reads is written.
    let result = bundle::extract_only(&backup.path, &staging, &|m| m.ends_with("/toc.dat"))
        .map_err(LogicalError::from)
        .and_then(|c| check_logical_extracted(pg, &backup.path, &c, &staging));
    drop(staging_dir);
    result
}

/// An incremental's chain holds in `dir`: every link is there, is the backup the incremental
/// recorded (by the manifest in its tail; each link's own checksums are its own verification),
/// and the LSNs line up. A full base backup passes.
pub fn check_chain_links(dir: &Path, backup: &Backup, m: &Manifest) -> Result<(), LogicalError> {
    use crate::chain::{ChainError, ChainInfo};
    let info = ChainInfo::from_manifest(m).map_err(|message| ChainError::BadInfo {
        bundle: backup.name.clone(),
        message,
    })?;
    let Some(info) = info else {
        if backup.incremental {
            return Err(ChainError::BadInfo {
                bundle: backup.name.clone(),
                message: "named as an incremental, but MANIFEST.json records no chain".into(),
            }
            .into());
        }
        return Ok(());
    };
    let links = crate::chain::resolve(dir, &backup.name, &info)?;
    let own_start = m.info_str("start_lsn").unwrap_or_default().to_owned();
    for (i, link) in links.iter().enumerate() {
        let lm = peek_manifest(&link.path).ok_or_else(|| ChainError::Broken {
            bundle: backup.name.clone(),
            link: link.name.clone(),
            problem: "has no readable MANIFEST.json".into(),
        })?;
        let child = match info.chain.get(i + 1) {
            Some(next) => (next.name.clone(), next.start_lsn.clone()),
            None => (backup.name.clone(), own_start.clone()),
        };
        crate::chain::check_link(
            &backup.name,
            &info.chain[i],
            &lm,
            Some((&child.0, &child.1)),
        )?;
    }
    Ok(())
}

/// The checks of a logical bundle after [`bundle::extract`] verified every checksum into
/// `extracted`: it has a manifest (of a logical bundle), its `<db>.dir` dump, and `pg_restore
/// --list` reads that dump's table of contents. `backups verify` and every restore of a file with
/// a bundle name make these same checks.
pub fn check_logical_extracted(
    pg: &PgBin,
    archive: &Path,
    c: &bundle::Contents,
    extracted: &Path,
) -> Result<Checked, LogicalError> {
    let Some(m) = &c.manifest else {
        return Err(BundleError::BadManifest {
            archive: archive.to_owned(),
            message: "no MANIFEST.json in the bundle".into(),
        }
        .into());
    };
    if m.kind != bundle::BundleKind::Logical {
        return Err(BundleError::BadManifest {
            archive: archive.to_owned(),
            message: "MANIFEST.json describes a physical backup, not a logical one".into(),
        }
        .into());
    }
    let db = m.info_str("database").unwrap_or("records");
    let (dir_member, _) = crate::logical::member_names(db);
    let dump = extracted.join(&dir_member);
    if !dump.join("toc.dat").is_file() {
        return Err(LogicalError::NoDump {
            archive: archive.to_owned(),
            found: c.top_level().into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let list = pg
        .cmd("pg_restore")
        .arg("--list")
        .arg(&dump)
        .output_string()?;
    let entries: Vec<&str> = list
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    Ok(Checked {
        members: c.members.len(),
        toc_entries: Some(entries.len()),
        table_data_entries: Some(count_table_data(&entries)),
    })
}

/// The stop time a bundle's manifest records (`finished_at` of a logical bundle, `stop_time` of
/// a physical one), read from its tail ([`peek_manifest`]); `None` without a readable manifest.
pub fn stop_time(path: &Path) -> Option<jiff::Timestamp> {
    let m = peek_manifest(path)?;
    let key = match m.kind {
        bundle::BundleKind::Logical => "finished_at",
        bundle::BundleKind::Physical => "stop_time",
    };
    m.info_str(key)?.parse().ok()
}

/// The bundles of a kind that carry a manifest, newest first by the stop time it records (never
/// by file name). Whether they verify is for the caller to check.
pub fn newest_first(
    dir: &Path,
    kind: BackupKind,
) -> Result<Vec<(Backup, jiff::Timestamp)>, LogicalError> {
    let mut out: Vec<(Backup, jiff::Timestamp)> = repo::list(dir)?
        .into_iter()
        .filter(|b| b.kind == kind)
        .filter_map(|b| stop_time(&b.path).map(|t| (b, t)))
        .collect();
    // The name's time and sequence break ties (stop times may have whole seconds).
    out.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| (b.0.time, b.0.seq).cmp(&(a.0.time, a.0.seq)))
    });
    Ok(out)
}

/// `TABLE DATA` entries of a `pg_restore --list` (`3385; 0 16390 TABLE DATA public t owner`).
fn count_table_data(entries: &[&str]) -> usize {
    entries
        .iter()
        .filter(|l| {
            l.split_once(';')
                .map(|(_, rest)| {
                    rest.split_whitespace()
                        .skip(2)
                        .take(2)
                        .eq(["TABLE", "DATA"])
                })
                .unwrap_or(false)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleKind, BundleWriter, Level};

    fn write(dir: &Path, name: &str, last_stored: bool) -> PathBuf {
        let mut w = BundleWriter::create(dir, name).unwrap();
        w.append_reader(
            "big.bin",
            300_000,
            Level::Fast,
            std::io::repeat(7).take(300_000),
        )
        .unwrap();
        if last_stored {
            w.append_reader("records.sql.gz", 10, Level::Store, &b"0123456789"[..])
                .unwrap();
        } else {
            w.append_bytes("extensions.tsv", b"name\tversion\tschema\n")
                .unwrap();
        }
        let mut info = BTreeMap::new();
        info.insert("database".into(), serde_json::json!("shop"));
        w.finish(BundleKind::Logical, info).unwrap().0
    }

    #[test]
    fn table_data_entries_are_counted() {
        let toc = [
            "215; 1259 16385 TABLE public t postgres",
            "3385; 0 16385 TABLE DATA public t postgres",
            "3386; 0 16390 TABLE DATA \"Mixed Case\" u postgres",
            "3387; 0 16395 MATERIALIZED VIEW DATA public mv postgres",
            "3388; 0 0 SEQUENCE SET public s postgres",
        ];
        assert_eq!(count_table_data(&toc), 2);
    }

    #[test]
    fn manifest_is_found_in_the_tail() {
        let t = tempfile::tempdir().unwrap();
        for (i, last_stored) in [true, false].into_iter().enumerate() {
            let p = write(
                t.path(),
                &format!("nightly-20260101-060{i}.tar.gz"),
                last_stored,
            );
            let m = peek_manifest(&p).expect("manifest found");
            assert_eq!(m.info_str("database"), Some("shop"));
            assert_eq!(m.members.len(), 2);
        }
        let junk = t.path().join("junk");
        std::fs::write(&junk, vec![0x1f; 1000]).unwrap();
        assert!(peek_manifest(&junk).is_none());
    }

    #[test]
    fn list_shows_database_and_verification_state() {
        let t = tempfile::tempdir().unwrap();
        let p = write(t.path(), "nightly-20260101-0600.tar.gz", true);
        let e = list(t.path()).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].database.as_deref(), Some("shop"));
        assert_eq!(e[0].verified, "no");
        let b = repo::find(t.path(), "nightly-20260101-0600.tar.gz").unwrap();
        let size = b.size;
        save_record(
            t.path(),
            &b.name,
            VerifyRecord {
                size,
                mtime: mtime(&p),
                ok: true,
                at: "now".into(),
                message: None,
            },
        )
        .unwrap();
        assert_eq!(list(t.path()).unwrap()[0].verified, "yes");
        // A changed file is not verified any more.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.push(0);
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(list(t.path()).unwrap()[0].verified, "no");
        assert_eq!(
            repo::list(t.path()).unwrap().len(),
            1,
            "the record file is not a backup"
        );
    }
}
