//! A stand-in Kubernetes API server for tests (no kube-apiserver can run on these machines).
//!
//! It speaks the real wire format on loopback, plain HTTP, with objects built from
//! `k8s-openapi` types: pod list (paged with `limit`/`continue`, a `resourceVersion` on the
//! list), pod watch from a `resourceVersion` (newline-delimited watch events, `BOOKMARK`s
//! when asked, an `ERROR` event with a 410 `Expired` Status when the version is older than
//! the kept history, as etcd compaction causes), GET of ReplicaSets and Jobs (404 Status
//! when absent), and TokenReview (authentication.k8s.io/v1) judged against fixture tokens
//! the way the API server does (unknown, expired, audience mismatch, pod-bound extras).
//! Every request is first authorized the way RBAC would: against the rules of the
//! controller's ClusterRole in `deploy/manifests/tapio.yaml` (the chart's default render,
//! which deploy/tests keeps equal to the chart), a 403 `Forbidden` Status for any
//! (API group, resource, verb) it does not grant. So a call the chart forgets to allow
//! fails here as it would in a cluster.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// A fixture ServiceAccount token as the API server would judge it.
#[derive(Debug, Clone)]
pub struct TokenFixture {
    /// `system:serviceaccount:<ns>:<name>`.
    pub username: String,
    /// Audiences the token was issued for.
    pub audiences: Vec<String>,
    /// Unix seconds.
    pub exp: u64,
    /// Bound node claim (absent on older clusters).
    pub node: Option<String>,
    /// Bound pod UID claim.
    pub pod_uid: Option<String>,
}

/// A JWT-shaped token (header.claims.signature) carrying `exp`, as projected tokens are.
/// `id` makes each one distinct.
pub fn jwt(id: &str, exp: u64) -> String {
    let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig-{id}", enc(json!({"alg": "RS256", "kid": "k1"})), enc(json!({"exp": exp, "jti": id})))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Clone, Debug)]
enum Line {
    /// A watch event of this resource version.
    Event(u64, Value),
    /// Ends every open watch (the connection drops, as on an API server restart).
    Close,
}

struct Inner {
    rv: u64,
    pods: BTreeMap<String, Pod>,
    /// Watch events kept, oldest first; a watch from before the first gets 410.
    history: Vec<(u64, Value)>,
    /// Oldest resource version a watch may start from.
    compacted_to: u64,
    replicasets: HashMap<(String, String), ReplicaSet>,
    jobs: HashMap<(String, String), Job>,
    tokens: HashMap<String, TokenFixture>,
}

struct Shared {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Line>,
    reviews: AtomicU64,
    /// Tokens presented for review, in order.
    reviewed: Mutex<Vec<String>>,
    lists: AtomicU64,
    watches: AtomicU64,
    bookmarks: AtomicU64,
    owner_gets: AtomicU64,
    /// (API group, resource, verb) the chart grants the controller.
    grants: Vec<(String, String, String)>,
    /// Requests refused for want of a grant.
    forbidden: AtomicU64,
}

/// The rules of the controller's ClusterRole in the rendered manifests, one tuple per
/// (API group, resource, verb) they name.
fn chart_grants() -> Vec<(String, String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/manifests/tapio.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v.as_sequence().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    let mut grants = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_yaml_ng::Value::deserialize(doc).unwrap();
        let controller_role = v["kind"].as_str() == Some("ClusterRole")
            && v["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("tapio-controller"));
        if !controller_role {
            continue;
        }
        for rule in v["rules"].as_sequence().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        grants.push((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    assert!(!grants.is_empty(), "no tapio-controller ClusterRole in {}", path.display());
    grants
}

/// The (API group, resource, verb) RBAC judges a request by: `/api/v1/...` is the core
/// group, `/apis/<group>/<version>/...` another; a GET of a named object is `get`, of a
/// collection `list`, or `watch` with `watch=true`; a POST is `create`.
fn request_attributes(method: &axum::http::Method, uri: &axum::http::Uri) -> (String, String, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => ("", &[][..]),
    };
    let (resource, name) = match rest {
        ["namespaces", _ns, resource, name @ ..] => (*resource, name.first()),
        [resource, name @ ..] => (*resource, name.first()),
        [] => ("", None),
    };
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method.as_str(), name, watch) {
        ("POST", _, _) => "create",
        ("GET", Some(_), _) => "get",
        ("GET", None, true) => "watch",
        ("GET", None, false) => "list",
        (other, _, _) => other,
    };
    (group.to_string(), resource.to_string(), verb.to_string())
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (group, resource, verb) = request_attributes(request.method(), request.uri());
    if !s.grants.iter().any(|(g, r, v)| (g, r, v) == (&group, &resource, &verb)) {
        s.forbidden.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "User \"system:serviceaccount:tapio-system:tapio-controller\" cannot {verb} resource \"{resource}\" in API group \"{group}\""
        );
        return status_response(StatusCode::FORBIDDEN, "Forbidden", &message);
    }
    next.run(request).await
}

/// The running stand-in.
pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> Self {
        let (live, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1000,
                pods: BTreeMap::new(),
                history: Vec::new(),
                compacted_to: 1000,
                replicasets: HashMap::new(),
                jobs: HashMap::new(),
                tokens: HashMap::new(),
            }),
            live,
            reviews: AtomicU64::new(0),
            reviewed: Mutex::new(Vec::new()),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            bookmarks: AtomicU64::new(0),
            owner_gets: AtomicU64::new(0),
            grants: chart_grants(),
            forbidden: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(one_pod))
            .route("/apis/apps/v1/namespaces/{ns}/replicasets/{name}", get(replicaset))
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(job))
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .fallback(|| async {
                status_response(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource")
            })
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&shared), authorize))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:port`, for `--k8s-api-server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (the port then refuses connections).
    pub fn stop(&self) {
        let _ = self.shared.live.send(Line::Close);
        self.task.abort();
    }

    fn mutate(&self, kind: &str, pod: Pod) {
        let mut g = self.shared.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let mut pod = pod;
        pod.metadata.resource_version = Some(rv.to_string());
        let uid = pod.metadata.uid.clone().unwrap();
        if kind == "DELETED" {
            g.pods.remove(&uid);
        } else {
            g.pods.insert(uid, pod.clone());
        }
        let mut obj = serde_json::to_value(&pod).unwrap();
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Pod");
        let event = json!({"type": kind, "object": obj});
        g.history.push((rv, event.clone()));
        // Sent under the lock so a watch that replays history and then subscribes sees
        // every event exactly once.
        let _ = self.shared.live.send(Line::Event(rv, event));
    }

    /// Adds or replaces a pod (ADDED or MODIFIED for open watches).
    pub fn put_pod(&self, pod: Pod) {
        let known = self.shared.inner.lock().unwrap().pods.contains_key(pod.metadata.uid.as_deref().unwrap());
        self.mutate(if known { "MODIFIED" } else { "ADDED" }, pod);
    }

    /// Deletes a pod by UID.
    pub fn delete_pod(&self, uid: &str) {
        let pod = self.shared.inner.lock().unwrap().pods.get(uid).cloned();
        if let Some(pod) = pod {
            self.mutate("DELETED", pod);
        }
    }

    /// Forgets all watch history (as etcd compaction does): a watch from any earlier
    /// resource version now gets 410 Gone.
    pub fn compact(&self) {
        let mut g = self.shared.inner.lock().unwrap();
        g.history.clear();
        g.compacted_to = g.rv;
    }

    /// Drops every open watch connection.
    pub fn close_watches(&self) {
        let _ = self.shared.live.send(Line::Close);
    }

    /// Registers a ReplicaSet owned by a Deployment (when `deployment` is given), with the
    /// UID [`pod`]'s owner references give it (`uid-<name>`).
    pub fn put_replicaset(&self, ns: &str, name: &str, deployment: Option<&str>) {
        self.put_replicaset_with_uid(ns, name, &owner_uid(name), deployment);
    }

    /// Registers (or replaces, as a delete and re-create under the same name does) a
    /// ReplicaSet with the given UID.
    pub fn put_replicaset_with_uid(&self, ns: &str, name: &str, uid: &str, deployment: Option<&str>) {
        let rs = ReplicaSet {
            metadata: meta(ns, name, uid, deployment.map(|d| ("apps/v1", "Deployment", d))),
            ..ReplicaSet::default()
        };
        self.shared.inner.lock().unwrap().replicasets.insert((ns.into(), name.into()), rs);
    }

    /// Registers a Job owned by a CronJob (when `cronjob` is given), with the UID [`pod`]'s
    /// owner references give it (`uid-<name>`).
    pub fn put_job(&self, ns: &str, name: &str, cronjob: Option<&str>) {
        let job = Job {
            metadata: meta(ns, name, &owner_uid(name), cronjob.map(|c| ("batch/v1", "CronJob", c))),
            ..Job::default()
        };
        self.shared.inner.lock().unwrap().jobs.insert((ns.into(), name.into()), job);
    }

    /// Registers a token the TokenReview endpoint knows.
    pub fn put_token(&self, token: &str, fixture: TokenFixture) {
        self.shared.inner.lock().unwrap().tokens.insert(token.into(), fixture);
    }

    /// TokenReviews served.
    pub fn reviews(&self) -> u64 {
        self.shared.reviews.load(Ordering::SeqCst)
    }

    /// Whether `token` was presented for review.
    pub fn was_reviewed(&self, token: &str) -> bool {
        self.shared.reviewed.lock().unwrap().iter().any(|t| t == token)
    }

    /// List requests served.
    pub fn lists(&self) -> u64 {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// Watch requests served.
    pub fn watches(&self) -> u64 {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// BOOKMARK events sent (only to watches that asked for them).
    pub fn bookmarks(&self) -> u64 {
        self.shared.bookmarks.load(Ordering::SeqCst)
    }

    /// Requests the chart's ClusterRole did not allow.
    pub fn forbidden(&self) -> u64 {
        self.shared.forbidden.load(Ordering::Relaxed)
    }

    /// Owner GETs served.
    pub fn owner_gets(&self) -> u64 {
        self.shared.owner_gets.load(Ordering::SeqCst)
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn meta(ns: &str, name: &str, uid: &str, owner: Option<(&str, &str, &str)>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(uid.into()),
        owner_references: owner.map(|(api_version, kind, owner_name)| {
            vec![OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: owner_name.into(),
                uid: owner_uid(owner_name),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        }),
        ..ObjectMeta::default()
    }
}

/// The UID fixtures give the owner named `name` unless a test says otherwise.
pub fn owner_uid(name: &str) -> String {
    format!("uid-{name}")
}

/// `p` with its controlling owner reference naming the owner object of UID `uid`.
pub fn with_owner_uid(mut p: Pod, uid: &str) -> Pod {
    for r in p.metadata.owner_references.iter_mut().flatten() {
        r.uid = uid.into();
    }
    p
}

/// `p` as a kubelet's mirror of the static pod whose UID is `static_uid`: the annotation
/// naming it, and its node as controlling owner (as kubelets since 1.17 make mirrors).
pub fn mirror(mut p: Pod, static_uid: &str) -> Pod {
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    p.metadata.annotations = Some(
        [
            ("kubernetes.io/config.mirror".to_string(), static_uid.to_string()),
            ("kubernetes.io/config.source".to_string(), "file".to_string()),
        ]
        .into(),
    );
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.clone(),
        uid: owner_uid(&node),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    p
}

/// A scheduled, running pod with one container per `(name, containerd id)` and an
/// optional controlling owner `(kind, name)`.
pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    containers: &[(&str, &str)],
    owner: Option<(&str, &str)>,
) -> Pod {
    let api_version = |kind: &str| match kind {
        "Job" => "batch/v1",
        _ => "apps/v1",
    };
    Pod {
        metadata: meta(ns, name, uid, owner.map(|(k, n)| (api_version(k), k, n))),
        spec: Some(PodSpec { node_name: Some(node.into()), ..PodSpec::default() }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(
                containers
                    .iter()
                    .map(|(cname, id)| ContainerStatus {
                        name: (*cname).into(),
                        container_id: Some(format!("containerd://{id}")),
                        ready: true,
                        image: "registry.example/app:1".into(),
                        image_id: "sha256:0".into(),
                        ..ContainerStatus::default()
                    })
                    .collect(),
            ),
            ..PodStatus::default()
        }),
    }
}

/// The same pod after its container `cname` restarted: a new id, the old one in
/// `lastState.terminated` (OOMKilled), restart count up.
pub fn restarted(mut p: Pod, cname: &str, new_id: &str) -> Pod {
    let statuses = p.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
    for cs in statuses.iter_mut().filter(|cs| cs.name == cname) {
        let old = cs.container_id.take();
        cs.container_id = Some(format!("containerd://{new_id}"));
        cs.restart_count += 1;
        cs.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: old,
                exit_code: 137,
                reason: Some("OOMKilled".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
    }
    p
}

/// A JSON response (the stand-in needs no axum `json` feature).
fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    json_response(code, &body)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    resource_version: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

async fn pods(State(s): State<Arc<Shared>>, Query(q): Query<ListQuery>) -> Response {
    if q.watch.as_deref().is_some_and(|w| w == "true" || w == "1") {
        return watch(s, q);
    }
    s.lists.fetch_add(1, Ordering::SeqCst);
    let g = s.inner.lock().unwrap();
    let start: usize = q.continue_.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let items: Vec<Value> = g
        .pods
        .values()
        .skip(start)
        .take(limit)
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Pod");
            v
        })
        .collect();
    let next = start + items.len();
    let mut metadata = json!({"resourceVersion": g.rv.to_string()});
    if next < g.pods.len() {
        metadata["continue"] = json!(next.to_string());
        metadata["remainingItemCount"] = json!(g.pods.len() - next);
    }
    json_response(StatusCode::OK, &json!({"apiVersion": "v1", "kind": "PodList", "metadata": metadata, "items": items}))
}

fn watch(s: Arc<Shared>, q: ListQuery) -> Response {
    s.watches.fetch_add(1, Ordering::SeqCst);
    let from: u64 = q.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.allow_watch_bookmarks.unwrap_or(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.timeout_seconds.unwrap_or(300).min(300));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (replay, mut live, gone, current) = {
        let g = s.inner.lock().unwrap();
        let gone = from < g.compacted_to;
        let replay: Vec<Value> = if gone {
            Vec::new()
        } else {
            g.history.iter().filter(|(rv, _)| *rv > from).map(|(_, e)| e.clone()).collect()
        };
        (replay, s.live.subscribe(), gone, g.rv)
    };
    let counters = Arc::clone(&s);
    tokio::spawn(async move {
        let line = |v: &Value| Bytes::from(format!("{v}\n"));
        if gone {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from} ({current})"),
                "reason": "Expired", "code": 410}});
            let _ = tx.send(line(&status)).await;
            return;
        }
        for e in &replay {
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let mut last_rv = current.max(from);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                    counters.bookmarks.fetch_add(1, Ordering::SeqCst);
                }
                msg = live.recv() => match msg {
                    Ok(Line::Event(rv, e)) if rv > from => {
                        last_rv = rv;
                        if tx.send(line(&e)).await.is_err() { return; }
                    }
                    Ok(Line::Event(..)) => {}
                    Ok(Line::Close) | Err(_) => return,
                },
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx)) },
        );
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}

async fn one_pod(State(s): State<Arc<Shared>>, Path((ns, name)): Path<(String, String)>) -> Response {
    let g = s.inner.lock().unwrap();
    let found = g.pods.values().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str()) && p.metadata.name.as_deref() == Some(name.as_str())
    });
    match found {
        Some(p) => {
            let mut v = serde_json::to_value(p).unwrap();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Pod");
            json_response(StatusCode::OK, &v)
        }
        None => status_response(StatusCode::NOT_FOUND, "NotFound", "pods not found"),
    }
}

async fn replicaset(State(s): State<Arc<Shared>>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.owner_gets.fetch_add(1, Ordering::SeqCst);
    match s.inner.lock().unwrap().replicasets.get(&(ns, name)) {
        Some(rs) => {
            let mut v = serde_json::to_value(rs).unwrap();
            v["apiVersion"] = json!("apps/v1");
            v["kind"] = json!("ReplicaSet");
            json_response(StatusCode::OK, &v)
        }
        None => status_response(StatusCode::NOT_FOUND, "NotFound", "replicasets.apps not found"),
    }
}

async fn job(State(s): State<Arc<Shared>>, Path((ns, name)): Path<(String, String)>) -> Response {
    s.owner_gets.fetch_add(1, Ordering::SeqCst);
    match s.inner.lock().unwrap().jobs.get(&(ns, name)) {
        Some(j) => {
            let mut v = serde_json::to_value(j).unwrap();
            v["apiVersion"] = json!("batch/v1");
            v["kind"] = json!("Job");
            json_response(StatusCode::OK, &v)
        }
        None => status_response(StatusCode::NOT_FOUND, "NotFound", "jobs.batch not found"),
    }
}

async fn token_review(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<TokenReview>(&body) else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "not a TokenReview");
    };
    s.reviews.fetch_add(1, Ordering::SeqCst);
    let token = review.spec.token.clone().unwrap_or_default();
    s.reviewed.lock().unwrap().push(token.clone());
    let wanted = review.spec.audiences.clone().unwrap_or_default();
    let fixture = s.inner.lock().unwrap().tokens.get(&token).cloned();
    let denied = |error: String| TokenReviewStatus {
        authenticated: Some(false),
        error: Some(error),
        ..TokenReviewStatus::default()
    };
    let status = match fixture {
        None => denied("invalid bearer token".into()),
        Some(f) if f.exp <= unix_now() => denied("[invalid bearer token, service account token has expired]".into()),
        Some(f) => {
            let common: Vec<String> = f.audiences.iter().filter(|a| wanted.contains(a)).cloned().collect();
            if !wanted.is_empty() && common.is_empty() {
                denied(format!("token audiences {:?} is invalid for the target audiences {:?}", f.audiences, wanted))
            } else {
                let mut extra = BTreeMap::new();
                if let Some(n) = &f.node {
                    extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![n.clone()]);
                }
                if let Some(u) = &f.pod_uid {
                    extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![u.clone()]);
                    extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec!["tapio-agent-x".into()]);
                }
                TokenReviewStatus {
                    authenticated: Some(true),
                    audiences: Some(if wanted.is_empty() { f.audiences.clone() } else { common }),
                    user: Some(UserInfo {
                        username: Some(f.username.clone()),
                        uid: Some("sa-uid".into()),
                        groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
                        extra: Some(extra),
                    }),
                    error: None,
                }
            }
        }
    };
    let mut out = serde_json::to_value(TokenReview { status: Some(status), ..review }).unwrap();
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenReview");
    json_response(StatusCode::CREATED, &out)
}
