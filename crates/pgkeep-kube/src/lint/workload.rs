//! Untyped views of workloads for the rules: the pod spec inside any workload kind, its
//! containers with their effective security settings, volumes and mounts, and what an image
//! reference says about the postgres image it names.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::ObjectRef;

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

pub fn arr<'a>(v: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> {
    at(v, path).and_then(|a| a.as_array()).into_iter().flatten()
}

pub fn object_ref(doc: &Value) -> ObjectRef {
    ObjectRef {
        kind: str_at(doc, &["kind"]).unwrap_or("(no kind)").to_owned(),
        namespace: str_at(doc, &["metadata", "namespace"]).map(str::to_owned),
        name: str_at(doc, &["metadata", "name"])
            .unwrap_or("(no name)")
            .to_owned(),
    }
}

/// The pod spec of a workload document, if it has one.
pub fn pod_spec(doc: &Value) -> Option<&Value> {
    match str_at(doc, &["kind"])? {
        "Pod" => at(doc, &["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            at(doc, &["spec", "template", "spec"])
        }
        "CronJob" => at(doc, &["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Lexically normalised absolute path (no trailing slash, no `.`/`..`).
pub fn norm(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// What backs a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// A PersistentVolumeClaim, or a StatefulSet's volumeClaimTemplate.
    Claim,
    /// Deleted with the pod.
    EmptyDir,
    /// A directory of the node the pod runs on.
    HostPath,
    /// An NFS export mounted directly.
    Nfs,
    ConfigMap,
    /// Anything else (secret, projected, csi, ...), or a mount naming no volume.
    Other,
}

/// One volume of a pod.
#[derive(Debug, Clone)]
pub struct Volume<'a> {
    pub name: &'a str,
    pub kind: VolumeKind,
    /// The claim name when the volume is a PersistentVolumeClaim (or a claim template).
    pub claim: Option<&'a str>,
    pub config_map: Option<&'a str>,
}

pub fn volumes(pod: &Value) -> Vec<Volume<'_>> {
    arr(pod, &["volumes"])
        .map(|v| {
            let claim = str_at(v, &["persistentVolumeClaim", "claimName"]);
            let config_map = str_at(v, &["configMap", "name"]);
            let kind = if claim.is_some() {
                VolumeKind::Claim
            } else if v.get("emptyDir").is_some() {
                VolumeKind::EmptyDir
            } else if v.get("hostPath").is_some() {
                VolumeKind::HostPath
            } else if v.get("nfs").is_some() {
                VolumeKind::Nfs
            } else if config_map.is_some() {
                VolumeKind::ConfigMap
            } else {
                VolumeKind::Other
            };
            Volume {
                name: str_at(v, &["name"]).unwrap_or(""),
                kind,
                claim,
                config_map,
            }
        })
        .collect()
}

/// The volumes of a workload document: its pod's, plus a StatefulSet's volumeClaimTemplates
/// (claims named after the template).
pub fn workload_volumes(doc: &Value) -> Vec<Volume<'_>> {
    let mut out = pod_spec(doc).map(volumes).unwrap_or_default();
    for t in arr(doc, &["spec", "volumeClaimTemplates"]) {
        if let Some(name) = str_at(t, &["metadata", "name"])
            && !out.iter().any(|v| v.name == name)
        {
            out.push(Volume {
                name,
                kind: VolumeKind::Claim,
                claim: Some(name),
                config_map: None,
            });
        }
    }
    out
}

/// One volume mount of a container, with its volume resolved.
#[derive(Debug, Clone)]
pub struct Mount<'a> {
    pub volume: &'a str,
    pub path: PathBuf,
    pub kind: VolumeKind,
    pub claim: Option<&'a str>,
    pub config_map: Option<&'a str>,
    /// `subPath`: the mount shows a subdirectory of the volume, not its root.
    pub sub_path: Option<&'a str>,
    pub read_only: bool,
}

impl Mount<'_> {
    /// Storage that outlives the pod.
    pub fn persistent(&self) -> bool {
        matches!(
            self.kind,
            VolumeKind::Claim | VolumeKind::HostPath | VolumeKind::Nfs
        )
    }

    /// What the mount shows: the claim, else the pod volume (two volumes naming one claim
    /// are the same storage).
    pub fn storage(&self) -> String {
        match self.claim {
            Some(c) => format!("claim {c}"),
            None => format!("volume {}", self.volume),
        }
    }

    /// `volume `data` (claim pgdata-big)` for messages.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            VolumeKind::Claim => self.claim.map(|c| format!(" (claim {c})")),
            VolumeKind::EmptyDir => Some(" (emptyDir)".to_owned()),
            VolumeKind::HostPath => Some(" (hostPath)".to_owned()),
            VolumeKind::Nfs => Some(" (nfs)".to_owned()),
            _ => None,
        };
        format!("volume `{}`{}", self.volume, what.unwrap_or_default())
    }
}

/// A container (regular or init) with the pod-level settings it inherits.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    pub name: &'a str,
    /// An init container (runs to completion before the pod's containers start).
    pub init: bool,
    pub image: &'a str,
    pub raw: &'a Value,
    pub pod: &'a Value,
    pub mounts: Vec<Mount<'a>>,
}

impl<'a> Container<'a> {
    fn sc(&self, key: &str) -> Option<&'a Value> {
        at(self.raw, &["securityContext", key]).or_else(|| at(self.pod, &["securityContext", key]))
    }

    /// runAsUser: the container's, else the pod's.
    pub fn run_as_user(&self) -> Option<i64> {
        self.sc("runAsUser").and_then(|v| v.as_i64())
    }

    pub fn run_as_non_root(&self) -> bool {
        self.sc("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true)
    }

    pub fn seccomp_type(&self) -> Option<&'a str> {
        self.sc("seccompProfile")
            .and_then(|v| v.get("type"))
            .and_then(|v| v.as_str())
    }

    pub fn own_sc(&self, key: &str) -> Option<&'a Value> {
        at(self.raw, &["securityContext", key])
    }

    pub fn caps(&self, which: &str) -> Vec<String> {
        at(self.raw, &["securityContext", "capabilities", which])
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
            .collect()
    }

    /// A literal env value.
    pub fn env(&self, name: &str) -> Option<&'a str> {
        arr(self.raw, &["env"])
            .find(|e| str_at(e, &["name"]) == Some(name))
            .and_then(|e| str_at(e, &["value"]))
    }

    /// command + args as one list of words.
    pub fn argv(&self) -> Vec<&'a str> {
        arr(self.raw, &["command"])
            .chain(arr(self.raw, &["args"]))
            .filter_map(|v| v.as_str())
            .collect()
    }

    pub fn image_info(&self) -> ImageInfo {
        ImageInfo::parse(self.image)
    }

    /// Runs `pgkeep serve` (PostgreSQL with pgkeep's archiving settings).
    pub fn runs_pgkeep_serve(&self) -> bool {
        let argv = self.argv();
        argv.iter().any(|w| w.ends_with("pgkeep")) && argv.contains(&"serve")
    }

    /// A container that works on PostgreSQL data: the postgres image, a pgkeep image, or one
    /// that sets PGDATA.
    pub fn is_postgres(&self) -> bool {
        let i = self.image_info();
        i.official_postgres || i.pgkeep || self.env("PGDATA").is_some()
    }

    /// PGDATA as this container sees it: the env var, else the image's default.
    pub fn pgdata(&self) -> Option<PathBuf> {
        if let Some(p) = self.env("PGDATA") {
            return Some(norm(p));
        }
        let i = self.image_info();
        if i.official_postgres {
            return Some(match i.major {
                Some(m) if m >= 18 => norm(&format!("/var/lib/postgresql/{m}/docker")),
                _ => norm("/var/lib/postgresql/data"),
            });
        }
        if i.pgkeep {
            return Some(norm("/var/lib/postgresql/data"));
        }
        None
    }

    /// The mount PGDATA lives on: the deepest mount whose path holds PGDATA.
    pub fn data_mount(&self) -> Option<&Mount<'a>> {
        let pgdata = self.pgdata()?;
        self.mounts
            .iter()
            .filter(|m| pgdata.starts_with(&m.path))
            .max_by_key(|m| m.path.components().count())
    }

    /// Words of command + args split on whitespace and shell separators, for recognising
    /// what a container runs.
    fn words(&self) -> Vec<&'a str> {
        self.argv()
            .into_iter()
            .flat_map(|w| w.split(|c: char| c.is_whitespace() || ";&|()`$\"'".contains(c)))
            .filter(|w| !w.is_empty())
            .collect()
    }

    /// Runs the PostgreSQL server (or initdb) on PGDATA: a postgres-family container that
    /// keeps the image's command, starts the entrypoint, `postgres`, `pg_ctl start` or
    /// `pgkeep serve`. A container that only runs client tools (pg_dump, pg_basebackup, a
    /// backup loop) or mounts its data volume read-only is a sidecar, not the server.
    pub fn runs_server(&self) -> bool {
        if self.init || !self.is_postgres() {
            return false;
        }
        if self.data_mount().is_some_and(|m| m.read_only) {
            return false;
        }
        let argv = self.argv();
        let has_command = at(self.raw, &["command"]).is_some_and(|c| !c.is_null());
        if !has_command {
            // The image's entrypoint runs with the args: the postgres image's treats options
            // (`-c ...`) as options to postgres, the pgkeep image's default is `serve`.
            match argv.first() {
                None => return true,
                Some(a) if self.image_info().pgkeep => return *a == "serve",
                Some(a) if a.starts_with('-') => return true,
                Some(_) => {}
            }
        }
        if self.image_info().pgkeep || argv.iter().any(|w| w.ends_with("pgkeep")) {
            return self.runs_pgkeep_serve();
        }
        let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
        let words = self.words();
        let first = base(argv[0]);
        first == "postgres"
            || first == "postmaster"
            || words.iter().any(|w| {
                let b = base(w);
                b == "docker-entrypoint.sh" || b == "postmaster"
            })
            || words
                .windows(2)
                .any(|p| p[0] == "exec" && base(p[1]) == "postgres")
            || (words.iter().any(|w| base(w) == "pg_ctl") && words.contains(&"start"))
    }
}

/// The containers (init first) of a pod whose volumes are `vols`.
pub fn containers<'a>(pod: &'a Value, vols: &[Volume<'a>]) -> Vec<Container<'a>> {
    let mut out = Vec::new();
    for key in ["initContainers", "containers"] {
        for c in arr(pod, &[key]) {
            let mounts = arr(c, &["volumeMounts"])
                .map(|m| {
                    let volume = str_at(m, &["name"]).unwrap_or("");
                    let v = vols.iter().find(|v| v.name == volume);
                    Mount {
                        volume,
                        path: norm(str_at(m, &["mountPath"]).unwrap_or("/")),
                        kind: v.map(|v| v.kind).unwrap_or(VolumeKind::Other),
                        claim: v.and_then(|v| v.claim),
                        config_map: v.and_then(|v| v.config_map),
                        sub_path: str_at(m, &["subPath"])
                            .or_else(|| str_at(m, &["subPathExpr"]))
                            .filter(|p| !p.trim_matches('/').is_empty()),
                        read_only: m.get("readOnly").and_then(|v| v.as_bool()) == Some(true),
                    }
                })
                .collect();
            out.push(Container {
                name: str_at(c, &["name"]).unwrap_or("(no name)"),
                init: key == "initContainers",
                image: str_at(c, &["image"]).unwrap_or(""),
                raw: c,
                pod,
                mounts,
            });
        }
    }
    out
}

/// What an image reference says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    /// The Docker official `postgres` image (any registry path ending in `library/postgres`).
    pub official_postgres: bool,
    /// A pgkeep image (repository name contains `pgkeep`).
    pub pgkeep: bool,
    /// The major version from the tag (`16`, `16.4-alpine`, `17-bookworm` ...).
    pub major: Option<u32>,
    /// An Alpine variant (postgres uid 70 rather than 999).
    pub alpine: bool,
    /// The tag as written (`latest` when there is none).
    pub tag: String,
    /// Pinned by digest (`@sha256:...`): the same image on every pull.
    pub digest: bool,
}

impl ImageInfo {
    pub fn parse(image: &str) -> ImageInfo {
        let no_digest = image.split('@').next().unwrap_or("");
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repo, tag) = match no_digest[last_slash..].rfind(':') {
            Some(i) => (
                &no_digest[..last_slash + i],
                &no_digest[last_slash + i + 1..],
            ),
            None => (no_digest, "latest"),
        };
        let official = matches!(
            repo,
            "postgres" | "library/postgres" | "docker.io/postgres" | "docker.io/library/postgres"
        ) || repo.ends_with("/library/postgres");
        let digits: String = tag.chars().take_while(|c| c.is_ascii_digit()).collect();
        let last = repo.rsplit('/').next().unwrap_or(repo);
        ImageInfo {
            official_postgres: official,
            pgkeep: last.contains("pgkeep"),
            major: digits.parse().ok(),
            alpine: tag.contains("alpine"),
            tag: tag.to_owned(),
            digest: image.contains('@'),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn image_references() {
        let i = ImageInfo::parse("postgres:16");
        assert!(i.official_postgres && i.major == Some(16) && !i.alpine);
        let i = ImageInfo::parse("docker.io/library/postgres:17.2-alpine3.20");
        assert!(i.official_postgres && i.major == Some(17) && i.alpine);
        let i = ImageInfo::parse("postgres:15-bookworm@sha256:abcd");
        assert_eq!(i.major, Some(15));
        let i = ImageInfo::parse("localhost:5000/postgres:16");
        assert!(
            !i.official_postgres,
            "a private repository named postgres is not the official image"
        );
        let i = ImageInfo::parse("mirror.gcr.io/library/postgres:14");
        assert!(i.official_postgres);
        let i = ImageInfo::parse("postgres");
        assert!(i.official_postgres && i.major.is_none() && i.tag == "latest" && !i.digest);
        let i = ImageInfo::parse("postgres:alpine@sha256:abcd");
        assert!(i.official_postgres && i.major.is_none() && i.digest);
        let i = ImageInfo::parse("registry.example:5000/team/pgkeep:0.1.0-pg18");
        assert!(i.pgkeep && !i.official_postgres);
        let i = ImageInfo::parse("bitnami/postgresql:16");
        assert!(!i.official_postgres);
    }

    #[test]
    fn which_container_runs_the_server() {
        let cases: &[(&str, serde_json::Value, bool)] = &[
            ("image default", json!({"image": "postgres:16"}), true),
            (
                "options for the entrypoint",
                json!({"image": "postgres:16", "args": ["-c", "shared_buffers=1GB"]}),
                true,
            ),
            (
                "postgres with options",
                json!({"image": "postgres:16", "args": ["postgres", "-c", "fsync=on"]}),
                true,
            ),
            (
                "a wrapper script that execs the entrypoint",
                json!({"image": "postgres:16", "command": ["sh", "-c", "ulimit -n 4096; exec docker-entrypoint.sh postgres"]}),
                true,
            ),
            (
                "a dump loop naming the postgres user",
                json!({"image": "postgres:16", "command": ["sh", "-c", "while true; do pg_dump -U postgres app > /b/x; sleep 60; done"]}),
                false,
            ),
            (
                "a client through the entrypoint",
                json!({"image": "postgres:16", "args": ["pg_dumpall", "-h", "db"]}),
                false,
            ),
            ("pgkeep's default", json!({"image": "pgkeep:1-pg18"}), true),
            (
                "pgkeep serve as args",
                json!({"image": "pgkeep:1-pg18", "args": ["serve"]}),
                true,
            ),
            (
                "a pgkeep job",
                json!({"image": "pgkeep:1-pg18", "command": ["pgkeep", "backup", "logical"]}),
                false,
            ),
            (
                "the data volume read-only",
                json!({"image": "postgres:16", "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data", "readOnly": true}]}),
                false,
            ),
            ("another image", json!({"image": "busybox"}), false),
        ];
        for (what, c, want) in cases {
            let mut c = c.clone();
            c["name"] = json!("c");
            let pod = json!({"containers": [c.clone()], "initContainers": [c]});
            let vols = volumes(&pod);
            let cs = containers(&pod, &vols);
            assert!(!cs[0].runs_server(), "{what}: an init container never is");
            assert_eq!(cs[1].runs_server(), *want, "{what}");
        }
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(
            norm("/var/lib/postgresql/"),
            PathBuf::from("/var/lib/postgresql")
        );
        assert_eq!(
            norm("/var/lib/./postgresql/data/../data"),
            PathBuf::from("/var/lib/postgresql/data")
        );
    }
}
