//! Does an archived WAL segment belong where its name puts it? Pure parsing of WAL page headers
//! (`XLogPageHeaderData` / `XLogLongPageHeaderData`, src/include/access/xlog_internal.h) and a
//! streaming checker that `wal fetch` and the recovery prepare phase feed a segment through.
//!
//! PostgreSQL takes a page whose header does not fit (wrong magic, another system's identifier,
//! an unexpected page address) as the END of the WAL: with no recovery target it promotes there
//! and every later commit is silently gone. So a segment is checked before PostgreSQL sees it:
//!
//! - the first page has a long header: the magic of the server's major (or, when the major is
//!   unknown, one of the known magics), the system identifier of the cluster being recovered,
//!   a possible segment size and page size;
//! - every page's address (`xlp_pageaddr`) is the segment's start plus the page's offset, its
//!   timeline is at most the file name's and never goes down, its flags are known ones;
//! - after a switch PostgreSQL zeroes the rest of the segment, so all-zero pages may follow the
//!   last written one, but nothing may follow them; a first page of zeros is a zero-filled file;
//! - the file holds exactly the segment size its own long header declares.
//!
//! Only headers are read (one per 8 KiB page), never records.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::wal::{self, ArchivedFile, Lsn, WalError, WalKind};

/// The default WAL page size (XLOG_BLCKSZ).
pub const XLOG_BLCKSZ: usize = 8192;
/// Bytes of a short page header (SizeOfXLogShortPHD, MAXALIGNed).
pub const SHORT_HEADER_LEN: usize = 24;
/// Bytes of a long page header (SizeOfXLogLongPHD).
pub const LONG_HEADER_LEN: usize = 40;

const XLP_LONG_HEADER: u16 = 0x0002;
/// XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER | XLP_BKP_REMOVABLE |
/// XLP_FIRST_IS_OVERWRITE_CONTRECORD (0x0008, since the 2021 fix back-patched to every
/// supported major).
const XLP_ALL_FLAGS: u16 = 0x000F;

/// XLOG_PAGE_MAGIC of each major pgkeep knows (src/include/access/xlog_internal.h).
pub const KNOWN_MAGICS: [(u32, u16); 4] = [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)];

/// The page magic of a PostgreSQL major, when known.
pub fn magic_for_major(major: u32) -> Option<u16> {
    KNOWN_MAGICS
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, magic)| *magic)
}

/// What the segment must match: the system being recovered and its major, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub system_identifier: Option<u64>,
    pub major: Option<u32>,
}

impl Expect {
    fn magic_ok(&self, magic: u16) -> bool {
        match self.major.and_then(magic_for_major) {
            Some(m) => magic == m,
            // A major newer than this pgkeep knows: its own magic, of the same family.
            None if self.major.is_some_and(|m| m > 18) => magic & 0xFF00 == 0xD100,
            None => KNOWN_MAGICS.iter().any(|(_, m)| *m == magic),
        }
    }

    fn magic_wanted(&self) -> String {
        match self.major.and_then(magic_for_major) {
            Some(m) => format!("0x{m:04X} (PostgreSQL {})", self.major.unwrap_or(0)),
            None => KNOWN_MAGICS
                .iter()
                .map(|(v, m)| format!("0x{m:04X} (PostgreSQL {v})"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// One page header, as stored (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_addr: u64,
    pub rem_len: u32,
    /// The long header's fields (first page of a segment).
    pub long: Option<LongHeader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub system_identifier: u64,
    pub seg_size: u32,
    pub page_size: u32,
}

/// Parse a page header from at least [`SHORT_HEADER_LEN`] bytes (a long one needs
/// [`LONG_HEADER_LEN`]). None when too short.
pub fn parse_header(b: &[u8]) -> Option<PageHeader> {
    if b.len() < SHORT_HEADER_LEN {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let info = u16_at(2);
    let long = if info & XLP_LONG_HEADER != 0 {
        if b.len() < LONG_HEADER_LEN {
            return None;
        }
        Some(LongHeader {
            system_identifier: u64_at(24),
            seg_size: u32_at(32),
            page_size: u32_at(36),
        })
    } else {
        None
    };
    Some(PageHeader {
        magic: u16_at(0),
        info,
        timeline: u32_at(4),
        page_addr: u64_at(8),
        rem_len: u32_at(16),
        long,
    })
}

/// Why a segment does not belong where its name puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    ZeroFilled,
    NoLongHeader,
    BadMagic {
        offset: u64,
        found: u16,
        wanted: String,
    },
    ForeignSystem {
        found: u64,
        wanted: u64,
    },
    BadSegmentSize(u32),
    BadPageSize(u32),
    BadFlags {
        offset: u64,
        info: u16,
    },
    WrongAddress {
        offset: u64,
        found: Lsn,
        wanted: Lsn,
    },
    WrongTimeline {
        offset: u64,
        found: u32,
        file: u32,
    },
    HeaderAfterZeros {
        offset: u64,
    },
    Length {
        total: u64,
        declared: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match self {
            ZeroFilled => write!(
                f,
                "its first page is all zeros: a zero-filled or preallocated file, not archived WAL"
            ),
            NoLongHeader => write!(
                f,
                "its first page lacks the long header every segment starts with"
            ),
            BadMagic {
                offset,
                found,
                wanted,
            } => write!(
                f,
                "the page at byte {offset} has magic 0x{found:04X}, expected {wanted}: not WAL of this server's PostgreSQL major, or damaged"
            ),
            ForeignSystem { found, wanted } => write!(
                f,
                "it is WAL of database system {found}, not of system {wanted}, the one being recovered"
            ),
            BadSegmentSize(s) => write!(
                f,
                "its header declares an impossible segment size of {s} bytes"
            ),
            BadPageSize(s) => write!(
                f,
                "its header declares an impossible WAL page size of {s} bytes"
            ),
            BadFlags { offset, info } => {
                write!(
                    f,
                    "the page at byte {offset} has unknown header flags 0x{info:04X}"
                )
            }
            WrongAddress {
                offset,
                found,
                wanted,
            } => write!(
                f,
                "the page at byte {offset} holds WAL location {found}, but under this name it must be {wanted} (a segment copied or renamed to the wrong name, or damaged)"
            ),
            WrongTimeline {
                offset,
                found,
                file,
            } => write!(
                f,
                "the page at byte {offset} is on timeline {found}, which does not fit a file of timeline {file}"
            ),
            HeaderAfterZeros { offset } => write!(
                f,
                "the page at byte {offset} follows zero-filled pages (WAL after a hole: damaged)"
            ),
            Length { total, declared } => write!(
                f,
                "it holds {total} bytes, but its header declares {declared}-byte segments (truncated or padded copy)"
            ),
        }
    }
}

/// A segment that does not belong where its name puts it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is not WAL segment {name} of the system being recovered: {problem}\nhint: recovery must not read it (PostgreSQL would take it as the end of the WAL and lose every later commit); put the right segment there (from the server's pg_wal or another copy of the archive), or recover to a target before it"
)]
pub struct SegmentError {
    pub path: PathBuf,
    pub name: String,
    pub problem: Problem,
}

/// What a checked segment declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub system_identifier: u64,
    pub seg_size: u64,
    pub magic: u16,
}

/// Checks a segment fed through it in pieces of any size. See the module docs.
#[derive(Debug)]
pub struct SegmentChecker {
    timeline: u32,
    log: u32,
    seg: u32,
    expect: Expect,
    offset: u64,
    page_size: u64,
    head: Vec<u8>,
    info: Option<SegmentInfo>,
    zeros_from: Option<u64>,
    last_timeline: u32,
}

impl SegmentChecker {
    /// A checker for the segment `name` (a WAL segment name; None for any other name).
    pub fn new(name: &str, expect: Expect) -> Option<SegmentChecker> {
        let w = wal::parse_name(name).filter(|w| w.kind == WalKind::Segment)?;
        Some(SegmentChecker {
            timeline: w.timeline,
            log: w.log,
            seg: w.seg,
            expect,
            offset: 0,
            page_size: XLOG_BLCKSZ as u64,
            head: Vec::with_capacity(LONG_HEADER_LEN),
            info: None,
            zeros_from: None,
            last_timeline: 0,
        })
    }

    /// Feed the next bytes of the segment.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Problem> {
        while !data.is_empty() {
            let in_page = (self.offset % self.page_size) as usize;
            let hlen = if self.offset < self.page_size {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            };
            let n = if in_page < hlen {
                let n = (hlen - in_page).min(data.len());
                self.head.extend_from_slice(&data[..n]);
                if self.head.len() == hlen {
                    let page_start = self.offset + n as u64 - hlen as u64;
                    self.page(page_start)?;
                    self.head.clear();
                }
                n
            } else {
                (self.page_size as usize - in_page).min(data.len())
            };
            self.offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn page(&mut self, offset: u64) -> Result<(), Problem> {
        let head = &self.head;
        if offset == 0 {
            return self.first_page();
        }
        let info = self.info.expect("the first page came first");
        if head[..SHORT_HEADER_LEN].iter().all(|b| *b == 0) {
            self.zeros_from.get_or_insert(offset);
            return Ok(());
        }
        if self.zeros_from.is_some() {
            return Err(Problem::HeaderAfterZeros { offset });
        }
        let h = parse_header(head).expect("a whole short header");
        if h.magic != info.magic {
            return Err(Problem::BadMagic {
                offset,
                found: h.magic,
                wanted: format!("0x{:04X} (as on the first page)", info.magic),
            });
        }
        if h.info & !XLP_ALL_FLAGS != 0 || h.info & XLP_LONG_HEADER != 0 {
            return Err(Problem::BadFlags {
                offset,
                info: h.info,
            });
        }
        self.page_common(&h, offset, info.seg_size)
    }

    fn first_page(&mut self) -> Result<(), Problem> {
        if self.head.iter().all(|b| *b == 0) {
            return Err(Problem::ZeroFilled);
        }
        let h = parse_header(&self.head).expect("a whole long header");
        if !self.expect.magic_ok(h.magic) {
            return Err(Problem::BadMagic {
                offset: 0,
                found: h.magic,
                wanted: self.expect.magic_wanted(),
            });
        }
        if h.info & !XLP_ALL_FLAGS != 0 {
            return Err(Problem::BadFlags {
                offset: 0,
                info: h.info,
            });
        }
        let Some(long) = h.long else {
            return Err(Problem::NoLongHeader);
        };
        if let Some(wanted) = self.expect.system_identifier
            && long.system_identifier != wanted
        {
            return Err(Problem::ForeignSystem {
                found: long.system_identifier,
                wanted,
            });
        }
        if !wal::valid_segment_size(long.seg_size as u64) {
            return Err(Problem::BadSegmentSize(long.seg_size));
        }
        let ps = long.page_size as u64;
        if !(ps.is_power_of_two() && (1024..=65536).contains(&ps) && ps < long.seg_size as u64) {
            return Err(Problem::BadPageSize(long.page_size));
        }
        self.page_size = ps;
        let info = SegmentInfo {
            system_identifier: long.system_identifier,
            seg_size: long.seg_size as u64,
            magic: h.magic,
        };
        self.info = Some(info);
        self.page_common(&h, 0, info.seg_size)
    }

    fn page_common(&mut self, h: &PageHeader, offset: u64, seg_size: u64) -> Result<(), Problem> {
        let per_log = 0x1_0000_0000 / seg_size;
        let wanted = Lsn((self.log as u64 * per_log + self.seg as u64) * seg_size + offset);
        if h.page_addr != wanted.0 {
            return Err(Problem::WrongAddress {
                offset,
                found: Lsn(h.page_addr),
                wanted,
            });
        }
        if h.timeline == 0 || h.timeline > self.timeline || h.timeline < self.last_timeline {
            return Err(Problem::WrongTimeline {
                offset,
                found: h.timeline,
                file: self.timeline,
            });
        }
        self.last_timeline = h.timeline;
        Ok(())
    }

    /// The segment has ended: it must hold exactly the declared size.
    pub fn finish(self) -> Result<SegmentInfo, Problem> {
        let Some(info) = self.info else {
            // Not even one whole header.
            return if self.head.iter().all(|b| *b == 0) {
                Err(Problem::ZeroFilled)
            } else {
                Err(Problem::Length {
                    total: self.offset,
                    declared: 0,
                })
            };
        };
        if self.offset != info.seg_size {
            return Err(Problem::Length {
                total: self.offset,
                declared: info.seg_size,
            });
        }
        Ok(info)
    }
}

/// Check a whole segment in memory (for tests and small callers).
pub fn check_bytes(name: &str, data: &[u8], expect: Expect) -> Result<SegmentInfo, Problem> {
    let mut c = SegmentChecker::new(name, expect).ok_or(Problem::NoLongHeader)?;
    c.feed(data)?;
    c.finish()
}

/// Decompress and check one archived segment, writing nothing.
pub fn check_archived(file: &ArchivedFile, expect: Expect) -> Result<SegmentInfo, WalError> {
    check_archived_observed(file, expect, |_| {})
}

/// [`check_archived`], handing every decompressed piece to `observe` as well (in order).
pub fn check_archived_observed(
    file: &ArchivedFile,
    expect: Expect,
    mut observe: impl FnMut(&[u8]),
) -> Result<SegmentInfo, WalError> {
    let err = |problem| {
        WalError::from(SegmentError {
            path: file.path.clone(),
            name: file.name.clone(),
            problem,
        })
    };
    let Some(mut checker) = SegmentChecker::new(&file.name, expect) else {
        return Err(WalError::NotWalName {
            name: file.name.clone(),
        });
    };
    let mut r = wal::open_decompressed(&file.path, file.compression)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(WalError::Corrupt {
                    path: file.path.clone(),
                    message: e.to_string(),
                });
            }
        };
        checker.feed(&buf[..n]).map_err(err)?;
        observe(&buf[..n]);
    }
    checker.finish().map_err(err)
}

/// The system identifier and major of the data directory `pgdata` (the first 8 bytes of
/// global/pg_control are the system identifier; PG_VERSION holds the major). Missing parts are
/// None.
pub fn expect_from_pgdata(pgdata: &Path) -> Expect {
    let system_identifier = std::fs::File::open(pgdata.join("global/pg_control"))
        .ok()
        .and_then(|mut f| {
            let mut b = [0u8; 8];
            f.read_exact(&mut b).ok().map(|_| u64::from_le_bytes(b))
        })
        .filter(|s| *s != 0);
    let major = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Expect {
        system_identifier,
        major,
    }
}

/// The segment size of [`test_segment`].
#[cfg(test)]
pub(crate) const TEST_SEG: usize = 1 << 20;

/// A WAL-like segment `name` of 1 MiB: every page headed like PostgreSQL heads it, the
/// pages from `zero_from` on zeroed (as after a switch).
#[cfg(test)]
pub(crate) fn test_segment(name: &str, magic: u16, sys: u64, zero_from: Option<usize>) -> Vec<u8> {
    let w = wal::parse_name(name).unwrap();
    let start = w.segment_no(TEST_SEG as u64) * TEST_SEG as u64;
    let mut data = vec![0u8; TEST_SEG];
    for (i, page) in data.chunks_mut(XLOG_BLCKSZ).enumerate() {
        if zero_from.is_some_and(|z| i >= z) {
            continue;
        }
        page[0..2].copy_from_slice(&magic.to_le_bytes());
        page[2..4].copy_from_slice(&(if i == 0 { 0x0002u16 } else { 0x0001 }).to_le_bytes());
        page[4..8].copy_from_slice(&w.timeline.to_le_bytes());
        page[8..16].copy_from_slice(&(start + (i * XLOG_BLCKSZ) as u64).to_le_bytes());
        if i == 0 {
            page[24..32].copy_from_slice(&sys.to_le_bytes());
            page[32..36].copy_from_slice(&(TEST_SEG as u32).to_le_bytes());
            page[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
        }
        for (j, b) in page.iter_mut().enumerate().skip(64) {
            *b = (i * 7 + j) as u8;
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 1 << 20;
    const SYS: u64 = 7_300_000_000_000_000_001;

    use super::test_segment as segment;

    fn pg15() -> Expect {
        Expect {
            system_identifier: Some(SYS),
            major: Some(15),
        }
    }

    const NAME: &str = "000000010000000000000023";

    #[test]
    fn a_segment_that_belongs_passes_in_pieces_of_any_size() {
        let data = segment(NAME, 0xD110, SYS, Some(100));
        for piece in [1, 7, 24, 40, 1000, 8192, 65536, SEG] {
            let mut c = SegmentChecker::new(NAME, pg15()).unwrap();
            for chunk in data.chunks(piece) {
                c.feed(chunk).unwrap();
            }
            let info = c.finish().unwrap();
            assert_eq!(info.system_identifier, SYS, "{piece}");
            assert_eq!(info.seg_size, SEG as u64);
        }
        // Without a system identifier or a major, any known magic and system pass.
        check_bytes(NAME, &segment(NAME, 0xD116, 42, None), Expect::default()).unwrap();
        // A major pgkeep does not know yet: its own magic of the same family.
        let pg19 = Expect {
            system_identifier: None,
            major: Some(19),
        };
        check_bytes(NAME, &segment(NAME, 0xD121, SYS, None), pg19).unwrap();
    }

    #[test]
    fn segments_that_do_not_belong_are_named_with_the_reason() {
        use Problem::*;
        let good = segment(NAME, 0xD110, SYS, None);
        let check = |d: &[u8]| check_bytes(NAME, d, pg15()).unwrap_err();
        assert_eq!(check(&vec![0u8; SEG]), ZeroFilled);
        assert!(matches!(
            check(&segment(NAME, 0xD113, SYS, None)),
            BadMagic {
                offset: 0,
                found: 0xD113,
                ..
            }
        ));
        assert_eq!(
            check(&segment(NAME, 0xD110, 99, None)),
            ForeignSystem {
                found: 99,
                wanted: SYS
            }
        );
        // Another segment's content under this name (same system).
        let other = segment("000000010000000000000024", 0xD110, SYS, None);
        assert!(matches!(check(&other), WrongAddress { offset: 0, .. }));
        // A higher timeline's content under a timeline-1 name.
        let tl2 = segment("000000020000000000000023", 0xD110, SYS, None);
        assert!(matches!(
            check(&tl2),
            WrongTimeline {
                offset: 0,
                found: 2,
                file: 1
            }
        ));
        // Cut short, padded, a page zeroed in the middle, a page header damaged.
        assert_eq!(
            check(&good[..SEG / 2]),
            Length {
                total: SEG as u64 / 2,
                declared: SEG as u64
            }
        );
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 100]);
        assert!(matches!(check(&padded), Length { .. }));
        let mut holed = good.clone();
        holed[5 * XLOG_BLCKSZ..6 * XLOG_BLCKSZ].fill(0);
        assert_eq!(
            check(&holed),
            HeaderAfterZeros {
                offset: 6 * XLOG_BLCKSZ as u64
            }
        );
        let mut flipped = good.clone();
        flipped[9 * XLOG_BLCKSZ + 9] ^= 0x10;
        assert!(matches!(check(&flipped), WrongAddress { .. }));
        let mut magic = good.clone();
        magic[3 * XLOG_BLCKSZ] ^= 1;
        assert!(
            matches!(check(&magic), BadMagic { offset, .. } if offset == 3 * XLOG_BLCKSZ as u64)
        );
        let mut flags = good.clone();
        flags[2 * XLOG_BLCKSZ + 2] = 0x10;
        assert!(matches!(check(&flags), BadFlags { .. }));
        let mut short = good.clone();
        short[2] = 0x01;
        assert_eq!(check(&short), NoLongHeader);
        assert_eq!(check(&[]), ZeroFilled);
        assert!(matches!(check(&good[..30]), Length { .. }));
        // Not a segment name at all: no checker.
        assert!(SegmentChecker::new("00000002.history", pg15()).is_none());
    }

    #[test]
    fn a_segment_starting_a_timeline_may_begin_with_the_parents_pages() {
        // 000000020000000000000023 after a promotion: copied from timeline 1 up to the switch,
        // then timeline 2's pages.
        let mut data = segment("000000020000000000000023", 0xD110, SYS, None);
        for page in data.chunks_mut(XLOG_BLCKSZ).take(10) {
            page[4..8].copy_from_slice(&1u32.to_le_bytes());
        }
        check_bytes("000000020000000000000023", &data, pg15()).unwrap();
        // But the timeline never goes back down.
        data[20 * XLOG_BLCKSZ + 4] = 1;
        assert!(matches!(
            check_bytes("000000020000000000000023", &data, pg15()).unwrap_err(),
            Problem::WrongTimeline { found: 1, .. }
        ));
    }

    #[test]
    fn headers_parse() {
        let data = segment(NAME, 0xD110, SYS, None);
        let h = parse_header(&data).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.timeline, 1);
        assert_eq!(h.page_addr, 0x23 * SEG as u64);
        assert_eq!(
            h.long,
            Some(LongHeader {
                system_identifier: SYS,
                seg_size: SEG as u32,
                page_size: 8192
            })
        );
        let p2 = parse_header(&data[XLOG_BLCKSZ..]).unwrap();
        assert_eq!(p2.long, None);
        assert_eq!(p2.page_addr, 0x23 * SEG as u64 + 8192);
        assert!(parse_header(&data[..20]).is_none());
        assert!(
            parse_header(&data[..30]).is_none(),
            "a long header needs 40 bytes"
        );
        assert_eq!(magic_for_major(15), Some(0xD110));
        assert_eq!(magic_for_major(18), Some(0xD118));
        assert_eq!(magic_for_major(14), None);
    }

    #[test]
    fn pg_control_gives_the_system_and_pg_version_the_major() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(expect_from_pgdata(t.path()), Expect::default());
        std::fs::create_dir(t.path().join("global")).unwrap();
        let mut control = SYS.to_le_bytes().to_vec();
        control.extend_from_slice(&[0u8; 100]);
        std::fs::write(t.path().join("global/pg_control"), control).unwrap();
        std::fs::write(t.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(expect_from_pgdata(t.path()), pg15());
    }
}
