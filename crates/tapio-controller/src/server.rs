//! The HTTP/1.1 server loop: admits connections through the [`Connections`] table (total
//! and per-peer bounds, eviction of connections without a request), serves the router
//! with header-size, header-read, request and write bounds, evicts silent agents, returns
//! memory after floods, and shuts down gracefully (stop accepting, close connections
//! without a request, let open requests finish within a grace period, flush the sink).
//!
//! hyper's connection builder is used directly instead of `axum::serve` because only it
//! exposes the header read timeout and buffer bound, and the per-connection shutdown
//! that eviction needs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::api;
use crate::connections::{Activity, Admitted, Connections, Refusal};
use crate::hyper_errors::EnvelopeHyperErrors;
use crate::io_timeout::WriteTimeout;
use crate::metrics::Metrics;
use crate::metrics::ReasonLabels;
use crate::profile_reload;
use crate::settings::Settings;
use crate::sink::{self, SinkOptions, SinkWriters};
use crate::state::AppState;
use tapio_wire::ErrorCode;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    writer: SinkWriters,
    settings: Settings,
    /// SIGHUP stream, registered at bind (before the server says it is listening) so that a
    /// reload request sent right after start is not lost. Only with `--profile`: without
    /// one, SIGHUP keeps its default meaning.
    hangup: Option<tokio::signal::unix::Signal>,
    /// The pod watch to start with the server (`--k8s-pods`).
    pod_watch: Option<(kube::Client, crate::k8s::owners::OwnerResolver)>,
}

impl Server {
    /// Starts the sink and binds the listen address.
    pub async fn bind(settings: Settings) -> io::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let opts = SinkOptions { queue_bytes: settings.sink_queue_bytes, ack_timeout: settings.sink_ack_timeout };
        let (sinks, writer) = sink::start(&settings.sinks, &opts, &metrics).await?;
        let mut state = AppState::new(&settings, metrics, sinks);
        let pod_watch = match attach_kubernetes(&settings, &mut state).await {
            Ok(w) => w,
            Err(e) => {
                writer.close(Duration::from_secs(1)).await;
                return Err(io::Error::other(e));
            }
        };
        let state = Arc::new(state);
        let listener = match listen(settings.listen) {
            Ok(l) => l,
            Err(e) => {
                writer.close(Duration::from_secs(1)).await;
                return Err(e);
            }
        };
        let hangup = match &settings.profile {
            None => None,
            Some(_) => Some(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?),
        };
        Ok(Self { listener, state, writer, settings, hangup, pod_watch })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Shared state, for tests and embedding.
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run<F>(self, shutdown: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let Self { listener, state, writer, settings, hangup, pod_watch } = self;
        let router = api::router(Arc::clone(&state));
        let conns = Connections::new(settings.max_connections, settings.max_connections_per_peer);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .keep_alive(true)
            // The read buffer holds a request head; hyper's default lets each connection
            // grow it to ~400 KiB, so a thousand unfinished heads cost ~400 MB.
            .max_buf_size(settings.max_header_bytes)
            .max_headers(MAX_REQUEST_HEADERS);
        let evictor = tokio::spawn(evict_loop(Arc::clone(&state), settings.evict_after));
        let trimmer = tokio::spawn(return_memory_loop(Arc::clone(&conns)));
        let pod_watcher = match (pod_watch, &state.pods) {
            (Some((client, owners)), Some(index)) => Some(tokio::spawn(crate::k8s::watch::run(
                client,
                Arc::clone(index),
                Arc::clone(&state.metrics),
                owners,
            ))),
            _ => None,
        };
        let token_watcher =
            settings.auth_token_file.clone().filter(|_| state.auth.is_some()).map(|path| {
                tokio::spawn(crate::auth::watch_token_file(Arc::clone(&state), path, settings.profile_poll))
            });
        let watcher = settings.profile.clone().map(|path| {
            tokio::spawn(profile_reload::watch(
                Arc::clone(&state),
                profile_reload::Watcher::new(path),
                settings.profile_poll,
                hangup,
            ))
        });

        tokio::pin!(shutdown);
        'accept: loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = loop {
                match conns.admit(peer.ip()) {
                    Ok((slot, how)) => {
                        if how == Admitted::Evicted {
                            state.metrics.connections_shed.get_or_create(&ReasonLabels { reason: "evicted" }).inc();
                        }
                        break Some(slot);
                    }
                    Err(Refusal::PeerFull) => {
                        state.metrics.connections_shed.get_or_create(&ReasonLabels { reason: "peer_limit" }).inc();
                        break None;
                    }
                    // Every slot is busy with a request: wait (further clients wait in the
                    // backlog) until one ends.
                    Err(Refusal::Full) => tokio::select! {
                        biased;
                        () = &mut shutdown => break 'accept,
                        () = conns.freed() => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    },
                }
            };
            let Some(slot) = slot else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let metrics = Arc::clone(&state.metrics);
            let io = TokioIo::new(EnvelopeHyperErrors::new(
                WriteTimeout::new(stream, settings.write_timeout),
                move |code: &ErrorCode| metrics.count_error(code.as_str()),
            ));
            let activity = Arc::clone(&slot.activity);
            let router = router.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                // Busy from complete request head until the response body is written.
                let busy = activity.begin(!req.body().is_end_stream());
                let activity = Arc::clone(&activity);
                let router = router.clone();
                async move {
                    let req = req.map(|inner| Body::new(TrackedBody { inner, activity }));
                    let resp = match router.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(resp.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _held_until_written = &busy;
                            frame
                        }))
                    }))
                }
            });
            let conn = builder.serve_connection(io, service);
            let open = state.metrics.connections_open.clone();
            open.inc();
            tokio::spawn(async move {
                tokio::pin!(conn);
                let mut closing = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                // Clients vanish, time out or send garbage: routine, so debug only.
                                log::debug!("connection ended: {e}");
                            }
                            break;
                        }
                        () = slot.close.notified(), if !closing => {
                            // Evicted or shutting down: a connection without a request in
                            // progress is dropped now; a busy one answers, then closes.
                            if slot.activity.may_drop() {
                                break;
                            }
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
                open.dec();
                drop(slot);
            });
        }

        drop(listener);
        evictor.abort();
        trimmer.abort();
        if let Some(w) = pod_watcher {
            w.abort();
        }
        if let Some(w) = token_watcher {
            w.abort();
        }
        if let Some(w) = watcher {
            w.abort();
        }
        log::info!("shutting down: finishing open requests");
        conns.close_all();
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while conns.open() > 0 {
                tokio::select! {
                    () = conns.freed() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            log::warn!("connections still open after {} s; closing them", settings.shutdown_grace.as_secs());
        }
        // Each sink drains what is queued, bounded in time (a wedged pipe or an
        // unreachable server must not hold shutdown forever).
        writer.close(Duration::from_secs(5)).await;
        log::info!("shutdown complete");
        Ok(())
    }
}

/// A request body that tells the connection's [`Activity`] when it has fully arrived.
struct TrackedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let arrived = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if arrived {
            self.activity.body_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Listen backlog: room for a fleet's reconnect burst (and a flood's) while the accept loop
/// catches up; the kernel caps it at `net.core.somaxconn`. tokio's `bind` uses 1024.
const LISTEN_BACKLOG: u32 = 2048;

/// Binds `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Most header lines a request may carry (agents send fewer than ten).
const MAX_REQUEST_HEADERS: usize = 64;

/// Gives memory back to the OS after a connection flood ends: glibc keeps freed buffers
/// in its arenas, so without this a flood's peak stays resident long after it is over.
async fn return_memory_loop(conns: Arc<Connections>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peak = conns.take_peak();
        if peak >= conns.open() + 64 {
            trim_heap();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Builds the Kubernetes client when a Kubernetes feature is on, sets up the pod store and
/// the TokenReview checker in `state`, and returns the pod watch to start with the server.
async fn attach_kubernetes(
    settings: &Settings,
    state: &mut AppState,
) -> Result<Option<(kube::Client, crate::k8s::owners::OwnerResolver)>, String> {
    if settings.pod_watch.is_none() && settings.kubernetes_auth.is_none() {
        return Ok(None);
    }
    let client = crate::k8s::client(settings.k8s_api_server.as_deref()).await?;
    let mut watch = None;
    if let Some(w) = &settings.pod_watch {
        state.pods = Some(Arc::new(crate::k8s::PodIndex::new(w.max_pods, w.deleted_grace)));
        let owners = crate::k8s::owners::OwnerResolver::new(
            Some(client.clone()),
            w.owner_cache_entries,
            Duration::from_secs(600),
        );
        watch = Some((client.clone(), owners));
    }
    if let Some(review) = &settings.kubernetes_auth {
        state.kubernetes_auth =
            Some(Arc::new(crate::k8s::tokenreview::TokenReviewer::new(client, review.clone(), state.pods.clone())));
    }
    Ok(watch)
}

/// Forgets silent agents periodically.
async fn evict_loop(state: Arc<AppState>, after: Duration) {
    let period = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gone = state.registry.evict_silent(Instant::now(), after);
        if !gone.is_empty() {
            state.metrics.agents_evicted.inc_by(gone.len() as u64);
            log::info!(
                "evicted {} agents silent for over {} s (first: {:?})",
                gone.len(),
                after.as_secs(),
                gone.first()
            );
        }
    }
}

/// A server running on a background task, for tests and the load generator.
pub struct RunningServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// Binds and runs `settings` on the current runtime.
    pub async fn start(settings: Settings) -> io::Result<Self> {
        let server = Server::bind(settings).await?;
        let addr = server.local_addr()?;
        let state = server.state();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Self { addr, state, stop: Some(tx), task })
    }

    /// Shuts down gracefully and waits for it.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}
