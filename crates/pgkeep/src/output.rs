//! What pgkeep shows a person or a script: log lines (text or JSON on stderr), progress bars on a
//! terminal, errors with their causes and hints, JSON documents on stdout, and the confirmation
//! prompt for destructive commands.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::{Ctx, LogFormat};
use crate::exit::Refused;

/// Set up logging once. Level: `PGKEEP_LOG` (an env-filter) or -v/-q. Progress bars are drawn
/// only when stderr is a terminal and the format is text.
pub fn init_logging(ctx: &Ctx) {
    let default = match (ctx.quiet, ctx.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    // kube's client logs a connection failure itself; pgkeep's own error says it with a hint,
    // so its lines show only with -v.
    let default = if ctx.verbose == 0 {
        format!("{default},kube_client=off")
    } else {
        default.to_owned()
    };
    let filter = EnvFilter::try_from_env("PGKEEP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    match ctx.log_format {
        LogFormat::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Text if std::io::stderr().is_terminal() => {
            let indicatif = IndicatifLayer::new();
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .without_time()
                        .with_writer(indicatif.get_stderr_writer()),
                )
                .with(indicatif)
                .try_init();
        }
        LogFormat::Text => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(false)
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
    }
}

/// Print an error and its causes on stderr; hint lines inside messages are kept as they are.
pub fn report_error(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
}

/// A progress bar for `len` units (bytes when `bytes`), drawn only on a terminal.
pub fn progress(len: u64, message: &str, bytes: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} [{bar:30}] {pos}/{len} eta {eta}"
    };
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(message.to_owned());
    pb
}

/// A progress bar on a terminal (hidden otherwise; the engine's log lines say what happens).
#[derive(Default)]
pub struct BarProgress {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl pgkeep_engine::logical::Progress for BarProgress {
    fn begin(&self, step: &str, total: u64) {
        let pb = progress(total, step, true);
        if total == 0 && !pb.is_hidden() {
            // Unknown size (pg_dump, pg_restore): a spinner with the elapsed time.
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        if let Some(old) = self.bar.lock().expect("bar lock").replace(pb) {
            old.finish_and_clear();
        }
    }
    fn grow(&self, more: u64) {
        if let Some(pb) = &*self.bar.lock().expect("bar lock") {
            pb.inc_length(more);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(pb) = &*self.bar.lock().expect("bar lock") {
            pb.inc(bytes);
        }
    }
    fn end(&self) {
        if let Some(pb) = self.bar.lock().expect("bar lock").take() {
            pb.finish_and_clear();
        }
    }
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// What a bootstrap (`bootstrap basebackup`, the demo's step 5) ended with, in one line: the
/// bundle, where recovery ended, on which timeline, the last replayed transaction and, when a
/// target stopped it, PostgreSQL's reason.
pub fn bootstrap_summary(report: &pgkeep_engine::recovery::BootstrapReport) -> String {
    format!(
        "restored {}: recovery ended at {} on timeline {}; last replayed transaction {}{}",
        report.bundle,
        report.end_lsn.as_deref().unwrap_or("?"),
        report
            .timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        report
            .last_replayed_xact_time
            .as_deref()
            .unwrap_or("(none)"),
        report
            .stop_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// Ask before a destructive step. `--yes` skips the question; without a terminal and without
/// `--yes` the answer is no.
pub fn confirm(what: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Refused(format!(
            "{what}: refusing without confirmation\nhint: pass --yes to confirm when not running on a terminal"
        ))
        .into());
    }
    eprint!("{what}\nType 'yes' to continue: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Refused("not confirmed; nothing was changed".into()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_summary_names_where_recovery_ended_and_why() {
        let mut report = pgkeep_engine::recovery::BootstrapReport {
            bundle: "basebackup-20261125-0620.bundle.tar.gz".into(),
            end_lsn: Some("0/5000060".into()),
            timeline: Some(2),
            last_replayed_xact_time: Some("2026-11-25T19:29:58Z".into()),
            stop_reason: Some("recovery stopping before commit of transaction 812".into()),
            left_running: true,
            old_contents_at: None,
            archived_segments: 4,
            prefetched_segments: 3,
            log_file: "/var/lib/postgresql/bootstrap.log".into(),
            seconds: 1.0,
        };
        assert_eq!(
            bootstrap_summary(&report),
            "restored basebackup-20261125-0620.bundle.tar.gz: recovery ended at 0/5000060 on timeline 2; \
             last replayed transaction 2026-11-25T19:29:58Z (recovery stopping before commit of transaction 812)"
        );
        report.end_lsn = None;
        report.timeline = None;
        report.last_replayed_xact_time = None;
        report.stop_reason = None;
        assert_eq!(
            bootstrap_summary(&report),
            "restored basebackup-20261125-0620.bundle.tar.gz: recovery ended at ? on timeline ?; \
             last replayed transaction (none)"
        );
    }
}
