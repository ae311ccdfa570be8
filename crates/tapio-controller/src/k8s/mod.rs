//! Kubernetes: pod names on every record, and agents authenticated by their ServiceAccount
//! tokens. Controller only: the agent has no Kubernetes client.
//!
//! * [`store`]: the bounded pod store (UID → names, node, containers, owners) with a grace
//!   period for deleted pods.
//! * [`watch`]: the pod watch feeding it (list + watch, bookmarks, relist on 410 Gone).
//! * [`owners`]: ReplicaSet → Deployment and Job → CronJob, with a bounded cache.
//! * [`PodIndex::enrich`]: the one call the events path makes; adds the `k8s` object
//!   (OpenTelemetry attribute names) to each record it can, counts the others by reason.
//! * [`tokenreview`]: `--auth kubernetes`, TokenReview with a bounded cache and node binding.
//! * [`metrics`]: their counters.

pub mod metrics;
pub mod owners;
pub mod store;
pub mod tokenreview;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tapio_wire::WireEvent;

use metrics::K8sMetrics;
use store::{keys, Lookup, PodStore};

/// Builds a Kubernetes client: `api_server` (plain URL, no credentials: `kubectl proxy`
/// or a test server) when given, else in-cluster config or the kubeconfig.
pub async fn client(api_server: Option<&str>) -> Result<kube::Client, String> {
    let config = match api_server {
        Some(url) => {
            let uri = url.parse().map_err(|e| format!("--k8s-api-server {url}: {e}"))?;
            kube::Config::new(uri)
        }
        None => {
            kube::Config::infer().await.map_err(|e| format!("no Kubernetes config (in-cluster or kubeconfig): {e}"))?
        }
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

/// The pod store behind a lock, shared by the watch (writer) and request handlers (readers).
#[derive(Debug)]
pub struct PodIndex {
    store: RwLock<PodStore>,
}

impl PodIndex {
    /// An empty index holding at most `capacity` pods, deleted ones for `grace`.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        Self { store: RwLock::new(PodStore::new(capacity, grace)) }
    }

    /// Write access (the watch task only). A poisoned lock still holds a consistent
    /// store: every mutation is a single map operation.
    pub fn write(&self) -> RwLockWriteGuard<'_, PodStore> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with read access.
    pub fn read<T>(&self, f: impl FnOnce(&PodStore) -> T) -> T {
        f(&self.store.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Forgets deleted pods past their grace period and refreshes the gauges.
    pub fn sweep(&self, now: Instant, m: &K8sMetrics) {
        let mut store = self.write();
        store.expire(now);
        let (live, deleted) = store.counts();
        m.pods_live.set(i64::try_from(live).unwrap_or(i64::MAX));
        m.pods_deleted_kept.set(i64::try_from(deleted).unwrap_or(i64::MAX));
    }

    /// Sets `k8s` on every record whose workload names a known pod (the events path's one
    /// call into this module, through [`enrich_batch`]). Any `k8s` an agent
    /// sent is removed first: these names are the controller's to give. A record that
    /// cannot be enriched passes through otherwise unchanged, counted by reason: among them
    /// a record naming a pod the API server places on another node than the record's own
    /// (`node`, or the batch's `batch_node`), or on none: an agent sees only its node's pods.
    pub fn enrich(&self, events: &mut [WireEvent], batch_node: &str, m: &K8sMetrics) {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        for event in events {
            event.k8s = None;
            let Some(uid) = event.workload.as_ref().and_then(|w| w.pod_uid.as_deref()) else {
                m.enrichment("no_pod_uid");
                continue;
            };
            let (pod, result) = match store.get(uid) {
                Lookup::Live(p) => (p, "enriched"),
                Lookup::Deleted(p) => (p, "enriched_deleted_pod"),
                Lookup::Unknown => {
                    m.enrichment(if store.synced() { "pod_unknown" } else { "not_synced" });
                    continue;
                }
                Lookup::Contested => {
                    m.enrichment("pod_uid_conflict");
                    continue;
                }
            };
            // A pod not (yet) scheduled runs on no node: nothing an agent reports is its.
            if pod.node.is_empty() || *pod.node != *event.node.as_deref().unwrap_or(batch_node) {
                m.enrichment("pod_on_other_node");
                continue;
            }
            let mut names = BTreeMap::new();
            names.insert(keys::NAMESPACE.to_string(), pod.namespace.to_string());
            names.insert(keys::POD_NAME.to_string(), pod.name.to_string());
            names.insert(keys::POD_UID.to_string(), pod.api_uid().to_owned());
            names.insert(keys::NODE_NAME.to_string(), pod.node.to_string());
            if let Some(cid) = event.workload.as_ref().and_then(|w| w.container_id.as_deref()) {
                match pod.container_name(cid) {
                    Some(name) => {
                        names.insert(keys::CONTAINER_NAME.to_string(), name.to_string());
                    }
                    None => {
                        m.container_unknown.inc();
                    }
                }
            }
            for (key, name) in pod.owners.iter() {
                names.insert((*key).to_string(), name.to_string());
            }
            event.k8s = Some(names);
            m.enrichment(result);
        }
    }
}

/// The events path's call: enrich from `pods` when the pod watch is on; without it,
/// remove any `k8s` an agent sent, since only the controller gives those names.
pub fn enrich_batch(pods: Option<&PodIndex>, events: &mut [WireEvent], batch_node: &str, m: &K8sMetrics) {
    match pods {
        Some(index) => index.enrich(events, batch_node, m),
        None => events.iter_mut().for_each(|e| e.k8s = None),
    }
}

#[cfg(test)]
mod tests {
    use super::store::PodFacts;

    #[tokio::test]
    async fn an_https_api_server_gets_a_tls_client_that_fails_cleanly_when_unreachable() {
        // rustls needs a crypto provider (ring here) at connect time: a missing one panics.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = client(Some(&format!("https://127.0.0.1:{port}"))).await.unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(c);
        let err = api.list(&kube::api::ListParams::default()).await.unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    use super::*;
    use serde_json::json;

    fn event(workload: serde_json::Value) -> WireEvent {
        serde_json::from_value(json!({"type": "kernel.container.oom_kill", "observer": "container",
            "severity": "critical", "timestamp_unix_nanos": 1, "workload": workload, "facts": {},
            "k8s": {"k8s.pod.name": "spoofed"}}))
        .unwrap()
    }

    fn facts_of(index: &PodIndex, uid: &str) -> PodFacts {
        index.read(|s| match s.get(uid) {
            Lookup::Live(p) | Lookup::Deleted(p) => p.clone(),
            other => panic!("{uid}: {other:?}"),
        })
    }

    #[test]
    fn known_pods_get_open_telemetry_names_and_others_are_counted() {
        let index = PodIndex::new(10, Duration::from_secs(60));
        let m = K8sMetrics::default();
        let mut events = vec![event(json!({"pod_uid": "u1", "container_id": "c1"})), event(json!({"pod_uid": "u2"}))];
        index.enrich(&mut events, "node-a", &m);
        assert!(events.iter().all(|e| e.k8s.is_none()), "agent-sent names are removed");
        {
            let mut s = index.write();
            s.begin_list();
            s.upsert(
                PodFacts {
                    uid: "u1".into(),
                    api_uid: None,
                    namespace: "shop".into(),
                    name: "web-5d-x".into(),
                    node: "node-a".into(),
                    containers: Box::new([("c1".into(), "app".into())]),
                    owners: Box::new([(keys::REPLICASET, "web-5d".into()), (keys::DEPLOYMENT, "web".into())]),
                },
                Instant::now(),
            );
            s.end_list(Instant::now());
        }
        let mut events = vec![
            event(json!({"pod_uid": "u1", "container_id": "c1"})),
            event(json!({"pod_uid": "u2"})),
            event(json!({"cgroup_id": 5})),
            event(json!({"pod_uid": "u1", "container_id": "other"})),
        ];
        index.enrich(&mut events, "node-a", &m);
        let k = events[0].k8s.as_ref().unwrap();
        assert_eq!(k["k8s.namespace.name"], "shop");
        assert_eq!(k["k8s.pod.name"], "web-5d-x");
        assert_eq!(k["k8s.pod.uid"], "u1");
        assert_eq!(k["k8s.container.name"], "app");
        assert_eq!(k["k8s.node.name"], "node-a");
        assert_eq!(k["k8s.replicaset.name"], "web-5d");
        assert_eq!(k["k8s.deployment.name"], "web");
        assert_eq!(k.len(), 7);
        assert!(events[1].k8s.is_none());
        assert!(events[2].k8s.is_none());
        assert!(!events[3].k8s.as_ref().unwrap().contains_key("k8s.container.name"));
        let get = |r: &'static str| m.enrichment.get_or_create(&metrics::OutcomeLabels { result: r }).get();
        assert_eq!(get("not_synced"), 2);
        assert_eq!(get("enriched"), 2);
        assert_eq!(get("pod_unknown"), 1);
        assert_eq!(get("no_pod_uid"), 1);
        assert_eq!(m.container_unknown.get(), 1);
        // A pod the API server places on another node than the record's: not named.
        let mut other_node = event(json!({"pod_uid": "u1", "container_id": "c1"}));
        other_node.node = Some("node-b".into());
        let mut events = vec![other_node, event(json!({"pod_uid": "u1"}))];
        index.enrich(&mut events, "node-b", &m);
        assert!(events.iter().all(|e| e.k8s.is_none()), "the record's node, or the batch's");
        assert_eq!(get("pod_on_other_node"), 2);
        // A pod not scheduled yet is on no node: not any record's, not even one without a node.
        let pending = PodFacts { uid: "u3".into(), node: "".into(), name: "pending".into(), ..facts_of(&index, "u1") };
        index.write().upsert(pending, Instant::now());
        let mut events = vec![event(json!({"pod_uid": "u3"}))];
        index.enrich(&mut events, "node-a", &m);
        index.enrich(&mut events, "", &m);
        assert!(events[0].k8s.is_none());
        assert_eq!(get("pod_on_other_node"), 4);
        // A static pod's record names it by its cgroup UID; its names carry the mirror's.
        let mirror = PodFacts {
            uid: "6b3ec1f8c2a54f0e9a7d8b2c4e6f1a3d".into(),
            api_uid: Some("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f".into()),
            namespace: "kube-system".into(),
            name: "etcd-node-a".into(),
            node: "node-a".into(),
            containers: Box::new([]),
            owners: Box::new([]),
        };
        index.write().upsert(mirror, Instant::now());
        let mut events = vec![event(json!({"pod_uid": "6b3ec1f8c2a54f0e9a7d8b2c4e6f1a3d"}))];
        index.enrich(&mut events, "node-a", &m);
        let k = events[0].k8s.as_ref().unwrap();
        assert_eq!(
            (k["k8s.pod.name"].as_str(), k["k8s.pod.uid"].as_str()),
            ("etcd-node-a", "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
        );
    }
}
