//! The v1 error envelope for the errors hyper answers itself.
//!
//! A request head hyper cannot read never reaches a handler: hyper writes 400 (not HTTP/1.1
//! it can parse), 414 (a target over its bound) or 431 (a head over the read buffer's
//! bound, `--max-header-bytes`) with an empty body, and closes the connection. The protocol
//! wants every error response as its envelope, and hyper offers no hook for these, so this
//! wrapper of a connection's I/O rewrites them on their way out. It recognizes them by their
//! shape: a whole response head with one of those statuses and `content-length: 0`, which
//! no handler writes (every handler error carries an envelope, see `api::error`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tapio_wire::{ErrorCode, ErrorEnvelope};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a connection's I/O; reads pass through, writes of hyper's own error responses are
/// rewritten (see the module documentation).
pub struct EnvelopeHyperErrors<T> {
    inner: T,
    counted: Box<dyn Fn(&ErrorCode) + Send + Sync>,
    rewrite: Option<Rewrite>,
}

/// A rewritten response on its way out.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's response it stands for: what hyper is told was written.
    replaces: usize,
}

impl<T> EnvelopeHyperErrors<T> {
    /// Wraps `inner`; `counted` is told the code of each response rewritten.
    pub fn new(inner: T, counted: impl Fn(&ErrorCode) + Send + Sync + 'static) -> Self {
        Self { inner, counted: Box::new(counted), rewrite: None }
    }
}

/// The envelope response that stands for `head` when `head` is a whole response head of
/// the kind hyper writes for a request head it could not read; `None` for anything else.
/// The status line and hyper's other headers are kept.
pub fn envelope_for(head: &[u8]) -> Option<(ErrorCode, Vec<u8>)> {
    let text = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let (code, message) = match status_line.strip_prefix("HTTP/1.1 ")?.get(..3)? {
        "400" => (ErrorCode::MalformedRequest, "the request is not HTTP/1.1 this server can read"),
        "414" => (ErrorCode::UriTooLong, "the request target is longer than this server reads"),
        "431" => (ErrorCode::HeadersTooLarge, "the request head is larger than this server reads"),
        _ => return None,
    };
    let mut empty_body = false;
    let mut kept = String::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
        } else if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        } else if !name.eq_ignore_ascii_case("connection") {
            kept.push_str(line);
            kept.push_str("\r\n");
        }
    }
    if !empty_body {
        return None;
    }
    let body = ErrorEnvelope::new(code.clone(), message).to_json();
    let mut response = format!(
        "{status_line}\r\n{kept}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    Some((code, response))
}

impl<T: AsyncWrite + Unpin> EnvelopeHyperErrors<T> {
    /// Writes the rewritten response to its end, then tells hyper its own was written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(r) = self.rewrite.as_mut() else { return Poll::Ready(Ok(0)) };
        while r.written < r.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => r.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let replaces = r.replaces;
        self.rewrite = None;
        Poll::Ready(Ok(replaces))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EnvelopeHyperErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EnvelopeHyperErrors<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none() {
            match envelope_for(buf) {
                Some((code, bytes)) => {
                    (this.counted)(&code);
                    this.rewrite = Some(Rewrite { bytes, written: 0, replaces: buf.len() });
                }
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.poll_rewrite(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's error response is its head alone: one buffer with data.
        let mut with_data = bufs.iter().filter(|b| !b.is_empty());
        match (with_data.next(), with_data.next()) {
            (Some(only), None) => self.poll_write(cx, only),
            _ if self.rewrite.is_some() => self.get_mut().poll_rewrite(cx),
            _ => Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one connection with hyper (as the server does: a bounded read buffer) behind
    /// the wrapper, sends `request`, and returns what came back and how many responses were
    /// rewritten.
    async fn exchange(request: &[u8]) -> (String, usize) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let rewritten = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&rewritten);
        let io = hyper_util::rt::TokioIo::new(EnvelopeHyperErrors::new(server, move |_: &ErrorCode| {
            count.fetch_add(1, Ordering::Relaxed);
        }));
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                "hello",
            ))))
        });
        let serving = tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().max_buf_size(8192).serve_connection(io, service).await;
        });
        let (mut read, mut write) = tokio::io::split(client);
        write.write_all(request).await.expect("request");
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), read.read_to_end(&mut answer))
            .await
            .expect("hyper closes the connection")
            .expect("read");
        let _ = serving.await;
        (String::from_utf8_lossy(&answer).into_owned(), rewritten.load(Ordering::Relaxed))
    }

    fn envelope_of(response: &str) -> serde_json::Value {
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
            .expect("content-length");
        assert_eq!(length.parse::<usize>().expect("a length"), body.len(), "{response}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{response}");
        serde_json::from_str(body).expect("the envelope")
    }

    #[tokio::test]
    async fn what_hyper_refuses_itself_is_answered_with_the_envelope() {
        let (response, rewritten) = exchange(b"\x16\x03\x01 this is not HTTP\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert_eq!(envelope_of(&response)["error"]["code"], "MALFORMED_REQUEST");
        assert_eq!(rewritten, 1);

        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(20 * 1024));
        let (response, rewritten) = exchange(big.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
        assert_eq!(envelope_of(&response)["error"]["code"], "HEADERS_TOO_LARGE");
        assert_eq!(rewritten, 1);
    }

    #[tokio::test]
    async fn a_handlers_response_passes_unchanged() {
        let (response, rewritten) = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\nhello"), "{response}");
        assert_eq!(rewritten, 0);
    }

    #[test]
    fn only_an_empty_error_head_of_hypers_statuses_is_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (code, bytes) = envelope_for(hyper_431).expect("rewritten");
        assert_eq!(code, ErrorCode::HeadersTooLarge);
        let text = String::from_utf8(bytes).expect("text");
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\ndate: x\r\n"), "{text}");
        assert_eq!(envelope_of(&text)["error"]["code"], "HEADERS_TOO_LARGE");
        let (code, _) = envelope_for(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").expect("rewritten");
        assert_eq!(code.http_status(), 414);
        for kept in [
            // A handler's envelope: it has a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            // Not a status hyper writes itself.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
            // Not a whole head, or not a head at all.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"HTTP/1.1 400\"}",
            b"",
        ] {
            assert!(envelope_for(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
