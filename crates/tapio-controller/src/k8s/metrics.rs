//! Metrics of the Kubernetes integration: enrichment results by reason, the pod watch,
//! owner lookups and TokenReview with its cache. All label values are fixed strings.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One closed-set label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Result or reason.
    pub result: &'static str,
}

/// Every Kubernetes metric (registered under the controller's prefix as `k8s_*`).
#[derive(Debug, Default)]
pub struct K8sMetrics {
    /// Records by enrichment result: enriched, enriched_deleted_pod, no_pod_uid,
    /// pod_unknown, pod_uid_conflict, not_synced, pod_on_other_node.
    pub enrichment: Family<OutcomeLabels, Counter>,
    /// Enriched records whose container id the pod does not list (no container name).
    pub container_unknown: Counter,
    /// Pod watch events applied, by kind (apply, delete, init_apply).
    pub watch_events: Family<OutcomeLabels, Counter>,
    /// Watch errors (API server unreachable, 410 Gone, …); the watch retries with backoff.
    pub watch_errors: Counter,
    /// Completed lists (the first one, then one per relist).
    pub lists: Counter,
    /// 1 once the first list completed.
    pub synced: Gauge,
    /// Live pods in the store.
    pub pods_live: Gauge,
    /// Deleted pods kept for their grace period.
    pub pods_deleted_kept: Gauge,
    /// Pods not stored because the store was full.
    pub pods_dropped: Counter,
    /// Deleted pods forgotten before their grace period to make room for live ones.
    pub pods_displaced: Counter,
    /// Pod objects without UID or name, or with names longer than the API server allows,
    /// ignored.
    pub pods_malformed: Counter,
    /// Pods claiming a store key (pod UID) that another existing pod holds: the key's
    /// records are then named after neither.
    pub pod_uid_conflicts: Counter,
    /// Owner lookups by result (hit, miss, error, skipped, uid_mismatch).
    pub owner_lookups: Family<OutcomeLabels, Counter>,
    /// TokenReview decisions by result.
    pub token_reviews: Family<OutcomeLabels, Counter>,
    /// Authentications answered from the cache.
    pub token_cache_hits: Counter,
    /// Authentications that needed a TokenReview.
    pub token_cache_misses: Counter,
    /// Entries in the token cache.
    pub token_cache_entries: Gauge,
}

impl K8sMetrics {
    /// Registers every metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register("k8s_enrichment", "Records by Kubernetes enrichment result", self.enrichment.clone());
        r.register(
            "k8s_container_unknown",
            "Enriched records whose container id the pod does not list",
            self.container_unknown.clone(),
        );
        r.register("k8s_watch_events", "Pod watch events applied, by kind", self.watch_events.clone());
        r.register("k8s_watch_errors", "Pod watch errors (the watch retries)", self.watch_errors.clone());
        r.register("k8s_lists", "Completed pod lists (first list and relists)", self.lists.clone());
        r.register("k8s_synced", "1 once the first pod list completed", self.synced.clone());
        r.register("k8s_pods_live", "Live pods in the store", self.pods_live.clone());
        r.register("k8s_pods_deleted_kept", "Deleted pods kept for the grace period", self.pods_deleted_kept.clone());
        r.register("k8s_pods_dropped", "Pods not stored because the store was full", self.pods_dropped.clone());
        r.register(
            "k8s_pods_displaced",
            "Deleted pods forgotten before their grace period to make room for live ones",
            self.pods_displaced.clone(),
        );
        r.register(
            "k8s_pods_malformed",
            "Pod objects without UID or name, or with over-long names",
            self.pods_malformed.clone(),
        );
        r.register(
            "k8s_pod_uid_conflicts",
            "Pods claiming a pod UID another existing pod holds (its records named after neither)",
            self.pod_uid_conflicts.clone(),
        );
        r.register("k8s_owner_lookups", "Owner lookups by result", self.owner_lookups.clone());
        r.register("k8s_token_reviews", "Kubernetes token checks by result", self.token_reviews.clone());
        r.register("k8s_token_cache_hits", "Token checks answered from the cache", self.token_cache_hits.clone());
        r.register("k8s_token_cache_misses", "Token checks that needed a TokenReview", self.token_cache_misses.clone());
        r.register("k8s_token_cache_entries", "Entries in the token cache", self.token_cache_entries.clone());
    }

    /// Counts one enrichment result.
    pub fn enrichment(&self, result: &'static str) {
        self.enrichment.get_or_create(&OutcomeLabels { result }).inc();
    }

    /// Counts one owner lookup.
    pub fn owner_lookup(&self, result: &'static str) {
        self.owner_lookups.get_or_create(&OutcomeLabels { result }).inc();
    }

    /// Counts one token decision.
    pub fn token_review(&self, result: &'static str) {
        self.token_reviews.get_or_create(&OutcomeLabels { result }).inc();
    }

    /// Counts one watch event.
    pub fn watch_event(&self, kind: &'static str) {
        self.watch_events.get_or_create(&OutcomeLabels { result: kind }).inc();
    }
}
