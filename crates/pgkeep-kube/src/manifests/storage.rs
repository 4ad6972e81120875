//! The PersistentVolumeClaims (data, WAL archive, backups) and the superuser Secret template.
//!
//! PVCs are created only when missing (`pgkeep pvc ensure`), never through the kustomization:
//! a bound claim is immutable, and `kubectl delete -k` must not be able to take the data with
//! it. The Secret file is a template without a password: `pgkeep deploy` creates the real one
//! with a random password when it is missing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use pgkeep_engine::settings::{Pvc, Settings};

use super::common::{Component, meta};

fn pvc(s: &Settings, p: &Pvc) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(s, &p.name, Component::Storage),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(p.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: (!s.kube.storage_class.is_empty())
                .then(|| s.kube.storage_class.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

/// PGDATA's volume (the seed's `pgdata-big`).
pub fn data_pvc(s: &Settings) -> PersistentVolumeClaim {
    pvc(s, &s.pvc.data)
}

/// The WAL archive (the seed's `pg-wal-archive`).
pub fn wal_archive_pvc(s: &Settings) -> PersistentVolumeClaim {
    pvc(s, &s.pvc.wal_archive)
}

/// The backup repository (the seed's `pgbackups`).
pub fn backups_pvc(s: &Settings) -> PersistentVolumeClaim {
    pvc(s, &s.pvc.backups)
}

/// The superuser Secret, without a password (no `data`, no `stringData`).
pub fn superuser_secret_template(s: &Settings) -> Secret {
    let mut m = meta(s, &s.kube.secret, Component::Storage);
    m.annotations = Some(BTreeMap::from([(
        "pgkeep.io/password".to_owned(),
        "created by `pgkeep deploy` with a random value when the Secret is missing; never stored in files".to_owned(),
    )]));
    Secret {
        metadata: m,
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvcs_follow_settings() {
        let mut s = Settings::default();
        let d = data_pvc(&s);
        assert_eq!(d.metadata.name.as_deref(), Some("pgdata-big"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("record-platform"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteOnce"]);
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("100Gi".into())
        );
        assert_eq!(
            spec.storage_class_name, None,
            "empty means the default class"
        );
        let w = wal_archive_pvc(&s);
        assert_eq!(w.metadata.name.as_deref(), Some("pg-wal-archive"));
        assert_eq!(
            w.spec.unwrap().resources.unwrap().requests.unwrap()["storage"],
            Quantity("20Gi".into())
        );
        assert_eq!(backups_pvc(&s).metadata.name.as_deref(), Some("pgbackups"));
        s.kube.storage_class = "fast-ssd".into();
        s.pvc.data.size = "1Ti".into();
        let spec = data_pvc(&s).spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Ti".into())
        );
    }

    #[test]
    fn secret_template_holds_no_password() {
        let s = Settings::default();
        let sec = superuser_secret_template(&s);
        assert_eq!(sec.metadata.name.as_deref(), Some("postgres-superuser"));
        assert!(sec.data.is_none());
        assert!(sec.string_data.is_none());
    }
}
