//! Off-site copies: every bundle and WAL file of the local repository, encrypted with age and
//! stored in S3-compatible object storage; and reading them back when the local copy is gone.
//!
//! Object layout under `offsite.url` (`s3://bucket/prefix`), one prefix per system identifier
//! (the `initdb` identity of the cluster the files belong to, as in `global/pg_control`):
//!
//! ```text
//! <prefix>/<system identifier>/backups/<bundle name>.age     nightly-*.tar.gz, basebackup-*.bundle.tar.zst (or .tar.gz)
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
/// An incremental base backup's chain (link names, full first, space-separated), so off-site
/// retention keeps what a kept incremental needs without decrypting anything.
pub(crate) const META_CHAIN: &str = "pgkeep-chain";

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
            if !loopback && !o.allow_http {
                return Err((
                    "offsite.endpoint",
                    format!(
                        "plain http:// is allowed only for a loopback address, not {:?}; use https:// (or set offsite.allow_http = true for a network you trust)",
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
            if s.allow_http && s.endpoint.starts_with("http://") {
                tracing::warn!(
                    endpoint = %s.endpoint,
                    "offsite.allow_http: plain http; objects are encrypted, names and request metadata are not"
                );
            }
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

    /// The system to read from: `local` when it is stored, else the only one stored. With
    /// `need`, only systems holding a bundle of that kind count: after a disaster the fresh
    /// deployment's follower may already have stored its own (bundle-less) system beside the
    /// lost one, and the restore must read the one with backups.
    pub async fn choose_system(
        &self,
        local: Option<u64>,
        need: Option<crate::repo::BackupKind>,
    ) -> Result<System> {
        let mut all = self.systems().await?;
        if let Some(kind) = need {
            let mut with = Vec::new();
            for id in all {
                let has = self
                    .system(id)
                    .list_backups()
                    .await?
                    .iter()
                    .any(|f| crate::repo::parse_name(&f.name).is_some_and(|b| b.kind == kind));
                if has {
                    with.push(id);
                }
            }
            all = with;
        }
        let id = match (local, all.as_slice()) {
            (Some(l), _) if all.contains(&l) => l,
            (_, []) => {
                return Err(OffsiteError::NoSystem {
                    url: self.url.clone(),
                });
            }
            (_, [one]) => {
                if local.is_some_and(|l| l != *one) {
                    tracing::info!(
                        system = one,
                        "reading the only system stored off-site{}, not this data directory's",
                        need.map(|k| format!(" with {} bundles", k.label()))
                            .unwrap_or_default()
                    );
                }
                *one
            }
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

pub mod status;
mod sync;
mod system;

pub use sync::*;
pub use system::*;

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
            identity_secret: String::new(),
            allow_http: false,
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
        let mut trusted = offsite("s3://b", "http://10.0.0.1:9000", &r, true);
        trusted.allow_http = true;
        assert!(check_settings(&trusted).is_ok(), "allow_http says so");
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
