//! The HTTP surface: routes of the five v1 operations plus `/metrics`, `/healthz` and
//! `/readyz`, and the middleware every request passes through.
//!
//! Layers, outermost first: request metrics → panic catcher (500 envelope, no details) →
//! request timeout (408 envelope) → routes. Protected routes (`/v1/agents/*`,
//! `/v1/events`) additionally pass the bearer check when auth is on. Unknown paths get a
//! 404 envelope and known paths with a wrong method a 405 envelope: axum's plain-text
//! defaults are never sent.

pub mod agents;
pub mod body;
pub mod error;
pub mod events;
pub mod json;
pub mod status;

use std::any::Any;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tapio_wire::{paths, ErrorCode};
use tower_http::catch_panic::CatchPanicLayer;

use crate::metrics::RequestLabels;
use crate::state::AppState;
use error::{ApiError, ErrorCodeTag};

/// Builds the router over `state`: [`routes`] inside [`layered`].
pub fn router(state: Arc<AppState>) -> Router {
    layered(routes(Arc::clone(&state)), state)
}

/// The routes of the controller, without the common layers.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let protected = Router::new()
        .route(paths::HELLO, post(agents::hello).fallback(allow_post))
        .route(paths::CONFIG, get(agents::config).fallback(allow_get))
        .route(paths::HEARTBEAT, post(agents::heartbeat).fallback(allow_post))
        .route(paths::EVENTS, post(events::events).fallback(allow_post))
        .route_layer(middleware::from_fn_with_state(state, require_auth));

    Router::new()
        .merge(protected)
        .route(paths::STATUS, get(status::status).fallback(allow_get))
        .route("/metrics", get(status::metrics).fallback(allow_get))
        .route("/healthz", get(status::healthz).fallback(allow_get))
        .route("/readyz", get(status::readyz).fallback(allow_get))
}

/// Adds what every request passes through: the 404 fallback, the request timeout, the
/// panic catcher and request metrics. Public so tests can exercise the same stack with
/// routes that fail on purpose.
pub fn layered(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .fallback(unknown_endpoint)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), request_timeout))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .with_state(state)
}

/// The operation label of a path (a closed set, so metrics stay bounded).
pub fn operation_of(path: &str) -> &'static str {
    match path {
        paths::HELLO => "hello",
        paths::CONFIG => "config",
        paths::HEARTBEAT => "heartbeat",
        paths::EVENTS => "events",
        paths::STATUS => "status",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        _ => "unknown",
    }
}

async fn unknown_endpoint() -> ApiError {
    ApiError::new(ErrorCode::UnknownEndpoint, "no such endpoint")
}

async fn allow_post() -> ApiError {
    ApiError::method_not_allowed("POST")
}

async fn allow_get() -> ApiError {
    ApiError::method_not_allowed("GET")
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    // The panic payload may hold internal details: it is not logged into the response.
    log::error!("a request handler panicked");
    ApiError::internal().into_response()
}

/// Bearer check for the agent-facing routes. The presented value is never logged.
async fn require_auth(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if let Some(reviewer) = &st.kubernetes_auth {
        let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| crate::auth::strip_scheme(v.as_bytes()));
        let denial = match presented {
            None | Some(&[]) => crate::k8s::tokenreview::Denial::Unauthenticated(
                "a ServiceAccount token is required (Authorization: Bearer)".into(),
            ),
            Some(token) => match reviewer.authenticate(token, &st.metrics.k8s).await {
                Ok(identity) => {
                    req.extensions_mut().insert(crate::auth::AuthorizedNode(identity));
                    return next.run(req).await;
                }
                Err(d) => d,
            },
        };
        use crate::k8s::tokenreview::Denial;
        let (code, message) = match denial {
            Denial::Unauthenticated(m) => (ErrorCode::Unauthenticated, m),
            Denial::Forbidden(m) => (ErrorCode::Forbidden, m),
            Denial::Unavailable(m) => {
                log::warn!("cannot check an agent token: {m}");
                (ErrorCode::NotReady, "cannot check the token now: the Kubernetes API is unavailable".into())
            }
        };
        let mut resp = ApiError::new(code.clone(), message).into_response();
        if code == ErrorCode::Unauthenticated {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        return resp;
    }
    if let Some(token) = &st.auth {
        let presented = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if !token.authorizes(presented, std::time::Instant::now()) {
            let mut resp = ApiError::new(ErrorCode::Unauthenticated, "a valid Authorization: Bearer token is required")
                .into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

/// Bounds the time a request (including reading its body) may take, so a client that
/// trickles a body cannot hold a handler forever.
async fn request_timeout(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(st.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!("request not completed within {} s", st.request_timeout.as_secs()),
        )
        .into_response(),
    }
}

/// Counts every response by operation and status, and error responses by code.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let operation = operation_of(req.uri().path());
    let resp = next.run(req).await;
    st.metrics.requests.get_or_create(&RequestLabels { operation, status: resp.status().as_u16() }).inc();
    if let Some(ErrorCodeTag(code)) = resp.extensions().get::<ErrorCodeTag>() {
        st.metrics.count_error(code.as_str());
    }
    resp
}

/// Refuses (403 FORBIDDEN) a node-bound agent's request whose `agent_id` is not its bound
/// node's name. Under node-bound auth an agent's id is its node's name (the agent's default,
/// and the chart sets no other): otherwise a token for node B could take node A's id
/// before A's agent does (after a restart or an eviction) and lock it out, or fill every
/// `--max-agents` slot with invented ids. Without node binding every agent id is allowed.
pub(crate) fn check_agent(
    bound: Option<&crate::auth::AuthorizedNode>,
    agent_id: &str,
    m: &crate::metrics::Metrics,
) -> Result<(), error::ApiError> {
    match bound {
        Some(b) if b.0.node != agent_id => {
            m.k8s.token_review("wrong_agent");
            Err(error::ApiError::new(
                tapio_wire::ErrorCode::Forbidden,
                format!(
                    "this agent's token is bound to node {:?}: its agent_id must be that node's name, not {:?}",
                    b.0.node,
                    tapio_wire::validate::clip(agent_id)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses (403 FORBIDDEN) a request that names a node other than the one the agent's
/// token is bound to. Without node binding (shared token or no auth) every node is allowed.
pub(crate) fn check_node(
    bound: Option<&crate::auth::AuthorizedNode>,
    node_name: &str,
    m: &crate::metrics::Metrics,
) -> Result<(), error::ApiError> {
    match bound {
        Some(b) if b.0.node != node_name => {
            m.k8s.token_review("wrong_node");
            Err(error::ApiError::new(
                tapio_wire::ErrorCode::Forbidden,
                format!("this agent's token is bound to node {:?}, not {:?}", b.0.node, node_name),
            ))
        }
        _ => Ok(()),
    }
}
