//! A fake Kubernetes API server on 127.0.0.1:0, speaking the real list and
//! watch protocol to a real `kube::Client`:
//!
//! * list and watch (`?watch=true`, newline-delimited WatchEvent JSON,
//!   `resourceVersion`, bookmarks when asked) of EndpointSlices and
//!   OriginPools in any namespace, with `labelSelector` equality terms;
//! * `PATCH …/originpools/{name}/status` (JSON merge patch), recorded;
//! * Leases: get, create, and replace guarded by `resourceVersion`;
//! * [`FakeKube::expire_with`]: changes made while every watch is cut with
//!   an in-stream `410 Gone`, so they are only seen by relisting.
//!
//! One resourceVersion counter for every kind, as etcd has. Everything the
//! server does not know is a 404 Status.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The kinds the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    EndpointSlice,
    OriginPool,
    Lease,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::OriginPool => "srsproxy.io/v1alpha1",
            Self::Lease => "coordination.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::EndpointSlice => "EndpointSlice",
            Self::OriginPool => "OriginPool",
            Self::Lease => "Lease",
        }
    }

    fn from_path(group: &str, version: &str, plural: &str) -> Option<Self> {
        match (group, version, plural) {
            ("discovery.k8s.io", "v1", "endpointslices") => Some(Self::EndpointSlice),
            ("srsproxy.io", "v1alpha1", "originpools") => Some(Self::OriginPool),
            ("coordination.k8s.io", "v1", "leases") => Some(Self::Lease),
            _ => None,
        }
    }

    fn from_name(kind: &str) -> Self {
        match kind {
            "EndpointSlice" => Self::EndpointSlice,
            "OriginPool" => Self::OriginPool,
            "Lease" => Self::Lease,
            other => panic!("the fake API server does not serve {other}"),
        }
    }
}

type Key = (Kind, String, String);

/// One change, as a watch sees it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    type_: &'static str,
    object: Value,
}

/// What the live watches are told.
#[derive(Debug, Clone)]
enum Notice {
    Change(Change),
    /// Cut every watch with 410 Gone.
    Expire,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// A watch from a resourceVersion below this gets 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    status_patches: Vec<(String, Value)>,
    /// `METHOD path?query` of every request.
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    notices: broadcast::Sender<Notice>,
}

/// A running fake API server; stops (closing every connection) when dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeKube {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to come back on the port of a stopped one).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind fake API server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            notices: broadcast::channel(1024).0,
        });
        let stop = CancellationToken::new();
        let (s, k) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = k.cancelled() => return,
                };
                let (s, k) = (s.clone(), k.clone());
                tokio::spawn(async move {
                    let svc = service_fn(|req| {
                        let (s, k) = (s.clone(), k.clone());
                        async move { Ok::<_, Infallible>(handle(&s, &k, req).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = k.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, shared, stop }
    }

    /// A kubeconfig pointing at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        write_kubeconfig(dir, &format!("http://{}", self.addr))
    }

    /// Creates or replaces an object (its `kind` and
    /// `metadata.namespace` say where), as a watch sees ADDED or MODIFIED.
    pub fn apply(&self, object: Value) {
        let mut inner = self.lock();
        let change = apply_locked(&mut inner, object);
        let _ = self.shared.notices.send(Notice::Change(change));
    }

    /// Deletes an object; a watch sees DELETED. Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut inner = self.lock();
        match delete_locked(&mut inner, Kind::from_name(kind), namespace, name) {
            Some(change) => {
                let _ = self.shared.notices.send(Notice::Change(change));
                true
            }
            None => false,
        }
    }

    /// Makes `changes` while the watch history is compacted away, then cuts
    /// every watch with 410 Gone: clients only learn of the changes by
    /// relisting.
    pub fn expire_with(&self, changes: impl FnOnce(&mut Quiet<'_>)) {
        let mut inner = self.lock();
        changes(&mut Quiet { inner: &mut inner });
        inner.compacted = inner.rv + 1;
        inner.history.clear();
        let _ = self.shared.notices.send(Notice::Expire);
    }

    /// An object as stored now.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (Kind::from_name(kind), namespace.to_string(), name.to_string());
        self.lock().objects.get(&key).cloned()
    }

    /// Every status patch so far: (pool name, patch body).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.lock().status_patches.clone()
    }

    /// Requests whose `METHOD path?query` contains `needle`.
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.lock().requests.iter().filter(|r| r.contains(needle)).count()
    }

    /// Every request so far as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap()
    }
}

/// Changes made inside [`FakeKube::expire_with`]: stored, never streamed.
pub struct Quiet<'a> {
    inner: &'a mut Inner,
}

impl Quiet<'_> {
    pub fn apply(&mut self, object: Value) {
        apply_locked(self.inner, object);
    }

    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        delete_locked(self.inner, Kind::from_name(kind), namespace, name);
    }
}

fn apply_locked(inner: &mut Inner, mut object: Value) -> Change {
    let kind = Kind::from_name(object["kind"].as_str().expect("object has a kind"));
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .expect("object has a name")
        .to_string();
    let key = (kind, namespace.clone(), name.clone());
    inner.rv += 1;
    let rv = inner.rv;
    let old = inner.objects.get(&key);
    let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
    // A spec change bumps generation, as the API server does for CRDs.
    let generation = match old {
        Some(old) if old["spec"] == object["spec"] => old["metadata"]["generation"].as_i64().unwrap_or(1),
        Some(old) => old["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
        None => 1,
    };
    let status = old.and_then(|o| o.get("status").cloned());
    let meta = &mut object["metadata"];
    meta["namespace"] = namespace.clone().into();
    meta["resourceVersion"] = rv.to_string().into();
    meta["uid"] = format!("uid-{name}").into();
    meta["creationTimestamp"] = "2025-01-01T00:00:00Z".into();
    if kind == Kind::OriginPool {
        meta["generation"] = generation.into();
        // Status is a subresource: a main-resource write keeps it.
        match status {
            Some(s) => object["status"] = s,
            None => {
                if let Some(o) = object.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    object["apiVersion"] = kind.api_version().into();
    inner.objects.insert(key, object.clone());
    let change = Change {
        rv,
        kind,
        namespace,
        type_,
        object,
    };
    inner.history.push(change.clone());
    change
}

fn delete_locked(inner: &mut Inner, kind: Kind, namespace: &str, name: &str) -> Option<Change> {
    let mut object = inner.objects.remove(&(kind, namespace.to_string(), name.to_string()))?;
    inner.rv += 1;
    object["metadata"]["resourceVersion"] = inner.rv.to_string().into();
    let change = Change {
        rv: inner.rv,
        kind,
        namespace: namespace.to_string(),
        type_: "DELETED",
        object,
    };
    inner.history.push(change.clone());
    Some(change)
}

/// A kubeconfig for `server` without credentials.
pub fn write_kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
    resp
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            (k.to_string(), v)
        })
        .collect()
}

/// `a=b,c=d` (also `==`); a term the fake does not understand never matches.
fn selector_matches(selector: Option<&String>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => {
            let v = v.trim_start_matches('=');
            object["metadata"]["labels"][k.trim()].as_str() == Some(v.trim())
        }
        None => false,
    })
}

async fn handle(shared: &Arc<Shared>, stop: &CancellationToken, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    shared.inner.lock().unwrap().requests.push(format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    ));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}[/status]]
    let (kind, namespace, name, sub) = match parts.as_slice() {
        ["apis", g, v, "namespaces", ns, plural, rest @ ..] => match Kind::from_path(g, v, plural) {
            Some(kind) => (
                kind,
                ns.to_string(),
                rest.first().map(|s| s.to_string()),
                rest.get(1).copied(),
            ),
            None => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("the server could not find {path}"),
                )
            }
        },
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find {path}"),
            )
        }
    };
    let q = query(&req);
    match (req.method().clone(), name, sub) {
        (Method::GET, None, None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(shared, stop, kind, namespace, &q)
        }
        (Method::GET, None, None) => list(shared, kind, &namespace, &q),
        (Method::GET, Some(name), None) => {
            let key = (kind, namespace, name.clone());
            match shared.inner.lock().unwrap().objects.get(&key) {
                Some(o) => full(StatusCode::OK, o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name:?} not found", kind.name()),
                ),
            }
        }
        (Method::POST, None, None) if kind == Kind::Lease => {
            let body: Value = read_json(req).await;
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            let mut inner = shared.inner.lock().unwrap();
            if inner.objects.contains_key(&(kind, namespace.clone(), name.clone())) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("lease {name:?} already exists"),
                );
            }
            let mut body = body;
            body["kind"] = "Lease".into();
            body["metadata"]["namespace"] = namespace.into();
            let change = apply_locked(&mut inner, body);
            full(StatusCode::CREATED, &change.object)
        }
        (Method::PUT, Some(name), None) if kind == Kind::Lease => {
            let body: Value = read_json(req).await;
            let mut inner = shared.inner.lock().unwrap();
            let key = (kind, namespace.clone(), name.clone());
            let Some(current) = inner.objects.get(&key) else {
                return status(StatusCode::NOT_FOUND, "NotFound", &format!("lease {name:?} not found"));
            };
            if current["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let mut body = body;
            body["kind"] = "Lease".into();
            body["metadata"]["namespace"] = namespace.into();
            let change = apply_locked(&mut inner, body);
            full(StatusCode::OK, &change.object)
        }
        (Method::PATCH, Some(name), Some("status")) if kind == Kind::OriginPool => {
            let patch: Value = read_json(req).await;
            let mut inner = shared.inner.lock().unwrap();
            let key = (kind, namespace.clone(), name.clone());
            let Some(mut object) = inner.objects.get(&key).cloned() else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("originpool {name:?} not found"),
                );
            };
            inner.status_patches.push((name.clone(), patch.clone()));
            let mut new_status = object.get("status").cloned().unwrap_or(Value::Null);
            merge_patch(&mut new_status, &patch["status"]);
            object["status"] = new_status.clone();
            let change = apply_locked(&mut inner, object);
            // apply_locked keeps the stored status; put the patched one in.
            let mut object = change.object.clone();
            object["status"] = new_status;
            inner.objects.insert(key, object.clone());
            if let Some(last) = inner.history.last_mut() {
                last.object = object.clone();
            }
            drop(inner);
            let mut change = change;
            change.object = object.clone();
            let _ = shared.notices.send(Notice::Change(change));
            full(StatusCode::OK, &object)
        }
        (method, _, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path} by the fake API server"),
        ),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

async fn read_json(req: Request<Incoming>) -> Value {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn list(shared: &Arc<Shared>, kind: Kind, namespace: &str, q: &HashMap<String, String>) -> Response<Body> {
    let inner = shared.inner.lock().unwrap();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((k, ns, _), o)| *k == kind && ns == namespace && selector_matches(q.get("labelSelector"), o))
        .map(|(_, o)| o.clone())
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.name()),
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        }),
    )
}

fn watch(
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    kind: Kind,
    namespace: String,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let selector = q.get("labelSelector").cloned();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    fn line(v: Value) -> Bytes {
        Bytes::from(format!("{v}\n"))
    }
    fn event(c: &Change) -> Bytes {
        line(json!({"type": c.type_, "object": c.object}))
    }
    fn gone(rv: u64) -> Bytes {
        line(json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv}"), "reason": "Expired", "code": 410,
        }}))
    }
    let matches = {
        let (namespace, selector) = (namespace.clone(), selector.clone());
        move |c: &Change| c.kind == kind && c.namespace == namespace && selector_matches(selector.as_ref(), &c.object)
    };
    // Subscribe before reading history, so no change falls in between.
    let mut notices = shared.notices.subscribe();
    let (replay, current, expired) = {
        let inner = shared.inner.lock().unwrap();
        let replay: Vec<Change> = inner
            .history
            .iter()
            .filter(|c| c.rv > from && matches(c))
            .cloned()
            .collect();
        (replay, inner.rv, from < inner.compacted)
    };
    let stop = stop.clone();
    tokio::spawn(async move {
        if expired {
            let _ = tx.send(gone(from)).await;
            return;
        }
        let mut sent = from;
        for c in replay {
            sent = c.rv;
            if tx.send(event(&c)).await.is_err() {
                return;
            }
        }
        if bookmarks {
            let mark = json!({"type": "BOOKMARK", "object": {
                "apiVersion": kind.api_version(), "kind": kind.name(),
                "metadata": {"resourceVersion": current.max(sent).to_string()},
            }});
            if tx.send(line(mark)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let notice = tokio::select! {
                n = notices.recv() => n,
                _ = &mut deadline => return,
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            match notice {
                Ok(Notice::Change(c)) if c.rv > sent && matches(&c) => {
                    sent = c.rv;
                    if tx.send(event(&c)).await.is_err() {
                        return;
                    }
                }
                Ok(Notice::Change(_)) => {}
                Ok(Notice::Expire) | Err(_) => {
                    let _ = tx.send(gone(sent)).await;
                    return;
                }
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
    resp
}

/// An EndpointSlice of `service` with named ports and endpoints.
pub fn endpoint_slice(namespace: &str, name: &str, service: &str, ports: &[(&str, u16)], endpoints: &[Value]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": endpoints,
    })
}

/// An endpoint of pod `pod` at `ip` with the given conditions.
pub fn endpoint(pod: &str, ip: &str, ready: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating},
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"},
    })
}

/// An OriginPool with `spec`.
pub fn origin_pool(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "srsproxy.io/v1alpha1",
        "kind": "OriginPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}
