//! Off-site copies: every bundle and WAL file of the local repository, encrypted with age and
//! stored in S3-compatible object storage; and reading them back when the local copy is gone.
//!
//! Object layout under `offsite.url` (`s3://bucket/prefix`), one prefix per system identifier
//! (the `initdb` identity of the cluster the files belong to, as in `global/pg_control`):
//!
//! ```text
//! <prefix>/<system identifier>/backups/<bundle name>.age     nightly-*.tar.gz, basebackup-*.bundle.tar.gz
//! <prefix>/<system identifier>/wal/<archived file name>.age  000000010000000000000003.zst, 00000002.history, ...
//! ```
//!
//! Every object is the local file (already compressed: bundles are gzip, segments zstd/gzip as
//! `wal push` stored them) encrypted to the configured age X25519 recipients; the `.age` suffix is
//! absent only when `offsite.encrypt = false`. Each object carries user metadata:
//! `pgkeep-sha256` and `pgkeep-size` (of the local file, so a second copy of the same name can be
//! compared without decrypting) and `pgkeep-recipients` (which keys it was made for, named in the
//! error when an identity does not match).
//!
//! Uploads are create-only and never visible half-written: an object up to one part is one
//! `PUT` with `If-None-Match: *`; a larger one is a multipart upload (S3 shows nothing until it is
//! completed, and it is aborted on any error). Memory stays bounded by a few parts whatever the
//! file size: a blocking thread reads and encrypts into parts that a bounded channel hands to the
//! uploader. Requests are retried with exponential backoff by the client.
//!
//! Downloads go to a hidden temporary file, then are decrypted into an [`AtomicFile`]: a flipped
//! byte or a truncated object fails age's authenticated stream and publishes nothing.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, GetOptions, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use crate::fsutil::{AtomicFile, FsError, IoContext};
use crate::settings;
use crate::wal::{self, Archive, Compression, WalKind};

/// Size of one multipart part (S3's minimum is 5 MiB); memory use is a small multiple of it.
pub const PART_SIZE: usize = 8 << 20;
const META_SHA256: &str = "pgkeep-sha256";
const META_SIZE: &str = "pgkeep-size";
const META_RECIPIENTS: &str = "pgkeep-recipients";
/// On a base backup's object: the first WAL segment it needs and the segment size, so off-site
/// retention knows which WAL the oldest kept base backup needs without decrypting anything.
pub(crate) const META_WAL_START: &str = "pgkeep-wal-start";
pub(crate) const META_SEGMENT_SIZE: &str = "pgkeep-segment-size";

#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error(
        "off-site copies are not configured\nhint: set offsite.url (PGKEEP_OFFSITE_URL), e.g. s3://bucket/prefix, and the recipients (PGKEEP_OFFSITE_RECIPIENTS); see README \"Off-site copies\""
    )]
    NotConfigured,
    #[error(
        "could not set up the S3 client for {url}: {message}\nhint: check offsite.url, offsite.endpoint and the AWS_* environment variables"
    )]
    Client { url: String, message: String },
    #[error(
        "{op} {url}: {source}\nhint: check that the endpoint is reachable, the bucket exists and the AWS_* credentials may use it"
    )]
    Store {
        op: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "off-site copies are encrypted and no recipient is set (offsite.recipients)\nhint: create a key with `pgkeep offsite keygen --out FILE` and set offsite.recipients (PGKEEP_OFFSITE_RECIPIENTS) to the age1... it prints, or set offsite.encrypt = false to store them unencrypted"
    )]
    NoRecipients,
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{path} failed verification, it is not uploaded: {message}\nhint: `pgkeep backups verify` shows what is wrong; a damaged file must not become the off-site copy"
    )]
    Verify { path: PathBuf, message: String },
    #[error(
        "{url} already holds a different file under this name (off-site {remote}, local {local}); it is never overwritten\nhint: find out which copy is right before removing either"
    )]
    Differs {
        url: String,
        remote: String,
        local: String,
    },
    #[error(
        "{url} is not off-site\nhint: `pgkeep backups list` shows what is local and what is off-site"
    )]
    Missing { url: String },
    #[error("encrypting {path}: {message}")]
    Encrypt { path: PathBuf, message: String },
    #[error(
        "no identity to decrypt {url}\nhint: set offsite.identity_file (PGKEEP_OFFSITE_IDENTITY_FILE) to the age identity made by `pgkeep offsite keygen` for one of: {recipients}"
    )]
    NoIdentity { url: String, recipients: String },
    #[error(
        "could not read the age identity file {path}: {message}\nhint: it is the file `pgkeep offsite keygen --out FILE` wrote (AGE-SECRET-KEY-1...)"
    )]
    IdentityFile { path: PathBuf, message: String },
    #[error(
        "the identity in {identity_file} cannot decrypt {url}: the object was made for {recipients}\nhint: point offsite.identity_file (PGKEEP_OFFSITE_IDENTITY_FILE) at the identity of one of those recipients"
    )]
    WrongIdentity {
        url: String,
        identity_file: PathBuf,
        recipients: String,
    },
    #[error(
        "{url} is damaged or cut short ({message}); nothing was written\nhint: try another backup, or the other copy (local or off-site)"
    )]
    Corrupt { url: String, message: String },
    #[error(
        "no system is stored under {url}\nhint: run `pgkeep offsite sync` where the backups are, or check offsite.url"
    )]
    NoSystem { url: String },
    #[error(
        "{url} holds several systems ({found}) and none is this data directory's\nhint: a restore reads the system of the local data directory, or the only one stored; give each cluster its own offsite.url prefix"
    )]
    SeveralSystems { url: String, found: String },
    #[error(
        "cannot tell which system the local files belong to: no readable global/pg_control in {pgdata} and no WAL segment in the archive\nhint: run sync where PGDATA or the WAL archive is mounted"
    )]
    UnknownSystem { pgdata: PathBuf },
}

type Result<T, E = OffsiteError> = std::result::Result<T, E>;

/// Check the `[offsite]` settings; Err((key, message)).
pub fn check_settings(o: &settings::Offsite) -> Result<(), (&'static str, String)> {
    if !o.endpoint.is_empty() {
        let rest = if let Some(r) = o.endpoint.strip_prefix("http://") {
            let host = r.split('/').next().unwrap_or("");
            let host = host
                .rsplit_once(':')
                .map(|(h, p)| {
                    if p.chars().all(|c| c.is_ascii_digit()) {
                        h
                    } else {
                        host
                    }
                })
                .unwrap_or(host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err((
                    "offsite.endpoint",
                    format!(
                        "plain http:// is allowed only for a loopback address, not {:?}; use https://",
                        o.endpoint
                    ),
                ));
            }
            r
        } else if let Some(r) = o.endpoint.strip_prefix("https://") {
            r
        } else {
            return Err((
                "offsite.endpoint",
                format!("expected https://HOST[:PORT], found {:?}", o.endpoint),
            ));
        };
        if rest.is_empty() {
            return Err(("offsite.endpoint", "the endpoint has no host".into()));
        }
    }
    for r in split_recipients(&o.recipients) {
        if r.parse::<age::x25519::Recipient>().is_err() {
            return Err((
                "offsite.recipients",
                format!(
                    "{r:?} is not an age X25519 recipient (age1...); `pgkeep offsite keygen` prints one"
                ),
            ));
        }
    }
    if o.url.is_empty() {
        return Ok(());
    }
    let Some(rest) = o.url.strip_prefix("s3://") else {
        return Err((
            "offsite.url",
            format!("expected s3://BUCKET[/PREFIX], found {:?}", o.url),
        ));
    };
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(("offsite.url", format!("{:?} names no bucket", o.url)));
    }
    Ok(())
}

fn split_recipients(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|r| !r.is_empty())
}

/// A new age identity: (the identity file's text, its recipient).
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        jiff::Timestamp::now(),
        id.to_string().expose_secret()
    );
    (text, recipient)
}

/// What one upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Uploaded: bytes of the local file.
    Uploaded(u64),
    /// The same file was off-site already.
    AlreadyThere,
}

/// One object off-site (name without the `.age` suffix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteFile {
    pub name: String,
    /// Bytes of the object (ciphertext).
    pub size: u64,
}

/// The off-site store.
#[derive(Debug, Clone)]
pub struct Offsite {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: ObjPath,
    recipients: Vec<age::x25519::Recipient>,
    recipients_text: String,
    encrypt: bool,
    identity_file: Option<PathBuf>,
}

impl Offsite {
    /// The store the settings describe; [`OffsiteError::NotConfigured`] when `offsite.url` is empty.
    pub fn open(s: &settings::Offsite) -> Result<Offsite> {
        if s.url.is_empty() {
            return Err(OffsiteError::NotConfigured);
        }
        check_settings(s).map_err(|(key, message)| OffsiteError::Client {
            url: s.url.clone(),
            message: format!("{key}: {message}"),
        })?;
        // reqwest's rustls has no provider of its own in this build: use ring, as kube does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rest = s.url.strip_prefix("s3://").unwrap_or_default();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            });
        if !s.endpoint.is_empty() {
            b = b
                .with_endpoint(&s.endpoint)
                .with_allow_http(s.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if !s.region.is_empty() {
            b = b.with_region(&s.region);
        } else if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        let store = b.build().map_err(|e| OffsiteError::Client {
            url: s.url.clone(),
            message: e.to_string(),
        })?;
        let recipients = split_recipients(&s.recipients)
            .map(|r| r.parse().expect("checked in check_settings"))
            .collect();
        Ok(Offsite {
            store: Arc::new(store),
            url: s.url.trim_end_matches('/').to_owned(),
            prefix: ObjPath::from(prefix),
            recipients,
            recipients_text: split_recipients(&s.recipients)
                .collect::<Vec<_>>()
                .join(","),
            encrypt: s.encrypt,
            identity_file: (!s.identity_file.is_empty()).then(|| PathBuf::from(&s.identity_file)),
        })
    }

    /// Uploads need somebody to encrypt to, unless `offsite.encrypt = false` was said.
    pub fn require_recipients(&self) -> Result<()> {
        if self.encrypt && self.recipients.is_empty() {
            return Err(OffsiteError::NoRecipients);
        }
        Ok(())
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(
        &self,
        op: &'static str,
        key: &ObjPath,
    ) -> impl FnOnce(object_store::Error) -> OffsiteError {
        let url = self.key_url(key);
        move |source| OffsiteError::Store { op, url, source }
    }

    fn key_url(&self, key: &ObjPath) -> String {
        let rest = self.url.strip_prefix("s3://").unwrap_or(&self.url);
        let bucket = rest.split('/').next().unwrap_or(rest);
        format!("s3://{bucket}/{key}")
    }

    /// The system identifiers stored under the prefix.
    pub async fn systems(&self) -> Result<Vec<u64>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(self.err("list", &self.prefix))?;
        let mut out: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|f| f.parse().ok()))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The system to read from: `local` when it is stored, else the only one stored.
    pub async fn choose_system(&self, local: Option<u64>) -> Result<System> {
        let all = self.systems().await?;
        let id = match (local, all.as_slice()) {
            (Some(l), _) if all.contains(&l) => l,
            (_, []) => {
                return Err(OffsiteError::NoSystem {
                    url: self.url.clone(),
                });
            }
            (_, [one]) => *one,
            _ => {
                return Err(OffsiteError::SeveralSystems {
                    url: self.url.clone(),
                    found: all
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        Ok(self.system(id))
    }

    /// The objects of one system.
    pub fn system(&self, id: u64) -> System {
        System {
            off: self.clone(),
            id,
            root: self.prefix.clone().join(id.to_string()),
        }
    }
}

/// The objects of one system identifier.
#[derive(Debug, Clone)]
pub struct System {
    off: Offsite,
    pub id: u64,
    root: ObjPath,
}

impl System {
    fn suffix(&self) -> &'static str {
        if self.off.encrypt { ".age" } else { "" }
    }

    fn backups_dir(&self) -> ObjPath {
        self.root.clone().join("backups")
    }

    fn wal_dir(&self) -> ObjPath {
        self.root.clone().join("wal")
    }

    /// `s3://...` of a backup's object (as this configuration would write it).
    pub fn backup_url(&self, name: &str) -> String {
        self.off
            .key_url(&self.backups_dir().join(format!("{name}{}", self.suffix())))
    }

    async fn list_dir(&self, dir: &ObjPath) -> Result<Vec<(RemoteFile, ObjPath)>> {
        let mut out = Vec::new();
        let mut s = self.off.store.list(Some(dir));
        while let Some(m) = s.next().await {
            let m = m.map_err(self.off.err("list", dir))?;
            let Some(file) = m.location.filename() else {
                continue;
            };
            let name = file.strip_suffix(".age").unwrap_or(file).to_owned();
            out.push((RemoteFile { name, size: m.size }, m.location.clone()));
        }
        out.sort();
        Ok(out)
    }

    /// Backups stored off-site (bundle names), oldest name first.
    pub async fn list_backups(&self) -> Result<Vec<RemoteFile>> {
        Ok(self
            .list_dir(&self.backups_dir())
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| crate::repo::parse_name(&f.name).is_some())
            .collect())
    }

    /// WAL files stored off-site, by their archived file names (`...zst`, `.history`).
    pub async fn list_wal(&self) -> Result<Vec<RemoteFile>> {
        Ok(self
            .list_dir(&self.wal_dir())
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .collect())
    }

    /// Upload a bundle (create-only; an existing object of that name is compared), with extra
    /// user metadata (`(name, value)`; see [`META_WAL_START`]).
    pub async fn put_backup(
        &self,
        local: &Path,
        progress: Progress,
        metadata: &[(&'static str, String)],
    ) -> Result<PutOutcome> {
        let name = file_name(local)?;
        let key = self.backups_dir().join(format!("{name}{}", self.suffix()));
        self.put_file(key, local, progress, metadata).await
    }

    /// One user-metadata value of a stored backup; None when the object or the value is absent.
    pub async fn backup_metadata(&self, name: &str, meta: &str) -> Result<Option<String>> {
        for suffix in [".age", ""] {
            let key = self.backups_dir().join(format!("{name}{suffix}"));
            let got = self
                .off
                .store
                .get_opts(
                    &key,
                    GetOptions {
                        head: true,
                        ..Default::default()
                    },
                )
                .await;
            match got {
                Ok(g) => {
                    return Ok(g
                        .attributes
                        .get(&Attribute::Metadata(meta.to_owned().into()))
                        .map(|v| v.as_ref().to_owned()));
                }
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.off.err("look up", &key)(e)),
            }
        }
        Ok(None)
    }

    /// Delete a stored backup (both spellings: encrypted or not).
    pub async fn delete_backup(&self, name: &str) -> Result<()> {
        for suffix in [".age", ""] {
            let key = self.backups_dir().join(format!("{name}{suffix}"));
            self.delete_key(&key).await?;
        }
        Ok(())
    }

    /// Delete a stored WAL file by its archived file name (both spellings).
    pub async fn delete_wal(&self, file: &str) -> Result<()> {
        for suffix in [".age", ""] {
            let key = self.wal_dir().join(format!("{file}{suffix}"));
            self.delete_key(&key).await?;
        }
        Ok(())
    }

    async fn delete_key(&self, key: &ObjPath) -> Result<()> {
        match self.off.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.off.err("delete", key)(e)),
        }
    }

    /// Upload an archived WAL file (create-only; an existing object is compared).
    pub async fn put_wal(&self, local: &Path, progress: Progress) -> Result<PutOutcome> {
        let name = file_name(local)?;
        let key = self.wal_dir().join(format!("{name}{}", self.suffix()));
        self.put_file(key, local, progress, &[]).await
    }

    /// Download and decrypt a bundle into `dir/name` (published only when whole and authentic).
    pub async fn fetch_backup(&self, name: &str, dir: &Path) -> Result<PathBuf> {
        for suffix in [".age", ""] {
            let key = self.backups_dir().join(format!("{name}{suffix}"));
            match self.get_file(&key, dir, name).await {
                Err(OffsiteError::Missing { .. }) => continue,
                other => return other,
            }
        }
        Err(OffsiteError::Missing {
            url: self.backup_url(name),
        })
    }

    /// Download and decrypt the WAL file `name` (a WAL name, no suffix) into `dir`, under its
    /// archived file name (with the compression suffix it was stored with). None when it is not
    /// off-site.
    pub async fn fetch_wal(&self, name: &str, dir: &Path) -> Result<Option<PathBuf>> {
        for c in Compression::ALL {
            let file = format!("{name}{}", c.suffix());
            for enc in [".age", ""] {
                let key = self.wal_dir().join(format!("{file}{enc}"));
                match self.get_file(&key, dir, &file).await {
                    Err(OffsiteError::Missing { .. }) => continue,
                    other => return other.map(Some),
                }
            }
        }
        Ok(None)
    }

    async fn put_file(
        &self,
        key: ObjPath,
        local: &Path,
        progress: Progress,
        metadata: &[(&'static str, String)],
    ) -> Result<PutOutcome> {
        let off = &self.off;
        let (size, sha) = {
            let local = local.to_owned();
            tokio::task::spawn_blocking(move || crate::bundle::sha256_file(&local))
                .await
                .expect("hashing does not panic")?
        };
        if let Some(existing) = self.compare_existing(&key, size, &sha).await? {
            return Ok(existing);
        }
        let mut attrs = Attributes::new();
        attrs.insert(
            Attribute::Metadata(META_SHA256.into()),
            AttributeValue::from(sha.clone()),
        );
        attrs.insert(
            Attribute::Metadata(META_SIZE.into()),
            AttributeValue::from(size.to_string()),
        );
        if off.encrypt {
            attrs.insert(
                Attribute::Metadata(META_RECIPIENTS.into()),
                AttributeValue::from(off.recipients_text.clone()),
            );
        }
        for (k, v) in metadata {
            attrs.insert(
                Attribute::Metadata((*k).into()),
                AttributeValue::from(v.clone()),
            );
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let producer = {
            let local = local.to_owned();
            let recipients = off.recipients.clone();
            let encrypt = off.encrypt;
            tokio::task::spawn_blocking(move || {
                encrypt_into(&local, encrypt, &recipients, tx, progress)
            })
        };
        let first = rx.recv().await;
        let second = match first {
            Some(_) => rx.recv().await,
            None => None,
        };
        match second {
            None => {
                // Whole file in one part: wait for the producer, then one create-only PUT.
                let produced = producer.await.expect("encryption does not panic");
                produced?;
                let payload = PutPayload::from(first.unwrap_or_default());
                let opts = PutOptions {
                    mode: PutMode::Create,
                    attributes: attrs,
                    ..Default::default()
                };
                match off.store.put_opts(&key, payload, opts).await {
                    Ok(_) => Ok(PutOutcome::Uploaded(size)),
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        // Someone else uploaded it meanwhile: the same rule as before.
                        return match self.compare_existing(&key, size, &sha).await? {
                            Some(o) => Ok(o),
                            None => Err(OffsiteError::Missing {
                                url: off.key_url(&key),
                            }),
                        };
                    }
                    Err(e) => Err(off.err("upload", &key)(e)),
                }
            }
            Some(second) => {
                let opts = PutMultipartOptions {
                    attributes: attrs,
                    ..Default::default()
                };
                let mut up = off
                    .store
                    .put_multipart_opts(&key, opts)
                    .await
                    .map_err(off.err("start upload of", &key))?;
                let parts = async {
                    up.put_part(PutPayload::from(first.expect("first part")))
                        .await?;
                    up.put_part(PutPayload::from(second)).await?;
                    while let Some(part) = rx.recv().await {
                        up.put_part(PutPayload::from(part)).await?;
                    }
                    Ok::<_, object_store::Error>(())
                }
                .await;
                drop(rx);
                let produced = producer.await.expect("encryption does not panic");
                match (parts, produced) {
                    (Ok(()), Ok(())) => match up.complete().await {
                        Ok(_) => Ok(PutOutcome::Uploaded(size)),
                        Err(e) => {
                            let _ = up.abort().await;
                            Err(off.err("complete upload of", &key)(e))
                        }
                    },
                    (Err(e), _) => {
                        let _ = up.abort().await;
                        Err(off.err("upload", &key)(e))
                    }
                    (Ok(()), Err(e)) => {
                        let _ = up.abort().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// When `key` exists: Ok(Some(AlreadyThere)) if it holds the same file, Err(Differs) if not.
    async fn compare_existing(
        &self,
        key: &ObjPath,
        size: u64,
        sha: &str,
    ) -> Result<Option<PutOutcome>> {
        let off = &self.off;
        let got = off
            .store
            .get_opts(
                key,
                GetOptions {
                    head: true,
                    ..Default::default()
                },
            )
            .await;
        let got = match got {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(off.err("look up", key)(e)),
        };
        let meta = |k: &str| {
            got.attributes
                .get(&Attribute::Metadata(k.to_owned().into()))
                .map(|v| v.as_ref().to_owned())
        };
        let (rsha, rsize) = (meta(META_SHA256), meta(META_SIZE));
        if rsha.as_deref() == Some(sha) && rsize.as_deref() == Some(&size.to_string()) {
            Ok(Some(PutOutcome::AlreadyThere))
        } else {
            Err(OffsiteError::Differs {
                url: off.key_url(key),
                remote: format!(
                    "{} bytes, sha256 {}",
                    rsize.unwrap_or_else(|| "?".into()),
                    rsha.unwrap_or_else(|| "unknown".into())
                ),
                local: format!("{size} bytes, sha256 {sha}"),
            })
        }
    }

    /// Download `key`, decrypt when it is an age object, publish as `dir/name`.
    async fn get_file(&self, key: &ObjPath, dir: &Path, name: &str) -> Result<PathBuf> {
        let off = &self.off;
        let url = off.key_url(key);
        let got = match off.store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(OffsiteError::Missing { url }),
            Err(e) => return Err(off.err("download", key)(e)),
        };
        let recipients = got
            .attributes
            .get(&Attribute::Metadata(META_RECIPIENTS.into()))
            .map(|v| v.as_ref().to_owned())
            .unwrap_or_else(|| "(not recorded)".into());
        let encrypted = key.as_ref().ends_with(".age");
        let mut tmp = tempfile::Builder::new()
            .prefix(".pgkeep-offsite-")
            .tempfile_in(dir)
            .fs_ctx("create a temporary file in", dir)?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(off.err("download", key))?;
            tmp.write_all(&chunk).fs_ctx("write", tmp.path())?;
        }
        let identity_file = off.identity_file.clone();
        let dir = dir.to_owned();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let src = File::open(tmp.path()).fs_ctx("open", tmp.path())?;
            let mut out = AtomicFile::create(&dir, &name, 0o600)?;
            let corrupt = |e: &dyn std::fmt::Display| OffsiteError::Corrupt {
                url: url.clone(),
                message: e.to_string(),
            };
            if encrypted {
                let Some(identity_file) = identity_file else {
                    return Err(OffsiteError::NoIdentity {
                        url: url.clone(),
                        recipients,
                    });
                };
                let ids = load_identities(&identity_file)?;
                let d = age::Decryptor::new(BufReader::new(src)).map_err(|e| corrupt(&e))?;
                let mut r = match d.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
                    Ok(r) => r,
                    Err(age::DecryptError::NoMatchingKeys) => {
                        return Err(OffsiteError::WrongIdentity {
                            url,
                            identity_file,
                            recipients,
                        });
                    }
                    Err(e) => return Err(corrupt(&e)),
                };
                copy(&mut r, &mut out).map_err(|e| corrupt(&e))?;
            } else {
                let mut r = src;
                copy(&mut r, &mut out).map_err(|e| corrupt(&e))?;
            }
            Ok(out.commit()?)
        })
        .await
        .expect("decryption does not panic")
    }
}

fn copy(r: &mut dyn Read, w: &mut AtomicFile) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
    let bad = |message: String| OffsiteError::IdentityFile {
        path: path.to_owned(),
        message,
    };
    let f = File::open(path).map_err(|e| bad(e.to_string()))?;
    age::IdentityFile::from_buffer(BufReader::new(f))
        .map_err(|e| bad(e.to_string()))?
        .into_identities()
        .map_err(|e| bad(e.to_string()))
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| OffsiteError::Verify {
            path: p.to_owned(),
            message: "not a file name".into(),
        })
}

/// Called with the number of local bytes read so far, from the encrypting thread.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A `Write` that cuts what is written into [`PART_SIZE`] pieces and hands them on.
struct Parts {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Parts {
    fn send(&mut self) -> io::Result<()> {
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::other("the upload stopped"))
    }
}

impl Write for Parts {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn encrypt_into(
    local: &Path,
    encrypt: bool,
    recipients: &[age::x25519::Recipient],
    tx: tokio::sync::mpsc::Sender<Bytes>,
    progress: Progress,
) -> Result<()> {
    let enc_err = |message: String| OffsiteError::Encrypt {
        path: local.to_owned(),
        message,
    };
    let f = File::open(local).fs_ctx("open", local)?;
    let mut reader = ProgressRead {
        inner: f,
        read: 0,
        progress,
    };
    let mut parts = Parts {
        tx,
        buf: Vec::with_capacity(PART_SIZE),
    };
    if encrypt {
        let e =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| enc_err(e.to_string()))?;
        let mut w = e
            .wrap_output(&mut parts)
            .map_err(|e| enc_err(e.to_string()))?;
        io::copy(&mut reader, &mut w).map_err(|e| enc_err(e.to_string()))?;
        w.finish().map_err(|e| enc_err(e.to_string()))?;
    } else {
        io::copy(&mut reader, &mut parts).map_err(|e| enc_err(e.to_string()))?;
    }
    if !parts.buf.is_empty() {
        parts.send().map_err(|e| enc_err(e.to_string()))?;
    }
    Ok(())
}

struct ProgressRead {
    inner: File,
    read: u64,
    progress: Progress,
}

impl Read for ProgressRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// sync

/// What `offsite sync` should say as it goes.
pub trait SyncProgress: Send + Sync {
    /// A file starts uploading (`bytes`: its local size).
    fn start(&self, name: &str, bytes: u64);
    /// Bytes of the current file read so far.
    fn advance(&self, done: u64);
    /// The current file is done.
    fn done(&self, name: &str, outcome: PutOutcome);
}

/// What one sync round did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncReport {
    pub system_identifier: u64,
    pub uploaded: Vec<String>,
    pub uploaded_bytes: u64,
    /// Files that were off-site already (compared when seen for the first time).
    pub already: usize,
}

/// The system the local files belong to: the data directory's, else the WAL archive's newest
/// segment's.
pub fn local_system(pgdata: &Path, archive: &Archive) -> Option<u64> {
    if let Some(id) = crate::walcheck::expect_from_pgdata(pgdata).system_identifier {
        return Some(id);
    }
    let files = archive.list().ok()?;
    files
        .iter()
        .rev()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .find_map(|f| archive.system_identifier(f))
}

/// Remembers what is known to be off-site, so `--follow` compares each file once.
#[derive(Debug, Default)]
pub struct Known {
    names: BTreeSet<String>,
}

/// Upload every bundle and WAL file in `backups` / `archive` that is not off-site yet, each
/// verified before it leaves. Stops at the first failure (the next round starts over).
pub async fn sync(
    off: &Offsite,
    pgdata: &Path,
    backups: &Path,
    archive: &Archive,
    known: &mut Known,
    progress: Arc<dyn SyncProgress>,
) -> Result<SyncReport> {
    off.require_recipients()?;
    let id = local_system(pgdata, archive).ok_or_else(|| OffsiteError::UnknownSystem {
        pgdata: pgdata.to_owned(),
    })?;
    let sys = off.system(id);
    let mut report = SyncReport {
        system_identifier: id,
        ..Default::default()
    };
    let backups_list = match crate::repo::list(backups) {
        Ok(l) => l,
        Err(crate::repo::RepoError::Fs(e)) if !backups.exists() => {
            tracing::debug!(error = %e, "no backups directory");
            Vec::new()
        }
        Err(e) => {
            return Err(OffsiteError::Verify {
                path: backups.to_owned(),
                message: e.to_string(),
            });
        }
    };
    for b in backups_list {
        let key = format!("backups/{}", b.name);
        if known.names.contains(&key) {
            continue;
        }
        // Verify first (checksums of every member against MANIFEST.json).
        let path = b.path.clone();
        let contents = tokio::task::spawn_blocking(move || crate::bundle::verify(&path))
            .await
            .expect("verify does not panic")
            .map_err(|e| OffsiteError::Verify {
                path: b.path.clone(),
                message: e.to_string(),
            })?;
        let metadata = wal_start_metadata(&b, contents.manifest.as_ref());
        let outcome =
            put_with_progress(&sys, &b.path, b.size, &b.name, &progress, Some(&metadata)).await?;
        record(&mut report, &b.name, b.size, outcome);
        known.names.insert(key);
    }
    let files = if archive.dir().exists() {
        archive.list().map_err(|e| OffsiteError::Verify {
            path: archive.dir().to_owned(),
            message: e.to_string(),
        })?
    } else {
        Vec::new()
    };
    for f in files {
        let file = file_name(&f.path)?;
        let key = format!("wal/{file}");
        if known.names.contains(&key) {
            continue;
        }
        if f.wal.kind == WalKind::Segment {
            let ff = f.clone();
            let expect = crate::walcheck::Expect {
                system_identifier: Some(id),
                major: None,
            };
            tokio::task::spawn_blocking(move || crate::walcheck::check_archived(&ff, expect))
                .await
                .expect("check does not panic")
                .map_err(|e| OffsiteError::Verify {
                    path: f.path.clone(),
                    message: e.to_string(),
                })?;
        }
        let outcome = put_with_progress(&sys, &f.path, f.size, &file, &progress, None).await?;
        record(&mut report, &file, f.size, outcome);
        known.names.insert(key);
    }
    Ok(report)
}

/// A base backup's WAL start, from its verified manifest, as object metadata (none for a logical
/// bundle, or a manifest without the facts).
fn wal_start_metadata(
    b: &crate::repo::Backup,
    manifest: Option<&crate::bundle::Manifest>,
) -> Vec<(&'static str, String)> {
    if b.kind != crate::repo::BackupKind::Physical {
        return Vec::new();
    }
    match manifest.map(crate::physical::PhysicalFacts::from_manifest) {
        Some(Ok(f)) => vec![
            (META_WAL_START, f.start_wal_file),
            (META_SEGMENT_SIZE, f.wal_segment_size.to_string()),
        ],
        _ => Vec::new(),
    }
}

fn record(report: &mut SyncReport, name: &str, size: u64, outcome: PutOutcome) {
    match outcome {
        PutOutcome::Uploaded(_) => {
            report.uploaded.push(name.to_owned());
            report.uploaded_bytes += size;
        }
        PutOutcome::AlreadyThere => report.already += 1,
    }
}

async fn put_with_progress(
    sys: &System,
    path: &Path,
    size: u64,
    name: &str,
    progress: &Arc<dyn SyncProgress>,
    bundle_metadata: Option<&[(&'static str, String)]>,
) -> Result<PutOutcome> {
    progress.start(name, size);
    let p = progress.clone();
    let cb: Progress = Arc::new(move |n| p.advance(n));
    let outcome = match bundle_metadata {
        Some(m) => sys.put_backup(path, cb, m).await?,
        None => sys.put_wal(path, cb).await?,
    };
    progress.done(name, outcome);
    Ok(outcome)
}

/// `wal fetch` from off-site: download `name` into a private directory beside `dest`, then hand
/// it over through the same checked fetch as the local archive. None when not off-site.
pub async fn fetch_wal_checked(
    sys: &System,
    name: &str,
    dest: &Path,
    expect: Option<crate::walcheck::Expect>,
) -> Result<Option<u64>, FetchError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let stage = tempfile::Builder::new()
        .prefix(".pgkeep-offsite-wal-")
        .tempdir_in(dir)
        .map_err(|e| FetchError::Offsite(FsError::new("create a directory in", dir, e).into()))?;
    let Some(_) = sys
        .fetch_wal(name, stage.path())
        .await
        .map_err(FetchError::Offsite)?
    else {
        return Ok(None);
    };
    match Archive::new(stage.path()).fetch_checked(name, dest, expect) {
        Ok(wal::FetchOutcome::Restored { bytes }) => Ok(Some(bytes)),
        Ok(wal::FetchOutcome::Missing) => Ok(None),
        Err(e) => Err(FetchError::Wal(e)),
    }
}

/// What [`materialize`] brought back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Materialized {
    /// The physical bundle, now in the backups directory.
    pub bundle: String,
    /// Whether the bundle was downloaded (false: it was local already).
    pub bundle_downloaded: bool,
    /// WAL files downloaded into the archive.
    pub wal_files: usize,
}

/// Put the off-site copies a bootstrap needs back on the local volumes: the physical bundle
/// `from` (default: the newest off-site) into `backups` unless it is there, and every off-site
/// WAL file that the archive lacks (in any compression) into `archive`. Each file is published
/// only when whole and authentic, segments only when they check out as this system's; nothing
/// local is replaced. The bootstrap then runs on the local copies with every usual check.
pub async fn materialize(
    sys: &System,
    from: Option<&str>,
    backups: &Path,
    archive: &Archive,
) -> Result<Materialized> {
    let bundle = match from {
        Some(n) => n.to_owned(),
        None => sys
            .list_backups()
            .await?
            .into_iter()
            .filter_map(|r| crate::repo::parse_name(&r.name).map(|p| (p, r.name)))
            .filter(|(p, _)| p.kind == crate::repo::BackupKind::Physical)
            .max_by_key(|(p, _)| (p.time, p.seq))
            .map(|(_, n)| n)
            .ok_or_else(|| OffsiteError::Missing {
                url: format!("{}/{}/backups/basebackup-*", sys.off.url, sys.id),
            })?,
    };
    let bundle_downloaded = if backups.join(&bundle).is_file() {
        false
    } else {
        std::fs::create_dir_all(backups).fs_ctx("create", backups)?;
        tracing::info!(url = %sys.backup_url(&bundle), "downloading the base backup from off-site");
        sys.fetch_backup(&bundle, backups).await?;
        true
    };
    std::fs::create_dir_all(archive.dir()).fs_ctx("create", archive.dir())?;
    // The archive root belongs to one system. When another one (a fresh initdb after the
    // disaster) archives there now, this system's WAL goes where bootstrap looks for a
    // superseded system's: `superseded/<system>-<time>/`, which it moves back into the root.
    let root = crate::archive_owner::root_wal(archive).map_err(|e| OffsiteError::Verify {
        path: archive.dir().to_owned(),
        message: e.to_string(),
    })?;
    let dest = match root.system {
        Some(other) if other != sys.id => {
            let existing = crate::archive_owner::find_superseded(archive, sys.id).map_err(|e| {
                OffsiteError::Verify {
                    path: archive.dir().to_owned(),
                    message: e.to_string(),
                }
            })?;
            match existing {
                Some(d) => d,
                None => {
                    let parent = archive.dir().join(crate::archive_owner::SUPERSEDED_DIR);
                    let d = parent.join(format!(
                        "{}-{}",
                        sys.id,
                        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
                    ));
                    std::fs::create_dir_all(&d).fs_ctx("create", &d)?;
                    for dir in [&parent, &d] {
                        own_like(archive.dir(), dir)?;
                    }
                    d
                }
            }
        }
        _ => archive.dir().to_owned(),
    };
    let local = Archive::new(&dest);
    let mut wal_files = 0;
    for r in sys.list_wal().await? {
        let walname = r
            .name
            .strip_suffix(".zst")
            .or_else(|| r.name.strip_suffix(".gz"))
            .unwrap_or(&r.name);
        let Some(w) = wal::parse_name(walname) else {
            continue;
        };
        if local.find(walname).is_some() {
            continue;
        }
        let stage = tempfile::Builder::new()
            .prefix(".pgkeep-offsite-wal-")
            .tempdir_in(&dest)
            .fs_ctx("create a directory in", &dest)?;
        let Some(got) = sys.fetch_wal(walname, stage.path()).await? else {
            continue;
        };
        if w.kind == WalKind::Segment {
            let bad = |message: String| OffsiteError::Verify {
                path: got.clone(),
                message,
            };
            let file = Archive::new(stage.path())
                .list()
                .map_err(|e| bad(e.to_string()))?
                .into_iter()
                .next()
                .ok_or_else(|| bad("vanished after download".into()))?;
            let expect = crate::walcheck::Expect {
                system_identifier: Some(sys.id),
                major: None,
            };
            crate::walcheck::check_archived(&file, expect).map_err(|e| bad(e.to_string()))?;
        }
        own_like(archive.dir(), &got)?;
        let to = dest.join(got.file_name().expect("a file name"));
        crate::fsutil::rename_noreplace(&got, &to)?;
        crate::fsutil::fsync_dir(&dest)?;
        wal_files += 1;
    }
    Ok(Materialized {
        bundle,
        bundle_downloaded,
        wal_files,
    })
}

/// As root, give `path` the owner of `like` (the archive's), so the data owner can read and
/// move what was downloaded.
fn own_like(like: &Path, path: &Path) -> Result<()> {
    if crate::fsutil::is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(like).fs_ctx("stat", like)?;
        crate::fsutil::chown(path, meta.uid(), meta.gid())?;
    }
    Ok(())
}

/// Why an off-site WAL fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Offsite(#[from] OffsiteError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsite(url: &str, endpoint: &str, recipients: &str, encrypt: bool) -> settings::Offsite {
        settings::Offsite {
            url: url.into(),
            endpoint: endpoint.into(),
            region: String::new(),
            recipients: recipients.into(),
            identity_file: String::new(),
            encrypt,
            credentials_secret: String::new(),
        }
    }

    #[test]
    fn settings_are_checked() {
        let (_, r) = generate_identity();
        assert!(check_settings(&offsite("", "", "", true)).is_ok());
        assert!(check_settings(&offsite("s3://b/p", "http://127.0.0.1:9000", &r, true)).is_ok());
        assert!(check_settings(&offsite("s3://b", "http://[::1]:9000", &r, true)).is_ok());
        assert!(check_settings(&offsite("s3://b", "https://s3.example.com", &r, true)).is_ok());
        let key = |o| check_settings(&o).unwrap_err().0;
        // Missing recipients are refused where something is uploaded (Offsite::require_recipients).
        let no_recipients = Offsite::open(&offsite("s3://b", "", "", true)).unwrap();
        assert!(matches!(
            no_recipients.require_recipients(),
            Err(OffsiteError::NoRecipients)
        ));
        let plain = Offsite::open(&offsite("s3://b", "", "", false)).unwrap();
        assert!(plain.require_recipients().is_ok());
        assert_eq!(
            key(offsite("s3://b", "", "age1nope", true)),
            "offsite.recipients"
        );
        assert_eq!(key(offsite("b/p", "", &r, true)), "offsite.url");
        assert_eq!(key(offsite("s3:///p", "", &r, true)), "offsite.url");
        assert_eq!(
            key(offsite("s3://b", "http://10.0.0.1:9000", &r, true)),
            "offsite.endpoint"
        );
        assert_eq!(
            key(offsite("s3://b", "ftp://h", &r, true)),
            "offsite.endpoint"
        );
    }

    #[test]
    fn generated_identity_matches_its_recipient() {
        let (text, recipient) = generate_identity();
        assert!(recipient.starts_with("age1"));
        assert!(text.contains(&format!("# public key: {recipient}")));
        let ids = age::IdentityFile::from_buffer(text.as_bytes())
            .unwrap()
            .into_identities()
            .unwrap();
        let r: age::x25519::Recipient = recipient.parse().unwrap();
        let ct = age::encrypt(&r, b"hello").unwrap();
        assert_eq!(ids.len(), 1);
        let id: age::x25519::Identity = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .unwrap()
            .parse()
            .unwrap();
        let pt = age::decrypt(&id, &ct).unwrap();
        assert_eq!(pt, b"hello");
    }

    #[test]
    fn parts_are_bounded() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut p = Parts {
            tx,
            buf: Vec::with_capacity(PART_SIZE),
        };
        let data = vec![7u8; PART_SIZE * 2 + 5];
        p.write_all(&data).unwrap();
        p.send().unwrap();
        drop(p);
        let mut sizes = Vec::new();
        while let Ok(b) = rx.try_recv() {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![PART_SIZE, PART_SIZE, 5]);
    }
}
