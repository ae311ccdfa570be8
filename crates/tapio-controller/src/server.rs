//! The HTTP/1.1 server loop: accepts connections under a bound, serves the router with
//! header-read, request and write timeouts, evicts silent agents, and shuts down
//! gracefully (stop accepting, let open requests finish within a grace period, flush
//! the sink).
//!
//! hyper's connection builder is used directly instead of `axum::serve` because only it
//! exposes the header read timeout that closes clients which connect and send nothing
//! (the same timer closes idle keep-alive connections).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::api;
use crate::io_timeout::WriteTimeout;
use crate::metrics::Metrics;
use crate::profile;
use crate::settings::Settings;
use crate::sink::{self, SinkOptions, SinkWriters};
use crate::state::AppState;

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
}

impl Server {
    /// Starts the sink and binds the listen address.
    pub async fn bind(settings: Settings) -> io::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let opts = SinkOptions { queue_bytes: settings.sink_queue_bytes, ack_timeout: settings.sink_ack_timeout };
        let (sinks, writer) = sink::start(&settings.sinks, &opts, &metrics).await?;
        let state = Arc::new(AppState::new(&settings, metrics, sinks));
        let listener = match TcpListener::bind(settings.listen).await {
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
        Ok(Self { listener, state, writer, settings, hangup })
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
        let Self { listener, state, writer, settings, hangup } = self;
        let service = TowerToHyperService::new(api::router(Arc::clone(&state)));
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout).keep_alive(true);
        let evictor = tokio::spawn(evict_loop(Arc::clone(&state), settings.evict_after));
        let watcher = settings.profile.clone().map(|path| {
            tokio::spawn(profile::watch(Arc::clone(&state), profile::Watcher::new(path), settings.profile_poll, hangup))
        });

        tokio::pin!(shutdown);
        loop {
            // Wait for a free slot first: beyond the bound, clients wait in the backlog.
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(WriteTimeout::new(stream, settings.write_timeout));
            let conn = graceful.watch(builder.serve_connection(io, service.clone()));
            let open = state.metrics.connections_open.clone();
            open.inc();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    // Clients vanish, time out or send garbage: routine, so debug only.
                    log::debug!("connection ended: {e}");
                }
                open.dec();
                drop(permit);
            });
        }

        drop(listener);
        evictor.abort();
        if let Some(w) = watcher {
            w.abort();
        }
        log::info!("shutting down: finishing open requests");
        if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown()).await.is_err() {
            log::warn!("connections still open after {} s; closing them", settings.shutdown_grace.as_secs());
        }
        // Each sink drains what is queued, bounded in time (a wedged pipe or an
        // unreachable server must not hold shutdown forever).
        writer.close(Duration::from_secs(5)).await;
        log::info!("shutdown complete");
        Ok(())
    }
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
