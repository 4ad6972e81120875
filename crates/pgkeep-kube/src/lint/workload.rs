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

/// One volume of a pod.
#[derive(Debug, Clone)]
pub struct Volume<'a> {
    pub name: &'a str,
    /// The claim name when the volume is a PersistentVolumeClaim.
    pub claim: Option<&'a str>,
    pub config_map: Option<&'a str>,
}

pub fn volumes(pod: &Value) -> Vec<Volume<'_>> {
    arr(pod, &["volumes"])
        .map(|v| Volume {
            name: str_at(v, &["name"]).unwrap_or(""),
            claim: str_at(v, &["persistentVolumeClaim", "claimName"]),
            config_map: str_at(v, &["configMap", "name"]),
        })
        .collect()
}

/// One volume mount of a container, with its volume resolved.
#[derive(Debug, Clone)]
pub struct Mount<'a> {
    pub volume: &'a str,
    pub path: PathBuf,
    pub claim: Option<&'a str>,
    pub config_map: Option<&'a str>,
}

impl Mount<'_> {
    /// Storage that outlives the pod.
    pub fn persistent(&self) -> bool {
        self.claim.is_some()
    }
}

/// A container (regular or init) with the pod-level settings it inherits.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    pub name: &'a str,
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
}

pub fn containers(pod: &Value) -> Vec<Container<'_>> {
    let vols = volumes(pod);
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
                        claim: v.and_then(|v| v.claim),
                        config_map: v.and_then(|v| v.config_map),
                    }
                })
                .collect();
            out.push(Container {
                name: str_at(c, &["name"]).unwrap_or("(no name)"),
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
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(i.official_postgres && i.major.is_none());
        let i = ImageInfo::parse("registry.example:5000/team/pgkeep:0.1.0-pg18");
        assert!(i.pgkeep && !i.official_postgres);
        let i = ImageInfo::parse("bitnami/postgresql:16");
        assert!(!i.official_postgres);
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
