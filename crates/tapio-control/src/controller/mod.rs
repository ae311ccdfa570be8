//! Controller mode: the agent's outbound-only link to tapio-controller (tapio-wire/v1).
//!
//! A single thread says hello, pulls and applies the config (If-None-Match), heartbeats
//! the real loss counters, and sends evidence batches from the [`outbox::Outbox`]. It never
//! touches the ring-buffer drain: when the controller is slow or down, the outbox fills and
//! its overflow is counted, while observation and the local sinks go on.

pub mod apply;
pub mod client;
pub mod http;
// The outbox runs per record, so it is the per-event path's (a sink there).
pub use tapio_pipeline::sinks::outbox;
pub mod state;

use serde::Deserialize;
use std::path::PathBuf;

/// `[controller]` in the agent config. Present = controller mode.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// `http://host:port`: plaintext, for in-cluster, local or trusted networks only.
    pub url: String,
    /// Stable id of this agent (default: the node name).
    pub agent_id: Option<String>,
    /// File holding the bearer token: a shared token, or under Kubernetes the agent's
    /// projected ServiceAccount token (`/var/run/secrets/tapio/token` in the chart).
    /// Re-read when the file changes (the kubelet rotates projected tokens) and when the
    /// controller answers 401.
    pub token_file: Option<PathBuf>,
    /// Where the last valid controller config is kept across restarts.
    pub state_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// Longest wait for one read or write.
    pub io_timeout_ms: u64,
    /// Longest time for one whole request (connect, send, full response).
    pub request_timeout_ms: u64,
    pub heartbeat_interval_secs: u64,
    pub config_poll_interval_secs: u64,
    /// Evidence lines waiting for the controller; overflow is dropped and counted.
    pub queue_capacity: usize,
    /// Upper bound of one batch body (the controller's default limit is 256 KiB).
    pub max_batch_bytes: usize,
    /// Attempts of one batch before it is dropped and counted.
    pub max_retries: u32,
    pub max_backoff_ms: u64,
    /// Upper bound of a response body the agent will read.
    pub max_response_bytes: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            agent_id: None,
            token_file: None,
            state_file: None,
            connect_timeout_ms: 2_000,
            io_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            heartbeat_interval_secs: 10,
            config_poll_interval_secs: 30,
            queue_capacity: 10_000,
            max_batch_bytes: 200_000,
            max_retries: 5,
            max_backoff_ms: 30_000,
            max_response_bytes: 1 << 20,
        }
    }
}

/// Largest token file the agent reads (a projected ServiceAccount token is about 1 KiB):
/// the workspace's one token cap, the same the controller applies to its own token file.
pub const MAX_TOKEN_BYTES: u64 = tapio_wire::capped::caps::TOKEN_BYTES;

/// A bearer token. Its Debug output is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// What identifies one version of the token file: the kubelet replaces a projected token
/// by swapping a symlink (new inode); an edit in place changes its mtime or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileStamp {
    /// The stamp of the file `path` resolves to, or None when it cannot be read.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        Some(Self { dev: m.dev(), ino: m.ino(), mtime_ns, len: m.len() })
    }
}

impl Token {
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = tapio_wire::capped::read_capped_string(path, MAX_TOKEN_BYTES)
            .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(format!("token file {} must hold one non-empty line", path.display()));
        }
        Ok(Self(token.to_string()))
    }

    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_in_debug_output() {
        let dir = tapio_util::test_dirs::scratch("token");
        let path = dir.join("token");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let token = Token::read(&path).unwrap();
        assert_eq!(token.header_value(), "Bearer s3cr3t-value");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        std::fs::write(&path, "a\nb\n").unwrap();
        assert!(Token::read(&path).is_err());
        std::fs::write(&path, "x".repeat(MAX_TOKEN_BYTES as usize + 1)).unwrap();
        let err = Token::read(&path).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        assert!(Token::read(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endless_token_file_fails_fast() {
        let err = Token::read(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(err.contains("/dev/zero") && err.contains("larger than"), "{err}");
    }
}
