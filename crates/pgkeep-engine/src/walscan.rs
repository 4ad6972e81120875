//! Restore points, commit times and damaged records in archived WAL, read before recovery
//! starts: a `--target-name` that is not in the WAL recovery will replay, a `--target-time` after
//! the last archived commit, or a record whose CRC fails (PostgreSQL takes it as the end of the
//! WAL) would otherwise be found only after PGDATA was given up.
//!
//! A minimal WAL record reader: segments are fed in order, page headers are dropped (a page's
//! payload continues the previous page's), and records are cut out by their `xl_tot_len` at
//! MAXALIGNed positions. Only the record header (`XLogRecord`: tot_len, xid, prev, info, rmid,
//! crc = 24 bytes) and the main-data header that follows it are interpreted, and each whole
//! record's CRC-32C is checked (over the data, then the header up to `xl_crc`, as PostgreSQL
//! computes it); nothing is replayed. Page headers are checked by [`crate::walcheck`]. After a
//! switch the rest of the segment is unused; where the stream cannot be followed (a segment that
//! was not fed) the reader waits for the next page that starts a record. A record length that
//! makes no sense where a record must start is damage, as for PostgreSQL.

use crate::wal::Lsn;
use crate::walcheck::{LONG_HEADER_LEN, SHORT_HEADER_LEN, XLOG_BLCKSZ, parse_header};

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const RECORD_HEADER_LEN: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// XLOG_XACT_COMMIT, _ABORT, _COMMIT_PREPARED and _ABORT_PREPARED (`info & XLOG_XACT_OPMASK`):
/// the records PostgreSQL compares a recovery_target_time with. Each starts its main data with
/// the transaction's end time.
const XLOG_XACT_ENDS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];
const XLOG_XACT_OPMASK: u8 = 0x70;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// What the records read so far hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Restore point names and where their records start, in WAL order (a name may occur more
    /// than once).
    pub restore_points: Vec<(String, Lsn)>,
    /// The newest commit or abort time seen.
    pub last_xact_end: Option<jiff::Timestamp>,
    /// The first record that fails its CRC or has an impossible length, and what is wrong.
    pub damaged: Option<(Lsn, &'static str)>,
}

/// Reads records from segments fed in WAL order. See the module docs.
#[derive(Debug, Default)]
pub struct RecordScanner {
    /// Unparsed bytes of the record stream, starting at a record boundary.
    buf: Vec<u8>,
    /// (position in `buf`, WAL location of that byte), one per page appended.
    marks: Vec<(usize, u64)>,
    /// No record boundary is known: wait for a page that starts one.
    lost: bool,
    /// The current page being collected, and its offset in the segment.
    page: Vec<u8>,
    offset: u64,
    /// The rest of the current segment is unused (zeroed pages, or after a switch).
    segment_done: bool,
    found: Found,
}

impl RecordScanner {
    pub fn new() -> RecordScanner {
        RecordScanner {
            lost: true,
            ..RecordScanner::default()
        }
    }

    /// The next segment starts; `follows` is false when the one before it was not fed (the
    /// stream is broken there).
    pub fn begin_segment(&mut self, follows: bool) {
        if !follows {
            self.forget();
        }
        self.page.clear();
        self.offset = 0;
        self.segment_done = false;
    }

    /// The next bytes of the current segment.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (XLOG_BLCKSZ - self.page.len()).min(data.len());
            self.page.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.page.len() == XLOG_BLCKSZ {
                let page = std::mem::take(&mut self.page);
                self.read_page(&page);
                self.offset += XLOG_BLCKSZ as u64;
                self.page = page;
                self.page.clear();
            }
        }
    }

    pub fn found(&self) -> &Found {
        &self.found
    }

    /// Lose the thread: wait for a page that starts a record.
    fn forget(&mut self) {
        self.buf.clear();
        self.marks.clear();
        self.lost = true;
    }

    fn lsn_at(&self, pos: usize) -> Lsn {
        self.marks
            .iter()
            .rev()
            .find(|(p, _)| *p <= pos)
            .map(|(p, l)| Lsn(l + (pos - p) as u64))
            .unwrap_or_default()
    }

    fn damage(&mut self, pos: usize, what: &'static str) {
        if self.found.damaged.is_none() {
            self.found.damaged = Some((self.lsn_at(pos), what));
        }
    }

    fn read_page(&mut self, page: &[u8]) {
        if self.segment_done {
            return;
        }
        let first = self.offset == 0;
        let Some(h) = parse_header(page) else { return };
        if page[..SHORT_HEADER_LEN].iter().all(|b| *b == 0) {
            // Zeroed after a switch: nothing more in this segment.
            self.segment_done = true;
            self.forget();
            return;
        }
        if first && h.long.is_some_and(|l| l.page_size as usize != XLOG_BLCKSZ) {
            // A server built with another page size: not read (rare enough to leave out).
            self.segment_done = true;
            self.forget();
            return;
        }
        let hlen = if h.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        };
        let mut payload = &page[hlen.min(page.len())..];
        let mut skip = 0;
        if h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
            // The record in progress was abandoned (crash); a new one starts here.
            self.forget();
            self.lost = false;
        } else if self.lost {
            if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
                skip = maxalign(h.rem_len as usize);
                if skip >= payload.len() {
                    return;
                }
                payload = &payload[skip..];
            }
            self.lost = false;
        }
        self.marks
            .push((self.buf.len(), h.page_addr + (hlen + skip) as u64));
        self.buf.extend_from_slice(payload);
        self.parse_records();
    }

    fn parse_records(&mut self) {
        let mut pos = 0;
        loop {
            pos = maxalign(pos);
            if pos + 4 > self.buf.len() {
                break;
            }
            let tot =
                u32::from_le_bytes(self.buf[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            if !(RECORD_HEADER_LEN..=1 << 30).contains(&tot) {
                // A record must start here (a switch ends a segment's records explicitly).
                self.damage(pos, "has an impossible length");
                self.forget();
                return;
            }
            if pos + tot > self.buf.len() {
                break;
            }
            let rec = &self.buf[pos..pos + tot];
            let stored = u32::from_le_bytes(rec[20..24].try_into().expect("4 bytes"));
            if record_crc(rec) != stored {
                self.damage(pos, "fails its CRC");
                self.forget();
                return;
            }
            let (info, rmid) = (rec[16], rec[17]);
            if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_RESTORE_POINT {
                if let Some(name) = main_data(rec)
                    .filter(|d| d.len() > 8)
                    .map(|d| &d[8..])
                    .map(|n| n.split(|b| *b == 0).next().unwrap_or(n))
                {
                    let at = self.lsn_at(pos);
                    self.found
                        .restore_points
                        .push((String::from_utf8_lossy(name).into_owned(), at));
                }
            } else if rmid == RM_XACT_ID && XLOG_XACT_ENDS.contains(&(info & XLOG_XACT_OPMASK)) {
                if let Some(t) = main_data(rec)
                    .filter(|d| d.len() >= 8)
                    .and_then(|d| pg_time(i64::from_le_bytes(d[..8].try_into().ok()?)))
                {
                    self.found.last_xact_end =
                        Some(self.found.last_xact_end.map_or(t, |l| l.max(t)));
                }
            } else if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
                self.forget();
                self.segment_done = true;
                return;
            }
            pos += tot;
        }
        let pos = pos.min(self.buf.len());
        self.buf.drain(..pos);
        let keep_from = self.marks.iter().rposition(|(p, _)| *p <= pos).unwrap_or(0);
        self.marks.drain(..keep_from);
        for (p, l) in &mut self.marks {
            if *p < pos {
                *l += (pos - *p) as u64;
                *p = 0;
            } else {
                *p -= pos;
            }
        }
    }
}

/// A record's CRC-32C as PostgreSQL computes it: over the data after the header, then the
/// header up to the CRC field. On the CPU's CRC instructions (`crc-fast`, SSE4.2 / ARMv8 CRC):
/// a byte-at-a-time table made this check most of a bootstrap's WAL reading (~0.5 GB/s).
fn record_crc(rec: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&rec[RECORD_HEADER_LEN..]);
    d.update(&rec[..20]);
    d.finalize() as u32
}

/// CRC-32C (Castagnoli, reflected), the table computed at compile time: the reference the
/// tests hold [`record_crc`] to.
#[cfg(test)]
const CRC32C_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Continue a CRC-32C over `data` (start with `!0`, finish with `^ !0`), a byte at a time.
#[cfg(test)]
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for b in data {
        crc = CRC32C_TABLE[((crc ^ *b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// A record's main data: after the header, skip the origin and top-level xid headers; a block
/// reference (ids below 32) means this reader does not look further.
fn main_data(rec: &[u8]) -> Option<&[u8]> {
    let mut i = RECORD_HEADER_LEN;
    loop {
        match *rec.get(i)? {
            255 => {
                let len = *rec.get(i + 1)? as usize;
                return rec.get(i + 2..i + 2 + len);
            }
            254 => {
                let len = u32::from_le_bytes(rec.get(i + 1..i + 5)?.try_into().ok()?) as usize;
                return rec.get(i + 5..i + 5 + len);
            }
            253 => i += 3,
            252 => i += 5,
            _ => return None,
        }
    }
}

/// A TimestampTz (microseconds since 2000-01-01 UTC).
fn pg_time(micros: i64) -> Option<jiff::Timestamp> {
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let nanos = (micros.rem_euclid(1_000_000) * 1000) as i32;
    jiff::Timestamp::new(secs, nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 64 * 1024;

    /// Records laid out as PostgreSQL lays them out: in the payload of consecutive pages of
    /// 64 KiB segments (short headers, a long one first), continuation flags and rem_len set.
    fn wal(records: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(stream.len());
            stream.extend_from_slice(r);
            stream.resize(maxalign(stream.len()), 0);
        }
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < stream.len() || out.len() % SEG != 0 {
            let hlen = if out.len() % SEG == 0 {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            };
            let mut page = vec![0u8; XLOG_BLCKSZ];
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            // The record in progress at this page's start, if any.
            let inside = starts.iter().rposition(|s| *s < pos).filter(|i| {
                let end = starts[*i] + records[*i].len();
                end > pos
            });
            let mut info = if hlen == LONG_HEADER_LEN { 2u16 } else { 0 };
            if let Some(i) = inside {
                info |= XLP_FIRST_IS_CONTRECORD;
                let rem = (starts[i] + records[i].len() - pos) as u32;
                page[16..20].copy_from_slice(&rem.to_le_bytes());
            }
            page[2..4].copy_from_slice(&info.to_le_bytes());
            page[8..16].copy_from_slice(&(out.len() as u64).to_le_bytes());
            if hlen == LONG_HEADER_LEN {
                page[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            }
            let n = (XLOG_BLCKSZ - hlen).min(stream.len().saturating_sub(pos));
            page[hlen..hlen + n].copy_from_slice(&stream[pos..pos + n]);
            pos += n;
            out.extend_from_slice(&page);
        }
        out
    }

    fn record(rmid: u8, info: u8, data: &[u8], filler: usize) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_LEN];
        if filler > 0 {
            // A block reference's worth of bytes is not modelled: a long main data instead.
            r.push(254);
            r.extend_from_slice(&((data.len() + filler) as u32).to_le_bytes());
        } else {
            r.push(255);
            r.push(data.len() as u8);
        }
        r.extend_from_slice(data);
        r.extend(std::iter::repeat_n(0xAB, filler));
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        let crc = crc32c(crc32c(!0, &r[RECORD_HEADER_LEN..]), &r[..20]) ^ !0;
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    #[test]
    fn the_record_crc_is_postgresqls_crc32c() {
        // The check value of CRC-32C, and records of every length against the reference.
        assert_eq!(crc32c(!0, b"123456789") ^ !0, 0xE306_9283);
        let mut data = Vec::new();
        let mut x = 0x9E37_79B9u32;
        for len in (RECORD_HEADER_LEN..RECORD_HEADER_LEN + 300).chain([8192, 65_536]) {
            data.clear();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            let reference = crc32c(crc32c(!0, &data[RECORD_HEADER_LEN..]), &data[..20]) ^ !0;
            assert_eq!(record_crc(&data), reference, "length {len}");
        }
    }

    fn switch() -> Vec<u8> {
        record(RM_XLOG_ID, XLOG_SWITCH, &[], 0)
    }

    fn names(f: &Found) -> Vec<&str> {
        f.restore_points.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn restore_point(name: &str) -> Vec<u8> {
        let mut d = 123i64.to_le_bytes().to_vec();
        let mut n = [0u8; 64];
        n[..name.len()].copy_from_slice(name.as_bytes());
        d.extend_from_slice(&n);
        record(RM_XLOG_ID, XLOG_RESTORE_POINT, &d, 0)
    }

    fn commit(micros: i64) -> Vec<u8> {
        record(RM_XACT_ID, 0x00, &micros.to_le_bytes(), 0)
    }

    fn scan(segments: &[&[u8]]) -> Found {
        let mut s = RecordScanner::new();
        for seg in segments {
            s.begin_segment(true);
            for piece in seg.chunks(5000) {
                s.feed(piece);
            }
        }
        s.found().clone()
    }

    #[test]
    fn restore_points_and_commits_are_found_across_pages_and_segments() {
        let big = |n| record(10, 0, &[], n);
        let records = vec![
            commit(1_000_000),
            big(40_000),
            restore_point("before-migration"),
            big(7_000),
            commit(86_400_000_000),
            big(40_000),
            restore_point("after"),
            restore_point("before-migration"),
            big(60_000),
            commit(2_000_000),
            switch(),
        ];
        let data = wal(&records);
        assert!(data.len() > 2 * SEG, "spans several segments");
        let segs: Vec<&[u8]> = data.chunks(SEG).collect();
        let f = scan(&segs);
        assert_eq!(names(&f), ["before-migration", "after", "before-migration"]);
        assert_eq!(f.damaged, None);
        // Where each restore point's record starts: after the long header and two records.
        let first_rp = (LONG_HEADER_LEN + maxalign(records[0].len())) as u64
            + maxalign(records[1].len()) as u64
            + 4 * SHORT_HEADER_LEN as u64;
        assert_eq!(f.restore_points[0].1, Lsn(first_rp));
        assert_eq!(
            f.last_xact_end,
            Some("2000-01-02T00:00:00Z".parse().unwrap())
        );
        // Starting in the middle (the backup's start segment): the continued record is skipped.
        let f = scan(&segs[1..]);
        assert!(names(&f).contains(&"after"), "{f:?}");
        assert_eq!(f.damaged, None);
    }

    #[test]
    fn a_damaged_record_is_found_where_it_starts() {
        let records = vec![commit(1), record(10, 0, &[], 20_000), commit(2), switch()];
        let mut data = wal(&records);
        let second = (LONG_HEADER_LEN + maxalign(records[0].len())) as u64;
        // A flipped bit in the middle of the big record (on its third page).
        data[2 * XLOG_BLCKSZ + 500] ^= 0x04;
        let f = scan(&[&data]);
        assert_eq!(f.damaged, Some((Lsn(second), "fails its CRC")));
        // An impossible length where a record must start.
        let mut data = wal(&records);
        data[LONG_HEADER_LEN..LONG_HEADER_LEN + 4].copy_from_slice(&3u32.to_le_bytes());
        let f = scan(&[&data]);
        assert_eq!(
            f.damaged,
            Some((Lsn(LONG_HEADER_LEN as u64), "has an impossible length"))
        );
    }

    #[test]
    fn a_switch_ends_the_segment_and_the_next_one_is_read() {
        let mut first = wal(&[
            restore_point("one"),
            record(RM_XLOG_ID, XLOG_SWITCH, &[], 0),
        ]);
        // Garbage after the switch record is never read as records.
        first[3 * XLOG_BLCKSZ + 100] = 0x77;
        let second = wal(&[restore_point("two"), switch()]);
        let f = scan(&[&first, &second]);
        assert_eq!(names(&f), ["one", "two"]);
        assert_eq!(f.damaged, None);
        // A missing segment between them: the reader picks up at the next record start.
        let mut s = RecordScanner::new();
        s.begin_segment(true);
        s.feed(&first);
        s.begin_segment(false);
        s.feed(&second);
        assert_eq!(names(s.found()), ["one", "two"]);
    }

    #[test]
    fn main_data_skips_origin_and_toplevel_xid_headers() {
        let mut r = vec![0u8; RECORD_HEADER_LEN];
        r.extend_from_slice(&[253, 1, 0, 252, 9, 9, 9, 9, 255, 3, b'a', b'b', b'c']);
        assert_eq!(main_data(&r), Some(&b"abc"[..]));
        r[RECORD_HEADER_LEN] = 0; // a block reference
        assert_eq!(main_data(&r), None);
        assert_eq!(pg_time(0), Some("2000-01-01T00:00:00Z".parse().unwrap()));
    }
}
