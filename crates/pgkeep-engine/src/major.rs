//! Major-version compatibility of base backups: a physical bundle is a copy of a data
//! directory, which only a server of the same PostgreSQL major can run (PostgreSQL refuses it
//! with "database files are incompatible with server" after the data is already in place). The
//! bootstrap and the drill ask [`check_physical`] in their checking phase, before anything is
//! changed; the way across majors is the logical bundle (`pgkeep restore dump`), since pg_dump's
//! output loads into a newer server.

use std::path::PathBuf;

use crate::ExitClass;
use crate::physical::PhysicalFacts;
use crate::tools::{PgBin, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum MajorError {
    #[error(
        "{bundle} was taken on PostgreSQL {bundle_major} ({bundle_version}), but the server binaries here{bin} are PostgreSQL {server_major}: a base backup only runs on its own major; nothing was changed\nhint: to move to PostgreSQL {server_major}, restore a logical (nightly) bundle with `pgkeep restore dump` (the dump/restore upgrade path); to restore this base backup, point PGKEEP_PG_BIN at PostgreSQL {bundle_major} binaries"
    )]
    Mismatch {
        bundle: String,
        bundle_major: u32,
        bundle_version: String,
        server_major: u32,
        bin: String,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl crate::Classified for MajorError {
    fn exit_class(&self) -> ExitClass {
        match self {
            MajorError::Mismatch { .. } => ExitClass::Refused,
            MajorError::Tool(_) => ExitClass::Failed,
        }
    }
}

/// The major of the server binaries (`postgres --version`).
pub fn server_major(pg: &PgBin) -> Result<u32, MajorError> {
    Ok(pg.major_version("postgres")?)
}

/// Refuse a base backup whose major (from its MANIFEST.json) is not the server binaries' major.
pub fn check_physical(pg: &PgBin, bundle: &str, facts: &PhysicalFacts) -> Result<(), MajorError> {
    let server_major = server_major(pg)?;
    compare(bundle, facts, server_major, pg.dir().map(PathBuf::from))
}

fn compare(
    bundle: &str,
    facts: &PhysicalFacts,
    server_major: u32,
    dir: Option<PathBuf>,
) -> Result<(), MajorError> {
    let bundle_major = facts.server_version_num / 10000;
    if bundle_major == server_major {
        return Ok(());
    }
    Err(MajorError::Mismatch {
        bundle: bundle.to_owned(),
        bundle_major,
        bundle_version: facts.server_version.clone(),
        server_major,
        bin: dir
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Classified;

    fn facts(num: u32, version: &str) -> PhysicalFacts {
        let mut f = PhysicalFacts::for_test(1, "0/2000028", "0/2000100");
        f.server_version_num = num;
        f.server_version = version.into();
        f
    }

    #[test]
    fn same_major_passes_other_majors_are_refused_pointing_to_restore_dump() {
        compare("b", &facts(150014, "15.14"), 15, None).unwrap();
        compare("b", &facts(180001, "18.1"), 18, None).unwrap();
        let e = compare(
            "basebackup-x.bundle.tar.gz",
            &facts(150014, "15.14"),
            18,
            Some("/opt/pg/bin".into()),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("PostgreSQL 15 (15.14)"), "{m}");
        assert!(m.contains("(/opt/pg/bin) are PostgreSQL 18"), "{m}");
        assert!(m.contains("`pgkeep restore dump`"), "{m}");
        assert!(m.contains("nothing was changed"), "{m}");
        assert_eq!(e.exit_class(), ExitClass::Refused);
        // Older binaries than the bundle: refused too.
        assert!(compare("b", &facts(180001, "18.1"), 17, None).is_err());
    }
}
