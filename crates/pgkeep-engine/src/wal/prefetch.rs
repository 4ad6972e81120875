//! The replay prefetcher: while a bootstrap's (or drill's) server replays, threads of the
//! bootstrap decompress and check the next archived segments on recovery's path into a spool
//! directory in the new PGDATA's pg_wal ([`SPOOL_DIR`]), a bounded window ahead of what
//! PostgreSQL has asked for; `pgkeep wal fetch --spool DIR` ([`take`]) then hands a spooled
//! segment over with one rename instead of decompressing it while recovery waits.
//!
//! Why it cannot change what recovery reads:
//! - The spool only ever holds complete copies of files in the archive root (never what
//!   `wal stream` is still receiving), checked exactly as `wal fetch` checks them (page magic of
//!   the major, timeline and page addresses of the name, the system identifier), under their
//!   own names, published by rename after their mode and owner are set.
//! - A miss is nothing: `wal fetch` then reads the archive as it always does. The spool never
//!   answers "missing", so the end-of-archive race CloudNativePG fixed (#10285: a prefetch that
//!   had found nothing made recovery end early) cannot happen; a segment PostgreSQL asks for on
//!   another timeline is simply not in it; segments archived after the plan are fetched the
//!   usual way.
//! - The window bounds the disk it takes ([`window_for`]); the directory is removed when the
//!   prefetcher is dropped, and a killed run leaves it inside a PGDATA the bootstrap marker
//!   already says is partial.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};

use super::{Archive, FetchOutcome, WalKind, parse_name};
use crate::fsutil::{FsError, IoContext};
use crate::walcheck::Expect;

/// The spool's name inside pg_wal (PostgreSQL ignores directories there it does not know).
pub const SPOOL_DIR: &str = ".pgkeep-prefetch";

/// Bytes of WAL the spool holds at most (rounded to whole segments, at least two).
const SPOOL_BYTES: u64 = 128 << 20;

/// Segments the spool holds at most for `segment_size`.
pub fn window_for(segment_size: u64) -> usize {
    (SPOOL_BYTES / segment_size.max(1)).clamp(2, 64) as usize
}

/// `wal fetch --spool`: move `name` from the spool to `dest` (true), or false when it is not
/// there (a miss: read the archive).
pub fn take(spool: &Path, name: &str, dest: &Path) -> Result<bool, FsError> {
    if parse_name(name).is_none_or(|w| w.kind != WalKind::Segment) {
        return Ok(false);
    }
    match std::fs::rename(spool.join(name), dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FsError::new("rename", dest, e)),
    }
}

/// What the prefetcher needs to know; see [`Prefetcher::start`].
pub struct Spec {
    /// Where restore_command reads (the archive root, or a sandbox's superseded directory).
    pub archive: PathBuf,
    /// pg_wal of the data directory being recovered.
    pub pg_wal: PathBuf,
    /// The archived segments recovery will read, in order.
    pub segments: Vec<String>,
    pub expect: Expect,
    pub segment_size: u64,
    /// The data directory's owner, when this process runs as someone else (root).
    pub owner: Option<(u32, u32)>,
}

/// Running prefetch threads; dropping it stops them and removes the spool.
pub struct Prefetcher {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    archive: Archive,
    dir: PathBuf,
    /// pg_wal, where PostgreSQL keeps each segment it restored under its own name.
    walfd: OwnedFd,
    dirfd: OwnedFd,
    segments: Vec<String>,
    expect: Expect,
    owner: Option<(u32, u32)>,
    window: usize,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next index to fetch.
    next: usize,
    /// Indices published in the spool and not yet seen taken.
    spooled: BTreeSet<usize>,
    /// Every index below was taken, skipped by recovery or given up.
    consumed: usize,
    /// Segments handed over from the spool (seen gone).
    taken: usize,
}

impl Prefetcher {
    /// Create the spool and start `threads` workers, or None when there is nothing to prefetch
    /// or no room on the volume for the window (recovery then reads the archive as before).
    pub fn start(spec: Spec, threads: usize) -> Result<Option<Prefetcher>, FsError> {
        if spec.segments.is_empty() {
            return Ok(None);
        }
        // The spool takes at most a twentieth of the free space (PostgreSQL's restored WAL and
        // the new timeline need the rest): a smaller window on a full volume, none below two.
        let free = rustix::fs::statvfs(&spec.pg_wal)
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(0);
        let fits = (free / 20 / spec.segment_size.max(1)) as usize;
        let window = window_for(spec.segment_size)
            .min(fits)
            .min(spec.segments.len());
        if window < 2 && spec.segments.len() > 1 {
            tracing::info!(
                free,
                "not prefetching WAL: too little free space beside pg_wal; recovery reads the archive one segment at a time"
            );
            return Ok(None);
        }
        let window = window.max(1);
        // This process may be root and pg_wal the data owner's: pg_wal is opened once, the
        // spool is created and opened relative to it, and every file operation in the spool
        // goes through that descriptor (no path is followed twice, no link written through).
        let dir = spec.pg_wal.join(SPOOL_DIR);
        let errno = |op: &'static str, p: &Path| {
            let p = p.to_owned();
            move |e: rustix::io::Errno| FsError::new(op, p, e.into())
        };
        let walfd = rustix::fs::open(
            &spec.pg_wal,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("open directory", &spec.pg_wal))?;
        remove_spool(&walfd);
        rustix::fs::mkdirat(&walfd, SPOOL_DIR, Mode::from_raw_mode(0o700))
            .map_err(errno("create directory", &dir))?;
        let dirfd = rustix::fs::openat(
            &walfd,
            SPOOL_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("open directory", &dir))?;
        rustix::fs::fchmod(&dirfd, Mode::from_raw_mode(0o700)).map_err(errno("chmod", &dir))?;
        if let Some((uid, gid)) = spec.owner {
            rustix::fs::fchown(&dirfd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(errno("chown", &dir))?;
        }
        let shared = Arc::new(Shared {
            archive: Archive::new(&spec.archive),
            dir,
            walfd,
            dirfd,
            segments: spec.segments,
            expect: spec.expect,
            owner: spec.owner,
            window,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        tracing::debug!(
            segments = shared.segments.len(),
            window,
            threads,
            "prefetching WAL for replay"
        );
        let threads = (0..threads.max(1))
            .map(|_| {
                let s = shared.clone();
                std::thread::spawn(move || s.work())
            })
            .collect();
        Ok(Some(Prefetcher { shared, threads }))
    }

    /// The spool directory `wal fetch --spool` reads.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Segments handed over from the spool so far (as far as the prefetcher has seen).
    pub fn taken(&self) -> usize {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.settle(&mut st);
        st.taken
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        remove_spool(&self.shared.walfd);
    }
}

/// Remove the spool in the pg_wal `walfd` is open on, through descriptors only: its entries
/// (plain files, or whatever took their place) unlinked, then the directory; a link or a file
/// in its place is unlinked.
fn remove_spool(walfd: &OwnedFd) {
    let spool = match rustix::fs::openat(
        walfd,
        SPOOL_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return,
        Err(_) => {
            let _ = rustix::fs::unlinkat(walfd, SPOOL_DIR, AtFlags::empty());
            return;
        }
    };
    if let Ok(dir) = rustix::fs::Dir::read_from(&spool) {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name != c"." && name != c".." {
                let _ = rustix::fs::unlinkat(&spool, name, AtFlags::empty());
            }
        }
    }
    let _ = rustix::fs::unlinkat(walfd, SPOOL_DIR, AtFlags::REMOVEDIR);
}

impl Shared {
    /// Note what recovery took: a spooled segment that is gone was handed over, and one below
    /// the newest handed over will never be asked for (recovery moved past it).
    fn settle(&self, st: &mut State) {
        // A segment PostgreSQL restored, from the spool or (a miss) from the archive, is kept in
        // pg_wal under its own name: everything up to the newest of those is behind recovery.
        let restored = (st.consumed..st.next).rev().find(|&i| {
            rustix::fs::statat(&self.walfd, &self.segments[i], AtFlags::SYMLINK_NOFOLLOW).is_ok()
        });
        if let Some(i) = restored {
            st.consumed = st.consumed.max(i + 1);
        }
        let gone: Vec<usize> = st
            .spooled
            .iter()
            .copied()
            .filter(|&i| {
                rustix::fs::statat(&self.dirfd, &self.segments[i], AtFlags::SYMLINK_NOFOLLOW)
                    .is_err_and(|e| e == rustix::io::Errno::NOENT)
            })
            .collect();
        for i in &gone {
            st.spooled.remove(i);
            st.taken += 1;
            st.consumed = st.consumed.max(i + 1);
        }
        let stale: Vec<usize> = st.spooled.range(..st.consumed).copied().collect();
        for i in stale {
            st.spooled.remove(&i);
            self.unlink(&self.segments[i]);
        }
    }

    /// The next index to fetch, waiting while the window is full; None when done or stopped.
    fn claim(&self) -> Option<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.settle(&mut st);
                st.next = st.next.max(st.consumed);
                if st.next >= self.segments.len() {
                    return None;
                }
                if st.next < st.consumed + self.window {
                    st.next += 1;
                    return Some(st.next - 1);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn work(&self) {
        while let Some(i) = self.claim() {
            let name = &self.segments[i];
            match self.fetch(name) {
                Ok(true) => {
                    let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    if i < st.consumed {
                        // Recovery went past it while it was being fetched.
                        self.unlink(name);
                    } else {
                        st.spooled.insert(i);
                    }
                }
                // Missing or damaged: `wal fetch` finds the same and says so itself.
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(segment = %name, error = %e, "not prefetched");
                }
            }
        }
    }

    fn unlink(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.dirfd, name, AtFlags::empty());
    }

    /// Fetch and check `name` into a new hidden file of the spool created with the data
    /// owner's mode and owner, then publish it under its own name.
    fn fetch(&self, name: &str) -> Result<bool, super::WalError> {
        let hidden = format!(".{name}.pgkeep-prefetch");
        let ctx = |op: &'static str, e: rustix::io::Errno| {
            FsError::new(op, self.dir.join(&hidden), e.into())
        };
        self.unlink(&hidden);
        let fd = rustix::fs::openat(
            &self.dirfd,
            &hidden,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| ctx("create", e))?;
        let result = (|| {
            if let Some((uid, gid)) = self.owner {
                rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(|e| ctx("chown", e))?;
            }
            let out = Stoppable {
                file: std::fs::File::from(fd),
                stop: &self.stop,
            };
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
            let outcome = self
                .archive
                .fetch_archived_into(name, &mut w, Some(self.expect))?;
            w.flush().fs_ctx("write", &self.dir.join(&hidden))?;
            // The server fsyncs pg_wal (this spool too) when it starts: have it written back.
            crate::fsutil::start_writeback(&w.get_ref().file);
            drop(w);
            if outcome == FetchOutcome::Missing {
                return Ok(false);
            }
            rustix::fs::renameat(&self.dirfd, &hidden, &self.dirfd, name)
                .map_err(|e| ctx("rename", e))?;
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            self.unlink(&hidden);
        }
        result
    }
}

/// A spool file being written that fails once the prefetcher is stopping, so a drop never
/// waits for a segment nobody will ask for.
struct Stoppable<'a> {
    file: std::fs::File,
    stop: &'a AtomicBool,
}

impl Write for Stoppable<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the prefetcher is stopping"));
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::PushOptions;

    /// A WAL-like 1 MiB segment `name` of system `sysid` (every page headed as PostgreSQL 15
    /// heads it), written into `dir`.
    fn segment(dir: &Path, name: &str, sysid: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, crate::walcheck::test_segment(name, 0xD110, sysid, None)).unwrap();
        p
    }

    fn spec(t: &Path, names: &[&str]) -> Spec {
        Spec {
            archive: t.join("arch"),
            pg_wal: t.join("pg_wal"),
            segments: names.iter().map(|s| s.to_string()).collect(),
            expect: Expect {
                system_identifier: Some(7),
                major: None,
            },
            segment_size: 16 << 20,
            owner: None,
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn spooled_segments_are_the_archived_ones_bounded_and_handed_over_by_rename() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("arch")).unwrap();
        std::fs::create_dir(t.path().join("pg_wal")).unwrap();
        std::fs::create_dir(t.path().join("src")).unwrap();
        let a = Archive::new(t.path().join("arch"));
        let names: Vec<String> = (1..=12u32)
            .map(|n| format!("0000000100000000{n:08X}"))
            .collect();
        let mut originals = Vec::new();
        for n in &names {
            let p = segment(&t.path().join("src"), n, 7);
            originals.push(std::fs::read(&p).unwrap());
            a.push(&p, PushOptions::default()).unwrap();
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let spec = Spec {
            segment_size: 32 << 20, // a window of 4
            ..spec(t.path(), &refs)
        };
        let p = Prefetcher::start(spec, 2).unwrap().expect("started");
        let spool = p.dir().to_owned();
        let listed = || {
            let mut v: Vec<String> = std::fs::read_dir(&spool)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            v
        };
        wait_for("the window", || listed().len() == 4);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            listed(),
            names[..4],
            "the window holds the next four, no more"
        );
        // Recovery takes the first: byte for byte the archived segment.
        let dest = t.path().join("pg_wal/RECOVERYXLOG");
        assert!(take(&spool, &names[0], &dest).unwrap());
        assert!(std::fs::read(&dest).unwrap() == originals[0]);
        wait_for("the window to move", || listed() == names[1..5]);
        // Recovery skips ahead (fetched segment 7 itself): what is below is dropped.
        assert!(take(&spool, &names[3], &dest).unwrap());
        assert!(std::fs::read(&dest).unwrap() == originals[3]);
        wait_for("the stale ones to go", || listed() == names[4..8]);
        // Recovery restored segment 6 from the archive (a miss: PostgreSQL keeps it in pg_wal
        // under its name): the window moves past it although nothing was taken.
        std::fs::write(t.path().join("pg_wal").join(&names[5]), b"restored").unwrap();
        wait_for("the window to follow recovery", || listed() == names[6..10]);
        // A miss is only a miss: history files, other timelines, names past the list.
        assert!(!take(&spool, "00000002.history", &dest).unwrap());
        assert!(!take(&spool, "000000020000000000000005", &dest).unwrap());
        assert!(!take(&spool, "00000001000000000000000F", &dest).unwrap());
        assert_eq!(p.taken(), 2);
        drop(p);
        assert!(!spool.exists(), "dropping removes the spool");
    }

    #[test]
    fn a_segment_of_another_system_or_a_damaged_one_is_never_spooled() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("arch")).unwrap();
        std::fs::create_dir(t.path().join("pg_wal")).unwrap();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
        ];
        // 1: another system's; 2: plain copy cut short; 3: good.
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let other = segment(&src, names[0], 99);
        std::fs::copy(&other, t.path().join("arch").join(names[0])).unwrap();
        let cut = segment(&src, names[1], 7);
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(t.path().join("arch").join(names[1]), &bytes[..8192]).unwrap();
        let good = segment(&src, names[2], 7);
        Archive::new(t.path().join("arch"))
            .push(&good, PushOptions::default())
            .unwrap();
        let p = Prefetcher::start(spec(t.path(), &names), 1)
            .unwrap()
            .unwrap();
        let spool = p.dir().to_owned();
        wait_for("the good one", || spool.join(names[2]).exists());
        let mut left: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [names[2]], "only the good segment, no temporaries");
    }

    #[test]
    fn the_window_is_a_bounded_number_of_bytes() {
        assert_eq!(window_for(16 << 20), 8);
        assert_eq!(window_for(1 << 20), 64);
        assert_eq!(window_for(1 << 30), 2);
    }
}
