//! The OTLP logs sink: evidence exported as OTLP/HTTP protobuf, gzip-compressed.
//!
//! One LogRecord per evidence record:
//! * `event_name` = the evidence type; `time_unix_nano` = the fact's moment;
//!   `observed_time_unix_nano` = when the controller exported it.
//! * `severity_text` = the record's severity as sent; `severity_number` debug → DEBUG (5),
//!   info → INFO (9), warning → WARN (13), error → ERROR (17), critical → FATAL (21),
//!   anything else UNSPECIFIED (0).
//! * `body` = the error message, when the record has one.
//! * attributes named by the OpenTelemetry semantic conventions where a name exists
//!   ([`FACT_ATTRIBUTES`], `log.record.uid` = id, `error.type` = error code,
//!   `container.id`, every key of the record's `k8s` object verbatim, and `k8s.pod.uid` =
//!   the workload's pod UID unless the `k8s` names carry another: a static pod's mirror
//!   UID, with the node's then under `tapio.workload.pod_uid`); everything else under
//!   `tapio.` (`tapio.observer`, `tapio.fact.<name>`, …). A null is left out, except in
//!   an array, where it stays as an empty value so that positions hold.
//! * one ResourceLogs per node: `host.name` = node, `service.name` = `tapio`.
//!
//! Durable by default: a batch is acknowledged to its request only once the collector
//! answered 2xx to the export holding its records. A full queue, an export that still fails
//! after its retries (or is refused outright: another status than the retried ones) or no
//! answer within `--sink-ack-timeout-secs` refuses the batch with 503 and the agent resends
//! it. A 2xx whose partial success (plain or gzip'd) reports rejected records acknowledges
//! the batch all the same, those records counted as dropped `rejected`: the collector has
//! said it will never take them, so a retry cannot help. A 2xx is the collector's word
//! whatever its body (over 64 KiB, cut off, late): never taken for a failure and exported
//! again. With `--otlp-best-effort` the sink is fed after the
//! acknowledgement instead, like `stdout`: its overflow is dropped and counted, and an
//! export that fails loses its records (counted).
//!
//! Up to four exports run at once (each on its own keep-alive connection, so records may
//! arrive out of order), each grouping the batches queued at the time up to
//! `--otlp-max-batch-records` records and [`MAX_EXPORT_LINE_BYTES`] of them (a single
//! larger batch goes whole). Right before a group is encoded, a batch whose request has
//! already ended without a 200 is left out (the agent resends it) and counted as dropped
//! `refused`. An export is retried on 429/502/503/504 and on connection failures,
//! honouring `Retry-After` (seconds or an HTTP date) up to `--otlp-max-retry-delay-secs`,
//! at most `--otlp-max-retries` times, each retry counted in
//! `sink_retries_total{sink="otlp"}`; between attempts it stops once no request waits for
//! any of its batches any more (records counted `refused`), so an export outliving its
//! requests' ack timeout goes on only while some request still waits for it. Records of an
//! export that still fails are dropped and counted (`retries_exhausted`, or `rejected` for
//! other statuses and for a collector's partial-success rejections). A failed export makes
//! the sink not ready; while it is, an empty export request every second (when no export is
//! in flight) finds out when the collector takes exports again.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::config::OtlpConfig;
use super::otlp_proto::{
    any_value, severity, AnyValue, ArrayValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, KeyValueList,
    LogRecord, Resource, ResourceLogs, ScopeLogs,
};
use super::{Batch, Delivery, Msg, SinkShared, DROPPED_REFUSED};
use crate::metrics::{Metrics, SinkLabels};

/// Facts whose OpenTelemetry semantic-convention name exists. `comm` is the name of the
/// thread the fact is about (the kernel's `task->comm`), which a process's threads may set
/// to anything (`tokio-runtime-w`, `http-nio-8080-e`): `thread.name`, not the executable's
/// name that `process.executable.name` claims.
pub const FACT_ATTRIBUTES: &[(&str, &str)] = &[
    ("pid", "process.pid"),
    ("tid", "thread.id"),
    ("comm", "thread.name"),
    ("exit_code", "process.exit.code"),
    ("src_addr", "network.local.address"),
    ("src_port", "network.local.port"),
    ("dst_addr", "network.peer.address"),
    ("dst_port", "network.peer.port"),
    ("family", "network.type"),
];

/// Semantic-conventions version the attribute names follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Largest response body read from the collector (and inflated, when gzip'd).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `User-Agent` of every export, as OTLP/HTTP asks of exporters.
const USER_AGENT_VALUE: &str = concat!("tapio-controller/", env!("CARGO_PKG_VERSION"));

/// A parsed `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as given (the Host header).
    pub authority: String,
    /// Where to connect.
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Request path.
    pub path: String,
}

impl Endpoint {
    /// Parses a plain-HTTP URL; None for anything else.
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/logs"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#', ' ']) {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 80,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Self { authority: authority.to_string(), host, port, path: path.to_string() })
    }
}

/// The exporter, owned by its task.
pub struct Exporter {
    endpoint: Endpoint,
    cfg: OtlpConfig,
    retries: Counter,
    /// Idle keep-alive connections, at most one per export in flight.
    pool: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// Most record bytes (as JSON lines) one export request groups, so that a burst queued
/// behind a slow collector does not become one request past the body limit collectors
/// set (the OpenTelemetry Collector's default is 20 MiB) and get every batch in it refused
/// together. A single batch larger than this still goes whole.
pub const MAX_EXPORT_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Exports in flight at once, each on its own connection: one export's encoding overlaps
/// another's round trip, and one slow answer does not hold up the rest.
const EXPORTS_IN_FLIGHT: usize = 4;

/// How often a durable sink that is not ready checks whether the collector is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Why an export ended without the collector holding every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    RetriesExhausted,
    Rejected,
    /// Every request waiting for the export had given up before a retry.
    Abandoned,
}

impl Exporter {
    /// Builds the exporter (connections are made when exporting).
    pub fn new(cfg: &OtlpConfig, metrics: &Metrics) -> io::Result<Self> {
        let endpoint = Endpoint::parse(&cfg.endpoint).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "--otlp-endpoint is not http://host:port/path")
        })?;
        Ok(Self {
            endpoint,
            cfg: cfg.clone(),
            retries: metrics.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).clone(),
            pool: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Exports delivered batches, several per request up to `--otlp-max-batch-records`,
    /// until Close; what is queued before Close is exported first.
    pub async fn run(self, mut rx: mpsc::Receiver<Msg>, shared: &Arc<SinkShared>) {
        let me = Arc::new(self);
        let durable = !me.cfg.best_effort;
        let mut tasks = tokio::task::JoinSet::new();
        // While a durable sink is not ready and nothing is being exported, a probe finds out
        // when the collector is back: a replica out of its Service's endpoints gets no batch
        // that could show it.
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        // A batch that would have taken a group past its bounds: it starts the next one.
        let mut carried: Option<Delivery> = None;
        loop {
            let first = match carried.take() {
                Some(d) => Msg::Deliver(d),
                None if closing => break,
                None => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                    _ = probe.tick(), if durable && tasks.is_empty() && !shared.is_healthy() => {
                        let (me, shared) = (Arc::clone(&me), Arc::clone(shared));
                        tasks.spawn(async move { me.probe(&shared).await });
                        continue;
                    }
                },
            };
            let mut group: Vec<Delivery> = Vec::new();
            let (mut records, mut bytes) = (0u64, 0usize);
            let max_records = me.cfg.max_batch_records as u64;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                let d = match msg {
                    Msg::Deliver(d) => d,
                    Msg::Close => {
                        closing = true;
                        break;
                    }
                };
                let over =
                    records + d.batch.records > max_records || bytes + d.batch.lines.len() > MAX_EXPORT_LINE_BYTES;
                if over && !group.is_empty() {
                    carried = Some(d);
                    break;
                }
                records += d.batch.records;
                bytes += d.batch.lines.len();
                group.push(d);
                if !closing && records < max_records && bytes < MAX_EXPORT_LINE_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if group.is_empty() {
                continue;
            }
            while tasks.len() >= EXPORTS_IN_FLIGHT {
                tasks.join_next().await;
            }
            let (me, shared) = (Arc::clone(&me), Arc::clone(shared));
            tasks.spawn(async move { me.export_group(group, &shared).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Exports a group of deliveries and reports the outcome to each: true once the
    /// collector holds their records (a partial success included: what it rejected it will
    /// never take), false when it does not.
    async fn export_group(&self, group: Vec<Delivery>, shared: &SinkShared) {
        // Checked as late as possible, right before encoding: a request that gave up while
        // its batch waited here has it resent by the agent, so exporting it now would store
        // it twice.
        let (gone, mut group): (Vec<_>, Vec<_>) = group.into_iter().partition(Delivery::abandoned);
        for d in gone {
            shared.skip_abandoned(d);
        }
        if group.is_empty() {
            return;
        }
        let batches: Vec<_> = group.iter().map(|d| Arc::clone(&d.batch)).collect();
        let ok = {
            let gone = all_abandoned(&mut group);
            tokio::pin!(gone);
            self.export(batches, gone, shared).await
        };
        for d in group {
            d.finish(ok);
        }
    }

    /// Encodes and exports the batches; true when the collector holds every record it will
    /// ever take. `gone` resolves once no request waits for them any more.
    async fn export<F: Future<Output = ()>>(
        &self,
        batches: Vec<Arc<Batch>>,
        gone: Pin<&mut F>,
        shared: &SinkShared,
    ) -> bool {
        // Parsing, encoding and compressing is CPU work: keep it off the async workers
        // that serve agents' requests.
        let group_records: u64 = batches.iter().map(|b| b.records).sum();
        let encoded = tokio::task::spawn_blocking(move || {
            let lines = batches.iter().flat_map(|b| b.record_lines());
            let (request, malformed) = build_request(lines, unix_nanos_now());
            let records: u64 =
                request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum();
            (gzip(&request.encode_to_vec()), records, malformed)
        })
        .await;
        let (body, records) = match encoded {
            Ok((Ok(body), records, malformed)) => {
                if malformed > 0 {
                    shared.dropped("malformed", malformed);
                }
                (body, records)
            }
            Ok((Err(e), records, _)) => {
                log::warn!("otlp: cannot compress an export: {e}");
                shared.dropped("encode_error", records);
                return false;
            }
            Err(e) => {
                log::warn!("otlp: encoding an export failed: {e}");
                shared.dropped("encode_error", group_records);
                return false;
            }
        };
        if records == 0 {
            // Only lines that are not records (counted as malformed): nothing a collector
            // could take, now or on a retry.
            return true;
        }
        match self.export_with_retries(Bytes::from(body), gone).await {
            Ok(rejected) => {
                let rejected = rejected.min(records);
                shared.written.inc_by(records - rejected);
                if rejected > 0 {
                    shared.dropped("rejected", rejected);
                }
                shared.set_health(Ok(()));
                true
            }
            Err((failure, why)) => {
                let reason = match failure {
                    Failure::RetriesExhausted => "retries_exhausted",
                    Failure::Rejected => "rejected",
                    Failure::Abandoned => DROPPED_REFUSED,
                };
                shared.dropped(reason, records);
                shared.set_health(Err(why));
                false
            }
        }
    }

    /// While the sink is not ready: an export request without records, which a collector
    /// answers without its pipeline; a 2xx makes the sink ready again.
    async fn probe(&self, shared: &SinkShared) {
        let Ok(body) = gzip(&ExportLogsServiceRequest::default().encode_to_vec()) else { return };
        if self.post(Bytes::from(body)).await.is_ok_and(|answer| (200..300).contains(&answer.status)) {
            shared.set_health(Ok(()));
        }
    }

    /// Returns the records the collector reported rejected in a partial success. Between
    /// attempts it gives up as soon as `gone` resolves: no request waits for the records any
    /// more, so a retry could not lead to an acknowledgement and the agents resend them.
    async fn export_with_retries<F: Future<Output = ()>>(
        &self,
        body: Bytes,
        mut gone: Pin<&mut F>,
    ) -> Result<u64, (Failure, String)> {
        let mut attempt = 0u32;
        loop {
            let (delay, why) = match self.post(body.clone()).await {
                Ok(answer) if (200..300).contains(&answer.status) => return Ok(answer.rejected),
                Ok(answer) if matches!(answer.status, 429 | 502 | 503 | 504) => (
                    answer.retry_after.unwrap_or_else(|| backoff(attempt)),
                    format!("collector answered {}", answer.status),
                ),
                Ok(answer) => {
                    return Err((Failure::Rejected, format!("collector answered {} (not retryable)", answer.status)));
                }
                Err(e) => (backoff(attempt), format!("export failed: {e}")),
            };
            if attempt >= self.cfg.max_retries {
                log::warn!("otlp: giving up an export after {} retries: {why}", attempt);
                return Err((Failure::RetriesExhausted, why));
            }
            let delay = delay.min(self.cfg.max_retry_delay);
            log::debug!("otlp: {why}; retry {} in {delay:?}", attempt + 1);
            tokio::select! {
                biased;
                () = gone.as_mut() => {
                    log::debug!("otlp: no request waits for this export any more; not retrying it");
                    return Err((Failure::Abandoned, why));
                }
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
            self.retries.inc();
        }
    }

    /// One export request. The status decides: once the collector has answered 2xx the
    /// records are its, whatever becomes of the body after it (too large, cut off, late,
    /// undecodable: logged, nothing counted rejected), so that such an answer is never
    /// taken for a failure and exported again. Another status's body is not read at all
    /// (its connection is not reused), so that it cannot hide a `Retry-After`.
    async fn post(&self, body: Bytes) -> Result<Answer, String> {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let (sender, response) = match tokio::time::timeout_at(deadline, self.send(body)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(format!("export took over {:?}", self.cfg.timeout)),
        };
        let (parts, incoming) = response.into_parts();
        let status = parts.status.as_u16();
        let retry_after = parts.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        if !(200..300).contains(&status) {
            return Ok(Answer { status, retry_after, rejected: 0 });
        }
        let header = |name| parts.headers.get(name).and_then(|v: &hyper::header::HeaderValue| v.to_str().ok());
        let protobuf = header(CONTENT_TYPE)
            .is_some_and(|v| v.starts_with("application/x-protobuf") || v.starts_with("application/protobuf"));
        let gzipped = header(CONTENT_ENCODING).is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let bytes = match tokio::time::timeout_at(deadline, Limited::new(incoming, MAX_RESPONSE_BYTES).collect()).await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                log::warn!("otlp: the collector answered {status}, its body unread ({e}): no partial success seen");
                return Ok(Answer { status, retry_after, rejected: 0 });
            }
            Err(_) => {
                log::warn!("otlp: the collector answered {status}, its body late: no partial success seen");
                return Ok(Answer { status, retry_after, rejected: 0 });
            }
        };
        // Read to its end: the connection can carry the next export.
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < EXPORTS_IN_FLIGHT {
            pool.push(sender);
        }
        drop(pool);
        let rejected = if protobuf && !bytes.is_empty() {
            partial_success_rejected(&bytes, gzipped).unwrap_or_else(|e| {
                log::warn!("otlp: the collector answered {status} with a body that is no export response: {e}");
                0
            })
        } else {
            0
        };
        Ok(Answer { status, retry_after, rejected })
    }

    /// Sends one export on an idle connection or a new one; the connection comes back with
    /// the response, to be pooled once the response is read.
    async fn send(
        &self,
        body: Bytes,
    ) -> Result<(SendRequest<Full<Bytes>>, hyper::Response<hyper::body::Incoming>), String> {
        let idle = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reusable = match idle {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => {
                let stream = tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.endpoint.authority))?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        let request = hyper::Request::post(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_ENCODING, "gzip")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        Ok((sender, response))
    }
}

/// The records an export response's partial success reports rejected (0 without one);
/// a gzip'd body is inflated up to [`MAX_RESPONSE_BYTES`].
fn partial_success_rejected(body: &[u8], gzipped: bool) -> Result<u64, String> {
    let inflated;
    let raw = if gzipped {
        let mut out = Vec::new();
        let limit = u64::try_from(MAX_RESPONSE_BYTES).unwrap_or(u64::MAX);
        flate2::read::GzDecoder::new(body).take(limit + 1).read_to_end(&mut out).map_err(|e| format!("gzip: {e}"))?;
        if out.len() > MAX_RESPONSE_BYTES {
            return Err(format!("inflates past {MAX_RESPONSE_BYTES} bytes"));
        }
        inflated = out;
        &inflated[..]
    } else {
        body
    };
    let response = super::otlp_proto::ExportLogsServiceResponse::decode(raw).map_err(|e| e.to_string())?;
    Ok(response.partial_success.map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0)))
}

struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    rejected: u64,
}

/// Resolves once every delivery of a group is abandoned; never when one is best effort.
async fn all_abandoned(group: &mut [Delivery]) {
    for d in group {
        d.wait_abandoned().await;
    }
}

/// 1 s doubling, before the cap.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(10))
}

/// `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}

fn unix_nanos_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Builds one export request from record lines, grouped by node. Returns it and the
/// number of lines that were not records (never expected: the controller wrote them).
pub fn build_request<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    observed_nanos: u64,
) -> (ExportLogsServiceRequest, u64) {
    let mut by_node: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    let mut malformed = 0;
    for line in lines {
        match serde_json::from_slice::<Map<String, Value>>(line) {
            Ok(record) => {
                let node = record.get("node").and_then(Value::as_str).unwrap_or_default().to_string();
                by_node.entry(node).or_default().push(log_record(&record, observed_nanos));
            }
            Err(_) => malformed += 1,
        }
    }
    let scope = InstrumentationScope { name: "tapio-controller".into(), version: env!("CARGO_PKG_VERSION").into() };
    let resource_logs = by_node
        .into_iter()
        .map(|(node, log_records)| {
            let mut attributes = vec![kv_str("service.name", "tapio")];
            if !node.is_empty() {
                attributes.push(kv_str("host.name", &node));
            }
            ResourceLogs {
                resource: Some(Resource { attributes, dropped_attributes_count: 0 }),
                scope_logs: vec![ScopeLogs { scope: Some(scope.clone()), log_records, schema_url: SCHEMA_URL.into() }],
                schema_url: SCHEMA_URL.into(),
            }
        })
        .collect();
    (ExportLogsServiceRequest { resource_logs }, malformed)
}

/// Maps one evidence record (evidence.md's shape) to a LogRecord.
pub fn log_record(r: &Map<String, Value>, observed_nanos: u64) -> LogRecord {
    let s = |k: &str| r.get(k).and_then(Value::as_str);
    let severity_text = s("severity").unwrap_or_default().to_string();
    let severity_number = match severity_text.as_str() {
        "debug" => severity::DEBUG,
        "info" => severity::INFO,
        "warning" => severity::WARN,
        "error" => severity::ERROR,
        "critical" => severity::FATAL,
        _ => severity::UNSPECIFIED,
    };
    let error = r.get("error").and_then(Value::as_object);
    let body = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| AnyValue { value: Some(any_value::Value::StringValue(m.to_string())) });
    let mut attributes: Vec<KeyValue> = Vec::new();
    let mut dropped_attributes_count = 0u32;
    // OTLP attribute keys must be unique: the first source of a key wins, and a later one
    // with another value is counted in `dropped_attributes_count` rather than lost unseen.
    let mut put = |key: &str, v: Option<&Value>| {
        let Some(value) = v.and_then(any_value_of) else { return };
        match attributes.iter().find(|a| a.key == key) {
            Some(kept) if kept.value.as_ref() == Some(&value) => {}
            Some(_) => dropped_attributes_count = dropped_attributes_count.saturating_add(1),
            None => attributes.push(KeyValue { key: key.to_string(), value: Some(value) }),
        }
    };
    put("log.record.uid", r.get("id"));
    put("tapio.observer", r.get("observer"));
    put("tapio.outcome", r.get("outcome"));
    put("error.type", error.and_then(|e| e.get("code")));
    put("tapio.config_generation", r.get("config_generation"));
    put("tapio.node", r.get("node"));
    // The controller's Kubernetes names come before the node's workload ids: for a static
    // pod `k8s.pod.uid` there is its mirror's UID, the one the API server and other
    // telemetry know, while the node knows the pod by the UID its cgroups carry.
    let k8s = r.get("k8s").and_then(Value::as_object);
    if let Some(k8s) = k8s {
        for (k, v) in k8s {
            put(k, Some(v));
        }
    }
    if let Some(w) = r.get("workload").and_then(Value::as_object) {
        put("container.id", w.get("container_id"));
        let named_uid = k8s.and_then(|k| k.get("k8s.pod.uid"));
        match w.get("pod_uid") {
            Some(uid) if named_uid.is_some_and(|named| named != uid) => put("tapio.workload.pod_uid", Some(uid)),
            uid => put("k8s.pod.uid", uid),
        }
        put("tapio.workload.cgroup_id", w.get("cgroup_id"));
        put("tapio.workload.cgroup_path", w.get("cgroup_path"));
    }
    if let Some(facts) = r.get("facts").and_then(Value::as_object) {
        for (k, v) in facts {
            match FACT_ATTRIBUTES.iter().find(|(fact, _)| fact == k) {
                Some((_, name)) => put(name, Some(v)),
                None => put(&format!("tapio.fact.{k}"), Some(v)),
            }
        }
    }
    LogRecord {
        time_unix_nano: r.get("timestamp_unix_nanos").and_then(Value::as_u64).unwrap_or(0),
        observed_time_unix_nano: observed_nanos,
        severity_number,
        severity_text,
        body,
        attributes,
        dropped_attributes_count,
        flags: 0,
        event_name: s("type").unwrap_or_default().to_string(),
    }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
}

/// JSON → AnyValue. A null named by a key (an attribute, a map entry) is left out, which
/// says the same; inside an array it stays as an empty AnyValue, so that every later
/// element keeps its position.
fn any_value_of(v: &Value) -> Option<AnyValue> {
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => any_value::Value::IntValue(i),
            // Above i64::MAX: OTLP has no unsigned integer; keep the exact digits.
            (None, Some(u), _) => any_value::Value::StringValue(u.to_string()),
            (_, _, Some(f)) => any_value::Value::DoubleValue(f),
            _ => any_value::Value::StringValue(n.to_string()),
        },
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Array(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(|v| any_value_of(v).unwrap_or_default()).collect(),
        }),
        Value::Object(o) => any_value::Value::KvlistValue(KeyValueList {
            values: o
                .iter()
                .filter_map(|(k, v)| any_value_of(v).map(|value| KeyValue { key: k.clone(), value: Some(value) }))
                .collect(),
        }),
    };
    Some(AnyValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_plain_http_only() {
        let e = Endpoint::parse("http://127.0.0.1:4318/v1/logs").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 4318, "/v1/logs"));
        let e = Endpoint::parse("http://[::1]:9/x").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.authority.as_str()), ("::1", 9, "[::1]:9"));
        assert_eq!(Endpoint::parse("http://collector").unwrap().path, "/v1/logs");
        for bad in ["https://c:4318/v1/logs", "c:4318", "http://:80/x", "http://u@c/x", "http://c:x/y"] {
            assert!(Endpoint::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date: now");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_record_maps_to_semantic_convention_attributes() {
        let line = br#"{"id":"01J","type":"kernel.network.connection_refused","observer":"network","severity":"warning","error":{"code":"ECONNREFUSED","message":"refused"},"timestamp_unix_nanos":42,"node":"n1","facts":{"pid":7,"dst_port":80,"weird":null,"big":18446744073709551615}}"#;
        let (req, malformed) = build_request([&line[..], b"not json"].into_iter(), 99);
        assert_eq!(malformed, 1);
        let rl = &req.resource_logs[0];
        assert!(rl.resource.as_ref().unwrap().attributes.contains(&kv_str("host.name", "n1")));
        let rec = &rl.scope_logs[0].log_records[0];
        assert_eq!((rec.time_unix_nano, rec.observed_time_unix_nano, rec.severity_number), (42, 99, severity::WARN));
        assert_eq!(rec.event_name, "kernel.network.connection_refused");
        let attr = |k: &str| rec.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone()?.value);
        assert_eq!(attr("process.pid"), Some(any_value::Value::IntValue(7)));
        assert_eq!(attr("network.peer.port"), Some(any_value::Value::IntValue(80)));
        assert_eq!(attr("tapio.fact.big"), Some(any_value::Value::StringValue("18446744073709551615".into())));
        assert_eq!(attr("tapio.fact.weird"), None, "null is left out");
        assert_eq!(attr("error.type"), Some(any_value::Value::StringValue("ECONNREFUSED".into())));
        assert_eq!(rec.dropped_attributes_count, 0);
    }

    /// A key two sources give different values keeps the first, and the other is counted
    /// in `dropped_attributes_count` instead of vanishing; the same value twice is no loss.
    #[test]
    fn a_second_value_for_a_key_is_counted_dropped() {
        let r = serde_json::json!({"id": "01J", "type": "kernel.x.y", "node": "n", "facts": {},
                                   "k8s": {"log.record.uid": "other", "tapio.node": "n"}});
        let rec = log_record(r.as_object().unwrap(), 0);
        let uid = rec.attributes.iter().find(|a| a.key == "log.record.uid").and_then(|a| a.value.clone()?.value);
        assert_eq!(uid, Some(any_value::Value::StringValue("01J".into())));
        assert_eq!(rec.attributes.iter().filter(|a| a.key == "tapio.node").count(), 1);
        assert_eq!(rec.dropped_attributes_count, 1);
    }
}
