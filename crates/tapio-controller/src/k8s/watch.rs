//! The pod watch: kube-runtime's watcher (paged list, then watch from its resourceVersion
//! with bookmarks; a 410 Gone or a broken stream starts a relist) feeding the pod store.
//!
//! It runs as its own task and never holds the store's lock across an await, so an API
//! server that is slow or down never blocks ingest: records are then enriched from what
//! the store already holds, or pass through counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

use super::owners::OwnerResolver;
use super::store::{PodFacts, Upsert};
use super::PodIndex;
use crate::metrics::Metrics;

/// How often deleted pods past their grace period are forgotten and gauges refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Pods per list page (the API server's default limit is the same order).
const PAGE_SIZE: u32 = 500;

/// Watches every pod until the task is aborted.
pub async fn run(client: kube::Client, index: Arc<PodIndex>, metrics: Arc<Metrics>, mut owners: OwnerResolver) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let stream = watcher::watcher(api, config).default_backoff();
    tokio::pin!(stream);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let m = &metrics.k8s;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = sweep.tick() => {
                index.sweep(Instant::now(), m);
                continue;
            }
        };
        match event {
            None => break,
            Some(Err(e)) => {
                m.watch_errors.inc();
                log::warn!("pod watch: {e}");
            }
            Some(Ok(Event::Init)) => index.write().begin_list(),
            Some(Ok(Event::InitApply(pod))) => {
                m.watch_event("init_apply");
                store_pod(&pod, &index, &mut owners, &metrics).await;
            }
            Some(Ok(Event::InitDone)) => {
                let end = index.write().end_list(Instant::now());
                m.pods_dropped.inc_by(end.dropped as u64);
                m.pods_displaced.inc_by(end.displacing as u64);
                m.pod_uid_conflicts.inc_by(end.conflicts as u64);
                m.lists.inc();
                m.synced.set(1);
                log::info!(
                    "pod list complete ({} pods gone since the previous list; {} stored after it, {} not stored: the store is full)",
                    end.gone,
                    end.stored,
                    end.dropped
                );
                index.sweep(Instant::now(), m);
            }
            Some(Ok(Event::Apply(pod))) => {
                m.watch_event("apply");
                store_pod(&pod, &index, &mut owners, &metrics).await;
            }
            Some(Ok(Event::Delete(pod))) => {
                m.watch_event("delete");
                if let (Some(key), Some(api_uid)) = (super::store::store_key(&pod), pod.metadata.uid.as_deref()) {
                    index.write().delete(key, api_uid, Instant::now());
                }
            }
        }
    }
}

async fn store_pod(pod: &Pod, index: &PodIndex, owners: &mut OwnerResolver, metrics: &Metrics) {
    let m = &metrics.k8s;
    let Some((mut facts, owner)) = PodFacts::from_pod(pod) else {
        m.pods_malformed.inc();
        return;
    };
    facts.owners = owners.chain(&facts.namespace, owner, m).await;
    match index.write().upsert(facts, Instant::now()) {
        Upsert::Full => {
            m.pods_dropped.inc();
        }
        Upsert::StoredDisplacing => {
            m.pods_displaced.inc();
        }
        Upsert::Conflict => {
            m.pod_uid_conflicts.inc();
        }
        Upsert::Stored | Upsert::Deferred | Upsert::StillContested => {}
    }
}
