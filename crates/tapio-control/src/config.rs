//! The agent's local configuration: safe defaults and an optional strict TOML file.
//!
//! The observer sections (`[network]`, `[container]`, `[storage]`, `[node]`,
//! `[container_pressure]`, `[dns]`) are an
//! Evidence Profile's `overrides` on `production-default`: tapio-profile's field table
//! validates and compiles them into the same [`CompiledConfig`] a controller serves, so a
//! setting has one default, one range and one help text. Next to them the sections may hold
//! the few agent-only knobs ([`LocalKnobs`]); everything else here (sinks, queues, the
//! controller link) is the agent's own.
//!
//! Unknown keys are errors naming the key, and every number is range-checked, so a typo or
//! a bad value fails loudly at start instead of silently running with defaults.

use serde::Deserialize;
use std::path::Path;
use tapio_profile::{Builtin, ProfileError};
use tapio_wire::CompiledConfig;

// The knobs the observers and the file sink read, declared with them in tapio-pipeline.
pub use tapio_pipeline::knobs::{FileSinkConfig, LocalKnobs};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Node name stamped on evidence (default: $NODE_NAME, then the hostname).
    pub node_name: Option<String>,
    /// Capacity of the queue between the ring-buffer drain and the sinks, in events.
    pub queue_capacity: usize,
    /// Whether the drain thread runs real-time while its work is light (drain_priority).
    pub drain_realtime: bool,
    /// How often the loss counters are written to the log.
    pub counters_log_interval_secs: u64,
    /// Bound of the cgroup-id → workload identity cache, and of the cgroup paths learned
    /// while their cgroups existed (each holds at most this many).
    pub identity_cache_capacity: usize,
    pub sinks: SinksConfig,
    /// Controller mode (absent = standalone).
    pub controller: Option<crate::controller::ControllerConfig>,
    /// What the observers judge with until a controller config is in force: the file's
    /// observer sections laid over `production-default` (not a key of its own).
    #[serde(skip)]
    pub observers: CompiledConfig,
    /// The agent-only knobs written in the observer sections (not a key of its own).
    #[serde(skip)]
    pub local: LocalKnobs,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            queue_capacity: 16_384,
            drain_realtime: true,
            counters_log_interval_secs: 60,
            identity_cache_capacity: 4096,
            sinks: SinksConfig::default(),
            controller: None,
            observers: CompiledConfig::default(),
            local: LocalKnobs::default(),
        }
    }
}

/// One agent-only key of an observer section: (section, key, min, max).
struct LocalKey(&'static str, &'static str, u64, u64);

const LOCAL_KEYS: [LocalKey; 5] = [
    LocalKey("storage", "inflight_max_age_secs", 10, 86_400),
    LocalKey("node", "poll_interval_ms", 100, 60_000),
    LocalKey("container_pressure", "poll_interval_ms", 100, 60_000),
    LocalKey("container_pressure", "rescan_interval_ms", 100, 600_000),
    LocalKey("container_pressure", "max_containers", 1, 100_000),
];

/// Sets the agent-only key `name` of `section` in `knobs`, if it is one; false when it is
/// not (then it is a profile field, or unknown).
fn set_local_knob(
    knobs: &mut LocalKnobs,
    section: &str,
    name: &str,
    value: &serde_json::Value,
) -> Result<bool, ConfigError> {
    let Some(LocalKey(_, _, min, max)) = LOCAL_KEYS.iter().find(|k| k.0 == section && k.1 == name) else {
        return Ok(false);
    };
    let n =
        value.as_u64().ok_or_else(|| ConfigError(format!("{section}.{name}: invalid type: expected an integer")))?;
    check_range(&format!("{section}.{name}"), n, *min, *max)?;
    // In range means it fits: every bound above is far below u32::MAX.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match (section, name) {
        ("storage", _) => knobs.inflight_max_age_secs = n,
        ("node", _) => knobs.poll_interval_ms = n,
        (_, "poll_interval_ms") => knobs.pressure_poll_interval_ms = n,
        (_, "rescan_interval_ms") => knobs.pressure_rescan_interval_ms = n,
        _ => knobs.pressure_max_containers = n,
    }
    Ok(true)
}

/// A parsed TOML value as tapio-profile's document tree.
fn profile_value(v: serde_json::Value) -> tapio_profile::Value {
    use tapio_profile::Value;
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::Int(i128::from(u)),
            (None, Some(i)) => Value::Int(i128::from(i)),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(items) => Value::Seq(items.into_iter().map(profile_value).collect()),
        serde_json::Value::Object(entries) => {
            Value::Map(entries.into_iter().map(|(k, v)| (Value::Str(k), profile_value(v))).collect())
        }
    }
}

/// A profile error in the agent's words: `key = value is out of range min..=max` (the key
/// as written in the file; a list item as `key[]`), `key: invalid type: …`,
/// `section.key = value must be …`, otherwise the profile's own message, which names the
/// key too.
pub(crate) fn config_error(e: ProfileError) -> ConfigError {
    ConfigError(match e {
        ProfileError::OutOfRange { path, value, range } => {
            let key = match path.find('[') {
                Some(i) => format!("{}[]", &path[..i]),
                None => path,
            };
            format!("{key} = {value} is out of range {range}")
        }
        ProfileError::WrongType { path, expected, found } => {
            format!("{path}: invalid type: {found}, expected {expected}")
        }
        // The rule's message begins with the name of a field of the section at fault.
        ProfileError::CrossField { path, message } => match path.rsplit_once('.') {
            Some((section, _)) => format!("{section}.{message}"),
            None => message,
        },
        other => other.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// JSON lines on standard output.
    pub stdout: bool,
    /// JSON lines to a file, rotated by size.
    pub file: Option<FileSinkConfig>,
}

impl Default for SinksConfig {
    fn default() -> Self {
        Self { stdout: true, file: None }
    }
}

/// A config that cannot be used, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError(format!("{key} = {value} is out of range {min}..={max}")))
    }
}

impl AgentConfig {
    /// Writes evidence to `path` (`--file`): the configured file sink's path is replaced,
    /// its rotation settings kept.
    pub fn write_file_to(&mut self, path: std::path::PathBuf) {
        self.sinks.file = Some(match self.sinks.file.take() {
            Some(file) => FileSinkConfig { path, ..file },
            None => FileSinkConfig::at(path),
        });
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // TOML → JSON value → config: the TOML parser is instantiated once (for Value) instead
        // of once per config struct, which keeps ~60 KB out of every node's binary; the
        // strictness (unknown keys named) comes from serde either way.
        let value: serde_json::Value = basic_toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        // The observer sections go to tapio-profile (but for the agent-only keys in them);
        // the rest is the agent's own. (Split by moving entries, not removing them: map
        // removal code would cost the binary more than this.)
        let mut local = LocalKnobs::default();
        let mut overrides = Vec::new();
        let mut own = serde_json::Map::new();
        let top = match value {
            serde_json::Value::Object(top) => top,
            _ => return Err(ConfigError("a config file is a TOML table".into())),
        };
        for (key, body) in top {
            if !tapio_profile::fields::SECTIONS.contains(&key.as_str()) {
                own.insert(key, body);
                continue;
            }
            let body = match body {
                serde_json::Value::Object(fields) => {
                    let mut kept = Vec::new();
                    for (name, v) in fields {
                        if !set_local_knob(&mut local, &key, &name, &v)? {
                            kept.push((tapio_profile::Value::Str(name), profile_value(v)));
                        }
                    }
                    tapio_profile::Value::Map(kept)
                }
                other => profile_value(other),
            };
            overrides.push((tapio_profile::Value::Str(key), body));
        }
        let own = serde_json::Value::Object(own);
        let mut config = match Self::deserialize(&own) {
            Ok(config) => config,
            Err(e) => return Err(ConfigError(format!("{}: {e}", Self::key_at_fault(own)))),
        };
        config.local = local;
        let overrides = tapio_profile::Value::Map(overrides);
        config.observers = tapio_profile::overlay(Builtin::ProductionDefault, &overrides, "").map_err(config_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Where in the agent's own keys deserializing failed: the first key (or key of a
    /// table) whose value fails on its own. serde's messages name an unknown key but not
    /// where a mistyped value sits. Finding it this way, only on the error path, costs the
    /// binary far less than tracking the path on every parse (serde_path_to_error: ~13 KB
    /// on every node).
    fn key_at_fault(own: serde_json::Value) -> String {
        let alone = |key: String, value: serde_json::Value| {
            let mut single = serde_json::Map::new();
            single.insert(key, value);
            Self::deserialize(&serde_json::Value::Object(single)).is_err()
        };
        let serde_json::Value::Object(own) = own else { return "(top level)".to_string() };
        for (key, value) in own {
            match value {
                serde_json::Value::Object(table) => {
                    for (inner, v) in table {
                        let mut nested = serde_json::Map::new();
                        nested.insert(inner.clone(), v);
                        if alone(key.clone(), serde_json::Value::Object(nested)) {
                            return format!("{key}.{inner}");
                        }
                    }
                }
                other => {
                    if alone(key.clone(), other) {
                        return key;
                    }
                }
            }
        }
        "(top level)".to_string()
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = tapio_wire::capped::read_capped_string(path, tapio_wire::capped::caps::CONFIG_BYTES)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("queue_capacity", self.queue_capacity as u64, 16, 1 << 20)?;
        check_range("counters_log_interval_secs", self.counters_log_interval_secs, 1, 86_400)?;
        check_range("identity_cache_capacity", self.identity_cache_capacity as u64, 16, 1 << 20)?;
        // The names every controller request carries: what the controller refuses there
        // (blank, or longer than a Kubernetes node name may be) is refused here, at start.
        if let Some(name) = &self.node_name {
            tapio_wire::validate::check_identity("node_name", name)
                .map_err(|e| ConfigError(format!("node_name (--node): {e}")))?;
        }
        if let Some(file) = &self.sinks.file {
            if file.path.as_os_str().is_empty() {
                return Err(ConfigError("sinks.file.path must not be empty".into()));
            }
            check_range("sinks.file.max_bytes", file.max_bytes, 4096, 1 << 40)?;
            check_range("sinks.file.keep_files", u64::from(file.keep_files), 1, 100)?;
        }
        if let Some(c) = &self.controller {
            crate::controller::http::Endpoint::parse(&c.url)
                .map_err(|e| ConfigError(format!("controller.url: {e}")))?;
            check_range("controller.connect_timeout_ms", c.connect_timeout_ms, 10, 60_000)?;
            check_range("controller.io_timeout_ms", c.io_timeout_ms, 10, 300_000)?;
            check_range("controller.request_timeout_ms", c.request_timeout_ms, 100, 600_000)?;
            check_range("controller.heartbeat_interval_secs", c.heartbeat_interval_secs, 1, 3_600)?;
            check_range("controller.config_poll_interval_secs", c.config_poll_interval_secs, 1, 3_600)?;
            check_range("controller.queue_capacity", c.queue_capacity as u64, 1, 1 << 20)?;
            check_range("controller.max_batch_bytes", c.max_batch_bytes as u64, 1024, 64 << 20)?;
            check_range("controller.max_retries", c.max_retries.into(), 0, 100)?;
            check_range("controller.max_backoff_ms", c.max_backoff_ms, 100, 600_000)?;
            check_range("controller.max_response_bytes", c.max_response_bytes as u64, 1024, 64 << 20)?;
            if let Some(id) = &c.agent_id {
                tapio_wire::validate::check_identity("controller.agent_id", id)
                    .map_err(|e| ConfigError(format!("controller.agent_id: {e}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_config_file_fails_fast() {
        let err = AgentConfig::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.0.contains("/dev/zero") && err.0.contains("larger than"), "{err}");
    }

    #[test]
    fn the_file_flag_names_the_file_and_keeps_the_configured_rotation() {
        let mut c =
            AgentConfig::from_toml("[sinks.file]\npath = \"/var/a\"\nmax_bytes = 8192\nkeep_files = 2\n").unwrap();
        c.write_file_to("/var/b".into());
        let file = c.sinks.file.as_ref().unwrap();
        assert_eq!((file.path.to_str(), file.max_bytes, file.keep_files), (Some("/var/b"), 8192, 2));
        let mut d = AgentConfig::default();
        d.write_file_to("/var/b".into());
        assert_eq!(d.sinks.file, Some(FileSinkConfig::at("/var/b".into())));
    }

    #[test]
    fn empty_document_is_the_defaults() {
        assert_eq!(AgentConfig::from_toml("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio = 3\n").unwrap_err();
        assert!(err.0.contains("rtt_ratio"), "{err}");
        let err = AgentConfig::from_toml("bogus = 1\n").unwrap_err();
        assert!(err.0.contains("bogus"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio_percent = \"high\"\n").unwrap_err();
        assert!(err.0.starts_with("network.rtt_ratio_percent: invalid type"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio_percent = 50\n").unwrap_err();
        assert_eq!(err.0, "network.rtt_ratio_percent = 50 is out of range 101..=100000");
        let err = AgentConfig::from_toml("[container]\nexit_ignore_signals = [65]\n").unwrap_err();
        assert!(err.0.contains("exit_ignore_signals"), "{err}");
        // Signal 64 has no bit in the kernel's mask: refused rather than accepted and ignored.
        let err = AgentConfig::from_toml("[container]\nexit_ignore_signals = [64]\n").unwrap_err();
        assert_eq!(err.0, "container.exit_ignore_signals[] = 64 is out of range 1..=63");
        let err = AgentConfig::from_toml("[sinks.file]\npath = \"/tmp/x\"\nkeep_files = 0\n").unwrap_err();
        assert!(err.0.contains("sinks.file.keep_files"), "{err}");
    }

    #[test]
    fn the_agents_own_keys_are_named_in_type_errors() {
        let err = AgentConfig::from_toml("queue_capacity = \"big\"\n").unwrap_err();
        assert!(err.0.starts_with("queue_capacity: invalid type"), "{err}");
        let err = AgentConfig::from_toml("[sinks]\nstdout = 1\n").unwrap_err();
        assert!(err.0.starts_with("sinks.stdout: invalid type"), "{err}");
        let err = AgentConfig::from_toml("[controller]\nurl = \"http://c:1\"\nheartbeat_interval_secs = \"x\"\n")
            .unwrap_err();
        assert!(err.0.starts_with("controller.heartbeat_interval_secs: invalid type"), "{err}");
        let err = AgentConfig::from_toml("[sinks]\nbogus = true\n").unwrap_err();
        assert!(err.0.starts_with("sinks.bogus: unknown field `bogus`"), "{err}");
    }

    #[test]
    fn controller_urls_must_be_plain_http() {
        let err = AgentConfig::from_toml("[controller]\nurl = \"https://c:7470\"\n").unwrap_err();
        assert!(err.0.contains("https:// is not supported"), "{err}");
        let err = AgentConfig::from_toml("[controller]\n").unwrap_err();
        assert!(err.0.contains("controller.url"), "{err}");
        let c = AgentConfig::from_toml("[controller]\nurl = \"http://c:7470\"\ntoken_file = \"/t\"\n").unwrap();
        assert_eq!(c.controller.unwrap().heartbeat_interval_secs, 10);
    }

    #[test]
    fn full_document_parses() {
        let c = AgentConfig::from_toml(
            "node_name = \"n1\"\n[sinks]\nstdout = false\n[sinks.file]\npath = \"/var/log/tapio.jsonl\"\nmax_bytes = 1048576\n\
             [network]\nretransmit_count = 3\n[container]\nexit_ignore_codes = [1, 2]\nexit_ignore_signals = [15]\n",
        )
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert!(!c.sinks.stdout);
        assert_eq!(c.sinks.file.as_ref().unwrap().keep_files, 5);
        assert_eq!(c.observers.network.retransmit_count, 3);
        assert_eq!(c.observers.container.exit_ignore_codes, vec![1, 2]);
    }

    #[test]
    fn container_pressure_local_knobs_are_their_own_and_range_checked() {
        let c = AgentConfig::from_toml(
            "[node]\npoll_interval_ms = 700\n[container_pressure]\npoll_interval_ms = 500\n\
             rescan_interval_ms = 2000\nmax_containers = 3\nthrottled_periods_percent = 40\n",
        )
        .unwrap();
        let l = c.local;
        assert_eq!((l.poll_interval_ms, l.pressure_poll_interval_ms), (700, 500), "one key name, two sections");
        assert_eq!((l.pressure_rescan_interval_ms, l.pressure_max_containers), (2_000, 3));
        assert_eq!(c.observers.container_pressure.throttled_periods_percent, 40);
        let err = AgentConfig::from_toml("[container_pressure]\nmax_containers = 0\n").unwrap_err();
        assert!(err.0.contains("container_pressure.max_containers"), "{err}");
        let err = AgentConfig::from_toml("[container_pressure]\nthrottled_periods_percent = 101\n").unwrap_err();
        assert!(err.0.contains("container_pressure.throttled_periods_percent"), "{err}");
    }

    #[test]
    fn storage_and_node_sections_are_strict_and_range_checked() {
        let c = AgentConfig::from_toml(
            "[storage]\nlatency_warning_ms = 50\nlatency_critical_ms = 50\n[node]\npoll_interval_ms = 500\n\
             psi_memory_some_avg10_percent = 0\npmc = false\n",
        )
        .unwrap();
        let o = &c.observers;
        assert_eq!((o.storage.latency_warning_ms, o.storage.latency_critical_ms), (50, 50));
        assert_eq!((c.local.poll_interval_ms, o.node.psi_memory_some_avg10_percent, o.node.pmc), (500, 0, false));
        let err =
            AgentConfig::from_toml("[storage]\nlatency_warning_ms = 200\nlatency_critical_ms = 100\n").unwrap_err();
        assert!(err.0.contains("storage.latency_critical_ms = 100 must be at least"), "{err}");
        let err = AgentConfig::from_toml("[storage]\nlatency_warning_ms = 0\n").unwrap_err();
        assert_eq!(err.0, "storage.latency_warning_ms = 0 is out of range 1..=600000");
        let err = AgentConfig::from_toml("[node]\npsi_cpu_some_avg10_percent = 101\n").unwrap_err();
        assert!(err.0.contains("node.psi_cpu_some_avg10_percent"), "{err}");
        let err = AgentConfig::from_toml("[node]\npsi_threshold = 3\n").unwrap_err();
        assert!(err.0.contains("psi_threshold"), "{err}");
        let err = AgentConfig::from_toml("[storage]\ncapture_memcg = true\n").unwrap_err();
        assert!(err.0.contains("capture_memcg"), "an internal switch is not a config key: {err}");
    }
}
