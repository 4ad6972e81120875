//! Server-side apply of rendered objects (field manager `pgkeep`), with a created / configured /
//! unchanged report per object, server dry run, and adaptation to old API servers.
//!
//! Objects are `serde_json::Value`s with `apiVersion` and `kind` (k8s-openapi objects serialise
//! to exactly that: `serde_json::to_value(&deployment)`; a `kube::api::DynamicObject` too), so
//! any type works. For each object, in order:
//!
//! 1. discovery of its group/version (`GET /api/v1` or `GET /apis/GROUP/VERSION`, once per
//!    group/version per call): an API the server does not serve is an
//!    [`OpsError::ApiNotServed`] naming the kind, the version and the server, with a hint
//!    (CronJob `batch/v1` on Kubernetes 1.20 → [`adapt_for_server`] converts it to `batch/v1beta1`);
//! 2. a CronJob with `spec.timeZone` on a server older than 1.27 (`GET /version`, once) is an
//!    [`OpsError::TooOld`]: old servers silently drop the field and would run the schedule in UTC;
//! 3. `GET` the object (404: it will be created); an existing Deployment is applied without
//!    `spec.replicas`, so pgkeep does not own the field and the apply keeps what it found (a
//!    wipe or bootstrap that scaled to 0 stays at 0; `pgkeep scale` is the one way to change
//!    it); a new Deployment starts with the rendered count. One exception: while pgkeep's
//!    apply still owns `spec.replicas` (it created the Deployment and nobody scaled it since,
//!    or an older server's scale subresource did not record its writer in managedFields),
//!    leaving it out would make the server drop it and default it to 1, so the count found is
//!    sent instead;
//! 4. `PATCH` with `application/apply-patch+yaml`, `fieldManager=pgkeep`, `force=true` (pgkeep
//!    owns these objects; without force a field last set by `kubectl edit` would be a conflict),
//!    and `dryRun=All` for a dry run;
//! 5. the action: created (no object before), unchanged (the returned object equals the previous
//!    one, ignoring `status`, `resourceVersion`, `generation` and `managedFields`), configured.
//!
//! PersistentVolumeClaims and Secrets are refused: claims are only ever created (see
//! [`super::pvc`]) and the superuser Secret is only created when missing (see [`super::secret`]);
//! applying either could change a bound claim or overwrite the password.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

use super::error::{Op, api_code, classify_in};
use super::{Cluster, FIELD_MANAGER, OpsError};

/// Options of [`apply_objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Server dry run (`dryRun=All`): the server validates and defaults, nothing is persisted.
    pub dry_run: bool,
    /// Take ownership of fields other managers set (`force=true`).
    pub force: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            dry_run: false,
            force: true,
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

impl fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
        })
    }
}

/// The report for one applied object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub action: ApplyAction,
    pub dry_run: bool,
    /// An existing Deployment's replicas, kept by the apply, when they differ from the
    /// rendered count (e.g. 0 during a wipe or bootstrap).
    pub replicas_kept: Option<i64>,
}

impl fmt::Display for Applied {
    /// `deployment.apps/postgres configured`, like kubectl (` (server dry run)` appended).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = self.api_version.rsplit_once('/').map(|(g, _)| g);
        let kind = self.kind.to_lowercase();
        match group {
            Some(g) => write!(f, "{kind}.{g}/{} {}", self.name, self.action)?,
            None => write!(f, "{kind}/{} {}", self.name, self.action)?,
        }
        if let Some(n) = self.replicas_kept {
            write!(
                f,
                " (replicas kept at {n}, as found; `pgkeep scale` changes them)"
            )?;
        }
        if self.dry_run {
            f.write_str(" (server dry run)")?;
        }
        Ok(())
    }
}

/// The API server's version, from `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    /// e.g. `v1.20.2`.
    pub git_version: String,
}

impl ServerVersion {
    /// Whether the server is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// From the `/version` answer; minor versions like `20+` (GKE, EKS) are read as 20.
    pub fn from_info(info: &k8s_openapi::apimachinery::pkg::version::Info) -> Option<Self> {
        let digits = |s: &str| -> Option<u32> {
            let d: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse().ok()
        };
        Some(ServerVersion {
            major: digits(&info.major)?,
            minor: digits(&info.minor)?,
            git_version: info.git_version.clone(),
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.git_version.is_empty() {
            write!(f, "Kubernetes {}.{}", self.major, self.minor)
        } else {
            write!(f, "Kubernetes {}", self.git_version)
        }
    }
}

/// `GET /version`.
pub async fn server_version(cluster: &Cluster) -> Result<ServerVersion, OpsError> {
    let info = cluster.client.apiserver_version().await.map_err(|e| {
        classify_in(
            e,
            cluster,
            &cluster.namespace,
            Op::new("get", "version", "/version"),
        )
    })?;
    ServerVersion::from_info(&info).ok_or_else(|| OpsError::Api {
        request: "get /version".into(),
        namespace: cluster.namespace.clone(),
        code: 200,
        message: format!(
            "UnreadableVersion: major {:?}, minor {:?}",
            info.major, info.minor
        ),
        hint: "is this a Kubernetes API server?".into(),
    })
}

/// Objects adapted to a server, and what was changed (one note per change, to print).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapted {
    pub objects: Vec<Value>,
    pub notes: Vec<String>,
}

/// Adapt rendered objects to an older server:
/// - CronJob `batch/v1` on a server older than 1.21 → `batch/v1beta1` (same spec layout);
/// - CronJob `spec.timeZone` on a server older than 1.27 → removed, with a note that the
///   schedule now runs in the controller-manager's time zone (usually UTC);
/// - PodDisruptionBudget `policy/v1` on a server older than 1.21 → `policy/v1beta1`.
///
/// Other objects pass unchanged. Pure: no request is made.
pub fn adapt_for_server(objects: Vec<Value>, server: &ServerVersion) -> Adapted {
    let mut notes = Vec::new();
    let objects = objects
        .into_iter()
        .map(|o| {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
            match kind {
                "CronJob" => {
                    let (o, n) = adapt_cronjob(o, server);
                    notes.extend(n);
                    o
                }
                "PodDisruptionBudget" => {
                    let mut o = o;
                    if !server.at_least(1, 21) && o.get("apiVersion").and_then(Value::as_str) == Some("policy/v1") {
                        o["apiVersion"] = "policy/v1beta1".into();
                        notes.push(format!(
                            "PodDisruptionBudget {}: sent as policy/v1beta1 ({server} does not serve policy/v1)",
                            object_name(&o)
                        ));
                    }
                    o
                }
                _ => o,
            }
        })
        .collect();
    Adapted { objects, notes }
}

/// Adapt one CronJob (see [`adapt_for_server`]); returns the object and the notes.
pub fn adapt_cronjob(mut cronjob: Value, server: &ServerVersion) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let name = object_name(&cronjob);
    if !server.at_least(1, 21)
        && cronjob.get("apiVersion").and_then(Value::as_str) == Some("batch/v1")
    {
        cronjob["apiVersion"] = "batch/v1beta1".into();
        notes.push(format!(
            "CronJob {name}: sent as batch/v1beta1 ({server} serves CronJob only in batch/v1beta1)"
        ));
    }
    if !server.at_least(1, 27)
        && let Some(spec) = cronjob.get_mut("spec").and_then(Value::as_object_mut)
        && let Some(tz) = spec.remove("timeZone")
    {
        let schedule = spec.get("schedule").and_then(Value::as_str).unwrap_or("?");
        notes.push(format!(
            "CronJob {name}: spec.timeZone ({}) removed ({server} has no time zones for CronJobs before 1.27); \
             the schedule \"{schedule}\" now runs in the kube-controller-manager's time zone (usually UTC): \
             shift the schedule setting by the zone's UTC offset, which changes with daylight saving time",
            tz.as_str().unwrap_or("?")
        ));
    }
    (cronjob, notes)
}

fn object_name(o: &Value) -> String {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string()
}

/// What discovery found for a group/version: kind → (plural, namespaced).
type Resources = BTreeMap<String, (String, bool)>;

/// Server-side apply every object, in order; see the module docs. Stops at the first error.
pub async fn apply_objects(
    cluster: &Cluster,
    objects: &[Value],
    opts: ApplyOptions,
) -> Result<Vec<Applied>, OpsError> {
    let mut discovered: BTreeMap<String, Option<Resources>> = BTreeMap::new();
    let mut version: Option<ServerVersion> = None;
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        let (api_version, kind, name) = identity(obj)?;
        if kind == "PersistentVolumeClaim" || kind == "Secret" {
            return Err(OpsError::Refused {
                action: format!("server-side apply {kind} {name}"),
                why: if kind == "Secret" {
                    "applying the Secret could overwrite the superuser password".into()
                } else {
                    "applying a claim could try to change a bound, immutable claim".into()
                },
                hint: if kind == "Secret" {
                    "create it with ops::secret::ensure_secret_with_password (only when missing)"
                        .into()
                } else {
                    "create claims with ops::pvc::ensure_pvcs (only when missing)".into()
                },
            });
        }
        let namespace = match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) if ns != cluster.namespace => {
                return Err(OpsError::Refused {
                    action: format!("apply {kind} {name}"),
                    why: format!(
                        "its metadata.namespace is {ns}, but pgkeep acts in namespace {}",
                        cluster.namespace
                    ),
                    hint: "render with the same namespace setting, or pass --namespace".into(),
                });
            }
            _ => cluster.namespace.clone(),
        };

        // 1. Discovery.
        if !discovered.contains_key(&api_version) {
            let found = discover(cluster, &api_version).await?;
            discovered.insert(api_version.clone(), found);
        }
        let resource = discovered
            .get(&api_version)
            .and_then(|r| r.as_ref())
            .and_then(|r| r.get(&kind))
            .cloned();
        let Some((plural, namespaced)) = resource else {
            if version.is_none() {
                version = Some(server_version(cluster).await?);
            }
            let server = version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let hint = if kind == "CronJob" && api_version == "batch/v1" {
                "Kubernetes before 1.21 serves CronJob only as batch/v1beta1: convert it with \
                 ops::apply::adapt_for_server (pgkeep deploy does this for old servers)"
                    .to_string()
            } else if kind == "PodDisruptionBudget" && api_version == "policy/v1" {
                "Kubernetes before 1.21 serves PodDisruptionBudget only as policy/v1beta1: convert it with ops::apply::adapt_for_server".to_string()
            } else {
                "`kubectl api-resources` lists what this server serves; upgrade the cluster or render for an older API".to_string()
            };
            return Err(OpsError::ApiNotServed {
                api_version,
                kind,
                server,
                hint,
            });
        };

        // 2. Fields newer than the server.
        if kind == "CronJob" && obj.pointer("/spec/timeZone").is_some() {
            if version.is_none() {
                version = Some(server_version(cluster).await?);
            }
            let server = version.as_ref().expect("fetched above");
            if !server.at_least(1, 27) {
                return Err(OpsError::TooOld {
                    object: format!("{kind} {name}"),
                    field: "spec.timeZone",
                    needs: "1.27",
                    server: server.to_string(),
                    hint: "older servers drop the field silently and run the schedule in the controller-manager's \
                           zone; remove it with ops::apply::adapt_for_server and adjust the schedule to UTC"
                        .into(),
                });
            }
        }

        // 3. The object as it is now.
        let (group, ver) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &ver, &kind), &plural);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(cluster.client.clone(), &namespace, &ar)
        } else {
            Api::all_with(cluster.client.clone(), &ar)
        };
        let before = match api.get(&name).await {
            Ok(o) => Some(o),
            Err(e) if api_code(&e) == Some(404) => None,
            Err(e) => {
                return Err(classify_in(
                    e,
                    cluster,
                    &namespace,
                    Op::new("get", &plural, &name),
                ));
            }
        };

        // 3b. An existing Deployment's replicas are not pgkeep's (see the module docs).
        let mut replicas_kept = None;
        let patch_body = match (&before, kind.as_str()) {
            (Some(found), "Deployment") => {
                let (mut body, rendered) = without_replicas(obj);
                let count = found.data.pointer("/spec/replicas").and_then(Value::as_i64);
                if let Some(n) = count
                    && applies_replicas(found)
                    && let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut)
                {
                    spec.insert("replicas".into(), n.into());
                }
                if let (Some(found), Some(rendered)) = (count, rendered)
                    && found != rendered
                {
                    replicas_kept = Some(found);
                }
                std::borrow::Cow::Owned(body)
            }
            _ => std::borrow::Cow::Borrowed(obj),
        };

        // 4. Apply.
        let pp = PatchParams {
            dry_run: opts.dry_run,
            force: opts.force,
            field_manager: Some(FIELD_MANAGER.into()),
            field_validation: None,
        };
        let after = api
            .patch(&name, &pp, &Patch::Apply(patch_body.as_ref()))
            .await
            .map_err(|e| classify_in(e, cluster, &namespace, Op::new("patch", &plural, &name)))?;

        // 5. What changed.
        let action = match before {
            None => ApplyAction::Created,
            Some(before) if comparable(&before) == comparable(&after) => ApplyAction::Unchanged,
            Some(_) => ApplyAction::Configured,
        };
        out.push(Applied {
            api_version,
            kind,
            name,
            namespace: namespaced.then_some(namespace),
            action,
            dry_run: opts.dry_run,
            replicas_kept,
        });
    }
    Ok(out)
}

/// Whether pgkeep's server-side apply owns `spec.replicas` of `found` (its managedFields).
fn applies_replicas(found: &DynamicObject) -> bool {
    found.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    })
}

/// `obj` without `spec.replicas`, and the rendered count that was removed.
fn without_replicas(obj: &Value) -> (Value, Option<i64>) {
    let mut body = obj.clone();
    let rendered = body
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .and_then(|spec| spec.remove("replicas"))
        .and_then(|r| r.as_i64());
    (body, rendered)
}

/// [`apply_objects`] for typed objects: anything that serialises with `apiVersion` and `kind`
/// (k8s-openapi types, `DynamicObject`s with their `types` set).
pub async fn apply_typed<T: serde::Serialize>(
    cluster: &Cluster,
    objects: &[T],
    opts: ApplyOptions,
) -> Result<Vec<Applied>, OpsError> {
    let values = objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OpsError::InvalidObject {
            message: format!("an object does not serialise to JSON: {e}"),
            hint: "report this as a bug".into(),
        })?;
    apply_objects(cluster, &values, opts).await
}

fn identity(obj: &Value) -> Result<(String, String, String), OpsError> {
    let field = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("/apiVersion"), field("/kind"), field("/metadata/name")) {
        (Some(a), Some(k), Some(n)) => Ok((a.into(), k.into(), n.into())),
        _ => Err(OpsError::InvalidObject {
            message: format!(
                "an object lacks apiVersion, kind or metadata.name (apiVersion {:?}, kind {:?}, name {:?})",
                field("/apiVersion"),
                field("/kind"),
                field("/metadata/name")
            ),
            hint: "serialise k8s-openapi objects with serde_json::to_value, which includes apiVersion and kind".into(),
        }),
    }
}

/// Discovery of one group/version: `None` when the server does not serve it at all.
async fn discover(cluster: &Cluster, api_version: &str) -> Result<Option<Resources>, OpsError> {
    let res: Result<APIResourceList, kube::Error> = if api_version.contains('/') {
        cluster.client.list_api_group_resources(api_version).await
    } else {
        cluster.client.list_core_api_resources(api_version).await
    };
    match res {
        Ok(list) => Ok(Some(
            list.resources
                .into_iter()
                .filter(|r| !r.name.contains('/'))
                .map(|r| (r.kind, (r.name, r.namespaced)))
                .collect(),
        )),
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(classify_in(
            e,
            cluster,
            &cluster.namespace,
            Op::new("get", "discovery", api_version),
        )),
    }
}

/// The parts of an object an apply can change, for created/configured/unchanged.
fn comparable(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["resourceVersion", "generation", "managedFields"] {
                meta.remove(k);
            }
        }
    }
    v
}
