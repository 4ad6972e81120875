//! The WAL archive: pure WAL file-name and LSN parsing (CloudNativePG `pkg/postgres/wal.go`
//! style, table-driven tests), and the two commands PostgreSQL calls: push (`archive_command`)
//! and fetch (`restore_command`).
//!
//! Archive layout: one file per WAL file, named as PostgreSQL names it plus a suffix for its
//! compression (`.zst`, `.gz`, or none). Plain files written by the seed's `cp`-style
//! archive_command are read too. History (`*.history`) and backup-label (`*.backup`) files are
//! small and kept plain so a person can read them.
//!
//! Push never replaces anything: it writes a hidden partial file of its own (see
//! [`crate::fsutil`]; two pushes of one name never touch each other's), fsyncs it, renames it with
//! RENAME_NOREPLACE and fsyncs the directory. A file that is already archived, or that another
//! push published first, is accepted when its content is identical (PostgreSQL retries after a
//! crash between archiving and noting it) and refused, loudly and naming the file, when it
//! differs; an archived copy that does not decompress or has the wrong size is reported as
//! damaged. A push killed half-way leaves only its hidden partial file, which
//! [`crate::fsutil::remove_stale_partials`] removes once its writer is gone.
//!
//! Fetch writes `%p` through a temporary name and a rename; it does not fsync, because
//! PostgreSQL makes restored files durable itself and fetches them again after a crash.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fsutil::{AtomicFile, FsError, IoContext};

/// PostgreSQL's default WAL segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "`{name}` is not a WAL file name\nhint: archive_command should be `pgkeep wal push %p` and restore_command `pgkeep wal fetch %f %p`"
    )]
    NotWalName { name: String },
    #[error(
        "{existing} is already archived with DIFFERENT content than {source_path}; the archive was left unchanged\nhint: two clusters may be archiving into the same directory, or the archive belongs to an older cluster; give each cluster its own WAL archive and investigate before removing anything"
    )]
    Conflict {
        existing: PathBuf,
        source_path: PathBuf,
    },
    #[error(
        "{path}: {message}\nhint: the archived file is damaged; recovery cannot continue past it (restore an older base backup or repair the archive)"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Segment(#[from] crate::walcheck::SegmentError),
    #[error(
        "{existing} is already archived but the archived copy is damaged ({message}); the archive was left unchanged\nhint: check it with `pgkeep wal fetch {name} /tmp/check` (exit 126 means damaged); when {source_path} is the intact original, move the damaged copy out of the archive and let archive_command retry"
    )]
    Damaged {
        existing: PathBuf,
        name: String,
        source_path: PathBuf,
        message: String,
    },
    #[error(
        "{path}: a WAL segment of {size} bytes is impossible (segments are a power of two between 1 MiB and 1 GiB)"
    )]
    BadSegmentSize { path: PathBuf, size: u64 },
}

// ---------------------------------------------------------------------------------------------
// Names and LSNs (pure)
// ---------------------------------------------------------------------------------------------

/// A WAL location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN (expected like 0/3000028)"))?;
        let p = |x: &str| {
            (!x.is_empty() && x.len() <= 8)
                .then(|| u32::from_str_radix(x, 16).ok())
                .flatten()
                .ok_or_else(|| format!("`{s}` is not an LSN (expected like 0/3000028)"))
        };
        Ok(Lsn(((p(hi)? as u64) << 32) | p(lo)? as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Lsn {
    /// The segment number holding this location.
    pub fn segment(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }
}

/// What a file in pg_wal or the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalKind {
    /// `000000010000000000000003`
    Segment,
    /// `000000010000000000000003.partial` (the last segment of a timeline left at promotion)
    Partial,
    /// `000000010000000000000003.00000028.backup` (a base backup's label)
    Backup,
    /// `00000002.history`
    History,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalName {
    pub kind: WalKind,
    pub timeline: u32,
    /// The "log" part (high 32 bits of the segment's LSN); 0 for history files.
    pub log: u32,
    /// The segment within the log; 0 for history files.
    pub seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

/// Parse a WAL file name (no directory, no compression suffix).
pub fn parse_name(name: &str) -> Option<WalName> {
    if let Some(tli) = name.strip_suffix(".history") {
        let timeline = hex8(tli)?;
        return Some(WalName {
            kind: WalKind::History,
            timeline,
            log: 0,
            seg: 0,
        });
    }
    let (base, kind) = if let Some(b) = name.strip_suffix(".partial") {
        (b, WalKind::Partial)
    } else if let Some(b) = name.strip_suffix(".backup") {
        let (b, offset) = b.split_once('.')?;
        hex8(offset)?;
        (b, WalKind::Backup)
    } else {
        (name, WalKind::Segment)
    };
    if base.len() != 24 {
        return None;
    }
    let timeline = hex8(&base[0..8])?;
    if timeline == 0 {
        return None;
    }
    Some(WalName {
        kind,
        timeline,
        log: hex8(&base[8..16])?,
        seg: hex8(&base[16..24])?,
    })
}

/// Segments per "log" (4 GiB of WAL).
fn segs_per_log(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

impl WalName {
    /// The absolute segment number (comparable across timelines).
    pub fn segment_no(&self, seg_size: u64) -> u64 {
        self.log as u64 * segs_per_log(seg_size) + self.seg as u64
    }
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY` for a timeline and segment number.
pub fn segment_file_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per = segs_per_log(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// Whether `size` is a possible WAL segment size.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

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
struct Mapped {
    ptr: *mut std::ffi::c_void,
    len: usize,
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
fn write_zstd(data: &[u8], level: i32, threads: u32, out: &File) -> io::Result<()> {
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
fn start_writeback(file: &File, offset: u64, len: u64) {
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

fn threads_for_cpus(cpus: usize) -> u32 {
    (cpus.max(1) as u32).min(MAX_DEFAULT_ZSTD_THREADS)
}

/// The WAL archive directory.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
}

fn file_name_of(path: &Path) -> Result<&str, WalError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WalError::NotWalName {
            name: path.display().to_string(),
        })
}

fn sha256_reader(mut r: impl Read, path: &Path) -> Result<(u64, [u8; 32]), WalError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(WalError::Corrupt {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        };
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
            let mut r = open_decompressed(&src, c)?;
            let out = File::create(&tmp).fs_ctx("create", &tmp)?;
            let mut w = io::BufWriter::with_capacity(1 << 20, out);
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            let mut head = Vec::with_capacity(LONG_HEADER_LEN);
            let mut checker = expect.and_then(|e| crate::walcheck::SegmentChecker::new(name, e));
            let problem = |problem| crate::walcheck::SegmentError {
                path: src.clone(),
                name: name.to_owned(),
                problem,
            };
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(WalError::Corrupt {
                            path: src.clone(),
                            message: e.to_string(),
                        });
                    }
                };
                if let Some(c) = &mut checker {
                    c.feed(&buf[..n]).map_err(problem)?;
                }
                w.write_all(&buf[..n]).fs_ctx("write", &tmp)?;
                let want = (LONG_HEADER_LEN - head.len()).min(n);
                head.extend_from_slice(&buf[..want]);
                total += n as u64;
            }
            w.flush().fs_ctx("write", &tmp)?;
            if let Some(c) = checker {
                c.finish().map_err(problem)?;
            }
            // A segment must hold exactly the size its own first page header declares: a file
            // cut short (a `cp` interrupted, an archive cut between two zstd frames) is damage,
            // never a short segment.
            let whole = match (wal.kind, declared_segment_size(&head)) {
                (WalKind::Segment | WalKind::Partial, Some(declared)) => total == declared,
                (WalKind::Segment, None) => valid_segment_size(total),
                _ => true,
            };
            if !whole {
                return Err(WalError::Corrupt {
                    path: src.clone(),
                    message: format!(
                        "holds {total} bytes, not a whole WAL segment (truncated copy?)"
                    ),
                });
            }
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
const LONG_HEADER_LEN: usize = 40;

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

#[cfg(test)]
mod tests {
    use super::*;
    use pgkeep_testkit::file_names;

    #[test]
    fn parses_wal_names() {
        use WalKind::*;
        type Want = Option<(WalKind, u32, u32, u32)>;
        let cases: &[(&str, Want)] = &[
            ("000000010000000000000003", Some((Segment, 1, 0, 3))),
            ("0000000A00000002000000FF", Some((Segment, 10, 2, 255))),
            ("000000010000000000000003.partial", Some((Partial, 1, 0, 3))),
            (
                "000000010000000000000003.00000028.backup",
                Some((Backup, 1, 0, 3)),
            ),
            ("00000002.history", Some((History, 2, 0, 0))),
            ("0000000200000000000000", None),
            ("000000010000000000000003.zst", None),
            ("00000000000000000000000A", None),
            ("00000001000000000000000G", None),
            ("0000002.history", None),
            ("000000010000000000000003.0028.backup", None),
            ("RECOVERYXLOG", None),
            ("", None),
            ("archive_status", None),
        ];
        for (name, want) in cases {
            let got = parse_name(name).map(|w| (w.kind, w.timeline, w.log, w.seg));
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn segment_numbers_and_names_round_trip() {
        let seg = DEFAULT_SEGMENT_SIZE;
        let cases: &[(&str, u64)] = &[
            ("000000010000000000000001", 1),
            ("0000000100000000000000FF", 255),
            ("000000010000000100000000", 256),
            ("000000030000000200000010", 2 * 256 + 16),
        ];
        for (name, no) in cases {
            let w = parse_name(name).unwrap();
            assert_eq!(w.segment_no(seg), *no, "{name}");
            assert_eq!(segment_file_name(w.timeline, *no, seg), *name);
        }
        // 64 MiB segments: 64 per log.
        let w = parse_name("000000010000000100000003").unwrap();
        assert_eq!(w.segment_no(64 << 20), 67);
        assert_eq!(
            segment_file_name(1, 67, 64 << 20),
            "000000010000000100000003"
        );
    }

    #[test]
    fn lsns_parse_format_and_map_to_segments() {
        let cases: &[(&str, u64, u64)] = &[
            ("0/3000028", 0x3000028, 3),
            ("0/0", 0, 0),
            ("1/A0", 0x1_0000_00A0, 256),
            ("16/B374D848", 0x16_B374_D848, 0x16 * 256 + 0xB3),
        ];
        for (text, value, seg) in cases {
            let l: Lsn = text.parse().unwrap();
            assert_eq!(l.0, *value, "{text}");
            assert_eq!(l.to_string(), *text);
            assert_eq!(l.segment(DEFAULT_SEGMENT_SIZE), *seg, "{text}");
        }
        for bad in ["", "0", "0/", "/1", "x/1", "123456789/0", "0/3000028/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!("0/3000028".parse::<Lsn>().unwrap() < "1/0".parse().unwrap());
    }

    #[test]
    fn default_zstd_threads_follow_the_cpus() {
        let cases: &[(usize, u32)] = &[(0, 1), (1, 1), (2, 2), (3, 3), (4, 4), (64, 4)];
        for (cpus, want) in cases {
            assert_eq!(threads_for_cpus(*cpus), *want, "{cpus} cpus");
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(valid_segment_size(16 << 20));
        assert!(valid_segment_size(1 << 20));
        assert!(valid_segment_size(1 << 30));
        assert!(!valid_segment_size(0));
        assert!(!valid_segment_size(3 << 20));
        assert!(!valid_segment_size(2 << 30));
        assert!(!valid_segment_size(8 << 20 | 1));
    }

    fn segment(dir: &Path, name: &str, fill: u8) -> PathBuf {
        let p = dir.join(name);
        let mut data = vec![0u8; 1 << 20];
        data[..40].copy_from_slice(&{
            let mut h = [0u8; 40];
            h[2] = 0x02;
            h[24..32].copy_from_slice(&7_123_456_789u64.to_le_bytes());
            h
        });
        for (i, b) in data.iter_mut().enumerate().skip(40).take(100_000) {
            *b = fill.wrapping_add((i % 7) as u8);
        }
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn push_fetch_round_trip_in_every_form() {
        let t = tempfile::tempdir().unwrap();
        let pg_wal = t.path().join("pg_wal");
        std::fs::create_dir(&pg_wal).unwrap();
        for (i, c) in Compression::ALL.into_iter().enumerate() {
            let arch_dir = t.path().join(format!("arch{i}"));
            std::fs::create_dir(&arch_dir).unwrap();
            let a = Archive::new(&arch_dir);
            let src = segment(&pg_wal, "000000010000000000000003", i as u8);
            let out = a
                .push(
                    &src,
                    PushOptions {
                        compression: c,
                        zstd_level: 1,
                        zstd_threads: if c == Compression::Zstd { 2 } else { 1 },
                    },
                )
                .unwrap();
            assert!(matches!(out, PushOutcome::Stored { .. }), "{out:?}");
            assert_eq!(
                file_names(&arch_dir),
                vec![format!("000000010000000000000003{}", c.suffix())]
            );
            let dest = pg_wal.join("RECOVERYXLOG");
            let got = a.fetch("000000010000000000000003", &dest).unwrap();
            assert_eq!(got, FetchOutcome::Restored { bytes: 1 << 20 });
            assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
            let listed = a.list().unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(a.system_identifier(&listed[0]), Some(7_123_456_789));
            // Same content again: accepted, nothing changes.
            assert_eq!(
                a.push(&src, PushOptions::default()).unwrap(),
                PushOutcome::AlreadyArchived
            );
            assert_eq!(listed.len(), a.list().unwrap().len());
        }
    }

    #[test]
    fn different_content_is_refused_and_archive_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let arch_dir = t.path().join("arch");
        std::fs::create_dir(&arch_dir).unwrap();
        let a = Archive::new(&arch_dir);
        let src = segment(t.path(), "000000010000000000000004", 1);
        a.push(&src, PushOptions::default()).unwrap();
        let before = std::fs::read(arch_dir.join("000000010000000000000004.zst")).unwrap();
        segment(t.path(), "000000010000000000000004", 2);
        let err = a.push(&src, PushOptions::default()).unwrap_err();
        assert!(matches!(err, WalError::Conflict { .. }), "{err}");
        assert!(
            err.to_string().contains("000000010000000000000004.zst"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(arch_dir.join("000000010000000000000004.zst")).unwrap(),
            before
        );
        assert_eq!(file_names(&arch_dir), vec!["000000010000000000000004.zst"]);
    }

    #[test]
    fn history_and_backup_files_are_kept_plain_and_partials_compressed() {
        let t = tempfile::tempdir().unwrap();
        let a = Archive::new(t.path().join("arch"));
        std::fs::create_dir(a.dir()).unwrap();
        std::fs::write(
            t.path().join("00000002.history"),
            "1\t0/5000000\tno recovery target specified\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("000000010000000000000002.00000028.backup"),
            "START WAL LOCATION: 0/2000028\n",
        )
        .unwrap();
        segment(t.path(), "000000010000000000000005.partial", 3);
        for n in [
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000005.partial",
        ] {
            a.push(&t.path().join(n), PushOptions::default()).unwrap();
        }
        assert_eq!(
            file_names(a.dir()),
            vec![
                "000000010000000000000002.00000028.backup",
                "000000010000000000000005.partial.zst",
                "00000002.history",
            ]
        );
        let dest = t.path().join("RECOVERYHISTORY");
        a.fetch("00000002.history", &dest).unwrap();
        assert!(
            std::fs::read_to_string(&dest)
                .unwrap()
                .starts_with("1\t0/5")
        );
    }

    #[test]
    fn missing_and_bad_names() {
        let t = tempfile::tempdir().unwrap();
        let a = Archive::new(t.path());
        assert_eq!(
            a.fetch("000000010000000000000009", &t.path().join("x"))
                .unwrap(),
            FetchOutcome::Missing
        );
        assert!(!t.path().join("x").exists());
        assert!(matches!(
            a.fetch("../etc/passwd", &t.path().join("x")),
            Err(WalError::NotWalName { .. })
        ));
        std::fs::write(t.path().join("notes.txt"), "x").unwrap();
        assert!(matches!(
            a.push(&t.path().join("notes.txt"), PushOptions::default()),
            Err(WalError::NotWalName { .. })
        ));
    }

    #[test]
    fn partial_of_a_killed_push_neither_blocks_a_push_nor_survives_the_sweep() {
        let t = tempfile::tempdir().unwrap();
        let arch_dir = t.path().join("arch");
        std::fs::create_dir(&arch_dir).unwrap();
        let here = crate::runmark::tag();
        let (host, _) = crate::runmark::parse_tag(&here).unwrap();
        let dead = format!(
            ".000000010000000000000006.zst~{host}~{}~0.partial",
            i32::MAX
        );
        std::fs::write(arch_dir.join(&dead), b"half a segm").unwrap();
        let a = Archive::new(&arch_dir);
        assert!(a.list().unwrap().is_empty(), "partials are not WAL");
        let src = segment(t.path(), "000000010000000000000006", 9);
        a.push(&src, PushOptions::default()).unwrap();
        assert_eq!(
            crate::fsutil::remove_stale_partials(&arch_dir),
            vec![arch_dir.join(&dead)]
        );
        assert_eq!(file_names(&arch_dir), vec!["000000010000000000000006.zst"]);
    }

    #[test]
    fn a_damaged_archived_copy_is_reported_as_damaged_not_as_a_second_cluster() {
        let t = tempfile::tempdir().unwrap();
        let arch_dir = t.path().join("arch");
        std::fs::create_dir(&arch_dir).unwrap();
        let a = Archive::new(&arch_dir);
        let src = segment(t.path(), "000000010000000000000007", 9);
        // A plain copy cut short, and a compressed one that does not decompress.
        std::fs::write(arch_dir.join("000000010000000000000007"), [9u8; 4096]).unwrap();
        let err = a.push(&src, PushOptions::default()).unwrap_err();
        assert!(matches!(err, WalError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!err.to_string().contains("two clusters"), "{err}");
        std::fs::remove_file(arch_dir.join("000000010000000000000007")).unwrap();
        std::fs::write(arch_dir.join("000000010000000000000007.zst"), b"not zstd").unwrap();
        let err = a.push(&src, PushOptions::default()).unwrap_err();
        assert!(matches!(err, WalError::Damaged { .. }), "{err}");
        assert_eq!(
            std::fs::read(arch_dir.join("000000010000000000000007.zst")).unwrap(),
            b"not zstd",
            "a damaged copy is never overwritten"
        );
    }

    /// A segment of `size` bytes whose first page header declares that size, WAL-like content
    /// spread over all of it.
    fn sized_segment(dir: &Path, name: &str, size: usize) -> PathBuf {
        let p = dir.join(name);
        let mut data = vec![0u8; size];
        data[2] = 0x02;
        data[24..32].copy_from_slice(&7_123_456_789u64.to_le_bytes());
        data[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate().skip(40) {
            *b = ((i / 8192) as u8).wrapping_mul(31) ^ (i % 251) as u8;
        }
        std::fs::write(&p, data).unwrap();
        p
    }

    /// The sizes of the zstd frames in `bytes`.
    fn frame_sizes(mut bytes: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        while !bytes.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(bytes).unwrap();
            v.push(n);
            bytes = &bytes[n..];
        }
        v
    }

    #[test]
    fn any_thread_count_writes_one_frame_per_piece_and_a_cut_between_frames_is_damage() {
        let t = tempfile::tempdir().unwrap();
        let src = sized_segment(t.path(), "000000010000000000000003", 8 << 20);
        let original = std::fs::read(&src).unwrap();
        // 8 MiB is four 2 MiB pieces, written in order whichever thread compressed them.
        for threads in [0, 1, 2, 3, 8] {
            let arch_dir = t.path().join(format!("arch{threads}"));
            std::fs::create_dir(&arch_dir).unwrap();
            let a = Archive::new(&arch_dir);
            let opts = PushOptions {
                compression: Compression::Zstd,
                zstd_level: 1,
                zstd_threads: threads,
            };
            assert!(matches!(
                a.push(&src, opts).unwrap(),
                PushOutcome::Stored { read, .. } if read == 8 << 20
            ));
            let z = arch_dir.join("000000010000000000000003.zst");
            let bytes = std::fs::read(&z).unwrap();
            let sizes = frame_sizes(&bytes);
            assert_eq!(sizes.len(), 4, "{threads} threads (2 MiB pieces)");
            let dest = t.path().join("RECOVERYXLOG");
            a.fetch("000000010000000000000003", &dest).unwrap();
            assert!(
                std::fs::read(&dest).unwrap() == original,
                "{threads} threads"
            );
            assert_eq!(a.push(&src, opts).unwrap(), PushOutcome::AlreadyArchived);
            let listed = a.list().unwrap();
            assert_eq!(a.segment_size(&listed[0]), Some(8 << 20));
            // Cut exactly after a frame: every frame is intact and 2 MiB is a possible segment
            // size, so only the declared size tells that the file is incomplete.
            std::fs::write(&z, &bytes[..sizes[0]]).unwrap();
            let err = a.fetch("000000010000000000000003", &dest).unwrap_err();
            assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
            // And pushing the same segment again does not accept the damaged copy, and says
            // it is damaged.
            assert!(matches!(
                a.push(&src, opts).unwrap_err(),
                WalError::Damaged { .. }
            ));
        }
    }

    #[test]
    fn fetch_reads_segments_written_by_earlier_versions() {
        // Before pgkeep split segments into frames it streamed them through zstd's encoder (one
        // frame, content size and checksum); those archives must stay readable.
        let t = tempfile::tempdir().unwrap();
        let src = sized_segment(t.path(), "000000010000000000000009", 2 << 20);
        let original = std::fs::read(&src).unwrap();
        let arch_dir = t.path().join("arch");
        std::fs::create_dir(&arch_dir).unwrap();
        let out = File::create(arch_dir.join("000000010000000000000009.zst")).unwrap();
        let mut enc = zstd::stream::write::Encoder::new(out, 1).unwrap();
        enc.include_checksum(true).unwrap();
        enc.set_pledged_src_size(Some(original.len() as u64))
            .unwrap();
        enc.write_all(&original).unwrap();
        enc.finish().unwrap();
        let a = Archive::new(&arch_dir);
        let dest = t.path().join("RECOVERYXLOG");
        a.fetch("000000010000000000000009", &dest).unwrap();
        assert!(std::fs::read(&dest).unwrap() == original);
        assert_eq!(
            a.push(&src, PushOptions::default()).unwrap(),
            PushOutcome::AlreadyArchived
        );
    }

    #[test]
    fn empty_and_small_partial_files_compress() {
        let t = tempfile::tempdir().unwrap();
        let a = Archive::new(t.path().join("arch"));
        std::fs::create_dir(a.dir()).unwrap();
        for (name, len) in [
            ("000000010000000000000001.partial", 0usize),
            ("000000010000000000000002.partial", 5000),
        ] {
            std::fs::write(t.path().join(name), vec![7u8; len]).unwrap();
            let opts = PushOptions {
                zstd_threads: 4,
                ..PushOptions::default()
            };
            a.push(&t.path().join(name), opts).unwrap();
            let dest = t.path().join("out");
            a.fetch(name, &dest).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; len], "{name}");
        }
    }

    #[test]
    fn truncated_archived_segments_are_corrupt_not_missing() {
        let t = tempfile::tempdir().unwrap();
        let arch_dir = t.path().join("arch");
        std::fs::create_dir(&arch_dir).unwrap();
        let a = Archive::new(&arch_dir);
        // A plain `cp` copy cut short, and a zstd file cut short.
        let src = segment(t.path(), "000000010000000000000007", 1);
        let data = std::fs::read(&src).unwrap();
        std::fs::write(arch_dir.join("000000010000000000000007"), &data[..1000]).unwrap();
        let err = a
            .fetch("000000010000000000000007", &t.path().join("out"))
            .unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(!t.path().join("out").exists());
        let src = segment(t.path(), "000000010000000000000008", 1);
        a.push(&src, PushOptions::default()).unwrap();
        let z = arch_dir.join("000000010000000000000008.zst");
        let bytes = std::fs::read(&z).unwrap();
        std::fs::write(&z, &bytes[..bytes.len() / 2]).unwrap();
        let err = a
            .fetch("000000010000000000000008", &t.path().join("out"))
            .unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(!t.path().join("out").exists());
        assert_eq!(
            file_names(t.path())
                .iter()
                .filter(|n| n.contains("pgkeep-fetch"))
                .count(),
            0
        );
    }
}
