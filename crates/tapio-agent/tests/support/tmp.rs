//! Names unique to this test process, and scratch directories that remove themselves. Every
//! name carries the test process's pid, so two runs (or two checkouts) never collide.

use std::path::{Path, PathBuf};

/// `tapio-test-<tag>-<pid>`: a name for a file, directory, cgroup or tracefs instance.
pub fn unique(tag: &str) -> String {
    format!("tapio-test-{tag}-{}", std::process::id())
}

/// A path in the temporary directory, unique to this process and `tag`.
pub fn path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(unique(tag))
}

/// A directory removed (with its contents) on drop, also when the test fails.
pub struct Dir(pub PathBuf);

impl Dir {
    /// Makes `path` afresh (whatever was left there by an earlier run is removed first).
    pub fn new(path: PathBuf) -> Dir {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Dir(path)
    }

    /// A fresh directory in the temporary directory, unique to this process and `tag`.
    pub fn scratch(tag: &str) -> Dir {
        Dir::new(path(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
