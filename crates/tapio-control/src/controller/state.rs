//! The last valid controller config, persisted so that a restarted agent judges with it
//! from its first event instead of falling back to local defaults while the controller is
//! unreachable. Written atomically (temporary file + rename).

use serde::{Deserialize, Serialize};
use std::path::Path;
use tapio_wire::CompiledConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedConfig {
    /// The config generation (`version` on the wire).
    pub generation: u32,
    /// The hash the controller served with it (reported, never recomputed).
    pub config_hash: String,
    pub config: CompiledConfig,
}

pub fn load(path: &Path) -> Result<Option<AppliedConfig>, String> {
    match tapio_wire::capped::read_capped(path, tapio_wire::capped::caps::CONFIG_BYTES) {
        Ok(bytes) => match serde_json::from_slice::<AppliedConfig>(&bytes) {
            // Checked as a served config is: its hash goes into requests' If-None-Match.
            Ok(a) if a.generation == 0 || !is_config_hash(&a.config_hash) => {
                Err(format!("state file {} names no config a controller served", path.display()))
            }
            Ok(a) => Ok(Some(a)),
            Err(e) => Err(format!("state file {} is not a saved config: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading state file {}: {e}", path.display())),
    }
}

/// `sha256:<64 lowercase hex>`, as the wire spec gives a config's hash.
pub fn is_config_hash(hash: &str) -> bool {
    let hex = hash.strip_prefix("sha256:").unwrap_or_default();
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Saves the applied config durably: a crash or power loss leaves the previous state file
/// or this one, whole.
pub fn save(path: &Path, applied: &AppliedConfig) -> Result<(), String> {
    // Compact, as received: pretty JSON of a config near the read cap would outgrow it.
    let bytes = serde_json::to_vec(applied).map_err(|e| e.to_string())?;
    tapio_util::rotate::replace_durably(path, &bytes).map_err(|e| format!("saving {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_missing_and_corrupt_files() {
        let dir = tapio_util::test_dirs::scratch("state");
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), None);
        let hash = format!("sha256:{}", "ab".repeat(32));
        let applied = AppliedConfig { generation: 4, config_hash: hash.clone(), config: CompiledConfig::default() };
        save(&path, &applied).unwrap();
        assert_eq!(load(&path).unwrap(), Some(applied));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("not a saved config"));
        // Whole JSON, but no config a controller served: generation 0, or a hash that would
        // go into a request's head as it is.
        for (generation, config_hash) in [(0, hash.as_str()), (4, "sha256:ab"), (4, "sha256:ab\r\nX-Evil: 1")] {
            let bad = AppliedConfig { generation, config_hash: config_hash.into(), config: CompiledConfig::default() };
            save(&path, &bad).unwrap();
            assert!(load(&path).unwrap_err().contains("names no config"), "{generation} {config_hash:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
