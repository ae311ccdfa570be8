//! `tapio status`'s one GET, through the workspace's plain HTTP/1.1 client
//! ([`tapio_util::http`]): plain HTTP only (an `https://` URL is refused rather than
//! silently sent in clear), redirects returned rather than followed, every wait bounded by
//! the timeout and the response by a size cap.

use std::time::Duration;

use tapio_util::http::{normalize, send, HttpError, Limits, Request};
pub use tapio_util::http::{Endpoint, Response};

/// Largest response read (a status with 10,000 agents is about 6 MiB).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// `--timeout-secs` bounds each connect, read and write; the whole request gets this many
/// timeouts, so a peer that trickles its answer cannot hold the command for ever.
const TIMEOUTS_PER_REQUEST: u32 = 6;

/// Parses `http://host[:port][/prefix]`; the error names the URL as given.
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    Endpoint::parse(&normalize(url)).map_err(|e| format!("{url}: {e}"))
}

/// GETs `path` below the endpoint's prefix.
pub fn get(endpoint: &Endpoint, path: &str, timeout: Duration) -> Result<Response, String> {
    let limits = Limits {
        connect_timeout: timeout,
        io_timeout: timeout,
        request_timeout: timeout.saturating_mul(TIMEOUTS_PER_REQUEST),
        max_response_bytes: MAX_RESPONSE_BYTES,
        user_agent: concat!("tapio/", env!("CARGO_PKG_VERSION")),
    };
    let request = Request { method: "GET", path, headers: &[], body: None };
    let target = &endpoint.authority;
    send(endpoint, &limits, &request).map_err(|e| match e {
        HttpError::Connect(e) => format!("cannot connect to {target}: {e}"),
        other => format!("{target}: {other}"),
    })
}
