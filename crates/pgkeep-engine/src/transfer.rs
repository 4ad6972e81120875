//! Receiving a file over a stream whose end cannot be signalled by closing it (Kubernetes 1.20
//! exec: closing stdin closes the whole connection). The sender announces the size and SHA-256
//! first; the receiver reads exactly that many bytes into a hidden partial file beside the
//! destination, checks the digest, and only then publishes the file (fsync, rename without
//! replacing, directory fsync).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil::{AtomicFile, FsError, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{dest} already exists\nhint: remove it first or upload under another name; pgkeep never overwrites a file it receives"
    )]
    Exists { dest: PathBuf },
    #[error(
        "the stream ended after {got} of {want} bytes; {dest} was not written\nhint: the connection dropped; upload again"
    )]
    Short { dest: PathBuf, got: u64, want: u64 },
    #[error(
        "checksum mismatch: announced {want}, received {got}; {dest} was not written\nhint: the file changed in transit or on the sender's disk; upload again"
    )]
    Checksum {
        dest: PathBuf,
        want: String,
        got: String,
    },
    #[error("`{0}` is not a SHA-256 (64 hex digits)")]
    BadDigest(String),
}

/// Read exactly `size` bytes from `input` into `dest`, publishing it only when its SHA-256 is
/// `sha256`. Calls `progress(bytes_so_far)` as it goes.
pub fn receive(
    input: &mut impl Read,
    dest: &Path,
    size: u64,
    sha256: &str,
    mut progress: impl FnMut(u64),
) -> Result<PathBuf, TransferError> {
    let want = sha256.to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TransferError::BadDigest(sha256.to_owned()));
    }
    if dest.exists() {
        return Err(TransferError::Exists {
            dest: dest.to_owned(),
        });
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FsError::new("receive", dest, io::Error::other("not a file name")))?;
    // Uploads go to `uploads/` on the backups volume, made on first use.
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FsError::new("create directory", dir, e).into()),
        }
    }
    let mut out = AtomicFile::create(dir, name, 0o600)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < size {
        let want_now = (size - got).min(buf.len() as u64) as usize;
        let n = match input.read(&mut buf[..want_now]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FsError::new("read stdin for", dest, e).into()),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .fs_ctx("write", out.partial_path())?;
        got += n as u64;
        progress(got);
    }
    if got < size {
        return Err(TransferError::Short {
            dest: dest.to_owned(),
            got,
            want: size,
        });
    }
    let digest = hex::encode(hasher.finalize());
    if digest != want {
        return Err(TransferError::Checksum {
            dest: dest.to_owned(),
            want,
            got: digest,
        });
    }
    Ok(out.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn receives_exactly_size_bytes_and_ignores_what_follows() {
        let t = tempfile::tempdir().unwrap();
        let data = vec![42u8; 3 << 20];
        let mut input = data.clone();
        input.extend_from_slice(b"trailing bytes after the announced size");
        let dest = t.path().join("records_dump_20251102.tar.gz");
        let mut seen = 0;
        receive(
            &mut input.as_slice(),
            &dest,
            data.len() as u64,
            &sha(&data),
            |n| seen = n,
        )
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(seen, data.len() as u64);
    }

    #[test]
    fn short_stream_and_bad_digest_publish_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("f");
        let err = receive(&mut &b"abc"[..], &dest, 10, &sha(b"abc"), |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                TransferError::Short {
                    got: 3,
                    want: 10,
                    ..
                }
            ),
            "{err}"
        );
        let err = receive(&mut &b"abc"[..], &dest, 3, &sha(b"abd"), |_| {}).unwrap_err();
        assert!(matches!(err, TransferError::Checksum { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "no partial left"
        );
        assert!(matches!(
            receive(&mut &b"abc"[..], &dest, 3, "xyz", |_| {}),
            Err(TransferError::BadDigest(_))
        ));
    }

    #[test]
    fn never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("f");
        std::fs::write(&dest, "old").unwrap();
        let err = receive(&mut &b"new"[..], &dest, 3, &sha(b"new"), |_| {}).unwrap_err();
        assert!(matches!(err, TransferError::Exists { .. }));
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    }
}
