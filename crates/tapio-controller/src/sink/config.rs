//! What each sink is configured with: the validated form `settings` builds from the flags,
//! owned here so that the sinks depend on nothing above them.

use std::path::PathBuf;
use std::time::Duration;

/// When the file sink makes records durable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every acknowledgement.
    Always,
    /// At most this long after a write.
    Interval(Duration),
}

/// The file sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// Active file.
    pub path: PathBuf,
    /// Rotation size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep_files: usize,
    /// Fsync policy.
    pub fsync: FsyncPolicy,
}

/// A secret read from a file: redacted in Debug output, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The NATS JetStream sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Subject prefix.
    pub subject_prefix: String,
    /// Stream to check (and create).
    pub stream: Option<String>,
    /// Create the stream when absent.
    pub create_stream: bool,
    /// Created stream's max age (zero: unlimited).
    pub stream_max_age: Duration,
    /// Created stream's byte limit (0: unlimited).
    pub stream_max_bytes: u64,
    /// Created stream's replicas.
    pub stream_replicas: usize,
    /// Created stream's duplicate window.
    pub duplicate_window: Duration,
    /// Credentials file.
    pub creds_file: Option<PathBuf>,
    /// Token.
    pub token: Option<Secret>,
    /// User and password.
    pub user_password: Option<(String, Secret)>,
    /// CA file.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// TLS required.
    pub tls_required: bool,
    /// Publishes awaiting PubAck at once.
    pub max_in_flight: usize,
    /// Longest wait for one PubAck.
    pub ack_timeout: Duration,
}

/// The OTLP/HTTP logs sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://host:port/path`.
    pub endpoint: String,
    /// Records per export request.
    pub max_batch_records: usize,
    /// Retries per export.
    pub max_retries: u32,
    /// Cap on one retry delay (and on Retry-After).
    pub max_retry_delay: Duration,
    /// Time one request may take.
    pub timeout: Duration,
    /// `--otlp-best-effort`: fed after the acknowledgement instead of before it (a 200 then
    /// does not wait for the collector; its overflow is dropped and counted).
    pub best_effort: bool,
}

/// Where accepted events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Standard output.
    Stdout,
    /// A rotated file.
    File(FileSinkConfig),
    /// NATS JetStream.
    Nats(Box<NatsConfig>),
    /// OTLP/HTTP logs.
    Otlp(OtlpConfig),
    /// Discard (tests and the load generator's in-process mode).
    Discard,
}

impl SinkTarget {
    /// The sink's name, also its metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Nats(_) => "nats",
            Self::Otlp(_) => "otlp",
            Self::Discard => "discard",
        }
    }

    /// Whether a 200 waits for this sink: file, nats, and otlp unless `--otlp-best-effort`.
    pub fn is_durable(&self) -> bool {
        match self {
            Self::File(_) | Self::Nats(_) => true,
            Self::Otlp(cfg) => !cfg.best_effort,
            Self::Stdout | Self::Discard => false,
        }
    }
}

/// NATS subject tokens: non-empty, no whitespace or wildcards.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>'))
}
