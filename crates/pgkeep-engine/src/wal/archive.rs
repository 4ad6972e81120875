//! The archive's files: compression, push (`archive_command`) and fetch (`restore_command`),
//! listing, and what an archived segment's first page header says.

use super::*;

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// How a file is stored in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    #[default]
    Zstd,
}

impl Compression {
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// Every form fetch looks for, preferred first.
    pub const ALL: [Compression; 3] = [Compression::Zstd, Compression::Gzip, Compression::None];
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression `{s}` (none, gzip, zstd)")),
        }
    }
}

/// A read-only mapping of a whole file, so zstd reads a segment straight from the page cache:
/// no copy into a buffer, no zstd window buffer (its streaming mode compresses through a ring
/// buffer, a slower "external dictionary" path). Measured on OLTP WAL: ~16% less CPU per segment
/// than streaming, see bench/physical.results.md.
///
/// PostgreSQL never truncates a segment it is archiving. If something else did while it is
/// mapped, reading the missing pages raises SIGBUS and the push dies before it publishes
/// anything: the archive keeps only a hidden partial file that the next push replaces, and
/// PostgreSQL retries (as for any failed archive_command).
pub(super) struct Mapped {
    pub(super) ptr: *mut std::ffi::c_void,
    pub(super) len: usize,
}

impl Mapped {
    fn new(file: &File, len: u64) -> io::Result<Mapped> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a fresh private read-only mapping of `len` bytes of an open file, unmapped
        // exactly once in Drop; the slice handed out borrows `self`, so it cannot outlive it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                0,
            )
        }?;
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live mapping of `len` readable bytes (see `new`).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped only here.
            let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        }
    }
}

/// The size of the pieces `write_zstd` compresses as separate frames. WAL's matches are local:
/// 2 MiB pieces store OLTP WAL within 0.01% of one frame per segment (zstd CLI, `-B2M`), and
/// eight pieces per 16 MiB segment let writing overlap compressing.
pub const ZSTD_PIECE: usize = 2 << 20;

/// Compress `data` into `out` as zstd frames with content checksums, one per [`ZSTD_PIECE`]
/// (an empty input is one empty frame). `threads` workers compress pieces in parallel while the
/// calling thread writes finished frames in order and starts their writeback at once
/// ([`start_writeback`]), so the caller's fsync finds most of the file already on its way to the
/// disk.
///
/// Concatenated frames are one valid zstd stream (RFC 8878, section 3): the `zstd` tool and
/// every pgkeep fetch read them back as the whole file. zstd's own multithreading copies the
/// input into job buffers and cost ~40% more CPU for the same latency on 2 cores.
pub(super) fn write_zstd(data: &[u8], level: i32, threads: u32, out: &File) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // One compression context per thread and output buffers passed back for reuse: a fresh
    // context and buffer per piece cost page faults worth ~5% of the CPU.
    let compressor = || -> io::Result<zstd::bulk::Compressor<'static>> {
        let mut z = zstd::bulk::Compressor::new(level)?;
        z.include_checksum(true)?;
        Ok(z)
    };
    let compress = |z: &mut zstd::bulk::Compressor, piece: &[u8], mut buf: Vec<u8>| {
        buf.clear();
        buf.reserve(zstd::zstd_safe::compress_bound(piece.len()));
        z.compress_to_buffer(piece, &mut buf).map(|_| buf)
    };
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(ZSTD_PIECE).collect()
    };
    let written = std::cell::Cell::new(0u64);
    let emit = |frame: &[u8]| -> io::Result<()> {
        (&*out).write_all(frame)?;
        start_writeback(out, written.get(), frame.len() as u64);
        written.set(written.get() + frame.len() as u64);
        Ok(())
    };
    let workers = (threads.max(1) as usize).min(pieces.len());
    if workers == 1 {
        let (mut z, mut buf) = (compressor()?, Vec::new());
        for piece in &pieces {
            buf = compress(&mut z, piece, buf)?;
            emit(&buf)?;
        }
        return Ok(());
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let spare = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, failed, spare, pieces) = (&next, &failed, &spare, &pieces);
            std::thread::Builder::new().spawn_scoped(s, move || {
                let mut z = match compressor() {
                    Ok(z) => z,
                    Err(e) => return drop(tx.send((0, Err(e)))),
                };
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(piece) = pieces.get(i) else { break };
                    let buf = spare.lock().ok().and_then(|mut v| v.pop());
                    let frame = compress(&mut z, piece, buf.unwrap_or_default());
                    if tx.send((i, frame)).is_err() {
                        break;
                    }
                }
            })?;
        }
        drop(tx);
        let result = (|| {
            let mut done = std::collections::BTreeMap::new();
            let mut want = 0;
            for (i, frame) in &rx {
                done.insert(i, frame?);
                while let Some(frame) = done.remove(&want) {
                    emit(&frame)?;
                    if let Ok(mut v) = spare.lock() {
                        v.push(frame);
                    }
                    want += 1;
                }
            }
            if want == pieces.len() {
                Ok(())
            } else {
                Err(io::Error::other("a zstd compression thread stopped early"))
            }
        })();
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to the disk now, without
/// waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a head start for the fsync that
/// must follow: it makes nothing durable, and where it is not supported nothing happens.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on an open descriptor we borrow for its duration; no memory is
    // passed. Its result is deliberately ignored (see above).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Open an archived file and return a reader of its original content.
pub fn open_decompressed(path: &Path, c: Compression) -> Result<Box<dyn Read>, FsError> {
    let f = File::open(path).fs_ctx("open", path)?;
    let r = BufReader::with_capacity(1 << 20, f);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r).fs_ctx("start zstd decoding", path)?,
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// The archive
// ---------------------------------------------------------------------------------------------

/// One file in the archive.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedFile {
    /// The WAL name (without the compression suffix).
    pub name: String,
    pub wal: WalName,
    pub compression: Compression,
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
}

/// What push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored: (bytes read, bytes written).
    Stored { read: u64, written: u64 },
    /// The same content was archived before.
    AlreadyArchived,
}

/// What fetch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Restored {
        bytes: u64,
    },
    /// Not in the archive (normal at the end of recovery).
    Missing,
}

/// The zstd level push uses unless told otherwise: zstd's second fast mode (`zstd --fast=2`).
///
/// PostgreSQL waits for every segment and compressing is most of that wait: on OLTP WAL with
/// full-page images (16 pgbench segments, `perf stat`, one process per segment) level 1 costs
/// ~34 ms of CPU per segment, -2 ~28 ms, `cp` + `sync` ~11 ms. bench/physical.sh (same run,
/// pgbench scale 20, see bench/physical.results.md): level 1 stores 21.1% of the size at 1.31x
/// the time of `cp` + `sync`, -1 22.9% at 1.25x, -2 25.8% at 1.17x, -3 27.5% at 1.13x. -2 stays
/// within 1.5x also when fsync is quick, and its lower CPU suits pods with a CPU limit.
pub const DEFAULT_ZSTD_LEVEL: i32 = -2;

/// The zstd levels push accepts: -7..=-1 are zstd's fast modes, 0 its default (3).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=19;

/// `level` when it is one of [`ZSTD_LEVELS`], else what is wrong with it.
pub fn check_zstd_level(level: i32) -> Result<i32, String> {
    if ZSTD_LEVELS.contains(&level) {
        Ok(level)
    } else {
        Err(format!(
            "{level} is not a zstd level ({}..={}; negative levels are zstd's fast modes)",
            ZSTD_LEVELS.start(),
            ZSTD_LEVELS.end()
        ))
    }
}

/// Push settings.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    pub compression: Compression,
    /// zstd level: [`DEFAULT_ZSTD_LEVEL`], or 1..=19 for smaller and slower, -7..=-1 for zstd's
    /// faster, larger modes.
    pub zstd_level: i32,
    /// Threads compressing a segment's [`ZSTD_PIECE`]s in parallel (0 and 1 both mean the
    /// calling thread compresses and writes them itself; with more, it writes frames while the
    /// threads compress). PostgreSQL waits for every segment, so threads on idle cores cut its
    /// latency; see [`default_zstd_threads`]. Any count writes the same plain zstd stream (one
    /// frame per piece) that fetch, older pgkeep versions and `zstd -d` all read.
    pub zstd_threads: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            compression: Compression::Zstd,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            zstd_threads: default_zstd_threads(),
        }
    }
}

/// The most zstd threads push uses by default.
pub const MAX_DEFAULT_ZSTD_THREADS: u32 = 4;

/// zstd threads for push when none are asked for: one per CPU this process may use (cgroup CPU
/// quotas count, so a pod limited to one CPU compresses on one thread), at most
/// [`MAX_DEFAULT_ZSTD_THREADS`].
///
/// Measured on OLTP WAL on 2 cores (bench/physical.results.md): the CPU per segment is the
/// same on any number of threads (~28 ms at the default level), and two threads cut the time
/// PostgreSQL waits from 1.9x to 1.3x that of `cp` + `sync`.
pub fn default_zstd_threads() -> u32 {
    threads_for_cpus(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    )
}

pub(super) fn threads_for_cpus(cpus: usize) -> u32 {
    (cpus.max(1) as u32).min(MAX_DEFAULT_ZSTD_THREADS)
}

/// The WAL archive directory.
#[derive(Debug, Clone)]
pub struct Archive {
    pub(super) dir: PathBuf,
}

pub(super) fn file_name_of(path: &Path) -> Result<&str, WalError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WalError::NotWalName {
            name: path.display().to_string(),
        })
}

/// One read of archived file `path` (decompressed): an error is damage, never an end.
fn read_archived(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, WalError> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => {
                return other.map_err(|e| WalError::Corrupt {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    }
}

pub(super) fn sha256_reader(mut r: impl Read, path: &Path) -> Result<(u64, [u8; 32]), WalError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = read_archived(&mut r, &mut buf, path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, h.finalize().into()))
}

impl Archive {
    pub fn new(dir: impl Into<PathBuf>) -> Archive {
        Archive { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored form of `name`, if any (zstd, then gzip, then plain).
    pub fn find(&self, name: &str) -> Option<(PathBuf, Compression)> {
        Compression::ALL.into_iter().find_map(|c| {
            let p = self.dir.join(format!("{name}{}", c.suffix()));
            p.is_file().then_some((p, c))
        })
    }

    /// Every WAL file in the archive (hidden partial files and strangers ignored), sorted by name.
    pub fn list(&self) -> Result<Vec<ArchivedFile>, WalError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).fs_ctx("read directory", &self.dir)? {
            let entry = entry.fs_ctx("read directory", &self.dir)?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let (name, compression) = match (file.strip_suffix(".zst"), file.strip_suffix(".gz")) {
                (Some(n), _) => (n, Compression::Zstd),
                (_, Some(n)) => (n, Compression::Gzip),
                _ => (file, Compression::None),
            };
            let Some(wal) = parse_name(name) else {
                continue;
            };
            let meta = entry.metadata().fs_ctx("stat", &entry.path())?;
            if !meta.is_file() {
                continue;
            }
            out.push(ArchivedFile {
                name: name.to_owned(),
                wal,
                compression,
                path: entry.path(),
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `archive_command`: store `src` (a file in pg_wal) in the archive.
    pub fn push(&self, src: &Path, opts: PushOptions) -> Result<PushOutcome, WalError> {
        let name = file_name_of(src)?;
        let wal = parse_name(name).ok_or_else(|| WalError::NotWalName {
            name: name.to_owned(),
        })?;
        if let Some((existing, c)) = self.find(name) {
            return self.compare(src, &existing, c);
        }
        let compression = match wal.kind {
            WalKind::History | WalKind::Backup => Compression::None,
            WalKind::Segment | WalKind::Partial => opts.compression,
        };
        let input = File::open(src).fs_ctx("open", src)?;
        let size = input.metadata().fs_ctx("stat", src)?.len();
        if wal.kind == WalKind::Segment && !valid_segment_size(size) {
            return Err(WalError::BadSegmentSize {
                path: src.to_owned(),
                size,
            });
        }
        let target = format!("{name}{}", compression.suffix());
        let mut out = AtomicFile::create(&self.dir, &target, 0o600)?;
        let partial = out.partial_path().to_owned();
        let read = match compression {
            Compression::None => io::copy(&mut &input, out.file()).fs_ctx("write", &partial)?,
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    io::BufWriter::with_capacity(1 << 20, out.file()),
                    flate2::Compression::fast(),
                );
                let mut reader = BufReader::with_capacity(1 << 20, &input);
                let n = io::copy(&mut reader, &mut enc).fs_ctx("write", &partial)?;
                enc.finish()
                    .and_then(|mut w| w.flush())
                    .fs_ctx("write", &partial)?;
                n
            }
            Compression::Zstd => {
                let mapped = Mapped::new(&input, size).fs_ctx("map", src)?;
                write_zstd(
                    mapped.bytes(),
                    opts.zstd_level,
                    opts.zstd_threads,
                    out.file(),
                )
                .fs_ctx("zstd", &partial)?;
                drop(mapped);
                // The mapping had `size` bytes; a file that changed meanwhile is caught below.
                input.metadata().fs_ctx("stat", src)?.len()
            }
        };
        if read != size {
            return Err(WalError::Fs(FsError::new(
                "read",
                src,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("expected {size} bytes, read {read} (did it change while archiving?)"),
                ),
            )));
        }
        let written = out.file().metadata().fs_ctx("stat", &partial)?.len();
        match out.commit() {
            Ok(_) => Ok(PushOutcome::Stored { read, written }),
            // Someone archived the same name meanwhile: judge it like any existing file.
            Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => {
                let (existing, c) = self.find(name).ok_or(WalError::Fs(e))?;
                self.compare(src, &existing, c)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn compare(
        &self,
        src: &Path,
        existing: &Path,
        c: Compression,
    ) -> Result<PushOutcome, WalError> {
        let (src_len, src_hash) = sha256_reader(
            BufReader::with_capacity(1 << 20, File::open(src).fs_ctx("open", src)?),
            src,
        )?;
        let damaged = |message: String| WalError::Damaged {
            existing: existing.to_owned(),
            name: file_name_of(src).unwrap_or_default().to_owned(),
            source_path: src.to_owned(),
            message,
        };
        let old = open_decompressed(existing, c)?;
        let (old_len, old_hash) = match sha256_reader(old, existing) {
            Ok(v) => v,
            Err(WalError::Corrupt { message, .. }) => {
                return Err(damaged(format!("it does not decompress: {message}")));
            }
            Err(e) => return Err(e),
        };
        if src_len == old_len && src_hash == old_hash {
            return Ok(PushOutcome::AlreadyArchived);
        }
        let is_segment = parse_name(file_name_of(src)?).is_some_and(|w| w.kind == WalKind::Segment);
        if is_segment && old_len != src_len {
            return Err(damaged(format!(
                "it holds {old_len} bytes, the segment {src_len}"
            )));
        }
        Err(WalError::Conflict {
            existing: existing.to_owned(),
            source_path: src.to_owned(),
        })
    }

    /// `restore_command`: write `name` from the archive to `dest` (through a temporary name).
    pub fn fetch(&self, name: &str, dest: &Path) -> Result<FetchOutcome, WalError> {
        self.fetch_checked(name, dest, None)
    }

    /// [`Archive::fetch`], and with `expect`, a segment is first checked to belong where its
    /// name puts it, in the system being recovered ([`crate::walcheck`]); one that does not is
    /// refused and `dest` is not written.
    pub fn fetch_checked(
        &self,
        name: &str,
        dest: &Path,
        expect: Option<crate::walcheck::Expect>,
    ) -> Result<FetchOutcome, WalError> {
        self.fetch_impl(name, dest, expect)
    }

    /// [`Archive::fetch_checked`] from the archive root only (never a segment `wal stream` is
    /// still receiving), into `out` instead of a file: the replay prefetcher writes through a
    /// file it opened itself ([`super::prefetch`]). Restored only when every check passed;
    /// otherwise `out` holds a part and must be thrown away.
    pub fn fetch_archived_into(
        &self,
        name: &str,
        out: &mut impl Write,
        expect: Option<crate::walcheck::Expect>,
    ) -> Result<FetchOutcome, WalError> {
        let wal = parse_name(name).ok_or_else(|| WalError::NotWalName {
            name: name.to_owned(),
        })?;
        let Some((src, c)) = self.find(name) else {
            return Ok(FetchOutcome::Missing);
        };
        let bytes = copy_checked(&src, c, name, wal.kind, out, Path::new(name), expect)?;
        Ok(FetchOutcome::Restored { bytes })
    }

    fn fetch_impl(
        &self,
        name: &str,
        dest: &Path,
        expect: Option<crate::walcheck::Expect>,
    ) -> Result<FetchOutcome, WalError> {
        let wal = parse_name(name).ok_or_else(|| WalError::NotWalName {
            name: name.to_owned(),
        })?;
        // The archive root first (complete segments); else what `wal stream` received, which
        // may be the partial last segment of a server that is gone.
        let streamed = || {
            (wal.kind == WalKind::Segment)
                .then(|| {
                    crate::walstream::find_streamed(
                        &self.dir,
                        name,
                        expect.and_then(|e| e.system_identifier),
                    )
                })
                .flatten()
                .map(|p| (p, Compression::None))
        };
        let Some((src, c)) = self.find(name).or_else(streamed) else {
            return Ok(FetchOutcome::Missing);
        };
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dest_name = file_name_of(dest)?;
        let tmp = dir.join(format!(".{dest_name}.pgkeep-fetch"));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            // create_new: never through a link someone put in the temporary name's place.
            let out = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .fs_ctx("create", &tmp)?;
            let mut w = io::BufWriter::with_capacity(1 << 20, out);
            let total = copy_checked(&src, c, name, wal.kind, &mut w, &tmp, expect)?;
            w.flush().fs_ctx("write", &tmp)?;
            std::fs::rename(&tmp, dest).fs_ctx("rename", dest)?;
            Ok(total)
        })();
        match result {
            Ok(bytes) => Ok(FetchOutcome::Restored { bytes }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// The system identifier in an archived segment's first page header, when readable.
    pub fn system_identifier(&self, file: &ArchivedFile) -> Option<u64> {
        if !matches!(file.wal.kind, WalKind::Segment | WalKind::Partial) {
            return None;
        }
        let mut r = open_decompressed(&file.path, file.compression).ok()?;
        let mut head = [0u8; 40];
        r.read_exact(&mut head).ok()?;
        page_header_sysid(&head)
    }
}

/// Decompress the archived `src` of WAL file `name` into `w`, checking it on the way (with
/// `expect`) and that a segment holds exactly the size its first page header declares; the
/// bytes written. `out_path` names `w` in errors.
fn copy_checked(
    src: &Path,
    c: Compression,
    name: &str,
    kind: WalKind,
    w: &mut impl Write,
    out_path: &Path,
    expect: Option<crate::walcheck::Expect>,
) -> Result<u64, WalError> {
    let mut r = open_decompressed(src, c)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut head = Vec::with_capacity(LONG_HEADER_LEN);
    let mut checker = expect.and_then(|e| crate::walcheck::SegmentChecker::new(name, e));
    let problem = |problem| crate::walcheck::SegmentError {
        path: src.to_owned(),
        name: name.to_owned(),
        problem,
    };
    loop {
        let n = read_archived(&mut r, &mut buf, src)?;
        if n == 0 {
            break;
        }
        if let Some(c) = &mut checker {
            c.feed(&buf[..n]).map_err(problem)?;
        }
        w.write_all(&buf[..n]).fs_ctx("write", out_path)?;
        let want = (LONG_HEADER_LEN - head.len()).min(n);
        head.extend_from_slice(&buf[..want]);
        total += n as u64;
    }
    if let Some(c) = checker {
        c.finish().map_err(problem)?;
    }
    // A segment must hold exactly the size its own first page header declares: a file cut
    // short (a `cp` interrupted, an archive cut between two zstd frames) is damage, never a
    // short segment.
    let whole = match (kind, declared_segment_size(&head)) {
        (WalKind::Segment | WalKind::Partial, Some(declared)) => total == declared,
        (WalKind::Segment, None) => valid_segment_size(total),
        _ => true,
    };
    if !whole {
        return Err(WalError::Corrupt {
            path: src.to_owned(),
            message: format!("holds {total} bytes, not a whole WAL segment (truncated copy?)"),
        });
    }
    Ok(total)
}

impl Archive {
    /// The WAL segment size in an archived segment's first page header, when readable.
    pub fn segment_size(&self, file: &ArchivedFile) -> Option<u64> {
        if file.wal.kind != WalKind::Segment {
            return None;
        }
        let mut r = open_decompressed(&file.path, file.compression).ok()?;
        let mut head = [0u8; LONG_HEADER_LEN];
        r.read_exact(&mut head).ok()?;
        declared_segment_size(&head)
    }
}

/// Bytes of a segment's first page header (XLogLongPageHeaderData) that pgkeep reads.
pub(super) const LONG_HEADER_LEN: usize = 40;

/// The segment size (xlp_seg_size) a segment's first, long page header declares, when it has
/// one and the size is possible.
pub fn declared_segment_size(head: &[u8]) -> Option<u64> {
    page_header_sysid(head)?;
    let size = u32::from_le_bytes(head[32..36].try_into().ok()?) as u64;
    valid_segment_size(size).then_some(size)
}

/// The system identifier from a WAL segment's first (long) page header.
pub fn page_header_sysid(head: &[u8]) -> Option<u64> {
    const XLP_LONG_HEADER: u16 = 0x0002;
    if head.len() < 40 {
        return None;
    }
    let info = u16::from_le_bytes([head[2], head[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(u64::from_le_bytes(head[24..32].try_into().ok()?))
}
