//! The NATS JetStream sink: one message per record, acknowledged by the stream.
//!
//! Subject `<prefix>.<observer>.<type>` (`tapio.evidence.network.kernel.network.connection_refused`),
//! payload the record's JSON line, header `Nats-Msg-Id` = the evidence id, so the server
//! drops a record published twice within the stream's duplicate window (an agent retry
//! after a lost acknowledgement, or the same batch sent through two replicas).
//!
//! A batch is acknowledged to the request only when every record's PubAck has arrived:
//! the stream holds it. A failed or late PubAck refuses the batch (the agent retries);
//! the records the stream did acknowledge are counted written, the others
//! `publish_error`. A chunk's PubAcks are all awaited within one `--sink-ack-timeout-secs`
//! of its sending.
//! Publishes awaiting a PubAck are bounded by `--nats-max-in-flight`; batches are
//! published concurrently within that bound. The client reconnects by itself with
//! exponential backoff (100 ms doubling to 10 s); while it is away publishes fail fast,
//! the sink reports not ready and batches are refused rather than held. Once not ready,
//! a probe every second (batches or none) makes it ready again when JetStream can take
//! records: connected, and the stream (`--nats-stream`, when given) there.
//!
//! Before each chunk of a batch is published (after its in-flight permits, the wait that
//! can be long) the sink checks that the request still waits for it: one that ended
//! without a 200 has its batch resent by the agent, so the rest is not published and is
//! counted as dropped (`reason="refused"`).

use std::borrow::Cow;
use std::future::IntoFuture;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, message::PublishMessage, stream};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::config::NatsConfig;
use super::{Delivery, Msg, SinkShared, DROPPED_REFUSED};

/// A connected JetStream publisher.
pub struct Publisher {
    js: jetstream::Context,
    prefix: String,
    in_flight: Arc<Semaphore>,
    /// The semaphore's size: the most records one chunk of a batch may take.
    max_in_flight: usize,
    /// Longest wait for a chunk's PubAcks, from the moment it was sent.
    ack_timeout: Duration,
    /// `--nats-stream`: what the readiness probe asks about.
    stream: Option<String>,
    /// The connection (its state drives recovery of readiness).
    client: async_nats::Client,
}

/// The fields a subject and a message id need, read from a record line.
#[derive(Deserialize)]
struct RecordKey<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    observer: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
}

impl Publisher {
    /// Connects (failing at start when the server cannot be reached or refuses the
    /// credentials) and checks or creates the stream.
    pub async fn connect(cfg: &NatsConfig) -> io::Result<Self> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("tapio-controller")
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move {
                log::info!("nats: {event}");
            });
        if let Some(path) = &cfg.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                io::Error::new(e.kind(), format!("cannot read --nats-creds-file {}: {e}", path.display()))
            })?;
        }
        if let Some(token) = &cfg.token {
            opts = opts.token(token.0.clone());
        }
        if let Some((user, password)) = &cfg.user_password {
            opts = opts.user_and_password(user.clone(), password.0.clone());
        }
        if let Some(ca) = &cfg.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &cfg.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        opts = opts.require_tls(cfg.tls_required);
        let servers: Vec<&str> = cfg.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let client = opts
            .connect(servers)
            .await
            .map_err(|e| io::Error::other(format!("cannot connect to NATS at {}: {e}", cfg.url)))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(cfg.ack_timeout);
        if let Some(name) = &cfg.stream {
            ensure_stream(&js, name, cfg).await?;
        }
        Ok(Self {
            js,
            prefix: cfg.subject_prefix.clone(),
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
            max_in_flight: cfg.max_in_flight,
            ack_timeout: cfg.ack_timeout,
            stream: cfg.stream.clone(),
            client,
        })
    }

    /// Publishes every delivered batch until Close, then waits for those in flight.
    pub async fn run(self, mut rx: mpsc::Receiver<Msg>, shared: &Arc<SinkShared>) {
        let mut tasks = JoinSet::new();
        // While unhealthy, a probe makes the sink ready again once JetStream can take
        // records: a replica out of its Service's endpoints gets no batch that could show
        // it. The tick is always polled and the health read at each one: a select branch
        // guarded by it would keep the health read when the select began, before the
        // batch that failed, and the probe never run without a next batch.
        let mut probe = tokio::time::interval(Duration::from_secs(1));
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let probing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = probe.tick() => {
                    if !shared.is_healthy() && !probing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        let (js, client, stream) = (self.js.clone(), self.client.clone(), self.stream.clone());
                        let (shared, probing, timeout) = (Arc::clone(shared), Arc::clone(&probing), self.ack_timeout);
                        tasks.spawn(async move {
                            if can_publish(&js, &client, stream.as_deref(), timeout).await {
                                shared.set_health(Ok(()));
                            }
                            probing.store(false, std::sync::atomic::Ordering::Release);
                        });
                    }
                    while tasks.try_join_next().is_some() {}
                    continue;
                }
            };
            // Reap finished batches so the set stays as small as the work in flight.
            while tasks.try_join_next().is_some() {}
            match msg {
                Msg::Deliver(d) => {
                    let js = self.js.clone();
                    let prefix = self.prefix.clone();
                    let sem = Arc::clone(&self.in_flight);
                    let shared = Arc::clone(shared);
                    let bounds = Bounds { max_in_flight: self.max_in_flight, ack_timeout: self.ack_timeout };
                    tasks.spawn(async move { deliver(&js, &prefix, &sem, bounds, d, &shared).await });
                }
                Msg::Close => break,
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Whether JetStream can take records again: connected, and with `--nats-stream` the
/// stream there. A connection alone is not enough then: a deleted stream, or one without
/// its quorum, fails every publish on a live connection. (Without a stream named, which
/// stream takes the records is not known here, and credentials that may only publish
/// could not ask JetStream anything: the connection is all the probe checks.)
async fn can_publish(
    js: &jetstream::Context,
    client: &async_nats::Client,
    stream: Option<&str>,
    within: Duration,
) -> bool {
    if client.connection_state() != async_nats::connection::State::Connected {
        return false;
    }
    match stream {
        Some(name) => tokio::time::timeout(within, js.get_stream(name)).await.is_ok_and(|r| r.is_ok()),
        None => true,
    }
}

/// 100 ms doubling to 10 s between reconnect attempts.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.min(7)).unwrap_or(7);
    Duration::from_millis(100u64.saturating_mul(1 << exp)).min(Duration::from_secs(10))
}

async fn ensure_stream(js: &jetstream::Context, name: &str, cfg: &NatsConfig) -> io::Result<()> {
    let wanted = format!("{}.>", cfg.subject_prefix);
    match js.get_stream(name).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| io::Error::other(format!("nats stream {name}: {e}")))?;
            let covered = info.config.subjects.iter().any(|s| s == &wanted || s == ">");
            if !covered {
                return Err(io::Error::other(format!(
                    "nats stream {name} exists but does not capture {wanted} (its subjects: {:?})",
                    info.config.subjects
                )));
            }
            log::info!("nats stream {name} found, capturing {wanted}");
            Ok(())
        }
        Err(e)
            if cfg.create_stream
                && matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let config = stream::Config {
                name: name.to_string(),
                subjects: vec![wanted.clone()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: cfg.stream_max_age,
                max_bytes: i64::try_from(cfg.stream_max_bytes).ok().filter(|b| *b > 0).unwrap_or(-1),
                num_replicas: cfg.stream_replicas,
                duplicate_window: cfg.duplicate_window,
                ..Default::default()
            };
            js.create_stream(config)
                .await
                .map_err(|e| io::Error::other(format!("cannot create nats stream {name}: {e}")))?;
            log::info!("nats stream {name} created, capturing {wanted}");
            Ok(())
        }
        Err(e) => Err(io::Error::other(format!(
            "nats stream {name}: {e}{}",
            if cfg.create_stream { "" } else { " (--nats-create-stream creates it)" }
        ))),
    }
}

/// Publishes one batch and reports whether every record was acknowledged. A batch that
/// fails part-way counts what the stream acknowledged before as written and only the rest
/// as dropped: the stream holds the former (and drops them by `Nats-Msg-Id` when the agent
/// resends the batch).
async fn deliver(
    js: &jetstream::Context,
    prefix: &str,
    sem: &Arc<Semaphore>,
    bounds: Bounds,
    d: Delivery,
    shared: &SinkShared,
) {
    let mut published = Published { acked: 0, duplicates: 0, abandoned: false };
    let result = publish_batch(js, prefix, sem, bounds, &d, &mut published).await;
    let records = d.batch.records;
    let ok = match result {
        Err(e) => {
            shared.written.inc_by(published.acked);
            shared.dropped("publish_error", records.saturating_sub(published.acked));
            shared.set_health(Err(e));
            false
        }
        Ok(()) if published.abandoned => {
            // The stream holds what went out before the request gave up; the agent's
            // retry re-publishes it and the stream drops it by Nats-Msg-Id.
            shared.written.inc_by(published.acked);
            shared.dropped(DROPPED_REFUSED, records.saturating_sub(published.acked));
            false
        }
        Ok(()) => {
            shared.written.inc_by(records);
            if published.duplicates > 0 {
                // Already in the stream (a retried batch): held, and not stored twice.
                log::debug!("nats: {} records were duplicates the stream dropped", published.duplicates);
            }
            shared.set_health(Ok(()));
            true
        }
    };
    d.finish(ok);
}

/// How much of a batch is in flight at once, and for how long.
#[derive(Clone, Copy)]
struct Bounds {
    /// Records of one chunk (the in-flight semaphore's size).
    max_in_flight: usize,
    /// Longest wait for a chunk's PubAcks once it is sent.
    ack_timeout: Duration,
}

/// What became of a batch's records.
struct Published {
    /// Records the stream acknowledged.
    acked: u64,
    /// Of those, records the stream already held.
    duplicates: u64,
    /// The request stopped waiting before every chunk was published: the rest was not.
    abandoned: bool,
}

/// Publishes the batch chunk by chunk, stopping early when its request has gone, and
/// notes in `published` what the stream acknowledged (also when it fails part-way).
///
/// Records go out in chunks of at most `max_in_flight`, each chunk's permits taken in one
/// call and released once its PubAcks are in. A task never holds permits while it waits
/// for more, so batches larger than the bound, or more concurrent batches than it admits,
/// cannot leave every permit with a batch that is still waiting.
async fn publish_batch(
    js: &jetstream::Context,
    prefix: &str,
    sem: &Arc<Semaphore>,
    bounds: Bounds,
    d: &Delivery,
    published: &mut Published,
) -> Result<(), String> {
    let lines: Vec<&[u8]> = d.batch.record_lines().collect();
    for chunk in lines.chunks(bounds.max_in_flight.max(1)) {
        let wanted = u32::try_from(chunk.len()).map_err(|_| "chunk over u32 records".to_string())?;
        let permits = Arc::clone(sem).acquire_many_owned(wanted).await.map_err(|_| "publisher closed".to_string())?;
        // Checked after the permits, as late as possible before publishing.
        if d.abandoned() {
            published.abandoned = true;
            return Ok(());
        }
        let mut pending = Vec::with_capacity(chunk.len());
        let mut failed = None;
        for line in chunk {
            let key: RecordKey<'_> = match serde_json::from_slice(line) {
                Ok(key) => key,
                Err(e) => {
                    failed = Some(format!("record without observer/type: {e}"));
                    break;
                }
            };
            let subject = subject_for(prefix, &key.observer, &key.event_type);
            let mut publish = PublishMessage::build().payload(Bytes::copy_from_slice(line));
            if let Some(id) = key.id.as_deref().filter(|id| !id.is_empty()) {
                publish = with_message_id(publish, id);
            }
            match js.send_publish(subject, publish).await {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    failed = Some(format!("publish failed: {e}"));
                    break;
                }
            }
        }
        // Every publish that went out is awaited, also after a failure, so that what the
        // stream took is known and counted as held; all of them within one ack timeout
        // of the sending (each PubAck's own timeout starts only when it is awaited).
        let deadline = tokio::time::Instant::now() + bounds.ack_timeout;
        for ack in pending {
            match tokio::time::timeout_at(deadline, ack.into_future()).await {
                Ok(Ok(ack)) => {
                    published.acked += 1;
                    published.duplicates += u64::from(ack.duplicate);
                }
                Ok(Err(e)) => {
                    failed.get_or_insert_with(|| format!("no PubAck: {e}"));
                }
                Err(_) => {
                    failed.get_or_insert_with(|| format!("no PubAck within {:?}", bounds.ack_timeout));
                }
            }
        }
        drop(permits);
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// Sets `Nats-Msg-Id` to `id`. The client's own `message_id` asserts that a value holds no
/// CR or LF (a panic on input); this parses it instead. Batch validation already refuses
/// such ids, so an id that still does not parse is published without the header: the
/// record is kept, only the stream's duplicate check is lost for it.
fn with_message_id(publish: PublishMessage, id: &str) -> PublishMessage {
    match id.parse::<async_nats::HeaderValue>() {
        Ok(value) => publish.header(async_nats::header::NATS_MESSAGE_ID, value),
        Err(_) => {
            log::warn!("nats: a record id is not a valid header value; published without Nats-Msg-Id");
            publish
        }
    }
}

/// Longest `.<observer>.<type>` part of a subject, in bytes. Neither is bounded on the wire,
/// and a subject that takes the server's control line (4 KiB) past its limit makes it
/// close the connection every batch shares; a real one is a few dozen bytes.
pub const MAX_SUBJECT_TAIL_BYTES: usize = 192;

/// `<prefix>.<observer>.<type>` with each token made subject-safe: whitespace, `*` and
/// `>` become `_`, and an empty token becomes `_`. The part after the prefix is cut to
/// [`MAX_SUBJECT_TAIL_BYTES`] at a character boundary (the record itself keeps its type).
pub fn subject_for(prefix: &str, observer: &str, event_type: &str) -> String {
    let mut tail = String::with_capacity((observer.len() + event_type.len() + 2).min(MAX_SUBJECT_TAIL_BYTES + 4));
    for token in std::iter::once(observer).chain(event_type.split('.')) {
        if tail.len() > MAX_SUBJECT_TAIL_BYTES {
            break;
        }
        tail.push('.');
        if token.is_empty() {
            tail.push('_');
        }
        for c in token.chars() {
            if tail.len() > MAX_SUBJECT_TAIL_BYTES {
                break;
            }
            tail.push(if c.is_whitespace() || c.is_control() || c == '*' || c == '>' || c == '.' { '_' } else { c });
        }
    }
    if tail.len() > MAX_SUBJECT_TAIL_BYTES {
        let mut cut = MAX_SUBJECT_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut -= 1;
        }
        tail.truncate(cut);
        // A cut right after a separator would leave an empty last token.
        while tail.len() > 2 && tail.ends_with('.') {
            tail.pop();
        }
    }
    let mut s = String::with_capacity(prefix.len() + tail.len());
    s.push_str(prefix);
    s.push_str(&tail);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_prefix_observer_type_and_always_valid() {
        assert_eq!(
            subject_for("tapio.evidence", "network", "kernel.network.connection_refused"),
            "tapio.evidence.network.kernel.network.connection_refused"
        );
        assert_eq!(subject_for("p", "a b.c", "kernel..x>*"), "p.a_b_c.kernel._.x__");
        assert!(crate::sink::config::valid_subject(&subject_for("p", "", "")));
    }

    /// Before the bound a type of any length became a subject of that length, and a
    /// subject past the server's 4 KiB control line had it close the shared connection.
    #[test]
    fn subjects_are_bounded_whatever_the_type_and_stay_valid() {
        let long = format!("kernel.{}", "é".repeat(3000));
        for (observer, event_type) in [
            ("network", long.as_str()),
            (&*"o".repeat(5000), "kernel.x"),
            ("n", &*format!("kernel.{}", ".".repeat(4000))),
            ("n", &*format!("kernel.{}.y", "x".repeat(MAX_SUBJECT_TAIL_BYTES - 10))),
        ] {
            let subject = subject_for("tapio.evidence", observer, event_type);
            assert!(subject.len() <= "tapio.evidence".len() + MAX_SUBJECT_TAIL_BYTES, "{}", subject.len());
            assert!(subject.starts_with("tapio.evidence."));
            assert!(crate::sink::config::valid_subject(&subject), "{subject}");
        }
        // A subject under the bound is unchanged by it.
        let kernel = "kernel.network.connection_refused";
        assert_eq!(subject_for("p", "network", kernel), format!("p.network.{kernel}"));
    }

    /// The client's `message_id` panics on a CR or LF; ours never does, whatever the id.
    #[test]
    fn a_message_id_no_header_can_hold_does_not_panic() {
        for id in ["a\nb", "a\r\nNats-Expected-Stream: X", "\r", "01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
            let _ = with_message_id(PublishMessage::build(), id);
        }
    }

    #[test]
    fn reconnect_backoff_doubles_to_a_cap() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(1), Duration::from_millis(200));
        assert_eq!(reconnect_delay(50), Duration::from_secs(10));
    }
}
