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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

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

/// The attribute key of an owner kind of the given `apiVersion`, or None for kinds
/// OpenTelemetry has no name for. The API group counts: a custom resource of the same kind
/// (OpenKruise's StatefulSet and DaemonSet, Volcano's Job, …) is not the Kubernetes one
/// those names mean.
pub fn owner_key(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    Some(match (group, kind) {
        // `extensions` is where these lived before apps/v1; old references may still say so.
        ("apps" | "extensions", "Deployment") => keys::DEPLOYMENT,
        ("apps" | "extensions", "ReplicaSet") => keys::REPLICASET,
        ("apps", "StatefulSet") => keys::STATEFULSET,
        ("apps" | "extensions", "DaemonSet") => keys::DAEMONSET,
        ("batch", "Job") => keys::JOB,
        ("batch", "CronJob") => keys::CRONJOB,
        _ => return None,
    })
}

/// The pod's controlling owner as written in its metadata (kind, name and UID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// `apps/v1`, `batch/v1`, …
    pub api_version: String,
    /// `ReplicaSet`, `Job`, …
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its UID: which object of that name it is (one deleted and made again is another).
    pub uid: String,
}

impl OwnerRef {
    /// The owner an owner reference names; None when its name is longer than any the API
    /// server accepts (never cut short: a shortened name would be another object's).
    pub fn from_reference(r: &OwnerReference) -> Option<Self> {
        (r.name.len() <= MAX_NAME_LEN).then(|| Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
    }
}

/// Longest object name the API server accepts (a DNS subdomain); anything longer does not
/// come from one, and the pod carrying it is not stored.
pub const MAX_NAME_LEN: usize = 253;
/// Longest UID kept: the API server's are 36 characters.
pub const MAX_UID_LEN: usize = 64;
/// Longest container id kept (scheme stripped): the runtimes' are 64 hex characters.
pub const MAX_CONTAINER_ID_LEN: usize = 128;
/// Container ids kept per pod (current and last terminated, of every container kind);
/// ids past it go unnamed (their records keep the pod's names, counted as container
/// unknown).
pub const MAX_CONTAINER_IDS: usize = 128;

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
    /// Extracts the facts from a Pod object; None when it has no UID, name or namespace, or
    /// a UID or name longer than the API server allows (such an object is not stored at
    /// all rather than named in part).
    pub fn from_pod(pod: &Pod) -> Option<(Self, Option<OwnerRef>)> {
        let meta = &pod.metadata;
        let api_uid = meta.uid.clone().filter(|u| !u.is_empty() && u.len() <= MAX_UID_LEN)?;
        let (uid, api_uid) = match static_pod_uid(pod) {
            Some(kubelet_uid) => (kubelet_uid.to_owned(), Some(api_uid.into())),
            None => (api_uid, None),
        };
        let name = meta.name.clone().filter(|n| !n.is_empty() && n.len() <= MAX_NAME_LEN)?;
        // The API server always gives a pod its namespace: one without is not named after a
        // guessed one.
        let namespace = meta.namespace.clone().filter(|n| !n.is_empty())?;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if namespace.len() > MAX_NAME_LEN || node.len() > MAX_NAME_LEN {
            return None;
        }
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
        let owner =
            match meta.owner_references.as_ref().and_then(|refs| refs.iter().find(|r| r.controller == Some(true))) {
                Some(r) => Some(OwnerRef::from_reference(r)?),
                None => None,
            };
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
    pod.metadata.annotations.as_ref()?.get(MIRROR_ANNOTATION).map(String::as_str).filter(|u| is_static_pod_uid(u))
}

/// Whether `s` is a UID the kubelet derives for a static pod: 32 lowercase hex digits (an
/// MD5 sum). The API server's UIDs are dashed UUIDs, so a mirror's key can never be an
/// ordinary pod's; anything else in the annotation (a manifest that sets its own
/// `metadata.uid`) is not honoured, and costs the store nothing.
fn is_static_pod_uid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key a pod is stored under (see [`PodFacts::uid`]).
pub fn store_key(pod: &Pod) -> Option<&str> {
    static_pod_uid(pod).or(pod.metadata.uid.as_deref())
}

fn push_container_ids(cs: &ContainerStatus, out: &mut Vec<(Box<str>, Arc<str>)>) {
    if cs.name.is_empty() || cs.name.len() > MAX_NAME_LEN {
        return;
    }
    let current = cs.container_id.as_deref();
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.container_id.as_deref());
    for id in [current, last].into_iter().flatten() {
        let id = strip_runtime_scheme(id);
        let fits = !id.is_empty() && id.len() <= MAX_CONTAINER_ID_LEN && out.len() < MAX_CONTAINER_IDS;
        if fits && !out.iter().any(|(known, _)| &**known == id) {
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
    /// For a contested key: when its last claimant went.
    deleted_at: Option<Instant>,
    /// Generation of the list or watch event that last saw it.
    generation: u64,
    /// Set while more than one existing API object claims this key (two pods carrying
    /// one static pod's UID in their mirror annotation): records under the key cannot be
    /// told apart, so they are named after none of them until one claimant is left.
    contest: Option<Box<Contest>>,
}

/// Most claimants of one key tracked; more keep the key contested until a list no longer
/// holds any of the untracked ones.
const MAX_CLAIMANTS: usize = 4;

/// The API objects that claim one contested key.
#[derive(Debug)]
struct Contest {
    /// Each claimant that exists (the former holder among them), with the generation that
    /// last saw it.
    claimants: Vec<(PodFacts, u64)>,
    /// The generation in which a claimant beyond [`MAX_CLAIMANTS`] was last seen.
    untracked_seen: Option<u64>,
}

impl Entry {
    fn new(facts: PodFacts, generation: u64) -> Self {
        Self { facts, deleted_at: None, generation, contest: None }
    }

    /// After claimants went: a contest with one known claimant left (and none untracked)
    /// ends, that one holding the key alone. True when none is left: the entry is then
    /// deleted, and stays contested for its grace period (late records may be any of theirs).
    fn settle(&mut self) -> bool {
        let Some(c) = self.contest.as_deref_mut() else {
            return false;
        };
        if c.untracked_seen.is_some() || c.claimants.len() > 1 {
            return false;
        }
        match c.claimants.pop() {
            Some((facts, generation)) => {
                (self.facts, self.generation, self.contest) = (facts, generation, None);
                false
            }
            None => true,
        }
    }
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
    /// More than one API object claims this UID: named after neither.
    Contested,
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
    /// Another existing pod holds its key: the key is contested, named after neither
    /// (counted once per claimant).
    Conflict,
    /// A claimant of a contested key, already counted, seen again.
    StillContested,
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
    /// Pods set aside during the list whose key another pod held by its end.
    pub conflicts: usize,
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
        let generation = self.generation;
        for (uid, e) in self.pods.iter_mut() {
            if e.deleted_at.is_some() {
                continue;
            }
            let gone = match e.contest.as_deref_mut() {
                None => e.generation != generation,
                Some(c) => {
                    c.claimants.retain(|(_, seen)| *seen == generation);
                    c.untracked_seen = c.untracked_seen.filter(|seen| *seen == generation);
                    e.settle()
                }
            };
            if gone {
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
                Upsert::Conflict | Upsert::StillContested => end.conflicts += 1,
            }
        }
        end
    }

    /// Adds or replaces a live pod (an existing pod is always updated in place). A full
    /// store first forgets expired deleted pods, then forgets the longest-deleted pod in its
    /// place; with no deleted pod to forget, it sets the new one aside during a list and
    /// refuses it otherwise.
    ///
    /// A pod whose key another existing API object holds (different `metadata.uid`) makes
    /// the key contested ([`Upsert::Conflict`]): named after none of its claimants until
    /// one is left. One that held it but is deleted, or that the list under way has not
    /// seen (it went while the watch was down, as when a mirror pod is deleted and made
    /// again), gives way.
    pub fn upsert(&mut self, mut facts: PodFacts, now: Instant) -> Upsert {
        self.share_names(&mut facts);
        let generation = self.generation;
        let listing = self.listing;
        if let Some(e) = self.pods.get_mut(&facts.uid) {
            let same_object = e.facts.api_uid() == facts.api_uid();
            let unconfirmed = listing && e.generation != generation;
            if e.deleted_at.is_some() || (e.contest.is_none() && (same_object || unconfirmed)) {
                *e = Entry::new(facts, generation);
                return Upsert::Stored;
            }
            let Some(c) = e.contest.as_deref_mut() else {
                let holder = (e.facts.clone(), e.generation);
                e.contest =
                    Some(Box::new(Contest { claimants: vec![holder, (facts, generation)], untracked_seen: None }));
                return Upsert::Conflict;
            };
            let tracked = c.claimants.len();
            return match c.claimants.iter_mut().find(|(known, _)| known.api_uid() == facts.api_uid()) {
                Some(claimant) => {
                    *claimant = (facts, generation);
                    Upsert::StillContested
                }
                None if tracked < MAX_CLAIMANTS => {
                    c.claimants.push((facts, generation));
                    Upsert::Conflict
                }
                None => {
                    let first = c.untracked_seen.is_none();
                    c.untracked_seen = Some(generation);
                    if first {
                        Upsert::Conflict
                    } else {
                        Upsert::StillContested
                    }
                }
            };
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
        self.pods.insert(uid, Entry::new(facts, self.generation));
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

    /// Marks the pod stored under `uid` whose API object is `api_uid` deleted as of `now`
    /// (kept for the grace period). The deletion of another object under that key (one
    /// that gave way) leaves the stored pod as it is; of a contested key's claimant, ends
    /// the contest when one is left.
    pub fn delete(&mut self, uid: &str, api_uid: &str, now: Instant) {
        let Some(e) = self.pods.get_mut(uid) else {
            return;
        };
        let all_gone = match e.contest.as_deref_mut() {
            None => e.facts.api_uid() == api_uid,
            Some(c) => {
                c.claimants.retain(|(claimant, _)| claimant.api_uid() != api_uid);
                e.settle()
            }
        };
        if all_gone && e.deleted_at.is_none() {
            e.deleted_at = Some(now);
            self.deleted_order.push_back((now, uid.to_string()));
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

    /// Finds a pod by UID (the key: see [`PodFacts::uid`]).
    pub fn get(&self, uid: &str) -> Lookup<'_> {
        match self.pods.get(uid) {
            None => Lookup::Unknown,
            Some(Entry { contest: Some(_), .. }) => Lookup::Contested,
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
        s.delete("a", "a", t0);
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
        s.delete("b", "b", t0);
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
        s.delete("b", "b", t0 + Duration::from_secs(1));
        s.delete("a", "a", t0 + Duration::from_secs(2));
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
        s.delete("a", "a", t0);
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
        assert_eq!(end, ListEnd { gone: 2, stored: 2, displacing: 2, dropped: 1, conflicts: 0 });
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
            Lookup::Unknown | Lookup::Contested => panic!("{uid} not stored alone"),
        };
        assert!(Arc::ptr_eq(&ns(&s, "a"), &ns(&s, "b")));
        assert_eq!(s.names.len(), 2, "namespace and node");
        s.delete("a", "a", t0);
        s.delete("b", "b", t0);
        s.expire(t0 + Duration::from_secs(2));
        assert!(s.names.is_empty());
    }

    /// A pod stored under `key` (a static pod's UID) as the API object `api_uid` claims it.
    fn claimant(key: &str, api_uid: &str) -> PodFacts {
        PodFacts { api_uid: Some(api_uid.into()), name: format!("pod-{api_uid}").into(), ..facts(key) }
    }

    const STATIC: &str = "6b3ec1f8c2a54f0e9a7d8b2c4e6f1a3d";

    /// Two existing API objects claiming one key (a mirror and a pod that copied its
    /// annotation and owner): its records cannot be told apart, so they are named after
    /// neither while both exist. When one goes, the one left holds the key alone; the
    /// deletion of an object that is not (or no longer) a claimant changes nothing.
    #[test]
    fn a_key_two_existing_pods_claim_is_named_after_neither_until_one_is_left() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(s.upsert(claimant(STATIC, "mirror"), t0), Upsert::Stored);
        assert_eq!(s.upsert(claimant(STATIC, "copycat"), t0), Upsert::Conflict);
        assert_eq!(s.get(STATIC), Lookup::Contested);
        assert_eq!(s.upsert(claimant(STATIC, "copycat"), t0), Upsert::StillContested, "counted once");
        assert_eq!(s.upsert(claimant(STATIC, "mirror"), t0), Upsert::StillContested);
        assert_eq!(s.counts(), (1, 0));
        s.delete(STATIC, "someone-else", t0);
        assert_eq!(s.get(STATIC), Lookup::Contested);
        s.delete(STATIC, "copycat", t0);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == "mirror"));
        // Claimed again, and this time the first holder goes: the other is left.
        assert_eq!(s.upsert(claimant(STATIC, "copycat-2"), t0), Upsert::Conflict);
        s.delete(STATIC, "mirror", t0);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == "copycat-2"));
        s.delete(STATIC, "mirror", t0);
        assert!(matches!(s.get(STATIC), Lookup::Live(_)), "a late repeat of a deletion");
        s.delete(STATIC, "copycat-2", t0);
        assert!(matches!(s.get(STATIC), Lookup::Deleted(p) if p.api_uid() == "copycat-2"));
    }

    /// Without a contest, only the holder's own deletion ends it; a pod that took the key
    /// of a deleted one (a mirror made again) holds it alone.
    #[test]
    fn only_the_holders_deletion_deletes_and_a_deleted_holder_gives_way() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        s.upsert(claimant(STATIC, "mirror"), t0);
        s.delete(STATIC, "someone-else", t0);
        assert!(matches!(s.get(STATIC), Lookup::Live(_)));
        s.delete(STATIC, "mirror", t0);
        assert_eq!(s.upsert(claimant(STATIC, "mirror-2"), t0), Upsert::Stored);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == "mirror-2"));
        s.delete(STATIC, "mirror", t0);
        assert!(matches!(s.get(STATIC), Lookup::Live(_)), "the old mirror's late deletion");
    }

    /// A relist that finds another object under a key whose holder it has not (yet) seen:
    /// the holder went while the watch was down and gives way. Should the holder come later
    /// in the same list after all, both exist: contested. A list holding one of them leaves
    /// it the key; one holding neither of two claimants leaves the key deleted and still
    /// contested (late records may be either's) until its grace period ends.
    #[test]
    fn a_relist_gives_an_unseen_holders_key_away_and_contests_a_seen_one() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        s.begin_list();
        s.upsert(claimant(STATIC, "mirror"), t0);
        s.end_list(t0);
        s.begin_list();
        assert_eq!(s.upsert(claimant(STATIC, "mirror-2"), t0), Upsert::Stored);
        assert_eq!(s.end_list(t0).gone, 0);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == "mirror-2"));

        s.begin_list();
        s.upsert(claimant(STATIC, "copycat"), t0);
        assert_eq!(s.upsert(claimant(STATIC, "mirror-2"), t0), Upsert::Conflict);
        assert_eq!(s.end_list(t0).gone, 0);
        assert_eq!(s.get(STATIC), Lookup::Contested);
        s.begin_list();
        s.upsert(claimant(STATIC, "mirror-2"), t0);
        assert_eq!(s.end_list(t0).gone, 0);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == "mirror-2"));

        s.begin_list();
        s.upsert(claimant(STATIC, "copycat"), t0);
        assert_eq!(s.upsert(claimant(STATIC, "mirror-2"), t0), Upsert::Conflict);
        s.end_list(t0);
        s.begin_list();
        assert_eq!(s.end_list(t0).gone, 1);
        assert_eq!((s.get(STATIC), s.counts()), (Lookup::Contested, (0, 1)));
        s.expire(t0 + Duration::from_secs(60));
        assert_eq!(s.get(STATIC), Lookup::Unknown);
    }

    /// More claimants than are tracked: the contest lasts while any of them may exist, even
    /// after every tracked one is deleted, until a list holds none of the untracked.
    #[test]
    fn claimants_past_the_tracked_ones_keep_the_key_contested_until_a_list_lacks_them() {
        let mut s = PodStore::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let names: Vec<String> = (0..=MAX_CLAIMANTS).map(|i| format!("claimant-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let expected = if i == 0 { Upsert::Stored } else { Upsert::Conflict };
            assert_eq!(s.upsert(claimant(STATIC, name), t0), expected, "{name}");
        }
        assert_eq!(s.upsert(claimant(STATIC, "one-more"), t0), Upsert::StillContested, "counted once");
        for name in &names[1..MAX_CLAIMANTS] {
            s.delete(STATIC, name, t0);
        }
        assert_eq!((s.get(STATIC), s.counts()), (Lookup::Contested, (1, 0)), "an untracked one may exist");
        s.begin_list();
        s.upsert(claimant(STATIC, &names[0]), t0);
        assert_eq!(s.end_list(t0).gone, 0);
        assert!(matches!(s.get(STATIC), Lookup::Live(p) if p.api_uid() == names[0]));
    }

    /// What the API server sends is bounded before it is stored: names longer than it
    /// allows make the pod malformed (never stored cut short), container ids past the
    /// per-pod bound or of a length no runtime makes are not kept, and a mirror annotation
    /// that is not a kubelet-made static pod UID is not a key.
    #[test]
    fn what_the_api_server_sends_is_bounded_before_it_is_stored() {
        let base = |name: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "uid": "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"},
                "spec": {"nodeName": "node-a", "containers": []}
            }))
            .unwrap()
        };
        assert!(PodFacts::from_pod(&base("web")).is_some());
        let mut no_namespace = base("web");
        no_namespace.metadata.namespace = None;
        assert!(PodFacts::from_pod(&no_namespace).is_none(), "not guessed to be `default`");
        assert!(PodFacts::from_pod(&base(&"w".repeat(MAX_NAME_LEN + 1))).is_none());
        let mut long_uid = base("web");
        long_uid.metadata.uid = Some("u".repeat(MAX_UID_LEN + 1));
        assert!(PodFacts::from_pod(&long_uid).is_none());
        let mut long_node = base("web");
        long_node.spec.as_mut().unwrap().node_name = Some("n".repeat(MAX_NAME_LEN + 1));
        assert!(PodFacts::from_pod(&long_node).is_none());
        let mut long_owner = base("web");
        long_owner.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "r".repeat(MAX_NAME_LEN + 1),
            uid: "uid-r".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert!(PodFacts::from_pod(&long_owner).is_none());

        let mut many = base("web");
        let statuses = (0..MAX_CONTAINER_IDS + 10)
            .map(|i| ContainerStatus {
                name: format!("c{i}"),
                container_id: Some(format!("containerd://{i:064x}")),
                ..ContainerStatus::default()
            })
            .chain(std::iter::once(ContainerStatus {
                name: "huge".into(),
                container_id: Some(format!("containerd://{}", "a".repeat(MAX_CONTAINER_ID_LEN + 1))),
                ..ContainerStatus::default()
            }))
            .collect();
        many.status =
            Some(k8s_openapi::api::core::v1::PodStatus { container_statuses: Some(statuses), ..Default::default() });
        let (f, _) = PodFacts::from_pod(&many).unwrap();
        assert_eq!(f.containers.len(), MAX_CONTAINER_IDS);
        assert_eq!(f.container_name(&format!("{:064x}", 0)), Some("c0"));
        assert_eq!(f.container_name(&format!("{MAX_CONTAINER_IDS:064x}")), None);

        let mut mirror = base("etcd-node-a");
        mirror.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: "node-a".into(),
            uid: "uid-node-a".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        for (annotation, key) in [
            (STATIC.to_string(), STATIC),
            // Dashed: an API server UID, another pod's key; upper case and other lengths:
            // not what a kubelet derives.
            ("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e40".to_string(), "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
            (STATIC.to_uppercase(), "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
            ("a".repeat(100_000), "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
        ] {
            mirror.metadata.annotations = Some([(MIRROR_ANNOTATION.to_string(), annotation)].into());
            assert_eq!(PodFacts::from_pod(&mirror).unwrap().0.uid, key);
            assert_eq!(store_key(&mirror), Some(key));
        }
    }

    #[test]
    fn container_ids_lose_their_runtime_scheme() {
        assert_eq!(strip_runtime_scheme("containerd://abc"), "abc");
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
