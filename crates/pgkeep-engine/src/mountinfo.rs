//! `/proc/self/mountinfo`, parsed, and the mount guard built on it.
//!
//! The guard answers one question before anything is written: is PGDATA a plain subdirectory of
//! the data volume? It refuses when PGDATA is a mount point of its own (the seed's double mount,
//! or the anonymous volume a postgres image up to 17 puts over `/var/lib/postgresql/data` because
//! of its `VOLUME` line) and when PGDATA sits on a different mount than the volume root.
//! Parsing is a pure function of the text so it is tested on recorded mountinfo.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line} of mountinfo is malformed: {text}")]
    Malformed { line: usize, text: String },
    #[error("no mount covers {0} (is /proc mounted?)")]
    NotCovered(PathBuf),
    #[error(
        "PGDATA {pgdata} is not inside the volume root {pgroot}\nhint: set PGDATA to a subdirectory of the data volume (the default is {pgroot}/data)"
    )]
    OutsideRoot { pgdata: PathBuf, pgroot: PathBuf },
    #[error("{0}")]
    Refused(Box<GuardReport>),
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The directory of the filesystem that is mounted here (a bind mount's source subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, dev {}, subtree {}) mounted at {} [mount id {}]",
            self.source,
            self.fstype,
            self.dev,
            self.root.display(),
            self.mount_point.display(),
            self.id
        )
    }
}

/// Decode mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the text of a mountinfo file.
pub fn parse(text: &str) -> Result<Vec<Mount>, GuardError> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || GuardError::Malformed {
            line: n + 1,
            text: line.to_owned(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(malformed)?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(malformed());
        }
        mounts.push(Mount {
            id: fields[0].parse().map_err(|_| malformed())?,
            parent: fields[1].parse().map_err(|_| malformed())?,
            dev: fields[2].to_owned(),
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_owned(),
            source: unescape(fields[sep + 2]),
        });
    }
    Ok(mounts)
}

/// Read and parse this process's mountinfo.
pub fn read_self() -> Result<Vec<Mount>, GuardError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| GuardError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text)
}

/// The mount that `path` (absolute, normalised) lives on: the deepest mount point that is a
/// prefix of it; of several mounts on the same point, the last (topmost) one.
pub fn covering<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// Every mount whose mount point is `path` itself (a stack, bottom first).
pub fn mounted_at<'a>(mounts: &'a [Mount], path: &Path) -> Vec<&'a Mount> {
    mounts.iter().filter(|m| m.mount_point == path).collect()
}

/// Resolve a path that may not exist yet: canonicalise the deepest existing ancestor and append
/// the rest (lexically normalised).
pub fn resolve_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalise(&out);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return normalise(path),
        }
    }
}

fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What the guard found.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    pub pgroot: PathBuf,
    pub pgdata: PathBuf,
    pub root_mount: Mount,
    pub data_mount: Mount,
    /// Mounts stacked exactly on PGDATA (empty when PGDATA is a plain directory).
    pub on_pgdata: Vec<Mount>,
    pub problem: Option<GuardProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardProblem {
    /// PGDATA is a mount point of its own.
    DataIsMountPoint,
    /// PGDATA sits on another mount than the volume root.
    DifferentMount,
}

impl GuardReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }

    /// One line: the verdict.
    pub fn verdict(&self) -> String {
        match self.problem {
            None => format!(
                "ok: PGDATA {} is a plain directory on the data volume mounted at {}",
                self.pgdata.display(),
                self.root_mount.mount_point.display()
            ),
            Some(GuardProblem::DataIsMountPoint) => format!(
                "refused: PGDATA {} is a mount point of its own",
                self.pgdata.display()
            ),
            Some(GuardProblem::DifferentMount) => format!(
                "refused: PGDATA {} is on a different mount than the volume root {}",
                self.pgdata.display(),
                self.pgroot.display()
            ),
        }
    }
}

impl std::fmt::Display for GuardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.verdict())?;
        writeln!(
            f,
            "  volume root {} is on: {}",
            self.pgroot.display(),
            self.root_mount
        )?;
        writeln!(
            f,
            "  PGDATA {} is on: {}",
            self.pgdata.display(),
            self.data_mount
        )?;
        for m in &self.on_pgdata {
            writeln!(f, "  mounted at PGDATA: {m}")?;
        }
        if self.problem.is_some() {
            writeln!(
                f,
                "why: PGDATA must be a plain subdirectory of the data volume. A volume mounted at PGDATA itself (the volume \
                 mounted twice, at the root and at PGDATA, or the anonymous volume a postgres image up to 17 puts there because \
                 it declares VOLUME /var/lib/postgresql/data) cannot be emptied by initdb, and data written there can live on \
                 a volume that disappears with the container."
            )?;
            write!(
                f,
                "fix: mount the data volume only at {} and keep PGDATA={} as its subdirectory; with postgres images up to 17 \
                 use a postgres 18+ image or a PGDATA in another subdirectory of the volume. Nothing was written.",
                self.pgroot.display(),
                self.pgdata.display()
            )?;
        }
        Ok(())
    }
}

/// Check PGDATA against the volume root using the given mounts.
pub fn check(mounts: &[Mount], pgroot: &Path, pgdata: &Path) -> Result<GuardReport, GuardError> {
    let pgroot = resolve_path(pgroot);
    let pgdata = resolve_path(pgdata);
    if !pgdata.starts_with(&pgroot) || pgdata == pgroot {
        return Err(GuardError::OutsideRoot { pgdata, pgroot });
    }
    let root_mount = covering(mounts, &pgroot)
        .ok_or_else(|| GuardError::NotCovered(pgroot.clone()))?
        .clone();
    let data_mount = covering(mounts, &pgdata)
        .ok_or_else(|| GuardError::NotCovered(pgdata.clone()))?
        .clone();
    let on_pgdata: Vec<Mount> = mounted_at(mounts, &pgdata).into_iter().cloned().collect();
    let problem = if !on_pgdata.is_empty() {
        Some(GuardProblem::DataIsMountPoint)
    } else if data_mount.id != root_mount.id {
        Some(GuardProblem::DifferentMount)
    } else {
        None
    };
    Ok(GuardReport {
        pgroot,
        pgdata,
        root_mount,
        data_mount,
        on_pgdata,
        problem,
    })
}

/// The guard on this process's mounts: Ok with the report, or `GuardError::Refused`.
pub fn guard(pgroot: &Path, pgdata: &Path) -> Result<GuardReport, GuardError> {
    let report = check(&read_self()?, pgroot, pgdata)?;
    if report.ok() {
        Ok(report)
    } else {
        Err(GuardError::Refused(Box::new(report)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded in a pod whose data PVC is mounted at /var/lib/postgresql and, wrongly, again at
    // /var/lib/postgresql/data (the seed's double mount).
    const DOUBLE: &str = "\
1771 1654 0:412 / / rw,relatime master:560 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1772 1771 0:414 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1790 1771 253:1 /var/lib/kubelet/pods/ab/volumes/kubernetes.io~csi/pvc-1/mount /var/lib/postgresql rw,relatime - ext4 /dev/vdb rw
1791 1790 253:1 /var/lib/kubelet/pods/ab/volumes/kubernetes.io~csi/pvc-1/mount /var/lib/postgresql/data rw,relatime - ext4 /dev/vdb rw
1792 1771 0:420 / /var/run/postgresql rw,relatime - tmpfs tmpfs rw
";

    // postgres:16 with the volume at the parent: containerd's anonymous volume over data.
    const SHADOW: &str = "\
2001 1900 0:500 / / rw,relatime - overlay overlay rw
2002 2001 253:1 /pvc-1 /var/lib/postgresql rw,relatime - ext4 /dev/vdb rw
2003 2002 253:0 /var/lib/containerd/io.containerd.grpc.v1.cri/containers/c1/volumes/6f3a /var/lib/postgresql/data rw,relatime - ext4 /dev/vda1 rw
";

    const GOOD: &str = "\
2001 1900 0:500 / / rw,relatime - overlay overlay rw
2002 2001 253:1 /pvc-1 /var/lib/postgresql rw,relatime - ext4 /dev/vdb rw
2004 2001 253:2 /pvc-2 /wal\\040archive rw,relatime - ext4 /dev/vdc rw
";

    fn check_text(text: &str) -> GuardReport {
        let mounts = parse(text).unwrap();
        // Paths that do not exist on the test machine resolve lexically.
        check(
            &mounts,
            Path::new("/var/lib/postgresql"),
            Path::new("/var/lib/postgresql/data"),
        )
        .unwrap()
    }

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].id, 2002);
        assert_eq!(m[1].parent, 2001);
        assert_eq!(m[1].dev, "253:1");
        assert_eq!(m[1].root, Path::new("/pvc-1"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/vdb");
        assert_eq!(m[2].mount_point, Path::new("/wal archive"));
    }

    #[test]
    fn optional_fields_are_skipped() {
        let m = parse("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n").unwrap();
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].source, "/dev/root");
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(
            parse("1 2 3\n"),
            Err(GuardError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn good_layout_passes() {
        let r = check_text(GOOD);
        assert!(r.ok(), "{r}");
        assert_eq!(r.root_mount.id, 2002);
        assert_eq!(r.data_mount.id, 2002);
    }

    #[test]
    fn double_mount_is_refused_and_names_both_mounts() {
        let r = check_text(DOUBLE);
        assert_eq!(r.problem, Some(GuardProblem::DataIsMountPoint));
        let text = r.to_string();
        assert!(text.contains("mount id 1790"), "{text}");
        assert!(text.contains("mount id 1791"), "{text}");
        assert!(text.contains("fix:"), "{text}");
    }

    #[test]
    fn image_volume_shadowing_is_refused() {
        let r = check_text(SHADOW);
        assert_eq!(r.problem, Some(GuardProblem::DataIsMountPoint));
        assert!(
            r.to_string().contains("VOLUME"),
            "explains the image VOLUME pitfall"
        );
    }

    #[test]
    fn a_mount_between_root_and_pgdata_is_refused() {
        let text = format!("{GOOD}2005 2002 0:600 / /var/lib/postgresql rw - tmpfs tmpfs rw\n");
        // The topmost mount on the root wins; PGDATA is under it, so still the same mount.
        assert!(check_text(&text).ok());
        let mounts = parse(GOOD).unwrap();
        let r = check(
            &mounts,
            Path::new("/var/lib"),
            Path::new("/var/lib/postgresql/data"),
        )
        .unwrap();
        assert_eq!(r.problem, Some(GuardProblem::DifferentMount));
    }

    #[test]
    fn pgdata_must_be_below_the_root() {
        let mounts = parse(GOOD).unwrap();
        for pgdata in [
            "/var/lib/postgresql",
            "/srv/data",
            "/var/lib/postgresql/../x",
        ] {
            let err =
                check(&mounts, Path::new("/var/lib/postgresql"), Path::new(pgdata)).unwrap_err();
            assert!(
                matches!(err, GuardError::OutsideRoot { .. }),
                "{pgdata}: {err}"
            );
        }
    }

    #[test]
    fn reads_this_process() {
        let mounts = read_self().unwrap();
        assert!(covering(&mounts, Path::new("/")).is_some());
    }
}
