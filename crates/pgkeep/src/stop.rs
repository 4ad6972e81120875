//! Stopping a long-running command (`metrics --listen`, `offsite sync --follow`) on SIGTERM or
//! SIGINT. In a container such a command is PID 1, which the kernel does not stop on a signal it
//! has no handler for: without this the kubelet waits out the grace period and kills it.

/// SIGTERM and SIGINT, registered once before the server loop: a stream created anew for each
/// turn of the loop misses a signal that arrives between two turns (seen: a SIGTERM right after
/// a scrape was lost and the process never stopped).
pub struct Stop {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    pub fn install() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        Stop {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves when either signal has arrived (since [`Stop::install`]).
    pub async fn requested(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}
