//! pgkeep's settings: one typed struct, resolved once, before any I/O.
//!
//! Precedence: command-line flags > environment > `pgkeep.toml` > built-in defaults. The defaults
//! reproduce the seed setup exactly (namespace `record-platform`, PVC `pgdata-big`, uid 999, ...).
//! Resolution works on TOML tables: the defaults are serialised to a table, the file's keys are
//! checked against it (an unknown key is an error naming the key and the file), environment
//! variables and flags are applied as dotted keys, and the merged table is deserialised into
//! [`Settings`]. Where each value came from is kept in [`Resolved::sources`] for `config show`.
//!
//! Secrets (the superuser password) are not settings: they come from `PGPASSWORD` or
//! `PGPASSFILE` at the moment they are needed and never appear in output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wal::Compression;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("could not read {path}: {source}\nhint: check --config / PGKEEP_CONFIG")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {path}\nhint: known keys here are: {known}")]
    UnknownKey {
        key: String,
        path: PathBuf,
        known: String,
    },
    #[error("invalid value for `{key}` (from {source_desc}): {message}")]
    Invalid {
        key: String,
        source_desc: String,
        message: String,
    },
}

/// Where pgkeep acts: on this machine, or through the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    #[default]
    Local,
    Kube,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Local => "local",
            Target::Kube => "kube",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `local` or `kube`.
    pub target: Target,
    pub paths: Paths,
    pub postgres: Postgres,
    pub kube: Kube,
    pub pvc: Pvcs,
    pub schedule: Schedule,
    pub retention: Retention,
    pub wal: Wal,
    pub lint: Lint,
    pub offsite: Offsite,
}

/// Off-site copies in S3-compatible object storage (`pgkeep offsite ...`, [`crate::offsite`]).
/// Off when `url` is empty. Credentials are not settings: they come from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` / `AWS_REGION`
/// environment variables at the moment they are needed and never appear in output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offsite {
    /// `s3://bucket` or `s3://bucket/prefix`; empty turns off-site copies off.
    pub url: String,
    /// An S3-compatible endpoint (`https://...`; plain `http://` only for a loopback address);
    /// empty means AWS itself.
    pub endpoint: String,
    /// The bucket's region; empty means `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Comma-separated age recipients (`age1...`) every object is encrypted to (not secret).
    pub recipients: String,
    /// The age identity (private key) file; needed only to restore.
    pub identity_file: String,
    /// Encrypt every object (the default). Turning it off must be said explicitly.
    pub encrypt: bool,
    /// Kubernetes: the Secret (created by you, never by pgkeep) whose keys `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`, `AWS_REGION`) become the `offsite`
    /// container's environment; empty: no Secret, the pod's own credentials (e.g. a role).
    pub credentials_secret: String,
    /// Kubernetes: the Secret (created by you, never by pgkeep) whose key `identity` holds the
    /// age identity, mounted read-only into the restore, bootstrap and drill pods only (the
    /// pods that read off-site copies); empty: none mounted.
    pub identity_secret: String,
    /// Allow plain `http://` to an endpoint that is not a loopback address (an in-cluster store
    /// on a network you trust, a test server). Objects stay encrypted, but object names and
    /// request metadata travel in the clear. Off by default; a warning is logged when used.
    pub allow_http: bool,
}

/// Paths as the db container (or a plain host) sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// The data volume's mount point; PGDATA is a subdirectory of it, never the mount itself.
    pub pgroot: PathBuf,
    pub pgdata: PathBuf,
    pub wal_archive: PathBuf,
    pub backups: PathBuf,
    /// PostgreSQL's socket directory (an emptyDir in Kubernetes).
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// Owner of the data directory and of every process touching it.
    pub uid: u32,
    pub gid: u32,
    /// The application database (the seed's `records`).
    pub database: String,
    /// Host or socket directory; empty means the socket directory `paths.run_dir`.
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kube {
    pub namespace: String,
    /// The kubeconfig context; empty means the current context.
    pub context: String,
    /// Value of the `app` label on every object.
    pub app: String,
    pub deployment: String,
    pub container: String,
    pub service: String,
    pub secret: String,
    /// The PostgreSQL image the pgkeep image is built from (the Dockerfile's base).
    pub postgres_image: String,
    /// The image every pod runs: PostgreSQL server binaries plus pgkeep.
    pub image: String,
    pub image_pull_policy: String,
    /// Storage class for the PVCs; empty means the cluster's default.
    pub storage_class: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pvc {
    pub name: String,
    pub size: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pvcs {
    pub data: Pvc,
    pub wal_archive: Pvc,
    pub backups: Pvc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub logical: String,
    pub physical: String,
    /// The weekly restore drill (`pgkeep drill`): by default three hours after the weekly
    /// physical backup, in the same time zone.
    pub drill: String,
    /// Incremental base backups between the weekly full ones (PostgreSQL 17+): the third
    /// CronJob runs `pgkeep backup physical --incremental=auto` on this schedule. Rendered
    /// suspended unless `incremental_enabled` (off by default: see the README).
    pub incremental: String,
    pub incremental_enabled: bool,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Nightly logical bundles to keep.
    pub nightly: u32,
    /// Full physical base backups to keep (and the WAL they need), each with the incremental
    /// base backups taken on top of it.
    pub basebackups: u32,
    /// Nightly logical bundles to keep off-site (`offsite sync` applies it after uploading; at
    /// least the newest one is always kept).
    pub offsite_nightly: u32,
    /// Base backups to keep off-site, and the off-site WAL the oldest kept one needs.
    pub offsite_basebackups: u32,
}

/// How `pgkeep wal push` (PostgreSQL's archive_command) stores segments; its flags override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wal {
    /// `zstd`, `gzip` or `none` (history and backup files always stay plain).
    pub compress: Compression,
    /// zstd level: -7..=-1 are zstd's fast modes, 1..=19 store smaller and take longer.
    pub zstd_level: i32,
    /// Seconds after which `serve`'s PostgreSQL switches to a new WAL segment even when the
    /// current one is not full (`archive_timeout`), so a quiet server still archives what it
    /// committed within this bound; 0 turns it off.
    pub archive_timeout: u32,
    /// WAL streaming into the archive (`pgkeep wal stream`) next to archive_command: `off`,
    /// `async` (the stream keeps what it received; a bounded, small loss) or `sync` (`serve`
    /// makes PostgreSQL wait for the stream's flush before acknowledging a commit: nothing
    /// acknowledged is lost with the data volume, and commits wait while the stream is down).
    pub stream: StreamMode,
    /// With `stream = sync`: seconds without a streaming `pgkeep wal stream` after which `serve`
    /// stops making commits wait for it (`synchronous_standby_names = ''`) until it streams
    /// again; 0 (the default) never falls back: commits wait, which is the RPO-0 promise.
    pub sync_fallback_after: u32,
}

/// `wal.stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    #[default]
    Off,
    Async,
    Sync,
}

/// `pgkeep lint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lint {
    /// Fail (exit 1) on warnings too, not only on errors (`--strict`).
    pub strict: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Settings {
            target: Target::Local,
            paths: Paths {
                pgroot: "/var/lib/postgresql".into(),
                pgdata: "/var/lib/postgresql/data".into(),
                wal_archive: "/wal-archive".into(),
                backups: "/backups".into(),
                run_dir: "/var/run/postgresql".into(),
            },
            postgres: Postgres {
                uid: 999,
                gid: 999,
                database: "records".into(),
                host: String::new(),
                port: 5432,
                user: "postgres".into(),
            },
            kube: Kube {
                namespace: "record-platform".into(),
                context: String::new(),
                app: "postgres".into(),
                deployment: "postgres".into(),
                container: "db".into(),
                service: "postgres".into(),
                secret: "postgres-superuser".into(),
                postgres_image: "postgres:18".into(),
                image: format!("pgkeep:{version}-pg18"),
                image_pull_policy: "IfNotPresent".into(),
                storage_class: String::new(),
                cpu_request: "250m".into(),
                memory_request: "512Mi".into(),
                memory_limit: "2Gi".into(),
            },
            pvc: Pvcs {
                data: Pvc {
                    name: "pgdata-big".into(),
                    size: "100Gi".into(),
                },
                wal_archive: Pvc {
                    name: "pg-wal-archive".into(),
                    size: "20Gi".into(),
                },
                // Holds 7 nightly bundles and 4 base backups of a full 100Gi data volume only
                // when data compresses well; 200Gi is the documented starting point.
                backups: Pvc {
                    name: "pgbackups".into(),
                    size: "200Gi".into(),
                },
            },
            schedule: Schedule {
                logical: "0 6 * * *".into(),
                physical: "20 6 * * 0".into(),
                drill: "20 9 * * 0".into(),
                incremental: "20 6 * * 1-6".into(),
                incremental_enabled: false,
                timezone: "America/New_York".into(),
            },
            retention: Retention {
                nightly: 7,
                basebackups: 4,
                offsite_nightly: 30,
                offsite_basebackups: 8,
            },
            wal: Wal {
                compress: Compression::Zstd,
                zstd_level: crate::wal::DEFAULT_ZSTD_LEVEL,
                archive_timeout: 60,
                stream: StreamMode::Off,
                sync_fallback_after: 0,
            },
            lint: Lint { strict: false },
            offsite: Offsite {
                url: String::new(),
                endpoint: String::new(),
                region: String::new(),
                recipients: String::new(),
                identity_file: String::new(),
                encrypt: true,
                credentials_secret: String::new(),
                identity_secret: String::new(),
                allow_http: false,
            },
        }
    }
}

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(n) => write!(f, "env {n}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// Environment variables and the setting each one sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("PGKEEP_TARGET", "target"),
    ("PGKEEP_PGROOT", "paths.pgroot"),
    ("PGDATA", "paths.pgdata"),
    ("PGKEEP_WAL_ARCHIVE", "paths.wal_archive"),
    ("PGKEEP_BACKUPS", "paths.backups"),
    ("PGKEEP_RUN_DIR", "paths.run_dir"),
    ("PGKEEP_UID", "postgres.uid"),
    ("PGKEEP_GID", "postgres.gid"),
    ("PGKEEP_DATABASE", "postgres.database"),
    ("PGDATABASE", "postgres.database"),
    ("PGHOST", "postgres.host"),
    ("PGPORT", "postgres.port"),
    ("PGUSER", "postgres.user"),
    ("PGKEEP_NAMESPACE", "kube.namespace"),
    ("PGKEEP_CONTEXT", "kube.context"),
    ("PGKEEP_IMAGE", "kube.image"),
    ("PGKEEP_IMAGE_PULL_POLICY", "kube.image_pull_policy"),
    ("PGKEEP_STORAGE_CLASS", "kube.storage_class"),
    ("PGKEEP_WAL_COMPRESS", "wal.compress"),
    ("PGKEEP_WAL_ZSTD_LEVEL", "wal.zstd_level"),
    ("PGKEEP_WAL_ARCHIVE_TIMEOUT", "wal.archive_timeout"),
    ("PGKEEP_WAL_STREAM", "wal.stream"),
    ("PGKEEP_WAL_SYNC_FALLBACK_AFTER", "wal.sync_fallback_after"),
    ("PGKEEP_LINT_STRICT", "lint.strict"),
    ("PGKEEP_OFFSITE_URL", "offsite.url"),
    ("PGKEEP_OFFSITE_ENDPOINT", "offsite.endpoint"),
    ("PGKEEP_OFFSITE_RECIPIENTS", "offsite.recipients"),
    ("PGKEEP_OFFSITE_IDENTITY_FILE", "offsite.identity_file"),
];

/// Settings plus where each value came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub settings: Settings,
    /// Dotted key → source, for every leaf key.
    pub sources: BTreeMap<String, Source>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

/// Inputs to resolution, gathered by the binary (so tests can pass their own environment).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `--config` / `PGKEEP_CONFIG`; when None, `./pgkeep.toml` is read if it exists.
    pub config: Option<PathBuf>,
    /// Environment variables (name, value).
    pub env: Vec<(String, String)>,
    /// Flags as (dotted key, value, flag name).
    pub flags: Vec<(String, String, String)>,
}

impl Inputs {
    /// Inputs from this process's environment.
    pub fn from_process_env(config: Option<PathBuf>) -> Self {
        let env = ENV_KEYS
            .iter()
            .filter_map(|(name, _)| std::env::var(name).ok().map(|v| (name.to_string(), v)))
            .collect();
        Inputs {
            config,
            env,
            flags: Vec::new(),
        }
    }

    pub fn flag(mut self, key: &str, value: impl ToString, flag: &str) -> Self {
        self.flags
            .push((key.to_owned(), value.to_string(), flag.to_owned()));
        self
    }
}

pub fn resolve(inputs: &Inputs) -> Result<Resolved, SettingsError> {
    let defaults = toml::Table::try_from(Settings::default()).expect("defaults serialise");
    let mut merged = defaults.clone();
    let mut sources = BTreeMap::new();
    leaf_keys(&defaults, "", &mut |k| {
        sources.insert(k, Source::Default);
    });

    let file = match &inputs.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("pgkeep.toml")).filter(|p| p.is_file()),
    };
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| SettingsError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        merge_file(&mut merged, &defaults, &table, "", path, &mut sources)?;
    }

    // Later entries win: PGKEEP_DATABASE is listed before PGDATABASE, so apply in reverse
    // priority order (the generic libpq name first, then pgkeep's own).
    let mut env: Vec<&(String, String)> = inputs.env.iter().collect();
    env.sort_by_key(|(name, _)| {
        ENV_KEYS
            .iter()
            .position(|(n, _)| n == name)
            .map(std::cmp::Reverse)
    });
    for (name, value) in env {
        if let Some((_, key)) = ENV_KEYS.iter().find(|(n, _)| n == name) {
            set_key(
                &mut merged,
                &defaults,
                key,
                value,
                &Source::Env(name.clone()),
            )?;
            sources.insert((*key).to_owned(), Source::Env(name.clone()));
        }
    }
    for (key, value, flag) in &inputs.flags {
        set_key(
            &mut merged,
            &defaults,
            key,
            value,
            &Source::Flag(flag.clone()),
        )?;
        sources.insert(key.clone(), Source::Flag(flag.clone()));
    }

    let settings: Settings =
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| SettingsError::Invalid {
                key: "(settings)".into(),
                source_desc: file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "environment".into()),
                message: e.to_string(),
            })?;
    if let Err(message) = crate::wal::check_zstd_level(settings.wal.zstd_level) {
        let key = "wal.zstd_level";
        return Err(SettingsError::Invalid {
            key: key.into(),
            source_desc: sources.get(key).map(|s| s.to_string()).unwrap_or_default(),
            message,
        });
    }
    if let Err((key, message)) = crate::offsite::check_settings(&settings.offsite) {
        return Err(SettingsError::Invalid {
            key: key.into(),
            source_desc: sources.get(key).map(|s| s.to_string()).unwrap_or_default(),
            message,
        });
    }
    Ok(Resolved {
        settings,
        sources,
        file,
    })
}

fn leaf_keys(table: &toml::Table, prefix: &str, f: &mut impl FnMut(String)) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaf_keys(t, &key, f),
            _ => f(key),
        }
    }
}

fn merge_file(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    file: &toml::Table,
    prefix: &str,
    path: &Path,
    sources: &mut BTreeMap<String, Source>,
) -> Result<(), SettingsError> {
    for (k, v) in file {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(default) = defaults.get(k) else {
            return Err(SettingsError::UnknownKey {
                key,
                path: path.to_owned(),
                known: defaults.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        match (default, v) {
            (toml::Value::Table(d), toml::Value::Table(f)) => {
                let m = merged
                    .get_mut(k)
                    .and_then(|m| m.as_table_mut())
                    .expect("merged mirrors defaults");
                merge_file(m, d, f, &key, path, sources)?;
            }
            (toml::Value::Table(_), _) => {
                return Err(SettingsError::Invalid {
                    key,
                    source_desc: path.display().to_string(),
                    message: "expected a table".into(),
                });
            }
            (d, f) => {
                if std::mem::discriminant(d) != std::mem::discriminant(f) {
                    return Err(SettingsError::Invalid {
                        key,
                        source_desc: path.display().to_string(),
                        message: format!("expected a {}, found a {}", d.type_str(), f.type_str()),
                    });
                }
                merged.insert(k.clone(), f.clone());
                sources.insert(key, Source::File(path.to_owned()));
            }
        }
    }
    Ok(())
}

fn set_key(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    value: &str,
    source: &Source,
) -> Result<(), SettingsError> {
    let (parent, leaf) = match key.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, key),
    };
    let mut d = defaults;
    let mut m = merged;
    if let Some(parent) = parent {
        for part in parent.split('.') {
            d = d.get(part).and_then(|v| v.as_table()).expect("known key");
            m = m
                .get_mut(part)
                .and_then(|v| v.as_table_mut())
                .expect("known key");
        }
    }
    let invalid = |message: String| SettingsError::Invalid {
        key: key.to_owned(),
        source_desc: source.to_string(),
        message,
    };
    let typed = match d.get(leaf).expect("known key") {
        toml::Value::Integer(_) => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| invalid(format!("expected a whole number, found {value:?}")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value
                .trim()
                .parse()
                .map_err(|_| invalid(format!("expected true or false, found {value:?}")))?,
        ),
        _ => toml::Value::String(value.to_owned()),
    };
    m.insert(leaf.to_owned(), typed);
    Ok(())
}

impl Resolved {
    /// The settings as a `pgkeep.toml` that resolves to the same values, with a comment on each
    /// line saying where the value came from.
    pub fn to_annotated_toml(&self) -> String {
        let table = toml::Table::try_from(&self.settings).expect("settings serialise");
        let mut out = String::from(
            "# pgkeep settings, resolved (flags > environment > pgkeep.toml > defaults).\n\
             # Secrets are not settings: the superuser password comes from PGPASSWORD or PGPASSFILE.\n",
        );
        self.write_table(&table, "", &mut out);
        out
    }

    fn write_table(&self, table: &toml::Table, prefix: &str, out: &mut String) {
        for (k, v) in table {
            if v.is_table() {
                continue;
            }
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let source = self.sources.get(&key).cloned().unwrap_or(Source::Default);
            let line = format!("{k} = {v}");
            out.push_str(&format!("{line:<48} # {source}\n"));
        }
        for (k, v) in table {
            if let toml::Value::Table(t) = v {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push_str(&format!("\n[{key}]\n"));
                self.write_table(t, &key, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Inputs {
        Inputs {
            config: None,
            env: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            flags: vec![],
        }
    }

    #[test]
    fn defaults_reproduce_the_seed() {
        let r = resolve(&Inputs {
            config: Some(PathBuf::from("/dev/null")),
            ..Default::default()
        })
        .unwrap();
        let s = r.settings;
        assert_eq!(s.kube.namespace, "record-platform");
        assert_eq!(s.kube.app, "postgres");
        assert_eq!(s.kube.container, "db");
        assert_eq!(s.postgres.database, "records");
        assert_eq!((s.postgres.uid, s.postgres.gid), (999, 999));
        assert_eq!(s.pvc.data.name, "pgdata-big");
        assert_eq!(s.pvc.data.size, "100Gi");
        assert_eq!(s.pvc.wal_archive.name, "pg-wal-archive");
        assert_eq!(s.pvc.wal_archive.size, "20Gi");
        assert_eq!(s.pvc.backups.name, "pgbackups");
        assert_eq!(s.paths.pgroot, Path::new("/var/lib/postgresql"));
        assert_eq!(s.paths.pgdata, Path::new("/var/lib/postgresql/data"));
        assert_eq!(s.paths.wal_archive, Path::new("/wal-archive"));
        assert_eq!(s.paths.backups, Path::new("/backups"));
        assert_eq!(s.paths.run_dir, Path::new("/var/run/postgresql"));
        assert_eq!(s.schedule.logical, "0 6 * * *");
        assert_eq!(s.schedule.physical, "20 6 * * 0");
        assert_eq!(s.schedule.timezone, "America/New_York");
        assert_eq!(s.kube.postgres_image, "postgres:18");
        assert!(r.sources.values().all(|s| *s == Source::Default));
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgkeep.toml");
        std::fs::write(
            &file,
            "[kube]\nnamespace = \"from-file\"\nimage = \"img:file\"\n[postgres]\nport = 6000\n",
        )
        .unwrap();
        let mut inputs = env(&[("PGKEEP_NAMESPACE", "from-env"), ("PGPORT", "7000")]);
        inputs.config = Some(file.clone());
        let inputs = inputs.flag("kube.namespace", "from-flag", "--namespace");
        let r = resolve(&inputs).unwrap();
        assert_eq!(r.settings.kube.namespace, "from-flag");
        assert_eq!(
            r.sources["kube.namespace"],
            Source::Flag("--namespace".into())
        );
        assert_eq!(r.settings.postgres.port, 7000);
        assert_eq!(r.sources["postgres.port"], Source::Env("PGPORT".into()));
        assert_eq!(r.settings.kube.image, "img:file");
        assert_eq!(r.sources["kube.image"], Source::File(file));
        assert_eq!(r.sources["kube.container"], Source::Default);
    }

    #[test]
    fn pgkeep_database_beats_pgdatabase() {
        let r = resolve(&env(&[
            ("PGDATABASE", "generic"),
            ("PGKEEP_DATABASE", "specific"),
        ]))
        .unwrap();
        assert_eq!(r.settings.postgres.database, "specific");
        let r = resolve(&env(&[("PGDATABASE", "generic")])).unwrap();
        assert_eq!(r.settings.postgres.database, "generic");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgkeep.toml");
        std::fs::write(&file, "[kube]\nnamespce = \"typo\"\n").unwrap();
        let err = resolve(&Inputs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("kube.namespce"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("namespace"), "lists known keys: {msg}");
    }

    #[test]
    fn wrong_types_are_reported() {
        let err = resolve(&env(&[("PGKEEP_UID", "nine")])).unwrap_err();
        assert!(err.to_string().contains("PGKEEP_UID"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgkeep.toml");
        std::fs::write(&file, "[postgres]\nuid = \"999\"\n").unwrap();
        let err = resolve(&Inputs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("postgres.uid"), "{err}");
        let err = resolve(&env(&[("PGKEEP_TARGET", "mars")])).unwrap_err();
        assert!(err.to_string().contains("mars"), "{err}");
    }

    #[test]
    fn wal_compression_comes_from_file_or_env_and_bad_levels_are_refused() {
        let r = resolve(&Inputs::default()).unwrap();
        assert_eq!(r.settings.wal.compress, Compression::Zstd);
        assert_eq!(r.settings.wal.zstd_level, crate::wal::DEFAULT_ZSTD_LEVEL);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgkeep.toml");
        std::fs::write(&file, "[wal]\ncompress = \"gzip\"\nzstd_level = 1\n").unwrap();
        let r = resolve(&Inputs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.settings.wal.compress, Compression::Gzip);
        assert_eq!(r.settings.wal.zstd_level, 1);
        let mut inputs = env(&[
            ("PGKEEP_WAL_COMPRESS", "none"),
            ("PGKEEP_WAL_ZSTD_LEVEL", "-5"),
        ]);
        inputs.config = Some(file);
        let r = resolve(&inputs).unwrap();
        assert_eq!(r.settings.wal.compress, Compression::None);
        assert_eq!(r.settings.wal.zstd_level, -5);

        let err = resolve(&env(&[("PGKEEP_WAL_ZSTD_LEVEL", "25")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("wal.zstd_level") && msg.contains("PGKEEP_WAL_ZSTD_LEVEL"),
            "{msg}"
        );
        let err = resolve(&env(&[("PGKEEP_WAL_COMPRESS", "lz4")])).unwrap_err();
        assert!(err.to_string().contains("lz4"), "{err}");
    }

    #[test]
    fn annotated_toml_round_trips() {
        let r = resolve(&env(&[
            ("PGKEEP_NAMESPACE", "ns-x"),
            ("PGKEEP_UID", "1234"),
        ]))
        .unwrap();
        let text = r.to_annotated_toml();
        assert!(text.contains("# env PGKEEP_NAMESPACE"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgkeep.toml");
        std::fs::write(&file, &text).unwrap();
        let again = resolve(&Inputs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(again.settings, r.settings);
    }
}
