//! Evidence Profiles in the controller: reading the `--profile` file (YAML or JSON, chosen by
//! its extension) and compiling it with `tapio-profile`. Pure loading: reloading on SIGHUP
//! and on change is `profile_reload`.
//!
//! Generations name one config across controller restarts (evidence carries them as
//! `config_generation`): see [`next_generation`].

use std::path::{Path, PathBuf};

use tapio_profile::{CompiledConfig, Document, Profile, ProfileError};

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
