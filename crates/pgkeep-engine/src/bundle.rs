//! Backup bundles: a compressed tar of named members plus `MANIFEST.json` (the size and SHA-256
//! of every other member, and what the backup is), written atomically and read back safely.
//!
//! Two compressions ([`Codec`]), chosen by the bundle's name when writing and by the file's first
//! bytes when reading: zstd (`*.tar.zst`, base backups: smaller, and it decompresses several times
//! faster) and gzip (`*.tar.gz`: nightly bundles, and base backups written before).
//!
//! Writing: members stream from disk into tar, through the compressor, into an [`AtomicFile`];
//! nothing is held in memory. The stream is a concatenation of compressed frames (gzip members
//! or zstd frames: valid files, read by `tar xf` and the decoders here), so each tar member can
//! choose its own level: already-compressed data (pg_dump's `*.dat.gz`, `*.sql.gz`) is stored,
//! not compressed again; and `MANIFEST.json`, the last member, starts a frame of its own, so a
//! listing reads it from the file's tail ([`crate::catalog::peek_manifest`]). zstd compresses
//! on every core (`ZSTD_c_nbWorkers`).
//!
//! Reading: [`extract`] unpacks into a fresh directory, refusing absolute paths, `..`, links,
//! devices and FIFOs, hashing as it goes; when a manifest is present every member must match it
//! (size and SHA-256, nothing missing, nothing extra) before the caller may use the result.
//! [`verify`] does the same without writing anything. Decompression runs on a thread of its own
//! ([`ReadAhead`]), so parsing, hashing and writing overlap with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{AtomicFile, FsError, IoContext};

pub const MANIFEST_NAME: &str = "MANIFEST.json";
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{archive}: the archive is truncated or corrupt ({message})\nhint: the file is damaged; use another backup (`pgkeep backups list`)"
    )]
    Corrupt { archive: PathBuf, message: String },
    #[error(
        "{archive}: unsafe entry `{entry}` ({reason}); nothing was extracted outside {dest}\nhint: this archive was not written by pgkeep or pg_dump; inspect it with `tar tvf`"
    )]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: &'static str,
        dest: PathBuf,
    },
    #[error(
        "{archive}: checksum mismatch for `{member}`: manifest says {expected}, archive has {actual}\nhint: the backup is damaged; use another one (`pgkeep backups list`)"
    )]
    Checksum {
        archive: PathBuf,
        member: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{archive}: `{member}` is listed in {MANIFEST_NAME} but missing from the archive\nhint: the backup is incomplete; use another one"
    )]
    Missing { archive: PathBuf, member: String },
    #[error(
        "{archive}: `{member}` is in the archive but not in {MANIFEST_NAME}\nhint: the archive was changed after it was written; use another backup"
    )]
    Unlisted { archive: PathBuf, member: String },
    #[error("{archive}: {MANIFEST_NAME} is unreadable: {message}")]
    BadManifest { archive: PathBuf, message: String },
    #[error("{path}: a member name must be a relative path without `..`: `{name}`")]
    BadMemberName { path: PathBuf, name: String },
}

/// What kind of backup a bundle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    Logical,
    Physical,
}

/// Size and SHA-256 of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDigest {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kind: BundleKind,
    pub pgkeep_version: String,
    /// Kind-specific facts (server version, system identifier, database, start/stop time, LSNs,
    /// ...), flattened into the top-level object.
    #[serde(flatten)]
    pub info: BTreeMap<String, serde_json::Value>,
    pub members: Vec<MemberDigest>,
}

impl Manifest {
    /// A string fact from `info`.
    pub fn info_str(&self, key: &str) -> Option<&str> {
        self.info.get(key).and_then(|v| v.as_str())
    }
}

/// How a member is compressed inside the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Data that is already compressed: stored blocks.
    Store,
    /// Fast compression.
    Fast,
    /// Default compression.
    Default,
}

impl Level {
    fn gzip(self) -> Compression {
        match self {
            Level::Store => Compression::none(),
            Level::Fast => Compression::fast(),
            Level::Default => Compression::default(),
        }
    }

    /// zstd has no stored mode: level 1 emits raw blocks for data that does not compress, at
    /// close to copy speed. Fast is zstd's own default (3): as fast as gzip -1 or faster, and a
    /// third smaller on PostgreSQL pages.
    fn zstd(self) -> i32 {
        match self {
            Level::Store => 1,
            Level::Fast => 3,
            Level::Default => 9,
        }
    }

    /// Store files whose names say they are compressed already.
    pub fn for_name(name: &str) -> Level {
        const COMPRESSED: [&str; 6] = [".gz", ".zst", ".lz4", ".bz2", ".xz", ".zstd"];
        if COMPRESSED.iter().any(|s| name.ends_with(s)) {
            Level::Store
        } else {
            Level::Fast
        }
    }
}

/// A bundle's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Codec {
    /// The compression a bundle of this name is written with: zstd for `*.zst`, else gzip.
    pub fn for_name(name: &str) -> Codec {
        if name.ends_with(".zst") {
            Codec::Zstd
        } else {
            Codec::Gzip
        }
    }

    /// The compression whose frame header `bytes` starts with.
    pub fn sniff(bytes: &[u8]) -> Option<Codec> {
        if bytes.starts_with(&ZSTD_MAGIC) {
            Some(Codec::Zstd)
        } else if bytes.starts_with(&GZIP_MAGIC) {
            Some(Codec::Gzip)
        } else {
            None
        }
    }

    /// A decoder of every frame in `r`, one after the other.
    pub fn decoder<'a, R: BufRead + Send + 'a>(
        self,
        r: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Codec::Gzip => Box::new(MultiGzDecoder::new(r)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// Compressor threads for zstd: every core, at most four (more buys nothing on one disk).
fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32)
}

/// One frame being written.
enum Frame<W: Write> {
    Gz(GzEncoder<W>),
    Zst(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Frame<W> {
    fn start(codec: Codec, level: Level, w: W) -> io::Result<Frame<W>> {
        Ok(match codec {
            Codec::Gzip => Frame::Gz(GzEncoder::new(w, level.gzip())),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, level.zstd())?;
                e.include_checksum(true)?;
                let workers = zstd_workers();
                if workers > 1 {
                    e.multithread(workers)?;
                }
                Frame::Zst(e)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Frame::Gz(e) => e.finish(),
            Frame::Zst(e) => e.finish(),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Frame::Gz(e) => e,
            Frame::Zst(e) => e,
        }
    }
}

/// A compressed stream made of frames, each with its own level.
struct Frames<W: Write> {
    codec: Codec,
    inner: Option<W>,
    current: Option<(Frame<W>, Level)>,
    level: Level,
}

impl<W: Write> Frames<W> {
    fn new(codec: Codec, inner: W) -> Self {
        Frames {
            codec,
            inner: Some(inner),
            current: None,
            level: Level::Fast,
        }
    }

    fn set_level(&mut self, level: Level) -> io::Result<()> {
        if let Some((_, current)) = &self.current
            && *current != level
        {
            self.boundary()?;
        }
        self.level = level;
        Ok(())
    }

    /// End the current frame: what is written next starts a new one.
    fn boundary(&mut self) -> io::Result<()> {
        if let Some((frame, _)) = self.current.take() {
            self.inner = Some(frame.finish()?);
        }
        Ok(())
    }

    fn frame(&mut self) -> io::Result<&mut Frame<W>> {
        if self.current.is_none() {
            let w = self.inner.take().expect("writer present");
            self.current = Some((Frame::start(self.codec, self.level, w)?, self.level));
        }
        Ok(&mut self.current.as_mut().expect("just set").0)
    }

    fn finish(mut self) -> io::Result<W> {
        match self.current.take() {
            Some((frame, _)) => frame.finish(),
            None => Ok(self.inner.take().expect("writer present")),
        }
    }
}

impl<W: Write> Write for Frames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.frame()?.writer().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((frame, _)) => frame.writer().flush(),
            None => Ok(()),
        }
    }
}

/// Decompression on a thread of its own: the reader's thread parses, hashes and writes while
/// the next chunks are decompressed. Chunks of 1 MiB, at most four waiting (bounded memory).
/// An error of the decoder is returned in order, where it happened; a decoder thread that ends
/// without saying it reached the end is an error, never a short stream.
struct ReadAhead {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    state: AheadState,
}

#[derive(PartialEq)]
enum AheadState {
    Reading,
    Ended,
    Failed,
}

const AHEAD_CHUNK: usize = 1 << 20;

impl ReadAhead {
    fn new(mut inner: Box<dyn Read + Send>) -> ReadAhead {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(4);
        let mut feed = move |tx: SyncSender<io::Result<Vec<u8>>>| {
            loop {
                let mut buf = vec![0u8; AHEAD_CHUNK];
                let mut filled = 0;
                let result = loop {
                    match inner.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let end = filled == 0;
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return; // the reader is gone
                }
                match result {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    // The empty chunk says "the end", as opposed to a thread that died.
                    Ok(()) if end => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(()) => {}
                }
            }
        };
        std::thread::Builder::new()
            .name("pgkeep-decompress".into())
            .spawn(move || feed(tx))
            .expect("spawn the decompressor thread");
        ReadAhead {
            rx,
            chunk: Vec::new(),
            pos: 0,
            state: AheadState::Reading,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.state {
                AheadState::Ended => return Ok(0),
                AheadState::Failed => {
                    return Err(io::Error::other("decompression failed earlier"));
                }
                AheadState::Reading => {}
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.state = AheadState::Ended,
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.state = AheadState::Failed;
                    return Err(e);
                }
                Err(_) => {
                    self.state = AheadState::Failed;
                    return Err(io::Error::other("the decompressor thread ended early"));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The decoder for a bundle file, by its first bytes (a file that is neither gzip nor zstd is
/// corrupt).
fn open_decoder(archive: &Path) -> Result<Box<dyn Read + Send>, BundleError> {
    let f = File::open(archive).fs_ctx("open", archive)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r.fill_buf().fs_ctx("read", archive)?;
    let codec = Codec::sniff(head).ok_or_else(|| {
        corrupt(
            archive,
            if head.is_empty() {
                "the file is empty"
            } else {
                "neither gzip nor zstd data"
            },
        )
    })?;
    codec.decoder(r).map_err(|e| corrupt(archive, e))
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// (bytes read, hex SHA-256)
    pub fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hex SHA-256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(u64, String), FsError> {
    let f = File::open(path).fs_ctx("open", path)?;
    let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, f));
    io::copy(&mut r, &mut io::sink()).fs_ctx("read", path)?;
    Ok(r.finish())
}

fn check_member_name(archive: &Path, name: &str) -> Result<(), BundleError> {
    let p = Path::new(name);
    let ok = !name.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadMemberName {
            path: archive.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Writes one bundle. Call [`BundleWriter::finish`] to publish it; dropping it removes the
/// partial file.
pub struct BundleWriter {
    builder: tar::Builder<Frames<BufWriter<AtomicFile>>>,
    members: Vec<MemberDigest>,
    names: BTreeSet<String>,
    path: PathBuf,
    on_bytes: Option<Box<dyn FnMut(u64) + Send>>,
}

impl BundleWriter {
    /// Start `dir/name` (written as `dir/.name.partial`, mode 0600), compressed as its name
    /// says ([`Codec::for_name`]).
    pub fn create(dir: &Path, name: &str) -> Result<BundleWriter, BundleError> {
        let file = AtomicFile::create(dir, name, 0o600)?;
        let path = file.target_path().to_owned();
        let frames = Frames::new(
            Codec::for_name(name),
            BufWriter::with_capacity(1 << 20, file),
        );
        let mut builder = tar::Builder::new(frames);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.follow_symlinks(false);
        Ok(BundleWriter {
            builder,
            members: Vec::new(),
            names: BTreeSet::new(),
            path,
            on_bytes: None,
        })
    }

    /// Call `f(bytes)` after each chunk of member data is written (for progress bars).
    pub fn on_progress(&mut self, f: impl FnMut(u64) + Send + 'static) {
        self.on_bytes = Some(Box::new(f));
    }

    /// The final path this bundle will have.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn io_err(&self, e: io::Error) -> BundleError {
        FsError::new("write", &self.path, e).into()
    }

    /// Add a member from a reader of exactly `size` bytes.
    pub fn append_reader(
        &mut self,
        name: &str,
        size: u64,
        level: Level,
        reader: impl Read,
    ) -> Result<(), BundleError> {
        check_member_name(&self.path, name)?;
        if name == MANIFEST_NAME || !self.names.insert(name.to_owned()) {
            return Err(BundleError::BadMemberName {
                path: self.path.clone(),
                name: format!("{name} (duplicate or reserved)"),
            });
        }
        self.builder
            .get_mut()
            .set_level(level)
            .map_err(|e| self.io_err(e))?;
        let mut header = Self::header(size, 0o600, tar::EntryType::Regular);
        let mut hashing = HashingReader::new(ProgressReader {
            inner: reader,
            cb: self.on_bytes.as_mut(),
        });
        let result = self.builder.append_data(&mut header, name, &mut hashing);
        let (count, sha256) = hashing.finish();
        result.map_err(|e| FsError::new("write", &self.path, e))?;
        if count != size {
            return Err(FsError::new(
                "read",
                name,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("expected {size} bytes, got {count} (did the file change while being archived?)"),
                ),
            )
            .into());
        }
        self.members.push(MemberDigest {
            path: name.to_owned(),
            size,
            sha256,
        });
        Ok(())
    }

    /// Add a file from disk under `name`; the level follows the name unless given.
    pub fn append_file(
        &mut self,
        name: &str,
        path: &Path,
        level: Option<Level>,
    ) -> Result<(), BundleError> {
        let f = File::open(path).fs_ctx("open", path)?;
        let size = f.metadata().fs_ctx("stat", path)?.len();
        let level = level.unwrap_or_else(|| Level::for_name(name));
        self.append_reader(name, size, level, BufReader::with_capacity(1 << 20, f))
    }

    /// Add in-memory bytes under `name`.
    pub fn append_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        self.append_reader(name, bytes.len() as u64, Level::for_name(name), bytes)
    }

    /// [`append_bytes`](Self::append_bytes) starting a frame of its own, so the member
    /// can be read from the bundle's tail without reading the rest
    /// ([`crate::catalog::peek_member`]).
    pub fn append_bytes_at_boundary(
        &mut self,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), BundleError> {
        self.builder
            .get_mut()
            .boundary()
            .map_err(|e| self.io_err(e))?;
        self.append_bytes(name, bytes)
    }

    /// Add a directory tree under `name/` (files sorted; symlinks and special files refused).
    pub fn append_dir(&mut self, name: &str, dir: &Path) -> Result<(), BundleError> {
        check_member_name(&self.path, name)?;
        let mut header = Self::header(0, 0o700, tar::EntryType::Directory);
        self.builder
            .append_data(
                &mut header,
                format!("{}/", name.trim_end_matches('/')),
                io::empty(),
            )
            .map_err(|e| self.io_err(e))?;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .fs_ctx("read directory", dir)?
            .collect::<Result<_, _>>()
            .fs_ctx("read directory", dir)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = format!(
                "{}/{}",
                name.trim_end_matches('/'),
                e.file_name().to_string_lossy()
            );
            let ft = e.file_type().fs_ctx("stat", &e.path())?;
            if ft.is_dir() {
                self.append_dir(&child, &e.path())?;
            } else if ft.is_file() {
                self.append_file(&child, &e.path(), None)?;
            } else {
                return Err(BundleError::BadMemberName {
                    path: e.path(),
                    name: format!("{child} (not a regular file or directory)"),
                });
            }
        }
        Ok(())
    }

    /// Members written so far.
    pub fn members(&self) -> &[MemberDigest] {
        &self.members
    }

    /// Write `MANIFEST.json` (kind, version, `info`, members), finish the streams, fsync, rename
    /// into place and fsync the directory. Returns the final path and the manifest.
    pub fn finish(
        mut self,
        kind: BundleKind,
        info: BTreeMap<String, serde_json::Value>,
    ) -> Result<(PathBuf, Manifest), BundleError> {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            kind,
            pgkeep_version: env!("CARGO_PKG_VERSION").to_owned(),
            info,
            members: self.members.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        // A frame of its own, at the end: listings read it from the tail.
        let frames = self.builder.get_mut();
        let started = frames
            .boundary()
            .and_then(|()| frames.set_level(Level::Fast));
        started.map_err(|e| self.io_err(e))?;
        let mut header = Self::header(json.len() as u64, 0o600, tar::EntryType::Regular);
        self.builder
            .append_data(&mut header, MANIFEST_NAME, json.as_slice())
            .map_err(|e| self.io_err(e))?;
        let path = self.path.clone();
        let frames = self
            .builder
            .into_inner()
            .map_err(|e| FsError::new("write", &path, e))?;
        let buf = frames
            .finish()
            .map_err(|e| FsError::new("write", &path, e))?;
        let file = buf
            .into_inner()
            .map_err(|e| FsError::new("write", &path, e.into_error()))?;
        // A bundle's name only has to be unique: when another run published under it meanwhile
        // (a second backup in the same minute), the next same-minute name is taken.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = file.commit_first_free(crate::repo::names_after(&name))?;
        Ok((path, manifest))
    }
}

struct ProgressReader<'a, R> {
    inner: R,
    cb: Option<&'a mut Box<dyn FnMut(u64) + Send>>,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(cb) = &mut self.cb {
            cb(n as u64);
        }
        Ok(n)
    }
}

/// What was read from an archive.
#[derive(Debug, Clone)]
pub struct Contents {
    /// The manifest, when the archive has one (pgkeep bundles do; other dumps may not).
    pub manifest: Option<Manifest>,
    /// Every regular-file member with its size and SHA-256, in archive order.
    pub members: Vec<MemberDigest>,
    /// Directory members.
    pub dirs: Vec<String>,
}

impl Contents {
    /// Top-level names (first path component) of all members.
    pub fn top_level(&self) -> BTreeSet<String> {
        self.members
            .iter()
            .map(|m| m.path.as_str())
            .chain(self.dirs.iter().map(|d| d.as_str()))
            .filter_map(|p| p.split('/').next().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .collect()
    }
}

fn corrupt(archive: &Path, e: impl std::fmt::Display) -> BundleError {
    BundleError::Corrupt {
        archive: archive.to_owned(),
        message: e.to_string(),
    }
}

/// Normalise an entry path, refusing anything that could leave the target directory.
fn safe_relative(archive: &Path, dest: &Path, raw: &Path) -> Result<PathBuf, BundleError> {
    let unsafe_entry = |reason| BundleError::UnsafeEntry {
        archive: archive.to_owned(),
        entry: raw.display().to_string(),
        reason,
        dest: dest.to_owned(),
    };
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("`..` in the path")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry("absolute path"));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(unsafe_entry("empty path"));
    }
    Ok(out)
}

fn scan(
    archive: &Path,
    dest: Option<&Path>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Contents, BundleError> {
    let mut tar = tar::Archive::new(ReadAhead::new(open_decoder(archive)?));
    let mut members = Vec::new();
    let mut dirs = Vec::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    // Whether a member is written or only checked, a name seen twice is refused: the
    // manifest check keeps one digest per name, so a second copy could hide a damaged first.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let shown_dest = dest.unwrap_or(Path::new("(verify only)"));
    for entry in tar.entries().map_err(|e| corrupt(archive, e))? {
        let mut entry = entry.map_err(|e| corrupt(archive, e))?;
        let raw = entry.path().map_err(|e| corrupt(archive, e))?.into_owned();
        // `tar czf X -C dir .` starts with a `./` directory entry: harmless, skip it.
        if entry.header().entry_type() == tar::EntryType::Directory
            && raw.components().all(|c| matches!(c, Component::CurDir))
        {
            continue;
        }
        let rel = safe_relative(archive, shown_dest, &raw)?;
        let name = rel.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let unsafe_entry = |reason| BundleError::UnsafeEntry {
            archive: archive.to_owned(),
            entry: name.clone(),
            reason,
            dest: shown_dest.to_owned(),
        };
        let is_member = matches!(
            kind,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory
        );
        if is_member && !seen.insert(name.trim_end_matches('/').to_owned()) {
            return Err(unsafe_entry("the same name appears twice"));
        }
        match kind {
            tar::EntryType::Directory => {
                if let Some(d) = dest {
                    let p = d.join(&rel);
                    std::fs::create_dir_all(&p).fs_ctx("create directory", &p)?;
                }
                dirs.push(name);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if name == MANIFEST_NAME {
                    let mut buf = Vec::new();
                    entry
                        .read_to_end(&mut buf)
                        .map_err(|e| corrupt(archive, e))?;
                    if let Some(d) = dest {
                        let p = d.join(MANIFEST_NAME);
                        std::fs::write(&p, &buf).fs_ctx("write", &p)?;
                    }
                    manifest_bytes = Some(buf);
                    continue;
                }
                let mut hashing = HashingReader::new(&mut entry);
                match dest.filter(|_| keep(&name)) {
                    Some(d) => {
                        let p = d.join(&rel);
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).fs_ctx("create directory", parent)?;
                        }
                        let out = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&p)
                            .fs_ctx("create", &p)?;
                        let mut out = BufWriter::with_capacity(1 << 20, out);
                        copy_entry(&mut hashing, &mut out, archive, &p)?;
                        out.flush().fs_ctx("write", &p)?;
                        crate::fsutil::start_writeback(out.get_ref());
                    }
                    None => {
                        copy_entry(&mut hashing, &mut io::sink(), archive, archive)?;
                    }
                }
                let (size, sha256) = hashing.finish();
                members.push(MemberDigest {
                    path: name,
                    size,
                    sha256,
                });
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(unsafe_entry("links are not accepted"));
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(unsafe_entry("device and FIFO entries are not accepted"));
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            _ => return Err(unsafe_entry("unsupported entry type")),
        }
    }
    // After the end-of-archive blocks only zeros may follow (tar's padding): anything else
    // would be members no check has seen. Reading to the end also checks the last frame.
    let mut rest = tar.into_inner();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(archive, e)),
        };
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(corrupt(archive, "data after the end of the tar archive"));
        }
    }
    let manifest =
        match manifest_bytes {
            Some(b) => Some(serde_json::from_slice::<Manifest>(&b).map_err(|e| {
                BundleError::BadManifest {
                    archive: archive.to_owned(),
                    message: e.to_string(),
                }
            })?),
            None => None,
        };
    let contents = Contents {
        manifest,
        members,
        dirs,
    };
    check_against_manifest(archive, &contents)?;
    Ok(contents)
}

fn copy_entry(
    from: &mut impl Read,
    to: &mut impl Write,
    archive: &Path,
    out_path: &Path,
) -> Result<(), BundleError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(archive, e)),
        };
        to.write_all(&buf[..n]).fs_ctx("write", out_path)?;
    }
}

fn check_against_manifest(archive: &Path, c: &Contents) -> Result<(), BundleError> {
    let Some(m) = &c.manifest else { return Ok(()) };
    let found: BTreeMap<&str, &MemberDigest> =
        c.members.iter().map(|d| (d.path.as_str(), d)).collect();
    let listed: BTreeSet<&str> = m.members.iter().map(|d| d.path.as_str()).collect();
    for want in &m.members {
        match found.get(want.path.as_str()) {
            None => {
                return Err(BundleError::Missing {
                    archive: archive.to_owned(),
                    member: want.path.clone(),
                });
            }
            Some(got) if got.sha256 != want.sha256 || got.size != want.size => {
                return Err(BundleError::Checksum {
                    archive: archive.to_owned(),
                    member: want.path.clone(),
                    expected: format!("{} ({} bytes)", want.sha256, want.size),
                    actual: format!("{} ({} bytes)", got.sha256, got.size),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = c.members.iter().find(|d| !listed.contains(d.path.as_str())) {
        return Err(BundleError::Unlisted {
            archive: archive.to_owned(),
            member: extra.path.clone(),
        });
    }
    Ok(())
}

/// One regular-file member's bytes (at most `limit`), reading the archive from its start until
/// the member turns up. Nothing is verified here: the caller checks the bytes against a digest.
pub fn read_member(
    archive: &Path,
    member: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, BundleError> {
    let mut tar = tar::Archive::new(open_decoder(archive)?);
    for entry in tar.entries().map_err(|e| corrupt(archive, e))? {
        let mut entry = entry.map_err(|e| corrupt(archive, e))?;
        if entry.path().map_err(|e| corrupt(archive, e))?.as_ref() != Path::new(member) {
            continue;
        }
        let mut buf = Vec::new();
        entry
            .by_ref()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| corrupt(archive, e))?;
        return Ok(Some(buf));
    }
    Ok(None)
}

/// Read the whole archive, check every member against the manifest (when present), write nothing.
pub fn verify(archive: &Path) -> Result<Contents, BundleError> {
    scan(archive, None, &|_| false)
}

/// Extract into `dest`, which must not exist yet (it is created 0700). Every entry is checked
/// before it is written; when the manifest does not match, the error is returned and `dest` is
/// removed again, so a caller only ever sees a complete, verified tree.
pub fn extract(archive: &Path, dest: &Path) -> Result<Contents, BundleError> {
    extract_only(archive, dest, &|_| true)
}

/// [`extract`], writing only the regular members `keep` names (paths relative to the bundle's
/// root): the others are read and verified all the same, but not written.
pub fn extract_only(
    archive: &Path,
    dest: &Path,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Contents, BundleError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .fs_ctx("create directory", dest)?;
    match scan(archive, Some(dest), keep) {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = std::fs::remove_dir_all(dest);
            Err(e)
        }
    }
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        sample_named(dir, "nightly-20260101-0600.tar.gz")
    }

    fn sample_named(dir: &Path, name: &str) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("records.dir")).unwrap();
        std::fs::write(src.join("records.dir/toc.dat"), b"toc").unwrap();
        std::fs::write(src.join("records.dir/3001.dat.gz"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("globals.sql"), b"CREATE ROLE app;\n").unwrap();
        let mut w = BundleWriter::create(dir, name).unwrap();
        w.append_dir("records.dir", &src.join("records.dir"))
            .unwrap();
        w.append_file("globals.sql", &src.join("globals.sql"), None)
            .unwrap();
        w.append_bytes("extensions.tsv", b"plpgsql\t1.0\tpg_catalog\n")
            .unwrap();
        let mut info = BTreeMap::new();
        info.insert("database".into(), serde_json::json!("records"));
        let (path, m) = w.finish(BundleKind::Logical, info).unwrap();
        assert_eq!(m.members.len(), 4);
        path
    }

    #[test]
    fn round_trip_with_manifest() {
        let t = tempfile::tempdir().unwrap();
        let path = sample(t.path());
        let c = verify(&path).unwrap();
        let m = c.manifest.as_ref().unwrap();
        assert_eq!(m.kind, BundleKind::Logical);
        assert_eq!(m.info_str("database"), Some("records"));
        let dest = t.path().join("out");
        let c2 = extract(&path, &dest).unwrap();
        assert_eq!(c2.members, c.members);
        assert_eq!(
            std::fs::read(dest.join("records.dir/toc.dat")).unwrap(),
            b"toc"
        );
        assert_eq!(
            std::fs::read(dest.join("records.dir/3001.dat.gz")).unwrap(),
            vec![7u8; 100_000]
        );
        assert!(dest.join(MANIFEST_NAME).is_file());
        assert_eq!(
            c.top_level(),
            ["extensions.tsv", "globals.sql", "records.dir"]
                .into_iter()
                .map(String::from)
                .collect()
        );
    }

    #[test]
    fn system_tar_reads_the_multi_frame_stream_of_either_codec() {
        // GNU tar picks the decompressor from the data (zstd needs the zstd program).
        let t = tempfile::tempdir().unwrap();
        for name in ["nightly-20260101-0600.tar.gz", ZST_NAME] {
            let path = sample_named(&t.path().join(name), name);
            let out = std::process::Command::new("tar")
                .arg("tf")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let list = String::from_utf8_lossy(&out.stdout);
            assert!(list.contains("records.dir/3001.dat.gz"), "{list}");
            assert!(list.contains(MANIFEST_NAME), "{list}");
        }
    }

    const ZST_NAME: &str = "basebackup-20260101-0600.bundle.tar.zst";

    #[test]
    fn zstd_bundles_round_trip_with_the_same_digests_as_gzip() {
        let t = tempfile::tempdir().unwrap();
        let path = sample_named(t.path(), ZST_NAME);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(&ZSTD_MAGIC), "a .zst bundle is zstd");
        let gz = sample_named(&t.path().join("gz"), "nightly-20260101-0600.tar.gz");
        assert!(std::fs::read(&gz).unwrap().starts_with(&GZIP_MAGIC));
        let c = verify(&path).unwrap();
        assert_eq!(
            c.members,
            verify(&gz).unwrap().members,
            "same members, same digests"
        );
        let dest = t.path().join("out");
        extract(&path, &dest).unwrap();
        assert_eq!(
            std::fs::read(dest.join("records.dir/3001.dat.gz")).unwrap(),
            vec![7u8; 100_000]
        );
    }

    #[test]
    fn the_manifest_is_read_from_the_tail_of_a_large_bundle_of_either_codec() {
        // 1 MiB of incompressible data before the manifest: far more than the 256 KiB tail a
        // listing reads, so the manifest must start a frame of its own.
        let t = tempfile::tempdir().unwrap();
        let mut noise = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for name in [ZST_NAME, "nightly-20260101-0600.tar.gz"] {
            let mut w = BundleWriter::create(t.path(), name).unwrap();
            w.append_bytes("noise.bin", &noise).unwrap();
            let mut info = BTreeMap::new();
            info.insert("marker".into(), serde_json::json!(name));
            let (path, m) = w.finish(BundleKind::Physical, info).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 1 << 20);
            let peeked = crate::catalog::peek_manifest(&path).expect("found at the tail");
            assert_eq!(peeked, m, "{name}");
        }
    }

    #[test]
    fn a_damaged_zstd_bundle_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let path = sample_named(t.path(), ZST_NAME);
        let good = std::fs::read(&path).unwrap();
        // A flipped byte in the middle, and the first half alone.
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x55;
        for (what, bytes) in [
            ("flipped", flipped),
            ("truncated", good[..good.len() / 2].to_vec()),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let err = verify(&path).unwrap_err();
            assert!(
                matches!(
                    err,
                    BundleError::Checksum { .. } | BundleError::Corrupt { .. }
                ),
                "{what}: {err}"
            );
            let dest = t.path().join(format!("out-{what}"));
            assert!(extract(&path, &dest).is_err(), "{what}");
            assert!(!dest.exists(), "{what}: a failed extraction leaves nothing");
        }
        std::fs::write(&path, b"").unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("empty"));
        std::fs::write(&path, b"PK\x03\x04 not a tar stream").unwrap();
        assert!(
            verify(&path)
                .unwrap_err()
                .to_string()
                .contains("neither gzip nor zstd")
        );
    }

    #[test]
    fn members_after_the_end_of_the_archive_are_refused() {
        // A second tar stream appended to a good bundle (its own frame, its own manifest): no
        // check would have seen its members, so the whole file is refused.
        let t = tempfile::tempdir().unwrap();
        for name in [ZST_NAME, "nightly-20260101-0600.tar.gz"] {
            let path = sample_named(&t.path().join(name), name);
            let extra = sample_named(&t.path().join(format!("extra-{name}")), name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend(std::fs::read(&extra).unwrap());
            std::fs::write(&path, &bytes).unwrap();
            let err = verify(&path).unwrap_err();
            assert!(err.to_string().contains("after the end"), "{name}: {err}");
        }
    }

    /// Gives `good` bytes, then fails (or panics).
    struct Failing {
        good: usize,
        panic: bool,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                if self.panic {
                    panic!("decoder bug (expected by the test)");
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad block"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(1);
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn read_ahead_passes_errors_on_in_order_and_never_turns_them_into_an_end() {
        for panic in [false, true] {
            let mut r = ReadAhead::new(Box::new(Failing {
                good: 3 * AHEAD_CHUNK + 5,
                panic,
            }));
            let mut got = Vec::new();
            let err = r.read_to_end(&mut got).unwrap_err();
            if !panic {
                assert_eq!(got.len(), 3 * AHEAD_CHUNK + 5, "every good byte first");
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            } else {
                // The chunk being filled when the thread died is lost with it.
                assert_eq!(got.len(), 3 * AHEAD_CHUNK, "every chunk sent first");
                assert!(err.to_string().contains("ended early"), "{err}");
            }
            let mut more = [0u8; 8];
            assert!(r.read(&mut more).is_err(), "still an error, not an end");
        }
        let mut r = ReadAhead::new(Box::new(&[5u8; 10][..]));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, [5u8; 10]);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let path = sample(t.path());
        // Flip a byte inside the stored (uncompressed) 3001.dat.gz payload: gzip's own CRC
        // catches it too, but either way nothing verified comes out.
        let mut bytes = std::fs::read(&path).unwrap();
        let pos = bytes
            .windows(64)
            .position(|w| w.iter().all(|b| *b == 7))
            .unwrap()
            + 10;
        bytes[pos] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Checksum { .. } | BundleError::Corrupt { .. }
            ),
            "{err}"
        );
        let dest = t.path().join("out");
        assert!(extract(&path, &dest).is_err());
        assert!(!dest.exists(), "a failed extraction leaves nothing");
    }

    #[test]
    fn truncated_archive_is_corrupt() {
        let t = tempfile::tempdir().unwrap();
        let path = sample(t.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    fn raw_tar(dir: &Path, build: impl FnOnce(&mut tar::Builder<GzEncoder<File>>)) -> PathBuf {
        let path = dir.join("evil.tar.gz");
        let f = File::create(&path).unwrap();
        let mut b = tar::Builder::new(GzEncoder::new(f, Compression::fast()));
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    fn raw_entry(
        b: &mut tar::Builder<GzEncoder<File>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: tar::Builder refuses `..` itself.
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular {
            3
        } else {
            0
        });
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"bad"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }

    #[test]
    fn unsafe_entries_are_refused_and_nothing_escapes() {
        let t = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, tar::EntryType, Option<&str>)> = vec![
            ("../escaped.txt", tar::EntryType::Regular, None),
            ("a/../../escaped.txt", tar::EntryType::Regular, None),
            ("/tmp/absolute-escape.txt", tar::EntryType::Regular, None),
            ("link", tar::EntryType::Symlink, Some("/etc/passwd")),
            ("hard", tar::EntryType::Link, Some("/etc/passwd")),
            ("dev", tar::EntryType::Char, None),
            ("fifo", tar::EntryType::Fifo, None),
        ];
        for (name, kind, link) in cases {
            let work = tempfile::tempdir_in(t.path()).unwrap();
            let path = raw_tar(work.path(), |b| raw_entry(b, name, kind, link));
            let dest = work.path().join("out");
            let err = extract(&path, &dest).unwrap_err();
            assert!(
                matches!(err, BundleError::UnsafeEntry { .. }),
                "{name}: {err}"
            );
            assert!(!dest.exists(), "{name}");
            assert!(!work.path().join("escaped.txt").exists());
        }
        assert!(!Path::new("/tmp/absolute-escape.txt").exists());
    }

    #[test]
    fn a_member_twice_is_refused_whether_written_or_only_checked() {
        let t = tempfile::tempdir().unwrap();
        let path = raw_tar(t.path(), |b| {
            raw_entry(b, "d/x.dat", tar::EntryType::Regular, None);
            raw_entry(b, "d/x.dat", tar::EntryType::Regular, None);
        });
        let keeps: [&dyn Fn(&str) -> bool; 2] = [&|_| true, &|_| false];
        for keep in keeps {
            let dest = t.path().join("out");
            let err = extract_only(&path, &dest, keep).unwrap_err();
            assert!(matches!(err, BundleError::UnsafeEntry { .. }), "{err}");
            assert!(!dest.exists());
        }
        let err = verify(&path).unwrap_err();
        assert!(matches!(err, BundleError::UnsafeEntry { .. }), "{err}");
    }

    #[test]
    fn foreign_archives_without_manifest_are_read() {
        let t = tempfile::tempdir().unwrap();
        let path = raw_tar(t.path(), |b| {
            raw_entry(b, "dump/records.sql", tar::EntryType::Regular, None);
        });
        let c = extract(&path, &t.path().join("out")).unwrap();
        assert!(c.manifest.is_none());
        assert_eq!(c.members[0].path, "dump/records.sql");
    }

    #[test]
    fn a_leading_dot_slash_directory_entry_is_accepted() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("records.dir")).unwrap();
        std::fs::write(src.join("records.dir/toc.dat"), b"toc").unwrap();
        let path = t.path().join("records_dump_20251102.tar.gz");
        let st = std::process::Command::new("tar")
            .arg("czf")
            .arg(&path)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let c = extract(&path, &t.path().join("out")).unwrap();
        assert!(
            c.members.iter().any(|m| m.path == "records.dir/toc.dat"),
            "{c:?}"
        );
        assert!(t.path().join("out/records.dir/toc.dat").is_file());
    }

    #[test]
    fn unlisted_and_missing_members_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            format: 1,
            kind: BundleKind::Logical,
            pgkeep_version: "x".into(),
            info: BTreeMap::new(),
            members: vec![MemberDigest {
                path: "a".into(),
                size: 3,
                sha256: "00".into(),
            }],
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        let path = raw_tar(t.path(), |b| {
            raw_entry(b, "b", tar::EntryType::Regular, None);
            let mut h = tar::Header::new_gnu();
            h.set_size(json.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, MANIFEST_NAME, json.as_slice())
                .unwrap();
        });
        let err = verify(&path).unwrap_err();
        assert!(matches!(err, BundleError::Missing { .. }), "{err}");
    }

    #[test]
    fn duplicate_and_bad_member_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut w = BundleWriter::create(t.path(), "x.tar.gz").unwrap();
        w.append_bytes("a", b"1").unwrap();
        assert!(w.append_bytes("a", b"2").is_err());
        assert!(w.append_bytes("../b", b"2").is_err());
        assert!(w.append_bytes(MANIFEST_NAME, b"{}").is_err());
        drop(w);
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "partial removed"
        );
    }

    #[test]
    fn levels_follow_names() {
        assert_eq!(Level::for_name("records.sql.gz"), Level::Store);
        assert_eq!(Level::for_name("records.dir/3001.dat.gz"), Level::Store);
        assert_eq!(Level::for_name("globals.sql"), Level::Fast);
    }
}
