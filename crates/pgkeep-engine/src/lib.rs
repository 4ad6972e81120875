//! pgkeep's engine: everything that runs beside PostgreSQL, with no Kubernetes types.
//!
//! The binary calls operations here (prepare directories, take a backup, push a WAL segment);
//! Kubernetes Jobs run the same binary, so this crate is written and tested once, against a real
//! PostgreSQL. Each module owns one concern and has its own error type whose messages say what to
//! do; [`ExitClass`] tells the binary which exit code an error maps to.

pub mod archive_owner;
pub mod bootmark;
pub mod bundle;
pub mod catalog;
pub mod clock;
pub mod datadir;
pub mod db;
pub mod drill;
pub mod fsutil;
pub mod inspect;
pub mod logical;
pub mod major;
pub mod metrics;
pub mod mountinfo;
pub mod observe;
pub mod offsite;
pub mod offsite_retention;
pub mod physical;
pub mod postmaster;
pub mod recovery;
pub mod repo;
pub mod results;
pub mod retention;
pub mod runmark;
pub mod sanity;
pub mod server;
pub mod settings;
pub mod sqlgz;
pub mod sqlscan;
pub mod tools;
pub mod transfer;
pub mod upload;
pub mod wal;
pub mod walcheck;
pub mod walscan;
pub mod walstream;

/// How an error should end the process (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Something failed (exit 1).
    Failed,
    /// A safety check refused to go on and nothing was changed (exit 3).
    Refused,
}

impl datadir::DatadirError {
    pub fn exit_class(&self) -> ExitClass {
        use datadir::DatadirError::*;
        match self {
            Fs(_) => ExitClass::Failed,
            Guard(g) => g.exit_class(),
            WrongOwner { .. }
            | ForeignContent { .. }
            | PostmasterRunning { .. }
            | UnsafeWipe { .. } => ExitClass::Refused,
        }
    }
}

impl mountinfo::GuardError {
    pub fn exit_class(&self) -> ExitClass {
        match self {
            mountinfo::GuardError::Refused(_) | mountinfo::GuardError::OutsideRoot { .. } => {
                ExitClass::Refused
            }
            _ => ExitClass::Failed,
        }
    }
}
