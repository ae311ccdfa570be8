//! Prometheus metrics of the controller (OpenMetrics text via `prometheus-client`).
//!
//! Counters are the source of truth for `/v1/status` totals too, so the two never
//! disagree. Label values come from closed sets (operation names, status codes, error
//! codes, fixed reasons): no client-supplied string becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a handled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Operation name (closed set, see `api::operation_of`).
    pub operation: &'static str,
    /// HTTP status.
    pub status: u16,
}

/// Labels carrying one closed-set value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// An error code.
    pub code: String,
}

/// Labels for results and reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Result or reason.
    pub result: &'static str,
}

/// Labels for agent states.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// registered | unregistered | stale.
    pub state: &'static str,
}

/// Labels naming one sink (`stdout`, `file`, `nats`, `otlp`, `discard`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink.
    pub sink: &'static str,
}

/// Labels naming a sink and a closed-set reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabels {
    /// The sink.
    pub sink: &'static str,
    /// Why.
    pub reason: &'static str,
}

/// Every metric, cheap to clone (handles share their values).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by operation and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Error responses by code.
    pub errors: Family<CodeLabels, Counter>,
    /// Events in accepted batches.
    pub events_accepted: Counter,
    /// Events in rejected batches.
    pub events_rejected: Counter,
    /// Accepted batches.
    pub batches_accepted: Counter,
    /// Rejected batches.
    pub batches_rejected: Counter,
    /// Batches with `seq > last + 1`.
    pub sequence_gaps: Counter,
    /// Batches with `seq <= last`.
    pub sequence_regressions: Counter,
    /// Accepted batches from agents the registry could not track.
    pub untracked_batches: Counter,
    /// Hellos by result.
    pub hellos: Family<ResultLabels, Counter>,
    /// Heartbeats by result.
    pub heartbeats: Family<ResultLabels, Counter>,
    /// Agents by state, refreshed at scrape time.
    pub agents: Family<StateLabels, Gauge>,
    /// Agents forgotten after silence.
    pub agents_evicted: Counter,
    /// Records each sink holds (written, published, exported).
    pub sink_written: Family<SinkLabels, Counter>,
    /// Records a sink dropped, by sink and reason.
    pub sink_dropped: Family<SinkReasonLabels, Counter>,
    /// Bytes waiting for each sink.
    pub sink_queue_bytes: Family<SinkLabels, Gauge>,
    /// Batches refused with 503 because a durable sink could not keep them (the agent
    /// retries them), by sink and reason.
    pub sink_refused: Family<SinkReasonLabels, Counter>,
    /// Torn file tails set aside at start.
    pub sink_torn_tails: Family<SinkLabels, Counter>,
    /// Export attempts repeated after a retryable answer or a connection failure.
    pub sink_retries: Family<SinkLabels, Counter>,
    /// Open client connections.
    pub connections_open: Gauge,
    /// Generation of the config being served.
    pub config_generation: Gauge,
    /// Registered agents by whether the hash they applied is the one served, refreshed
    /// at scrape time (state: current, outdated, unreported).
    pub agents_config: Family<StateLabels, Gauge>,
    /// Profile reloads that were read and valid, by result (applied: a new generation;
    /// unchanged: the file changed but compiles to the config already served).
    pub profile_reloads: Family<ResultLabels, Counter>,
    /// Profile reloads refused (unreadable or invalid file); the served config stays.
    pub profile_reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tapio_controller");
        let m = Self {
            requests: Family::default(),
            errors: Family::default(),
            events_accepted: Counter::default(),
            events_rejected: Counter::default(),
            batches_accepted: Counter::default(),
            batches_rejected: Counter::default(),
            sequence_gaps: Counter::default(),
            sequence_regressions: Counter::default(),
            untracked_batches: Counter::default(),
            hellos: Family::default(),
            heartbeats: Family::default(),
            agents: Family::default(),
            agents_evicted: Counter::default(),
            sink_written: Family::default(),
            sink_dropped: Family::default(),
            sink_queue_bytes: Family::default(),
            sink_refused: Family::default(),
            sink_torn_tails: Family::default(),
            sink_retries: Family::default(),
            connections_open: Gauge::default(),
            config_generation: Gauge::default(),
            agents_config: Family::default(),
            profile_reloads: Family::default(),
            profile_reload_failures: Counter::default(),
            registry: Registry::default(),
        };
        // Counter names get their `_total` suffix from the encoder.
        registry.register("requests", "HTTP requests handled", m.requests.clone());
        registry.register("errors", "Error responses by error code", m.errors.clone());
        registry.register("events_accepted", "Events in accepted batches", m.events_accepted.clone());
        registry.register("events_rejected", "Events in rejected batches", m.events_rejected.clone());
        registry.register("batches_accepted", "Accepted event batches", m.batches_accepted.clone());
        registry.register("batches_rejected", "Rejected event batches", m.batches_rejected.clone());
        registry.register("sequence_gaps", "Batches whose sequence skipped ahead", m.sequence_gaps.clone());
        registry.register(
            "sequence_regressions",
            "Batches whose sequence did not rise",
            m.sequence_regressions.clone(),
        );
        registry.register(
            "untracked_batches",
            "Accepted batches from agents beyond the unregistered bound",
            m.untracked_batches.clone(),
        );
        registry.register("hellos", "Hello requests by result", m.hellos.clone());
        registry.register("heartbeats", "Heartbeats by result", m.heartbeats.clone());
        registry.register("agents", "Agents by state", m.agents.clone());
        registry.register("agents_evicted", "Agents forgotten after silence", m.agents_evicted.clone());
        registry.register("sink_records_written", "Records each sink holds", m.sink_written.clone());
        registry.register("sink_records_dropped", "Records a sink dropped, by reason", m.sink_dropped.clone());
        registry.register("sink_queue_bytes", "Bytes waiting for each sink", m.sink_queue_bytes.clone());
        registry.register(
            "sink_batches_refused",
            "Batches answered 503 because a durable sink could not keep them (agents retry)",
            m.sink_refused.clone(),
        );
        registry.register(
            "sink_torn_tails",
            "Partial records set aside from the sink file at start",
            m.sink_torn_tails.clone(),
        );
        registry.register("sink_retries", "Sink export attempts repeated", m.sink_retries.clone());
        registry.register("connections_open", "Open client connections", m.connections_open.clone());
        registry.register("config_generation", "Generation of the config being served", m.config_generation.clone());
        registry.register(
            "agents_config",
            "Registered agents by whether their applied config hash is the served one",
            m.agents_config.clone(),
        );
        registry.register("profile_reloads", "Valid profile reloads by result", m.profile_reloads.clone());
        registry.register(
            "profile_reload_failures",
            "Profile reloads refused (unreadable or invalid); the served config stays",
            m.profile_reload_failures.clone(),
        );
        m.config_generation.set(1);
        Self { registry, ..m }
    }

    /// Counts an error response.
    pub fn count_error(&self, code: &str) {
        self.errors.get_or_create(&CodeLabels { code: code.to_string() }).inc();
    }

    /// Sets an agent-state gauge.
    pub fn set_agents(&self, state: &'static str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.agents.get_or_create(&StateLabels { state }).set(n);
    }

    /// Sets an agents-by-config-state gauge.
    pub fn set_agents_config(&self, state: &'static str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.agents_config.get_or_create(&StateLabels { state }).set(n);
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Encoding into a String only fails on a formatter error, which String never has.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_prefix_and_total_suffix() {
        let m = Metrics::new();
        m.events_accepted.inc_by(3);
        m.count_error("MALFORMED_JSON");
        m.set_agents("registered", 2);
        let text = m.encode();
        assert!(text.contains("tapio_controller_events_accepted_total 3"), "{text}");
        assert!(text.contains("tapio_controller_errors_total{code=\"MALFORMED_JSON\"} 1"));
        assert!(text.contains("tapio_controller_agents{state=\"registered\"} 2"));
        assert!(text.contains("tapio_controller_config_generation 1"), "{text}");
        assert!(text.contains("tapio_controller_profile_reload_failures_total 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
