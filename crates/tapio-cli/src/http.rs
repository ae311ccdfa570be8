//! A tiny HTTP/1.1 GET client over std's TcpStream, for `tapio status`.
//!
//! Plain HTTP only: an `https://` URL is refused rather than silently sent in clear.
//! Redirects are not followed. Connect, read and write are bounded by a timeout and the
//! response by a size cap.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response read (a status with 10,000 agents is about 6 MiB).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A parsed `http://host[:port][/prefix]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let url = url.trim();
        if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
            return Err(format!(
                "{url}: https:// is not supported: tapio speaks plain HTTP only (reach the controller \
                 in-cluster, through kubectl port-forward, or a local TLS-terminating proxy)"
            ));
        }
        let rest = match url.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
            _ => return Err(format!("{url}: expected http://host[:port]")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("{url}: credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("{url}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Url { host: host.to_string(), port, prefix: path.to_string() })
    }
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Location`, for the error message of a redirect.
    pub location: Option<String>,
}

/// GETs `url.prefix + path`.
pub fn get(url: &Url, path: &str, timeout: Duration) -> Result<Response, String> {
    let target = format!("{}:{}", url.host, url.port);
    let addrs = (url.host.as_str(), url.port).to_socket_addrs().map_err(|e| format!("cannot resolve {target}: {e}"))?;
    let mut last = format!("{target}: no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {target}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let io = |e: std::io::Error| format!("{target}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
    let request = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {host}:{}\r\nAccept: application/json\r\nUser-Agent: tapio/{}\r\n\
         Connection: close\r\n\r\n",
        url.prefix,
        url.port,
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES as u64 + 1).read_to_end(&mut raw).map_err(io)?;
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(format!("{target}: response larger than {MAX_RESPONSE_BYTES} bytes"));
    }
    parse(&raw).map_err(|e| format!("{target}: {e}"))
}

/// Parses a complete `Connection: close` response.
pub fn parse(raw: &[u8]) -> Result<Response, String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("not an HTTP response (no header end)")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "response headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut location = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("location") {
            location = Some(v.to_string());
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or("response body shorter than its Content-Length")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body, location })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunked body")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunked body")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(Url::parse("http://c:7470").unwrap(), Url { host: "c".into(), port: 7470, prefix: String::new() });
        assert_eq!(Url::parse("HTTP://c/").unwrap(), Url { host: "c".into(), port: 80, prefix: String::new() });
        assert_eq!(
            Url::parse("http://[::1]:9/api/").unwrap(),
            Url { host: "::1".into(), port: 9, prefix: "/api".into() }
        );
        assert!(Url::parse("https://c:7470").unwrap_err().contains("https:// is not supported"));
        assert!(Url::parse("c:7470").is_err());
        assert!(Url::parse("http://c:x").is_err());
        assert!(Url::parse("http://u:p@c").is_err());
    }

    #[test]
    fn responses() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1\r\n \r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"{} ");
        let r = parse(b"HTTP/1.1 301 Moved\r\nLocation: http://x/\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (301, Some("http://x/")));
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err());
    }
}
