//! The engine's one wall clock: every decision pgkeep makes by "now" reads [`now`] — bundle
//! names and manifest stop times, result records, retention, the ages and the forecast that
//! `metrics`/`status`/`space` report, the drill's and bootstrap's stamps, superseded WAL
//! directories.
//!
//! TEST ONLY: `PGKEEP_TEST_NOW` (an RFC 3339 time such as `2027-01-01T02:00:00Z`) makes this
//! process's clock start at that time and run on at the real rate, so one test can live a year
//! of nightly and weekly runs in minutes. It is an environment variable of its own, never a
//! setting of `pgkeep.toml`, and a process using it says so on stderr. A value that does not
//! parse is ignored with that warning (the real clock is used).
//!
//! Not on this clock, on purpose: times that PostgreSQL or the filesystem wrote (commit and
//! archiver times, file modification times, recovery targets) are compared with the real clock,
//! and durations use `Instant`.

use std::sync::OnceLock;
use std::time::Instant;

/// The test-only variable (see the module docs).
pub const TEST_NOW_ENV: &str = "PGKEEP_TEST_NOW";

struct Shift {
    /// The pretended time at `at`.
    base: jiff::Timestamp,
    at: Instant,
}

fn shift() -> Option<&'static Shift> {
    static SHIFT: OnceLock<Option<Shift>> = OnceLock::new();
    SHIFT
        .get_or_init(|| {
            let raw = std::env::var(TEST_NOW_ENV).ok()?;
            match raw.parse::<jiff::Timestamp>() {
                Ok(base) => {
                    eprintln!(
                        "pgkeep: {TEST_NOW_ENV} is set: this process's clock starts at {base} (test only; unset it)"
                    );
                    Some(Shift {
                        base,
                        at: Instant::now(),
                    })
                }
                Err(e) => {
                    eprintln!(
                        "pgkeep: {TEST_NOW_ENV}={raw:?} is not a time ({e}); using the real clock (the variable is for tests only; unset it)"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Now: the real time, or the test's pretended one (see the module docs).
pub fn now() -> jiff::Timestamp {
    match shift() {
        None => jiff::Timestamp::now(),
        Some(s) => {
            let elapsed = jiff::SignedDuration::try_from(s.at.elapsed()).unwrap_or_default();
            s.base.saturating_add(elapsed).unwrap_or(s.base)
        }
    }
}

/// Whether the clock is pretended (for messages that compare with real times).
pub fn is_shifted() -> bool {
    shift().is_some()
}
