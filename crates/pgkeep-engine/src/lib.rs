//! pgkeep's engine: everything that runs beside PostgreSQL, with no Kubernetes types.
//!
//! The binary calls operations here (prepare directories, take a backup, push a WAL segment);
//! Kubernetes Jobs run the same binary, so this crate is written and tested once, against a real
//! PostgreSQL. Each module owns one concern and has its own error type whose messages say what to
//! do; [`ExitClass`] tells the binary which exit code an error maps to.
//!
//! Where each command's work lives (command → module):
//! - `serve` → [`postmaster`] (data directory, initdb, supervision), [`server`] (initdb and the
//!   managed settings, also for throwaway servers), [`datadir`] and [`mountinfo`] (the guard),
//!   [`bootmark`] (an unfinished bootstrap's marker), [`syncfallback`] (`wal.sync_fallback_after`).
//! - `prep-dirs`, `wipe` → [`datadir`]; `debug perms` → [`mountinfo`].
//! - `backup logical`, `restore dump`, `restore upload` → [`logical`] (with [`sqlscan`] for
//!   uploaded SQL, [`upload`] for what a file is, [`sqlgz`] for `records.sql.gz`).
//! - `backup physical` → [`physical`]; `bootstrap basebackup` → [`recovery`] (with [`walscan`]
//!   for restore points and damaged records); incremental chains (17+) → [`chain`].
//! - `wal push`, `wal fetch` → [`wal`] (names, LSNs, the archive) and [`walcheck`] (does a
//!   segment belong); `wal stream` → [`walstream`]; whose archive it is → [`archive_owner`].
//! - `status`, `space` → [`inspect`] and [`observe`]; `metrics` → [`observe`] and [`metrics`].
//! - `backups list`, `backups verify` → [`catalog`] (over [`repo`] and [`bundle`]); `backups
//!   prune` → [`retention`]; `drill` → [`drill`]; run records → [`results`], [`runmark`].
//! - `offsite keygen|sync` and off-site reads → [`offsite`]; `receive` (the upload protocol's
//!   pod side) → [`transfer`]; `sanity` → [`sanity`].
//! - Shared: [`settings`], [`db`] (connections and typed queries), [`tools`] (the one process
//!   runner), [`fsutil`] (durable file writes).

pub mod archive_owner;
pub mod bootmark;
pub mod bundle;
pub mod catalog;
pub mod chain;
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
pub mod syncfallback;
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

/// Every engine error type answers how it ends the process; the binary asks through
/// [`exit_class_of`] and nowhere else.
pub trait Classified {
    fn exit_class(&self) -> ExitClass;
}

/// The class of `err` when it is one of the engine's error types (None otherwise): the binary
/// walks an error chain and the first engine error in it decides.
pub fn exit_class_of(err: &(dyn std::error::Error + 'static)) -> Option<ExitClass> {
    macro_rules! first_of {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = err.downcast_ref::<$t>() {
                return Some(e.exit_class());
            })*
        };
    }
    first_of!(
        bootmark::BootmarkError,
        bundle::BundleError,
        chain::ChainError,
        datadir::DatadirError,
        db::DbError,
        drill::DrillError,
        fsutil::FsError,
        logical::LogicalError,
        major::MajorError,
        mountinfo::GuardError,
        offsite::FetchError,
        offsite::OffsiteError,
        physical::PhysicalError,
        postmaster::PostmasterError,
        recovery::RecoveryError,
        repo::RepoError,
        results::ResultsError,
        retention::PruneError,
        server::ServerError,
        settings::SettingsError,
        sqlgz::SqlGzError,
        sqlscan::FilterError,
        sqlscan::ScanError,
        tools::ToolError,
        transfer::TransferError,
        wal::WalError,
        walcheck::SegmentError,
        walstream::StreamError,
    );
    None
}

/// Error types that only ever fail (exit 1): none of them is a safety refusal. A drill's or a
/// prune's inner refusal is a failed drill or prune, and stays exit 1.
macro_rules! always_failed {
    ($($t:ty),* $(,)?) => {
        $(impl Classified for $t {
            fn exit_class(&self) -> ExitClass {
                ExitClass::Failed
            }
        })*
    };
}
always_failed!(
    bundle::BundleError,
    db::DbError,
    drill::DrillError,
    fsutil::FsError,
    offsite::FetchError,
    offsite::OffsiteError,
    repo::RepoError,
    results::ResultsError,
    retention::PruneError,
    server::ServerError,
    settings::SettingsError,
    sqlgz::SqlGzError,
    sqlscan::FilterError,
    sqlscan::ScanError,
    tools::ToolError,
    transfer::TransferError,
    wal::WalError,
    walcheck::SegmentError,
    walstream::StreamError,
);

impl Classified for postmaster::PostmasterError {
    fn exit_class(&self) -> ExitClass {
        use postmaster::PostmasterError::*;
        match self {
            // An unusable data directory or an unfinished bootstrap's marker: no initdb, exit 3.
            Datadir(e) => e.exit_class(),
            Bootmark(e) => e.exit_class(),
            _ => ExitClass::Failed,
        }
    }
}

impl Classified for datadir::DatadirError {
    fn exit_class(&self) -> ExitClass {
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

impl Classified for mountinfo::GuardError {
    fn exit_class(&self) -> ExitClass {
        match self {
            mountinfo::GuardError::Refused(_) | mountinfo::GuardError::OutsideRoot { .. } => {
                ExitClass::Refused
            }
            _ => ExitClass::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_engine_error_in_a_chain_decides_its_class() {
        let unfinished = || bootmark::BootmarkError::Unfinished {
            pgdata: "/pgroot/data".into(),
            marker: "/pgroot/.pgkeep-bootstrap-in-progress".into(),
        };
        let refused = unfinished();
        assert_eq!(exit_class_of(&refused), Some(ExitClass::Refused));
        // Through a wrapper that answers for what it wraps (serve's unfinished bootstrap: 3).
        let wrapped = postmaster::PostmasterError::from(unfinished());
        assert_eq!(exit_class_of(&wrapped), Some(ExitClass::Refused));
        let fs = fsutil::FsError {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::other("boom"),
            hint: String::new(),
        };
        assert_eq!(exit_class_of(&fs), Some(ExitClass::Failed));
        // Not an engine error: the binary decides (or looks further down the chain).
        assert_eq!(exit_class_of(&std::io::Error::other("boom")), None);
    }
}
