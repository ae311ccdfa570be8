//! Owner resolution: a pod's controlling owner, and that owner's own controller for the two
//! kinds that have one in practice (ReplicaSet → Deployment, Job → CronJob).
//!
//! StatefulSet and DaemonSet own their pods directly and need no lookup. Lookups of a
//! ReplicaSet or Job go to the API server once and are kept in a bounded cache (oldest
//! out first, each entry for a limited time), so a relist of 100,000 pods costs one GET
//! per ReplicaSet, not per pod. The cache is keyed by the owner's UID from the pod's
//! owner reference (with its namespace, kind and name): a ReplicaSet or Job deleted and
//! made again under the same name (`kubectl replace --force`, GitOps, a re-run Job) is
//! another object, possibly of another Deployment or CronJob, and is looked up afresh.
//! An object whose UID is not the one the pod names is not the pod's owner: its own owner
//! is neither cached nor used (counted as `uid_mismatch`). A failed lookup is not cached
//! and not guessed at: the pod keeps the owner it names itself, and the failure is counted. After a failure no lookup
//! is made for [`RETRY_AFTER`] (each skipped one counted): the watch resolves owners in line,
//! and an API server that times every GET out would otherwise hold a relist of thousands
//! of pods for 5 s each.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;

use super::metrics::K8sMetrics;
use super::store::{keys, owner_key, OwnerRef};

/// How long one GET of an owner may take before the pod is stored without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long lookups pause after one failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The owner's UID, namespace, kind and name: a hit needs all four to match, so neither a
/// same-named successor nor a reference that borrows another object's UID is named
/// after a cached parent that is not its own.
type CacheKey = (Box<str>, Box<str>, &'static str, Box<str>);

/// Resolves owner chains with a bounded cache.
pub struct OwnerResolver {
    client: Option<kube::Client>,
    cache: HashMap<CacheKey, (Option<OwnerRef>, Instant)>,
    order: VecDeque<CacheKey>,
    capacity: usize,
    ttl: Duration,
    /// Until when lookups are skipped, after a failure.
    paused_until: Option<Instant>,
}

impl OwnerResolver {
    /// A resolver that asks `client` (None: no lookups, only the pod's own owner).
    pub fn new(client: Option<kube::Client>, capacity: usize, ttl: Duration) -> Self {
        Self {
            client,
            cache: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
            paused_until: None,
        }
    }

    /// Entries in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The owner chain of a pod whose controlling owner is `owner`, as attribute key → name.
    pub async fn chain(
        &mut self,
        namespace: &str,
        owner: Option<OwnerRef>,
        metrics: &K8sMetrics,
    ) -> Box<[(&'static str, std::sync::Arc<str>)]> {
        let Some(owner) = owner else {
            return Box::new([]);
        };
        let Some(key) = owner_key(&owner.api_version, &owner.kind) else {
            return Box::new([]);
        };
        let mut chain = vec![(key, std::sync::Arc::<str>::from(owner.name.as_str()))];
        let kind: &'static str = match key {
            keys::REPLICASET => "ReplicaSet",
            keys::JOB => "Job",
            _ => return chain.into_boxed_slice(),
        };
        if let Some(parent) = self.parent(namespace, kind, &owner, metrics).await {
            if let Some(parent_key) = owner_key(&parent.api_version, &parent.kind) {
                chain.push((parent_key, parent.name.into()));
            }
        }
        chain.into_boxed_slice()
    }

    async fn parent(
        &mut self,
        namespace: &str,
        kind: &'static str,
        owner: &OwnerRef,
        m: &K8sMetrics,
    ) -> Option<OwnerRef> {
        let name = owner.name.as_str();
        let key: CacheKey = (owner.uid.as_str().into(), namespace.into(), kind, name.into());
        let now = Instant::now();
        if let Some((parent, at)) = self.cache.get(&key) {
            if now.saturating_duration_since(*at) < self.ttl {
                m.owner_lookup("hit");
                return parent.clone();
            }
        }
        let client = self.client.clone()?;
        if self.paused_until.is_some_and(|until| now < until) {
            m.owner_lookup("skipped");
            return None;
        }
        let fetched = match kind {
            "ReplicaSet" => {
                let api: Api<ReplicaSet> = Api::namespaced(client, namespace);
                tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await.map(|r| r.map(|o| o.map(|o| o.metadata)))
            }
            _ => {
                let api: Api<Job> = Api::namespaced(client, namespace);
                tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await.map(|r| r.map(|o| o.map(|o| o.metadata)))
            }
        };
        let parent = match fetched {
            // Another object under the owner's name (the pod's was deleted and a new one
            // made): its parent is not the pod's owner's, so it is neither used nor cached.
            Ok(Ok(Some(meta))) if meta.uid.as_deref() != Some(owner.uid.as_str()) => {
                m.owner_lookup("uid_mismatch");
                return None;
            }
            Ok(Ok(Some(meta))) => controller_of(meta.owner_references.as_deref()),
            // Gone already (the pod outlived its ReplicaSet): nothing more to name; the
            // UID never comes back, so caching that is right.
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                m.owner_lookup("error");
                log::debug!("owner lookup {kind} {namespace}/{name} failed: {e}");
                self.paused_until = Some(Instant::now() + RETRY_AFTER);
                return None;
            }
            Err(_) => {
                m.owner_lookup("error");
                self.paused_until = Some(Instant::now() + RETRY_AFTER);
                return None;
            }
        };
        m.owner_lookup("miss");
        self.insert(key, parent.clone(), now);
        parent
    }

    fn insert(&mut self, key: CacheKey, parent: Option<OwnerRef>, now: Instant) {
        if self.cache.insert(key.clone(), (parent, now)).is_none() {
            self.order.push_back(key);
        }
        while self.cache.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.cache.remove(&old);
                }
                None => break,
            }
        }
    }
}

fn controller_of(refs: Option<&[OwnerReference]>) -> Option<OwnerRef> {
    refs?.iter().find(|r| r.controller == Some(true)).and_then(OwnerRef::from_reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str) -> OwnerRef {
        let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
        OwnerRef { api_version: api_version.into(), kind: kind.into(), name: name.into(), uid: format!("uid-{name}") }
    }

    #[tokio::test]
    async fn direct_owners_need_no_lookup_and_unknown_kinds_are_not_named() {
        let m = K8sMetrics::default();
        let mut r = OwnerResolver::new(None, 4, Duration::from_secs(60));
        let ss = r.chain("ns", Some(owner("StatefulSet", "db")), &m).await;
        assert_eq!(&*ss, &[("k8s.statefulset.name", std::sync::Arc::<str>::from("db"))]);
        let node = r.chain("ns", Some(owner("Node", "n1")), &m).await;
        assert!(node.is_empty());
        // Custom resources that share a built-in kind's name are not that kind: not named
        // (and so never looked up as one).
        for (api_version, kind) in
            [("apps.kruise.io/v1beta1", "StatefulSet"), ("batch.volcano.sh/v1alpha1", "Job"), ("v1", "ReplicaSet")]
        {
            let custom = OwnerRef { api_version: api_version.into(), ..owner(kind, "x") };
            assert!(r.chain("ns", Some(custom), &m).await.is_empty(), "{api_version} {kind}");
        }
        let old_group = OwnerRef { api_version: "extensions/v1beta1".into(), ..owner("ReplicaSet", "old-5d") };
        assert_eq!(r.chain("ns", Some(old_group), &m).await.len(), 1);
        // Without a client a ReplicaSet is named but its Deployment is not guessed.
        let rs = r.chain("ns", Some(owner("ReplicaSet", "web-5d")), &m).await;
        assert_eq!(&*rs, &[("k8s.replicaset.name", std::sync::Arc::<str>::from("web-5d"))]);
    }

    /// An API server that cannot be reached: the first lookup fails (counted), the next
    /// ones within RETRY_AFTER are skipped without a request (counted), and once the pause
    /// is over the resolver asks again.
    #[tokio::test]
    async fn after_a_failed_lookup_lookups_pause_then_resume() {
        let m = K8sMetrics::default();
        // A port nothing listens on: every request fails at once.
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = kube::Config::new(format!("http://{unreachable}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let mut r = OwnerResolver::new(Some(client), 4, Duration::from_secs(60));
        let lookups = |result: &'static str| {
            m.owner_lookups.get_or_create(&super::super::metrics::OutcomeLabels { result }).get()
        };
        for name in ["a", "b", "c"] {
            let rs = r.chain("ns", Some(owner("ReplicaSet", name)), &m).await;
            assert_eq!(rs.len(), 1, "the ReplicaSet is still named, its Deployment not guessed");
        }
        assert_eq!((lookups("error"), lookups("skipped")), (1, 2));
        r.paused_until = Some(Instant::now());
        let _ = r.chain("ns", Some(owner("ReplicaSet", "d")), &m).await;
        assert_eq!((lookups("error"), lookups("skipped")), (2, 2), "asked again after the pause");
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_oldest_out_first() {
        let mut r = OwnerResolver::new(None, 2, Duration::from_secs(60));
        let now = Instant::now();
        let key = |name: &str| -> CacheKey { (format!("uid-{name}").into(), "ns".into(), "ReplicaSet", name.into()) };
        for name in ["a", "b", "c"] {
            r.insert(key(name), None, now);
        }
        assert_eq!(r.cached(), 2);
        assert!(!r.cache.contains_key(&key("a")));
        assert!(r.cache.contains_key(&key("c")));
    }
}
