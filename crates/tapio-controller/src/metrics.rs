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

/// Labels for connections shed, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why the connection was closed.
    pub reason: &'static str,
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

/// Evidence types that become label values of `evidence_total`; any other type is
/// counted as `other`, so a client cannot create series.
pub const KNOWN_EVIDENCE_TYPES: &[&str] = &[
    "kernel.network.connection_refused",
    "kernel.network.connection_timeout",
    "kernel.network.connection_unreachable",
    "kernel.network.connection_reset",
    "kernel.network.retransmit_spike",
    "kernel.network.rtt_degradation",
    "kernel.dns.failure",
    "kernel.dns.timeout",
    "kernel.dns.latency_spike",
    "kernel.container.oom_kill",
    "kernel.container.abnormal_exit",
    "kernel.container.cpu_throttling",
    "kernel.container.memory_pressure",
    "kernel.container.cpu_pressure",
    "kernel.container.io_pressure",
    "kernel.storage.io_error",
    "kernel.storage.latency_spike",
    "kernel.node.memory_pressure",
    "kernel.node.cpu_pressure",
    "kernel.node.io_pressure",
    "kernel.node.cpu_stall",
    "kernel.node.ipc_degradation",
];

const KNOWN_SEVERITIES: &[&str] = &["debug", "info", "warning", "error", "critical"];
const KNOWN_OBSERVERS: &[&str] = &["network", "container", "storage", "node", "dns", "container_pressure"];
const KNOWN_OBSERVER_STATES: &[&str] = &["running", "disabled", "degraded", "failed", "unsupported"];

/// `s` if it is in `known`, else `other`.
fn closed(known: &'static [&'static str], s: &str) -> &'static str {
    known.iter().find(|k| **k == s).copied().unwrap_or("other")
}

/// Labels of `evidence_total`: type and severity, both from closed sets.
pub fn evidence_labels(event_type: &str, severity: &str) -> EvidenceLabels {
    EvidenceLabels { r#type: closed(KNOWN_EVIDENCE_TYPES, event_type), severity: closed(KNOWN_SEVERITIES, severity) }
}

/// `evidence_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct EvidenceLabels {
    /// Evidence type (or `other`).
    pub r#type: &'static str,
    /// Severity (or `other`).
    pub severity: &'static str,
}

impl prometheus_client::encoding::EncodeLabelSet for EvidenceLabels {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        [("type", self.r#type), ("severity", self.severity)].encode(encoder)
    }
}

/// Per-agent series labels. `agent_id` and `node` are the agent's own (validated,
/// at most 253 bytes); the series are bounded by the registry's `--max-agents` and
/// `--max-unregistered-agents` and rebuilt at every scrape, so evicted agents vanish.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// Agent id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
}

/// An agent's loss counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLossLabels {
    /// Agent id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// lost_events, malformed_events, correlation_drops, sink_drops, controller_send_failures.
    pub kind: &'static str,
}

/// An agent's correlation drops of one reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentDropReasonLabels {
    /// Agent id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// The observer whose facts could not be judged (closed set; others as `other`).
    pub observer: &'static str,
    /// Why (validated on the wire: lower-case letters, digits and `_`).
    pub reason: String,
}

/// An agent's observer state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentObserverLabels {
    /// Agent id.
    pub agent_id: String,
    /// Node name.
    pub node: String,
    /// Observer (closed set, else `other`).
    pub observer: &'static str,
    /// Its status (closed set, else `other`).
    pub status: &'static str,
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
    /// fsyncs of the file sink that succeeded (per group under `always`, every interval
    /// under `interval`): what makes an acknowledged batch survive a power loss.
    pub sink_fsyncs: Family<SinkLabels, Counter>,
    /// Export attempts repeated after a retryable answer or a connection failure.
    pub sink_retries: Family<SinkLabels, Counter>,
    /// Open client connections.
    pub connections_open: Gauge,
    /// Connections the server closed to stay available, by reason (`evicted`: one
    /// without a request, or with a body arriving too slowly, made room; `peer_limit`:
    /// refused at once).
    pub connections_shed: Family<ReasonLabels, Counter>,
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
    /// Kubernetes enrichment, pod watch and TokenReview.
    pub k8s: crate::k8s::metrics::K8sMetrics,
    /// Accepted evidence by type and severity.
    pub evidence: Family<EvidenceLabels, Counter>,
    /// Seconds since each agent's last heartbeat (refreshed at scrape).
    pub agent_heartbeat_age: Family<AgentLabels, Gauge>,
    /// Each agent's reported loss counters (refreshed at scrape).
    pub agent_losses: Family<AgentLossLabels, Counter>,
    /// 1 per agent and observer, labelled with the observer's reported status.
    pub agent_observers: Family<AgentObserverLabels, Gauge>,
    /// Each agent's reported correlation drops by observer and reason (refreshed at scrape):
    /// the catalog's `tapio_correlation_drops_total{observer,reason}`, per agent.
    pub agent_correlation_drops: Family<AgentDropReasonLabels, Counter>,
    /// Serializes the per-agent refresh and encoding of concurrent scrapes.
    scrape: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        // The controller's own metrics are `tapio_controller_*`; the evidence catalog names
        // one metric outside that prefix (`tapio_correlation_drops_total`).
        let mut root = Registry::default();
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
            sink_fsyncs: Family::default(),
            sink_retries: Family::default(),
            connections_open: Gauge::default(),
            connections_shed: Family::default(),
            config_generation: Gauge::default(),
            agents_config: Family::default(),
            profile_reloads: Family::default(),
            profile_reload_failures: Counter::default(),
            k8s: crate::k8s::metrics::K8sMetrics::default(),
            evidence: Family::default(),
            agent_heartbeat_age: Family::default(),
            agent_losses: Family::default(),
            agent_observers: Family::default(),
            agent_correlation_drops: Family::default(),
            scrape: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        root.register(
            "tapio_correlation_drops",
            "Facts each agent could not judge without guessing, by observer and reason (its own counters)",
            m.agent_correlation_drops.clone(),
        );
        let registry = root.sub_registry_with_prefix("tapio_controller");
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
        registry.register("sink_fsyncs", "fsyncs of the file sink that succeeded", m.sink_fsyncs.clone());
        registry.register("sink_retries", "Sink export attempts repeated", m.sink_retries.clone());
        registry.register("connections_open", "Open client connections", m.connections_open.clone());
        registry.register(
            "connections_shed",
            "Connections closed to stay available, by reason",
            m.connections_shed.clone(),
        );
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
        m.k8s.register(registry);
        registry.register("evidence", "Accepted evidence by type and severity", m.evidence.clone());
        registry.register(
            "agent_heartbeat_age_seconds",
            "Seconds since the agent's last heartbeat",
            m.agent_heartbeat_age.clone(),
        );
        registry.register(
            "agent_losses",
            "Records the agent reports lost, by kind (its own counters)",
            m.agent_losses.clone(),
        );
        registry.register(
            "agent_observers",
            "1 per agent and observer, labelled with the status the agent reports",
            m.agent_observers.clone(),
        );
        Self { registry: root, ..m }
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

    /// Counts accepted evidence.
    pub fn count_evidence(&self, counts: &[(EvidenceLabels, u64)]) {
        for (labels, n) in counts {
            self.evidence.get_or_create(labels).inc_by(*n);
        }
    }

    /// OpenMetrics text with the per-agent series rebuilt from `agents` first (the
    /// registered agents: their number is bounded by `--max-agents`).
    pub fn encode_with_agents(&self, agents: &[tapio_wire::AgentStatus]) -> String {
        let _one_scrape_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.agent_heartbeat_age.clear();
        self.agent_losses.clear();
        self.agent_observers.clear();
        self.agent_correlation_drops.clear();
        for a in agents {
            let id = || AgentLabels { agent_id: a.agent_id.clone(), node: a.node_name.clone() };
            // An agent that said hello but never heartbeated is as silent as its age
            // since hello; one that only sent batches has no age (it is not registered).
            let age = a.last_heartbeat_age_seconds.or_else(|| {
                (a.registered_at_unix > 0)
                    .then(|| tapio_util::time::now_unix_secs().saturating_sub(a.registered_at_unix))
            });
            if let Some(age) = age {
                self.agent_heartbeat_age.get_or_create(&id()).set(i64::try_from(age).unwrap_or(i64::MAX));
            }
            let c = &a.reported_counters;
            for (kind, v) in [
                ("lost_events", c.lost_events_total),
                ("malformed_events", c.malformed_events_total),
                ("correlation_drops", c.correlation_drops_total),
                ("sink_drops", c.sink_drops_total),
                ("controller_send_failures", c.controller_send_failures_total),
                // Facts the kernel saw but never judged (a config of another ABI, a kernel
                // lacking a field, runs the kernel skipped as recursion): not lost records,
                // so no alert selects it, but evidence of them may be missing.
                ("not_judged", c.not_judged_total),
            ] {
                let labels = AgentLossLabels { agent_id: a.agent_id.clone(), node: a.node_name.clone(), kind };
                self.agent_losses.get_or_create(&labels).inner().store(v, std::sync::atomic::Ordering::Relaxed);
            }
            for (observer, status) in &a.observers {
                let labels = AgentObserverLabels {
                    agent_id: a.agent_id.clone(),
                    node: a.node_name.clone(),
                    observer: closed(KNOWN_OBSERVERS, observer),
                    status: closed(KNOWN_OBSERVER_STATES, status.as_str()),
                };
                self.agent_observers.get_or_create(&labels).set(1);
            }
            for (key, n) in &a.reported_correlation_drops {
                // The wire check holds every key to `observer.reason`.
                let Some((observer, reason)) = tapio_wire::validate::correlation_drop_key(key) else { continue };
                let labels = AgentDropReasonLabels {
                    agent_id: a.agent_id.clone(),
                    node: a.node_name.clone(),
                    observer: closed(KNOWN_OBSERVERS, observer),
                    reason: reason.to_owned(),
                };
                self.agent_correlation_drops
                    .get_or_create(&labels)
                    .inner()
                    .store(*n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.encode()
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
        assert!(text.contains("tapio_controller_config_generation 0"), "{text}");
        assert!(text.contains("tapio_controller_profile_reload_failures_total 0"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn evidence_labels_come_from_closed_sets() {
        let m = Metrics::new();
        m.count_evidence(&[
            (evidence_labels("kernel.container.oom_kill", "critical"), 2),
            (evidence_labels("kernel.\"injected", "warning"), 1),
            (evidence_labels("kernel.network.connection_reset", "bogus"), 1),
        ]);
        let text = m.encode();
        assert!(
            text.contains(
                "tapio_controller_evidence_total{type=\"kernel.container.oom_kill\",severity=\"critical\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("tapio_controller_evidence_total{type=\"other\",severity=\"warning\"} 1"), "{text}");
        assert!(text.contains(
            "tapio_controller_evidence_total{type=\"kernel.network.connection_reset\",severity=\"other\"} 1"
        ));
        assert!(!text.contains("injected"));
    }
}
