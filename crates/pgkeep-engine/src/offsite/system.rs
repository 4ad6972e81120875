//! One system identifier's objects off-site ([`System`]): put (encrypted, in parts), get,
//! list and remove, and the streaming pieces they are made of.

use super::*;

/// The objects of one system identifier.
#[derive(Debug, Clone)]
pub struct System {
    pub(super) off: Offsite,
    pub id: u64,
    pub(super) root: ObjPath,
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

    /// Several user-metadata values of a stored backup from one `HEAD`, in the order asked;
    /// each None when absent (all None when the object is).
    pub async fn backup_metadata_all(
        &self,
        name: &str,
        metas: &[&str],
    ) -> Result<Vec<Option<String>>> {
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
                    return Ok(metas
                        .iter()
                        .map(|m| {
                            g.attributes
                                .get(&Attribute::Metadata((*m).to_owned().into()))
                                .map(|v| v.as_ref().to_owned())
                        })
                        .collect());
                }
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.off.err("look up", &key)(e)),
            }
        }
        Ok(vec![None; metas.len()])
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

pub(super) fn copy(r: &mut dyn Read, w: &mut AtomicFile) -> io::Result<u64> {
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

pub(super) fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
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

pub(super) fn file_name(p: &Path) -> Result<String> {
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
pub(super) struct Parts {
    pub(super) tx: tokio::sync::mpsc::Sender<Bytes>,
    pub(super) buf: Vec<u8>,
}

impl Parts {
    pub(super) fn send(&mut self) -> io::Result<()> {
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

pub(super) fn encrypt_into(
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

pub(super) struct ProgressRead {
    pub(super) inner: File,
    pub(super) read: u64,
    pub(super) progress: Progress,
}

impl Read for ProgressRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}
