//! A small outbound HTTP/1.1 client: exactly what the agent's controller protocol and
//! `tapio status` need.
//!
//! Hand-written on purpose: hyper/reqwest would each add more to the node agent than all of
//! its own code (and reqwest is forbidden there). Both callers need one request per
//! connection with an optional JSON body and a bounded JSON response, so this client does that:
//! plain `http://` only (an `https://` URL is refused when the URL is parsed — no silent
//! downgrade), connect/read/write timeouts and a deadline for the whole request (a peer that
//! trickles its answer a byte at a time cannot hold it longer, nor, with [`resolve_within`],
//! a resolver that never answers), capped header and body
//! sizes, Content-Length and chunked responses, and no redirects (a 3xx is returned as a
//! status, never followed).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Response headers larger than this are refused.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How much of a peer's unparseable status line an error (and so a log line) quotes.
const QUOTED_STATUS_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, for the Host header and for resolution.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path prefix from the URL (no trailing slash), e.g. "" or "/tapio".
    pub base_path: String,
}

#[derive(Debug)]
pub enum HttpError {
    /// The URL cannot be used (scheme, syntax).
    Url(String),
    Connect(io::Error),
    Io(io::Error),
    /// The peer answered with something that is not an acceptable HTTP/1.1 response.
    Protocol(String),
    TooLarge(&'static str),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(m) => write!(f, "controller URL: {m}"),
            Self::Connect(e) => write!(f, "connecting: {e}"),
            Self::Io(e) => write!(f, "i/o: {e}"),
            Self::Protocol(m) => write!(f, "bad response: {m}"),
            Self::TooLarge(what) => write!(f, "response {what} too large"),
        }
    }
}

impl std::error::Error for HttpError {}

impl Endpoint {
    /// Parses `http://host[:port][/path]` (a lower-case scheme, as configuration files
    /// write it; see [`normalize`] for typed input). `https://` is refused:
    /// Tapio has no TLS compiled in, and silently speaking plaintext to an https URL would
    /// be a downgrade.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        // Every byte goes into a request's head: a space or a control character there would
        // break the request line or add a header, so it is a config error, said at start.
        if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(HttpError::Url(format!("{url:?} holds a space or a control character")));
        }
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(HttpError::Url(
                "https:// is not supported: Tapio has no TLS support compiled in. Use http:// \
                 on an in-cluster or trusted network (or kubectl port-forward), or a local \
                 TLS-terminating proxy"
                    .into(),
            ));
        } else {
            return Err(HttpError::Url(format!("{url:?} must start with http://")));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::Url("missing host (and user info is not supported)".into()));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`: one host and an optional port text.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| HttpError::Url("unclosed [".into()))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(HttpError::Url("junk after ]".into())),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| HttpError::Url(format!("bad port {p:?}")))?,
            None => 80,
        };
        if host.is_empty() {
            return Err(HttpError::Url("missing host".into()));
        }
        let host = host.to_string();
        if path.contains(['?', '#']) {
            return Err(HttpError::Url("the URL must not carry a query or fragment".into()));
        }
        Ok(Self { authority: authority.to_string(), host, port, base_path: path.trim_end_matches('/').to_string() })
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, HttpError> {
        (self.host.as_str(), self.port).to_socket_addrs().map(|a| a.collect()).map_err(HttpError::Connect)
    }
}

/// A URL as a person typed it: surrounding blanks dropped and the scheme in lower case
/// (`HTTP://c/` → `http://c/`), for [`Endpoint::parse`].
pub fn normalize(url: &str) -> String {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => url.to_string(),
    }
}

/// `s` percent-encoded for a query value: everything but RFC 3986's unreserved characters
/// (an agent id may hold any character).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Timeouts and caps of one client.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// Longest wait for one read or write.
    pub io_timeout: Duration,
    /// Longest time for the whole request: connect, send, and the full response.
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    /// The `User-Agent` of every request (`tapio-agent/0.1.0`).
    pub user_agent: &'static str,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request: method, path (below the endpoint's base path), extra headers, body (sent
/// as JSON).
pub struct Request<'a> {
    pub method: &'static str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
}

/// A connection whose every read and write waits at most the io timeout and never past the
/// request's deadline.
struct Deadlined<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    io_timeout: Duration,
}

impl Deadlined<'_> {
    fn wait(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request deadline passed"));
        }
        Ok(left.min(self.io_timeout))
    }

    /// A socket timeout surfaces as EAGAIN: say which limit ran out.
    fn timed_out(&self, e: io::Error) -> io::Error {
        if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            e
        } else if Instant::now() >= self.deadline {
            io::Error::new(io::ErrorKind::TimedOut, "request deadline passed")
        } else {
            io::Error::new(io::ErrorKind::TimedOut, "no progress within the io timeout")
        }
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.wait()?))?;
        (&mut &*self.stream).read(buf).map_err(|e| self.timed_out(e))
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.wait()?))?;
        (&mut &*self.stream).write(buf).map_err(|e| self.timed_out(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a request finds its peer's addresses, given the request's deadline.
pub type Resolve = fn(&Endpoint, Instant) -> Result<Vec<SocketAddr>, HttpError>;

/// One request, its host name resolved by the system resolver in this thread (with the
/// resolver's own timeouts: fine for a person's command, who can interrupt it).
pub fn send(endpoint: &Endpoint, limits: &Limits, req: &Request<'_>) -> Result<Response, HttpError> {
    send_with(endpoint, limits, req, |endpoint, _| endpoint.addrs())
}

/// Name lookups that outlived the request that asked for them (their threads wait on the
/// resolver); at this many, a request fails at once instead of parking another thread.
const MAX_LOOKUPS_IN_FLIGHT: usize = 2;
static LOOKUPS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Resolves the endpoint's host no later than `deadline`: the lookup runs in a thread of its
/// own, which the request stops waiting for at the deadline. getaddrinfo cannot be
/// cancelled, and a resolver that drops queries holds it for its timeouts times its
/// attempts times every search domain (tens of seconds with Kubernetes' `ndots:5`), which a
/// daemon's request deadline must bound. An address literal is used as it is.
pub fn resolve_within(endpoint: &Endpoint, deadline: Instant) -> Result<Vec<SocketAddr>, HttpError> {
    resolve_in_thread(endpoint, deadline, |host, port| (host, port).to_socket_addrs().map(Iterator::collect))
}

/// A name lookup's answer.
type Lookup = io::Result<Vec<SocketAddr>>;

fn resolve_in_thread(
    endpoint: &Endpoint,
    deadline: Instant,
    lookup: fn(&str, u16) -> Lookup,
) -> Result<Vec<SocketAddr>, HttpError> {
    if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port)]);
    }
    if LOOKUPS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS_IN_FLIGHT {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(HttpError::Connect(io::Error::new(
            io::ErrorKind::TimedOut,
            "earlier lookups of the controller's name are still unanswered",
        )));
    }
    // A slot and a condition variable rather than a channel: the agent already carries
    // Mutex and Condvar code, and a channel of this type measured 12.5 KB more of it.
    let answer: Arc<(Mutex<Option<Lookup>>, Condvar)> = Arc::default();
    let (host, port, answered) = (endpoint.host.clone(), endpoint.port, Arc::clone(&answer));
    let spawned = std::thread::Builder::new().name("tapio-resolve".into()).spawn(move || {
        let addrs = lookup(&host, port);
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        // The request may have stopped waiting: then the answer is dropped with the slot.
        let (slot, ready) = &*answered;
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(addrs);
        ready.notify_one();
    });
    if let Err(e) = spawned {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(HttpError::Connect(e));
    }
    let (slot, ready) = &*answer;
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(addrs) = slot.take() {
            return addrs.map_err(HttpError::Connect);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "the name lookup passed the request deadline",
            )));
        }
        slot = ready.wait_timeout(slot, left).unwrap_or_else(PoisonError::into_inner).0;
    }
}

/// One request, its peer's addresses found by `resolve` (e.g. [`resolve_within`]).
pub fn send_with(
    endpoint: &Endpoint,
    limits: &Limits,
    req: &Request<'_>,
    resolve: Resolve,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + limits.request_timeout;
    let stream = connect(resolve(endpoint, deadline)?, limits, deadline)?;
    let mut head = format!(
        "{} {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nAccept: application/json\r\nConnection: close\r\n",
        req.method, endpoint.base_path, req.path, endpoint.authority, limits.user_agent,
    );
    for (k, v) in req.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    if let Some(body) = req.body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut conn = Deadlined { stream: &stream, deadline, io_timeout: limits.io_timeout };
    let written = conn.write_all(head.as_bytes()).and_then(|()| req.body.map_or(Ok(()), |body| conn.write_all(body)));
    if let Err(e) = written {
        // A server may answer before it has read the whole request and close (a 413 for a
        // declared length over its limit): that answer, already here, is the outcome.
        return read_response(BufReader::new(conn), limits.max_response_bytes).map_err(|_| HttpError::Io(e));
    }
    read_response(BufReader::new(conn), limits.max_response_bytes)
}

fn connect(addrs: Vec<SocketAddr>, limits: &Limits, deadline: Instant) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, limits.connect_timeout.min(left)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(HttpError::Connect(
        last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")),
    ))
}

/// Reads one line (up to CRLF) into `line`, counting it against the header budget.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>, budget: &mut usize) -> Result<(), HttpError> {
    line.clear();
    let n = r.by_ref().take(*budget as u64 + 1).read_until(b'\n', line).map_err(HttpError::Io)?;
    if n > *budget {
        return Err(HttpError::TooLarge("headers"));
    }
    *budget -= n;
    if n == 0 || !line.ends_with(b"\n") {
        return Err(HttpError::Protocol("connection closed inside the headers".into()));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(())
}

pub fn read_response(mut r: impl BufRead, max_body: usize) -> Result<Response, HttpError> {
    let mut budget = MAX_HEADER_BYTES;
    let mut line = Vec::new();
    loop {
        let resp = read_head(&mut r, &mut line, &mut budget)?;
        // An interim answer (100 Continue, 103 Early Hints) comes before the real one, in
        // the same header budget; 101 would switch protocols, which no request here asks.
        if (100..200).contains(&resp.status) && resp.status != 101 {
            continue;
        }
        return read_body(r, resp, max_body);
    }
}

/// A response's status line and headers.
fn read_head(r: &mut impl BufRead, line: &mut Vec<u8>, budget: &mut usize) -> Result<Response, HttpError> {
    read_line(r, line, budget)?;
    let status_line = String::from_utf8_lossy(line).into_owned();
    // Whatever the peer sent is quoted in errors (which reach the log) only in part.
    let quoted = || match status_line.char_indices().nth(QUOTED_STATUS_CHARS) {
        Some((cut, _)) => format!("status line {:?}…", &status_line[..cut]),
        None => format!("status line {status_line:?}"),
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Protocol(quoted()));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| HttpError::Protocol(quoted()))?;
    let mut headers = Vec::new();
    loop {
        read_line(r, line, budget)?;
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        let (k, v) = text.split_once(':').ok_or_else(|| HttpError::Protocol("header without ':'".into()))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Response { status, headers, body: Vec::new() })
}

/// The body that follows `resp`'s head.
fn read_body(mut r: impl BufRead, mut resp: Response, max_body: usize) -> Result<Response, HttpError> {
    let status = resp.status;
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.split(',').any(|coding| coding.trim_ascii().eq_ignore_ascii_case("chunked")));
    if chunked {
        resp.body = read_chunked(&mut r, max_body)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| HttpError::Protocol("bad Content-Length".into()))?;
        if len > max_body {
            return Err(HttpError::TooLarge("body"));
        }
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body).map_err(HttpError::Io)?;
    } else {
        // Close-delimited (Connection: close): read to EOF within the cap.
        r.by_ref().take(max_body as u64 + 1).read_to_end(&mut resp.body).map_err(HttpError::Io)?;
        if resp.body.len() > max_body {
            return Err(HttpError::TooLarge("body"));
        }
    }
    Ok(resp)
}

fn read_chunked(r: &mut impl BufRead, max_body: usize) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut budget = MAX_HEADER_BYTES;
        read_line(r, &mut line, &mut budget)?;
        let text = String::from_utf8_lossy(&line);
        let size_hex = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| HttpError::Protocol("bad chunk size".into()))?;
        if size == 0 {
            // Trailers, then the final empty line.
            loop {
                read_line(r, &mut line, &mut budget)?;
                if line.is_empty() {
                    return Ok(body);
                }
            }
        }
        // The size is the peer's: compared without an addition that a huge one could wrap.
        if size > max_body.saturating_sub(body.len()) {
            return Err(HttpError::TooLarge("body"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(HttpError::Io)?;
        read_line(r, &mut line, &mut budget)?;
        if !line.is_empty() {
            return Err(HttpError::Protocol("chunk not followed by CRLF".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn parses_http_urls_and_refuses_https() {
        let e = Endpoint::parse("http://controller.tapio.svc:7470").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.base_path.as_str()), ("controller.tapio.svc", 7470, ""));
        let e = Endpoint::parse("http://[::1]:9/base/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.base_path.as_str()), ("::1", 9, "/base"));
        assert_eq!(Endpoint::parse("http://10.0.0.1").unwrap().port, 80);
        let err = Endpoint::parse("https://controller:7470").unwrap_err().to_string();
        assert!(err.contains("https:// is not supported"), "{err}");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://user:pw@x").is_err());
        assert!(Endpoint::parse("http://x:notaport").is_err());
        assert!(Endpoint::parse("http://x/?q=1").is_err());
        // As people type them (`tapio status --controller`).
        let e = Endpoint::parse(&normalize(" HTTP://c/ ")).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.base_path.as_str(), e.authority.as_str()), ("c", 80, "", "c"));
        let err = Endpoint::parse(&normalize("HTTPS://c")).unwrap_err().to_string();
        assert!(err.contains("https:// is not supported"), "{err}");
        assert_eq!(normalize("c:7470"), "c:7470");
        assert!(Endpoint::parse("c:7470").is_err());
        assert!(Endpoint::parse("http://").is_err());
        // Nothing that would break a request's head, and a host there must be.
        for bad in ["http://c:7470/x\r\nX-Evil: 1", "http://c/a b", "http://c\t/", "http://c/\u{7f}", "http://:7470/"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percent_encodes_all_but_unreserved_characters() {
        assert_eq!(percent_encode("node-1.a_b~"), "node-1.a_b~");
        assert_eq!(percent_encode("a b/ü&"), "a%20b%2F%C3%BC%26");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(percent_encode(""), "");
    }

    /// What a peer reads of a request until `done` says it has enough.
    fn read_until(conn: &mut std::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !done(&got) {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The request as a peer receives it: method, prefixed path, Host, the caller's
    /// headers, a JSON body with its length.
    #[test]
    fn sends_one_request_with_the_callers_headers_and_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let got = read_until(&mut conn, |got| got.ends_with(b"{\"a\":1}"));
            conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}").unwrap();
            String::from_utf8(got).unwrap()
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}/base/")).unwrap();
        let limits = Limits {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 1024,
            user_agent: "t/1",
        };
        let req = Request { method: "POST", path: "/v1/x", headers: &[("X-Extra", "e")], body: Some(b"{\"a\":1}") };
        let resp = send(&endpoint, &limits, &req).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (201, &b"{}"[..]));
        let sent = peer.join().unwrap();
        assert!(sent.starts_with("POST /base/v1/x HTTP/1.1\r\n"), "{sent}");
        for header in [
            &format!("Host: 127.0.0.1:{port}\r\n")[..],
            "User-Agent: t/1\r\n",
            "X-Extra: e\r\n",
            "Content-Length: 7\r\n",
        ] {
            assert!(sent.contains(header), "{header:?} missing from {sent}");
        }
    }

    #[test]
    fn reads_content_length_chunked_and_close_delimited_bodies() {
        let r = read_response(Cursor::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"x\"\r\n\r\n{}"[..]), 100)
            .unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("etag")), (200, &b"{}"[..], Some("\"x\"")));
        let r = read_response(
            Cursor::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3;x=y\r\na\":\r\n1\r\n1\r\n0\r\n\r\n"[..]),
            100,
        )
        .unwrap();
        assert_eq!(r.body, b"{\"a\":1");
        let r = read_response(Cursor::new(&b"HTTP/1.0 200 OK\r\n\r\nabc"[..]), 100).unwrap();
        assert_eq!(r.body, b"abc");
        let r = read_response(Cursor::new(&b"HTTP/1.1 304 Not Modified\r\nETag: \"h\"\r\n\r\n"[..]), 100).unwrap();
        assert_eq!((r.status, r.body.len()), (304, 0));
    }

    #[test]
    fn interim_answers_are_passed_over_for_the_real_one() {
        let r = read_response(
            Cursor::new(
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                   HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"[..],
            ),
            100,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice(), r.header("link")), (200, &b"{}"[..], None));
        // Interim answers share the header budget: endless ones end in an error, not a loop.
        let endless = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEADER_BYTES);
        assert!(matches!(read_response(Cursor::new(&endless[..]), 100), Err(HttpError::TooLarge(_))));
    }

    #[test]
    fn caps_bodies_headers_and_rejects_garbage() {
        let big = read_response(Cursor::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n"[..]), 100);
        assert!(matches!(big, Err(HttpError::TooLarge("body"))));
        let chunks =
            read_response(Cursor::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n"[..]), 100);
        assert!(matches!(chunks, Err(HttpError::TooLarge("body"))));
        // A chunk size that would wrap the running total past zero is refused as too large.
        let wrapping = read_response(
            Cursor::new(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\nffffffffffffffff\r\n"[..]),
            100,
        );
        assert!(matches!(wrapping, Err(HttpError::TooLarge("body"))));
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert!(matches!(read_response(Cursor::new(huge), 100), Err(HttpError::TooLarge("headers"))));
        assert!(matches!(read_response(Cursor::new(&b"SSH-2.0-x\r\n"[..]), 100), Err(HttpError::Protocol(_))));
        assert!(matches!(
            read_response(Cursor::new(&b"HTTP/1.1 200 OK\r\nbroken"[..]), 100),
            Err(HttpError::Protocol(_))
        ));
        assert!(matches!(read_response(Cursor::new(&b"HTTP/1.1 999 X\r\n\r\n"[..]), 100), Err(HttpError::Protocol(_))));
    }

    #[test]
    fn a_garbage_status_line_is_quoted_only_in_part() {
        let mut garbage = vec![b'G'; 2007];
        garbage.extend_from_slice(b"\r\n\r\n");
        let err = read_response(Cursor::new(garbage), 100).unwrap_err().to_string();
        assert!(err.len() < 100 && err.contains('…'), "{} chars: {err}", err.len());
    }

    /// A server that refuses the declared length from the head alone and closes with the
    /// body unread (its kernel then resets the connection under the client's writes): its
    /// answer is the outcome.
    #[test]
    fn an_answer_sent_before_the_body_was_read_is_the_outcome_not_the_broken_write() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            read_until(&mut conn, |got| got.windows(4).any(|w| w == b"\r\n\r\n"));
            conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .unwrap();
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let limits = Limits {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            max_response_bytes: 1024,
            user_agent: "t/1",
        };
        // Far more than the socket buffers hold, so the write is still going when the
        // server closes.
        let body = vec![b'x'; 16 << 20];
        let req = Request { method: "POST", path: "/v1/events", headers: &[], body: Some(&body) };
        let resp = send(&endpoint, &limits, &req).unwrap();
        assert_eq!(resp.status, 413);
        peer.join().unwrap();
    }

    /// A peer that trickles its headers a byte at a time (each read well within the io
    /// timeout) is cut off at the request deadline, not after 16 KiB of trickle.
    #[test]
    fn a_trickling_peer_is_cut_off_at_the_request_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trickler = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let started = Instant::now();
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                if conn.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let limits = Limits {
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(700),
            max_response_bytes: 1024,
            user_agent: "t/1",
        };
        let started = Instant::now();
        let req = Request { method: "GET", path: "/", headers: &[], body: None };
        let err = send(&endpoint, &limits, &req).unwrap_err();
        let took = started.elapsed();
        assert!(err.to_string().contains("request deadline passed"), "{err}");
        // Generous: the bound is the deadline plus one scheduling delay, not the trickle.
        assert!(took < Duration::from_secs(5), "took {took:?}");
        trickler.join().unwrap();
    }

    /// A resolver that never answers holds a request no longer than its deadline, and
    /// parks at most MAX_LOOKUPS_IN_FLIGHT threads however many requests give up on it.
    #[test]
    fn a_lookup_is_bounded_by_the_request_deadline_and_stuck_lookups_are_bounded() {
        fn slow_lookup(_: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        }
        fn quick_lookup(_: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            Ok(vec![SocketAddr::from(([127, 0, 0, 2], port))])
        }
        let endpoint = Endpoint::parse("http://tapio-controller.tapio-system.svc:8080").unwrap();
        for _ in 0..MAX_LOOKUPS_IN_FLIGHT {
            let started = Instant::now();
            let deadline = started + Duration::from_millis(200);
            let err = resolve_in_thread(&endpoint, deadline, slow_lookup).unwrap_err();
            assert!(err.to_string().contains("passed the request deadline"), "{err}");
            // Generous: the bound is the deadline plus one scheduling delay, not the lookup.
            assert!(started.elapsed() < Duration::from_millis(1200), "took {:?}", started.elapsed());
        }
        assert_eq!(LOOKUPS_IN_FLIGHT.load(Ordering::Acquire), MAX_LOOKUPS_IN_FLIGHT);
        let err = resolve_in_thread(&endpoint, Instant::now() + Duration::from_secs(5), quick_lookup).unwrap_err();
        assert!(err.to_string().contains("still unanswered"), "{err}");
        // An address literal needs no lookup, stuck or not.
        let literal = Endpoint::parse("http://[::1]:9").unwrap();
        assert_eq!(resolve_within(&literal, Instant::now()).unwrap(), vec!["[::1]:9".parse().unwrap()]);
        // Once the stuck lookups end, lookups run again, and an answer in time is used.
        let waited = Instant::now();
        while LOOKUPS_IN_FLIGHT.load(Ordering::Acquire) > 0 {
            assert!(waited.elapsed() < Duration::from_secs(30), "the stuck lookups never ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        let addrs = resolve_in_thread(&endpoint, Instant::now() + Duration::from_secs(30), quick_lookup).unwrap();
        assert_eq!(addrs, vec!["127.0.0.2:8080".parse().unwrap()]);
        assert_eq!(LOOKUPS_IN_FLIGHT.load(Ordering::Acquire), 0);
    }

    #[test]
    fn redirects_are_returned_not_followed() {
        let r = read_response(
            Cursor::new(&b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n"[..]),
            100,
        )
        .unwrap();
        assert_eq!(r.status, 302);
    }
}
