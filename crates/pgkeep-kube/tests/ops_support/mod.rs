//! Request verifier for the ops tests, in the style of kube-rs controller-rs `fixtures.rs`:
//! a `tower_test` mock service behind a real `kube::Client`; the test's scenario receives each
//! request in order, asserts method, path, query and body, and answers it. [`run`] drives an
//! operation and its scenario together and finally asserts that no request was left unanswered
//! or unexpected (the scenario ends with [`done`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use pgkeep_kube::ops::Cluster;
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

pub const NS: &str = "record-platform";

/// A cluster whose client talks to a mock; the handle sees every request.
pub fn mock_cluster() -> (Cluster, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, NS);
    (
        Cluster::new(client, NS).with_via("kubeconfig context \"test\""),
        handle,
    )
}

/// Run `op` against a mock cluster while `scenario` verifies and answers its requests.
/// The cluster is dropped when `op` ends, so a scenario ending in [`done`] proves that
/// nothing else was sent.
pub async fn run<T, F, S>(op: impl FnOnce(Cluster) -> F, scenario: impl FnOnce(Handle) -> S) -> T
where
    F: Future<Output = T>,
    S: Future<Output = ()> + std::marker::Send + 'static,
{
    let (cluster, handle) = mock_cluster();
    let verifier = tokio::spawn(scenario(handle));
    let out = op(cluster).await;
    if let Err(e) = verifier.await {
        std::panic::resume_unwind(e.into_panic());
    }
    out
}

/// One received request, to assert on and answer.
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The query string as sent (repeated keys such as exec's `command=` in order).
    pub raw_query: String,
    pub headers: http::HeaderMap,
    pub body: Value,
    send: Send,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.method, self.path, self.query)
    }
}

impl Exchange {
    /// Answer with `code` and a JSON body.
    pub fn reply(self, code: u16, body: Value) {
        let resp = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.send.send_response(resp);
    }

    /// Fail at the transport level (no HTTP answer at all, like a refused connection).
    pub fn transport_error(self, message: &str) {
        self.send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            message.to_string(),
        ));
    }

    /// Answer 200 with a plain-text body (pod logs).
    pub fn send_text(self, text: &str) {
        let resp = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Body::from(text.as_bytes().to_vec()))
            .unwrap();
        self.send.send_response(resp);
    }

    pub fn ok(self, body: Value) {
        self.reply(200, body)
    }

    pub fn created(self, body: Value) {
        self.reply(201, body)
    }

    /// A `Status` failure with details.
    pub fn fail(self, code: u16, reason: &str, message: &str, kind: &str, name: &str) {
        self.reply(code, status(code, reason, message, kind, name))
    }

    pub fn not_found(self, plural: &str, name: &str) {
        let group_kind = plural.to_string();
        self.fail(
            404,
            "NotFound",
            &format!("{group_kind} \"{name}\" not found"),
            plural,
            name,
        )
    }

    pub fn namespace_not_found(self) {
        self.fail(
            404,
            "NotFound",
            &format!("namespaces \"{NS}\" not found"),
            "namespaces",
            NS,
        )
    }

    pub fn forbidden(self, verb: &str, plural: &str, name: &str) {
        let msg = format!(
            "{plural} \"{name}\" is forbidden: User \"dev\" cannot {verb} resource \"{plural}\" in API group \"\" in the namespace \"{NS}\""
        );
        self.fail(403, "Forbidden", &msg, plural, name)
    }

    pub fn conflict(self, plural: &str, name: &str) {
        self.fail(
            409,
            "AlreadyExists",
            &format!("{plural} \"{name}\" already exists"),
            plural,
            name,
        )
    }

    /// Assert a query parameter.
    pub fn assert_query(&self, key: &str, value: &str) -> &Self {
        assert_eq!(
            self.query.get(key).map(String::as_str),
            Some(value),
            "query {key} of {self:?}"
        );
        self
    }

    /// Assert the exact set of query parameters.
    pub fn assert_query_is(&self, expected: &[(&str, &str)]) -> &Self {
        let want: BTreeMap<String, String> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(self.query, want, "query of {self:?}");
        self
    }
}

/// A Kubernetes `Status` object.
pub fn status(code: u16, reason: &str, message: &str, kind: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": { "name": name, "kind": kind }, "code": code
    })
}

/// The next request (fails the test when the client went away or after an hour of virtual time).
pub async fn next(handle: &mut Handle) -> Exchange {
    let got = tokio::time::timeout(Duration::from_secs(3600), handle.next_request())
        .await
        .expect("timed out waiting for the next request");
    let (req, send) = got.expect("expected another request, but the client is gone");
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Exchange {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query().unwrap_or("")),
        raw_query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
        send,
    }
}

/// The next request, asserting its method and path.
pub async fn expect(handle: &mut Handle, method: &str, path: &str) -> Exchange {
    let x = next(handle).await;
    assert_eq!(
        (x.method.as_str(), x.path.as_str()),
        (method, path),
        "unexpected request {x:?}"
    );
    x
}

/// Assert that the client sends nothing more (call at the end of a scenario).
pub async fn done(handle: &mut Handle) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_secs(3600), handle.next_request()).await
    {
        panic!("unexpected extra request: {} {}", req.method(), req.uri());
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A pod as the API returns it.
pub fn pod(name: &str, labels: Value, phase: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "labels": labels,
                      "creationTimestamp": "2026-11-25T10:00:00Z" },
        "spec": { "containers": [ { "name": "db", "image": "pgkeep:test" } ] },
        "status": {
            "phase": phase,
            "conditions": [ { "type": "Ready", "status": if ready { "True" } else { "False" } } ]
        }
    })
}

/// A list answer.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": "1" }, "items": items })
}

/// An event for `kind`/`name`.
pub fn event(kind: &str, name: &str, ty: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": format!("{name}.1"), "namespace": NS },
        "involvedObject": { "kind": kind, "name": name, "namespace": NS },
        "type": ty, "reason": reason, "message": message, "count": 3,
        "lastTimestamp": "2026-11-25T10:00:05Z"
    })
}

/// Expect the events request for `kind`/`name` and answer with `events`.
pub async fn expect_events(handle: &mut Handle, kind: &str, name: &str, events: Vec<Value>) {
    let x = expect(handle, "GET", &format!("/api/v1/namespaces/{NS}/events")).await;
    x.assert_query(
        "fieldSelector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
    );
    x.ok(list("EventList", events));
}
