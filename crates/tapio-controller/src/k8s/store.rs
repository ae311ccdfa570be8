//! The bounded pod store: only what enrichment needs from each pod, keyed by pod UID.
//!
//! A deleted pod is kept for a grace period (evidence about a pod, an OOM kill above
//! all, often arrives after the pod object is gone), then forgotten. A relist marks every
//! entry with the list's generation; entries the new list did not contain are treated as
//! deleted when it completes. The store never grows past its capacity. A live pod that does
//! not fit takes the place of the longest-deleted one (forgotten before its grace period,
//! counted): a live pod's names serve all of its evidence, a deleted one's only late
//! evidence. During a list, a pod that still does not fit is set aside (at most as many as
//! the store holds) and stored when the list ends, once the pods it did not contain count as
//! deleted and make room; only a pod that fits nowhere then is not stored, and is counted.
//! Names that many pods share (namespace, node, container and owner names) are stored once
//! and shared.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Owner attribute keys, in OpenTelemetry's spelling.
pub mod keys {
    /// `k8s.namespace.name`.
    pub const NAMESPACE: &str = "k8s.namespace.name";
    /// `k8s.pod.name`.
    pub const POD_NAME: &str = "k8s.pod.name";
    /// `k8s.pod.uid`.
    pub const POD_UID: &str = "k8s.pod.uid";
    /// `k8s.container.name`.
    pub const CONTAINER_NAME: &str = "k8s.container.name";
    /// `k8s.node.name`.
    pub const NODE_NAME: &str = "k8s.node.name";
    /// `k8s.deployment.name`.
    pub const DEPLOYMENT: &str = "k8s.deployment.name";
    /// `k8s.replicaset.name`.
    pub const REPLICASET: &str = "k8s.replicaset.name";
    /// `k8s.statefulset.name`.
    pub const STATEFULSET: &str = "k8s.statefulset.name";
    /// `k8s.daemonset.name`.
    pub const DAEMONSET: &str = "k8s.daemonset.name";
    /// `k8s.job.name`.
    pub const JOB: &str = "k8s.job.name";
    /// `k8s.cronjob.name`.
    pub const CRONJOB: &str = "k8s.cronjob.name";
}

/// The attribute key of an owner kind, or None for kinds OpenTelemetry has no name for.
pub fn owner_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => keys::DEPLOYMENT,
        "ReplicaSet" => keys::REPLICASET,
        "StatefulSet" => keys::STATEFULSET,
        "DaemonSet" => keys::DAEMONSET,
        "Job" => keys::JOB,
        "CronJob" => keys::CRONJOB,
        _ => return None,
    })
}

/// The pod's controlling owner as written in its metadata (kind and name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// `ReplicaSet`, `Job`, …
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What the store keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// The UID the kubelet names the pod's cgroups after, and the store's key: `metadata.uid`,
    /// or for a static pod's mirror its `kubernetes.io/config.mirror` annotation (the
    /// static pod's own UID, which the API server never shows as a `metadata.uid`).
    pub uid: String,
    /// A mirror pod's `metadata.uid` (the `k8s.pod.uid` other telemetry knows it by).
    pub api_uid: Option<Box<str>>,
    /// `metadata.namespace`.
    pub namespace: Arc<str>,
    /// `metadata.name`.
    pub name: Box<str>,
    /// `spec.nodeName` (empty while unscheduled).
    pub node: Arc<str>,
    /// Container runtime id (scheme stripped) → container name, for current containers and
    /// the last terminated instance of each (a restarted container's evidence names the
    /// old id).
    pub containers: Box<[(Box<str>, Arc<str>)]>,
    /// Owner chain as attribute key → name, pod's own owner first (e.g. replicaset, then
    /// deployment).
    pub owners: Box<[(&'static str, Arc<str>)]>,
}

impl PodFacts {
    /// Extracts the facts from a Pod object; None when it has no UID, name or namespace.
    pub fn from_pod(pod: &Pod) -> Option<(Self, Option<OwnerRef>)> {
        let meta = &pod.metadata;
        let api_uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let (uid, api_uid) = match static_pod_uid(pod) {
            Some(kubelet_uid) => (kubelet_uid.to_owned(), Some(api_uid.into())),
            None => (api_uid, None),
        };
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            let lists =
                [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
            for list in lists.into_iter().flatten() {
                for cs in list {
                    push_container_ids(cs, &mut containers);
                }
            }
        }
        let owner = meta
            .owner_references
            .as_ref()
            .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)))
            .map(|r| OwnerRef { kind: r.kind.clone(), name: r.name.clone() });
        let facts = Self {
            uid,
            api_uid,
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
            containers: containers.into_boxed_slice(),
            owners: Box::new([]),
        };
        Some((facts, owner))
    }

    /// The pod's UID as evidence names it (`k8s.pod.uid`): the API object's.
    pub fn api_uid(&self) -> &str {
        self.api_uid.as_deref().unwrap_or(&self.uid)
    }

    /// The name of the container with this runtime id.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers.iter().find(|(id, _)| &**id == container_id).map(|(_, n)| &**n)
    }
}

/// The annotation a mirror pod carries: the UID of the static pod it mirrors, the one the
/// kubelet runs (and names its cgroups after).
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The static pod's UID a mirror pod carries, if the pod is a mirror: its annotation is
/// honoured only beside the controlling owner reference every kubelet since 1.17 gives a
/// mirror (kind Node, the pod's own node), so that an ordinary pod carrying the annotation
/// cannot take over another pod's entry (and name its evidence).
fn static_pod_uid(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())?;
    let owned_by_its_node = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "Node" && r.api_version == "v1" && r.name == node);
    if !owned_by_its_node {
        return None;
    }
    pod.metadata.annotations.as_ref()?.get(MIRROR_ANNOTATION).map(String::as_str).filter(|u| !u.is_empty())
}

/// The key a pod is stored under (see [`PodFacts::uid`]).
pub fn store_key(pod: &Pod) -> Option<&str> {
    static_pod_uid(pod).or(pod.metadata.uid.as_deref())
}

fn push_container_ids(cs: &ContainerStatus, out: &mut Vec<(Box<str>, Arc<str>)>) {
    let current = cs.container_id.as_deref();
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.container_id.as_deref());
    for id in [current, last].into_iter().flatten() {
        let id = strip_runtime_scheme(id);
        if !id.is_empty() && !out.iter().any(|(known, _)| &**known == id) {
            out.push((id.into(), cs.name.as_str().into()));
        }
    }
}

/// `containerd://abc` → `abc` (the agent knows the id from the cgroup path, without scheme).
pub fn strip_runtime_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[derive(Debug)]
struct Entry {
    facts: PodFacts,
    /// When the pod was deleted (or found missing by a relist); None while it exists.
    deleted_at: Option<Instant>,
    /// Generation of the list or watch event that last saw it.
    generation: u64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A live pod.
    Live(&'a PodFacts),
    /// A pod deleted within the grace period.
    Deleted(&'a PodFacts),
    /// Not in the store.
    Unknown,
}

/// Result of an upsert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// Stored (new or replaced).
    Stored,
    /// Stored in the place of the longest-deleted pod, forgotten before its grace period.
    StoredDisplacing,
    /// The store is full during a list: set aside, stored when the list ends if it fits then.
    Deferred,
    /// The store is full: not stored.
    Full,
}

/// What the end of a list did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListEnd {
    /// Pods the list did not contain, now deleted.
    pub gone: usize,
    /// Pods set aside during the list and stored at its end.
    pub stored: usize,
    /// Of those, how many took a deleted pod's place.
    pub displacing: usize,
    /// Pods set aside during the list that did not fit at its end either: not stored.
    pub dropped: usize,
}

/// Bounded pod store. Not synchronized: the owner wraps it in a lock.
#[derive(Debug)]
pub struct PodStore {
    pods: HashMap<String, Entry>,
    capacity: usize,
    grace: Duration,
    generation: u64,
    synced: bool,
    /// Shared names; one no pod uses any more is dropped at the next expiry.
    names: HashSet<Arc<str>>,
    /// Deleted pods, longest-deleted first: (when, uid). An entry whose pod was forgotten
    /// or is live again is skipped; entries leave once past the grace period.
    deleted_order: VecDeque<(Instant, String)>,
    /// A list is under way.
    listing: bool,
    /// New pods that did not fit during the list under way (at most `capacity`).
    deferred: Vec<PodFacts>,
}

impl PodStore {
    /// An empty, not yet synced store.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        Self {
            pods: HashMap::new(),
            capacity,
            grace,
            generation: 0,
            synced: false,
            names: HashSet::new(),
            deleted_order: VecDeque::new(),
            listing: false,
            deferred: Vec::new(),
        }
    }

    /// Whether an initial list has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Live and deleted-but-kept pods.
    pub fn counts(&self) -> (usize, usize) {
        let deleted = self.pods.values().filter(|e| e.deleted_at.is_some()).count();
        (self.pods.len() - deleted, deleted)
    }

    /// A (re)list begins: entries it does not contain will count as deleted when it ends.
    /// Pods an interrupted list set aside come again in this one.
    pub fn begin_list(&mut self) {
        self.generation += 1;
        self.listing = true;
        self.deferred.clear();
    }

    /// The list completed: pods it did not contain are deleted as of `now`, then the pods
    /// set aside during it are stored where they fit.
    pub fn end_list(&mut self, now: Instant) -> ListEnd {
        let mut end = ListEnd::default();
        for (uid, e) in self.pods.iter_mut() {
            if e.deleted_at.is_none() && e.generation != self.generation {
                e.deleted_at = Some(now);
                self.deleted_order.push_back((now, uid.clone()));
                end.gone += 1;
            }
        }
        self.synced = true;
        self.listing = false;
        for facts in std::mem::take(&mut self.deferred) {
            match self.upsert(facts, now) {
                Upsert::Stored => end.stored += 1,
                Upsert::StoredDisplacing => {
                    end.stored += 1;
                    end.displacing += 1;
                }
                Upsert::Deferred | Upsert::Full => end.dropped += 1,
            }
        }
        end
    }

    /// Adds or replaces a live pod (an existing pod is always updated in place). A full
    /// store first forgets expired deleted pods, then forgets the longest-deleted pod in its
    /// place; with no deleted pod to forget, it sets the new one aside during a list and
    /// refuses it otherwise.
    pub fn upsert(&mut self, mut facts: PodFacts, now: Instant) -> Upsert {
        self.share_names(&mut facts);
        if let Some(e) = self.pods.get_mut(&facts.uid) {
            *e = Entry { facts, deleted_at: None, generation: self.generation };
            return Upsert::Stored;
        }
        let mut stored = Upsert::Stored;
        if self.pods.len() >= self.capacity {
            self.expire(now);
            if self.pods.len() >= self.capacity {
                if self.forget_longest_deleted() {
                    stored = Upsert::StoredDisplacing;
                } else if self.listing && self.deferred.len() < self.capacity {
                    self.deferred.push(facts);
                    return Upsert::Deferred;
                } else {
                    return Upsert::Full;
                }
            }
        }
        let uid = facts.uid.clone();
        self.pods.insert(uid, Entry { facts, deleted_at: None, generation: self.generation });
        stored
    }

    /// Forgets the deleted pod deleted longest ago; false when no pod is deleted.
    fn forget_longest_deleted(&mut self) -> bool {
        while let Some((at, uid)) = self.deleted_order.pop_front() {
            if self.pods.get(&uid).is_some_and(|e| e.deleted_at == Some(at)) {
                self.pods.remove(&uid);
                return true;
            }
        }
        false
    }

    fn share_names(&mut self, facts: &mut PodFacts) {
        let names = &mut self.names;
        let mut share = |name: &mut Arc<str>| match names.get(&**name) {
            Some(known) => *name = Arc::clone(known),
            None => {
                names.insert(Arc::clone(name));
            }
        };
        share(&mut facts.namespace);
        share(&mut facts.node);
        for (_, name) in facts.containers.iter_mut() {
            share(name);
        }
        for (_, name) in facts.owners.iter_mut() {
            share(name);
        }
    }

    /// Marks a pod deleted as of `now` (kept for the grace period).
    pub fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            if e.deleted_at.is_none() {
                e.deleted_at = Some(now);
                self.deleted_order.push_back((now, uid.to_string()));
            }
        }
    }

    /// Forgets deleted pods older than the grace period; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.pods.len();
        let grace = self.grace;
        self.pods.retain(|_, e| e.deleted_at.is_none_or(|at| now.saturating_duration_since(at) < grace));
        // In deletion order: what is past the grace period is at the front.
        while self.deleted_order.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= grace) {
            self.deleted_order.pop_front();
        }
        // Held only by the set itself: no stored pod uses the name.
        self.names.retain(|n| Arc::strong_count(n) > 1);
        before - self.pods.len()
    }

    /// Finds a pod by UID.
    pub fn get(&self, uid: &str) -> Lookup<'_> {
        match self.pods.get(uid) {
            None => Lookup::Unknown,
            Some(Entry { facts, deleted_at: None, .. }) => Lookup::Live(facts),
            Some(Entry { facts, .. }) => Lookup::Deleted(facts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(uid: &str) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            api_uid: None,
            namespace: "ns".into(),
            name: format!("pod-{uid}").into(),
            node: "n".into(),
            containers: Box::new([]),
            owners: Box::new([]),
        }
    }

    /// A static pod's mirror is stored under the static pod's UID (its cgroups'), and named
    /// by its own `metadata.uid`.
    #[test]
    fn a_mirror_pod_is_kept_under_the_static_pods_uid() {
        let static_uid = "6b3ec1f8c2a54f0e9a7d8b2c4e6f1a3d";
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "etcd-node-a", "namespace": "kube-system",
                         "uid": "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                         "annotations": {"kubernetes.io/config.mirror": static_uid,
                                         "kubernetes.io/config.hash": static_uid},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-a",
                                              "uid": "9f8e7d6c-0000-4000-8000-000000000001", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": []}
        }))
        .unwrap();
        let (facts, _) = PodFacts::from_pod(&pod).unwrap();
        assert_eq!((facts.uid.as_str(), facts.api_uid()), (static_uid, "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"));
        assert_eq!(store_key(&pod), Some(static_uid), "deleted by the same key");
        let mut s = PodStore::new(10, Duration::from_secs(60));
        s.upsert(facts, Instant::now());
        assert!(matches!(s.get(static_uid), Lookup::Live(_)));
        // The annotation on a pod its node does not own (an ordinary pod claiming to mirror
        // another, or one owned by another node) is not honoured: its own UID keys it.
        for owner in [("Node", "node-b"), ("ReplicaSet", "node-a")] {
            let mut claimant = pod.clone();
            let refs = claimant.metadata.owner_references.as_mut().unwrap();
            (refs[0].kind, refs[0].name) = (owner.0.into(), owner.1.into());
            let (facts, _) = PodFacts::from_pod(&claimant).unwrap();
            assert_eq!(facts.uid.as_str(), "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "{owner:?}");
            assert_eq!(store_key(&claimant), Some("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"));
        }
        // A pod that mirrors nothing is kept under its own UID.
        pod.metadata.annotations = None;
        let (facts, _) = PodFacts::from_pod(&pod).unwrap();
        assert_eq!((facts.uid.as_str(), facts.api_uid.as_deref()), ("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", None));
        assert_eq!(store_key(&pod), Some("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"));
    }

    #[test]
    fn deleted_pods_stay_for_the_grace_period_then_go() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        s.upsert(facts("a"), t0);
        s.delete("a", t0);
        assert!(matches!(s.get("a"), Lookup::Deleted(_)));
        assert_eq!(s.expire(t0 + Duration::from_secs(59)), 0);
        assert_eq!(s.expire(t0 + Duration::from_secs(60)), 1);
        assert_eq!(s.get("a"), Lookup::Unknown);
    }

    #[test]
    fn a_full_store_refuses_new_pods_but_updates_known_ones() {
        let mut s = PodStore::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(s.upsert(facts("a"), t0), Upsert::Stored);
        assert_eq!(s.upsert(facts("b"), t0), Upsert::Stored);
        assert_eq!(s.upsert(facts("c"), t0), Upsert::Full);
        assert_eq!(s.upsert(facts("a"), t0), Upsert::Stored);
        s.delete("b", t0);
        // Past its grace period a deleted pod is simply gone.
        assert_eq!(s.upsert(facts("c"), t0 + Duration::from_secs(61)), Upsert::Stored);
        assert_eq!(s.counts(), (2, 0));
        assert_eq!(s.deleted_order.len(), 0, "the expiry took its place in the order too");
    }

    #[test]
    fn a_live_pod_takes_the_place_of_the_longest_deleted_one() {
        let mut s = PodStore::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for uid in ["a", "b", "c"] {
            assert_eq!(s.upsert(facts(uid), t0), Upsert::Stored);
        }
        s.delete("b", t0 + Duration::from_secs(1));
        s.delete("a", t0 + Duration::from_secs(2));
        let t = t0 + Duration::from_secs(3);
        assert_eq!(s.upsert(facts("d"), t), Upsert::StoredDisplacing);
        assert_eq!(s.get("b"), Lookup::Unknown, "deleted first, forgotten first");
        assert!(matches!(s.get("a"), Lookup::Deleted(_)));
        assert_eq!(s.upsert(facts("e"), t), Upsert::StoredDisplacing);
        assert_eq!(s.get("a"), Lookup::Unknown);
        // Every pod is live: nothing to forget.
        assert_eq!(s.upsert(facts("f"), t), Upsert::Full);
        assert_eq!(s.counts(), (3, 0));
    }

    #[test]
    fn a_pod_deleted_then_seen_again_is_not_forgotten_for_its_old_deletion() {
        let mut s = PodStore::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        s.upsert(facts("a"), t0);
        s.upsert(facts("b"), t0);
        s.delete("a", t0);
        // A relist finds it after all: live again, its deletion no longer counts.
        s.upsert(facts("a"), t0);
        assert_eq!(s.upsert(facts("c"), t0), Upsert::Full);
        assert!(matches!(s.get("a"), Lookup::Live(_)));
    }

    #[test]
    fn pods_that_do_not_fit_during_a_relist_are_stored_once_the_gone_ones_make_room() {
        let mut s = PodStore::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        s.begin_list();
        for uid in ["a", "b", "c"] {
            s.upsert(facts(uid), t0);
        }
        s.end_list(t0);
        // While the watch was down, b and c went and d, e, f, g came. The relist holds the
        // stale b and c until it ends, so the new pods do not fit during it.
        s.begin_list();
        assert_eq!(s.upsert(facts("a"), t0), Upsert::Stored);
        for uid in ["d", "e", "f"] {
            assert_eq!(s.upsert(facts(uid), t0), Upsert::Deferred, "{uid}");
        }
        assert_eq!(s.upsert(facts("g"), t0), Upsert::Full, "no more set aside than the store holds");
        let end = s.end_list(t0);
        assert_eq!(end, ListEnd { gone: 2, stored: 2, displacing: 2, dropped: 1 });
        for uid in ["a", "d", "e"] {
            assert!(matches!(s.get(uid), Lookup::Live(_)), "{uid}");
        }
        assert_eq!((s.get("b"), s.get("c"), s.get("f")), (Lookup::Unknown, Lookup::Unknown, Lookup::Unknown));
        // Outside a list a pod that does not fit is refused at once.
        assert_eq!(s.upsert(facts("h"), t0), Upsert::Full);
    }

    #[test]
    fn a_restarted_list_forgets_what_the_interrupted_one_set_aside() {
        let mut s = PodStore::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        s.begin_list();
        s.upsert(facts("a"), t0);
        assert_eq!(s.upsert(facts("b"), t0), Upsert::Deferred);
        s.begin_list();
        s.upsert(facts("a"), t0);
        assert_eq!(s.end_list(t0), ListEnd::default(), "b comes again if it still exists");
        assert_eq!(s.get("b"), Lookup::Unknown);
    }

    #[test]
    fn a_relist_marks_missing_pods_deleted() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        s.begin_list();
        s.upsert(facts("a"), t0);
        s.upsert(facts("b"), t0);
        assert!(!s.synced());
        assert_eq!(s.end_list(t0).gone, 0);
        assert!(s.synced());
        s.begin_list();
        s.upsert(facts("a"), t0);
        assert_eq!(s.end_list(t0).gone, 1);
        assert!(matches!(s.get("a"), Lookup::Live(_)));
        assert!(matches!(s.get("b"), Lookup::Deleted(_)));
    }

    #[test]
    fn shared_names_are_stored_once_and_dropped_with_their_last_pod() {
        let mut s = PodStore::new(10, Duration::from_secs(1));
        let t0 = Instant::now();
        s.upsert(facts("a"), t0);
        s.upsert(facts("b"), t0);
        let ns = |s: &PodStore, uid: &str| match s.get(uid) {
            Lookup::Live(p) | Lookup::Deleted(p) => Arc::clone(&p.namespace),
            Lookup::Unknown => panic!("{uid} unknown"),
        };
        assert!(Arc::ptr_eq(&ns(&s, "a"), &ns(&s, "b")));
        assert_eq!(s.names.len(), 2, "namespace and node");
        s.delete("a", t0);
        s.delete("b", t0);
        s.expire(t0 + Duration::from_secs(2));
        assert!(s.names.is_empty());
    }

    #[test]
    fn container_ids_lose_their_runtime_scheme() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
