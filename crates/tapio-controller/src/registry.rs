//! The bounded agent registry: who said hello, what they last reported, their batch
//! sequence, and when they were last heard from.
//!
//! Two bounds keep memory finite under any client behaviour: registered agents (a hello
//! beyond the bound is refused, 429) and unregistered agents, i.e. agents that send
//! batches before any hello (their batches are still accepted beyond the bound; the
//! caller counts them as untracked). Silent agents are evicted, freeing their slots.
//!
//! Agents are kept in id order, so a status page is a range walk from the previous
//! page's last id rather than a sort of the whole fleet per request.
//!
//! A hello resets the agent's sequence tracking: a hello starts a new registration, most
//! often a new agent process whose batch numbers start over.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tapio_wire::{
    AgentState, AgentStatus, DegradedReason, HeartbeatCounters, HeartbeatRequest, HelloRequest, ObserverStatus,
    SequenceStatus,
};

use crate::sequence::{SeqObservation, SeqState};

/// The registry is at its bound for registered agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the registry holds its maximum of {0} agents")]
pub struct RegistryFull(pub usize);

/// Result of a successful hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloOutcome {
    /// A new registration (possibly of an agent known from its batches).
    Registered,
    /// An agent already registered said hello again.
    Renewed,
}

/// How an accepted batch was tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchTracking {
    /// The agent is tracked; its sequence said this.
    Tracked(SeqObservation),
    /// The agent is unknown and the unregistered bound is reached.
    Untracked,
}

/// Agent counts by state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Agents that said hello.
    pub registered: usize,
    /// Agents known only from their batches.
    pub unregistered: usize,
    /// Registered agents whose last heartbeat (or hello) is older than the stale bound.
    pub stale: usize,
    /// Registered agents whose last heartbeat reported the target config hash.
    pub config_current: usize,
    /// Registered agents whose last heartbeat reported another hash (or none applied).
    pub config_outdated: usize,
    /// Registered agents with no heartbeat yet.
    pub config_unreported: usize,
    /// Agents whose last heartbeat reported degradation.
    pub degraded: usize,
}

#[derive(Debug, Clone)]
struct Registration {
    tapio_version: String,
    registered_at: Instant,
    registered_at_unix: u64,
}

#[derive(Debug, Clone)]
struct Report {
    config_version: String,
    config_hash: String,
    counters: HeartbeatCounters,
    observers: BTreeMap<String, ObserverStatus>,
    degraded_reasons: Vec<DegradedReason>,
    correlation_drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct Agent {
    node_name: String,
    registration: Option<Registration>,
    last_contact: Instant,
    last_heartbeat: Option<Instant>,
    report: Option<Report>,
    seq: SeqState,
}

impl Agent {
    /// Whether the agent is in `state`; `target_hash` is the config hash being served.
    fn is(&self, state: AgentState, now: Instant, stale_after: Duration, target_hash: &str) -> bool {
        let report = self.report.as_ref();
        match state {
            AgentState::Registered => self.registration.is_some(),
            AgentState::Unregistered => self.registration.is_none(),
            AgentState::Stale => self.registration.as_ref().is_some_and(|reg| {
                let since = self.last_heartbeat.unwrap_or(reg.registered_at);
                now.saturating_duration_since(since) > stale_after
            }),
            AgentState::Current => report.is_some_and(|r| r.config_hash == target_hash),
            AgentState::Outdated => report.is_some_and(|r| r.config_hash != target_hash),
            AgentState::Unreported => self.registration.is_some() && report.is_none(),
            AgentState::Degraded => report.is_some_and(|r| {
                !r.degraded_reasons.is_empty()
                    || r.observers.values().any(|s| !matches!(s, ObserverStatus::Running | ObserverStatus::Disabled))
            }),
        }
    }

    fn status(&self, id: &str, now: Instant, target_hash: &str) -> AgentStatus {
        let report = self.report.as_ref();
        AgentStatus {
            agent_id: id.to_string(),
            node_name: self.node_name.clone(),
            tapio_version: self.registration.as_ref().map(|r| r.tapio_version.clone()).unwrap_or_default(),
            registered_at_unix: self.registration.as_ref().map_or(0, |r| r.registered_at_unix),
            last_heartbeat_age_seconds: self.last_heartbeat.map(|t| now.saturating_duration_since(t).as_secs()),
            reported_config_version: report.map(|r| r.config_version.clone()).unwrap_or_default(),
            reported_counters: report.map(|r| r.counters.clone()).unwrap_or_default(),
            observers: report.map(|r| r.observers.clone()).unwrap_or_default(),
            sequence: SequenceStatus {
                last_seen: self.seq.last_seen,
                gaps_total: self.seq.gaps_total,
                regressions_total: self.seq.regressions_total,
            },
            reported_config_hash: report.map(|r| r.config_hash.clone()),
            config_current: report.map(|r| r.config_hash == target_hash),
            registered: Some(self.registration.is_some()),
            degraded_reasons: report.map(|r| r.degraded_reasons.clone()),
            reported_correlation_drops: report.map(|r| r.correlation_drops.clone()).unwrap_or_default(),
        }
    }

    fn new(node_name: &str, now: Instant) -> Self {
        Self {
            node_name: node_name.to_string(),
            registration: None,
            last_contact: now,
            last_heartbeat: None,
            report: None,
            seq: SeqState::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    agents: BTreeMap<String, Agent>,
    registered: usize,
}

/// The registry. All methods take the current time so tests control it.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    max_registered: usize,
    max_unregistered: usize,
}

impl Registry {
    /// An empty registry with the given bounds.
    pub fn new(max_registered: usize, max_unregistered: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max_registered, max_unregistered }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or re-registers) an agent.
    pub fn hello(&self, req: &HelloRequest, now: Instant, now_unix: u64) -> Result<HelloOutcome, RegistryFull> {
        let mut inner = self.lock();
        let registered = inner.registered;
        let already = inner.agents.get(&req.agent_id).map(|a| a.registration.is_some());
        let outcome = match already {
            Some(true) => HelloOutcome::Renewed,
            _ if registered >= self.max_registered => return Err(RegistryFull(self.max_registered)),
            _ => HelloOutcome::Registered,
        };
        if outcome == HelloOutcome::Registered {
            inner.registered += 1;
        }
        let agent = inner.agents.entry(req.agent_id.clone()).or_insert_with(|| Agent::new(&req.node_name, now));
        agent.node_name.clone_from(&req.node_name);
        agent.registration = Some(Registration {
            tapio_version: req.tapio_version.clone(),
            registered_at: now,
            registered_at_unix: now_unix,
        });
        agent.last_contact = now;
        agent.seq = SeqState::default();
        Ok(outcome)
    }

    /// The node an agent id is held for, if the registry knows it.
    pub fn node_of(&self, agent_id: &str) -> Option<String> {
        self.lock().agents.get(agent_id).map(|a| a.node_name.clone())
    }

    /// Records a heartbeat. False when the agent is not registered ("I do not know you").
    pub fn heartbeat(&self, req: &HeartbeatRequest, now: Instant) -> bool {
        let mut inner = self.lock();
        let Some(agent) = inner.agents.get_mut(&req.agent_id) else {
            return false;
        };
        if agent.registration.is_none() {
            return false;
        }
        agent.node_name.clone_from(&req.node_name);
        agent.last_contact = now;
        agent.last_heartbeat = Some(now);
        agent.report = Some(Report {
            config_version: req.config_version.clone(),
            config_hash: req.config_hash.clone(),
            counters: req.counters.clone(),
            observers: req.observers.clone(),
            degraded_reasons: req.degraded_reasons.clone(),
            correlation_drops: req.correlation_drops.clone(),
        });
        true
    }

    /// Records an accepted batch's sequence, creating an unregistered entry for an
    /// unknown agent while the unregistered bound allows.
    pub fn batch(&self, agent_id: &str, node_name: &str, seq: u64, now: Instant) -> BatchTracking {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(agent_id) {
            agent.last_contact = now;
            return BatchTracking::Tracked(agent.seq.observe(seq));
        }
        let unregistered = inner.agents.len() - inner.registered;
        if unregistered >= self.max_unregistered {
            return BatchTracking::Untracked;
        }
        let mut agent = Agent::new(node_name, now);
        let obs = agent.seq.observe(seq);
        inner.agents.insert(agent_id.to_string(), agent);
        BatchTracking::Tracked(obs)
    }

    /// Notes contact from a known agent (a config pull), delaying its eviction.
    pub fn touch(&self, agent_id: &str, now: Instant) {
        if let Some(agent) = self.lock().agents.get_mut(agent_id) {
            agent.last_contact = now;
        }
    }

    /// Forgets agents silent for longer than `after`. Returns the forgotten ids.
    pub fn evict_silent(&self, now: Instant, after: Duration) -> Vec<String> {
        let mut inner = self.lock();
        let mut evicted = Vec::new();
        let mut freed_registered = 0;
        inner.agents.retain(|id, agent| {
            let keep = now.saturating_duration_since(agent.last_contact) <= after;
            if !keep {
                if agent.registration.is_some() {
                    freed_registered += 1;
                }
                evicted.push(id.clone());
            }
            keep
        });
        inner.registered -= freed_registered;
        evicted
    }

    /// Counts agents by state; `target_hash` is the config hash being served.
    pub fn census(&self, now: Instant, stale_after: Duration, target_hash: &str) -> Census {
        let inner = self.lock();
        let mut census = Census {
            registered: inner.registered,
            unregistered: inner.agents.len() - inner.registered,
            ..Census::default()
        };
        for a in inner.agents.values() {
            let is = |state| a.is(state, now, stale_after, target_hash);
            census.stale += usize::from(is(AgentState::Stale));
            census.degraded += usize::from(is(AgentState::Degraded));
            if a.registration.is_none() {
                continue;
            }
            match &a.report {
                None => census.config_unreported += 1,
                Some(r) if r.config_hash == target_hash => census.config_current += 1,
                Some(_) => census.config_outdated += 1,
            }
        }
        census
    }

    /// The status view of every agent, sorted by id; `target_hash` is the config hash
    /// being served (each agent says whether it runs it).
    pub fn snapshot(&self, now: Instant, target_hash: &str) -> Vec<AgentStatus> {
        self.lock().agents.iter().map(|(id, a)| a.status(id, now, target_hash)).collect()
    }

    /// The status view of every registered agent, sorted by id. Per-agent metric series are
    /// built from this: registered agents are bounded by `--max-agents` and each one said
    /// hello, while anyone who can post a batch can invent unregistered ones.
    pub fn registered_snapshot(&self, now: Instant, target_hash: &str) -> Vec<AgentStatus> {
        self.lock()
            .agents
            .iter()
            .filter(|(_, a)| a.registration.is_some())
            .map(|(id, a)| a.status(id, now, target_hash))
            .collect()
    }

    /// One status page: up to `limit` agents with ids after `after`, in id order, that
    /// are in `state` (any when None). The second value is the last id returned when
    /// more matching agents follow (the next page's `after`).
    pub fn page(&self, now: Instant, query: &PageQuery<'_>) -> (Vec<AgentStatus>, Option<String>) {
        let inner = self.lock();
        let start = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = inner
            .agents
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|(_, a)| query.state.is_none_or(|st| a.is(st, now, query.stale_after, query.target_hash)));
        let page: Vec<AgentStatus> =
            matching.by_ref().take(query.limit).map(|(id, a)| a.status(id, now, query.target_hash)).collect();
        let more = matching.next().is_some();
        let next = if more { page.last().map(|a| a.agent_id.clone()) } else { None };
        (page, next)
    }
}

/// What a status page asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery<'a> {
    /// Start after this agent id.
    pub after: Option<&'a str>,
    /// Most agents returned.
    pub limit: usize,
    /// Only agents in this state.
    pub state: Option<AgentState>,
    /// The stale bound, for [`AgentState::Stale`].
    pub stale_after: Duration,
    /// The config hash being served.
    pub target_hash: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapio_wire::WIRE_VERSION;

    fn hello(id: &str) -> HelloRequest {
        HelloRequest {
            wire_version: WIRE_VERSION.into(),
            agent_id: id.into(),
            node_name: format!("node-{id}"),
            tapio_version: "0.1.0".into(),
            kernel_release: "6.8".into(),
            arch: "x86_64".into(),
            capabilities: vec![],
            object_sizes: BTreeMap::new(),
            map_counts: BTreeMap::new(),
        }
    }

    fn heartbeat(id: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            wire_version: WIRE_VERSION.into(),
            agent_id: id.into(),
            node_name: format!("node-{id}"),
            config_version: "1".into(),
            config_hash: "sha256:ab".into(),
            uptime_seconds: 1,
            observers: BTreeMap::from([("network".to_string(), ObserverStatus::Running)]),
            counters: HeartbeatCounters::default(),
            degraded_reasons: vec![],
            correlation_drops: BTreeMap::new(),
        }
    }

    #[test]
    fn registered_bound_and_renewal() {
        let r = Registry::new(2, 2);
        let t = Instant::now();
        assert_eq!(r.hello(&hello("a"), t, 1), Ok(HelloOutcome::Registered));
        assert_eq!(r.hello(&hello("b"), t, 1), Ok(HelloOutcome::Registered));
        assert_eq!(r.hello(&hello("c"), t, 1), Err(RegistryFull(2)));
        // A known agent may always say hello again.
        assert_eq!(r.hello(&hello("a"), t, 1), Ok(HelloOutcome::Renewed));
        assert_eq!(r.census(t, Duration::from_secs(30), "sha256:ab").registered, 2);
    }

    #[test]
    fn heartbeat_needs_registration() {
        let r = Registry::new(4, 4);
        let t = Instant::now();
        assert!(!r.heartbeat(&heartbeat("a"), t));
        r.batch("a", "node-a", 1, t);
        assert!(!r.heartbeat(&heartbeat("a"), t), "batch-only agents must say hello");
        r.hello(&hello("a"), t, 1).unwrap();
        assert!(r.heartbeat(&heartbeat("a"), t));
        let snap = r.snapshot(t, "sha256:ab");
        assert_eq!(snap[0].reported_config_version, "1");
        assert_eq!(snap[0].last_heartbeat_age_seconds, Some(0));
        assert_eq!(snap[0].config_current, Some(true), "it reported the target hash");
        assert_eq!(r.snapshot(t, "sha256:cd")[0].config_current, Some(false));
        let c = r.census(t, Duration::from_secs(30), "sha256:cd");
        assert_eq!((c.config_current, c.config_outdated, c.config_unreported), (0, 1, 0));
        r.hello(&hello("b"), t, 1).unwrap();
        assert_eq!(r.snapshot(t, "sha256:ab")[1].config_current, None, "no heartbeat yet");
        let c = r.census(t, Duration::from_secs(30), "sha256:ab");
        assert_eq!((c.config_current, c.config_outdated, c.config_unreported), (1, 0, 1));
    }

    #[test]
    fn unregistered_bound_counts_untracked() {
        let r = Registry::new(4, 1);
        let t = Instant::now();
        assert!(matches!(r.batch("x", "n", 1, t), BatchTracking::Tracked(_)));
        assert_eq!(r.batch("y", "n", 1, t), BatchTracking::Untracked);
        let c = r.census(t, Duration::from_secs(30), "sha256:ab");
        assert_eq!((c.registered, c.unregistered), (0, 1));
        // Saying hello moves x to registered and frees the unregistered slot.
        r.hello(&hello("x"), t, 1).unwrap();
        assert!(matches!(r.batch("y", "n", 1, t), BatchTracking::Tracked(_)));
        let snap = r.snapshot(t, "sha256:ab");
        assert_eq!(snap[0].registered, Some(true));
        assert_eq!(snap[1].registered, Some(false));
        assert_eq!(snap[1].registered_at_unix, 0);
    }

    #[test]
    fn hello_resets_sequence() {
        let r = Registry::new(4, 4);
        let t = Instant::now();
        r.hello(&hello("a"), t, 1).unwrap();
        r.batch("a", "n", 10, t);
        r.hello(&hello("a"), t, 1).unwrap();
        assert_eq!(r.batch("a", "n", 0, t), BatchTracking::Tracked(SeqObservation::InOrder));
        assert_eq!(r.snapshot(t, "sha256:ab")[0].sequence.regressions_total, 0);
    }

    #[test]
    fn eviction_and_staleness() {
        let r = Registry::new(2, 2);
        let t0 = Instant::now();
        r.hello(&hello("a"), t0, 1).unwrap();
        r.hello(&hello("b"), t0, 1).unwrap();
        r.batch("u", "n", 1, t0);
        let t1 = t0 + Duration::from_secs(40);
        assert!(r.heartbeat(&heartbeat("b"), t1));
        let c = r.census(t1, Duration::from_secs(30), "sha256:ab");
        assert_eq!(c.stale, 1, "a has been silent 40 s");
        let t2 = t0 + Duration::from_secs(61);
        let mut gone = r.evict_silent(t2, Duration::from_secs(60));
        gone.sort();
        assert_eq!(gone, ["a", "u"]);
        let c = r.census(t2, Duration::from_secs(30), "sha256:ab");
        assert_eq!((c.registered, c.unregistered), (1, 0));
        // The freed slot can be taken again.
        assert_eq!(r.hello(&hello("c"), t2, 1), Ok(HelloOutcome::Registered));
        assert!(!r.heartbeat(&heartbeat("a"), t2), "evicted agents are unknown");
    }
}
