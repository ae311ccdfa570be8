//! Evidence Profiles in the controller: reading the `--profile` file (YAML or JSON, chosen by
//! its extension), compiling it with `tapio-profile`, and reloading it on SIGHUP and when
//! its content changes.
//!
//! The file is polled (content compared every few seconds) rather than watched with
//! inotify: no extra dependency, and it also sees edits made through a ConfigMap's symlink
//! swap. A reload that cannot be read or is invalid is logged with the field at fault and
//! counted (`tapio_controller_profile_reload_failures_total`); the config already served
//! stays. A valid reload bumps the generation only when the compiled config's hash
//! changes, so editing a comment does not make the fleet re-apply anything.
//!
//! Generations name one config across controller restarts (evidence carries them as
//! `config_generation`): see [`next_generation`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tapio_profile::{CompiledConfig, Document, Profile, ProfileError};
use tokio::signal::unix::Signal;

use crate::metrics::ResultLabels;
use crate::state::AppState;

/// Largest profile file read (a profile is a few hundred bytes; this bounds a mistake).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Why a profile file could not be used. Every message names the file; validation errors
/// also name the field and its allowed values.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read profile {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PROFILE_BYTES`].
    #[error("profile {} is larger than {MAX_PROFILE_BYTES} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The extension says neither YAML nor JSON.
    #[error("profile {}: unknown file type; name it .yaml, .yml or .json", .path.display())]
    Extension {
        /// The file.
        path: PathBuf,
    },
    /// Not well-formed YAML/JSON.
    #[error("profile {} is not valid {format}: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// YAML or JSON.
        format: &'static str,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Well-formed but not a valid Evidence Profile.
    #[error("profile {}: {source}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field's path.
        source: ProfileError,
    },
}

/// A profile read and compiled.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated profile.
    pub profile: Profile,
    /// What it compiles to.
    pub config: CompiledConfig,
}

/// Parses and compiles profile `bytes`, the format chosen by `path`'s extension.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Loaded, LoadError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let syntax =
        |format: &'static str, message: String| LoadError::Syntax { path: path.to_path_buf(), format, message };
    let doc: Document = match ext.as_deref() {
        Some("yaml" | "yml") => serde_yaml_ng::from_slice(bytes).map_err(|e| syntax("YAML", e.to_string()))?,
        Some("json") => serde_json::from_slice(bytes).map_err(|e| syntax("JSON", e.to_string()))?,
        _ => return Err(LoadError::Extension { path: path.to_path_buf() }),
    };
    let profile =
        tapio_profile::validate(&doc).map_err(|source| LoadError::Invalid { path: path.to_path_buf(), source })?;
    let config = profile.compile();
    Ok(Loaded { profile, config })
}

/// Reads at most [`MAX_PROFILE_BYTES`] of `path`.
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    tapio_wire::capped::read_capped(path, MAX_PROFILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidData {
            LoadError::TooLarge { path: path.to_path_buf() }
        } else {
            LoadError::Read { path: path.to_path_buf(), source }
        }
    })
}

/// Reads, parses and compiles the profile at `path`.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    parse(path, &read(path)?)
}

/// The generation to serve a new config as: the Unix time (seconds) at which it is first
/// served, or one more than `previous` when that is later (several reloads within one
/// second). A counter from 1 would start again at every restart, and a restarted controller
/// with an edited profile would serve "1" for another config than the one evidence already
/// names; from the clock, a restart never reuses a number as long as the clock does not go
/// back and reloads average under one a second. u32 seconds last until 2106.
pub fn next_generation(previous: Option<u32>, now_unix: u64) -> u32 {
    let clock = u32::try_from(now_unix).unwrap_or(u32::MAX).max(1);
    match previous {
        None => clock,
        // Saturates rather than wraps: 4 billion reloads in one run are not a real case.
        Some(previous) => previous.saturating_add(1).max(clock),
    }
}

/// What one check of the profile file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is as last seen (polls only).
    NotModified,
    /// A valid profile that compiles to the config already served.
    SameConfig,
    /// A valid profile with a new config, now served as this generation.
    Applied(u32),
    /// Unreadable or invalid: counted and logged; the served config stays.
    Refused(String),
}

/// Tracks the profile file between checks.
#[derive(Debug)]
pub struct Watcher {
    path: PathBuf,
    /// What the last check saw (content, or the read error): a bad file is reported once
    /// per distinct content, not on every poll.
    last_seen: Option<Result<Vec<u8>, String>>,
}

impl Watcher {
    /// A watcher that has seen nothing yet: its first check compares the file with the
    /// config being served (equal → no new generation).
    pub fn new(path: PathBuf) -> Self {
        Self { path, last_seen: None }
    }

    /// Checks the file and serves its config if it is new and valid. `forced` (SIGHUP)
    /// re-judges the file even when its content has not changed.
    pub fn check(&mut self, state: &AppState, forced: bool) -> Reload {
        let seen = read(&self.path).map_err(|e| e.to_string());
        if !forced && self.last_seen.as_ref() == Some(&seen) {
            return Reload::NotModified;
        }
        self.last_seen = Some(seen.clone());
        let result = seen.and_then(|bytes| parse(&self.path, &bytes).map_err(|e| e.to_string()));
        match result {
            Err(message) => {
                state.metrics.profile_reload_failures.inc();
                let current = state.config();
                log::error!(
                    "profile reload refused; still serving generation {} ({}): {message}",
                    current.version,
                    current.hash
                );
                Reload::Refused(message)
            }
            Ok(loaded) => match state.replace_config(loaded.config) {
                Some(generation) => {
                    state.metrics.profile_reloads.get_or_create(&ResultLabels { result: "applied" }).inc();
                    log::info!(
                        "profile {} ({}) applied as generation {generation} ({})",
                        loaded.profile.name,
                        self.path.display(),
                        state.config().hash
                    );
                    Reload::Applied(generation)
                }
                None => {
                    state.metrics.profile_reloads.get_or_create(&ResultLabels { result: "unchanged" }).inc();
                    log::info!(
                        "profile {} ({}) read: config unchanged, generation stays {}",
                        loaded.profile.name,
                        self.path.display(),
                        state.config().version
                    );
                    Reload::SameConfig
                }
            },
        }
    }
}

/// Checks the profile every `poll` and on every SIGHUP, until the task is aborted.
pub async fn watch(state: Arc<AppState>, mut watcher: Watcher, poll: Duration, mut hangup: Option<Signal>) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                log::info!("SIGHUP received: reloading the profile");
                true
            }
        };
        // File reads are small and bounded, but keep them off the async workers anyway.
        let st = Arc::clone(&state);
        let result = tokio::task::spawn_blocking(move || {
            let outcome = watcher.check(&st, forced);
            (watcher, outcome)
        })
        .await;
        match result {
            Ok((w, _)) => watcher = w,
            Err(e) => {
                log::error!("profile watcher stopped: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_generation;

    #[test]
    fn generations_follow_the_clock_and_never_repeat() {
        let start = 1_800_000_000;
        assert_eq!(next_generation(None, start), 1_800_000_000);
        // Reloads within one second still get a new number each.
        assert_eq!(next_generation(Some(1_800_000_000), start), 1_800_000_001);
        assert_eq!(next_generation(Some(1_800_000_001), start), 1_800_000_002);
        // Later ones follow the clock again.
        assert_eq!(next_generation(Some(1_800_000_002), start + 60), 1_800_000_060);
        // A restart a minute later serves a number no earlier run of this controller served.
        assert!(next_generation(None, start + 120) > 1_800_000_060);
        // A clock before 1970 or past 2106 still gives a valid, rising generation.
        assert_eq!(next_generation(None, 0), 1);
        assert_eq!(next_generation(Some(7), u64::MAX), u32::MAX);
        assert_eq!(next_generation(Some(u32::MAX), 5), u32::MAX);
    }
}
