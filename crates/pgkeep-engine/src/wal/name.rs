//! WAL file names and LSNs: pure parsing and formatting (CloudNativePG `pkg/postgres/wal.go`
//! style, table-driven tests in `wal`).

use super::*;

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

pub(super) fn hex8(s: &str) -> Option<u32> {
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
pub(super) fn segs_per_log(seg_size: u64) -> u64 {
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
