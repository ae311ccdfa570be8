//! Scratch directories for unit tests that need files: one per test tag and process, made
//! empty at the start of the test. Only with the `test-support` feature, which crates enable
//! for their tests alone (dev-dependencies), so no shipped binary compiles it.

use std::path::PathBuf;

/// An empty directory for the test tagged `tag` (its leftovers from an earlier run removed).
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
