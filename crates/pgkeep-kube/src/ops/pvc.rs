//! `pg.pvc.ensure`: create each PersistentVolumeClaim that is missing; report the ones that
//! exist; never patch, replace or delete a claim.
//!
//! For each desired claim: `GET .../persistentvolumeclaims/NAME`; on 404
//! `POST .../persistentvolumeclaims` (with `dryRun=All` for a dry run). An existing claim is
//! reported with its phase, capacity, storage class and access modes, and every difference
//! from the desired spec (size, storage class, access modes) is listed with the seed's note:
//! bound claims are immutable; to change size or class, create a new claim under another name
//! and migrate the data. A 409 on create (someone created it meanwhile) is reported like an
//! existing claim.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::PostParams;

use super::error::{Op, api_code, classify};
use super::{Cluster, OpsError};

/// One difference between the desired and the existing claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcDifference {
    /// `size`, `storage class` or `access modes`.
    pub field: &'static str,
    pub desired: String,
    pub actual: String,
}

/// What was found or done for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvcState {
    /// Created (or, in a dry run, would be created).
    Created {
        size: String,
        storage_class: Option<String>,
    },
    /// Already there; left untouched.
    Existing {
        phase: String,
        capacity: Option<String>,
        storage_class: Option<String>,
        access_modes: Vec<String>,
        volume: Option<String>,
        differences: Vec<PvcDifference>,
    },
}

/// The report for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvcReport {
    pub name: String,
    pub namespace: String,
    pub dry_run: bool,
    pub state: PvcState,
}

impl PvcReport {
    /// Whether an existing claim differs from the desired one.
    pub fn differs(&self) -> bool {
        matches!(&self.state, PvcState::Existing { differences, .. } if !differences.is_empty())
    }
}

impl fmt::Display for PvcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry = if self.dry_run { " (dry run)" } else { "" };
        match &self.state {
            PvcState::Created {
                size,
                storage_class,
            } => write!(
                f,
                "persistentvolumeclaim/{} created{dry}: {size}, storage class {}",
                self.name,
                storage_class.as_deref().unwrap_or("(cluster default)")
            ),
            PvcState::Existing {
                phase,
                capacity,
                storage_class,
                access_modes,
                volume,
                differences,
            } => {
                write!(
                    f,
                    "persistentvolumeclaim/{} exists, left unchanged: {phase}, capacity {}, storage class {}, access modes {}{}",
                    self.name,
                    capacity.as_deref().unwrap_or("(none yet)"),
                    storage_class.as_deref().unwrap_or("(none)"),
                    if access_modes.is_empty() {
                        "(none)".to_string()
                    } else {
                        access_modes.join(",")
                    },
                    volume
                        .as_deref()
                        .map(|v| format!(", volume {v}"))
                        .unwrap_or_default(),
                )?;
                if !differences.is_empty() {
                    for d in differences {
                        write!(
                            f,
                            "\n  {}: wanted {}, the claim has {}",
                            d.field, d.desired, d.actual
                        )?;
                    }
                    write!(
                        f,
                        "\n  pgkeep never changes an existing claim: bound claims are immutable. To change size or storage class, \
                         create a new claim with a different name (e.g. {}-new, via the pvc.*.name setting), migrate the data \
                         (a backup, then a restore onto the new claim), and point the Deployment at it.",
                        self.name
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Ensure every desired claim exists (see the module docs); returns one report per claim,
/// in order. Stops at the first error (403, missing namespace, ...).
pub async fn ensure_pvcs(
    cluster: &Cluster,
    desired: &[PersistentVolumeClaim],
    dry_run: bool,
) -> Result<Vec<PvcReport>, OpsError> {
    let mut out = Vec::with_capacity(desired.len());
    for pvc in desired {
        out.push(ensure_pvc(cluster, pvc, dry_run).await?);
    }
    Ok(out)
}

/// Ensure one claim exists; never modifies an existing one.
pub async fn ensure_pvc(
    cluster: &Cluster,
    desired: &PersistentVolumeClaim,
    dry_run: bool,
) -> Result<PvcReport, OpsError> {
    let name = desired
        .metadata
        .name
        .clone()
        .ok_or_else(|| OpsError::InvalidObject {
            message: "a PersistentVolumeClaim has no metadata.name".into(),
            hint: "render the claims from the settings (pvc.*.name)".into(),
        })?;
    let api = cluster.api::<PersistentVolumeClaim>();
    let report = |state| PvcReport {
        name: name.clone(),
        namespace: cluster.namespace.clone(),
        dry_run,
        state,
    };
    match api.get(&name).await {
        Ok(existing) => return Ok(report(existing_state(desired, &existing))),
        Err(e) if api_code(&e) == Some(404) => {}
        Err(e) => {
            return Err(classify(
                e,
                cluster,
                Op::new("get", "persistentvolumeclaims", &name),
            ));
        }
    }
    let pp = PostParams {
        dry_run,
        ..PostParams::default()
    };
    match api.create(&pp, desired).await {
        Ok(_) => Ok(report(PvcState::Created {
            size: requested_size(desired).unwrap_or_default(),
            storage_class: storage_class(desired),
        })),
        Err(e) if api_code(&e) == Some(409) => {
            let existing = api.get(&name).await.map_err(|e| {
                classify(e, cluster, Op::new("get", "persistentvolumeclaims", &name))
            })?;
            Ok(report(existing_state(desired, &existing)))
        }
        Err(e) => Err(classify(
            e,
            cluster,
            Op::new("create", "persistentvolumeclaims", &name),
        )),
    }
}

fn requested_size(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

fn storage_class(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .storage_class_name
        .clone()
        .filter(|s| !s.is_empty())
}

fn access_modes(pvc: &PersistentVolumeClaim) -> Vec<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default()
}

fn existing_state(desired: &PersistentVolumeClaim, existing: &PersistentVolumeClaim) -> PvcState {
    let status = existing.status.as_ref();
    let mut differences = Vec::new();
    if let Some(want) = requested_size(desired) {
        let have = requested_size(existing).unwrap_or_else(|| "(none)".into());
        let same = match (parse_quantity(&want), parse_quantity(&have)) {
            (Some(a), Some(b)) => a == b,
            _ => want == have,
        };
        if !same {
            differences.push(PvcDifference {
                field: "size",
                desired: want,
                actual: have,
            });
        }
    }
    // An empty desired class means "the cluster's default": whatever the claim got is fine.
    if let Some(want) = storage_class(desired) {
        let have = storage_class(existing).unwrap_or_else(|| "(none)".into());
        if want != have {
            differences.push(PvcDifference {
                field: "storage class",
                desired: want,
                actual: have,
            });
        }
    }
    let want_modes: BTreeSet<String> = access_modes(desired).into_iter().collect();
    let have_modes: BTreeSet<String> = access_modes(existing).into_iter().collect();
    if !want_modes.is_empty() && want_modes != have_modes {
        differences.push(PvcDifference {
            field: "access modes",
            desired: want_modes.into_iter().collect::<Vec<_>>().join(","),
            actual: have_modes.into_iter().collect::<Vec<_>>().join(","),
        });
    }
    PvcState::Existing {
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into()),
        capacity: status
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        storage_class: storage_class(existing),
        access_modes: access_modes(existing),
        volume: existing.spec.as_ref().and_then(|s| s.volume_name.clone()),
        differences,
    }
}

/// A Kubernetes quantity (`100Gi`, `20G`, `1.5Ti`, `107374182400`) in bytes; `None` when it
/// cannot be read (then quantities are compared as strings).
pub fn parse_quantity(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(mult)?;
    if !frac.is_empty() {
        let digits: u32 = frac.len().try_into().ok()?;
        let f: u128 = frac.parse().ok()?;
        value = value.checked_add(f.checked_mul(mult)? / 10u128.checked_pow(digits)?)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100Gi"), Some(100 * (1 << 30)));
        assert_eq!(parse_quantity("107374182400"), parse_quantity("100Gi"));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("20G"), Some(20_000_000_000));
        assert_ne!(parse_quantity("20G"), parse_quantity("20Gi"));
        assert_eq!(parse_quantity("5Xi"), None);
        assert_eq!(parse_quantity("Gi"), None);
    }
}
