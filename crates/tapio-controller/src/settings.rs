//! Command-line flags and the validated [`Settings`] the server runs with.
//!
//! Secrets stay out of clap: the bearer token comes from `--auth-token-file` or the
//! `TAPIO_CONTROLLER_TOKEN` environment variable, read here, never shown by `--help` and
//! never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tapio_wire::capped::{caps, read_capped, read_capped_string};
use tapio_wire::CompiledConfig;

use crate::auth::BearerToken;
// The sinks own their settings (crate::sink::config); the flags below build them.
pub use crate::sink::config::{valid_subject, FileSinkConfig, FsyncPolicy, NatsConfig, OtlpConfig, Secret, SinkTarget};

/// Environment variable that may carry the bearer token itself.
pub const TOKEN_ENV: &str = "TAPIO_CONTROLLER_TOKEN";

/// tapio-controller: serves tapio-wire/v1 to Tapio agents.
///
/// Plaintext HTTP only: run it on an in-cluster, local or trusted network, or behind a
/// TLS-terminating proxy or service mesh.
#[derive(Debug, Parser)]
#[command(name = "tapio-controller", version)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7470")]
    pub listen: SocketAddr,
    /// Largest accepted request body; larger ones get 413 before parsing.
    #[arg(long, default_value_t = 256 * 1024)]
    pub body_limit_bytes: usize,
    /// Most registered agents; a hello beyond it gets 429 TOO_MANY_AGENTS.
    #[arg(long, default_value_t = 20_000)]
    pub max_agents: usize,
    /// Most agents tracked that sent batches without hello (default: --max-agents).
    /// Their batches are still accepted beyond it, and counted as untracked.
    #[arg(long)]
    pub max_unregistered_agents: Option<usize>,
    /// Heartbeat silence after which an agent counts as stale in metrics.
    #[arg(long, default_value_t = 30)]
    pub stale_after_secs: u64,
    /// Silence after which an agent is forgotten.
    #[arg(long, default_value_t = 600)]
    pub evict_after_secs: u64,
    /// File holding the bearer token agents must present (else env TAPIO_CONTROLLER_TOKEN;
    /// neither: no auth).
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// Where accepted events go; repeat for several sinks (`--sink file --sink nats`).
    /// `file`, `nats` and `otlp` (unless --otlp-best-effort) are durable: a batch is
    /// acknowledged only once they hold it.
    #[arg(long = "sink", value_enum, default_values_t = vec![SinkKind::Stdout])]
    pub sinks: Vec<SinkKind>,
    /// File for `--sink file`.
    #[arg(long)]
    pub sink_path: Option<PathBuf>,
    /// Size at which the sink file is rotated.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub sink_max_bytes: u64,
    /// Rotated sink files kept besides the active one.
    #[arg(long, default_value_t = 5)]
    pub sink_keep_files: usize,
    /// When the file sink fsyncs: `always` (before every acknowledgement; survives power
    /// loss) or `interval` (acknowledge once in the file, which survives a controller
    /// crash; fsync every --sink-fsync-interval-ms).
    #[arg(long, value_enum, default_value_t = FsyncKind::Always)]
    pub sink_fsync: FsyncKind,
    /// Fsync period for `--sink-fsync interval`.
    #[arg(long, default_value_t = 1_000)]
    pub sink_fsync_interval_ms: u64,
    /// Bytes of records that may wait for each sink. Beyond it a durable sink refuses the
    /// batch (503, the agent retries) and a best-effort sink drops and counts the records.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub sink_queue_bytes: usize,
    /// Longest a batch waits for the durable sinks before it is refused with 503; below
    /// the agents' default 5 s I/O timeout, so they get an answer rather than give up.
    #[arg(long, default_value_t = 4)]
    pub sink_ack_timeout_secs: u64,
    /// NATS server URL(s) for `--sink nats`, comma-separated (`nats://host:4222`, `tls://…`).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Subject prefix: records go to `<prefix>.<observer>.<type>`.
    #[arg(long, default_value = "tapio.evidence")]
    pub nats_subject_prefix: String,
    /// JetStream stream that must capture the subjects; checked at start (created too
    /// with --nats-create-stream). Without it, publishing still needs a stream to PubAck.
    #[arg(long)]
    pub nats_stream: Option<String>,
    /// Create the stream (subjects `<prefix>.>`) when it does not exist.
    #[arg(long)]
    pub nats_create_stream: bool,
    /// Created stream: oldest message age kept, seconds (0: no limit).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub nats_stream_max_age_secs: u64,
    /// Created stream: most bytes kept (0: no limit); the oldest are removed beyond it.
    #[arg(long, default_value_t = 0)]
    pub nats_stream_max_bytes: u64,
    /// Created stream: replicas (clustered JetStream).
    #[arg(long, default_value_t = 1)]
    pub nats_stream_replicas: usize,
    /// Created stream: window in which a repeated `Nats-Msg-Id` is dropped by the server.
    #[arg(long, default_value_t = 120)]
    pub nats_duplicate_window_secs: u64,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long)]
    pub nats_creds_file: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long)]
    pub nats_token_file: Option<PathBuf>,
    /// NATS user (with --nats-password-file).
    #[arg(long)]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long)]
    pub nats_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) to verify the NATS server with.
    #[arg(long)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --nats-tls-key.
    #[arg(long)]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long)]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse to talk to the NATS server without TLS.
    #[arg(long)]
    pub nats_tls_required: bool,
    /// Most publishes awaiting their PubAck at once.
    #[arg(long, default_value_t = 4_096)]
    pub nats_max_in_flight: usize,
    /// OTLP/HTTP logs endpoint for `--sink otlp` (`http://collector:4318/v1/logs`).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Most records in one OTLP export request.
    #[arg(long, default_value_t = 2_048)]
    pub otlp_max_batch_records: usize,
    /// Retries of one export after 429/502/503/504 or a connection failure.
    #[arg(long, default_value_t = 5)]
    pub otlp_max_retries: u32,
    /// Longest wait between retries, also the cap on a `Retry-After`.
    #[arg(long, default_value_t = 30)]
    pub otlp_max_retry_delay_secs: u64,
    /// Time one export request may take.
    #[arg(long, default_value_t = 10)]
    pub otlp_timeout_secs: u64,
    /// Make `--sink otlp` best effort: fed after the 200 (which then does not wait for the
    /// collector's 2xx), its overflow and failed exports dropped and counted, and never
    /// failing readiness.
    #[arg(long)]
    pub otlp_best_effort: bool,
    /// Evidence Profile to compile and serve (YAML `.yaml`/`.yml` or JSON `.json`); reloaded
    /// on SIGHUP and when the file changes. Default: the production-default profile.
    #[arg(long, conflicts_with = "config_file")]
    pub profile: Option<PathBuf>,
    /// How often the profile file is checked for changes.
    #[arg(long, default_value_t = 2)]
    pub profile_poll_secs: u64,
    /// JSON CompiledConfig to serve as is (for tests and tools; operators use --profile).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Batch send interval handed to agents.
    #[arg(long, default_value_t = 5_000)]
    pub send_interval_ms: u64,
    /// Most events per batch, handed to agents and enforced.
    #[arg(long, default_value_t = 256)]
    pub max_batch_events: u64,
    /// Most concurrently open client connections. At the bound, the connection that has
    /// waited longest without a request is closed to make room; when every connection is
    /// busy with a request, further clients wait in the backlog.
    #[arg(long, default_value_t = 1_024)]
    pub max_connections: usize,
    /// Most concurrently open connections from one IP address (same eviction rule; a
    /// further one with nothing to evict is closed at once). Raise it when many agents
    /// reach the controller through one address (a NAT or proxy).
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_peer: usize,
    /// Largest request head (request line and headers) a client may send; larger gets
    /// 431. Also the bound of each connection's read buffer. At least 8192.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Time a client has to send request headers (also the keep-alive idle limit).
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Time a request (body read and handling) may take.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Time a blocked response write may take before the connection is dropped.
    #[arg(long, default_value_t = 30)]
    pub write_timeout_secs: u64,
    /// Time open connections get to finish on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Controller id reported to agents (default: derived from host name and start time).
    #[arg(long)]
    pub controller_id: Option<String>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// How agents authenticate: `token` (one shared bearer token; the default when one is
    /// given), `kubernetes` (each agent's projected ServiceAccount token, checked with a
    /// TokenReview and bound to its node) or `none` (the default without a token).
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// With `--auth kubernetes`: the agents' ServiceAccount as `namespace:name`.
    #[arg(long)]
    pub agent_service_account: Option<String>,
    /// With `--auth kubernetes`: the audience agent tokens must carry.
    #[arg(long, default_value = "tapio")]
    pub token_audience: String,
    /// With `--auth kubernetes`: longest time an accepted token is trusted without a new
    /// TokenReview (never past the token's own expiry).
    #[arg(long, default_value_t = 300)]
    pub token_cache_secs: u64,
    /// With `--auth kubernetes`: most tokens cached.
    #[arg(long, default_value_t = 20_000)]
    pub token_cache_entries: usize,
    /// Watch pods and add their names (`k8s.pod.name`, …) to records.
    #[arg(long)]
    pub k8s_pods: bool,
    /// Kubernetes API server URL used as is, without credentials (`kubectl proxy`, tests).
    /// Default: in-cluster config, else the kubeconfig.
    #[arg(long)]
    pub k8s_api_server: Option<String>,
    /// Most pods kept (live and recently deleted); at the bound a new pod takes the
    /// longest-deleted one's place, and with none deleted it is counted, not stored.
    #[arg(long, default_value_t = 200_000)]
    pub k8s_max_pods: usize,
    /// How long a deleted pod's names stay available for late evidence.
    #[arg(long, default_value_t = 300)]
    pub k8s_deleted_pod_grace_secs: u64,
    /// Most cached owner lookups (ReplicaSet → Deployment, Job → CronJob).
    #[arg(long, default_value_t = 10_000)]
    pub k8s_owner_cache_entries: usize,
}

/// Agent authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No authentication.
    None,
    /// One shared bearer token.
    Token,
    /// Projected ServiceAccount tokens checked with TokenReview.
    Kubernetes,
}

/// The pod watch, when on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWatchSettings {
    /// Store bound.
    pub max_pods: usize,
    /// Grace period of deleted pods.
    pub deleted_grace: Duration,
    /// Owner lookup cache bound.
    pub owner_cache_entries: usize,
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events.
    Info,
    /// Per-connection detail.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => Self::Error,
            LogLevel::Warn => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// Event sink kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// JSON lines on standard output (best effort).
    Stdout,
    /// JSON lines in a size-rotated file (durable).
    File,
    /// NATS JetStream, one message per record (durable: PubAck).
    Nats,
    /// OTLP/HTTP logs, protobuf + gzip (durable: the collector's 2xx; retried;
    /// `--otlp-best-effort` makes it best effort).
    Otlp,
}

/// `--sink-fsync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncKind {
    /// fdatasync before every acknowledgement (one per group of batches).
    Always,
    /// Acknowledge once written to the file; fdatasync periodically.
    Interval,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Body limit.
    pub body_limit_bytes: usize,
    /// Registered agent bound.
    pub max_agents: usize,
    /// Unregistered agent bound.
    pub max_unregistered_agents: usize,
    /// Stale threshold.
    pub stale_after: Duration,
    /// Eviction threshold.
    pub evict_after: Duration,
    /// Bearer token, if auth is on.
    pub auth_token: Option<BearerToken>,
    /// The file it was read from, re-read when it changes (a rotated Secret).
    pub auth_token_file: Option<PathBuf>,
    /// Sinks, each fed every accepted batch.
    pub sinks: Vec<SinkTarget>,
    /// Byte budget of each sink's queue.
    pub sink_queue_bytes: usize,
    /// Longest a batch waits for the durable sinks.
    pub sink_ack_timeout: Duration,
    /// Config served to agents (at start; a profile may replace it later).
    pub config: CompiledConfig,
    /// The profile file `config` was compiled from, watched for changes.
    pub profile: Option<PathBuf>,
    /// How often the profile file is checked.
    pub profile_poll: Duration,
    /// Batch interval for agents.
    pub send_interval_ms: u64,
    /// Batch size bound.
    pub max_batch_events: u64,
    /// Connection bound.
    pub max_connections: usize,
    /// Connection bound per peer address.
    pub max_connections_per_peer: usize,
    /// Request head and read buffer bound.
    pub max_header_bytes: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Response write timeout.
    pub write_timeout: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Controller id override.
    pub controller_id: Option<String>,
    /// Kubernetes API server URL override (else in-cluster config or kubeconfig).
    pub k8s_api_server: Option<String>,
    /// Pod watch and enrichment, if on.
    pub pod_watch: Option<PodWatchSettings>,
    /// `--auth kubernetes`, if on.
    pub kubernetes_auth: Option<crate::k8s::tokenreview::ReviewSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7470)),
            body_limit_bytes: 256 * 1024,
            max_agents: 20_000,
            max_unregistered_agents: 20_000,
            stale_after: Duration::from_secs(30),
            evict_after: Duration::from_secs(600),
            auth_token: None,
            auth_token_file: None,
            sinks: vec![SinkTarget::Stdout],
            sink_queue_bytes: 64 * 1024 * 1024,
            sink_ack_timeout: Duration::from_secs(4),
            config: CompiledConfig::default(),
            profile: None,
            profile_poll: Duration::from_secs(2),
            send_interval_ms: 5_000,
            max_batch_events: 256,
            max_connections: 1_024,
            max_connections_per_peer: 128,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            controller_id: None,
            k8s_api_server: None,
            pod_watch: None,
            kubernetes_auth: None,
        }
    }
}

/// Why the flags could not become [`Settings`]. Messages name flags and files only.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A flag value is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The profile cannot be read or is not a valid Evidence Profile.
    #[error("{0}")]
    Profile(#[from] crate::profile::LoadError),
    /// The config file is not a CompiledConfig.
    #[error("config file {path} is not a CompiledConfig: {source}")]
    Config {
        /// Its path.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl Cli {
    /// Validates the flags and reads the token and config files.
    /// `env_token` is the value of [`TOKEN_ENV`], passed in so tests need no process env.
    pub fn into_settings(self, env_token: Option<String>) -> Result<Settings, SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        if self.body_limit_bytes == 0 {
            return invalid("--body-limit-bytes must be at least 1");
        }
        if self.max_agents == 0 {
            return invalid("--max-agents must be at least 1");
        }
        if self.max_batch_events == 0 {
            return invalid("--max-batch-events must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("--max-connections must be at least 1");
        }
        if self.max_connections_per_peer == 0 {
            return invalid("--max-connections-per-peer must be at least 1");
        }
        // hyper refuses (panics on) a read buffer below 8 KiB.
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return invalid("--max-header-bytes must be in 8192..=1048576");
        }
        if self.evict_after_secs == 0 || self.stale_after_secs == 0 {
            return invalid("--stale-after-secs and --evict-after-secs must be at least 1");
        }
        if self.header_read_timeout_secs == 0 || self.request_timeout_secs == 0 || self.write_timeout_secs == 0 {
            return invalid("timeouts must be at least 1 second");
        }

        let token_given = self.auth_token_file.is_some() || env_token.is_some();
        let mode = self.auth.unwrap_or(if token_given { AuthMode::Token } else { AuthMode::None });
        if mode == AuthMode::Token && !token_given {
            return invalid("--auth token needs --auth-token-file or TAPIO_CONTROLLER_TOKEN");
        }
        if mode != AuthMode::Token && token_given {
            return invalid("a shared token (--auth-token-file or TAPIO_CONTROLLER_TOKEN) is only for --auth token");
        }
        let kubernetes_auth = if mode == AuthMode::Kubernetes {
            let Some(sa) = self.agent_service_account.clone() else {
                return invalid("--auth kubernetes needs --agent-service-account NAMESPACE:NAME");
            };
            let valid_part = |s: &str| !s.is_empty() && s.len() <= 253 && !s.contains([':', ' ']);
            if !sa.split_once(':').is_some_and(|(ns, name)| valid_part(ns) && valid_part(name)) {
                return invalid("--agent-service-account must be NAMESPACE:NAME");
            }
            if self.token_audience.trim().is_empty() {
                return invalid("--token-audience must not be empty");
            }
            if self.token_cache_entries == 0 || self.token_cache_secs > 3_600 {
                return invalid("--token-cache-entries must be at least 1 and --token-cache-secs at most 3600");
            }
            Some(crate::k8s::tokenreview::ReviewSettings {
                audience: self.token_audience.clone(),
                service_account: sa,
                cache_ttl: Duration::from_secs(self.token_cache_secs),
                cache_entries: self.token_cache_entries,
            })
        } else {
            if self.agent_service_account.is_some() {
                return invalid("--agent-service-account is only for --auth kubernetes");
            }
            None
        };
        let pod_watch = if self.k8s_pods {
            if self.k8s_max_pods == 0 || self.k8s_owner_cache_entries == 0 {
                return invalid("--k8s-max-pods and --k8s-owner-cache-entries must be at least 1");
            }
            Some(PodWatchSettings {
                max_pods: self.k8s_max_pods,
                deleted_grace: Duration::from_secs(self.k8s_deleted_pod_grace_secs),
                owner_cache_entries: self.k8s_owner_cache_entries,
            })
        } else {
            None
        };
        if let Some(url) = &self.k8s_api_server {
            if url.parse::<axum::http::Uri>().ok().and_then(|u| u.host().map(|_| ())).is_none() {
                return invalid("--k8s-api-server must be a URL such as http://127.0.0.1:8001");
            }
        }

        let auth_token = match (&self.auth_token_file, env_token) {
            (Some(path), _) => {
                let text = read_capped_string(path, caps::TOKEN_BYTES).map_err(|source| SettingsError::Read {
                    what: "token file",
                    path: path.clone(),
                    source,
                })?;
                Some(token_from(&text, "--auth-token-file")?)
            }
            (None, Some(text)) => Some(token_from(&text, TOKEN_ENV)?),
            (None, None) => None,
        };

        let sinks = self.sink_targets()?;

        if self.profile_poll_secs == 0 || self.profile_poll_secs > 3_600 {
            return invalid("--profile-poll-secs must be in 1..=3600");
        }
        let config = match (&self.profile, &self.config_file) {
            (Some(path), _) => crate::profile::load(path)?.config,
            (None, None) => CompiledConfig::default(),
            (None, Some(path)) => {
                let bytes = read_capped(path, caps::CONFIG_BYTES).map_err(|source| SettingsError::Read {
                    what: "config file",
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_slice(&bytes).map_err(|source| SettingsError::Config { path: path.clone(), source })?
            }
        };

        Ok(Settings {
            listen: self.listen,
            body_limit_bytes: self.body_limit_bytes,
            max_agents: self.max_agents,
            max_unregistered_agents: self.max_unregistered_agents.unwrap_or(self.max_agents),
            stale_after: Duration::from_secs(self.stale_after_secs),
            evict_after: Duration::from_secs(self.evict_after_secs),
            auth_token,
            auth_token_file: self.auth_token_file,
            sinks,
            sink_queue_bytes: self.sink_queue_bytes,
            sink_ack_timeout: Duration::from_secs(self.sink_ack_timeout_secs),
            config,
            profile: self.profile,
            profile_poll: Duration::from_secs(self.profile_poll_secs),
            send_interval_ms: self.send_interval_ms,
            max_batch_events: self.max_batch_events,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            controller_id: self.controller_id,
            k8s_api_server: self.k8s_api_server,
            pod_watch,
            kubernetes_auth,
        })
    }
}

/// The most encoding adds to one record: `node` (an identity, at most 253 bytes) and
/// `timestamp` when the agent left them out, and the `k8s` names (namespace, pod, uid,
/// node, container and owners: Kubernetes names of at most 253 bytes under keys of at most
/// 32), with their JSON punctuation: about 2.9 KiB, rounded up.
const MAX_RECORD_GROWTH_BYTES: usize = 4096;

impl Cli {
    /// Validates the sink flags into targets; each kind may appear once.
    fn sink_targets(&self) -> Result<Vec<SinkTarget>, SettingsError> {
        let invalid = |m: String| Err(SettingsError::Invalid(m));
        if self.sink_ack_timeout_secs == 0 || self.sink_ack_timeout_secs > 300 {
            return invalid("--sink-ack-timeout-secs must be in 1..=300".into());
        }
        // A sink takes a batch only if its queue has room for all of it, so a budget below
        // the largest encoded batch would refuse such a batch on every retry.
        let largest_batch = self.body_limit_bytes.saturating_add(
            usize::try_from(self.max_batch_events).unwrap_or(usize::MAX).saturating_mul(MAX_RECORD_GROWTH_BYTES),
        );
        if self.sink_queue_bytes < largest_batch {
            return invalid(format!(
                "--sink-queue-bytes {} is below the largest batch once encoded ({largest_batch} B: --body-limit-bytes \
                 plus {MAX_RECORD_GROWTH_BYTES} B per record for --max-batch-events records): raise it or lower those",
                self.sink_queue_bytes
            ));
        }
        if self.otlp_best_effort && !self.sinks.contains(&SinkKind::Otlp) {
            return invalid("--otlp-best-effort is only for --sink otlp".into());
        }
        let mut targets = Vec::new();
        for (i, kind) in self.sinks.iter().enumerate() {
            if self.sinks[..i].contains(kind) {
                return invalid(format!("--sink {kind:?} is given twice").to_lowercase());
            }
            targets.push(match kind {
                SinkKind::Stdout => SinkTarget::Stdout,
                SinkKind::File => {
                    let Some(path) = self.sink_path.clone() else {
                        return invalid("--sink file needs --sink-path".into());
                    };
                    if self.sink_max_bytes < 4096 {
                        return invalid("--sink-max-bytes must be at least 4096".into());
                    }
                    let fsync = match self.sink_fsync {
                        FsyncKind::Always => FsyncPolicy::Always,
                        FsyncKind::Interval => {
                            if self.sink_fsync_interval_ms == 0 || self.sink_fsync_interval_ms > 60_000 {
                                return invalid("--sink-fsync-interval-ms must be in 1..=60000".into());
                            }
                            FsyncPolicy::Interval(Duration::from_millis(self.sink_fsync_interval_ms))
                        }
                    };
                    SinkTarget::File(FileSinkConfig {
                        path,
                        max_bytes: self.sink_max_bytes,
                        keep_files: self.sink_keep_files,
                        fsync,
                    })
                }
                SinkKind::Nats => SinkTarget::Nats(Box::new(self.nats_config()?)),
                SinkKind::Otlp => SinkTarget::Otlp(self.otlp_config()?),
            });
        }
        Ok(targets)
    }

    fn nats_config(&self) -> Result<NatsConfig, SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        if self.nats_url.trim().is_empty() {
            return invalid("--nats-url is empty");
        }
        if self.nats_url.split(',').any(url_has_userinfo) {
            // Secrets in a URL end up in the process's command line, the pod spec and any
            // log line that names the server: they go in files.
            return invalid(
                "--nats-url must not carry credentials (user:password@ or token@): use --nats-creds-file, \
                 --nats-token-file or --nats-user with --nats-password-file",
            );
        }
        if !valid_subject(&self.nats_subject_prefix) {
            return invalid("--nats-subject-prefix must be dot-separated tokens without spaces, '*' or '>'");
        }
        if self.nats_max_in_flight == 0 || self.nats_max_in_flight > 65_536 {
            return invalid("--nats-max-in-flight must be in 1..=65536");
        }
        if self.nats_stream.as_deref().is_some_and(|s| s.is_empty() || s.contains(['.', '*', '>', ' ', '/', '\\'])) {
            return invalid("--nats-stream must be a name without '.', '*', '>', '/', '\\' or spaces");
        }
        if self.nats_create_stream && self.nats_stream.is_none() {
            return invalid("--nats-create-stream needs --nats-stream");
        }
        if self.nats_stream_replicas == 0 || self.nats_stream_replicas > 5 {
            return invalid("--nats-stream-replicas must be in 1..=5");
        }
        if self.nats_duplicate_window_secs == 0 {
            return invalid("--nats-duplicate-window-secs must be at least 1");
        }
        let token = match &self.nats_token_file {
            Some(p) => Some(Secret(read_secret(p, "--nats-token-file")?)),
            None => None,
        };
        let user_password = match (&self.nats_user, &self.nats_password_file) {
            (Some(u), Some(p)) => Some((u.clone(), Secret(read_secret(p, "--nats-password-file")?))),
            (None, None) => None,
            _ => return invalid("--nats-user and --nats-password-file go together"),
        };
        let tls_client = match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return invalid("--nats-tls-cert and --nats-tls-key go together"),
        };
        if [self.nats_creds_file.is_some(), token.is_some(), user_password.is_some()].iter().filter(|b| **b).count() > 1
        {
            return invalid("give one of --nats-creds-file, --nats-token-file, --nats-user");
        }
        Ok(NatsConfig {
            url: self.nats_url.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            stream: self.nats_stream.clone(),
            create_stream: self.nats_create_stream,
            stream_max_age: Duration::from_secs(self.nats_stream_max_age_secs),
            stream_max_bytes: self.nats_stream_max_bytes,
            stream_replicas: self.nats_stream_replicas,
            duplicate_window: Duration::from_secs(self.nats_duplicate_window_secs),
            creds_file: self.nats_creds_file.clone(),
            token,
            user_password,
            tls_ca: self.nats_tls_ca.clone(),
            tls_client,
            tls_required: self.nats_tls_required,
            max_in_flight: self.nats_max_in_flight,
            ack_timeout: Duration::from_secs(self.sink_ack_timeout_secs),
        })
    }

    fn otlp_config(&self) -> Result<OtlpConfig, SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_string()));
        let Some(endpoint) = self.otlp_endpoint.clone() else {
            return invalid("--sink otlp needs --otlp-endpoint");
        };
        if crate::sink::otlp::Endpoint::parse(&endpoint).is_none() {
            return invalid("--otlp-endpoint must be http://host:port/path (plain HTTP; put TLS in a local collector)");
        }
        if self.otlp_max_batch_records == 0 || self.otlp_max_batch_records > 65_536 {
            return invalid("--otlp-max-batch-records must be in 1..=65536");
        }
        if self.otlp_max_retries > 100 {
            return invalid("--otlp-max-retries must be at most 100");
        }
        if self.otlp_timeout_secs == 0 || self.otlp_max_retry_delay_secs == 0 {
            return invalid("--otlp-timeout-secs and --otlp-max-retry-delay-secs must be at least 1");
        }
        Ok(OtlpConfig {
            endpoint,
            max_batch_records: self.otlp_max_batch_records,
            max_retries: self.otlp_max_retries,
            max_retry_delay: Duration::from_secs(self.otlp_max_retry_delay_secs),
            timeout: Duration::from_secs(self.otlp_timeout_secs),
            best_effort: self.otlp_best_effort,
        })
    }
}

/// Reads a secret file (at most 64 KiB), trimmed; empty is an error.
fn read_secret(path: &std::path::Path, flag: &str) -> Result<String, SettingsError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .map_err(|source| SettingsError::Read { what: "secret file", path: path.to_path_buf(), source })?;
    let t = text.trim();
    if t.is_empty() {
        return Err(SettingsError::Invalid(format!("{flag} holds an empty secret")));
    }
    Ok(t.to_string())
}

/// A token is the text with surrounding whitespace (a trailing newline) removed.
pub fn token_from(text: &str, source: &str) -> Result<BearerToken, SettingsError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(SettingsError::Invalid(format!("{source} holds an empty token")));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SettingsError::Invalid(format!("{source} holds a token with whitespace or control characters")));
    }
    Ok(BearerToken::new(token.to_string()))
}

/// Whether a URL's authority (`scheme://` up to the first `/`) names a user or token.
fn url_has_userinfo(url: &str) -> bool {
    let rest = url.trim().split_once("://").map_or(url.trim(), |(_, rest)| rest);
    rest.split('/').next().is_some_and(|authority| authority.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["tapio-controller"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = cli(&[]).into_settings(None).unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:7470");
        assert_eq!(s.body_limit_bytes, 262_144);
        assert!(s.auth_token.is_none());
        assert_eq!(s.sinks, vec![SinkTarget::Stdout]);
        assert_eq!(s.max_unregistered_agents, s.max_agents);
    }

    #[test]
    fn token_from_env_is_trimmed_and_redacted() {
        let s = cli(&[]).into_settings(Some("s3cret\n".into())).unwrap();
        let token = s.auth_token.unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(cli(&[]).into_settings(Some("  ".into())).is_err());
    }

    #[test]
    fn file_sink_needs_a_path() {
        assert!(cli(&["--sink", "file"]).into_settings(None).is_err());
        let s = cli(&["--sink", "file", "--sink-path", "/tmp/x.jsonl"]).into_settings(None).unwrap();
        assert!(
            matches!(
                &s.sinks[..],
                [SinkTarget::File(FileSinkConfig { keep_files: 5, fsync: FsyncPolicy::Always, .. })]
            ),
            "{:?}",
            s.sinks
        );
    }

    #[test]
    fn sinks_repeat_but_each_kind_once_and_each_checks_its_flags() {
        let s = cli(&["--sink", "file", "--sink-path", "/tmp/x", "--sink", "stdout", "--sink-fsync", "interval"])
            .into_settings(None)
            .unwrap();
        assert_eq!(s.sinks.iter().map(SinkTarget::name).collect::<Vec<_>>(), ["file", "stdout"]);
        assert!(matches!(&s.sinks[0], SinkTarget::File(FileSinkConfig { fsync: FsyncPolicy::Interval(_), .. })));
        let twice = cli(&["--sink", "stdout", "--sink", "stdout"]).into_settings(None).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let no_endpoint = cli(&["--sink", "otlp"]).into_settings(None).unwrap_err();
        assert!(no_endpoint.to_string().contains("--otlp-endpoint"), "{no_endpoint}");
        let https = cli(&["--sink", "otlp", "--otlp-endpoint", "https://c:4318/v1/logs"]).into_settings(None);
        assert!(https.is_err());
        let wild = cli(&["--sink", "nats", "--nats-subject-prefix", "tapio.*"]).into_settings(None);
        assert!(wild.is_err());
        let small_queue = cli(&["--sink-queue-bytes", "1048576"]).into_settings(None).unwrap_err();
        assert!(small_queue.to_string().contains("below the largest batch once encoded (1310720 B"), "{small_queue}");
        let fits = cli(&["--sink-queue-bytes", "1048576", "--max-batch-events", "64"]).into_settings(None);
        assert!(fits.is_ok(), "256 KiB + 64 x 4 KiB fits in 1 MiB");
        let half = cli(&["--sink", "nats", "--nats-user", "u"]).into_settings(None);
        assert!(half.is_err());
        for url in ["nats://u:s3cret@n:4222", "n1:4222,tls://t0ken@n2:4222", "s3cret@n:4222"] {
            let secret_in_url = cli(&["--sink", "nats", "--nats-url", url]).into_settings(None).unwrap_err();
            assert!(secret_in_url.to_string().contains("must not carry credentials"), "{url}: {secret_in_url}");
            assert!(!secret_in_url.to_string().contains("s3cret") && !secret_in_url.to_string().contains("t0ken"));
        }
        let plain = cli(&["--sink", "nats", "--nats-url", "nats://n1:4222, tls://n2:4222/x@y"]).into_settings(None);
        assert!(plain.is_ok(), "{plain:?}");
    }

    #[test]
    fn otlp_is_durable_unless_opted_out_for_an_otlp_sink_only() {
        let endpoint = "http://127.0.0.1:4318/v1/logs";
        let s = cli(&["--sink", "nats", "--sink", "otlp", "--otlp-endpoint", endpoint]).into_settings(None).unwrap();
        assert!(s.sinks[0].is_durable() && s.sinks[1].is_durable(), "{:?}", s.sinks);
        assert!(matches!(&s.sinks[1], SinkTarget::Otlp(OtlpConfig { best_effort: false, .. })));
        let s =
            cli(&["--sink", "otlp", "--otlp-endpoint", endpoint, "--otlp-best-effort"]).into_settings(None).unwrap();
        assert!(matches!(&s.sinks[..], [SinkTarget::Otlp(OtlpConfig { best_effort: true, .. })]), "{:?}", s.sinks);
        assert!(!s.sinks[0].is_durable());
        let stray = cli(&["--sink", "file", "--sink-path", "/tmp/x", "--otlp-best-effort"]).into_settings(None);
        assert!(stray.unwrap_err().to_string().contains("--otlp-best-effort is only for --sink otlp"));
        assert!(Cli::try_parse_from(["c", "--otlp-best-effort=yes"]).is_err(), "a switch, not a value");
    }

    #[test]
    fn a_profile_is_compiled_at_start_and_a_bad_one_names_the_field() {
        let dir = std::env::temp_dir().join(format!("tapio-settings-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("p.yaml");
        std::fs::write(
            &good,
            "apiVersion: tapio.dev/v1alpha1\nkind: EvidenceProfile\nmetadata:\n  name: t\nbase: quiet\n\
             overrides:\n  storage:\n    latency_warning_ms: 70\n",
        )
        .unwrap();
        let s = cli(&["--profile", good.to_str().unwrap()]).into_settings(None).unwrap();
        assert_eq!(s.config.storage.latency_warning_ms, 70);
        assert_eq!(s.config.network.retransmit_count, 25, "quiet base");
        assert_eq!(s.profile.as_deref(), Some(good.as_path()));
        let bad = dir.join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: tapio.dev/v1alpha1\nkind: EvidenceProfile\nmetadata:\n  name: t\nbase: quiet\n\
             overrides:\n  storage:\n    latency_critical_ms: 0\n",
        )
        .unwrap();
        let err = cli(&["--profile", bad.to_str().unwrap()]).into_settings(None).unwrap_err().to_string();
        assert!(
            err.contains("overrides.storage.latency_critical_ms: 0 is out of range; allowed: 1..=3600000"),
            "{err}"
        );
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(Cli::try_parse_from(["c", "--profile", "a.yaml", "--config-file", "b.json"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endless_token_and_config_files_fail_fast_with_the_flag_named() {
        for flag in ["--auth-token-file", "--config-file"] {
            let err = cli(&[flag, "/dev/zero"]).into_settings(None).unwrap_err().to_string();
            assert!(err.contains("/dev/zero") && err.contains("larger than"), "{flag}: {err}");
        }
        let err = cli(&["--profile", "/dev/zero"]).into_settings(None).unwrap_err().to_string();
        assert!(err.contains("/dev/zero"), "{err}");
    }

    #[test]
    fn kubernetes_auth_needs_a_service_account_and_excludes_a_shared_token() {
        let s = cli(&["--auth", "kubernetes", "--agent-service-account", "tapio-system:tapio-agent"])
            .into_settings(None)
            .unwrap();
        let k = s.kubernetes_auth.unwrap();
        assert_eq!(k.audience, "tapio");
        assert_eq!(k.service_account, "tapio-system:tapio-agent");
        assert!(s.auth_token.is_none());
        assert!(cli(&["--auth", "kubernetes"]).into_settings(None).is_err());
        assert!(cli(&["--auth", "kubernetes", "--agent-service-account", "nocolon"]).into_settings(None).is_err());
        let both = cli(&["--auth", "kubernetes", "--agent-service-account", "a:b"]).into_settings(Some("t".into()));
        assert!(both.is_err());
        assert!(cli(&["--auth", "token"]).into_settings(None).is_err());
        assert!(cli(&["--agent-service-account", "a:b"]).into_settings(None).is_err());
        assert!(cli(&["--k8s-api-server", "not a url"]).into_settings(None).is_err());
        let w = cli(&["--k8s-pods"]).into_settings(None).unwrap().pod_watch.unwrap();
        assert_eq!(w.max_pods, 200_000);
        assert_eq!(w.deleted_grace, Duration::from_secs(300));
    }

    #[test]
    fn zero_bounds_are_refused() {
        assert!(cli(&["--max-agents", "0"]).into_settings(None).is_err());
        assert!(cli(&["--max-batch-events", "0"]).into_settings(None).is_err());
    }
}
