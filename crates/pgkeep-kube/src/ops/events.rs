//! The recent events of one object (a pod, a Job), formatted one per line for error reports:
//! `Warning FailedScheduling pod/postgres-x (x3): 0/1 nodes are available: pod has unbound
//! immediate PersistentVolumeClaims.`
//!
//! Uses core/v1 Events (served by every Kubernetes version) with a field selector on the
//! involved object. Fetching events is best effort when it decorates another error: use
//! [`events_or_note`], which turns a failure into a single explanatory line.

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;

use super::error::{Op, classify};
use super::{Cluster, OpsError};

/// At most this many events are reported per object (the most recent ones).
pub const MAX_EVENTS: usize = 20;

/// The events whose involved object is `kind`/`name` in the cluster's namespace, oldest first,
/// at most [`MAX_EVENTS`], formatted one per line.
pub async fn events_for(
    cluster: &Cluster,
    kind: &str,
    name: &str,
) -> Result<Vec<String>, OpsError> {
    let api = cluster.api::<Event>();
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    let list = api
        .list(&lp)
        .await
        .map_err(|e| classify(e, cluster, Op::new("list", "events", name)))?;
    let mut items = list.items;
    items.sort_by_key(sort_key);
    let skip = items.len().saturating_sub(MAX_EVENTS);
    Ok(items
        .iter()
        .skip(skip)
        .map(|e| format_event(e, kind, name))
        .collect())
}

/// Like [`events_for`], but a failure becomes one line saying why there are no events.
pub async fn events_or_note(cluster: &Cluster, kind: &str, name: &str) -> Vec<String> {
    match events_for(cluster, kind, name).await {
        Ok(v) => v,
        Err(e) => vec![format!(
            "(events of {}/{name} unavailable: {})",
            kind.to_lowercase(),
            e.to_string().lines().next().unwrap_or_default()
        )],
    }
}

fn sort_key(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

/// `Warning FailedScheduling pod/NAME (x3): message`.
pub fn format_event(e: &Event, kind: &str, name: &str) -> String {
    let ty = e.type_.as_deref().unwrap_or("Normal");
    let reason = e.reason.as_deref().unwrap_or("-");
    let count = match e.count {
        Some(c) if c > 1 => format!(" (x{c})"),
        _ => String::new(),
    };
    let msg = e.message.as_deref().unwrap_or("").trim();
    format!("{ty} {reason} {}/{name}{count}: {msg}", kind.to_lowercase())
}
