//! The superuser Secret (`postgres-superuser`): created with a random password only when it
//! does not exist; an existing Secret is never read for its data, overwritten or printed.
//!
//! Requests: `GET .../secrets/NAME`; on 404 `POST .../secrets` (with `dryRun=All` for a dry run)
//! with the caller's template plus `stringData[password_key]` = a fresh random password. A 409
//! on create (created meanwhile) counts as "exists". The password lives only in the request
//! body: it is not returned, logged, or put in any error message.

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;

use super::error::{Op, api_code, classify};
use super::{Cluster, OpsError};

/// Length of generated passwords (alphanumeric: ~190 bits).
pub const PASSWORD_LEN: usize = 32;

/// What [`ensure_secret_with_password`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOutcome {
    /// Created with a new random password (in a dry run: would be).
    Created { name: String, dry_run: bool },
    /// It existed and was left untouched.
    Exists { name: String },
}

impl std::fmt::Display for SecretOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretOutcome::Created { name, dry_run } => write!(
                f,
                "secret/{name} created with a random password{}",
                if *dry_run { " (dry run)" } else { "" }
            ),
            SecretOutcome::Exists { name } => write!(f, "secret/{name} exists, left unchanged"),
        }
    }
}

/// Create `template` with a random password under `stringData[password_key]`, unless a Secret
/// of that name exists. Other keys of the template (e.g. the user name) are sent as they are.
pub async fn ensure_secret_with_password(
    cluster: &Cluster,
    template: &Secret,
    password_key: &str,
    dry_run: bool,
) -> Result<SecretOutcome, OpsError> {
    let name = template
        .metadata
        .name
        .clone()
        .ok_or_else(|| OpsError::InvalidObject {
            message: "the superuser Secret has no metadata.name".into(),
            hint: "render it from the settings (kube.secret)".into(),
        })?;
    let api = cluster.api::<Secret>();
    // A metadata-only GET (`as=PartialObjectMetadata`, served since 1.15): the data of an
    // existing Secret never reaches this process.
    match api.get_metadata(&name).await {
        Ok(_) => return Ok(SecretOutcome::Exists { name }),
        Err(e) if api_code(&e) == Some(404) => {}
        Err(e) => return Err(classify(e, cluster, Op::new("get", "secrets", &name))),
    }
    let mut secret = template.clone();
    secret
        .string_data
        .get_or_insert_with(Default::default)
        .insert(password_key.to_string(), random_password(PASSWORD_LEN)?);
    if let Some(data) = secret.data.as_mut() {
        data.remove(password_key);
    }
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    match api.create(&pp, &secret).await {
        Ok(_) => Ok(SecretOutcome::Created { name, dry_run }),
        Err(e) if api_code(&e) == Some(409) => Ok(SecretOutcome::Exists { name }),
        Err(e) => Err(classify(e, cluster, Op::new("create", "secrets", &name))),
    }
}

/// A random alphanumeric password from the operating system's generator.
pub fn random_password(len: usize) -> Result<String, OpsError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| OpsError::Refused {
            action: "generate a password".into(),
            why: format!("the operating system's random generator failed: {e}"),
            hint: "retry; check that /dev/urandom or getrandom(2) is available".into(),
        })?;
        for b in buf {
            // 248 = 4 * 62: rejection sampling keeps the distribution uniform.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}
