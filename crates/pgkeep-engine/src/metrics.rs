//! `pgkeep metrics`: an [`Observation`] as Prometheus (OpenMetrics) text, with the
//! `prometheus-client` crate. A fresh registry per scrape: every value is computed from what is
//! there at that moment; a metric whose source is missing (the server is down, no record of a
//! kind yet, a volume not mounted) is absent rather than zero.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::observe::Observation;
use crate::results::RunKind;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type G = Gauge<f64, AtomicU64>;
type Labels = Vec<(String, String)>;
/// (name, help, (label value, value) pairs).
type Series<'a> = (&'a str, &'a str, Vec<(String, f64)>);

fn gauge(v: f64) -> G {
    let g = G::default();
    g.set(v);
    g
}

fn family(
    label: &str,
    values: impl IntoIterator<Item = (String, f64)>,
) -> Option<Family<Labels, G>> {
    let f = Family::<Labels, G>::default();
    let mut any = false;
    for (l, v) in values {
        f.get_or_create(&vec![(label.to_owned(), l)]).set(v);
        any = true;
    }
    any.then_some(f)
}

fn ts(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The exposition text of one observation.
pub fn render(o: &Observation) -> String {
    let mut r = Registry::default();
    r.register(
        "pgkeep_up",
        "1 when PostgreSQL answers, 0 when it does not",
        gauge(if o.up { 1.0 } else { 0.0 }),
    );

    let backups = [RunKind::Logical, RunKind::Physical];
    let per_kind = |f: &dyn Fn(&crate::results::KindSummary) -> Option<f64>| {
        backups
            .iter()
            .filter_map(|k| o.runs.get(k).and_then(f).map(|v| (k.label().to_owned(), v)))
            .collect::<Vec<_>>()
    };
    let metrics: [Series; 4] = [
        (
            "pgkeep_backup_last_success_timestamp_seconds",
            "When the newest successful backup of a kind finished (Unix time)",
            per_kind(&|s| s.last_success.as_ref().map(|r| ts(r.stop))),
        ),
        (
            "pgkeep_backup_last_failure_timestamp_seconds",
            "When the newest failed backup of a kind ended (Unix time)",
            per_kind(&|s| s.last_failure.as_ref().map(|r| ts(r.stop))),
        ),
        (
            "pgkeep_backup_last_duration_seconds",
            "How long the newest successful backup of a kind took",
            per_kind(&|s| s.last_success.as_ref().map(|r| r.duration_secs())),
        ),
        (
            "pgkeep_backup_last_size_bytes",
            "Size of the newest successful backup's bundle",
            per_kind(&|s| {
                s.last_success
                    .as_ref()
                    .and_then(|r| r.size)
                    .map(|b| b as f64)
            }),
        ),
    ];
    for (name, help, values) in metrics {
        if let Some(f) = family("kind", values) {
            r.register(name, help, f);
        }
    }
    if let Some(kept) = &o.backups_kept
        && let Some(f) = family("kind", kept.iter().map(|(k, n)| (k.to_string(), *n as f64)))
    {
        r.register(
            "pgkeep_backups",
            "Backup bundles kept on the backups volume",
            f,
        );
    }

    if let Some(a) = &o.archiver {
        let c = Counter::<u64>::default();
        c.inc_by(a.status.archived_count.max(0) as u64);
        r.register(
            "pgkeep_wal_archived",
            "WAL files archived since the statistics were reset (pg_stat_archiver)",
            c,
        );
        let c = Counter::<u64>::default();
        c.inc_by(a.status.failed_count.max(0) as u64);
        r.register(
            "pgkeep_wal_failed",
            "Failed archive attempts since the statistics were reset (pg_stat_archiver)",
            c,
        );
        if let Some(t) = a.last_archived_epoch {
            r.register(
                "pgkeep_wal_last_archived_timestamp_seconds",
                "When the last WAL file was archived (Unix time)",
                gauge(t),
            );
        }
    }
    if let Some(n) = o.ready_segments {
        r.register(
            "pgkeep_wal_ready_segments",
            "WAL segments in pg_wal waiting to be archived (.ready files)",
            gauge(n as f64),
        );
    }
    if let Some(l) = o.archive_lag_seconds {
        r.register(
            "pgkeep_wal_archive_lag_seconds",
            "Age of the newest WAL known safe in the WAL archive; 0 when nothing newer was written",
            gauge(l),
        );
    }
    if let Some(t) = o.recovery_window_start {
        r.register(
            "pgkeep_recovery_window_start_timestamp_seconds",
            "The earliest point a point-in-time recovery can reach with what is kept (Unix time)",
            gauge(ts(t)),
        );
    }
    if let Some(d) = o.runs.get(&RunKind::Drill) {
        if let Some(s) = &d.last_success {
            r.register(
                "pgkeep_drill_last_success_timestamp_seconds",
                "When the newest passing restore drill finished (Unix time)",
                gauge(ts(s.stop)),
            );
        }
        if let Some(l) = &d.last {
            r.register(
                "pgkeep_drill_last_result",
                "1 when the newest restore drill passed, 0 when it failed",
                gauge(if l.succeeded() { 1.0 } else { 0.0 }),
            );
        }
    }
    if let Some(st) = &o.stream {
        r.register(
            "pgkeep_wal_stream_connected",
            "1 when `pgkeep wal stream` is streaming from the server (pg_stat_replication), 0 when not",
            gauge(if st.connected { 1.0 } else { 0.0 }),
        );
        if st.mode == crate::settings::StreamMode::Sync {
            r.register(
                "pgkeep_wal_sync_degraded",
                "1 when wal.stream = sync but serve fell back to asynchronous commits (the stream was down longer than wal.sync_fallback_after): commits do not wait for the stream",
                gauge(if st.sync_degraded { 1.0 } else { 0.0 }),
            );
        }
        if let Some(b) = st.flush_lag_bytes {
            r.register(
                "pgkeep_wal_stream_flush_lag_bytes",
                "WAL the server has written that the stream has not flushed on the archive volume yet",
                gauge(b as f64),
            );
        }
    }
    if let Some(off) = &o.offsite {
        r.register(
            "pgkeep_offsite_last_sync_timestamp_seconds",
            "When the off-site follower last completed a round (Unix time; 0: none since it started)",
            gauge(off.last_sync.map(ts).unwrap_or(0.0)),
        );
        if let Some(n) = off.lag_segments {
            r.register(
                "pgkeep_offsite_lag_segments",
                "WAL segments in the local archive that are not off-site yet",
                gauge(n as f64),
            );
        }
        if let Some(f) = family(
            "kind",
            off.backups.iter().map(|(k, n)| (k.clone(), *n as f64)),
        ) {
            r.register(
                "pgkeep_offsite_backups",
                "Backup bundles stored off-site (after off-site retention)",
                f,
            );
        }
    }
    let ok = || o.volumes.iter().filter(|v| v.error.is_none());
    if let Some(f) = family("volume", ok().map(|v| (v.name.to_owned(), v.size as f64))) {
        r.register("pgkeep_volume_size_bytes", "Size of a volume (statvfs)", f);
    }
    if let Some(f) = family("volume", ok().map(|v| (v.name.to_owned(), v.free as f64))) {
        r.register(
            "pgkeep_volume_free_bytes",
            "Bytes available to the unprivileged user on a volume (statvfs)",
            f,
        );
    }
    if let Some(f) = family(
        "volume",
        ok().filter_map(|v| v.forecast_seconds.map(|s| (v.name.to_owned(), s))),
    ) {
        r.register(
            "pgkeep_volume_full_forecast_seconds",
            "Seconds until a volume is full at the growth of the last 7 days (absent when not growing)",
            f,
        );
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}
