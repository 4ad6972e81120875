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

mod archive;
mod name;
pub mod prefetch;

pub use archive::*;
pub use name::*;

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
