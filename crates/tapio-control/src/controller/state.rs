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
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("state file {} is not a saved config: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading state file {}: {e}", path.display())),
    }
}

/// Saves the applied config durably: a crash or power loss leaves the previous state file
/// or this one, whole.
pub fn save(path: &Path, applied: &AppliedConfig) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(applied).map_err(|e| e.to_string())?;
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
        let applied =
            AppliedConfig { generation: 4, config_hash: "sha256:ab".into(), config: CompiledConfig::default() };
        save(&path, &applied).unwrap();
        assert_eq!(load(&path).unwrap(), Some(applied));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("not a saved config"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
