//! Reloading the `--profile` file: on SIGHUP and when its content changes, the file is
//! loaded again ([`crate::profile`]) and a new config served.
//!
//! The file is polled (content compared every few seconds) rather than watched with
//! inotify: no extra dependency, and it also sees edits made through a ConfigMap's symlink
//! swap. A reload that cannot be read or is invalid is logged with the field at fault and
//! counted (`tapio_controller_profile_reload_failures_total`); the config already served
//! stays. A valid reload bumps the generation only when the compiled config's hash
//! changes, so editing a comment does not make the fleet re-apply anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;

use crate::metrics::ResultLabels;
use crate::profile::{parse, read};
use crate::state::AppState;

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
                let current = state.config();
                log::error!(
                    "profile reload refused; still serving generation {} ({}): {message}",
                    current.version,
                    current.hash
                );
                // Counted after the log line is written: whoever sees the count finds the reason.
                state.metrics.profile_reload_failures.inc();
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
