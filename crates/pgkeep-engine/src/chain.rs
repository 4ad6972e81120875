//! Chains of incremental base backups (PostgreSQL 17+): a full base backup and the incrementals
//! taken on top of it, each on top of the one before.
//!
//! An incremental bundle's MANIFEST.json says `"incremental": true`, names its `parent` and lists
//! the `chain` down to the full (full first, parent last): for each link its name, system
//! identifier, timeline, start and stop LSN and the SHA-256 of its pg_basebackup
//! `backup_manifest` (which itself holds a checksum of every file of that backup), so a bundle put
//! in a link's place is told apart from the one the incremental was taken on.
//!
//! [`resolve`] finds the bundles of a chain in the backups directory by those names;
//! [`check_link`] says whether a bundle is the link the incremental recorded and whether the
//! LSNs line up (each link starts after its parent ended). Restores, drills, `backups verify`
//! and retention all go through these two.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::Manifest;
use crate::physical::{PG_MANIFEST, PhysicalFacts};
use crate::repo::{self, Backup};

/// One link of a chain, as an incremental's MANIFEST.json records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// SHA-256 of the link's `backup_manifest` member.
    pub backup_manifest_sha256: String,
}

/// What an incremental's MANIFEST.json says about the backups it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainInfo {
    /// The bundle this incremental was taken on top of.
    pub parent: String,
    /// Full first, parent last.
    pub chain: Vec<Link>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "{bundle} is an incremental base backup and needs {missing}, which is not in {dir}; nothing was changed\nhint: restore {missing} into the backups directory (e.g. from the off-site copy), or use a full base backup or a complete chain (`pgkeep backups list` shows each incremental's parent)"
    )]
    MissingLink {
        bundle: String,
        missing: String,
        dir: std::path::PathBuf,
    },
    #[error(
        "{bundle} is an incremental base backup, but the chain it needs does not hold together: {link} {problem}; nothing was changed\nhint: use a full base backup or another chain (`pgkeep backups list`); `pgkeep backups verify` checks every chain"
    )]
    Broken {
        bundle: String,
        link: String,
        problem: String,
    },
    #[error("{bundle}: MANIFEST.json has an unreadable chain: {message}\nhint: use another backup")]
    BadInfo { bundle: String, message: String },
}

impl crate::Classified for ChainError {
    /// Found before anything is changed: a refusal.
    fn exit_class(&self) -> crate::ExitClass {
        crate::ExitClass::Refused
    }
}

impl ChainInfo {
    /// The chain an incremental's manifest records; None for a full base backup.
    pub fn from_manifest(m: &Manifest) -> Result<Option<ChainInfo>, String> {
        if m.info.get("incremental").and_then(|v| v.as_bool()) != Some(true) {
            return Ok(None);
        }
        let parent = m
            .info_str("parent")
            .ok_or("MANIFEST.json of an incremental lacks `parent`")?
            .to_owned();
        let chain: Vec<Link> = serde_json::from_value(
            m.info
                .get("chain")
                .cloned()
                .ok_or("MANIFEST.json of an incremental lacks `chain`")?,
        )
        .map_err(|e| format!("`chain` is not a list of links: {e}"))?;
        if chain.last().map(|l| l.name.as_str()) != Some(parent.as_str()) {
            return Err("the last link of `chain` is not the parent".into());
        }
        Ok(Some(ChainInfo { parent, chain }))
    }

    /// The entries to add to an incremental's MANIFEST.json.
    pub fn to_info(&self) -> BTreeMap<String, serde_json::Value> {
        let mut info = BTreeMap::new();
        info.insert("incremental".into(), true.into());
        info.insert("parent".into(), self.parent.clone().into());
        info.insert(
            "chain".into(),
            serde_json::to_value(&self.chain).expect("links serialise"),
        );
        info
    }

    /// The chain of an incremental taken on top of `parent` (whose own chain is `parent_chain`).
    pub fn on_top_of(
        parent: &str,
        facts: &PhysicalFacts,
        backup_manifest_sha256: &str,
        parent_chain: Option<&ChainInfo>,
    ) -> ChainInfo {
        let mut chain = parent_chain.map(|c| c.chain.clone()).unwrap_or_default();
        chain.push(link_of(parent, facts, backup_manifest_sha256));
        ChainInfo {
            parent: parent.to_owned(),
            chain,
        }
    }
}

/// A link for a bundle with these facts.
pub fn link_of(name: &str, facts: &PhysicalFacts, backup_manifest_sha256: &str) -> Link {
    Link {
        name: name.to_owned(),
        system_identifier: facts.system_identifier.clone(),
        timeline: facts.timeline,
        start_lsn: facts.start_lsn.to_string(),
        stop_lsn: facts.stop_lsn.to_string(),
        backup_manifest_sha256: backup_manifest_sha256.to_owned(),
    }
}

/// The SHA-256 a manifest records for its `backup_manifest` member.
pub fn backup_manifest_sha256(m: &Manifest) -> Option<&str> {
    m.members
        .iter()
        .find(|d| d.path == PG_MANIFEST)
        .map(|d| d.sha256.as_str())
}

/// The bundles of `info`'s chain in `dir`, full first (the incremental itself not included).
pub fn resolve(dir: &Path, bundle: &str, info: &ChainInfo) -> Result<Vec<Backup>, ChainError> {
    info.chain
        .iter()
        .map(|l| {
            repo::find(dir, &l.name).map_err(|_| ChainError::MissingLink {
                bundle: bundle.to_owned(),
                missing: l.name.clone(),
                dir: dir.to_owned(),
            })
        })
        .collect()
}

/// Whether the bundle whose (verified) manifest is `m` is the link `want` recorded, and, when
/// `child_start` is given, whether the child starts at or after this link's end.
pub fn check_link(
    bundle: &str,
    want: &Link,
    m: &Manifest,
    child: Option<(&str, &str)>,
) -> Result<(), ChainError> {
    let broken = |problem: String| ChainError::Broken {
        bundle: bundle.to_owned(),
        link: want.name.clone(),
        problem,
    };
    let facts = PhysicalFacts::from_manifest(m).map_err(|e| broken(format!("is unusable: {e}")))?;
    let have = link_of(
        &want.name,
        &facts,
        backup_manifest_sha256(m).unwrap_or("(none)"),
    );
    if have.system_identifier != want.system_identifier {
        return Err(broken(format!(
            "is a backup of system {}, the chain was taken on system {}",
            have.system_identifier, want.system_identifier
        )));
    }
    if have.backup_manifest_sha256 != want.backup_manifest_sha256
        || have.start_lsn != want.start_lsn
        || have.stop_lsn != want.stop_lsn
        || have.timeline != want.timeline
    {
        return Err(broken(format!(
            "is not the backup the incremental was taken on (it covers {}..{} on timeline {}, its backup_manifest SHA-256 is {}; the chain recorded {}..{} on timeline {}, {})",
            have.start_lsn,
            have.stop_lsn,
            have.timeline,
            have.backup_manifest_sha256,
            want.start_lsn,
            want.stop_lsn,
            want.timeline,
            want.backup_manifest_sha256
        )));
    }
    if let Some((child_name, child_start)) = child {
        let start: crate::wal::Lsn = child_start
            .parse()
            .map_err(|e| broken(format!("is followed by an unreadable start LSN: {e}")))?;
        if start < facts.stop_lsn {
            return Err(broken(format!(
                "ends at {}, after {child_name} starts ({start}): the LSNs do not line up",
                facts.stop_lsn
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleKind, MemberDigest};

    fn manifest(facts: &PhysicalFacts, sha: &str, chain: Option<&ChainInfo>) -> Manifest {
        let mut info: BTreeMap<String, serde_json::Value> =
            match serde_json::to_value(facts).unwrap() {
                serde_json::Value::Object(m) => m.into_iter().collect(),
                _ => unreachable!(),
            };
        info.insert("layout".into(), crate::physical::LAYOUT.into());
        if let Some(c) = chain {
            info.extend(c.to_info());
        }
        Manifest {
            format: 1,
            kind: BundleKind::Physical,
            pgkeep_version: "x".into(),
            info,
            members: vec![MemberDigest {
                path: PG_MANIFEST.into(),
                size: 1,
                sha256: sha.into(),
            }],
        }
    }

    #[test]
    fn chains_are_recorded_and_links_checked() {
        let full = PhysicalFacts::for_test(1, "0/2000028", "0/2000100");
        let incr = PhysicalFacts::for_test(1, "0/4000028", "0/4000100");
        let full_m = manifest(&full, "aa", None);
        assert_eq!(ChainInfo::from_manifest(&full_m).unwrap(), None);
        let c1 = ChainInfo::on_top_of("f", &full, "aa", None);
        let incr_m = manifest(&incr, "bb", Some(&c1));
        let read = ChainInfo::from_manifest(&incr_m).unwrap().unwrap();
        assert_eq!(read, c1);
        let c2 = ChainInfo::on_top_of("i1", &incr, "bb", Some(&read));
        assert_eq!(
            c2.chain.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["f", "i1"]
        );
        assert_eq!(c2.parent, "i1");
        // The right link passes; a changed one, another system, or LSNs that overlap do not.
        check_link("i2", &c2.chain[0], &full_m, Some(("i1", "0/4000028"))).unwrap();
        let other = manifest(&full, "cc", None);
        let e = check_link("i2", &c2.chain[0], &other, None).unwrap_err();
        assert!(e.to_string().contains("is not the backup"), "{e}");
        let mut foreign = full.clone();
        foreign.system_identifier = "2".into();
        let e = check_link("i2", &c2.chain[0], &manifest(&foreign, "aa", None), None).unwrap_err();
        assert!(e.to_string().contains("system 2"), "{e}");
        let e = check_link("i2", &c2.chain[0], &full_m, Some(("i1", "0/2000000"))).unwrap_err();
        assert!(e.to_string().contains("do not line up"), "{e}");
    }
}
