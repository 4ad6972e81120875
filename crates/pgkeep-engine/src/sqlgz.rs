//! `records.sql.gz` derived from `records.dir` without compressing the table data a second time.
//!
//! `pg_restore -f - records.dir` turns a directory-format dump into the plain SQL script (it needs
//! no database, and it is the same snapshot). Done naively, every table's data is decompressed
//! from its `NNNN.dat.gz` and compressed again, which costs as much CPU as the dump itself. But
//! pg_restore copies a table's data into the script byte for byte, and gzip members concatenate
//! (a `.gz` made of several members is one valid stream). So:
//!
//! 1. A shadow directory holds links to every file of the dump, except that each table-data file
//!    `NNNN.dat.gz` is replaced by a tiny uncompressed `NNNN.dat` holding one marker line (with a
//!    random nonce). pg_restore opens `NNNN.dat` first when it exists.
//! 2. `pg_restore -f - shadow` prints the script with a marker where each table's data goes. The
//!    text between markers (schema, COPY statements, large objects) is compressed into gzip
//!    members written to a small parts file.
//! 3. The result is a [`SqlGzPlan`]: text member, raw bytes of `NNNN.dat.gz`, text member, ...
//!    Its size is known before it is read, so it streams straight into the bundle's tar with no
//!    temporary copy of the whole `records.sql.gz`.
//!
//! Decompressed, the plan is byte-for-byte the output of `pg_restore -f - records.dir`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::fsutil::{FsError, IoContext};
use crate::tools::{PgBin, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum SqlGzError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "pg_restore printed a data marker for `{file}` that is not in the dump\nhint: this is a bug in pgkeep; please report it with the pg_restore version"
    )]
    UnknownMarker { file: String },
}

enum Segment {
    /// Bytes of the parts file (compressed text members), in order.
    Parts { len: u64 },
    /// A table-data file copied verbatim (already a gzip stream).
    File { path: PathBuf, len: u64 },
}

/// How to produce `records.sql.gz`: see the module docs.
pub struct SqlGzPlan {
    parts: PathBuf,
    segments: Vec<Segment>,
    size: u64,
    spliced: usize,
}

impl SqlGzPlan {
    /// Size in bytes of the `.sql.gz` stream.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many table-data files are spliced in verbatim.
    pub fn spliced(&self) -> usize {
        self.spliced
    }

    /// A reader producing the whole `.sql.gz` stream.
    pub fn reader(&self) -> Result<PlanReader<'_>, FsError> {
        let parts = File::open(&self.parts).fs_ctx("open", &self.parts)?;
        Ok(PlanReader {
            plan: self,
            parts: BufReader::with_capacity(1 << 16, parts),
            index: 0,
            current: None,
            left: 0,
        })
    }
}

/// Reads a [`SqlGzPlan`] front to back.
pub struct PlanReader<'a> {
    plan: &'a SqlGzPlan,
    parts: BufReader<File>,
    index: usize,
    current: Option<BufReader<File>>,
    left: u64,
}

impl Read for PlanReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.left > 0 {
                let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
                let n = match &mut self.current {
                    Some(f) => f.read(&mut buf[..want])?,
                    None => self.parts.read(&mut buf[..want])?,
                };
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a dump file became shorter while being archived",
                    ));
                }
                self.left -= n as u64;
                return Ok(n);
            }
            let Some(seg) = self.plan.segments.get(self.index) else {
                return Ok(0);
            };
            self.index += 1;
            match seg {
                Segment::Parts { len } => {
                    self.current = None;
                    self.left = *len;
                }
                Segment::File { path, len } => {
                    let f = File::open(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                    })?;
                    self.current = Some(BufReader::with_capacity(1 << 20, f));
                    self.left = *len;
                }
            }
        }
    }
}

/// A table-data file name of pg_dump's directory format: `NNNN.dat.gz` → `NNNN`.
fn table_data_id(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".dat.gz")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

fn nonce() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    h.update(format!("{:p}", &h as *const _).as_bytes());
    if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(b);
    }
    hex::encode(&h.finalize()[..16])
}

/// Counts bytes written through it.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Build the plan for the directory dump `dump_dir`, using `work` (an existing, private
/// directory on the same volume) for the shadow directory and the parts file.
pub fn prepare(pg: &PgBin, dump_dir: &Path, work: &Path) -> Result<SqlGzPlan, SqlGzError> {
    let shadow = work.join("splice.dir");
    let parts_path = work.join("splice.parts");
    std::fs::create_dir(&shadow).fs_ctx("create directory", &shadow)?;
    let marker = format!("\\pgkeep-splice-{}:", nonce());
    let dump_abs = std::fs::canonicalize(dump_dir).fs_ctx("resolve", dump_dir)?;
    let mut data_files: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir(&dump_abs).fs_ctx("read directory", &dump_abs)? {
        let entry = entry.fs_ctx("read directory", &dump_abs)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let src = entry.path();
        if let Some(id) = table_data_id(&name) {
            let len = entry.metadata().fs_ctx("stat", &src)?.len();
            let fake = shadow.join(format!("{id}.dat"));
            std::fs::write(&fake, format!("{marker}{id}\n")).fs_ctx("write", &fake)?;
            data_files.insert(id.to_owned(), (src, len));
        } else {
            // A hard link (the work directory is on the dump's volume), a copy where that is
            // refused. Not a symlink: pg_restore 15.20 refuses a toc.dat that is not a regular
            // file (15.18 followed the link; found by the e2e run on kubebox).
            let link = shadow.join(&name);
            if std::fs::hard_link(&src, &link).is_err() {
                std::fs::copy(&src, &link).fs_ctx("copy", &link)?;
            }
        }
    }

    let mut running = pg.cmd("pg_restore").arg("--file=-").arg(&shadow).spawn()?;
    let stdout = running.take_stdout().expect("stdout is piped");
    let mut input = BufReader::with_capacity(1 << 20, stdout);
    let parts_file = File::create(&parts_path).fs_ctx("create", &parts_path)?;
    let mut out = Some(Counting {
        inner: BufWriter::with_capacity(1 << 20, parts_file),
        count: 0,
    });
    let mut segments = Vec::new();
    let mut size = 0u64;
    let mut spliced = 0usize;
    let mut enc: Option<GzEncoder<Counting<BufWriter<File>>>> = None;
    let mut seg_start = 0u64;
    let mut line = Vec::with_capacity(1 << 16);
    let marker_bytes = marker.as_bytes();
    let read_err = |e: io::Error| FsError::new("read pg_restore output for", dump_dir, e);
    // Close the current text member, if any, and record it as a segment.
    let mut close = |enc: &mut Option<GzEncoder<Counting<BufWriter<File>>>>,
                     out: &mut Option<Counting<BufWriter<File>>>,
                     segments: &mut Vec<Segment>,
                     size: &mut u64|
     -> Result<(), FsError> {
        if let Some(e) = enc.take() {
            let c = e.finish().fs_ctx("write", &parts_path)?;
            let len = c.count - seg_start;
            seg_start = c.count;
            segments.push(Segment::Parts { len });
            *size += len;
            *out = Some(c);
        }
        Ok(())
    };
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line).map_err(read_err)?;
        if n == 0 {
            break;
        }
        if line.starts_with(marker_bytes) {
            let id = String::from_utf8_lossy(&line[marker_bytes.len()..])
                .trim_end()
                .to_owned();
            let Some((path, len)) = data_files.get(&id) else {
                return Err(SqlGzError::UnknownMarker { file: id });
            };
            close(&mut enc, &mut out, &mut segments, &mut size)?;
            segments.push(Segment::File {
                path: path.clone(),
                len: *len,
            });
            size += *len;
            spliced += 1;
            continue;
        }
        if enc.is_none() {
            let w = out.take().expect("writer is idle");
            enc = Some(GzEncoder::new(w, Compression::fast()));
        }
        let e = enc.as_mut().expect("just set");
        e.write_all(&line).fs_ctx("write", &parts_path)?;
    }
    close(&mut enc, &mut out, &mut segments, &mut size)?;
    let mut out = out.expect("writer is idle");
    out.flush().fs_ctx("write", &parts_path)?;
    drop(out);
    running.wait()?;
    std::fs::remove_dir_all(&shadow).fs_ctx("remove", &shadow)?;
    Ok(SqlGzPlan {
        parts: parts_path,
        segments,
        size,
        spliced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_table_data_files_only() {
        assert_eq!(table_data_id("3421.dat.gz"), Some("3421"));
        assert_eq!(table_data_id("toc.dat"), None);
        assert_eq!(table_data_id("blob_16385.dat.gz"), None);
        assert_eq!(table_data_id("blobs.toc"), None);
        assert_eq!(table_data_id(".dat.gz"), None);
        assert_eq!(table_data_id("3421.dat"), None);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 32);
    }
}
