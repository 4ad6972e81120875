//! Who works in a directory: the `pid` file a long run (a backup's or restore's staging
//! directory, a restore drill's scratch directory) writes into the directory it works in, and
//! the heartbeat that keeps it fresh, so another run can tell a live directory from one a
//! killed run left behind and clean up only the latter.
//!
//! The file holds `PID HOST` (HOST is the pod's name in Kubernetes). On this host the process
//! tells; a run on another host (another pod: its own process IDs, and pgkeep is often PID 1
//! there) cannot be seen from here, so only its heartbeat does.

use std::path::{Path, PathBuf};

/// What a run writes into its `pid` file.
pub fn pid_file_text() -> String {
    format!("{} {}\n", std::process::id(), this_host())
}

/// Mark `dir` as this run's: write its `pid` file and keep it fresh until the returned
/// heartbeat is dropped.
pub fn mark(dir: &Path) -> std::io::Result<Heartbeat> {
    let pid_file = dir.join("pid");
    std::fs::write(&pid_file, pid_file_text())?;
    Ok(Heartbeat::start(pid_file, HEARTBEAT))
}

/// How long a directory marked by a run on another host must have gone without a heartbeat
/// before it counts as abandoned. In Kubernetes every pod is its own host with its own process
/// IDs, so a run in another pod (a restore Job while the nightly CronJob cleans up) cannot be
/// seen from here; only its heartbeat tells that it still works.
pub const FOREIGN_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3 * 3600);
/// How often a run touches its `pid` file.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(600);

/// A label unique to this run, also among pods (each has its own process IDs, and
/// pgkeep is often PID 1 there): `KIND-HOST-PID`.
pub fn run_label(kind: &str) -> String {
    match this_host() {
        h if h.is_empty() => format!("{kind}-{}", std::process::id()),
        h => format!("{kind}-{h}-{}", std::process::id()),
    }
}

/// This host's name (the pod's name in Kubernetes).
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Who works in a directory, from its `pid` file: `PID HOST` (earlier versions wrote only
/// the PID, which counts as this host).
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// This very process.
    Us,
    /// A run that is, or may still be, working: how to name it.
    Running(String),
    /// Its process is gone (this host), or it has not been heard of for a long time (another).
    Gone,
    /// No readable `pid` file (yet).
    Unknown,
}

/// Who holds `dir` (see [`Holder`]).
pub fn holder(dir: &Path) -> Holder {
    let pid_file = dir.join("pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return Holder::Unknown;
    };
    let mut words = text.split_whitespace();
    let Some(pid) = words.next().and_then(|p| p.parse::<u32>().ok()) else {
        return Holder::Unknown;
    };
    judge(pid, words.next(), || quiet_for(&pid_file))
}

/// Who made a directory named after [`run_label`] (`KIND-HOST-PID` or `KIND-PID`) on this host,
/// for a directory whose `pid` file was never written (its run was killed between creating the
/// directory and marking it): [`Holder::Gone`] when that process has ended, [`Holder::Unknown`]
/// when the label names another host or no pid.
pub fn label_holder(label: &str) -> Holder {
    let Some((rest, pid)) = label.rsplit_once('-') else {
        return Holder::Unknown;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return Holder::Unknown;
    };
    let here = this_host();
    let same_host = match rest.split_once('-') {
        Some((_, host)) => host == here,
        None => here.is_empty(),
    };
    if !same_host {
        return Holder::Unknown;
    }
    judge(pid, None, || std::time::Duration::ZERO)
}

/// Who `pid` on `host` (None: this host) is, given how long its mark has gone untouched
/// (asked only for another host's run).
pub fn judge(
    pid: u32,
    host: Option<&str>,
    quiet_for: impl FnOnce() -> std::time::Duration,
) -> Holder {
    let here = this_host();
    let host = host.filter(|h| *h != here && *h != tag_host(&here));
    match host {
        None if pid == std::process::id() => Holder::Us,
        None if process_is_pgkeep(pid) => Holder::Running(format!("pid {pid}")),
        None => Holder::Gone,
        Some(host) => {
            if quiet_for() < FOREIGN_STALE_AFTER {
                Holder::Running(format!("pid {pid} on host {host}"))
            } else {
                Holder::Gone
            }
        }
    }
}

/// How long ago `path` was last modified (zero when that cannot be told).
pub fn quiet_for(path: &Path) -> std::time::Duration {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

/// This run's writer tag for file names, `HOST~PID` (see [`parse_tag`]): a file being written
/// under a name that carries it can be judged like a marked directory, by [`judge`] with the
/// file's own modification time as its heartbeat (a writer writes continuously).
pub fn tag() -> String {
    format!("{}~{}", tag_host(&this_host()), std::process::id())
}

/// `HOST~PID` back into its parts.
pub fn parse_tag(tag: &str) -> Option<(&str, u32)> {
    let (host, pid) = tag.rsplit_once('~')?;
    Some((host, pid.parse().ok()?))
}

/// A host name as it goes into a file name: nothing that separates fields or paths.
fn tag_host(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c == '~' || c == '/' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Touches a `pid` file every [`HEARTBEAT`] until dropped.
pub struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(pid_file: PathBuf, every: std::time::Duration) -> Heartbeat {
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pid-heartbeat".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&pid_file)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                }
            })
            .ok();
        Heartbeat {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn process_is_pgkeep(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("pgkeep"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_beats_on_its_pid_file_until_it_ends() {
        let t = tempfile::tempdir().unwrap();
        let pid_file = t.path().join("pid");
        std::fs::write(&pid_file, "1 h\n").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let set = |when| {
            std::fs::File::options()
                .write(true)
                .open(&pid_file)
                .unwrap()
                .set_modified(when)
                .unwrap()
        };
        set(old);
        let beat = Heartbeat::start(pid_file.clone(), std::time::Duration::from_millis(20));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let touched = std::fs::metadata(&pid_file).unwrap().modified().unwrap();
        assert!(
            touched > old + std::time::Duration::from_secs(3000),
            "touched"
        );
        drop(beat);
        set(old);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let after = std::fs::metadata(&pid_file).unwrap().modified().unwrap();
        assert_eq!(after, old, "no heartbeat after the run ended");
        assert!(run_label("restore").ends_with(&format!("-{}", std::process::id())));
    }
}
