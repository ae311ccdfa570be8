//! Shared state of the running controller, handed to every request handler.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tapio_wire::{Batching, CompiledConfig};

use crate::auth::SharedToken;
use crate::config_hash::ActiveConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::settings::Settings;
use crate::sink::Sinks;

/// Everything a handler reads or updates.
#[derive(Debug)]
pub struct AppState {
    /// Identity reported to agents.
    pub controller_id: String,
    /// Start time.
    pub started_at_unix: u64,
    /// The config being served; replaced whole when the profile changes, so a request
    /// sees one generation's version, hash and body together.
    config: RwLock<Arc<ActiveConfig>>,
    /// Known agents.
    pub registry: Registry,
    /// Metrics (also the source of status totals).
    pub metrics: Arc<Metrics>,
    /// Where accepted records go.
    pub sinks: Sinks,
    /// Bearer token, if auth is on (re-read when its file changes).
    pub auth: Option<SharedToken>,
    /// Body limit.
    pub body_limit: usize,
    /// Batch interval handed to agents.
    pub send_interval_ms: u64,
    /// Batch size bound.
    pub max_batch_events: u64,
    /// Stale threshold for metrics.
    pub stale_after: Duration,
    /// Time a request may take.
    pub request_timeout: Duration,
    /// Pod store for enrichment (`--k8s-pods`).
    pub pods: Option<Arc<crate::k8s::PodIndex>>,
    /// TokenReview checker (`--auth kubernetes`).
    pub kubernetes_auth: Option<Arc<crate::k8s::tokenreview::TokenReviewer>>,
    /// Status requests without `limit` building the whole agent list at once; the rest
    /// wait (within the request timeout). Each holds a copy of every agent's status and
    /// its JSON, so their number, not just the registry, bounds the memory they take.
    pub full_status: tokio::sync::Semaphore,
}

/// Whole-list status requests served at once (see [`AppState::full_status`]).
pub const FULL_STATUS_AT_ONCE: usize = 2;

impl AppState {
    /// Builds the state from settings, metrics and a started sink.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>, sinks: Sinks) -> Self {
        let started_at_unix = unix_now();
        let batching =
            Batching { send_interval_ms: settings.send_interval_ms, max_batch_events: settings.max_batch_events };
        let generation = crate::profile::next_generation(None, started_at_unix);
        // The gauge shows the generation served from the first request, as /v1/status does.
        metrics.config_generation.set(i64::from(generation));
        Self {
            controller_id: settings.controller_id.clone().unwrap_or_else(|| default_controller_id(started_at_unix)),
            started_at_unix,
            config: RwLock::new(Arc::new(ActiveConfig::new(settings.config.clone(), generation, batching))),
            registry: Registry::new(settings.max_agents, settings.max_unregistered_agents),
            metrics,
            sinks,
            auth: settings.auth_token.clone().map(SharedToken::new),
            body_limit: settings.body_limit_bytes,
            send_interval_ms: settings.send_interval_ms,
            max_batch_events: settings.max_batch_events,
            stale_after: settings.stale_after,
            request_timeout: settings.request_timeout,
            pods: None,
            kubernetes_auth: None,
            full_status: tokio::sync::Semaphore::new(FULL_STATUS_AT_ONCE),
        }
    }
}

impl AppState {
    /// The config being served now.
    pub fn config(&self) -> Arc<ActiveConfig> {
        // A panic while holding the lock leaves a complete Arc behind; keep serving it.
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Serves `config` from now on if its hash differs from the current one, as the next
    /// generation. Returns the new generation, or None when nothing changed (an edit that
    /// compiles to the same config does not disturb the fleet).
    pub fn replace_config(&self, config: CompiledConfig) -> Option<u32> {
        let mut slot = self.config.write().unwrap_or_else(|p| p.into_inner());
        if crate::config_hash::config_hash(&config) == slot.hash {
            return None;
        }
        let generation = crate::profile::next_generation(Some(slot.generation), unix_now());
        let batching = Batching { send_interval_ms: self.send_interval_ms, max_batch_events: self.max_batch_events };
        *slot = Arc::new(ActiveConfig::new(config, generation, batching));
        self.metrics.config_generation.set(i64::from(generation));
        Some(generation)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub use tapio_util::time::now_unix_secs as unix_now;

/// `tapio-controller-<host>-<start time hex>`: distinct across restarts of one host.
fn default_controller_id(started_at_unix: u64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .unwrap_or_else(|| "unknown".to_string());
    format!("tapio-controller-{host}-{started_at_unix:x}")
}
