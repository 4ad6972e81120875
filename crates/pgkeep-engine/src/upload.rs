//! Uploaded dump files: what a file is (by its content, not its name), and copying it into
//! `uploads/` on the backups volume atomically with a checksum check. Uploads never sit among the
//! backups: a file named like a nightly bundle cannot become "the newest backup" or be counted by
//! retention. The local meaning of the seed's
//! `pg.restore.upload`; the restore itself is [`crate::logical`].
//!
//! Accepted: a pgkeep bundle or any `.tar.gz` (checked further once extracted), a gzip-compressed
//! SQL script (`.sql.gz`), a plain SQL script (`.sql`), a pg_dump custom-format archive
//! (`.dump`, magic `PGDMP`).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::bundle::{HashingReader, sha256_file};
use crate::fsutil::{AtomicFile, FsError, IoContext};
use crate::logical::LogicalError;

/// What a file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// gzip-compressed tar.
    TarGz,
    /// gzip-compressed text.
    SqlGz,
    /// pg_dump custom format.
    Custom,
    /// Plain text (SQL).
    Sql,
    /// Anything else, described.
    Other(String),
}

fn looks_like_text(b: &[u8]) -> bool {
    !b.is_empty()
        && !b.contains(&0)
        && match std::str::from_utf8(b) {
            Ok(_) => true,
            // A multi-byte character cut at the end of the sample is still text.
            Err(e) => e.valid_up_to() + 4 >= b.len() && e.error_len().is_none(),
        }
}

fn read_up_to(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Look at a file's first bytes.
pub fn sniff(path: &Path) -> Result<FileKind, FsError> {
    let mut f = File::open(path).fs_ctx("open", path)?;
    let head = read_up_to(&mut f, 8192).fs_ctx("read", path)?;
    if head.is_empty() {
        return Ok(FileKind::Other("an empty file".into()));
    }
    if head.starts_with(b"PGDMP") {
        return Ok(FileKind::Custom);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        let f = File::open(path).fs_ctx("open", path)?;
        let mut dec = MultiGzDecoder::new(BufReader::new(f));
        let inner = match read_up_to(&mut dec, 8192) {
            Ok(b) => b,
            Err(e) => return Ok(FileKind::Other(format!("a damaged gzip file ({e})"))),
        };
        if inner.len() >= 262 && &inner[257..262] == b"ustar" {
            return Ok(FileKind::TarGz);
        }
        if inner.starts_with(b"PGDMP") {
            return Ok(FileKind::Other(
                "a gzip-compressed custom-format dump (decompress it first)".into(),
            ));
        }
        if looks_like_text(&inner) {
            return Ok(FileKind::SqlGz);
        }
        return Ok(FileKind::Other("gzip-compressed binary data".into()));
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(FileKind::Other(
            "an uncompressed tar archive (compress it with gzip: .tar.gz)".into(),
        ));
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(FileKind::Other("a zip archive".into()));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(FileKind::Other("a zstd-compressed file".into()));
    }
    if looks_like_text(&head) {
        return Ok(FileKind::Sql);
    }
    Ok(FileKind::Other("binary data of an unknown kind".into()))
}

/// The directory uploads are kept in on the backups volume.
pub const UPLOADS_DIR: &str = "uploads";

/// `<backups>/uploads`, created (0700) when missing.
pub fn uploads_dir(backups: &Path) -> Result<PathBuf, FsError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = backups.join(UPLOADS_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(FsError::new("create directory", &dir, e)),
    }
    Ok(dir)
}

/// Copy `src` into `dir` under its own file name: written as a hidden partial, fsynced, renamed;
/// then read back and compared by SHA-256. An identical file already there is reused; a
/// different one is refused. Returns the path and whether this call created it.
pub fn copy_into(src: &Path, dir: &Path) -> Result<(PathBuf, bool), LogicalError> {
    if !src.is_file() {
        return Err(LogicalError::NoSuchFile {
            path: src.to_owned(),
        });
    }
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .ok_or_else(|| LogicalError::Unrecognised {
            path: src.to_owned(),
            found: "a file name pgkeep cannot use (hidden or not UTF-8)".into(),
        })?
        .to_owned();
    let target = dir.join(&name);
    let same_file = match (std::fs::canonicalize(src), std::fs::canonicalize(&target)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same_file {
        return Ok((target, false));
    }
    let mut out = AtomicFile::create(dir, &name, 0o600)?;
    let f = File::open(src).fs_ctx("open", src)?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, f));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::new("read", src, e).into()),
        };
        out.write_all(&buf[..n]).fs_ctx("write", &target)?;
    }
    let (_, expected) = reader.finish();
    if target.exists() {
        let (_, existing) = sha256_file(&target)?;
        drop(out);
        if existing == expected {
            tracing::info!(path = %target.display(), "an identical file is already in the backups directory");
            return Ok((target, false));
        }
        return Err(LogicalError::UploadClash {
            path: target,
            existing,
            upload: expected,
        });
    }
    let path = out.commit()?;
    let (_, actual) = sha256_file(&path)?;
    if actual != expected {
        let _ = std::fs::remove_file(&path);
        return Err(LogicalError::CopyMismatch {
            from: src.to_owned(),
            to: path,
            expected,
            actual,
        });
    }
    tracing::info!(path = %path.display(), sha256 = %actual, "copied into the backups directory");
    Ok((path, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn sniffs_by_content() {
        let t = tempfile::tempdir().unwrap();
        let w = |n: &str, b: &[u8]| {
            let p = t.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        assert_eq!(
            sniff(&w("a.sql", b"create table t(x int);\n")).unwrap(),
            FileKind::Sql
        );
        assert_eq!(
            sniff(&w("a.sql.gz", &gz(b"select 1;\n"))).unwrap(),
            FileKind::SqlGz
        );
        assert_eq!(
            sniff(&w("a.dump", b"PGDMP\x01\x0e\x00")).unwrap(),
            FileKind::Custom
        );
        let mut tarball = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_cksum();
        tarball.append_data(&mut h, "x.sql", &b"x"[..]).unwrap();
        let tar_bytes = tarball.into_inner().unwrap();
        assert_eq!(
            sniff(&w("a.tar.gz", &gz(&tar_bytes))).unwrap(),
            FileKind::TarGz
        );
        for (name, bytes) in [
            ("a.zip", &b"PK\x03\x04rest"[..]),
            ("empty", b""),
            ("bin", b"\x00\x01\x02\x03"),
        ] {
            assert!(
                matches!(sniff(&w(name, bytes)).unwrap(), FileKind::Other(_)),
                "{name}"
            );
        }
        assert!(
            matches!(sniff(&w("a.tar", &tar_bytes)).unwrap(), FileKind::Other(s) if s.contains("uncompressed tar"))
        );
    }

    #[test]
    fn copies_atomically_and_refuses_a_different_file_of_the_same_name() {
        let t = tempfile::tempdir().unwrap();
        let src_dir = t.path().join("src");
        let repo = t.path().join("repo");
        std::fs::create_dir_all(&src_dir).unwrap();
        std::fs::create_dir_all(&repo).unwrap();
        let src = src_dir.join("records_dump_20251102.sql");
        std::fs::write(&src, "select 1;\n").unwrap();
        let (copied, created) = copy_into(&src, &repo).unwrap();
        assert!(created);
        assert_eq!(std::fs::read(&copied).unwrap(), b"select 1;\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&copied).unwrap().mode() & 0o777, 0o600);
        // Same content again: fine.
        assert_eq!(copy_into(&src, &repo).unwrap(), (copied.clone(), false));
        std::fs::write(&src, "select 2;\n").unwrap();
        let err = copy_into(&src, &repo).unwrap_err();
        assert!(matches!(err, LogicalError::UploadClash { .. }), "{err}");
        assert_eq!(std::fs::read(&copied).unwrap(), b"select 1;\n");
        assert_eq!(
            std::fs::read_dir(&repo).unwrap().count(),
            1,
            "no partial left"
        );
        let err = copy_into(&src_dir.join("missing.sql"), &repo).unwrap_err();
        assert!(matches!(err, LogicalError::NoSuchFile { .. }), "{err}");
    }
}
