//! The rules. Each has an id, a name, a default severity, a one-line summary and a
//! one-paragraph fix; [`check_all`] runs them over every document.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::load::Source;
use super::workload::{self, Container, VolumeKind, arr, at, norm, str_at};
use super::{Finding, Severity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    pub fix: &'static str,
}

pub const DATA_AT_PGDATA: Rule = Rule {
    id: "PGK001",
    name: "data-volume-at-pgdata",
    severity: Severity::Warning,
    summary: "The root of a volume is mounted at PGDATA itself (no subPath, no PGDATA \
              subdirectory): initdb refuses it when it holds lost+found.",
    fix: "Keep PGDATA a subdirectory of the volume: set PGDATA=/var/lib/postgresql/data/pgdata \
          (the official image's documented pattern), or add `subPath: postgres` to the mount, or \
          mount the volume at the parent (/var/lib/postgresql) with PGDATA=/var/lib/postgresql/data. \
          The root of an ext4-backed volume (most cloud block storage) holds lost+found, initdb \
          refuses a non-empty directory (`directory exists but is not empty`) and the pod \
          crash-loops on its first start; a mount point also cannot be removed or emptied by a \
          wipe. If the volume already holds a cluster at its root, scale to 0, move the files into \
          a subdirectory (or wipe and restore), then change PGDATA or the mount.",
};

pub const DOUBLE_MOUNT: Rule = Rule {
    id: "PGK002",
    name: "data-volume-mounted-twice",
    severity: Severity::Error,
    summary: "The same persistent volume is mounted twice in one container, one mount inside the other.",
    fix: "Mount each persistent volume once per container: the data volume only at \
          /var/lib/postgresql, never again at /var/lib/postgresql/data. The second mount makes \
          PGDATA a mount point (initdb cannot clear it) and shows the same files under two paths. \
          Remove the inner volumeMount (`kubectl patch` with the remaining mounts, as in the \
          seed's troubleshooting section), then wipe and restart if initdb already failed.",
};

pub const VOLUME_SHADOWING: Rule = Rule {
    id: "PGK003",
    name: "image-volume-shadowing",
    severity: Severity::Error,
    summary: "A postgres image up to 17 declares VOLUME /var/lib/postgresql/data; with the data \
              volume at the parent, an anonymous per-container volume hides it.",
    fix: "Use a postgres 18+ image (it declares VOLUME /var/lib/postgresql, so the data volume \
          covers it) or the pgkeep image, or set PGDATA to another subdirectory of the volume \
          (e.g. /var/lib/postgresql/pgdata). As it is, initdb succeeds on a container-local \
          anonymous volume and the database is silently lost at the next container restart \
          (docker-library/postgres#1163). Take a logical backup now if data was written.",
};

pub const ROOT_CONTAINER: Rule = Rule {
    id: "PGK004",
    name: "root-container",
    severity: Severity::Warning,
    summary: "A container runs as root with a writable persistent volume or with more than the \
              chown capabilities (the official image's entrypoint switches to postgres itself).",
    fix: "Run PostgreSQL, its init step and every Job as the data owner: set runAsUser and \
          runAsGroup to 999 (70 for Alpine images), runAsNonRoot: true, and fsGroup 999 on the \
          pod. The official image's entrypoint started as root chowns PGDATA and then runs the \
          server as postgres, which works on local and block storage; it breaks on a \
          root-squashed NFS export (root is mapped to nobody, the chown is denied, the pod \
          crash-loops), and root needs no access to the data. Only a step that chowns an \
          emptyDir (fix-run) may run as root, with capabilities drop: [ALL] and add: [CHOWN, \
          FOWNER], and without a persistent volume.",
};

pub const UID_MISMATCH: Rule = Rule {
    id: "PGK005",
    name: "uid-mismatch",
    severity: Severity::Warning,
    summary: "The runAsUser of a PostgreSQL container is not the image family's postgres uid \
              (or runAsNonRoot is set without one, on an image whose user is root).",
    fix: "Set runAsUser/runAsGroup/fsGroup to the uid of the image's postgres account: 999 for \
          the Debian-based postgres and pgkeep images, 70 for postgres:*-alpine. initdb refuses a \
          uid without an account, and files created under another uid cannot be read by the \
          next image version. If the volume already holds data of another uid, chown it once \
          (as root, from a one-off pod) before changing the uid.",
};

pub const PVC_IN_KUSTOMIZATION: Rule = Rule {
    id: "PGK006",
    name: "pvc-in-kustomization",
    severity: Severity::Error,
    summary: "A kustomization lists a file that holds a PersistentVolumeClaim.",
    fix: "Remove the PVC files from `resources` and create the claims only when missing (`pgkeep \
          pvc ensure`, part of `pgkeep deploy`). A bound claim is immutable, so applying a \
          changed size or class fails, and `kubectl delete -k` on the directory would delete the \
          claim and, with a Delete reclaim policy, the data. To grow, create a new claim with a \
          new name and migrate.",
};

pub const ROLLING_UPDATE: Rule = Rule {
    id: "PGK007",
    name: "rwo-rolling-update",
    severity: Severity::Error,
    summary: "A Deployment with a ReadWriteOnce data volume uses the RollingUpdate strategy \
              (the default).",
    fix: "Set `strategy: {type: Recreate}`. A rolling update starts the new pod before the old one \
          stops: on another node it waits forever for the ReadWriteOnce volume (Multi-Attach \
          error), on the same node two postmasters race for one data directory. Recreate stops \
          the old pod first.",
};

pub const REPLICAS: Rule = Rule {
    id: "PGK008",
    name: "multiple-replicas",
    severity: Severity::Error,
    summary: "A Deployment with a persistent data volume has more than one replica.",
    fix: "Set `replicas: 1`. All replicas of a Deployment share the same claim: the extra pods \
          either cannot attach it or run a second postmaster on the same data directory. For \
          read replicas use streaming replication with one volume per server.",
};

pub const CRON_TIMEZONE: Rule = Rule {
    id: "PGK009",
    name: "cronjob-without-timezone",
    severity: Severity::Warning,
    summary: "A CronJob has no spec.timeZone: its schedule runs in the controller manager's zone.",
    fix: "Set `spec.timeZone` (e.g. America/New_York for the seed's 06:00 ET backups) instead of \
          relying on the kube-controller-manager's zone (usually UTC, and it moves with DST \
          differently). `CRON_TZ=`/`TZ=` prefixes in the schedule are not supported. On clusters \
          older than 1.25 (batch/v1beta1) shift the schedule to UTC by hand and note it.",
};

pub const ARCHIVE_WITHOUT_VOLUME: Rule = Rule {
    id: "PGK010",
    name: "archive-without-volume",
    severity: Severity::Error,
    summary: "archive_mode is on but no persistent volume is mounted at the WAL archive path.",
    fix: "Mount the WAL archive claim (pg-wal-archive) at the archive directory (/wal-archive, or \
          PGKEEP_WAL_ARCHIVE) in the PostgreSQL container. Without it archive_command fails and \
          WAL piles up in pg_wal until the data volume is full, or it writes into the \
          container's own filesystem and the archive is lost with the pod, so point-in-time \
          recovery and base-backup restores break.",
};

pub const SECRET_LITERAL: Rule = Rule {
    id: "PGK011",
    name: "secret-literal-password",
    severity: Severity::Warning,
    summary: "A Secret in the files carries a literal password.",
    fix: "Remove the password from the file (and from version control history) and rotate it. \
          Let `pgkeep deploy` create the Secret with a random password when it is missing, or \
          create it from a secret manager (`kubectl create secret generic ... --from-file`); \
          keep only a template without data in the repository.",
};

pub const HARDENING: Rule = Rule {
    id: "PGK012",
    name: "missing-hardening",
    severity: Severity::Warning,
    summary: "A container lacks allowPrivilegeEscalation: false, capabilities drop ALL, or a \
              RuntimeDefault seccomp profile.",
    fix: "Give every container `securityContext: {allowPrivilegeEscalation: false, capabilities: \
          {drop: [ALL]}}` and the pod (or container) `seccompProfile: {type: RuntimeDefault}`; \
          never `privileged: true`. PostgreSQL and pgkeep need no capabilities when they run as \
          the data owner; a root chown step needs only CHOWN and FOWNER added back.",
};

pub const DATA_ON_EMPTYDIR: Rule = Rule {
    id: "PGK013",
    name: "data-not-persistent",
    severity: Severity::Error,
    summary: "PGDATA of a server container is on an emptyDir or on no volume at all: the \
              database is deleted with the pod.",
    fix: "Put PGDATA on a PersistentVolumeClaim (a Deployment's `persistentVolumeClaim` volume or \
          a StatefulSet's volumeClaimTemplates), mounted at /var/lib/postgresql with \
          PGDATA=/var/lib/postgresql/data. An emptyDir, the container's own filesystem and the \
          image's anonymous VOLUME all vanish when the pod is deleted, evicted or rescheduled \
          (a node drain, a rollout), and the next pod starts with an empty database. Take a \
          logical backup now if data was written.",
};

pub const HOSTPATH_UNPINNED: Rule = Rule {
    id: "PGK014",
    name: "hostpath-without-node-pin",
    severity: Severity::Warning,
    summary: "PGDATA is on a hostPath volume but the pod is not pinned to one node.",
    fix: "Use a PersistentVolumeClaim (a local PersistentVolume carries its node affinity), or pin \
          the pod to the node that holds the directory (`nodeSelector: {kubernetes.io/hostname: \
          NODE}` or a required nodeAffinity). On a multi-node cluster an unpinned pod can be \
          scheduled on another node, where it finds an empty directory and initializes a new, \
          empty database while the data stays behind on the old node.",
};

pub const FLOATING_IMAGE: Rule = Rule {
    id: "PGK015",
    name: "floating-postgres-image",
    severity: Severity::Warning,
    summary: "The server runs a postgres image without a major version in its tag (`latest`, \
              untagged, `alpine`...).",
    fix: "Pin the major version (e.g. `postgres:18.1-bookworm`, or a digest). A floating tag \
          follows new major releases: the next pull (a restart on a new node, a rollout) brings \
          a server that refuses the existing data directory (`database files are incompatible \
          with server`) until you downgrade or run pg_upgrade. A linter cannot see the \
          PG_VERSION of an existing volume, so a pinned major that differs from the data is not \
          caught here: read `$PGDATA/PG_VERSION` in the pod before changing the image.",
};

pub const SYNC_STREAM_ON_DATA_VOLUME: Rule = Rule {
    id: "PGK016",
    name: "sync-stream-on-data-volume",
    severity: Severity::Error,
    summary: "`pgkeep wal stream --synchronous` writes the WAL archive onto the volume that \
              holds PGDATA.",
    fix: "Put the WAL archive on its own claim (pg-wal-archive, mounted at /wal-archive), on \
          storage that fails independently of the data volume. Synchronous streaming makes \
          every commit wait until its WAL is on the archive volume, for a recovery point of \
          zero when the data volume is lost; with the archive on that same volume the commits \
          pay the wait and are lost with it all the same.",
};

pub const RULES: &[&Rule] = &[
    &DATA_AT_PGDATA,
    &DOUBLE_MOUNT,
    &VOLUME_SHADOWING,
    &ROOT_CONTAINER,
    &UID_MISMATCH,
    &PVC_IN_KUSTOMIZATION,
    &ROLLING_UPDATE,
    &REPLICAS,
    &CRON_TIMEZONE,
    &ARCHIVE_WITHOUT_VOLUME,
    &SECRET_LITERAL,
    &HARDENING,
    &DATA_ON_EMPTYDIR,
    &HOSTPATH_UNPINNED,
    &FLOATING_IMAGE,
    &SYNC_STREAM_ON_DATA_VOLUME,
];

/// Where a finding is.
struct At<'a> {
    file: &'a Path,
    line: usize,
    doc: &'a Value,
}

impl At<'_> {
    fn finding(&self, rule: &Rule, container: Option<&str>, message: String) -> Finding {
        Finding {
            rule: rule.id,
            name: rule.name,
            severity: rule.severity,
            object: workload::object_ref(self.doc),
            container: container.map(str::to_owned),
            file: self.file.to_owned(),
            line: self.line,
            message,
            fix: rule.fix,
        }
    }
}

/// Run every rule over every document.
pub fn check_all(sources: &[Source]) -> Vec<Finding> {
    let mut out = Vec::new();
    for src in sources {
        for d in &src.docs {
            let at = At {
                file: &src.path,
                line: d.line,
                doc: &d.value,
            };
            if is_kustomization(&src.path, &d.value) {
                pvc_in_kustomization(&at, sources, &mut out);
                continue;
            }
            match str_at(&d.value, &["kind"]) {
                Some("Secret") => secret_literal(&at, &mut out),
                Some("CronJob") => cron_timezone(&at, &mut out),
                Some("Deployment") => deployment_rules(&at, sources, &mut out),
                _ => {}
            }
            if let Some(pod) = workload::pod_spec(&d.value) {
                let vols = workload::workload_volumes(&d.value);
                let containers = workload::containers(pod, &vols);
                for c in &containers {
                    container_rules(&at, c, sources, &mut out);
                }
                stream_rules(&at, &containers, &mut out);
            }
        }
    }
    out
}

fn is_kustomization(path: &Path, doc: &Value) -> bool {
    str_at(doc, &["kind"]) == Some("Kustomization")
        || (str_at(doc, &["kind"]).is_none()
            && matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
            ))
}

fn container_rules(at: &At<'_>, c: &Container<'_>, sources: &[Source], out: &mut Vec<Finding>) {
    let name = Some(c.name);
    let kind = str_at(at.doc, &["kind"]).unwrap_or("");
    let job = matches!(kind, "Job" | "CronJob");
    // A regular container of a long-running pod that does not run the server (a backup or
    // monitoring sidecar) does not decide where the data lives.
    let sidecar = !c.init && !job && !c.runs_server();
    let info = c.image_info();
    // PGK001, PGK003: where the data lives.
    if c.is_postgres()
        && !sidecar
        && let Some(pgdata) = c.pgdata()
    {
        for m in c
            .mounts
            .iter()
            // A claim's root: block storage formatted ext4 has lost+found there.
            .filter(|m| {
                m.path == pgdata
                    && m.kind == VolumeKind::Claim
                    && m.sub_path.is_none()
                    && !m.read_only
            })
        {
            out.push(at.finding(
                &DATA_AT_PGDATA,
                name,
                format!(
                    "{} is mounted at PGDATA {} itself, without subPath, so PGDATA is the root of the volume: on an ext4-backed volume it holds lost+found, initdb refuses the non-empty directory and the pod crash-loops on its first start",
                    m.describe(),
                    pgdata.display()
                ),
            ));
        }
        let volume_dir = norm("/var/lib/postgresql/data");
        if info.official_postgres
            && info.major.is_some_and(|m| m <= 17)
            && pgdata.starts_with(&volume_dir)
            && !c.mounts.iter().any(|m| m.path == volume_dir)
            && let Some(parent) = c
                .mounts
                .iter()
                .find(|m| m.persistent() && volume_dir.starts_with(&m.path))
        {
            out.push(at.finding(
                &VOLUME_SHADOWING,
                name,
                format!(
                    "image {} (major {}) declares VOLUME /var/lib/postgresql/data, and volume `{}` is mounted at {}: PGDATA {} lands on an anonymous volume that is lost when the container restarts",
                    c.image,
                    info.major.unwrap_or_default(),
                    parent.volume,
                    parent.path.display(),
                    pgdata.display()
                ),
            ));
        }
    }
    // PGK013, PGK014, PGK015: the server of a long-running pod.
    if c.runs_server() && !job {
        server_rules(at, c, kind, out);
    }
    let persistent: Vec<_> = c.mounts.iter().filter(|m| m.persistent()).collect();
    let mut reported = BTreeSet::new();
    for (i, a) in persistent.iter().enumerate() {
        for b in &persistent[i + 1..] {
            if a.storage() == b.storage()
                && (a.path.starts_with(&b.path) || b.path.starts_with(&a.path))
                && reported.insert((a.path.clone(), b.path.clone()))
            {
                out.push(at.finding(
                    &DOUBLE_MOUNT,
                    name,
                    format!(
                        "{} is mounted at {} and again at {}",
                        a.storage(),
                        a.path.display(),
                        b.path.display()
                    ),
                ));
            }
        }
    }
    // PGK004: root. Read-only mounts do not count: root cannot leave files behind there.
    let writable: Vec<_> = persistent.iter().filter(|m| !m.read_only).collect();
    let uid = c.run_as_user();
    let entrypoint_switch = uid.is_none() && info.official_postgres && c.runs_server();
    let root = match uid {
        Some(0) => Some("runs as root (runAsUser: 0)"),
        None if !c.run_as_non_root() && entrypoint_switch => Some(
            "starts the official image's entrypoint as root (it chowns PGDATA, then runs the server as the postgres user)",
        ),
        None if !c.run_as_non_root() => Some(
            "sets no runAsUser and no runAsNonRoot, so it runs as the image's user (often root)",
        ),
        _ => None,
    };
    if let Some(why) = root {
        let dropped_all = c.caps("drop").iter().any(|d| d == "ALL");
        let extra: Vec<String> = c
            .caps("add")
            .into_iter()
            .filter(|a| a != "CHOWN" && a != "FOWNER")
            .collect();
        let problem = if let Some(m) = writable.first() {
            let consequence = match writable.iter().find(|m| is_nfs(m, at.doc, sources)) {
                Some(nfs) => format!(
                    "; {} is NFS: on an export with root_squash (the NFS default) root is mapped to nobody, its chown/mkdir there is denied and the pod crash-loops",
                    nfs.describe()
                ),
                None => "; a hardening gap that breaks on a root-squashed NFS volume (root is mapped to nobody, the chown is denied, the pod crash-loops)".to_owned(),
            };
            Some(format!(
                "{why} and writes to persistent {} at {}{consequence}",
                m.describe(),
                m.path.display()
            ))
        } else if !dropped_all {
            Some(format!("{why} without dropping ALL capabilities"))
        } else if !extra.is_empty() {
            Some(format!("{why} and adds capabilities {}", extra.join(", ")))
        } else {
            None
        };
        if let Some(p) = problem {
            out.push(at.finding(&ROOT_CONTAINER, name, p));
        }
    }
    // PGK005: the image family's uid.
    if (info.official_postgres || info.pgkeep || c.env("PGDATA").is_some())
        && let Some(uid) = uid.filter(|u| *u != 0)
    {
        let (want, family) = if info.alpine {
            (70, "Alpine")
        } else {
            (999, "Debian")
        };
        if uid != want {
            out.push(at.finding(
                &UID_MISMATCH,
                name,
                format!(
                    "runAsUser {uid} does not match the postgres uid {want} of the {family} image {}",
                    c.image
                ),
            ));
        }
    }
    if info.official_postgres && uid.is_none() && c.run_as_non_root() {
        out.push(at.finding(
            &UID_MISMATCH,
            name,
            format!(
                "runAsNonRoot is true but no runAsUser is set: the user of image {} is root, so the kubelet refuses to start the container (CreateContainerConfigError)",
                c.image
            ),
        ));
    }
    // PGK010: archiving needs an archive volume.
    if let Some(why) = archiving_on(c, sources) {
        let dir = norm(c.env("PGKEEP_WAL_ARCHIVE").unwrap_or("/wal-archive"));
        let covered = c
            .mounts
            .iter()
            .any(|m| m.persistent() && dir.starts_with(&m.path) && !is_data_mount(c, m));
        if !covered {
            out.push(at.finding(
                &ARCHIVE_WITHOUT_VOLUME,
                name,
                format!(
                    "archive_mode is on ({why}) but no persistent volume other than the data volume is mounted at the WAL archive {}",
                    dir.display()
                ),
            ));
        }
    }
    // PGK012: hardening.
    let mut missing = Vec::new();
    if c.own_sc("allowPrivilegeEscalation")
        .and_then(|v| v.as_bool())
        != Some(false)
    {
        missing.push("allowPrivilegeEscalation: false");
    }
    if !c.caps("drop").iter().any(|d| d == "ALL") {
        missing.push("capabilities drop ALL");
    }
    if !matches!(c.seccomp_type(), Some("RuntimeDefault" | "Localhost")) {
        missing.push("seccompProfile RuntimeDefault");
    }
    if c.own_sc("privileged").and_then(|v| v.as_bool()) == Some(true) {
        missing.push("not privileged");
    }
    if !missing.is_empty() {
        out.push(at.finding(&HARDENING, name, format!("missing: {}", missing.join(", "))));
    }
}

/// PGDATA on storage that dies with the pod, or on one node's disk with no pin to that node,
/// and a floating image tag.
fn server_rules(at: &At<'_>, c: &Container<'_>, kind: &str, out: &mut Vec<Finding>) {
    let name = Some(c.name);
    let Some(pgdata) = c.pgdata() else { return };
    match c.data_mount() {
        None => {
            let info = c.image_info();
            let old_habit = if info.official_postgres
                && info.major.is_some_and(|m| m >= 18)
                && c.mounts
                    .iter()
                    .any(|m| m.path == norm("/var/lib/postgresql/data"))
            {
                format!(
                    " (postgres {} keeps PGDATA under /var/lib/postgresql/{}/docker, so the volume at /var/lib/postgresql/data holds no data: mount it at /var/lib/postgresql)",
                    info.major.unwrap_or_default(),
                    info.major.unwrap_or_default()
                )
            } else {
                String::new()
            };
            out.push(at.finding(
                &DATA_ON_EMPTYDIR,
                name,
                format!(
                    "no volume is mounted over PGDATA {}: the database lives in the container (or the image's anonymous volume) and is deleted with the pod{old_habit}",
                    pgdata.display()
                ),
            ))
        }
        Some(m) if m.kind == VolumeKind::EmptyDir => out.push(at.finding(
            &DATA_ON_EMPTYDIR,
            name,
            format!(
                "PGDATA {} is on {} at {}: the database is deleted with the pod",
                pgdata.display(),
                m.describe(),
                m.path.display()
            ),
        )),
        Some(m) if m.kind == VolumeKind::HostPath && kind != "DaemonSet" && !pinned(c.pod) => {
            out.push(at.finding(
                &HOSTPATH_UNPINNED,
                name,
                format!(
                    "PGDATA {} is on {} at {} and the pod has no nodeName, nodeSelector or required nodeAffinity: on a multi-node cluster a rescheduled pod starts an empty database on another node",
                    pgdata.display(),
                    m.describe(),
                    m.path.display()
                ),
            ))
        }
        _ => {}
    }
    let info = c.image_info();
    if info.official_postgres && info.major.is_none() && !info.digest {
        out.push(at.finding(
            &FLOATING_IMAGE,
            name,
            format!(
                "image {} (tag `{}`) names no major version: a restart can pull a new major that refuses the existing data directory",
                if c.image.is_empty() { "(none)" } else { c.image },
                info.tag
            ),
        ));
    }
}

/// A synchronous WAL streamer beside the server whose archive is on the server's data volume.
fn stream_rules(at: &At<'_>, containers: &[Container<'_>], out: &mut Vec<Finding>) {
    let Some(server) = containers.iter().find(|c| !c.init && c.runs_server()) else {
        return;
    };
    let (Some(pgdata), Some(data)) = (server.pgdata(), server.data_mount()) else {
        return;
    };
    for c in containers.iter().filter(|c| !c.init) {
        let argv = c.argv();
        let streams = argv.windows(2).any(|w| w == ["wal", "stream"]);
        if !streams || !argv.contains(&"--synchronous") {
            continue;
        }
        let archive = norm(c.env("PGKEEP_WAL_ARCHIVE").unwrap_or("/wal-archive"));
        let Some(m) = c
            .mounts
            .iter()
            .filter(|m| archive.starts_with(&m.path))
            .max_by_key(|m| m.path.components().count())
        else {
            continue;
        };
        let same = m.volume == data.volume || (m.claim.is_some() && m.claim == data.claim);
        if same {
            out.push(at.finding(
                &SYNC_STREAM_ON_DATA_VOLUME,
                Some(c.name),
                format!(
                    "the synchronous WAL stream writes {} on {}, which also holds PGDATA {}: losing that volume loses the commits the stream acknowledged",
                    archive.display(),
                    m.describe(),
                    pgdata.display()
                ),
            ));
        }
    }
}

/// The pod is tied to one node.
fn pinned(pod: &Value) -> bool {
    let non_empty = |v: Option<&Value>| match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    non_empty(pod.get("nodeName"))
        || non_empty(pod.get("nodeSelector"))
        || non_empty(at(
            pod,
            &[
                "affinity",
                "nodeAffinity",
                "requiredDuringSchedulingIgnoredDuringExecution",
            ],
        ))
}

/// An NFS volume: mounted inline, or a claim (in the inputs, or a StatefulSet's template)
/// whose storage class names NFS.
fn is_nfs(m: &workload::Mount<'_>, doc: &Value, sources: &[Source]) -> bool {
    if m.kind == VolumeKind::Nfs {
        return true;
    }
    let Some(claim) = m.claim else { return false };
    let nfs_class = |spec: &Value| {
        str_at(spec, &["storageClassName"]).is_some_and(|c| c.to_ascii_lowercase().contains("nfs"))
    };
    arr(doc, &["spec", "volumeClaimTemplates"]).any(|t| {
        str_at(t, &["metadata", "name"]) == Some(claim) && t.get("spec").is_some_and(&nfs_class)
    }) || sources.iter().flat_map(|s| &s.docs).any(|d| {
        str_at(&d.value, &["kind"]) == Some("PersistentVolumeClaim")
            && str_at(&d.value, &["metadata", "name"]) == Some(claim)
            && d.value.get("spec").is_some_and(&nfs_class)
    })
}

fn is_data_mount(c: &Container<'_>, m: &workload::Mount<'_>) -> bool {
    c.pgdata().is_some_and(|p| p.starts_with(&m.path))
}

/// Why archiving is on in this container, if it is.
fn archiving_on(c: &Container<'_>, sources: &[Source]) -> Option<String> {
    if c.runs_pgkeep_serve() {
        return Some("`pgkeep serve` always archives".to_owned());
    }
    let conf_on = |text: &str| {
        text.lines().any(|l| {
            let l: String = l
                .split('#')
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
                .collect();
            let l = l.to_ascii_lowercase();
            l == "archive_mode=on" || l == "archive_mode=always"
        })
    };
    if c.argv()
        .iter()
        .any(|w| conf_on(w) || conf_on(&w.replace("-c ", "")))
    {
        return Some("set on the command line".to_owned());
    }
    for m in &c.mounts {
        let Some(cm) = m.config_map else { continue };
        for src in sources {
            for d in &src.docs {
                if str_at(&d.value, &["kind"]) == Some("ConfigMap")
                    && str_at(&d.value, &["metadata", "name"]) == Some(cm)
                    && at(&d.value, &["data"])
                        .and_then(|v| v.as_object())
                        .is_some_and(|data| data.values().filter_map(|v| v.as_str()).any(conf_on))
                {
                    return Some(format!("in ConfigMap {cm}"));
                }
            }
        }
    }
    None
}

fn deployment_rules(at: &At<'_>, sources: &[Source], out: &mut Vec<Finding>) {
    let Some(pod) = workload::pod_spec(at.doc) else {
        return;
    };
    let claims: Vec<&str> = workload::volumes(pod)
        .iter()
        .filter_map(|v| v.claim)
        .collect();
    if claims.is_empty() {
        return;
    }
    // A claim known (from the inputs) to be ReadWriteMany is fine for the strategy rule.
    let rwo_claims: Vec<&str> = claims
        .iter()
        .copied()
        .filter(|claim| !known_shared(claim, sources))
        .collect();
    let strategy = str_at(at.doc, &["spec", "strategy", "type"]).unwrap_or("RollingUpdate");
    if strategy != "Recreate" && !rwo_claims.is_empty() {
        out.push(at.finding(
            &ROLLING_UPDATE,
            None,
            format!(
                "strategy is {strategy}{} with ReadWriteOnce claim(s) {}",
                if at.doc.pointer("/spec/strategy/type").is_none() {
                    " (the default)"
                } else {
                    ""
                },
                rwo_claims.join(", ")
            ),
        ));
    }
    let replicas = at
        .doc
        .pointer("/spec/replicas")
        .and_then(|v| v.as_i64())
        .unwrap_or(1);
    if replicas > 1 {
        out.push(at.finding(
            &REPLICAS,
            None,
            format!("replicas is {replicas} with claim(s) {}", claims.join(", ")),
        ));
    }
}

/// Whether a claim in the inputs is declared ReadWriteMany / ReadOnlyMany only.
fn known_shared(claim: &str, sources: &[Source]) -> bool {
    sources.iter().flat_map(|s| &s.docs).any(|d| {
        str_at(&d.value, &["kind"]) == Some("PersistentVolumeClaim")
            && str_at(&d.value, &["metadata", "name"]) == Some(claim)
            && {
                let modes: Vec<&str> = arr(&d.value, &["spec", "accessModes"])
                    .filter_map(|m| m.as_str())
                    .collect();
                !modes.is_empty()
                    && !modes.contains(&"ReadWriteOnce")
                    && !modes.contains(&"ReadWriteOncePod")
            }
    })
}

fn cron_timezone(at: &At<'_>, out: &mut Vec<Finding>) {
    let tz = str_at(at.doc, &["spec", "timeZone"]).filter(|t| !t.is_empty());
    if tz.is_none() {
        let schedule = str_at(at.doc, &["spec", "schedule"]).unwrap_or("");
        let extra = if schedule.starts_with("CRON_TZ=") || schedule.starts_with("TZ=") {
            " (a CRON_TZ/TZ prefix in the schedule is not supported)"
        } else {
            ""
        };
        out.push(at.finding(
            &CRON_TIMEZONE,
            None,
            format!("schedule \"{schedule}\" has no timeZone{extra}"),
        ));
    }
}

fn secret_literal(at: &At<'_>, out: &mut Vec<Finding>) {
    for section in ["data", "stringData"] {
        let Some(map) = at.doc.get(section).and_then(|v| v.as_object()) else {
            continue;
        };
        for (k, v) in map {
            let key = k.to_ascii_lowercase();
            let secretish = ["pass", "pwd", "secret", "token"]
                .iter()
                .any(|w| key.contains(w));
            let non_empty = v.as_str().is_some_and(|s| !s.trim().is_empty());
            if secretish && non_empty {
                // Never show the value.
                out.push(at.finding(
                    &SECRET_LITERAL,
                    None,
                    format!("{section}.{k} holds a literal value"),
                ));
            }
        }
    }
}

/// PVCs reachable from a kustomization's resources (files, or directories with their own
/// kustomization).
fn pvc_in_kustomization(at: &At<'_>, sources: &[Source], out: &mut Vec<Finding>) {
    let base = at.file.parent().unwrap_or(Path::new("."));
    let mut seen = BTreeSet::new();
    for r in arr(at.doc, &["resources"]).filter_map(|r| r.as_str()) {
        let mut found = Vec::new();
        collect_pvcs(&base.join(r), sources, 0, &mut seen, &mut found);
        for (file, name) in found {
            out.push(at.finding(
                &PVC_IN_KUSTOMIZATION,
                None,
                format!(
                    "resource {r} brings PersistentVolumeClaim {name} (in {})",
                    file.display()
                ),
            ));
        }
    }
}

fn collect_pvcs(
    path: &Path,
    sources: &[Source],
    depth: usize,
    seen: &mut BTreeSet<PathBuf>,
    found: &mut Vec<(PathBuf, String)>,
) {
    if depth > 8 || path.to_string_lossy().contains("://") {
        return;
    }
    let key = path.canonicalize().unwrap_or_else(|_| norm_rel(path));
    if !seen.insert(key.clone()) {
        return;
    }
    if path.is_dir() {
        for name in ["kustomization.yaml", "kustomization.yml", "Kustomization"] {
            let k = path.join(name);
            if k.is_file() {
                if let Some(src) = source_for(&k, sources) {
                    for d in &src.docs {
                        for r in arr(&d.value, &["resources"]).filter_map(|r| r.as_str()) {
                            collect_pvcs(&path.join(r), sources, depth + 1, seen, found);
                        }
                    }
                }
                return;
            }
        }
        return;
    }
    if let Some(src) = source_for(path, sources) {
        for d in &src.docs {
            if str_at(&d.value, &["kind"]) == Some("PersistentVolumeClaim") {
                found.push((
                    path.to_owned(),
                    str_at(&d.value, &["metadata", "name"])
                        .unwrap_or("(no name)")
                        .to_owned(),
                ));
            }
        }
    }
}

fn norm_rel(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The loaded source for a path, or the file read now (unreadable or invalid: None; the
/// kustomization's own checks are not this linter's job).
fn source_for(path: &Path, sources: &[Source]) -> Option<Source> {
    let canon = path.canonicalize().ok();
    sources
        .iter()
        .find(|s| s.path == path || (canon.is_some() && s.path.canonicalize().ok() == canon))
        .cloned()
        .or_else(|| Source::read(path).ok())
}
