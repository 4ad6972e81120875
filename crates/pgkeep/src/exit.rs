//! Exit codes, and the mapping from an error chain to one of them. A command returns the code it
//! ends with (`commands::run`), an error is mapped here, and only `main` exits.

use pgkeep_engine::ExitClass;

pub const SUCCESS: u8 = 0;
pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const REFUSED: u8 = 3;
/// Interrupted by Ctrl-C (SIGINT) before the destructive step; the shell's 128 + 2.
pub const INTERRUPTED: u8 = 130;

/// A command that a later version implements.
#[derive(Debug)]
pub struct NotImplemented {
    pub command: &'static str,
}

impl std::fmt::Display for NotImplemented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`pgkeep {}` is not implemented yet in this version ({})",
            self.command,
            env!("CARGO_PKG_VERSION")
        )
    }
}
impl std::error::Error for NotImplemented {}

/// The error for a command (or a target of one) that is not there yet.
pub fn not_implemented(command: &'static str) -> anyhow::Error {
    NotImplemented { command }.into()
}

/// A safety refusal raised by the binary itself (e.g. a missing `--yes`).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

/// The same command, run in a pod, exited with this code; pgkeep exits with it too.
#[derive(Debug)]
pub struct RemoteExit(pub i32);

impl std::fmt::Display for RemoteExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command in the pod exited with code {}", self.0)
    }
}
impl std::error::Error for RemoteExit {}

fn class(c: ExitClass) -> u8 {
    match c {
        ExitClass::Failed => FAILED,
        ExitClass::Refused => REFUSED,
    }
}

/// The exit code for an error: the first cause in the chain that has a class decides.
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<NotImplemented>() {
            return USAGE;
        }
        if cause.is::<Refused>() {
            return REFUSED;
        }
        if let Some(pgkeep_kube::ops::OpsError::SettingsDiffer { .. }) = cause.downcast_ref() {
            return REFUSED;
        }
        if let Some(pgkeep_kube::ops::OpsError::Interrupted { .. }) = cause.downcast_ref() {
            return INTERRUPTED;
        }
        if let Some(RemoteExit(code)) = cause.downcast_ref::<RemoteExit>() {
            return u8::try_from(*code)
                .ok()
                .filter(|c| *c != 0)
                .unwrap_or(FAILED);
        }
        if let Some(c) = pgkeep_engine::exit_class_of(cause) {
            return class(c);
        }
    }
    FAILED
}
