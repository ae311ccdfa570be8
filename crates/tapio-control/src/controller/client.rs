//! The controller client loop: hello → config → apply → heartbeats and event batches.
//!
//! Everything here is bounded: requests have connect/read/write timeouts, responses have a
//! size cap, one batch is in flight at a time and is retried with capped exponential
//! backoff and jitter, then dropped and counted. Batches keep their sequence number across
//! retries; a dropped batch leaves a gap the controller counts.

use super::apply::settings_from;
use super::http::{self, percent_encode, Endpoint, HttpError, Limits, Request, Response};
use super::outbox::{Outbox, WakeOn};
use super::state::{self, AppliedConfig};
use super::{ControllerConfig, FileStamp, Token};
use crate::carriers::Carriers;
use crate::counters::{Counters, CONTROLLER_SINK};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tapio_wire::{
    ConfigResponse, DegradedReason, EventsResponse, HeartbeatCounters, HeartbeatRequest, HeartbeatResponse,
    HelloRequest, HelloResponse, ObserverStatus, WIRE_VERSION,
};

/// Upper bound of the events per batch whatever the controller asks.
const MAX_BATCH_EVENTS: u64 = 10_000;
/// How long a shutdown may spend sending what is still in the outbox (a request in flight
/// included: each is cut at what is left of it).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Longest sleep of the loop when nothing is due sooner (a backstop: every step it waits
/// for has a time of its own).
const LONGEST_SLEEP: Duration = Duration::from_secs(5);
/// Versions remembered as serving the applied config (see `Loop::same_config_versions`).
const SAME_CONFIG_VERSIONS: usize = 8;
/// At most one failure log line per this period (a changed failure included); the ones in
/// between are counted in `controller_send_failures_total` and summed in the next line.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(30);

/// What the client needs from the rest of the agent.
pub struct Client {
    pub settings: ControllerConfig,
    pub endpoint: Endpoint,
    pub token: Option<Token>,
    pub agent_id: String,
    pub node: String,
    pub outbox: Arc<Outbox>,
    pub counters: Arc<Counters>,
    pub carriers: Arc<Mutex<Carriers>>,
    /// The config in force (None = local defaults, "unconfigured"); shared with the runtime.
    pub applied: Arc<Mutex<Option<AppliedConfig>>>,
    pub observers: BTreeMap<String, ObserverStatus>,
    pub object_sizes: BTreeMap<String, u64>,
}

struct Pending {
    sequence: u64,
    lines: Vec<Vec<u8>>,
    attempts: u32,
    retry_at: Instant,
}

struct Loop {
    c: Client,
    limits: Limits,
    started: Instant,
    registered: bool,
    next_hello: Instant,
    hello_attempts: u32,
    next_heartbeat: Instant,
    next_config: Instant,
    next_send: Instant,
    send_interval: Duration,
    max_batch_events: u64,
    sequence: u64,
    pending: Option<Pending>,
    rng: u64,
    last_error: Option<String>,
    /// Version of the token file the token in use was read from.
    token_stamp: Option<FileStamp>,
    failure_log: LogLimiter,
    /// Versions a heartbeat may name without bringing a fetch at once (the regular poll
    /// still fetches): ones under which a controller answered 304 for the applied config's
    /// hash (a restarted controller, or another replica, serves the same config under a
    /// generation of its own), and ones whose config was refused (fetched at every
    /// heartbeat, it would only be refused, logged and counted again and again).
    same_config_versions: Vec<String>,
    /// The version a heartbeat named when it asked for a fetch.
    fetch_for_version: Option<String>,
    /// Bytes of lines per batch: `max_batch_bytes`, lowered when the controller answers
    /// 413 (its body limit is below it), until the next hello.
    batch_bytes: usize,
}

/// Rate-limits a repeated warning: the first, then at most one per period, each saying how
/// many were not logged since.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// Some(suppressed since the last logged one) when this one may be logged.
    fn admit(&mut self, now: Instant, period: Duration) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The heartbeat's totals: every loss counter of the snapshot reaches one of them.
pub fn heartbeat_counters(snap: &crate::counters::Snapshot) -> HeartbeatCounters {
    HeartbeatCounters {
        events_total: snap.events_total,
        malformed_events_total: snap.malformed_events_total,
        lost_events_total: snap.lost_events_total,
        correlation_drops_total: snap.correlation_drops_total,
        sink_drops_total: snap.sink_drops_total,
        controller_send_failures_total: snap.controller_send_failures_total,
        not_judged_total: snap.not_judged_total,
    }
}

/// The heartbeat's correlation drops by reason: those that counted, at most as many as the
/// controller takes, in name order (today's observers have about twenty reasons; past the
/// bound the total still covers the rest). Built by inserts, which the agent already
/// carries: keeping the largest (a sort, or removals) measured 5-11 KB more binary.
pub fn heartbeat_correlation_drops(snap: &crate::counters::Snapshot) -> BTreeMap<String, u64> {
    let mut counted = BTreeMap::new();
    for (reason, n) in snap.correlation_drops.iter().filter(|(_, n)| **n > 0) {
        if counted.len() == tapio_wire::validate::MAX_CORRELATION_DROP_REASONS {
            break;
        }
        counted.insert(reason.clone(), *n);
    }
    counted
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Client {
    pub fn run(self) {
        Loop::new(self).run();
    }
}

impl Loop {
    fn new(c: Client) -> Self {
        let now = Instant::now();
        let batch_bytes = c.settings.max_batch_bytes;
        let limits = Limits {
            connect_timeout: Duration::from_millis(c.settings.connect_timeout_ms),
            io_timeout: Duration::from_millis(c.settings.io_timeout_ms),
            request_timeout: Duration::from_millis(c.settings.request_timeout_ms),
            max_response_bytes: c.settings.max_response_bytes,
            user_agent: http::USER_AGENT,
        };
        let mut l = Loop {
            c,
            limits,
            started: now,
            registered: false,
            next_hello: now,
            hello_attempts: 0,
            next_heartbeat: now,
            next_config: now,
            next_send: now,
            send_interval: Duration::from_millis(1_000),
            max_batch_events: 500,
            sequence: 1,
            pending: None,
            rng: crate::clock::wall_now_ns() | 1,
            last_error: None,
            failure_log: LogLimiter::default(),
            same_config_versions: Vec::new(),
            fetch_for_version: None,
            batch_bytes,
            token_stamp: None,
        };
        if let Some(path) = &l.c.settings.token_file {
            l.token_stamp = FileStamp::of(path);
        }
        l.tell_outbox_the_batch_size();
        l
    }

    fn run(&mut self) {
        // Looked at before every step, not once a round: each step is a request that may
        // take up to `request_timeout_ms`, and once shutdown began the outbox's flush is the
        // only one worth that time.
        while !self.c.outbox.stopped() {
            let now = Instant::now();
            if !self.registered && now >= self.next_hello {
                self.hello();
            }
            if self.registered && now >= self.next_config && !self.c.outbox.stopped() {
                self.fetch_config();
            }
            if self.registered && now >= self.next_heartbeat && !self.c.outbox.stopped() {
                self.heartbeat();
            }
            if self.c.outbox.stopped() {
                break;
            }
            self.send_due();
            self.sleep_until_due();
        }
        self.flush_on_shutdown();
    }

    /// Sleeps until the next step is due: hello, config, heartbeat, a batch's retry, or the
    /// next batch of lines waiting; with nothing waiting, until a line arrives. The
    /// runtime's [`Outbox::stop`] ends it at shutdown. (It had woken every 50 ms to look:
    /// on a virtual machine, some 1 ms of CPU a second on an idle node.)
    fn sleep_until_due(&self) {
        let mut at = Instant::now() + LONGEST_SLEEP;
        if self.registered {
            at = at.min(self.next_config).min(self.next_heartbeat);
        } else {
            at = at.min(self.next_hello);
        }
        let wake = match &self.pending {
            Some(p) => {
                at = at.min(p.retry_at);
                WakeOn::Deadline
            }
            None if self.c.outbox.is_empty() => WakeOn::AnyLine,
            None => {
                at = at.min(self.next_send);
                WakeOn::FullBatch
            }
        };
        self.c.outbox.wait(at, wake);
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // 50–100 % of the delay, so a fleet restarted together does not retry in step.
        d.mul_f64(0.5 + (self.rng % 1000) as f64 / 2000.0)
    }

    fn backoff(&mut self, attempts: u32) -> Duration {
        let base = 500u64.saturating_mul(1 << attempts.min(16));
        let capped = Duration::from_millis(base.min(self.c.settings.max_backoff_ms));
        self.jitter(capped)
    }

    /// The wait before attempt `attempts + 1`: the backoff, or what a 429 or 503 asked for
    /// in `Retry-After` when that is longer (retrying sooner only meets the same refusal),
    /// never past `max_backoff_ms` (a peer must not park the link for hours).
    fn retry_wait(&mut self, attempts: u32, outcome: &Result<Response, HttpError>) -> Duration {
        let backoff = self.backoff(attempts);
        let cap = Duration::from_millis(self.c.settings.max_backoff_ms);
        match outcome {
            Ok(resp) if matches!(resp.status, 429 | 503) => backoff.max(retry_after(resp).min(cap)),
            _ => backoff,
        }
    }

    fn request(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        self.reload_token_if_changed();
        let auth = self.c.token.as_ref().map(Token::header_value);
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let request = Request { method, path, headers: &headers, body };
        let result = http::send_with(&self.c.endpoint, &self.limits, &request, http::resolve_within);
        if let Ok(resp) = &result {
            if resp.status == 401 {
                self.reload_token();
            }
        }
        result
    }

    /// A rotated token file is picked up by the next request (one stat per request).
    fn reload_token_if_changed(&mut self) {
        let Some(path) = &self.c.settings.token_file else {
            return;
        };
        let stamp = FileStamp::of(path);
        if stamp.is_some() && stamp != self.token_stamp {
            self.reload_token();
        }
    }

    /// Reads the token file again (after a change, or a 401). A file that cannot be read
    /// leaves the token in use as it is.
    fn reload_token(&mut self) {
        if let Some(path) = &self.c.settings.token_file {
            // Remembered even when the read fails, so a broken file is reported once per
            // change rather than on every request.
            self.token_stamp = FileStamp::of(path);
            match Token::read(path) {
                Ok(t) => self.c.token = Some(t),
                Err(e) => log::warn!("{e}"),
            }
        }
    }

    fn failure(&mut self, what: &str, detail: String) {
        self.c.counters.controller_send_failures_total.fetch_add(1, Ordering::Relaxed);
        let message = format!("controller {what} failed: {detail}");
        // Log changes of state, not every retry of the same failure, and even changing
        // failures (a peer answering garbage) at most once per period.
        if self.last_error.as_deref() != Some(message.as_str()) {
            match self.failure_log.admit(Instant::now(), FAILURE_LOG_PERIOD) {
                Some(0) => log::warn!("{message}"),
                Some(n) => log::warn!("{message} ({n} other failures since the last one logged)"),
                None => {}
            }
            self.last_error = Some(message);
        }
    }

    fn succeeded(&mut self) {
        if self.last_error.take().is_some() {
            log::info!("controller reachable again");
        }
    }

    fn describe(resp: &Response) -> String {
        let code = serde_json::from_slice::<tapio_wire::ErrorEnvelope>(&resp.body)
            .map(|e| e.error.code.as_str().to_string())
            .unwrap_or_default();
        format!("HTTP {} {code}", resp.status)
    }

    fn hello(&mut self) {
        let req = HelloRequest {
            wire_version: WIRE_VERSION.into(),
            agent_id: self.c.agent_id.clone(),
            node_name: self.c.node.clone(),
            tapio_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: kernel_release(),
            arch: std::env::consts::ARCH.into(),
            capabilities: self.c.observers.keys().cloned().collect(),
            object_sizes: self.c.object_sizes.clone(),
            map_counts: BTreeMap::new(),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let outcome = self.request("POST", "/v1/agents/hello", Some(&body), &[]);
        match &outcome {
            Ok(resp) if resp.status == 200 => match serde_json::from_slice::<HelloResponse>(&resp.body) {
                Ok(h) if h.accepted => {
                    self.succeeded();
                    self.registered = true;
                    self.hello_attempts = 0;
                    // A controller that registers the agent anew may take larger bodies.
                    self.batch_bytes = self.c.settings.max_batch_bytes;
                    self.set_batching(h.send_interval_ms, h.max_batch_events);
                    log::info!("registered with controller {} as {}", h.controller_id, self.c.agent_id);
                    self.next_config = Instant::now();
                    self.next_heartbeat = Instant::now();
                    return;
                }
                Ok(_) => self.failure("hello", "the controller refused this agent".into()),
                Err(e) => self.failure("hello", format!("unreadable response: {e}")),
            },
            Ok(resp) => self.failure("hello", Self::describe(resp)),
            Err(e) => self.failure("hello", e.to_string()),
        }
        self.hello_attempts = self.hello_attempts.saturating_add(1);
        let wait = self.retry_wait(self.hello_attempts, &outcome);
        self.next_hello = Instant::now() + wait;
    }

    fn set_batching(&mut self, send_interval_ms: u64, max_batch_events: u64) {
        self.send_interval = Duration::from_millis(send_interval_ms.clamp(50, 60_000));
        self.max_batch_events = max_batch_events.clamp(1, MAX_BATCH_EVENTS);
        self.tell_outbox_the_batch_size();
    }

    /// What a full batch is, for the outbox to wake the loop when one is waiting.
    fn tell_outbox_the_batch_size(&self) {
        self.c.outbox.set_full_batch(self.max_batch_events as usize, self.batch_bytes);
    }

    fn fetch_config(&mut self) {
        self.next_config = Instant::now() + Duration::from_secs(self.c.settings.config_poll_interval_secs);
        let path = format!(
            "/v1/agents/config?agent_id={}&node_name={}",
            percent_encode(&self.c.agent_id),
            percent_encode(&self.c.node)
        );
        let etag =
            self.c.applied.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|a| format!("\"{}\"", a.config_hash));
        let headers: Vec<(&str, &str)> = etag.iter().map(|e| ("If-None-Match", e.as_str())).collect();
        // True when the version a heartbeat named is to bring no fetch at once again (see
        // `same_config_versions`): it served the applied config, or a refused one.
        let remember = match self.request("GET", &path, None, &headers) {
            // Only an If-None-Match can be answered "unchanged": a 304 to a request without
            // one (no config applied yet) says nothing about any config.
            Ok(resp) if resp.status == 304 && etag.is_some() => {
                self.succeeded();
                self.c.counters.config_unchanged_total.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(resp) if resp.status == 200 => match serde_json::from_slice::<ConfigResponse>(&resp.body) {
                Ok(cfg) => {
                    self.succeeded();
                    // Batching comes with the config: a refused config changes nothing.
                    let batching = (cfg.batching.send_interval_ms, cfg.batching.max_batch_events);
                    let applied = self.apply(cfg);
                    if applied {
                        self.set_batching(batching.0, batching.1);
                    }
                    !applied
                }
                // JSON of another shape (a retyped field, a number past its type, another
                // schema) is a served config this agent refuses, not a failed request.
                Err(e) if e.is_data() => {
                    self.succeeded();
                    // serde quotes the offending value: the peer's text, clipped for the log.
                    self.refuse_config(tapio_wire::validate::clip(&e.to_string()));
                    true
                }
                Err(e) => {
                    self.failure("config fetch", format!("unreadable config: {e}"));
                    false
                }
            },
            Ok(resp) => {
                self.failure("config fetch", Self::describe(&resp));
                false
            }
            Err(e) => {
                self.failure("config fetch", e.to_string());
                false
            }
        };
        match self.fetch_for_version.take() {
            Some(version) if remember => {
                if self.same_config_versions.len() >= SAME_CONFIG_VERSIONS {
                    self.same_config_versions.remove(0);
                }
                self.same_config_versions.push(version);
            }
            // A failed fetch leaves the named version to the next 304 or refusal.
            kept => self.fetch_for_version = kept,
        }
    }

    /// Applies `cfg`; false (logged and counted) when it is refused and the current config
    /// stays.
    fn apply(&mut self, cfg: ConfigResponse) -> bool {
        let generation = match generation_of(&cfg) {
            Ok(generation) => generation,
            Err(e) => {
                self.refuse_config(e);
                return false;
            }
        };
        let settings = match settings_from(generation, &cfg.config) {
            Ok(s) => s,
            Err(e) => {
                self.refuse_config(format!("generation {generation}: {e}"));
                return false;
            }
        };
        let result = self.c.carriers.lock().unwrap_or_else(|p| p.into_inner()).apply(&settings);
        if let Err(e) = result {
            log::error!("applying controller config {generation} to the kernel: {e}");
            self.c.counters.config_rejected_total.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let applied = AppliedConfig { generation, config_hash: cfg.config_hash, config: cfg.config };
        log::info!("applied controller config {generation} ({})", applied.config_hash);
        if let Some(path) = &self.c.settings.state_file {
            if let Err(e) = state::save(path, &applied) {
                log::warn!("{e}");
            }
        }
        *self.c.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied);
        self.same_config_versions.clear();
        true
    }

    /// A served config refused: said and counted, the current config stays.
    fn refuse_config(&self, why: String) {
        log::warn!("controller config refused ({why}): keeping the current config");
        self.c.counters.config_rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    fn heartbeat(&mut self) {
        self.next_heartbeat = Instant::now() + Duration::from_secs(self.c.settings.heartbeat_interval_secs);
        let snap = self.c.counters.snapshot();
        let applied = self.c.applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut degraded_reasons = Vec::new();
        if applied.is_none() {
            degraded_reasons.push(DegradedReason::Unconfigured);
        }
        let req = HeartbeatRequest {
            wire_version: WIRE_VERSION.into(),
            agent_id: self.c.agent_id.clone(),
            node_name: self.c.node.clone(),
            config_version: applied.as_ref().map_or("0".into(), |a| a.generation.to_string()),
            config_hash: applied.as_ref().map_or(String::new(), |a| a.config_hash.clone()),
            uptime_seconds: self.started.elapsed().as_secs(),
            observers: self.c.observers.clone(),
            counters: heartbeat_counters(&snap),
            degraded_reasons,
            correlation_drops: heartbeat_correlation_drops(&snap),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        match self.request("POST", "/v1/agents/heartbeat", Some(&body), &[]) {
            Ok(resp) if resp.status == 200 => match serde_json::from_slice::<HeartbeatResponse>(&resp.body) {
                Ok(hb) if !hb.accepted => {
                    // "I do not know you" (e.g. the controller restarted): say hello at once.
                    log::info!("controller does not know this agent: registering again");
                    self.registered = false;
                    self.next_hello = Instant::now();
                }
                Ok(hb) => {
                    self.succeeded();
                    let current = applied.as_ref().map(|a| a.generation.to_string());
                    let next = hb.next_config_version;
                    if current.as_deref() != Some(next.as_str()) && !self.same_config_versions.contains(&next) {
                        self.fetch_for_version = Some(next);
                        self.next_config = Instant::now();
                    }
                }
                Err(e) => self.failure("heartbeat", format!("unreadable response: {e}")),
            },
            Ok(resp) => self.failure("heartbeat", Self::describe(&resp)),
            Err(e) => self.failure("heartbeat", e.to_string()),
        }
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        if self.pending.is_none() {
            // A full batch leaves at once: the interval only holds a partial one back, so
            // a node's evidence is not capped at one batch per interval.
            if self.c.outbox.is_empty() || (now < self.next_send && !self.c.outbox.holds_full_batch()) {
                return;
            }
            self.next_send = now + self.send_interval;
            let lines = self.c.outbox.take_batch(self.max_batch_events as usize, self.batch_bytes);
            if lines.is_empty() {
                return;
            }
            let sequence = self.sequence;
            self.sequence += 1;
            self.pending = Some(Pending { sequence, lines, attempts: 0, retry_at: now });
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.retry_at) {
            self.send_pending();
        }
    }

    fn batch_body(&self, p: &Pending) -> Vec<u8> {
        let size: usize = p.lines.iter().map(|l| l.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 256);
        body.extend_from_slice(b"{\"wire_version\":\"");
        body.extend_from_slice(WIRE_VERSION.as_bytes());
        body.extend_from_slice(b"\",\"agent_id\":");
        body.extend_from_slice(&serde_json::to_vec(&self.c.agent_id).unwrap_or_default());
        body.extend_from_slice(b",\"node_name\":");
        body.extend_from_slice(&serde_json::to_vec(&self.c.node).unwrap_or_default());
        body.extend_from_slice(
            format!(",\"sequence\":{},\"sent_at_unix_nanos\":{},\"events\":[", p.sequence, crate::clock::wall_now_ns())
                .as_bytes(),
        );
        for (i, line) in p.lines.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// Sends the pending batch once. Returns true when it left the queue (sent or dropped).
    fn send_pending(&mut self) -> bool {
        let Some(mut p) = self.pending.take() else { return true };
        let body = self.batch_body(&p);
        let n = p.lines.len() as u64;
        let outcome = self.request("POST", "/v1/events", Some(&body), &[]);
        match &outcome {
            // Only the controller's own answer acknowledges a batch: a 200 from something
            // else on the way (a proxy's page, a wrong Service) is a failure, retried.
            Ok(resp) if resp.status == 200 => match serde_json::from_slice::<EventsResponse>(&resp.body) {
                Ok(r) if r.wire_version == WIRE_VERSION => {
                    self.succeeded();
                    // Sent is what the controller says it accepted, no more: events it
                    // rejected one by one, or left out of its counts, are failed. Each line
                    // of the batch has exactly one outcome.
                    let sent = r.accepted.min(n - r.rejected.min(n));
                    self.c.counters.sink_failures(CONTROLLER_SINK, n - sent);
                    self.c.counters.controller_sent(sent);
                    return true;
                }
                Ok(r) => self.failure("event batch", format!("a 200 of wire version {:?}", r.wire_version)),
                Err(e) => self.failure("event batch", format!("a 200 that is not the controller's answer: {e}")),
            },
            // Larger than the controller's body limit: its lines go back to the front of the
            // outbox, to leave again in batches of at most half its bytes (a limit kept
            // until the next hello), under the same sequence number (a refused batch does
            // not advance the controller's). Only a single line too large alone is dropped.
            Ok(resp) if resp.status == 413 && p.lines.len() > 1 => {
                let bytes: usize = p.lines.iter().map(|l| l.len() + 1).sum();
                self.failure(
                    "event batch",
                    format!("{} for batch {} of {n} events: sent again in halves", Self::describe(resp), p.sequence),
                );
                self.batch_bytes = (self.batch_bytes.min(bytes) / 2).max(1);
                self.tell_outbox_the_batch_size();
                self.c.outbox.put_back(p.lines);
                self.sequence = p.sequence;
                return true;
            }
            // The controller will never take this batch as it is (malformed, too large,
            // reasoning in facts): retrying cannot help. Dropped and counted.
            Ok(resp) if matches!(resp.status, 400 | 404 | 413 | 422) => {
                self.failure(
                    "event batch",
                    format!("{} for batch {} of {n} events: dropped", Self::describe(resp), p.sequence),
                );
                self.c.counters.sink_failures(CONTROLLER_SINK, n);
                return true;
            }
            Ok(resp) => self.failure("event batch", Self::describe(resp)),
            Err(e) => self.failure("event batch", e.to_string()),
        }
        p.attempts += 1;
        if p.attempts > self.c.settings.max_retries {
            log::warn!("dropping batch {} of {n} events after {} attempts", p.sequence, p.attempts);
            self.c.counters.sink_failures(CONTROLLER_SINK, n);
            return true;
        }
        p.retry_at = Instant::now() + self.retry_wait(p.attempts, &outcome);
        self.pending = Some(p);
        false
    }

    fn flush_on_shutdown(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let request_timeout = self.limits.request_timeout;
        loop {
            // A request may take only what is left of the shutdown's time.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.limits.request_timeout = request_timeout.min(left);
            if self.pending.is_none() {
                let lines = self.c.outbox.take_batch(self.max_batch_events as usize, self.batch_bytes);
                if lines.is_empty() {
                    return;
                }
                let sequence = self.sequence;
                self.sequence += 1;
                self.pending = Some(Pending { sequence, lines, attempts: 0, retry_at: Instant::now() });
            }
            if Instant::now() >= deadline || !self.send_pending() {
                break;
            }
        }
        // What could not be sent in time is counted, not silently lost.
        let left = self.pending.take().map_or(0, |p| p.lines.len() as u64)
            + self.c.outbox.take_batch(usize::MAX, usize::MAX).len() as u64;
        if left > 0 {
            log::warn!("shutdown: {left} events could not reach the controller");
            self.c.counters.sink_failures(CONTROLLER_SINK, left);
        }
    }
}

/// The generation of a config response, if the response is one the spec allows: the
/// wire version, a generation from 1 (0 means "unconfigured" in heartbeats), and a hash of
/// the spec's form (it is saved, reported and sent back in `If-None-Match`).
/// `Retry-After` in delta-seconds (its HTTP-date form, which needs the peer's clock, counts
/// as absent); zero when absent.
fn retry_after(resp: &Response) -> Duration {
    Duration::from_secs(resp.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn generation_of(cfg: &ConfigResponse) -> Result<u32, String> {
    if cfg.wire_version != tapio_wire::WIRE_VERSION {
        return Err(format!("wire version {:?}", tapio_wire::validate::clip(&cfg.wire_version)));
    }
    let generation = match cfg.version.parse::<u32>() {
        Ok(0) | Err(_) => {
            return Err(format!("version {:?} is not a generation from 1", tapio_wire::validate::clip(&cfg.version)))
        }
        Ok(generation) => generation,
    };
    if !state::is_config_hash(&cfg.config_hash) {
        return Err(format!(
            "config_hash {:?} is not sha256:<64 lowercase hex>",
            tapio_wire::validate::clip(&cfg.config_hash)
        ));
    }
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_carries_kernel_counters_of_unjudged_facts() {
        let c = Counters::default();
        c.set_kernel("container", "unsupported_kernel", 4);
        c.set_kernel("network", "abi_mismatch", 1);
        c.set_kernel("network", "ringbuf_reserve_failed", 2);
        let hb = heartbeat_counters(&c.snapshot());
        assert_eq!((hb.not_judged_total, hb.lost_events_total), (5, 2));
        let json = serde_json::to_value(&hb).unwrap();
        assert_eq!(json["not_judged_total"], 5);
    }

    /// Every reason that counted goes by name, as many as the controller takes, and every
    /// key passes the controller's check.
    #[test]
    fn the_heartbeat_names_each_correlation_drop_reason_that_counted() {
        let c = Counters::default();
        c.set_kernel("storage", "ambiguous_inflight_io", 3);
        c.set_kernel("storage", "unmatched_completion", 0);
        c.correlation_drop("dns", "query_expired");
        let drops = heartbeat_correlation_drops(&c.snapshot());
        let expected = [("dns.query_expired".to_string(), 1), ("storage.ambiguous_inflight_io".to_string(), 3)];
        assert_eq!(drops, BTreeMap::from(expected));
        assert!(drops.keys().all(|k| tapio_wire::validate::correlation_drop_key(k).is_some()));

        let max = tapio_wire::validate::MAX_CORRELATION_DROP_REASONS;
        let mut snap = c.snapshot();
        snap.correlation_drops = (0..max as u64 + 5).map(|i| (format!("storage.r{i:02}"), i + 1)).collect();
        let drops = heartbeat_correlation_drops(&snap);
        assert_eq!(drops.len(), max);
        assert_eq!(drops.keys().next_back().map(String::as_str), Some("storage.r31"), "the first {max} by name");
    }

    #[test]
    fn failure_logs_are_rate_limited_and_say_how_many_were_not_logged() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(30);
        assert_eq!(l.admit(t0, period), Some(0));
        // 15 garbage answers in 11 s: none of them logged…
        for i in 1..=15 {
            assert_eq!(l.admit(t0 + Duration::from_millis(i * 700), period), None);
        }
        // …and the next line, a period later, counts them.
        assert_eq!(l.admit(t0 + period, period), Some(15));
        assert_eq!(l.admit(t0 + period + Duration::from_secs(1), period), None);
    }

    /// A fake controller whose answers name config version 9 and that answers every fetch
    /// (the only request without a body) 304: its URL and the request bodies it got.
    fn naming_version_9_and_answering_fetches_304() -> (String, std::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = answer_each(listener, |body| {
            if body.is_empty() {
                return (304, String::new());
            }
            let answer =
                serde_json::json!({"wire_version": WIRE_VERSION, "accepted": true, "next_config_version": "9"});
            (200, answer.to_string())
        });
        (url, requests)
    }

    /// Answers every request on `listener`, one per connection, with the status and body
    /// `answer` makes from the request's body; each request body goes to the receiver.
    fn answer_each(
        listener: std::net::TcpListener,
        answer: impl Fn(&[u8]) -> (u16, String) + Send + 'static,
    ) -> std::sync::mpsc::Receiver<Vec<u8>> {
        answer_each_with(listener, String::new(), answer)
    }

    /// [`answer_each`], every answer's head carrying `extra_head` (whole header lines).
    fn answer_each_with(
        listener: std::net::TcpListener,
        extra_head: String,
        answer: impl Fn(&[u8]) -> (u16, String) + Send + 'static,
    ) -> std::sync::mpsc::Receiver<Vec<u8>> {
        use std::io::{BufRead, BufReader, Read, Write};
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut line, mut length) = (String::new(), 0);
                while reader.read_line(&mut line).unwrap() > 2 {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let mut request = vec![0; length];
                reader.read_exact(&mut request).unwrap();
                let (status, body) = answer(&request);
                // Passed on before the answer, so a request the client has seen answered
                // is already in the receiver.
                if tx.send(request).is_err() {
                    return;
                }
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_head}\r\n",
                    body.len()
                );
                out.write_all(head.as_bytes()).unwrap();
                out.write_all(body.as_bytes()).unwrap();
            }
        });
        rx
    }

    /// A client of the controller at `url`, with `outbox`, counting into `counters`.
    fn client_of(url: &str, outbox: Arc<Outbox>, counters: &Arc<Counters>) -> Client {
        Client {
            settings: ControllerConfig { url: url.to_owned(), ..ControllerConfig::default() },
            endpoint: Endpoint::parse(url).unwrap(),
            token: None,
            agent_id: "a1".into(),
            node: "n1".into(),
            outbox,
            counters: Arc::clone(counters),
            carriers: Arc::new(Mutex::new(Carriers::default())),
            applied: Arc::new(Mutex::new(None)),
            observers: BTreeMap::new(),
            object_sizes: BTreeMap::new(),
        }
    }

    /// One config poll answered with `version`/`config_hash` and batching of one event per
    /// batch: returns (the loop's batch size after it, configs refused, generation applied).
    fn poll_once(version: &str, config_hash: &str) -> (u64, u64, Option<u32>) {
        let body = serde_json::json!({
            "wire_version": tapio_wire::WIRE_VERSION, "version": version, "config_hash": config_hash,
            "config": tapio_wire::CompiledConfig::default(),
            "batching": {"send_interval_ms": 50, "max_batch_events": 1},
        });
        let (batch, rejected, generation, _) = poll_answered(body.to_string());
        (batch, rejected, generation)
    }

    /// One config poll answered 200 with `body`: (the loop's batch size after it, configs
    /// refused, generation applied, failed requests).
    fn poll_answered(body: String) -> (u64, u64, Option<u32>, u64) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = answer_each(listener, move |_| (200, body.clone()));
        let counters = Arc::new(Counters::default());
        let client = client_of(&url, Outbox::new(16), &counters);
        let applied = Arc::clone(&client.applied);
        let mut l = Loop::new(client);
        l.fetch_config();
        requests.recv_timeout(Duration::from_secs(30)).expect("the config request");
        let generation = applied.lock().unwrap().as_ref().map(|a: &AppliedConfig| a.generation);
        let failures = counters.controller_send_failures_total.load(Ordering::Relaxed);
        (l.max_batch_events, counters.config_rejected_total.load(Ordering::Relaxed), generation, failures)
    }

    /// A served config the agent cannot read as one (a field of another type, a number past
    /// its type, another schema's shape) is a refused config, counted as such; a body that
    /// is not JSON at all (a proxy's page) is a failed request.
    #[test]
    fn a_config_of_another_shape_is_refused_and_counted_as_refused() {
        let hash = format!("sha256:{}", "0a".repeat(32));
        let good = serde_json::json!({
            "wire_version": tapio_wire::WIRE_VERSION, "version": "7", "config_hash": hash,
            "config": tapio_wire::CompiledConfig::default(),
            "batching": {"send_interval_ms": 50, "max_batch_events": 1},
        });
        let mut retyped = good.clone();
        retyped["config"]["network"]["retransmit_window_ms"] = serde_json::json!("1s");
        let mut too_large = good.clone();
        too_large["config"]["network"]["retransmit_window_ms"] = serde_json::json!(-1);
        let mut numbered = good.clone();
        numbered["version"] = serde_json::json!(7);
        let mut other_schema = good.clone();
        other_schema["wire_version"] = serde_json::json!("tapio-wire/v2");
        other_schema.as_object_mut().unwrap().remove("batching");
        for (what, body) in
            [("retyped", retyped), ("out of its type", too_large), ("numbered", numbered), ("v2", other_schema)]
        {
            assert_eq!(poll_answered(body.to_string()), (500, 1, None, 0), "{what}");
        }
        assert_eq!(poll_answered("<html>welcome</html>".into()), (500, 0, None, 1), "not a config at all");
        assert_eq!(poll_answered(good.to_string()), (1, 0, Some(7), 0), "the same config, well formed");
    }

    /// 429 and 503 with `Retry-After` hold the next attempt back that long (hello and
    /// batches alike), never past `max_backoff_ms`; other statuses keep the backoff.
    #[test]
    fn retry_after_of_a_429_or_503_is_honoured_up_to_the_longest_backoff() {
        // (status, Retry-After, the least and the most the next attempt may wait)
        let cases = [
            (503, 20, Duration::from_secs(19), Duration::from_secs(20)),
            (429, 20, Duration::from_secs(19), Duration::from_secs(20)),
            (503, 100_000, Duration::from_secs(29), Duration::from_secs(30)),
            (500, 20, Duration::ZERO, Duration::from_secs(1)),
        ];
        for (status, seconds, least, most) in cases {
            let head = format!("Retry-After: {seconds}\r\n");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let _requests = answer_each_with(listener, head, move |_| (status, String::new()));
            let counters = Arc::new(Counters::default());
            let outbox = Outbox::new(16);
            let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
            assert!(outbox.push(br#"{"type":"kernel.test"}"#.to_vec()));
            let before = Instant::now();
            l.send_due();
            l.hello();
            let after = Instant::now();
            let batch_wait = l.pending.as_ref().expect("the batch waits for its retry").retry_at;
            for (what, at) in [("batch", batch_wait), ("hello", l.next_hello)] {
                assert!(
                    at >= before + least && at <= after + most,
                    "{status} Retry-After {seconds}: {what} again after {:?}",
                    at.saturating_duration_since(before)
                );
            }
            assert_eq!(counters.controller_send_failures_total.load(Ordering::Relaxed), 2);
        }
    }

    /// The controller's counts are the batch's outcome: what it did not say it accepted is
    /// failed, never sent, and every line has exactly one outcome.
    #[test]
    fn only_what_the_controller_says_it_accepted_counts_as_sent() {
        // (accepted, rejected) of a batch of 5 → (sent, failed)
        for ((accepted, rejected), expected) in
            [((5, 0), (5, 0)), ((3, 1), (3, 2)), ((3, 0), (3, 2)), ((5, 2), (3, 2)), ((0, 9), (0, 5))]
        {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let answer = serde_json::json!({"wire_version": WIRE_VERSION, "accepted": accepted, "rejected": rejected,
                                            "next_config_version": "0"});
            let _requests = answer_each(listener, move |_| (200, answer.to_string()));
            let counters = Arc::new(Counters::default());
            let outbox = Outbox::new(16);
            let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
            for _ in 0..5 {
                assert!(outbox.push(br#"{"type":"kernel.test"}"#.to_vec()));
            }
            l.send_due();
            assert!(l.pending.is_none() && outbox.is_empty());
            let snap = counters.snapshot();
            let failed = snap.sinks.get(CONTROLLER_SINK).map_or(0, |c| c.failed);
            assert_eq!(
                (snap.controller_events_sent_total, failed),
                expected,
                "accepted {accepted}, rejected {rejected}"
            );
        }
    }

    /// Once shutdown began, the link makes no request but the outbox's flush: a config
    /// fetch that was in flight is not followed by a heartbeat (which may take a whole
    /// request timeout of the shutdown's bound).
    #[test]
    fn after_shutdown_began_only_the_outbox_is_flushed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let outbox = Outbox::new(16);
        let stopping = Arc::clone(&outbox);
        let requests = answer_each(listener, move |body| {
            // SIGTERM arrives while the config fetch (the only request without a body) is
            // in flight.
            if body.is_empty() {
                stopping.stop();
                return (304, String::new());
            }
            let answer = serde_json::json!({"wire_version": WIRE_VERSION, "accepted": 1, "rejected": 0,
                                            "next_config_version": "0"});
            (200, answer.to_string())
        });
        let counters = Arc::new(Counters::default());
        assert!(outbox.push(br#"{"type":"kernel.test"}"#.to_vec()));
        let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
        l.registered = true; // a config fetch and a heartbeat are due
        l.run();
        let kinds: Vec<&str> = requests
            .try_iter()
            .map(|b| match serde_json::from_slice::<serde_json::Value>(&b) {
                Err(_) => "config",
                Ok(v) if v.get("sequence").is_some() => "batch",
                Ok(_) => "other",
            })
            .collect();
        assert_eq!(kinds, ["config", "batch"]);
        assert_eq!(counters.controller_events_sent_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_refused_config_changes_neither_the_config_nor_the_batching() {
        let hash = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(poll_once("7", &hash), (1, 0, Some(7)), "a good config brings its batching");
        for (version, config_hash) in
            [("0", hash.as_str()), ("x", hash.as_str()), ("7", ""), ("7", "sha256:AB\r\nX: y")]
        {
            assert_eq!(poll_once(version, config_hash), (500, 1, None), "version {version:?}, hash {config_hash:?}");
        }
    }

    #[test]
    fn a_full_batch_leaves_at_once_and_a_partial_one_waits_for_its_interval() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let events_of = |body: &[u8]| {
            let batch: serde_json::Value = serde_json::from_slice(body).unwrap();
            batch["events"].as_array().map_or(0, Vec::len)
        };
        let requests = answer_each(listener, move |body| {
            let answer = serde_json::json!({"wire_version": WIRE_VERSION, "accepted": events_of(body), "rejected": 0,
                                            "next_config_version": "0"});
            (200, answer.to_string())
        });
        let counters = Arc::new(Counters::default());
        let outbox = Outbox::new(64);
        let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
        // A minute between batches, four events each: nine events waiting.
        l.set_batching(60_000, 4);
        for _ in 0..9 {
            assert!(outbox.push(br#"{"type":"kernel.test"}"#.to_vec()));
        }
        l.send_due(); // the first batch: nothing was sent yet
        l.send_due(); // five waiting: a full batch, sent before the interval is up
        l.send_due(); // one waiting: it waits for the interval
        let sent: Vec<usize> = requests.try_iter().map(|body| events_of(&body)).collect();
        assert_eq!(sent, vec![4, 4]);
        assert_eq!(outbox.len(), 1);
        assert_eq!(counters.controller_events_sent_total.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_batch_over_the_controllers_body_limit_is_sent_again_in_halves_not_dropped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // A controller whose body limit takes two of these lines with the envelope, not four.
        let requests = answer_each(listener, |body| {
            if body.len() > 500 {
                let envelope =
                    serde_json::json!({"error": {"code": "PAYLOAD_TOO_LARGE", "message": "body over 500 bytes"}});
                return (413, envelope.to_string());
            }
            let batch: serde_json::Value = serde_json::from_slice(body).unwrap();
            let n = batch["events"].as_array().map_or(0, Vec::len);
            let answer = serde_json::json!({"wire_version": WIRE_VERSION, "accepted": n, "rejected": 0,
                                            "next_config_version": "0"});
            (200, answer.to_string())
        });
        let counters = Arc::new(Counters::default());
        let outbox = Outbox::new(64);
        let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
        l.set_batching(60_000, 8);
        for i in 0..8 {
            let line = format!(r#"{{"type":"kernel.test","n":{i},"pad":"{}"}}"#, "x".repeat(70));
            assert!(outbox.push(line.into_bytes()));
        }
        for _ in 0..8 {
            l.send_due();
        }
        let sent: Vec<serde_json::Value> =
            requests.try_iter().map(|body| serde_json::from_slice(&body).unwrap()).collect();
        let sizes: Vec<usize> = sent.iter().map(|b| b["events"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, vec![8, 4, 2, 2, 2, 2], "refused whole, then halves until they fit");
        let sequences: Vec<u64> = sent.iter().filter_map(|b| b["sequence"].as_u64()).collect();
        assert_eq!(sequences, vec![1, 1, 1, 2, 3, 4], "a refused batch's number is used again");
        let order: Vec<u64> = sent[2..]
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap().iter().map(|e| e["n"].as_u64().unwrap()))
            .collect();
        assert_eq!(order, (0..8).collect::<Vec<u64>>(), "every line, once, in order");
        assert_eq!(counters.controller_events_sent_total.load(Ordering::Relaxed), 8);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_200_that_is_not_the_controllers_answer_is_no_acknowledgement() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let page = std::sync::atomic::AtomicBool::new(true);
        // A proxy's page first, then the controller itself.
        let requests = answer_each(listener, move |_| {
            if page.swap(false, Ordering::Relaxed) {
                return (200, "<html>welcome</html>".into());
            }
            let answer = serde_json::json!({"wire_version": WIRE_VERSION, "accepted": 1, "rejected": 0,
                                            "next_config_version": "0"});
            (200, answer.to_string())
        });
        let counters = Arc::new(Counters::default());
        let outbox = Outbox::new(16);
        let mut l = Loop::new(client_of(&url, Arc::clone(&outbox), &counters));
        assert!(outbox.push(br#"{"type":"kernel.test"}"#.to_vec()));
        l.send_due();
        assert_eq!(counters.controller_events_sent_total.load(Ordering::Relaxed), 0, "the page acknowledged nothing");
        assert!(l.pending.is_some(), "the batch waits for its retry");
        l.pending.as_mut().unwrap().retry_at = Instant::now();
        l.send_due();
        assert_eq!(counters.controller_events_sent_total.load(Ordering::Relaxed), 1);
        let sequences: Vec<u64> = requests
            .try_iter()
            .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(sequences, vec![1, 1], "the same batch, sent again");
    }

    #[test]
    fn a_version_that_served_the_applied_config_brings_no_second_fetch() {
        // Another replica serves the applied config as generation 9.
        let (url, requests) = naming_version_9_and_answering_fetches_304();
        let counters = Arc::new(Counters::default());
        let client = client_of(&url, Outbox::new(16), &counters);
        let hash = format!("sha256:{}", "0a".repeat(32));
        let applied = AppliedConfig { generation: 7, config_hash: hash, config: Default::default() };
        *client.applied.lock().unwrap() = Some(applied);
        let mut l = Loop::new(client);
        l.registered = true;
        l.heartbeat();
        assert!(l.next_config <= Instant::now(), "a new version named: fetched at once");
        l.fetch_config();
        assert_eq!(counters.config_unchanged_total.load(Ordering::Relaxed), 1);
        l.heartbeat();
        assert!(l.next_config > Instant::now(), "the same config under 9: no fetch until the next poll");
        assert_eq!(requests.try_iter().count(), 3);
    }

    /// A heartbeat naming a version whose config was refused brings one fetch, not one per
    /// heartbeat: the refusal is logged and counted once, and the regular poll still asks.
    #[test]
    fn a_refused_version_brings_no_fetch_at_every_heartbeat() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Generation 9 is served with a hash of no spec form: refused.
        let requests = answer_each(listener, |body| {
            let answer = if body.is_empty() {
                serde_json::json!({"wire_version": WIRE_VERSION, "version": "9", "config_hash": "sha256:x",
                    "config": tapio_wire::CompiledConfig::default(),
                    "batching": {"send_interval_ms": 50, "max_batch_events": 1}})
            } else {
                serde_json::json!({"wire_version": WIRE_VERSION, "accepted": true, "next_config_version": "9"})
            };
            (200, answer.to_string())
        });
        let counters = Arc::new(Counters::default());
        let mut l = Loop::new(client_of(&url, Outbox::new(16), &counters));
        l.registered = true;
        l.heartbeat();
        assert!(l.next_config <= Instant::now(), "a new version named: fetched at once");
        l.fetch_config();
        assert_eq!(counters.config_rejected_total.load(Ordering::Relaxed), 1);
        for _ in 0..3 {
            l.heartbeat();
            assert!(l.next_config > Instant::now(), "the refused version named again: no fetch until the poll");
        }
        assert_eq!(requests.try_iter().count(), 5);
        // The regular poll still asks, and still refuses.
        l.fetch_config();
        assert_eq!(counters.config_rejected_total.load(Ordering::Relaxed), 2);
    }

    /// Before any config is applied the fetch carries no If-None-Match, so a 304 answers
    /// nothing: a failed request, and the version the heartbeat named is fetched again.
    #[test]
    fn a_304_to_a_fetch_without_if_none_match_is_no_answer() {
        let (url, _requests) = naming_version_9_and_answering_fetches_304();
        let counters = Arc::new(Counters::default());
        let mut l = Loop::new(client_of(&url, Outbox::new(16), &counters));
        l.registered = true;
        l.heartbeat();
        l.fetch_config();
        assert_eq!(counters.config_unchanged_total.load(Ordering::Relaxed), 0);
        assert_eq!(counters.controller_send_failures_total.load(Ordering::Relaxed), 1);
        l.heartbeat();
        assert!(l.next_config <= Instant::now(), "still unconfigured: the named version is fetched at once");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("node a/b&c=d"), "node%20a%2Fb%26c%3Dd");
        assert_eq!(percent_encode("ip-10-0-0-1.ec2"), "ip-10-0-0-1.ec2");
    }
}
